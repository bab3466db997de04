"""``shipper verify``: re-verify an archive offline, and report what is missing or altered.

Two layouts, read through a store (``shipper.archive.store``: list, read, head), so that both
share the checks of events and chains:

* **dir**: the file sink's archive (``shipper.sinks.file``), files
  ``events-<stamp>-<serial>-<epoch>.jsonl``, read in name order (creation order), with no
  manifest.
* **s3**: the ``s3`` sink's archive under ``s3://bucket/prefix/``: the manifest entries
  (``shipper.archive.manifest``) and the data objects they name (``shipper.archive.content``).
  ``object.key`` is the object's key in the bucket, the prefix included, as the sink writes it
  (a key relative to the prefix is found too). Objects are read ``READ_AHEAD`` at a time, and
  checked one after the other in the order of the chain. The listing is of versions: a key
  hidden by a delete marker is read at its newest stored version, and reported (``hidden``).

Checks, each with the kind of problem it reports:

    kind                   layout  what is wrong
    empty                  both    no object at all: nothing to verify (a wrong path or prefix?)
    bad_line               both    a line is not a JSON envelope with a WAL id (altered)
    torn_line              both    an object does not end with a whole line (in a dir archive:
                                   a file other than the newest; see the notices)
    duplicate_id           both    an id seen again in its WAL epoch: an event archived twice
    out_of_order           both    an id lower than the one before it in its epoch (reordered,
                                   or moved from one file or object to another)
    gap                    both    an agent's sequences missing (still open at the end; a gap
                                   the daemon recorded when the records came is one too)
    fork, broken_link,     both    an agent's chain verdicts (``shipper.chain``), found again by
    bad_hash, regressed,           feeding every record, in archive order (epoch, then WAL id),
    duplicate                      to a new ``Verifier`` of the chosen profile
    unverifiable           both    verifying a record raised (a defect in shipper)
    manifest_missing       s3      entries absent from seq 1..N (N: the highest seq present)
    manifest_tampered      s3      an entry that does not parse, holds another seq than its key,
                                   or names a period that is not ``<n>d``/``<n>y``
    manifest_link_broken   s3      an entry's ``prev`` is not the hash of the entry before it
    manifest_duplicate     s3      two entries name the same object
    object_missing         s3      an object an entry names is absent (dir: a file listed, then
                                   gone before it was read)
    object_tampered        s3      an object's bytes do not hash to, or are not as long as, what
                                   its entry says (replaced or altered), or do not decompress
    object_too_large       both    an object (as stored, or decompressed) or a file holds more
                                   than ``max_object_bytes`` (``--max-object-bytes``; default
                                   ``content.MAX_OBJECT_BYTES``, 256 MiB): not checked further
                                   (a decompression bomb, or a sink set to larger objects)
    object_content         s3      an object's lines, first or last id, or agents' first and last
                                   sequence and hash are not what its entry says
    wal_gap                s3      within an epoch, an entry's ``wal.after`` is not the previous
                                   entry's ``wal.covered``: WAL ranges are not contiguous
    unexpected_object      s3      a data object (or a key under ``manifests/``) no entry names
                                   (also, until the sink's next start, one stored just before
                                   it stopped, whose entry it had not written yet)
    lock_missing           s3      an object whose entry sets a lock mode is not locked so
                                   (HeadObject's ``ObjectLockMode``), or its entry has no date
    lock_short             s3      its lock ends before its entry's ``retain_until``, or that date
                                   is earlier than when it was stored plus its class's period
                                   (less ``LOCK_SLACK``)
    truncated              s3      a ``shipper.archive_seal`` witness in the archive names an
                                   entry past the chain's end: its newest entries were removed
    rewritten              s3      a witness's head is not the hash of the entry of its seq
    expected_head_missing  s3      ``--expect-head`` is the hash of no entry: the archive was
                                   truncated after it was witnessed, or rewritten
    hidden                 s3      a key whose newest version is a delete marker (a ``DELETE``
                                   on a versioned bucket): its stored versions are still there,
                                   and the newest is read and checked above as it would be
                                   restored (``versions``, ``markers``: the ids to delete)
    replaced               s3      a key with more than one stored version: written again
                                   after it was stored (the sink writes each key once); the
                                   newest is the one checked above (``versions``: newest first)

Notices (reported, not failures): ``adopted`` (an agent's first record in the archive is
mid-chain: its earlier records are not in this archive), ``torn_line`` on the newest file of a
dir archive (a write in progress, or a crash the file sink repairs at its next start),
``unlocked`` (objects whose entries set no lock), ``other_file`` (keys that are neither data nor
manifest, ignored), ``witness`` (a seal witness without the expected fields). Alerts
(``source.kind == "alert"``), malformed events, events with ``identity_mismatch`` (as the daemon
does not chain them) and records without an agent are counted in ``skipped`` and not chained.

The report (``--json``; the text form says the same)::

    {"v": 1, "archive": "s3://bucket/prefix/", "layout": "s3", "profile": "seed",
     "intact": false,
     "head": "sha256:...", "entries": 12,          (s3: the newest entry's hash, entries read)
     "checked": {"objects": 12, "bytes": 52310, "manifests": 12, "events": 480,
                 "chained": 470, "agents": 3},    (objects: data objects or files read; bytes:
                                                   theirs, as stored; chained: events fed to the
                                                   chain check)
     "statuses": {"genesis": 3, "ok": 466, "gap": 1},   (the verifier's counts, by status)
     "skipped": {"alerts": 8, "malformed": 2},
     "witnesses": {"seen": 3, "checked": 3},   (seals found; those of this bucket and prefix)
     "problem_counts": {"object_missing": 1, "gap": 1},
     "problems": [{"kind": "object_missing", "where": "year=2026/.../1-0.jsonl.gz",
                   "detail": "...", "seq": 4, ...}, ...],
     "notice_counts": {...}, "notices": [...]}

``where`` is an object's key or file name, ``<key>:<line>`` for one line of it (from 1), or
a manifest entry's key; other fields (``agent``, ``sequence``, ``missing``, ``id``, ``seq``)
depend on the kind. At most ``MAX_LISTED`` findings of each kind are listed; the counts hold
them all. ``intact`` is true when there is no problem: the exit status is 0 then, 1 otherwise.

Memory: the chain state of every agent (no agent is evicted, so none is "adopted" twice: about
11 KB an agent at most), the ids of the last ``RECENT_IDS`` events of each epoch, the objects
read ahead, and the object being checked (at most ``max_object_bytes`` decompressed, and its
envelopes parsed: several times that).
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import re
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Final

import trio

from shipper.archive.content import (
    MAX_OBJECT_BYTES,
    ContentError,
    TooLarge,
    decompress,
    is_data_key,
    parse_envelope,
    split_lines,
    summarize,
)
from shipper.archive.manifest import (
    MANIFEST_DIR,
    AgentSpan,
    ManifestEntry,
    ManifestError,
    entry_hash,
    id_key,
    seq_of,
)
from shipper.archive.progress import NoProgress, Progress
from shipper.archive.store import Blob, Meta, Missing, Store
from shipper.chain import SEED, Profile, Verdict, Verifier, sender_identity
from shipper.chain_stage import collector_paused
from shipper.events import record_bytes
from shipper.s3 import S3Url

REPORT_VERSION: Final = 1
#: Objects read ahead of the one being checked.
READ_AHEAD: Final = 8
#: Findings listed per kind (all are counted).
MAX_LISTED: Final = 1000
#: Ids remembered per epoch to tell an event archived twice from one out of order.
RECENT_IDS: Final = 65536
#: How much earlier than stored-at plus the class's period a lock may end (the sink fixes the
#: date before it stores the object, and may retry for a while).
LOCK_SLACK: Final = timedelta(days=1)
#: ``record.action`` of a seal witness: the head of an archive, witnessed through the WAL.
SEAL_ACTION: Final = "shipper.archive_seal"
#: Chain verdicts that are problems of the archive (``gap`` is, when still open at the end).
PROBLEM_STATUSES: Final = frozenset({"fork", "broken_link", "bad_hash", "regressed", "duplicate"})
#: Objects checked between two collections of the garbage collector's middle generation
#: (``_Collector``).
COLLECT_EVERY: Final = 16
#: Gaps tracked per agent before the oldest is given up (and reported at once).
MAX_GAPS: Final = 4096
#: File names of the file sink's archive.
FILE_RE: Final = re.compile(r"events-(\d{8}T\d{6}Z)-(\d+)-([^-]+)\.jsonl")
_PERIOD_RE: Final = re.compile(r"(\d+)([dy])")


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem or a notice: its kind, where it is, what it is, and details by kind."""

    kind: str
    where: str | None
    detail: str
    fields: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "detail": self.detail, **self.fields}


