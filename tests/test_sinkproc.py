"""Sinks in processes of their own: a sink process killed under load comes back and resumes."""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from shipper import children
from shipper.chain import SEED
from shipper.children import _LENGTH, MAX_FRAME, MAX_LINE, Frames
from shipper.config import parse_config
from shipper.config.registry import SINK_TYPES
from shipper.events import alert_event
from shipper.metrics import Registry, value
from shipper.sinkproc import emitter
from shipper.sinks.base import Counting, SinkContext
from shipper.topology import Topology
from tests.conftest import (
    LogCapture,
    archive_lines,
    file_sink_config,
    free_port,
    log_entries,
    running_daemon,
    wait_for,
    wait_until,
)
from tests.test_cli import daemon_config, write_config
from tests.test_crash import AGENTS, Sender, archived
from tests.test_daemon import record, send

KILLS = 3


def started(root: Path, sink: str) -> list[int]:
    """The pids of ``sink``'s processes the daemon started so far, in order."""
    return [
        entry["pid"]
        for entry in log_entries(root)
        if entry.get("event") == "sink_process_started" and entry.get("sink") == sink
    ]


def delivered(topology: Topology, sink: str = "archive") -> Any:
    """``sink_events`` of ``sink`` in the topology's metrics now."""
    return value(topology.registry.snapshot(), "sink_events", sink)


def test_a_killed_sink_process_comes_back_and_archives_everything_once(tmp_path: Path) -> None:
    """SIGKILLed three times under load, a sink's process is started again each time and
    resumes from its cursor: every record sent is archived exactly once and in order per agent,
    while ingest and the other sink's process go on untouched."""
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = {"sink_processes": True}
    raw["buffer"] = {"fsync": "batch", "segment_bytes": "256KiB"}
    raw["sinks"]["mirror"] = {"type": "file", "path": str(tmp_path / "mirror")}
    config = write_config(tmp_path / "shipper.toml", raw)
    senders = [Sender(port, agent, 1) for agent in AGENTS]
    try:
        with running_daemon(config, tmp_path) as daemon:
            for sender in senders:
                sender.start()
            # Its supervisor starts the sink's process beside the sources: maybe after ready.
            wait_for(lambda: started(tmp_path, "archive"), "the sink's process")
            for kill in range(KILLS):
                pids = started(tmp_path, "archive")
                assert len(pids) == kill + 1
                floor = len(archive_lines(tmp_path / "archive")) + 2000
                wait_for(lambda n=floor: len(archive_lines(tmp_path / "archive")) > n, "deliveries")
                os.kill(pids[-1], signal.SIGKILL)
                wait_for(lambda n=kill + 1: len(started(tmp_path, "archive")) > n, "a restart")
            for sender in senders:
                sender.stop_flag.set()
                sender.join(timeout=30)
            total = sum(sender.next - 1 for sender in senders)
            wait_for(lambda: len(archived(tmp_path)) >= total, "the rest of the load")
            assert daemon.stop() == 0
    finally:
        for sender in senders:
            sender.stop_flag.set()
    events = archived(tmp_path)
    doubled = [key for key, count in Counter(events).items() if count > 1]
    assert not doubled, f"{len(doubled)} records archived twice, e.g. {doubled[:3]}"
    for sender in senders:
        sequences = [sequence for agent, sequence in events if agent == sender.agent]
        assert sequences == list(range(1, sender.next)), sender.agent
    mirrored = [orjson.loads(line) for line in archive_lines(tmp_path / "mirror")]
    assert len(mirrored) == len(events)
    assert len(started(tmp_path, "mirror")) == 1  # the other sink never stopped
    exits = [e for e in log_entries(tmp_path) if e.get("event") == "sink_process_exited"]
    assert [(e["sink"], e["reason"]) for e in exits] == [("archive", "killed by SIGKILL")] * KILLS
    (complete,) = [e for e in log_entries(tmp_path) if e.get("event") == "shutdown_complete"]
    sinks = complete["metrics"]["sink"]
    assert sinks["archive"]["process_restarts"] == KILLS
    assert sinks["mirror"]["events"] == len(mirrored)  # counted in its process, seen here
    assert 0 < sinks["archive"]["events"] <= len(events)  # less what a killed one had not told


