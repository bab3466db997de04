"""The daemon's own logs: one JSON object per line on stderr (journald keeps it), apart from the
audit stream.

Entries carry ``ts`` (RFC 3339 UTC), ``level``, ``logger`` and a stable snake_case ``event`` name
(``shipper_ready``, ``connection_refused``, ...) plus fields; the event names are an interface
(alerting rules match on them), so change them only with a note in the README. Records of other
libraries that log through the standard ``logging`` module come out in the same JSON shape.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import orjson
from pythonjsonlogger.json import JsonFormatter

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: How much of a value orjson cannot write an entry keeps, as its ``repr``.
_REPR_KEPT = 1000


def _dumps(entry: dict[str, Any], **_: Any) -> str:
    """An entry (shipper's own, or a stdlib record's fields) as one line of JSON. A value orjson
    cannot write (an integer past 64 bits, nesting past its depth limit) goes in as its
    ``repr``, cut at ``_REPR_KEPT`` characters: logging never fails over what a field holds."""
    try:
        return orjson.dumps(entry, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps({str(key): _writable(value) for key, value in entry.items()}).decode()


def _writable(value: Any) -> Any:
    """``value`` if orjson writes it, else its ``repr`` (cut at ``_REPR_KEPT`` characters)."""
    try:
        orjson.dumps(value, default=str)
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)[:_REPR_KEPT]
    return value


#: Where ``configure`` sends the entries (None: not configured, stderr).
_stream: TextIO | None = None
#: The least level an entry of shipper's own has to be written (``configure``; info until then).
_threshold = logging.INFO
#: One entry is one whole line, whichever thread writes it (the WAL's threads log too).
_write_lock = threading.Lock()


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send shipper's entries and stdlib ``logging`` records to ``stream`` as JSON."""
    global _stream, _threshold
    out = _stream = stream if stream is not None else sys.stderr
    levelno = _threshold = _LEVELS[level]
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            json_serializer=_dumps,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(levelno, logging.INFO))
    for name in _PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if levelno <= logging.DEBUG else logging.WARNING
        )


def reset() -> None:
    """Undo ``configure`` (for tests that configured the logs into a stream they close)."""
    global _stream, _threshold
    _stream, _threshold = None, logging.INFO
    logging.getLogger().handlers.clear()


def write_entry(line: str) -> None:
    """Write an entry another process rendered (a sink process's) where this one's go, as one
    whole line among this process's own (``Logger``)."""
    with _write_lock:
        print(line, file=_stream if _stream is not None else sys.stderr, flush=True)


#: Libraries that log every HTTP request at INFO (the S3 client: two lines per archived object):
#: their warnings and errors are kept, their per-request lines only at level "debug".
_PER_REQUEST_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2")


class Logger:
    """A named logger: each entry is one JSON object on a line, its keys in this order:
    ``logger``, the entry's fields as given, ``event``, ``level``, ``ts`` (RFC 3339 UTC, with
    microseconds), and ``exception`` (the formatted traceback) when ``exception`` is called or
    an ``exc_info`` field holds an exception. Entries below the level ``configure`` set are
    dropped. Modules create theirs at import time, before ``configure()`` runs: each entry is
    written where the configuration in force when it is logged says."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, levelno: int, level: str, event: str, fields: dict[str, Any]) -> None:
        if levelno < _threshold:
            return
        entry: dict[str, Any] = {"logger": self.name, **fields}
        exc_info = entry.pop("exc_info", None)
        entry["event"] = event
        entry["level"] = level
        entry["ts"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        found = _exc_info(exc_info)
        if found is not None:
            entry["exception"] = "".join(traceback.format_exception(*found)).rstrip("\n")
        write_entry(_dumps(entry))

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error entry with the current exception's traceback."""
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, fields)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(value: Any) -> ExcInfo | None:
    """An ``exc_info`` field as the exception to format: an exception, an ``exc_info`` tuple,
    or anything true for the one being handled; None for none."""
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[1], BaseException)
        and isinstance(value[0], type)
    ):
        return value[0], value[1], value[2]
    if value:
        current = sys.exc_info()
        if current[1] is not None:
            return type(current[1]), current[1], current[2]
    return None


def get_logger(name: str) -> Logger:
    """A logger whose entries name ``name`` as their ``logger``."""
    return Logger(name)


class Throttle:
    """At most ``limit`` entries a second for one kind of log line (a flood of bad input must
    not flood the journal): ``allow(now)`` returns how many were left out since the last entry
    that was logged, or None when this one is to be left out too."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._window = -float("inf")
        self._logged = 0
        self._left_out = 0

    def allow(self, now: float) -> int | None:
        if now - self._window >= 1.0:
            self._window, self._logged = now, 0
        if self._logged >= self.limit:
            self._left_out += 1
            return None
        self._logged += 1
        left_out, self._left_out = self._left_out, 0
        return left_out