class Report:
    """What a verification found (see the module docstring for its JSON form)."""

    def __init__(self, archive: str, layout: str, profile: str) -> None:
        self.archive, self.layout, self.profile = archive, layout, profile
        self.head: str | None = None
        self.entries = 0
        self.objects = self.bytes = self.manifests = 0
        self.events = self.chained = self.agents = 0
        self.statuses: dict[str, int] = {}
        self.skipped: Counter[str] = Counter()
        self.witnesses: Counter[str] = Counter()
        self.problems: list[Finding] = []
        self.problem_counts: Counter[str] = Counter()
        self.notices: list[Finding] = []
        self.notice_counts: Counter[str] = Counter()

    @property
    def intact(self) -> bool:
        return not self.problem_counts

    def problem(self, kind: str, where: str | None, detail: str, **fields: Any) -> None:
        self.problem_counts[kind] += 1
        if self.problem_counts[kind] <= MAX_LISTED:
            self.problems.append(Finding(kind, where, detail, fields))

    def notice(self, kind: str, where: str | None, detail: str, **fields: Any) -> None:
        self.notice_counts[kind] += 1
        if self.notice_counts[kind] <= MAX_LISTED:
            self.notices.append(Finding(kind, where, detail, fields))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": REPORT_VERSION,
            "archive": self.archive,
            "layout": self.layout,
            "profile": self.profile,
            "intact": self.intact,
        }
        if self.layout == "s3":
            out["head"] = self.head
            out["entries"] = self.entries
        out["checked"] = {
            "objects": self.objects,
            "bytes": self.bytes,
            "manifests": self.manifests,
            "events": self.events,
            "chained": self.chained,
            "agents": self.agents,
        }
        out["statuses"] = dict(sorted(self.statuses.items()))
        out["skipped"] = dict(sorted(self.skipped.items()))
        out["witnesses"] = {"seen": self.witnesses["seen"], "checked": self.witnesses["checked"]}
        out["problem_counts"] = dict(sorted(self.problem_counts.items()))
        out["problems"] = [finding.as_json() for finding in self.problems]
        out["notice_counts"] = dict(sorted(self.notice_counts.items()))
        out["notices"] = [finding.as_json() for finding in self.notices]
        return out

    def text(self, per_kind: int = 20) -> str:
        """The report for a person: what was checked, the verdict, then the findings (at most
        ``per_kind`` of each kind)."""
        lines = [f"archive {self.archive} ({self.layout}, profile {self.profile})"]
        if self.layout == "s3":
            lines.append(f"  manifest: {self.entries} entries, head {self.head or 'none'}")
        unit = "files" if self.layout == "dir" else "objects"
        lines.append(
            f"  checked: {self.objects} {unit} ({self.bytes:,} bytes), {self.events} events"
            f" ({self.chained} chained), {self.agents} agents"
        )
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "none"
        lines.append(f"  chain statuses: {statuses}")
        if self.skipped:
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            lines.append(f"  not chained: {skipped}")
        if self.witnesses["seen"]:
            lines.append(
                f"  seal witnesses: {self.witnesses['seen']} seen,"
                f" {self.witnesses['checked']} of this archive checked"
            )
        if self.intact:
            lines.append("INTACT: no problem found")
        else:
            total = sum(self.problem_counts.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.problem_counts.items()))
            lines.append(f"NOT INTACT: {total} problem{'s' if total != 1 else ''} ({kinds})")
        for title, findings, counts in (
            ("problems", self.problems, self.problem_counts),
            ("notices", self.notices, self.notice_counts),
        ):
            if not findings:
                continue
            lines.append(f"{title}:")
            shown: Counter[str] = Counter()
            for finding in findings:
                shown[finding.kind] += 1
                if shown[finding.kind] <= per_kind:
                    where = f" {finding.where}:" if finding.where else ""
                    lines.append(f"  {finding.kind}:{where} {finding.detail}")
            for kind, count in sorted(counts.items()):
                if count > per_kind:
                    lines.append(f"  ... and {count - per_kind} more {kind}")
        return "\n".join(lines)


