"""The version 2 chain snapshot and checkpoint, with 100,000 agents."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.buffer.segment import Position
from shipper.chain import Verdict, Verifier, as_verdict
from shipper.checkpoint import (
    ChainStage,
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    store_checkpoint,
)
from shipper.config import parse_config
from shipper.events import Event
from tests.conftest import file_sink_config
from tests.test_chain import observable

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
    """All of what ``feed`` returned that the chain stage uses."""
    return observable(result)


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


# --- snapshots and checkpoints -----------------------------------------------------------------


def a_mixed_state() -> tuple[Verifier, list[Agent]]:
    """A verifier whose agents have every kind of state: gaps, forks, counts, alerts."""
    agents = [Agent(f"agent-{n}") for n in range(6)]
    verifier = Verifier()
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


def test_a_version_2_snapshot_gives_the_same_verdicts_and_state() -> None:
    """A version 2 snapshot, through JSON, restores a verifier that gives the same verdicts
    and state as the one it was taken of."""
    verifier, agents = a_mixed_state()
    snapshot = orjson.loads(dumped(verifier))
    assert snapshot["v"] == 2
    restored = Verifier.restore(snapshot)
    assert dumped(restored) == dumped(verifier)
    records = continuation(agents)
    mine = [verifier.feed(r["agentId"], copy.deepcopy(r)) for r in records]
    theirs = [restored.feed(r["agentId"], copy.deepcopy(r)) for r in records]
    assert list(map(outcome, mine)) == list(map(outcome, theirs))
    assert {as_verdict(m).status for m in mine} == {"ok", "duplicate", "late", "genesis"}
    assert dumped(restored) == dumped(verifier)


def test_a_version_1_snapshot_still_restores() -> None:
    """A version 1 snapshot (an upgrade) restores to the same state and verdicts."""
    verifier, agents = a_mixed_state()
    v1 = orjson.loads(orjson.dumps(snapshot_v1(verifier)))
    old = Verifier.restore(v1)
    assert old.counts == verifier.counts
    records = continuation(agents)
    assert [feed(old, r).envelope() for r in records] == [
        feed(verifier, r).envelope() for r in records
    ]
    assert dumped(old) == dumped(verifier)


def test_a_snapshot_restores_under_another_dedupe_window() -> None:
    """Restored with a smaller window, a snapshot keeps the most recent hashes that fit; with a
    larger one, all of them: resends among them are duplicates, older ones regressed."""
    agent = Agent("a")
    verifier = Verifier(window=8)
    for _ in range(20):
        feed(verifier, agent.next())
    snapshot = dumped(verifier)
    smaller = Verifier.restore(orjson.loads(snapshot), window=4)
    assert [len(ring) for ring in orjson.loads(dumped(smaller))["agents"]["ring"]] == [2 * 4]
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
        pytest.param(damage("ring", lambda r: [[None, "x"] * 64, *r[1:]]), id="ring-slot"),
        pytest.param(damage("ring", lambda r: [[1, "x", 2], *r[1:]]), id="ring-odd"),
        pytest.param(damage("gaps", lambda g: [[[1, 2, 3, None]], *g[1:]]), id="gap"),
        pytest.param(damage("gaps", lambda g: [[[1, 2]], *g[1:]]), id="gap-short"),
        pytest.param(damage("others", lambda o: [{"gap": "1"}, *o[1:]]), id="count"),
        pytest.param(damage("last_alert", lambda a: [[], *a[1:]]), id="alert"),
        pytest.param(lambda s: s["agents"].pop("ok_base"), id="no-column"),
        pytest.param(lambda s: s.update(agents=[]), id="agents-a-list"),
    ],
)
def test_a_damaged_version_2_snapshot_is_refused(change: Any) -> None:
    """A version 2 snapshot with a value of the wrong type or shape is refused as damaged."""
    snapshot = orjson.loads(dumped(a_mixed_state()[0]))
    change(snapshot)
    with pytest.raises(ValueError, match="damaged"):
        Verifier.restore(snapshot)


def test_a_version_1_checkpoint_loads_and_the_next_is_version_2(tmp_path: Path) -> None:
    """After an upgrade, the chain stage loads the version 1 checkpoint (no replay of the whole
    WAL, no false genesis) and writes version 2 from then on, which loads to the same state."""
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
    assert orjson.loads(path.read_bytes())["v"] == stored.state["v"] == 2
    again = stage(tmp_path)
    again.load(tmp_path / "var" / "wal", EPOCH)
    assert dumped(again.verifier) == dumped(chain_stage.verifier)
    assert old["agents"]["id"] == stored.state["agents"]["id"]


# --- 100,000 agents ----------------------------------------------------------------------------

AGENTS = 100_000


def test_the_checkpoint_of_a_hundred_thousand_agents_round_trips(tmp_path: Path) -> None:
    """The chain stage's checkpoint of 100,000 agents (some with full dedupe windows, gaps and
    alerts) loads to exactly the same state, which then gives the same verdicts as the
    original."""
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
    later += [Agent(f"later-{n}").next() for n in range(3)]
    later += [agents[n].next() for n in range(1, 4)]
    found = [
        [outcome(verifier.feed(r["agentId"], copy.deepcopy(r))) for r in later]
        for verifier in (chain_stage.verifier, restored.verifier)
    ]
    assert found[0] == found[1]
    statuses = Counter(seen[0] if seen[0] == "ok" else seen[0]["status"] for seen in found[0])
    assert statuses == {"ok": 103, "duplicate": 100, "regressed": 100, "late": 100, "genesis": 3}
    assert dumped(restored.verifier) == dumped(chain_stage.verifier)
