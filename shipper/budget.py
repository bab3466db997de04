"""A bound in bytes on what waits between the sources and the WAL writer.

The ingest channel holds at most ``CHANNEL_BATCHES`` batches, and each batch is bounded (a 16 KiB
slice of a socket read, one datagram, a UDP burst cut to about 1 MiB), but batches differ a
thousandfold in size. ``ByteBudget`` bounds the channel in bytes too: a source takes a batch's
size (its ``shipper.events.Batch.size``: the bytes it came from plus ``EVENT_OVERHEAD`` an event)
from the budget before it sends the batch, a stream source even before it makes the events
(waiting while the budget is spent stops its reads: the sender is slowed), and the writer gives
it back as it takes the batch out of the channel. A batch larger than the whole budget passes
alone, when nothing else is queued, so nothing waits forever.

What a batch holds in memory is bounded by the bytes counted times a small factor (parsed tiny
records two to three times, the parse of a deeply nested record some 25 times its bytes).
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
