"""The chain stage in the daemon: verdicts in the archive, alerts, dedupe, checkpoint and replay."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer import record as record_module
from shipper.buffer import wal as wal_module
from shipper.buffer.config import BufferConfig
from shipper.buffer.published import HEAD_FILE
from shipper.buffer.segment import Position, segment_name
from shipper.buffer.segment import header as segment_header
from shipper.chain import Verifier, sender_identity
from shipper.chain_stage import (
    CHAIN_CURSOR,
    ChainStage,
    checkpoint_path,
    load_checkpoint,
)
from shipper.config import Address, parse_config
from shipper.events import Event, record_bytes
from shipper.events import envelopes as make_envelopes
from shipper.shutdown import Shutdown, run_daemon
from shipper.topology import Topology
from tests.buffer.test_wal import read_all
from tests.chains import AGENT, chain, chain_lines, safeclaw_lines
from tests.conftest import LogCapture, archive_lines, file_sink_config, wait_until
from tests.test_cli import shipper, write_config

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "10.0.0.7:51234"}


def envelopes(root: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in archive_lines(root / "archive")]


async def send(address: Address, data: bytes) -> None:
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(data)


async def run_once(root: Path, data: bytes, expect: int, **chain_settings: Any) -> None:
    """Start the daemon on ``root``, send ``data``, wait for ``expect`` archived lines, stop."""
    raw = file_sink_config(root)
    if chain_settings:
        raw["chain"] = chain_settings
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        await send(bound["agents"][0], data)
        await wait_until(lambda: len(archive_lines(root / "archive")) >= expect)
        shutdown.request("test")


async def test_verdicts_are_archived_and_a_gap_raises_an_alert_event(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Each archived event carries its chain verdict; a gap is followed by a chain_alert event
    naming agent, expected and received sequence, source and peer, and is logged."""
    lines = chain_lines(6)
    await run_once(tmp_path, b"".join(lines[:3] + lines[4:]), expect=6)
    found = envelopes(tmp_path)
    assert [e["chain"]["status"] for e in found if "chain" in e] == [
        "genesis",
        "ok",
        "ok",
        "gap",
        "ok",
    ]
    alert = found[4]
    assert found[3]["chain"] == {"status": "gap", "sequence": 5, "expected": 4, "missing": [4, 4]}
    assert alert["source"] == {"id": "shipper", "kind": "alert"}
    record = alert["record"]
    assert record["action"] == "shipper.chain_alert"
    assert record["agent"] == AGENT
    assert (record["status"], record["severity"], record["missing"]) == ("gap", "medium", [4, 4])
    assert record["expected"]["sequence"] == 4
    assert record["received"]["sequence"] == 5
    assert record["source"] == "agents"
    assert record["peer"].startswith("127.0.0.1:")
    (logged,) = logs.entries("chain_alert")
    assert (logged["agent"], logged["status"], logged["missing"]) == (AGENT, "gap", [4, 4])
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["chain"]["verdicts"] == {"genesis": 1, "ok": 3, "gap": 1}


async def test_a_restart_neither_forgets_an_agent_nor_archives_a_resend_twice(
    tmp_path: Path,
) -> None:
    """After a clean restart the chain continues (no false genesis) and records sent again are
    dropped as duplicates, so the archive holds each record once."""
    lines = chain_lines(20)
    await run_once(tmp_path, b"".join(lines[:10]), expect=10)
    stored = load_checkpoint(tmp_path / "var")
    assert not isinstance(stored, str)
    assert stored is not None
    assert Verifier.restore(stored.state).agents[AGENT].last_sequence == 10
    await run_once(tmp_path, b"".join(lines[6:]), expect=20)  # 7..10 again, then 11..20
    found = envelopes(tmp_path)
    assert [e["record"]["sequence"] for e in found] == list(range(1, 21))
    assert [e["chain"]["status"] for e in found] == ["genesis"] + ["ok"] * 19


