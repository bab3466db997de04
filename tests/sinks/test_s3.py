"""The ``s3`` sink against a real S3 server (SeaweedFS): locked objects, sealed manifests,
retention classes, exactly once across retries and restarts."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import zstandard

from shipper.archive.content import decompress
from shipper.archive.manifest import entry_hash
from shipper.config import parse_config
from shipper.errors import UnsafeDestination
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.s3 import LEVELS, _compressor
from tests.chains import chain_lines
from tests.conftest import LogCapture, free_port, wait_until
from tests.s3archive import data_objects, manifests, new_bucket, read_bucket, sink_table
from tests.s3server import S3Server
from tests.tcpproxy import proxy_to
from tests.test_cli import shipper, write_config


def daemon_config(tmp_path: Path, sinks: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "var"),
        "shutdown_timeout": "10s",
        "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
        "sinks": sinks,
    }


async def send_and_stop(raw: dict[str, Any], lines: list[bytes], until: Any) -> None:
    """Run a daemon from ``raw``, send ``lines``, wait for ``until()``, stop it."""
    config = parse_config(raw)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        address = bound["agents"][0]
        async with await trio.open_tcp_stream(address.host, address.port) as stream:
            await stream.send_all(b"".join(lines))
        await until()
        shutdown.request("test")


def events_of(objects: dict[str, Any]) -> list[dict[str, Any]]:
    out = [orjson.loads(line) for stored in objects.values() for line in stored.lines]
    return sorted(out, key=lambda e: tuple(map(int, e["id"].split("-"))))


@pytest.mark.usefixtures("processes")
async def test_objects_are_locked_sealed_and_chained(tmp_path: Path, s3_server: S3Server) -> None:
    """Every event lands once in a COMPLIANCE-locked object retained for the class's days; each
    object has a manifest entry with its sha256, count and range, chained to the one before,
    and each head is witnessed by an archive_seal event."""
    bucket = await new_bucket(s3_server)
    raw = daemon_config(tmp_path, {"s3": sink_table(s3_server, bucket, prefix="audit")})
    lines = chain_lines(50, "agent-a")
    before = datetime.now(UTC)

    await send_and_stop(raw, lines[:25], archived(s3_server, bucket, "audit/", 25))
    await send_and_stop(raw, lines[25:], archived(s3_server, bucket, "audit/", 50))
    stored = await read_bucket(s3_server, bucket)
    objects = data_objects(stored, "audit/")
    events = events_of(objects)
    records = [e for e in events if e.get("agent") == "agent-a"]
    assert [e["record"]["sequence"] for e in records] == list(range(1, 51))
    assert [e["chain"]["status"] for e in records] == ["genesis"] + ["ok"] * 49
    entries = manifests(stored, "audit/")
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    assert entries[0].prev is None
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev == entry_hash(stored[f"audit/manifests/{previous.seq:020d}.json"].data)
    assert {entry.key for entry in entries} == set(objects)
    for entry in entries:
        obj = objects[entry.key]
        assert hashlib.sha256(obj.data).hexdigest() == entry.sha256
        assert entry.events == len(obj.lines)
        assert orjson.loads(obj.lines[0])["id"] == entry.first
        assert orjson.loads(obj.lines[-1])["id"] == entry.last
        assert obj.mode == "COMPLIANCE"
        assert obj.head["ContentType"] == "application/x-ndjson"
        assert "ContentEncoding" not in obj.head  # (a client must not unpack it on the way)
        assert decompress(obj.data, "gzip") == b"".join(line + b"\n" for line in obj.lines)
        assert obj.retain_until is not None
        assert before + timedelta(days=1) - timedelta(minutes=1) <= obj.retain_until
        assert obj.retain_until <= datetime.now(UTC) + timedelta(days=1, minutes=1)
        assert entry.retention.mode == "COMPLIANCE"
        assert entry.retention.period == "1d"
    assert objects[entries[0].key].key.startswith(f"audit/year={before:%Y}/month={before:%m}/")
    seals = [e["record"] for e in events if e["record"].get("action") == "shipper.archive_seal"]
    heads = {
        entry_hash(stored[f"audit/manifests/{entry.seq:020d}.json"].data): entry.seq
        for entry in entries
    }
    assert seals
    assert all(heads[seal["head"]] == seal["seq"] for seal in seals)


@pytest.mark.parametrize(
    ("compression", "level"),
    [(name, level) for name, (low, high, _) in LEVELS.items() for level in range(low, high + 1)],
)
def test_every_compression_level_writes_a_standard_object(compression: str, level: int) -> None:
    """At every level it accepts, each compression makes the same bytes twice, with no time in
    a gzip header (a retry, however late, writes the same object), that Python's gzip or zstandard and the archive's reader turn back into
    the lines."""
    text = b"".join(line for line in chain_lines(300, "agent-a"))
    data = _compressor(compression, level)(text)
    assert _compressor(compression, level)(text) == data
    assert decompress(data, compression) == text
    if compression == "gzip":
        assert gzip.decompress(data) == text
        assert data[4:8] == b"\0\0\0\0"  # no time in the header: a retry later, same bytes
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == text


def archived(server: S3Server, bucket: str, prefix: str, count: int) -> Any:
    """Waits until the archive under ``prefix`` holds ``count`` agents' events."""

    async def until() -> None:
        with trio.fail_after(30):
            while True:
                stored = data_objects(await read_bucket(server, bucket), prefix)
                if sum(1 for e in events_of(stored) if e.get("agent")) >= count:
                    return
                await trio.sleep(0.1)

    return until


