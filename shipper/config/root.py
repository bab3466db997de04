"""The whole config file: its top-level keys, ``[log]``, ``[chain]``, ``[buffer]``, and the
``[sources.ID]`` and ``[sinks.ID]`` tables through their registered types (``registry``)."""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from shipper.buffer.config import BufferConfig
from shipper.chain import ALGORITHMS, PROFILES, SEED, Profile
from shipper.config.reader import Table, show
from shipper.config.registry import SinkConfig, SourceConfig, read_sinks, read_sources
from shipper.config.values import Address, Secret, TlsServerConfig
from shipper.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from shipper.redact import Redaction

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: Final[tuple[LogLevel, ...]] = get_args(LogLevel)
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


@dataclass(frozen=True)
class ChainConfig:
    """``[chain]``: the chain profile (``shipper.chain``) and the verifier's bounds."""

    profile: str = "seed"
    profile_fields: Profile = SEED
    dedupe_window: int = 64
    max_open_gaps: int = 64
    checkpoint_interval: float = 10.0
    max_agents: int = 100_000


#: Events each tap client's buffer holds unless ``[api] tap_buffer`` says otherwise.
TAP_BUFFER: Final = 4096
#: The most ingest workers a config may ask for.
MAX_WORKERS: Final = 256


@dataclass(frozen=True)
class RuntimeConfig:
    """``[runtime]``: how the daemon spreads over processes. ``sink_processes`` (the default):
    each sink runs in a process of its own (``shipper.sinkproc``), reading the WAL's files
    through its cursor; false: every sink runs in the daemon's process. ``workers``: how many
    ingest worker processes serve the sources (``shipper.ingestproc``); 0: the sources run in
    the daemon's process."""

    sink_processes: bool = True
    workers: int = 0


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the operator's HTTP API (``shipper.api``); ``address`` None: no API.

    ``tls`` (``[api.tls]``: ``cert``, ``key``, optionally ``client_ca``): serve HTTPS.
    ``token`` (a secret, ``"${ENV}"``): every endpoint but ``/health/live`` then requires
    ``Authorization: Bearer <token>``. An address that is not loopback requires both: the API
    shows evidence (the tap) and state. ``sink_failing_after``: how long a sink may be failing
    before ``/health`` says the daemon is not healthy. ``redact``: what the tap leaves out of,
    or hashes in, each envelope (as a sink's); ``tap_buffer``: the events each tap client's
    buffer holds (``shipper.api.tap``)."""

    address: Address | None = None
    tls: TlsServerConfig | None = None
    token: Secret | None = None
    sink_failing_after: float = 300.0
    redact: Redaction | None = None
    tap_buffer: int = TAP_BUFFER


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address's host) is on this machine only: ``localhost``, 127.0.0.0/8
    or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _api(table: Table) -> ApiConfig:
    """``[api]``; a non-loopback address without TLS and a token is a problem."""
    address = table.address("address") if table.has("address") else None
    tls_table = table.table("tls")
    tls = tls_table.tls_server() if tls_table is not None else None
    token = table.secret("token", None)
    if token is not None and not token.reveal():
        table.problem("token", "expected a token, got an empty string")
    failing_after = table.duration("sink_failing_after", ApiConfig.sink_failing_after)
    redact = None
    redact_table = table.table("redact")
    if redact_table is not None:
        from shipper.redact import Redaction  # (it reads tables: imported once they exist)

        redact = Redaction.read(redact_table)
    tap_buffer = table.integer("tap_buffer", TAP_BUFFER, minimum=1, maximum=1_000_000)
    if address is not None and not is_loopback(address.host):
        missing = [
            what
            for what, absent in (
                ("[api.tls] (cert, key)", tls_table is None),
                ('token = "${ENV}" (a bearer token)', token is None),
            )
            if absent
        ]
        if missing:
            table.problem(
                "address",
                f"{address} is not a loopback address: serving the API beyond this machine "
                f"requires {' and '.join(missing)}",
            )
    return ApiConfig(address, tls, token, failing_after, redact, tap_buffer)


class Parsed:
    """What a config was parsed from: the TOML document and the environment given (None: the
    process's), for a sink process to parse the same again. Never shown: the environment holds
    secrets' values (not a dataclass, so a JSON log entry shows its ``repr`` too)."""

    __slots__ = ("env", "raw")

    def __init__(self, raw: Mapping[str, Any], env: Mapping[str, str] | None) -> None:
        self.raw = raw
        self.env = env

    def __repr__(self) -> str:
        return "Parsed(...)"


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; ``parsed``: what it was parsed from, if it was."""

    data_dir: Path = Path("var")
    shutdown_timeout: float = 30.0
    log_level: LogLevel = "info"
    chain: ChainConfig = field(default_factory=ChainConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    origin: str = ""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    parsed: Parsed | None = field(default=None, repr=False, compare=False)


def _chain(table: Table) -> ChainConfig:
    """``[chain]``: a shipped profile by name, or ``profile = "custom"`` and its fields."""
    name = table.choice("profile", CHAIN_PROFILES, ChainConfig.profile)
    window = table.integer("dedupe_window", ChainConfig.dedupe_window, minimum=1, maximum=1_000_000)
    max_gaps = table.integer(
        "max_open_gaps", ChainConfig.max_open_gaps, minimum=1, maximum=1_000_000
    )
    interval = table.duration("checkpoint_interval", ChainConfig.checkpoint_interval, minimum=0.1)
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


def parse_config(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, origin: str = ""
) -> Config:
    """Validate a parsed TOML document; raise ``ConfigError`` listing every problem."""
    problems: list[ConfigProblem] = []
    top = Table(raw, "", problems, os.environ if env is None else env)
    data_dir = top.path_("data_dir", Config.data_dir) or Config.data_dir
    unusable = directory_problem(data_dir)
    if unusable is not None:
        top.problem("data_dir", f"{unusable}, got {show(str(data_dir))}")
    shutdown_timeout = top.duration("shutdown_timeout", Config.shutdown_timeout)

    log_level: LogLevel = Config.log_level
    log = top.table("log")
    if log is not None:
        log_level = log.choice("level", LOG_LEVELS, Config.log_level)
        log.finish()

    chain = ChainConfig()
    chain_table = top.table("chain")
    if chain_table is not None:
        chain = _chain(chain_table)
        chain_table.finish()

    sink_processes = RuntimeConfig.sink_processes  # the class's defaults, read now
    workers = RuntimeConfig.workers
    runtime_table = top.table("runtime")
    if runtime_table is not None:
        sink_processes = runtime_table.boolean("sink_processes", sink_processes)
        workers = runtime_table.integer("workers", workers, minimum=0, maximum=MAX_WORKERS)
        runtime_table.finish()
    runtime = RuntimeConfig(sink_processes=sink_processes, workers=workers)

    api = ApiConfig()
    api_table = top.table("api")
    if api_table is not None:
        api = _api(api_table)
        api_table.finish()

    buffer = BufferConfig()
    buffer_table = top.table("buffer")
    if buffer_table is not None:
        buffer = BufferConfig.read(buffer_table)
        buffer_table.finish()

    sources: dict[str, SourceConfig] = {}
    sources_table = top.table("sources", required=True)
    if sources_table is not None:
        sources = read_sources(sources_table)
        if not sources_table.keys():
            top.problem("sources", "expected at least one source")

    sinks: dict[str, SinkConfig] = {}
    sinks_table = top.table("sinks", required=True)
    if sinks_table is not None:
        sinks = read_sinks(sinks_table, sources_table.keys() if sources_table else [])
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
        runtime=runtime,
        api=api,
        parsed=Parsed(raw, None if env is None else dict(env)),
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


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; ``ConfigError`` for any problem, file ones included."""
    return parse_config(read_toml(path), env, str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document of the config file at ``path``, not validated; ``ConfigError`` when it
    cannot be read or is not TOML."""
    origin = str(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
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
