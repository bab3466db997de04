"""Tests of shipper.config: the shipped files, every kind of problem it reports, the value parsers."""

from __future__ import annotations

import copy
import ipaddress
import re
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from shipper.config import (
    MAX_SIZE,
    SINK_TYPES,
    SOURCE_TYPES,
    Address,
    Config,
    TlsServerConfig,
    interpolate_env,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
)
from shipper.errors import ConfigError, ConfigProblem
from shipper.sinks.file import FileSinkConfig
from shipper.sources.json_tls import JsonTlsSourceConfig
from shipper.sources.syslog import SyslogSourceConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = sorted((REPO / "config").rglob("*.toml"))
#: The environment variables the shipped examples name (``${NAME}``), set as a deployment would.
EXAMPLE_ENV = {
    "DENIALS_URL": "https://alerts.example/hook",
    "DENIALS_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "TICKETS_URL": "https://tickets.example/api/hook",
    "TICKETS_TOKEN": "a-bearer-token",
    "TICKETS_SECRET": "whsec_bGliZXJ0eS1lZ2FsaXRlLWZyYXRlcm5pdGU=",
}

MINIMAL: dict[str, Any] = {
    "sources": {"a": {"type": "json_tls", "address": "127.0.0.1:6515"}},
    "sinks": {"out": {"type": "file", "path": "var/archive"}},
}


def _raw(**overrides: Any) -> dict[str, Any]:
    """A deep copy of MINIMAL with top-level keys replaced."""
    raw = copy.deepcopy(MINIMAL)
    raw.update(overrides)
    return raw


def _with_source(**keys: Any) -> dict[str, Any]:
    """MINIMAL with extra keys in source "a"."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["a"].update(keys)
    return raw


def _with_sink(**keys: Any) -> dict[str, Any]:
    """MINIMAL with extra keys in sink "out"."""
    raw = copy.deepcopy(MINIMAL)
    raw["sinks"]["out"].update(keys)
    return raw


def _source(config: Config, name: str = "a") -> JsonTlsSourceConfig:
    """Source ``name`` of ``config``, which must be a json_tls source."""
    source = config.sources[name]
    assert isinstance(source, JsonTlsSourceConfig)
    return source


def _sink(config: Config, name: str = "out") -> FileSinkConfig:
    """Sink ``name`` of ``config``, which must be a file sink."""
    sink = config.sinks[name]
    assert isinstance(sink, FileSinkConfig)
    return sink


def _problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problems ``parse_config`` reports for ``raw``, as ``path: message`` strings."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={} if env is None else env)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return [str(problem) for problem in info.value.problems]


# ---------------------------------------------------------------------------------------------
# Shipped configuration files


@dataclass(frozen=True)
class _Pems:
    """A CA file and a server file holding both the key and the certificate chain."""

    ca: Path
    server: Path


@pytest.fixture
def pems(tmp_path: Path) -> _Pems:
    """A fresh trustme CA and a 127.0.0.1 server certificate, as PEM files under tmp_path."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    return _Pems(tmp_path / "ca.pem", tmp_path / "server.pem")


_DEPLOYMENT_TLS_FILE = re.compile(
    r'^sources\.[^.]+\.tls\.(cert|key|client_ca): file not found, got "/'
)


