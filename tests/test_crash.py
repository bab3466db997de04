"""Crash safety: SIGKILL the daemon under load, again and again; nothing accepted is lost or doubled."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from shipper.buffer.record import Record, scan
from shipper.buffer.segment import SEGMENT_HEADER_SIZE
from tests.conftest import archive_lines, free_port
from tests.test_cli import daemon_config, start_daemon, stop, wait_ready, write_config

AGENTS = ("crash-a", "crash-b", "crash-c")


class Sender(threading.Thread):
    """Sends numbered records for one agent as fast as the daemon takes them, until it fails."""

    def __init__(self, port: int, agent: str, first: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.agent = agent
        self.next = first
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                while not self.stop_flag.is_set():
                    batch = b"".join(
                        orjson.dumps({"agentId": self.agent, "sequence": n, "pad": "p" * 300})
                        + b"\n"
                        for n in range(self.next, self.next + 50)
                    )
                    sock.sendall(batch)
                    self.next += 50
        except OSError:
            return  # the daemon was killed


def wal_records(data_dir: Path) -> set[tuple[str, int]]:
    """(agent, sequence) of every record in the WAL's segment files as they are on disk."""
    found: set[tuple[str, int]] = set()
    for segment in sorted((data_dir / "wal").glob("*.seg")):
        for item in scan(segment.read_bytes(), SEGMENT_HEADER_SIZE):
            if isinstance(item, Record):
                envelope = orjson.loads(item.payload.partition(b"\0")[2])
                found.add((envelope["agent"], envelope["record"]["sequence"]))
    return found


def archived(root: Path) -> list[tuple[str, int]]:
    """(agent, sequence) of every archived event, in archive order."""
    out = []
    for line in archive_lines(root / "archive"):
        envelope = orjson.loads(line)
        out.append((envelope["agent"], envelope["record"]["sequence"]))
    return out


def _ends_whole(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a complete line."""
    data = path.read_bytes()
    return not data or data.endswith(b"\n")


def test_sigkill_under_load_loses_and_duplicates_nothing_the_wal_accepted(tmp_path: Path) -> None:
    """Killed with SIGKILL five times under load, the daemon still archives every record its WAL
    held at each kill, exactly once and in order per agent."""
    rng = random.Random(20261123)
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["buffer"] = {"fsync": "batch", "max_bytes": "64MiB", "segment_bytes": "256KiB"}
    config = write_config(tmp_path / "shipper.toml", raw)
    accepted: set[tuple[str, int]] = set()
    sent_up_to = dict.fromkeys(AGENTS, 1)
    for _ in range(5):
        process = start_daemon(config, tmp_path)
        try:
            wait_ready(process, tmp_path)
            senders = [Sender(port, agent, sent_up_to[agent]) for agent in AGENTS]
            for sender in senders:
                sender.start()
            time.sleep(rng.uniform(0.2, 1.0))  # let load build up, then kill at a random point
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:  # pragma: no cover
                process.kill()
                process.wait()
        for sender in senders:
            sender.stop_flag.set()
            sender.join(timeout=30)
            sent_up_to[sender.agent] = sender.next
        accepted |= wal_records(tmp_path / "var")
        (tmp_path / "daemon.log").rename(tmp_path / f"daemon-{len(accepted)}.log")

    process = start_daemon(config, tmp_path)
    try:
        wait_ready(process, tmp_path)
        deadline = time.monotonic() + 120
        while not accepted <= set(archived(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stop(process) == 0
    finally:
        if process.poll() is None:  # pragma: no cover
            process.kill()
            process.wait()
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
