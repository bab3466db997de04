"""Wake-ups between the WAL's writer and its readers in other processes: unix datagram sockets
in ``<wal dir>/wake/``::

    wake/writer                the writer's. A reader sends "h" when it starts (so that the
                               writer finds it at once) and "a" after it stored its cursor (so
                               that the writer reads the cursors again and deletes what every
                               reader has passed).
    wake/reader-<pid>-<n>      one per reader in another process. The writer sends "c" each time
                               it publishes (``shipper.buffer.published``): new accepted records,
                               a new layout, the close.

Each wake-up is one byte, sent without blocking; every error is ignored (a full socket buffer
already holds a wake-up). They are an optimisation only: a reader that misses one still reads
within ``shipper.buffer.reader.POLL_SECONDS``, and a writer that misses an acknowledgement reads
the cursors again while it waits for room. A reader removes its socket when it closes; the
writer removes one that refuses its datagrams (its process is gone), and looks for new ones when
told "h" and at most every ``RESCAN_SECONDS`` otherwise. Readers in the writer's own process need
none of this: the writer wakes them directly.

A socket's address is its path; one longer than a unix socket address may be (about 100 bytes)
is reached through ``/proc/self/fd/<fd of wake/>/<name>`` instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Final

import trio

WAKE_DIR: Final = "wake"
WRITER: Final = "writer"
READER_PREFIX: Final = "reader-"
HELLO: Final = b"h"
ACKED: Final = b"a"
COMMITTED: Final = b"c"
#: How often the writer looks for new readers' sockets while it publishes, at most.
RESCAN_SECONDS: Final = 1.0
#: The longest path used as a socket address as it is (``sun_path`` holds 108 bytes).
MAX_ADDRESS: Final = 100

_serial = itertools.count(1)


class _Directory:
    """``wake/``: the addresses of the sockets in it."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None
        if len(os.fsencode(path / (READER_PREFIX + "4294967295-4294967295"))) > MAX_ADDRESS:
            self._fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def address(self, name: str) -> str:
        if self._fd is None:
            return str(self.path / name)
        return f"/proc/self/fd/{self._fd}/{name}"

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


class _Inbox:
    """A bound datagram socket in ``wake/``."""

    def __init__(self, directory: _Directory, name: str) -> None:
        self.name = name
        self.directory = directory
        with contextlib.suppress(FileNotFoundError):
            (directory.path / name).unlink()  # a stale one: its owner is gone
        self.socket = _datagram_socket()
        try:
            self.socket.bind(directory.address(name))
        except OSError:
            self.socket.close()
            raise

    def drain(self) -> list[bytes]:
        """Every datagram waiting now."""
        found = []
        while True:
            try:
                found.append(self.socket.recv(16))
            except (BlockingIOError, InterruptedError):
                return found
            except OSError:
                return found

    async def wait(self) -> None:
        """Until a datagram waits."""
        await trio.lowlevel.wait_readable(self.socket)

    def send(self, name: str, data: bytes) -> OSError | None:
        """Send ``data`` to socket ``name`` without blocking; the error, if any."""
        try:
            self.socket.sendto(data, self.directory.address(name))
        except OSError as exc:
            return exc
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            (self.directory.path / self.name).unlink()
        with contextlib.suppress(RuntimeError):  # (outside trio nothing can be waiting)
            trio.lowlevel.notify_closing(self.socket)  # a task waiting gets ClosedResourceError
        self.socket.close()


class WriterWake:
    """The writer's end: its socket, and the readers' sockets it wakes."""

    def __init__(self, wal_dir: Path) -> None:
        self._directory = _Directory(wal_dir / WAKE_DIR)
        try:
            self._inbox = _Inbox(self._directory, WRITER)
        except OSError:
            self._directory.close()
            raise
        self.readers: list[str] = []
        self._scanned = 0.0
        self.scan()

    def scan(self) -> None:
        """Look for the sockets of readers (in other processes)."""
        self._scanned = time.monotonic()
        try:
            names = os.listdir(self._directory.path)
        except OSError:
            return
        self.readers = sorted(name for name in names if name.startswith(READER_PREFIX))

    def wake_readers(self) -> None:
        """Send each reader's socket a wake-up; forget (and remove) those whose process is gone."""
        if time.monotonic() - self._scanned >= RESCAN_SECONDS:
            self.scan()
        for name in self.readers:
            error = self._inbox.send(name, COMMITTED)
            if isinstance(error, ConnectionRefusedError | FileNotFoundError):
                self.readers = [other for other in self.readers if other != name]
                if isinstance(error, ConnectionRefusedError):
                    with contextlib.suppress(OSError):
                        (self._directory.path / name).unlink()

    def received(self) -> set[bytes]:
        """The kinds of wake-up waiting now (``HELLO``, ``ACKED``)."""
        return set(self._inbox.drain())

    async def wait(self) -> None:
        """Until a reader sends a wake-up."""
        await self._inbox.wait()

    def close(self) -> None:
        self._inbox.close()
        self._directory.close()


class ReaderWake:
    """A reader's end (in a process without the writer): its socket, and the writer's."""

    def __init__(self, wal_dir: Path) -> None:
        self._directory = _Directory(wal_dir / WAKE_DIR)
        try:
            self._inbox = _Inbox(self._directory, f"{READER_PREFIX}{os.getpid()}-{next(_serial)}")
        except OSError:
            self._directory.close()
            raise
        self.tell_writer(HELLO)

    def tell_writer(self, data: bytes) -> None:
        """Send the writer a wake-up (lost if no writer runs)."""
        self._inbox.send(WRITER, data)

    def drain(self) -> int:
        """How many wake-ups came since the last drain."""
        return len(self._inbox.drain())

    async def wait(self) -> None:
        """Until a wake-up comes."""
        await self._inbox.wait()

    def close(self) -> None:
        self._inbox.close()
        self._directory.close()