@dataclass(slots=True)
class Archived:
    """One envelope of the archive: its id (and the id as a sortable pair), its line, the line
    parsed, and where it is (``<object>:<line>``)."""

    id: str
    order: tuple[int, int]
    line: bytes
    parsed: dict[str, Any]
    where: str


def read_lines(name: str, text: bytes, report: Report) -> tuple[list[Archived], int, bytes]:
    """The envelopes of an object's (decompressed) ``text``, bad lines reported; also how many
    lines it has and its torn tail."""
    lines, torn = split_lines(text)
    found: list[Archived] = []
    for number, line in enumerate(lines, 1):
        where = f"{name}:{number}"
        try:
            parsed = parse_envelope(line)
        except ContentError as exc:
            report.problem("bad_line", where, f"not an envelope: {exc}")
            continue
        event_id = parsed["id"]
        found.append(Archived(event_id, id_key(event_id), line, parsed, where))
    return found, len(lines), torn


class EventCheck:
    """The checks of the events, fed in archive order: ids in order within each epoch, and every
    agent's chain (see the module docstring)."""

    def __init__(self, profile: Profile, report: Report) -> None:
        self.profile = profile
        self.report = report
        self.verifier = Verifier(profile, max_gaps=MAX_GAPS, max_agents=1 << 62)
        self._feed = self.verifier.feed
        self._previous: dict[str, Archived] = {}
        self._recent: dict[str, OrderedDict[str, str]] = {}
        self._opened: dict[str, list[tuple[int, int, str, str]]] = {}
        #: Seal witnesses found: the record and where it is.
        self.witnesses: list[tuple[dict[str, Any], str]] = []

    def feed_all(self, epoch: str, events: Sequence[Archived]) -> None:
        for event in events:
            self.feed(epoch, event)

    def feed(self, epoch: str, event: Archived) -> None:
        report = self.report
        report.events += 1
        self._order(epoch, event)
        parsed = event.parsed
        record = parsed.get("record")
        source = parsed["source"]
        if source.get("kind") == "alert":
            report.skipped["alerts"] += 1
            if isinstance(record, dict) and record.get("action") == SEAL_ACTION:
                self.witnesses.append((record, event.where))
            return
        if not isinstance(record, dict):
            report.skipped["malformed"] += 1
            return
        if "identity_mismatch" in parsed:
            report.skipped["identity_mismatch"] += 1
            return
        profile = self.profile
        agent = profile.agent_of(record)
        if agent is None and profile.line_hashed:
            syslog = parsed.get("syslog")
            agent = sender_identity(source, syslog if isinstance(syslog, dict) else None)
        if agent is None:
            report.skipped["no_agent"] += 1
            return
        line = record_bytes(event.line, parsed) if profile.line_hashed else b""
        try:
            verdict = self._feed(agent, record, line)
        except Exception as exc:  # a defect: say so, and go on with the rest
            report.problem(
                "unverifiable",
                event.where,
                f"verifying this record failed: {type(exc).__name__}: {exc}",
                id=event.id,
            )
            return
        report.chained += 1
        if type(verdict) is not int:
            assert isinstance(verdict, Verdict)
            self._verdict(agent, verdict, event)

    def _order(self, epoch: str, event: Archived) -> None:
        previous = self._previous.get(epoch)
        recent = self._recent.get(epoch)
        if recent is None:
            recent = self._recent[epoch] = OrderedDict()
        if previous is not None and event.order <= previous.order:
            seen = recent.get(event.id)
            if seen is not None:
                self.report.problem(
                    "duplicate_id",
                    event.where,
                    f"id {event.id} was archived before, at {seen}: an event archived twice",
                    id=event.id,
                    first=seen,
                )
            else:
                self.report.problem(
                    "out_of_order",
                    event.where,
                    f"id {event.id} comes after id {previous.id} ({previous.where}) of the same"
                    " WAL epoch: moved or reordered",
                    id=event.id,
                    after=previous.id,
                )
        recent[event.id] = event.where
        if len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        self._previous[epoch] = event

    def _verdict(self, agent: str, verdict: Verdict, event: Archived) -> None:
        status = verdict.status
        sequence = verdict.sequence
        fields: dict[str, Any] = {"agent": agent, "sequence": sequence, "id": event.id}
        if status == "gap" and verdict.missing is not None:
            first, last = verdict.missing
            self._opened.setdefault(agent, []).append((first, last, event.where, event.id))
        elif status in PROBLEM_STATUSES:
            self.report.problem(status, event.where, _describe(agent, verdict), **fields)
        elif status == "adopted":
            self.report.notice(
                "adopted",
                event.where,
                f"agent {agent}: the archive starts mid-chain, at sequence {sequence}"
                " (its earlier records are not in this archive)",
                **fields,
            )
        for gap in verdict.expired:
            self._report_gap(agent, gap.first, gap.last, " (too many gaps open: given up)")

    def _report_gap(self, agent: str, first: int, last: int, note: str = "") -> None:
        where = event_id = None
        for opened_first, opened_last, opened_where, opened_id in self._opened.get(agent, ()):
            if opened_first <= first and last <= opened_last:
                where, event_id = opened_where, opened_id
        missing = f"sequence {first}" if first == last else f"sequences {first}-{last}"
        before = f", before id {event_id}" if event_id else ""
        self.report.problem(
            "gap",
            where,
            f"agent {agent}: {missing} missing{before}{note}",
            agent=agent,
            missing=[first, last],
            id=event_id,
        )

    def finish(self) -> None:
        """Report the gaps still open, and the totals."""
        for agent, state in sorted(self.verifier.agents.items()):
            for gap in state.gaps:
                self._report_gap(agent, gap.first, gap.last)
        self.report.statuses = self.verifier.counts
        self.report.agents = len(self.verifier.agents)


