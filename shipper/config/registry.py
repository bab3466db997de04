"""Source and sink types: each registers its config class under its ``type`` name.

A source or sink type is a frozen dataclass beside its component (``JsonTlsSourceConfig`` in
``shipper/sources/json_tls.py``, ``FileSinkConfig`` in ``shipper/sinks/file.py``), a subclass of
``SourceConfig`` or ``SinkConfig`` with:

* ``kind``, its ``type`` name;
* ``read(table, common)``, a classmethod that reads its own keys with the shared reader
  (``shipper.config.reader.Table``) and returns the config (``cls(**common, ...)``: ``common``
  holds what every table of its kind has), or None after recording a problem;
* ``build(...)``, which makes the runtime component from it (``XConfig.build() -> X``).

It registers itself when its module is imported::

    @SINK_TYPES.register
    @dataclass(frozen=True, kw_only=True)
    class FileSinkConfig(SinkConfig):
        kind: ClassVar[str] = "file"
        ...

``parse_config`` reads what every table of a kind shares here, once: ``type`` (an unknown one is
refused with the registered names and the nearest one suggested), and for a sink ``inputs``
(source ids, default all); then it hands the table to the type's ``read`` and reports the keys
nobody read. The built-in types are found without a central list: the first time a registry is
asked for its types, it imports every module of its package (``shipper.sources``,
``shipper.sinks``) whose name does not start with ``_``; a module that defines a type registers
it. That import happens when a config is parsed, never when ``shipper.config`` is imported, so a
component module may import ``shipper.config`` freely.

Tests register types of their own with ``registered`` (a context manager), or ``register`` and
``unregister``.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, NamedTuple, TypedDict, TypeVar

from shipper.config.reader import REQUIRED, Table, did_you_mean, one_of, show
from shipper.config.values import Address
from shipper.events import ALERT_SOURCE_ID

if TYPE_CHECKING:
    import trio

    from shipper.chain import Profile
    from shipper.events import Event
    from shipper.redact import Redaction
    from shipper.sinks import Sink
    from shipper.sinks.base import SinkContext
    from shipper.sources import Source


class Endpoint(NamedTuple):
    """Where a source listens, for the check that no two sources share it: the key that names
    it (``address``, ``path``), the transport (``tcp``, ``udp``, ``unix``) and the value."""

    key: str
    transport: str
    value: Address | Path


class SourceCommon(TypedDict):
    """The keys every source table has besides ``type``, read once for all source types."""

    id: str


@dataclass(frozen=True, kw_only=True)
class SourceConfig(ABC):
    """What every source type's config is: an ``id``, a ``kind``, a reader and a builder."""

    kind: ClassVar[str]
    id: str

    @classmethod
    @abstractmethod
    def read(cls, table: Table, common: SourceCommon) -> SourceConfig | None:
        """The config in ``table``: ``common`` (already read) plus the type's own keys, as
        ``cls(**common, ...)``; None after recording a problem."""

    @abstractmethod
    def build(self, send: trio.MemorySendChannel[list[Event]], profile: Profile) -> Source:
        """The runtime source, handing its batches to ``send``; ``profile``: the chain's."""

    def endpoint(self) -> Endpoint | None:
        """Where this source listens (None: nowhere another source could clash with, such as
        port 0)."""
        return None


class SinkCommon(TypedDict):
    """The keys every sink table has besides ``type``, read once for all sink types."""

    id: str
    inputs: tuple[str, ...] | None
    redact: Redaction | None


@dataclass(frozen=True, kw_only=True)
class SinkConfig(ABC):
    """What every sink type's config is: an ``id``, the ``inputs`` it takes (source ids; None:
    all), a ``kind``, a reader and a builder."""

    kind: ClassVar[str]
    #: Whether the sink forwards events to receivers (rather than archiving them): only those
    #: take ``redact`` (an archive keeps events as received, their hash chains intact).
    forwards: ClassVar[bool] = False
    id: str
    inputs: tuple[str, ...] | None = None
    redact: Redaction | None = None

    @classmethod
    @abstractmethod
    def read(cls, table: Table, common: SinkCommon) -> SinkConfig | None:
        """The config in ``table``: ``common`` (already read) plus the type's own keys, as
        ``cls(**common, ...)``; None after recording a problem."""

    @abstractmethod
    def build(self, context: SinkContext) -> Sink:
        """The runtime sink, with what it may have of the daemon (``context``)."""

    def own_counters(self) -> Mapping[str, str]:
        """The counters the sink built from this config keeps of its own
        (``shipper.sinks.base.Counting``), known without building it: a daemon whose sink runs in
        a process of its own declares them too. Empty by default."""
        return {}

    def named_sources(self) -> Iterable[tuple[str, str]]:
        """The source ids the type's own keys name, each with its key (relative to the sink's
        table), so that a name no source has is refused like an unknown ``inputs`` entry
        (``shipper``, the daemon's own events, is a source too)."""
        return ()

    async def check_remote(self) -> None:
        """Check the destination is safe to write to, where one can tell before writing (an
        S3 bucket without Object Lock is not, when a lock mode is configured): raise
        ``UnsafeDestination`` if it is not, ``DestinationUnavailable`` if it cannot be asked
        now. The daemon runs it at start and refuses to start on the first; ``shipper validate
        --check-remote`` runs it too."""
        return


C = TypeVar("C", SourceConfig, SinkConfig)


