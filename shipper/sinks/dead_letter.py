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
"""

from __future__ import annotations

from pathlib import Path

import orjson

from shipper.buffer.segment import fsync_dir, replace_file
from shipper.events import utc_timestamp
from shipper.sinks.base import Batch

#: Longest reason kept (a destination's error text can be a whole page).
MAX_REASON = 2000
#: Longest answer kept (a receiver's error page can be large).
MAX_ANSWER = 4000
DIRECTORY = "dead_letter"


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
