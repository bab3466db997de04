"""The chain verifier: every status with a planted fault, random single faults, snapshots."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chain import SAFECLAW_JSONL, SEED, Profile, Verdict, Verifier
from tests.chains import AGENT, chain, safeclaw_lines, seed_hash


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its hash recomputed (a forger's edit that keeps the record valid)."""
    record = dict(record)
    record["hash"] = seed_hash(record)
    return record


def statuses(verifier: Verifier, records: list[dict[str, Any]], agent: str = AGENT) -> list[str]:
    """Feed fresh copies of ``records``; the status of each."""
    return [verifier.feed(agent, copy.deepcopy(record)).status for record in records]


def test_an_intact_chain_is_genesis_then_ok() -> None:
    """A chain delivered whole and in order gives genesis then ok, and no alert."""
    verifier = Verifier()
    verdicts = [verifier.feed(AGENT, copy.deepcopy(r)) for r in chain(20)]
    assert [v.status for v in verdicts] == ["genesis"] + ["ok"] * 19
    assert not any(v.alert for v in verdicts)
    assert verdicts[5].envelope() == {"status": "ok", "sequence": 6, "expected": 6}


def test_a_chain_first_seen_mid_way_is_adopted_with_a_low_alert() -> None:
    """The first record of an agent at sequence > 1 with a real prevHash is adopted (low alert)."""
    records = chain(10)
    verifier = Verifier()
    assert statuses(verifier, records[4:]) == ["adopted"] + ["ok"] * 5
    assert verifier.feed(AGENT, copy.deepcopy(records[4])).status == "duplicate"
    verdict = Verifier().feed(AGENT, copy.deepcopy(records[4]))
    assert (verdict.alert, verdict.severity) == (True, "low")


def test_a_dropped_record_is_a_gap_and_its_late_arrival_closes_it() -> None:
    """Records 4 and 5 missing give a gap with missing [4, 5] at record 6; each late fill is late."""
    records = chain(8)
    verifier = Verifier()
    assert statuses(verifier, records[:3]) == ["genesis", "ok", "ok"]
    gap = verifier.feed(AGENT, copy.deepcopy(records[5]))
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
    verdict = verifier.feed(AGENT, forged)
    assert (verdict.status, verdict.severity) == ("broken_link", "critical")
    assert verdict.expected_hash == records[3]["prevHash"]


def test_an_exact_resend_is_a_duplicate_to_drop() -> None:
    """A record already accepted, sent again unchanged, is a duplicate: dropped, no alert."""
    records = chain(5)
    verifier = Verifier()
    statuses(verifier, records)
    verdict = verifier.feed(AGENT, copy.deepcopy(records[2]))
    assert (verdict.status, verdict.drop, verdict.alert) == ("duplicate", True, False)
    assert statuses(verifier, chain(2, first=6, prev=records[-1]["hash"])) == ["ok", "ok"]


def test_another_valid_record_with_an_accepted_sequence_is_a_fork() -> None:
    """A validly hashed record reusing an accepted sequence with another hash is a fork."""
    records = chain(5)
    verifier = Verifier()
    statuses(verifier, records)
    verdict = verifier.feed(AGENT, rehash({**records[2], "effect": "other"}))
    assert (verdict.status, verdict.severity, verdict.drop) == ("fork", "critical", False)
    assert verdict.expected_hash == records[2]["hash"]


def test_a_wrong_prev_hash_is_a_broken_link() -> None:
    """A next record whose prevHash is not the last record's hash is a broken link."""
    records = chain(4)
    verifier = Verifier()
    statuses(verifier, records[:3])
    verdict = verifier.feed(AGENT, rehash({**records[3], "prevHash": "sha256:" + "0" * 64}))
    assert verdict.status == "broken_link"
    assert verdict.expected_prev_hash == records[2]["hash"]


def test_an_edited_record_is_a_bad_hash_and_its_successor_still_links() -> None:
    """A field edited without re-hashing is bad_hash at that record; the next one is ok."""
    records = chain(5)
    verifier = Verifier()
    edited = {**records[2], "effect": "tampered"}
    result = statuses(verifier, [records[0], records[1], edited, records[3], records[4]])
    assert result == ["genesis", "ok", "bad_hash", "ok", "ok"]
    verdict = Verifier().feed(AGENT, dict(edited))
    assert verdict.expected_hash == seed_hash(edited) != verdict.hash


