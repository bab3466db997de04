"""Tests of WAL recovery: one per damage in recovery's table, with its documented outcome."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.buffer import cursor
from shipper.buffer.config import BufferConfig
from shipper.buffer.record import HEADER_SIZE, Record, encode, encode_many, scan
from shipper.buffer.recovery import (
    CURSOR_DIR,
    EPOCH_FILE,
    LOCK_FILE,
    Finding,
    Report,
    SegmentInfo,
    WalFormatError,
    recover,
)
from shipper.buffer.segment import SEGMENT_HEADER_SIZE, Position, header, segment_name
from shipper.buffer.wal import Wal
from tests.buffer.test_wal import events, numbers, open_wal, segment_files
from tests.chains import chain_lines
from tests.conftest import LogCapture, archive_lines
from tests.test_chain_stage import run_once

H = SEGMENT_HEADER_SIZE
EPOCH = "0123456789abcdef"


def entries(*texts: str, route: bytes = b"agents") -> bytes:
    """A record payload of one entry per text, each with an envelope-like JSON object."""
    return b"\n".join(route + b"\0" + b'{"v":1,"text":"%s"}' % t.encode() for t in texts)


PAYLOADS = [entries("alpha"), entries("the second", "record"), entries("gamma", route=b"")]
EVENTS = 4  # entries in PAYLOADS
#: Payloads that pass their checksums but hold no entries (what recovery quarantines).
NOT_ENTRIES = [b"alpha", b"the second record", b'{"v":1,"id":"1-24","record":{}}']


def offsets_of(payloads: list[bytes]) -> list[int]:
    """The offset of each record in a segment holding ``payloads`` right after its header."""
    found: list[int] = []
    offset = H
    for payload in payloads:
        found.append(offset)
        offset += HEADER_SIZE + len(payload)
    return found


def write_segment(
    directory: Path, number: int, payloads: list[bytes] = PAYLOADS, tail: bytes = b""
) -> Path:
    """Write segment ``number`` holding ``payloads`` then ``tail`` (and the WAL's epoch file,
    if there is none yet); its path."""
    if not (directory / EPOCH_FILE).exists():
        (directory / EPOCH_FILE).write_bytes(EPOCH.encode() + b"\n")
    path = directory / segment_name(number)
    path.write_bytes(header(number) + encode_many(payloads) + tail)
    return path


def segment_size(payloads: list[bytes] = PAYLOADS) -> int:
    """The size of a whole segment holding ``payloads``."""
    return H + len(encode_many(payloads))


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    """Invert bits ``mask`` of the byte at ``offset`` in the file at ``path``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def overwrite(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` over the bytes of the file at ``path`` from ``offset``."""
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under ``directory``: file bytes by relative path, None for directories."""
    return {
        str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
    }


def store_cursor(directory: Path, sink: str, position: Position) -> None:
    """Persist a valid cursor for ``sink`` in the WAL at ``directory``."""
    (directory / CURSOR_DIR).mkdir(exist_ok=True)
    cursor.store(directory / CURSOR_DIR, sink, position)


def known_quarantines(report: Report) -> list[Finding]:
    """The "quarantined" findings a later start reports for the "corrupt" ones of ``report``."""
    return [
        Finding(
            "quarantined",
            f.detail.replace("bytes quarantined in", "bytes skipped, quarantined earlier in"),
            f.segment,
            f.offset,
            f.size,
        )
        for f in report.by_kind("corrupt")
    ]


def kinds(report: Report) -> list[str]:
    """The kinds of a report's findings, in order."""
    return [f.kind for f in report.findings]


# --- segments ----------------------------------------------------------------------------------


def test_clean_wal_has_no_findings(tmp_path: Path) -> None:
    """Whole segments and a valid cursor recover untouched, with no finding at all."""
    write_segment(tmp_path, 1)
    write_segment(tmp_path, 2)
    store_cursor(tmp_path, "a", Position(1, offsets_of(PAYLOADS)[1]))
    before = snapshot(tmp_path)
    report = recover(tmp_path, ["a"])
    assert report.findings == []
    assert report.segments == [
        SegmentInfo(1, segment_size(), 3, events=EVENTS),
        SegmentInfo(2, segment_size(), 3, events=EVENTS),
    ]
    assert report.cursors == {"a": Position(1, offsets_of(PAYLOADS)[1])}
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(encode(b"interrupted append")[:13], id="cut-record"),
        pytest.param(encode(b"x")[:2], id="cut-length"),
        pytest.param(bytes(4096), id="zero-filled"),
    ],
)
def test_torn_tail_is_truncated(tmp_path: Path, tail: bytes) -> None:
    """A torn tail is cut off the file at the end of the last whole record and reported as torn."""
    path = write_segment(tmp_path, 1, tail=tail)
    report = recover(tmp_path, [])
    assert path.stat().st_size == segment_size()
    assert path.read_bytes() == header(1) + encode_many(PAYLOADS)
    assert report.findings == [
        Finding(
            "torn", "torn record at the end of the segment; truncated", 1, segment_size(), len(tail)
        )
    ]
    assert report.segments == [SegmentInfo(1, segment_size(), 3, events=EVENTS)]


def test_corrupt_middle_record_is_quarantined(tmp_path: Path) -> None:
    """A corrupt middle record is copied to a quarantine file, skipped, counted; the file is kept."""
    path = write_segment(tmp_path, 1)
    start, end = offsets_of(PAYLOADS)[1], offsets_of(PAYLOADS)[2]
    flip(path, start + HEADER_SIZE + 2)
    damaged = path.read_bytes()
    report = recover(tmp_path, [])
    assert path.read_bytes() == damaged
    quarantine = tmp_path / f"{segment_name(1)}.{start}.quarantine"
    assert quarantine.read_bytes() == damaged[start:end]
    assert report.segments == [SegmentInfo(1, segment_size(), 2, [(start, end)], events=2)]
    [finding] = report.findings
    assert (finding.kind, finding.segment, finding.offset, finding.size) == (
        "corrupt",
        1,
        start,
        end - start,
    )
    assert quarantine.name in finding.detail


@pytest.mark.parametrize(
    "bad_header",
    [
        pytest.param(b"SHPXAL\x00\x02" + header(1)[8:], id="wrong-magic"),
        pytest.param(b"SHPWAL\x00\x03" + header(1)[8:], id="wrong-version-byte"),
        pytest.param(header(7), id="wrong-number"),
        pytest.param(bytes(H), id="zeroed"),
    ],
)
def test_bad_header_with_valid_records_is_salvaged(tmp_path: Path, bad_header: bytes) -> None:
    """A damaged header in front of checksummed records is copied to a quarantine file and
    rewritten in place; every record is kept and the finding says how many."""
    path = tmp_path / segment_name(1)
    path.write_bytes(bad_header + encode_many(PAYLOADS))
    write_segment(tmp_path, 2)
    report = recover(tmp_path, [])
    assert path.read_bytes() == header(1) + encode_many(PAYLOADS)
    assert (tmp_path / f"{segment_name(1)}.0.quarantine").read_bytes() == bad_header
    assert not (tmp_path / f"{segment_name(1)}.corrupt").exists()
    [finding] = report.findings
    assert (finding.kind, finding.segment, finding.offset, finding.size) == ("salvaged", 1, 0, H)
    assert f"{EVENTS} events in 3 records" in finding.detail
    assert bad_header.hex() in finding.detail
    assert report.segments == [
        SegmentInfo(1, segment_size(), 3, events=EVENTS),
        SegmentInfo(2, segment_size(), 3, events=EVENTS),
    ]
    assert report.damaged
    assert recover(tmp_path, []).findings == []


def test_salvage_quarantines_what_is_not_entries_and_keeps_the_rest(tmp_path: Path) -> None:
    """In a segment behind a damaged header, a checksummed record that holds no entries and a
    record with a bad checksum are quarantined and skipped; the valid ones are kept."""
    payloads = [PAYLOADS[0], NOT_ENTRIES[2], PAYLOADS[1], PAYLOADS[2]]
    path = write_segment(tmp_path, 1, payloads)
    at = [*offsets_of(payloads), segment_size(payloads)]
    flip(path, 3)  # magic
    flip(path, at[2] + HEADER_SIZE + 1)  # payload of the third record
    report = recover(tmp_path, [])
    assert kinds(report) == ["salvaged", "corrupt", "corrupt"]
    assert "2 events in 2 records" in report.findings[0].detail
    assert "not WAL entries" in report.findings[1].detail
    assert "bad checksum" in report.findings[2].detail
    assert report.segments == [
        SegmentInfo(1, segment_size(payloads), 2, [(at[1], at[2]), (at[2], at[3])], events=2)
    ]
    quarantine = tmp_path / f"{segment_name(1)}.{at[1]}.quarantine"
    assert quarantine.read_bytes() == encode(NOT_ENTRIES[2])
    assert path.read_bytes()[:H] == header(1)
    again = recover(tmp_path, [])  # the header is whole now: the record is still skipped
    assert again.segments == report.segments
    assert again.findings == known_quarantines(report)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"SHPXAL\x00\x02" + header(1)[8:] + encode_many(NOT_ENTRIES), id="no-entries"),
        pytest.param(b"SHPWAL\x00\x41" + header(1)[8:] + encode_many(NOT_ENTRIES), id="format-1"),
        pytest.param(b"SHPXAL\x00\x02" + header(1)[8:] + b"garbage" * 10, id="no-record"),
        pytest.param(header(1)[:9], id="cut-short-in-older-segment"),
    ],
)
def test_bad_header_without_valid_records_is_renamed_corrupt(
    tmp_path: Path, content: bytes
) -> None:
    """A segment whose header is wrong and that holds no checksummed record of entries (and is
    not the newest one cut short) becomes ``.corrupt``, whole."""
    path = tmp_path / segment_name(1)
    path.write_bytes(content)
    write_segment(tmp_path, 2)
    report = recover(tmp_path, [])
    assert not path.exists()
    assert (tmp_path / f"{segment_name(1)}.corrupt").read_bytes() == content
    assert kinds(report) == ["bad_segment"]
    assert (report.findings[0].segment, report.findings[0].size) == (1, len(content))
    assert [info.number for info in report.segments] == [2]


def test_segment_of_another_format_version_refuses_the_start(tmp_path: Path) -> None:
    """A segment another shipper version wrote stops recovery with a clear error, untouched;
    ``inspect`` (no repair) reports it as damage instead."""
    path = tmp_path / segment_name(1)
    path.write_bytes(b"SHPWAL\x00\x01" + header(1)[8:] + encode_many(PAYLOADS))
    write_segment(tmp_path, 2)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    with pytest.raises(WalFormatError, match="version 1; this shipper reads version 2"):
        recover(tmp_path, [])
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()) == before
    report = recover(tmp_path, [], repair=False)
    assert [(f.kind, f.level) for f in report.findings] == [("other_version", "error")]
    assert report.damaged
    assert [info.number for info in report.segments] == [2]


def test_events_count_the_entries_of_grouped_records(tmp_path: Path) -> None:
    """A segment's ``events`` counts every LF-joined entry of its records, ``records`` the records."""
    write_segment(tmp_path, 1, [entries("x"), entries("x", "y") + b"\n" + entries("z", route=b"")])
    report = recover(tmp_path, [])
    assert [(info.records, info.events) for info in report.segments] == [(2, 4)]


@pytest.mark.parametrize("size", [0, 1, H - 1])
def test_newest_header_cut_short_is_removed(tmp_path: Path, size: int) -> None:
    """A newest segment shorter than its header is torn creation: the file is removed."""
    write_segment(tmp_path, 1)
    newest = tmp_path / segment_name(2)
    newest.write_bytes(header(2)[:size])
    report = recover(tmp_path, [])
    assert not newest.exists()
    assert not (tmp_path / f"{segment_name(2)}.corrupt").exists()
    assert [(f.kind, f.segment, f.offset, f.size) for f in report.findings] == [
        ("torn", 2, 0, size)
    ]
    assert report.segments == [SegmentInfo(1, segment_size(), 3, events=EVENTS)]


def test_older_segment_cut_short_is_reported_lost(tmp_path: Path) -> None:
    """An older segment that ends in a cut record lost accepted data: an error-level "lost"
    finding with the range, the partial bytes quarantined, then cut off."""
    tail = encode(entries("cut in half"))[:12]
    older = write_segment(tmp_path, 1, tail=tail)
    newer = write_segment(tmp_path, 2)
    report = recover(tmp_path, [])
    assert older.read_bytes() == header(1) + encode_many(PAYLOADS)
    assert newer.stat().st_size == segment_size()
    quarantine = tmp_path / f"{segment_name(1)}.{segment_size()}.quarantine"
    assert quarantine.read_bytes() == tail
    [finding] = report.findings
    assert (finding.kind, finding.level, finding.segment, finding.offset, finding.size) == (
        "lost",
        "error",
        1,
        segment_size(),
        12,
    )
    assert "rest of the segment is missing" in finding.detail
    assert quarantine.name in finding.detail
    assert report.damaged
    assert report.segments == [
        SegmentInfo(1, segment_size(), 3, events=EVENTS),
        SegmentInfo(2, segment_size(), 3, events=EVENTS),
    ]
    assert recover(tmp_path, []).findings == []


def test_lost_data_is_logged_at_error_and_counted(tmp_path: Path, logs: LogCapture) -> None:
    """``Wal.open`` logs a "lost" finding at error level and counts it."""
    write_segment(tmp_path, 1, tail=encode(entries("cut"))[:12])
    write_segment(tmp_path, 2)
    wal = open_wal(tmp_path, {})
    [entry] = logs.entries("wal_recovery")
    assert (entry["level"], entry["kind"], entry["segment"], entry["offset"]) == (
        "error",
        "lost",
        1,
        segment_size(),
    )
    assert wal.counters["recovery_lost"] == 1
    wal.release()


# --- cursors -----------------------------------------------------------------------------------


def test_missing_cursor_starts_at_oldest(tmp_path: Path) -> None:
    """A sink without a cursor starts at the oldest retained record, with an info-level
    no_cursor finding that is not damage."""
    write_segment(tmp_path, 3)
    write_segment(tmp_path, 4)
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(3, H)}
    assert kinds(report) == ["no_cursor"]
    assert report.findings[0].level == "info"
    assert not report.damaged
    assert "sink a" in report.findings[0].detail


def test_reset_cursor_is_rewritten(tmp_path: Path) -> None:
    """A missing cursor is written at the position recovery chose, so the next start agrees."""
    write_segment(tmp_path, 3)
    recover(tmp_path, ["a"])
    assert cursor.load(tmp_path / CURSOR_DIR, "a") == Position(3, H)
    assert recover(tmp_path, ["a"]).findings == []


def test_missing_cursor_without_segments_is_silent(tmp_path: Path) -> None:
    """With no segments at all, a sink without a cursor is normal: no finding."""
    report = recover(tmp_path, ["a", "b"])
    assert report.findings == []
    assert report.cursors == {"a": Position(1, H), "b": Position(1, H)}
    assert (tmp_path / CURSOR_DIR).is_dir()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"v": 1, "sink": "other", "segment": 3, "offset": 40}', id="other-sink"),
        pytest.param(b'{"v": 2, "sink": "a", "segment": 3, "offset": 40}', id="other-version"),
        pytest.param(b'{"v": 1, "sink": "a", "segment": 3, "offset": -1}', id="negative"),
        pytest.param(b"[1, 2]", id="not-an-object"),
    ],
)
def test_corrupt_cursor_starts_at_oldest(tmp_path: Path, content: bytes) -> None:
    """A cursor that is unreadable or not this sink's counts as absent: oldest, with a finding."""
    write_segment(tmp_path, 3)
    write_segment(tmp_path, 4)
    (tmp_path / CURSOR_DIR).mkdir()
    (tmp_path / CURSOR_DIR / "a.json").write_bytes(content)
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(3, H)}
    assert kinds(report) == ["cursor"]
    assert "corrupt" in report.findings[0].detail


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        pytest.param(Position(2, segment_size() + 1), "beyond the end", id="past-last-record"),
        pytest.param(Position(9, H), "beyond the end", id="later-segment"),
        pytest.param(Position(1, segment_size() + 1), "past the end of segment 1", id="past-own"),
        pytest.param(Position(1, offsets_of(PAYLOADS)[1] + 3), "record boundary", id="mid-record"),
        pytest.param(Position(1, H - 1), "record boundary", id="in-header"),
    ],
)
def test_damaged_cursor_starts_at_oldest(tmp_path: Path, stored: Position, why: str) -> None:
    """A cursor no sink could have stored (beyond the end of the WAL, past the end of its
    segment, or not at a record boundary) is damage: an error-level finding, the sink starts
    at the oldest record, and the cursor is rewritten there."""
    write_segment(tmp_path, 1)
    write_segment(tmp_path, 2)
    store_cursor(tmp_path, "a", stored)
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(1, H)}
    [finding] = report.findings
    assert (finding.kind, finding.level, finding.segment, finding.offset) == (
        "bad_cursor",
        "error",
        stored.segment,
        stored.offset,
    )
    assert why in finding.detail
    assert report.damaged
    assert cursor.load(tmp_path / CURSOR_DIR, "a") == Position(1, H)
    assert recover(tmp_path, ["a"]).findings == []


def test_cursor_beyond_truncated_end_starts_at_oldest(tmp_path: Path) -> None:
    """A cursor inside a torn tail that recovery cuts off is beyond the end: the sink starts
    at the oldest record."""
    write_segment(tmp_path, 1, tail=encode(b"never acknowledged")[:20])
    store_cursor(tmp_path, "a", Position(1, segment_size() + 10))
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(1, H)}
    assert kinds(report) == ["torn", "bad_cursor"]


@pytest.mark.parametrize("record", [0, 1, 2, 3])
def test_cursor_at_a_record_boundary_is_kept(tmp_path: Path, record: int) -> None:
    """A cursor at the start of any record of its segment, or at its end, is kept as it is."""
    write_segment(tmp_path, 1)
    write_segment(tmp_path, 2)
    stored = Position(1, [*offsets_of(PAYLOADS), segment_size()][record])
    store_cursor(tmp_path, "a", stored)
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": stored}
    assert report.findings == []


def test_cursor_in_a_segment_set_aside_is_kept(tmp_path: Path) -> None:
    """A cursor in a segment recovery set aside (renamed ``.corrupt``) is not damage: the
    sink goes on with the next segment."""
    write_segment(tmp_path, 1)
    (tmp_path / segment_name(2)).write_bytes(b"not a segment at all" * 3)
    write_segment(tmp_path, 3)
    store_cursor(tmp_path, "a", Position(2, 40))
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(2, 40)}
    assert kinds(report) == ["bad_segment"]


def test_cursor_at_end_is_kept(tmp_path: Path) -> None:
    """A cursor exactly at the end of the WAL (everything delivered) is valid as it is."""
    write_segment(tmp_path, 1)
    store_cursor(tmp_path, "a", Position(1, segment_size()))
    report = recover(tmp_path, ["a"])
    assert report.cursors == {"a": Position(1, segment_size())}
    assert report.findings == []


@pytest.mark.parametrize("inside", [0, 1, HEADER_SIZE, HEADER_SIZE + len(PAYLOADS[1]) - 1])
def test_cursor_inside_skip_range_moves_to_its_end(tmp_path: Path, inside: int) -> None:
    """A cursor inside a quarantined range is moved to the end of that range."""
    path = write_segment(tmp_path, 1)
    start, end = offsets_of(PAYLOADS)[1], offsets_of(PAYLOADS)[2]
    flip(path, start + HEADER_SIZE)
    store_cursor(tmp_path, "a", Position(1, start + inside))
    report = recover(tmp_path, ["a"])
    assert report.segments[0].skips == [(start, end)]
    assert report.cursors == {"a": Position(1, end)}
    assert cursor.load(tmp_path / CURSOR_DIR, "a") == Position(1, end)


def test_reset_cursor_skips_a_corrupt_range_at_the_oldest_position(tmp_path: Path) -> None:
    """A cursor reset to the oldest record lands after a corrupt range that starts the segment."""
    path = write_segment(tmp_path, 1)
    first_end = offsets_of(PAYLOADS)[1]
    flip(path, H)  # length field of the first record
    report = recover(tmp_path, ["a"])
    assert report.segments[0].skips == [(H, first_end)]
    assert report.cursors == {"a": Position(1, first_end)}
    again = recover(tmp_path, ["a"])
    assert again.cursors == report.cursors


def test_unconfigured_sink_cursor_is_released(tmp_path: Path) -> None:
    """The cursor of a sink no longer configured is removed and reported as released."""
    write_segment(tmp_path, 1)
    store_cursor(tmp_path, "a", Position(1, H))
    store_cursor(tmp_path, "gone", Position(1, H))
    report = recover(tmp_path, ["a"])
    assert not (tmp_path / CURSOR_DIR / "gone.json").exists()
    assert (tmp_path / CURSOR_DIR / "a.json").exists()
    assert kinds(report) == ["released"]
    assert "gone" in report.findings[0].detail
    assert set(report.cursors) == {"a"}


def test_stray_files_are_listed_and_left_alone(tmp_path: Path) -> None:
    """Files that are not segments, quarantine, .corrupt, the lock or cursors are only listed."""
    write_segment(tmp_path, 1)
    strays = {
        "notes.txt": b"hello",
        "1.seg": b"short name",
        f"{segment_name(2)}.tmp": b"x",
    }
    for name, content in strays.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "subdir").mkdir()
    (tmp_path / LOCK_FILE).write_bytes(b"")  # the WAL's lock file is not stray
    (tmp_path / f"{segment_name(5)}.corrupt").write_bytes(b"kept")
    (tmp_path / f"{segment_name(1)}.40.quarantine").write_bytes(b"kept")
    before = snapshot(tmp_path)
    report = recover(tmp_path, [])
    assert sorted(kinds(report)) == ["stray"] * 4
    listed = " ".join(f.detail for f in report.findings)
    for name in [*strays, "subdir"]:
        assert name in listed
    after = snapshot(tmp_path)
    del after[CURSOR_DIR]  # recovery creates the (empty) cursor directory
    assert after == before
    assert [info.number for info in report.segments] == [1]


# --- the epoch file ----------------------------------------------------------------------------

OTHER_EPOCH = "fedcba9876543210"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00not utf-8", id="not-utf-8"),
        pytest.param(b"0123456789ABCDEF\n", id="upper-case"),
        pytest.param(b"0123456789abcde\n", id="short"),
        pytest.param(b"0123456789abcdef0\n", id="long"),
        pytest.param(b"../../etc/passwd", id="path"),
        pytest.param(b"*\n", id="glob"),
    ],
)
def test_damaged_epoch_is_kept_aside_and_the_hint_used(tmp_path: Path, content: bytes) -> None:
    """A damaged epoch file is copied to ``epoch.corrupt`` and written again with the hint (the
    chain checkpoint's epoch), reported as an error-level "epoch" finding."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).write_bytes(content)
    report = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert report.epoch == OTHER_EPOCH
    assert (tmp_path / EPOCH_FILE).read_bytes() == OTHER_EPOCH.encode() + b"\n"
    assert (tmp_path / f"{EPOCH_FILE}.corrupt").read_bytes() == content
    [finding] = report.findings
    assert (finding.kind, finding.level) == ("epoch", "error")
    assert "epoch.corrupt" in finding.detail
    assert f"checkpoint's epoch {OTHER_EPOCH} is used" in finding.detail
    assert report.damaged
    assert recover(tmp_path, [], epoch_hint=EPOCH).findings == []  # the file wins now
    assert recover(tmp_path, []).epoch == OTHER_EPOCH


@pytest.mark.parametrize("hint", [None, "", "not an epoch", "0123456789ABCDEF"])
def test_damaged_epoch_without_a_usable_hint_starts_a_new_one(
    tmp_path: Path, hint: str | None
) -> None:
    """Without a (valid) hint, a damaged epoch file is replaced by a new epoch, and the finding
    says what that means for the sinks and the chain checkpoint."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).write_bytes(b"garbage")
    report = recover(tmp_path, [], epoch_hint=hint)
    assert re.fullmatch("[0-9a-f]{16}", report.epoch)
    assert report.epoch not in (EPOCH, hint)
    assert (tmp_path / EPOCH_FILE).read_bytes() == report.epoch.encode() + b"\n"
    [finding] = report.findings
    assert finding.kind == "epoch"
    assert "new epoch" in finding.detail
    assert "archive again" in finding.detail
    assert "replay the whole WAL" in finding.detail


def test_earlier_damaged_epoch_copies_are_kept(tmp_path: Path) -> None:
    """A second damaged epoch file is kept beside the first copy, not over it."""
    write_segment(tmp_path, 1)
    (tmp_path / f"{EPOCH_FILE}.corrupt").write_bytes(b"first")
    (tmp_path / EPOCH_FILE).write_bytes(b"second")
    report = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert (tmp_path / f"{EPOCH_FILE}.corrupt").read_bytes() == b"first"
    assert (tmp_path / f"{EPOCH_FILE}.1.corrupt").read_bytes() == b"second"
    assert "epoch.1.corrupt" in report.findings[0].detail


def test_unreadable_epoch_is_damage(tmp_path: Path) -> None:
    """An epoch "file" that cannot be read (here a directory) is damage, never a crash."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).unlink()
    (tmp_path / EPOCH_FILE).mkdir()
    report = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert kinds(report) == ["epoch"]
    assert (tmp_path / f"{EPOCH_FILE}.corrupt").is_dir()
    assert report.epoch == OTHER_EPOCH


@pytest.mark.parametrize("hint", [OTHER_EPOCH, None])
def test_missing_epoch_with_segments_is_reported(tmp_path: Path, hint: str | None) -> None:
    """An epoch file missing beside segments is a warning-level "epoch_missing" finding; the
    hint is used if there is one, else a new epoch is written."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).unlink()
    report = recover(tmp_path, [], epoch_hint=hint)
    [finding] = report.findings
    assert (finding.kind, finding.level) == ("epoch_missing", "warning")
    assert report.damaged
    assert report.epoch == hint if hint else re.fullmatch("[0-9a-f]{16}", report.epoch)
    assert (tmp_path / EPOCH_FILE).read_bytes() == report.epoch.encode() + b"\n"
    assert not (tmp_path / f"{EPOCH_FILE}.corrupt").exists()


def test_new_wal_directory_gets_an_epoch_silently(tmp_path: Path) -> None:
    """A WAL directory with no segment and no epoch file gets a new epoch without a finding
    (the hint of a checkpoint of a wiped WAL is not used); inspect leaves it without one."""
    assert recover(tmp_path, [], repair=False).epoch == ""
    assert not (tmp_path / EPOCH_FILE).exists()
    report = recover(tmp_path, ["a"], epoch_hint=OTHER_EPOCH)
    assert report.findings == []
    assert re.fullmatch("[0-9a-f]{16}", report.epoch)
    assert report.epoch != OTHER_EPOCH
    assert (tmp_path / EPOCH_FILE).read_bytes() == report.epoch.encode() + b"\n"


def test_damaged_epoch_without_segments_is_not_replaced_by_the_hint(tmp_path: Path) -> None:
    """Without segments positions start again at the first one, so a damaged epoch is replaced
    by a new one, never by the hint (the file sink would take new events for archived ones)."""
    (tmp_path / EPOCH_FILE).write_bytes(b"garbage")
    report = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert kinds(report) == ["epoch"]
    assert re.fullmatch("[0-9a-f]{16}", report.epoch)
    assert report.epoch != OTHER_EPOCH


def test_valid_epoch_is_kept_whatever_the_hint(tmp_path: Path) -> None:
    """A valid epoch file is the epoch, even if the chain checkpoint names another (the WAL was
    wiped since: the checkpoint is of the old one)."""
    write_segment(tmp_path, 1)
    before = snapshot(tmp_path)
    report = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert report.epoch == EPOCH
    assert report.findings == []
    assert snapshot(tmp_path) == {**before, CURSOR_DIR: None}


def test_inspect_reports_a_damaged_epoch_and_changes_nothing(tmp_path: Path) -> None:
    """With repair=False a damaged epoch is reported as repair would fix it, and left alone."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).write_bytes(b"\x00" * 16)
    before = snapshot(tmp_path)
    inspected = recover(tmp_path, [], repair=False, epoch_hint=OTHER_EPOCH)
    assert snapshot(tmp_path) == before
    assert inspected.epoch == OTHER_EPOCH
    repaired = recover(tmp_path, [], epoch_hint=OTHER_EPOCH)
    assert inspected.findings == repaired.findings


def test_wal_opens_with_the_hinted_epoch_and_logs_the_damage(
    tmp_path: Path, logs: LogCapture
) -> None:
    """``Wal.open`` with a damaged epoch file succeeds, takes the hinted epoch, and logs an
    error-level ``wal_recovery`` entry."""
    write_segment(tmp_path, 1)
    (tmp_path / EPOCH_FILE).write_bytes(b"\xc3\x28 not utf-8")
    wal = Wal(tmp_path, BufferConfig())
    wal.open({"a": None}, epoch_hint=OTHER_EPOCH)
    assert wal.epoch == OTHER_EPOCH
    assert [(e["level"], e["kind"]) for e in logs.entries("wal_recovery")] == [
        ("info", "no_cursor"),
        ("error", "epoch"),
    ]
    assert wal.counters["recovery_epoch"] == 1
    wal.release()


# --- repair=False and idempotence --------------------------------------------------------------


def damaged_wal(directory: Path) -> None:
    """A WAL with one of every kind of damage in recovery's table."""
    (directory / segment_name(1)).write_bytes(b"garbage, not a header" + bytes(40))
    second = write_segment(directory, 2, tail=encode(b"next")[:5])  # older, cut: lost
    flip(second, offsets_of(PAYLOADS)[1] + 1)  # length field of the middle record
    write_segment(directory, 3, tail=bytes(100))  # zero-filled tail, also lost: 4 was begun
    (directory / segment_name(4)).write_bytes(header(4)[:6])  # newest, header cut short
    (directory / "stray.log").write_bytes(b"?")
    store_cursor(directory, "beyond", Position(3, 10_000))
    store_cursor(directory, "skipped", Position(2, offsets_of(PAYLOADS)[1] + 3))
    store_cursor(directory, "released", Position(2, H))
    (directory / CURSOR_DIR / "broken.json").write_bytes(b"{")


SINKS = ["beyond", "skipped", "broken", "missing"]


def test_damaged_wal_reports_every_kind(tmp_path: Path) -> None:
    """The all-damage WAL yields each kind of finding (so the repair=False test covers them all)."""
    damaged_wal(tmp_path)
    report = recover(tmp_path, SINKS)
    assert sorted(set(kinds(report))) == [
        "bad_cursor",
        "bad_segment",
        "corrupt",
        "cursor",
        "lost",
        "no_cursor",
        "released",
        "stray",
        "torn",
    ]
    start, end = offsets_of(PAYLOADS)[1], offsets_of(PAYLOADS)[2]
    assert report.cursors == {
        "beyond": Position(2, H),
        "skipped": Position(2, end),
        "broken": Position(2, H),
        "missing": Position(2, H),
    }
    assert report.segments == [
        SegmentInfo(2, segment_size(), 2, [(start, end)], events=2),
        SegmentInfo(3, segment_size(), 3, events=EVENTS),
    ]


def test_inspect_changes_nothing_but_reports_the_same(tmp_path: Path) -> None:
    """With repair=False no byte or file changes, and the report equals what repair then does."""
    damaged_wal(tmp_path)
    before = snapshot(tmp_path)
    inspected = recover(tmp_path, SINKS, repair=False)
    assert snapshot(tmp_path) == before
    repaired = recover(tmp_path, SINKS)
    assert snapshot(tmp_path) != before
    assert inspected.findings == repaired.findings
    assert inspected.segments == repaired.segments
    assert inspected.cursors == repaired.cursors


def test_inspect_of_missing_directory_creates_nothing(tmp_path: Path) -> None:
    """With repair=False a WAL directory that does not exist is not created."""
    directory = tmp_path / "wal"
    report = recover(directory, ["a"], repair=False)
    assert not directory.exists()
    assert report.cursors == {"a": Position(1, H)}
    assert report.findings == []


def test_second_recovery_finds_only_the_same_skips(tmp_path: Path) -> None:
    """Recovering a repaired WAL changes nothing and finds only the same skips (and strays) again."""
    damaged_wal(tmp_path)
    first = recover(tmp_path, SINKS)
    for sink, position in first.cursors.items():  # reset cursors are rewritten by recovery
        assert cursor.load(tmp_path / CURSOR_DIR, sink) == position
    quarantines = sorted(tmp_path.glob("*.quarantine"))
    assert len(quarantines) == 3  # a corrupt record, and the bytes after two cuts
    for quarantine in quarantines:
        os.utime(quarantine, ns=(10**18, 10**18))  # a rewrite would set the current time
    after_first = snapshot(tmp_path)
    second = recover(tmp_path, SINKS)
    assert snapshot(tmp_path) == after_first
    # Stray files stay (left alone) and corrupt ranges stay skipped, now as known quarantines.
    assert second.findings == [f for f in first.findings if f.kind == "stray"] + known_quarantines(
        first
    )
    assert second.by_kind("corrupt") == []
    assert second.segments == first.segments
    assert second.cursors == first.cursors
    assert sorted(tmp_path.glob("*.quarantine")) == quarantines
    assert all(quarantine.stat().st_mtime_ns == 10**18 for quarantine in quarantines)


# --- cursor files ------------------------------------------------------------------------------


def test_cursor_store_then_load(tmp_path: Path) -> None:
    """A stored cursor loads back as the same position, replaces the old one, and leaves no .tmp."""
    cursor.store(tmp_path, "archive", Position(3, 81920))
    assert cursor.load(tmp_path, "archive") == Position(3, 81920)
    cursor.store(tmp_path, "archive", Position(4, 16))
    assert cursor.load(tmp_path, "archive") == Position(4, 16)
    cursor.store(tmp_path, "other", Position(1, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.json", "other.json"]
    assert cursor.stored_sinks(tmp_path) == ["archive", "other"]
    assert cursor.load(tmp_path, "absent") is None


DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 30), st.integers(0, 255)),
)


#: Record payloads: mostly entries, some that only pass their checksums.
PAYLOAD = st.one_of(
    st.lists(st.text(st.characters(codec="ascii", exclude_characters='\n"\\\0')), min_size=1).map(
        lambda texts: entries(*texts)
    ),
    st.binary(min_size=1, max_size=20),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(PAYLOAD, max_size=5), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2), DAMAGE), max_size=4),
)
def test_any_damage_recovers_idempotently(
    segments: list[list[bytes]], damages: list[tuple[int, tuple[str, int, int]]]
) -> None:
    """For any damage to segments, inspect changes nothing and a second repair changes nothing
    (or, where the damage forged an earlier format's header, repair refuses)."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for number, payloads in enumerate(segments, start=1):
            write_segment(directory, number, payloads)
        for index, (kind, where, value) in damages:
            path = directory / segment_name(index % len(segments) + 1)
            data = bytearray(path.read_bytes())
            if kind == "flip" and data:
                data[where % len(data)] ^= 1 << value
            elif kind == "cut":
                del data[where % (len(data) + 1) :]
            elif kind == "append":
                data += bytes([value]) * where
            path.write_bytes(bytes(data))
        before = snapshot(directory)
        inspected = recover(directory, [], repair=False)
        assert snapshot(directory) == before
        if inspected.by_kind("other_version"):
            # Two flips in the version byte can forge an earlier format's header (2 -> 0 -> 1):
            # repair then refuses, as its table says, and there is no second repair.
            with pytest.raises(WalFormatError):
                recover(directory, [])
            return
        first = recover(directory, [])
        assert inspected.findings == first.findings
        assert inspected.segments == first.segments
        after_first = snapshot(directory)
        second = recover(directory, [])
        assert snapshot(directory) == after_first
        assert second.segments == first.segments
        assert second.findings == known_quarantines(first)
        for info in first.segments:
            size = (directory / segment_name(info.number)).stat().st_size
            assert size == info.size


# --- end to end: recovery, then a reader --------------------------------------------------------


async def written_wal(directory: Path, count: int) -> list[Path]:
    """A closed WAL holding events 1..count over several small segments; its segment files."""
    wal = open_wal(directory, segment_bytes=4096)
    for first in range(1, count + 1, 5):
        assert await wal.append(events(first, 5))
    await wal.close()
    wal.release()
    return segment_files(directory)


async def delivered(wal: Wal, sink: str = "a") -> list[int]:
    """Every event number ``sink``'s reader is handed until it has read all, acknowledging
    each batch."""
    reader = wal.readers[sink]
    seen: list[int] = []
    while reader.has_unread:
        batch = await reader.read()
        assert batch is not None
        seen.extend(numbers(batch))
        await reader.ack(batch.end)
    return seen


async def test_every_event_behind_a_damaged_middle_header_is_delivered(tmp_path: Path) -> None:
    """After one byte flips in the header of a middle segment, a restarted WAL still hands the
    sink every event that segment holds, once and in order."""
    segments = await written_wal(tmp_path, 60)
    assert len(segments) >= 3
    flip(segments[1], 9)  # the segment number
    wal = open_wal(tmp_path)
    assert wal.report is not None
    assert kinds(wal.report) == ["salvaged", "no_cursor"]  # no cursor yet: from the oldest
    assert await delivered(wal) == list(range(1, 61))
    await wal.close()
    wal.release()


async def test_every_retained_event_is_delivered_after_a_cursor_beyond_the_end(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A sink whose cursor points past the end of the WAL is handed every retained event again
    (at least once) instead of none, and the damage is logged at error."""
    await written_wal(tmp_path, 30)
    store_cursor(tmp_path, "a", Position(99, 4096))
    wal = open_wal(tmp_path)
    assert await delivered(wal) == list(range(1, 31))
    [entry] = logs.entries("wal_recovery")
    assert (entry["level"], entry["kind"], entry["segment"]) == ("error", "bad_cursor", 99)
    assert wal.counters["recovery_bad_cursor"] == 1
    await wal.close()
    wal.release()


async def test_daemon_starts_with_a_damaged_epoch_and_keeps_the_checkpoints(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With ``wal/epoch`` damaged between two runs, the daemon starts, keeps the epoch of the
    chain checkpoint (so the checkpoint is used, not a full replay) and archives each event
    once, in files of that one epoch."""
    lines = chain_lines(12)
    await run_once(tmp_path, b"".join(lines[:6]), expect=6)
    wal_dir = tmp_path / "var" / "wal"
    epoch = (wal_dir / EPOCH_FILE).read_bytes()
    (wal_dir / EPOCH_FILE).write_bytes(b"\xff\xfe damaged")
    await run_once(tmp_path, b"".join(lines[6:]), expect=12)
    assert (wal_dir / EPOCH_FILE).read_bytes() == epoch
    archived = [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]
    assert [e["record"]["sequence"] for e in archived] == list(range(1, 13))
    assert [e["chain"]["status"] for e in archived] == ["genesis"] + ["ok"] * 11
    files = list((tmp_path / "archive").glob("events-*.jsonl"))
    assert {f.name.rsplit("-", 1)[1] for f in files} == {epoch.decode().strip() + ".jsonl"}
    [found] = logs.entries("wal_recovery")
    assert (found["level"], found["kind"]) == ("error", "epoch")
    assert logs.entries("chain_state_loaded")[-1]["checkpoint"] is not None
    assert logs.entries("chain_checkpoint_other_wal") == []


# --- readers -----------------------------------------------------------------------------------


async def test_reader_steps_over_a_record_that_holds_no_entries(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A CRC-valid record whose payload is not entries (written after recovery scanned the
    segment) is stepped over as corrupt, logged at error and counted, and holds no event in the
    batches' counts; the rest is delivered."""
    wal = open_wal(tmp_path)
    for first in (1, 4, 7):
        assert await wal.append(events(first, 3))
    path = tmp_path / segment_name(wal.committed.segment)
    data = path.read_bytes()
    middle = [item for item in scan(data, H) if isinstance(item, Record)][1]
    size = middle.end - middle.offset
    foreign = encode(b'{"v":1,"id":"1-40"}'.ljust(size - HEADER_SIZE, b" "))  # WAL format 1
    overwrite(path, middle.offset, foreign)
    reader = wal.readers["a"]
    delivered: list[int] = []
    counted = 0
    while reader.has_unread:
        batch = await reader.read()
        assert batch is not None
        delivered.extend(numbers(batch))
        counted += batch.events
    assert delivered == [1, 2, 3, 7, 8, 9]
    assert counted == 6
    assert reader.counters["corrupt_bytes"] == size
    [entry] = logs.entries("wal_corrupt_while_reading")
    assert (entry["level"], entry["offset"], entry["size"]) == ("error", middle.offset, size)
    await wal.close()
    wal.release()


def kept_payloads(directory: Path, report: Report) -> list[bytes]:
    """The payloads a reader would be handed from the recovered WAL: every record outside the
    skipped ranges of each segment recovery kept, in order."""
    kept: list[bytes] = []
    for info in report.segments:
        data = (directory / segment_name(info.number)).read_bytes()
        skipped = {start for start, _end in info.skips}
        kept.extend(
            item.payload
            for item in scan(data, H)
            if isinstance(item, Record) and item.offset not in skipped
        )
    return kept


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.sampled_from(["flip", "cut"]),
    st.integers(0, 2**16),
    st.integers(0, 7),
)
def test_one_damage_loses_only_the_records_it_touches(
    sizes: list[int], damage: str, where: int, bit: int
) -> None:
    """One flipped bit (header included) or one cut anywhere in a WAL loses exactly the records
    whose bytes it touched; every other record is still handed to readers, in order."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        segments = [
            [entries(f"segment {number} record {i}") for i in range(size)]
            for number, size in enumerate(sizes, start=1)
        ]
        for number, payloads in enumerate(segments, start=1):
            write_segment(directory, number, payloads)
        target = where % len(segments)
        payloads = segments[target]
        path = directory / segment_name(target + 1)
        data = bytearray(path.read_bytes())
        at = where % len(data)
        if damage == "flip":
            data[at] ^= 1 << bit
        else:
            del data[at:]
        path.write_bytes(bytes(data))

        def touched(start: int, payload: bytes) -> bool:
            end = start + HEADER_SIZE + len(payload)
            return start <= at < end if damage == "flip" else end > at

        expected = [
            payload
            for index, segment in enumerate(segments)
            for start, payload in zip(offsets_of(segment), segment, strict=True)
            if index != target or not touched(start, payload)
        ]
        report = recover(directory, [])
        assert kept_payloads(directory, report) == expected
        assert sum(info.events for info in report.segments) == len(expected)
