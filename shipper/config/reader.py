"""The shared reader of config tables: typed keys, every problem at once, unknown keys refused.

A ``Table`` wraps one TOML table and its dotted key path (``sinks.archive``). Each typed getter
(``string``, ``choice``, ``size``, ``duration``, ``integer``, ``boolean``, ``address``, ``path_``,
``file``, ``string_list``, ``secret``, ``table``) converts one key, or records a problem
``key.path: what is wrong, got <value>`` and returns its default (or a fallback), so that reading
goes on and every problem of a file is reported at once. ``finish()`` reports each key no getter
asked for as unknown, with the nearest asked-for key suggested. Strings (and strings in lists)
go through ``${NAME}`` interpolation first. A secret's value never appears in a problem.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from shipper.config.values import (
    Address,
    Secret,
    TlsClientConfig,
    TlsServerConfig,
    parse_address,
    parse_duration,
    parse_size,
)
from shipper.errors import ConfigProblem

T = TypeVar("T")
C = TypeVar("C", bound=str)
TlsT = TypeVar("TlsT", TlsServerConfig, TlsClientConfig)

#: What a source or sink id (``[sources.ID]``, ``[sinks.ID]``) may be.
ID_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

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


def show(value: object) -> str:
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


def _kind_of(value: object) -> str:
    """What a value is, without showing it (for secrets)."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return show(value) if isinstance(value, dict | list) else "another type"


def one_of(choices: Sequence[str]) -> str:
    """``"a"``, ``"a" or "b"``, ``"a", "b" or "c"``."""
    shown = [f'"{c}"' for c in choices]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` (did you mean "x"?)`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, known, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Missing:
    """The type of ``REQUIRED``: a key without a default."""


#: The default of a key that must be given.
REQUIRED: Final = Missing()


