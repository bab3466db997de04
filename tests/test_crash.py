"""Crash safety: SIGKILL the daemon under load, again and again; nothing accepted is lost or doubled."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from shipper.buffer.published import recovered
from shipper.buffer.recovery import recover
from shipper.chain import Verifier
from shipper.chain_stage import Checkpoint, load_checkpoint, wal_envelopes
from tests.chains import seed_hash
from tests.conftest import archive_lines, free_port, running_daemon, runtime
from tests.test_cli import daemon_config, write_config

AGENTS = ("crash-a", "crash-b", "crash-c")


class Sender(threading.Thread):
    """Sends numbered records for one agent as fast as the daemon takes them, until it fails."""

    def __init__(self, port: int, agent: str, first: int, chained: ChainedRecords | None = None):
        super().__init__(daemon=True)
        self.port = port
        self.agent = agent
        self.next = first
        self.chained = chained
        self.stop_flag = threading.Event()

    def line(self, n: int) -> bytes:
        if self.chained is not None:
            return self.chained.line(n)
        return orjson.dumps({"agentId": self.agent, "sequence": n, "pad": "p" * 300}) + b"\n"

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                while not self.stop_flag.is_set():
                    batch = b"".join(self.line(n) for n in range(self.next, self.next + 50))
                    sock.sendall(batch)
                    self.next += 50
        except OSError:
            return  # the daemon was killed


class ChainedRecords:
    """One agent's seed-profile chain, built as far as it is asked for."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.lines: list[bytes] = []
        self.prev = ""

    def line(self, n: int) -> bytes:
        """The line of sequence ``n`` (from 1)."""
        while len(self.lines) < n:
            record = {
                "agentId": self.agent,
                "sequence": len(self.lines) + 1,
                "pad": "p" * 200,
                "prevHash": self.prev,
            }
            record["hash"] = self.prev = seed_hash(record)
            self.lines.append(orjson.dumps(record) + b"\n")
        return self.lines[n - 1]


def kill_under_load(
    config: Path,
    root: Path,
    senders: Sequence[Sender],
    pause: float,
    loaded: Callable[[], None] = lambda: None,
) -> None:
    """Start the daemon, let ``senders`` load it (until ``loaded`` returns, then ``pause``
    seconds more), SIGKILL it, and stop the senders (each then knows how far it got)."""
    try:
        with running_daemon(config, root) as daemon:
            for sender in senders:
                sender.start()
            loaded()
            time.sleep(pause)  # let load build up, then kill at a random point
            daemon.kill()
    finally:
        for sender in senders:
            sender.stop_flag.set()
            sender.join(timeout=30)


def wal_records(data_dir: Path) -> set[tuple[str, int]]:
    """(agent, sequence) of every record in the WAL's segment files as they are on disk (what
    the next start's recovery keeps, published yet or not)."""
    found: set[tuple[str, int]] = set()
    wal_dir = data_dir / "wal"
    on_disk = recovered(recover(wal_dir, [], repair=False))
    for _position, raw in wal_envelopes(wal_dir, None, state=on_disk):
        envelope = orjson.loads(raw)
        if envelope["source"]["kind"] != "alert":
            found.add((envelope["agent"], envelope["record"]["sequence"]))
    return found


def archived(root: Path) -> list[tuple[str, int]]:
    """(agent, sequence) of every archived event, in archive order."""
    out = []
    for line in archive_lines(root / "archive"):
        envelope = orjson.loads(line)
        if envelope["source"]["kind"] == "alert":
            continue
        out.append((envelope["agent"], envelope["record"]["sequence"]))
    return out