async def test_a_restarted_sink_process_counts_on_from_what_the_killed_one_reported(
    tmp_path: Path,
) -> None:
    """The daemon's ``sink_*`` counters add a restarted sink process's counts to those its killed
    predecessor reported, its health reads failing while it is down, and ``sink_process_restarts``
    counts the restart."""
    raw = file_sink_config(tmp_path)
    raw["runtime"] = {"sink_processes": True}
    topology = Topology(parse_config(raw))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(topology.run)
        (slot,) = topology.sinks
        assert slot.process is not None
        await send(bound["agents"][0], b"".join(record("a", n) for n in range(1, 11)))
        await wait_until(lambda: delivered(topology) == 10)
        first = slot.process.pid
        assert first is not None
        restarted = slot.process.started
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: slot.process is not None and slot.process.restarts == 1)
        assert slot.process.health().status == "failing"
        await restarted.wait()
        assert slot.process.pid != first
        await send(bound["agents"][0], b"".join(record("a", n) for n in range(11, 21)))
        await wait_until(lambda: delivered(topology) == 20)
        snapshot = topology.registry.snapshot()
        topology.stop()
    assert value(snapshot, "sink_events", "archive") == 20
    assert value(snapshot, "sink_process_restarts", "archive") == 1
    sequences = [
        orjson.loads(line)["record"]["sequence"] for line in archive_lines(tmp_path / "archive")
    ]
    assert sequences == list(range(1, 21))