class Table:
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
        """The dotted path of key ``name`` of this table."""
        return f"{self._path}.{name}" if self._path else name

    @property
    def path(self) -> str:
        return self._path

    @property
    def problem_count(self) -> int:
        """How many problems the whole file has so far (to tell whether reading added one)."""
        return len(self._problems)

    def problem(self, name: str, message: str) -> None:
        """Record a problem at key ``name`` (the table itself when ``name`` is empty)."""
        self._problems.append(ConfigProblem(self.key(name) if name else self._path, message))

    def keys(self) -> list[str]:
        return list(self._raw)

    def has(self, name: str) -> bool:
        return name in self._raw

    def _env_expand(self, name: str, value: Any, secret: bool = False) -> Any:
        if isinstance(value, str) and "$" in value:
            try:
                return interpolate_env(value, self._env)
            except KeyError as exc:
                self.problem(name, f"environment variable {show(exc.args[0])} is not set")
                return None
            except ValueError as exc:
                self.problem(name, f"{exc}" if secret else f"{exc}, got {show(value)}")
                return None
        if isinstance(value, list):
            return [self._env_expand(name, item, secret) for item in value]
        return value

    def refuse(self, names: Sequence[str], message: str) -> None:
        """Report each of ``names`` that is present as not taken here, saying ``message`` (read,
        so that it is not also reported as unknown)."""
        for name in names:
            if name in self._raw:
                self._take(name)
                self.problem(name, message)

    def _take(self, name: str, secret: bool = False) -> Any:
        self._used.add(name)
        if name not in self._raw:
            return REQUIRED
        return self._env_expand(name, self._raw[name], secret)

    def convert(
        self, name: str, default: T | Missing, convert: Callable[[Any], T], fallback: T
    ) -> T:
        """Key ``name`` through ``convert``, which raises ValueError("expected ...") for a bad
        value; on a problem, record it and return the default, or ``fallback`` for a required
        key."""
        value = self._take(name)
        if isinstance(value, Missing):
            if isinstance(default, Missing):
                self.problem(name, "required key is missing")
                return fallback
            return default
        if value is not None:  # None: an interpolation problem, already reported
            try:
                return convert(value)
            except ValueError as exc:
                self.problem(name, f"{exc}, got {show(value)}")
        return fallback if isinstance(default, Missing) else default

    def string(self, name: str, default: str | Missing = REQUIRED) -> str:
        return self.convert(name, default, _string, "")

    def choice(self, name: str, choices: Sequence[C], default: C | Missing = REQUIRED) -> C:
        """One of ``choices`` (``literal_values`` of a ``Literal`` type)."""

        def convert(value: object) -> C:
            for choice in choices:
                if value == choice:
                    return choice
            raise ValueError("expected " + one_of(choices))

        return self.convert(name, default, convert, choices[0])

    def size(
        self,
        name: str,
        default: int | Missing = REQUIRED,
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

        return self.convert(name, default, convert, max(minimum, 1))

    def duration(
        self, name: str, default: float | Missing = REQUIRED, minimum: float = 0.0
    ) -> float:
        def convert(value: object) -> float:
            seconds = parse_duration(value)
            if seconds < minimum:
                raise ValueError(f"expected a duration of at least {minimum}s")
            return seconds

        return self.convert(name, default, convert, max(minimum, 1.0))

    def integer(
        self,
        name: str,
        default: int | Missing = REQUIRED,
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

        return self.convert(name, default, convert, minimum if minimum is not None else 0)

    def boolean(self, name: str, default: bool | Missing = REQUIRED) -> bool:
        return self.convert(name, default, _boolean, False)

    def address(self, name: str, default: Address | Missing = REQUIRED) -> Address:
        return self.convert(name, default, parse_address, Address("127.0.0.1", 0))

    def path_(self, name: str, default: Path | Missing = REQUIRED) -> Path | None:
        return self.convert(name, default, _path, None)

    def file(self, name: str) -> Path | None:
        """A path to an existing, readable file (None when absent or invalid)."""
        path = self.path_(name)
        if path is not None:
            if not path.is_file():
                self.problem(name, f"file not found, got {show(str(path))}")
                return None
            if not os.access(path, os.R_OK):
                self.problem(name, f"file is not readable, got {show(str(path))}")
                return None
        return path

    def secret(
        self,
        name: str,
        default: Secret | Missing | None = REQUIRED,
        check: Callable[[str], None] | None = None,
    ) -> Secret | None:
        """A ``Secret`` (a string, usually ``"${NAME}"``); None when absent with no default, or
        invalid. ``check`` raises ValueError("expected ...") for a value it refuses, and must not
        put the value in its message: no problem about a secret shows the value."""
        value = self._take(name, secret=True)
        if isinstance(value, Missing):
            if isinstance(default, Missing):
                self.problem(name, "required key is missing")
                return None
            return default
        if value is None:  # an interpolation problem, already reported
            return None
        if not isinstance(value, str):
            self.problem(name, f"expected a string, got {_kind_of(value)}")
            return None
        if not value:
            self.problem(name, "expected a secret that is not empty, got an empty string")
            return None
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                self.problem(name, f"{exc} (the value is not shown)")
                return None
        return Secret(value)

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self._take(name)
        if (
            isinstance(value, Missing)
            or value is None
            or (
                isinstance(value, list) and None in value  # an interpolation problem, reported
            )
        ):
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(name, f"expected a list of strings, got {show(value)}")
            return None
        return tuple(value)

    def table(self, name: str, required: bool = False) -> Table | None:
        self._used.add(name)
        value = self._raw.get(name, REQUIRED)
        if isinstance(value, Missing):
            if required:
                self.problem(name, "required table is missing")
            return None
        if not isinstance(value, dict):
            self.problem(name, f"expected a table, got {show(value)}")
            return None
        return Table(value, self.key(name), self._problems, self._env)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[x.name]]``), each as a ``Table`` (``name[0]``, ...); none when
        absent."""
        value = self._take(name)
        if isinstance(value, Missing) or value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problem(
                name, f"expected an array of tables ([[{self.key(name)}]]), got {show(value)}"
            )
            return []
        return [
            Table(item, f"{self.key(name)}[{index}]", self._problems, self._env)
            for index, item in enumerate(value)
        ]

    def subtables(self) -> Iterator[tuple[str, Table]]:
        """Every key of this table, each of which must itself be a table (``[sinks.NAME]``)."""
        for name, value in self._raw.items():
            self._used.add(name)
            if not isinstance(value, dict):
                self.problem(name, f"expected a table, got {show(value)}")
                continue
            if not ID_RE.fullmatch(name):
                self.problem(name, "expected an id of letters, digits, '_', '-' and '.'")
            yield name, Table(value, self.key(name), self._problems, self._env)

    def finish(self) -> None:
        """Report every key that no reader asked for."""
        for name in self._raw:
            if name not in self._used:
                self.problem(name, "unknown key" + did_you_mean(name, sorted(self._used)))

    def skip(self) -> None:
        """Take every key as read without reading it (a table whose type is unknown: its keys
        mean nothing to report)."""
        self._used.update(self._raw)

    # --- TLS tables ------------------------------------------------------------------------

    def tls_server(self) -> TlsServerConfig | None:
        """This table as a listener's TLS: ``cert``, ``key`` (required), ``client_ca``,
        ``require_client_cert`` (default: true with ``client_ca``). The files are loaded once
        here, so that unusable ones are a config problem. None after a problem."""
        cert = self.file("cert")
        key = self.file("key")
        client_ca = self.file("client_ca") if self.has("client_ca") else None
        require = self.boolean("require_client_cert", self.has("client_ca"))
        self.finish()
        if require and not self.has("client_ca"):
            self.problem(
                "require_client_cert", "requires client_ca (the CA that signs client certs)"
            )
            return None
        if cert is None or key is None or (self.has("client_ca") and client_ca is None):
            return None
        return self._loadable(TlsServerConfig(cert, key, client_ca, require))

    def tls_client(self) -> TlsClientConfig | None:
        """This table as a client's TLS (``TlsClientConfig``): ``ca``, ``cert`` and ``key`` (both
        or neither), ``server_name``, ``verify`` (default true; ``ca`` only with it). The files are
        loaded once here, so that unusable ones are a config problem. None after a problem."""
        before = self.problem_count
        ca = self.file("ca") if self.has("ca") else None
        cert = self.file("cert") if self.has("cert") else None
        key = self.file("key") if self.has("key") else None
        server_name = self.convert("server_name", None, _host_name, None)
        verify = self.boolean("verify", True)
        self.finish()
        for present, missing in (("cert", "key"), ("key", "cert")):
            if self.has(present) and not self.has(missing):
                self.problem(
                    missing,
                    f"required key is missing (with {present}: a client "
                    "certificate needs both cert and key)",
                )
        if not verify and self.has("ca"):
            self.problem(
                "ca",
                "expected only with verify = true (an unverified server is checked against no CA)",
            )
        if self.problem_count != before:
            return None
        return self._loadable(TlsClientConfig(ca, cert, key, server_name, verify))

    def _loadable(self, config: TlsT) -> TlsT | None:
        """``config`` if its files make an SSL context; else None, with the problem noted."""
        try:
            config.build()
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.problem("", f"cannot use these certificate files: {exc}")
            return None
        return config


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


_HOST_NAME_RE: Final = re.compile(r"[^\s/\[\]]+")


def _host_name(value: object) -> str:
    if not isinstance(value, str) or not _HOST_NAME_RE.fullmatch(value):
        raise ValueError("expected a host name (or IP address)")
    return value
