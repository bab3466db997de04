"""Tests of WAL record framing: round trip, CRC-32C, and what scan reports for each kind of damage."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.buffer.record import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Corrupt,
    Record,
    Scanned,
    Torn,
    checksum,
    encode,
    encode_many,
    read_records,
    scan,
)

PAYLOADS = st.lists(st.binary(min_size=1, max_size=64), max_size=12)
THREE = [b"first record", b"the second one", b"third"]


def offsets_of(payloads: list[bytes], start: int = 0) -> list[int]:
    """The offset of each record when ``payloads`` are encoded back to back from ``start``."""
    found: list[int] = []
    offset = start
    for payload in payloads:
        found.append(offset)
        offset += HEADER_SIZE + len(payload)
    return found


def flip(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (0 = lowest bit of the first byte) inverted."""
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@given(PAYLOADS)
def test_round_trip(payloads: list[bytes]) -> None:
    """Scanning encoded payloads yields exactly one whole Record per payload, at its offset."""
    data = encode_many(payloads)
    expected = [Record(o, p) for o, p in zip(offsets_of(payloads), payloads, strict=True)]
    assert list(scan(data)) == expected
    assert read_records(data) == (expected, len(data), False)
    if expected:
        assert expected[-1].end == len(data)


@given(PAYLOADS, st.binary(min_size=0, max_size=32))
def test_scan_from_start(payloads: list[bytes], prefix_payload: bytes) -> None:
    """``scan(data, start)`` classifies from ``start`` and reports offsets relative to the data."""
    prefix = encode(prefix_payload) if prefix_payload else b""
    data = prefix + encode_many(payloads)
    expected = [
        Record(o, p) for o, p in zip(offsets_of(payloads, len(prefix)), payloads, strict=True)
    ]
    assert list(scan(data, len(prefix))) == expected


def test_crc32c_check_value() -> None:
    """The crc32c package computes CRC-32C (Castagnoli): the standard check value of "123456789"."""
    assert crc32c(b"123456789") == 0xE3069283


def test_checksum_covers_the_length_field() -> None:
    """The record CRC is CRC-32C over the 4 length bytes then the payload, not the payload alone."""
    payload = b"hello, wal"
    assert checksum(payload) == crc32c(struct.pack("<I", len(payload)) + payload)
    assert checksum(payload) != crc32c(payload)
    record = encode(payload)
    assert record[:4] == struct.pack("<I", len(payload))
    assert record[4:8] == struct.pack("<I", checksum(payload))
    assert record[8:] == payload
    # The same payload bytes under a different length field no longer match the stored CRC.
    crc = checksum(payload)
    for other_length in (len(payload) - 1, len(payload) + 1, len(payload) ^ 0x100):
        assert crc32c(struct.pack("<I", other_length) + payload) != crc


def test_encode_rejects_empty_payload() -> None:
    """An empty payload cannot be framed (a zero length marks damage or zero fill)."""
    with pytest.raises(ValueError, match="not within"):
        encode(b"")
    with pytest.raises(ValueError, match="not within"):
        encode_many([b"ok", b""])


def test_encode_rejects_oversized_payload() -> None:
    """A payload of MAX_PAYLOAD + 1 bytes is refused; exactly MAX_PAYLOAD bytes is accepted."""
    with pytest.raises(ValueError, match="not within"):
        encode(bytes(MAX_PAYLOAD + 1))
    assert len(encode(bytes(MAX_PAYLOAD))) == HEADER_SIZE + MAX_PAYLOAD


def test_torn_length_field() -> None:
    """Two of the four length bytes at the end of the data are a Torn tail of size 2."""
    whole = encode_many(THREE)
    data = whole + encode(b"cut")[:2]
    assert list(scan(data))[-1] == Torn(len(whole), 2)
    assert len(list(scan(data))) == 4
    assert read_records(data) == (list(scan(whole)), len(whole), False)


def test_torn_payload() -> None:
    """A record cut in the middle of its payload is Torn from its start to the end of the data."""
    whole = encode_many(THREE)
    last = encode(b"a payload that the crash cut in half")
    data = whole + last[: HEADER_SIZE + 10]
    assert list(scan(data)) == [
        *scan(whole),
        Torn(len(whole), HEADER_SIZE + 10),
    ]
    records, end, damaged = read_records(data)
    assert [r.payload for r in records] == THREE
    assert (end, damaged) == (len(whole), False)


