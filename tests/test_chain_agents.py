"""The bound on tracked agents (``[chain] max_agents``: CLOCK eviction, each an alert) and the
version 2 chain snapshot and checkpoint, with 100,000 agents."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.buffer.segment import Position
from shipper.chain import SAFECLAW_JSONL, Verdict, Verifier, as_verdict
from shipper.chain_stage import (
    ChainStage,
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    store_checkpoint,
)
from shipper.codecs.canonical import canonicalize
from shipper.config import parse_config
from shipper.errors import ConfigError
from shipper.events import Event
from tests.chains import safeclaw_lines
from tests.conftest import LogCapture, file_sink_config
from tests.test_chain import disturbed, observable

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "10.0.0.7:51234"}
EPOCH = "0123456789abcdef"


class Agent:
    """An agent's chain of seed records, made on demand (cheaper than ``tests.chains.chain``:
    the records are ASCII and integers only, for which orjson's sorted form is RFC 8785)."""

    def __init__(self, name: str, first: int = 1) -> None:
        self.name = name
        self.sequence = first - 1
        self.last_hash = ""
        self.sent: list[dict[str, Any]] = []

    def next(self) -> dict[str, Any]:
        """The agent's next record (kept in ``sent``)."""
        self.sequence += 1
        record: dict[str, Any] = {
            "agentId": self.name,
            "sequence": self.sequence,
            "prevHash": self.last_hash,
            "action": "file.read",
        }
        digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
        record["hash"] = self.last_hash = "sha256:" + digest
        self.sent.append(record)
        return record


def feed(verifier: Verifier, record: dict[str, Any]) -> Verdict:
    """``verifier.feed`` of a copy of ``record``, as a ``Verdict``."""
    return as_verdict(verifier.feed(record["agentId"], copy.deepcopy(record)))


def outcome(result: Verdict | int) -> tuple[Any, ...]:
    """All of what ``feed`` returned that the chain stage uses, evictions included."""
    evicted = [e.alert_details() for e in as_verdict(result).evicted]
    return observable(result), evicted


def event(record: dict[str, Any]) -> Event:
    return Event("2026-11-23T00:00:00.000000Z", SOURCE, None, orjson.dumps(record))


def stage(tmp_path: Path, **chain_settings: Any) -> ChainStage:
    raw = file_sink_config(tmp_path)
    if chain_settings:
        raw["chain"] = chain_settings
    return ChainStage(parse_config(raw).chain, tmp_path / "var")


def dumped(verifier: Verifier) -> bytes:
    """The verifier's whole state, as its checkpoint holds it."""
    return orjson.dumps(verifier.snapshot())


def snapshot_v2(verifier: Verifier) -> dict[str, Any]:
    """The state in the version 2 snapshot format (what shipper wrote before version 3): each
    ring a list of its slots' sequence and hash, -1 and "" while empty."""
    snapshot = orjson.loads(dumped(verifier))
    agents = snapshot["agents"]
    window = verifier.window
    rings = []
    for agent in agents["id"]:
        ring: list[Any] = [-1, ""] * window
        for sequence, value in verifier.agents[agent].recent_pairs():
            slot = sequence % window
            ring[2 * slot : 2 * slot + 2] = [sequence, value]
        rings.append(ring)
    for column in ("sequences", "digests", "odd"):
        del agents[column]
    agents["ring"] = rings
    snapshot["v"] = 2
    return dict(snapshot)


def snapshot_v1(verifier: Verifier) -> dict[str, Any]:
    """The state in the version 1 snapshot format (what shipper wrote before version 2)."""
    return {
        "v": 1,
        "profile": verifier.profile.name,
        "counts": verifier.counts,
        "agents": {
            agent: {
                "last_sequence": state.last_sequence,
                "last_hash": state.last_hash,
                "gaps": [gap.as_json() for gap in state.gaps],
                "recent": state.recent_pairs(),
                "counts": state.counts,
                "last_alert": state.last_alert,
            }
            for agent, state in verifier.agents.items()
        },
    }


# --- eviction ----------------------------------------------------------------------------------


