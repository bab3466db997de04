"""Configuration: TOML in, validated frozen objects out.

The file format is a user-facing contract (README, "Configuration"). Rules that hold for every key:

* Unknown keys are rejected, with the nearest known key suggested.
* Strings may hold ``${NAME}``: the value of environment variable NAME (a missing variable is an
  error naming it); ``$$`` is a literal ``$``.
* Sizes take an integer number of bytes or a string with a unit: ``"512MB"`` (decimal: B, KB, MB,
  GB, TB) or ``"1GiB"`` (binary: KiB, MiB, GiB, TiB).
* Durations take a number of seconds or a string: ``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``,
  ``"1d"``, or a sum such as ``"1m30s"``.
* Relative paths resolve against the working directory.
* Every problem is reported as ``key.path: what is wrong, got <value>``; all problems of a file are
  reported at once, and a ``ConfigError`` carries them.

Each ``XConfig`` builds its runtime object (``XConfig.build() -> X``) in the module that owns X.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from shipper.buffer.config import FSYNC_POLICIES, MIN_MAX_BYTES, MIN_SEGMENT_BYTES, WHEN_FULL
from shipper.buffer.config import BufferConfig as BufferConfig
from shipper.chain import ALGORITHMS, PROFILES, SEED, Profile
from shipper.errors import ConfigError, ConfigProblem

T = TypeVar("T")
C = TypeVar("C", bound=str)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
CHAIN_PROFILES: Final = (*PROFILES, "custom")
#: The most ``[chain] max_agents`` may be (about 1 TB of chain state at full dedupe windows).
MAX_TRACKED_AGENTS: Final = 100_000_000
#: Keys of ``[chain]`` that only a custom profile takes.
CHAIN_FIELD_KEYS: Final = (
    "agent",
    "hashing",
    "sequence",
    "hash",
    "prev_hash",
    "algorithm",
    "prefix",
    "genesis",
)
SOURCE_TYPES: Final = ("json_tls", "syslog")
SYSLOG_MODES: Final = ("tcp", "tls", "udp", "unix")
#: ``socket_type`` of a syslog source with ``mode = "unix"``.
UNIX_SOCKET_TYPES: Final = ("datagram", "stream")
#: The longest unix socket path the kernel binds (``sun_path`` holds 108 bytes with its NUL).
MAX_UNIX_PATH_BYTES: Final = 107
_FILE_MODE_RE: Final = re.compile(r"0?[0-7]{3}")
SINK_TYPES: Final = ("file",)
#: The largest line a source may accept: its envelope must fit one WAL record (64 MiB).
MAX_LINE_BYTES: Final = 32 * 1024 * 1024
_ID_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------
# Value parsers (pure; they raise ValueError with the "expected ..." part of the message)


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


_ENV_RE: Final = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{)")


def interpolate_env(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` with the variable's value and ``$$`` with ``$`` (any other ``$`` is
    kept as it is).

    Raises KeyError(NAME) for a variable that is not set, and ValueError for a ``${`` that does
    not open a ``${NAME}`` (unterminated, empty, or not a name): it is a mistake, never a literal.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        if name is None:
            raise ValueError(
                'expected "${NAME}" (NAME of letters, digits and _) or "$$" for a literal "$", '
                'found a "${" that opens no variable'
            )
        if name not in env:
            raise KeyError(name)
        return env[name]

    return _ENV_RE.sub(replace, text)


def _show(value: object) -> str:
    """A value as the user wrote it, for error messages."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


# ---------------------------------------------------------------------------------------------
# A reader over one TOML table that records problems instead of stopping at the first one


class _Missing:
    pass


_REQUIRED: Final = _Missing()


