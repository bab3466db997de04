"""The chain verifier: every status with a planted fault, random single faults, snapshots."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chain import (
    SAFECLAW_JSONL,
    SEED,
    AgentState,
    Profile,
    Verdict,
    Verifier,
    as_verdict,
    ok_envelope,
)
from tests.chains import AGENT, chain, safeclaw_lines, seed_hash


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its hash recomputed (a forger's edit that keeps the record valid)."""
    record = dict(record)
    record["hash"] = seed_hash(record)
    return record


def verify(verifier: Verifier, agent: str, record: dict[str, Any], line: bytes = b"") -> Verdict:
    """``verifier.feed``, its result as a ``Verdict`` (``feed`` returns an ok record's sequence)."""
    return as_verdict(verifier.feed(agent, record, line))


def statuses(verifier: Verifier, records: list[dict[str, Any]], agent: str = AGENT) -> list[str]:
    """Feed fresh copies of ``records``; the status of each."""
    return [verify(verifier, agent, copy.deepcopy(record)).status for record in records]


def test_an_intact_chain_is_genesis_then_ok() -> None:
    """A chain delivered whole and in order gives genesis then ok, and no alert."""
    verifier = Verifier()
    verdicts = [verify(verifier, AGENT, copy.deepcopy(r)) for r in chain(20)]
    assert [v.status for v in verdicts] == ["genesis"] + ["ok"] * 19
    assert not any(v.alert for v in verdicts)
    assert verdicts[5].envelope() == {"status": "ok", "sequence": 6, "expected": 6}


def test_feed_returns_an_ok_records_sequence_and_a_verdict_for_anything_else() -> None:
    """``feed`` gives an ok record's sequence (an int), whose envelope ``ok_envelope`` makes; any
    other status comes as a ``Verdict``, and an ok never does."""
    records = chain(4)
    verifier = Verifier()
    assert isinstance(verifier.feed(AGENT, copy.deepcopy(records[0])), Verdict)  # genesis
    assert verifier.feed(AGENT, copy.deepcopy(records[1])) == 2
    assert (
        ok_envelope(2) == as_verdict(2).envelope() == {"status": "ok", "sequence": 2, "expected": 2}
    )
    assert isinstance(verifier.feed(AGENT, copy.deepcopy(records[3])), Verdict)  # gap
    lines = safeclaw_lines(2)
    safeclaw = Verifier(SAFECLAW_JSONL)  # no fast path: every record goes the careful way
    assert [safeclaw.feed(AGENT, orjson.loads(line), line) for line in lines][1] == 2


def test_a_chain_first_seen_mid_way_is_adopted_with_a_low_alert() -> None:
    """The first record of an agent at sequence > 1 with a real prevHash is adopted (low alert)."""
    records = chain(10)
    verifier = Verifier()
    assert statuses(verifier, records[4:]) == ["adopted"] + ["ok"] * 5
    assert verify(verifier, AGENT, copy.deepcopy(records[4])).status == "duplicate"
    verdict = verify(Verifier(), AGENT, copy.deepcopy(records[4]))
    assert (verdict.alert, verdict.severity) == (True, "low")


def test_a_dropped_record_is_a_gap_and_its_late_arrival_closes_it() -> None:
    """Records 4 and 5 missing give a gap with missing [4, 5] at record 6; each late fill is late."""
    records = chain(8)
    verifier = Verifier()
    assert statuses(verifier, records[:3]) == ["genesis", "ok", "ok"]
    gap = verify(verifier, AGENT, copy.deepcopy(records[5]))
    assert (gap.status, gap.missing, gap.expected, gap.severity) == ("gap", (4, 5), 4, "medium")
    assert gap.envelope() == {"status": "gap", "sequence": 6, "expected": 4, "missing": [4, 5]}
    assert verifier.status(AGENT)["agents"][AGENT]["open_gaps"] == [[4, 5]]
    assert statuses(verifier, [records[4], records[6], records[3]]) == ["late", "ok", "late"]
    assert verifier.status()["agents"][AGENT]["open_gaps"] == []


