"""Ingest workers: the sources served in processes of their own (``[runtime] workers = N``).

The daemon's main process binds every source's sockets (``Source.bind``), so that a port taken or
a unix socket in use stops the start with a clear error, and starts ``N`` worker processes
(``python -m shipper.ingestproc``) that inherit those sockets (``pass_fds``) and serve them::

    sockets (bound once, in the main process)
        ├─► ingest worker 0: accept, TLS, framing, parsing, identity ─┐  batches
        └─► ingest worker 1: ...                                       ├─► writer (main) ─► WAL
                                                                       ┘  over each one's pipe

Every worker accepts on every stream listener (the kernel hands each connection to one of
them); a datagram socket (UDP, a unix datagram socket) is served by worker 0 alone, since its
kernel counters (drops) belong to the socket. One connection lives in one worker, and the worker
hands its batches on in the order it read them, so one connection's events stay in order.

The pipes carry ``shipper.children`` frames (a 4-byte length, then a pickle; between processes
of one installation only):

* main to worker, on stdin: one ``Spec``; later ``("stop", kept)`` to stop accepting and reading
  once what the sockets hold is read, as in one process (the worker hands on what it read, then
  exits with status 0); ``kept``: the ids of the sources whose listening sockets live on (a
  reload), whose waiting connections are left in the backlog for the next workers. The end of stdin without a stop (the
  main process is gone) makes the worker exit at once with ``ORPHANED``.
* worker to main, on stdout: ``("serving",)`` once its sources serve (the daemon's start waits
  for it from each worker, so that READY means connections are taken); then
  ``("batch", rows, size, counters)``: a batch of events (``rows``) in the
  order read, the bytes it counts as in the main process's ingest budget, and the worker's
  counters per source so far (with ``OPEN``, its connections open now, which is a gauge); ``("report", counters)`` while nothing else is sent and counters
  changed (refused connections, say), every ``REPORT_SECONDS``.

The main process takes a batch into its ingest channel only when it has room (the byte budget):
until then it reads no more of that pipe, the worker's writes wait, its connections stop
reading, and senders feel the backpressure, as with the sources in one process. It adds each
worker's counters to the source's (``source_*`` metrics are the sum over workers and their
earlier incarnations).

Supervision: a worker that exits before it was told to stop (killed, crashed) is logged
(``ingest_worker_exited``), counted (``ingest_worker_restarts``) and started again after a capped
backoff; its connections broke (senders reconnect and send again), the other workers and the
writer go on, and whatever it had handed on was already in the main process. Workers ignore
SIGTERM and SIGINT (a stop signals the whole process group): the main process tells them.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from shipper import heap
from shipper.balance import BOARD_FILE, AcceptBoard, AcceptGate
from shipper.budget import ByteBudget
from shipper.buffer.record import MAX_PAYLOAD
from shipper.chain import Facts
from shipper.children import (
    ORPHANED,
    RESTART_FIRST,
    RESTART_LIMIT,
    Frames,
    exit_reason,
    frame,
    reap,
    relay_logs,
)
from shipper.events import Batch, Event, size_of
from shipper.logging import configure, get_logger
from shipper.metrics import Health, Registry
from shipper.retry import Backoff
from shipper.sources import Listening, Source
from shipper.sources._net import Bound, StreamServer

log = get_logger("shipper.ingestproc")

#: How often a worker reports counters that changed while it sent no batch.
REPORT_SECONDS = 0.2
#: A worker gathers queued batches into one frame up to about this many bytes.
FRAME_BYTES = 1024 * 1024
#: The largest frame the main process takes from a worker: a gathered frame, plus one event as
#: large as a WAL record may be (a larger length is a broken stream).
MAX_BATCH_FRAME = FRAME_BYTES + 2 * MAX_PAYLOAD
#: The pipe a worker writes its frames to holds this much (Linux's default limit for a process
#: without privileges; the default pipe holds 64 KiB): while the writer verifies and appends one
#: batch, the worker can hand on the next frame without waiting for it.
PIPE_BYTES = 1024 * 1024
#: Bytes a worker's sources may hold read and not yet sent to the main process.
WORKER_BYTES = 8 * 1024 * 1024
#: Batches a worker's channel holds (each a slice of a socket read).
WORKER_BATCHES = 64
#: The key of a worker's report that holds a source's connections open now.
OPEN = "connections_open"
#: What the daemon counts about its ingest workers (``ingest_worker_<name>``).
WORKER_COUNTERS: dict[str, str] = {
    "restarts": "Ingest workers started again after one exited without being told to stop",
}


@dataclass(frozen=True)
class Spec:
    """What an ingest worker is given: the config as it was parsed from (``raw``, ``env``,
    ``origin``), the modules that register its source types, its index, the log level, and per
    source it serves the numbers of the inherited sockets and where they listen."""

    raw: Mapping[str, Any]
    env: Mapping[str, str] | None
    origin: str
    modules: tuple[str, ...]
    index: int
    log_level: str
    sockets: Mapping[str, tuple[tuple[int, ...], tuple[Listening, ...]]]


def serves(source: Source, index: int) -> bool:
    """Whether worker ``index`` serves ``source``: every worker a stream listener, worker 0 a
    datagram socket."""
    return source.shared or index == 0


def spec_of(config: Any, index: int, bound: Mapping[str, Bound], sources: list[Source]) -> Spec:
    """The spec of worker ``index`` for ``config`` (a ``shipper.config.Config``), given what the
    main process bound for each source."""
    if config.parsed is None:
        raise ValueError("ingest workers need a config made by parse_config (a defect)")
    modules = {type(part).__module__ for part in (*config.sources.values(), *config.sinks.values())}
    sockets = {
        source.id: (
            tuple(sock.fileno() for sock in bound[source.id].sockets),
            tuple(bound[source.id].addresses),
        )
        for source in sources
        if serves(source, index)
    }
    return Spec(
        raw=config.parsed.raw,
        env=config.parsed.env,
        origin=config.origin,
        modules=tuple(sorted(modules)),
        index=index,
        log_level=config.log_level,
        sockets=sockets,
    )


#: A record's event as it crosses the pipe (``rows``): ``received_at``, the ``source`` object (one
#: per connection: the pickle holds it once), ``agent``, its ``Facts`` as a plain tuple (or None),
#: and its sealed envelope's head and tail.
Row = tuple[str, dict[str, Any], str | None, tuple[Any, ...] | None, bytes, bytes]


def rows(events: list[Event]) -> list[Row | Event]:
    """``events`` as a worker sends them: each record the source sealed as a ``Row`` (about a
    fifth of the cost of pickling the event: no Python call per event, and the record's bytes
    once, in the tail, not twice), anything else (alerts, malformed input) as the event."""
    out: list[Row | Event] = []
    append = out.append
    for event in events:
        sealed = event.sealed
        if sealed is None or event.alert or event.record_json is None:
            append(event)
            continue
        facts = event.facts
        plain = None if facts is None else tuple(facts)
        append((event.received_at, event.source, event.agent, plain, sealed[0], sealed[1]))
    return out


def events(sent: list[Row | Event]) -> list[Event]:
    """The events of ``rows`` (in the main process). A record's event has its record only in
    its sealed tail (``record_json`` is empty): nothing after the source reads the record's
    bytes from an event that was sealed."""
    make = tuple.__new__
    return [
        row
        if isinstance(row, Event)
        else Event(
            row[0],
            row[1],
            row[2],
            b"",
            facts=None if row[3] is None else make(Facts, row[3]),
            sealed=(row[4], row[5]),
        )
        for row in sent
    ]


# --- the main process's side ----------------------------------------------------------------------


class IngestWorker:
    """Runs one ingest worker process and supervises it (see the module docstring).

    ``send``: the main process's ingest channel (this worker's clone, closed when it is done);
    ``budget``: its byte budget; ``sources``: the main process's sources by id, whose counters
    take the worker's."""

    def __init__(
        self,
        spec: Spec,
        send: trio.MemorySendChannel[list[Event]],
        budget: ByteBudget,
        sources: Mapping[str, Source],
    ) -> None:
        self.spec = spec
        self.index = spec.index
        self._send = send
        self._budget = budget
        self._sources = sources
        self.pid: int | None = None
        self.restarts = 0
        self.started = trio.Event()  # set at each start (tests wait for a restart with it)
        self._stopping = False
        self._stop_frame = frame(("stop", ()))
        self._stdin: trio.abc.SendStream | None = None
        self._seen: dict[str, dict[str, int]] = {}  # this incarnation's counters as last added
        self._task_status: trio.TaskStatus[None] | None = None  # until the first one serves
        self._health = Health("degraded", "ingest worker not started yet", time.monotonic())

    def _fields(self) -> dict[str, Any]:
        """What names this worker in a log entry."""
        return {"worker": self.index, "pid": self.pid}

    @property
    def fds(self) -> list[int]:
        return [fd for fds, _ in self.spec.sockets.values() for fd in fds]

    def register_metrics(self, registry: Registry) -> None:
        """The restarts of this worker (``ingest_worker_restarts``, by worker) and its health."""
        registry.health(f"ingest_worker.{self.index}", lambda: self._health)
        restarts = registry.counter(
            "ingest_worker_restarts", WORKER_COUNTERS["restarts"], labels=("worker",)
        ).labels(str(self.index))

        def collect() -> None:
            restarts.value = self.restarts

        registry.collector(collect)

    def stop(self, kept: Collection[str] = ()) -> None:
        """Tell the worker to stop accepting and reading (it reads what its sockets hold, hands
        on what it read, then exits); one that is not running now is not started again.
        ``kept``: the sources whose listening sockets live on (a reload): their waiting
        connections are left to the next workers."""
        self._stopping = True
        self._stop_frame = frame(("stop", tuple(kept)))
        if self._stdin is not None:
            stdin = self._stdin
            trio.lowlevel.spawn_system_task(self._tell_stop, stdin, self._stop_frame)

    @staticmethod
    async def _tell_stop(stdin: trio.abc.SendStream, stop: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stdin.send_all(stop)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the worker until it stopped when told to, starting it again each time it exits
        before that."""
        self._task_status = task_status
        backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
        async with self._send:
            while True:
                began = time.monotonic()
                returncode, reason = await self._run_once()
                if self._task_status is not None:  # it never served: the start goes on anyway
                    self._task_status.started()
                    self._task_status = None
                if self._stopping and returncode == 0:
                    return
                delay: float | None = None  # stopping: not started again
                if not self._stopping:
                    if time.monotonic() - began > RESTART_LIMIT:
                        backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
                    delay = backoff.next()
                    self.restarts += 1
                    self._health = Health("failing", f"ingest worker {reason}", time.monotonic())
                log.error(
                    "ingest_worker_exited",
                    **self._fields(),
                    returncode=returncode,
                    reason=reason,
                    restart_in=None if delay is None else round(delay, 3),
                    restarts=self.restarts,
                )
                if delay is None:
                    return
                await trio.sleep(delay)
                if self._stopping:
                    return

    async def _run_once(self) -> tuple[int | None, str]:
        """Start one worker and take its frames until it closes its stdout; its exit status and
        what it means (None: it could not be started). Kills it if cancelled."""
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "shipper.ingestproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=self.fds,
            )
        except OSError as exc:  # out of processes or memory: try again later
            return None, f"could not be started: {exc}"
        try:
            self.pid = process.pid
            self._seen = {}
            log.info("ingest_worker_started", worker=self.index, pid=process.pid)
            self.started.set()
            self.started = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    relay_logs,
                    process.stderr,
                    "ingest_worker_output",
                    self._fields,
                )
                await self._talk(process)
            returncode = await process.wait()
        finally:
            self._stdin = None
            for source in self._sources.values():  # its connections went with it
                source.open_elsewhere.pop(self.index, None)
            await reap(process)
        return returncode, exit_reason(returncode)

    async def _talk(self, process: trio.Process) -> None:
        """Send the spec (and a stop, if one was asked meanwhile), then take the worker's frames
        until it closes its stdout."""
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            await process.stdin.send_all(frame(self.spec))
            if self._stopping:
                await process.stdin.send_all(self._stop_frame)
            self._stdin = process.stdin
            frames = Frames(process.stdout, MAX_BATCH_FRAME)
            while (message := await frames.next()) is not None:
                await self._take(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is gone: its exit status says how
        except Exception as exc:  # a frame that does not unpickle: a defect, the worker's or ours
            log.exception(
                "ingest_worker_protocol_error", worker=self.index, pid=self.pid, error=repr(exc)
            )
            process.kill()

    async def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "batch":
            _, sent, size, counts = message
            self._count(counts)
            batch = Batch(events(sent), size)
            await self._budget.acquire(size)
            try:
                await self._send.send(batch)
            except BaseException:
                self._budget.release(size)
                raise
        elif kind == "report":
            self._count(message[1])
        elif kind == "serving":
            self._health = Health()
            if self._task_status is not None:  # the first start: the daemon may say READY
                self._task_status.started()
                self._task_status = None

    def _count(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add to each source's counters what this worker counted since its last report."""
        for source_id, values in counts.items():
            source = self._sources.get(source_id)
            if source is None:
                continue
            seen = self._seen.setdefault(source_id, {})
            for key, value in values.items():
                if key == OPEN:  # how many now, not how many more
                    source.open_elsewhere[self.index] = value
                    continue
                delta = value - seen.get(key, 0)
                if delta:
                    source.counters[key] += delta
                    seen[key] = value


# --- the worker's side ----------------------------------------------------------------------------


async def _worker(spec: Spec, frames: Frames, out: trio.abc.SendStream) -> int:
    """Serve the sources of ``spec`` until told to stop; the exit status."""
    from shipper.config import parse_config

    for module in spec.modules:
        importlib.import_module(module)
    config = parse_config(spec.raw, spec.env, spec.origin)
    send, receive = trio.open_memory_channel[list[Event]](WORKER_BATCHES)
    budget = ByteBudget(WORKER_BYTES)
    profile = config.chain.profile_fields
    sources: list[Source] = []
    bound: dict[str, Bound] = {}
    for source_id, (fds, addresses) in spec.sockets.items():
        source = config.sources[source_id].build(send.clone(), profile)
        source.budget = budget
        sources.append(source)
        sockets = [socket.socket(fileno=fd) for fd in fds]
        bound[source_id] = Bound(sockets, list(addresses))
    send.close()
    gate = _gate(config, spec.index, sources)
    orphaned = False

    def counters() -> dict[str, dict[str, int]]:
        return {
            source.id: {**source.counters.as_dict(), OPEN: source.open_connections()}
            for source in sources
        }

    async def forward() -> None:
        """Hand the sources' batches on, gathered, in the order read; counters that changed
        meanwhile are reported every ``REPORT_SECONDS``."""
        last = counters()
        async with receive:
            while True:
                first = None
                with trio.move_on_after(REPORT_SECONDS):  # only the wait: never a frame's write
                    try:
                        first = await receive.receive()
                    except trio.EndOfChannel:
                        break
                if first is None:
                    now = counters()
                    if now != last:
                        last = now
                        await out.send_all(frame(("report", now)))
                    continue
                events = list(first)
                size = size_of(first)
                while size < FRAME_BYTES:
                    try:
                        more = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    events.extend(more)
                    size += size_of(more)
                last = counters()
                await out.send_all(frame(("batch", rows(events), size, last)))
                budget.release(size)
        await out.send_all(frame(("report", counters())))

    async def watch_main(stop: trio.CancelScope) -> None:
        nonlocal orphaned
        told = False
        while (message := await frames.next()) is not None:
            if message[0] == "stop":
                told = True
                for source in sources:
                    source.stop(backlog=source.id not in message[1])
        if not told:  # the main process is gone: nobody takes what is read any more
            orphaned = True
            stop.cancel()

    with contextlib.ExitStack() as stack:
        for item in bound.values():
            stack.callback(item.close)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_main, nursery.cancel_scope)
            if gate is not None:
                stack.callback(gate.board.close)
                nursery.start_soon(gate.beat)
            async with trio.open_nursery() as work:
                for source in sources:
                    await work.start(partial(source.serve, bound[source.id]))
                await out.send_all(frame(("serving",)))  # before any batch: forward starts now
                heap.settle()
                work.start_soon(forward)
            nursery.cancel_scope.cancel()
    return ORPHANED if orphaned else 0


