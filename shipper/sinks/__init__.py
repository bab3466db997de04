"""Sinks: each reads the WAL through its own cursor and delivers to its destination.

Each sink type's config (``XSinkConfig`` beside its sink, registered in
``shipper.config.SINK_TYPES``) builds the sink: ``config.build()``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio

    from shipper.buffer.wal import WalReader


class Sink(Protocol):
    """What the topology needs of a running sink."""

    id: str
    counters: Counter[str]

    async def run(self, reader: WalReader, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Deliver what ``reader`` gives, acknowledging what the destination confirmed; return
        when the WAL is closed and read to its end."""