@pytest.mark.parametrize(
    "path", SHIPPED_CONFIGS, ids=[str(p.relative_to(REPO)) for p in SHIPPED_CONFIGS]
)
def test_shipped_config_is_valid(path: Path, pems: _Pems, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TOML file under config/ validates, apart from TLS files at absolute deployment paths.

    An example may point its TLS files at where a deployment keeps them (``/etc/shipper/...``);
    those paths are swapped for test certificates and everything else must validate as written.
    Relative paths resolve from the repo root and must exist. The variables an example names
    are set (``EXAMPLE_ENV``).
    """
    monkeypatch.chdir(REPO)
    try:
        config = load_config(path, env=EXAMPLE_ENV)
    except ConfigError as exc:
        others = [str(p) for p in exc.problems if not _DEPLOYMENT_TLS_FILE.match(str(p))]
        assert others == []
        raw = tomllib.loads(path.read_text())
        for source in raw.get("sources", {}).values():
            tls = source.get("tls", {})
            for key in ("cert", "key", "client_ca"):
                if key in tls and Path(tls[key]).is_absolute() and not Path(tls[key]).exists():
                    tls[key] = str(pems.ca if key == "client_ca" else pems.server)
        config = parse_config(raw, env=EXAMPLE_ENV, origin=str(path))
    assert config.sources
    assert config.sinks
    assert config.origin == str(path)


def test_default_config_listens_on_loopback_and_archives_to_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """config/shipper.toml has a json_tls source and TCP and UDP syslog sources on port 5514,
    all on loopback, and a file sink."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "config" / "shipper.toml", env={})
    json_sources = [s for s in config.sources.values() if isinstance(s, JsonTlsSourceConfig)]
    assert json_sources
    syslog = [s for s in config.sources.values() if isinstance(s, SyslogSourceConfig)]
    assert sorted((s.mode, s.address and s.address.port) for s in syslog) == [
        ("tcp", 5514),
        ("udp", 5514),
    ]
    addresses = [s.address for s in json_sources] + [s.address for s in syslog]
    for address in addresses:
        assert address is not None
        assert ipaddress.ip_address(address.host).is_loopback
        assert address.port != 0
    assert any(isinstance(sink, FileSinkConfig) for sink in config.sinks.values())


# ---------------------------------------------------------------------------------------------
# Valid configurations


def test_minimal_config_gets_the_documented_defaults() -> None:
    """A config with one source and one sink fills every other setting with its default."""
    config = parse_config(MINIMAL, env={})
    assert config == Config(
        data_dir=Path("var"),
        shutdown_timeout=30.0,
        log_level="info",
        sources={"a": JsonTlsSourceConfig(id="a", address=Address("127.0.0.1", 6515))},
        sinks={"out": FileSinkConfig(id="out", path=Path("var/archive"))},
    )
    assert config.chain.profile == "seed"
    source = config.sources["a"]
    assert isinstance(source, JsonTlsSourceConfig)
    assert source.max_line_bytes == 1024 * 1024
    assert config.sinks["out"].inputs is None


def test_values_are_converted_to_bytes_seconds_and_tuples() -> None:
    """Sizes, durations, addresses, profiles and inputs come out converted to their runtime types."""
    raw = _raw(data_dir="/srv/shipper", shutdown_timeout="1m30s", log={"level": "debug"})
    raw["chain"] = {"profile": "safeclaw-jsonl"}
    raw["sources"]["a"].update(
        address="[::1]:7000", max_line_bytes="2KiB", max_connections=7, idle_timeout="250ms"
    )
    raw["sinks"]["out"].update(inputs=["a"], max_file_bytes="1MB")
    config = parse_config(raw, env={}, origin="test.toml")
    assert config.data_dir == Path("/srv/shipper")
    assert config.shutdown_timeout == 90.0
    assert config.log_level == "debug"
    assert config.chain.profile == "safeclaw-jsonl"
    assert config.origin == "test.toml"
    source = config.sources["a"]
    assert isinstance(source, JsonTlsSourceConfig)
    assert source.address == Address("::1", 7000)
    assert (source.max_line_bytes, source.max_connections, source.idle_timeout) == (2048, 7, 0.25)
    assert config.sinks["out"].inputs == ("a",)
    assert _sink(config).max_file_bytes == 1_000_000


def test_load_config_reads_toml_from_disk(tmp_path: Path) -> None:
    """load_config parses a TOML file and records where it came from."""
    path = tmp_path / "shipper.toml"
    path.write_text(
        'data_dir = "state"\n'
        "[sources.a]\n"
        'type = "json_tls"\n'
        'address = "127.0.0.1:6515"\n'
        "[sinks.out]\n"
        'type = "file"\n'
        'path = "var/archive"\n'
    )
    config = load_config(path, env={})
    assert config.data_dir == Path("state")
    assert list(config.sources) == ["a"]
    assert list(config.sinks) == ["out"]
    assert config.origin == str(path)


# ---------------------------------------------------------------------------------------------
# Unknown keys


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            _raw(data_dri="x"), 'data_dri: unknown key (did you mean "data_dir"?)', id="top-level"
        ),
        pytest.param(
            _with_source(max_line_byte=100),
            'sources.a.max_line_byte: unknown key (did you mean "max_line_bytes"?)',
            id="source",
        ),
        pytest.param(
            _with_sink(max_file_byte=100),
            'sinks.out.max_file_byte: unknown key (did you mean "max_file_bytes"?)',
            id="sink",
        ),
        pytest.param(
            _raw(log={"levle": "info"}),
            'log.levle: unknown key (did you mean "level"?)',
            id="log",
        ),
        pytest.param(
            _raw(chain={"profil": "seed"}),
            'chain.profil: unknown key (did you mean "profile"?)',
            id="chain",
        ),
        pytest.param(_with_source(colour="blue"), "sources.a.colour: unknown key", id="no-hint"),
    ],
)
def test_unknown_key_is_reported_with_the_nearest_known_key(
    raw: dict[str, Any], expected: str
) -> None:
    """An unknown key, at any depth, is a problem at its path that suggests the closest known key."""
    assert _problems(raw) == [expected]


# ---------------------------------------------------------------------------------------------
# Wrong types and values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            _with_source(max_connections="many"),
            'sources.a.max_connections: expected an integer, got "many"',
            id="int-as-string",
        ),
        pytest.param(
            _with_source(max_connections=True),
            "sources.a.max_connections: expected an integer, got true",
            id="int-as-bool",
        ),
        pytest.param(
            _with_source(max_connections=2.5),
            "sources.a.max_connections: expected an integer, got 2.5",
            id="int-as-float",
        ),
        pytest.param(
            _with_source(max_connections=0),
            "sources.a.max_connections: expected an integer from 1 to 1000000, got 0",
            id="int-too-small",
        ),
        pytest.param(
            _with_source(address=6515),
            'sources.a.address: expected "host:port" (IPv6 as "[::1]:port"), got 6515',
            id="address-as-int",
        ),
        pytest.param(
            _with_source(tls="yes"),
            'sources.a.tls: expected a table, got "yes"',
            id="tls-as-string",
        ),
        pytest.param(
            _raw(sources={"a": 5}),
            "sources.a: expected a table, got 5",
            id="source-as-int",
        ),
        pytest.param(
            _raw(log="loud"),
            'log: expected a table, got "loud"',
            id="log-as-string",
        ),
        pytest.param(
            _raw(log={"level": "loud"}),
            'log.level: expected "debug", "info", "warning" or "error", got "loud"',
            id="bad-choice",
        ),
        pytest.param(
            _raw(chain={"profile": ["seed"]}),
            'chain.profile: expected "seed", "safeclaw-jsonl" or "custom", got a list',
            id="choice-as-list",
        ),
        pytest.param(
            _raw(data_dir=""),
            'data_dir: expected a path, got ""',
            id="empty-path",
        ),
        pytest.param(
            _with_sink(inputs="a"),
            'sinks.out.inputs: expected a list of strings, got "a"',
            id="inputs-as-string",
        ),
        pytest.param(
            _with_sink(inputs=["a", 1]),
            "sinks.out.inputs: expected a list of strings, got a list",
            id="inputs-with-int",
        ),
        pytest.param(
            _with_sink(path={"dir": "x"}),
            "sinks.out.path: expected a path, got a table",
            id="path-as-table",
        ),
        pytest.param(
            _raw(sources={"b c": {"type": "json_tls", "address": "127.0.0.1:6515"}}),
            "sources.b c: expected an id of letters, digits, '_', '-' and '.'",
            id="bad-id",
        ),
    ],
)
def test_wrong_type_or_value_is_reported_at_its_key(raw: dict[str, Any], expected: str) -> None:
    """A value of the wrong type or outside its range is one problem naming the key and the value."""
    assert _problems(raw) == [expected]