async def test_a_lost_checkpoint_makes_the_agent_adopted_never_a_false_genesis(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With the checkpoint gone and the WAL already freed, the agent's next record is adopted
    (a low alert that earlier records are not in view), never a false genesis or gap."""
    lines = chain_lines(12)
    await run_once(tmp_path, b"".join(lines[:8]), expect=8)
    checkpoint_path(tmp_path / "var").unlink()
    await run_once(tmp_path, b"".join(lines[8:]), expect=13)
    found = envelopes(tmp_path)
    statuses = [e["chain"]["status"] for e in found if "chain" in e]
    assert statuses == ["genesis"] + ["ok"] * 7 + ["adopted"] + ["ok"] * 3
    (alert,) = [e["record"] for e in found if "chain" not in e]
    assert (alert["status"], alert["severity"]) == ("adopted", "low")
    assert logs.entries("chain_state_loaded")[-1]["checkpoint"] is None


async def test_the_wal_keeps_what_the_checkpoint_does_not_cover(tmp_path: Path) -> None:
    """Segments after the chain checkpoint stay even when every sink has acknowledged them; a
    replay from the checkpoint rebuilds the state the running stage had."""
    raw = file_sink_config(tmp_path, max_file_bytes="1MiB")
    raw["buffer"] = {"segment_bytes": "64KiB", "max_bytes": "16MiB"}
    raw["chain"] = {"checkpoint_interval": "1h"}  # only the shutdown checkpoint
    config = parse_config(raw)
    lines = chain_lines(800)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        await send(bound["agents"][0], b"".join(lines[:400]))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 400)
        segments = sorted((tmp_path / "var" / "wal").glob("*.seg"))
        assert len(segments) > 2  # the sink acknowledged them all, the checkpoint none
        stage = ChainStage(config.chain, tmp_path / "var")
        await trio.to_thread.run_sync(stage.load, tmp_path / "var" / "wal", "other-epoch")
        assert stage.verifier.agents[AGENT].last_sequence == 400
        shutdown.request("test")
    cursor = orjson.loads(
        (tmp_path / "var" / "wal" / "cursors" / f"{CHAIN_CURSOR}.json").read_bytes()
    )
    stored = load_checkpoint(tmp_path / "var")
    assert not isinstance(stored, str)
    assert stored is not None
    assert Position(cursor["segment"], cursor["offset"]) == stored.position


def stage(tmp_path: Path, **chain_settings: Any) -> ChainStage:
    raw = file_sink_config(tmp_path)
    if chain_settings:
        raw["chain"] = chain_settings
    return ChainStage(parse_config(raw).chain, tmp_path / "var")


def events(records: list[dict[str, Any]], source: dict[str, Any] = SOURCE) -> list[Event]:
    return [
        Event("2026-11-23T00:00:00.000000Z", source, None, orjson.dumps(record))
        for record in records
    ]


def test_process_drops_duplicates_and_puts_alerts_after_their_event(tmp_path: Path) -> None:
    """A batch with a resend and a broken link comes out without the resend and with one alert
    right after the broken record."""
    chained = chain(5)
    broken = {**chained[4], "prevHash": "sha256:" + "0" * 64}
    broken["hash"] = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(
                {k: v for k, v in broken.items() if k != "hash"},
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        ).hexdigest()
    )
    batch = events([*chained[:4], chained[2], broken])
    out = stage(tmp_path).process(batch, now=0.0)
    kinds = [
        e.chain["status"] if e.chain else orjson.loads(e.record_json or b"{}")["action"]
        for e in out
    ]
    assert kinds == ["genesis", "ok", "ok", "ok", "broken_link", "shipper.chain_alert"]
    assert all(e.agent == AGENT for e in out)
    assert out[-1].alert


def test_identity_mismatches_and_alerts_are_not_verified(tmp_path: Path) -> None:
    """Events of an impostor (identity_mismatch) and alert events pass through unverified."""
    chained = chain(2)
    impostor = events(chained[1:])[0]
    impostor.identity_mismatch = {"claimed": {"agent": AGENT}}
    chain_stage = stage(tmp_path)
    out = chain_stage.process([*events(chained[:1]), impostor], now=0.0)
    assert out[1].chain is None
    assert chain_stage.verifier.agents[AGENT].last_sequence == 1


def test_safeclaw_records_are_chained_per_sender(tmp_path: Path) -> None:
    """SafeClaw lines name no agent: each sender's lines form their own chain."""
    lines = safeclaw_lines(3)
    chain_stage = stage(tmp_path, profile="safeclaw-jsonl")
    host_a = {**SOURCE, "tls_san": ["host-a"]}
    host_b = {**SOURCE, "peer": "10.0.0.8:4000"}
    batch = [Event("t", host_a, None, line) for line in lines] + [
        Event("t", host_b, None, lines[0])
    ]
    out = chain_stage.process(batch, now=0.0)
    assert [(e.agent, e.chain["status"] if e.chain else None) for e in out] == [
        ("host-a", "genesis"),
        ("host-a", "ok"),
        ("host-a", "ok"),
        ("10.0.0.8", "genesis"),
    ]


def test_sender_identity_prefers_the_certificate() -> None:
    """The sender of an event is its first SAN, else subject, else syslog host, else peer host."""
    assert sender_identity({"tls_san": ["a"], "tls_subject": "CN=b"}, None) == "a"
    assert sender_identity({"tls_subject": "CN=b", "peer": "1.2.3.4:5"}, None) == "CN=b"
    assert sender_identity({"peer": "1.2.3.4:5"}, {"hostname": "h"}) == "h"
    assert sender_identity({"peer": "[::1]:5"}, None) == "::1"


def test_record_bytes_are_cut_out_of_the_envelope_exactly() -> None:
    """The record's bytes come back from its envelope exactly as received, spacing included."""
    raw = b'{"b": 1,  "a":"x\\"record\\":", "record": {"record": 2}}'
    envelope = Event("t", SOURCE, "a", raw, chain={"status": "ok"}).encode("1-16")
    assert record_bytes(envelope, orjson.loads(envelope)) == raw


async def test_an_unusable_checkpoint_is_logged_and_the_daemon_starts(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A corrupt checkpoint does not stop the daemon: it warns and starts from what the WAL holds."""
    lines = chain_lines(6)
    await run_once(tmp_path, b"".join(lines[:3]), expect=3)
    checkpoint_path(tmp_path / "var").write_bytes(b'{"v": 1, "segm')
    await run_once(tmp_path, b"".join(lines[3:]), expect=7)
    (warning,) = logs.entries("chain_checkpoint_unusable")
    assert "corrupt" in warning["reason"]
    statuses = [e["chain"]["status"] for e in envelopes(tmp_path) if "chain" in e]
    assert statuses == ["genesis", "ok", "ok", "adopted", "ok", "ok"]


async def test_chain_status_reports_each_agent_from_the_state_on_disk(tmp_path: Path) -> None:
    """`shipper chain status` shows last sequence, open gaps, counts and last alert per agent,
    read from the checkpoint and the WAL; an unknown --agent exits 1."""
    lines = chain_lines(6) + chain_lines(2, agent="other-agent")
    await run_once(tmp_path, b"".join(lines[:3] + lines[4:]), expect=8)
    config = write_config(tmp_path / "shipper.toml", file_sink_config(tmp_path))
    result = await trio.to_thread.run_sync(
        lambda: shipper("chain", "status", "-c", str(config), "--json")
    )
    assert result.returncode == 0, result.stderr
    status = orjson.loads(result.stdout)
    mine = status["agents"][AGENT]
    assert mine["last_sequence"] == 6
    assert mine["open_gaps"] == [[4, 4]]
    assert mine["counts"] == {"genesis": 1, "ok": 3, "gap": 1}
    assert mine["last_alert"] == {"status": "gap", "sequence": 5}
    assert status["agents"]["other-agent"]["last_sequence"] == 2
    text = await trio.to_thread.run_sync(
        lambda: shipper("chain", "status", "-c", str(config), "--agent", AGENT)
    )
    assert f"agent {AGENT}: last sequence 6; open gaps: 4-4" in text.stdout
    assert "other-agent" not in text.stdout
    unknown = await trio.to_thread.run_sync(
        lambda: shipper("chain", "status", "-c", str(config), "--agent", "nobody")
    )
    assert unknown.returncode == 1
    assert "nobody" in unknown.stderr


async def test_thousands_of_agents_interleaved_over_many_connections_verify_clean(
    tmp_path: Path, logs: LogCapture
) -> None:
    """2,000 agents whose records are interleaved over 16 concurrent connections, each chain
    continued on another connection after the first, verify as genesis then ok, alert-free."""
    agents = [f"agent-{n:04d}" for n in range(2000)]
    chains = {agent: chain_lines(8, agent=agent) for agent in agents}
    raw = file_sink_config(tmp_path)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        address = bound["agents"][0]
        for phase, part in enumerate((slice(0, 4), slice(4, 8))):
            async with trio.open_nursery() as senders:
                for connection in range(16):
                    # Phase 2 moves every agent to another connection.
                    mine = agents[(connection + phase) % 16 :: 16]
                    rounds = zip(*(chains[agent][part] for agent in mine), strict=True)
                    data = b"".join(line for batch in rounds for line in batch)
                    senders.start_soon(send, address, data)
            expected = 2000 * 4 * (phase + 1)

            def arrived(n: int = expected) -> bool:
                return len(archive_lines(tmp_path / "archive")) >= n

            await wait_until(arrived)
        shutdown.request("test")
    found = envelopes(tmp_path)
    assert len(found) == 16000
    by_agent: dict[str, list[str]] = {}
    for envelope in found:
        by_agent.setdefault(envelope["agent"], []).append(envelope["chain"]["status"])
    assert by_agent == {agent: ["genesis"] + ["ok"] * 7 for agent in agents}
    assert not logs.entries("chain_alert")


async def test_a_safeclaw_file_verifies_and_replays_under_its_profile(tmp_path: Path) -> None:
    """A file in SafeClaw's format sent as is verifies under safeclaw-jsonl as one chain of its
    sender, and a replay of the WAL (line hashes from the archived bytes) rebuilds that state."""
    audit_file = tmp_path / "audit.jsonl"
    audit_file.write_bytes(b"".join(line + b"\n" for line in safeclaw_lines(300, compact=False)))
    data = audit_file.read_bytes()
    raw = file_sink_config(tmp_path)
    raw["chain"] = {"profile": "safeclaw-jsonl", "checkpoint_interval": "1h"}
    config = parse_config(raw)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        await send(bound["agents"][0], data)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 300)
        replayed = ChainStage(config.chain, tmp_path / "var")
        await trio.to_thread.run_sync(replayed.load, tmp_path / "var" / "wal", "other-epoch")
        shutdown.request("test")
    found = envelopes(tmp_path)
    assert {e["agent"] for e in found} == {"127.0.0.1"}
    assert [e["chain"]["status"] for e in found] == ["genesis"] + ["ok"] * 299
    assert [e["chain"]["sequence"] for e in found] == list(range(1, 301))
    assert replayed.counters["replayed"] == 300
    assert replayed.counters["replay_mismatches"] == 0
    assert replayed.verifier.agents["127.0.0.1"].last_sequence == 300


class FailFirstFsync:
    """Stands in for the WAL's fsync (``_sync_fds``): the first call fails with EIO, the later
    ones fsync."""

    def __init__(self) -> None:
        self.real = wal_module._sync_fds
        self.calls = 0

    def __call__(self, fd: int | None, retired: list[int]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.EIO, "Input/output error")
        self.real(fd, retired)


async def test_batches_refused_by_a_failed_fsync_are_written_again_in_order(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the WAL refuses batches the chain stage already verified (an fsync failed), the
    writer writes them again, in order, after a backoff: each record is archived once, the chain
    reads genesis then ok throughout, and the checkpoint at shutdown covers all of them."""
    fsync = FailFirstFsync()
    monkeypatch.setattr(wal_module, "_sync_fds", fsync)
    lines = chain_lines(30)
    await run_once(tmp_path, b"".join(lines), expect=30)
    found = envelopes(tmp_path)
    assert [e["record"]["sequence"] for e in found] == list(range(1, 31))
    assert [e["chain"]["status"] for e in found] == ["genesis"] + ["ok"] * 29
    (failed, *_) = logs.entries("wal_write_failed")
    assert "Input/output error" in failed["error"]
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["wal"]["write_errors"] >= 1
    assert complete["metrics"]["chain"]["verdicts"] == {"genesis": 1, "ok": 29}
    stored = load_checkpoint(tmp_path / "var")
    assert not isinstance(stored, str)
    assert stored is not None
    assert Verifier.restore(stored.state).agents[AGENT].last_sequence == 30


def numbered(first: int, count: int) -> list[Event]:
    """Events whose records are ``{"n": first}`` ... (they name no agent: not verified)."""
    return [
        Event("2026-11-23T00:00:00.000000Z", SOURCE, None, orjson.dumps({"n": n}))
        for n in range(first, first + count)
    ]


async def test_the_writer_writes_refused_batches_again_in_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several batches written and not yet accepted when an fsync fails, the topology's
    writer takes every refused one back and writes it again, oldest first: the WAL holds them
    once, in order."""
    fsync = FailFirstFsync()
    monkeypatch.setattr(wal_module, "_sync_fds", fsync)
    topology = Topology(parse_config(file_sink_config(tmp_path)))
    wal = topology.wal
    wal.open({CHAIN_CURSOR: None, "archive": None})
    # Queued as the writer queues them: with PIPELINE_DEPTH in flight when the fsync fails.
    topology._requeued.extend(numbered(first, 3) for first in range(1, 31, 3))
    await topology._flush()
    assert fsync.calls >= 2
    assert wal.counters["write_errors"] == 1
    assert topology.counters["requeued_batches"] >= 1
    assert topology.counters["events"] == 30
    assert await read_all(wal.readers["archive"]) == list(range(1, 31))
    await wal.close()
    wal.release()


@pytest.mark.parametrize("when_full", ["block", "drop_newest"])
async def test_refused_batches_are_written_again_when_their_room_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when_full: str
) -> None:
    """Batches the chain stage verified and a failed fsync refused go back before the chain
    stage; their room comes back with the rollback (and the checkpoint taken before they are
    written again frees what the sinks passed), so they are written again, not dropped, and
    nothing waits for space only the writer's own checkpoint would free."""
    raw = file_sink_config(tmp_path)
    raw["buffer"] = {"max_bytes": "4MiB", "when_full": when_full}
    topology = Topology(parse_config(raw))
    wal = topology.wal
    wal.open({CHAIN_CURSOR: None, "archive": None})
    await topology._take(numbered(1, 50))
    await topology._flush()
    archive = wal.readers["archive"]
    batch = await archive.read(10**9)
    assert batch is not None
    await archive.ack(batch.end)  # the sink is caught up; the chain cursor holds the segment
    topology._next_checkpoint = trio.current_time() + 3600
    await topology._take(numbered(51, 5))  # A: written, not yet accepted
    wal.settings = dataclasses.replace(wal.settings, max_bytes=wal.total_bytes + 1)
    assert not wal.full
    await topology._take(numbered(56, 5))  # B: the WAL is full after it
    assert len(topology._unaccepted) == 2
    monkeypatch.setattr(wal_module, "_sync_fds", FailFirstFsync())
    with trio.fail_after(10):
        await topology._flush()  # A and B refused, then written again
    assert topology.counters["requeued_batches"] == 2
    assert topology.counters["dropped"] == 0
    assert await read_all(archive) == list(range(51, 61))
    await wal.close()
    wal.release()


def test_replay_steps_over_a_checksummed_record_that_holds_no_entries(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A WAL record whose checksum is right but whose payload is not entries (damage recovery did
    not see) is stepped over and logged by the replay; the records around it are replayed."""
    wal_dir = tmp_path / "var" / "wal"
    wal_dir.mkdir(parents=True)
    good = [
        b"agents\0"
        + Event(
            "2026-11-23T00:00:00.000000Z",
            SOURCE,
            AGENT,
            orjson.dumps(record),
            chain={"status": "genesis" if record["sequence"] == 1 else "ok"},
        ).encode_without_id()
        for record in chain(2)
    ]
    (wal_dir / segment_name(1)).write_bytes(
        segment_header(1)
        + record_module.encode(good[0])
        + record_module.encode(b"not an entry at all")
        + record_module.encode(good[1])
    )
    replayed = stage(tmp_path)
    replayed.load(wal_dir, "")
    assert replayed.counters["replayed"] == 2
    assert replayed.verifier.agents[AGENT].last_sequence == 2
    assert logs.entries("chain_replay_skipped_record")


async def test_the_writer_replays_by_what_it_knows_when_publishing_failed(tmp_path: Path) -> None:
    """When the WAL's published head is unreadable (its write failed on a full disk), the
    chain state rebuilt from the writer's own view still replays every accepted record; the
    published files alone would replay none."""
    wal_dir = tmp_path / "var" / "wal"
    wal = wal_module.Wal(wal_dir, BufferConfig(), envelopes=make_envelopes)
    wal.open({CHAIN_CURSOR: None})
    entries = [
        b"agents\0"
        + Event(
            "2026-11-23T00:00:00.000000Z",
            SOURCE,
            AGENT,
            orjson.dumps(record),
            chain={"status": "genesis" if record["sequence"] == 1 else "ok"},
        ).encode_without_id()
        for record in chain(3)
    ]
    assert await wal.append(entries)
    (wal_dir / HEAD_FILE).write_bytes(b"")  # as a head write cut short by ENOSPC leaves it
    known = stage(tmp_path).rebuilt(wal_dir, wal.epoch, wal.committed, wal.state())
    assert known.agents[AGENT].last_sequence == 3
    published_only = stage(tmp_path).rebuilt(wal_dir, wal.epoch, wal.committed)
    assert AGENT not in published_only.agents
    await wal.close()
    wal.release()
