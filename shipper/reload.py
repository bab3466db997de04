"""Hot reload: what a new config changes, and what a reload did.

A reload (SIGHUP, ``systemctl reload``, or the API) reads the config file again and hands it to
``Topology.reload``, which runs one reload at a time. This module holds the parts that need no
running daemon:

* ``effective``: the config the daemon goes on with. The keys that cannot change while it runs
  (``RESTART_KEYS``: the data directory, the WAL's settings, the chain, the runtime layout, the
  log level, the API's address) keep their running values, in the config and in what it was parsed from (the child
  processes parse that again), and are named in ``needs_restart``;
* ``Changes``: sources and sinks by id, added, removed or changed (their configs compare by
  value); the others are left alone;
* ``ReloadResult``: what a reload did (``as_dict`` for a log entry or an API answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipper.config import Config, parse_config

#: Top-level keys of the config file whose change takes a restart: (the TOML key, the
#: ``Config`` attributes it sets).
RESTART_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data_dir", ("data_dir",)),
    ("buffer", ("buffer",)),
    ("chain", ("chain",)),
    ("runtime", ("runtime",)),
    ("log", ("log_level",)),
    ("api", ("api",)),
)


@dataclass(frozen=True)
class Changes:
    """Ids of the sources and sinks a new config adds, removes or changes."""

    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    sinks_added: tuple[str, ...] = ()
    sinks_removed: tuple[str, ...] = ()
    sinks_changed: tuple[str, ...] = ()

    @classmethod
    def between(cls, old: Config, new: Config) -> Changes:
        def split(
            before: Mapping[str, object], after: Mapping[str, object]
        ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
            added = tuple(sorted(set(after) - set(before)))
            removed = tuple(sorted(set(before) - set(after)))
            changed = tuple(sorted(i for i in set(before) & set(after) if before[i] != after[i]))
            return added, removed, changed

        sources = split(old.sources, new.sources)
        sinks = split(old.sinks, new.sinks)
        return cls(*sources, *sinks)

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in self.__dataclass_fields__)


def effective(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to go on with after ``new`` was read, and the keys that changed in it and
    need a restart (they keep ``old``'s values, also in what the config was parsed from)."""
    if new.parsed is None or old.parsed is None:
        raise ValueError("a reload needs configs made by parse_config (a defect)")
    needs = [
        key
        for key, attributes in RESTART_KEYS
        if any(getattr(old, a) != getattr(new, a) for a in attributes)
    ]
    if not needs:
        return new, []
    raw = dict(new.parsed.raw)
    for key, _ in RESTART_KEYS:
        if key in old.parsed.raw:
            raw[key] = old.parsed.raw[key]
        else:
            raw.pop(key, None)
    kept = parse_config(raw, new.parsed.env, new.origin)
    return kept, needs


@dataclass
class ReloadResult:
    """What a reload did. ``problems``: why the new config was refused (the old one runs on),
    as ``shipper validate`` words them; ``failed``: sources or sinks that could not be started
    (by id, why: an address that cannot be bound); ``needs_restart``: config keys that changed
    and take effect at the next start only."""

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    started: dict[str, list[str]] = field(default_factory=lambda: {"sources": [], "sinks": []})
    stopped: dict[str, list[str]] = field(default_factory=lambda: {"sources": [], "sinks": []})
    restarted: dict[str, list[str]] = field(default_factory=lambda: {"sources": [], "sinks": []})
    failed: dict[str, str] = field(default_factory=dict)
    needs_restart: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "started": {k: list(v) for k, v in self.started.items()},
            "stopped": {k: list(v) for k, v in self.stopped.items()},
            "restarted": {k: list(v) for k, v in self.restarted.items()},
            "failed": dict(self.failed),
            "needs_restart": list(self.needs_restart),
        }
