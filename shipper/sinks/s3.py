"""Sink ``s3``: the immutable archive. Objects of JSON lines, locked, each sealed in a chained
manifest (``shipper.archive.manifest``) that ``shipper verify`` walks.

Layout in ``s3://<bucket>/<prefix>``::

    <prefix><key_prefix rendered>/<epoch>-<first id>-<class>.jsonl.gz   one object per group
    <prefix>manifests/<seq, 20 digits>.json                              one entry per object

An object holds one envelope per line (LF-ended), compressed (``gzip`` by default, ``zstd`` or
``none``: ``.jsonl.gz``, ``.jsonl.zst``, ``.jsonl``) at ``compression_level`` (``LEVELS``: gzip
is written by ISA-L's igzip, standard gzip several times faster than zlib's, at its levels 0 to
3; zstd at 1 to 19). Its key prefix is ``key_prefix`` with
``{{year}} {{month}} {{day}} {{hour}}`` from the event's ``received_at`` (UTC), ``{{source}}``
(the source id) and ``{{agent}}`` (the agent id, characters other than letters, digits, ``.``,
``_`` and ``-`` replaced by ``_``, at most 64; ``unknown`` for events without one); the default
is Hive-style, ``year=YYYY/month=MM/day=DD/``. ``<first id>`` is the WAL id of the object's first
event, ``<class>`` its retention class.

Rules:

* **One batch, several objects.** The driver's batch is split into groups of events with the
  same key prefix and retention class (``shipper.archive.retention``); each group is one object,
  written in the order of their first events.
* **Every object is written once.** Its key is deterministic (a retry writes the same key), the PUT
  carries ``If-None-Match: *`` (a 412 means the key is taken: the sink reads what it holds, and
  if those are the same events, byte for byte, it counts them as stored; if not, the batch is
  refused for good), an ``x-amz-checksum-sha256`` header, and with ``object_lock`` the lock mode
  and a retain-until date of now plus the class's period (and ``legal_hold``, SSE and
  ``storage_class`` when configured).
* **Every object is sealed.** After its object, the sink writes its manifest entry, locked until
  the longest class's period ends, and held like the data with ``legal_hold`` (every class's
  objects need the manifest). The entry's hash is
  the archive's new head; the sink emits it as a ``shipper.archive_seal`` event into the WAL,
  so that every sink (the SIEM, the webhooks, this archive) holds a witness of it, except for
  objects that hold nothing but seals (that would never end), and once more at each start.
* **Acknowledged only once stored.** ``deliver`` returns when every object and entry of the
  batch is stored; only then does the driver move the cursor.
* **Resume, exactly once.** At ``open`` the sink finds the newest entry (a doubling then halving
  search of entry keys, so a long archive costs a few dozen HEAD requests), and from it the head
  and how far the archive covers the WAL (``resume_point``: the driver leaves out what it
  holds). Entries of a batch cut short by a crash or a failure (``covered == after``) name
  objects whose events the sink reads back and leaves out when the WAL offers them again (and
  while some of those events lie after a batch, that batch's entries are cut short too, even
  when the batches after a restart are smaller); an object stored without its entry (a crash
  between the two) is found by its key (412) and sealed then.
* **No second chain.** With ``object_lock`` (a versioned bucket), a ``DELETE`` without a version
  id puts a delete marker on a key, which then looks missing, and takes ``If-None-Match: *``
  again, while its locked versions stay underneath. So the search's answer is trusted only if
  the newest entry it found has one version and the next seq has no version and no delete
  marker (``ListObjectVersions`` of each key; the search stops at the first key it finds
  missing, so a marker anywhere it looked lands it just below that marker). Otherwise the chain
  was tampered with: the sink writes nothing (no entry over the hidden ones, no cursor move, no
  dead letter), logs ``sink_s3_archive_tampered`` naming the key and what to do, raises a
  ``shipper.archive_alert`` event (once for each finding), and raises ``ArchiveTampered``, which
  the driver retries with backoff: once the delete markers are removed, it goes on by itself.
  Without ``object_lock`` nothing is checked (a bucket without versioning has no markers).
* **Errors.** Retried with capped exponential backoff (``shipper.sinks.driver``): 5xx,
  throttling, timeouts, no connection (``shipper.s3.S3Unavailable``), and a manifest seq taken by
  another writer (the sink reads the newest entry again), a tampered chain (``ArchiveTampered``,
  above). Refused for good, to the dead-letter
  area with the reason and an alert: 403, 400, a locked key holding other bytes. An endpoint
  unreachable at start never stops the daemon: the events wait in the WAL.
* **Object Lock check.** With ``object_lock.mode`` set, a bucket without Object Lock is refused:
  at start (``check_remote``: the daemon does not start) and at every ``open``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

import orjson
import trio

from shipper.archive.content import (
    MAX_OBJECT_BYTES,
    SUFFIXES,
    ContentError,
    chain_fields,
    decompress,
    ends,
    spans,
)
from shipper.archive.manifest import (
    AgentSpan,
    ManifestEntry,
    Retention,
    entry_hash,
    id_key,
    manifest_key,
)
from shipper.archive.retention import DEFAULT_CLASS, Classes, Period, Rule
from shipper.archive.store import KeyVersions, list_versions
from shipper.buffer.segment import Position
from shipper.config import SINK_TYPES, SinkCommon, SinkConfig, Table
from shipper.config.reader import show
from shipper.config.values import Secret, literal_values
from shipper.errors import DestinationUnavailable, UnsafeDestination
from shipper.events import ALERT_SOURCE_ID, BatchHeads, HeadReader, alert_event, utc_timestamp
from shipper.logging import get_logger
from shipper.metrics import Health
from shipper.s3 import (
    Body,
    NotFound,
    PreconditionFailed,
    S3Rejected,
    S3Settings,
    S3Unavailable,
    open_client,
    translated,
)
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext

log = get_logger("shipper.sinks.s3")

#: ``record.action`` of the event that witnesses a manifest head.
ARCHIVE_SEAL: Final = "shipper.archive_seal"
#: ``record.action`` of the alert raised when the manifest chain was tampered with.
ARCHIVE_ALERT: Final = "shipper.archive_alert"
DEFAULT_KEY_PREFIX: Final = "year={{year}}/month={{month}}/day={{day}}/"
PLACEHOLDERS: Final = ("year", "month", "day", "hour", "source", "agent")
_PLACEHOLDER_RE: Final = re.compile(r"\{\{\s*([a-z]+)\s*\}\}")
_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9._-]")
#: How many characters of ``received_at`` each time placeholder looks at (``_render``).
_TIME_CHARS: Final = {"year": 4, "month": 7, "day": 10, "hour": 13}
_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
Compression = Literal["gzip", "zstd", "none"]
#: Each compression's ``compression_level``: lowest, highest, default. gzip's are ISA-L's (1:
#: about a tenth of zlib's level 6 in time, objects a tenth larger; 3: nearly zlib 6's size, two
#: to three times the time of 1).
LEVELS: Final[dict[str, tuple[int, int, int]]] = {"gzip": (0, 3, 1), "zstd": (1, 19, 3)}
LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
SseAlgorithm = Literal["AES256", "aws:kms"]


#: Objects of up to 10000 events or 8 MiB of envelopes, at most 30 s after their first event.
S3_BATCHING: Final = BatchSettings(max_events=10_000, max_bytes=8 << 20, max_age=30.0)


class ArchiveTampered(DestinationUnavailable):
    """The manifest chain was tampered with where the sink would continue it (an entry hidden by
    a delete marker, or the newest written twice): writing on would start a second chain over
    the hidden one. Nobody but the operator can fix it (restore the archive: delete the
    markers); retried with backoff meanwhile, the sink goes on by itself once that is done."""


@dataclass(frozen=True)
class ObjectLock:
    """``object_lock = { mode = "COMPLIANCE", retention_days = N }``."""

    mode: LockMode
    retention_days: int | None = None


@SINK_TYPES.register
@dataclass(frozen=True, kw_only=True)
class S3SinkConfig(SinkConfig):
    """``type = "s3"``: the locked, sealed archive (see the module docstring and the README)."""

    kind: ClassVar[str] = "s3"
    bucket: str
    prefix: str = ""
    key_prefix: str = DEFAULT_KEY_PREFIX
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    compression: Compression = "gzip"
    compression_level: int = LEVELS["gzip"][2]
    object_lock: ObjectLock | None = None
    legal_hold: bool = False
    sse: SseAlgorithm | None = None
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    classes: Classes = field(
        default_factory=lambda: Classes(MappingProxyType({DEFAULT_CLASS: Period(1)}))
    )
    batching: BatchSettings = S3_BATCHING

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> S3SinkConfig | None:
        before = table.problem_count
        bucket = table.string("bucket")
        if bucket and not _BUCKET_RE.fullmatch(bucket):
            table.problem("bucket", f"expected an S3 bucket name, got {show(bucket)}")
        prefix = table.string("prefix", "")
        if prefix.startswith("/"):
            table.problem(
                "prefix", f"expected a key prefix without a leading '/', got {show(prefix)}"
            )
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        key_prefix = table.string("key_prefix", DEFAULT_KEY_PREFIX)
        for name in _PLACEHOLDER_RE.findall(key_prefix):
            if name not in PLACEHOLDERS:
                table.problem(
                    "key_prefix",
                    f"unknown placeholder {{{{{name}}}}}: expected "
                    + ", ".join(f"{{{{{p}}}}}" for p in PLACEHOLDERS),
                )
        if key_prefix.startswith("/") or "{" in _PLACEHOLDER_RE.sub("", key_prefix):
            table.problem("key_prefix", f"expected a key template, got {show(key_prefix)}")
        endpoint = table.string("endpoint", "") or None
        if endpoint is not None and not re.match(r"https?://", endpoint):
            table.problem("endpoint", f"expected an http:// or https:// URL, got {show(endpoint)}")
        region = table.string("region", cls.region)
        access_key_id = table.secret("access_key_id", None)
        secret_access_key = table.secret("secret_access_key", None)
        session_token = table.secret("session_token", None)
        if (access_key_id is None) != (secret_access_key is None):
            table.problem(
                "secret_access_key" if secret_access_key is None else "access_key_id",
                "access_key_id and secret_access_key go together (or neither, for the AWS "
                "credential chain)",
            )
        compression = table.choice("compression", literal_values(Compression), "gzip")
        compression_level = _read_level(table, compression)
        lock = _read_lock(table)
        classes = _read_classes(table, lock)
        legal_hold = table.boolean("legal_hold", False)
        sse_name = table.string("sse", "")
        sse: SseAlgorithm | None = None
        if sse_name:
            sse = table.choice("sse", literal_values(SseAlgorithm), "AES256")
        sse_kms_key_id = table.string("sse_kms_key_id", "") or None
        if sse_kms_key_id is not None and sse != "aws:kms":
            table.problem("sse_kms_key_id", 'only sse = "aws:kms" takes a key id')
        storage_class = table.string("storage_class", "") or None
        batching = _read_batch(table, cls.batching)
        if table.problem_count > before or classes is None:
            return None
        return cls(
            **common,
            bucket=bucket,
            prefix=prefix,
            key_prefix=key_prefix,
            endpoint=endpoint,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            compression=compression,
            compression_level=compression_level,
            object_lock=lock,
            legal_hold=legal_hold,
            sse=sse,
            sse_kms_key_id=sse_kms_key_id,
            storage_class=storage_class,
            classes=classes,
            batching=batching,
        )

    @property
    def settings(self) -> S3Settings:
        return S3Settings(
            self.region,
            self.endpoint,
            self.access_key_id,
            self.secret_access_key,
            self.session_token,
        )

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def build(self, context: SinkContext) -> S3Sink:
        return S3Sink(self, context)

    def named_sources(self) -> Iterator[tuple[str, str]]:
        for index, rule in enumerate(self.classes.rules):
            for name in rule.sources:
                yield f"retention.rules[{index}].source", name

    async def check_remote(self) -> None:
        """With a lock mode set, the bucket must have Object Lock enabled."""
        if self.object_lock is None:
            return
        async with open_client(self.settings) as client:
            try:
                await _check_lock(client, self)
            except S3Rejected as exc:
                raise UnsafeDestination(f"sink {self.id}: {exc}") from exc


def _read_level(table: Table, compression: str) -> int:
    """``compression_level``, in the range of ``compression`` (``LEVELS``); none for ``none``."""
    if compression not in LEVELS:
        if table.has("compression_level"):
            table.problem("compression_level", f'compression = "{compression}" takes no level')
        return 0
    low, high, default = LEVELS[compression]
    return table.integer("compression_level", default, minimum=low, maximum=high)


def _read_lock(table: Table) -> ObjectLock | None:
    lock_table = table.table("object_lock")
    if lock_table is None:
        return None
    mode = lock_table.choice("mode", literal_values(LockMode))
    days = lock_table.integer("retention_days", 0, minimum=1, maximum=36_600) or None
    lock_table.finish()
    return ObjectLock(mode, days)


def _read_classes(table: Table, lock: ObjectLock | None) -> Classes | None:
    """``[retention.classes]`` and ``[[retention.rules]]``; without them, one class, ``default``,
    of ``object_lock.retention_days``."""
    periods: dict[str, Period] = {}
    rules: list[Rule] = []
    retention = table.table("retention")
    if retention is not None:
        classes_table = retention.table("classes", required=True)
        if classes_table is not None:
            names = classes_table.keys()
            for name in names:
                period = classes_table.convert(name, None, Period.parse, None)
                if period is not None:
                    periods[name] = period
        for rule_table in retention.tables("rules"):
            rule = _read_rule(rule_table)
            if rule is not None and rule.cls not in periods and classes_table is not None:
                rule_table.problem(
                    "class", f"no such class in {classes_table.path}, got {show(rule.cls)}"
                )
            elif rule is not None:
                rules.append(rule)
            rule_table.finish()
        retention.finish()
        if lock is None:
            table.problem("retention", "retention classes need object_lock (a mode to lock with)")
    if DEFAULT_CLASS not in periods:
        if lock is not None and lock.retention_days is not None:
            periods[DEFAULT_CLASS] = Period(lock.retention_days)
        elif lock is not None:
            table.problem(
                "object_lock.retention_days",
                "required key is missing (or give a retention class named default)",
            )
            return None
        else:
            periods[DEFAULT_CLASS] = Period(1)  # not locked: the period is only recorded
    elif lock is not None and lock.retention_days is not None:
        table.problem(
            "object_lock.retention_days",
            "give the default period once: here or as retention.classes.default",
        )
    try:
        return Classes(MappingProxyType(periods), tuple(rules))
    except ValueError as exc:
        table.problem("retention", str(exc))
        return None


def _read_rule(table: Table) -> Rule | None:
    cls = table.string("class")
    sources = _one_or_many(table, "source")
    agents = _one_or_many(table, "agent")
    path = table.string("field", "")
    equals: tuple[Any, ...] = ()
    if table.has("equals"):
        raw = table.convert("equals", None, lambda v: v, None)
        equals = tuple(raw) if isinstance(raw, list) else (raw,)
    if bool(path) != bool(equals):
        table.problem("field" if not path else "equals", "field and equals go together")
    if not (sources or agents or path):
        table.problem("", "a rule needs a condition: source, agent, or field and equals")
        return None
    return Rule(cls, sources, agents, tuple(path.split(".")) if path else (), equals)


def _one_or_many(table: Table, name: str) -> tuple[str, ...]:
    if not table.has(name):
        return ()
    value = table.convert(name, None, lambda v: v, None)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    table.problem(name, f"expected a string or a list of strings, got {show(value)}")
    return ()


def _read_batch(table: Table, default: BatchSettings) -> BatchSettings:
    batch = table.table("batch")
    if batch is None:
        return default
    max_events = batch.integer("max_events", default.max_events, minimum=1, maximum=1_000_000)
    max_bytes = batch.size("max_bytes", default.max_bytes, minimum=1024)
    timeout = batch.duration("timeout", default.max_age)
    batch.finish()
    return BatchSettings(max_events, max_bytes, timeout)


async def _check_lock(client: Any, config: S3SinkConfig) -> None:
    """Raise S3Rejected unless the bucket has Object Lock enabled."""
    try:
        with translated(f"reading the Object Lock configuration of bucket {config.bucket}"):
            answer = await client.get_object_lock_configuration(Bucket=config.bucket)
    except S3Rejected as exc:
        if "ObjectLock" in exc.code:
            answer = {}  # (ObjectLockConfigurationNotFoundError: the bucket has none)
        elif isinstance(exc, NotFound):
            raise S3Rejected(
                f"bucket {config.bucket} does not exist at {config.settings.where}", exc.code
            ) from exc
        else:
            raise
    enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
    if enabled != "Enabled":
        raise S3Rejected(
            f"bucket {config.bucket} has no Object Lock, and object_lock.mode is "
            f"{config.object_lock.mode if config.object_lock else None}: create the bucket with "
            "Object Lock enabled (it cannot be added to objects later), or remove object_lock",
            "ObjectLockNotEnabled",
        )


# --- the sink ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """Events of one key prefix and retention class: their envelopes and parsed heads."""

    directory: str
    cls: str
    lines: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    #: Per event, its chain link (``content.chain_fields``); a hash of None: not read yet.
    links: list[tuple[str, int, str | None] | None] = field(default_factory=list)
    seals_only: bool = True
    #: The links of each agent's first and last chained event only, None for the others (a
    #: batch taken whole): enough for the spans of all of it, not of a part.
    sparse: bool = False


@dataclass(frozen=True, slots=True)
class _Stored:
    """An object as stored: its key, bytes' digest and size, retention, and what it holds."""

    key: str
    sha256: str
    size: int
    retain_until: str | None
    mode: str | None
    group: _Group