def _describe(agent: str, verdict: Verdict) -> str:
    sequence = verdict.sequence
    status = verdict.status
    if status == "fork":
        return f"agent {agent}: sequence {sequence} again, with another hash (a fork)"
    if status == "broken_link":
        detail = f" ({verdict.detail})" if verdict.detail else ""
        return (
            f"agent {agent}: sequence {sequence} does not link to the record before it:"
            f" prevHash {verdict.prev_hash}, expected {verdict.expected_prev_hash}{detail}"
        )
    if status == "bad_hash":
        return (
            f"agent {agent}: sequence {sequence}: its hash does not recompute from its content"
            f" (claimed {verdict.hash}, computed {verdict.expected_hash}): altered"
        )
    if status == "regressed":
        last = verdict.expected - 1 if verdict.expected is not None else None
        return f"agent {agent}: sequence {sequence} comes after {last}: out of order"
    return f"agent {agent}: sequence {sequence} is archived twice"


class _Collector:
    """Python's cyclic garbage collector while objects are checked: paused (``collector_paused``
    around the checks), and run by hand each time an object's events have been fed and dropped
    (``collect``). Checking an object makes tens of thousands of parsed envelopes that stay
    alive until its events are fed (the whole group, with ``--s3``); every collection they set
    off went over all of them again, and took half the time of a verification. Run by hand,
    a collection finds little more than the next object's envelopes, once; every
    ``COLLECT_EVERY`` objects it goes over the middle generation, and every ``COLLECT_EVERY``
    squared over everything (the chain state), so that what the I/O beside it leaves in
    reference cycles is still freed. Nothing parsed or checked makes a reference cycle."""

    def __init__(self) -> None:
        self.done = 0

    def collect(self) -> None:
        self.done += 1
        if self.done % (COLLECT_EVERY * COLLECT_EVERY) == 0:
            gc.collect(2)
        else:
            gc.collect(1 if self.done % COLLECT_EVERY == 0 else 0)


