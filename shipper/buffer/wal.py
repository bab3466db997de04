"""The write-ahead log: the commit point between decode and the sinks.

One writer appends batches of events; each sink reads the WAL through its own ``WalReader`` at its
own pace and acknowledges what its destination confirmed. The record payload is the event's source
id, a NUL byte, and the envelope (``shipper.events``), whose id is the record's position
``"<segment>-<offset>"``.

* An event is accepted once its batch is written and, with ``fsync = "batch"``, fsynced.
  ``"interval"`` fsyncs every ``fsync_interval`` (a power cut loses at most that much);
  ``"never"`` leaves it to the kernel (a power cut can lose anything not yet written back; a
  process crash loses nothing).
* Readers see a record once it is accepted. A reader needs only the segment files and its cursor,
  so a reader in another process could follow the same files.
* A segment is deleted only when every sink's cursor has passed all of it, and never while it is
  the one being written.
* ``max_bytes`` bounds the segments on disk. When it is reached, ``when_full = "block"`` makes the
  writer wait (so sources stop reading and senders feel backpressure), ``"drop_newest"`` drops the
  batch, counted and logged.
"""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from shipper.buffer import cursor as cursors
from shipper.buffer import record as records
from shipper.buffer.recovery import CURSOR_DIR, LOCK_FILE, Report, recover
from shipper.buffer.segment import (
    SEGMENT_HEADER_SIZE,
    Position,
    create,
    fsync_dir,
    read_at,
    segment_name,
    write_all,
)
from shipper.errors import ShipperError
from shipper.events import Event
from shipper.logging import get_logger

log = get_logger("shipper.buffer")

READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WalSettings:
    max_bytes: int = 1024**3
    segment_bytes: int = 64 * 1024**2
    fsync: str = "batch"  # "batch" | "interval" | "never"
    fsync_interval: float = 1.0
    when_full: str = "block"  # "block" | "drop_newest"


@dataclass
class ReadBatch:
    """Envelopes read for one sink, and the position to acknowledge once they are delivered."""

    envelopes: list[bytes]
    end: Position
    records: int  # records passed over, including those of other sinks' inputs


class WalWriteError(ShipperError):
    """The WAL could not be written (disk full, I/O error); the batch was not accepted.

    Retrying later can succeed once space is freed; the caller backs off and retries.
    """

    retriable = True