def test_a_late_record_that_does_not_fit_its_gap_is_a_broken_link() -> None:
    """A record filling a gap but not linking to the known neighbours is broken_link, critical."""
    records = chain(6)
    verifier = Verifier()
    statuses(verifier, records[:2] + records[3:])
    forged = rehash({**records[2], "effect": "forged"})
    verdict = verify(verifier, AGENT, forged)
    assert (verdict.status, verdict.severity) == ("broken_link", "critical")
    assert verdict.expected_hash == records[3]["prevHash"]


def test_an_exact_resend_is_a_duplicate_to_drop() -> None:
    """A record already accepted, sent again unchanged, is a duplicate: dropped, no alert."""
    records = chain(5)
    verifier = Verifier()
    statuses(verifier, records)
    verdict = verify(verifier, AGENT, copy.deepcopy(records[2]))
    assert (verdict.status, verdict.drop, verdict.alert) == ("duplicate", True, False)
    assert statuses(verifier, chain(2, first=6, prev=records[-1]["hash"])) == ["ok", "ok"]


def test_another_valid_record_with_an_accepted_sequence_is_a_fork() -> None:
    """A validly hashed record reusing an accepted sequence with another hash is a fork."""
    records = chain(5)
    verifier = Verifier()
    statuses(verifier, records)
    verdict = verify(verifier, AGENT, rehash({**records[2], "effect": "other"}))
    assert (verdict.status, verdict.severity, verdict.drop) == ("fork", "critical", False)
    assert verdict.expected_hash == records[2]["hash"]


def test_a_wrong_prev_hash_is_a_broken_link() -> None:
    """A next record whose prevHash is not the last record's hash is a broken link."""
    records = chain(4)
    verifier = Verifier()
    statuses(verifier, records[:3])
    verdict = verify(verifier, AGENT, rehash({**records[3], "prevHash": "sha256:" + "0" * 64}))
    assert verdict.status == "broken_link"
    assert verdict.expected_prev_hash == records[2]["hash"]


def test_an_edited_record_is_a_bad_hash_and_its_successor_still_links() -> None:
    """A field edited without re-hashing is bad_hash at that record; the next one is ok."""
    records = chain(5)
    verifier = Verifier()
    edited = {**records[2], "effect": "tampered"}
    result = statuses(verifier, [records[0], records[1], edited, records[3], records[4]])
    assert result == ["genesis", "ok", "bad_hash", "ok", "ok"]
    verdict = verify(Verifier(), AGENT, dict(edited))
    assert verdict.expected_hash == seed_hash(edited) != verdict.hash


def test_an_old_sequence_beyond_the_window_is_regressed() -> None:
    """A sequence below the last that is neither in a gap nor remembered is regressed."""
    records = chain(12)
    verifier = Verifier(window=4)
    statuses(verifier, records)
    verdict = verify(verifier, AGENT, copy.deepcopy(records[1]))
    assert (verdict.status, verdict.severity) == ("regressed", "medium")
    assert verify(verifier, AGENT, copy.deepcopy(records[10])).status == "duplicate"


def test_records_without_chain_fields_are_unchained_and_counted() -> None:
    """Missing or mistyped chain fields make a record unchained: no alert, counted."""
    verifier = Verifier()
    for record in (
        {"agentId": AGENT},
        {"agentId": AGENT, "sequence": "7", "hash": "x"},
        {"agentId": AGENT, "sequence": True, "hash": "x"},
        {"agentId": AGENT, "sequence": 3},
        {"agentId": AGENT, "sequence": 3, "hash": "x", "prevHash": 5},
    ):
        verdict = verify(verifier, AGENT, record)
        assert (verdict.status, verdict.alert) == ("unchained", False)
    assert verifier.counts["unchained"] == 5
    assert verifier.agents == {}


def test_open_gaps_are_bounded_and_the_oldest_expires_with_an_alert() -> None:
    """With max_gaps=2 a third gap closes the oldest as permanent and reports it."""
    records = chain(10)
    verifier = Verifier(max_gaps=2)
    found = [verify(verifier, AGENT, copy.deepcopy(records[i])) for i in (0, 2, 4, 6)]
    assert [v.status for v in found] == ["genesis", "gap", "gap", "gap"]
    assert [(g.first, g.last) for g in found[3].expired] == [(2, 2)]
    assert verifier.status()["agents"][AGENT]["open_gaps"] == [[4, 4], [6, 6]]
    assert verifier.counts["gap_expired"] == 1
    assert verify(verifier, AGENT, copy.deepcopy(records[1])).status == "regressed"
    assert verify(verifier, AGENT, copy.deepcopy(records[3])).status == "late"


