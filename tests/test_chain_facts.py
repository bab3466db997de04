"""The two halves of the chain check: ``Profile.facts`` (stateless, from the record alone) and
``Verifier.feed_facts`` (stateful), against ``Verifier.feed`` (both at once)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chain import SAFECLAW_JSONL, SEED, Facts, Profile, Verifier
from tests.chains import AGENT, chain, safeclaw_lines
from tests.test_chain import disturbed, observable


@settings(max_examples=300, deadline=None)
@given(disturbed(), st.sampled_from([1, 2, 100]))
def test_facts_taken_ahead_give_the_verdicts_feed_gives(
    case: tuple[int, int, list[tuple[str, dict[str, Any]]]], max_agents: int
) -> None:
    """The facts of a whole stream taken before any record is checked (and pickled, as between
    processes), then ``feed_facts``, give the verdicts, evictions and state that ``feed`` gives
    record by record: the facts depend on the record alone."""
    window, max_gaps, stream = case
    by_record = Verifier(window=window, max_gaps=max_gaps, max_agents=max_agents)
    by_facts = Verifier(window=window, max_gaps=max_gaps, max_agents=max_agents)
    facts = pickle.loads(pickle.dumps([SEED.facts(copy.deepcopy(r)) for _, r in stream]))
    for (agent, record), fact in zip(stream, facts, strict=True):
        expected = by_record.feed(agent, copy.deepcopy(record))
        result = by_facts.feed_facts(agent, fact)
        assert observable(result) == observable(expected)
        evicted = [eviction.alert_details() for eviction in getattr(expected, "evicted", ())]
        assert [eviction.alert_details() for eviction in getattr(result, "evicted", ())] == evicted
    assert by_facts.snapshot() == by_record.snapshot()
    assert by_facts.counts == by_record.counts


@st.composite
def safeclaw_streams(draw: st.DrawFn) -> list[bytes]:
    """SafeClaw lines with some swapped, dropped, repeated, edited or without prevHash."""
    lines = safeclaw_lines(draw(st.integers(1, 20)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(lines) - 1))
        change = draw(st.sampled_from(["swap", "drop", "repeat", "edit", "no_prev"]))
        if change == "swap" and at + 1 < len(lines):
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        elif change == "drop" and len(lines) > 1:
            del lines[at]
        elif change == "repeat":
            lines.insert(at, lines[at])
        elif change == "edit":
            lines[at] = lines[at].replace(b"e", b"E", 1)
        elif change == "no_prev":
            record = orjson.loads(lines[at])
            record.pop("prevHash", None)
            lines[at] = orjson.dumps(record)
    return lines


@settings(max_examples=200, deadline=None)
@given(safeclaw_streams())
def test_line_hashed_facts_taken_ahead_give_the_verdicts_feed_gives(lines: list[bytes]) -> None:
    """For line hashing too, facts taken ahead (the line's digest and prevHash) and
    ``feed_facts`` give what ``feed`` gives line by line."""
    by_record, by_facts = Verifier(SAFECLAW_JSONL, window=3), Verifier(SAFECLAW_JSONL, window=3)
    facts = [SAFECLAW_JSONL.facts(orjson.loads(line), line) for line in lines]
    for line, fact in zip(lines, facts, strict=True):
        expected = by_record.feed(AGENT, orjson.loads(line), line)
        assert observable(by_facts.feed_facts(AGENT, fact)) == observable(expected)
    assert by_facts.snapshot() == by_record.snapshot()


def test_facts_hold_the_chain_fields_the_digest_or_why_there_is_none() -> None:
    """A chained record's facts are its sequence, hash, prevHash and recomputed digest (the very
    hash string when it matches) with the digest's raw bytes; a record without usable chain
    fields says which; a line's are its digest and prevHash; and the record is left as it was."""
    first, second = chain(2)
    record = copy.deepcopy(second)
    facts = SEED.facts(record)
    packed = bytes.fromhex(second["hash"].removeprefix("sha256:"))
    assert facts == Facts(2, second["hash"], first["hash"], second["hash"], None, packed)
    assert facts.digest is facts.hash
    assert record == second
    edited = SEED.facts({**second, "effect": "edited"})
    assert edited.digest != edited.hash
    assert edited.digest is not None
    assert edited.digest.startswith("sha256:")
    refused = SEED.facts({**second, "effect": "\ud800"}).digest
    assert refused is not None
    assert refused.startswith("(cannot canonicalize:")
    assert SEED.facts({"hash": "x"}) == Facts(None, None, None, None, "no usable 'sequence'")
    assert SEED.facts({"sequence": True}).unchained == "no usable 'sequence'"
    for sequence in (-1, True, 1.0):
        facts = SEED.facts({"sequence": sequence, "hash": "h", "prevHash": ""})
        assert facts == Facts(None, None, None, None, "no usable 'sequence'")
    assert SEED.facts({"sequence": 3}) == Facts(3, None, None, None, "no usable 'hash'")
    no_prev = SEED.facts({"sequence": 3, "hash": "h", "prevHash": 7})
    assert no_prev == Facts(3, None, None, None, "no usable 'prevHash'")
    line = safeclaw_lines(2)[1]
    digest = SAFECLAW_JSONL.digest(line)
    prev = orjson.loads(line)["prevHash"]
    assert SAFECLAW_JSONL.facts(orjson.loads(line), line) == Facts(None, digest, prev, None, None)
    assert SAFECLAW_JSONL.facts({"prevHash": 7}, b"{}").prev_hash is None


def test_facts_and_profiles_survive_pickling() -> None:
    """Facts and a custom profile cross a pipe (pickle) unchanged, and the profile still hashes
    the same way after it."""
    profile = Profile("custom", agent=("actor", "id"), algorithm="sha512", prefix="")
    again = pickle.loads(pickle.dumps(profile))
    assert again == profile
    assert again.digest(b"x") == profile.digest(b"x")
    facts = SEED.facts(chain(1)[0])
    assert pickle.loads(pickle.dumps(facts)) == facts
