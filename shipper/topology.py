"""Topology: builds sources, the WAL and sinks from the config and connects them.

::

    source A ─┐                                                ┌─► reader 1 ─► sink 1
    source B ─┼─► ingest channel ─► chain stage ─► WAL writer ─► WAL ─┼─► reader 2 ─► sink 2
    source C ─┘   (bounded, batches)  (verify, dedupe,  (commit point)  └─► ...
                                       alerts)

The ingest channel is bounded, and the WAL writer waits when the WAL is full (``when_full =
"block"``): then the sources' handlers wait, stop reading their sockets, and senders feel
backpressure. Each sink reads the WAL at its own pace through its own cursor, so a slow or dead sink
holds back no other sink until the WAL is full.

The chain stage (``shipper.checkpoint``) runs in the writer's task, between the ingest channel and
the WAL, so its state always matches a WAL position; it is checkpointed every
``chain.checkpoint_interval``, when the WAL is full, and at shutdown, and restored at start.

The writer keeps up to ``PIPELINE_DEPTH`` batches written to the WAL and not yet accepted: while
the WAL's sync lane fsyncs them, the writer verifies, encodes and writes the next ones (group
commit). Before a checkpoint it waits until every batch it wrote is accepted. When the disk
refuses, the WAL goes back to its last accepted batch and the writer writes every later batch
again, in order, with backoff, the sources waiting meanwhile.

Shutdown (driven by ``shipper.shutdown``): ``stop()`` makes the sources stop accepting and reading;
each source closes its channel once its connections have handed on what they read; the writer
appends what is left and closes the WAL; each sink delivers what is in the WAL and returns;
``finished`` is set. What a sink could not deliver stays in the WAL for the next start.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import trio

from shipper.buffer.wal import PIPELINE_DEPTH, Wal, WalSettings, WalWriteError, entry
from shipper.checkpoint import CHAIN_CURSOR, ChainStage
from shipper.config import Config, SyslogSourceConfig
from shipper.errors import Backoff, DataDirError
from shipper.events import Event, Malformed
from shipper.logging import Throttle, get_logger
from shipper.sinks.file import FileSink
from shipper.sources._net import Bound
from shipper.sources.json_tls import JsonTlsSource
from shipper.sources.syslog import SyslogSource

log = get_logger("shipper.topology")

#: Batches (one per socket read) the ingest channel holds.
CHANNEL_BATCHES = 16
#: The WAL writer gathers queued batches up to this many events per append.
ROUTE_EVENTS = 4096


@dataclass
class SinkSlot:
    """A sink and the source ids it takes (None: all)."""

    sink: FileSink
    inputs: frozenset[str] | None


class Topology:
    """The running graph of one config: sources, router, sinks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        ingest_send, self._ingest = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
        self.sources: list[JsonTlsSource | SyslogSource] = []
        agent_of = config.chain.profile_fields.agent_of
        for source in config.sources.values():
            if isinstance(source, SyslogSourceConfig):
                self.sources.append(SyslogSource(source, ingest_send.clone(), agent_of))
            else:
                self.sources.append(JsonTlsSource(source, ingest_send.clone(), agent_of))
        ingest_send.close()
        self.sinks = [
            SinkSlot(
                FileSink(sink),
                frozenset(sink.inputs) if sink.inputs is not None else None,
            )
            for sink in config.sinks.values()
        ]
        buffer = config.buffer
        self.wal = Wal(
            config.data_dir / "wal",
            WalSettings(
                max_bytes=buffer.max_bytes,
                segment_bytes=buffer.segment_bytes,
                fsync=buffer.fsync,
                fsync_interval=buffer.fsync_interval,
                when_full=buffer.when_full,
            ),
        )
        self.chain = ChainStage(config.chain, config.data_dir)
        self._next_checkpoint = 0.0
        # Batches the chain stage has seen and the WAL has not accepted yet, in order: not yet
        # written (or to write again), and written (with the WAL's number for each).
        self._unwritten: deque[list[bytes]] = deque()
        self._unaccepted: deque[tuple[int, list[bytes]]] = deque()
        self.bound: dict[str, list[Bound]] = {}
        self.finished = trio.Event()
        self.counters: Counter[str] = Counter()
        self._error_log = Throttle(1)

    async def run(self, *, task_status: trio.TaskStatus[dict[str, list[Bound]]]) -> None:
        """Start sinks, router and sources; report the listening addresses; run until drained."""
        try:
            readers: dict[str, frozenset[str] | None] = {CHAIN_CURSOR: None}
            readers.update({slot.sink.id: slot.inputs for slot in self.sinks})
            try:
                await trio.to_thread.run_sync(self.wal.open, readers)
                await trio.to_thread.run_sync(self.chain.load, self.wal.directory, self.wal.epoch)
            except OSError as exc:
                where = f": {exc.filename}" if exc.filename else ""
                raise DataDirError(
                    f"cannot use data_dir {self.config.data_dir}: {exc.strerror or exc}{where}"
                ) from exc
            # The replayed state covers the whole WAL now: store it, so that a crash loop shorter
            # than checkpoint_interval does not replay an ever longer WAL at each start.
            await self._checkpoint()
            async with trio.open_nursery() as nursery:
                for slot in self.sinks:
                    await nursery.start(slot.sink.run, self.wal.readers[slot.sink.id])
                nursery.start_soon(self._write)
                nursery.start_soon(self.wal.run)
                for source in self.sources:
                    self.bound[source.id] = await nursery.start(source.run)
                    for address in self.bound[source.id]:
                        log.info("source_listening", source=source.id, address=str(address))
                task_status.started(self.bound)
        finally:
            self.wal.release()
            self.finished.set()

    def stop(self) -> None:
        """Phase one of shutdown: sources stop accepting and reading; the rest drains."""
        for source in self.sources:
            source.stop()

    def metrics(self) -> dict[str, Any]:
        """Counters of every component, for logs now and the API later."""
        wal = self.wal
        return {
            "sources": {source.id: dict(source.counters) for source in self.sources},
            "chain": {
                **self.chain.counters,
                "agents": len(self.chain.verifier.agents),
                "statuses": dict(self.chain.verifier.counts),
            },
            "buffer": {
                "records_written": wal.counters["events"],
                "bytes_written": wal.counters["bytes"],
                "fsyncs": wal.counters["fsyncs"],
                "buffer_bytes": wal.total_bytes,
                "blocked": wal.counters["blocked"],
                "blocked_ms": wal.counters["blocked_ms"],
                "dropped": {"full": wal.counters["dropped_full"]},
                "write_errors": wal.counters["write_errors"],
                "segments_deleted": wal.counters["segments_deleted"],
                "recovery": {
                    key.removeprefix("recovery_"): value
                    for key, value in wal.counters.items()
                    if key.startswith("recovery_")
                },
            },
            "sinks": {
                slot.sink.id: {
                    **slot.sink.counters,
                    "lag_bytes": wal.lag_bytes(wal.readers[slot.sink.id])
                    if slot.sink.id in wal.readers
                    else 0,
                }
                for slot in self.sinks
            },
        }

    def pending(self) -> dict[str, int]:
        """Per sink, bytes in the WAL not yet acknowledged (they wait for the next start)."""
        return {
            slot.sink.id: self.wal.lag_bytes(self.wal.readers[slot.sink.id]) for slot in self.sinks
        }

    async def _write(self) -> None:
        """Verify and append every batch from the sources; close the WAL when they are done."""
        try:
            async with self._ingest:
                async for first in self._ingest:
                    # Take whatever else is queued too: per-batch costs are then paid per
                    # channel-full, not per socket read (a TLS read holds at most 16 KiB).
                    batch = first  # a source never touches a batch after sending it
                    while len(batch) < ROUTE_EVENTS:
                        try:
                            batch.extend(self._ingest.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._verify_and_append(batch)
                    if not self._ingest.statistics().current_buffer_used:
                        # Nothing else to do: settle what is in flight (a refusal is retried).
                        await self._append([], keep=0)
            await self._append([], keep=0)
        finally:
            with trio.CancelScope(shield=True):
                await self._checkpoint()
            await self.wal.close()

    async def _verify_and_append(self, batch: list[Event]) -> None:
        wal = self.wal
        now = trio.current_time()
        if wal.full or now >= self._next_checkpoint:
            await self._append([], keep=0)  # every batch written so far accepted
            await self._checkpoint()  # the state covers exactly what the WAL holds
        if wal.full and wal.settings.when_full == "drop_newest":
            wal.drop(len(batch))  # the chain must not see what the WAL does not keep
            self.counters["dropped"] += len(batch)
            return
        if wal.full:
            await wal.wait_for_room()  # block: the sources wait meanwhile
            now = trio.current_time()
        # From here the batch must reach the WAL: its writes are granted (no drop, no wait).
        verified = self.chain.process(batch, now)
        await self._append(self._entries(verified))

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

    async def _checkpoint(self) -> None:
        """Store the chain state as covering everything the WAL holds, and let the WAL free
        what it covers. A failure is logged; the WAL keeps the segments until a later one."""
        self._next_checkpoint = trio.current_time() + self.config.chain.checkpoint_interval
        wal = self.wal
        if self._chain_ahead:
            log.warning(
                "chain_checkpoint_skipped",
                detail="verified batches were not accepted by the WAL; the next start replays "
                "the WAL from the previous checkpoint",
            )
            return
        if not await wal.sync():
            return
        position = wal.committed
        try:
            await trio.to_thread.run_sync(self.chain.checkpoint, wal.epoch, position)
        except OSError as exc:
            self.chain.counters["checkpoint_errors"] += 1
            log.error("chain_checkpoint_failed", error=str(exc))
            return
        await wal.readers[CHAIN_CURSOR].ack(position)

    async def _append(self, entries: list[bytes], keep: int = PIPELINE_DEPTH) -> None:
        """Write a batch of WAL entries after every earlier one, then wait until at most ``keep``
        batches are written and not yet accepted. While the disk refuses, retry with backoff (the
        sources wait meanwhile): the WAL then went back to its last accepted batch, so every
        later one is written again, in order."""
        wal = self.wal
        if entries:
            self._unwritten.append(entries)
        backoff = Backoff()
        while True:
            try:
                while self._unwritten:
                    # when_full was applied before the chain stage saw the batch: a granted
                    # write is never dropped
                    seq = await wal.write(self._unwritten[0], granted=True)
                    assert seq is not None
                    self._unaccepted.append((seq, self._unwritten.popleft()))
                while self._unaccepted and (
                    len(self._unaccepted) > keep or wal.accepted(self._unaccepted[0][0])
                ):
                    await wal.wait_accepted(self._unaccepted[0][0])
                    self.counters["events"] += len(self._unaccepted.popleft()[1])
                return
            except WalWriteError as exc:
                again = []
                for seq, batch in self._unaccepted:
                    if wal.accepted(seq):
                        self.counters["events"] += len(batch)
                    else:
                        again.append(batch)
                self._unaccepted.clear()
                self._unwritten.extendleft(reversed(again))
                wait = backoff.next()
                log.error(
                    "wal_write_failed",
                    error=str(exc),
                    events=sum(map(len, self._unwritten)),
                    retry_in=round(wait, 3),
                )
                await trio.sleep(wait)