class _Table:
    """Reads typed keys out of one TOML table; collects problems; rejects unknown keys."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        path: str,
        problems: list[ConfigProblem],
        env: Mapping[str, str],
    ) -> None:
        self._raw = raw
        self._path = path
        self._problems = problems
        self._env = env
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    @property
    def path(self) -> str:
        return self._path

    def problem(self, name: str, message: str) -> None:
        self._problems.append(ConfigProblem(self.key(name) if name else self._path, message))

    def keys(self) -> list[str]:
        return list(self._raw)

    def has(self, name: str) -> bool:
        return name in self._raw

    def _env_expand(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and "$" in value:
            try:
                return interpolate_env(value, self._env)
            except KeyError as exc:
                self.problem(name, f"environment variable {_show(exc.args[0])} is not set")
                return None
            except ValueError as exc:
                self.problem(name, f"{exc}, got {_show(value)}")
                return None
        if isinstance(value, list):
            return [self._env_expand(name, item) for item in value]
        return value

    def refuse(self, names: Sequence[str], message: str) -> None:
        """Report each of ``names`` that is present as not taken here, saying ``message`` (read,
        so that it is not also reported as unknown)."""
        for name in names:
            if name in self._raw:
                self._take(name)
                self.problem(name, message)

    def _take(self, name: str) -> Any:
        self._used.add(name)
        if name not in self._raw:
            return _REQUIRED
        return self._env_expand(name, self._raw[name])

    def _get(self, name: str, default: T | _Missing, convert: Any, fallback: T) -> T:
        """The converted value; on a problem, record it and return the default or fallback."""
        value = self._take(name)
        if isinstance(value, _Missing):
            if isinstance(default, _Missing):
                self.problem(name, "required key is missing")
                return fallback
            return default
        if value is not None:  # None: an interpolation problem, already reported
            try:
                return convert(value)  # type: ignore[no-any-return]
            except ValueError as exc:
                self.problem(name, f"{exc}, got {_show(value)}")
        return fallback if isinstance(default, _Missing) else default

    def string(self, name: str, default: str | _Missing = _REQUIRED) -> str:
        return self._get(name, default, _string, "")

    def choice(self, name: str, choices: Sequence[C], default: C | _Missing = _REQUIRED) -> C:
        def convert(value: object) -> C:
            for choice in choices:
                if value == choice:
                    return choice
            raise ValueError("expected " + _one_of(choices))

        return self._get(name, default, convert, choices[0])

    def size(
        self,
        name: str,
        default: int | _Missing = _REQUIRED,
        minimum: int = 0,
        maximum: int | None = None,
    ) -> int:
        def convert(value: object) -> int:
            size = parse_size(value)
            if size < minimum:
                raise ValueError(f"expected a size of at least {minimum} bytes")
            if maximum is not None and size > maximum:
                raise ValueError(f"expected a size of at most {maximum} bytes")
            return size

        return self._get(name, default, convert, max(minimum, 1))

    def duration(
        self, name: str, default: float | _Missing = _REQUIRED, minimum: float = 0.0
    ) -> float:
        def convert(value: object) -> float:
            seconds = parse_duration(value)
            if seconds < minimum:
                raise ValueError(f"expected a duration of at least {minimum}s")
            return seconds

        return self._get(name, default, convert, max(minimum, 1.0))

    def integer(
        self,
        name: str,
        default: int | _Missing = _REQUIRED,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        def convert(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("expected an integer")
            if (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum
            ):
                raise ValueError(f"expected an integer from {minimum} to {maximum}")
            return value

        return self._get(name, default, convert, minimum if minimum is not None else 0)

    def boolean(self, name: str, default: bool | _Missing = _REQUIRED) -> bool:
        return self._get(name, default, _boolean, False)

    def address(self, name: str, default: Address | _Missing = _REQUIRED) -> Address:
        return self._get(name, default, parse_address, Address("127.0.0.1", 0))

    def path_(self, name: str, default: Path | _Missing = _REQUIRED) -> Path | None:
        return self._get(name, default, _path, None)

    def file(self, name: str) -> Path | None:
        """A path to an existing, readable file (None when absent or invalid)."""
        path = self.path_(name)
        if path is not None:
            if not path.is_file():
                self.problem(name, f"file not found, got {_show(str(path))}")
                return None
            if not os.access(path, os.R_OK):
                self.problem(name, f"file is not readable, got {_show(str(path))}")
                return None
        return path

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self._take(name)
        if (
            isinstance(value, _Missing)
            or value is None
            or (
                isinstance(value, list) and None in value  # an interpolation problem, reported
            )
        ):
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(name, f"expected a list of strings, got {_show(value)}")
            return None
        return tuple(value)

    def table(self, name: str, required: bool = False) -> _Table | None:
        self._used.add(name)
        value = self._raw.get(name, _REQUIRED)
        if isinstance(value, _Missing):
            if required:
                self.problem(name, "required table is missing")
            return None
        if not isinstance(value, dict):
            self.problem(name, f"expected a table, got {_show(value)}")
            return None
        return _Table(value, self.key(name), self._problems, self._env)

    def subtables(self) -> Iterator[tuple[str, _Table]]:
        """Every key of this table, each of which must itself be a table (``[sinks.NAME]``)."""
        for name, value in self._raw.items():
            self._used.add(name)
            if not isinstance(value, dict):
                self.problem(name, f"expected a table, got {_show(value)}")
                continue
            if not _ID_RE.fullmatch(name):
                self.problem(name, "expected an id of letters, digits, '_', '-' and '.'")
            yield name, _Table(value, self.key(name), self._problems, self._env)

    def finish(self) -> None:
        """Report every key that no reader asked for."""
        for name in self._raw:
            if name not in self._used:
                known = sorted(self._used)
                close = difflib.get_close_matches(name, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.problem(name, f"unknown key{hint}")


def _one_of(choices: Sequence[str]) -> str:
    shown = [f'"{c}"' for c in choices]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a path")
    return Path(value)


# ---------------------------------------------------------------------------------------------
# The configuration objects


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


#: ``[sources.X.identity]``: certificate identity -> patterns of the agent ids and hostnames it may
#: claim (``shipper.sources._identity``).
IdentityTable = Mapping[str, tuple[str, ...]]

#: Defaults of the keys of the stream listeners (``json_tls``; ``syslog`` over tcp, tls and unix
#: stream sockets): connection admission, see ``shipper.sources._net``.
MAX_CONNECTIONS: Final = 1024
MAX_CONNECTIONS_PER_PEER: Final = 64
IDLE_TIMEOUT: Final = 300.0
HANDSHAKE_TIMEOUT: Final = 10.0
FRAME_TIMEOUT: Final = 30.0
#: Defaults of the burst buffer of a ``syslog`` source with ``mode = "udp"`` (events, bytes).
BURST_EVENTS: Final = 65536
BURST_BYTES: Final = 16 * 1024 * 1024
#: ``receive_buffer`` bounds: SO_RCVBUF takes a C int, which the kernel doubles.
MIN_RECEIVE_BUFFER: Final = 4096
MAX_RECEIVE_BUFFER: Final = 512 * 1024 * 1024


@dataclass(frozen=True)
class JsonTlsSourceConfig:
    """``type = "json_tls"``: newline-delimited JSON objects over TCP, TLS when ``tls`` is set."""

    id: str
    address: Address
    tls: TlsServerConfig | None = None
    max_line_bytes: int = 1024 * 1024
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    identity: IdentityTable | None = None
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT
    kind: Literal["json_tls"] = "json_tls"


@dataclass(frozen=True)
class SyslogSourceConfig:
    """``type = "syslog"``: RFC 5424/3164 over TCP, TLS (RFC 5425), UDP or a unix socket.

    ``address`` is set for every mode but ``"unix"``, which has ``path`` (and ``socket_type``,
    ``socket_mode``) instead. The connection keys (``max_connections`` ... ``frame_timeout``)
    apply to the stream modes; ``receive_buffer`` (None: the kernel's default) and the burst
    buffer's bounds to ``mode = "udp"``.
    """

    id: str
    address: Address | None = None
    mode: str = "tcp"
    tls: TlsServerConfig | None = None
    max_message_bytes: int = 64 * 1024
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    path: Path | None = None
    socket_type: str = "datagram"
    socket_mode: int = 0o660
    identity: IdentityTable | None = None
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT
    receive_buffer: int | None = None
    burst_events: int = BURST_EVENTS
    burst_bytes: int = BURST_BYTES
    kind: Literal["syslog"] = "syslog"


SourceConfig = JsonTlsSourceConfig | SyslogSourceConfig


@dataclass(frozen=True)
class FileSinkConfig:
    """``type = "file"``: JSON-lines files in a directory, a new file past ``max_file_bytes``."""

    id: str
    path: Path
    inputs: tuple[str, ...] | None = None
    max_file_bytes: int = 128 * 1024 * 1024
    kind: Literal["file"] = "file"


SinkConfig = FileSinkConfig


@dataclass(frozen=True)
class ChainConfig:
    """``[chain]``: the chain profile (``shipper.chain``) and the verifier's bounds."""

    profile: str = "seed"
    profile_fields: Profile = SEED
    dedupe_window: int = 64
    max_open_gaps: int = 64
    checkpoint_interval: float = 10.0
    max_agents: int = 100_000


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    data_dir: Path = Path("var")
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    chain: ChainConfig = field(default_factory=ChainConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    origin: str = ""


def _tls_server(table: _Table) -> TlsServerConfig | None:
    cert = table.file("cert")
    key = table.file("key")
    client_ca = table.file("client_ca") if table.has("client_ca") else None
    require = table.boolean("require_client_cert", table.has("client_ca"))
    table.finish()
    if require and not table.has("client_ca"):
        table.problem("require_client_cert", "requires client_ca (the CA that signs client certs)")
        return None
    if cert is None or key is None or (table.has("client_ca") and client_ca is None):
        return None
    config = TlsServerConfig(cert, key, client_ca, require)
    try:
        config.build()
    except (ssl.SSLError, OSError, ValueError) as exc:
        table.problem("", f"cannot use these certificate files: {exc}")
        return None
    return config


def _chain(table: _Table) -> ChainConfig:
    """``[chain]``: a shipped profile by name, or ``profile = "custom"`` and its fields."""
    name = table.choice("profile", CHAIN_PROFILES, "seed")
    window = table.integer("dedupe_window", 64, minimum=1, maximum=1_000_000)
    max_gaps = table.integer("max_open_gaps", 64, minimum=1, maximum=1_000_000)
    interval = table.duration("checkpoint_interval", 10.0, minimum=0.1)
    max_agents = table.integer(
        "max_agents", ChainConfig.max_agents, minimum=1, maximum=MAX_TRACKED_AGENTS
    )
    fields = PROFILES.get(name, SEED)
    if name != "custom":
        for key in CHAIN_FIELD_KEYS:
            if table.has(key):
                table.string(key, "")  # read, so that it is not also reported as unknown
                table.problem(key, f'only a custom profile takes this key (profile = "{name}")')
    else:
        agent = table.string("agent", "agentId")
        hashing = table.choice("hashing", ("canonical", "line"), "canonical")
        algorithm = table.choice("algorithm", ALGORITHMS, "sha256")
        line = hashing == "line"
        sequence: str | None = None
        hash_field: str | None = None
        if line:
            for key in ("sequence", "hash"):
                if table.has(key):
                    table.string(key, "")
                    table.problem(key, 'a profile with hashing = "line" has no such field')
        else:
            sequence = table.string("sequence", "sequence") or None
            hash_field = table.string("hash", "hash") or None
            for key, value in (("sequence", sequence), ("hash", hash_field)):
                if value is None:
                    table.problem(key, "expected a field name, got an empty string")
        try:
            fields = Profile(
                "custom",
                agent=tuple(agent.split(".")),
                sequence=sequence if not line else None,
                hash=hash_field if not line else None,
                prev_hash=table.string("prev_hash", "prevHash"),
                algorithm=algorithm,
                prefix=table.string("prefix", "" if line else f"{algorithm}:"),
                genesis=table.string("genesis", "GENESIS" if line else ""),
            )
        except ValueError as exc:
            table.problem("agent" if "agent" in str(exc) else "hashing", str(exc))
            fields = SEED
    return ChainConfig(name, fields, window, max_gaps, interval, max_agents)


def _file_mode(value: object) -> int:
    if not isinstance(value, str) or _FILE_MODE_RE.fullmatch(value) is None:
        raise ValueError('expected an octal file mode in a string, like "0660"')
    return int(value, 8)


def _identity(table: _Table) -> IdentityTable:
    """``[sources.X.identity]``: each key a certificate identity, each value a list of patterns."""
    entries: dict[str, tuple[str, ...]] = {}
    names = table.keys()
    if not names:
        table.problem("", "expected at least one certificate identity, got an empty table")
    for name in names:
        patterns = table.string_list(name)  # None: a problem, reported
        if patterns is None:
            continue
        if "" in patterns:
            table.problem(name, 'expected patterns that are not empty, got ""')
        entries[name] = patterns
    table.finish()
    return entries


def _syslog_listener(table: _Table, mode: str) -> tuple[Address | None, Path | None, str, int]:
    """``address`` for the network modes; ``path``, ``socket_type``, ``socket_mode`` for unix."""
    if mode != "unix":
        unix_keys = ("path", "socket_type", "socket_mode")
        table.refuse(unix_keys, f'expected only with mode = "unix", got mode = "{mode}"')
        return table.address("address"), None, "datagram", 0o660
    table.refuse(("address",), 'expected only with a network mode, got mode = "unix" (use path)')
    path: Path | None = None
    if not table.has("path"):
        table.problem("path", 'required key is missing (mode = "unix")')
    else:
        path = table.path_("path")
        if path is not None and len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
            table.problem(
                "path",
                f"expected a socket path of at most {MAX_UNIX_PATH_BYTES} bytes, "
                f"got {_show(str(path))}",
            )
    socket_type = table.choice("socket_type", UNIX_SOCKET_TYPES, "datagram")
    socket_mode: int = table._get("socket_mode", 0o660, _file_mode, 0o660)
    return None, path, socket_type, socket_mode


#: Keys that only a stream listener takes, and keys that only a UDP syslog source takes.
STREAM_ONLY_KEYS: Final = ("max_connections_per_peer", "handshake_timeout", "frame_timeout")
UDP_ONLY_KEYS: Final = ("receive_buffer", "burst_events", "burst_bytes")


def _admission(table: _Table, max_connections: int, tls: str | None) -> dict[str, Any]:
    """The admission keys of a stream listener (``shipper.sources._net``).

    ``max_connections_per_peer`` defaults to 64, or to ``max_connections`` when that is lower; a
    value above ``max_connections`` is refused (it could never be reached). ``tls`` is None with
    TLS, else why ``handshake_timeout`` means nothing here.
    """
    per_peer = table.integer(
        "max_connections_per_peer",
        min(MAX_CONNECTIONS_PER_PEER, max_connections),
        minimum=1,
        maximum=1_000_000,
    )
    if table.has("max_connections_per_peer") and per_peer > max_connections:
        table.problem(
            "max_connections_per_peer",
            f"expected at most max_connections ({max_connections}), got {per_peer}",
        )
    if tls is not None:
        table.refuse(("handshake_timeout",), tls)
    return {
        "max_connections_per_peer": per_peer,
        "handshake_timeout": table.duration("handshake_timeout", HANDSHAKE_TIMEOUT, minimum=0.001),
        "frame_timeout": table.duration("frame_timeout", FRAME_TIMEOUT, minimum=0.001),
    }


def _udp_buffers(table: _Table) -> dict[str, Any]:
    """``receive_buffer`` (None: the kernel's default) and the burst buffer's bounds."""
    receive_buffer = None
    if table.has("receive_buffer"):
        receive_buffer = table.size(
            "receive_buffer", minimum=MIN_RECEIVE_BUFFER, maximum=MAX_RECEIVE_BUFFER
        )
    return {
        "receive_buffer": receive_buffer,
        "burst_events": table.integer("burst_events", BURST_EVENTS, minimum=1, maximum=10_000_000),
        "burst_bytes": table.size("burst_bytes", BURST_BYTES, minimum=64 * 1024),
    }


def _source(source_id: str, table: _Table) -> SourceConfig | None:
    kind = table.choice("type", SOURCE_TYPES)
    if kind == "syslog":
        mode = table.choice("mode", SYSLOG_MODES, "tcp")
        address, path, socket_type, socket_mode = _syslog_listener(table, mode)
    else:
        json_address = table.address("address")
    tls_table = table.table("tls")
    tls = _tls_server(tls_table) if tls_table is not None else None
    max_connections = table.integer(
        "max_connections", MAX_CONNECTIONS, minimum=1, maximum=1_000_000
    )
    idle_timeout = table.duration("idle_timeout", IDLE_TIMEOUT, minimum=0.001)
    limits: dict[str, Any] = {}
    if kind == "json_tls":
        no_tls = None if tls_table is not None else "expected only with TLS, got no tls table"
        limits = _admission(table, max_connections, no_tls)
    elif mode in ("tcp", "tls") or (mode == "unix" and socket_type == "stream"):
        no_tls = None if mode == "tls" else f'expected only with mode = "tls", got mode = "{mode}"'
        limits = _admission(table, max_connections, no_tls)
        table.refuse(UDP_ONLY_KEYS, f'expected only with mode = "udp", got mode = "{mode}"')
    else:
        got = f'mode = "{mode}"' + (' with socket_type = "datagram"' if mode == "unix" else "")
        table.refuse(
            STREAM_ONLY_KEYS,
            'expected only with a stream mode ("tcp", "tls", or "unix" with socket_type = '
            f'"stream"), got {got}',
        )
        if mode == "udp":
            limits = _udp_buffers(table)
        else:
            table.refuse(UDP_ONLY_KEYS, f'expected only with mode = "udp", got {got}')
    identity_table = table.table("identity")
    identity = _identity(identity_table) if identity_table is not None else None
    if identity_table is not None and (tls_table is None or not tls_table.has("client_ca")):
        needs = 'mode = "tls" and ' if kind == "syslog" else ""
        table.problem(
            "identity",
            f"requires {needs}tls.client_ca (without client certificates there is no identity "
            "to check)",
        )
    config: SourceConfig
    if kind == "syslog":
        if mode == "tls" and tls_table is None:
            table.problem("tls", 'required table is missing (mode = "tls")')
        elif mode != "tls" and tls_table is not None:
            table.problem("tls", f'expected only with mode = "tls", got mode = "{mode}"')
        config = SyslogSourceConfig(
            id=source_id,
            address=address,
            mode=mode,
            tls=tls,
            max_message_bytes=table.size(
                "max_message_bytes", 64 * 1024, minimum=64, maximum=MAX_LINE_BYTES
            ),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            path=path,
            socket_type=socket_type,
            socket_mode=socket_mode,
            identity=identity,
            **limits,
        )
    else:
        config = JsonTlsSourceConfig(
            id=source_id,
            address=json_address,
            tls=tls,
            max_line_bytes=table.size(
                "max_line_bytes", 1024 * 1024, minimum=64, maximum=MAX_LINE_BYTES
            ),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            identity=identity,
            **limits,
        )
    table.finish()
    return config


def _sink(sink_id: str, table: _Table, source_ids: Sequence[str]) -> SinkConfig | None:
    table.choice("type", SINK_TYPES)
    inputs = table.string_list("inputs")
    for index, name in enumerate(inputs or ()):
        if name not in source_ids:
            table.problem(
                f"inputs[{index}]",
                f"expected one of the sources ({', '.join(source_ids)}), got {_show(name)}",
            )
    path = table.path_("path")
    max_file_bytes = table.size("max_file_bytes", 128 * 1024 * 1024, minimum=4096)
    table.finish()
    if path is None:
        return None
    return FileSinkConfig(id=sink_id, path=path, inputs=inputs, max_file_bytes=max_file_bytes)


def parse_config(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, origin: str = ""
) -> Config:
    """Validate a parsed TOML document; raise ``ConfigError`` listing every problem."""
    problems: list[ConfigProblem] = []
    top = _Table(raw, "", problems, os.environ if env is None else env)
    data_dir = top.path_("data_dir", Path("var")) or Path("var")
    unusable = directory_problem(data_dir)
    if unusable is not None:
        top.problem("data_dir", f"{unusable}, got {_show(str(data_dir))}")
    shutdown_timeout = top.duration("shutdown_timeout", 30.0)

    log_level = "info"
    log = top.table("log")
    if log is not None:
        log_level = log.choice("level", LOG_LEVELS, "info")
        log.finish()

    chain = ChainConfig()
    chain_table = top.table("chain")
    if chain_table is not None:
        chain = _chain(chain_table)
        chain_table.finish()

    buffer = BufferConfig()
    buffer_table = top.table("buffer")
    if buffer_table is not None:
        max_bytes = buffer_table.size("max_bytes", buffer.max_bytes, minimum=MIN_MAX_BYTES)
        segment_bytes = buffer_table.size(
            "segment_bytes", min(buffer.segment_bytes, max_bytes // 4), minimum=MIN_SEGMENT_BYTES
        )
        if segment_bytes * 2 > max_bytes:
            buffer_table.problem(
                "segment_bytes",
                f"expected at most half of max_bytes ({max_bytes // 2}), got {segment_bytes}",
            )
        buffer = BufferConfig(
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
            fsync=buffer_table.choice("fsync", FSYNC_POLICIES, buffer.fsync),
            fsync_interval=buffer_table.duration(
                "fsync_interval", buffer.fsync_interval, minimum=0.001
            ),
            when_full=buffer_table.choice("when_full", WHEN_FULL, buffer.when_full),
        )
        buffer_table.finish()

    sources: dict[str, SourceConfig] = {}
    sources_table = top.table("sources", required=True)
    if sources_table is not None:
        for source_id, table in sources_table.subtables():
            source = _source(source_id, table)
            if source is not None:
                sources[source_id] = source
        if not sources_table.keys():
            top.problem("sources", "expected at least one source")
        _check_distinct_addresses(sources, sources_table)

    sinks: dict[str, SinkConfig] = {}
    sinks_table = top.table("sinks", required=True)
    if sinks_table is not None:
        for sink_id, table in sinks_table.subtables():
            sink = _sink(sink_id, table, sources_table.keys() if sources_table else [])
            if sink is not None:
                sinks[sink_id] = sink
        if not sinks_table.keys():
            top.problem("sinks", "expected at least one sink (events must go somewhere)")
    top.finish()
    if problems:
        raise ConfigError(problems, origin)
    return Config(
        data_dir=data_dir,
        shutdown_timeout=shutdown_timeout,
        log_level=log_level,
        chain=chain,
        buffer=buffer,
        sources=sources,
        sinks=sinks,
        origin=origin,
    )


def directory_problem(path: Path) -> str | None:
    """Why shipper could not create (if missing) and write the directory ``path``, or None.

    Checks without creating anything: the path, or its nearest existing ancestor, must be a
    directory this process may write (a read-only file system counts as not writable).
    """
    probe = path
    while True:
        try:
            info = probe.stat()
        except (FileNotFoundError, NotADirectoryError):  # missing, or below a file: look up
            if probe.parent == probe:
                return "expected a directory that can be created, found no existing parent"
            probe = probe.parent
            continue
        except OSError as exc:
            return f"expected a directory shipper can use, cannot look at {probe}: {exc.strerror}"
        break
    where = "" if probe == path else f" (it would be created in {probe})"
    if not stat.S_ISDIR(info.st_mode):
        return f"expected a directory shipper can create and write, {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"expected a directory shipper can create and write, {probe} is not writable{where}"
    return None


def _check_distinct_addresses(sources: Mapping[str, SourceConfig], table: _Table) -> None:
    seen: dict[tuple[Address, str], str] = {}
    paths: dict[Path, str] = {}
    for source_id, source in sources.items():
        if isinstance(source, SyslogSourceConfig) and source.path is not None:
            other = paths.setdefault(source.path, source_id)
            if other != source_id:
                table.problem(
                    f"{source_id}.path",
                    f'expected a path not used by source "{other}", got "{source.path}"',
                )
            continue
        if source.address is None or source.address.port == 0:
            continue
        udp = isinstance(source, SyslogSourceConfig) and source.mode == "udp"
        other = seen.setdefault((source.address, "udp" if udp else "tcp"), source_id)
        if other != source_id:
            table.problem(
                f"{source_id}.address",
                f'expected an address not used by source "{other}", got "{source.address}"',
            )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; ``ConfigError`` for any problem, file ones included."""
    origin = str(path)
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError as exc:
        raise ConfigError([ConfigProblem("", f"config file not found: {origin}")], origin) from exc
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem("", f"cannot read config file {origin}: {exc.strerror}")], origin
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [ConfigProblem("", f"{origin} is not valid TOML: {exc}")], origin
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    "", f"{origin} is not UTF-8 text (TOML must be): bad byte at offset {exc.start}"
                )
            ],
            origin,
        ) from exc
    return parse_config(raw, env, origin)
