"""A bound in bytes on what waits between the sources and the WAL writer.

The ingest channel holds at most ``CHANNEL_BATCHES`` batches, and each batch is bounded (one
socket read, one datagram, a UDP burst cut to about 1 MiB), but batches differ a thousandfold in
size. ``ByteBudget`` bounds the channel in bytes too: a source takes ``batch_bytes(batch)`` from
the budget before it sends a batch (waiting while the budget is spent, which stops its reads: the
sender is slowed), and the writer gives it back as it takes the batch out of the channel. A batch
larger than the whole budget passes alone, when nothing else is queued, so nothing waits forever.

What a batch holds in memory is bounded by its raw bytes times a small factor (the parsed record
of a deeply nested object can take some 25 times its bytes); ``shipper.events.event_bytes`` is
the measure used throughout (WAL appends, UDP bursts, this budget).
"""

from __future__ import annotations

import trio


class ByteBudget:
    """Bytes that may wait in a queue at once: ``acquire`` before enqueueing, ``release`` once
    the consumer took them out."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a budget needs at least one byte")
        self.limit = limit
        self.used = 0
        self._released = trio.Event()

    async def acquire(self, size: int) -> None:
        """Take ``size`` bytes, waiting while they do not fit (unless nothing is taken)."""
        while self.used and self.used + size > self.limit:
            await self._released.wait()
        self.used += size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes, waking every producer that waits (each checks again)."""
        self.used = max(0, self.used - size)
        self._released.set()
        self._released = trio.Event()
