"""A sink type that exists only in tests: ``type = "probe"`` keeps what it is given in memory.

Register it for a test with ``SINK_TYPES.registered(ProbeSinkConfig)``. Its key exercises the
shared reader: ``capacity`` (an integer).
What the sink received is in its config's ``received`` list (``config.sinks[ID].received``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import trio

from shipper.buffer.wal import WalReader
from shipper.config import SinkCommon, SinkConfig, Table


@dataclass(frozen=True, kw_only=True)
class ProbeSinkConfig(SinkConfig):
    """``type = "probe"``: envelopes kept in memory, in ``received``."""

    kind: ClassVar[str] = "probe"
    capacity: int = 10
    received: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> ProbeSinkConfig:
        capacity = table.integer("capacity", cls.capacity, minimum=1, maximum=1000)
        return cls(**common, capacity=capacity)

    def build(self) -> ProbeSink:
        return ProbeSink(self)


class ProbeSink:
    """Acknowledges everything the WAL gives it, keeping the envelopes."""

    def __init__(self, config: ProbeSinkConfig) -> None:
        self.config = config
        self.id = config.id
        self.counters: Counter[str] = Counter()

    async def run(
        self, reader: WalReader, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while (batch := await reader.read()) is not None:
            self.config.received.extend(batch.envelopes)
            self.counters["events"] += len(batch.envelopes)
            await reader.ack(batch.end)
