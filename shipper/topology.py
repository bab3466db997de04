"""Topology: builds sources, the WAL and sinks from the config and connects them.

::

    source A ─┐                                                ┌─► reader 1 ─► sink 1
    source B ─┼─► ingest channel ─► chain stage ─► WAL writer ─► WAL ─┼─► reader 2 ─► sink 2
    source C ─┘   (bounded, batches)  (verify, dedupe,  (commit point)  └─► ...
                                       alerts)

The ingest channel is bounded, and the WAL writer waits when the WAL is full (``when_full =
"block"``): then the sources' handlers wait, stop reading their sockets, and senders feel
backpressure. Each sink reads the WAL at its own pace through its own cursor, so a slow or dead sink
holds back no other sink until the WAL is full. Each sink runs under its own driver
(``shipper.sinks.driver``), which batches, retries, dead-letters and restarts it: a sink's failure
never ends the daemon. With ``[runtime] sink_processes`` (the default), each driver runs in a
process of its own instead (``shipper.sinkproc``: ``SinkSlot.process``), which the topology
supervises; the events it raises come back into ``emit``, and its metrics into the registry here.

Per event, the sources do everything that needs no shared state: framing, parsing, the record's
chain facts (``Profile.facts``: canonical form and digest; the parse is dropped at once), the
identity check, and the envelope's bytes (``Event.seal``); each gets the chain profile for that
(``config.build(send, profile)``). The writer keeps what must be serial: the chain stage's
per-agent check of those facts, the verdict spliced into the bytes (``events.entry``), the WAL
append.

Once the WAL accepted a batch, the writer offers it to the live tap (``shipper.api.tap``, the
``tap`` hub), which never waits: with no client connected, that is one check per batch.

The chain stage (``shipper.chain_stage``) runs in the writer's task, between the ingest channel and
the WAL, so its state always matches a WAL position; it is checkpointed every
``chain.checkpoint_interval``, when the WAL is full, and at shutdown, and restored at start.

The writer appends batches of at most ``ROUTE_EVENTS`` events and about ``ROUTE_BYTES`` bytes
(a larger batch, such as a UDP burst, is cut), and keeps up to ``PIPELINE_DEPTH`` of them written
to the WAL and not yet accepted: while the WAL's sync lane fsyncs them, the writer verifies the
next ones, splices the verdicts in and writes them (group commit). Before a checkpoint it waits
until every batch it wrote is accepted.

The WAL is full at ``max_bytes``, and also when its file system has less than its reserve free
(``RESERVE_BYTES`` plus twice the last checkpoint): a disk filling up is a full buffer. Before the
chain stage sees a batch, a full WAL makes the writer settle what is in flight and checkpoint
(which lets the WAL free every segment the sinks have passed), then wait for room, trying a failed
checkpoint again meanwhile (``block``), or drop the batch, counted (``drop_newest``).

When the WAL refuses batches anyway (a write or an fsync failed: the disk filled up faster than
the reserve, or an I/O error), it goes back to its last accepted batch; the writer takes every
batch it had not accepted back out of the chain state (``ChainStage.rebuilt``: the checkpoint plus
the WAL up to that batch) and queues them, unverified, in front of everything else. They are
verified and written again, in order, after a growing pause (or once there is room). The chain
state is therefore never ahead of the WAL for long: checkpoints, and with them the freeing of
segments, go on while the disk refuses, and the daemon resumes by itself once space returns.

Shutdown (driven by ``shipper.shutdown``): ``stop()`` makes the sources stop accepting and reading,
once they read what their sockets hold (``shipper.sources._net``);
each source closes its channel once its connections have handed on what they read; the writer
appends what is left and closes the WAL; each sink delivers what is in the WAL and returns (a
sink process sees the WAL closed in its files, delivers and exits); ``finished`` is set. What a
sink could not deliver stays in the WAL for the next start.

Reloading (``reload``, one at a time; what differs is ``shipper.reload``'s): the sinks a new
config removes or changes stop (each delivers and acknowledges what it read: ``SinkDriver.stop``,
``Supervised.stop``); a removed sink's WAL reader goes, an added sink's starts at the WAL's end,
a changed one's at its cursor. Then the sources removed or changed stop (what they read goes on
to the writer) and the new ones start: each in a scope of its own in this process, or, with
ingest workers, bound here and served by workers started again with the new sources. Each stop
waits at most ``shutdown_timeout``, then is cancelled. Sources and sinks that did not change are
not touched; neither are the writer, the WAL and the chain stage.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio

from shipper import heap
from shipper.api.tap import TapHub
from shipper.budget import ByteBudget
from shipper.buffer.segment import Position
from shipper.buffer.wal import PIPELINE_DEPTH, Wal, WalWriteError
from shipper.chain_stage import CHAIN_CURSOR, ChainStage, Checkpoint, read_checkpoint
from shipper.config import Config, SinkConfig, SourceConfig, load_config
from shipper.errors import (
    ConfigError,
    ConfigProblem,
    DataDirError,
    DestinationUnavailable,
    ShipperError,
    UnsafeDestination,
)
from shipper.events import Event, Malformed, entry, envelopes, event_bytes, size_of
from shipper.ingestproc import IngestWorker
from shipper.ingestproc import spec_of as ingest_spec_of
from shipper.logging import Throttle, get_logger
from shipper.metrics import Health, Registry, mirror, summary
from shipper.procstat import usage
from shipper.recent import Recent
from shipper.reload import Changes, ReloadResult, effective
from shipper.retry import Backoff
from shipper.sdnotify import notify
from shipper.sinkproc import SinkProcess
from shipper.sinks.base import EMITTED_DROPPED, EmitDrops, SinkContext
from shipper.sinks.driver import SinkDriver
from shipper.sources import Listening, Source
from shipper.sources._net import Bound

log = get_logger("shipper.topology")

#: Batches (one per slice of a socket read, ``FEED_BYTES``) the ingest channel holds...
CHANNEL_BATCHES = 64
#: ... and bytes (each batch's ``Batch.size``): sources wait while it holds more
#: (``shipper.budget``). With ingest workers, whose batches arrive as fast as they parse, the
#: queue stays full: at 32 MiB the main process peaked some 40 to 60 MB higher with 10,000
#: agents (what the queue held as events, then the allocator's arenas it left pinned) for no
#: throughput the bench could tell apart, and 4 MiB took another 7 to 8 MB off it; 4 MiB still
#: holds two of the writer's appends (``ROUTE_BYTES``).
CHANNEL_BYTES = 4 * 1024 * 1024
#: How long the start waits for a sink's destination to answer its safety check.
CHECK_SECONDS = 10.0
#: Events raised by sinks that may wait to be forwarded to the writer.
EMIT_QUEUE = 10_000
#: The WAL writer gathers queued batches up to this many events per append...
ROUTE_EVENTS = 4096
#: ... and about this many bytes (``batch_bytes``); a larger batch is cut into several appends.
ROUTE_BYTES = 2 * 1024 * 1024
#: Free space the WAL keeps on its file system (below it, it counts as full): room for the
#: appends in flight, plus twice the last chain checkpoint (added once one is written).
RESERVE_BYTES = (PIPELINE_DEPTH + 2) * ROUTE_BYTES
#: Failed checkpoints are tried again after growing pauses from this (while blocked on a full
#: WAL, at each look at its free space at the soonest).
CHECKPOINT_RETRY_SECONDS = 1.0


@dataclass
class SinkSlot:
    """A sink's id, the source ids it takes (None: all), and what runs it: its driver, or with
    ``[runtime] sink_processes``, the process it runs in."""

    id: str
    inputs: frozenset[str] | None
    driver: SinkDriver | None = None
    process: SinkProcess | None = None
    task: _Task = field(default_factory=lambda: _Task())


@dataclass
class _Task:
    """A source's, a sink's or an ingest worker's task in the topology's nursery, to stop it
    alone (a reload): cancelled through ``scope``; ``done`` once it returned."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    #: A source's clone of the ingest channel, closed when its task ends (however it ends).
    send: trio.MemorySendChannel[list[Event]] | None = None