@pytest.mark.parametrize(
    ("key", "table"),
    [("type", "sources"), ("address", "sources"), ("type", "sinks"), ("path", "sinks")],
)
def test_required_key_missing_is_reported(key: str, table: str) -> None:
    """Leaving out a required key of a source or sink is a problem at that key's path."""
    raw = copy.deepcopy(MINIMAL)
    name = "a" if table == "sources" else "out"
    del raw[table][name][key]
    assert _problems(raw) == [f"{table}.{name}.{key}: required key is missing"]


@pytest.mark.parametrize(("table", "name"), [("sources", "a"), ("sinks", "out")])
def test_a_misspelt_type_key_is_named_with_the_key_it_meant(table: str, name: str) -> None:
    """A table whose ``type`` is spelt ``typ`` is told both that ``type`` is missing and that
    ``typ`` is unknown, with the suggestion."""
    raw = copy.deepcopy(MINIMAL)
    raw[table][name]["typ"] = raw[table][name].pop("type")
    assert _problems(raw) == [
        f"{table}.{name}.type: required key is missing",
        f'{table}.{name}.typ: unknown key (did you mean "type"?)',
    ]


# ---------------------------------------------------------------------------------------------
# Sizes and durations

SIZE_EXPECTED = 'expected a size like "512MB" or "1GiB"'


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("1 MiBB", '"1 MiBB"'),
        ("12XB", '"12XB"'),
        ("MiB", '"MiB"'),
        ("", '""'),
        ("1,5MB", '"1,5MB"'),
        ("-1KB", '"-1KB"'),
        ("1e3", '"1e3"'),
        (1.5, "1.5"),
        (True, "true"),
        ([1], "a list"),
    ],
)
def test_bad_size_is_reported_with_the_expected_form(value: object, shown: str) -> None:
    """A size with an unknown unit or an unreadable number says what a size looks like."""
    assert _problems(_with_source(max_line_bytes=value)) == [
        f"sources.a.max_line_bytes: {SIZE_EXPECTED}, got {shown}"
    ]


def test_negative_size_is_reported() -> None:
    """A negative integer size is rejected as negative."""
    assert _problems(_with_source(max_line_bytes=-1)) == [
        f"sources.a.max_line_bytes: {SIZE_EXPECTED} (not negative), got -1"
    ]


def test_size_below_minimum_is_reported() -> None:
    """A size below the key's minimum names the minimum."""
    assert _problems(_with_source(max_line_bytes="10B")) == [
        'sources.a.max_line_bytes: expected a size of at least 64 bytes, got "10B"'
    ]


DURATION_EXPECTED = 'expected a duration like "5s", "250ms" or "2m"'


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("5 parsecs", '"5 parsecs"'),
        ("5", '"5"'),
        ("s", '"s"'),
        ("1m30", '"1m30"'),
        ("-5s", '"-5s"'),
        ("5S", '"5S"'),
        ("5 s", '"5 s"'),
        ("", '""'),
        (True, "true"),
    ],
)
def test_bad_duration_is_reported_with_the_expected_form(value: object, shown: str) -> None:
    """A duration without a known unit or with a bad number says what a duration looks like."""
    assert _problems(_with_source(idle_timeout=value)) == [
        f"sources.a.idle_timeout: {DURATION_EXPECTED}, got {shown}"
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1, "not negative"),
        (-0.5, "not negative"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
    ],
)
def test_negative_or_infinite_numeric_duration_is_reported(value: float, why: str) -> None:
    """A numeric duration must be finite and not negative."""
    problems = _problems(_raw(shutdown_timeout=value))
    assert len(problems) == 1
    assert problems[0].startswith(f"shutdown_timeout: {DURATION_EXPECTED} ({why}), got ")