async def test_a_sink_process_that_fails_at_start_is_logged_and_started_again(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink process that crashes as it starts does not stop the daemon: its traceback is
    logged (``sink_process_output``), its exit too (``sink_process_exited``, with its status),
    its sink's health reads failing, and it is started again."""
    raw = file_sink_config(tmp_path)
    raw["runtime"] = {"sink_processes": True}
    topology = Topology(parse_config(raw))
    (slot,) = topology.sinks
    assert slot.process is not None
    spec = slot.process.spec
    monkeypatch.setattr(slot.process, "spec", lambda epoch: replace(spec(epoch), sink="missing"))
    async with trio.open_nursery() as nursery:
        await nursery.start(topology.run)
        await wait_until(lambda: len(logs.entries("sink_process_exited")) >= 2)
        health = slot.process.health()
        topology.stop()
        nursery.cancel_scope.cancel()
    first = logs.entries("sink_process_exited")[0]
    assert (first["sink"], first["reason"]) == ("archive", "exit status 1")
    output = " ".join(entry["line"] for entry in logs.entries("sink_process_output"))
    assert "KeyError: 'missing'" in output
    assert health.status == "failing"
    assert health.reason == "sink process exit status 1"


async def test_a_frame_length_past_the_limit_is_a_broken_stream_not_a_wait() -> None:
    """A length prefix larger than MAX_FRAME (bytes that are no frame of ours) is refused at
    once, instead of buffering the child's output until that many bytes came."""
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    await send_stream.send_all(_LENGTH.pack(MAX_FRAME + 1) + b"x" * 100)
    await send_stream.aclose()
    with pytest.raises(ValueError, match="announced"):
        await Frames(receive_stream).next()


async def test_a_childs_endless_stderr_line_is_cut_and_the_next_lines_still_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line without end on a child's stderr is relayed cut to MAX_LINE, the rest of it up to
    its newline dropped, and the lines after it relayed whole: memory stays bounded."""
    lines: list[bytes] = []
    monkeypatch.setattr(children, "_relay_line", lambda line, *_: lines.append(line))
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(children.relay_logs, receive_stream, "test_output", dict)
        for _ in range(20):
            await send_stream.send_all(b"y" * 65536)
        await send_stream.send_all(b"\nnext line\nlast")
        await send_stream.aclose()
    assert lines == [b"y" * MAX_LINE, b"next line", b"last"]


#: A minimal table of each built-in sink type (what building it needs, nothing reached).
MINIMAL_SINKS: dict[str, dict[str, Any]] = {
    "file": {"type": "file", "path": "archive"},
    "s3": {"type": "s3", "bucket": "audit", "endpoint": "http://127.0.0.1:9", "region": "x"},
    "cef_syslog": {"type": "cef_syslog", "address": "127.0.0.1:9"},
    "webhook": {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
}


def test_the_minimal_sinks_cover_every_registered_sink_type() -> None:
    """Every built-in sink type has a table in MINIMAL_SINKS, so the counter test below covers
    a type added later."""
    assert sorted(MINIMAL_SINKS) == SINK_TYPES.names()


@pytest.mark.parametrize("kind", sorted(MINIMAL_SINKS))
async def test_a_sink_configs_declared_counters_are_those_its_built_sink_keeps(
    tmp_path: Path, kind: str
) -> None:
    """``SinkConfig.own_counters`` (what the daemon declares for a sink in its own process)
    names exactly the counters the sink built from that config keeps of its own."""
    raw = file_sink_config(tmp_path)
    raw["sinks"] = {"out": MINIMAL_SINKS[kind]}
    config = parse_config(raw).sinks["out"]
    sink = config.build(SinkContext(SEED))
    kept = dict(sink.own_counters) if isinstance(sink, Counting) else {}
    assert dict(config.own_counters()) == kept


def test_the_daemon_declares_a_sink_processes_own_counters_without_building_the_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sink processes, the daemon's registry holds a webhook sink's own counters at zero
    before any report from its process, and the daemon never builds the sink."""
    raw = file_sink_config(tmp_path)
    raw["sinks"] = {"hook": MINIMAL_SINKS["webhook"]}
    raw["runtime"] = {"sink_processes": True}
    config = parse_config(raw)

    def no_build(self: object, context: object) -> None:
        raise AssertionError("the daemon built a sink that runs in its own process")

    monkeypatch.setattr(type(config.sinks["hook"]), "build", no_build)
    snapshot = Topology(config).registry.snapshot()
    own = config.sinks["hook"].own_counters()
    assert own  # a webhook sink counts something of its own: else this proves nothing
    for name in own:
        assert value(snapshot, f"sink_{name}", "hook") == 0


async def test_an_event_a_sink_process_cannot_queue_is_counted_in_the_daemons_emitted_dropped(
    tmp_path: Path, logs: LogCapture
) -> None:
    """In a sink process, an event raised while its frame queue to the daemon is full is
    dropped, counted in ``writer_emitted_dropped`` and logged; merged into the daemon's
    registry, the count adds to the daemon's own."""
    read_end, write_end = os.pipe()
    stdin, out = trio.lowlevel.FdStream(read_end), trio.lowlevel.FdStream(write_end)
    try:
        parent = children.Parent(children.Frames(stdin), out)
        registry = Registry()
        emit = emitter(parent, registry, "archive")
        event = alert_event("test_alert", "a", {})
        queued = [emit(event) for _ in range(children.FRAME_QUEUE)]
        refused = [emit(event) for _ in range(3)]
        topology = Topology(parse_config(file_sink_config(tmp_path)))
        topology.counters["emitted_dropped"] = 2  # the daemon's own drops
        topology.registry.include(registry.snapshot)
        snapshot = topology.registry.snapshot()
    finally:
        await stdin.aclose()
        await out.aclose()
    assert all(queued)
    assert refused == [False, False, False]
    assert value(snapshot, "writer_emitted_dropped") == 2 + 3
    (entry,) = logs.entries("emitted_event_dropped")  # at most once a second
    assert entry["sink"] == "archive"
