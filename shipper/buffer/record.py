"""WAL records: the framing of one payload inside a segment file (sans-IO: bytes in, bytes out).

Record layout (little-endian)::

    offset  size  field
    0       4     length   u32, bytes of payload (1 .. MAX_PAYLOAD)
    4       4     crc      u32, CRC-32C (Castagnoli) of the 4 length bytes followed by the payload
    8       n     payload

The CRC covers the length, so a flipped bit in the length field is caught like one in the payload.
Records follow each other with no padding. What ``scan`` reports for the bytes at a position:

``Record``
    a whole record whose CRC matches.
``Torn``
    no valid record starts here or anywhere after: a header or payload cut short, or zero bytes
    that a file system added but never wrote. It is what an interrupted append leaves, and only
    ever the last thing reported.
``Corrupt``
    no valid record starts here (bad CRC, length 0 or over ``MAX_PAYLOAD``, cut short) but one does
    further on. The scanner resynchronises at the next position where a whole record with a
    matching CRC starts; the bytes skipped come with the ``Corrupt`` for the caller to quarantine.

A valid record is recognised by its CRC alone; the chance that damaged bytes pass as one is about
2^-32 per position tried.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct("<II")
HEADER_SIZE: Final = HEADER.size
#: The largest payload a record may hold (an envelope is bounded by the sources' limits).
MAX_PAYLOAD: Final = 64 * 1024 * 1024
_LENGTH: Final = struct.Struct("<I")


def _first_crc(data: bytes, value: int = 0) -> int:
    """``crc32c.crc32c``, imported at its first use, after which ``_crc`` is the C function
    itself. (The package imports ``importlib.metadata`` for its version, about 2 MB resident:
    an ingest worker imports this module for ``MAX_PAYLOAD`` and never computes a CRC.)"""
    global _crc
    from crc32c import crc32c

    _crc = crc32c
    return crc32c(data, value)


_crc: Callable[[bytes, int], int] = _first_crc


def checksum(payload: bytes) -> int:
    """The record CRC of ``payload``: CRC-32C over the length field and the payload."""
    return _crc(payload, _crc(_LENGTH.pack(len(payload)), 0))


def header(payload: bytes) -> bytes:
    """The header of the record holding ``payload`` (written before it, without copying it)."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload size {len(payload)} is not within 1..{MAX_PAYLOAD}")
    return HEADER.pack(len(payload), checksum(payload))


def encode(payload: bytes) -> bytes:
    """One record holding ``payload``."""
    return header(payload) + payload


def encode_many(payloads: list[bytes]) -> bytes:
    """Records for every payload, concatenated (what one batched append writes)."""
    return b"".join(encode(payload) for payload in payloads)


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + len(self.payload)


@dataclass(frozen=True, slots=True)
class Torn:
    offset: int
    size: int  # bytes from offset to the end of the data


@dataclass(frozen=True, slots=True)
class Corrupt:
    offset: int
    raw: bytes  # the bytes skipped, from offset up to the next valid record (or the end)

    @property
    def end(self) -> int:
        return self.offset + len(self.raw)


Scanned = Record | Torn | Corrupt


def _record_at(data: bytes, offset: int) -> bytes | None:
    """The payload of a whole record with a matching CRC at ``offset``, else None."""
    if len(data) - offset < HEADER_SIZE:
        return None
    length, crc = HEADER.unpack_from(data, offset)
    end = offset + HEADER_SIZE + length
    if not 0 < length <= MAX_PAYLOAD or end > len(data):
        return None
    payload = data[offset + HEADER_SIZE : end]
    return payload if checksum(payload) == crc else None


def _next_record(data: bytes, offset: int) -> int | None:
    """The first position at or after ``offset`` where a valid record starts (resync)."""
    for position in range(offset, len(data) - HEADER_SIZE + 1):
        if _record_at(data, position) is not None:
            return position
    return None


def scan(data: bytes, start: int = 0) -> Iterator[Scanned]:
    """Classify everything in ``data`` from ``start``: records, corrupt runs, a torn tail."""
    offset = start
    size = len(data)
    while offset < size:
        payload = _record_at(data, offset)
        if payload is not None:
            yield Record(offset, payload)
            offset += HEADER_SIZE + len(payload)
            continue
        resume = _next_record(data, offset + 1)
        if resume is None:
            # Nothing valid follows: an interrupted append (or zeros the file system added).
            yield Torn(offset, size - offset)
            return
        yield Corrupt(offset, data[offset:resume])
        offset = resume


def read_records(data: bytes) -> tuple[list[Record], int, bool]:
    """The whole valid records at the start of ``data`` (the fast path readers take).

    Returns the records, the offset where they end, and whether what stops the run is damage (a
    header or CRC that cannot be right) rather than a record cut short by the end of ``data``.
    """
    found: list[Record] = []
    offset = 0
    size = len(data)
    unpack = HEADER.unpack_from
    while size - offset >= HEADER_SIZE:
        length, crc = unpack(data, offset)
        if not 0 < length <= MAX_PAYLOAD:
            return found, offset, True
        end = offset + HEADER_SIZE + length
        if end > size:
            return found, offset, False
        payload = data[offset + HEADER_SIZE : end]
        if checksum(payload) != crc:
            return found, offset, True
        found.append(Record(offset, payload))
        offset = end
    return found, offset, False
