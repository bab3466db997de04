"""The exceptions shipper raises, named for who is at fault and whether retrying helps.

* ``ConfigError``: the operator's configuration is wrong. Retrying never helps; fix the file.
* ``DestinationUnavailable``: a sink's destination could not take the data right now (server down,
  disk full, directory missing). Retrying later can help; the data waits in the WAL and the sink
  driver tries again with backoff.
* ``DestinationRejected``: the destination refused the data for good (a permanent error). Retrying
  the same data never helps; the sink driver puts it in the sink's dead-letter area
  (``shipper.sinks.dead_letter``) with the reason, and goes on.
* ``ListenError``, ``DataDirError``, ``UnsafeDestination``: an address, the state directory or a
  sink's destination cannot be used (safely); the daemon
  does not start until the operator fixes it.

How a sink's errors are retried is decided in one place, ``shipper.retry.RetryPolicy``; a sender
breaking the protocol or a limit is not an exception: its input becomes a counted ``malformed``
event, or its connection is closed, counted and logged.

Library exceptions (``OSError``, ``ssl.SSLError``, ...) are translated into these once, at the
boundary where shipper calls the library, with ``raise X from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The exit status of a command whose config file is invalid (sysexits' ``EX_CONFIG``).
EX_CONFIG: Final = 78


class ShipperError(Exception):
    """Base class of every error shipper raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid setting: the dotted key path and what is wrong with its value."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ShipperError):
    """The configuration is invalid; the operator must fix it (never retriable)."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(str(p) for p in self.problems))

    def report(self, path: str, note: str = "") -> str:
        """What the command line prints of it (``shipper validate`` and every command that
        reads the config file at ``path``): a first line, then one line per problem."""
        head = f"{path}: invalid configuration" + (f" ({note})" if note else "")
        return "\n".join([head, *(f"{path}: {problem}" for problem in self.problems)])


class DestinationUnavailable(ShipperError):
    """A sink's destination cannot take data now; the data waits and delivery is retried.

    ``retry_after``: seconds the destination asked to be left alone (an HTTP ``Retry-After``),
    or None; the driver waits at least that long (within ``RetryPolicy.max_retry_after``)
    before the next try.
    """

    retry_after: float | None = None

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DestinationRejected(ShipperError):
    """A sink's destination refused the data permanently; retrying the same data cannot help.

    ``status`` (the destination's status: an HTTP status code, a protocol's error code) and
    ``answer`` (what it said, its response body) go into the dead-letter file beside the
    reason, when the sink knows them.
    """

    status: int | str | None = None
    answer: str | None = None

    def __init__(
        self, message: str = "", *, status: int | str | None = None, answer: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer


class ListenError(ShipperError):
    """A source could not listen on its address (taken, not permitted, not local).

    The operator must free the address or change it; systemd's restart may succeed once it is free.
    """


class DataDirError(ShipperError):
    """The state directory (``data_dir``: the WAL, the chain checkpoint) cannot be used: a file in
    the way, no permission, a read-only, full or failing disk. The operator must fix it; retrying
    helps only once that is done."""


class UnsafeDestination(ShipperError):
    """A sink's destination is reachable but not safe to write to as configured (an S3 bucket
    without Object Lock when a lock mode is set). The daemon does not start; the operator must
    fix the destination or the config. Retrying never helps by itself."""