def test_agents_are_independent() -> None:
    """Interleaved records of many agents verify as if each came alone."""
    verifier = Verifier()
    chains = {f"agent-{n}": chain(30, f"agent-{n}") for n in range(50)}
    for index in range(30):
        for agent, records in chains.items():
            expected = "genesis" if index == 0 else "ok"
            assert verify(verifier, agent, copy.deepcopy(records[index])).status == expected
    assert len(verifier.agents) == 50


def test_sha512_custom_profile_with_other_field_names() -> None:
    """A custom profile's field names, nested agent path, algorithm, prefix and genesis are used."""
    profile = Profile(
        "custom",
        agent=("actor", "id"),
        sequence="seq",
        hash="digest",
        prev_hash="previous",
        algorithm="sha512",
        prefix="",
        genesis="0",
    )
    verifier = Verifier(profile)
    prev = "0"
    for seq in (1, 2, 3):
        record: dict[str, Any] = {"actor": {"id": "a-1"}, "seq": seq, "previous": prev}
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        record["digest"] = prev = hashlib.sha512(text.encode()).hexdigest()
        assert profile.agent_of(record) == "a-1"
        assert verify(verifier, "a-1", record).status == ("genesis" if seq == 1 else "ok")


def test_profiles_refuse_inconsistent_fields() -> None:
    """A profile with a hash field but no sequence, or an unknown algorithm, is refused."""
    with pytest.raises(ValueError, match="both a sequence and a hash"):
        Profile("x", sequence=None)
    with pytest.raises(ValueError, match="algorithm"):
        Profile("x", algorithm="md5")


# --- safeclaw-jsonl --------------------------------------------------------------------------


def feed_lines(verifier: Verifier, lines: list[bytes]) -> list[Verdict]:
    """Feed SafeClaw lines for one agent."""
    return [verify(verifier, AGENT, orjson.loads(line), line) for line in lines]


def test_safeclaw_file_verifies_and_a_lost_or_edited_line_breaks_the_link() -> None:
    """A SafeClaw file is genesis then ok; a lost line or an edited one is a broken link after it."""
    lines = safeclaw_lines(10)
    verdicts = feed_lines(Verifier(SAFECLAW_JSONL), lines)
    assert [v.status for v in verdicts] == ["genesis"] + ["ok"] * 9
    assert [v.sequence for v in verdicts] == list(range(1, 11))
    lost = feed_lines(Verifier(SAFECLAW_JSONL), lines[:4] + lines[5:])
    assert [v.status for v in lost] == ["genesis", "ok", "ok", "ok", "broken_link"] + ["ok"] * 4
    edited = [*lines[:3], lines[3].replace(b"allow", b"deny"), *lines[4:]]
    assert [v.status for v in feed_lines(Verifier(SAFECLAW_JSONL), edited)][3:5] == [
        "ok",
        "broken_link",
    ]


def test_safeclaw_duplicates_forks_and_unchained_lines() -> None:
    """A resent line is a duplicate; a second successor is a fork; a line without prevHash is
    unchained yet still the predecessor of the next."""
    lines = safeclaw_lines(6)
    verifier = Verifier(SAFECLAW_JSONL)
    feed_lines(verifier, lines[:4])
    assert [v.status for v in feed_lines(verifier, [lines[2], lines[4]])] == ["duplicate", "ok"]
    other = json.dumps({"outcome": "x", "prevHash": hashlib.sha256(lines[1]).hexdigest()}).encode()
    assert feed_lines(verifier, [other])[0].status == "fork"
    verifier = Verifier(SAFECLAW_JSONL)
    bare = b'{"toolName":"exec"}'
    follower = json.dumps({"prevHash": hashlib.sha256(bare).hexdigest()}).encode()
    assert [v.status for v in feed_lines(verifier, [bare, follower])] == ["unchained", "ok"]


# --- random single faults ------------------------------------------------------------------