def test_the_least_recently_active_agent_is_evicted_with_what_was_known_of_it() -> None:
    """With max_agents agents tracked, a new agent evicts the first one that sent nothing since
    the sweep last passed it; the verdict of the new agent's record carries the eviction, with
    the evicted agent's last sequence and hash, open gaps, counts and last alert."""
    a, b, c, d = (Agent(name) for name in "abcd")
    verifier = Verifier(max_agents=3)
    for record in (a.next(), b.next(), b.next(), c.next()):
        feed(verifier, record)
    skipped = b.next()  # b's record 3 is lost: b has an open gap (3, 3)
    feed(verifier, b.next())
    for _ in range(3):
        feed(verifier, a.next())  # a is active; so is b (it moved since its first record)
    verdict = feed(verifier, d.next())
    assert verdict.status == "genesis"
    (eviction,) = verdict.evicted
    assert (eviction.agent, eviction.admitted) == ("c", "d")  # a, b moved on; c did not
    assert sorted(verifier.agents) == ["a", "b", "d"]
    assert verifier.counts["agents_evicted"] == 1
    assert eviction.alert_details()["last_hash"] == c.last_hash
    # The sweep marked a and b as it passed them; since, only a has moved on.
    feed(verifier, a.next())
    (eviction,) = feed(verifier, Agent("e").next()).evicted
    details = eviction.alert_details()
    assert details == {
        "status": "agent_evicted",
        "severity": "medium",
        "last_sequence": 4,
        "last_hash": b.last_hash,
        "open_gaps": [
            {"missing": [3, 3], "before": b.sent[1]["hash"], "after": skipped["hash"]},
        ],
        "counts": {"genesis": 1, "ok": 1, "gap": 1},
        "last_alert": {"status": "gap", "sequence": 4},
        "admitted": "e",
        "max_agents": 3,
        "detail": details["detail"],
    }
    assert "adopted" in details["detail"]
    # The evicted agent's next record links to what the alert holds, and is adopted.
    following = b.next()
    assert following["prevHash"] == details["last_hash"]
    assert feed(verifier, following).status == "adopted"


def test_evicted_agents_stay_in_the_totals() -> None:
    """Eviction forgets an agent's state, not its records: the verifier's counts by status still
    include them, and count the eviction."""
    a, b = Agent("a"), Agent("b")
    verifier = Verifier(max_agents=1)
    for _ in range(5):
        feed(verifier, a.next())
    assert feed(verifier, b.next()).evicted[0].agent == "a"
    assert verifier.counts == {"genesis": 2, "ok": 4, "agents_evicted": 1}
    assert verifier.status()["max_agents"] == 1
    assert list(verifier.status()["agents"]) == ["b"]


def test_line_hashed_agents_are_evicted_too() -> None:
    """Under a line-hashed profile (SafeClaw, one agent per sender) a new sender evicts an idle
    one, its first line unchained or not, and its next line is adopted."""
    lines = safeclaw_lines(4)
    verifier = Verifier(SAFECLAW_JSONL, max_agents=1)
    for line in lines[:2]:
        verifier.feed("host-a", orjson.loads(line), line)
    bare = b'{"toolName":"exec"}'
    verdict = as_verdict(verifier.feed("host-b", orjson.loads(bare), bare))
    assert verdict.status == "unchained"
    (eviction,) = verdict.evicted
    assert eviction.agent == "host-a"
    assert eviction.alert_details()["last_hash"] == hashlib.sha256(lines[1]).hexdigest()
    adopted = as_verdict(verifier.feed("host-a", orjson.loads(lines[2]), lines[2]))
    assert adopted.status == "adopted"
    assert [e.agent for e in adopted.evicted] == ["host-b"]


@settings(max_examples=200, deadline=None)
@given(
    senders=st.lists(st.integers(0, 7), max_size=60),
    max_agents=st.integers(1, 4),
    cut=st.integers(0, 60),
)
def test_eviction_follows_the_clock_sweep(senders: list[int], max_agents: int, cut: int) -> None:
    """Whoever sends, the verifier evicts whom the CLOCK sweep evicts, modelled as described:
    the agents in a list, a new one appended; while max_agents are tracked, the first agent is
    taken off the list and, if its last sequence moved since it was last taken, put back at the
    end; else evicted. A snapshot taken and restored at any point changes none of it."""
    agents = {f"agent-{n}": Agent(f"agent-{n}") for n in range(8)}
    verifier = Verifier(max_agents=max_agents)
    order: list[str] = []  # the model
    marked: dict[str, int] = {}  # last sequence when last taken off the list (or admitted)
    for index, sender in enumerate(senders):
        if index == cut:
            verifier = Verifier.restore(orjson.loads(dumped(verifier)), max_agents=max_agents)
        agent = agents[f"agent-{sender}"]
        record = agent.next()  # every record in order: the last sequence is the agent's
        expected: list[str] = []
        if agent.name not in order:
            while len(order) >= max_agents:
                first = order.pop(0)
                if agents[first].sequence != marked[first]:
                    marked[first] = agents[first].sequence
                    order.append(first)
                else:
                    expected.append(first)
            order.append(agent.name)
            marked[agent.name] = agent.sequence
        verdict = feed(verifier, record)
        assert [eviction.agent for eviction in verdict.evicted] == expected
        assert len(verifier.agents) <= max_agents
    assert verifier.snapshot()["agents"]["id"] == order