#: What the writer counts (``writer_<name>`` metrics).
WRITER_COUNTERS: dict[str, str] = {
    "events": "Events the WAL accepted from the writer",
    "dropped": "Events dropped before the chain stage because the WAL was full (drop_newest)",
    "encode_errors": "Events that could not be encoded, archived as malformed (a defect)",
    "write_refusals": "Times the WAL refused batches (they were verified and written again)",
    "requeued_batches": "Batches requeued after the WAL refused them",
    "emitted_dropped": EMITTED_DROPPED,
}


class Topology:
    """The running graph of one config: sources, router, sinks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        ingest_send, self._ingest = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
        # Events raised by sinks (archive seals, delivery alerts): queued without blocking, and
        # forwarded into the ingest channel by a task of their own, like a source's.
        self._emitted, self._emitted_receive = trio.open_memory_channel[Event](EMIT_QUEUE)
        self._emit_ingest = ingest_send.clone()
        # Open until ``stop`` (or the end of ``run``): each source, or each ingest worker, has a
        # clone of its own, and a reload makes more.
        self._ingest_send = ingest_send
        self.budget = ByteBudget(CHANNEL_BYTES)
        self.workers: list[IngestWorker] = []
        self._worker_tasks: list[_Task] = []
        self._source_tasks: dict[str, _Task] = {}  # sources in this process, by id
        self._sockets: dict[str, Bound] = {}  # what this process bound for the ingest workers
        self.sources: list[Source] = [self._source(source) for source in config.sources.values()]
        self._context = SinkContext(config.chain.profile_fields, self.emit)
        self.sinks: list[SinkSlot] = [self._slot(sink) for sink in config.sinks.values()]
        self.wal = Wal(config.data_dir / "wal", config.buffer, RESERVE_BYTES, envelopes=envelopes)
        self.chain = ChainStage(config.chain, config.data_dir)
        self._next_checkpoint = 0.0
        self._checkpoint_failed = False
        self._checkpointed: Position | None = None  # where the last checkpoint stored covers
        self._checkpoint_retry = Backoff(CHECKPOINT_RETRY_SECONDS, 30.0)
        self._checkpoint_retry_at = 0.0
        # Batches the chain stage has seen and the WAL has not accepted yet, in order: not yet
        # written, and written (with the WAL's number for each).
        self._unwritten: deque[_Batch] = deque()
        self._unaccepted: deque[_Batch] = deque()
        # Batches to verify before anything new from the sources, in order: refused by the WAL
        # (and taken back out of the chain state), or the rest of a batch larger than one append.
        self._requeued: deque[list[Event]] = deque()
        self._pause_due = False  # the WAL refused batches: pause before writing them again
        self._refused_since = 0.0  # when the WAL began refusing (0: it is not)
        self._refused_monotonic = 0.0  # the same on the clock health is told on
        self._retry = Backoff()
        self.bound: dict[str, list[Listening]] = {}
        self.finished = trio.Event()
        self.counters: Counter[str] = Counter()
        self.recent = Recent()  # the last alerts and agents the WAL accepted (the status page)
        self._error_log = Throttle(1)
        self._emit_dropped = EmitDrops(self.counters)
        self.registry = Registry()
        self._register_metrics()
        #: The live tap (``/api/tap``): fed with each batch the WAL accepted.
        self.tap = TapHub(self.registry, config.api.tap_buffer)
        self._nursery: trio.Nursery | None = None  # run's, once everything started
        self._stopping = False
        self._started = False  # run started everything (a reload may run)
        self._reloading = trio.Lock()  # one reload at a time
        # Sinks a reload changed and could not build: not running, not in the config, and their
        # WAL readers kept (they hold what the sink has not delivered) until a reload starts them
        # again, at their cursors, or removes them.
        self._held: set[str] = set()

    def _source(self, config: SourceConfig) -> Source:
        """Build a source. With ingest workers it runs in them (``shipper.ingestproc``): here it
        binds the sockets and holds the counters, and never sends (each worker has the
        channel)."""
        profile = self.config.chain.profile_fields
        if self.config.runtime.workers:
            unused, _ = trio.open_memory_channel[list[Event]](0)
            with unused:
                source = config.build(unused.clone(), profile)
        else:
            send = self._ingest_send.clone()
            source = config.build(send, profile)
            self._source_tasks[source.id] = _Task(send=send)
        source.budget = self.budget
        return source

    def _slot(self, sink: SinkConfig) -> SinkSlot:
        """A sink's slot: its driver, or with ``[runtime] sink_processes`` its process (the
        sink is built there, not here)."""
        slot = SinkSlot(sink.id, frozenset(sink.inputs) if sink.inputs is not None else None)
        if self.config.runtime.sink_processes:
            slot.process = SinkProcess(self.config, sink, self.emit, self._refresh_cursors)
        else:
            slot.driver = SinkDriver(
                sink.build(self._context), self.config.data_dir, self.emit, sink.redact
            )
        return slot

    def _register_metrics(self) -> None:
        """Every component counts into, and tells its health to, this topology's registry."""
        registry = self.registry
        for source in self.sources:
            source.register_metrics(registry)
        self.chain.register_metrics(registry)
        self.wal.register_metrics(registry)
        mirror(registry, "writer", lambda: self.counters, WRITER_COUNTERS)
        registry.health("writer", self.health)
        registry.gauge(
            "ingest_queued_bytes", "Bytes queued between the sources and the writer", unit="bytes"
        ).labels().observe(lambda: self.budget.used)
        self._lag_gauge = registry.gauge(
            "sink_lag_bytes",
            "WAL bytes a sink has not acknowledged",
            unit="bytes",
            labels=("sink",),
        )
        self._lag_seconds_gauge = registry.gauge(
            "sink_lag_seconds",
            "How long the oldest WAL entry a sink has not acknowledged has waited",
            unit="seconds",
            labels=("sink",),
        )
        for slot in self.sinks:
            self._register_slot(slot)
        self._register_processes()

    def _register_slot(self, slot: SinkSlot) -> None:
        if slot.process is not None:
            slot.process.register_metrics(self.registry)
        elif slot.driver is not None:
            slot.driver.register_metrics(self.registry)
        self._lag_gauge.labels(slot.id).observe(partial(self._lag, slot.id))
        self._lag_seconds_gauge.labels(slot.id).observe(partial(self._lag_seconds, slot.id))

    def _register_processes(self) -> None:
        """CPU seconds and resident memory of each process of the daemon (``process`` label:
        ``main``, ``sink.<id>``, ``ingest_worker.<n>``, as their health is named), read from
        the kernel at each snapshot; a process that is not running has none."""
        cpu = self.registry.cumulative(
            "process_cpu_seconds",
            "CPU time (user and system) a process of the daemon used",
            unit="seconds",
            labels=("process",),
        )
        rss = self.registry.gauge(
            "process_resident_memory_bytes",
            "Resident memory of a process of the daemon",
            unit="bytes",
            labels=("process",),
        )

        def collect() -> None:
            for name, pid in self.processes().items():
                used = usage(pid) if pid is not None else None
                if used is None:
                    cpu.remove(name)
                    rss.remove(name)
                    continue
                cpu.labels(name).set(used.cpu_seconds)
                rss.labels(name).set(used.rss_bytes)

        self.registry.collector(collect)

    def processes(self) -> dict[str, int | None]:
        """The daemon's processes by name (``main``, ``sink.<id>``, ``ingest_worker.<n>``) and
        their process ids (None: not running now)."""
        found: dict[str, int | None] = {"main": os.getpid()}
        for slot in self.sinks:
            if slot.process is not None:
                found[f"sink.{slot.id}"] = slot.process.pid
        for worker in self.workers:
            found[f"ingest_worker.{worker.index}"] = worker.pid
        return found

    def health(self) -> Health:
        """The writer's: ``failing`` while the WAL refuses its batches (a write or an fsync
        failed), since the first refusal; else ``ok``."""
        if self._refused_since:
            return Health("failing", "the WAL refuses writes", self._refused_monotonic)
        return Health()

    async def _refresh_cursors(self) -> None:
        """A sink process exited: take in the cursors it stored (its lag, and what the WAL may
        delete), even once the WAL stopped listening for acknowledgements."""
        if self.wal.readers:
            await self.wal.collect(refresh=True)

    def _lag_seconds(self, sink_id: str) -> float:
        """How long the oldest WAL entry that sink has not acknowledged has waited."""
        return self.wal.lag_seconds(sink_id) if sink_id in self.wal.readers else 0.0

    def _lag(self, sink_id: str) -> int:
        """Bytes in the WAL that sink has not acknowledged (0 before the WAL is open)."""
        return self.wal.lag_bytes(sink_id) if sink_id in self.wal.readers else 0

    async def run(self, *, task_status: trio.TaskStatus[dict[str, list[Listening]]]) -> None:
        """Start sinks, router and sources; report the listening addresses; run until drained."""
        try:
            await self._check_destinations(list(self.config.sinks.values()))
            readers: dict[str, frozenset[str] | None] = {CHAIN_CURSOR: None}
            readers.update({slot.id: slot.inputs for slot in self.sinks})
            try:
                found = await trio.to_thread.run_sync(read_checkpoint, self.config.data_dir)
                # The checkpoint's epoch is the best evidence of the WAL's, if wal/epoch is lost.
                hint = found.epoch if isinstance(found, Checkpoint) else None
                await trio.to_thread.run_sync(self.wal.open, readers, hint)
                wal = self.wal
                await trio.to_thread.run_sync(
                    self.chain.load_from, found, wal.directory, wal.epoch, None, wal.state()
                )
            except OSError as exc:
                where = f": {exc.filename}" if exc.filename else ""
                raise DataDirError(
                    f"cannot use data_dir {self.config.data_dir}: {exc.strerror or exc}{where}"
                ) from exc
            # The replayed state covers the whole WAL now: store it, so that a crash loop shorter
            # than checkpoint_interval does not replay an ever longer WAL at each start.
            await self._checkpoint(force=True)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for slot in self.sinks:  # a sink's failure is its driver's: it never ends these
                    await nursery.start(self._run_sink, slot)
                nursery.start_soon(self._write)
                nursery.start_soon(self._forward_emitted)
                nursery.start_soon(self.wal.run)
                if self.config.runtime.workers:
                    for source in self.sources:
                        self._bind(source)  # ListenError: the start stops, as in one process
                    await self._start_workers()
                else:
                    for source in self.sources:
                        self.bound[source.id] = await self._start_source(source)
                for source in self.sources:
                    self._listening(source.id)
                self._started = True
                task_status.started(self.bound)
        finally:
            self._started = False
            self._nursery = None
            self._ingest_send.close()
            for task in self._source_tasks.values():  # sources that never ran
                if task.send is not None:
                    task.send.close()
            for sockets in self._sockets.values():
                sockets.close()
            self.wal.release()
            self.finished.set()

    def _listening(self, source_id: str) -> None:
        for address in self.bound.get(source_id, ()):
            log.info("source_listening", source=source_id, address=str(address))

    async def _run_sink(self, slot: SinkSlot, *, task_status: trio.TaskStatus[None]) -> None:
        """Run a sink's driver or process until it is done (the WAL closed and read, or the
        sink stopped by a reload), in a scope of its own."""
        try:
            with slot.task.scope:
                if slot.process is not None:
                    await slot.process.run(self.wal.epoch, task_status=task_status)
                elif slot.driver is not None:
                    reader = self.wal.readers[slot.id]
                    await slot.driver.run(reader, self.wal.epoch, task_status=task_status)
        finally:
            slot.task.done.set()

    async def _start_source(self, source: Source) -> list[Listening]:
        """Start a source in this process (``ListenError`` when it cannot bind)."""
        assert self._nursery is not None
        task = self._source_tasks[source.id]
        return await self._nursery.start(self._serve, source, task)  # type: ignore[no-any-return]

    @staticmethod
    async def _serve(
        source: Source, task: _Task, *, task_status: trio.TaskStatus[list[Listening]]
    ) -> None:
        try:
            with task.scope:
                await source.run(task_status=task_status)
        finally:
            if task.send is not None:
                task.send.close()  # (the source closes it once it served; not if it never did)
            task.done.set()

    def _bind(self, source: Source) -> None:
        """Bind a source's sockets here, for the ingest workers (``ListenError``)."""
        self._sockets[source.id] = source.bind()
        self.bound[source.id] = list(self._sockets[source.id].addresses)
        source.listening = True  # the kernel queues connections while a worker starts

    async def _start_workers(self) -> None:
        """Start the ingest workers that serve the sockets bound here (``shipper.ingestproc``)."""
        assert self._nursery is not None
        sources = {source.id: source for source in self.sources}
        serving = [source for source in self.sources if source.id in self._sockets]
        for index in range(self.config.runtime.workers):
            spec = ingest_spec_of(self.config, index, self._sockets, serving)
            if not spec.sockets:
                break  # only datagram sources: worker 0 serves them all
            worker = IngestWorker(spec, self._ingest_send.clone(), self.budget, sources)
            worker.register_metrics(self.registry)
            self.workers.append(worker)
            task = _Task()
            self._worker_tasks.append(task)
            await self._nursery.start(self._run_worker, worker, task)

    @staticmethod
    async def _run_worker(
        worker: IngestWorker, task: _Task, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            with task.scope:
                await worker.run(task_status=task_status)
        finally:
            task.done.set()

    async def _check_destinations(self, sinks: list[SinkConfig]) -> None:
        """Each sink's ``check_remote``: an unsafe destination stops the start or the reload
        (``UnsafeDestination``); one that cannot be asked now (unreachable, slow) does not, and
        its events wait in the WAL (the sink checks again when it opens)."""
        for sink in sinks:
            with trio.move_on_after(CHECK_SECONDS) as scope:
                try:
                    await sink.check_remote()
                except DestinationUnavailable as exc:
                    log.warning("sink_check_deferred", sink=sink.id, error=str(exc))
            if scope.cancelled_caught:
                log.warning(
                    "sink_check_deferred", sink=sink.id, error=f"no answer in {CHECK_SECONDS} s"
                )

    def stop(self) -> None:
        """Phase one of shutdown: sources stop accepting and reading, sinks' events are no
        longer taken; the rest drains."""
        self._stopping = True
        for source in self.sources:
            source.stop()
        for worker in self.workers:
            worker.stop()
        self._ingest_send.close()  # (each source and worker has its own clone)
        self._emitted.close()

    # --- reloading ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether everything started and no stop was asked for: a reload may run."""
        return self._started and self._nursery is not None and not self._stopping

    async def reload(self, config: Config | None = None) -> ReloadResult:
        """Go on with ``config`` (None: the config file read again, ``config.origin``), one
        reload at a time: start, stop or restart the sources and sinks it adds, removes or
        changes, leave the others alone; an invalid config changes nothing. Logged
        (``reload_done``, ``reload_failed``, ``reload_needs_restart``), told to systemd
        (``RELOADING=1``, then ``READY=1``), and returned (see "Reloading" above)."""
        async with self._reloading:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\nSTATUS=reloading")
            try:
                return await self._reload(config)
            except Exception as exc:  # a defect: never the daemon's end
                log.exception(
                    "reload_failed",
                    config=self.config.origin,
                    error=f"{type(exc).__name__}: {exc}",
                    detail="an unexpected error inside shipper (a defect): please report it; "
                    "what the reload had started or stopped stays so",
                )
                return ReloadResult(ok=False, problems=[f"{type(exc).__name__}: {exc}"])
            finally:
                heap.settle()  # what the reload replaced may be frozen garbage: collected now
                notify("READY=1\nSTATUS=listening")

    async def _reload(self, config: Config | None) -> ReloadResult:
        result = ReloadResult()
        origin = self.config.origin
        try:
            if not self.running:
                raise ConfigError([ConfigProblem("", "the daemon is not running (or stopping)")])
            if config is None:
                if not origin:
                    raise ConfigError([ConfigProblem("", "the config was not read from a file")])
                # abandoned when cancelled: a file that never ends (a FIFO) holds up no shutdown
                config = await trio.to_thread.run_sync(load_config, origin, abandon_on_cancel=True)
                if self._stopping:  # (a stop came while the file was read)
                    raise ConfigError([ConfigProblem("", "the daemon is stopping")])
            kept, result.needs_restart = effective(self.config, config)
            changes = Changes.between(self.config, kept)
            added = [kept.sinks[i] for i in (*changes.sinks_added, *changes.sinks_changed)]
            try:
                await self._check_destinations(added)
            except UnsafeDestination as exc:
                raise ConfigError([ConfigProblem("sinks", f"unsafe destination: {exc}")]) from exc
        except ConfigError as exc:
            result.ok = False
            result.problems = [str(problem) for problem in exc.problems]
            log.error("reload_failed", config=origin, problems=result.problems)
            return result
        if result.needs_restart:
            log.warning(
                "reload_needs_restart",
                config=origin,
                keys=result.needs_restart,
                detail="these keys keep their running values until the next start",
            )
        # Until each is done, the config holds the old sources and sinks as well as the new ones:
        # whoever reads ``sources``, ``sinks`` and ``config`` meanwhile (the API) finds each one.
        old = self.config
        sources = {**old.sources, **kept.sources}
        self.config = replace(kept, sources=sources, sinks={**old.sinks, **kept.sinks})
        await self._reload_sinks(changes, result)
        await self._reload_sources(changes, result)
        result.ok = not result.failed
        log.info("reload_done", config=origin, **result.as_dict())
        return result

    async def _finish(self, tasks: list[tuple[str, _Task]], what: str) -> None:
        """Wait until each task stopped (asked already), for at most ``shutdown_timeout``;
        cancel those that did not (what they did not hand on waits, as at a forced shutdown)."""

        async def finish(name: str, task: _Task) -> None:
            with trio.move_on_after(self.config.shutdown_timeout):
                await task.done.wait()
            if not task.done.is_set():
                log.warning(
                    "reload_stop_forced", **{what: name}, timeout=self.config.shutdown_timeout
                )
                task.scope.cancel()
                await task.done.wait()

        async with trio.open_nursery() as nursery:
            for name, task in tasks:
                nursery.start_soon(finish, name, task)

    async def _reload_sinks(self, changes: Changes, result: ReloadResult) -> None:
        """Stop the sinks removed or changed (each delivers and acknowledges what it read),
        forget the removed ones' WAL readers, start the added ones at the WAL's end and the
        changed ones at their cursors."""
        slots = {slot.id: slot for slot in self.sinks}
        going = [slots[i] for i in (*changes.sinks_removed, *changes.sinks_changed)]
        for slot in going:
            if slot.process is not None:
                slot.process.stop()
            elif slot.driver is not None:
                slot.driver.stop()
        await self._finish([(slot.id, slot.task) for slot in going], "sink")
        for sink_id in changes.sinks_removed:
            del slots[sink_id]
            await self._forget_sink(sink_id)
            result.stopped["sinks"].append(sink_id)
        for sink_id in self._held - set(self.config.sinks):
            self._held.discard(sink_id)
            await self._forget_sink(sink_id)
        assert self._nursery is not None
        for sink_id in (*changes.sinks_added, *changes.sinks_changed):
            sink = self.config.sinks[sink_id]
            before = slots.get(sink_id)
            try:
                slot = self._slot(sink)
            except Exception as exc:  # (the config was valid: a sink that cannot be built now)
                result.failed[f"sinks.{sink_id}"] = f"{type(exc).__name__}: {exc}"
                log.error("reload_sink_failed", sink=sink_id, error=str(exc))
                if slots.pop(sink_id, None) is not None:  # changed: its reader holds its events
                    self._held.add(sink_id)
                    self.registry.unregister_health(f"sink.{sink_id}")
                continue
            if before is not None and before.driver is not None and slot.driver is not None:
                kept = before.driver.counters.as_dict()  # its counts go on from where they were
                slot.driver.counters.restore(
                    {k: v for k, v in kept.items() if k in slot.driver.counters}
                )
            if before is None and sink_id not in self._held:
                # added: it takes what is accepted from now on
                await self.wal.add_reader(sink_id, slot.inputs, self.wal.committed)
            else:  # changed: from its cursor, where the one it replaces stopped
                await self.wal.add_reader(sink_id, slot.inputs)
            self._held.discard(sink_id)
            slots[sink_id] = slot
            self._register_slot(slot)
            await self._nursery.start(self._run_sink, slot)
            (result.started if before is None else result.restarted)["sinks"].append(sink_id)
        self.sinks = [slots[i] for i in self.config.sinks if i in slots]
        sinks = {slot.id: self.config.sinks[slot.id] for slot in self.sinks}
        self.config = replace(self.config, sinks=sinks)  # a later reload tries the others again

    async def _forget_sink(self, sink_id: str) -> None:
        """A sink is gone: its WAL reader (the WAL deletes what the others passed), its health
        and its lag."""
        await self.wal.remove_reader(sink_id)
        self.registry.unregister_health(f"sink.{sink_id}")
        self._lag_gauge.remove(sink_id)
        self._lag_seconds_gauge.remove(sink_id)

    async def _reload_sources(self, changes: Changes, result: ReloadResult) -> None:
        """Stop the sources removed or changed (what they read goes on to the WAL), start the
        added and changed ones; with ingest workers, every worker is started again with the new
        sources (their connections break; senders connect again). A source that cannot be
        started (its address cannot be bound) is logged and left out; the others go on."""
        going = (*changes.sources_removed, *changes.sources_changed)
        coming = (*changes.sources_added, *changes.sources_changed)
        if not going and not coming:
            return
        sources = {source.id: source for source in self.sources}
        workers = bool(self.config.runtime.workers)
        if workers:
            kept = [source_id for source_id in sources if source_id not in going]
            for worker in self.workers:
                worker.stop(tuple(kept))  # (the next workers take what waits on the kept listeners)
            await self._finish(
                [(str(w.index), t) for w, t in zip(self.workers, self._worker_tasks, strict=True)],
                "worker",
            )
            self.workers, self._worker_tasks = [], []
            for source_id in going:
                self._sockets.pop(source_id).close()
        else:
            for source_id in going:
                sources[source_id].stop()
            await self._finish([(i, self._source_tasks[i]) for i in going], "source")
        counts: dict[str, dict[str, int]] = {}
        for source_id in going:
            self.registry.unregister_health(f"source.{source_id}")
            self.bound.pop(source_id, None)
            self._source_tasks.pop(source_id, None)
            counts[source_id] = sources.pop(source_id).counters.as_dict()
        result.stopped["sources"].extend(changes.sources_removed)
        running = {i: c for i, c in self.config.sources.items() if i not in (*going, *coming)}
        started: list[str] = []
        for source_id in coming:
            config = self.config.sources[source_id]
            try:
                if self._stopping:
                    raise ShipperError("the daemon is stopping")
                source = self._source(config)
                if workers:
                    self._bind(source)
                else:
                    self.bound[source_id] = await self._start_source(source)
            except Exception as exc:  # ListenError, or a source that cannot be built now
                task = self._source_tasks.pop(source_id, None)
                if task is not None and task.send is not None:
                    task.send.close()
                error = (
                    str(exc) if isinstance(exc, ShipperError) else f"{type(exc).__name__}: {exc}"
                )
                result.failed[f"sources.{source_id}"] = error
                log.error("reload_source_failed", source=source_id, error=error)
                continue
            if source_id in counts:  # its counts go on from where they were
                source.counters.restore(counts[source_id])
            source.register_metrics(self.registry)
            sources[source_id] = source
            running[source_id] = config
            started.append(source_id)
        # The sources that run, in the config's order. One that failed is not in the config the
        # daemon goes on with: a later reload tries it again, as added.
        order = [i for i in self.config.sources if i in running]
        self.config = replace(self.config, sources={i: running[i] for i in order})
        self.sources = [sources[i] for i in order]
        if workers and self.sources and not self._stopping:
            await self._start_workers()
        for source_id in started:
            self._listening(source_id)
            changed = source_id in changes.sources_changed
            (result.restarted if changed else result.started)["sources"].append(source_id)

    def emit(self, event: Event) -> bool:
        """Queue an event a sink raises (an archive seal, a delivery alert) for the WAL, never
        blocking; False (counted, logged) when it cannot be queued: the queue is full, or the
        daemon is stopping."""
        try:
            self._emitted.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._emit_dropped(event)
            return False
        return True

    async def _forward_emitted(self) -> None:
        """Hand the sinks' events to the writer, as a source does (within the byte budget)."""
        async with self._emit_ingest, self._emitted_receive:
            async for event in self._emitted_receive:
                batch = [event]
                await self.budget.acquire(size_of(batch))
                await self._emit_ingest.send(batch)

    def metrics(self) -> dict[str, Any]:
        """Every component's metrics and the health of those that are not ok, grouped by
        component (``shipper.metrics.summary``), for log entries. The API reads
        ``registry.snapshot()`` itself."""
        return summary(self.registry.snapshot())

    def not_accepted(self) -> dict[str, int]:
        """What was read from senders and not (yet) accepted by the WAL: lost if the daemon stops
        now (a forced shutdown). Events in the writer's hands, and batches and bytes still queued
        in the ingest channel; with ingest workers, the events read from their pipes and waiting
        for room in the channel, and the bytes the workers held unsent at their last frames (a
        floor: ``IngestWorker.unsent``)."""
        held = [*self._requeued, *(b.events for b in (*self._unwritten, *self._unaccepted))]
        found = {
            "events_in_writer": sum(map(len, held)),
            "batches_queued": self._ingest.statistics().current_buffer_used,
            "bytes_queued": self.budget.used,
        }
        if self.workers:
            unsent = [worker.unsent() for worker in self.workers]
            found["events_from_workers"] = sum(part["events"] for part in unsent)
            found["bytes_in_workers_at_least"] = sum(part["bytes"] for part in unsent)
        return found

    def pending(self) -> dict[str, int]:
        """Per sink, bytes in the WAL not yet acknowledged (they wait for the next start)."""
        return {slot.id: self._lag(slot.id) for slot in self.sinks}

    async def _write(self) -> None:
        """Verify and append every batch from the sources; close the WAL when they are done."""
        try:
            async with self._ingest:
                while (batch := await self._next_batch()) is not None:
                    await self._take(batch)
                    if not self._requeued and not self._ingest.statistics().current_buffer_used:
                        await self._settle()  # nothing else to do: settle what is in flight
                await self._flush()  # the sources are done: append what they sent
        finally:
            with trio.CancelScope(shield=True):
                await self._checkpoint(force=True)
            await self.wal.close()
            self.tap.close()

    async def _flush(self) -> None:
        """Append everything taken so far, refused batches included, until the WAL accepted all."""
        while self._requeued or not await self._settle():
            if self._requeued:
                await self._take(self._requeued.popleft())

    async def _next_batch(self) -> list[Event] | None:
        """The next batch to verify and append: a requeued one first (refused by the WAL, or
        the rest of a large batch), else what the sources queued, gathered up to
        ``ROUTE_EVENTS`` events and about ``ROUTE_BYTES`` bytes; None once the sources are done.
        """
        if self._requeued:
            return self._requeued.popleft()
        try:
            batch = await self._ingest.receive()  # a source never touches a batch it sent
        except trio.EndOfChannel:
            return None
        # Take whatever else is queued too: per-batch costs are then paid per channel-full, not
        # per socket read (a TLS read holds at most 16 KiB).
        size = size_of(batch)
        self.budget.release(size)
        while len(batch) < ROUTE_EVENTS and size < ROUTE_BYTES:
            try:
                more = self._ingest.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.extend(more)
            more_size = size_of(more)
            self.budget.release(more_size)
            size += more_size
        if len(batch) > ROUTE_EVENTS or size > ROUTE_BYTES:
            head = cut(batch, ROUTE_EVENTS, ROUTE_BYTES)
            if head < len(batch):  # bounded appends, whatever a source sent
                self._requeued.appendleft(batch[head:])
                del batch[head:]
        return batch

    async def _take(self, batch: list[Event]) -> None:
        """Verify and append one batch, after whatever must come first: settling what is in
        flight and a checkpoint (when one is due, the WAL is full, or it refused batches), a pause
        after a refusal, room in the WAL (or dropping the batch, with ``drop_newest``)."""
        wal = self.wal
        if self._pause_due or wal.full or trio.current_time() >= self._next_checkpoint:
            self._requeued.appendleft(batch)  # batches refused now go in front of it
            if not await self._settle():
                return  # the refused batches come back first
            await self._checkpoint()  # the state covers exactly what the WAL holds
            if self._pause_due:
                self._pause_due = False
                if not wal.full:  # a refusal not for space: wait a little before retrying
                    await trio.sleep(self._retry.next())
            if wal.full and wal.settings.when_full == "drop_newest":
                batch = self._requeued.popleft()
                wal.drop(len(batch))  # the chain must not see what the WAL does not keep
                self.counters["dropped"] += len(batch)
                return
            if wal.full:
                await self._wait_for_room()  # block: the sources wait meanwhile
            batch = self._requeued.popleft()  # the same batch: nothing was refused meanwhile
        # From here the batch must reach the WAL: its writes are granted (no drop, no wait).
        before = self.chain.counters.copy()
        verified = self.chain.process(batch, trio.current_time())
        entries = self._entries(verified)
        self._unwritten.append(_Batch(batch, entries, before, self.chain.raised, verified))
        await self._append(PIPELINE_DEPTH)

    def _entries(self, events: list[Event]) -> list[bytes]:
        """The WAL entries of ``events``. Never raises: an event that cannot be encoded (a defect)
        is logged with the cause, counted (``encode_errors``), and stored as a ``malformed`` event
        holding its record's bytes."""
        try:
            return [entry(event) for event in events]
        except Exception:
            pass  # find the culprit below; the rest are encoded as usual
        out = []
        for event in events:
            try:
                out.append(entry(event))
            except Exception as exc:
                self.counters["encode_errors"] += 1
                cause = f"{type(exc).__name__}: {exc}"[:300]
                if self._error_log.allow(trio.current_time()) is not None:
                    log.exception("event_encode_failed", error=cause)
                source = {"id": str(event.source.get("id")), "kind": str(event.source.get("kind"))}
                reason = f"shipper could not encode this event ({cause})"
                raw = event.record_json or (event.malformed.raw if event.malformed else b"")
                fallback = Event(event.received_at, source, malformed=Malformed.of(reason, raw))
                fallback.alert = event.alert
                out.append(entry(fallback))
        return out

    @property
    def _chain_ahead(self) -> bool:
        """Whether the chain state holds events the WAL has not accepted: no checkpoint may be
        taken then (a forced shutdown can cancel the writes)."""
        return bool(self._unwritten or self._unaccepted)

    async def _checkpoint(self, *, force: bool = False) -> None:
        """Store the chain state as covering everything the WAL holds, and let the WAL free
        what it covers. A failure is logged; the WAL keeps the segments until a later one, tried
        after a growing pause (unless ``force``: at start and at shutdown)."""
        self._next_checkpoint = trio.current_time() + self.config.chain.checkpoint_interval
        wal = self.wal
        if self._chain_ahead:
            log.warning(
                "chain_checkpoint_skipped",
                detail="verified batches were not accepted by the WAL; the next start replays "
                "the WAL from the previous checkpoint",
            )
            return
        now = trio.current_time()
        if not force and self._checkpoint_failed and now < self._checkpoint_retry_at:
            return  # failed a moment ago (a full disk, say): not once per batch
        unchanged = not self._checkpoint_failed and wal.committed == self._checkpointed
        if not force and unchanged and wal.full:
            return  # full, and nothing accepted since the last one: not once per dropped batch
        self._checkpoint_failed = True
        self._checkpoint_retry_at = now + self._checkpoint_retry.next()
        if not await wal.sync():
            return
        position = wal.committed
        try:
            size = await trio.to_thread.run_sync(self.chain.checkpoint, wal.epoch, position)
        except OSError as exc:
            self.chain.counters["checkpoint_errors"] += 1
            log.error("chain_checkpoint_failed", error=str(exc), **wal.fullness())
            return
        except Exception as exc:  # a defect (a state orjson cannot write): never the daemon's end
            self.chain.counters["checkpoint_errors"] += 1
            log.exception("chain_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._checkpoint_failed = False
        self._checkpoint_retry = Backoff(CHECKPOINT_RETRY_SECONDS, 30.0)
        self._checkpointed = position
        wal.reserve_bytes = RESERVE_BYTES + 2 * size  # the next one must fit on a full disk too
        await wal.readers[CHAIN_CURSOR].ack(position)

    async def _settle(self) -> bool:
        """Wait until every batch written is accepted; False if the WAL refused some (they are
        requeued, to be verified again)."""
        return await self._append(0)

    async def _append(self, keep: int) -> bool:
        """Write every verified batch not yet written, after every earlier one, then wait until
        at most ``keep`` batches are written and not yet accepted. True when that is done.

        False when the WAL refused batches: it then went back to its last accepted batch, so
        every batch not accepted goes back, unverified, to the front of the queue, and the chain
        state goes back to that same point (``ChainStage.rebuilt``); they are verified and written
        again, in order, after a pause (or, when the disk is full, once it has room). Meanwhile
        nothing is ahead of the WAL, so checkpoints, and with them the freeing of the segments
        the sinks have passed, go on.
        """
        wal = self.wal
        try:
            while self._unwritten:
                # when_full was applied before the chain stage saw the batch: a granted write is
                # never dropped
                seq = await wal.write(self._unwritten[0].entries, granted=True)
                assert seq is not None
                written = self._unwritten.popleft()
                written.seq = seq
                self._unaccepted.append(written)
            while self._unaccepted and (
                len(self._unaccepted) > keep or wal.accepted(self._unaccepted[0].seq)
            ):
                await wal.wait_accepted(self._unaccepted[0].seq)
                self._accepted(self._unaccepted.popleft())
        except WalWriteError as exc:
            await self._refused(exc)
            return False
        return True

    def _accepted(self, batch: _Batch) -> None:
        self.counters["events"] += len(batch.entries)
        self.recent.accepted(batch.events, batch.alerts)
        if self.tap.clients:
            self.tap.publish(batch.verified, batch.entries)
        if self._refused_since:
            log.info(
                "wal_write_recovered",
                refused_seconds=round(trio.current_time() - self._refused_since, 3),
            )
            self._refused_since = 0.0
            self._retry = Backoff()

    async def _refused(self, exc: WalWriteError) -> None:
        """The WAL refused batches: count what it had accepted, send the rest back before the
        chain stage, and take the chain state back to what the WAL holds."""
        wal = self.wal
        again: list[_Batch] = []
        for batch in self._unaccepted:
            if wal.accepted(batch.seq):
                self._accepted(batch)
            else:
                again.append(batch)
        again.extend(self._unwritten)
        self._unaccepted.clear()
        self._unwritten.clear()
        self._pause_due = True
        if not self._refused_since:
            self._refused_since = trio.current_time()
            self._refused_monotonic = time.monotonic()
        self.counters["write_refusals"] += 1
        with trio.CancelScope(shield=True):  # the state must never stay ahead of the WAL
            await wal.cut_refused()
            log.error(
                "wal_write_failed",
                error=str(exc),
                events=sum(len(batch.events) for batch in again),
                full=wal.full,
                **wal.fullness(),
            )
            if not again:
                return
            verifier = await trio.to_thread.run_sync(
                self.chain.rebuilt, wal.directory, wal.epoch, wal.committed, wal.state()
            )
        self.chain.verifier = verifier
        self.chain.counters = again[0].counters  # as they were before the first refused batch
        self._requeued.extendleft(reversed([batch.events for batch in again]))
        self.counters["requeued_batches"] += len(again)

    async def _wait_for_room(self) -> None:
        """Wait until the WAL has room (``when_full = "block"``), however long that takes: room
        comes back as sinks acknowledge, or from outside when the disk was low. A checkpoint that
        failed (on a full disk) is tried again meanwhile: the segments the sinks have passed are
        freed only once a checkpoint covers them."""

        async def retry_checkpoint() -> None:
            if self._checkpoint_failed:
                await self._checkpoint()

        await self.wal.block_until_room(retry_checkpoint)


@dataclass(slots=True)
class _Batch:
    """A batch on its way into the WAL: the events as the sources sent them (verified again if
    the WAL refuses them), their WAL entries, the chain stage's counters before it, the alerts
    among its entries, the events the entries are of (verified: duplicates out, alerts in; for
    the tap), and the WAL's number for it once written."""

    events: list[Event]
    entries: list[bytes]
    counters: Counter[str]
    alerts: list[Event]
    verified: list[Event]
    seq: int = 0


def cut(batch: list[Event], max_events: int, max_bytes: int) -> int:
    """How many events from the start of ``batch`` make at most ``max_events`` events and
    about ``max_bytes`` bytes (``batch_bytes``); at least one."""
    size = 0
    for index, event in enumerate(batch):
        size += event_bytes(event)
        if index and (index >= max_events or size > max_bytes):
            return index
    return len(batch)