def test_duration_below_minimum_is_reported() -> None:
    """A zero idle timeout is below the key's minimum, and the message names the minimum."""
    assert _problems(_with_source(idle_timeout="0s")) == [
        'sources.a.idle_timeout: expected a duration of at least 0.001s, got "0s"'
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("1KB", 1000),
        ("1kb", 1000),
        ("512MB", 512_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("1MiB", 1024**2),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("1gib", 1024**3),
        (" 1 MiB ", 1024**2),
        ("1.5KiB", 1536),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(text: str, size: int) -> None:
    """parse_size understands B, KB..TB (powers of 1000) and KiB..TiB (powers of 1024)."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h1m1s", 3661.0),
        ("1.5s", 1.5),
        (" 5s ", 5.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts_units_and_sums(text: str, seconds: float) -> None:
    """parse_duration understands ms, s, m, h, d and sums of them."""
    assert parse_duration(text) == seconds


SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


@given(
    total=st.integers(min_value=0, max_value=MAX_SIZE),
    unit=st.sampled_from(sorted(SIZE_UNITS)),
    upper=st.booleans(),
    space=st.sampled_from(["", " "]),
)
def test_parse_size_round_trips_every_unit(total: int, unit: str, upper: bool, space: str) -> None:
    """parse_size(f"{n}{unit}") is n times the unit, in any case and with a space (up to 1024TiB)."""
    n = total // SIZE_UNITS[unit]
    text = f"{n}{space}{unit.upper() if upper else unit}"
    assert parse_size(text) == n * SIZE_UNITS[unit]


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_parse_size_passes_non_negative_integers_through(n: int) -> None:
    """An integer size up to 1024TiB is a number of bytes, unchanged."""
    assert parse_size(n) == n


@given(st.text(alphabet=st.characters(categories=["Ll", "Lu"]), min_size=1, max_size=5))
def test_parse_size_rejects_unknown_units(unit: str) -> None:
    """Any unit outside the documented ones is a ValueError."""
    if unit.upper() in {u.upper() for u in SIZE_UNITS}:
        return
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(f"1{unit}")


@given(
    n=st.integers(min_value=0, max_value=10**9),
    unit=st.sampled_from(["ms", "s", "m", "h", "d"]),
)
def test_parse_duration_round_trips_every_unit(n: int, unit: str) -> None:
    """parse_duration(f"{n}{unit}") is n times the unit in seconds."""
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor, rel=1e-12, abs=0)


@given(
    minutes=st.integers(min_value=0, max_value=10**6),
    seconds=st.integers(min_value=0, max_value=59),
)
def test_parse_duration_adds_parts(minutes: int, seconds: int) -> None:
    """A sum like "1m30s" is the sum of its parts."""
    assert parse_duration(f"{minutes}m{seconds}s") == minutes * 60 + seconds


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_parse_duration_passes_finite_numbers_through(value: float) -> None:
    """A finite, non-negative number is a duration in seconds, unchanged."""
    assert parse_duration(value) == value


@given(st.text(max_size=20))
def test_parsers_raise_only_value_error_on_any_text(text: str) -> None:
    """parse_size and parse_duration either return a value or raise ValueError, for any string."""
    for parse in (parse_size, parse_duration):
        try:
            result = parse(text)
        except ValueError:
            continue
        assert result >= 0


def test_parse_size_huge_number_is_a_value_error() -> None:
    """A size too large for a float is reported as a config problem, not an OverflowError crash."""
    raw = _with_source(max_line_bytes="1" + "0" * 400 + "B")
    problems = _problems(raw)
    assert problems[0].startswith("sources.a.max_line_bytes: ")


def test_parse_duration_huge_integer_is_a_value_error() -> None:
    """A huge integer duration (TOML allows it) is a config problem, not an OverflowError crash."""
    problems = _problems(_raw(shutdown_timeout=10**400))
    assert problems[0].startswith("shutdown_timeout: ")


def test_parse_duration_rejects_a_string_that_overflows_to_infinity() -> None:
    """A duration string too large for a float is rejected, like a numeric infinity is."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("1" + "0" * 400 + "s")


@pytest.mark.parametrize("value", ["1025TiB", "1126TB", 1024**5 + 1, "18446744073709551616"])
def test_parse_size_refuses_sizes_beyond_any_disk(value: object) -> None:
    """A size above 1024TiB is a typo, not a setting: it is refused, saying the bound."""
    with pytest.raises(ValueError, match=r"at most 1024TiB"):
        parse_size(value)


def test_parse_size_is_exact_up_to_its_bound() -> None:
    """The largest size (1024TiB) and the byte below it are read exactly, as strings and integers."""
    assert parse_size("1024TiB") == 1024**5
    assert parse_size(str(1024**5 - 1)) == 1024**5 - 1
    assert parse_size("1125899906842623B") == parse_size(1125899906842623)


def test_absurd_buffer_size_is_a_config_problem() -> None:
    """An absurd [buffer] max_bytes is reported at its key, like any other bad value."""
    problems = _problems(_raw(buffer={"max_bytes": "9000TB"}))
    assert problems == [
        'buffer.max_bytes: expected a size like "512MB" or "1GiB" (at most 1024TiB), got "9000TB"'
    ]


def test_runtime_sink_processes_is_a_boolean_on_by_default() -> None:
    """``[runtime] sink_processes`` is true unless set, false when set so, and anything but a
    boolean, or another key in ``[runtime]``, is a problem at its key."""
    assert parse_config(_raw()).runtime.sink_processes is True
    assert parse_config(_raw(runtime={"sink_processes": False})).runtime.sink_processes is False
    problems = _problems(_raw(runtime={"sink_processes": "yes", "threads": 2}))
    assert [p.split(":")[0] for p in problems] == ["runtime.sink_processes", "runtime.threads"]


def test_runtime_workers_is_a_count_of_processes() -> None:
    """``[runtime] workers`` is 0 (the sources in the daemon's process) unless set, takes a
    count, and a negative count, a count over the limit, or a non-integer is a problem."""
    assert parse_config(_raw()).runtime.workers == 0
    assert parse_config(_raw(runtime={"workers": 4})).runtime.workers == 4
    for bad in (-1, 257, "2", 1.5):
        problems = _problems(_raw(runtime={"workers": bad}))
        assert [p.split(":")[0] for p in problems] == ["runtime.workers"], bad


# ---------------------------------------------------------------------------------------------
# Environment variables


def test_missing_env_var_is_reported_by_name_at_its_key() -> None:
    """${NOPE} with NOPE unset is one problem naming the variable and the key that used it."""
    assert _problems(_with_source(address="${NOPE}:6515")) == [
        'sources.a.address: environment variable "NOPE" is not set'
    ]


def test_missing_env_var_in_a_sink_path_is_reported() -> None:
    """A missing variable in a required path is reported once, as the missing variable."""
    assert _problems(_with_sink(path="${ARCHIVE_DIR}/x")) == [
        'sinks.out.path: environment variable "ARCHIVE_DIR" is not set'
    ]


def test_env_vars_are_interpolated_and_dollar_dollar_is_a_dollar() -> None:
    """${NAME} takes the variable's value, $$ is a literal $, and a lone $ is kept."""
    raw = _with_source(address="[${HOST}]:${PORT}", idle_timeout="${IDLE}")
    raw["sinks"]["out"]["path"] = "${ARCHIVE_DIR}/$${HOME}/$x"
    config = parse_config(
        raw, env={"HOST": "::1", "PORT": "7000", "IDLE": "2m", "ARCHIVE_DIR": "/srv"}
    )
    assert _source(config).address == Address("::1", 7000)
    assert _source(config).idle_timeout == 120.0
    assert _sink(config).path == Path("/srv/${HOME}/$x")


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping, variables come from os.environ."""
    monkeypatch.setenv("SHIPPER_TEST_ARCHIVE", "/tmp/from-env")
    config = parse_config(_with_sink(path="${SHIPPER_TEST_ARCHIVE}"))
    assert _sink(config).path == Path("/tmp/from-env")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("${A}", "1"),
        ("x${A}y${B}z", "x1y2z"),
        ("$$", "$"),
        ("$${A}", "${A}"),
        ("$$$${A}", "$${A}"),
        ("$$${A}", "$1"),
        ("$A", "$A"),
        ("price: 5$", "price: 5$"),
        ("${EMPTY}", ""),
    ],
)
def test_interpolate_env(text: str, expected: str) -> None:
    """interpolate_env replaces ${NAME} and $$ and leaves every other $ alone."""
    assert interpolate_env(text, {"A": "1", "B": "2", "EMPTY": ""}) == expected


def test_interpolate_env_raises_key_error_naming_the_variable() -> None:
    """A variable that is not set is a KeyError carrying its name."""
    with pytest.raises(KeyError) as info:
        interpolate_env("a${NOPE}b", {})
    assert info.value.args == ("NOPE",)


def test_interpolated_value_is_not_interpolated_again() -> None:
    """A variable's value containing ${...} is taken literally (no second pass)."""
    assert interpolate_env("${A}", {"A": "${B}", "B": "no"}) == "${B}"


# ---------------------------------------------------------------------------------------------
# Addresses

ADDRESS_EXPECTED = 'expected "host:port" (IPv6 as "[::1]:port")'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("127.0.0.1", ADDRESS_EXPECTED, id="no-port"),
        pytest.param("127.0.0.1:", ADDRESS_EXPECTED, id="empty-port"),
        pytest.param(":6515", ADDRESS_EXPECTED, id="no-host"),
        pytest.param("127.0.0.1:http", ADDRESS_EXPECTED, id="named-port"),
        pytest.param("::1:6515", ADDRESS_EXPECTED, id="unbracketed-ipv6"),
        pytest.param("[::1]", ADDRESS_EXPECTED, id="ipv6-no-port"),
        pytest.param("[]:6515", ADDRESS_EXPECTED, id="empty-ipv6"),
        pytest.param("host name:6515", ADDRESS_EXPECTED, id="space-in-host"),
        pytest.param("", ADDRESS_EXPECTED, id="empty"),
        pytest.param("127.0.0.1:65536", "expected a port from 0 to 65535", id="port-65536"),
        pytest.param("127.0.0.1:99999", "expected a port from 0 to 65535", id="port-99999"),
    ],
)
def test_bad_address_is_reported(value: str, message: str) -> None:
    """An address without a host or port, or with a port over 65535, is rejected with its value."""
    assert _problems(_with_source(address=value)) == [
        f'sources.a.address: {message}, got "{value}"'
    ]