@settings(max_examples=300, deadline=None)
@given(case=disturbed(), max_agents=st.integers(1, 2))
def test_the_fast_path_agrees_with_the_careful_one_while_evicting(
    case: tuple[int, int, list[tuple[str, dict[str, Any]]]], max_agents: int
) -> None:
    """With fewer agents allowed than send, ``feed`` and ``_feed_careful`` alone still give the
    same verdicts and evictions, and end in the same state and counts."""
    window, max_gaps, stream = case
    fast = Verifier(window=window, max_gaps=max_gaps, max_agents=max_agents)
    careful = Verifier(window=window, max_gaps=max_gaps, max_agents=max_agents)
    evictions = 0
    for agent, record in stream:
        mine = outcome(fast.feed(agent, copy.deepcopy(record)))
        assert mine == outcome(careful._feed_careful(agent, copy.deepcopy(record)))
        evictions += len(mine[1])
        assert len(fast.agents) <= max_agents
    assert fast.snapshot() == careful.snapshot()  # (not dumped: sequences here pass 64 bits)
    assert fast.counts == careful.counts
    assert fast.counts.get("agents_evicted", 0) == evictions


def test_a_restored_snapshot_beyond_the_bound_is_evicted_down_to_it() -> None:
    """A snapshot of more agents than max_agents (the bound was lowered) keeps them all until
    the next new agent, whose record then evicts the surplus, each with its alert."""
    verifier = Verifier()
    for n in range(5):
        feed(verifier, Agent(f"agent-{n}").next())
    smaller = Verifier.restore(orjson.loads(dumped(verifier)), max_agents=2)
    assert len(smaller.agents) == 5
    verdict = feed(smaller, Agent("new").next())
    assert [e.agent for e in verdict.evicted] == [f"agent-{n}" for n in range(4)]
    assert sorted(smaller.agents) == ["agent-4", "new"]
    (eviction,) = feed(smaller, Agent("newer").next()).evicted
    assert eviction.agent == "agent-4"
    assert smaller.counts["agents_evicted"] == 5


# --- the chain stage ---------------------------------------------------------------------------


def test_the_stage_archives_an_alert_after_the_record_that_evicted(
    tmp_path: Path, logs: LogCapture
) -> None:
    """In the chain stage, an eviction adds a shipper.chain_alert event right after the record
    whose agent took the place, naming the evicted agent; it is counted and logged."""
    a, b = Agent("a"), Agent("b")
    chain_stage = stage(tmp_path, max_agents=1)
    out = chain_stage.process([event(a.next()), event(a.next()), event(b.next())], now=0.0)
    assert [e.agent for e in out] == ["a", "a", "b", "a"]
    alert = out[3]
    assert alert.alert
    record = orjson.loads(alert.record_json or b"")
    assert {k: record[k] for k in ("action", "agent", "status", "severity", "admitted")} == {
        "action": "shipper.chain_alert",
        "agent": "a",
        "status": "agent_evicted",
        "severity": "medium",
        "admitted": "b",
    }
    assert (record["last_sequence"], record["last_hash"]) == (2, a.last_hash)
    assert (record["source"], record["peer"]) == ("agents", "10.0.0.7:51234")
    assert chain_stage.counters["agents_evicted"] == 1
    assert chain_stage.verifier.counts["agents_evicted"] == 1
    (logged,) = logs.entries("chain_alert")
    assert (logged["agent"], logged["status"], logged["severity"]) == (
        "a",
        "agent_evicted",
        "medium",
    )