FAULTS = ("none", "drop", "duplicate", "reorder", "edit", "rehash", "replay")


@st.composite
def faulted(draw: st.DrawFn) -> tuple[str, int, list[dict[str, Any]], list[tuple[int, str]]]:
    """A random chain with one random fault planted; the (index, status) each fault must give."""
    length = draw(st.integers(4, 40))
    records = chain(length, first=draw(st.sampled_from([0, 1])))
    fault = draw(st.sampled_from(FAULTS))
    at = draw(st.integers(1, length - 2))  # never the first record: genesis stays genesis
    out = list(records)
    expect: list[tuple[int, str]] = []
    if fault == "drop":
        del out[at]
        expect = [(at, "gap")]
    elif fault == "duplicate":
        out.insert(at + 1, records[at])
        expect = [(at + 1, "duplicate")]
    elif fault == "reorder":
        out[at], out[at + 1] = out[at + 1], out[at]
        expect = [(at, "gap"), (at + 1, "late")]
    elif fault == "edit":
        out[at] = {**records[at], "effect": "tampered"}
        expect = [(at, "bad_hash")]
    elif fault == "rehash":
        out[at] = rehash({**records[at], "effect": "tampered"})
        expect = [(at + 1, "broken_link")]
    elif fault == "replay":
        old = draw(st.integers(0, at))
        out.insert(at + 1, records[old])
        expect = [(at + 1, "duplicate")]
    return fault, at, out, expect


@settings(max_examples=300, deadline=None)
@given(faulted())
def test_a_planted_fault_is_reported_exactly_where_it_is(
    case: tuple[str, int, list[dict[str, Any]], list[tuple[int, str]]],
) -> None:
    """For a random chain and one random fault, the verifier reports exactly that fault class at
    the right record and nothing anywhere else."""
    _fault, _at, records, expect = case
    found = statuses(Verifier(), records)
    clean = {"genesis", "ok"}
    reported = [(i, s) for i, s in enumerate(found) if s not in clean]
    assert reported == expect


def shuffled_chains(lengths: list[int], data: st.DataObject) -> list[tuple[str, dict[str, Any]]]:
    """Agents ``a0``, ``a1``, ... with chains of ``lengths`` records, shuffled together, then
    the first third of them again: every kind of verdict appears."""
    feed: list[tuple[str, dict[str, Any]]] = []
    for n, length in enumerate(lengths):
        feed.extend((f"a{n}", record) for record in chain(length, f"a{n}"))
    order = data.draw(st.permutations(range(len(feed))))
    return [feed[i] for i in order] + feed[: len(feed) // 3]


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    cut=st.integers(0, 200),
    data=st.data(),
)
def test_a_snapshot_restored_midway_gives_the_same_verdicts(
    lengths: list[int], cut: int, data: st.DataObject
) -> None:
    """Snapshot, JSON round trip and restore at any point change no later verdict (the
    checkpoint-and-replay guarantee)."""
    sequence = shuffled_chains(lengths, data)
    whole = Verifier(window=8, max_gaps=3)
    expected = [verify(whole, agent, copy.deepcopy(r)).envelope() for agent, r in sequence]
    first = Verifier(window=8, max_gaps=3)
    cut = min(cut, len(sequence))
    got = [verify(first, agent, copy.deepcopy(r)).envelope() for agent, r in sequence[:cut]]
    snapshot = orjson.loads(orjson.dumps(first.snapshot()))
    second = Verifier.restore(snapshot, SEED, window=8, max_gaps=3)
    got += [verify(second, agent, copy.deepcopy(r)).envelope() for agent, r in sequence[cut:]]
    assert got == expected
    assert second.snapshot() == orjson.loads(orjson.dumps(whole.snapshot()))


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=0, max_size=6),
    cut=st.integers(0, 200),
    chunk=st.integers(1, 7),
    data=st.data(),
)
def test_the_snapshot_in_pieces_is_the_snapshots_json(
    lengths: list[int], cut: int, chunk: int, data: st.DataObject
) -> None:
    """At any point of any mix of chains (gaps, duplicates, reordered records, no agent at
    all), the pieces the checkpoint writes, made ``chunk`` agents at a time, join into the very
    bytes ``orjson.dumps`` gives of the snapshot."""
    sequence = shuffled_chains(lengths, data)
    verifier = Verifier(window=8, max_gaps=3)
    for agent, record in sequence[: min(cut, len(sequence))]:
        verify(verifier, agent, copy.deepcopy(record))
    assert b"".join(verifier.snapshot_parts(chunk)) == orjson.dumps(verifier.snapshot())