class Registry(Generic[C]):
    """The types of one kind of component (sources, sinks), by ``type`` name."""

    def __init__(self, what: str, package: str) -> None:
        self.what = what  # "source", "sink": for messages
        self._package = package
        self._types: dict[str, type[C]] = {}
        self._loaded = False

    def register(self, cls: type[C]) -> type[C]:
        """Add ``cls`` under ``cls.kind`` (a class decorator); a name taken by another class is
        a ValueError (registering the same class again is not)."""
        name = cls.kind
        other = self._types.get(name)
        if other is not None and other is not cls:
            raise ValueError(f'{self.what} type "{name}" is already registered ({other.__name__})')
        self._types[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove the type ``name`` (KeyError if there is none)."""
        del self._types[name]

    @contextmanager
    def registered(self, cls: type[C]) -> Iterator[type[C]]:
        """``cls`` registered for the ``with`` block (the built-in types loaded too)."""
        self._load()
        self.register(cls)
        try:
            yield cls
        finally:
            self.unregister(cls.kind)

    def get(self, name: str) -> type[C] | None:
        """The type registered as ``name``, or None."""
        self._load()
        return self._types.get(name)

    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        self._load()
        return sorted(self._types)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def _load(self) -> None:
        """Import the package's public modules once, so that the built-in types register."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self._package)
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._package}.{module.name}")

    def type_of(self, table: Table) -> type[C] | None:
        """The registered type that ``table``'s ``type`` key names; None after recording a
        problem (missing, or not a registered name)."""
        name = table.convert("type", REQUIRED, _as_is, None)
        if name is None:  # missing, or an interpolation problem: reported
            if not table.has("type"):  # the table is skipped: a misspelt "type" is said here
                present = table.keys()
                misspelt = [key for key in present if did_you_mean(key, ["type"])]
                table.refuse(misspelt, 'unknown key (did you mean "type"?)')
            return None
        cls = self.get(name) if isinstance(name, str) else None
        if cls is None:
            names = self.names()
            hint = did_you_mean(name, names) if isinstance(name, str) else ""
            table.problem("type", f"expected {one_of(names)}, got {show(name)}{hint}")
        return cls


def _as_is(value: object) -> object:
    return value


SOURCE_TYPES: Registry[SourceConfig] = Registry("source", "shipper.sources")
SINK_TYPES: Registry[SinkConfig] = Registry("sink", "shipper.sinks")


def read_sources(table: Table) -> dict[str, SourceConfig]:
    """``[sources.ID]`` tables: each one's type, then the type's own keys; then the check that
    no two sources listen on the same endpoint."""
    sources: dict[str, SourceConfig] = {}
    for source_id, source_table in table.subtables():
        if source_id == ALERT_SOURCE_ID:
            table.problem(
                source_id,
                f"{show(source_id)} is the id of the daemon's own events (alerts, seals): "
                "give this source another id",
            )
            source_table.skip()
            continue
        cls = SOURCE_TYPES.type_of(source_table)
        if cls is None:
            source_table.skip()
            continue
        source = cls.read(source_table, SourceCommon(id=source_id))
        source_table.finish()
        if source is not None:
            sources[source_id] = source
    _check_distinct_endpoints(sources, table)
    return sources


def read_sinks(table: Table, source_ids: Sequence[str]) -> dict[str, SinkConfig]:
    """``[sinks.ID]`` tables: each one's type and ``inputs``, then the type's own keys."""
    sinks: dict[str, SinkConfig] = {}
    for sink_id, sink_table in table.subtables():
        cls = SINK_TYPES.type_of(sink_table)
        inputs = sink_table.string_list("inputs")
        for index, name in enumerate(inputs or ()):
            if name not in source_ids:
                sink_table.problem(
                    f"inputs[{index}]",
                    f"expected one of the sources ({', '.join(source_ids)}), got {show(name)}",
                )
        redact = None
        redact_table = sink_table.table("redact")
        if redact_table is not None:
            from shipper.redact import Redaction  # (it reads tables: imported once they exist)

            redact = Redaction.read(redact_table)
            if cls is not None and not cls.forwards:
                sink_table.problem(
                    "redact",
                    f"a {cls.kind} sink archives events as received (their hash chains must "
                    "verify): only forwarding sinks take redact",
                )
        if cls is None:
            sink_table.skip()
            continue
        sink = cls.read(sink_table, SinkCommon(id=sink_id, inputs=inputs, redact=redact))
        sink_table.finish()
        if sink is not None:
            for key, name in sink.named_sources():
                if name not in source_ids and name != ALERT_SOURCE_ID:
                    known = ", ".join([*source_ids, ALERT_SOURCE_ID])
                    sink_table.problem(
                        key, f"expected one of the sources ({known}), got {show(name)}"
                    )
            sinks[sink_id] = sink
    return sinks


def _check_distinct_endpoints(sources: Mapping[str, SourceConfig], table: Table) -> None:
    """No two sources on one address (per transport: UDP and TCP may share a port) or path."""
    seen: dict[tuple[str, Address | Path], str] = {}
    for source_id, source in sources.items():
        endpoint = source.endpoint()
        if endpoint is None:
            continue
        other = seen.setdefault((endpoint.transport, endpoint.value), source_id)
        if other != source_id:
            noun = "an address" if endpoint.key == "address" else f"a {endpoint.key}"
            table.problem(
                f"{source_id}.{endpoint.key}",
                f'expected {noun} not used by source "{other}", got "{endpoint.value}"',
            )
