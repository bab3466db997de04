"""The archive manifest: one sealed entry per archived object, each chained to the one before.

The ``s3`` sink writes, for every data object it stores, a manifest entry as an object of its
own, locked like the data. ``shipper verify`` walks the entries to prove the archive complete and
unaltered. Layout under the archive's prefix (``s3://bucket/<prefix>``)::

    <prefix>manifests/00000000000000000001.json     entry 1 (the first one the sink wrote)
    <prefix>manifests/00000000000000000002.json     entry 2, whose "prev" is entry 1's hash
    <prefix><key_prefix><epoch>-<first id>-<class>.jsonl.gz   the data objects the entries name
                                                    (.jsonl.zst, .jsonl: by compression)

An entry is one JSON object on one line, LF-ended, keys in this order::

    {"v":1,"seq":2,"prev":"sha256:<hex of entry 1's bytes>",
     "sink":"s3","sealed_at":"2026-12-02T18:00:00.000000Z",
     "object":{"key":"year=2026/month=12/day=02/9f86d081884c7d65-7-1024-default.jsonl.gz",
               "sha256":"<hex of the stored bytes>","bytes":5210,"events":40,
               "compression":"gzip"},
     "wal":{"epoch":"9f86d081884c7d65","after":"7-0","first":"7-1024","last":"7-91234",
            "covered":"7-91234"},
     "agents":{"agent-a":{"first":{"sequence":12,"hash":"sha256:..."},
                          "last":{"sequence":51,"hash":"sha256:..."}}},
     "retention":{"class":"default","mode":"COMPLIANCE","period":"3y",
                  "retain_until":"2029-12-02T18:00:00Z"}}

* ``seq`` counts from 1 without holes; ``prev`` is ``"sha256:" + hex(sha256(exact bytes of
  entry seq-1))``, null for entry 1. The **head** is the hash of the newest entry: it names the
  whole archive, as a git commit names its history. Removing, replacing or reordering an entry
  breaks the links after it; removing the newest entries together is caught by comparing with a
  head witnessed elsewhere (the ``shipper.archive_seal`` events, ``verify --expect-head``).
* ``object.sha256`` is of the object's bytes as stored (compressed); ``events`` counts its lines.
* ``wal``: the WAL's epoch (16 hex digits naming the WAL directory's lifetime), the ids (WAL positions) of the object's first and last event, and the
  sink's progress: ``after`` is how far the sink had archived everything before this entry (null
  for the first entry of an epoch), ``covered`` how far after it. An object holds the events of
  one retention class and one key prefix, so a batch from the WAL can become several objects;
  all of a batch's entries but the last have ``covered == after`` (the last too while objects of
  a batch cut short earlier hold events after it). Within an epoch each entry's ``after`` equals
  the previous entry's ``covered``: the ranges are contiguous. (``covered`` is null only for
  entries before the first that covers part of the epoch.)
* ``agents``: for each agent with chained events in the object, the sequence and hash of its
  first and last one (in WAL order), so a chain can be followed across objects.
* ``retention``: the events' retention class, the lock mode (null: the object is not locked),
  the class's period (``"<n>d"`` or ``"<n>y"``, calendar years) and the retain-until date set on
  the object.

This module is sans-IO: it encodes, parses and links entries; reading and writing them is the
sink's and verify's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

MANIFEST_VERSION: Final = 1
#: The folder, under the archive's prefix, that holds the entries.
MANIFEST_DIR: Final = "manifests/"
_KEY_RE: Final = re.compile(r"(\d{20})\.json")
_HASH_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_ID_RE: Final = re.compile(r"\d+-\d+")


class ManifestError(ValueError):
    """Bytes that are not a manifest entry (the archive was altered, or written by something
    else): what is wrong with them."""


def entry_hash(data: bytes) -> str:
    """The hash that names an entry (and, for the newest, the archive): of its exact bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_key(prefix: str, seq: int) -> str:
    """The key of entry ``seq`` under the archive's ``prefix``."""
    return f"{prefix}{MANIFEST_DIR}{seq:020d}.json"


def seq_of(key: str, prefix: str) -> int | None:
    """The ``seq`` an entry's key names, or None if ``key`` is not an entry's."""
    if not key.startswith(prefix + MANIFEST_DIR):
        return None
    match = _KEY_RE.fullmatch(key[len(prefix) + len(MANIFEST_DIR) :])
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class Link:
    """One chained event of an agent: its sequence and hash."""

    sequence: int
    hash: str

    def as_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class AgentSpan:
    """An agent's first and last chained event in an object."""

    first: Link
    last: Link


