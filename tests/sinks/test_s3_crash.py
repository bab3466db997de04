"""Crash safety of the ``s3`` sink: SIGKILL the daemon while it uploads, again and again; every
record the WAL accepted ends up in the archive once, and the manifest chain stays whole."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.conftest import free_port, running_daemon
from tests.s3archive import BucketMirror, agent_events, chain_problems, data_objects, sink_table
from tests.s3server import S3Server
from tests.test_cli import daemon_config, write_config
from tests.test_crash import AGENTS, Sender, kill_under_load, wal_records


class PacedSender(Sender):
    """Sends its agent's numbered records, 10 every 10 ms, until stopped or the daemon dies."""

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                while not self.stop_flag.wait(0.01):
                    sock.sendall(b"".join(self.line(n) for n in range(self.next, self.next + 10)))
                    self.next += 10
        except OSError:
            return  # the daemon was killed


def uploading(mirror: BucketMirror) -> Callable[[], None]:
    """Returns once the sink has stored a few more objects and entries than when called."""

    def wait() -> None:
        before = len(mirror.refresh())
        deadline = time.monotonic() + 30
        while len(mirror.refresh()) < before + 6:
            assert time.monotonic() < deadline, "the sink stored nothing"
            time.sleep(0.02)

    return wait


def test_sigkill_mid_upload_loses_and_doubles_nothing(tmp_path: Path, s3_server: S3Server) -> None:
    """Killed with SIGKILL three times while its s3 sink uploads small batches under load, the
    daemon still archives every record its WAL held at each kill, exactly once, in objects each
    named by one entry of a manifest chain without holes, whose WAL ranges follow each other."""
    rng = random.Random(20261202)
    bucket = f"crash-{uuid.uuid4().hex[:16]}"
    mirror = BucketMirror(s3_server, bucket)
    mirror.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["sinks"] = {
        "s3": sink_table(s3_server, bucket, batch={"max_events": 200, "timeout": "20ms"})
    }
    raw["buffer"] = {"fsync": "batch", "max_bytes": "64MiB", "segment_bytes": "256KiB"}
    config = write_config(tmp_path / "shipper.toml", raw)
    accepted: set[tuple[str, int]] = set()
    for kill in range(3):
        # Each agent goes on after the last record the WAL holds (a record sent twice would be
        # two events: the archive could not tell them apart).
        senders = [
            PacedSender(port, agent, 1 + max((n for a, n in accepted if a == agent), default=0))
            for agent in AGENTS
        ]
        kill_under_load(config, tmp_path, senders, rng.uniform(0.0, 0.5), uploading(mirror))
        accepted |= wal_records(tmp_path / "var")
        accepted |= set(agent_events(data_objects(mirror.refresh())))
        (tmp_path / "daemon.log").rename(tmp_path / f"daemon-{kill}.log")
    stored_at_kills = dict(mirror.objects)

    with running_daemon(config, tmp_path) as daemon:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if accepted <= set(agent_events(data_objects(mirror.refresh()))):
                break
            time.sleep(0.1)
        assert daemon.stop() == 0
    stored = mirror.refresh()
    assert len(accepted) > 1000, "the load never reached the WAL"
    assert len(stored_at_kills) > 20, "the kills came before the uploads"
    found = agent_events(data_objects(stored))
    missing = accepted - set(found)
    assert not missing, f"{len(missing)} accepted records never archived"
    doubled = [record for record, count in found.items() if count > 1]
    assert not doubled, f"{len(doubled)} records archived twice, e.g. {doubled[:3]}"
    assert chain_problems(stored) == []