async def test_the_daemon_refuses_to_start_against_a_bucket_without_object_lock(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """With a lock mode configured and a bucket without Object Lock, the daemon does not
    start, and says why."""
    bucket = await new_bucket(s3_server, locked=False)
    config = parse_config(daemon_config(tmp_path, {"s3": sink_table(s3_server, bucket)}))
    with pytest.RaisesGroup(
        pytest.RaisesExc(UnsafeDestination, match="no Object Lock"), flatten_subgroups=True
    ):
        await run_daemon(config, Shutdown())


async def test_retention_classes_split_objects_and_lock_each_for_its_class(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """Events a rule puts in a longer class land in objects of their own, locked for that
    class's days; the others are locked for the default's; manifest entries, which every class
    needs, are locked for the longest."""
    bucket = await new_bucket(s3_server)
    table = sink_table(s3_server, bucket)
    del table["object_lock"]["retention_days"]
    table["retention"] = {
        "classes": {"default": 1, "long": "3d"},
        "rules": [{"class": "long", "agent": "long-*"}],
    }
    raw = daemon_config(tmp_path, {"s3": table})
    lines = [
        line
        for pair in zip(chain_lines(20, "long-a"), chain_lines(20, "short-a"), strict=True)
        for line in pair
    ]
    now = datetime.now(UTC)
    await send_and_stop(raw, lines, archived(s3_server, bucket, "", 40))
    stored = await read_bucket(s3_server, bucket)
    objects = data_objects(stored)
    by_class: dict[str, set[str]] = {}
    for entry in manifests(stored):
        obj = objects[entry.key]
        agents = {orjson.loads(line).get("agent") for line in obj.lines}
        by_class.setdefault(entry.retention.cls, set()).update(agents)
        days = 3 if entry.retention.cls == "long" else 1
        assert obj.retain_until is not None
        assert abs(obj.retain_until - (now + timedelta(days=days))) < timedelta(minutes=2)
        assert entry.key.endswith(f"-{entry.retention.cls}.jsonl.gz")
    assert by_class["long"] == {"long-a"}
    assert "long-a" not in by_class["default"]
    assert "short-a" in by_class["default"]
    for key, obj in stored.items():
        if key.startswith("manifests/"):
            assert obj.mode == "COMPLIANCE"
            assert obj.retain_until is not None
            assert abs(obj.retain_until - (now + timedelta(days=3))) < timedelta(minutes=2)


def test_validate_check_remote_says_which_destination_is_unsafe(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """``shipper validate --check-remote`` exits 0 for a bucket with Object Lock, and 1 naming
    the sink for one without it or an endpoint where nothing answers."""
    locked = trio.run(new_bucket, s3_server)
    plain = trio.run(new_bucket, s3_server, False)
    sinks = {
        "locked": sink_table(s3_server, locked),
        "plain": sink_table(s3_server, plain),
    }
    good = write_config(
        tmp_path / "good.toml", daemon_config(tmp_path, {"locked": sinks["locked"]})
    )
    result = shipper("validate", "--check-remote", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "sinks.locked: ok" in result.stdout
    bad = write_config(tmp_path / "bad.toml", daemon_config(tmp_path, sinks))
    result = shipper("validate", "--check-remote", "-c", str(bad))
    assert result.returncode == 1
    assert "sinks.locked: ok" in result.stdout
    assert f"sinks.plain: unsafe: sink plain: bucket {plain} has no Object Lock" in result.stderr
    gone = sink_table(s3_server, locked, endpoint=f"http://127.0.0.1:{free_port()}")
    away = write_config(tmp_path / "away.toml", daemon_config(tmp_path, {"away": gone}))
    result = shipper("validate", "--check-remote", "-c", str(away))
    assert result.returncode == 1
    assert "sinks.away: could not check" in result.stderr
    assert shipper("validate", "-c", str(bad)).returncode == 0  # without the flag: no remote


async def test_legal_hold_encryption_storage_class_and_zstd_reach_every_object(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """With legal_hold, sse, storage_class and zstd configured, every object (data and
    manifest) carries the hold, the encryption and the class, and data objects are zstd JSON
    lines under a key prefix rendered from the source and the agent."""
    bucket = await new_bucket(s3_server)
    table = sink_table(
        s3_server,
        bucket,
        legal_hold=True,
        sse="AES256",
        storage_class="STANDARD_IA",
        compression="zstd",
        key_prefix="{{source}}/{{agent}}/{{year}}{{month}}{{day}}T{{hour}}/",
    )
    await send_and_stop(
        daemon_config(tmp_path, {"s3": table}),
        chain_lines(5, "agent/with odd:chars"),
        archived(s3_server, bucket, "", 5),
    )
    stored = await read_bucket(s3_server, bucket)
    for obj in stored.values():
        assert obj.head["ObjectLockLegalHoldStatus"] == "ON"
        assert obj.head["ServerSideEncryption"] == "AES256"
        assert obj.head["StorageClass"] == "STANDARD_IA"
    objects = data_objects(stored)
    agents = [key for key in objects if key.startswith("agents/agent_with_odd_chars/")]
    assert agents
    assert all(key.endswith("-default.jsonl.zst") for key in agents)
    events = events_of(objects)
    assert [e["record"]["sequence"] for e in events if e.get("agent")] == [1, 2, 3, 4, 5]
    assert {entry.compression for entry in manifests(stored)} == {"zstd"}


@pytest.mark.usefixtures("processes")
async def test_an_unreachable_endpoint_at_start_does_not_stop_the_daemon(
    tmp_path: Path, s3_server: S3Server, logs: LogCapture
) -> None:
    """With its S3 endpoint unreachable at start, the daemon starts anyway (the lock check is
    deferred), takes events into the WAL, and archives them all once the network is back."""
    bucket = await new_bucket(s3_server)
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    with proxy_to(host, int(port)) as proxy:
        proxy.cut()
        table = sink_table(s3_server, bucket, endpoint=proxy.url)
        config = parse_config(daemon_config(tmp_path, {"s3": table}))
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, config, shutdown)
            (deferred,) = logs.entries("sink_check_deferred")
            assert deferred["sink"] == "s3"
            address = bound["agents"][0]
            async with await trio.open_tcp_stream(address.host, address.port) as stream:
                await stream.send_all(b"".join(chain_lines(10, "agent-a")))
            await wait_until(lambda: len(logs.entries("sink_open_failed")) >= 2)
            assert not await read_bucket(s3_server, bucket)
            proxy.restore()
            await archived(s3_server, bucket, "", 10)()
            shutdown.request("test")
    events = events_of(data_objects(await read_bucket(s3_server, bucket)))
    assert [e["record"]["sequence"] for e in events if e.get("agent")] == list(range(1, 11))


async def test_objects_follow_their_agents_key_prefix_and_entries_span_each_agent(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """With two agents' events interleaved, a sink whose key prefix names the agent stores each
    event under its own agent's prefix, and a sink whose objects mix agents gives, in each
    manifest entry, every agent's first and last sequence and hash in that object."""
    bucket = await new_bucket(s3_server)
    sinks = {
        "by_agent": sink_table(s3_server, bucket, prefix="by-agent", key_prefix="{{agent}}/"),
        "mixed": sink_table(s3_server, bucket, prefix="mixed"),
    }
    pairs = zip(chain_lines(6, "agent-a"), chain_lines(6, "agent-b"), strict=True)
    lines = [line for pair in pairs for line in pair]

    async def until() -> None:
        await archived(s3_server, bucket, "by-agent/", 12)()
        await archived(s3_server, bucket, "mixed/", 12)()

    await send_and_stop(daemon_config(tmp_path, sinks), lines, until)
    stored = await read_bucket(s3_server, bucket)
    by_agent = data_objects(stored, "by-agent/")
    placed = [
        (key, event["agent"])
        for key, obj in by_agent.items()
        for event in map(orjson.loads, obj.lines)
        if event.get("agent")
    ]
    assert len(placed) == 12
    assert all(key.startswith(f"by-agent/{agent}/") for key, agent in placed)
    mixed = data_objects(stored, "mixed/")
    spans_seen = 0
    for entry in manifests(stored, "mixed/"):
        records: dict[str, list[dict[str, Any]]] = {}
        for event in map(orjson.loads, mixed[entry.key].lines):
            if event.get("agent"):
                records.setdefault(event["agent"], []).append(event["record"])
        expected = {
            agent: (rs[0]["sequence"], rs[0]["hash"], rs[-1]["sequence"], rs[-1]["hash"])
            for agent, rs in records.items()
        }
        spans = {
            agent: (span.first.sequence, span.first.hash, span.last.sequence, span.last.hash)
            for agent, span in entry.agents.items()
        }
        assert spans == expected
        spans_seen += sum(1 for first, _, last, _ in spans.values() if first != last)
    assert spans_seen  # (some object held several events of an agent)