@pytest.mark.parametrize(
    ("text", "address", "shown"),
    [
        ("127.0.0.1:6515", Address("127.0.0.1", 6515), "127.0.0.1:6515"),
        ("localhost:0", Address("localhost", 0), "localhost:0"),
        ("[::1]:6515", Address("::1", 6515), "[::1]:6515"),
        ("[::ffff:10.0.0.1]:65535", Address("::ffff:10.0.0.1", 65535), "[::ffff:10.0.0.1]:65535"),
        ("logs.example.com:514", Address("logs.example.com", 514), "logs.example.com:514"),
    ],
)
def test_parse_address(text: str, address: Address, shown: str) -> None:
    """parse_address splits host and port (brackets off for IPv6) and str() puts them back."""
    assert parse_address(text) == address
    assert str(address) == shown


def test_duplicate_listen_addresses_are_reported() -> None:
    """Two sources on the same address is a problem at the second one naming the first."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["b"] = {"type": "json_tls", "address": "127.0.0.1:6515"}
    assert _problems(raw) == [
        'sources.b.address: expected an address not used by source "a", got "127.0.0.1:6515"'
    ]


def test_several_sources_on_port_zero_are_allowed() -> None:
    """Port 0 (any free port) can be shared by several sources, since each gets its own port."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["a"]["address"] = "127.0.0.1:0"
    raw["sources"]["b"] = {"type": "json_tls", "address": "127.0.0.1:0"}
    assert set(parse_config(raw, env={}).sources) == {"a", "b"}


# ---------------------------------------------------------------------------------------------
# TLS


def _with_tls(**tls: Any) -> dict[str, Any]:
    """MINIMAL with a [sources.a.tls] table, paths turned into strings."""
    return _with_source(tls={k: str(v) if isinstance(v, Path) else v for k, v in tls.items()})


def test_tls_with_valid_files_builds_a_server_context(pems: _Pems) -> None:
    """Usable cert and key files give a TlsServerConfig whose context needs no client cert."""
    config = parse_config(_with_tls(cert=pems.server, key=pems.server), env={})
    tls = _source(config).tls
    assert tls == TlsServerConfig(cert=pems.server, key=pems.server)
    assert tls is not None
    context = tls.build()
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_ca_requires_client_certs_by_default(pems: _Pems) -> None:
    """With client_ca set, require_client_cert defaults to true and the context demands a cert."""
    config = parse_config(_with_tls(cert=pems.server, key=pems.server, client_ca=pems.ca), env={})
    tls = _source(config).tls
    assert tls is not None
    assert tls.client_ca == pems.ca
    assert tls.require_client_cert is True
    assert tls.build().verify_mode == ssl.CERT_REQUIRED


def test_client_ca_with_optional_client_certs(pems: _Pems) -> None:
    """require_client_cert = false with a client_ca makes client certificates optional."""
    raw = _with_tls(cert=pems.server, key=pems.server, client_ca=pems.ca, require_client_cert=False)
    tls = _source(parse_config(raw, env={})).tls
    assert tls is not None
    assert tls.require_client_cert is False
    assert tls.build().verify_mode == ssl.CERT_OPTIONAL