class Wal:
    """Segments on disk, one writer, one reader per sink."""

    def __init__(self, directory: Path, settings: WalSettings) -> None:
        self.directory = directory
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._sizes: dict[int, int] = {}  # segment number -> bytes
        self._skips: dict[int, list[tuple[int, int]]] = {}
        self._fd: int | None = None
        self._active = 0
        self.committed = Position(1, SEGMENT_HEADER_SIZE)
        self.readers: dict[str, WalReader] = {}
        self._appended = trio.Event()
        self._space = trio.Event()
        self._closed = False
        self._dirty = False
        self._io = trio.Lock()
        self._lock: int | None = None  # one thread at a time touches the active segment's fd
        self.report: Report | None = None

    # --- opening and closing -------------------------------------------------------------------

    def open(self, sinks: dict[str, frozenset[str] | None]) -> Report:
        """Lock and recover the directory and start a new segment (blocking; before serving)."""
        self._lock = lock_directory(self.directory)
        report = recover(self.directory, list(sinks))
        for finding in report.findings:
            level = (
                log.info if finding.kind in ("released", "stray", "quarantined") else log.warning
            )
            level(
                "wal_recovery",
                kind=finding.kind,
                detail=finding.detail,
                segment=finding.segment,
                offset=finding.offset,
                size=finding.size,
            )
            self.counters[f"recovery_{finding.kind}"] += 1
        for info in report.segments:
            self._sizes[info.number] = info.size
            if info.skips:
                self._skips[info.number] = info.skips
        self._active = (report.segments[-1].number if report.segments else 0) + 1
        self._fd = create(self.directory, self._active)
        self._sizes[self._active] = SEGMENT_HEADER_SIZE
        self.committed = Position(self._active, SEGMENT_HEADER_SIZE)
        for sink, inputs in sinks.items():
            self.readers[sink] = WalReader(self, sink, report.cursors[sink], inputs)
        self.report = report
        return report

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """No more appends: fsync and close the active segment; readers finish what is there."""
        if self._closed:
            return
        self._closed = True
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
        with trio.CancelScope(shield=True):
            async with self._io:
                fd, self._fd = self._fd, None
                if fd is not None:
                    await trio.to_thread.run_sync(_fsync_close, fd)
        self._wake_readers()

    # --- writing -------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> bool:
        """Make ``events`` durable (per the fsync policy); False if dropped because full."""
        if not events:
            return True
        if self.total_bytes >= self.settings.max_bytes:
            if self.settings.when_full == "drop_newest":
                self.counters["dropped_full"] += len(events)
                log.warning(
                    "wal_full_dropped", events=len(events), max_bytes=self.settings.max_bytes
                )
                return False
            self.counters["blocked"] += 1
            log.warning(
                "wal_full_blocking", bytes=self.total_bytes, max_bytes=self.settings.max_bytes
            )
            started = trio.current_time()
            while self.total_bytes >= self.settings.max_bytes:
                self._space = trio.Event()
                await self._space.wait()
            blocked = trio.current_time() - started
            self.counters["blocked_ms"] += int(blocked * 1000)
            log.info("wal_unblocked", blocked_seconds=round(blocked, 3))
        chunks = self._encode(events)
        sync = self.settings.fsync == "batch"
        assert self._fd is not None, "append after close"
        start = (self._active, self._sizes[self._active])
        try:
            async with self._io:
                self._fd = await trio.to_thread.run_sync(
                    self._write_chunks, self._fd, start, chunks, sync
                )
        except OSError as exc:
            self.counters["write_errors"] += 1
            raise WalWriteError(f"cannot append to the WAL in {self.directory}: {exc}") from exc
        for segment, data in chunks:
            if segment != self._active:
                self._active = segment
                self._sizes[segment] = SEGMENT_HEADER_SIZE
            self._sizes[segment] += len(data)
        if not sync:
            self._dirty = True
        self.committed = Position(self._active, self._sizes[self._active])
        self.counters["events"] += len(events)
        self.counters["bytes"] += sum(len(data) for _, data in chunks)
        self.counters["fsyncs"] += 1 if sync else 0
        self._wake_readers()
        return True

    def _encode(self, events: Sequence[Event]) -> list[tuple[int, bytes]]:
        segment = self._active
        offset = self._sizes[segment]
        limit = self.settings.segment_bytes
        chunks: list[tuple[int, bytes]] = []
        parts: list[bytes] = []
        encode = records.encode
        for event in events:
            if offset >= limit:
                chunks.append((segment, b"".join(parts)))
                parts = []
                segment += 1
                offset = SEGMENT_HEADER_SIZE
            payload = event.source_id.encode() + b"\0" + event.encode(f"{segment}-{offset}")
            framed = encode(payload)
            parts.append(framed)
            offset += len(framed)
        chunks.append((segment, b"".join(parts)))
        return chunks

    def _write_chunks(
        self, fd: int, start: tuple[int, int], chunks: list[tuple[int, bytes]], sync: bool
    ) -> int:
        """Worker thread: write, rotating segments as planned, fsync if asked; the active fd.

        Touches no shared state. On a write error the segment is cut back to where this batch
        began, so that offsets (and event ids) stay true; the caller may retry.
        """
        active, size = start
        for segment, data in chunks:
            if segment != active:
                _fsync_close(fd)
                fd = create(self.directory, segment)
                active, size = segment, SEGMENT_HEADER_SIZE
            try:
                write_all(fd, data)
            except OSError:
                os.ftruncate(fd, size)
                raise
            size += len(data)
        if sync:
            os.fsync(fd)
        return fd

    async def run_interval_fsync(self) -> None:
        """With ``fsync = "interval"``: fsync the active segment every ``fsync_interval``."""
        if self.settings.fsync != "interval":
            return
        while not self._closed:
            await trio.sleep(self.settings.fsync_interval)
            async with self._io:
                if self._dirty and self._fd is not None:
                    self._dirty = False
                    await trio.to_thread.run_sync(os.fsync, self._fd)
                    self.counters["fsyncs"] += 1

    # --- readers and deletion -----------------------------------------------------------------

    def _wake_readers(self) -> None:
        self._appended.set()
        self._appended = trio.Event()

    def segment_size(self, number: int) -> int | None:
        return self._sizes.get(number)

    def next_segment(self, number: int) -> int | None:
        later = [n for n in self._sizes if n > number]
        return min(later) if later else None

    def skips(self, number: int) -> list[tuple[int, int]]:
        return self._skips.get(number, [])

    async def collect(self) -> None:
        """Delete every segment that all readers have passed (never the active one)."""
        doomed = [
            number
            for number in sorted(self._sizes)
            if number != self._active
            and all(reader.passed(number) for reader in self.readers.values())
        ]
        if not doomed:
            return
        for number in doomed:  # forget them first: a concurrent collect must not see them
            del self._sizes[number]
            self._skips.pop(number, None)
        await trio.to_thread.run_sync(self._delete, doomed)
        self.counters["segments_deleted"] += len(doomed)
        self._space.set()

    def _delete(self, numbers: list[int]) -> None:
        for number in numbers:
            (self.directory / segment_name(number)).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def lag_bytes(self, reader: WalReader) -> int:
        """Bytes accepted but not yet acknowledged by ``reader``'s sink."""
        lag = 0
        for number, size in self._sizes.items():
            if number > reader.acked.segment:
                lag += size - SEGMENT_HEADER_SIZE
            elif number == reader.acked.segment:
                lag += max(0, size - reader.acked.offset)
        return lag


