"""The chain stage: verifies each event's chain before the WAL, and keeps the verifier's state
across restarts with a checkpoint plus a replay of the WAL after it.

Checkpoint file ``<data_dir>/chain/checkpoint.json``, one JSON object, replaced atomically
(write, fsync, rename, fsync the directory)::

    {"v": 2, "epoch": "<WAL epoch>", "segment": 12, "offset": 40960,
     "written_at": "2026-11-23T10:45:23.102345Z", "state": {...Verifier.snapshot()...}}

meaning: ``state`` is the verifier's state after every WAL record before (segment, offset) of
the WAL of that epoch, and nothing after. Version 2 holds a ``Verifier.snapshot()`` of version
3 (``shipper.chain``: a list per state field over all agents, in the eviction sweep's order,
each agent's ring packed): with 100,000 agents the worker thread holds the GIL for about 0.6 to
0.9 s to take and write it, with one record per agent or with full dedupe windows (a file of
some 455 MB then, 64 hashes an agent). Snapshots of version 2 (rings as lists of hash strings)
and 1 still load, and a version 1 checkpoint (written before; its state a version 1 snapshot,
an object per agent) too, so an upgrade replays only the WAL after it; the next checkpoint is
version 2 with a version 3 snapshot.

Rules:

* The stage runs in the WAL writer's task, so the state always matches a WAL position: before a
  batch is verified, the state covers exactly what the WAL has accepted (``Wal.committed``).
* A checkpoint is written right after the start-up replay (so that a crash loop shorter than
  ``checkpoint_interval`` never replays an ever longer WAL), every ``checkpoint_interval``,
  whenever the WAL is full (before the writer waits for space), and at shutdown. The WAL is fsynced first (``Wal.sync``), whatever the
  fsync policy: a checkpoint never covers records a power cut could still take away, so a record
  the agent sends again after such a loss is never mistaken for a duplicate.
* The WAL keeps every segment after the checkpoint: the stage holds a WAL cursor named
  ``CHAIN_CURSOR`` (``.chain``, which no sink id can be) and moves it to the checkpoint's position
  once the checkpoint is durable. Segments are deleted only when the sinks *and* the checkpoint
  have passed them.
* At start: load the checkpoint and feed the verifier every record of the WAL after its position,
  in order (events that carry a ``chain`` object, i.e. that were verified, and not alerts); the
  verdicts are recomputed, not trusted from disk, and must match the archived ones (a mismatch
  is logged). No alert is raised again and nothing is counted twice: the checkpoint's counts
  cover exactly what came before its position.
* The garbage collector is paused while the checkpoint is read and restored: they make objects
  that all stay, hundreds of thousands of them, and every collection they set off would go over
  them all again (2 to 3 times slower).
* No checkpoint (first start), an unreadable one, or one of another profile: the state starts
  empty and the whole retained WAL is replayed; an unreadable or mismatched one is logged as a
  warning (agents whose earlier records left the WAL may then show as ``adopted``). A checkpoint
  of another WAL epoch (the WAL was wiped) keeps its state, and the whole new WAL is replayed.

What the stage does to each event: records with an agent (the profile's agent field; for line
hashing without one, the sender: the first TLS SAN, the TLS subject, the syslog hostname or the
peer's address, ``shipper.chain.sender_identity``) get ``chain`` = the verdict and ``agent`` =
that agent. A source did the stateless half already for the events it sealed
(``shipper.events``): their ``agent`` is final and their ``facts`` (``shipper.chain.Facts``)
hold all the check needs, so the stage only runs ``Verifier.feed_facts`` (an event without facts
is not verified); for any other event it parses the record and takes agent and facts itself.
Neither the facts nor the event's bytes are used up: an event verified again (after the WAL
refused its batch, from the state ``rebuilt`` gives) gets the same verdict. Exact duplicates are
removed (counted in ``duplicates_dropped``); a verdict with an alert, each gap it expires, and
each agent evicted to make room for its agent (``[chain] max_agents``; the alert's agent is the
evicted one, ``admitted`` the new one; counted in ``agents_evicted``) adds a
``shipper.chain_alert`` event right after the event (and a warning in the daemon's log, at most
``LOG_ALERTS_PER_SECOND`` a second; each says how many were left out before it). The alerts
among the events a batch returns (passed on, or raised by the stage) are listed in ``raised``,
which the writer keeps with the batch until the WAL accepts it (``shipper.recent``). Alerts,
malformed events and events with ``identity_mismatch`` are not verified (an impostor's records must not move the
chain of the agent it claims to be).

A defect that raises while one event is verified costs that event only: it is archived with
``chain = {"status": "unchained", "detail": "not verified: ..."}`` and followed by a critical
``verify_failed`` alert, the cause is logged (``chain_verify_failed``) and counted
(``verify_errors``); replay passes such events over, as they never moved the chain. A record that
cannot be replayed (a defect) is logged and counted (``replay_errors``), and the replay goes on.
"""

