"""The value types of config keys: sizes, durations, addresses, choices, secrets, TLS.

The parsers are pure: they raise ``ValueError`` with the "expected ..." part of a message, and the
reader (``shipper.config.reader.Table``) adds the key path and the value. A choice is a ``Literal``
type, and its values are read with ``literal_values`` so that the type and the list the reader
checks against are the same thing::

    Fsync = Literal["batch", "interval", "never"]
    fsync: Fsync = table.choice("fsync", literal_values(Fsync), "batch")
"""

from __future__ import annotations

import hmac
import math
import re
import ssl
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, get_args

# ---------------------------------------------------------------------------------------------
# Sizes and durations

_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
#: Longer numbers are refused rather than computed (a size or duration is never that long).
_MAX_DIGITS: Final = 30
#: The largest size any key takes (1 PiB): more is beyond any disk or memory, so a typo.
MAX_SIZE: Final = 1024**5
_SIZE_UNITS: Final = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"512MB"`` or ``"1GiB"``; ValueError says what was expected."""
    expected = 'expected a size like "512MB" or "1GiB"'
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(expected + " (not negative)")
        if value > MAX_SIZE:
            raise ValueError(expected + " (at most 1024TiB)")
        return value
    if not isinstance(value, str):
        raise ValueError(expected)
    match = _SIZE_RE.fullmatch(value)
    if match is None or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(expected)
    if len(match.group(1)) > _MAX_DIGITS:
        raise ValueError(expected + " (too large)")
    size = int(Decimal(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size > MAX_SIZE:
        raise ValueError(expected + " (at most 1024TiB)")
    return size


_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS: Final = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``"250ms"``, ``"5s"`` or ``"1m30s"``; ValueError says what's expected."""
    expected = 'expected a duration like "5s", "250ms" or "2m"'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(expected)
    if isinstance(value, int | float):
        if isinstance(value, int) and len(str(abs(value))) > _MAX_DIGITS:
            raise ValueError(expected + " (too large)")
        if not math.isfinite(value):
            raise ValueError(expected + " (finite)")
        if value < 0:
            raise ValueError(expected + " (not negative)")
        return float(value)
    text = value.strip()
    pos, total = 0, Decimal(0)
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != pos or len(match.group(1)) > _MAX_DIGITS:
            raise ValueError(expected)
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(expected)
    return float(total)


# ---------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True)
class Address:
    """A TCP/UDP endpoint ``host:port`` (``[v6addr]:port`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_ADDRESS_RE: Final = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/]+)):(?P<port>\d+)$"
)


def parse_address(value: object) -> Address:
    """An ``Address`` from ``"127.0.0.1:6515"`` or ``"[::1]:6515"``."""
    expected = 'expected "host:port" (IPv6 as "[::1]:port")'
    if not isinstance(value, str):
        raise ValueError(expected)
    match = _ADDRESS_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(expected)
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError("expected a port from 0 to 65535")
    return Address(match.group("v6") or match.group("host"), port)


# ---------------------------------------------------------------------------------------------
# Choices


def literal_values(choice: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type, in the order written: what ``Table.choice`` takes.

    Annotate the constant with the Literal type (``Final[tuple[Fsync, ...]]``) so that mypy
    checks what the reader returns against the field it goes into.
    """
    values = get_args(choice)
    if not values or not all(isinstance(value, str) for value in values):
        raise TypeError(f"expected a Literal of strings, got {choice!r}")
    return values


# ---------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A secret from the config (a token, a signing key), usually given as ``${ENV}``.

    Nothing shows its value: ``repr``, ``str`` and ``format`` give ``Secret('***')``, a config
    object holding one prints and logs that (it is deliberately not a dataclass, which the JSON
    log would take apart), and the reader never puts it into a ``ConfigError``. ``reveal()`` is
    the one way to the value, for the code that sends it. Two secrets are equal when their values
    are (compared in constant time), so configs holding them still compare.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value, for the code that must send or use it (never log what this returns)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsServerConfig:
    """Server-side TLS of a listening source; ``client_ca`` turns on client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False

    def build(self) -> ssl.SSLContext:
        """The server ``SSLContext``; raises ``ssl.SSLError``/``OSError`` on unusable files."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(cafile=self.client_ca)
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
            )
        return context


@dataclass(frozen=True)
class TlsClientConfig:
    """Client-side TLS of a sink's connection (an S3 endpoint, CEF over TLS, a webhook).

    ``ca``: the CA file that signs the server's certificate; without it, certifi's bundle
    (Mozilla's trusted CAs, the same on every host; a private CA, or the system's store, is
    given as ``ca``, e.g. ``/etc/ssl/certs/ca-certificates.crt``).
    ``cert`` and ``key``: a client certificate to present (mutual TLS), both or neither.
    ``server_name``: the name the server's certificate must carry (and the SNI sent), when it is
    not the host the sink connects to (``server_hostname``). ``verify = false`` checks neither
    the certificate nor the name: for tests against a self-signed server, never in production.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    verify: bool = True

    def build(self) -> ssl.SSLContext:
        """The client ``SSLContext``; raises ``ssl.SSLError``/``OSError`` on unusable files."""
        cafile: Path | str | None = self.ca
        if cafile is None:
            import certifi

            cafile = certifi.where()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context

    def server_hostname(self, host: str) -> str:
        """The name to check the server's certificate against (and to send as SNI) when
        connecting to ``host``: ``server_name`` if set, else ``host`` itself."""
        return self.server_name if self.server_name is not None else host
