"""A sink type that exists only in tests: ``type = "probe"`` keeps what it is given in memory.

Register it for a test with ``SINK_TYPES.registered(ProbeSinkConfig)``. Its keys exercise the
shared reader: ``capacity`` (an integer), ``token`` (a secret), ``tls`` (a client TLS table).
What the sink received is in its config's ``received`` list (``config.sinks[ID].received``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import trio

from shipper.buffer.wal import WalReader
from shipper.config import Secret, SinkCommon, SinkConfig, Table, TlsClientConfig


def _no_spaces(value: str) -> None:
    if " " in value:
        raise ValueError("expected a token without spaces")


@dataclass(frozen=True, kw_only=True)
class ProbeSinkConfig(SinkConfig):
    """``type = "probe"``: envelopes kept in memory, in ``received``."""

    kind: ClassVar[str] = "probe"
    capacity: int = 10
    token: Secret | None = None
    tls: TlsClientConfig | None = None
    received: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> ProbeSinkConfig:
        capacity = table.integer("capacity", cls.capacity, minimum=1, maximum=1000)
        token = table.secret("token", None, check=_no_spaces)
        tls_table = table.table("tls")
        tls = tls_table.tls_client() if tls_table is not None else None
        return cls(**common, capacity=capacity, token=token, tls=tls)

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
