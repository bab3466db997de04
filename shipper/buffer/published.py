"""What the WAL's writer publishes for its readers, in whatever process they run: how far the
accepted records go, which segments there are and where each ends, what recovery skipped, the
epoch, and whether the WAL is closed. A reader needs these two files, the segments and its cursor,
nothing else of the writer.

``head``: 40 bytes, rewritten in place (one ``pwrite`` at offset 0, never truncated or replaced)
each time the accepted position moves, the layout changes, or the WAL closes; little-endian::

    offset  size  field
    0       8     magic       b"SHPHEAD\\x01"
    8       8     segment     u64  the accepted ("committed") position: segment number ...
    16      8     offset      u64  ... and offset; every record before it is accepted
    24      8     generation  u64  the generation of the ``layout`` that goes with it
    32      4     flags       u32  bit 0: closed (the writer appends nothing more)
    36      4     crc         u32  CRC-32C of bytes 0..36

A read that overlaps a rewrite may see old and new bytes mixed: the CRC then fails and the reader
reads again (``read_head``); a head that stays invalid (a file just created) counts as not yet
published.

``layout``: one JSON object, replaced whole (written to ``layout.tmp``, renamed over), so a reader
sees the old one or the new one; rewritten only when a segment is left, deleted, cut back by a
rollback, and at open::

    {"v": 1, "generation": 1764000000000000001, "epoch": "0123456789abcdef",
     "segments": [[3, 65544], [4, 70012], [5, null]], "skips": [[3, 4096, 4200]]}

``segments``: every segment the WAL holds, in order, each with the bytes (header included) a
reader may read in it once the writer has left it, or null for the one it writes. ``skips``:
``[segment, start, end)`` ranges recovery quarantined, which no reader reads. Generations grow
(they start at the clock's nanoseconds when the writer opens the WAL, so a new writer's are
larger too).

Neither file is fsynced: ``Wal.open`` writes both anew after recovery, before any reader of the new
writer reads. Rules the writer keeps, which make a reader's view safe however stale:

* The head is written after the layout it names: a reader that reads the head, then the layout,
  gets that layout or a newer one. A newer layout never lists a segment as readable beyond what
  the head's accepted position covers, and only drops segments every reader has passed.
* The accepted position is published only once the records before it are accepted (with
  ``fsync = "batch"``, durable), and only with a layout that gives the size of every segment before
  it: a reader never reads past it, so refused (rolled-back) bytes never become visible, not even
  when cutting them off the files failed. A write that leaves a segment publishes the new layout
  before its batch can be accepted; if the layout cannot be written (a full disk), the batch is
  refused like one whose write failed. A layout that only drops segments or cuts refused bytes
  off is written when it can (readers never read those bytes anyway).
* A segment is deleted only when every configured reader's cursor has passed it (``Wal.collect``):
  a reader never loses a segment it has not passed.

A reader therefore reads segment ``s`` up to the head's offset if ``s`` is the head's segment, up
to its layout size if ``s`` is before it, and not at all after it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson
from crc32c import crc32c

from shipper.buffer.segment import Position, read_object

if TYPE_CHECKING:
    from shipper.buffer.recovery import Report

HEAD_FILE: Final = "head"
LAYOUT_FILE: Final = "layout"
HEAD_MAGIC: Final = b"SHPHEAD\x01"
HEAD: Final = struct.Struct("<8sQQQI")
HEAD_SIZE: Final = HEAD.size + 4
CLOSED: Final = 1
LAYOUT_VERSION: Final = 1
#: How often a reader reads a head again whose checksum failed (a rewrite under way) before it
#: takes the head as not published.
HEAD_READS: Final = 100


@dataclass(frozen=True)
class Head:
    committed: Position
    generation: int
    closed: bool


@dataclass(frozen=True)
class Layout:
    generation: int
    epoch: str
    #: Segment number -> readable bytes once left (None: the one being written), in order.
    segments: dict[int, int | None]
    skips: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class State:
    """One consistent view of the WAL for a reader: a head and a layout at least as new."""

    head: Head
    layout: Layout

    @property
    def committed(self) -> Position:
        return self.head.committed

    def limit(self, segment: int) -> int | None:
        """How far a reader may read in ``segment``; None if not at all (it is past the accepted
        position, or the WAL does not hold it)."""
        committed = self.head.committed
        if segment == committed.segment:
            return committed.offset
        if segment > committed.segment:
            return None
        return self.layout.segments.get(segment)

    def following(self, segment: int) -> int | None:
        """The first segment after ``segment`` that the WAL holds, if a reader may read it."""
        later = [n for n in self.layout.segments if n > segment]
        if not later:
            return None
        number = min(later)
        return number if number <= self.head.committed.segment else None

    @property
    def consistent(self) -> bool:
        """Whether the layout tells where every segment before the accepted position ends."""
        committed = self.head.committed.segment
        return all(
            size is not None for number, size in self.layout.segments.items() if number < committed
        )


def recovered(report: Report) -> State:
    """The state of a WAL that no writer holds, as recovery finds it (``repair=False``): every
    segment whole, accepted to its end, closed. For reading a WAL offline."""
    segments: dict[int, int | None] = {info.number: info.size for info in report.segments}
    skips = {info.number: list(info.skips) for info in report.segments if info.skips}
    layout = Layout(0, report.epoch, segments, skips)
    return State(Head(report.end, 0, closed=True), layout)


# --- the reader's side --------------------------------------------------------------------------


def decode_head(data: bytes) -> Head | None:
    """The head in ``data``, or None if it is not a whole, intact one."""
    if len(data) < HEAD_SIZE:
        return None
    magic, segment, offset, generation, flags = HEAD.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, HEAD.size)
    if magic != HEAD_MAGIC or crc32c(data[: HEAD.size]) != crc:
        return None
    return Head(Position(segment, offset), generation, bool(flags & CLOSED))


def read_head(directory: Path, counters: Counter[str] | None = None) -> Head | None:
    """The published head; None if there is none (yet). A read whose checksum fails is read
    again (up to ``HEAD_READS`` times), each time counted in ``counters["head_rereads"]``."""
    try:
        fd = os.open(directory / HEAD_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for attempt in range(HEAD_READS):
            head = decode_head(os.pread(fd, HEAD_SIZE, 0))
            if head is not None:
                return head
            if counters is not None and attempt + 1 < HEAD_READS:
                counters["head_rereads"] += 1
        return None
    finally:
        os.close(fd)


def read_layout(directory: Path) -> Layout | None:
    """The published layout; None if there is none or it cannot be read."""
    data = read_object(directory / LAYOUT_FILE)
    if not isinstance(data, dict) or data.get("v") != LAYOUT_VERSION:
        return None
    try:
        segments: dict[int, int | None] = {
            int(number): None if size is None else int(size) for number, size in data["segments"]
        }
        skips: dict[int, list[tuple[int, int]]] = {}
        for number, start, end in data["skips"]:
            skips.setdefault(int(number), []).append((int(start), int(end)))
        return Layout(int(data["generation"]), str(data["epoch"]), segments, skips)
    except (KeyError, TypeError, ValueError):
        return None


def read_state(directory: Path, known: State | None, counters: Counter[str] | None = None) -> State:
    """The published state now, reusing ``known``'s layout while the head names it. Raises
    ``NotPublished`` if the writer has published nothing readable (yet). A layout older than
    the head (a new writer is starting) is read again, counted in ``layout_rereads``."""
    for _attempt in range(HEAD_READS):
        head = read_head(directory, counters)
        if head is None:
            raise NotPublished(f"the WAL in {directory} has no head yet")
        if known is not None and known.layout.generation == head.generation:
            return State(head, known.layout)
        layout = read_layout(directory)
        if layout is None:
            raise NotPublished(f"the WAL in {directory} has no readable layout")
        state = State(head, layout)
        if layout.generation >= head.generation and state.consistent:
            return state
        if counters is not None:
            counters["layout_rereads"] += 1
    raise NotPublished(f"the WAL in {directory} has no layout matching its head")


class NotPublished(Exception):
    """The WAL's writer has not published its state (yet); a reader waits for it."""