def _ends_whole(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a complete line."""
    data = path.read_bytes()
    return not data or data.endswith(b"\n")


def test_sigkill_under_load_loses_and_duplicates_nothing_the_wal_accepted(
    tmp_path: Path, processes: bool
) -> None:
    """Killed with SIGKILL five times under load, the daemon still archives every record its WAL
    held at each kill, exactly once and in order per agent (its sink processes, if any, end with
    it)."""
    rng = random.Random(20261123)
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = runtime(processes)
    raw["buffer"] = {"fsync": "batch", "max_bytes": "64MiB", "segment_bytes": "256KiB"}
    config = write_config(tmp_path / "shipper.toml", raw)
    accepted: set[tuple[str, int]] = set()
    sent_up_to = dict.fromkeys(AGENTS, 1)
    for _ in range(5):
        senders = [Sender(port, agent, sent_up_to[agent]) for agent in AGENTS]
        kill_under_load(config, tmp_path, senders, rng.uniform(0.2, 1.0))
        for sender in senders:
            sent_up_to[sender.agent] = sender.next
        accepted |= wal_records(tmp_path / "var")
        (tmp_path / "daemon.log").rename(tmp_path / f"daemon-{len(accepted)}.log")

    with running_daemon(config, tmp_path) as daemon:
        deadline = time.monotonic() + 120
        while not accepted <= set(archived(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.stop() == 0
    torn = [f.name for f in (tmp_path / "archive").glob("*.jsonl") if not _ends_whole(f)]
    assert not torn, f"archive files end in a torn line after a clean stop: {torn}"
    events = archived(tmp_path)
    assert len(accepted) > 1000, "the load never reached the WAL"
    missing = accepted - set(events)
    assert not missing, f"{len(missing)} accepted records never archived"
    duplicated = [key for key, count in Counter(events).items() if count > 1]
    assert not duplicated, f"{len(duplicated)} records archived twice, e.g. {duplicated[:3]}"
    for agent in AGENTS:
        sequences = [sequence for who, sequence in events if who == agent]
        assert sequences == sorted(sequences)
        assert max(sequences) < sent_up_to[agent]


def test_sigkill_mid_chain_gives_no_false_genesis_gap_or_duplicate(tmp_path: Path) -> None:
    """Chained agents that resend their last records after each SIGKILL of the daemon get one
    archived copy of each record, all verified ok after one genesis: the checkpoint and the WAL
    replay restore the chain state, and the resends are removed as duplicates."""
    rng = random.Random(5)
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["buffer"] = {"fsync": "batch", "max_bytes": "64MiB", "segment_bytes": "256KiB"}
    raw["chain"] = {"checkpoint_interval": "300ms"}  # kills land before and after checkpoints
    config = write_config(tmp_path / "shipper.toml", raw)
    records = {agent: ChainedRecords(agent) for agent in AGENTS}
    resume = dict.fromkeys(AGENTS, 1)
    resent = 0
    for _ in range(4):
        senders = [Sender(port, a, resume[a], records[a]) for a in AGENTS]
        kill_under_load(config, tmp_path, senders, rng.uniform(0.3, 1.2))
        held = wal_records(tmp_path / "var")
        for agent in AGENTS:
            # An agent that is not told what arrived resends its recent tail (at-least-once);
            # the WAL holds a prefix of what it sent, so resending from there leaves no hole.
            last = max((n for who, n in held if who == agent), default=resume[agent] - 1)
            resume[agent] = max(1, last - 40)
            resent += last - resume[agent] + 1
        (tmp_path / "daemon.log").rename(tmp_path / f"daemon-{rng.random()}.log")

    with running_daemon(config, tmp_path) as daemon:
        final = {agent: resume[agent] + 99 for agent in AGENTS}  # the resend and a little more
        for agent in AGENTS:
            lines = [records[agent].line(n) for n in range(resume[agent], final[agent] + 1)]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"".join(lines))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
            max((n for who, n in archived(tmp_path) if who == agent), default=0) < final[agent]
            for agent in AGENTS
        ):
            time.sleep(0.1)
        assert daemon.stop() == 0
    assert resent > 0
    envelopes = [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]
    alerts = [e["record"] for e in envelopes if "chain" not in e]
    assert not alerts, f"chain alerts after kills: {alerts[:3]}"
    for agent in AGENTS:
        mine = [e for e in envelopes if e["agent"] == agent]
        assert [e["record"]["sequence"] for e in mine] == list(range(1, final[agent] + 1))
        assert [e["chain"]["status"] for e in mine] == ["genesis"] + ["ok"] * (final[agent] - 1)
    # Counted once each, through every kill: what the WAL held was replayed, never recounted.
    stored = load_checkpoint(tmp_path / "var")
    assert isinstance(stored, Checkpoint)
    restored = Verifier.restore(stored.state)
    for agent in AGENTS:
        counts = restored.agents[agent].counts
        assert (counts["genesis"], counts["ok"]) == (1, final[agent] - 1)