class S3Sink(SinkBase):
    """Writes locked objects and their sealed manifest entries (see the module docstring)."""

    kind = "s3"

    def __init__(self, config: S3SinkConfig, context: SinkContext) -> None:
        super().__init__(config.id)
        self.config = config
        self.batching = config.batching
        # Reading back an object of this archive stops past this (a decompression bomb): one
        # this sink wrote holds a batch, at most max_bytes of envelopes and one more envelope.
        self._read_limit = max(MAX_OBJECT_BYTES, 2 * config.batching.max_bytes)
        self._context = context
        self._profile = context.profile
        self._client: Any = None
        self._client_cm: Any = None
        self._epoch = "0"
        self._seq = 0  # the newest manifest entry's seq (0: none)
        self._head: str | None = None  # its hash
        self._covered: Position | None = None  # how far the archive covers this epoch's WAL
        self._held: set[str] = set()  # ids stored in objects beyond _covered
        self._sealed_keys: set[str] = set()  # keys of objects beyond _covered with an entry
        self._state_known = False
        self._alerted: str | None = None  # the tampering last raised as an alert
        self._compress = _compressor(config.compression, config.compression_level)
        self.extension = SUFFIXES[config.compression]
        self._whole = _whole_batches(config.prefix + config.key_prefix, config.classes)
        self._batch_heads = BatchHeads()

    # --- the contract -----------------------------------------------------------------------

    async def open(self, epoch: str) -> None:
        self._epoch, self._state_known = epoch, False  # read from the archive at each open
        self._client_cm = open_client(self.config.settings)
        self._client = await self._client_cm.__aenter__()
        if self.config.object_lock is not None:
            try:
                await _check_lock(self._client, self.config)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.close()
                raise

    async def resume_point(self) -> Position | None:
        if not self._state_known:
            await self._load_state()
        return self._covered

    async def deliver(self, batch: Batch) -> None:
        if not self._state_known:
            await self._load_state()
        groups = await trio.to_thread.run_sync(self._group, batch.envelopes)
        for index, group in enumerate(groups):
            while group.lines:
                stored = await self._store(group)
                last = not group.lines and not any(later.lines for later in groups[index + 1 :])
                if stored is not None:
                    await self._seal(stored, batch.last if last else None)
        # (A batch whose events were all stored before leaves the state as it is.)

    async def close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    def health(self) -> Health:
        return _OK

    # --- state ------------------------------------------------------------------------------

    async def _load_state(self) -> None:
        """The newest manifest entry, and from it the head, the seq, how far this epoch is
        covered, and the objects of a batch cut short."""
        self._held.clear()
        self._sealed_keys.clear()
        self._covered = None
        seq = await self._newest_seq()
        if self.config.object_lock is not None:
            await self._check_chain_end(seq)
        self._seq, self._head = seq, None
        if seq:
            key = manifest_key(self.config.prefix, seq)
            try:
                data = await self._get(key)
                self._head = entry_hash(data)
                entry = ManifestEntry.parse(data)
                if entry.epoch == self._epoch:
                    self._covered = _position(entry.covered)
                    while entry.covered == entry.after and entry.epoch == self._epoch:
                        key = entry.key
                        await self._hold(key)  # a batch cut short: what it stored so far
                        if entry.seq == 1 or entry.after is None:
                            break
                        key = manifest_key(self.config.prefix, entry.seq - 1)
                        entry = ManifestEntry.parse(await self._get(key))
            except NotFound as exc:  # found a moment ago, or named by the newest entries
                raise self._tampered(key, "is gone or hidden by a delete marker") from exc
            self._emit_seal(entry_hash(data), seq, ManifestEntry.parse(data))
        self._state_known = True
        self._alerted = None
        log.info(
            "sink_s3_resumed",
            sink=self.id,
            archive=self.config.where,
            seq=self._seq,
            head=self._head,
            covered=str(self._covered) if self._covered else None,
            held=len(self._held),
        )

    async def _hold(self, key: str) -> None:
        data = await self._get(key)
        lines = await trio.to_thread.run_sync(self._decompress_lines, key, data)
        self._held.update(_id_of(line) for line in lines)
        self._sealed_keys.add(key)

    async def _check_chain_end(self, seq: int) -> None:
        """Raise ``ArchiveTampered`` unless entry ``seq`` (the search's answer) has one stored
        version and entry ``seq + 1`` has no version and no delete marker (see the module
        docstring, "No second chain")."""
        prefix = self.config.prefix
        after = manifest_key(prefix, seq + 1)
        found = await self._versions(after)
        if found is not None and found.hidden:
            stored = len(found.versions)
            raise self._tampered(
                after,
                f"is hidden by a delete marker, {stored} stored version(s) under it"
                if stored
                else "has a delete marker and no stored version",
            )
        if found is not None:  # stored since the search looked
            self._state_known = False
            raise S3Unavailable(
                f"manifest entry {after} was written while the sink resumed: do two sinks share "
                f"{self.config.where}?",
                "ManifestTaken",
            )
        if seq:
            newest = manifest_key(prefix, seq)
            found = await self._versions(newest)
            if found is None or found.hidden or len(found.versions) != 1:
                stored = len(found.versions) if found is not None else 0
                raise self._tampered(
                    newest,
                    f"has {stored} stored versions: it was written again or deleted",
                    "delete the versions of that key stored after the first (a locked one cannot"
                    " be: then keep this prefix as evidence and point the sink at a new one)",
                )

    async def _versions(self, key: str) -> KeyVersions | None:
        listed = await list_versions(self._client, self.config.bucket, key)
        return listed[key][0] if key in listed else None

    def _tampered(
        self,
        key: str,
        what: str,
        remedy: str = "delete the delete markers of that key, and of every later entry and object",
    ) -> ArchiveTampered:
        """The error for a tampered chain at ``key`` (``what`` is wrong, ``remedy`` restores
        it), logged, and raised as an alert event once for each finding."""
        bucket = self.config.bucket
        message = (
            f"the archive {self.config.where} was tampered with: {key} {what}. The sink writes"
            f" nothing to it until it is restored (its events wait in the WAL): {remedy}"
            f" (aws s3api list-object-versions --bucket {bucket} --prefix {key}, then aws s3api"
            f" delete-object --bucket {bucket} --key {key} --version-id <id>); shipper verify"
            " --s3 lists every hidden or rewritten key"
        )
        log.error("sink_s3_archive_tampered", sink=self.id, key=key, error=message)
        if self._alerted != message:
            self._alerted = message
            event = alert_event(
                ARCHIVE_ALERT,
                None,
                {
                    "severity": "critical",
                    "sink": self.id,
                    "bucket": bucket,
                    "prefix": self.config.prefix,
                    "key": key,
                    "reason": message,
                },
            )
            if not self._context.emit(event):
                log.warning("sink_s3_alert_not_emitted", sink=self.id, key=key)
        return ArchiveTampered(message)

    async def _newest_seq(self) -> int:
        """The highest seq with an entry: double until one is missing, then halve. (A key
        hidden by a delete marker looks missing: ``_check_chain_end`` checks the answer.)"""
        low, high = 0, 1
        while await self._exists(manifest_key(self.config.prefix, high)):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if await self._exists(manifest_key(self.config.prefix, middle)):
                low = middle
            else:
                high = middle
        return low

    # --- storing ----------------------------------------------------------------------------

    def _group(self, envelopes: list[bytes]) -> list[_Group]:
        """The batch's events in groups (one per key prefix and class), without those stored
        already; in the order of their first events. (Runs in a worker thread.) The whole batch
        as one group without work per event where it can be (``_group_whole``), else event by
        event (``_group_each``)."""
        if self._whole is not None and envelopes and not self._held:
            whole = self._group_whole(envelopes, *self._whole)
            if whole is not None:
                return [whole]
        return self._group_each(envelopes)

    def _group_whole(self, lines: list[bytes], chars: int, by_source: bool) -> _Group | None:
        """The batch as one group, if every event has the key prefix and class of the first,
        which follow from the first ``chars`` characters of ``received_at`` and (``by_source``)
        the source id alone (``_whole_batches``); None when anything is unusual.

        The first envelope is parsed; the heads of all are matched by one regular expression,
        line by line in C calls (``BatchHeads``: the same ``received_at`` start and source id,
        no alert, and which may be chained), and the manifest entry's spans need each agent's
        first and last chained event only (``_sparse_links``)."""
        first = orjson.loads(lines[0])
        received_at, source = first.get("received_at"), first.get("source")
        if not isinstance(received_at, str) or len(received_at) < chars:
            return None
        source_id = source.get("id") if isinstance(source, dict) else None
        if not isinstance(source_id, str) or source_id == ALERT_SOURCE_ID:
            return None
        heads = self._batch_heads.read(lines, received_at[:chars], source_id if by_source else None)
        links = None if heads is None else self._sparse_links(lines, heads[1], first)
        if heads is None or links is None:
            return None
        config = self.config
        template = config.prefix + config.key_prefix
        return _Group(
            _render(template, received_at, source_id, None),
            config.classes.classify(source_id, None, None),
            list(lines),
            heads[0],
            links,
            seals_only=False,
            sparse=True,
        )

    def _sparse_links(
        self, lines: list[bytes], agents: list[bytes | None], first: dict[str, Any]
    ) -> list[tuple[str, int, str | None] | None] | None:
        """The links of each agent's first and last chained event, None for every other
        (``_Group.sparse``). ``agents``: for each line, its agent if it may be chained, else
        None (``BatchHeads.read``); ``first``: the first line parsed. An agent's lines are
        parsed from each end until one is chained; None if that takes too many (then the batch
        goes event by event)."""
        count = len(agents)
        links: list[tuple[str, int, str | None] | None] = [None] * count
        found = ends(agents)  # (lines that cannot be chained are None: left out)
        backwards = agents[::-1]
        budget = 2 * len(found) + 64  # lines parsed at most
        for key, (index, last) in found.items():
            agent = key.decode()
            for backward in (False, True):
                order = backwards if backward else agents
                start = count - 1 - last if backward else index
                while True:
                    line = count - 1 - start if backward else start
                    budget -= 1
                    parsed = orjson.loads(lines[line]) if line else first
                    link = chain_fields(parsed, self._profile)
                    if link is not None or budget < 0:
                        break
                    try:
                        start = order.index(key, start + 1)
                    except ValueError:
                        break
                if budget < 0 or (link is not None and link[0] != agent):
                    return None
                if link is None:
                    break  # none of the agent's events is chained
                links[line] = link
        return links

    def _group_each(self, envelopes: list[bytes]) -> list[_Group]:
        """``_group``, event by event.

        Most envelopes are not parsed: their heads are read from the bytes (``HeadReader``), and
        the hash of a chained event is read only when the manifest entry needs it (each agent's
        first and last event in the object, ``_spans``). Parsed in full: alerts (a seal is
        known by its record), envelopes the head reader does not take, and every envelope when a
        retention rule looks into the record."""
        groups: dict[tuple[str, str], _Group] = {}
        config = self.config
        template = config.prefix + config.key_prefix
        classes = config.classes
        profile = self._profile
        held = self._held
        # Without rules on record fields, an event's group follows from its hour, source and
        # agent; with them, from those and its class (known only once its record is read).
        heads = None if any(rule.field for rule in classes.rules) else HeadReader()
        found: dict[tuple[str, str, str | None, str | None], _Group] = {}
        later = "" if profile.hash is None else None  # a hash read when needed (``_spans``)
        for line in envelopes:
            head = heads.read(line) if heads is not None else None
            if head is not None and (source_id := str(head[2].get("id", ""))) != ALERT_SOURCE_ID:
                event_id, received_at, _, agent, chain, has_record = head
                record = None
                link: tuple[str, int, str | None] | None = None
                if agent is not None and chain is not None and has_record:
                    sequence = chain.get("sequence")
                    if isinstance(sequence, int):
                        link = (agent, sequence, later)
                seal = False
            else:
                envelope = orjson.loads(line)
                event_id = envelope["id"]
                source = envelope.get("source") or {}
                source_id = str(source.get("id", ""))
                agent = envelope.get("agent")
                record = envelope.get("record")
                if not isinstance(record, dict):
                    record = None
                received_at = envelope.get("received_at", "")
                link = chain_fields(envelope, profile)
                seal = (
                    source_id == ALERT_SOURCE_ID
                    and record is not None
                    and record.get("action") == ARCHIVE_SEAL
                )
            if held and event_id in held:
                continue
            cls = None if heads is not None else classes.classify(source_id, agent, record)
            memo = (received_at[:13], source_id, agent if isinstance(agent, str) else None, cls)
            group = found.get(memo)
            if group is None:
                directory = _render(template, received_at, source_id, agent)
                if cls is None:
                    cls = classes.classify(source_id, agent, record)
                group = groups.get((directory, cls))
                if group is None:
                    group = groups[(directory, cls)] = _Group(directory, cls)
                found[memo] = group
            group.lines.append(line)
            group.ids.append(event_id)
            group.links.append(link)
            if not seal:
                group.seals_only = False
        return list(groups.values())

    def _spans(self, group: _Group) -> dict[str, AgentSpan]:
        """What the manifest entry of ``group`` says of its agents (``content.spans``), the
        hashes of their first and last events read from their lines if not known yet."""
        links = group.links
        resolved: list[tuple[str, int, str] | None] = [None] * len(links)
        for indexes in ends([link[0] if link is not None else None for link in links]).values():
            for index in indexes:
                link = links[index]
                assert link is not None
                if link[2] is None:
                    resolved[index] = chain_fields(orjson.loads(group.lines[index]), self._profile)
                else:
                    resolved[index] = (link[0], link[1], link[2])
        return spans(resolved)

    async def _store(self, group: _Group) -> _Stored | None:
        """Store the head of ``group`` as one object (all of it, unless the key holds part of
        it already), taking what was stored out of the group; the object as stored, or None
        when it was sealed before."""
        config = self.config
        key = f"{group.directory}{self._epoch}-{group.ids[0]}-{group.cls}{self.extension}"
        body = await trio.to_thread.run_sync(self._compress, b"\n".join(group.lines) + b"\n")
        digest = hashlib.sha256(body).digest()
        now = datetime.now(UTC).replace(microsecond=0)
        extra: dict[str, Any] = {}
        retain_until: str | None = None
        lock = config.object_lock
        if lock is not None:
            until = config.classes.periods[group.cls].after(now)
            retain_until = _rfc3339(until)
            extra["ObjectLockMode"] = lock.mode
            extra["ObjectLockRetainUntilDate"] = until
            if config.legal_hold:
                extra["ObjectLockLegalHoldStatus"] = "ON"
        self._common_put_args(extra)
        try:
            with translated(f"storing {key} in bucket {config.bucket}"):
                await self._client.put_object(
                    Bucket=config.bucket,
                    Key=key,
                    Body=Body(body),
                    IfNoneMatch="*",
                    ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
                    ContentType="application/x-ndjson",
                    **extra,
                )
        except PreconditionFailed:
            return await self._adopt(key, group)
        stored_group = _Group(
            group.directory,
            group.cls,
            group.lines,
            group.ids,
            group.links,
            seals_only=group.seals_only,
            sparse=group.sparse,
        )
        group.lines, group.ids, group.links = [], [], []
        return _Stored(
            key, digest.hex(), len(body), retain_until, lock.mode if lock else None, stored_group
        )

    async def _adopt(self, key: str, group: _Group) -> _Stored | None:
        """``key`` is taken: by an object this sink stored before (a retry after an answer was
        lost, or a crash before its entry). Count its events as stored if they are the WAL's,
        byte for byte; else refuse the batch for good."""
        data, answer = await self._get_object(key)
        lines = await trio.to_thread.run_sync(self._decompress_lines, key, data)
        ours = dict(zip(group.ids, group.lines, strict=True))
        ids = [_id_of(line) for line in lines]
        if (
            not ids
            or ids[0] != group.ids[0]
            or any(
                event_id in ours and ours[event_id] != line
                for event_id, line in zip(ids, lines, strict=True)
            )
        ):
            raise S3Rejected(
                f"{key} in bucket {self.config.bucket} holds other events than the WAL's "
                "(it is locked: the archive was written by something else)",
                "KeyHoldsOtherBytes",
            )
        stored_ids = set(ids)
        self._held.update(stored_ids)
        if group.sparse:  # the spans of a part need every event's link
            full = await trio.to_thread.run_sync(
                self._group_of, group.lines, group.directory, group.cls
            )
            group.links, group.sparse = full.links, False
        kept = [i for i, event_id in enumerate(group.ids) if event_id not in stored_ids]
        group.lines = [group.lines[i] for i in kept]
        group.ids = [group.ids[i] for i in kept]
        group.links = [group.links[i] for i in kept]
        log.info("sink_s3_already_stored", sink=self.id, key=key, events=len(ids))
        if key in self._sealed_keys:
            return None
        stored_group = await trio.to_thread.run_sync(
            self._group_of, lines, group.directory, group.cls
        )
        until = answer.get("ObjectLockRetainUntilDate")
        return _Stored(
            key,
            hashlib.sha256(data).hexdigest(),
            len(data),
            _rfc3339(until) if isinstance(until, datetime) else None,
            answer.get("ObjectLockMode"),
            stored_group,
        )

    def _group_of(self, lines: list[bytes], directory: str, cls: str) -> _Group:
        group = _Group(directory, cls)
        for line in lines:
            envelope = orjson.loads(line)
            group.lines.append(line)
            group.ids.append(envelope["id"])
            group.links.append(chain_fields(envelope, self._profile))
        group.seals_only = False
        return group

    async def _seal(self, stored: _Stored, covered: Position | None) -> None:
        """Write the manifest entry of ``stored`` (``covered``: the batch's last position when
        this is its last object), and emit the new head."""
        config = self.config
        group = stored.group
        if covered is not None and any(
            id_key(i) > (covered.segment, covered.offset) for i in self._held
        ):
            # Objects stored before hold events after this batch (it was cut short, and is now
            # offered in smaller batches): they are not covered yet, so this entry is cut short
            # too, and their ids stay held (a restart finds them again through the entries).
            covered = None
        after = str(self._covered) if self._covered is not None else None
        entry = ManifestEntry(
            seq=self._seq + 1,
            prev=self._head,
            sink=self.id,
            sealed_at=utc_timestamp(),
            key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            events=len(group.lines),
            compression=config.compression,
            epoch=self._epoch,
            after=after,
            first=group.ids[0],
            last=group.ids[-1],
            covered=str(covered) if covered is not None else after,
            retention=Retention(
                group.cls,
                stored.mode,
                str(config.classes.periods[group.cls]),
                stored.retain_until,
            ),
            agents=self._spans(group),
        )
        data = entry.encode()
        key = manifest_key(config.prefix, entry.seq)
        extra: dict[str, Any] = {}
        if config.object_lock is not None:
            extra["ObjectLockMode"] = config.object_lock.mode
            extra["ObjectLockRetainUntilDate"] = config.classes.longest_after(
                datetime.now(UTC).replace(microsecond=0)
            )
            if config.legal_hold:
                extra["ObjectLockLegalHoldStatus"] = "ON"
        self._common_put_args(extra)
        try:
            with translated(f"storing manifest entry {key} in bucket {config.bucket}"):
                await self._client.put_object(
                    Bucket=config.bucket,
                    Key=key,
                    Body=Body(data),
                    IfNoneMatch="*",
                    ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                    ContentType="application/json",
                    **extra,
                )
        except PreconditionFailed:
            taken = await self._get(key)
            try:
                mine = ManifestEntry.parse(taken)
            except ValueError:
                mine = None
            if mine is None or (mine.key, mine.sha256, mine.prev) != (
                entry.key,
                entry.sha256,
                entry.prev,
            ):
                self._state_known = False  # read the newest entry again before the retry
                raise S3Unavailable(
                    f"manifest entry {key} was written by another writer: do two sinks share "
                    f"{config.where}?",
                    "ManifestTaken",
                ) from None
            data, entry = taken, mine  # ours: an earlier try stored it and its answer was lost
        except S3Unavailable:
            # It may be stored all the same, its answer lost: read the newest entry again before
            # the next try (or the next entry finds this seq taken, by "another writer").
            self._state_known = False
            raise
        self._seq, self._head = entry.seq, entry_hash(data)
        self._sealed_keys.add(stored.key)
        if covered is not None:  # every event up to it is stored
            self._covered = covered
            self._held.clear()
            self._sealed_keys.clear()
        if not group.seals_only:
            self._emit_seal(self._head, entry.seq, entry)

    def _emit_seal(self, head: str, seq: int, entry: ManifestEntry) -> None:
        event = alert_event(
            ARCHIVE_SEAL,
            None,
            {
                "sink": self.id,
                "bucket": self.config.bucket,
                "prefix": self.config.prefix,
                "seq": seq,
                "head": head,
                "object": entry.key,
                "wal_last": entry.last,
            },
        )
        if not self._context.emit(event):
            log.warning("sink_s3_seal_not_emitted", sink=self.id, seq=seq, head=head)

    def _common_put_args(self, extra: dict[str, Any]) -> None:
        config = self.config
        if config.sse is not None:
            extra["ServerSideEncryption"] = config.sse
            if config.sse_kms_key_id is not None:
                extra["SSEKMSKeyId"] = config.sse_kms_key_id
        if config.storage_class is not None:
            extra["StorageClass"] = config.storage_class

    async def _get(self, key: str) -> bytes:
        return (await self._get_object(key))[0]

    async def _get_object(self, key: str) -> tuple[bytes, dict[str, Any]]:
        """The bytes of ``key`` and S3's answer (its lock headers among them)."""
        with translated(f"reading {key} from bucket {self.config.bucket}"):
            answer = await self._client.get_object(Bucket=self.config.bucket, Key=key)
            async with answer["Body"] as stream:
                data: bytes = await stream.read()
        return data, answer

    async def _exists(self, key: str) -> bool:
        try:
            with translated(f"looking for {key} in bucket {self.config.bucket}"):
                await self._client.head_object(Bucket=self.config.bucket, Key=key)
        except NotFound:
            return False
        return True

    def _decompress_lines(self, key: str, data: bytes) -> list[bytes]:
        try:
            return decompress(data, self.config.compression, self._read_limit).splitlines()
        except ContentError as exc:
            raise S3Rejected(
                f"{key} in bucket {self.config.bucket} cannot be read back: {exc}", "Unreadable"
            ) from exc