# --- the writer's side --------------------------------------------------------------------------


class Publisher:
    """Writes ``head`` and ``layout`` (blocking, but small: the head is one ``pwrite``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = time.time_ns()
        self._fd: int | None = os.open(
            directory / HEAD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )

    def layout(
        self, epoch: str, segments: dict[int, int | None], skips: dict[int, list[tuple[int, int]]]
    ) -> int:
        """Replace the layout (a new generation, which the next head names); its generation."""
        generation = self.generation + 1
        data = orjson.dumps(
            {
                "v": LAYOUT_VERSION,
                "generation": generation,
                "epoch": epoch,
                "segments": [[number, segments[number]] for number in sorted(segments)],
                "skips": [
                    [number, start, end] for number in sorted(skips) for start, end in skips[number]
                ],
            }
        )
        path = self.directory / LAYOUT_FILE
        tmp = path.with_name(LAYOUT_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.generation = generation
        return generation

    def head(self, committed: Position, generation: int, closed: bool) -> None:
        """Rewrite the head in place."""
        if self._fd is None:
            raise ValueError("the publisher is closed")
        record = HEAD.pack(
            HEAD_MAGIC, committed.segment, committed.offset, generation, CLOSED if closed else 0
        )
        os.pwrite(self._fd, record + struct.pack("<I", crc32c(record)), 0)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
