"""Ingest workers: sources served in processes of their own, supervised by the main process."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

import shipper.children
import shipper.topology
from shipper.api.health import components, problems
from shipper.chain import SEED, Facts
from shipper.config import parse_config
from shipper.events import Event, Malformed, alert_event, entry, event_bytes
from shipper.ingestproc import WORKER_BYTES, events, rows
from shipper.shutdown import Shutdown, run_daemon
from shipper.topology import Topology
from tests.chains import chain
from tests.conftest import (
    WORKERS,
    LogCapture,
    TlsFiles,
    archive_lines,
    file_sink_config,
    log_entries,
    running_daemon,
    wait_for,
    wait_until,
)
from tests.test_chain import rehash
from tests.test_cli import daemon_config, write_config
from tests.test_crash import archived
from tests.test_daemon import send


class Sender(threading.Thread):
    """Sends one agent's numbered records over one connection until stopped or broken, and
    knows its connection's local port (to find the worker that holds it)."""

    def __init__(self, port: int, agent: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.agent = agent
        self.next = 1
        self.local_port: int | None = None
        self.connected = threading.Event()
        self.broken = False
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                self.local_port = sock.getsockname()[1]
                self.connected.set()
                while not self.stop_flag.is_set():
                    lines = (
                        orjson.dumps({"agentId": self.agent, "sequence": n, "pad": "p" * 200})
                        + b"\n"
                        for n in range(self.next, self.next + 20)
                    )
                    sock.sendall(b"".join(lines))
                    self.next += 20
                    time.sleep(0.002)  # a steady load, not a flood: the test is not a bench
        except OSError:
            self.broken = True
        finally:
            self.connected.set()


def workers_started(root: Path) -> list[tuple[int, int]]:
    """(worker index, pid) of every ingest worker the daemon started so far, in order."""
    return [
        (entry["worker"], entry["pid"])
        for entry in log_entries(root)
        if entry.get("event") == "ingest_worker_started"
    ]


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def server_side(port: int, peer_port: int) -> str | None:
    """The inode of the accepted socket on ``port`` whose peer is local port ``peer_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == peer_port:
            return inode
    return None


def holder(pids: list[int], port: int, sender: Sender) -> int | None:
    """The pid among ``pids`` whose process holds ``sender``'s connection."""
    assert sender.local_port is not None
    inode = server_side(port, sender.local_port)
    for pid in pids:
        if inode is not None and inode in socket_inodes(pid):
            return pid
    return None


def test_a_killed_ingest_worker_comes_back_and_the_other_connections_go_on(
    tmp_path: Path,
) -> None:
    """SIGKILL of one ingest worker under load: the daemon keeps running and starts it again,
    the connections the other worker holds go on untouched (every record they sent is archived),
    those of the killed one break, a new connection is served, and nothing is archived twice."""
    port = 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = {"workers": WORKERS}
    config = write_config(tmp_path / "shipper.toml", raw)
    senders: list[Sender] = []
    try:
        with running_daemon(config, tmp_path) as daemon:
            wait_for(lambda: len(workers_started(tmp_path)) == WORKERS, "the workers")
            pids = [pid for _, pid in workers_started(tmp_path)]
            held: dict[int, list[Sender]] = {pid: [] for pid in pids}
            # Connect until each worker holds one (the kernel picks the worker that accepts).
            while not all(held.values()):
                assert len(senders) < 64, f"connections all went to one worker: {held}"
                sender = Sender(port, f"agent-{len(senders)}")
                sender.start()
                sender.connected.wait(10)
                senders.append(sender)
                wait_for(lambda s=sender: holder(pids, port, s) is not None, "the connection")
                pid = holder(pids, port, sender)
                assert pid is not None
                held[pid].append(sender)
            (victim_index, victim), (_, survivor) = workers_started(tmp_path)[::-1]
            floor = len(archive_lines(tmp_path / "archive")) + 500
            wait_for(lambda: len(archive_lines(tmp_path / "archive")) > floor, "deliveries")
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(workers_started(tmp_path)) > WORKERS, "a restart")
            wait_for(lambda: all(s.broken for s in held[victim]), "the broken connections")
            assert not any(s.broken for s in held[survivor])
            late = Sender(port, "agent-late")  # served by either worker, the new one included
            late.start()
            late.connected.wait(10)
            wait_for(lambda: late.next > 200, "the new connection")
            for sender in [*senders, late]:
                sender.stop_flag.set()
                sender.join(timeout=30)
            untouched = [*held[survivor], late]
            total = sum(s.next - 1 for s in untouched)
            wait_for(
                lambda: (
                    sum(
                        1
                        for agent, _ in archived(tmp_path)
                        if agent in {s.agent for s in untouched}
                    )
                    >= total
                ),
                "every record of the untouched connections",
            )
            assert daemon.process.poll() is None  # the daemon never stopped
            assert daemon.stop() == 0
    finally:
        for sender in senders:
            sender.stop_flag.set()
    events = archived(tmp_path)
    doubled = [key for key, count in Counter(events).items() if count > 1]
    assert not doubled, f"{len(doubled)} records archived twice, e.g. {doubled[:3]}"
    for sender in [*held[survivor], late]:
        sequences = [sequence for agent, sequence in events if agent == sender.agent]
        assert sequences == list(range(1, sender.next)), sender.agent
    for sender in held[victim]:  # what the killed worker had handed on: a prefix, in order
        sequences = [sequence for agent, sequence in events if agent == sender.agent]
        assert sequences == list(range(1, len(sequences) + 1)), sender.agent
    exits = [e for e in log_entries(tmp_path) if e.get("event") == "ingest_worker_exited"]
    assert [(e["worker"], e["reason"]) for e in exits] == [(victim_index, "killed by SIGKILL")]
    (complete,) = [e for e in log_entries(tmp_path) if e.get("event") == "shutdown_complete"]
    assert complete["metrics"]["source"]["agents"]["connections_accepted"] == len(senders) + 1


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def _phases() -> list[list[bytes]]:
    """What each connection sends, one connection after the other: three agents chained and
    moving between connections, with every chain status, alerts, a dropped duplicate, records
    that are not chained and a line that is not JSON; each phase ends with a marker record."""
    a1, a2, a3 = chain(14, "a1"), chain(6, "a2"), chain(9, "a3")
    forked = rehash({**a1[7], "effect": "forged"})  # sequence 8 again, another hash: a fork
    broken = rehash({**a2[3], "prevHash": "sha256:" + "0" * 64})  # a late one that links wrong
    edited = {**a1[10], "effect": "tampered"}  # sequence 11, not rehashed: bad_hash
    phases = [
        [*a1[:5], *a2[:3]],  # genesis, ok
        [*a1[5:8], a1[9], a2[2], a2[4]],  # moved connection: ok; gap; duplicate (dropped); gap
        [a1[8], broken, edited, *a3[6:], forked],  # late; broken_link; bad_hash; adopted; fork
        [{"agentId": "a4", "sequence": 1}, *a1[11:], a2[5]],  # unchained; ok after bad_hash
    ]
    out = [[_line(record) for record in phase] for phase in phases]
    out[3].insert(1, b"{not json\n")  # malformed
    for n, lines in enumerate(out):
        lines.append(_line({"marker": n}))
    return out


