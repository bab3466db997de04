"""The agents with problems (``Verifier.troubled``): which agents are listed, in which order,
and that eviction and a snapshot's restore keep the list true without going over every agent."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings

from shipper.chain import SEVERITY, TROUBLE_SEVERITIES, Verifier
from tests.chains import chain, seed_hash
from tests.test_chain import disturbed


def feed_all(verifier: Verifier, records: list[dict[str, Any]]) -> None:
    for record in records:
        verifier.feed(record["agentId"], copy.deepcopy(record))


def troubled_by_counts(verifier: Verifier) -> set[str]:
    """The agents whose counts hold a status of a problem's severity (the slow way)."""
    return {
        name
        for name, state in verifier.agents.items()
        if any(SEVERITY.get(status) in TROUBLE_SEVERITIES for status in state.others)
    }


def test_problems_are_listed_worst_first_and_most_recent_first() -> None:
    """Forks and bad hashes come before gaps, the most recent first within a severity; healthy,
    adopted and late-filled agents are not listed; an agent keeps its worst severity."""
    verifier = Verifier()
    healthy = chain(5, "healthy")
    adopted = chain(5, "adopted", first=10, prev="sha256:" + "0" * 64)
    gap = chain(6, "gap")
    late = chain(6, "late")
    fork_a = chain(4, "fork-a")
    fork_b = chain(4, "fork-b")
    worse = chain(6, "gap-then-fork")
    feed_all(verifier, healthy + adopted)
    feed_all(verifier, gap[:2] + gap[3:])  # a gap at 3
    feed_all(verifier, late[:2] + late[3:] + late[2:3])  # a gap, filled late: still a gap seen
    feed_all(verifier, worse[:2] + worse[3:])  # a gap at 3...
    feed_all(verifier, fork_a)
    feed_all(verifier, [{**fork_a[1], "action": "edited"}])  # bad_hash at sequence 2
    feed_all(verifier, fork_b)
    other = {**fork_b[2], "effect": "other"}
    other["hash"] = seed_hash(other)
    feed_all(verifier, [other])  # a fork at sequence 3
    forked = {**worse[4], "effect": "other"}
    forked["hash"] = seed_hash(forked)
    feed_all(verifier, [forked])  # ...then a fork
    assert list(verifier.troubled.worst_first()) == [
        "gap-then-fork",
        "fork-b",
        "fork-a",
        "late",
        "gap",
    ]
    assert len(verifier.troubled) == 5
    assert verifier.agents["gap-then-fork"].worst == "fork"
    assert verifier.agents["late"].worst == "gap"
    assert verifier.agents["adopted"].worst == "adopted"
    assert verifier.agents["healthy"].worst == "ok"


def test_an_evicted_agent_is_no_longer_listed() -> None:
    """An agent with a gap that is evicted to make room leaves the list."""
    verifier = Verifier(max_agents=2)
    gap = chain(4, "gap")
    feed_all(verifier, gap[:1] + gap[2:])
    feed_all(verifier, chain(3, "b"))
    assert list(verifier.troubled.worst_first()) == ["gap"]
    feed_all(verifier, chain(1, "c"))  # "gap" was idle the longest
    assert "gap" not in verifier.agents
    assert list(verifier.troubled.worst_first()) == []


@settings(max_examples=200, deadline=None)
@given(disturbed())
def test_the_list_holds_exactly_the_agents_with_problems_and_survives_a_restore(
    case: tuple[int, int, list[tuple[str, dict[str, Any]]]],
) -> None:
    """Whatever the stream, the list holds exactly the agents whose counts show a problem, and a
    verifier restored from a snapshot lists the same agents."""
    window, max_gaps, stream = case
    verifier = Verifier(window=window, max_gaps=max_gaps)
    for agent, record in stream:
        verifier.feed(agent, copy.deepcopy(record))
    listed = list(verifier.troubled.worst_first())
    assert len(listed) == len(set(listed)) == len(verifier.troubled)
    assert set(listed) == troubled_by_counts(verifier)
    snapshot = json.loads(json.dumps(verifier.snapshot()))  # (sequences beyond 64 bits too)
    restored = Verifier.restore(snapshot, window=window, max_gaps=max_gaps)
    assert set(restored.troubled.worst_first()) == set(listed)
    critical = verifier.troubled.by_severity["critical"]
    assert set(restored.troubled.by_severity["critical"]) == set(critical)