def test_flipped_payload_bit_in_middle_record() -> None:
    """A bit flip in a middle record's payload is Corrupt with exactly its bytes; later ones pass."""
    offsets = offsets_of(THREE)
    data = flip(encode_many(THREE), (offsets[1] + HEADER_SIZE + 3) * 8 + 5)
    assert list(scan(data)) == [
        Record(offsets[0], THREE[0]),
        Corrupt(offsets[1], data[offsets[1] : offsets[2]]),
        Record(offsets[2], THREE[2]),
    ]
    assert read_records(data) == ([Record(offsets[0], THREE[0])], offsets[1], True)


@pytest.mark.parametrize("bit", [0, 7, 12, 20, 31])
def test_flipped_length_bit_in_middle_record(bit: int) -> None:
    """A bit flip in a middle record's length field is Corrupt; the scan resyncs at the next one."""
    offsets = offsets_of(THREE)
    data = flip(encode_many(THREE), offsets[1] * 8 + bit)
    assert list(scan(data)) == [
        Record(offsets[0], THREE[0]),
        Corrupt(offsets[1], data[offsets[1] : offsets[2]]),
        Record(offsets[2], THREE[2]),
    ]
    records, end, _ = read_records(data)
    assert (records, end) == ([Record(offsets[0], THREE[0])], offsets[1])


@pytest.mark.parametrize("zeros", [1, HEADER_SIZE - 1, HEADER_SIZE, 4096])
def test_zero_filled_tail(zeros: int) -> None:
    """Zero bytes after the last record (file system fill) are a Torn tail, never records."""
    whole = encode_many(THREE)
    data = whole + bytes(zeros)
    assert list(scan(data)) == [*scan(whole), Torn(len(whole), zeros)]
    records, end, _ = read_records(data)
    assert ([r.payload for r in records], end) == (THREE, len(whole))


@pytest.mark.parametrize("garbage", [b"\xff", b"\xff" * 7, b"\x00" * 9, b"not a record at all"])
def test_garbage_between_records(garbage: bytes) -> None:
    """Bytes between two whole records are one Corrupt holding exactly those bytes."""
    first, second = encode(THREE[0]), encode(THREE[1])
    data = first + garbage + second
    assert list(scan(data)) == [
        Record(0, THREE[0]),
        Corrupt(len(first), garbage),
        Record(len(first) + len(garbage), THREE[1]),
    ]
    # The fast path stops before the garbage (whether it can call it damage depends on the bytes).
    records, end, _ = read_records(data)
    assert (records, end) == ([Record(0, THREE[0])], len(first))


def test_oversized_length_is_damage() -> None:
    """A length field over MAX_PAYLOAD stops read_records as damage and is Corrupt in a scan."""
    first = encode(THREE[0])
    bogus = struct.pack("<II", MAX_PAYLOAD + 1, 0)
    data = first + bogus + encode(THREE[1])
    assert read_records(data) == ([Record(0, THREE[0])], len(first), True)
    assert [type(item) for item in scan(data)] == [Record, Corrupt, Record]


def test_read_records_stops_at_a_cut_record_without_damage() -> None:
    """A record cut short by the end of the data stops read_records with damaged False."""
    whole = encode_many(THREE)
    for cut in range(1, len(encode(b"next")) - 1):
        data = whole + encode(b"next")[:cut]
        records, end, damaged = read_records(data)
        assert ([r.payload for r in records], end, damaged) == (THREE, len(whole), False)


def records_in(items: list[Scanned]) -> list[Record]:
    """The Records among scanned items."""
    return [item for item in items if isinstance(item, Record)]


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8), st.data())
def test_single_bit_flip_keeps_every_other_record(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """After any single bit flip, scan never raises and yields every record the flip missed."""
    stream = encode_many(payloads)
    bit = data.draw(st.integers(0, len(stream) * 8 - 1), label="bit")
    damaged = flip(stream, bit)
    items = list(scan(damaged))
    survivors = [
        Record(o, p)
        for o, p in zip(offsets_of(payloads), payloads, strict=True)
        if not o <= bit // 8 < o + HEADER_SIZE + len(p)
    ]
    assert records_in(items) == survivors
    # Everything is accounted for exactly once, in order, and only the last item may be Torn.
    position = 0
    for index, item in enumerate(items):
        assert item.offset == position
        if isinstance(item, Torn):
            assert index == len(items) - 1
            position += item.size
        else:
            position = item.end
    assert position == len(damaged)
