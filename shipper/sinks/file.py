"""Sink ``file``: local JSON-lines files, rotated by size (the default archive).

Layout of ``path`` (a directory, created if missing)::

    events-20261123T175500Z-0001-<epoch>.jsonl   one envelope (shipper.events) per line, LF-ended
    events-20261123T181210Z-0002-<epoch>.jsonl   the next file, opened when the current one would
                                                 pass max_file_bytes, or at the next start

``<epoch>`` names the lifetime of the WAL the events came from (``Wal.epoch``).

Rules:

* Files are created exclusively (never appended to across restarts); names sort in creation order.
  A file holds at most ``max_file_bytes`` unless a single line is larger (it then has a file of
  its own).
* A batch is written whole or, on a write error, the file is truncated back to where the write began
  (or, if even that fails, abandoned for a new file) and the sink raises ``DestinationUnavailable``:
  the driver (``shipper.sinks.driver``) tries again with capped exponential backoff, from the last
  line written. An unavailable directory or a full disk never stops the daemon, and never loses or
  tears a line. Events wait in the WAL meanwhile (backpressure).
* Every write is fsynced before the driver acknowledges it to the WAL, and the directory after a
  file is created, so what the WAL has let go of survives a power cut.
* Exactly once across crashes: a crash between a write and its acknowledgement makes the WAL
  deliver that batch again. At start (``resume_point``) the sink cuts a torn last line off the
  newest file of the current WAL epoch and reads the id (the WAL position) of its last line; the
  driver skips what the WAL offers up to that position. Files of another epoch are never used for
  this, so a wiped WAL (whose positions start again) loses nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import trio

from shipper.buffer.segment import Position, fsync_dir
from shipper.config import SINK_TYPES, SinkCommon, SinkConfig, Table
from shipper.errors import DestinationUnavailable
from shipper.logging import get_logger
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext, position_of


@SINK_TYPES.register
@dataclass(frozen=True, kw_only=True)
class FileSinkConfig(SinkConfig):
    """``type = "file"``: JSON-lines files in a directory, a new file past ``max_file_bytes``."""

    kind: ClassVar[str] = "file"
    path: Path
    max_file_bytes: int = 128 * 1024 * 1024

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> FileSinkConfig | None:
        path = table.path_("path")
        max_file_bytes = table.size("max_file_bytes", cls.max_file_bytes, minimum=4096)
        if path is None:
            return None
        return cls(**common, path=path, max_file_bytes=max_file_bytes)

    def build(self, context: SinkContext) -> FileSink:
        return FileSink(self)


log = get_logger("shipper.sinks.file")

#: How many bytes of the WAL one write takes at most.
WRITE_BYTES = 1024 * 1024
#: How much of a file's end is read to find its last line (longer than any envelope).
TAIL_BYTES = 72 * 1024 * 1024


class FileSink(SinkBase):
    """Writes batches of encoded envelopes to rotating JSON-lines files."""

    kind = "file"
    #: Each read of the WAL (up to ``WRITE_BYTES``) is written as soon as it is read, with
    #: whatever else the WAL holds right then, in one write per file.
    batching = BatchSettings(max_events=1 << 30, max_bytes=WRITE_BYTES, max_age=0.0)

    def __init__(self, config: FileSinkConfig) -> None:
        super().__init__(config.id)
        self.config = config
        self._fd: int | None = None
        self._size = 0
        self._serial = 0
        self.current_path: Path | None = None
        self._epoch = "0"
        self._last: Position | None = None  # the last line written, once this run wrote one

    async def open(self, epoch: str) -> None:
        """Nothing to open yet: a file is created at the first write (so an unwritable
        directory shows as a failed write, retried)."""
        if epoch != self._epoch:
            self._epoch, self._last = epoch, None

    async def resume_point(self) -> Position | None:
        """The id of the last line in the archive: what this run last wrote, else what the
        newest file of this WAL epoch ends with (after cutting off a torn last line)."""
        if self._last is not None:
            return self._last
        return await trio.to_thread.run_sync(self._resume_point)

    async def deliver(self, batch: Batch) -> None:
        """Write the batch, a new file where the current one would pass ``max_file_bytes``;
        every write fsynced. A failed write leaves whole lines only (``resume_point`` says how
        far it got)."""
        lines = batch.envelopes
        while lines:
            chunk, lines = self._next_chunk(lines)
            await trio.to_thread.run_sync(self._write, b"\n".join(chunk) + b"\n")
            self._last = position_of(chunk[-1])

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close)

    def _next_chunk(self, lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """The lines that fit in the current file (or a new one), and the rest."""
        limit = self.config.max_file_bytes
        room = limit - self._size if self._fd is not None else limit
        if sum(map(len, lines)) + len(lines) <= room:
            return lines, []
        if len(lines[0]) + 1 > room:
            room = limit  # it goes into a new file
        total = len(lines[0]) + 1
        count = 1
        while count < len(lines) and total + len(lines[count]) + 1 <= room:
            total += len(lines[count]) + 1
            count += 1
        return lines[:count], lines[count:]

    # The methods below run in a worker thread.

    def _resume_point(self) -> Position | None:
        """The WAL position of the last event in the archive, after cutting off a torn last line.

        Lines the sink wrote but could not acknowledge before a crash come again from the WAL;
        this is how the sink recognises them, so that the archive holds each event once.
        """
        try:
            # Only files written from this WAL's lifetime: positions of another WAL (one that was
            # wiped, or another data_dir) say nothing about what this one has delivered.
            files = sorted(self.config.path.glob(f"events-*-{self._epoch}.jsonl"))
            for path in reversed(files):
                last = _last_line(path)
                if last is not None:
                    return position_of(last)
        except (OSError, ValueError) as exc:
            log.warning("sink_resume_point_unknown", sink=self.id, error=str(exc))
        return None

    def _open(self) -> None:
        directory = self.config.path
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._serial += 1
            path = directory / f"events-{stamp}-{self._serial:04d}-{self._epoch}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue
            break
        fsync_dir(directory)
        self._fd, self._size, self.current_path = fd, 0, path
        log.info("sink_file_opened", sink=self.id, path=str(path))

    def _write(self, data: bytes) -> None:
        try:
            if (
                self._fd is not None
                and self._size
                and self._size + len(data) > (self.config.max_file_bytes)
            ):
                self._close()
            if self._fd is None:
                self._open()
            assert self._fd is not None
            view = memoryview(data)
            written = 0
            try:
                while written < len(data):
                    written += os.write(self._fd, view[written:])
                os.fsync(self._fd)  # delivered means durable: the WAL cursor moves next
            except OSError:
                self._undo_partial(written)
                raise
            self._size += len(data)
        except OSError as exc:
            raise DestinationUnavailable(
                f"cannot write to {self.config.path}: {exc.strerror or exc}"
            ) from exc

    def _undo_partial(self, written: int) -> None:
        """Cut a partly written batch off the file, or give the file up if that fails too."""
        if not written or self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
        except OSError:
            log.error("sink_file_abandoned", sink=self.id, path=str(self.current_path))
            os.close(self._fd)
            self._fd = None

    def _close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error(
                "sink_fsync_failed", sink=self.id, path=str(self.current_path), error=str(exc)
            )
        finally:
            os.close(fd)


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path``; a torn last line (no LF) is truncated away first."""
    with open(path, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return None
        tail_start = max(0, size - TAIL_BYTES)
        file.seek(tail_start)
        tail = file.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1  # 0 when the whole tail is one torn line
            if cut == 0 and tail_start > 0:
                raise ValueError(f"{path}: last line longer than {TAIL_BYTES} bytes")
            file.truncate(tail_start + cut)
            os.fsync(file.fileno())
            log.warning("sink_file_torn_tail_truncated", path=str(path), bytes=len(tail) - cut)
            tail = tail[:cut]
        lines = tail.splitlines()
        return lines[-1] if lines else None
