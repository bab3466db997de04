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

A worker is a child of the daemon (``shipper.children``: ``IngestWorker`` is a ``Supervised``
of the kind ``INGEST_WORKER``, and the worker runs under ``child_main``), so the protocol, the
log relay, the stop, the exit statuses and the supervision are that module's. What is its own:

* main to worker, on stdin: one ``Spec`` (the config, the worker's index, the numbers of the
  inherited sockets); ``("stop", kept)`` makes it stop accepting and reading once what its
  sockets hold is read, as in one process, hand on what it read, and exit with status 0;
  ``kept``: the ids of the sources whose listening sockets live on (a reload), whose waiting
  connections are left in the backlog for the next workers.
* worker to main, on stdout: ``("serving",)`` once its sources serve (the kind's serving frame:
  the daemon's start waits for it from each worker, so that READY means connections are taken;
  the worker's health reads ok from then); then ``("batch", rows, size, counters)``: a batch of
  events (``rows``) in the order read, the bytes it counts as in the main process's ingest
  budget, and the worker's counters per source so far (with ``OPEN``, its connections open now,
  which is a gauge), and ``held``: the bytes its sources had read and not handed on when it
  made the frame (this one's aside); ``("counts", counters, held)`` while nothing else is sent
  and counters changed (refused connections, say), every ``REPORT_SECONDS``; and the child's
  reports.

A worker queues at most ``WORKER_FRAMES`` frames for its pipe (which it asks to hold
``PIPE_BYTES``), after its sources' byte budget (``WORKER_BYTES``). The main process takes a
batch into its ingest channel only when it has room (the byte budget): until then it reads no
more of that pipe, the worker's writes wait, its connections stop reading, and senders feel the
backpressure, as with the sources in one process. It adds each worker's counters to the
source's (``source_*`` metrics are the sum over workers and their earlier incarnations).

What a forced shutdown loses here (``IngestWorker.unsent``, in ``Topology.not_accepted``): the
batch the main process read from a worker and holds while it waits for room (its events), and
what the worker's sources had read and not handed on at its last frame the main process read
(``held``, bytes). Frames the worker wrote after that one, and what its sources read since, are
lost too and unknown here: what is known is a floor.

Supervision (``shipper.children``): a worker that exits before it was told to stop (killed,
crashed) is logged (``ingest_worker_exited``), counted (``ingest_worker_restarts``) and started
again after a capped backoff; its health (``ingest_worker.<n>``) reads failing until the new
one serves. So does the health of each source it serves (``source.<id>``, through
``Source.served_by``): degraded while another worker still serves it, failing while none does
(a listener that fails in every worker: each one exits, and is started again). Its connections
broke (senders reconnect and send again), the other workers and the writer go on, and whatever
it had handed on was already in the main process. Workers ignore SIGTERM and SIGINT (a stop
signals the whole process group): the main process tells them.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from shipper import heap
from shipper.balance import BOARD_FILE, AcceptBoard, AcceptGate
from shipper.budget import ByteBudget
from shipper.buffer.record import MAX_PAYLOAD
from shipper.chain import Facts
from shipper.children import ConfigSpec, Kind, Parent, Supervised, child_main
from shipper.events import Batch, Event, size_of
from shipper.logging import get_logger
from shipper.metrics import Health, Registry
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
#: Frames a worker queues for its pipe (each batch frame up to ``MAX_BATCH_FRAME``): few, since
#: what is queued is out of the worker's byte budget already.
WORKER_FRAMES = 2
#: Bytes a worker's sources may hold read and not yet sent to the main process.
WORKER_BYTES = 8 * 1024 * 1024
#: Batches a worker's channel holds (each a slice of a socket read).
WORKER_BATCHES = 64
#: The key of a worker's report that holds a source's connections open now.
OPEN = "connections_open"

INGEST_WORKER = Kind(
    module="shipper.ingestproc",
    prefix="ingest_worker",
    label="worker",
    restarts_help="Ingest workers started again after one exited without being told to stop",
    component="ingest_worker",
    serving="serving",
    max_frame=MAX_BATCH_FRAME,
)


@dataclass(frozen=True)
class Spec:
    """What an ingest worker is given: the config, its index, and per source it serves the
    numbers of the inherited sockets and where they listen."""

    config: ConfigSpec
    index: int
    sockets: Mapping[str, tuple[tuple[int, ...], tuple[Listening, ...]]]

    @property
    def log_level(self) -> str:
        return self.config.log_level


def serves(source: Source, index: int) -> bool:
    """Whether worker ``index`` serves ``source``: every worker a stream listener, worker 0 a
    datagram socket."""
    return source.shared or index == 0


def spec_of(config: Any, index: int, bound: Mapping[str, Bound], sources: list[Source]) -> Spec:
    """The spec of worker ``index`` for ``config`` (a ``shipper.config.Config``), given what the
    main process bound for each source."""
    sockets = {
        source.id: (
            tuple(sock.fileno() for sock in bound[source.id].sockets),
            tuple(bound[source.id].addresses),
        )
        for source in sources
        if serves(source, index)
    }
    return Spec(ConfigSpec.of(config), index, sockets)


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


class IngestWorker(Supervised):
    """Runs one ingest worker process and supervises it (see the module docstring; a
    ``shipper.children.Supervised``).

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
        super().__init__(INGEST_WORKER, str(spec.index), self._take_batch, self._gone)
        self.spec = spec
        self.index = spec.index
        self._send = send
        self._budget = budget
        self._sources = sources
        self._seen: dict[str, dict[str, int]] = {}  # this incarnation's counters as last added
        self._waiting: Batch | None = None  # read from the pipe, not yet in the ingest channel
        self._held = 0  # what the running worker held, as its last frame said
        for source_id in spec.sockets:
            sources[source_id].served_by[self.index] = self.serves

    @property
    def _fields(self) -> dict[str, Any]:
        """What names this worker in a log entry."""
        return {"worker": self.index, "pid": self.pid}

    @property
    def fds(self) -> list[int]:
        return [fd for fds, _ in self.spec.sockets.values() for fd in fds]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the worker until it stopped when told to, starting it again each time it exits
        before that; started once the first worker serves (or exits)."""
        async with self._send:
            await self.supervise(self.spec, pass_fds=self.fds, task_status=task_status)

    def serves(self) -> Health:
        """How this worker serves its sources now (``Source.served_by``): ok while it serves
        (from its serving frame on), else why not (not started yet, exited)."""
        health = self.health()
        if health.status == "ok":
            return health
        return Health(health.status, f"worker {self.index}: {health.reason}", health.since)

    def unsent(self) -> dict[str, int]:
        """What this worker read from senders and the main process has not put into its ingest
        channel (see the module docstring): ``events`` of the batch it holds from the worker,
        and ``bytes`` the worker held at its last frame (a floor)."""
        waiting = self._waiting
        return {"events": len(waiting) if waiting is not None else 0, "bytes": self._held}

    async def _gone(self) -> None:
        """A worker exited: its connections went with it, and the next one counts from 0."""
        self._seen = {}
        self._held = 0
        for source in self._sources.values():
            source.open_elsewhere.pop(self.index, None)

    async def _take_batch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "batch":
            _, sent, size, counts, self._held = message
            self._count(counts)
            batch = self._waiting = Batch(events(sent), size)
            await self._budget.acquire(size)
            try:
                await self._send.send(batch)
            except BaseException:
                self._budget.release(size)
                raise
            self._waiting = None
        elif kind == "counts":
            _, counts, self._held = message
            self._count(counts)
        else:
            raise ValueError(f"an ingest worker sent an unknown frame: {kind!r}")

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


async def _work(spec: Spec, parent: Parent, registry: Registry) -> None:
    """Serve the sources of ``spec`` until told to stop."""
    config = spec.config.parse()
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
                        await parent.send(("counts", now, budget.used))
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
                held = budget.used - size
                await parent.send(("batch", rows(events), size, last, held))
                budget.release(size)
        await parent.send(("counts", counters(), budget.used))

    async def stop_when_told() -> None:
        await parent.stopping.wait()
        kept = parent.stop_details[0] if parent.stop_details else ()
        for source in sources:
            source.stop(backlog=source.id not in kept)

    with contextlib.ExitStack() as stack:
        for item in bound.values():
            stack.callback(item.close)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_told)
            if gate is not None:
                stack.callback(gate.board.close)
                nursery.start_soon(gate.beat)
            async with trio.open_nursery() as work:
                for source in sources:
                    await work.start(partial(source.serve, bound[source.id]))
                await parent.send(("serving",))  # before any batch: forward starts now
                heap.settle()
                work.start_soon(forward)
            nursery.cancel_scope.cancel()


def _gate(config: Any, index: int, sources: list[Source]) -> AcceptGate | None:
    """The accept gate of worker ``index`` over its stream listeners (``shipper.balance``), set
    on each; None when there is no other worker to share them with."""
    streams = {
        source.id: server
        for source in sources
        if isinstance(server := getattr(source, "server", None), StreamServer)
    }
    if config.runtime.workers < 2 or not streams:
        return None
    path = config.data_dir / BOARD_FILE
    try:
        board = AcceptBoard(path, config.runtime.workers, index, list(streams))
    except (OSError, ValueError) as exc:  # (mmap: ValueError for an unusable size)
        log.warning("ingest_board_unusable", worker=index, path=str(path), error=str(exc))
        return None
    gate = AcceptGate(board, lambda source_id: streams[source_id].connections)
    for server in streams.values():
        server.gate = gate
    return gate


def main() -> None:
    """An ingest worker: ``python -m shipper.ingestproc`` (started by the daemon only)."""
    child_main(_work, queue=WORKER_FRAMES, pipe_bytes=PIPE_BYTES)


if __name__ == "__main__":
    # As the module itself, not ``__main__``: the spec unpickles to its classes.
    from shipper.ingestproc import main as ingest_worker

    ingest_worker()
