"""Ingest workers share the connections of their stream listeners evenly: the accept board.

Every ingest worker accepts on every stream listener, and the kernel hands a waiting connection to
whichever worker calls ``accept`` first. Left alone, that is mostly the worker that accepted the
last one (it is awake, the others are still waking up): eight agents connecting at once ended up
six or seven on one worker, which then did most of the work while the other idled. So before each
``accept`` a worker looks at how many connections of that source every other live worker holds
(``AcceptBoard``), and lets a less loaded worker take the connection (``AcceptGate.turn``).

The board: the file ``<data_dir>/ingest-board``, mapped into every worker (one daemon per data
directory: the WAL's lock). One slot per worker and stream source, 16 bytes, little-endian::

    slot (worker w, column c) at offset (w * columns + c) * 16:
      int64    connections   that worker's open connections of that source
      float64  heartbeat     CLOCK_MONOTONIC seconds when that worker last wrote its slots

Columns are the config's stream sources that workers share, in sorted id order, so every worker
of one config reads the same layout. A worker writes only its own slots; a slot whose heartbeat is
older than ``STALE`` seconds, or from the future (the monotonic clock starts again at a boot), does
not count: its worker is gone, or restarting, or the file is a previous run's; a worker that ends
clears its heartbeats. The file must be a regular file, opened without following a symbolic link,
with its blocks allocated at once; when the board cannot be opened, allocated (a full disk) or
mapped, a worker logs why and accepts without it (balance is an optimisation: never a reason not to
serve). Reads and writes are of aligned 8-byte words, not atomic together: a torn read, or two
workers deciding at the same moment (one then accepts the connection after the pending one without
asking again), costs one accept its balance, never a connection.

The rule (``AcceptBoard.over``): a worker holding more connections of the source than the least
loaded other live worker waits, while a connection is pending, for one of them to take it, at most
``DEFER_LIMIT`` seconds; then it accepts anyway (a busy or stuck worker never keeps connections
waiting longer). Equal counts accept at once, so a burst of connections alternates between
workers.
"""

from __future__ import annotations

import mmap
import os
import select
import stat
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import trio

__all__ = ["BOARD_FILE", "AcceptBoard", "AcceptGate"]

#: The board's file name in the data directory.
BOARD_FILE: Final = "ingest-board"
#: A slot whose heartbeat is older than this (seconds) is not counted.
STALE: Final = 1.0
#: How often a worker writes its slots when nothing else made it (seconds).
HEARTBEAT: Final = 0.1
#: The longest a pending connection waits for a less loaded worker (seconds).
DEFER_LIMIT: Final = 0.5
#: How often a deferring worker looks again (seconds).
DEFER_POLL: Final = 0.002

_SLOT: Final = struct.Struct("<qd")


class AcceptBoard:
    """Worker ``index`` of ``workers``'s view of the board at ``path`` (created, or grown, to
    size), for the stream sources ``columns``. ``clock``: seconds, the same in every process."""

    def __init__(
        self,
        path: Path,
        workers: int,
        index: int,
        columns: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = workers
        self.index = index
        self._columns = {source_id: number for number, source_id in enumerate(sorted(columns))}
        self._clock = clock
        size = max(1, workers * len(self._columns)) * _SLOT.size
        # Never through a symbolic link, and only a regular file: whoever can write the data
        # directory must not make the workers write into another file.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{path} is not a regular file")
            # Its blocks allocated now (not a sparse file): on a full disk this refuses
            # (ENOSPC), where the first write into a mapped hole would kill the worker (SIGBUS).
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._counts = dict.fromkeys(self._columns, 0)
        self.publish()

    @property
    def sources(self) -> list[str]:
        """The stream sources of the board, in column order."""
        return list(self._columns)

    def _offset(self, worker: int, column: int) -> int:
        return (worker * len(self._columns) + column) * _SLOT.size

    def set(self, source_id: str, connections: int) -> None:
        """This worker holds ``connections`` of ``source_id`` now (written at once)."""
        self._counts[source_id] = connections
        _SLOT.pack_into(
            self._map,
            self._offset(self.index, self._columns[source_id]),
            connections,
            self._clock(),
        )

    def publish(self) -> None:
        """Write every slot of this worker again (the heartbeat)."""
        for source_id, count in self._counts.items():
            self.set(source_id, count)

    def others(self, source_id: str) -> list[int]:
        """The connections of ``source_id`` each other live worker holds."""
        column = self._columns[source_id]
        now = self._clock()
        oldest = now - STALE
        counts = []
        for worker in range(self.workers):
            if worker != self.index:
                count, beat = _SLOT.unpack_from(self._map, self._offset(worker, column))
                if oldest <= beat <= now + STALE:  # (one from the future: before a reboot)
                    counts.append(count)
        return counts

    def over(self, source_id: str, connections: int) -> bool:
        """Whether this worker, holding ``connections`` of ``source_id`` (published now), holds
        more than the least loaded other live worker: it should let that one accept."""
        self.set(source_id, connections)
        others = self.others(source_id)
        return bool(others) and connections > min(others)

    def close(self) -> None:
        """This worker's slots read as gone (its heartbeat 0), and the file is let go."""
        for source_id, column in self._columns.items():
            _SLOT.pack_into(
                self._map, self._offset(self.index, column), self._counts[source_id], 0.0
            )
        self._map.close()


class AcceptGate:
    """The board as a worker's stream listeners use it (``turn``), with its heartbeat (``beat``)."""

    def __init__(self, board: AcceptBoard, connections: Callable[[str], int]) -> None:
        self.board = board
        self._connections = connections  # a source's open connections in this worker

    async def turn(self, listener: trio.socket.SocketType, source_id: str) -> None:
        """Return when this worker should ``accept`` on ``listener`` of ``source_id``: a
        connection is pending, and no less loaded worker took it within ``DEFER_LIMIT``."""
        board = self.board
        while True:
            await trio.lowlevel.wait_readable(listener)
            if not board.over(source_id, self._connections(source_id)):
                return
            deadline = trio.current_time() + DEFER_LIMIT
            while trio.current_time() < deadline:
                await trio.sleep(DEFER_POLL)
                if not _pending(listener):
                    break  # another worker took it: wait for the next one
                if not board.over(source_id, self._connections(source_id)):
                    return
            else:
                return  # still pending: the others are busy or stuck

    async def beat(self) -> None:
        """Keep this worker's slots live (and current) until cancelled."""
        board = self.board
        while True:
            for source_id in board.sources:
                board.set(source_id, self._connections(source_id))
            await trio.sleep(HEARTBEAT)


def _pending(listener: trio.socket.SocketType) -> bool:
    """Whether a connection waits on ``listener`` now (without waiting)."""
    poll = select.poll()
    poll.register(listener.fileno(), select.POLLIN)
    return bool(poll.poll(0))
