"""The write-ahead log: the commit point between decode and the sinks.

One writer appends batches of encoded events; each sink reads the WAL through its own
``WalReader`` at its own pace and acknowledges what its destination confirmed.

Record payloads (the framing is ``shipper.buffer.record``'s) hold one or more *entries*, joined by
LF; the writer groups the entries of one append into records of about ``GROUP_BYTES``::

    entry    = source id, NUL, envelope without its id    (``entry``; the route: "" = every sink)
    payload  = entry *(LF entry)

An envelope is one line of JSON (``shipper.events``), so neither it nor a source id holds LF or
NUL. The WAL does not store event ids: an event's id is its position, ``"<segment>-<offset>"``,
the offset being that of the first byte of its entry in the segment file; readers put it into the
envelope as its second key (``envelopes``). One checksum per group instead of one per event is what
lets the writer keep up with the disk; the price is that damage to a record quarantines its whole
group (at most 1.5 times ``GROUP_BYTES``, or one larger entry), not one event.

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

import contextlib
import fcntl
import os
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from shipper.buffer import cursor as cursors
from shipper.buffer import record as records
from shipper.buffer.recovery import CURSOR_DIR, EPOCH_FILE, LOCK_FILE, Report, recover
from shipper.buffer.segment import (
    SEGMENT_HEADER_SIZE,
    Position,
    create,
    fsync_dir,
    read_at,
    segment_name,
    write_buffers,
)
from shipper.errors import ShipperError
from shipper.events import ENVELOPE_HEAD, Event, Malformed
from shipper.logging import get_logger

log = get_logger("shipper.buffer")

READ_BYTES = 1024 * 1024
#: The size the writer aims at for the payload of one record (a group of entries).
GROUP_BYTES = 64 * 1024


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
    records: int  # records passed over
    events: int  # events in them, including those of other sinks' inputs


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
        self.epoch = ""  # identifies this WAL directory's lifetime (see open)
        self._sizes: dict[int, int] = {}  # segment number -> bytes
        self._skips: dict[int, list[tuple[int, int]]] = {}
        self._fd: int | None = None
        self._active = 0
        self._next_number = 1  # numbers are never reused, not even after a failed create
        self._seal = False  # the next append starts a new segment (after an I/O error, or full)
        self._entry_bytes = 512  # average entry size seen last: how many entries fill a group
        self.committed = Position(1, SEGMENT_HEADER_SIZE)
        self.readers: dict[str, WalReader] = {}
        self._appended = trio.Event()
        self._progress = trio.Event()  # set on every ack and deletion: a full writer re-checks
        self._closed = False
        self._closed_event = trio.Event()
        self._dirty = False
        self._io = trio.Lock()  # one thread at a time touches the active segment's fd
        self._lock: int | None = None  # the directory's flock, held from open() to release()
        self.report: Report | None = None

    # --- opening and closing -------------------------------------------------------------------

    def open(self, sinks: dict[str, frozenset[str] | None]) -> Report:
        """Lock and recover the directory and start a new segment (blocking; before serving)."""
        self._lock = lock_directory(self.directory)
        try:
            self.epoch = _epoch(self.directory)
            report = recover(self.directory, list(sinks))
            for finding in report.findings:
                quiet = finding.kind in ("released", "stray", "quarantined")
                (log.info if quiet else log.warning)(
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
            self._active = report.highest + 1
            self._next_number = self._active + 1
            self._fd = create(self.directory, self._active)
        except BaseException:
            self.release()
            raise
        self._sizes[self._active] = SEGMENT_HEADER_SIZE
        self.committed = Position(self._active, SEGMENT_HEADER_SIZE)
        for sink, inputs in sinks.items():
            self.readers[sink] = WalReader(self, sink, report.cursors[sink], inputs)
        self.report = report
        # Segments every sink had passed before the restart (the last one was still active
        # then): free their space now rather than at the next acknowledgement.
        doomed = self._doomed()
        for number in self._delete(doomed):
            doomed.remove(number)  # could not be deleted: still there, still counted
        for number in doomed:
            del self._sizes[number]
            self._skips.pop(number, None)
        return report

    def _doomed(self) -> list[int]:
        """Segments that every reader has passed, except the one being written."""
        return [
            number
            for number in sorted(self._sizes)
            if number != self._active
            and all(reader.passed(number) for reader in self.readers.values())
        ]

    @property
    def full(self) -> bool:
        """Whether an append now would wait for space (or drop, with ``drop_newest``)."""
        return self.total_bytes >= self.settings.max_bytes

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """No more appends: fsync and close the active segment; readers finish what is there.

        The directory stays locked until ``release()``: sinks still read and acknowledge.
        """
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        with trio.CancelScope(shield=True):
            async with self._io:
                fd, self._fd = self._fd, None
                if fd is not None:
                    try:
                        await trio.to_thread.run_sync(_fsync_close, fd)
                    except OSError as exc:
                        log.error("wal_fsync_failed", error=str(exc))
        self._wake_readers()

    def release(self) -> None:
        """Give up the directory lock (after every sink is done with the WAL)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- writing -------------------------------------------------------------------------------

    async def append(self, entries: Sequence[bytes]) -> bool:
        """Make ``entries`` (``entry(event)`` each) durable per the fsync policy; False if they
        were dropped because the WAL is full.

        Raises ``WalWriteError`` when the disk refused; nothing of the batch was accepted then,
        and the caller may retry the same batch.
        """
        if not entries:
            return True
        if self.full and not await self._wait_for_space(len(entries)):
            return False
        assert self._fd is not None, "append after close"
        async with self._io:
            chunks = self._frame(entries)
            start = (self._active, self._sizes[self._active])
            sync = self.settings.fsync == "batch"
            try:
                self._fd, self._active = await trio.to_thread.run_sync(
                    self._write_chunks, self._fd, start, chunks, sync
                )
            except _WriteFailed as failed:
                self._fd = failed.fd
                self._seal = True  # never append again to a segment whose write or fsync failed
                self.counters["write_errors"] += 1
                raise WalWriteError(
                    f"cannot append to the WAL in {self.directory}: {failed.error}"
                ) from failed.error
            self._seal = False
        written = 0
        for segment, buffers in chunks:
            size = sum(map(len, buffers))
            self._sizes[segment] = self._sizes.get(segment, SEGMENT_HEADER_SIZE) + size
            written += size
        if not sync:
            self._dirty = True
        self.committed = Position(self._active, self._sizes[self._active])
        self.counters["events"] += len(entries)
        self.counters["bytes"] += written
        self.counters["fsyncs"] += 1 if sync else 0
        self._wake_readers()
        return True

    def drop(self, count: int) -> None:
        """Count and log ``count`` events dropped because the WAL is full (``drop_newest``)."""
        self.counters["dropped_full"] += count
        log.warning("wal_full_dropped", events=count, max_bytes=self.settings.max_bytes)

    async def _wait_for_space(self, count: int) -> bool:
        """Apply ``when_full``: False to drop the batch, or wait until the WAL has room."""
        if self.settings.when_full == "drop_newest":
            self.drop(count)
            return False
        self.counters["blocked"] += 1
        log.warning("wal_full_blocking", bytes=self.total_bytes, max_bytes=self.settings.max_bytes)
        started = trio.current_time()
        while self.total_bytes >= self.settings.max_bytes:
            progress = self._progress = trio.Event()
            active_size = self._sizes[self._active]
            if active_size > SEGMENT_HEADER_SIZE and all(
                reader.passed(self._active) for reader in self.readers.values()
            ):
                # Only the segment being written holds the space, and every sink is past it:
                # start a new one so that collect() may delete it.
                self._seal = True
                await self.append_nothing()
                await self.collect()
                continue
            await progress.wait()
        blocked = trio.current_time() - started
        self.counters["blocked_ms"] += int(blocked * 1000)
        log.info("wal_unblocked", blocked_seconds=round(blocked, 3))
        return True

    async def append_nothing(self) -> None:
        """Start the next segment now (what a sealed append would do first)."""
        async with self._io:
            if not self._seal or self._fd is None:
                return
            number = self._take_number()
            try:
                self._fd, self._active = await trio.to_thread.run_sync(
                    self._write_chunks,
                    self._fd,
                    (self._active, self._sizes[self._active]),
                    [(number, list[bytes]())],
                    False,
                )
            except _WriteFailed as failed:
                self._fd = failed.fd
                self.counters["write_errors"] += 1
                log.error("wal_rotate_failed", error=str(failed.error))
                return
            self._seal = False
        self._sizes[self._active] = SEGMENT_HEADER_SIZE
        self.committed = Position(self._active, SEGMENT_HEADER_SIZE)
        self._wake_readers()

    def _take_number(self) -> int:
        number = self._next_number
        self._next_number += 1
        return number

    def _frame(self, entries: Sequence[bytes]) -> list[tuple[int, list[bytes]]]:
        """The batch as records of about ``GROUP_BYTES`` of entries each (at most 1.5 times that,
        or one larger entry), cut where a segment is full: per segment, the buffers to write
        there (headers and payloads, never joined).

        Works per group, never per entry: how many entries fit is estimated from the average
        size of the previous group, checked on the joined payload (one C-level join and one
        checksum per group), and halved while the estimate was too high.
        """
        segment = self._active
        offset = self._sizes[segment]
        limit = self.settings.segment_bytes
        if self._seal:
            segment, offset = self._take_number(), SEGMENT_HEADER_SIZE
        chunks: list[tuple[int, list[bytes]]] = [(segment, [])]
        buffers = chunks[0][1]
        start, count, average = 0, len(entries), self._entry_bytes
        while start < count:
            if offset >= limit:
                segment, offset = self._take_number(), SEGMENT_HEADER_SIZE
                buffers = []
                chunks.append((segment, buffers))
            # A group ends where the segment is full, so that segments hold about segment_bytes.
            room = max(1, min(GROUP_BYTES, limit - offset - records.HEADER_SIZE))
            stop = min(count, start + max(1, room // average))
            payload = b"\n".join(entries[start:stop])
            while len(payload) > room + room // 2 and stop - start > 1:
                stop = start + (stop - start) // 2
                payload = b"\n".join(entries[start:stop])
            average = max(1, len(payload) // (stop - start))
            buffers.append(records.header(payload))
            buffers.append(payload)
            offset += records.HEADER_SIZE + len(payload)
            start = stop
        self._entry_bytes = average
        return chunks

    def _write_chunks(
        self, fd: int, start: tuple[int, int], chunks: list[tuple[int, list[bytes]]], sync: bool
    ) -> tuple[int, int]:
        """Worker thread: write the chunks, starting new segments as planned; fsync if asked.

        Returns the active fd and segment number. Touches no shared state. All or nothing: on
        any error the segments this call created are removed, the segment it began in is cut
        back to where the batch began, and ``_WriteFailed`` carries the fd to keep using (the
        caller then seals that segment: no append goes to a file whose write or fsync failed).
        """
        first_fd = fd
        active, base = start
        created: list[tuple[int, int]] = []
        try:
            for segment, buffers in chunks:
                if segment != active:
                    if fd == first_fd:
                        try:  # seal the segment the batch began in
                            os.fsync(fd)
                        except OSError as exc:  # its bytes stay readable; durability unknown
                            log.error("wal_fsync_failed", segment=active, error=str(exc))
                    else:
                        os.fsync(fd)
                    fd = create(self.directory, segment)
                    created.append((segment, fd))
                    active = segment
                write_buffers(fd, buffers)
            if sync:
                os.fsync(fd)
        except OSError as exc:
            for segment, new_fd in created:
                with contextlib.suppress(OSError):
                    os.close(new_fd)
                with contextlib.suppress(OSError):
                    (self.directory / segment_name(segment)).unlink()
            with contextlib.suppress(OSError):
                os.ftruncate(first_fd, base)
            raise _WriteFailed(first_fd, exc) from exc
        for _segment, new_fd in created[:-1]:
            os.close(new_fd)  # filled and fsynced within this batch
        if created:
            with contextlib.suppress(OSError):
                os.close(first_fd)  # sealed: fsynced at the rotation (or the policy allows)
        return fd, active

    async def run_interval_fsync(self) -> None:
        """With ``fsync = "interval"``: fsync the active segment every ``fsync_interval``."""
        if self.settings.fsync != "interval":
            return
        while not self._closed:
            with trio.move_on_after(self.settings.fsync_interval):
                await self._closed_event.wait()
            await self.sync()

    async def sync(self) -> bool:
        """Make everything appended so far durable, whatever the fsync policy; False if the
        fsync failed (the segment is then sealed, and the failure logged and counted)."""
        async with self._io:
            if self._dirty and self._fd is not None:
                try:
                    await trio.to_thread.run_sync(os.fsync, self._fd)
                except OSError as exc:
                    self._seal = True
                    self.counters["write_errors"] += 1
                    log.error("wal_fsync_failed", error=str(exc))
                    return False
                self._dirty = False
                self.counters["fsyncs"] += 1
        return True

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
        self._progress.set()
        doomed = self._doomed()
        if not doomed:
            return
        sizes = {number: self._sizes.pop(number) for number in doomed}  # a concurrent collect
        skips = {number: self._skips.pop(number, []) for number in doomed}  # must not see them
        failed = await trio.to_thread.run_sync(self._delete, doomed)
        for number in failed:  # still on disk: still counted, deleted at a later collect
            self._sizes[number] = sizes[number]
            if skips[number]:
                self._skips[number] = skips[number]
        self.counters["segments_deleted"] += len(doomed) - len(failed)
        self._progress.set()

    def _delete(self, numbers: list[int]) -> list[int]:
        """Worker thread: unlink the segments; the numbers that could not be deleted."""
        failed = []
        for number in numbers:
            try:
                (self.directory / segment_name(number)).unlink(missing_ok=True)
            except OSError as exc:
                log.error("wal_delete_failed", segment=number, error=str(exc))
                failed.append(number)
        try:
            fsync_dir(self.directory)
        except OSError as exc:
            log.error("wal_fsync_failed", error=str(exc))
        return failed

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
            return ReadBatch([], self.position, 0, 0)
        batch: list[bytes] = []
        events = 0
        for item in found:
            events += item.payload.count(b"\n") + 1
            batch.extend(envelopes(segment, offset + item.offset, item.payload, self.inputs))
        self.position = Position(segment, offset + stop)
        return ReadBatch(batch, self.position, len(found), events)

    async def ack(self, end: Position) -> None:
        """The sink's destination confirmed everything before ``end``: persist and collect."""
        if end <= self.acked:
            return
        directory = self.wal.directory / CURSOR_DIR
        try:
            await trio.to_thread.run_sync(cursors.store, directory, self.sink, end)
        except OSError as exc:
            # Delivered, but the cursor is not persisted: after a crash this part comes again.
            # The next acknowledgement tries again; segments stay until one succeeds.
            self.counters["cursor_errors"] += 1
            log.error("wal_cursor_store_failed", sink=self.sink, error=str(exc))
            return
        self.acked = end
        self.counters["acks"] += 1
        await self.wal.collect()


class _WriteFailed(Exception):
    """Internal: a write failed; carries the fd the writer keeps and the OS error."""

    def __init__(self, fd: int, error: OSError) -> None:
        super().__init__(str(error))
        self.fd = fd
        self.error = error


def entry(event: Event) -> bytes:
    """What the WAL stores for ``event``: its route (source id, "" for an alert), NUL, and its
    envelope without the id. An envelope too large for a record (impossible within the config's
    limits) is stored as a ``malformed`` event instead of failing the batch."""
    envelope = event.encode_without_id()
    if len(envelope) + 256 > records.MAX_PAYLOAD:
        raw = event.record_json or b""
        event = Event(
            event.received_at,
            event.source,
            event.agent,
            malformed=Malformed.of("envelope larger than the WAL's record limit", raw),
        )
        envelope = event.encode_without_id()
    return event.source_id.encode() + b"\0" + envelope


def envelopes(
    segment: int, offset: int, payload: bytes, inputs: frozenset[bytes] | None = None
) -> list[bytes]:
    """The envelopes, ids put in, of the entries of the record at ``offset`` of ``segment``
    whose payload is ``payload``, in order; with ``inputs``, only those routed to one of these
    source ids, and the alerts (route "").

    The readers' hot loop: one slice and one concatenation per event, nothing else allocated.
    """
    prefix = b'%s"id":"%d-' % (ENVELOPE_HEAD, segment)
    skip = len(ENVELOPE_HEAD)
    position = offset + records.HEADER_SIZE
    found: list[bytes] = []
    for item in payload.split(b"\n"):
        source, _, envelope = item.partition(b"\0")
        if inputs is None or not source or source in inputs:
            if not envelope.startswith(ENVELOPE_HEAD):  # only a bug in the writer can do this
                raise ValueError(f"WAL entry at {segment}-{position} is not an envelope")
            found.append(prefix + b'%d",' % position + envelope[skip:])
        position += len(item) + 1
    return found


def _epoch(directory: Path) -> str:
    """The id of this WAL directory's lifetime, created with it (a new one after a wipe)."""
    path = directory / EPOCH_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        epoch = secrets.token_hex(8)
        tmp = path.with_name(EPOCH_FILE + ".tmp")
        tmp.write_text(epoch + "\n")
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
        return epoch


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