_OK = Health()


def _compressor(compression: str, level: int) -> Callable[[bytes], bytes]:
    """What compresses a whole object's lines for ``compression`` at ``level``: one gzip member
    (without a time, so that a retry makes the same bytes) or one zstd frame."""
    if compression == "gzip":
        from isal import igzip

        return lambda data: igzip.compress(data, compresslevel=level, mtime=0)
    if compression == "zstd":
        import zstandard

        return lambda data: zstandard.ZstdCompressor(level=level).compress(data)
    return _same


def _same(data: bytes) -> bytes:
    return data


def _whole_batches(template: str, classes: Classes) -> tuple[int, bool] | None:
    """When every event's key prefix (``template``) and class follow from the first characters
    of its ``received_at`` and its source id alone: how many characters, and whether the source
    id counts; None when they may depend on more (an agent, a record's field)."""
    names = set(_PLACEHOLDER_RE.findall(template))
    if not names <= {*_TIME_CHARS, "source"} or any(r.agents or r.field for r in classes.rules):
        return None
    chars = max((_TIME_CHARS[name] for name in names - {"source"}), default=0)
    return chars, "source" in names or any(rule.sources for rule in classes.rules)


def _render(template: str, received_at: str, source: str, agent: object) -> str:
    """The key prefix of an event: ``template`` with its placeholders filled in."""
    if "{{" not in template:
        return template
    values = {
        "year": received_at[0:4],
        "month": received_at[5:7],
        "day": received_at[8:10],
        "hour": received_at[11:13],
        "source": _safe(source),
        "agent": _safe(agent) if isinstance(agent, str) and agent else "unknown",
    }
    return _PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], template)


def _safe(value: str) -> str:
    """``value`` as one key segment: letters, digits, ``.``, ``_`` and ``-``, at most 64, and
    never ``.`` or ``..`` (a local copy of the archive would take it for a folder above)."""
    safe = _UNSAFE_RE.sub("_", value)[:64]
    return safe if safe.strip(".") else "_" * max(1, len(safe))


def _id_of(line: bytes) -> str:
    event_id = orjson.loads(line).get("id")
    if not isinstance(event_id, str):
        raise S3Rejected(f"an archived line has no id: {line[:60]!r}", "Unreadable")
    return event_id


def _position(event_id: str | None) -> Position | None:
    if event_id is None:
        return None
    segment, _, offset = event_id.partition("-")
    return Position(int(segment), int(offset))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