from __future__ import annotations

import gc
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from shipper.buffer.published import HEAD_FILE, State, recovered
from shipper.buffer.reader import WalReader
from shipper.buffer.recovery import recover
from shipper.buffer.segment import Position, fsync_dir, read_object, replace_file
from shipper.chain import (
    Verdict,
    Verifier,
    as_verdict,
    expired_alert_details,
    ok_envelope,
    sender_identity,
)
from shipper.config import ChainConfig
from shipper.events import (
    CHAIN_ALERT,
    Event,
    alert_event,
    envelopes,
    record_bytes,
    utc_timestamp,
)
from shipper.logging import Throttle, get_logger
from shipper.metrics import Health, Registry, mirror

log = get_logger("shipper.chain")

CHECKPOINT_VERSION: Final = 2
#: Checkpoint versions ``load_checkpoint`` takes (1: its state a version 1 snapshot).
CHECKPOINT_VERSIONS: Final = (1, 2)
CHAIN_DIR: Final = "chain"
CHECKPOINT_FILE: Final = "checkpoint.json"
#: The WAL cursor that keeps the segments after the checkpoint.
CHAIN_CURSOR: Final = ".chain"
LOG_ALERTS_PER_SECOND: Final = 10
#: How the ``chain.detail`` of an event whose verification failed (a defect) begins.
NOT_VERIFIED: Final = "not verified:"


@dataclass
class Checkpoint:
    epoch: str
    position: Position
    state: dict[str, Any]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (if it runs) while a checkpoint is read: that makes
    hundreds of thousands of objects that all stay, and each collection they set off would go
    over all of them again (for 100,000 agents, 2 to 3 times slower). Nothing read makes a
    reference cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def checkpoint_path(data_dir: Path) -> Path:
    return data_dir / CHAIN_DIR / CHECKPOINT_FILE


def load_checkpoint(data_dir: Path) -> Checkpoint | str | None:
    """The stored checkpoint; None if there is none; a reason string if it is unusable."""
    path = checkpoint_path(data_dir)
    data = read_object(path)
    if data is None or isinstance(data, str):
        return data
    if data.get("v") not in CHECKPOINT_VERSIONS:
        return f"{path} is corrupt: not a chain checkpoint of version 1 or 2"
    segment, offset = data.get("segment"), data.get("offset")
    if not isinstance(segment, int) or not isinstance(offset, int) or segment < 1:
        return f"{path} is corrupt: bad position"
    if not isinstance(data.get("state"), dict) or not isinstance(data.get("epoch"), str):
        return f"{path} is corrupt: bad state or epoch"
    return Checkpoint(data["epoch"], Position(segment, offset), data["state"])


def read_checkpoint(data_dir: Path) -> Checkpoint | str | None:
    """``load_checkpoint`` with the garbage collector paused (see ``collector_paused``)."""
    with collector_paused():
        return load_checkpoint(data_dir)


def store_checkpoint(data_dir: Path, checkpoint: Checkpoint) -> int:
    """Write the checkpoint atomically and durably (blocking: run it in a worker thread); its
    size in bytes."""
    state = (orjson.dumps(checkpoint.state),)
    return store_state(data_dir, checkpoint.epoch, checkpoint.position, state)


def store_state(data_dir: Path, epoch: str, position: Position, state: Iterable[bytes]) -> int:
    """``store_checkpoint`` of a state given as its JSON in pieces (``Verifier.snapshot_parts``),
    each written as it comes, so that the whole is never in memory at once."""
    directory = data_dir / CHAIN_DIR
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
    head = orjson.dumps(
        {
            "v": CHECKPOINT_VERSION,
            "epoch": epoch,
            "segment": position.segment,
            "offset": position.offset,
            "written_at": utc_timestamp(),
        }
    )
    # ``state`` is the last key: the file is what one ``orjson.dumps`` of them all would give.
    pieces = itertools.chain((head[:-1], b',"state":'), state, (b"}",))
    return replace_file(checkpoint_path(data_dir), pieces)