def test_max_agents_is_read_from_the_chain_table(tmp_path: Path) -> None:
    """``[chain] max_agents`` defaults to 100,000 and takes an integer of at least 1."""
    raw = file_sink_config(tmp_path)
    assert parse_config(raw).chain.max_agents == 100_000
    assert parse_config({**raw, "chain": {"max_agents": 5}}).chain.max_agents == 5
    with pytest.raises(ConfigError) as info:
        parse_config({**raw, "chain": {"max_agents": 0}})
    assert str(info.value) == "chain.max_agents: expected an integer from 1 to 100000000, got 0"


# --- snapshots and checkpoints -----------------------------------------------------------------


def a_mixed_state(max_agents: int = 100_000) -> tuple[Verifier, list[Agent]]:
    """A verifier whose agents have every kind of state: gaps, forks, counts, alerts."""
    agents = [Agent(f"agent-{n}") for n in range(6)]
    verifier = Verifier(max_agents=max_agents)
    for agent in agents:
        for _ in range(3):
            feed(verifier, agent.next())
    agent = agents[1]
    agent.next()  # lost: a gap
    feed(verifier, agent.next())
    fork = {k: v for k, v in agents[2].sent[1].items() if k != "hash"}
    fork["action"] = "file.write"
    digest = hashlib.sha256(orjson.dumps(fork, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert feed(verifier, {**fork, "hash": "sha256:" + digest}).status == "fork"
    adopted = Agent("adopted", first=40)
    adopted.last_hash = "sha256:" + "ab" * 32  # its predecessors are elsewhere
    assert feed(verifier, adopted.next()).status == "adopted"
    agents.append(adopted)
    return verifier, agents


def continuation(agents: list[Agent]) -> list[dict[str, Any]]:
    """Records after ``a_mixed_state``: next records, resends, a late one, new agents."""
    records = [agent.next() for agent in agents]
    records += [agents[0].sent[1], agents[3].sent[-2], agents[1].sent[3]]  # resends; late 4
    records += [Agent(f"new-{n}").next() for n in range(3)]
    return records


def test_a_version_3_snapshot_gives_the_same_verdicts_and_state() -> None:
    """A version 3 snapshot, through JSON, restores a verifier that gives the same verdicts,
    evictions and state as the one it was taken of."""
    verifier, agents = a_mixed_state(max_agents=8)
    snapshot = orjson.loads(dumped(verifier))
    assert snapshot["v"] == 3
    restored = Verifier.restore(snapshot, max_agents=8)
    assert dumped(restored) == dumped(verifier)
    records = continuation(agents)
    mine = [verifier.feed(r["agentId"], copy.deepcopy(r)) for r in records]
    theirs = [restored.feed(r["agentId"], copy.deepcopy(r)) for r in records]
    assert list(map(outcome, mine)) == list(map(outcome, theirs))
    assert {as_verdict(m).status for m in mine} == {"ok", "duplicate", "late", "genesis"}
    assert sum(len(as_verdict(m).evicted) for m in mine) == 2
    assert dumped(restored) == dumped(verifier)


def test_a_version_2_snapshot_still_restores_to_the_same_state() -> None:
    """A version 2 snapshot (rings as lists of hash strings, before an upgrade) restores to the
    state the version 3 snapshot of the same verifier restores to, verdicts after included."""
    verifier, agents = a_mixed_state(max_agents=8)
    v2 = orjson.loads(orjson.dumps(snapshot_v2(verifier)))
    assert "ring" in v2["agents"]
    old = Verifier.restore(v2, max_agents=8)
    assert dumped(old) == dumped(verifier)
    records = continuation(agents)
    assert [outcome(old.feed(r["agentId"], copy.deepcopy(r))) for r in records] == [
        outcome(verifier.feed(r["agentId"], copy.deepcopy(r))) for r in records
    ]


def test_a_version_1_snapshot_still_restores() -> None:
    """A version 1 snapshot (an upgrade) restores to the same verdicts; its agents count as
    idle since, to be evicted in the order they came."""
    verifier, agents = a_mixed_state()
    v1 = orjson.loads(orjson.dumps(snapshot_v1(verifier)))
    old = Verifier.restore(v1)
    assert old.counts == verifier.counts
    records = continuation(agents)
    assert [feed(old, r).envelope() for r in records] == [
        feed(verifier, r).envelope() for r in records
    ]
    full = Verifier.restore(v1, max_agents=len(agents))
    evicted = [e.agent for n in range(3) for e in feed(full, Agent(f"new-{n}").next()).evicted]
    assert evicted == ["agent-0", "agent-1", "agent-2"]


def test_a_snapshot_restores_under_another_dedupe_window() -> None:
    """Restored with a smaller window, a snapshot keeps the most recent hashes that fit; with a
    larger one, all of them: resends among them are duplicates, older ones regressed."""
    agent = Agent("a")
    verifier = Verifier(window=8)
    for _ in range(20):
        feed(verifier, agent.next())
    snapshot = dumped(verifier)
    smaller = Verifier.restore(orjson.loads(snapshot), window=4)
    assert [len(ring) for ring in orjson.loads(dumped(smaller))["agents"]["sequences"]] == [4]
    assert [feed(smaller, agent.sent[n - 1]).status for n in (20, 17, 16)] == [
        "duplicate",
        "duplicate",
        "regressed",
    ]
    larger = Verifier.restore(orjson.loads(snapshot), window=16)
    assert [feed(larger, agent.sent[n - 1]).status for n in (20, 13, 12)] == [
        "duplicate",
        "duplicate",
        "regressed",
    ]


def far_chain(first: int, count: int) -> list[dict[str, Any]]:
    """``count`` records of agent "far" from sequence ``first`` on, hashed over their RFC 8785
    form (which writes integers past 2**53 as JSON numbers do, unlike orjson's)."""
    records: list[dict[str, Any]] = []
    prev = ""
    for sequence in range(first, first + count):
        record: dict[str, Any] = {"agentId": "far", "sequence": sequence, "prevHash": prev}
        record["hash"] = prev = "sha256:" + hashlib.sha256(canonicalize(record)).hexdigest()
        records.append(record)
    return records


def test_a_chain_past_63_bits_verifies_and_restores() -> None:
    """Sequences past what a ring's 64-bit slots hold, up to the largest orjson reads, verify
    as ok, and a resend is a duplicate, before and after a snapshot."""
    for first in (2**63 - 2, 2**64 - 4):
        records = far_chain(first, 4)
        verifier = Verifier(window=4)
        assert [feed(verifier, r).status for r in records] == ["genesis", "ok", "ok", "ok"]
        # (the pairs held apart, as the checkpoint writes them in pieces, too)
        assert b"".join(verifier.snapshot_parts(1)) == orjson.dumps(verifier.snapshot())
        restored = Verifier.restore(orjson.loads(dumped(verifier)), window=4)
        for checked in (verifier, restored):
            assert [feed(checked, r).status for r in records] == ["duplicate"] * 4


def damage(column: str, value: Any) -> Any:
    """A change to one column of a version 2 snapshot's agents."""

    def change(snapshot: dict[str, Any]) -> None:
        snapshot["agents"][column] = value(snapshot["agents"][column])

    return change


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(damage("id", lambda ids: ids[:-1]), id="short-column"),
        pytest.param(damage("id", lambda ids: [ids[0], *ids[:-1]]), id="agent-twice"),
        pytest.param(damage("id", lambda ids: [7, *ids[1:]]), id="id-not-a-string"),
        pytest.param(damage("last_sequence", lambda s: ["1", *s[1:]]), id="sequence-string"),
        pytest.param(damage("sequences", lambda r: [[None] * 64, *r[1:]]), id="ring-slot"),
        pytest.param(damage("sequences", lambda r: [[1.5] * 64, *r[1:]]), id="ring-float"),
        pytest.param(damage("sequences", lambda r: [[-2] * 64, *r[1:]]), id="ring-odd-unpaired"),
        pytest.param(damage("digests", lambda d: ["zz" * 2048, *d[1:]]), id="ring-not-hex"),
        pytest.param(damage("digests", lambda d: ["ab" * 2049, *d[1:]]), id="ring-digests-long"),
        pytest.param(damage("digests", lambda d: [7, *d[1:]]), id="ring-digests-type"),
        pytest.param(damage("odd", lambda o: [[[0, 1]], *o[1:]]), id="ring-odd-pair"),
        pytest.param(damage("gaps", lambda g: [[[1, 2, 3, None]], *g[1:]]), id="gap"),
        pytest.param(damage("gaps", lambda g: [[[1, 2]], *g[1:]]), id="gap-short"),
        pytest.param(damage("others", lambda o: [{"gap": "1"}, *o[1:]]), id="count"),
        pytest.param(damage("last_alert", lambda a: [[], *a[1:]]), id="alert"),
        pytest.param(lambda s: s["agents"].pop("swept"), id="no-column"),
        pytest.param(lambda s: s.update(agents=[]), id="agents-a-list"),
    ],
)
def test_a_damaged_version_3_snapshot_is_refused(change: Any) -> None:
    """A version 3 snapshot with a value of the wrong type or shape is refused as damaged."""
    snapshot = orjson.loads(dumped(a_mixed_state()[0]))
    change(snapshot)
    with pytest.raises(ValueError, match="damaged"):
        Verifier.restore(snapshot)