async def _in_order(
    keys: Sequence[str],
    read: Callable[[str], Awaitable[Blob]],
    consume: Callable[[int, Blob | None], Awaitable[None]],
    limit: int = READ_AHEAD,
) -> None:
    """Read ``keys``, ``limit`` at a time, and hand each to ``consume`` in order (None: missing).
    An error reading one (the store could not answer) stops everything and is raised."""
    results: list[Blob | Exception | None] = [None] * len(keys)
    ready = [trio.Event() for _ in keys]
    slots = trio.Semaphore(limit)
    failed: list[Exception] = []

    async def fetch(index: int) -> None:
        try:
            results[index] = await read(keys[index])
        except Missing:
            results[index] = None
        except Exception as exc:  # raised below, in the caller's task
            results[index] = exc
        finally:
            ready[index].set()

    async def feeder(nursery: trio.Nursery) -> None:
        for index in range(len(keys)):
            await slots.acquire()
            nursery.start_soon(fetch, index)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder, nursery)
        for index in range(len(keys)):
            await ready[index].wait()
            result, results[index] = results[index], None
            if isinstance(result, Exception):
                failed.append(result)
                nursery.cancel_scope.cancel()
                break
            await consume(index, result)
            slots.release()
    if failed:
        raise failed[0]


# --- dir ----------------------------------------------------------------------------------------


async def verify_dir(
    store: Store,
    profile: Profile = SEED,
    progress: Progress | None = None,
    max_object_bytes: int = MAX_OBJECT_BYTES,
) -> Report:
    """Verify the file sink's archive in ``store`` (a ``DirStore``); files larger than
    ``max_object_bytes`` are reported, not read."""
    progress = progress or NoProgress()
    report = Report(store.name, "dir", profile.name)
    check = EventCheck(profile, report)
    files = []
    for listed in await store.list():
        if not FILE_RE.fullmatch(listed.key):
            report.notice("other_file", listed.key, "not an archive file: not read")
        elif listed.size > max_object_bytes:
            _too_large(report, listed.key, f"{listed.size:,} bytes", max_object_bytes)
        else:
            files.append(listed)
    files.sort(key=attrgetter("key"))
    if not files:
        report.problem("empty", None, f"no archive file (events-*.jsonl) in {store.name}")
    progress.start(len(files), sum(listed.size for listed in files))

    def check_file(index: int, blob: Blob) -> None:
        name = files[index].key
        match = FILE_RE.fullmatch(name)
        assert match is not None
        if len(blob.data) > max_object_bytes:  # (grown since it was listed)
            _too_large(report, name, f"{len(blob.data):,} bytes", max_object_bytes)
            return
        events, count, torn = read_lines(name, blob.data, report)
        check.feed_all(match.group(3), events)
        report.objects += 1
        report.bytes += len(blob.data)
        if torn:
            where = f"{name}:{count + 1}"
            if index == len(files) - 1:
                report.notice(
                    "torn_line",
                    where,
                    f"the newest file ends with an unfinished line ({len(torn)} bytes): a write"
                    " in progress, or a crash the file sink cuts it off after",
                )
            else:
                report.problem(
                    "torn_line", where, f"the file ends with an unfinished line ({len(torn)} bytes)"
                )

    async def consume(index: int, blob: Blob | None) -> None:
        if blob is None:  # removed since it was listed
            report.problem("object_missing", files[index].key, "removed while it was verified")
        else:
            await trio.to_thread.run_sync(check_file, index, blob)
            collector.collect()
        progress.advance(files[index].size)

    collector = _Collector()
    try:
        with collector_paused():
            await _in_order([listed.key for listed in files], store.read, consume)
    finally:
        progress.close()
    check.finish()
    report.witnesses["seen"] = len(check.witnesses)
    return report


