"""The whole daemon in-process: sources to file sink, ordering, inputs, and two-phase shutdown."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer.wal import WalLocked
from shipper.config import Address, parse_config
from shipper.errors import ListenError
from shipper.metrics import merge, value
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.file import FileSink
from shipper.sources import Listening
from shipper.topology import Topology
from tests.conftest import WORKERS, LogCapture, archive_lines, file_sink_config, wait_until


def record(agent: str, sequence: int) -> bytes:
    """One audit record line in the seed format (without a real hash)."""
    return orjson.dumps({"agentId": agent, "sequence": sequence, "action": "db.query"}) + b"\n"


async def send(address: Address, data: bytes) -> None:
    """Send ``data`` over one TCP connection and close it."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(data)


@pytest.mark.usefixtures("processes")
async def test_events_reach_the_archive_in_order_with_unique_ids(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Records sent over several connections all land in the archive, each in sending order."""
    config = parse_config(file_sink_config(tmp_path))
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        address = bound["agents"][0]
        async with trio.open_nursery() as senders:
            for agent in ("a", "b", "c"):
                data = b"".join(record(agent, n) for n in range(1, 501))
                senders.start_soon(send, address, data)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 1500)
        shutdown.request("test")
    envelopes = [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]
    for agent in ("a", "b", "c"):
        sequences = [e["record"]["sequence"] for e in envelopes if e["agent"] == agent]
        assert sequences == list(range(1, 501))
    assert len({e["id"] for e in envelopes}) == 1500
    (complete,) = logs.entries("shutdown_complete")
    assert complete["delivered"] == {"archive": 1500}
    metrics = complete["metrics"]
    assert metrics["source"]["agents"]["events"] == 1500
    assert metrics["source"]["agents"]["connections_accepted"] == 3
    assert metrics["wal"]["events"] == 1500
    assert metrics["wal"]["fsyncs"] >= 1
    assert metrics["wal"]["dropped_full"] == 0
    assert metrics["sink"]["archive"]["events"] == 1500
    assert metrics["sink"]["archive"]["lag_bytes"] == 0
    assert "health" not in metrics  # every component ok, even as it stops


@pytest.mark.usefixtures("processes")
async def test_sink_inputs_select_sources(tmp_path: Path, logs: LogCapture) -> None:
    """A sink with ``inputs`` gets only the events of the sources it names."""
    raw = file_sink_config(tmp_path)
    raw["sources"]["other"] = {"type": "json_tls", "address": "127.0.0.1:0"}
    raw["sinks"]["only_other"] = {
        "type": "file",
        "path": str(tmp_path / "other"),
        "inputs": ["other"],
    }
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        await send(bound["agents"][0], record("a", 1))
        await send(bound["other"][0], record("o", 1))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 2)
        await wait_until(lambda: len(archive_lines(tmp_path / "other")) == 1)
        shutdown.request("test")
    (only,) = [orjson.loads(line) for line in archive_lines(tmp_path / "other")]
    assert only["source"]["id"] == "other"
    assert only["agent"] == "o"


async def test_shutdown_drains_every_accepted_event(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events accepted but not yet written when SIGTERM-style shutdown starts are all written."""
    gate = threading.Event()
    real_write = FileSink._write

    def held_write(self: FileSink, data: bytes) -> None:
        gate.wait(timeout=30)
        real_write(self, data)

    monkeypatch.setattr(FileSink, "_write", held_write)
    config = parse_config(file_sink_config(tmp_path))
    shutdown = Shutdown()
    drained: list[bool] = []

    async def daemon(task_status: trio.TaskStatus[dict[str, list[Listening]]]) -> None:
        drained.append(await run_daemon(config, shutdown, task_status=task_status))

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(daemon)
        data = b"".join(record("a", n) for n in range(1, 2001))
        await send(bound["agents"][0], data)
        await wait_until(lambda: sum(int(e["events"]) for e in closed(logs)) == 2000)
        assert archive_lines(tmp_path / "archive") == []
        shutdown.request("SIGTERM")
        await wait_until(lambda: bool(logs.entries("shutdown_started")))
        gate.set()
    assert drained == [True]
    sequences = [
        orjson.loads(line)["record"]["sequence"] for line in archive_lines(tmp_path / "archive")
    ]
    assert sequences == list(range(1, 2001))


def closed(logs: LogCapture) -> list[dict[str, Any]]:
    """The ``connection_closed`` entries (each says how many events the connection gave)."""
    return logs.entries("connection_closed")


@pytest.mark.usefixtures("processes")
async def test_forced_shutdown_keeps_undelivered_events_for_the_next_start(
    tmp_path: Path, logs: LogCapture
) -> None:
    """When a sink cannot write, shutdown gives up at the deadline, and the next start delivers."""
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the archive directory should be")
    raw = file_sink_config(tmp_path)
    raw["shutdown_timeout"] = "300ms"
    shutdown = Shutdown()
    drained: list[bool] = []

    async def daemon(task_status: trio.TaskStatus[dict[str, list[Listening]]]) -> None:
        drained.append(await run_daemon(parse_config(raw), shutdown, task_status=task_status))

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(daemon)
        await send(bound["agents"][0], record("a", 1) + record("a", 2))
        await wait_until(lambda: bool(logs.entries("sink_write_failed")))
        shutdown.request("SIGTERM")
    assert drained == [False]
    (forced,) = logs.entries("shutdown_forced")
    assert forced["undelivered_bytes"]["archive"] > 0
    assert forced["reason"] == "shutdown_timeout passed"

    blocker.unlink()
    restart = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon, parse_config(raw), restart)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 2)
        restart.request("test")
    sequences = [orjson.loads(line)["record"]["sequence"] for line in archive_lines(blocker)]
    assert sequences == [1, 2]


