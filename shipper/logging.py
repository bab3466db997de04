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
from typing import Any, TextIO

import orjson
from pythonjsonlogger.json import JsonFormatter

# structlog imports its console renderer's optional helpers when they are installed, rich among
# them (about 70 modules, 4 MB resident in every process of the daemon, the ingest workers and
# sink processes included), although shipper renders every entry as JSON and never uses them.
# rich is installed for `shipper top`, which imports it itself: it is hidden from structlog's
# import only (a None entry in sys.modules makes an import fail, which structlog expects of an
# optional helper), and importable again afterwards.
_HIDDEN = "rich" not in sys.modules
if _HIDDEN:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _HIDDEN:
        del sys.modules["rich"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


#: Where ``configure`` sends the entries (None: not configured, stderr).
_stream: TextIO | None = None


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send shipper's structlog entries and stdlib ``logging`` records to ``stream`` as JSON."""
    global _stream
    out = _stream = stream if stream is not None else sys.stderr
    levelno = _LEVELS[level]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
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


def write_entry(line: str) -> None:
    """Write an entry another process rendered (a sink process's) where this one's go."""
    print(line, file=_stream if _stream is not None else sys.stderr, flush=True)


#: Libraries that log every HTTP request at INFO (the S3 client: two lines per archived object):
#: their warnings and errors are kept, their per-request lines only at level "debug".
_PER_REQUEST_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2")


class Logger:
    """A named logger that follows the structlog configuration in force when it logs.

    Modules create theirs at import time, before ``configure()`` runs, so binding is deferred.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _bound(self) -> structlog.typing.FilteringBoundLogger:
        logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(
            logger=self.name
        )
        return logger

    def debug(self, event: str, **fields: Any) -> None:
        self._bound().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._bound().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._bound().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._bound().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error entry with the current exception's traceback."""
        self._bound().exception(event, **fields)


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
