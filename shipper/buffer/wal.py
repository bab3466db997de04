"""The write-ahead log: the commit point between decode and the sinks.

One writer appends batches of entries (``shipper.buffer.entries``: a route and an opaque
payload each); each sink reads the WAL through its own ``WalReader`` (``shipper.buffer.reader``)
at its own pace, in this process or another, and acknowledges what its destination confirmed.

The writer groups the entries of one append into records (``shipper.buffer.record``) of about
``GROUP_BYTES``. The WAL stores no ids: an entry's position (its segment and the offset of its
first byte in the segment file) is its id. One checksum per group instead of one per entry is
what lets the writer keep up with the disk; the price is that damage to a record quarantines its
whole group (at most 1.5 times ``GROUP_BYTES``, or one larger entry), not one entry.

* An append is accepted once its batch is written and, with ``fsync = "batch"``, fsynced.
  ``"interval"`` fsyncs every ``fsync_interval`` (a power cut loses at most that much);
  ``"never"`` leaves it to the kernel (a power cut can lose anything not yet written back; a
  process crash loses nothing).
* Group commit: a writer may write further batches (``write``) before the earlier ones are
  accepted (``wait_accepted``); one fsync accepts every batch written before it began, and the
  next batches are framed and written while it runs. Batches are accepted in the order written.
* Any failure (a write, an fsync, a rotation) takes the WAL back to its last accepted position:
  every batch written after it is refused, and its bytes are cut off the files before the next
  write, which starts a new segment. The writer writes the refused batches again, in order; so
  no batch is stored twice, and none is stored after one that was refused.
* Readers see a record once it is accepted: the writer publishes the accepted position, the
  segments and where each ends, what recovery skipped, the epoch and the close in two small files
  (``shipper.buffer.published``: the rules that keep readers right are there), and wakes its
  readers: those in its process directly, the others through a socket each
  (``shipper.buffer.wake``). A reader needs nothing else of the writer.
* A segment is deleted only when every configured reader's cursor has passed all of it, and never
  while it is the one being written. The writer knows the positions its readers in this process
  acknowledge; it reads the cursors again when a reader in another process says it acknowledged,
  and while it waits for room.
* ``open`` recovers the directory first (``shipper.buffer.recovery`` says what it finds and
  does); each finding is logged as ``wal_recovery`` at its level and counted
  (``recovery_<kind>``). The WAL's ``epoch`` is the one recovery read or restored: the chain
  checkpoint's (``epoch_hint``) if the ``epoch`` file is damaged or lost, else a new one.
* A record that holds no entries although its checksum is right (damage recovery did not see) is
  stepped over by the reader like corrupt bytes, counted and logged (``wal_corrupt_while_reading``).
* ``max_bytes`` bounds the segments on disk. When it is reached, or when the file system has less
  than ``reserve_bytes`` free (a disk filling up before ``max_bytes`` is a full WAL too; see
  ``full``), ``when_full = "block"`` makes the writer wait (so sources stop reading and senders
  feel backpressure), ``"drop_newest"`` drops the batch, counted and logged. A writer that applies
  ``when_full`` itself (``write(granted=True)``) may pass the bound by the batches it has in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from shipper.buffer import cursor as cursors
from shipper.buffer import record as records
from shipper.buffer.config import BufferConfig
from shipper.buffer.published import Head, Layout, Publisher, State
from shipper.buffer.reader import READ_BYTES as READ_BYTES
from shipper.buffer.reader import ReadBatch as ReadBatch
from shipper.buffer.reader import Shape
from shipper.buffer.reader import WalReader as WalReader
from shipper.buffer.recovery import CURSOR_DIR, LOCK_FILE, Report, recover
from shipper.buffer.segment import (
    SEGMENT_HEADER_SIZE,
    Position,
    create,
    fsync_dir,
    segment_name,
    write_buffers,
)
from shipper.buffer.wake import ACKED, HELLO, WriterWake
from shipper.errors import ShipperError
from shipper.logging import Throttle, get_logger
from shipper.metrics import Health, HistogramValue, Registry, mirror
from shipper.retry import Backoff

log = get_logger("shipper.buffer")

#: The size the writer aims at for the payload of one record (a group of entries).
GROUP_BYTES = 64 * 1024
#: While the file system is low on space, how often its free space is looked at again.
DISK_POLL_SECONDS = 1.0
#: Batches a writer keeps written and not yet accepted (``Wal.write``, then ``wait_accepted`` of
#: the oldest): the fsync of one overlaps the encoding, framing and writing of the next ones.
PIPELINE_DEPTH = 4


class WalWriteError(ShipperError):
    """The WAL could not be written (disk full, I/O error); the batch was not accepted.

    Retrying later can succeed once space is freed; the caller backs off and retries.
    """


#: What the WAL counts (``wal_<name>`` metrics).
WAL_COUNTERS: dict[str, str] = {
    "events": "Events accepted",
    "bytes": "Bytes written to segments and accepted",
    "fsyncs": "fsyncs of segments",
    "blocked": "Times a writer waited for room",
    "dropped_full": "Events dropped because the WAL was full (when_full = drop_newest)",
    "write_errors": "Failed writes and fsyncs (the batches were refused)",
    "rollbacks": "Times refused bytes were cut off the segments",
    "segments_deleted": "Segments deleted once every reader had passed them",
    "publish_errors": "Failures publishing the WAL's state for readers",
}


#: Upper bounds of the fsync duration histogram (``wal_fsync_seconds``).
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: A sink's lag in seconds is known to within this: the WAL notes when it wrote where at most
#: once per this many seconds (``lag_seconds``).
MARK_SECONDS = 1.0


class Wal:
    """Segments on disk, one writer, one reader per sink.

    ``settings`` is the ``[buffer]`` config as read (``shipper.buffer.config``);
    ``reserve_bytes`` is the free space to keep on the file system (see ``full``).
    ``envelopes``: what the readers ``open`` makes (``readers``) hand out for the payloads they
    read (``shipper.buffer.reader.Shape``); None: the payloads as stored.
    """

    def __init__(
        self,
        directory: Path,
        settings: BufferConfig,
        reserve_bytes: int = 0,
        *,
        envelopes: Shape | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self._envelopes = envelopes
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
        #: The readers of the configured sinks, for a sink in this process (``open``).
        self.readers: dict[str, WalReader] = {}
        #: Per configured reader (in this process or not), the position it acknowledged last
        #: as far as the writer knows: what decides which segments may go.
        self._acked: dict[str, Position] = {}
        self._publisher: Publisher | None = None
        self._layout = 0  # the generation of the layout published last
        self._layout_due = False  # a layout could not be published: try again at the next one
        self._publish_log = Throttle(1)
        self._wake: WriterWake | None = None
        self._progress = trio.Event()  # set on every ack and deletion: a full writer re-checks
        self._closed = False
        self._closed_event = trio.Event()
        self._io = trio.Lock()  # one write at a time (framing, writing, rotating, rolling back)
        # The write lane's end and the sync lane's state (see "writing" below).
        self._synced_seq = 0  # batches settled: accepted, or refused (in _refused)
        self._fsynced_seq = 0  # batches an fsync covered (or refused)
        self._unsettled: deque[tuple[int, int, int]] = deque()  # (seq, events, bytes) written
        self._refused: list[tuple[int, int, str]] = []  # (first seq, last seq, why): recent ones
        self._retired: list[int] = []  # fds of segments left, for the sync lane to close
        self._syncing = False
        self._synced_event = trio.Event()  # set (and replaced) at each fsync and sync's end
        # The write lane's end: (batches written so far, where they end, the fd they are in),
        # replaced whole so that the sync thread reads it consistently.
        self._write_state: tuple[int, Position, int | None] = (0, self.committed, None)
        self._needs_rollback = False  # an fsync failed: cut back to committed before writing
        self._refusal_pending = False  # batches were refused and the writer was not told yet
        self._activity = trio.Event()  # set on a write, an fsync's end, and close: wakes run()
        self._lock: int | None = None  # the directory's flock, held from open() to release()
        #: Free space kept on the WAL's file system: below it the WAL counts as full, as at
        #: ``max_bytes`` (room for the batches in flight and the chain checkpoint).
        self.reserve_bytes = reserve_bytes
        self._drop_log = Throttle(1)
        self._drop_logged = 0  # dropped_full as of the last wal_full_dropped line
        self.report: Report | None = None
        self.blocked_seconds = 0.0  # how long writers waited for room, in all
        self.fsync_seconds = HistogramValue(FSYNC_BUCKETS)  # how long each fsync took
        # (where the WAL ended, when) noted at most every MARK_SECONDS: what was written after
        # that position was written after that time (``lag_seconds``).
        self._marks: deque[tuple[Position, float]] = deque()

    # --- opening and closing -------------------------------------------------------------------

    def open(
        self, sinks: dict[str, frozenset[str] | None], epoch_hint: str | None = None
    ) -> Report:
        """Lock and recover the directory and start a new segment (blocking; before serving).

        ``epoch_hint``: the epoch this WAL most likely has (the chain checkpoint's), for
        recovery to use if the ``epoch`` file is damaged or missing.
        """
        self._lock = lock_directory(self.directory)
        try:
            report = recover(self.directory, list(sinks), epoch_hint=epoch_hint)
            self.epoch = report.epoch
            log_at = {"info": log.info, "warning": log.warning, "error": log.error}
            for finding in report.findings:
                log_at[finding.level](
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
        self._write_state = (0, self.committed, self._fd)
        self._acked = {sink: report.cursors[sink] for sink in sinks}
        self.report = report
        # What the WAL held at open was written no later than now (its time is not kept).
        self._marks = deque([(Position(0, 0), time.monotonic())])
        # Segments every sink had passed before the restart (the last one was still active
        # then): free their space now rather than at the next acknowledgement.
        doomed = self._doomed()
        for number in self._delete(doomed):
            doomed.remove(number)  # could not be deleted: still there, still counted
        for number in doomed:
            del self._sizes[number]
            self._skips.pop(number, None)
        try:
            self._publisher = Publisher(self.directory)
            self._publish_layout()
        except BaseException:
            _close_all([self._fd])
            self._fd = None
            self.release()
            raise
        self._publish_head()
        try:
            self._wake = WriterWake(self.directory)
        except OSError as exc:
            log.warning(
                "wal_wake_unavailable",
                reason=str(exc),
                detail="readers in other processes look for new records every second",
            )
        for sink, inputs in sinks.items():
            self.readers[sink] = WalReader(
                self.directory,
                sink,
                inputs,
                envelopes=self._envelopes,
                position=report.cursors[sink],
                acknowledged=self._acknowledged,
            )
        return report

    async def add_reader(
        self, name: str, inputs: frozenset[str] | None, position: Position | None = None
    ) -> WalReader:
        """Configure a reader while the WAL runs (a sink added or changed by a reload): it
        starts at ``position``, stored as its cursor first (so that a reader of that name in
        another process starts there too), else at its stored cursor (``_acked``: one that was
        configured already); it holds the segments from there on."""
        if position is None:
            position = self._acked[name]
        else:
            directory = self.directory / CURSOR_DIR
            await trio.to_thread.run_sync(cursors.store, directory, name, position)
        self._acked[name] = position
        reader = WalReader(
            self.directory,
            name,
            inputs,
            envelopes=self._envelopes,
            position=position,
            acknowledged=self._acknowledged,
        )
        self.readers[name] = reader
        return reader

    async def remove_reader(self, name: str) -> None:
        """Forget a configured reader (a sink removed by a reload): it holds no segment any more,
        and those every other reader has passed are deleted now. Its cursor file stays."""
        self.readers.pop(name, None)
        self._acked.pop(name, None)
        await self.collect()

    def _doomed(self) -> list[int]:
        """Segments that every reader has passed, except the one being written."""
        return [
            number
            for number in sorted(self._sizes)
            if number != self._active and self._all_passed(number)
        ]

    def _all_passed(self, number: int) -> bool:
        """Whether every configured reader has acknowledged all of segment ``number``."""
        size = self._sizes.get(number)
        for acked in self._acked.values():
            if acked.segment < number:
                return False
            if acked.segment == number and (size is None or acked.offset < size):
                return False
        return True

    @property
    def full(self) -> bool:
        """Whether an append now would wait for space (or drop, with ``drop_newest``): the WAL
        holds ``max_bytes``, or its file system has less than ``reserve_bytes`` free."""
        if self.total_bytes >= self.settings.max_bytes:
            return True
        free = self.free_bytes()
        return free is not None and free < self.reserve_bytes

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use on the WAL's file system (None if that
        cannot be told)."""
        try:
            info = os.statvfs(self.directory)
        except OSError:
            return None
        return info.f_bavail * info.f_frsize

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """No more writes: make everything written durable, close the segment files; readers
        finish what is there.

        The directory stays locked until ``release()``: sinks still read and acknowledge.
        """
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        self._activity.set()
        with trio.CancelScope(shield=True):
            async with self._io:
                pass  # a write in flight finishes first
            await self.sync()
            async with self._io:
                while self._syncing:
                    await self._synced_event.wait()
                if self._needs_rollback:
                    await self._roll_back()
                fds = [fd for fd in (self._fd, *self._retired) if fd is not None]
                self._fd, self._retired = None, []
                for fd in fds:
                    try:
                        await trio.to_thread.run_sync(_fsync_close, fd)
                    except OSError as exc:
                        log.error("wal_fsync_failed", error=str(exc))
        self._publish_head()  # closed: readers finish what is there
        self._wake_readers()
        if self._wake is not None:  # (acknowledgements from now on are read at the next open)
            self._wake.close()
            self._wake = None

    def release(self) -> None:
        """Give up the directory lock (after every sink is done with the WAL)."""
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- writing -------------------------------------------------------------------------------
    #
    # Two lanes, so that the fsync of one batch overlaps the framing and writing of the next
    # (group commit): ``write`` frames a batch and writes it (no fsync), one at a time under
    # ``_io``, and numbers it; the sync lane (``_sync_once``: one fsync at a time, led by ``run``
    # or by whoever waits first) fsyncs the active segment, which makes every batch written before
    # it began durable, and only then moves ``committed``, which readers read up to. A write that
    # rotates fsyncs the segment it leaves itself and hands its fd to the sync lane to close
    # (never while an fsync may use it). On any failure the WAL goes back to its last durable
    # position: every batch after it is refused (``wait_accepted`` raises) and its bytes are cut
    # off the files, so a retry of the same batches, in order, stores each once.

    async def append(self, entries: Sequence[bytes]) -> bool:
        """Make ``entries`` (``entry(event)`` each) durable per the fsync policy; False if they
        were dropped because the WAL is full.

        Raises ``WalWriteError`` when the disk refused; nothing of the batch was accepted then,
        and the caller may retry the same batch.
        """
        seq = await self.write(entries)
        if seq is None:
            return False
        await self.wait_accepted(seq)
        return True

    async def write(self, entries: Sequence[bytes], *, granted: bool = False) -> int | None:
        """Frame and write ``entries``, not waiting for the fsync; the batch's number, for
        ``wait_accepted`` (with ``fsync = "batch"`` the batch counts as accepted only then, and
        readers see it only then), or None if it was dropped because the WAL is full.

        Raises ``WalWriteError`` when the disk refused. Then nothing of the batch was written,
        and neither is any earlier batch not yet accepted (``wait_accepted`` says which): the
        caller writes them again, in order.

        ``granted``: the caller applied ``when_full`` itself before it processed the batch
        (``wait_for_room``, or dropping it), so the write neither drops it nor waits: a batch
        the chain stage has verified must reach the WAL, and writing refused batches again
        (a new segment, so a few bytes more) must not wait for space only the caller frees.
        """
        if self._closed:
            raise RuntimeError("write after close")
        if not entries:
            return self._written_seq  # accepted once everything written before is
        if self._needs_rollback:  # refused bytes must not count toward max_bytes: cut them first
            async with self._io:
                if self._needs_rollback:
                    await self._roll_back()
        if self._refusal_pending:
            raise self._tell("batches written before this one were refused")
        if not granted and self.full and not await self._wait_for_space(len(entries)):
            return None
        async with self._io:
            if self._closed:
                raise RuntimeError("write after close")
            if self._needs_rollback:  # an fsync failed: nothing after the durable part stays
                await self._roll_back()
            if self._refusal_pending:  # (while this write waited for space or its turn)
                raise self._tell("batches written before this one were refused")
            chunks = self._frame(entries)
            left = self._active
            try:
                fd, active, retired = await trio.to_thread.run_sync(
                    self._write_chunks, self._fd, self._active, chunks
                )
            except _WriteFailed as failed:
                await self._fail(failed.error)
                raise self._tell(str(failed.error)) from failed.error
            self._fd, self._active = fd, active
            self._retire(retired)
            if self._needs_rollback:  # an fsync failed while this batch was being written
                await self._roll_back()
                raise self._tell("an fsync failed while this batch was written")
            self._seal = False
            written = 0
            for segment, buffers in chunks:
                size = sum(map(len, buffers))
                self._sizes[segment] = self._sizes.get(segment, SEGMENT_HEADER_SIZE) + size
                written += size
            if active != left:
                # Readers learn where the segments it left end before the accepted position
                # may move past them; if they cannot, the batch is not accepted.
                try:
                    self._publish_layout()
                except OSError as exc:
                    await self._fail(exc)
                    raise self._tell(f"cannot publish the WAL's layout: {exc}") from exc
            seq = self._written_seq + 1
            self._mark(self._write_state[1])
            self._write_state = (seq, Position(active, self._sizes[active]), fd)
            self._unsettled.append((seq, len(entries), written))
            self.counters["events"] += len(entries)
            self.counters["bytes"] += written
        if self.settings.fsync != "batch":
            self._settle(seq)
            self.committed = self._written
            self._publish_head()
            self._wake_readers()
        self._activity.set()
        await trio.lowlevel.checkpoint()  # let the sync lane (run) start its fsync now
        return seq

    async def wait_accepted(self, seq: int) -> None:
        """Wait until batch ``seq`` (from ``write``) is accepted: durable with ``fsync =
        "batch"``, written with the other policies. Raises ``WalWriteError`` if it was refused
        (an fsync or a later write failed first); write it again then."""
        while True:
            refused = self._refusal(seq)
            if refused is not None:
                raise self._tell(refused)
            if seq <= self._synced_seq or self.settings.fsync != "batch":
                return
            if self._syncing:
                await self._synced_event.wait()
            elif self._needs_rollback:  # (every batch written before the failure is refused)
                raise self._tell("rolling back")
            else:
                await self._sync_once()

    def accepted(self, seq: int) -> bool:
        """Whether batch ``seq`` is accepted (``wait_accepted`` would return at once). Only the
        16 latest refusals are remembered: ask about batches still in flight."""
        if self._refusal(seq) is not None:
            return False
        return seq <= self._synced_seq or self.settings.fsync != "batch"

    @property
    def _written_seq(self) -> int:
        """How many batches were written so far."""
        return self._write_state[0]

    @property
    def _written(self) -> Position:
        """Where the batches written so far end."""
        return self._write_state[1]

    def _tell(self, reason: str) -> WalWriteError:
        """The error that tells the writer its batches were refused. Until it is told, every
        write fails: none may land after refused batches the writer would not write again
        first (it learns of a refusal only from an exception)."""
        self._refusal_pending = False
        return WalWriteError(f"cannot append to the WAL in {self.directory}: {reason}")

    def _refusal(self, seq: int) -> str | None:
        for first, last, reason in self._refused:
            if first <= seq <= last:
                return reason
        return None

    async def run(self) -> None:
        """The WAL's background work, until ``close``: the sync lane (with ``fsync = "batch"``,
        fsync whatever was written as soon as the previous fsync is done, the writer framing and
        writing meanwhile: group commit; with ``"interval"``, fsync every ``fsync_interval``),
        and the wake-ups from readers in other processes (``_listen``)."""
        async with trio.open_nursery() as nursery:
            if self._wake is not None:
                nursery.start_soon(self._listen, self._wake)
            await self._sync_lane()
            nursery.cancel_scope.cancel()

    async def _listen(self, wake: WriterWake) -> None:
        """Wake-ups from readers in other processes: a new reader (look for its socket), an
        acknowledgement (read the cursors again and delete what every reader has passed)."""
        while self._wake is wake:  # (``close`` may close it while an acknowledgement is read)
            try:
                await wake.wait()
            except trio.ClosedResourceError:
                return  # closed
            kinds = wake.received()
            if HELLO in kinds:
                wake.scan()
            if ACKED in kinds:
                await self.collect(refresh=True)

    async def _sync_lane(self) -> None:
        if self.settings.fsync == "interval":
            while not self._closed:
                with trio.move_on_after(self.settings.fsync_interval):
                    await self._closed_event.wait()
                await self.sync()
            return
        if self.settings.fsync != "batch":
            await self._closed_event.wait()
            return
        while not self._closed:
            activity = self._activity = trio.Event()
            if self._written_seq > self._fsynced_seq and not self._syncing:
                await self._sync_once()
                continue
            await activity.wait()

    async def sync(self) -> bool:
        """Make everything written so far durable, whatever the fsync policy; False if an fsync
        failed (logged and counted; with ``fsync = "batch"`` the batches it covered are
        refused)."""
        target = self._written_seq
        while self._fsynced_seq < target or self._retired:
            if self._needs_rollback:
                return False
            if self._syncing:
                await self._synced_event.wait()
            elif not await self._sync_once():
                return False
        return True

    async def _sync_once(self) -> bool:
        """Fsync the active segment until nothing more was written to it (``_sync_loop``), each
        fsync accepting every batch written before it began; False if one failed. One at a
        time; also closes the fds rotations retired."""
        if self._syncing or self._needs_rollback:
            return True
        seq, target, fd, retired = self._written_seq, self._written, self._fd, self._retired
        if seq == self._fsynced_seq and not retired:
            return True
        self._retired = []
        self._syncing = True
        token = trio.lowlevel.current_trio_token()
        try:
            with trio.CancelScope(shield=True):  # the retired fds are taken: the thread closes them
                await trio.to_thread.run_sync(self._sync_loop, token, fd, seq, target, retired)
        except OSError as exc:
            self.counters["write_errors"] += 1
            log.error("wal_fsync_failed", error=str(exc))
            self._seal = True  # never append again to a segment whose fsync failed
            if self.settings.fsync == "batch":
                self._refuse(f"fsync failed: {exc}")
                self._needs_rollback = True
                self._progress.set()  # a writer waiting for space stops: refused bytes go
            return False
        finally:
            self._syncing = False
            self._synced_event.set()
            self._synced_event = trio.Event()
            self._activity.set()
        return True

    def _sync_loop(
        self,
        token: trio.lowlevel.TrioToken,
        fd: int | None,
        seq: int,
        target: Position,
        retired: list[int],
    ) -> None:
        """Worker thread: fsync ``fd``, which accepts batches up to ``seq`` (reported to the trio
        thread without waiting for it: ``_synced``), and again while the writer has written more
        to the same fd meanwhile. Staying in the thread between fsyncs saves the two thread
        hand-offs each would cost, which on a busy machine are a good part of an fsync."""
        while True:
            began = time.perf_counter()
            _sync_fds(fd, retired)
            took = time.perf_counter() - began
            retired = []
            token.run_sync_soon(self._synced, seq, target, took)
            written_seq, written, written_fd = self._write_state  # replaced whole by the writer
            if written_seq == seq or written_fd != fd or self._needs_rollback or self._closed:
                return
            seq, target = written_seq, written

    def _synced(self, seq: int, target: Position, took: float) -> None:
        """(Trio thread.) An fsync made the batches up to ``seq``, ending at ``target``, durable;
        it took ``took`` seconds."""
        self.counters["fsyncs"] += 1
        self.fsync_seconds.observe(took)
        self._fsynced_seq = max(self._fsynced_seq, seq)
        self._settle(seq)
        if self.settings.fsync == "batch" and target > self.committed:
            self.committed = target
            self._publish_head()
            self._wake_readers()
        self._synced_event.set()
        self._synced_event = trio.Event()

    def _settle(self, seq: int) -> None:
        """Batches up to ``seq`` are accepted."""
        self._synced_seq = max(self._synced_seq, seq)
        while self._unsettled and self._unsettled[0][0] <= seq:
            self._unsettled.popleft()

    def _refuse(self, reason: str) -> None:
        """Every batch written and not yet accepted is refused (rolled back)."""
        if self._written_seq > self._synced_seq:
            self._refusal_pending = True
            self._refused = [
                *self._refused[-15:],
                (self._synced_seq + 1, self._written_seq, reason),
            ]
        for _seq, events, size in self._unsettled:
            self.counters["events"] -= events
            self.counters["bytes"] -= size
        self._unsettled.clear()
        self._synced_seq = self._fsynced_seq = self._written_seq

    async def _fail(self, error: OSError) -> None:
        """A write failed (``_io`` held): refuse what is not accepted and roll back to it."""
        self.counters["write_errors"] += 1
        with trio.CancelScope(shield=True):  # a forced shutdown must not leave it half done
            while self._syncing:  # its fsync may still make earlier batches durable
                await self._synced_event.wait()
            self._refuse(f"a write failed: {error}")
            await self._roll_back()

    async def _roll_back(self) -> None:
        """Back to the last accepted position (``_io`` held, no fsync in flight): close the
        segment files, delete the segments begun since, cut the one it is in back to it; the
        next write starts a new segment."""
        self._needs_rollback = True  # no fsync starts meanwhile
        keep = self.committed
        fds = [fd for fd in (self._fd, *self._retired) if fd is not None]
        self._fd, self._retired = None, []
        doomed = list(range(keep.segment + 1, self._next_number))
        with trio.CancelScope(shield=True):  # the fds are taken: the thread must close them
            await trio.to_thread.run_sync(self._undo, fds, keep, doomed)
        for number in doomed:
            self._sizes.pop(number, None)
            self._skips.pop(number, None)
        if keep.segment in self._sizes:
            self._sizes[keep.segment] = keep.offset
        self._active = keep.segment
        self._write_state = (self._written_seq, keep, None)
        self._seal = True
        self._needs_rollback = False
        self._publish_layout(best_effort=True)  # (readers never read past committed anyway)
        self._publish_head()
        self.counters["rollbacks"] += 1
        log.warning("wal_rolled_back", segment=keep.segment, offset=keep.offset)

    def _undo(self, fds: list[int], keep: Position, doomed: list[int]) -> None:
        """Worker thread: ``_roll_back``'s file work; failures are logged (a cut that fails
        leaves refused batches on disk: the next start delivers them, and their retries)."""
        for fd in fds:
            try:
                _fsync_close(fd)  # with "interval", what readers were given stays durable
            except OSError as exc:
                log.error("wal_fsync_failed", error=str(exc))
        try:
            for number in doomed:
                (self.directory / segment_name(number)).unlink(missing_ok=True)
            path = self.directory / segment_name(keep.segment)
            if path.exists() and path.stat().st_size > keep.offset:
                os.truncate(path, keep.offset)
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            fsync_dir(self.directory)
        except OSError as exc:
            log.error("wal_rollback_failed", segment=keep.segment, error=str(exc))

    async def cut_refused(self) -> None:
        """Cut refused batches off the files now (rather than at the next write), so that their
        bytes neither count toward ``max_bytes`` nor stop a checkpoint meanwhile."""
        if self._needs_rollback:
            async with self._io:
                if self._needs_rollback:
                    await self._roll_back()

    def drop(self, count: int) -> None:
        """Count and log ``count`` events dropped because the WAL is full (``drop_newest``): one
        line a second at most, with the events dropped since the last one and why it is full."""
        self.counters["dropped_full"] += count
        if self._drop_log.allow(trio.current_time()) is None:
            return
        total = self.counters["dropped_full"]
        log.warning(
            "wal_full_dropped",
            events=total - self._drop_logged,
            dropped_total=total,
            **self.fullness(),
        )
        self._drop_logged = total

    async def wait_for_room(self, timeout: float = math.inf) -> bool:  # noqa: ASYNC109
        """Wait while the WAL is full (see ``full``): True once it has room, False if it is still
        full after ``timeout`` seconds. Returns True at once when a failure is pending: the next
        write reports it.

        Room comes back as sinks acknowledge (segments every reader passed are deleted; when only
        the segment being written holds them, a new one is started so that it can go) or, for a
        file system low on space, from outside: free space is looked at again every
        ``DISK_POLL_SECONDS`` meanwhile.
        """
        deadline = trio.current_time() + timeout
        backoff = Backoff()
        while self.full:
            if self._needs_rollback or self._refusal_pending:
                break  # the write rolls back and says batches were refused
            now = trio.current_time()
            if now >= deadline:
                return False
            progress = self._progress = trio.Event()
            active_size = self._sizes.get(self._active, SEGMENT_HEADER_SIZE)
            if active_size > SEGMENT_HEADER_SIZE and self._all_passed(self._active):
                # Only the segment being written holds the space, and every sink is past it:
                # start a new one so that collect() may delete it.
                self._seal = True
                if not await self.open_next_segment():  # logged and counted: try again later
                    await trio.sleep(min(backoff.next(), max(0.0, deadline - now)))
                    continue
                await self.collect()
                continue
            with trio.move_on_at(min(deadline, now + DISK_POLL_SECONDS)) as waited:
                await progress.wait()
            if waited.cancelled_caught:  # an acknowledgement from another process may be lost
                await self.collect(refresh=True)
        return True

    def register_metrics(self, registry: Registry) -> None:
        """Tell ``registry`` the WAL's counts (``wal_<name>``, recovery findings by kind), its
        bytes and its file system's free bytes, and its health (``wal``)."""
        mirror(
            registry,
            "wal",
            lambda: self.counters,
            WAL_COUNTERS,
            {"recovery": ("kind", "Findings of the WAL's recovery at open, by kind")},
        )
        registry.gauge("wal_buffer_bytes", "Bytes the WAL holds", unit="bytes").labels().observe(
            lambda: self.total_bytes
        )
        registry.cumulative(
            "wal_blocked_seconds", "Seconds writers waited for room", unit="seconds"
        ).labels().observe(lambda: self.blocked_seconds)
        fsyncs = registry.histogram(
            "wal_fsync_seconds",
            "How long fsyncs of segments took",
            unit="seconds",
            buckets=FSYNC_BUCKETS,
        )
        fsyncs.children[()] = self.fsync_seconds  # the WAL observes into it from now on
        registry.gauge(
            "wal_free_bytes", "Free bytes of the WAL's file system", unit="bytes"
        ).labels().observe(lambda: self.free_bytes() or 0)
        registry.health("wal", self.health)

    def health(self) -> Health:
        """``degraded`` while full (writers wait, or drop with ``drop_newest``), else ``ok``."""
        if self.full:
            full = self.fullness()
            return Health("degraded", f"full: {full}")
        return Health()

    def fullness(self) -> dict[str, int | None]:
        """What makes the WAL full or not, for logs: its bytes and bound, the free bytes of its
        file system and the reserve kept there."""
        return {
            "bytes": self.total_bytes,
            "max_bytes": self.settings.max_bytes,
            "free_bytes": self.free_bytes(),
            "reserve_bytes": self.reserve_bytes,
        }

    async def block_until_room(
        self, meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """``when_full = "block"``: wait until the WAL has room, however long that takes;
        counted (``blocked``, ``blocked_seconds``) and logged (``wal_full_blocking``, then
        ``wal_unblocked``). ``meanwhile`` runs each time free space is looked at again while
        the WAL is still full (the writer tries a failed checkpoint again then)."""
        self.counters["blocked"] += 1
        log.warning("wal_full_blocking", **self.fullness())
        started = trio.current_time()
        while not await self.wait_for_room(timeout=DISK_POLL_SECONDS):
            if meanwhile is not None:
                await meanwhile()
        blocked = trio.current_time() - started
        self.blocked_seconds += blocked
        log.info("wal_unblocked", blocked_seconds=round(blocked, 3))

    async def _wait_for_space(self, count: int) -> bool:
        """Apply ``when_full``: False to drop the batch, or wait until the WAL has room."""
        if self.settings.when_full == "drop_newest":
            self.drop(count)
            return False
        await self.block_until_room()
        return True

    async def open_next_segment(self) -> bool:
        """Start the next segment now (what a sealed append would do first); False if that
        failed (logged, counted, rolled back like a failed write)."""
        async with self._io:
            if self._needs_rollback:  # refused bytes must not become readable
                await self._roll_back()
            if not self._seal or self._closed:
                return True
            number = self._take_number()
            try:
                fd, active, retired = await trio.to_thread.run_sync(
                    self._write_chunks, self._fd, self._active, [(number, list[bytes]())]
                )
            except _WriteFailed as failed:
                log.error("wal_rotate_failed", error=str(failed.error))
                await self._fail(failed.error)
                return False
            self._fd, self._active, self._seal = fd, active, False
            self._retire(retired)
            self._sizes[self._active] = SEGMENT_HEADER_SIZE
            try:
                self._publish_layout()
            except OSError as exc:
                log.error("wal_rotate_failed", error=f"cannot publish the WAL's layout: {exc}")
                await self._fail(exc)
                return False
            self._write_state = (self._written_seq, Position(active, SEGMENT_HEADER_SIZE), fd)
            if self.committed.segment < self._active and self._written_seq == self._synced_seq:
                self.committed = self._written  # nothing waits for an fsync: readers move on
            self._publish_head()
        self._wake_readers()
        return True

    def _retire(self, fds: list[int]) -> None:
        """The fds of segments a write left (fsynced then): closed now if no fsync runs, else by
        the sync lane after its fsync (it may be using one of them)."""
        if self._syncing:
            self._retired += fds
        else:
            _close_all(fds)

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
        offset = self._sizes.get(segment, SEGMENT_HEADER_SIZE)
        limit = self.settings.segment_bytes
        if self._seal or self._fd is None:
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
        self, fd: int | None, active: int, chunks: list[tuple[int, list[bytes]]]
    ) -> tuple[int, int, list[int]]:
        """Worker thread: write the chunks, starting new segments as planned, each left one
        fsynced first. Touches no shared state.

        Returns the active fd, its segment number, and the fd the batch began with if it left
        it (for the sync lane to close: an fsync may be using it). On error, closes the fds it
        opened and raises ``_WriteFailed``; the caller rolls back.
        """
        first = fd
        opened: list[int] = []  # fds this call opened and has not closed
        try:
            for segment, buffers in chunks:
                if segment != active:
                    if fd is not None:
                        os.fsync(fd)  # the segment left is whole and durable
                        if fd != first:
                            opened.remove(fd)
                            os.close(fd)
                    fd = create(self.directory, segment)
                    opened.append(fd)
                    active = segment
                assert fd is not None
                write_buffers(fd, buffers)
        except OSError as exc:
            _close_all(opened)
            raise _WriteFailed(exc) from exc
        assert fd is not None
        return fd, active, [first] if first is not None and first != fd else []

    # --- readers and deletion -----------------------------------------------------------------

    def state(self) -> State:
        """What this writer's readers may read, from its memory: the state it publishes, whether
        or not publishing succeeded (for readers in its own process, such as the chain replay)."""
        active = self._active
        segments = {n: None if n == active else self._sizes[n] for n in sorted(self._sizes)}
        skips = {n: list(ranges) for n, ranges in self._skips.items()}
        layout = Layout(self._layout, self.epoch, segments, skips)
        return State(Head(self.committed, self._layout, self._closed), layout)

    def _publish_layout(self, *, best_effort: bool = False) -> None:
        """Publish the segments and where each left one ends (``shipper.buffer.published``);
        the head that names it follows. Raises OSError unless ``best_effort`` (then it is logged,
        counted and tried again with the next head: fine for what only drops segments every
        reader passed, or cuts back what no reader may read)."""
        if self._publisher is None:
            return
        active = self._active
        segments = {n: None if n == active else size for n, size in self._sizes.items()}
        try:
            self._layout = self._publisher.layout(self.epoch, segments, self._skips)
        except OSError as exc:
            self._layout_due = True
            if not best_effort:
                raise
            self._publish_failed(exc)
            return
        self._layout_due = False

    def _publish_head(self) -> None:
        """Publish the accepted position and whether the WAL is closed (a failure is logged and
        counted: readers then wait for the next one)."""
        if self._publisher is None:
            return
        if self._layout_due:
            self._publish_layout(best_effort=True)
        try:
            self._publisher.head(self.committed, self._layout, self._closed)
        except OSError as exc:
            self._publish_failed(exc)

    def _publish_failed(self, exc: OSError) -> None:
        self.counters["publish_errors"] += 1
        if self._publish_log.allow(time.monotonic()) is not None:
            log.error("wal_publish_failed", error=str(exc))

    def _wake_readers(self) -> None:
        """Tell the readers something new was published: those in this process directly, the
        others through their sockets."""
        for reader in self.readers.values():
            reader.wake()
        if self._wake is not None:
            self._wake.wake_readers()

    def segment_size(self, number: int) -> int | None:
        return self._sizes.get(number)

    async def _acknowledged(self, name: str, position: Position) -> None:
        """A reader in this process stored its cursor at ``position``."""
        if name in self._acked and position > self._acked[name]:
            self._acked[name] = position
        await self.collect()

    def _stored_cursors(self) -> dict[str, Position]:
        """Worker thread: the cursors stored now, of the configured readers."""
        found: dict[str, Position] = {}
        for name in list(self._acked):  # (a reload may add or remove one meanwhile)
            stored = cursors.load(self.directory / CURSOR_DIR, name)
            if isinstance(stored, Position):
                found[name] = stored
        return found

    async def collect(self, *, refresh: bool = False) -> None:
        """Delete every segment that all readers have passed (never the active one); with
        ``refresh``, read their cursors again first (readers in other processes)."""
        if refresh:
            for name, stored in (await trio.to_thread.run_sync(self._stored_cursors)).items():
                if name in self._acked and stored > self._acked[name]:
                    self._acked[name] = stored
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
        if len(failed) < len(doomed):
            self._publish_layout(best_effort=True)
            self._publish_head()
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

    @property
    def is_open(self) -> bool:
        """Whether the WAL is open for writes: opened, and not closed yet."""
        return self.report is not None and not self._closed

    def _mark(self, end: Position) -> None:
        """The WAL ended at ``end`` before a write now: note it (at most every
        ``MARK_SECONDS``), and forget the notes every reader has passed."""
        now = time.monotonic()
        marks = self._marks
        if marks and now - marks[-1][1] < MARK_SECONDS:
            return
        marks.append((end, now))
        if self._acked:
            slowest = min(self._acked.values())
            while len(marks) > 1 and marks[1][0] <= slowest:
                marks.popleft()

    def lag_seconds(self, name: str) -> float:
        """How long the oldest entry a configured reader has not acknowledged has been in the
        WAL (0 when it has acknowledged everything accepted): to within ``MARK_SECONDS``, and
        counted from the open for what the WAL held then."""
        acked = self._acked[name]
        if not self._marks or not self.lag_bytes(name):
            return 0.0
        at = bisect_right(self._marks, acked, key=lambda mark: mark[0])
        return max(0.0, time.monotonic() - self._marks[max(0, at - 1)][1])

    def lag_bytes(self, reader: WalReader | str) -> int:
        """Bytes accepted but not yet acknowledged by a configured reader (``reader`` or its
        name), wherever it runs."""
        if isinstance(reader, str):
            acked = self._acked[reader]
        else:
            acked = reader.acked
            if reader.name is not None and reader.name in self._acked:
                acked = max(acked, self._acked[reader.name])
        lag = 0
        for number, size in self._sizes.items():
            if number > acked.segment:
                lag += size - SEGMENT_HEADER_SIZE
            elif number == acked.segment:
                lag += max(0, size - acked.offset)
        return lag


class _WriteFailed(Exception):
    """Internal: a write failed; carries the OS error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


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


def _sync_fds(fd: int | None, retired: list[int]) -> None:
    """Worker thread: fsync ``fd``; close ``retired`` (fsynced when they were left) whatever
    happens."""
    try:
        if fd is not None:
            os.fsync(fd)
    finally:
        _close_all(retired)


def _close_all(fds: list[int]) -> None:
    """Close ``fds`` (of segments already fsynced or given up); an error closing one is moot."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