def wal_envelopes(
    wal_dir: Path,
    start: Position | None,
    end: Position | None = None,
    state: State | None = None,
) -> Iterator[tuple[Position, bytes]]:
    """(end of the read it came in, envelope) of every event the WAL accepted from ``start``
    (None: the oldest) up to ``end`` (None: all it has accepted), in order, read as a sink reads
    them (a ``WalReader`` without a cursor): damaged records are stepped over and logged.

    ``state``: a fixed view of the WAL: the writer's own (``Wal.state``: the daemon replays by
    what it knows, not by what it managed to publish, which a full disk can stop), or what
    recovery finds (``published.recovered``). By default the reader goes by what the WAL's
    writer published; for a WAL whose writer never did (one that no shipper of this version
    opened), by what recovery finds (changing nothing).
    """
    if state is None and not (wal_dir / HEAD_FILE).exists():
        state = recovered(recover(wal_dir, [], repair=False))
    reader = WalReader(wal_dir, None, position=start, envelopes=envelopes, state=state)
    for batch in reader.replay(end):
        for envelope in batch.envelopes:
            yield batch.end, envelope
    if reader.counters["corrupt_bytes"]:
        log.error("chain_replay_skipped_record", bytes=reader.counters["corrupt_bytes"])


class _Failed(Exception):
    """A defect raised while event ``index`` of a batch was verified (``out`` held ``mark``
    events before it)."""

    def __init__(self, index: int, mark: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index, self.mark, self.error = index, mark, error


#: What the chain stage counts (``chain_<name>`` metrics; verdicts are ``chain_verdicts``).
CHAIN_COUNTERS: dict[str, str] = {
    "alerts": "Chain alerts raised",
    "duplicates_dropped": "Exact duplicates removed (same agent, sequence and hash)",
    "agents_evicted": "Agents evicted to keep max_agents",
    "verify_errors": "Events archived unverified because verifying them raised (a defect)",
    "checkpoints": "Checkpoints stored",
    "checkpoint_errors": "Checkpoints that could not be stored",
    "checkpoint_unusable": "Checkpoints found unusable at start",
    "replayed": "WAL events replayed at start",
    "replay_errors": "WAL events that could not be replayed",
    "replay_mismatches": "Replayed events whose stored verdict differs from the replay's",
}


class ChainStage:
    """The verifier, its checkpoint and replay, and what it does to each batch of events."""

    def __init__(self, config: ChainConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.profile = config.profile_fields
        self.verifier = self._new_verifier()
        self.counters: Counter[str] = Counter()
        #: The alert events among those the last ``process`` returned (passed on or raised).
        self.raised: list[Event] = []
        self._alert_log = Throttle(LOG_ALERTS_PER_SECOND)
        self._error_log = Throttle(1)

    def _new_verifier(self, state: dict[str, Any] | None = None) -> Verifier:
        settings = {
            "window": self.config.dedupe_window,
            "max_gaps": self.config.max_open_gaps,
            "max_agents": self.config.max_agents,
        }
        if state is None:
            return Verifier(self.profile, **settings)
        return Verifier.restore(state, self.profile, **settings)

    # --- start: checkpoint and replay -----------------------------------------------------------

    def rebuilt(
        self, wal_dir: Path, epoch: str, end: Position, state: State | None = None
    ) -> Verifier:
        """The verifier as it was at ``end`` of the WAL: the checkpoint, then the WAL after it up
        to ``end`` (blocking: a worker thread; this stage is not touched). The writer's way back
        when the WAL refused batches this stage had verified already: it verifies them again.
        ``state``: the WAL as its writer knows it (``Wal.state``; see ``wal_envelopes``)."""
        stage = ChainStage(self.config, self.data_dir)
        stage.load(wal_dir, epoch, end, state)
        return stage.verifier

    def load(
        self,
        wal_dir: Path,
        epoch: str,
        end: Position | None = None,
        state: State | None = None,
    ) -> None:
        """Restore the state: the checkpoint, then the WAL after it, up to ``end`` if given
        (blocking; before serving)."""
        self.load_from(read_checkpoint(self.data_dir), wal_dir, epoch, end, state)

    def load_from(
        self,
        found: Checkpoint | str | None,
        wal_dir: Path,
        epoch: str,
        end: Position | None = None,
        state: State | None = None,
    ) -> None:
        """``load`` from a checkpoint already read (``read_checkpoint``): the daemon reads it
        before the WAL opens, as its epoch is the best evidence of the WAL's should ``wal/epoch``
        be lost, and does not read it twice."""
        start: Position | None = None
        with collector_paused():
            if isinstance(found, Checkpoint):
                try:
                    self.verifier = self._new_verifier(found.state)
                except ValueError as exc:
                    found = str(exc)
        if isinstance(found, str):
            log.warning("chain_checkpoint_unusable", reason=found)
            self.counters["checkpoint_unusable"] += 1
        elif found is not None:
            if found.epoch == epoch:
                start = found.position
            else:
                log.warning(
                    "chain_checkpoint_other_wal",
                    detail="the WAL was replaced; its whole content is replayed",
                )
        replayed = mismatched = failed = 0
        for position, envelope in wal_envelopes(wal_dir, start, end, state):
            try:
                parsed = orjson.loads(envelope)
                stored = parsed.get("chain")
                if stored is None or "record" not in parsed or parsed.get("agent") is None:
                    continue
                if str(stored.get("detail", "")).startswith(NOT_VERIFIED):
                    continue  # verifying it failed when it came: it did not move the chain
                line = record_bytes(envelope, parsed) if self.profile.line_hashed else b""
                verdict = self.verifier.feed(str(parsed["agent"]), parsed["record"], line)
                replayed += 1
                if as_verdict(verdict).envelope() != stored:
                    mismatched += 1
            except Exception as exc:  # a defect, or a damaged record: the rest still replays
                failed += 1
                if failed == 1:
                    log.exception("chain_replay_failed", position=str(position), error=str(exc))
        self.counters["replayed"] += replayed
        if failed:
            self.counters["replay_errors"] += failed
            log.error("chain_replay_errors", records=failed)
        if mismatched:
            self.counters["replay_mismatches"] += mismatched
            log.warning("chain_replay_mismatch", records=mismatched)
        log.info(
            "chain_state_loaded",
            agents=len(self.verifier.agents),
            replayed=replayed,
            checkpoint=str(start) if start is not None else None,
        )

    def register_metrics(self, registry: Registry) -> None:
        """Tell ``registry`` the stage's counts (``chain_<name>``), the verdicts by status, the
        agents tracked, and its health (``chain``)."""
        mirror(registry, "chain", lambda: self.counters, CHAIN_COUNTERS)
        verdicts = registry.counter(
            "chain_verdicts", "Chain verdicts, by status", labels=("status",)
        )

        def collect() -> None:
            for status, count in self.verifier.counts.items():
                verdicts.labels(status).value = count

        registry.collector(collect)
        registry.gauge("chain_agents", "Agents whose chain is tracked").labels().observe(
            lambda: len(self.verifier.agents)
        )
        registry.health("chain", self.health)

    def health(self) -> Health:
        """``degraded`` once a verification raised (a defect: that event went unverified)."""
        if self.counters["verify_errors"]:
            return Health("degraded", f"{self.counters['verify_errors']} events not verified")
        return Health()

    def checkpoint(self, epoch: str, position: Position) -> int:
        """Store the state as covering the WAL up to ``position`` (blocking: a worker thread);
        the bytes the checkpoint file took."""
        size = store_state(self.data_dir, epoch, position, self.verifier.snapshot_parts())
        self.counters["checkpoints"] += 1
        return size

    # --- per batch ------------------------------------------------------------------------------

    def process(self, batch: list[Event], now: float) -> list[Event]:
        """Verify each event of ``batch``; the events to append (duplicates out, alerts in).

        Never raises for an event: a defect that raises while one event is verified is logged with
        its cause and counted (``verify_errors``), and that event is archived unverified, with a
        ``chain`` of status ``unchained`` whose detail says so, followed by a critical
        ``verify_failed`` alert; the other events go on as usual.
        """
        out: list[Event] = []
        self.raised = []
        start = 0
        while start < len(batch):
            try:
                self._verify(batch, start, out, now)
                break
            except _Failed as failed:
                del out[failed.mark :]  # whatever of that event got in goes in again, in order
                self._verify_failed(batch[failed.index], failed.error, out, now)
                start = failed.index + 1
                self.raised = [event for event in out if event.alert]  # (rare: count them again)
        return out

    def _verify(self, batch: list[Event], start: int, out: list[Event], now: float) -> None:
        """Verify the events of ``batch`` from ``start`` on, appending each (unless it is a
        duplicate) and its alerts to ``out``; ``_Failed`` names the event a defect stopped at.
        (One loop with the body inline: the per-event cost is the verifier's, not a call's.)"""
        profile = self.profile
        feed_facts = self.verifier.feed_facts
        index = start
        mark = len(out)
        try:
            for index in range(start, len(batch)):
                event = batch[index]
                mark = len(out)
                raw = event.record_json
                if raw is None or event.alert or event.identity_mismatch is not None:
                    out.append(event)
                    if event.alert:
                        self.raised.append(event)
                    continue
                facts = event.facts
                agent = event.agent
                if event.sealed is None:  # not from a source: the stateless half is done here
                    record = orjson.loads(raw)
                    agent = profile.agent_of(record)
                    if agent is None and profile.line_hashed:
                        agent = sender_identity(event.source, event.syslog)
                    if agent is None:
                        out.append(event)
                        continue
                    facts = profile.facts(record, raw)
                    event.agent = agent
                if agent is None or facts is None:  # (a source's event that names no agent)
                    out.append(event)
                    continue
                verdict = feed_facts(agent, facts)
                if isinstance(verdict, int):  # ok, nearly every record: its sequence
                    event.chain = ok_envelope(verdict)
                    out.append(event)
                    continue
                if verdict.drop:
                    self.counters["duplicates_dropped"] += 1
                    continue
                event.chain = verdict.envelope()
                out.append(event)
                if verdict.alert:
                    out.append(self._alert(event, agent, verdict.alert_details(), verdict, now))
                for gap in verdict.expired:
                    out.append(self._alert(event, agent, expired_alert_details(gap), None, now))
                for eviction in verdict.evicted:
                    self.counters["agents_evicted"] += 1
                    alert = self._alert(event, eviction.agent, eviction.alert_details(), None, now)
                    out.append(alert)
        except Exception as exc:
            raise _Failed(index, mark, exc) from exc

    def _verify_failed(self, event: Event, exc: Exception, out: list[Event], now: float) -> None:
        """A defect raised while ``event`` was verified: archive it unverified, say so loudly."""
        self.counters["verify_errors"] += 1
        cause = f"{type(exc).__name__}: {exc}"[:300]
        if self._error_log.allow(now) is not None:
            log.exception(
                "chain_verify_failed",
                agent=event.agent,
                source=event.source.get("id"),
                error=cause,
                verify_errors_total=self.counters["verify_errors"],
            )
        detail = f"{NOT_VERIFIED} shipper failed while verifying it ({cause})"
        event.chain = {"status": "unchained", "detail": detail}
        out.append(event)
        details = {"status": "verify_failed", "severity": "critical", "detail": detail}
        out.append(self._alert(event, event.agent, details, None, now))

    def _alert(
        self,
        event: Event,
        agent: str | None,
        details: dict[str, Any],
        verdict: Verdict | None,
        now: float,
    ) -> Event:
        source = event.source
        details = {
            **details,
            "source": source.get("id"),
            "peer": source.get("peer"),
            "tls_subject": source.get("tls_subject"),
            "tls_san": source.get("tls_san"),
            "event_received_at": event.received_at,
        }
        self.counters["alerts"] += 1
        left_out = self._alert_log.allow(now)
        if left_out is not None:
            log.warning(
                "chain_alert",
                agent=agent,
                status=details["status"],
                severity=details["severity"],
                sequence=verdict.sequence if verdict is not None else None,
                expected=verdict.expected if verdict is not None else None,
                missing=details.get("missing"),
                source=details["source"],
                peer=details["peer"],
                not_logged_since=left_out,
            )
        alert = alert_event(CHAIN_ALERT, agent, details)
        self.raised.append(alert)
        return alert
