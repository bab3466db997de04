"""A sink type that exists only in tests: ``type = "probe"`` keeps what it is given in memory.

Register it for a test with ``SINK_TYPES.registered(ProbeSinkConfig)``. Its keys exercise the
shared reader: ``capacity`` (an integer), ``token`` (a secret), ``tls`` (a client TLS table).
What the sink received is in its config's ``received`` list (``config.sinks[ID].received``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import trio

from shipper.config import Secret, SinkCommon, SinkConfig, Table, TlsClientConfig
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext


def _no_spaces(value: str) -> None:
    if " " in value:
        raise ValueError("expected a token without spaces")


@dataclass(frozen=True, kw_only=True)
class ProbeSinkConfig(SinkConfig):
    """``type = "probe"``: envelopes kept in memory, in ``received``."""

    kind: ClassVar[str] = "probe"
    forwards: ClassVar[bool] = True  # it takes redact, as the forwarding sinks do
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

    def build(self, context: SinkContext) -> ProbeSink:
        return ProbeSink(self)


class ProbeSink(SinkBase):
    """Takes every batch the driver gives it, keeping the envelopes."""

    kind = "probe"
    batching = BatchSettings(max_age=0.0)

    def __init__(self, config: ProbeSinkConfig) -> None:
        super().__init__(config.id)
        self.config = config

    async def deliver(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint()
        self.config.received.extend(batch.envelopes)