@pytest.mark.usefixtures("processes")
async def test_unwritable_archive_recovers_without_losing_events(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A sink whose directory cannot be created retries, and delivers everything once it can."""
    blocker = tmp_path / "archive"
    blocker.write_text("in the way")
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(file_sink_config(tmp_path)), shutdown)
        await send(bound["agents"][0], record("a", 1) + record("a", 2))
        await wait_until(lambda: len(logs.entries("sink_write_failed")) >= 2)
        blocker.unlink()
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 2)
        shutdown.request("test")
    assert logs.entries("shutdown_complete")


@pytest.mark.usefixtures("processes")
async def test_file_sink_rotates_by_size(tmp_path: Path, logs: LogCapture) -> None:
    """Past max_file_bytes the sink starts a new file, and no line is split between files."""
    shutdown = Shutdown()
    config = parse_config(file_sink_config(tmp_path, max_file_bytes="4KiB"))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        for n in range(1, 101):  # one connection each: many small batches
            await send(bound["agents"][0], record("a", n))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 100)
        shutdown.request("test")
    files = sorted((tmp_path / "archive").glob("events-*.jsonl"))
    assert len(files) > 3
    for file in files:
        data = file.read_bytes()
        assert len(data) <= 4096
        assert data.endswith(b"\n")
    sequences = [
        orjson.loads(line)["record"]["sequence"] for line in archive_lines(tmp_path / "archive")
    ]
    assert sorted(sequences) == list(range(1, 101))  # (one connection each: no order between)


@pytest.mark.usefixtures("processes")
async def test_listen_failure_is_reported_as_listen_error(tmp_path: Path, logs: LogCapture) -> None:
    """A taken address makes start-up fail with a ListenError naming the source and address."""
    raw = file_sink_config(tmp_path)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), Shutdown())
        taken = bound["agents"][0]
        other = file_sink_config(tmp_path / "other")
        other["sources"]["agents"]["address"] = f"127.0.0.1:{taken.port}"
        with pytest.RaisesGroup(
            pytest.RaisesExc(ListenError, match="source agents: cannot listen"),
            flatten_subgroups=True,
        ):
            await run_daemon(parse_config(other), Shutdown(), handle_signals=False)
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("processes")
async def test_second_daemon_on_the_same_wal_is_refused(tmp_path: Path, logs: LogCapture) -> None:
    """Two daemons never share a WAL: the second one fails to start with WalLocked."""
    raw = file_sink_config(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon, parse_config(raw), Shutdown())
        with pytest.RaisesGroup(
            pytest.RaisesExc(WalLocked, match="in use by another process"),
            flatten_subgroups=True,
        ):
            await run_daemon(parse_config(raw), Shutdown(), handle_signals=False)
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("processes")
async def test_backpressure_blocks_the_sender_and_loses_nothing(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With a tiny WAL and a refusing sink, a TCP sender stalls; once the sink recovers, every
    event drains in order and nothing was dropped."""
    blocker = tmp_path / "archive"
    blocker.write_text("the sink cannot create its directory while this file is here")
    raw = file_sink_config(tmp_path)
    raw["buffer"] = {"max_bytes": "1MiB", "segment_bytes": "128KiB"}
    total = 50_000
    pad = b'{"pad":"' + b"p" * 500 + b'",'
    # ~28 MB: far more than the WAL, the ingest channel and the kernel's socket buffers hold.
    data = b"".join(pad + record("bp", n)[1:] for n in range(total))
    sent = trio.Event()
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)

        async def sender() -> None:
            await send(bound["agents"][0], data)
            sent.set()

        nursery.start_soon(sender)
        await wait_until(lambda: bool(logs.entries("wal_full_blocking")))
        await trio.sleep(1)  # time in which an unbounded pipeline would have taken everything
        assert not sent.is_set(), "the sender was never slowed down"
        blocker.unlink()
        await sent.wait()
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == total, limit=60)
        shutdown.request("test")
    sequences = [orjson.loads(line)["record"]["sequence"] for line in archive_lines(blocker)]
    assert sequences == list(range(total))
    assert not logs.entries("wal_full_dropped")
    assert logs.entries("wal_unblocked")