def _comparable(value: Any) -> Any:
    """An archived envelope without what differs between runs (ids, times, peers' ports)."""
    if isinstance(value, dict):
        return {
            key: _comparable(item)
            for key, item in value.items()
            if key not in {"id", "received_at", "event_received_at", "peer"}
        }
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def _archived(root: Path, text: bytes) -> bool:
    """Whether a line of the archive under ``root`` holds ``text``."""
    return any(text in line for line in archive_lines(root / "archive"))


async def _archive_of(root: Path, phases: list[list[bytes]], runtime: dict[str, Any]) -> list[Any]:
    """Send ``phases`` to a daemon with ``runtime``, each phase once the one before it is
    archived (its marker), and read the archive back."""
    raw = file_sink_config(root)
    raw["runtime"] = runtime
    topology = Topology(parse_config(raw))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(topology.run)
        for n, lines in enumerate(phases):
            await send(bound["agents"][0], b"".join(lines))
            await wait_until(partial(_archived, root, b'{"marker":%d}' % n))
        topology.stop()
    return [_comparable(orjson.loads(line)) for line in archive_lines(root / "archive")]


async def test_one_process_and_workers_archive_the_same(tmp_path: Path) -> None:
    """The same connections, with every chain status and agents moving between connections,
    give the same archive with the sources in the daemon's process and in two ingest workers:
    the same events and verdicts, the same alerts, in the same order."""
    phases = _phases()
    one = await _archive_of(tmp_path / "one", phases, {"workers": 0})
    spread = await _archive_of(
        tmp_path / "workers", phases, {"workers": WORKERS, "sink_processes": True}
    )
    assert spread == one
    statuses = Counter(event["chain"]["status"] for event in one if "chain" in event)
    expected = {"genesis", "ok", "gap", "late", "broken_link", "bad_hash", "adopted", "fork"}
    assert expected <= set(statuses), statuses
    assert any("malformed" in event for event in one)
    assert sum(1 for event in one if event["source"]["kind"] == "alert") >= 6
    a2 = [e["record"]["sequence"] for e in one if "chain" in e and e["agent"] == "a2"]
    duplicates = [sequence for sequence in a2 if sequence == 3]
    assert len(duplicates) == 1  # the repeated record was dropped as a duplicate