@dataclass(frozen=True, slots=True)
class Retention:
    """How long an object is locked: its class, the lock mode (None: not locked), the class's
    period (``"<n>d"`` or ``"<n>y"``) and the retain-until date set on it (RFC 3339, UTC)."""

    cls: str
    mode: str | None
    period: str
    retain_until: str | None


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One manifest entry (see the module docstring)."""

    seq: int
    prev: str | None
    sink: str
    sealed_at: str
    key: str
    sha256: str
    size: int
    events: int
    compression: str
    epoch: str
    after: str | None
    first: str
    last: str
    covered: str | None
    retention: Retention
    agents: dict[str, AgentSpan] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The entry's bytes (one line, LF-ended): what is stored and hashed."""
        return (
            orjson.dumps(
                {
                    "v": MANIFEST_VERSION,
                    "seq": self.seq,
                    "prev": self.prev,
                    "sink": self.sink,
                    "sealed_at": self.sealed_at,
                    "object": {
                        "key": self.key,
                        "sha256": self.sha256,
                        "bytes": self.size,
                        "events": self.events,
                        "compression": self.compression,
                    },
                    "wal": {
                        "epoch": self.epoch,
                        "after": self.after,
                        "first": self.first,
                        "last": self.last,
                        "covered": self.covered,
                    },
                    "agents": {
                        agent: {"first": span.first.as_json(), "last": span.last.as_json()}
                        for agent, span in self.agents.items()
                    },
                    "retention": {
                        "class": self.retention.cls,
                        "mode": self.retention.mode,
                        "period": self.retention.period,
                        "retain_until": self.retention.retain_until,
                    },
                }
            )
            + b"\n"
        )

    @classmethod
    def parse(cls, data: bytes) -> ManifestEntry:
        """The entry in ``data``; ManifestError says what is wrong if it is not one."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"not JSON: {exc}") from exc
        try:
            return cls._from(raw)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"missing or mistyped field: {exc}") from exc

    @classmethod
    def _from(cls, raw: Any) -> ManifestEntry:
        if not isinstance(raw, dict) or raw.get("v") != MANIFEST_VERSION:
            raise ManifestError(f"not a version {MANIFEST_VERSION} manifest entry")
        obj, wal, retention = raw["object"], raw["wal"], raw["retention"]
        entry = cls(
            seq=_int(raw["seq"], "seq"),
            prev=_optional_str(raw["prev"], "prev"),
            sink=_str(raw["sink"], "sink"),
            sealed_at=_str(raw["sealed_at"], "sealed_at"),
            key=_str(obj["key"], "object.key"),
            sha256=_str(obj["sha256"], "object.sha256"),
            size=_int(obj["bytes"], "object.bytes"),
            events=_int(obj["events"], "object.events"),
            compression=_str(obj["compression"], "object.compression"),
            epoch=_str(wal["epoch"], "wal.epoch"),
            after=_optional_str(wal["after"], "wal.after"),
            first=_str(wal["first"], "wal.first"),
            last=_str(wal["last"], "wal.last"),
            covered=_optional_str(wal["covered"], "wal.covered"),
            retention=Retention(
                _str(retention["class"], "retention.class"),
                _optional_str(retention["mode"], "retention.mode"),
                _str(retention["period"], "retention.period"),
                _optional_str(retention["retain_until"], "retention.retain_until"),
            ),
            agents={
                _str(agent, "agents"): AgentSpan(_link(span["first"]), _link(span["last"]))
                for agent, span in raw["agents"].items()
            },
        )
        if entry.seq < 1 or (entry.prev is None) != (entry.seq == 1):
            raise ManifestError(f"seq {entry.seq} with prev {entry.prev!r}")
        if entry.prev is not None and not _HASH_RE.fullmatch(entry.prev):
            raise ManifestError(f"prev is not a sha256 hash: {entry.prev!r}")
        if not _HEX_RE.fullmatch(entry.sha256):
            raise ManifestError(f"object.sha256 is not a sha256 hex digest: {entry.sha256!r}")
        for name in ("first", "last", "covered", "after"):
            value = getattr(entry, name)
            if value is not None and not _ID_RE.fullmatch(value):
                raise ManifestError(f"wal.{name} is not a WAL id: {value!r}")
        return entry


def _link(raw: Any) -> Link:
    return Link(_int(raw["sequence"], "sequence"), _str(raw["hash"], "hash"))


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{name}: expected a string, got {value!r}")
    return value


def _optional_str(value: Any, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"{name}: expected a whole number, got {value!r}")
    return value


def id_key(event_id: str) -> tuple[int, int]:
    """A WAL id (``"<segment>-<offset>"``) as a sortable pair."""
    segment, _, offset = event_id.partition("-")
    return int(segment), int(offset)