@pytest.mark.usefixtures("processes")
async def test_a_forced_shutdown_says_what_it_discards(tmp_path: Path, logs: LogCapture) -> None:
    """Events read but never accepted by a full WAL are counted in ``shutdown_forced`` when the
    deadline gives up on them, next to what stays in the WAL."""
    blocker = tmp_path / "archive"
    blocker.write_text("the sink cannot write: the WAL fills up")
    raw = file_sink_config(tmp_path)
    raw["shutdown_timeout"] = "300ms"
    raw["buffer"] = {"max_bytes": "1MiB", "segment_bytes": "64KiB"}
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        line = orjson.dumps({"agentId": "a", "notes": "x" * 1000}) + b"\n"

        async def sender() -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # the stop closes the connection
                await send(bound["agents"][0], line * 3000)

        nursery.start_soon(sender)
        await wait_until(lambda: bool(logs.entries("wal_full_blocking")))
        shutdown.request("SIGTERM")
    (forced,) = logs.entries("shutdown_forced")
    discarded = forced["discarded"]
    assert discarded["events_in_writer"] > 0
    assert discarded["events_in_writer"] + forced["metrics"]["writer"]["events"] <= 3000


async def test_every_component_reports_into_one_registry_that_merges(
    tmp_path: Path, processes: bool
) -> None:
    """A running daemon's registry holds every component's health (all ok while it runs) and
    metrics, as plain data that survives JSON and merges with another process's snapshot."""
    topology = Topology(parse_config(file_sink_config(tmp_path)))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(topology.run)
        await send(bound["agents"][0], b"".join(record("a", n) for n in range(1, 11)))
        await wait_until(
            lambda: (
                value(topology.registry.snapshot(), "sink_events", "archive") == 10
                and not topology.wal.lag_bytes("archive")
            )
        )
        snapshot = orjson.loads(orjson.dumps(topology.registry.snapshot()))
        topology.stop()
    health = {component: state["status"] for component, state in snapshot["health"].items()}
    workers = {f"ingest_worker.{n}": "ok" for n in range(WORKERS if processes else 0)}
    expected = {
        "source.agents": "ok",
        "chain": "ok",
        "wal": "ok",
        "writer": "ok",
        "sink.archive": "ok",
    }
    assert health == expected | workers
    assert value(snapshot, "source_events", "agents") == 10
    assert value(snapshot, "chain_verdicts", "unchained") == 10  # records without a hash
    assert value(snapshot, "wal_events") == 10
    assert value(snapshot, "sink_events", "archive") == 10
    assert value(snapshot, "sink_lag_bytes", "archive") == 0
    assert value(snapshot, "wal_buffer_bytes") > 0
    doubled = merge([snapshot, snapshot])
    assert value(doubled, "sink_events", "archive") == 20