async def test_datagram_sources_live_in_one_worker(tmp_path: Path) -> None:
    """A UDP source is served by worker 0 alone (its socket's kernel counters are its own): with
    two workers asked for and only a datagram source, one worker starts, serves, and is never
    restarted for having nothing to serve."""
    raw = file_sink_config(tmp_path)
    raw["sources"] = {"udp": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:0"}}
    raw["runtime"] = {"workers": WORKERS}
    topology = Topology(parse_config(raw))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(topology.run)
        (address,) = bound["udp"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"<13>1 - host app - - - hello", (address.host, address.port))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 1)
        topology.stop()
    assert [worker.index for worker in topology.workers] == [0]
    assert topology.workers[0].restarts == 0
    (event,) = (orjson.loads(line) for line in archive_lines(tmp_path / "archive"))
    assert event["record"]["msg"] == "hello"
    assert topology.sources[0].counters["datagrams"] == 1


def test_events_cross_the_pipe_as_rows_and_encode_the_same() -> None:
    """A worker's sealed records cross the pipe as rows and come back as events with the same
    facts and the same WAL entries once verified; malformed input and alerts cross as events."""
    source = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:5000"}
    sent: list[Event] = []
    for record in chain(3, "a1"):
        line = orjson.dumps(record)
        event = Event("2026-12-03T10:00:00.000000Z", source, "a1", line)
        event.facts = SEED.facts(orjson.loads(line), line)
        event.seal()
        sent.append(event)
    unchained = Event("2026-12-03T10:00:00.000000Z", source, None, b'{"x":1}')
    unchained.seal()
    malformed = Event("2026-12-03T10:00:00.000000Z", source, malformed=Malformed.of("bad", b"{"))
    malformed.seal()
    alert = alert_event("shipper.identity_alert", "a1", {"status": "identity_mismatch"})
    sent += [unchained, malformed, alert]
    wire = pickle.loads(pickle.dumps(rows(sent), protocol=pickle.HIGHEST_PROTOCOL))
    assert [type(row) for row in wire] == [tuple] * 4 + [Event, Event]
    back = events(wire)
    assert [event.facts for event in back] == [event.facts for event in sent]
    assert all(type(event.facts) is Facts for event in back[:3])
    for event in (*sent, *back):
        event.chain = {"status": "ok", "sequence": 1} if event.facts is not None else None
    assert [entry(event) for event in back] == [entry(event) for event in sent]
    assert [event_bytes(event) for event in back] == [event_bytes(event) for event in sent]