# --- s3 -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A manifest entry as read: its seq and parse (None: unreadable), and its object's key
    (relative to the archive) once resolved."""

    seq: int
    entry: ManifestEntry | None
    key: str = ""


class S3Verification:
    """One verification of an S3 archive (``verify_s3``)."""

    def __init__(
        self,
        store: Store,
        url: S3Url,
        profile: Profile,
        expect_head: str | None,
        progress: Progress,
        max_object_bytes: int = MAX_OBJECT_BYTES,
    ) -> None:
        self.store, self.url, self.profile = store, url, profile
        self.max_object_bytes = max_object_bytes
        self.expect_head = expect_head
        self.progress = progress
        self.report = Report(store.name, "s3", profile.name)
        self.check = EventCheck(profile, self.report)
        self.entries: list[_Entry] = []
        self.hashes: dict[int, str] = {}
        # The objects of consecutive entries whose WAL ranges overlap (one batch of the WAL, cut
        # into objects by class or key prefix): checked together, merged by id.
        self._group: list[list[Archived]] = []
        self._group_epoch = ""
        self._group_end: tuple[int, int] = (0, 0)
        self._collector = _Collector()

    async def run(self) -> Report:
        report = self.report
        listing = await self.store.list()
        manifests: dict[int, int] = {}
        data: dict[str, int] = {}
        for listed in listing:
            seq = seq_of(listed.key, "")
            if seq is not None:
                manifests[seq] = listed.size
            elif listed.key.startswith(MANIFEST_DIR) or is_data_key(listed.key):
                data[listed.key] = listed.size
            else:
                report.notice("other_file", listed.key, "neither data nor manifest: not read")
        if not manifests and not data:
            report.problem("empty", None, f"no manifest entry and no object under {self.url}")
        self.progress.start(
            len(manifests) + len(data), sum(manifests.values()) + sum(data.values())
        )
        try:
            await self._read_manifests(manifests)
            with collector_paused():
                await self._read_objects(data)
        finally:
            self.progress.close()
        for key in sorted(data):
            report.problem(
                "unexpected_object",
                key,
                "no manifest entry names it: added, or its entry removed (or the sink stopped"
                " between storing it and its entry, and seals it when it starts again)",
            )
        self._check_witnesses()
        self._check_versions()
        self.check.finish()
        return report

    # The manifest chain.

    async def _read_manifests(self, manifests: dict[int, int]) -> None:
        report = self.report
        seqs = sorted(manifests)
        expected = 1
        for seq in seqs:
            if seq > expected:
                _missing_entries(report, expected, seq - 1)
            expected = seq + 1

        async def consume(index: int, blob: Blob | None) -> None:
            seq = seqs[index]
            self.progress.advance(manifests[seq])
            if blob is None:
                _missing_entries(report, seq, seq)
                return
            self.hashes[seq] = entry_hash(blob.data)
            report.manifests += 1
            entry = self._parse_entry(seq, blob.data)
            if entry is not None:
                await self._check_lock(_entry_key(seq), entry, blob.meta, stored=False)
            self.entries.append(_Entry(seq, entry))

        await _in_order([_entry_key(seq) for seq in seqs], self.store.read, consume)
        report.entries = len(self.entries)
        if self.entries:
            report.head = self.hashes[self.entries[-1].seq]
        covered: dict[str, str | None] = {}
        for read in self.entries:
            entry = read.entry
            before = self.hashes.get(read.seq - 1)
            if entry is not None and before is not None and entry.prev != before:
                report.problem(
                    "manifest_link_broken",
                    _entry_key(read.seq),
                    f"entry {read.seq}'s prev is {entry.prev}, but entry {read.seq - 1} hashes"
                    f" to {before}: an entry was replaced or reordered",
                    seq=read.seq,
                )
            if entry is None:
                continue
            if entry.epoch in covered and entry.after != covered[entry.epoch]:
                report.problem(
                    "wal_gap",
                    _entry_key(read.seq),
                    f"entry {read.seq} archives the WAL after {entry.after}, but the entry before"
                    f" it in epoch {entry.epoch} covered up to {covered[entry.epoch]}",
                    seq=read.seq,
                    after=entry.after,
                    covered=covered[entry.epoch],
                )
            covered[entry.epoch] = entry.covered
        unlocked = sum(1 for read in self.entries if read.entry and not read.entry.retention.mode)
        if unlocked:
            report.notice("unlocked", None, f"{unlocked} objects: their entries set no lock")

    def _parse_entry(self, seq: int, data: bytes) -> ManifestEntry | None:
        where = _entry_key(seq)
        try:
            entry = ManifestEntry.parse(data)
        except ManifestError as exc:
            self.report.problem(
                "manifest_tampered", where, f"entry {seq} is not a manifest entry: {exc}", seq=seq
            )
            return None
        if entry.seq != seq:
            self.report.problem(
                "manifest_tampered",
                where,
                f"the entry under seq {seq} says seq {entry.seq}",
                seq=seq,
            )
            return None
        if not _PERIOD_RE.fullmatch(entry.retention.period):
            self.report.problem(
                "manifest_tampered",
                where,
                f"entry {seq}'s retention period {entry.retention.period!r} is not <n>d or <n>y",
                seq=seq,
            )
            return None
        return entry

    async def _check_lock(self, key: str, entry: ManifestEntry, meta: Meta, stored: bool) -> None:
        """The Object Lock of ``key``, as its entry says it should be; ``stored``: the object is
        the entry's data object, whose lock must last the class's period from when it was stored."""
        retention = entry.retention
        if retention.mode is None:
            return
        report = self.report
        if meta.lock_mode is None:  # not said with its bytes: ask
            try:
                meta = await self.store.head(key)
            except Missing:
                return  # reported as missing
        if meta.lock_mode != retention.mode:
            found = f"locked {meta.lock_mode}" if meta.lock_mode else "not locked"
            report.problem(
                "lock_missing",
                key,
                f"{found}; entry {entry.seq} says {retention.mode}",
                seq=entry.seq,
            )
            return
        until = _timestamp(retention.retain_until)
        if until is None:
            report.problem(
                "lock_missing",
                key,
                f"entry {entry.seq} sets no usable retain-until date: {retention.retain_until!r}",
                seq=entry.seq,
            )
            return
        if meta.retain_until is None or meta.retain_until < until:
            report.problem(
                "lock_short",
                key,
                f"locked until {_iso(meta.retain_until)}, entry {entry.seq} says"
                f" {retention.retain_until}",
                seq=entry.seq,
            )
        elif stored and meta.last_modified is not None:
            required = _plus_period(meta.last_modified, retention.period)
            if until < required - LOCK_SLACK:
                report.problem(
                    "lock_short",
                    key,
                    f"locked until {retention.retain_until}, but class {retention.cls!r} keeps"
                    f" {retention.period} from when it was stored ({_iso(meta.last_modified)}):"
                    f" until {_iso(required)}",
                    seq=entry.seq,
                )

    # The data objects.

    async def _read_objects(self, data: dict[str, int]) -> None:
        report = self.report
        prefix = self.store.prefix
        named: dict[str, int] = {}
        reads = []
        for read in self.entries:
            if read.entry is None:
                continue
            key = read.entry.key
            if key not in data and prefix and key.startswith(prefix) and key[len(prefix) :] in data:
                key = key[len(prefix) :]
            if key in named:
                report.problem(
                    "manifest_duplicate",
                    _entry_key(read.seq),
                    f"entry {read.seq} names {key}, as entry {named[key]} does",
                    seq=read.seq,
                )
                continue
            named[key] = read.seq
            read.key = key
            reads.append(read)
        sizes = {key: data.pop(key, 0) for key in named}
        limit = self.max_object_bytes

        async def read_object(key: str) -> Blob:
            if sizes[key] > limit:  # not read: reported in consume
                return Blob(b"", Meta())
            return await self.store.read(key)

        async def consume(index: int, blob: Blob | None) -> None:
            read = reads[index]
            entry = read.entry
            assert entry is not None
            self.progress.advance(sizes[read.key])
            events: list[Archived] = []
            if blob is None:
                spans = ", ".join(
                    f"{agent} {span.first.sequence}-{span.last.sequence}"
                    for agent, span in sorted(entry.agents.items())
                )
                report.problem(
                    "object_missing",
                    read.key,
                    f"entry {read.seq} names it ({entry.events} events,"
                    f" WAL {entry.first}..{entry.last}{'; agents ' + spans if spans else ''})",
                    seq=read.seq,
                    events=entry.events,
                )
            elif sizes[read.key] > limit:
                _too_large(
                    report, read.key, f"{sizes[read.key]:,} bytes as stored", limit, read.seq
                )
            else:
                await self._check_lock(read.key, entry, blob.meta, stored=True)
                events = await trio.to_thread.run_sync(self._check_object, read, blob)
            after = reads[index + 1].entry if index + 1 < len(reads) else None
            await self._add_to_group(entry, events, after)
            del events, blob
            if not self._group:  # (checked: its envelopes are gone)
                self._collector.collect()

        await _in_order([read.key for read in reads], read_object, consume)
        await self._flush()

    def _check_object(self, read: _Entry, blob: Blob) -> list[Archived]:
        """The content checks of one object; its envelopes."""
        entry = read.entry
        assert entry is not None
        report = self.report
        key = read.key
        data = blob.data
        report.objects += 1
        report.bytes += len(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or len(data) != entry.size:
            report.problem(
                "object_tampered",
                key,
                f"{len(data)} bytes hashing to {digest}; entry {read.seq} says {entry.size} bytes"
                f" hashing to {entry.sha256}: replaced or altered",
                seq=read.seq,
            )
        try:
            text = decompress(data, entry.compression, self.max_object_bytes)
        except TooLarge:
            _too_large(report, key, "decompressed", self.max_object_bytes, read.seq)
            return []
        except ContentError as exc:
            report.problem("object_tampered", key, f"unreadable: {exc}", seq=read.seq)
            return []
        events, count, torn = read_lines(key, text, report)
        if torn:
            report.problem(
                "object_content", key, f"ends with an unfinished line ({len(torn)} bytes)"
            )
        summary = summarize((event.parsed for event in events), self.profile)
        wrong = []
        if count != entry.events:
            wrong.append(f"{count} lines, not {entry.events}")
        if (summary.first, summary.last) != (entry.first, entry.last):
            wrong.append(f"ids {summary.first}..{summary.last}, not {entry.first}..{entry.last}")
        for agent in sorted(set(summary.agents) | set(entry.agents)):
            held, said = summary.agents.get(agent), entry.agents.get(agent)
            if held != said:
                wrong.append(f"agent {agent}: {_span(held)}, not {_span(said)}")
        if wrong:
            shown = "; ".join(wrong[:5]) + (
                f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""
            )
            report.problem(
                "object_content", key, f"not what entry {read.seq} says: {shown}", seq=read.seq
            )
        return events

    async def _add_to_group(
        self, entry: ManifestEntry, events: list[Archived], after: ManifestEntry | None
    ) -> None:
        """Add an object's events to the group; check the group once ``after`` (the next
        entry's, None at the end) does not continue it, so that no object's envelopes stay
        alive while the next one is checked."""
        if self._group and not self._continues(entry):
            await self._flush()
        if not self._group:
            self._group_epoch, self._group_end = entry.epoch, id_key(entry.last)
        self._group.append(events)
        self._group_end = max(self._group_end, id_key(entry.last))
        if after is None or not self._continues(after):
            await self._flush()

    def _continues(self, entry: ManifestEntry) -> bool:
        """Whether ``entry``'s object belongs with the group (same epoch, WAL ranges overlap)."""
        return entry.epoch == self._group_epoch and id_key(entry.first) <= self._group_end

    async def _flush(self) -> None:
        group, self._group = self._group, []
        if not group:
            return
        merged = group[0] if len(group) == 1 else list(heapq.merge(*group, key=attrgetter("order")))
        await trio.to_thread.run_sync(self.check.feed_all, self._group_epoch, merged)

    # Versions.

    def _check_versions(self) -> None:
        """Keys hidden by a delete marker, or stored more than once (``store.versions``). Their
        newest stored versions were read like any key: a hidden entry or object is checked as
        it would be restored, so the report says whether restoring it brings back an intact
        archive."""
        report = self.report
        bucket = self.url.bucket
        for key, history in self.store.versions().items():
            stored = len(history.versions)
            if history.hidden:
                markers = history.markers
                if stored:
                    which = (
                        f"the delete marker {markers[0]}"
                        if len(markers) == 1
                        else f"its {len(markers)} delete markers ({', '.join(markers)})"
                    )
                    detail = (
                        f"hidden by a delete marker (deleted without a version id): its"
                        f" {_count(stored, 'stored version')} still there, the newest checked"
                        f" here as it would be restored; restore it by deleting {which}"
                        f" (aws s3api delete-object --bucket {bucket}"
                        f" --key {self.store.prefix}{key} --version-id <id>)"
                    )
                else:
                    detail = (
                        "a delete marker with no stored version under it: nothing to restore"
                        " (deleted for good, or never stored)"
                    )
                report.problem("hidden", key, detail, versions=stored, markers=list(markers))
            if stored > 1:
                report.problem(
                    "replaced",
                    key,
                    f"{stored} stored versions: written again after it was stored (the sink"
                    f" writes each key once); the newest, {history.versions[0]}, is the one"
                    f" checked here; the first stored is {history.versions[-1]}",
                    versions=list(history.versions),
                )

    # Witnesses.

    def _check_witnesses(self) -> None:
        report = self.report
        last = self.entries[-1].seq if self.entries else 0
        for record, where in self.check.witnesses:
            report.witnesses["seen"] += 1
            bucket, prefix = record.get("bucket"), record.get("prefix")
            seq, head = record.get("seq"), record.get("head")
            if bucket != self.url.bucket or not isinstance(prefix, str):
                continue
            if prefix.strip("/") != self.url.prefix.strip("/"):
                continue
            if type(seq) is not int or not isinstance(head, str):
                report.notice("witness", where, "a seal without an integer seq and a head")
                continue
            report.witnesses["checked"] += 1
            if seq > last:
                report.problem(
                    "truncated",
                    where,
                    f"a seal witnessed entry {seq} (head {head}), but the chain ends at entry"
                    f" {last}: its newest entries were removed",
                    seq=seq,
                    head=head,
                )
            elif seq in self.hashes and self.hashes[seq] != head:  # (a missing one is reported)
                report.problem(
                    "rewritten",
                    where,
                    f"a seal witnessed entry {seq} as {head}; it is now {self.hashes[seq]}",
                    seq=seq,
                    head=head,
                )
        if self.expect_head is not None and self.expect_head not in self.hashes.values():
            report.problem(
                "expected_head_missing",
                None,
                f"{self.expect_head} is the hash of no entry (the chain has {len(self.entries)},"
                f" head {report.head}): truncated after it was witnessed, or rewritten",
                head=self.expect_head,
            )