# --- the fast path agrees with the careful one -----------------------------------------------

#: Edits to a record, each sending it down a different branch of ``feed`` (or none).
EDITS: dict[str, Any] = {
    "edit": lambda r: {**r, "effect": "tampered"},  # bad_hash
    "rehash": lambda r: rehash({**r, "effect": "tampered"}),  # its successor: broken_link
    "prev": lambda r: rehash({**r, "prevHash": "sha256:" + "0" * 64}),
    "sequence_str": lambda r: {**r, "sequence": str(r["sequence"])},
    "sequence_bool": lambda r: {**r, "sequence": True},
    # (an earlier edit may have made the sequence a string or a bool already)
    "sequence_float": lambda r: {
        **r,
        "sequence": float(r["sequence"]) if type(r["sequence"]) is int else 2.5,
    },
    "sequence_huge": lambda r: {**r, "sequence": 2**70},
    "no_hash": lambda r: {k: v for k, v in r.items() if k != "hash"},
    "hash_int": lambda r: {**r, "hash": 7},
    "prev_int": lambda r: {**r, "prevHash": 7},
    "no_prev": lambda r: {k: v for k, v in r.items() if k != "prevHash"},
    "lone_surrogate": lambda r: {**r, "effect": "\ud800"},  # canonicalize refuses it
    "empty_hash": lambda r: {**r, "hash": "", "effect": "\ud800"},  # nor is "" its hash
    "float": lambda r: rehash({**r, "ratio": 0.25}),
}


@st.composite
def disturbed(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, dict[str, Any]]]]:
    """(window, max_gaps, a stream of several agents' records), mostly in order (the fast path's
    case) with records swapped, dropped, repeated and edited here and there."""
    stream: list[tuple[str, dict[str, Any]]] = []
    for n in range(draw(st.integers(1, 3))):
        first = draw(st.sampled_from([0, 1, 7]))
        stream += [(f"a{n}", r) for r in chain(draw(st.integers(1, 30)), f"a{n}", first=first)]
    for _ in range(draw(st.integers(0, 10))):
        at = draw(st.integers(0, len(stream) - 1))
        change = draw(st.sampled_from(["swap", "drop", "repeat", "replay", *EDITS]))
        agent, record = stream[at]
        if change == "swap" and at + 1 < len(stream):
            stream[at], stream[at + 1] = stream[at + 1], stream[at]
        elif change == "drop" and len(stream) > 1:
            del stream[at]
        elif change == "repeat":
            stream.insert(at + 1, (agent, record))
        elif change == "replay":
            stream.append((agent, record))
        elif change in EDITS and "\ud800" not in record.values():  # (rehash could not)
            stream[at] = (agent, EDITS[change](record))
    return draw(st.sampled_from([1, 3, 64])), draw(st.sampled_from([1, 2, 64])), stream


def observable(result: Verdict | int) -> tuple[Any, ...]:
    """All of what ``feed`` returned that the chain stage uses."""
    if isinstance(result, int):
        return ("ok", result)
    assert result.status != "ok"  # an ok record comes as its sequence
    details = result.alert_details() if result.alert else None
    expired = [gap.as_json() for gap in result.expired]
    return result.envelope(), result.drop, result.alert, result.severity, details, expired