def _gate(config: Any, index: int, sources: list[Source]) -> AcceptGate | None:
    """The accept gate of worker ``index`` over its stream listeners (``shipper.balance``), set
    on each; None when there is no other worker to share them with."""
    servers = {source.id: getattr(source, "server", None) for source in sources}
    streams = {
        source_id: server
        for source_id, server in servers.items()
        if isinstance(server, StreamServer)
    }
    if config.runtime.workers < 2 or not streams:
        return None
    board = AcceptBoard(config.data_dir / BOARD_FILE, config.runtime.workers, index, list(streams))
    gate = AcceptGate(board, lambda source_id: streams[source_id].connections)
    for server in streams.values():
        server.gate = gate
    return gate


async def _worker_main() -> int:
    # Frames only on the real stdout; anything else printed goes to stderr with the logs.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    with contextlib.suppress(OSError):  # a larger pipe: the writer reads it between batches
        fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    out = trio.lowlevel.FdStream(out_fd)
    frames = Frames(stdin)  # one reader: a stop may come in the same read as the spec
    spec = await frames.next()
    if spec is None:
        return ORPHANED  # the main process was gone before it sent the spec
    assert isinstance(spec, Spec), type(spec)
    configure(spec.log_level)
    async with out:
        return await _worker(spec, frames, out)


def main() -> None:
    """An ingest worker: ``python -m shipper.ingestproc`` (started by the daemon only)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heap.enable()
    sys.exit(trio.run(_worker_main))


if __name__ == "__main__":
    # As the module itself, not ``__main__``: the spec unpickles to its classes.
    from shipper.ingestproc import main as ingest_worker

    ingest_worker()