async def verify_s3(
    store: Store,
    url: S3Url,
    profile: Profile = SEED,
    expect_head: str | None = None,
    progress: Progress | None = None,
    max_object_bytes: int = MAX_OBJECT_BYTES,
) -> Report:
    """Verify the ``s3`` sink's archive at ``url`` in ``store`` (an ``S3Store``); objects that
    hold more than ``max_object_bytes`` (as stored or decompressed) are reported, not checked."""
    verification = S3Verification(
        store, url, profile, expect_head, progress or NoProgress(), max_object_bytes
    )
    return await verification.run()


def _entry_key(seq: int) -> str:
    return f"{MANIFEST_DIR}{seq:020d}.json"


def _too_large(report: Report, where: str, what: str, limit: int, seq: int | None = None) -> None:
    """``where`` holds more than ``limit`` bytes (``what``: how many, or how it was found)."""
    report.problem(
        "object_too_large",
        where,
        f"more than {limit:,} bytes ({what}): not checked; a decompression bomb, or objects"
        " larger than the sinks write by default (--max-object-bytes reads larger ones)",
        **({"seq": seq} if seq is not None else {}),
        limit=limit,
    )


def _missing_entries(report: Report, first: int, last: int) -> None:
    which = f"entry {first}" if first == last else f"entries {first}-{last}"
    report.problem(
        "manifest_missing",
        _entry_key(first),
        f"{which} of the manifest chain missing",
        missing=[first, last],
    )


def _count(count: int, noun: str) -> str:
    return f"1 {noun} is" if count == 1 else f"{count} {noun}s are"


def _span(span: AgentSpan | None) -> str:
    if span is None:
        return "none"
    return (
        f"{span.first.sequence} {span.first.hash[:19]}..{span.last.sequence} {span.last.hash[:19]}"
    )


def _timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "never"


def _plus_period(moment: datetime, period: str) -> datetime:
    """``moment`` plus ``"<n>d"`` days or ``"<n>y"`` calendar years (29 February to 28)."""
    match = _PERIOD_RE.fullmatch(period)
    assert match is not None  # checked with the entry
    count, unit = int(match.group(1)), match.group(2)
    if unit == "d":
        return moment + timedelta(days=count)
    year = moment.year + count
    try:
        return moment.replace(year=year)
    except ValueError:
        return moment.replace(year=year, day=28)