@pytest.mark.parametrize("key", ["cert", "key", "client_ca"])
def test_tls_file_missing_is_reported_at_its_key(pems: _Pems, tmp_path: Path, key: str) -> None:
    """A TLS file that does not exist is a problem at sources.x.tls.<key> showing the path."""
    files: dict[str, Any] = {"cert": pems.server, "key": pems.server, "client_ca": pems.ca}
    files[key] = tmp_path / "missing.pem"
    assert _problems(_with_tls(**files)) == [
        f'sources.a.tls.{key}: file not found, got "{tmp_path / "missing.pem"}"'
    ]


def test_tls_directory_instead_of_file_is_reported(pems: _Pems, tmp_path: Path) -> None:
    """A directory given as the certificate is reported as not a file."""
    assert _problems(_with_tls(cert=tmp_path, key=pems.server)) == [
        f'sources.a.tls.cert: file not found, got "{tmp_path}"'
    ]


GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("bad", ["cert", "key", "client_ca"])
def test_unusable_tls_file_is_reported_at_the_tls_table(
    pems: _Pems, tmp_path: Path, bad: str
) -> None:
    """A TLS file that exists but is not a usable PEM is one problem at sources.x.tls."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(GARBAGE_PEM)
    files: dict[str, Any] = {"cert": pems.server, "key": pems.server, "client_ca": pems.ca}
    files[bad] = garbage
    problems = _problems(_with_tls(**files))
    assert len(problems) == 1
    assert problems[0].startswith("sources.a.tls: cannot use these certificate files: ")


def test_key_not_matching_the_cert_is_reported(pems: _Pems, tmp_path: Path) -> None:
    """A private key of another certificate is reported at sources.x.tls."""
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    problems = _problems(_with_tls(cert=pems.server, key=other))
    assert len(problems) == 1
    assert problems[0].startswith("sources.a.tls: cannot use these certificate files: ")


def test_require_client_cert_without_client_ca_is_reported(pems: _Pems) -> None:
    """require_client_cert = true needs a client_ca to verify clients against."""
    raw = _with_tls(cert=pems.server, key=pems.server, require_client_cert=True)
    assert _problems(raw) == [
        "sources.a.tls.require_client_cert: requires client_ca (the CA that signs client certs)"
    ]


def test_unknown_tls_key_suggests_the_nearest(pems: _Pems) -> None:
    """An unknown key inside the tls table is reported with the near known key."""
    raw = _with_tls(cert=pems.server, key=pems.server, certs="x")
    assert _problems(raw) == ['sources.a.tls.certs: unknown key (did you mean "cert"?)']


def test_tls_table_missing_cert_and_key() -> None:
    """An empty tls table reports both required files."""
    assert _problems(_with_tls()) == [
        "sources.a.tls.cert: required key is missing",
        "sources.a.tls.key: required key is missing",
    ]


# ---------------------------------------------------------------------------------------------
# Source and sink types, inputs, presence


def test_unknown_source_type_lists_the_choices() -> None:
    """An unknown source type is rejected with every known source type listed."""
    [problem] = _problems(_with_source(type="carrier_pigeon"))
    assert problem.startswith("sources.a.type: expected ")
    assert problem.endswith(', got "carrier_pigeon"')
    for kind in SOURCE_TYPES:
        assert f'"{kind}"' in problem


def test_unknown_sink_type_lists_the_choices() -> None:
    """An unknown sink type is rejected with every known sink type listed."""
    [problem] = _problems(_with_sink(type="carrier_pigeon"))
    assert problem.startswith("sinks.out.type: expected ")
    assert problem.endswith(', got "carrier_pigeon"')
    for kind in SINK_TYPES:
        assert f'"{kind}"' in problem


def test_sink_input_naming_an_unknown_source_is_reported() -> None:
    """Each sink input that names no source is a problem at its index, listing the sources."""
    raw = _with_sink(inputs=["a", "c", "a", "d"])
    raw["sources"]["b"] = {"type": "json_tls", "address": "127.0.0.1:6516"}
    assert _problems(raw) == [
        'sinks.out.inputs[1]: expected one of the sources (a, b), got "c"',
        'sinks.out.inputs[3]: expected one of the sources (a, b), got "d"',
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            _raw(sources={}), ["sources: expected at least one source"], id="empty-sources"
        ),
        pytest.param(
            _raw(sinks={}),
            ["sinks: expected at least one sink (events must go somewhere)"],
            id="empty-sinks",
        ),
        pytest.param(
            {"sinks": MINIMAL["sinks"]}, ["sources: required table is missing"], id="no-sources"
        ),
        pytest.param(
            {"sources": MINIMAL["sources"]}, ["sinks: required table is missing"], id="no-sinks"
        ),
        pytest.param(
            {},
            ["sources: required table is missing", "sinks: required table is missing"],
            id="empty-file",
        ),
    ],
)
def test_sources_and_sinks_are_required(raw: dict[str, Any], expected: list[str]) -> None:
    """A config needs at least one source and at least one sink."""
    assert _problems(raw) == expected


def test_every_problem_is_reported_at_once() -> None:
    """Problems in different tables are all collected into one ConfigError, in file order."""
    raw = _raw(data_dri="x", shutdown_timeout="soon")
    raw["sources"]["a"].update(address="127.0.0.1", max_connections="many")
    raw["sinks"]["out"].update(type="carrier_pigeon", inputs=["nope"])
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    problems = [str(p) for p in info.value.problems]
    assert [p.split(":")[0] for p in problems] == [
        "shutdown_timeout",
        "sources.a.address",
        "sources.a.max_connections",
        "sinks.out.type",
        "sinks.out.inputs[0]",
        "data_dri",
    ]
    assert problems[0] == f'shutdown_timeout: {DURATION_EXPECTED}, got "soon"'
    assert problems[1] == f'sources.a.address: {ADDRESS_EXPECTED}, got "127.0.0.1"'
    assert problems[2] == 'sources.a.max_connections: expected an integer, got "many"'
    assert problems[3].endswith('got "carrier_pigeon"')
    assert problems[4] == 'sinks.out.inputs[0]: expected one of the sources (a), got "nope"'
    assert problems[5] == 'data_dri: unknown key (did you mean "data_dir"?)'
    assert str(info.value) == "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Reading the file


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is one problem naming the file and the TOML error."""
    path = tmp_path / "broken.toml"
    path.write_text('[sources.a]\ntype = "json_tls\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [problem] = info.value.problems
    assert problem.path == ""
    assert problem.message.startswith(f"{path} is not valid TOML: ")
    assert str(problem) == problem.message
    assert info.value.source == str(path)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError saying so, not a FileNotFoundError."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [f"config file not found: {path}"]


def test_unreadable_config_path_is_a_config_error(tmp_path: Path) -> None:
    """A directory given as the config file is a ConfigError saying it cannot be read."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    [problem] = info.value.problems
    assert problem.message.startswith(f"cannot read config file {tmp_path}: ")


def test_problems_in_a_file_carry_the_file_as_source(tmp_path: Path) -> None:
    """A ConfigError from load_config knows which file it is about."""
    path = tmp_path / "shipper.toml"
    path.write_text('[sources.a]\ntype = "json_tls"\naddress = "x"\n[sinks.out]\ntype = "file"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    assert [str(p) for p in info.value.problems] == [
        f'sources.a.address: {ADDRESS_EXPECTED}, got "x"',
        "sinks.out.path: required key is missing",
    ]


def test_config_problem_str() -> None:
    """A problem prints as "path: message", or just the message when it has no path."""
    assert str(ConfigProblem("a.b", "bad")) == "a.b: bad"
    assert str(ConfigProblem("", "bad")) == "bad"


def test_source_id_with_a_trailing_newline_is_rejected() -> None:
    """A quoted TOML key "b\\n" is not a valid source id (ids are letters, digits, _ - .)."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["b\n"] = {"type": "json_tls", "address": "127.0.0.1:6516"}
    assert _problems(raw) == ["sources.b\n: expected an id of letters, digits, '_', '-' and '.'"]


def test_the_daemons_own_source_id_is_refused_for_a_source() -> None:
    """No configured source may be called "shipper": that id marks the daemon's own events
    (alerts and seals), which senders must not be able to pass for."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["shipper"] = {"type": "json_tls", "address": "127.0.0.1:6516"}
    assert _problems(raw) == [
        'sources.shipper: "shipper" is the id of the daemon\'s own events (alerts, seals): '
        "give this source another id"
    ]


def test_syslog_source_modes_and_their_tls_table_are_checked() -> None:
    """A syslog source needs a tls table exactly when mode = "tls", and a known mode."""
    assert _problems(_with_source(type="syslog", mode="tls")) == [
        'sources.a.tls: required table is missing (mode = "tls")'
    ]
    assert _problems(_with_source(type="syslog", mode="relp")) == [
        'sources.a.mode: expected "tcp", "tls", "udp" or "unix", got "relp"'
    ]
    config = parse_config(_with_source(type="syslog", mode="udp", max_message_bytes="8KiB"))
    source = config.sources["a"]
    assert isinstance(source, SyslogSourceConfig)
    assert (source.mode, source.max_message_bytes) == ("udp", 8192)


def test_udp_and_tcp_sources_may_share_a_port_but_two_tcp_sources_may_not() -> None:
    """UDP and TCP listeners on the same port are distinct; two TCP listeners clash."""
    raw = _raw()
    raw["sources"] = {
        "t": {"type": "syslog", "mode": "tcp", "address": "127.0.0.1:5514"},
        "u": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:5514"},
    }
    parse_config(raw)
    raw["sources"]["j"] = {"type": "json_tls", "address": "127.0.0.1:5514"}
    assert _problems(raw) == [
        'sources.j.address: expected an address not used by source "t", got "127.0.0.1:5514"'
    ]


def _unix_source(**keys: Any) -> dict[str, Any]:
    """MINIMAL with source "a" a syslog source in unix mode (plus ``keys``)."""
    return _raw(sources={"a": {"type": "syslog", "mode": "unix", **keys}})


def test_unix_mode_takes_a_path_a_socket_type_and_a_file_mode() -> None:
    """mode = "unix" listens on path; socket_type defaults to datagram, socket_mode to 0660."""
    source = parse_config(_unix_source(path="/run/shipper/syslog.sock"), env={}).sources["a"]
    assert isinstance(source, SyslogSourceConfig)
    assert (source.address, source.path) == (None, Path("/run/shipper/syslog.sock"))
    assert (source.socket_type, source.socket_mode) == ("datagram", 0o660)
    raw = _unix_source(path="s.sock", socket_type="stream", socket_mode="0600")
    source = parse_config(raw, env={}).sources["a"]
    assert isinstance(source, SyslogSourceConfig)
    assert (source.path, source.socket_type, source.socket_mode) == (
        Path("s.sock"),
        "stream",
        0o600,
    )


def test_unix_mode_requires_a_path_and_refuses_an_address() -> None:
    """A unix source without path, or with an address, is refused at those key paths."""
    assert _problems(_unix_source(address="127.0.0.1:5514")) == [
        'sources.a.address: expected only with a network mode, got mode = "unix" (use path)',
        'sources.a.path: required key is missing (mode = "unix")',
    ]


def test_network_modes_refuse_the_unix_keys() -> None:
    """path, socket_type and socket_mode are refused with mode tcp, naming each key."""
    raw = _raw(sources={"a": {"type": "syslog", "mode": "tcp", "address": "127.0.0.1:5514"}})
    raw["sources"]["a"].update(path="/run/x.sock", socket_type="stream")
    assert _problems(raw) == [
        'sources.a.path: expected only with mode = "unix", got mode = "tcp"',
        'sources.a.socket_type: expected only with mode = "unix", got mode = "tcp"',
    ]
    raw = _with_source(path="/run/x.sock")
    assert _problems(raw) == ["sources.a.path: unknown key"]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"socket_type": "seqpacket"},
            'sources.a.socket_type: expected "datagram" or "stream", got "seqpacket"',
        ),
        (
            {"socket_mode": 0o660},
            'sources.a.socket_mode: expected an octal file mode in a string, like "0660", got 432',
        ),
        (
            {"socket_mode": "4755"},
            'sources.a.socket_mode: expected an octal file mode in a string, like "0660", '
            'got "4755"',
        ),
        (
            {"path": "/run/" + "x" * 120},
            'sources.a.path: expected a socket path of at most 107 bytes, got "/run/'
            + "x" * 120
            + '"',
        ),
    ],
    ids=["socket-type", "integer-mode", "setuid-mode", "long-path"],
)
def test_bad_unix_settings_are_reported_at_their_key(keys: dict[str, Any], problem: str) -> None:
    """A bad socket type, file mode or over-long socket path is reported at its key path."""
    assert _problems(_unix_source(**{"path": "/run/x.sock", **keys})) == [problem]


def test_two_unix_sources_may_not_share_a_path() -> None:
    """Two unix sources on the same path clash, like two TCP sources on one address."""
    raw = _unix_source(path="/run/x.sock")
    raw["sources"]["b"] = {"type": "syslog", "mode": "unix", "path": "/run/x.sock"}
    assert _problems(raw) == [
        'sources.b.path: expected a path not used by source "a", got "/run/x.sock"'
    ]


def _identity_source(
    pems: _Pems, identity: dict[str, Any], kind: str = "json_tls"
) -> dict[str, Any]:
    """MINIMAL with source "a" of ``kind`` over mutual TLS, with an identity table."""
    source: dict[str, Any] = {
        "type": kind,
        "address": "127.0.0.1:6515",
        "tls": {"cert": str(pems.server), "key": str(pems.server), "client_ca": str(pems.ca)},
        "identity": identity,
    }
    if kind == "syslog":
        source["mode"] = "tls"
    return _raw(sources={"a": source})


@pytest.mark.parametrize("kind", ["json_tls", "syslog"])
def test_identity_table_maps_certificate_identities_to_patterns(pems: _Pems, kind: str) -> None:
    """[sources.X.identity] with mutual TLS comes out as identity -> tuple of patterns."""
    raw = _identity_source(pems, {"host-7": ["host-7", "agent-*"], "CN=relay": ["*"]}, kind)
    source = parse_config(raw, env={}).sources["a"]
    assert isinstance(source, JsonTlsSourceConfig | SyslogSourceConfig)
    assert source.identity == {"host-7": ("host-7", "agent-*"), "CN=relay": ("*",)}


def test_sources_without_an_identity_table_check_nothing() -> None:
    """By default a source has no identity table."""
    assert _source(parse_config(MINIMAL, env={})).identity is None


def test_identity_table_needs_tls_with_a_client_ca(pems: _Pems) -> None:
    """An identity table without client certificates to check is refused at its key path."""
    raw = _identity_source(pems, {"host-7": ["host-7"]})
    del raw["sources"]["a"]["tls"]["client_ca"]
    assert _problems(raw) == [
        "sources.a.identity: requires tls.client_ca (without client certificates there is no "
        "identity to check)"
    ]
    raw = _raw(sources={"a": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:5514"}})
    raw["sources"]["a"]["identity"] = {"host-7": ["host-7"]}
    assert _problems(raw) == [
        'sources.a.identity: requires mode = "tls" and tls.client_ca (without client '
        "certificates there is no identity to check)"
    ]


def test_identity_values_must_be_lists_of_patterns(pems: _Pems) -> None:
    """An identity value that is not a list of non-empty strings is refused at its key path."""
    raw = _identity_source(pems, {"host-7": "host-7", "CN=relay": ["*", 3], "h8": [""]})
    assert _problems(raw) == [
        'sources.a.identity.host-7: expected a list of strings, got "host-7"',
        "sources.a.identity.CN=relay: expected a list of strings, got a list",
        'sources.a.identity.h8: expected patterns that are not empty, got ""',
    ]
    assert _problems(_identity_source(pems, {})) == [
        "sources.a.identity: expected at least one certificate identity, got an empty table"
    ]


# --- [chain] ---------------------------------------------------------------------------------


def test_custom_chain_profile_takes_its_fields() -> None:
    """A custom [chain] profile builds the Profile the verifier uses, with the verifier's bounds."""
    raw = _raw()
    raw["chain"] = {
        "profile": "custom",
        "agent": "actor.id",
        "sequence": "seq",
        "hash": "digest",
        "prev_hash": "previous",
        "algorithm": "sha512",
        "dedupe_window": 8,
        "max_open_gaps": 3,
        "checkpoint_interval": "2s",
    }
    chain = parse_config(raw, env={}).chain
    fields = chain.profile_fields
    assert (fields.agent, fields.sequence, fields.hash, fields.prev_hash) == (
        ("actor", "id"),
        "seq",
        "digest",
        "previous",
    )
    assert (fields.algorithm, fields.prefix, fields.genesis) == ("sha512", "sha512:", "")
    assert (chain.dedupe_window, chain.max_open_gaps, chain.checkpoint_interval) == (8, 3, 2.0)
    line = parse_config({**raw, "chain": {"profile": "custom", "hashing": "line"}}, env={})
    assert line.chain.profile_fields.line_hashed
    assert line.chain.profile_fields.genesis == "GENESIS"


def test_chain_field_keys_need_a_custom_profile_and_fit_its_hashing() -> None:
    """Field keys with a shipped profile, or sequence/hash with line hashing, are each refused
    at their key path."""
    raw = _raw()
    raw["chain"] = {"profile": "seed", "hash": "h"}
    assert _problems(raw) == ['chain.hash: only a custom profile takes this key (profile = "seed")']
    raw["chain"] = {"profile": "custom", "hashing": "line", "sequence": "n"}
    assert _problems(raw) == ['chain.sequence: a profile with hashing = "line" has no such field']
    raw["chain"] = {"profile": "custom", "algorithm": "md5"}
    assert _problems(raw) == ['chain.algorithm: expected "sha256" or "sha512", got "md5"']
