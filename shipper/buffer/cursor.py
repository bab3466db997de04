"""Sink cursors: how far each sink has delivered, persisted atomically.

``<wal dir>/cursors/<sink id>.json`` holds one JSON object::

    {"v": 1, "sink": "archive", "segment": 3, "offset": 81920}

meaning: every record before (segment, offset) has been delivered by that sink and acknowledged.
A cursor is written to ``<sink id>.json.tmp``, fsynced, renamed over the old one, and the directory
fsynced, so a crash leaves either the old cursor or the new one, never a mix. A cursor that is
missing, unreadable, or of another sink counts as absent: the sink starts from the oldest retained
record (at-least-once), and recovery says so with a warning. A cursor that reads well but points
where no sink could have stopped (beyond the end of the WAL, past the end of its segment, or not
at a record boundary) is damage: the sink starts from the oldest retained record too, and
recovery reports it as an error (``shipper.buffer.recovery``).
"""

from __future__ import annotations

from pathlib import Path

import orjson

from shipper.buffer.segment import Position, read_object, replace_file

SUFFIX = ".json"


def cursor_path(directory: Path, sink_id: str) -> Path:
    return directory / f"{sink_id}{SUFFIX}"


def load(directory: Path, sink_id: str) -> Position | str | None:
    """The persisted position; None if there is no cursor; a reason string if it is unusable."""
    path = cursor_path(directory, sink_id)
    data = read_object(path)
    if data is None or isinstance(data, str):
        return data
    if (
        data.get("v") != 1
        or data.get("sink") != sink_id
        or not isinstance(data.get("segment"), int)
        or not isinstance(data.get("offset"), int)
        or data["segment"] < 1
        or data["offset"] < 0
    ):
        return f"{path} is corrupt: not a cursor of this sink"
    return Position(data["segment"], data["offset"])


def store(directory: Path, sink_id: str, position: Position) -> None:
    """Persist ``position`` atomically and durably (blocking: run it in a worker thread)."""
    data = orjson.dumps(
        {"v": 1, "sink": sink_id, "segment": position.segment, "offset": position.offset}
    )
    replace_file(cursor_path(directory, sink_id), data)


def stored_sinks(directory: Path) -> list[str]:
    """The sink ids that have a cursor file."""
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}"))
