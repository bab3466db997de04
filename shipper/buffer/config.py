"""``[buffer]``: the settings of the write-ahead log (``shipper.buffer.wal``), and their defaults.

``BufferConfig`` is what the config file's ``[buffer]`` table becomes and what ``Wal`` takes: its
field defaults are the only place the defaults are written. This module imports nothing of
``shipper.config`` at run time (``shipper.config`` imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

if TYPE_CHECKING:
    from shipper.config.reader import Table

#: ``fsync``: when a write batch is fsynced before its events count as accepted.
Fsync = Literal["batch", "interval", "never"]
FSYNC_POLICIES: Final[tuple[Fsync, ...]] = get_args(Fsync)
#: ``when_full``: what the writer does with a batch while the WAL is full.
WhenFull = Literal["block", "drop_newest"]
WHEN_FULL: Final[tuple[WhenFull, ...]] = get_args(WhenFull)
#: The smallest ``max_bytes`` and ``segment_bytes`` a config may give.
MIN_MAX_BYTES: Final = 1024 * 1024
MIN_SEGMENT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class BufferConfig:
    """The WAL's bound (``max_bytes``), segment size, fsync policy and what to do when full."""

    max_bytes: int = 1024**3
    segment_bytes: int = 64 * 1024**2
    fsync: Fsync = "batch"
    fsync_interval: float = 1.0
    when_full: WhenFull = "block"

    @classmethod
    def read(cls, table: Table) -> BufferConfig:
        """The ``[buffer]`` table (problems recorded in ``table``). ``segment_bytes`` defaults to
        at most a quarter of ``max_bytes``, and may be at most half of it."""
        max_bytes = table.size("max_bytes", cls.max_bytes, minimum=MIN_MAX_BYTES)
        segment_bytes = table.size(
            "segment_bytes", min(cls.segment_bytes, max_bytes // 4), minimum=MIN_SEGMENT_BYTES
        )
        if segment_bytes * 2 > max_bytes:
            table.problem(
                "segment_bytes",
                f"expected at most half of max_bytes ({max_bytes // 2}), got {segment_bytes}",
            )
        return cls(
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
            fsync=table.choice("fsync", FSYNC_POLICIES, cls.fsync),
            fsync_interval=table.duration("fsync_interval", cls.fsync_interval, minimum=0.001),
            when_full=table.choice("when_full", WHEN_FULL, cls.when_full),
        )