class WalReader:
    """One sink's view of the WAL: read in order, acknowledge, resume after a restart."""

    def __init__(
        self, wal: Wal, sink: str, position: Position, inputs: frozenset[str] | None
    ) -> None:
        self.wal = wal
        self.sink = sink
        self.position = position
        self.acked = position
        self.inputs = None if inputs is None else frozenset(i.encode() for i in inputs)
        self.counters: Counter[str] = Counter()

    def passed(self, number: int) -> bool:
        """Whether this sink has acknowledged everything in segment ``number``."""
        if self.acked.segment != number:
            return self.acked.segment > number
        size = self.wal.segment_size(number)
        return size is not None and self.acked.offset >= size

    def _normalize(self) -> None:
        """Step over finished (non-active) segments and known corrupt ranges."""
        wal = self.wal
        while True:
            size = wal.segment_size(self.position.segment)
            if size is None or (
                self.position.offset >= size and self.position.segment < wal.committed.segment
            ):
                following = wal.next_segment(self.position.segment)
                if following is None:
                    return
                self.position = Position(following, SEGMENT_HEADER_SIZE)
                continue
            for start, end in wal.skips(self.position.segment):
                if start <= self.position.offset < end:
                    self.position = Position(self.position.segment, end)
            return

    @property
    def has_unread(self) -> bool:
        """Whether accepted records wait to be read (``read()`` would not wait)."""
        self._normalize()
        return self.position < self.wal.committed

    async def read(self, max_bytes: int = READ_BYTES) -> ReadBatch | None:
        """The next accepted records (waiting for some); None once the WAL is closed and read."""
        wal = self.wal
        while True:
            self._normalize()
            if self.position < wal.committed:
                break
            if wal.closed:
                return None
            await wal._appended.wait()
        segment = self.position.segment
        size = wal.segment_size(segment)
        assert size is not None
        limit = wal.committed.offset if segment == wal.committed.segment else size
        for start, _end in wal.skips(segment):
            if self.position.offset < start < limit:
                limit = start  # read up to a corrupt range; the next read steps over it
        path = wal.directory / segment_name(segment)
        offset = self.position.offset
        want = min(limit - offset, max_bytes)
        while True:
            data = await trio.to_thread.run_sync(read_at, path, offset, want)
            found, stop, damaged = records.read_records(data)
            if found or damaged or want >= limit - offset:
                break
            want = min(limit - offset, want * 2)  # one record is larger than the read size
        if not found:
            # Accepted bytes that hold no valid record: damaged after recovery scanned them.
            rest = await trio.to_thread.run_sync(read_at, path, offset, limit - offset)
            resume = next(
                (item.offset for item in records.scan(rest) if isinstance(item, records.Record)),
                len(rest),
            )
            self.counters["corrupt_bytes"] += resume
            log.error(
                "wal_corrupt_while_reading",
                sink=self.sink,
                segment=segment,
                offset=offset,
                size=resume,
            )
            self.position = Position(segment, offset + resume)
            return ReadBatch([], self.position, 0)
        envelopes: list[bytes] = []
        inputs = self.inputs
        for item in found:
            source, _, envelope = item.payload.partition(b"\0")
            if inputs is None or source in inputs:
                envelopes.append(envelope)
        self.position = Position(segment, offset + stop)
        return ReadBatch(envelopes, self.position, len(found))

    async def ack(self, end: Position) -> None:
        """The sink's destination confirmed everything before ``end``: persist and collect."""
        if end <= self.acked:
            return
        directory = self.wal.directory / CURSOR_DIR
        await trio.to_thread.run_sync(cursors.store, directory, self.sink, end)
        self.acked = end
        self.counters["acks"] += 1
        await self.wal.collect()


class WalLocked(ShipperError):
    """Another process (a running daemon, a repair) holds this WAL; only one may use it."""


def lock_directory(directory: Path) -> int:
    """Create ``directory`` and take its exclusive lock; the lock's fd (close it to release)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise WalLocked(
            f"the WAL in {directory} is in use by another process (a running shipper?)"
        ) from exc
    return fd


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
