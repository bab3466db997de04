"""Per-agent hash-chain verification: a pure state machine (no trio, no I/O).

Each agent's audit records form a chain: a monotonic ``sequence``, the record's own ``hash`` and the
previous record's hash ``prevHash``. The check comes in two halves:

* stateless: ``Profile.facts(record, line)`` takes what the check needs of one record, a
  ``Facts`` (a small tuple: sequence, claimed hash, prevHash and the digest recomputed from the
  record's canonical form, or why the record is unchained; for line hashing the line's digest and
  prevHash). It needs the record alone, so whoever parsed the record takes it and drops the
  parse at once (the sources do; ``Facts`` pickle, for ingest processes);
* stateful: ``Verifier.feed_facts(agent, facts)`` checks them against what the verifier knows of
  that agent (link, sequence, duplicates, gaps), in arrival order.

``Verifier.feed(agent, record, line)`` is both at once (replaying the WAL, the ``chain``
commands, tests). For an ``ok`` record, nearly every one, either returns the record's sequence,
an ``int`` (also the sequence that was expected; ``ok_envelope(sequence)`` is the event's
``chain`` object); for any other status a ``Verdict``: the caller writes ``verdict.envelope()``
into the event's ``chain`` object, drops the event when ``verdict.drop`` (an exact duplicate),
and raises an alert when ``verdict.alert``. (An ``int`` rather than an ok ``Verdict``: making an
object per record cost some 4% of the verification. ``as_verdict`` turns either into a
``Verdict``.) The common case, the next record of a known agent whose links and digest match,
takes a few comparisons and stores in ``feed_facts``.

Statuses, for the sequence-numbered profiles (``seed``)::

    status       when                                                       alert      state
    genesis      first record of the agent, sequence 0 or 1 or prevHash     -          starts
                 empty / the genesis marker
    adopted      first record of the agent, mid-chain                       low        starts
    ok           sequence = last + 1, prevHash = last hash                  -          advances
    broken_link  sequence = last + 1, prevHash != last hash; or a late      critical   advances
                 record that does not link into its gap
    gap          sequence > last + 1: the records between are missing       medium     advances,
                 (``missing`` = [first, last] of them)                                 opens a gap
    late         fills (part of) an open gap and links to its neighbours    low        closes it
                 where they are known
    duplicate    a sequence already accepted, with the same hash: dropped   -          none
    fork         a sequence already accepted, with another hash             critical   none
    regressed    sequence <= last, neither in an open gap nor among the     medium     none
                 last ``window`` accepted sequences (so neither duplicate
                 nor fork can be told)
    bad_hash     the hash does not recompute from the record's content      critical   as if its
                 (precedes every other status but ``unchained``)                       claimed hash
                                                                                       were right
    unchained    no usable chain fields (missing, or of the wrong type)    -          none

``bad_hash`` keeps the position logic: an edited record (its hash left as it was) is reported at
that record, and its successor, which links to the claimed hash, is ``ok``. A record edited *and*
re-hashed recomputes fine, so it is its successor that reports ``broken_link``.

Profiles (``Profile``) name the fields and how a hash is made:

* ``seed`` (default): ``agentId``, ``sequence``, ``hash``, ``prevHash``; ``hash = "sha256:" +
  hex(sha256(JCS(record without "hash")))``, JCS = RFC 8785 (``shipper.codecs.canonical``).
* ``safeclaw-jsonl``: SafeClaw's audit file, where ``prevHash`` is the hex sha256 of the exact
  previous line and the first line's ``prevHash`` is ``GENESIS``; there is neither a sequence nor a
  hash field: a record's hash is that of its line, its sequence its position in the agent's
  stream. Only link statuses can be told then: ``genesis``/``adopted``, ``ok``, ``duplicate`` (a
  line seen among the last ``window``), ``fork`` (a second successor of a recent line),
  ``broken_link`` (anything else: a lost line, an edited one, a restarted chain); a line without
  ``prevHash`` is ``unchained`` and still becomes the predecessor of the next (as SafeClaw's own
  verifier does).
* custom: any field names, ``sha256`` or ``sha512``, a prefix, a genesis marker, and either
  canonical (JCS) or line hashing.

Bounded memory per agent: the last ``window`` accepted (sequence, hash) pairs, for duplicate and
fork detection, and at most ``max_gaps`` open gaps; when another gap would open, the oldest one is
closed as permanent and reported in ``verdict.expired`` (the caller raises an alert for each). An
open gap costs four values however many records it spans.

Bounded agents: at most ``max_agents`` agents are tracked. When a record of an agent not tracked
comes while ``max_agents`` are, the least recently active agent is evicted first, by the CLOCK
algorithm, an approximate LRU (``Verifier._admit``): the agents stand in a circle in the order
they came, and a hand passes over each agent whose ``last_sequence`` moved since the hand last
passed it (marking it) and evicts the first one that did not move; the new agent takes its place.
Activity is a move of ``last_sequence`` (ok, gap, broken_link, bad_hash, or any line for line
hashing): an agent sending only resends, late records, forks or regressed ones counts as idle.
The ok fast path does nothing for the sweep. Each eviction comes in ``verdict.evicted`` of the
record that needed the room (an ``Eviction``: the agent and all that was known of it, last
sequence and hash, open gaps, counts, last alert); the caller raises an ``agent_evicted`` alert
(medium) for each. ``counts["agents_evicted"]`` counts them, and the records of evicted agents
stay in the totals. What eviction forgets: the agent's first record after it is ``adopted``,
whatever it is, and its chain restarts there (normally its next record, whose prevHash is the
alert's ``last_hash``, which links the two; a resend would restart it at an old sequence, and
the next records would show as a ``gap``); later resends of earlier records are ``regressed``,
not ``duplicate``, and so are late records for the gaps it had open.

Agents with problems (``Verifier.troubled``, a ``Troubled``): every agent that had a verdict of
medium or critical severity (fork, broken link, bad hash, gap, regressed, a gap given up), by
that severity, most recently troubled last, so that a status page lists them without going over
every agent. Noted on the careful path only, forgotten when the agent is evicted, and rebuilt
from the agents' counts on ``restore`` (where recency is lost: the sweep's order instead).

Memory per agent (CPython 3.11, 64-bit; ``bench.chain`` measures it): about 3.3 KB from its first
record on, whatever the window holds: the ring is packed (``AgentState``: 64 sequences of 8
bytes and 64 sha256 digests of 32 bytes, in two objects made with the state, about 2.6 KB), the
state, counts and agent id some 0.7 KB. So ``max_agents`` bounds the chain state to about
``max_agents * (window * 40 B + 0.8 KB)``: 330 MB for 100,000 agents at window 64. (With the
ring a list of hash strings, an agent took 1.7 KB after one record and 11 KB with a full window,
1.1 GB for 100,000 agents; and since each string was allocated as its record passed, the few
that stayed held on to blocks of the allocator's memory that the records around them had freed:
with 10,000 agents, a process whose queues had been full stayed tens of MB above what it held.
Packing costs the ok fast path about 0.4 us a record, the ring's two objects and their
buffers being more memory to reach for an agent last seen long ago; ``Profile.facts`` gives
the digest's bytes (``Facts.packed``), so the hex is not parsed again.)

``snapshot()`` / ``Verifier.restore()`` give and take the whole state (the chain checkpoint,
``shipper.chain_stage``): version 3 holds a list per state field over all agents, in the sweep's
order, and each ring packed (its sequences, and its digests in hex), so that with 100,000 agents
it is taken in a few C-level passes and orjson writes it in C (``Verifier.snapshot``; the
checkpoint takes the same bytes in pieces, 1,024 agents at a time, ``snapshot_parts``); version
2 (each ring a list of hash strings, packed again slot by slot) and version 1 (an object per
agent) still restore. Feeding the same records to a restored verifier gives the same verdicts
and evictions, which is what replaying the WAL after a checkpoint relies on. Every integer in a
state comes from orjson, which reads integers past 64 bits as floats (``unchained``), so orjson
can write the state back.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, cast

import orjson

from shipper.codecs.canonical import canonicalize

if TYPE_CHECKING:
    from hashlib import _Hash

STATUSES: Final = (
    "genesis",
    "adopted",
    "ok",
    "gap",
    "late",
    "duplicate",
    "fork",
    "broken_link",
    "bad_hash",
    "regressed",
    "unchained",
)
#: Alert severity per status (statuses not listed raise no alert).
SEVERITY: Final[dict[str, str]] = {
    "adopted": "low",
    "late": "low",
    "gap": "medium",
    "regressed": "medium",
    "gap_expired": "medium",
    "agent_evicted": "medium",
    "fork": "critical",
    "broken_link": "critical",
    "bad_hash": "critical",
}
#: Alert severities that make an agent a problem (``Troubled``): worst first.
TROUBLE_SEVERITIES: Final = ("critical", "medium")
#: Statuses by how bad they are for an agent's chain, worst first (``AgentState.worst``).
BY_SEVERITY: Final = (
    "fork",
    "broken_link",
    "bad_hash",
    "gap_expired",
    "gap",
    "regressed",
    "adopted",
    "late",
)
ALGORITHMS: Final = ("sha256", "sha512")
SNAPSHOT_VERSION: Final = 3
#: Snapshot versions ``Verifier.restore`` takes (1: before the columns of version 2; 2: before
#: the packed rings of version 3, each ring a list of sequences and hash strings).
SNAPSHOT_VERSIONS: Final = (1, 2, 3)
#: The columns of a version 3 snapshot's ``agents``, one value per agent in each (see
#: ``Verifier.snapshot``); version 2 had ``ring`` in place of the last three.
SNAPSHOT_COLUMNS: Final = (
    "id",
    "last_sequence",
    "last_hash",
    "ok_base",
    "swept",
    "gaps",
    "others",
    "last_alert",
    "sequences",
    "digests",
    "odd",
)
#: The columns every version since 2 has: all but the ring's.
_STATE_COLUMNS: Final = SNAPSHOT_COLUMNS[:8]


@dataclass(frozen=True, slots=True)
class Profile:
    """Where a record keeps its agent and chain fields, and how its hash is computed."""

    name: str
    agent: tuple[str, ...] = ("agentId",)  # key path of the agent id in the record
    sequence: str | None = "sequence"  # None: the record's position in its agent's stream
    hash: str | None = "hash"  # None: line hashing (the hash of the exact line, not a field)
    prev_hash: str = "prevHash"
    algorithm: str = "sha256"
    prefix: str = "sha256:"
    genesis: str = ""  # the prevHash of a first record (besides empty or missing)
    # The agent's key when its path has one key (agent_of, once per record, looks here first).
    _agent_key: str | None = field(default=None, init=False, repr=False, compare=False)
    # The hash's constructor (a named one, such as hashlib.sha256, beats hashlib.new).
    _hasher: Callable[[bytes], _Hash] = field(
        default=hashlib.sha256, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {self.algorithm!r}")
        if (self.hash is None) != (self.sequence is None):
            raise ValueError(
                "a profile either has both a sequence and a hash field (canonical hashing) "
                "or neither (line hashing, the position is the sequence)"
            )
        if not self.agent or not all(self.agent):
            raise ValueError("agent: expected a non-empty key path")
        if len(self.agent) == 1:
            object.__setattr__(self, "_agent_key", self.agent[0])
        object.__setattr__(self, "_hasher", getattr(hashlib, self.algorithm))

    @property
    def line_hashed(self) -> bool:
        return self.hash is None

    def agent_of(self, record: dict[str, Any]) -> str | None:
        """The agent id the record names (a string or an integer), or None."""
        key = self._agent_key
        if key is not None:
            value: Any = record.get(key)
            if type(value) is str and value:
                return value
        else:
            value = record
            for name in self.agent:
                if not isinstance(value, dict):
                    return None
                value = value.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None

    def digest(self, data: bytes) -> str:
        return self.prefix + self._hasher(data).hexdigest()

    def facts(self, record: dict[str, Any], line: bytes = b"") -> Facts:
        """What ``Verifier.feed_facts`` needs of a record (``line``: its exact bytes, for line
        hashing): the stateless half of the check, its canonical form and hash. ``record`` is
        used as is (its hash field may move to the end of it)."""
        prev = record.get(self.prev_hash)
        hash_field = self.hash
        if hash_field is None:  # line hashing: the line's digest is the record's hash
            if not isinstance(prev, str):
                prev = None
            return _new_facts(Facts, (None, self.digest(line), prev, None, None, None))
        sequence = record.get(self.sequence)  # type: ignore[arg-type]
        claimed = record.get(hash_field)
        if not (
            type(sequence) is int
            and sequence >= 0
            and type(claimed) is str
            and (prev is None or type(prev) is str)
        ):  # (the common case passes these; other types get the checks they need below)
            if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
                return Facts(None, None, None, None, f"no usable {self.sequence!r}")
            if not isinstance(claimed, str):
                return Facts(sequence, None, None, None, f"no usable {hash_field!r}")
            if prev is not None and not isinstance(prev, str):
                return Facts(sequence, None, None, None, f"no usable {self.prev_hash!r}")
        del record[hash_field]  # hashed without it; put back (at the end) below
        packed: bytes | None = None
        try:
            raw = self._hasher(canonicalize(record)).digest()
            digest = self.prefix + raw.hex()
            packed = raw
        except (ValueError, TypeError) as exc:
            digest = f"(cannot canonicalize: {exc})"
        finally:
            record[hash_field] = claimed
        if digest == claimed:
            digest = claimed  # one string, not two equal ones (memory, pickling)
        return _new_facts(Facts, (sequence, claimed, prev, digest, None, packed))


#: ``Facts`` made from a tuple in C (a named tuple's own constructor is a Python function).
_new_facts: Final = tuple.__new__


class Facts(NamedTuple):
    """What the stateful check (``Verifier.feed_facts``) needs of one record, computed from the
    record alone (``Profile.facts``): small, immutable and picklable, so that whoever parsed the
    record can drop it at once, in another process if need be.

    For a canonical-hash profile: the record's ``sequence``, its claimed ``hash``, its
    ``prev_hash`` and the ``digest`` recomputed from its content (``"(cannot canonicalize:
    ...)"`` when its content has no canonical form); a record without usable chain fields has
    ``unchained`` (why) and no hash (its sequence if that was usable). For a line-hashed profile:
    ``hash`` is the digest of the record's line, ``prev_hash`` its prevHash if that is a string,
    and the rest None. ``packed``: the digest's raw bytes, when it was computed (what an agent's
    ring keeps, ``AgentState``: the fast path stores them without parsing the hex again).
    """

    sequence: int | None
    hash: str | None
    prev_hash: str | None
    digest: str | None
    unchained: str | None
    packed: bytes | None = None


def sender_identity(source: dict[str, Any], syslog: dict[str, Any] | None) -> str | None:
    """Who sent an event (its envelope's ``source`` and ``syslog`` objects), the agent of
    line-hashed profiles whose records do not name one: the first TLS SAN, the TLS subject, the
    syslog hostname, or the peer's address."""
    san = source.get("tls_san")
    if isinstance(san, list) and san:
        return str(san[0])
    if source.get("tls_subject"):
        return str(source["tls_subject"])
    if syslog is not None and syslog.get("hostname"):
        return str(syslog["hostname"])
    peer = source.get("peer")
    if isinstance(peer, str) and peer:
        host, _, port = peer.rpartition(":")
        return host.strip("[]") if host and port.isdigit() else peer
    return None


SEED: Final = Profile("seed")
SAFECLAW_JSONL: Final = Profile(
    "safeclaw-jsonl", sequence=None, hash=None, prefix="", genesis="GENESIS"
)
PROFILES: Final[dict[str, Profile]] = {SEED.name: SEED, SAFECLAW_JSONL.name: SAFECLAW_JSONL}


@dataclass(slots=True)
class Gap:
    """Missing sequences ``first..last``; the hashes that must link to them, where known."""

    first: int
    last: int
    before: str | None  # hash of record first-1 (the prevHash record `first` must carry)
    after: str | None  # prevHash of record last+1 (the hash record `last` must have)

    def as_json(self) -> list[Any]:
        return [self.first, self.last, self.before, self.after]


class Verdict:
    """What the verifier found about one record (``feed`` returns an ok record's sequence
    instead; ``as_verdict`` makes an ok ``Verdict`` of that).

    A plain class whose optional attributes default at class level: a verdict sets those it has.
    """

    missing: tuple[int, int] | None = None  # gap: first and last missing sequence
    hash: str | None = None  # the record's (claimed) hash
    expected_hash: str | None = None  # bad_hash: recomputed; fork: the accepted one
    prev_hash: str | None = None
    expected_prev_hash: str | None = None
    detail: str | None = None
    expired: tuple[Gap, ...] = ()  # gaps closed as permanent by this record
    evicted: tuple[Eviction, ...] = ()  # agents forgotten to make room for this record's agent

    __slots__ = ("__dict__", "expected", "sequence", "status")

    def __init__(
        self,
        status: str,
        sequence: int | None = None,
        expected: int | None = None,  # the sequence the agent's chain expected next
    ) -> None:
        self.status = status
        self.sequence = sequence
        self.expected = expected

    @classmethod
    def of(
        cls,
        status: str,
        sequence: int | None = None,
        expected: int | None = None,
        *,
        hash: str | None = None,
        prev_hash: str | None = None,
        detail: str | None = None,
    ) -> Verdict:
        """A verdict with the optional details set (the careful path's constructor)."""
        verdict = cls(status, sequence, expected)
        if hash is not None:
            verdict.hash = hash
        if prev_hash is not None:
            verdict.prev_hash = prev_hash
        if detail is not None:
            verdict.detail = detail
        return verdict

    def __repr__(self) -> str:
        return f"Verdict({self.envelope()!r})"

    @property
    def drop(self) -> bool:
        """Whether the event is an exact duplicate and is not archived again."""
        return self.status == "duplicate"

    @property
    def alert(self) -> bool:
        return self.status in SEVERITY

    @property
    def severity(self) -> str | None:
        return SEVERITY.get(self.status)

    def envelope(self) -> dict[str, Any]:
        """The envelope's ``chain`` object."""
        out: dict[str, Any] = {"status": self.status}
        if self.sequence is not None:
            out["sequence"] = self.sequence
        if self.expected is not None:
            out["expected"] = self.expected
        if self.missing is not None:
            out["missing"] = list(self.missing)
        if self.detail is not None:
            out["detail"] = self.detail
        return out

    def alert_details(self) -> dict[str, Any]:
        """What an alert about this verdict says (beside agent, source and peer)."""
        out: dict[str, Any] = {
            "status": self.status,
            "severity": self.severity,
            "expected": {
                "sequence": self.expected,
                "hash": self.expected_hash,
                "prev_hash": self.expected_prev_hash,
            },
            "received": {"sequence": self.sequence, "hash": self.hash, "prev_hash": self.prev_hash},
        }
        if self.missing is not None:
            out["missing"] = list(self.missing)
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def expired_alert_details(gap: Gap) -> dict[str, Any]:
    """What the alert about a gap closed as permanent says."""
    return {
        "status": "gap_expired",
        "severity": SEVERITY["gap_expired"],
        "missing": [gap.first, gap.last],
        "detail": "too many open gaps: the oldest is closed as permanently missing",
    }


def ok_envelope(sequence: int) -> dict[str, Any]:
    """The ``chain`` object of an ok record (``feed`` returned its sequence)."""
    return {"status": "ok", "sequence": sequence, "expected": sequence}


def as_verdict(result: Verdict | int) -> Verdict:
    """What ``feed`` returned, as a ``Verdict`` (an ok one for a sequence)."""
    return Verdict("ok", result, result) if isinstance(result, int) else result


class FeedFacts(Protocol):
    def __call__(self, agent: str, facts: Facts) -> Verdict | int: ...


#: The largest sequence a ring's array holds (a signed 64-bit slot); a larger one (orjson reads
#: integers up to 2**64 - 1) is kept with its hash in ``AgentState.odd``.
MAX_PACKED_SEQUENCE: Final = 2**63 - 1
#: A ring slot's sequence while it is empty, and while its pair is held in ``AgentState.odd``.
EMPTY_SLOT: Final = -1
ODD_SLOT: Final = -2


@dataclass(frozen=True, slots=True)
class Packing:
    """How the hashes of a profile are kept in an agent's ring: ``prefix`` and the lower-case hex
    of ``width`` bytes (what ``Profile.digest`` makes) are kept as those bytes; any other string
    (a claimed hash of another shape) is kept as it is, apart (``AgentState.odd``)."""

    prefix: str
    width: int

    @classmethod
    def of(cls, profile: Profile) -> Packing:
        return cls(profile.prefix, hashlib.new(profile.algorithm).digest_size)

    def pack(self, value: str) -> bytes | None:
        """The bytes ``value`` unpacks from exactly, or None."""
        prefix = self.prefix
        if len(value) != len(prefix) + 2 * self.width or not value.startswith(prefix):
            return None
        text = value[len(prefix) :]
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return None
        return raw if raw.hex() == text else None  # (fromhex takes upper case and spaces too)


#: The packing of the seed profile (sha256), for states made without a verifier.
SEED_PACKING: Final = Packing.of(SEED)


@dataclass(slots=True)
class AgentState:
    """What the verifier keeps about one agent.

    The ring of the hashes of recently accepted sequences has ``window`` slots, slot ``sequence
    % window`` holding the highest sequence that fell into it: ``sequences[slot]`` (-1 while
    none has), its hash packed at ``digests[slot * width:(slot + 1) * width]`` (``packing``).
    A pair that does not pack (a hash of another shape, or a sequence past 63 bits) is kept in
    ``odd`` under its slot, whose sequence then reads -2. Once a chain is past its first
    ``window`` records, the ring is exactly the last ``window`` sequences, late fills aside.

    A ring of 64 sha256 hashes takes 2.6 KB, in two objects made with the state: nothing is
    allocated per record (see the module docstring).
    """

    last_sequence: int
    last_hash: str
    sequences: array[int]
    digests: bytearray
    # Nothing counts ok records one by one: each moves last_sequence on by exactly one, so their
    # count is last_sequence - ok_base, ok_base being the first sequence plus every move made by
    # another status (a gap, a broken link, a bad hash). The fast path has one field less to set.
    ok_base: int
    packing: Packing = SEED_PACKING
    gaps: list[Gap] = field(default_factory=list)  # ordered by sequence, disjoint
    others: Counter[str] = field(default_factory=Counter)  # counts of every status but ok
    last_alert: dict[str, Any] | None = None
    # last_sequence when the eviction sweep last passed the agent (``Verifier._admit``): if
    # last_sequence has moved since, the agent was active. Nothing on the fast path touches it.
    swept: int = -1
    odd: dict[int, tuple[int, str]] | None = None  # slot: (sequence, hash), see above

    @classmethod
    def empty(
        cls, window: int, packing: Packing = SEED_PACKING, last_sequence: int = 0
    ) -> AgentState:
        """A state with an empty ring (its other fields as given, or zero)."""
        return cls(
            last_sequence,
            "",
            array("q", [EMPTY_SLOT]) * window,
            bytearray(window * packing.width),
            last_sequence,
            packing,
        )

    @classmethod
    def first(
        cls, sequence: int, value: str, window: int, packing: Packing = SEED_PACKING
    ) -> AgentState:
        """The state after an agent's first record (not active since: the sweep's next victim
        once it has passed every older agent)."""
        state = cls.empty(window, packing, sequence)
        state.last_hash = value
        state.swept = sequence
        state.remember(sequence, value)
        return state

    def _held(self, slot: int) -> int:
        """The sequence in ``slot`` (-1: empty)."""
        sequence = self.sequences[slot]
        if sequence == ODD_SLOT:
            assert self.odd is not None
            return self.odd[slot][0]
        return sequence

    def _slot(self, slot: int) -> tuple[int, str]:
        """The sequence in ``slot`` (-1: empty) and its hash ("" while empty)."""
        sequence = self.sequences[slot]
        if sequence == ODD_SLOT:
            assert self.odd is not None
            return self.odd[slot]
        if sequence == EMPTY_SLOT:
            return sequence, ""
        width = self.packing.width
        start = slot * width
        return sequence, self.packing.prefix + self.digests[start : start + width].hex()

    def recent(self, sequence: int) -> str | None:
        """The hash of ``sequence`` if it is among the recent ones."""
        held, value = self._slot(sequence % len(self.sequences))
        return value if held == sequence else None

    def remember(self, sequence: int, value: str) -> None:
        """Put ``sequence`` in its slot, unless that holds a higher one."""
        slot = sequence % len(self.sequences)
        if self._held(slot) > sequence:
            return
        odd = self.odd
        raw = self.packing.pack(value) if sequence <= MAX_PACKED_SEQUENCE else None
        if raw is None:
            if odd is None:
                odd = self.odd = {}
            odd[slot] = (sequence, value)
            self.sequences[slot] = ODD_SLOT
            return
        self.sequences[slot] = sequence
        width = self.packing.width
        self.digests[slot * width : (slot + 1) * width] = raw
        if odd is not None:
            odd.pop(slot, None)

    def recent_sequence_of(self, value: str) -> int | None:
        """The sequence whose hash is ``value``, if it is among the recent ones."""
        raw = self.packing.pack(value)
        width = self.packing.width
        digests = self.digests
        for slot, sequence in enumerate(self.sequences):
            if sequence == ODD_SLOT:
                assert self.odd is not None
                held, held_value = self.odd[slot]
                if held_value == value:
                    return held
            elif (
                sequence >= 0
                and raw is not None
                and digests[slot * width : (slot + 1) * width] == raw
            ):
                return sequence
        return None

    def recent_pairs(self) -> list[list[Any]]:
        """The (sequence, hash) pairs the ring holds, in order."""
        pairs = (self._slot(slot) for slot in range(len(self.sequences)))
        return sorted([sequence, value] for sequence, value in pairs if sequence >= 0)

    @property
    def ok(self) -> int:
        """How many ok records the agent sent."""
        return self.last_sequence - self.ok_base

    @property
    def counts(self) -> dict[str, int]:
        """Records seen per status."""
        ok = self.ok
        return {"ok": ok, **self.others} if ok else dict(self.others)

    @property
    def worst(self) -> str:
        """The worst status the agent's chain had (``BY_SEVERITY``); ``ok`` if none of those."""
        others = self.others
        if others:
            for status in BY_SEVERITY:
                if status in others:
                    return status
        return "ok"

    def status(self) -> dict[str, Any]:
        """What ``Verifier.status`` tells of the agent."""
        return {
            "last_sequence": self.last_sequence,
            "open_gaps": [[gap.first, gap.last] for gap in self.gaps],
            "counts": self.counts,
            "last_alert": self.last_alert,
        }

    @classmethod
    def from_v1(cls, data: dict[str, Any], window: int, packing: Packing) -> AgentState:
        """An agent's state from a version 1 snapshot (an object per agent, its recent hashes
        as sorted (sequence, hash) pairs, no sweep mark: every agent counts as idle)."""
        last_sequence = int(data["last_sequence"])
        state = cls.empty(window, packing, last_sequence)
        state.last_hash = str(data["last_hash"])
        state.ok_base = last_sequence - int(data["counts"].get("ok", 0))
        state.gaps = [Gap(int(g[0]), int(g[1]), g[2], g[3]) for g in data["gaps"]]
        state.others = Counter({str(k): int(v) for k, v in data["counts"].items() if k != "ok"})
        state.last_alert = data.get("last_alert")
        state.swept = last_sequence
        for sequence, value in data["recent"]:
            state.remember(int(sequence), str(value))
        return state


@dataclass(frozen=True, slots=True)
class Eviction:
    """An agent forgotten to make room for another (``max_agents``), with all that was known of
    it: enough for an auditor to link its next record, which will be ``adopted``, to its chain."""

    agent: str
    state: AgentState
    admitted: str  # the new agent whose first record needed the room
    max_agents: int

    def alert_details(self) -> dict[str, Any]:
        """What the ``agent_evicted`` alert says (beside source and peer; its agent is the
        evicted one)."""
        state = self.state
        return {
            "status": "agent_evicted",
            "severity": SEVERITY["agent_evicted"],
            "last_sequence": state.last_sequence,
            "last_hash": state.last_hash,
            "open_gaps": [
                {"missing": [gap.first, gap.last], "before": gap.before, "after": gap.after}
                for gap in state.gaps
            ],
            "counts": state.counts,
            "last_alert": state.last_alert,
            "admitted": self.admitted,
            "max_agents": self.max_agents,
            "detail": "max_agents agents were tracked: the least recently active one is "
            "forgotten, and its next record will be adopted",
        }


class Troubled:
    """The agents whose chain showed a problem (a verdict of severity ``TROUBLE_SEVERITIES``:
    fork, broken link, bad hash, gap, regressed, gap given up), so that they can be listed without
    going over every agent: one ordered set per severity, an agent in the worst it had, the most
    recently troubled last. Kept off the fast path (only verdicts with an alert note an agent);
    an evicted agent is forgotten."""

    __slots__ = ("by_severity",)

    def __init__(self) -> None:
        self.by_severity: dict[str, dict[str, None]] = {s: {} for s in TROUBLE_SEVERITIES}

    def note(self, agent: str, severity: str | None) -> None:
        """``agent`` had a verdict of ``severity`` just now (anything but a problem is ignored)."""
        if severity not in self.by_severity:
            return
        for worse in TROUBLE_SEVERITIES:
            if worse == severity:
                break
            if agent in self.by_severity[worse]:
                severity = worse  # it stays in the worst it had, as the most recent there
                break
        for other, agents in self.by_severity.items():
            if other != severity:
                agents.pop(agent, None)
        agents = self.by_severity[severity]
        agents.pop(agent, None)
        agents[agent] = None

    def forget(self, agent: str) -> None:
        for agents in self.by_severity.values():
            agents.pop(agent, None)

    def __len__(self) -> int:
        return sum(map(len, self.by_severity.values()))

    def __contains__(self, agent: object) -> bool:
        return any(agent in agents for agents in self.by_severity.values())

    def worst_first(self) -> Iterator[str]:
        """The agents, the worst severity first, the most recently troubled first within it
        (lazily: taking the first n costs O(n))."""
        for severity in TROUBLE_SEVERITIES:
            yield from reversed(self.by_severity[severity])


#: Agents a checkpoint's columns are made and encoded for at a time (``snapshot_parts``).
SNAPSHOT_CHUNK: Final = 1024

#: How each column of a snapshot's ``agents`` is made from the agents' ids and states (in
#: ``SNAPSHOT_COLUMNS`` order; see ``Verifier.snapshot``).
_COLUMN_OF: Final[dict[str, Callable[[list[str], list[AgentState]], list[Any]]]] = {
    "id": lambda ids, states: ids,
    "last_sequence": lambda ids, states: [state.last_sequence for state in states],
    "last_hash": lambda ids, states: [state.last_hash for state in states],
    "ok_base": lambda ids, states: [state.ok_base for state in states],
    "swept": lambda ids, states: [state.swept for state in states],
    # Gaps are few: only an agent that has some costs a list here.
    "gaps": lambda ids, states: [
        state.gaps and [gap.as_json() for gap in state.gaps] for state in states
    ],
    "others": lambda ids, states: [state.others for state in states],
    "last_alert": lambda ids, states: [state.last_alert for state in states],
    "sequences": lambda ids, states: [state.sequences.tolist() for state in states],
    # (less the trailing zero bytes: the empty slots of an agent with few records)
    "digests": lambda ids, states: [state.digests.rstrip(b"\0").hex() for state in states],
    "odd": lambda ids, states: [
        [[slot, *pair] for slot, pair in state.odd.items()] if state.odd else None
        for state in states
    ],
}
assert tuple(_COLUMN_OF) == SNAPSHOT_COLUMNS


class Verifier:
    """Verifies every agent's chain, one record at a time, in arrival order."""

    def __init__(
        self,
        profile: Profile = SEED,
        *,
        window: int = 64,
        max_gaps: int = 64,
        max_agents: int = 100_000,
    ) -> None:
        if window < 1 or max_gaps < 1 or max_agents < 1:
            raise ValueError("window, max_gaps and max_agents must be at least 1")
        self.profile = profile
        self.window = window
        self.packing = Packing.of(profile)
        self.max_gaps = max_gaps
        self.max_agents = max_agents
        self.agents: dict[str, AgentState] = {}
        # The eviction sweep (``_admit``): every tracked agent once, in a circle; the sweep
        # looks at ``_clock[_hand]`` next. (None marks a slot emptied while ``_admit`` runs.)
        self._clock: list[str | None] = []
        self._hand = 0
        self._others: Counter[str] = Counter()  # every status but ok
        # ok records beyond those of the agents (a restored snapshot's; ok counts are per agent).
        self._ok_elsewhere = 0
        #: The agents whose chain showed a problem, worst first (``Troubled``).
        self.troubled = Troubled()
        #: ``feed_facts(agent, facts) -> Verdict | int``: check one record of ``agent`` by its
        #: ``Facts`` (``Profile.facts``); the record's sequence if it is ok, else a ``Verdict``.
        self.feed_facts = self._make_feed_facts()

    def __deepcopy__(self, memo: dict[int, Any]) -> Verifier:
        # ``feed_facts`` is a closure over this verifier's own state: a copy needs a closure of
        # its own. (Through JSON: a snapshot shares the live state.)
        return Verifier.restore(
            orjson.loads(orjson.dumps(self.snapshot())),
            self.profile,
            window=self.window,
            max_gaps=self.max_gaps,
            max_agents=self.max_agents,
        )

    @property
    def counts(self) -> dict[str, int]:
        """Records seen per status, over all agents (those evicted included), ``gap_expired``
        (gaps given up) and ``agents_evicted``."""
        states = self.agents.values()
        ok = (
            self._ok_elsewhere
            + sum([state.last_sequence for state in states])
            - sum([state.ok_base for state in states])
        )
        return {"ok": ok, **self._others} if ok else dict(self._others)

    # --- feeding -------------------------------------------------------------------------------

    def feed(self, agent: str, record: dict[str, Any], line: bytes = b"") -> Verdict | int:
        """Check one record of ``agent`` (``line``: its exact bytes, for line hashing): its
        ``Facts`` (``Profile.facts``), then ``feed_facts``. The record's sequence if it is ok,
        else a ``Verdict``. ``record`` is used as is (its hash field may move to the end of it)."""
        return self.feed_facts(agent, self.profile.facts(record, line))

    def _make_feed_facts(self) -> FeedFacts:
        """``feed_facts``: a closure over everything its fast path needs (locals, not
        attributes)."""
        careful = self._careful
        if self.profile.line_hashed:
            return careful
        agent_state = self.agents.get
        window = self.window
        width = self.packing.width

        def feed_facts(agent: str, facts: Facts) -> Verdict | int:
            # The common case: the next record of a known agent, linking to the last one, its
            # hash recomputed. (An unchained record has no prev_hash, and a last_hash is a
            # string: it never passes.)
            state = agent_state(agent)
            sequence, claimed, prev, digest, _, packed = facts
            if (
                state is not None
                and sequence == state.last_sequence + 1
                and prev == state.last_hash
                and digest == claimed
                and packed is not None
            ):
                # (The tests above make both ints and strings: no record without them passes.)
                # AgentState.remember, inlined: sequence is the highest, and the hash is the
                # digest, whose bytes are packed.
                slot = sequence % window
                try:
                    state.sequences[slot] = sequence
                except OverflowError:  # past 63 bits: kept apart
                    return careful(agent, facts)
                state.last_sequence = sequence
                state.last_hash = claimed  # type: ignore[assignment]
                start = slot * width
                state.digests[start : start + width] = packed
                if state.odd is not None:
                    state.odd.pop(slot, None)
                return sequence  # counted as ok: last_sequence moved on by one
            return careful(agent, facts)  # anything else

        return feed_facts

    def _feed_careful(self, agent: str, record: dict[str, Any], line: bytes = b"") -> Verdict | int:
        """``feed`` without the fast path (``_careful``)."""
        return self._careful(agent, self.profile.facts(record, line))

    def _careful(self, agent: str, facts: Facts) -> Verdict | int:
        """``feed_facts`` for every case (the fast path covers the commonest one)."""
        state = self.agents.get(agent)
        last = state.last_sequence if state is not None else None
        if self.profile.line_hashed:
            verdict = self._feed_line(agent, facts)
        else:
            verdict = self._feed_fields(agent, facts)
        if verdict.status == "ok":  # counted: it moved the chain on by one
            assert verdict.sequence is not None  # an ok record has one, and it was expected
            return verdict.sequence
        self._others[verdict.status] += 1
        state = self.agents.get(agent)
        if state is not None:
            state.others[verdict.status] += 1
            if last is not None:  # a move that was not an ok record's
                state.ok_base += state.last_sequence - last
            if verdict.alert:
                state.last_alert = {"status": verdict.status, "sequence": verdict.sequence}
                self.troubled.note(agent, verdict.severity)
            for gap in verdict.expired:
                state.others["gap_expired"] += 1
                self._others["gap_expired"] += 1
                state.last_alert = {"status": "gap_expired", "missing": [gap.first, gap.last]}
                self.troubled.note(agent, SEVERITY["gap_expired"])
        return verdict

    def _feed_fields(self, agent: str, facts: Facts) -> Verdict:
        sequence, claimed, prev, digest, unchained, _ = facts
        if unchained is not None:
            return Verdict.of("unchained", sequence, detail=unchained)
        assert sequence is not None  # the facts of a chained record have both
        assert claimed is not None
        verdict = self._place(agent, sequence, claimed, prev)
        if digest != claimed:
            verdict.status = "bad_hash"
            verdict.expected_hash = digest
            verdict.detail = None
        return verdict

    def _place(self, agent: str, sequence: int, claimed: str, prev: str | None) -> Verdict:
        """The verdict by position and links, with the state updated (hash not yet checked)."""
        state = self.agents.get(agent)
        if state is None:
            first = sequence <= 1 or prev in (None, "", self.profile.genesis)
            state = AgentState.first(sequence, claimed, self.window, self.packing)
            evicted = self._admit(agent, state)
            verdict = Verdict.of(
                "genesis" if first else "adopted", sequence, None, hash=claimed, prev_hash=prev
            )
            if evicted:
                verdict.evicted = evicted
            return verdict
        last = state.last_sequence
        verdict = Verdict.of("ok", sequence, last + 1, hash=claimed, prev_hash=prev)
        if sequence == last + 1:
            if prev != state.last_hash:
                verdict.status = "broken_link"
                verdict.expected_prev_hash = state.last_hash
            self._advance(state, sequence, claimed)
        elif sequence > last + 1:
            verdict.status = "gap"
            verdict.missing = (last + 1, sequence - 1)
            verdict.expired = self._open_gap(
                state, Gap(last + 1, sequence - 1, state.last_hash, prev)
            )
            self._advance(state, sequence, claimed)
        elif (index := _gap_index(state.gaps, sequence)) is not None:
            gap = state.gaps[index]
            links = True
            if sequence == gap.first and gap.before is not None and prev != gap.before:
                links = False
                verdict.expected_prev_hash = gap.before
            if sequence == gap.last and gap.after is not None and claimed != gap.after:
                links = False
                verdict.expected_hash = gap.after
            verdict.status = "late" if links else "broken_link"
            parts = []
            if gap.first < sequence:
                parts.append(Gap(gap.first, sequence - 1, gap.before, prev))
            if sequence < gap.last:
                parts.append(Gap(sequence + 1, gap.last, claimed, gap.after))
            state.gaps[index : index + 1] = parts
            state.remember(sequence, claimed)
        else:
            known = state.recent(sequence)
            if known is None:
                verdict.status = "regressed"
            elif known == claimed:
                verdict.status = "duplicate"
            else:
                verdict.status = "fork"
                verdict.expected_hash = known
        return verdict

    def _feed_line(self, agent: str, facts: Facts) -> Verdict:
        profile = self.profile
        own, prev = facts.hash, facts.prev_hash
        assert own is not None  # a line-hashed record's hash is its line's
        state = self.agents.get(agent)
        if state is None:
            evicted = self._admit(agent, AgentState.first(1, own, self.window, self.packing))
            if not isinstance(prev, str) or not prev:
                verdict = Verdict.of("unchained", 1, hash=own, detail=f"no {profile.prev_hash!r}")
            else:
                status = "genesis" if prev == profile.genesis else "adopted"
                verdict = Verdict.of(status, 1, hash=own, prev_hash=prev)
            if evicted:
                verdict.evicted = evicted
            return verdict
        sequence = state.last_sequence + 1
        verdict = Verdict.of(
            "ok", sequence, sequence, hash=own, prev_hash=prev if isinstance(prev, str) else None
        )
        if not isinstance(prev, str) or not prev:
            verdict.status = "unchained"
            verdict.detail = f"no {profile.prev_hash!r}"
        elif prev != state.last_hash:
            seen = state.recent_sequence_of(own)
            if seen is not None:
                verdict.status = "duplicate"
                verdict.sequence = seen
                return verdict
            verdict.expected_prev_hash = state.last_hash
            if state.recent_sequence_of(prev) is not None:
                verdict.status = "fork"
                verdict.detail = "a second successor of an earlier record"
            else:
                verdict.status = "broken_link"
                if prev == profile.genesis:
                    verdict.detail = "the chain restarted at the genesis marker"
        self._advance(state, sequence, own)
        return verdict

    # --- state ---------------------------------------------------------------------------------

    def _advance(self, state: AgentState, sequence: int, value: str) -> None:
        state.last_sequence = sequence
        state.last_hash = value
        state.remember(sequence, value)

    def _open_gap(self, state: AgentState, gap: Gap) -> tuple[Gap, ...]:
        """Record a new gap (always the highest); close the oldest ones beyond ``max_gaps``."""
        state.gaps.append(gap)
        expired = []
        while len(state.gaps) > self.max_gaps:
            expired.append(state.gaps.pop(0))
        return tuple(expired)

    def _admit(self, agent: str, state: AgentState) -> tuple[Eviction, ...]:
        """Track a new agent; if ``max_agents`` are tracked, forget the least recently active one
        first (more than one only if a snapshot held more agents than the bound); the agents
        forgotten.

        An approximate LRU, the CLOCK algorithm: the agents stand in a circle (``_clock``) in
        the order they came, and a hand sweeps it. The agent under the hand was active if its
        ``last_sequence`` moved since the hand last passed it (``swept``): the hand marks it and
        goes on; the first agent that did not move is evicted and the new one takes its place,
        just behind the hand (the last the hand reaches again). Each agent the hand passes over
        has sent records since its last pass, so a sweep costs O(1) per record on average;
        verifying a record costs nothing more."""
        agents = self.agents
        clock = self._clock
        evicted: list[Eviction] = []
        hand = self._hand
        emptied = hand
        while len(agents) >= self.max_agents:
            name = clock[hand]
            if name is not None:
                held = agents[name]
                if held.last_sequence != held.swept:
                    held.swept = held.last_sequence
                else:
                    del agents[name]
                    self.troubled.forget(name)
                    clock[hand] = None
                    emptied = hand
                    self._others["agents_evicted"] += 1
                    self._ok_elsewhere += held.ok  # its records stay in the totals
                    evicted.append(Eviction(name, held, agent, self.max_agents))
            hand = (hand + 1) % len(clock)
        agents[agent] = state
        if not evicted:  # not full, so the hand has never moved: the end is just behind it
            clock.append(agent)
        elif len(evicted) == 1:
            clock[emptied] = agent
            self._hand = hand
        else:  # the surplus of a larger snapshot: close the circle up, from the hand on
            self._clock = [name for name in clock[hand:] + clock[:hand] if name is not None]
            self._clock.append(agent)
            self._hand = 0
        return tuple(evicted)

    def snapshot(self) -> dict[str, Any]:
        """The whole state, for ``orjson.dumps`` (see ``restore``); version 3::

            {"v": 3, "profile": "seed", "counts": {"ok": 812, "gap": 1, ...},
             "agents": {"id": [...], "last_sequence": [...], "last_hash": [...], "ok_base": [...],
                        "swept": [...], "gaps": [...], "others": [...], "last_alert": [...],
                        "sequences": [[...], ...], "digests": ["...", ...], "odd": [...]}}

        ``agents`` holds one list per ``AgentState`` field (``SNAPSHOT_COLUMNS``), the agents in
        sweep order; ``gaps`` per agent a list of ``[first, last, before, after]`` (``Gap``),
        ``others`` per agent the counts of every status but ok. The rings as they are:
        ``sequences`` the ``window`` slots' sequences (-1 empty, -2 held in ``odd``),
        ``digests`` their packed hashes in hex, less the trailing zero bytes, ``odd`` None or
        the pairs held apart, as ``[slot, sequence, hash]``.

        Built for speed: the checkpoint takes it in a worker thread, and Python code holds the
        GIL, so a few C-level passes over the states make it (no object per slot) and orjson
        writes the rest in C. It shares the live state (counters, gaps): serialize it before
        the next record is fed."""
        ids, states = self._in_sweep_order()
        return {
            "v": SNAPSHOT_VERSION,
            "profile": self.profile.name,
            "counts": self._counts(states),
            "agents": {name: column(ids, states) for name, column in _COLUMN_OF.items()},
        }

    def snapshot_parts(self, chunk: int = SNAPSHOT_CHUNK) -> Iterator[bytes]:
        """``orjson.dumps(self.snapshot())`` in pieces, the same bytes (what the checkpoint
        writes as they come): each column is made and encoded ``chunk`` agents at a time, so that
        neither the columns of every agent (the digests alone up to 128 hex characters a slot)
        nor their whole encoding is ever held at once beside them. As ``snapshot``, it shares
        the live state: write every piece before the next record is fed."""
        ids, states = self._in_sweep_order()
        counts = orjson.dumps(self._counts(states))
        yield b'{"v":%d,"profile":%s,"counts":%s,"agents":{' % (
            SNAPSHOT_VERSION,
            orjson.dumps(self.profile.name),
            counts,
        )
        for number, (name, column) in enumerate(_COLUMN_OF.items()):
            yield b'%s"%s":[' % (b"," if number else b"", name.encode())
            for start in range(0, len(states), chunk):
                encoded = orjson.dumps(
                    column(ids[start : start + chunk], states[start : start + chunk])
                )
                if start:
                    yield b","
                yield encoded[1:-1]
            yield b"]"
        yield b"}}"

    def _in_sweep_order(self) -> tuple[list[str], list[AgentState]]:
        """The agents' ids and states in sweep order (a snapshot's order)."""
        # (No slot of the circle is empty but while ``_admit`` runs.)
        ids = cast(list[str], self._clock[self._hand :] + self._clock[: self._hand])
        return ids, list(map(self.agents.__getitem__, ids))

    def _counts(self, states: list[AgentState]) -> dict[str, int]:
        """A snapshot's ``counts``: the ok records, counted from the states, and the others."""
        ok = (
            self._ok_elsewhere
            + sum([state.last_sequence for state in states])
            - sum([state.ok_base for state in states])
        )
        return {"ok": ok, **self._others} if ok else dict(self._others)

    @classmethod
    def restore(
        cls,
        data: dict[str, Any],
        profile: Profile = SEED,
        *,
        window: int = 64,
        max_gaps: int = 64,
        max_agents: int = 100_000,
    ) -> Verifier:
        """A verifier in the state a snapshot (parsed from its JSON) describes: version 2, or
        version 1 (written before). The state takes over the lists in ``data``. Raises
        ``ValueError`` if ``data`` is not a snapshot of a known version, was taken with another
        profile, or is damaged. More agents than ``max_agents`` are all kept; the surplus is
        evicted, with alerts, when the next new agent comes."""
        if not isinstance(data, dict) or data.get("v") not in SNAPSHOT_VERSIONS:
            raise ValueError(
                f"not a chain snapshot of version {' or '.join(map(str, SNAPSHOT_VERSIONS))}"
            )
        if data.get("profile") != profile.name:
            raise ValueError(
                f"the snapshot was taken with profile {data.get('profile')!r}, not {profile.name!r}"
            )
        verifier = cls(profile, window=window, max_gaps=max_gaps, max_agents=max_agents)
        try:
            counts = {str(k): int(v) for k, v in data["counts"].items()}
            ok = counts.pop("ok", 0)
            verifier._others.update(counts)
            if data["v"] == 1:
                for agent, state in data["agents"].items():
                    verifier.agents[str(agent)] = AgentState.from_v1(
                        state, window, verifier.packing
                    )
            else:
                verifier._restore_agents(data["agents"], data["v"])
            verifier._ok_elsewhere = ok - sum(state.ok for state in verifier.agents.values())
            verifier._clock = list(verifier.agents)  # the sweep's order, from the hand on
            for agent, state in verifier.agents.items():  # (troubled in the sweep's order)
                if state.others:
                    for status in BY_SEVERITY:
                        if status in state.others:
                            verifier.troubled.note(agent, SEVERITY[status])
                            break
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"damaged chain snapshot: {exc!r}") from exc
        return verifier

    def _restore_agents(self, columns: dict[str, list[Any]], version: int) -> None:
        """The agents of a version 2 or 3 snapshot (``snapshot``), checked value by value."""
        window = self.window
        packing = self.packing
        agents = self.agents
        ring_columns = ("ring",) if version == 2 else SNAPSHOT_COLUMNS[8:]
        for (
            agent,
            last_sequence,
            last_hash,
            ok_base,
            swept,
            gaps,
            others,
            last_alert,
            *ring,
        ) in zip(*(columns[name] for name in _STATE_COLUMNS + ring_columns), strict=True):
            if not (
                type(agent) is str
                and type(last_sequence) is int
                and type(last_hash) is str
                and type(ok_base) is int
                and type(swept) is int
                and type(gaps) is list
                and type(others) is dict
                and (last_alert is None or type(last_alert) is dict)
            ):
                raise ValueError(f"agent {agent!r}: a value of the wrong type")
            if not set(map(type, others.values())) <= _COUNT_TYPES:
                raise ValueError(f"agent {agent!r}: a count of the wrong type")
            counts: Counter[str] = Counter()
            dict.update(counts, others)  # (what Counter(others) does, 2 us faster per agent)
            sequences, digests, odd = _ring_of(agent, ring, packing, window)
            agents[agent] = AgentState(
                last_sequence,
                last_hash,
                sequences,
                digests,
                ok_base,
                packing,
                [_gap_from(gap) for gap in gaps],
                counts,
                last_alert,
                swept,
                odd,
            )
        if len(agents) != len(columns["id"]):
            raise ValueError("an agent is listed twice")

    def status(
        self, agent: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Per agent (or one agent): last sequence, open gaps, counts by status, last alert;
        agents in name order.

        A page of them with ``limit``: at most that many agents, the first after the name
        ``after`` (None: from the start); the status then also says ``total_agents`` and
        ``next``, the ``after`` of the next page (None: this was the last)."""
        if agent is not None:
            names = [agent] if agent in self.agents else []
        elif limit is None:
            names = sorted(self.agents)
        else:  # the page and one more, without sorting every name (a third of the time)
            names = heapq.nsmallest(
                limit + 1, self.agents if after is None else filter(after.__lt__, self.agents)
            )
        if after is not None and limit is None:
            names = names[bisect_right(names, after) :]
        page = names[:limit] if limit is not None else names
        status = {
            "profile": self.profile.name,
            "max_agents": self.max_agents,
            "counts": self.counts,
            "agents": {name: self.agents[name].status() for name in page},
        }
        if limit is not None:
            status["total_agents"] = len(self.agents) if agent is None else len(names)
            status["next"] = page[-1] if len(names) > len(page) else None
        return status


#: The type of a count (``Verifier._restore_agents``).
_COUNT_TYPES: Final = frozenset({int})


def _gap_from(data: list[Any]) -> Gap:
    """A gap from a version 2 snapshot (``[first, last, before, after]``)."""
    first, last, before, after = data
    gap = Gap(first, last, before, after)
    if not (
        type(gap.first) is int
        and type(gap.last) is int
        and (gap.before is None or type(gap.before) is str)
        and (gap.after is None or type(gap.after) is str)
    ):
        raise ValueError(f"a gap of the wrong type: {data!r}")
    return gap


def _ring_of(
    agent: str, columns: list[Any], packing: Packing, window: int
) -> tuple[array[int], bytearray, dict[int, tuple[int, str]] | None]:
    """An agent's ring from a snapshot's, in ``window`` slots: version 2's list of pairs
    (``[ring]``: sequence, hash, sequence, hash, ...; -1 and "" while empty) or version 3's
    packed columns (``[sequences, digests, odd]``, see ``Verifier.snapshot``). Taken as it is
    when it has that many slots, else (version 2, or another window) slot by slot, keeping per
    slot the highest sequence. ValueError if it is damaged."""
    if len(columns) == 1:
        (ring,) = columns
        if type(ring) is not list or len(ring) % 2:
            raise ValueError(f"agent {agent!r}: a ring of the wrong shape")
        pairs: list[Any] = list(zip(ring[::2], ring[1::2], strict=True))
    else:
        sequences, digests, odd = columns
        if not (
            type(sequences) is list and type(digests) is str and (odd is None or type(odd) is list)
        ):
            raise ValueError(f"agent {agent!r}: a ring of the wrong type")
        try:
            held = array("q", sequences)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"agent {agent!r}: a ring's sequence of the wrong type") from exc
        raw = bytearray.fromhex(digests)  # (ValueError if it is not hex)
        size = len(held) * packing.width
        # (min and count over the list: over the array, each slot would become a number first)
        if len(raw) > size or (sequences and min(sequences) < ODD_SLOT):
            raise ValueError(f"agent {agent!r}: a ring of the wrong shape")
        raw.extend(bytes(size - len(raw)))  # (the trailing zero bytes the snapshot left out)
        kept: dict[int, tuple[int, str]] = {}
        for item in odd or ():
            if not (type(item) is list and len(item) == 3):
                raise ValueError(f"agent {agent!r}: a ring's pair of the wrong shape")
            slot, sequence, value = item
            if not (
                type(slot) is int
                and 0 <= slot < len(held)
                and held[slot] == ODD_SLOT
                and type(sequence) is int
                and sequence >= 0
                and type(value) is str
            ):
                raise ValueError(f"agent {agent!r}: a ring's pair of the wrong shape")
            kept[slot] = (sequence, value)
        if len(kept) != sequences.count(ODD_SLOT):
            raise ValueError(f"agent {agent!r}: a ring's slot held apart without its pair")
        if len(held) == window:
            return held, raw, kept or None
        pairs = AgentState(0, "", held, raw, 0, packing, odd=kept or None).recent_pairs()
    fresh = AgentState.empty(window, packing)
    for sequence, value in pairs:
        if type(sequence) is not int or type(value) is not str:
            raise ValueError(f"agent {agent!r}: a ring's pair of the wrong type")
        if sequence >= 0:
            fresh.remember(sequence, value)
    return fresh.sequences, fresh.digests, fresh.odd


def _gap_index(gaps: list[Gap], sequence: int) -> int | None:
    """The index of the open gap holding ``sequence``, if any (gaps are few: a linear scan)."""
    for index, gap in enumerate(gaps):
        if gap.first <= sequence <= gap.last:
            return index
    return None