@pytest.mark.parametrize(
    "ring",
    [
        pytest.param([None, "x"] * 64, id="slot"),
        pytest.param([1, "x", 2], id="odd-length"),
        pytest.param([1, 7] * 64, id="hash-not-a-string"),
    ],
)
def test_a_damaged_version_2_ring_is_refused(ring: list[Any]) -> None:
    """A version 2 snapshot whose ring has a value of the wrong type or shape is refused as
    damaged."""
    snapshot = orjson.loads(orjson.dumps(snapshot_v2(a_mixed_state()[0])))
    snapshot["agents"]["ring"][0] = ring
    with pytest.raises(ValueError, match="damaged"):
        Verifier.restore(snapshot)


def test_a_version_1_checkpoint_loads_and_the_next_is_version_3(tmp_path: Path) -> None:
    """After an upgrade, the chain stage loads the version 1 checkpoint (no replay of the whole
    WAL, no false genesis) and writes version 3 from then on, which loads to the same state."""
    verifier, agents = a_mixed_state()
    data_dir = tmp_path / "var"
    position = Position(3, 4096)
    old = orjson.loads(dumped(Verifier.restore(snapshot_v1(verifier))))
    store_checkpoint(data_dir, Checkpoint(EPOCH, position, snapshot_v1(verifier)))
    path = checkpoint_path(data_dir)
    path.write_bytes(path.read_bytes().replace(b'"v":2', b'"v":1', 1))  # as version 1 wrote it
    chain_stage = stage(tmp_path)
    chain_stage.load(tmp_path / "var" / "wal", EPOCH)
    assert chain_stage.counters["checkpoint_unusable"] == 0
    out = chain_stage.process([event(agent.next()) for agent in agents], now=0.0)
    assert {e.chain["status"] for e in out if e.chain} == {"ok"}
    chain_stage.checkpoint(EPOCH, position)
    stored = load_checkpoint(data_dir)
    assert isinstance(stored, Checkpoint)
    assert orjson.loads(path.read_bytes())["v"] == 2  # (the checkpoint file's own version)
    assert stored.state["v"] == 3
    again = stage(tmp_path)
    again.load(tmp_path / "var" / "wal", EPOCH)
    assert dumped(again.verifier) == dumped(chain_stage.verifier)
    assert old["agents"]["id"] == stored.state["agents"]["id"]