@settings(max_examples=300, deadline=None)
@given(disturbed())
def test_the_fast_path_agrees_with_the_careful_one(
    case: tuple[int, int, list[tuple[str, dict[str, Any]]]],
) -> None:
    """``feed`` (its fast path where it applies) and ``_feed_careful`` alone give the same
    verdicts, leave each record as it was, and end in the same state and counts: those of the
    verdicts given, in all and per agent (that had a state: an unchained record does not start
    one)."""
    window, max_gaps, stream = case
    fast = Verifier(window=window, max_gaps=max_gaps)
    careful = Verifier(window=window, max_gaps=max_gaps)
    seen: dict[str, Counter[str]] = {}  # per agent ("": none had a state)
    for agent, record in stream:
        mine, theirs = copy.deepcopy(record), copy.deepcopy(record)
        result = fast.feed(agent, mine)
        assert observable(result) == observable(careful._feed_careful(agent, theirs))
        assert mine == record == theirs
        verdict = as_verdict(result)
        counts = seen.setdefault(agent if agent in fast.agents else "", Counter())
        counts[verdict.status] += 1
        counts["gap_expired"] += len(verdict.expired)
    assert fast.snapshot() == careful.snapshot()
    assert fast.status() == careful.status()
    total = sum(seen.values(), Counter())
    assert fast.counts == {status: n for status, n in total.items() if n}
    for agent, state in fast.agents.items():
        assert state.counts == {status: n for status, n in seen[agent].items() if n}


def test_restore_refuses_another_profile_or_damage() -> None:
    """A snapshot of another profile, version or shape is refused with a ValueError."""
    verifier = Verifier()
    statuses(verifier, chain(3))
    snapshot = verifier.snapshot()
    with pytest.raises(ValueError, match="profile"):
        Verifier.restore(snapshot, SAFECLAW_JSONL)
    with pytest.raises(ValueError, match="version"):
        Verifier.restore({**snapshot, "v": 99})
    with pytest.raises(ValueError, match="damaged"):
        Verifier.restore({**snapshot, "agents": {AGENT: {"last_sequence": 1}}})


def test_a_deep_copy_verifies_independently() -> None:
    """A deep copy of a verifier carries the state and then goes its own way."""
    records = chain(4)
    original = Verifier()
    statuses(original, records[:2])
    twin = copy.deepcopy(original)
    assert statuses(twin, records[2:]) == ["ok", "ok"]
    assert statuses(original, records[3:]) == ["gap"]


#: Hashes a ring keeps packed (the seed profile's prefix and lower-case hex of 32 bytes) and
#: others it keeps apart: another shape, upper case, a space where a digit belongs.
RING_VALUES = (
    "sha256:" + "0" * 64,
    "sha256:" + "ab" * 32,
    "sha256:" + "f" * 64,
    "a",
    "",
    "sha256:" + "AB" * 32,
    "sha256:" + "ab" * 31 + "a ",
    "sha512:" + "ab" * 32,
)
#: Sequences a ring keeps packed, and some past 63 bits that it keeps apart.
RING_SEQUENCES = st.one_of(st.integers(0, 30), st.integers(2**63 - 3, 2**63 + 3))


@settings(max_examples=300, deadline=None)
@given(
    window=st.integers(1, 6),
    puts=st.lists(st.tuples(RING_SEQUENCES, st.sampled_from(RING_VALUES)), max_size=40),
)
def test_the_recent_hashes_are_the_highest_sequence_of_each_slot(
    window: int, puts: list[tuple[int, str]]
) -> None:
    """An agent's ring of recent hashes holds, per slot ``sequence % window``, the highest
    sequence remembered there and its hash, packed or kept apart: lookups by sequence and by
    hash, and the pairs, are those of that model, and so are a restored snapshot's."""
    state = AgentState.empty(window)
    model: dict[int, tuple[int, str]] = {}  # slot: (sequence, hash)
    for sequence, value in puts:
        state.remember(sequence, value)
        slot = sequence % window
        if slot not in model or model[slot][0] <= sequence:
            model[slot] = (sequence, value)
    probes = [*range(32), *range(2**63 - 4, 2**63 + 4)]
    for sequence in probes:
        held = model.get(sequence % window)
        assert state.recent(sequence) == (held[1] if held and held[0] == sequence else None)
    for value in (*RING_VALUES, "sha256:" + "1" * 64):
        found = [model[slot][0] for slot in sorted(model) if model[slot][1] == value]
        assert state.recent_sequence_of(value) == (found[0] if found else None)
    assert state.recent_pairs() == sorted([s, h] for s, h in model.values())
    verifier = Verifier(window=window)
    verifier._admit("a", state)
    restored = Verifier.restore(orjson.loads(orjson.dumps(verifier.snapshot())), window=window)
    assert restored.agents["a"].recent_pairs() == state.recent_pairs()
