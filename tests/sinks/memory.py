"""Test-only sinks: an in-memory destination the test controls, and a sink that is broken
(also a sink type, ``type = "broken"``, for daemons started from a config in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import trio

from shipper.buffer.segment import Position
from shipper.config import SinkCommon, SinkConfig, Table
from shipper.errors import DestinationRejected, DestinationUnavailable
from shipper.retry import RetryPolicy
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext, position_of

#: Retries and restarts within milliseconds, so that tests in real time run fast.
FAST = RetryPolicy(first=0.01, limit=0.05, restart_first=0.01, restart_limit=0.05)


class MemoryDestination:
    """What the destination holds (shared by every ``MemorySink`` built on it, as a real
    destination outlives the sink's restarts), and how it behaves."""

    def __init__(self) -> None:
        self.held: list[bytes] = []
        self.batches: list[int] = []  # the number of events of each batch taken
        self.taken_at: list[float] = []  # trio.current_time() when each batch was taken
        self.available = True
        #: A batch holding an envelope with these bytes is refused for good.
        self.poison: bytes | None = None
        #: Take this many events of the next batch, then fail as unavailable (a batch cut short).
        self.take_then_fail: int | None = None

    def take(self, batch: Batch) -> None:
        if not self.available:
            raise DestinationUnavailable("the memory destination is down")
        if self.poison is not None and any(self.poison in e for e in batch.envelopes):
            raise DestinationRejected(f"refused: the batch holds {self.poison.decode()}")
        if self.take_then_fail is not None:
            self.held.extend(batch.envelopes[: self.take_then_fail])
            self.take_then_fail = None
            raise DestinationUnavailable("the memory destination went down mid-batch")
        self.held.extend(batch.envelopes)
        self.batches.append(len(batch.envelopes))
        self.taken_at.append(trio.current_time())


class MemorySink(SinkBase):
    """A sink whose destination is a ``MemoryDestination``; it knows what it holds, so it
    resumes exactly once."""

    kind = "memory"

    def __init__(
        self,
        sink_id: str,
        destination: MemoryDestination,
        *,
        retry_policy: RetryPolicy = FAST,
        batching: BatchSettings | None = None,
    ) -> None:
        super().__init__(sink_id)
        self.destination = destination
        self.retry_policy = retry_policy
        self.batching = batching or BatchSettings(max_age=0.01)
        self.opens = 0

    async def open(self, epoch: str) -> None:
        await trio.lowlevel.checkpoint()
        if not self.destination.available:
            raise DestinationUnavailable("the memory destination is down")
        self.opens += 1

    async def resume_point(self) -> Position | None:
        await trio.lowlevel.checkpoint()
        held = self.destination.held
        return position_of(held[-1]) if held else None

    async def deliver(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint()
        self.destination.take(batch)


class BrokenSink(SinkBase):
    """A sink whose ``deliver`` raises ``RuntimeError`` every time: a defect in its code."""

    kind = "broken"

    def __init__(self, sink_id: str, retry_policy: RetryPolicy | None = None) -> None:
        super().__init__(sink_id)
        self.retry_policy = retry_policy or RetryPolicy()
        self.opened_at: list[float] = []  # trio.current_time() at each open
        self.closes = 0
        self.opened = trio.Event()  # set (and replaced) at each open

    async def open(self, epoch: str) -> None:
        await trio.lowlevel.checkpoint()
        self.opened_at.append(trio.current_time())
        self.opened.set()
        self.opened = trio.Event()

    async def deliver(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("this sink is broken")

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closes += 1

    async def opens(self, count: int) -> None:
        """Wait until it was opened ``count`` times."""
        while len(self.opened_at) < count:
            await self.opened.wait()


@dataclass(frozen=True, kw_only=True)
class BrokenSinkConfig(SinkConfig):
    """``type = "broken"``: a ``BrokenSink`` that restarts within milliseconds. The sinks it
    built are in ``built`` (register it with ``SINK_TYPES.registered(BrokenSinkConfig)``)."""

    kind: ClassVar[str] = "broken"
    built: list[BrokenSink] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> BrokenSinkConfig:
        return cls(**common)

    def build(self, context: SinkContext) -> BrokenSink:
        sink = BrokenSink(self.id, FAST)
        self.built.append(sink)
        return sink


#: The destinations ``type = "memory"`` sinks deliver to, by the name in their config.
DESTINATIONS: dict[str, MemoryDestination] = {}


@dataclass(frozen=True, kw_only=True)
class MemorySinkConfig(SinkConfig):
    """``type = "memory"``: a forwarding ``MemorySink`` on ``DESTINATIONS[destination]``
    (register it with ``SINK_TYPES.registered(MemorySinkConfig)``)."""

    kind: ClassVar[str] = "memory"
    forwards: ClassVar[bool] = True
    destination: str = "default"

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> MemorySinkConfig:
        return cls(**common, destination=table.string("destination", "default"))

    def build(self, context: SinkContext) -> MemorySink:
        return MemorySink(self.id, DESTINATIONS.setdefault(self.destination, MemoryDestination()))