# --- 100,000 agents ----------------------------------------------------------------------------

AGENTS = 100_000
BOUND = 50_000
BUSY = 20  # agents that keep sending while 100,000 others each send one record
BATCH = 100


def alert_records(events: list[Event]) -> list[dict[str, Any]]:
    return [orjson.loads(e.record_json or b"") for e in events if e.alert]


def test_a_hundred_thousand_agents_stay_within_max_agents(tmp_path: Path) -> None:
    """Records of 100,000 distinct agents through the chain stage with max_agents = 50,000: the
    agents tracked never exceed the bound; every agent forgotten has exactly one alert naming it
    with its last sequence and hash; agents that keep sending are never evicted while the idle
    ones are; and a checkpoint of the full state loads to a stage that gives the same verdicts
    and alerts afterwards."""
    chain_stage = stage(tmp_path, max_agents=BOUND)
    busy = [Agent(f"busy-{n}") for n in range(BUSY)]
    idle: dict[str, Agent] = {}
    alerts: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    for start in range(0, AGENTS, BATCH):
        batch = [Agent(f"agent-{n:06d}") for n in range(start, start + BATCH)]
        idle.update((agent.name, agent) for agent in batch)
        records = [agent.next() for agent in batch]
        if start % 1_000 == 0:
            records += [agent.next() for agent in busy]
        out = chain_stage.process([event(record) for record in records], now=0.0)
        assert len(chain_stage.verifier.agents) <= BOUND
        alerts += alert_records(out)
        statuses.update(e.chain["status"] for e in out if e.chain)
    tracked = chain_stage.verifier.agents
    assert len(tracked) == BOUND
    assert all(agent.name in tracked for agent in busy)
    assert statuses == {"genesis": AGENTS + BUSY, "ok": BUSY * (AGENTS // 1_000 - 1)}
    # Every agent no longer tracked was evicted once, with an alert that says what it was.
    assert {a["status"] for a in alerts} == {"agent_evicted"}
    evicted = Counter(alert["agent"] for alert in alerts)
    assert set(evicted) == set(idle) - set(tracked)
    assert set(evicted.values()) == {1}
    for alert in alerts:
        agent = idle[alert["agent"]]
        assert (alert["last_sequence"], alert["last_hash"]) == (1, agent.last_hash)
    assert chain_stage.counters["agents_evicted"] == len(alerts) == AGENTS + BUSY - BOUND
    assert chain_stage.verifier.counts["agents_evicted"] == len(alerts)
    # The whole state, through the checkpoint file, and on: same verdicts and alerts.
    chain_stage.checkpoint(EPOCH, Position(1, 16))
    restored = stage(tmp_path, max_agents=BOUND)
    restored.load(tmp_path / "var" / "wal", EPOCH)
    assert dumped(restored.verifier) == dumped(chain_stage.verifier)
    evicted_name = next(iter(evicted))
    later = [*(agent.next() for agent in busy), idle[evicted_name].next()]
    later += [idle[name].sent[0] for name in list(tracked)[-3:]]  # resends: duplicates
    later += [Agent(f"later-{n}").next() for n in range(3)]
    first, second = (
        [(e.agent, e.chain, orjson.loads(e.record_json or b"") if e.alert else None) for e in out]
        for out in (
            chain_stage.process([event(r) for r in later], now=1.0),
            restored.process([event(r) for r in later], now=1.0),
        )
    )
    assert first == second
    assert [chain["status"] for _, chain, _ in first if chain] == [
        *["ok"] * BUSY,
        "adopted",
        *["genesis"] * 3,
    ]


def test_the_checkpoint_of_a_hundred_thousand_agents_round_trips(tmp_path: Path) -> None:
    """The chain stage's checkpoint of 100,000 tracked agents (the default bound; some with full
    dedupe windows, gaps and alerts) loads to exactly the same state, which then gives the
    same verdicts and evictions as the original."""
    chain_stage = stage(tmp_path)
    feed_agent = chain_stage.verifier.feed
    agents = [Agent(f"agent-{n:06d}") for n in range(AGENTS)]
    for agent in agents:
        record = agent.next()
        feed_agent(agent.name, record)
    long = agents[::1_000]
    for agent in long:  # 70 more records, one of them lost: a full ring and an open gap
        for n in range(70):
            record = agent.next()
            if n != 50:
                feed_agent(agent.name, record)
    assert len(chain_stage.verifier.agents) == AGENTS
    chain_stage.checkpoint(EPOCH, Position(1, 16))
    restored = stage(tmp_path)
    restored.load(tmp_path / "var" / "wal", EPOCH)
    assert dumped(restored.verifier) == dumped(chain_stage.verifier)
    later = [agent.next() for agent in long]  # ok
    later += [agent.sent[60] for agent in long]  # duplicates
    later += [agent.sent[2] for agent in long]  # regressed
    later += [agent.sent[51] for agent in long]  # late
    later += [Agent(f"later-{n}").next() for n in range(3)]  # each evicts one
    later += [agents[n].next() for n in range(1, 4)]  # adopted: evicted
    found = [
        [outcome(verifier.feed(r["agentId"], copy.deepcopy(r))) for r in later]
        for verifier in (chain_stage.verifier, restored.verifier)
    ]
    assert found[0] == found[1]
    statuses = Counter(
        "ok" if envelope[0] == "ok" else envelope[0]["status"] for envelope, _ in found[0]
    )
    assert statuses == {
        "ok": 100,
        "duplicate": 100,
        "regressed": 100,
        "late": 100,
        "genesis": 3,
        "adopted": 3,
    }
    assert [e["last_hash"] for _, evicted in found[0] for e in evicted][:3] == [
        agents[n].sent[0]["hash"] for n in range(1, 4)
    ]
    assert dumped(restored.verifier) == dumped(chain_stage.verifier)
