"""Redaction: what a forwarding sink leaves out of, or hashes in, each event before it leaves.

A forwarding sink (``cef_syslog``, ``webhook``) may take a ``redact`` table::

    [sinks.hook.redact]
    remove = ["record.rationale", "source.peer"]    # these keys are taken out
    hash = ["record.userId", "agent"]               # these values are replaced by a keyed hash
    key = "${SHIPPER_REDACT_KEY}"                   # the HMAC key (a secret; needed by hash)

* A path is dotted, from the top of the envelope (``shipper.events``): ``agent``,
  ``record.userId``, ``record.requestDetails.ssn``. Where a step meets a list, the rest of the
  path applies to each of its items (``record.messages.content``). A path that leads nowhere in
  an event changes nothing in it.
* ``hash`` replaces the value with ``"hmac-sha256:" + hex(HMAC-SHA256(key, text))``, where
  ``text`` is the value's compact JSON text with sorted keys (a string with its quotes:
  ``"alice@example.com"``). Equal values give equal hashes, so a receiver still correlates them
  (and whoever holds the key can recognise a known value); without the key they cannot be read
  back. The key must be at least 16 bytes.
* ``id`` and ``v`` cannot be redacted; nothing else is recomputed, so the record's own ``hash``
  (unless named) still matches the archived event, which keeps the original: the archive sinks
  take no ``redact``.
* What is applied: every ``remove``, then every ``hash``, in the order given. The event is
  re-encoded (the archive keeps the exact bytes the agent sent; a forwarded copy need not).

This module is sans-IO: it reads the table and rewrites envelopes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from shipper.config.reader import Table
from shipper.config.values import Secret

#: The prefix of a hashed value.
HASH_PREFIX: Final = "hmac-sha256:"
#: The shortest key ``hash`` accepts, in bytes.
MIN_KEY_BYTES: Final = 16
_UNREDACTABLE: Final = frozenset({"id", "v"})

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Redaction:
    """Paths to remove and to hash (see the module docstring)."""

    remove: tuple[Path, ...] = ()
    hash: tuple[Path, ...] = ()
    key: Secret | None = None

    @classmethod
    def read(cls, table: Table) -> Redaction | None:
        """The ``redact`` table; None after recording a problem."""
        before = table.problem_count
        remove = _paths(table, "remove")
        hashed = _paths(table, "hash")
        key = table.secret("key", None, check=_long_enough)
        if hashed and key is None and not table.has("key"):
            table.problem("key", "required key is missing (hash needs a key)")
        if not remove and not hashed:
            table.problem("", "expected remove or hash (a list of field paths)")
        table.finish()
        if table.problem_count > before:
            return None
        return cls(remove, hashed, key)

    def apply(self, envelope: bytes) -> bytes:
        """``envelope`` (one JSON object) redacted, re-encoded."""
        event = orjson.loads(envelope)
        self.apply_to(event)
        return orjson.dumps(event)

    def apply_to(self, event: dict[str, Any]) -> None:
        """Redact a parsed envelope in place."""
        for path in self.remove:
            _visit(event, path, _remove)
        if self.hash:
            key = self.key.reveal().encode() if self.key is not None else b""

            def keyed(parent: dict[str, Any], name: str) -> None:
                text = orjson.dumps(parent[name], option=orjson.OPT_SORT_KEYS)
                parent[name] = HASH_PREFIX + hmac.new(key, text, hashlib.sha256).hexdigest()

            for path in self.hash:
                _visit(event, path, keyed)


def _remove(parent: dict[str, Any], name: str) -> None:
    del parent[name]


def _visit(value: Any, path: Path, action: Callable[[dict[str, Any], str], None]) -> None:
    """Call ``action(parent, last step)`` wherever ``path`` leads in ``value``."""
    if isinstance(value, list):
        for item in value:
            _visit(item, path, action)
        return
    if not isinstance(value, dict) or path[0] not in value:
        return
    if len(path) == 1:
        action(value, path[0])
    else:
        _visit(value[path[0]], path[1:], action)


def _paths(table: Table, name: str) -> tuple[Path, ...]:
    paths: list[Path] = []
    for index, text in enumerate(table.string_list(name) or ()):
        path = tuple(text.split("."))
        if not text or "" in path:
            table.problem(f"{name}[{index}]", f'expected a dotted field path, got "{text}"')
        elif path[0] in _UNREDACTABLE:
            table.problem(
                f"{name}[{index}]",
                f'"{path[0]}" cannot be redacted (receivers match events by it)',
            )
        else:
            paths.append(path)
    return tuple(paths)


def _long_enough(value: str) -> None:
    if len(value.encode()) < MIN_KEY_BYTES:
        raise ValueError(f"expected a key of at least {MIN_KEY_BYTES} bytes")
