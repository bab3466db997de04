"""Configuration: TOML in, validated frozen objects out.

The file format is a user-facing contract (README, "Configuration")::

    data_dir = "var"                 # top-level keys: data_dir, shutdown_timeout
    [log]                            # level
    [runtime]                        # sink_processes, workers (root.py)
    [api]                            # the operator's HTTP API: address, tls, token (root.py)
    [chain]                          # the chain profile and the verifier's bounds (root.py)
    [buffer]                         # the WAL (shipper/buffer/config.py)
    [sources.ID]                     # type = a registered source type, and its keys
    [sinks.ID]                       # type = a registered sink type, inputs, and its keys

Rules that hold for every key:

* Unknown keys are rejected, with the nearest known key suggested; an unknown ``type`` is
  rejected with the registered types listed and the nearest one suggested.
* Strings may hold ``${NAME}``: the value of environment variable NAME (a missing variable is an
  error naming it); ``$$`` is a literal ``$``; a ``${`` that opens no ``${NAME}`` is an error.
* Sizes take an integer number of bytes or a string with a unit: ``"512MB"`` (decimal: B, KB, MB,
  GB, TB) or ``"1GiB"`` (binary: KiB, MiB, GiB, TiB), at most ``"1024TiB"``.
* Durations take a number of seconds or a string: ``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``,
  ``"1d"``, or a sum such as ``"1m30s"``.
* Addresses are ``"host:port"`` (``"[::1]:port"`` for IPv6).
* Relative paths resolve against the working directory.
* Secrets (tokens, signing keys; usually ``"${NAME}"``) are never shown: not in a problem, not
  in a log entry, not in the ``repr`` of a config object (``values.Secret``).
* A client TLS table (a sink's connection) takes ``ca``, ``cert`` + ``key``, ``server_name`` and
  ``verify`` (``values.TlsClientConfig``); a listener's takes ``cert``, ``key``, ``client_ca``,
  ``require_client_cert`` (``values.TlsServerConfig``). Their files are loaded at validation.
* Every problem is reported as ``key.path: what is wrong, got <value>``; all problems of a file are
  reported at once, and a ``ConfigError`` carries them.

The package: ``reader`` (``Table``, the shared reader of one table: typed getters, problems,
unknown keys, ``${NAME}``), ``values`` (the value types and their parsers), ``registry`` (the
source and sink types, and what every source and sink table shares), ``root`` (the file as a
whole: ``Config``, ``parse_config``, ``load_config``).

Components own their config: each source or sink type is a config class beside its component,
registered under its ``type`` name, that reads its own keys and builds its runtime object
(``XConfig.build() -> X``); ``[buffer]`` is ``shipper.buffer.config.BufferConfig``, which the
WAL takes as it is. The keys each one takes are documented there and in the README.
"""

from __future__ import annotations

from shipper.buffer.config import BufferConfig
from shipper.config.reader import Table, interpolate_env
from shipper.config.registry import (
    SINK_TYPES,
    SOURCE_TYPES,
    Endpoint,
    SinkCommon,
    SinkConfig,
    SourceCommon,
    SourceConfig,
)
from shipper.config.root import (
    LOG_LEVELS,
    ApiConfig,
    ChainConfig,
    Config,
    LogLevel,
    RuntimeConfig,
    directory_problem,
    load_config,
    parse_config,
    read_toml,
)
from shipper.config.values import (
    MAX_SIZE,
    Address,
    Secret,
    TlsClientConfig,
    TlsServerConfig,
    literal_values,
    parse_address,
    parse_duration,
    parse_size,
)

__all__ = [
    "LOG_LEVELS",
    "MAX_SIZE",
    "SINK_TYPES",
    "SOURCE_TYPES",
    "Address",
    "ApiConfig",
    "BufferConfig",
    "ChainConfig",
    "Config",
    "Endpoint",
    "LogLevel",
    "RuntimeConfig",
    "Secret",
    "SinkCommon",
    "SinkConfig",
    "SourceCommon",
    "SourceConfig",
    "Table",
    "TlsClientConfig",
    "TlsServerConfig",
    "directory_problem",
    "interpolate_env",
    "literal_values",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
    "read_toml",
]
