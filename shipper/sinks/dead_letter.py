"""The dead-letter area: what a sink's destination refused for good, kept with the reason.

Layout, under ``data_dir``::

    dead_letter/<sink id>/<epoch>-<first id>-<last id>.jsonl     one file per refused batch

``<first id>`` and ``<last id>`` are the ids (WAL positions, ``<segment>-<offset>``) of the
batch's first and last envelopes, ``<epoch>`` the WAL's lifetime they belong to
(``Wal.epoch``). Each line is one refused envelope, LF-ended::

    {"v":1,"sink":"hook","refused_at":"2026-11-23T17:55:00.123456Z","reason":"...",
     "status":400,"answer":"...",
     "envelope":{...the envelope exactly as the WAL gave it to the sink...}}

(one line in the file). ``reason`` is the sink's account of the refusal, at most
``MAX_REASON`` characters. ``status`` and ``answer`` are there only when the sink knew them
(``DestinationRejected.status`` and ``.answer``): the destination's status (an HTTP status code
as a number, or a protocol's error code as a string) and what it answered (an HTTP response
body, decoded as UTF-8 with bad bytes replaced), at most ``MAX_ANSWER`` characters.

Rules:

* A file is written whole: to ``<name>.tmp``, fsynced, renamed, and the directory fsynced, all
  before the driver acknowledges the batch to the WAL. A crash leaves the batch in the WAL (it
  comes again and is refused again) or its file complete, never half a file.
* The same batch refused again (after a crash before its acknowledgement) replaces its file:
  each envelope is kept once, provided the batch was cut the same way; a batch cut differently
  after a restart may leave an envelope in two files (their ids tell).
* Nothing here is deleted by shipper; the operator reads, replays or removes the files.
  ``shipper dead-letter replay`` moves a file it delivered whole into ``replayed/`` beside it
  (same name), so it is neither sent twice nor lost.
* Readers find each line's envelope as the bytes after the first ``,"envelope":`` up to the
  closing ``}`` (the fields before it are JSON strings and numbers, in which that sequence cannot
  occur unescaped), so a replay sends the envelope exactly as it was refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shipper.buffer.segment import fsync_dir, replace_file
from shipper.events import utc_timestamp
from shipper.sinks.base import Batch

#: Longest reason kept (a destination's error text can be a whole page).
MAX_REASON = 2000
#: Longest answer kept (a receiver's error page can be large).
MAX_ANSWER = 4000
DIRECTORY = "dead_letter"
#: Where ``replay`` moves a file it delivered, inside the sink's directory.
REPLAYED = "replayed"
_ENVELOPE_KEY = b',"envelope":'
_NAME_RE = re.compile(r"(?P<epoch>[0-9a-f]*)-(?P<first>\d+-\d+)-(?P<last>\d+-\d+)\.jsonl")


class LetterError(ValueError):
    """A dead-letter file that is not in the format above (damaged, or not shipper's)."""


@dataclass(slots=True)
class Letter:
    """One dead-letter file: what its name and lines say."""

    path: Path
    epoch: str
    first: str
    last: str
    envelopes: list[bytes] = field(default_factory=list)
    #: Each line's fields besides the envelope (``refused_at``, ``reason``, and what else the
    #: sink recorded: an HTTP status, the receiver's answer).
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def read(cls, path: Path) -> Letter:
        """The file at ``path``, parsed. Raises LetterError, or OSError if it cannot be read."""
        match = _NAME_RE.fullmatch(path.name)
        if match is None:
            raise LetterError(f"{path.name}: not a dead-letter file name")
        letter = cls(path, match["epoch"], match["first"], match["last"])
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            at = line.find(_ENVELOPE_KEY)
            if at < 0 or not line.endswith(b"}"):
                raise LetterError(f"{path.name}:{number}: no envelope in the line")
            try:
                details = orjson.loads(line[:at] + b"}")
                envelope = line[at + len(_ENVELOPE_KEY) : -1]
                orjson.loads(envelope)
            except orjson.JSONDecodeError as exc:
                raise LetterError(f"{path.name}:{number}: not JSON: {exc}") from exc
            letter.details.append(details)
            letter.envelopes.append(envelope)
        return letter


def letters(data_dir: Path, sink_id: str) -> list[Path]:
    """The dead-letter files of ``sink_id``, oldest first (by when they were written, then by
    WAL range); none if it has none."""
    directory = data_dir / DIRECTORY / sink_id
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [directory / name for name in names if _NAME_RE.fullmatch(name)]
    return sorted(found, key=_age_key)


def _age_key(path: Path) -> tuple[int, int, int]:
    match = _NAME_RE.fullmatch(path.name)
    assert match is not None
    segment, _, offset = match["first"].partition("-")
    try:
        written = path.stat().st_mtime_ns
    except FileNotFoundError:  # replayed or removed meanwhile
        written = 0
    return written, int(segment), int(offset)


def mark_replayed(path: Path) -> Path:
    """Move a delivered file into ``replayed/`` beside it, durably; its new path (blocking)."""
    target = path.parent / REPLAYED
    if not target.is_dir():
        target.mkdir(exist_ok=True)
        fsync_dir(path.parent)
    moved = target / path.name
    os.replace(path, moved)
    fsync_dir(target)
    fsync_dir(path.parent)
    return moved


class DeadLetters:
    """One sink's dead-letter directory."""

    def __init__(self, data_dir: Path, sink_id: str) -> None:
        self.directory = data_dir / DIRECTORY / sink_id
        self.sink_id = sink_id

    def write(
        self,
        batch: Batch,
        reason: str,
        epoch: str,
        status: int | str | None = None,
        answer: str | None = None,
    ) -> Path:
        """Keep ``batch`` with ``reason`` (and the destination's ``status`` and ``answer`` when
        known), durably; the file's path (blocking: run it in a worker thread). Raises OSError
        if the disk refuses."""
        fields: dict[str, object] = {
            "v": 1,
            "sink": self.sink_id,
            "refused_at": utc_timestamp(),
            "reason": reason[:MAX_REASON],
        }
        if status is not None:
            fields["status"] = status
        if answer is not None:
            fields["answer"] = answer[:MAX_ANSWER]
        head = orjson.dumps(fields)
        prefix = head[:-1] + b',"envelope":'
        data = b"".join(prefix + envelope + b"}\n" for envelope in batch.envelopes)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)  # dead_letter/ holds the sink's directory now
            fsync_dir(self.directory.parent.parent)  # and data_dir holds dead_letter/
        path = self.directory / f"{epoch}-{batch.first}-{batch.last}.jsonl"
        replace_file(path, data)
        return path