async def test_a_forced_shutdown_counts_what_the_ingest_workers_had_not_handed_on(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the WAL is full and the ingest channel too, a forced shutdown counts in
    ``discarded`` the events the main process read from a worker and holds waiting for room,
    and the bytes the worker held unsent, next to what the writer held: never more than sent."""
    monkeypatch.setattr(shipper.topology, "CHANNEL_BYTES", 64 * 1024)  # full with one frame
    blocker = tmp_path / "archive"
    blocker.write_text("the sink cannot write: the WAL fills up")
    raw = file_sink_config(tmp_path)
    raw["shutdown_timeout"] = "300ms"
    raw["buffer"] = {"max_bytes": "1MiB", "segment_bytes": "64KiB"}
    raw["runtime"] = {"workers": 1}
    config = parse_config(raw)
    topology = Topology(config)
    shutdown = Shutdown()
    total = 12_000  # about 12 MB: more than the WAL, the writer and the channel hold
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(run_daemon, config, shutdown, topology=topology))
        line = orjson.dumps({"agentId": "a", "notes": "x" * 1000}) + b"\n"

        async def sender() -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # the kill closes it
                await send(bound["agents"][0], line * total)

        nursery.start_soon(sender)
        (worker,) = topology.workers
        await wait_until(
            lambda: bool(logs.entries("wal_full_blocking")) and worker.unsent()["events"] > 0
        )
        shutdown.request("SIGTERM")
    (forced,) = logs.entries("shutdown_forced")
    discarded = forced["discarded"]
    assert discarded["events_from_workers"] > 0
    assert 0 <= discarded["bytes_in_workers_at_least"] <= WORKER_BYTES
    known = discarded["events_in_writer"] + discarded["events_from_workers"]
    assert known + forced["metrics"]["writer"]["events"] <= total


def _source_health(topology: Topology) -> dict[str, Any]:
    """``source.agents`` as the daemon's registry (and ``/health``) reads it now."""
    return dict(topology.registry.snapshot()["health"]["source.agents"])


async def test_a_source_reads_degraded_while_one_of_its_workers_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source served by two workers reads ok while both serve, degraded (naming the worker
    and why) while one that was killed waits for its restart, and /health stays healthy: the
    other worker takes the connections."""
    monkeypatch.setattr(shipper.children, "RESTART_FIRST", 3600.0)  # no restart in the test
    raw = file_sink_config(tmp_path)
    raw["runtime"] = {"workers": WORKERS}
    topology = Topology(parse_config(raw))
    async with trio.open_nursery() as nursery:
        await nursery.start(topology.run)
        assert _source_health(topology)["status"] == "ok"
        victim = topology.workers[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await wait_until(lambda: victim.restarts == 1)
        health = _source_health(topology)
        snapshot = topology.registry.snapshot()
        topology.stop()
    assert health["status"] == "degraded"
    assert health["reason"] == "not served by worker 1: ingest worker killed by SIGKILL"
    assert not problems(components(snapshot["health"], time.monotonic()), 60.0)


async def test_a_listener_that_fails_in_every_worker_makes_its_source_fail(
    tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS listener whose key is gone by the time the workers start (the main process had
    built it) fails in every worker: its source reads failing, naming each worker's exit, and
    /health says the daemon is unhealthy because of it."""
    monkeypatch.setattr(shipper.children, "RESTART_FIRST", 3600.0)  # no restart in the test
    key = tmp_path / "server.key"
    key.write_bytes(tls_files.server_key.read_bytes())
    raw = file_sink_config(tmp_path)
    raw["sources"]["agents"]["tls"] = {"cert": str(tls_files.server_pem), "key": str(key)}
    raw["runtime"] = {"workers": WORKERS, "sink_processes": False}  # (a sink's parses it too)
    topology = Topology(parse_config(raw))
    key.unlink()
    async with trio.open_nursery() as nursery:
        await nursery.start(topology.run)
        await wait_until(lambda: all(worker.restarts == 1 for worker in topology.workers))
        health = _source_health(topology)
        snapshot = topology.registry.snapshot()
        topology.stop()
    assert health["status"] == "failing"
    assert health["reason"] == (
        "not served by worker 0: ingest worker exit status 1; worker 1: ingest worker exit status 1"
    )
    reasons = problems(components(snapshot["health"], time.monotonic()), 60.0)
    assert reasons == [f"source.agents: {health['reason']}"]
