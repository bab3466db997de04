"""Topology: builds sources and sinks from the config and connects them with bounded channels.

::

    source A ─┐                         ┌─► sink 1 channel ─► sink 1
    source B ─┼─► ingest channel ─► router ─► sink 2 channel ─► sink 2
    source C ─┘   (bounded, batches)     └─► ...

Every channel is bounded, so a full sink channel stops the router, a full ingest channel stops the
sources' handlers, and a stopped handler stops reading its socket: senders feel backpressure; nothing
is dropped. The router gives each event its id, encodes its envelope once, and hands each sink the
events of the sources in its ``inputs``.

Shutdown (driven by ``shipper.shutdown``): ``stop()`` makes the sources stop accepting and reading;
each source closes its channel once its connections have handed on what they read; the router then
closes the sink channels; the sinks write what is left and close their files; ``finished`` is set.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from shipper.config import Address, Config
from shipper.events import Event
from shipper.logging import get_logger
from shipper.sinks.file import FileSink
from shipper.sources.json_tls import JsonTlsSource

log = get_logger("shipper.topology")

#: Batches (one per socket read) the ingest channel and each sink channel hold.
CHANNEL_BATCHES = 64
#: The router gathers queued batches up to this many events before encoding and fanning out.
ROUTE_EVENTS = 4096


@dataclass
class SinkSlot:
    """A sink with its channel and the inputs it takes."""

    sink: FileSink
    send: trio.MemorySendChannel[list[bytes]]
    receive: trio.MemoryReceiveChannel[list[bytes]]
    inputs: frozenset[str] | None
    routed: int = 0


class Topology:
    """The running graph of one config: sources, router, sinks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        ingest_send, self._ingest = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
        self.sources = [
            JsonTlsSource(source, ingest_send.clone(), config.chain.agent_field)
            for source in config.sources.values()
        ]
        ingest_send.close()
        self.sinks: list[SinkSlot] = []
        for sink_config in config.sinks.values():
            send, receive = trio.open_memory_channel[list[bytes]](CHANNEL_BATCHES)
            inputs = frozenset(sink_config.inputs) if sink_config.inputs is not None else None
            self.sinks.append(SinkSlot(FileSink(sink_config), send, receive, inputs))
        self.bound: dict[str, list[Address]] = {}
        self.finished = trio.Event()
        self.counters: Counter[str] = Counter()
        # Event ids are unique per daemon start: start time (µs, hex) and a counter.
        self._id_prefix = f"{time.time_ns() // 1000:x}"
        self._next_id = 0

    async def run(self, *, task_status: trio.TaskStatus[dict[str, list[Address]]]) -> None:
        """Start sinks, router and sources; report the listening addresses; run until drained."""
        try:
            async with trio.open_nursery() as nursery:
                for slot in self.sinks:
                    await nursery.start(slot.sink.run, slot.receive)
                nursery.start_soon(self._route)
                for source in self.sources:
                    self.bound[source.id] = await nursery.start(source.run)
                    for address in self.bound[source.id]:
                        log.info("source_listening", source=source.id, address=str(address))
                task_status.started(self.bound)
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Phase one of shutdown: sources stop accepting and reading; the rest drains."""
        for source in self.sources:
            source.stop()

    def pending(self) -> dict[str, int]:
        """Per sink, events routed to it but not yet written."""
        return {slot.sink.id: slot.routed - slot.sink.counters["events"] for slot in self.sinks}

    async def _route(self) -> None:
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
                    await self._route_batch(batch)
        finally:
            for slot in self.sinks:
                slot.send.close()

    async def _route_batch(self, batch: Sequence[Event]) -> None:
        first = self._next_id
        self._next_id += len(batch)
        prefix = self._id_prefix
        lines = [event.encode(f"{prefix}-{first + n}") for n, event in enumerate(batch)]
        self.counters["events"] += len(lines)
        for slot in self.sinks:
            if slot.inputs is None:
                selected = lines
            else:
                inputs = slot.inputs
                selected = [
                    line
                    for line, event in zip(lines, batch, strict=True)
                    if event.source_id in inputs
                ]
            if selected:
                slot.routed += len(selected)
                await slot.send.send(selected)
