"""Recovery: bring a WAL directory into a consistent state before the daemon (or ``buffer repair``)
uses it, and report everything it found. Never a crash loop, never a silent loss.

=====================================  ==========================================================
found                                  outcome
=====================================  ==========================================================
torn record at the end of the newest   truncated away (it was never acknowledged under
segment (interrupted append,           ``fsync = "batch"``); logged with its size ("torn")
zero-filled tail)
torn record at the end of an older     accepted data is gone: the segment was whole when the
segment (cut short)                    next one began ("lost", an error, with the offset where
                                       its valid records end and the size of what is left
                                       after them); those bytes are copied to
                                       ``<segment>.<offset>.quarantine``, then cut off
corrupt bytes between valid records    copied to ``<segment>.<offset>.quarantine`` beside the
                                       segment, skipped by every reader, counted ("corrupt";
                                       at later starts "quarantined" until the segment goes)
segment of an earlier format version   refuses the start (``WalFormatError``), nothing changed
segment with a bad header (magic or    its records carry their own checksums: if any is whole
number) and valid records after it     and holds entries, the segment is kept ("salvaged"):
                                       the damaged 16 bytes are copied to
                                       ``<segment>.0.quarantine``, the header is rewritten in
                                       place, and its records are read as in any segment, except
                                       that one whose checksum is right but whose payload is not
                                       entries (say, a record of WAL format 1 behind a damaged
                                       version byte) is quarantined like corrupt bytes, now and
                                       at later starts (a reader would not know what to do with
                                       it)
segment with a bad header and no       renamed to ``<name>.corrupt`` (kept for inspection);
valid record                           a header cut short in the newest segment is torn
                                       creation and the file is removed
no cursor file for a configured sink   normal, not damage ("no_cursor", info): a sink that
                                       has acknowledged nothing yet (or was just added); it
                                       starts at the oldest retained record, and the cursor is
                                       written
unreadable cursor                      the sink starts at the oldest retained record
                                       (at-least-once), with a warning ("cursor"); the cursor
                                       is rewritten
cursor that cannot be where its sink   damaged ("bad_cursor", an error): the sink starts at
stopped: beyond the end of the WAL,    the oldest retained record (at least once: the file
past the end of its segment, or not    sink recognises what it had written); the cursor is
at a record boundary                   rewritten
cursor of a sink no longer configured  released (its file removed), so it holds no segment
damaged ``epoch`` file (not 16         kept as ``epoch.corrupt``; the epoch is taken from the
lowercase hex digits, unreadable)      best evidence, the chain checkpoint's epoch
                                       (``epoch_hint``), else a new one is started, and the
                                       file is written again ("epoch", an error: with a new
                                       epoch the file sink may archive again what it had not
                                       acknowledged, and a chain checkpoint of the old epoch
                                       makes the chain stage replay the whole WAL)
``epoch`` file missing while the WAL   the same, without a copy ("epoch_missing", a warning); a
holds segments                         new WAL directory simply gets its epoch
stray files                            left alone, listed
=====================================  ==========================================================

With ``repair=False`` (``shipper buffer inspect``) nothing is changed; the report says what
recovery would do.

The WAL directory: segments (``shipper.buffer.segment``), ``cursors/`` (``shipper.buffer.cursor``),
``lock`` (held by the one process using the WAL), ``head``, ``layout`` and ``wake/`` (the writer's,
for its readers: ``shipper.buffer.published``, ``shipper.buffer.wake``; recovery leaves them to
the writer, which writes them anew at each open), and ``epoch``: 16 lowercase hex digits and LF,
made when the directory is first used. The epoch names the directory's lifetime: positions (event
ids) start again in a new WAL, so the file sink and the chain checkpoint only trust positions of
the epoch they were written in.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shipper.buffer import cursor as cursors
from shipper.buffer.entries import count, holds_entries
from shipper.buffer.published import HEAD_FILE, LAYOUT_FILE
from shipper.buffer.record import Corrupt, Record, Torn, scan
from shipper.buffer.segment import (
    FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    Position,
    fsync_dir,
    header,
    header_ok,
    other_version,
    replace_file,
    segment_name,
    segment_number,
)
from shipper.buffer.wake import WAKE_DIR
from shipper.errors import ShipperError

CURSOR_DIR = "cursors"
LOCK_FILE = "lock"
EPOCH_FILE = "epoch"
#: Files of the WAL directory besides segments, quarantines and set-aside files.
KNOWN_FILES: Final = (
    CURSOR_DIR,
    LOCK_FILE,
    EPOCH_FILE,
    HEAD_FILE,
    LAYOUT_FILE,
    LAYOUT_FILE + ".tmp",
    WAKE_DIR,
)


#: What ``wal/epoch`` holds: 16 lowercase hex digits (``secrets.token_hex(8)``), then LF.
_EPOCH: Final = re.compile(rb"[0-9a-f]{16}\n?")


def valid_epoch(epoch: str) -> bool:
    """Whether ``epoch`` is one this shipper could have made (also safe in a file name)."""
    return re.fullmatch("[0-9a-f]{16}", epoch) is not None


def read_epoch(directory: Path) -> tuple[str | None, str | None]:
    """The WAL's epoch from ``directory/epoch``: (epoch, None); (None, None) if there is no
    such file; (None, why) if it is damaged (never raises for what the file holds)."""
    path = directory / EPOCH_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if _EPOCH.fullmatch(raw) is None:
        return None, f"holds {raw[:40]!r}, not 16 lowercase hex digits"
    return raw.decode().strip(), None


class WalFormatError(ShipperError):
    """The WAL directory holds segments of a format this shipper does not read: the operator
    must let the version that wrote them deliver them first. Retrying does not help."""


@dataclass
class SegmentInfo:
    number: int
    size: int  # bytes of valid data (header + records) after recovery
    records: int
    skips: list[tuple[int, int]] = field(default_factory=list)  # corrupt ranges [start, end)
    events: int = 0  # entries in those records


#: The log level of each kind of finding (``Wal.open`` logs them as ``wal_recovery``; the others
#: are warnings): info for what loses nothing, error for accepted data lost.
LEVELS: Final = {
    "quarantined": "info",
    "no_cursor": "info",
    "released": "info",
    "stray": "info",
    "lost": "error",
    "bad_cursor": "error",
    "epoch": "error",
    "other_version": "error",  # (only buffer inspect reports it: it refuses a start)
}


@dataclass
class Finding:
    kind: str  # "torn", "lost", "corrupt", "quarantined", "salvaged", "bad_segment",
    # "other_version", "no_cursor", "cursor", "bad_cursor", "epoch", "epoch_missing", "released",
    # "stray"
    detail: str
    segment: int | None = None
    offset: int | None = None
    size: int | None = None

    @property
    def level(self) -> str:
        """How loud this finding is logged: "info", "warning" or "error"."""
        return LEVELS.get(self.kind, "warning")


@dataclass
class Report:
    directory: Path
    segments: list[SegmentInfo] = field(default_factory=list)
    cursors: dict[str, Position] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    #: The highest segment number ever seen here (bad segments included): new ones go above it.
    highest: int = 0
    #: The stored cursor positions found at a record boundary (or at the end) of their segment.
    boundaries: set[Position] = field(default_factory=set)
    #: The WAL's epoch (``wal/epoch``) as recovered; "" if there is none yet (``repair=False``).
    epoch: str = ""

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def oldest(self) -> Position:
        first = self.segments[0].number if self.segments else 1
        return Position(first, SEGMENT_HEADER_SIZE)

    def lag_bytes(self, position: Position) -> int:
        """Bytes of records at or after ``position`` (what a sink there has not acknowledged)."""
        lag = 0
        for info in self.segments:
            if info.number > position.segment:
                lag += info.size - SEGMENT_HEADER_SIZE
            elif info.number == position.segment:
                lag += max(0, info.size - position.offset)
        return lag

    @property
    def damaged(self) -> bool:
        """Whether anything was found that lost, skipped or reset data."""
        return any(
            f.kind
            in (
                "torn",
                "lost",
                "corrupt",
                "salvaged",
                "bad_segment",
                "other_version",
                "cursor",
                "bad_cursor",
                "epoch",
                "epoch_missing",
            )
            for f in self.findings
        )

    @property
    def end(self) -> Position:
        if not self.segments:
            return Position(1, SEGMENT_HEADER_SIZE)
        last = self.segments[-1]
        return Position(last.number, last.size)


def recover(
    directory: Path,
    sink_ids: Sequence[str],
    repair: bool = True,
    epoch_hint: str | None = None,
) -> Report:
    """Scan (and with ``repair``, fix) the WAL in ``directory``; the state the WAL starts from.

    ``epoch_hint``: the epoch the WAL most likely has (the chain checkpoint's), used if the
    ``epoch`` file is damaged or missing.
    """
    report = Report(directory)
    if repair:
        (directory / CURSOR_DIR).mkdir(parents=True, exist_ok=True)
    if not directory.is_dir():
        report.cursors = dict.fromkeys(sink_ids, report.oldest)
        return report
    numbers: list[int] = []
    for path in sorted(directory.iterdir()):
        number = segment_number(path.name)
        if number is not None:
            numbers.append(number)
        elif path.name.endswith(".seg.corrupt"):
            bad = segment_number(path.name.removesuffix(".corrupt"))
            report.highest = max(report.highest, bad or 0)
        elif path.name not in KNOWN_FILES and not path.name.endswith((".quarantine", ".corrupt")):
            report.findings.append(Finding("stray", f"unknown file left alone: {path.name}"))
    numbers.sort()
    report.highest = max([report.highest, *numbers])
    loaded = {sink: cursors.load(directory / CURSOR_DIR, sink) for sink in sink_ids}
    targets: dict[int, set[int]] = {}  # the cursors' offsets, by segment: are they boundaries?
    for position in loaded.values():
        if isinstance(position, Position):
            targets.setdefault(position.segment, set()).add(position.offset)
    for index, number in enumerate(numbers):
        info = _recover_segment(
            report, number, index == len(numbers) - 1, repair, targets.get(number, set())
        )
        if info is not None:
            report.segments.append(info)
    _recover_cursors(report, loaded, repair)
    _recover_epoch(report, epoch_hint, repair)
    if repair:
        fsync_dir(directory)
    return report


def _recover_epoch(report: Report, hint: str | None, repair: bool) -> None:
    """Read ``epoch``; if it is damaged (or missing while the WAL holds segments), take the
    best evidence of what it was (``hint``), else start a new one; with ``repair``, write it."""
    path = report.directory / EPOCH_FILE
    epoch, damage = read_epoch(report.directory)
    if epoch is not None:
        report.epoch = epoch
        return
    if report.highest == 0 or hint is None or not valid_epoch(hint):
        # Without segments, positions start again at the first one: an old epoch (of a wiped
        # WAL, say) would make the file sink take new events for ones it had archived.
        hint = None
    if damage is not None or report.highest > 0:
        if hint is not None:
            outcome = (
                f"the chain checkpoint's epoch {hint} is used, so the sinks and the checkpoint "
                "go on as before"
            )
        else:
            outcome = (
                "a new epoch is started (no chain checkpoint tells the old one): the file sink "
                "may archive again events it had written but not acknowledged, and a chain "
                "checkpoint of the old epoch would make the chain stage replay the whole WAL"
            )
        if damage is not None:
            aside, number = path.with_name(EPOCH_FILE + ".corrupt"), 0
            while aside.exists() or aside.is_symlink():  # keep the copies of earlier damage
                number += 1
                aside = path.with_name(f"{EPOCH_FILE}.{number}.corrupt")
            report.findings.append(
                Finding("epoch", f"{EPOCH_FILE} {damage}; kept as {aside.name}; {outcome}")
            )
            if repair:
                path.rename(aside)
        else:
            report.findings.append(
                Finding(
                    "epoch_missing",
                    f"{EPOCH_FILE} is missing but the WAL holds segments; {outcome}",
                )
            )
    # else: a new WAL directory, which gets its epoch now
    if not repair:
        report.epoch = hint or ""
        return
    report.epoch = hint or secrets.token_hex(8)
    replace_file(path, report.epoch.encode() + b"\n")


def _recover_segment(
    report: Report, number: int, last: bool, repair: bool, targets: set[int]
) -> SegmentInfo | None:
    """Scan (and repair) one segment; its state, or None if it is set aside. ``targets``: the
    offsets of cursors in this segment; those at a record boundary go into the report."""
    directory = report.directory
    path = directory / segment_name(number)
    data = path.read_bytes()
    version = other_version(data, number)
    if version is not None:
        detail = (
            f"{path.name} is in WAL format version {version}; this shipper reads version "
            f"{FORMAT_VERSION}. Let the shipper that wrote it deliver it (or move it away)."
        )
        if repair:
            raise WalFormatError(detail)
        report.findings.append(Finding("other_version", detail, number, 0, len(data)))
        return None
    salvage = False
    if not header_ok(data, number):
        if last and len(data) < SEGMENT_HEADER_SIZE:
            report.findings.append(
                Finding(
                    "torn",
                    "segment created but its header never written; removed",
                    number,
                    0,
                    len(data),
                )
            )
            if repair:
                path.unlink()
            return None
        # The records carry their own checksums: if any of them is whole and holds entries,
        # the header alone is damaged, and they are kept.
        salvage = any(
            isinstance(item, Record) and holds_entries(item.payload)
            for item in scan(data, SEGMENT_HEADER_SIZE)
        )
        if not salvage:
            report.findings.append(
                Finding(
                    "bad_segment",
                    f"bad segment header; renamed to {path.name}.corrupt",
                    number,
                    0,
                    len(data),
                )
            )
            if repair:
                path.rename(path.with_name(path.name + ".corrupt"))
            return None
    kept_header = path.with_name(f"{path.name}.0.quarantine")
    # Records behind a header this shipper wrote are entries (and a reader steps over one that
    # is not); behind a damaged header, now or at an earlier start, each is checked.
    check = salvage or kept_header.exists()
    first_finding = len(report.findings)
    info = SegmentInfo(number, len(data), 0)
    boundaries: set[int] = set()
    for item in scan(data, SEGMENT_HEADER_SIZE):
        if item.offset in targets:
            boundaries.add(item.offset)
        if isinstance(item, Record) and (not check or holds_entries(item.payload)):
            info.records += 1
            info.events += count(item.payload)
        elif isinstance(item, Record | Corrupt):
            if isinstance(item, Corrupt):
                reason, raw = "bad checksum", item.raw
            else:  # never handed to a reader: it would not know what to do with it
                reason, raw = "checksum valid but not WAL entries", data[item.offset : item.end]
            _quarantine(report, path, info, item.offset, raw, reason, repair)
        elif isinstance(item, Torn):
            info.size = item.offset
            if last:
                report.findings.append(
                    Finding(
                        "torn",
                        "torn record at the end of the segment; truncated",
                        number,
                        item.offset,
                        item.size,
                    )
                )
            else:
                # A later segment exists, so this one was whole and fsynced when it was left:
                # what followed the cut was accepted data, and it is gone.
                cut = path.with_name(f"{path.name}.{item.offset}.quarantine")
                report.findings.append(
                    Finding(
                        "lost",
                        f"segment {number} is cut short: its valid records end at offset "
                        f"{item.offset} and the rest of the segment is missing; the "
                        f"{item.size} bytes after them are quarantined in {cut.name} and cut off",
                        number,
                        item.offset,
                        item.size,
                    )
                )
                if repair:
                    _write_durably(cut, data[item.offset :])
            if repair:
                with open(path, "r+b") as file:
                    file.truncate(item.offset)
                    os.fsync(file.fileno())
    boundaries.add(info.size)  # the end, where a sink that delivered everything rests
    report.boundaries.update(Position(number, offset) for offset in boundaries & targets)
    if salvage:
        report.findings.insert(
            first_finding,
            Finding(
                "salvaged",
                f"bad segment header ({data[:SEGMENT_HEADER_SIZE].hex()}, expected "
                f"{header(number).hex()}); its {info.events} events in {info.records} records "
                f"pass their checksums and are kept: header rewritten, the damaged one kept in "
                f"{kept_header.name}",
                number,
                0,
                SEGMENT_HEADER_SIZE,
            ),
        )
        if repair:
            _write_durably(kept_header, data[:SEGMENT_HEADER_SIZE])
            with open(path, "r+b") as file:
                file.write(header(number))
                os.fsync(file.fileno())
    return info


def _quarantine(
    report: Report,
    path: Path,
    info: SegmentInfo,
    offset: int,
    raw: bytes,
    reason: str,
    repair: bool,
) -> None:
    """Skip the bytes ``raw`` at ``offset`` of the segment at ``path``, copied beside it."""
    quarantine = path.with_name(f"{path.name}.{offset}.quarantine")
    known = quarantine.exists()
    report.findings.append(
        Finding(
            "quarantined" if known else "corrupt",
            f"{reason}; {len(raw)} bytes "
            + ("skipped, quarantined earlier" if known else "quarantined")
            + f" in {quarantine.name}",
            info.number,
            offset,
            len(raw),
        )
    )
    info.skips.append((offset, offset + len(raw)))
    if repair and not known:
        quarantine.write_bytes(raw)


def _write_durably(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with ``data``, fsynced (the directory is fsynced by the caller)."""
    with open(path, "wb") as file:
        file.write(data)
        os.fsync(file.fileno())


def _recover_cursors(
    report: Report, loaded: dict[str, Position | str | None], repair: bool
) -> None:
    directory = report.directory / CURSOR_DIR
    sizes = {info.number: info for info in report.segments}
    for sink, stored in loaded.items():
        position = report.oldest
        if stored is None:
            if report.segments:
                report.findings.append(
                    Finding(
                        "no_cursor",
                        f"sink {sink}: no cursor yet (nothing acknowledged); starts at the oldest "
                        f"record {position}",
                    )
                )
        elif isinstance(stored, str):
            report.findings.append(
                Finding("cursor", f"sink {sink}: {stored}; starts at the oldest record {position}")
            )
        elif stored.segment >= report.oldest.segment:  # (before it: segments it had passed)
            damage = _cursor_damage(report, stored, sizes.get(stored.segment))
            if damage is None:
                position = stored
            else:
                report.findings.append(
                    Finding(
                        "bad_cursor",
                        f"sink {sink}: cursor {stored} {damage}; starts at the oldest record "
                        f"{position} (what it had delivered comes again)",
                        stored.segment,
                        stored.offset,
                    )
                )
        info = sizes.get(position.segment)
        for start, end in info.skips if info is not None else ():
            if start <= position.offset < end:  # never rest inside a quarantined range
                position = Position(position.segment, end)
        report.cursors[sink] = position
        if repair and report.segments and stored != position:
            cursors.store(directory, sink, position)  # so that the next start agrees
    for stored in cursors.stored_sinks(directory):
        if stored not in loaded:
            report.findings.append(
                Finding(
                    "released", f"sink {stored} is no longer configured; its cursor is released"
                )
            )
            if repair:
                cursors.cursor_path(directory, stored).unlink(missing_ok=True)


def _cursor_damage(report: Report, position: Position, info: SegmentInfo | None) -> str | None:
    """Why a stored cursor (at or after the oldest segment) cannot be where its sink stopped,
    or None if it can: no sink acknowledges beyond the records the WAL holds, or mid-record."""
    if not report.segments:
        return "points into a WAL that holds no segment"
    if info is None:
        if position.segment > report.highest:
            return f"is beyond the end of the WAL ({report.end})"
        return None  # its segment was set aside (or never begun): the reader goes on after it
    if position.offset > info.size:
        if info is report.segments[-1]:
            return f"is beyond the end of the WAL ({report.end})"
        return f"is past the end of segment {info.number} ({info.size} bytes)"
    if position not in report.boundaries and not any(
        start <= position.offset < end for start, end in info.skips
    ):
        return f"is not at a record boundary of segment {info.number}"
    return None
