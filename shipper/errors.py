"""The exceptions shipper raises, named for who is at fault and whether retrying helps.

* ``ConfigError``: the operator's configuration is wrong. Retrying never helps; fix the file.
* ``PeerError``: a sender broke the protocol or a limit. Retrying the same bytes never helps.
* ``DestinationUnavailable``: a sink's destination could not take the data right now (server down,
  disk full, directory missing). Retrying later can help; the data waits.
* ``DestinationRejected``: the destination refused the data for good (a permanent error). Retrying
  the same data never helps; it goes to the dead-letter file with the reason.

Library exceptions (``OSError``, ``ssl.SSLError``, ...) are translated into these once, at the
boundary where shipper calls the library, with ``raise X from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class ShipperError(Exception):
    """Base class of every error shipper raises on purpose."""

    #: Whether doing the same thing again later can succeed.
    retriable: ClassVar[bool] = False


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


class PeerError(ShipperError):
    """A sender broke the protocol or a limit; the same bytes will fail again."""


@dataclass
class LimitExceeded(PeerError):
    """A bounded buffer was asked to hold more than its limit (names the limit and the sizes)."""

    limit_name: str
    limit: int
    size: int

    def __str__(self) -> str:
        return f"{self.limit_name} exceeded: {self.size} bytes > {self.limit}"


class DestinationUnavailable(ShipperError):
    """A sink's destination cannot take data now; the data waits and delivery is retried."""

    retriable = True


class DestinationRejected(ShipperError):
    """A sink's destination refused the data permanently; retrying the same data cannot help."""


class ListenError(ShipperError):
    """A source could not listen on its address (taken, not permitted, not local).

    The operator must free the address or change it; systemd's restart may succeed once it is free.
    """

    retriable = True


class DataDirError(ShipperError):
    """The state directory (``data_dir``: the WAL, the chain checkpoint) cannot be used: a file in
    the way, no permission, a read-only, full or failing disk. The operator must fix it; retrying
    helps only once that is done."""
