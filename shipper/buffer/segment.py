"""Segment files: naming, header, and the blocking file operations the WAL runs in worker threads.

A segment is ``<20-digit number>.seg`` in the WAL directory: a 16-byte header, then records
(``shipper.buffer.record``) back to back::

    offset  size  field
    0       8     magic    b"SHPWAL\\x00\\x02" (format version 2: records hold groups of
                           entries, see ``shipper.buffer.wal``; version 1 held one event
                           per record, id included)
    8       8     number   u64 little-endian, the segment number, equal to the one in the file name
    16      ...   records

Segment numbers start at 1 and only grow; a position in the WAL is (segment number, byte offset in
that segment), which is also what event ids are made of: ``"<segment>-<offset>"``.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

MAGIC_PREFIX: Final = b"SHPWAL\x00"
FORMAT_VERSION: Final = 2
MAGIC: Final = MAGIC_PREFIX + bytes([FORMAT_VERSION])
SEGMENT_HEADER: Final = struct.Struct("<8sQ")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size
_NAME_RE: Final = re.compile(r"(\d{20})\.seg")


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the WAL: a segment number and a byte offset in that segment."""

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment}-{self.offset}"


def segment_name(number: int) -> str:
    return f"{number:020d}.seg"


def segment_number(name: str) -> int | None:
    """The number of a segment file name, or None if the name is not a segment's."""
    match = _NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def header(number: int) -> bytes:
    return SEGMENT_HEADER.pack(MAGIC, number)


def header_ok(data: bytes, number: int) -> bool:
    """Whether ``data`` starts with the header of segment ``number``."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return False
    magic, found = SEGMENT_HEADER.unpack_from(data)
    return bool(magic == MAGIC and found == number)


#: Format versions earlier shippers wrote. Any other version byte is damage (one flipped bit
#: turns 2 into 0, 3, 6, 10, ... but never into 1).
OLDER_VERSIONS: Final = (1,)


def other_version(data: bytes, number: int) -> int | None:
    """The format version of segment ``number`` if an earlier shipper version wrote its (intact)
    header, else None (this version's, or a damaged header)."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return None
    magic, found = SEGMENT_HEADER.unpack_from(data)
    version = int(magic[-1])
    if not magic.startswith(MAGIC_PREFIX) or found != number or version not in OLDER_VERSIONS:
        return None
    return version


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes | Iterable[bytes]) -> int:
    """Replace ``path`` with ``data`` (bytes, or pieces written as they come) atomically and
    durably: write a ``.tmp`` beside it, fsync, rename over it, fsync the directory. A crash
    leaves the old file or the new one, never a mix (blocking: run it in a worker thread). The
    bytes written."""
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for piece in (data,) if isinstance(data, bytes) else data:
            write_all(fd, piece)
            size += len(piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def read_object(path: Path) -> dict[str, Any] | str | None:
    """The JSON object in ``path`` (as ``replace_file`` wrote it); None if there is no such file;
    a reason string if it cannot be read or holds no JSON object."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"{path} is corrupt: {exc}"
    if not isinstance(data, dict):
        return f"{path} is corrupt: not a JSON object"
    return data


def create(directory: Path, number: int) -> int:
    """Create segment ``number`` with its header, durable; its file descriptor for appending."""
    path = directory / segment_name(number)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, header(number))
        os.fsync(fd)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


#: The most buffers one ``writev`` takes.
IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16


def write_buffers(fd: int, buffers: list[bytes]) -> None:
    """Write every byte of ``buffers``, in order, without joining them (``os.writev``)."""
    views = [memoryview(buffer) for buffer in buffers if buffer]
    index = 0
    while index < len(views):
        written = os.writev(fd, views[index : index + IOV_MAX])
        while written:  # step over what was written; a partial write resumes mid-buffer
            size = len(views[index])
            if written < size:
                views[index] = views[index][written:]
                break
            written -= size
            index += 1


def read_at(path: Path, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``path`` from ``offset`` (fewer at the end of the file)."""
    with open(path, "rb", buffering=0) as file:
        return os.pread(file.fileno(), size, offset)