def test_an_old_sequence_beyond_the_window_is_regressed() -> None:
    """A sequence below the last that is neither in a gap nor remembered is regressed."""
    records = chain(12)
    verifier = Verifier(window=4)
    statuses(verifier, records)
    verdict = verifier.feed(AGENT, copy.deepcopy(records[1]))
    assert (verdict.status, verdict.severity) == ("regressed", "medium")
    assert verifier.feed(AGENT, copy.deepcopy(records[10])).status == "duplicate"


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
        verdict = verifier.feed(AGENT, record)
        assert (verdict.status, verdict.alert) == ("unchained", False)
    assert verifier.counts["unchained"] == 5
    assert verifier.agents == {}


def test_open_gaps_are_bounded_and_the_oldest_expires_with_an_alert() -> None:
    """With max_gaps=2 a third gap closes the oldest as permanent and reports it."""
    records = chain(10)
    verifier = Verifier(max_gaps=2)
    found = [verifier.feed(AGENT, copy.deepcopy(records[i])) for i in (0, 2, 4, 6)]
    assert [v.status for v in found] == ["genesis", "gap", "gap", "gap"]
    assert [(g.first, g.last) for g in found[3].expired] == [(2, 2)]
    assert verifier.status()["agents"][AGENT]["open_gaps"] == [[4, 4], [6, 6]]
    assert verifier.counts["gap_expired"] == 1
    assert verifier.feed(AGENT, copy.deepcopy(records[1])).status == "regressed"
    assert verifier.feed(AGENT, copy.deepcopy(records[3])).status == "late"


def test_agents_are_independent() -> None:
    """Interleaved records of many agents verify as if each came alone."""
    verifier = Verifier()
    chains = {f"agent-{n}": chain(30, f"agent-{n}") for n in range(50)}
    for index in range(30):
        for agent, records in chains.items():
            expected = "genesis" if index == 0 else "ok"
            assert verifier.feed(agent, copy.deepcopy(records[index])).status == expected
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
        assert verifier.feed("a-1", record).status == ("genesis" if seq == 1 else "ok")


def test_profiles_refuse_inconsistent_fields() -> None:
    """A profile with a hash field but no sequence, or an unknown algorithm, is refused."""
    with pytest.raises(ValueError, match="both a sequence and a hash"):
        Profile("x", sequence=None)
    with pytest.raises(ValueError, match="algorithm"):
        Profile("x", algorithm="md5")


# --- safeclaw-jsonl --------------------------------------------------------------------------


def feed_lines(verifier: Verifier, lines: list[bytes]) -> list[Verdict]:
    """Feed SafeClaw lines for one agent."""
    return [verifier.feed(AGENT, orjson.loads(line), line) for line in lines]


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
    feed: list[tuple[str, dict[str, Any]]] = []
    for n, length in enumerate(lengths):
        feed.extend((f"a{n}", record) for record in chain(length, f"a{n}"))
    order = data.draw(st.permutations(range(len(feed))))
    # A shuffle of several agents' chains, with duplicates: every kind of verdict appears.
    sequence = [feed[i] for i in order] + feed[: len(feed) // 3]
    whole = Verifier(window=8, max_gaps=3)
    expected = [whole.feed(agent, copy.deepcopy(r)).envelope() for agent, r in sequence]
    first = Verifier(window=8, max_gaps=3)
    cut = min(cut, len(sequence))
    got = [first.feed(agent, copy.deepcopy(r)).envelope() for agent, r in sequence[:cut]]
    snapshot = orjson.loads(orjson.dumps(first.snapshot()))
    second = Verifier.restore(snapshot, SEED, window=8, max_gaps=3)
    got += [second.feed(agent, copy.deepcopy(r)).envelope() for agent, r in sequence[cut:]]
    assert got == expected
    assert second.snapshot() == orjson.loads(orjson.dumps(whole.snapshot()))


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
