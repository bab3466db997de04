"""The ``s3`` sink against a real S3 server (SeaweedFS): locked objects, sealed manifests,
retention classes, exactly once across retries and restarts."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.archive.manifest import entry_hash
from shipper.chain import SEED
from shipper.config import parse_config
from shipper.errors import UnsafeDestination
from shipper.shutdown import Shutdown, run_daemon
from tests.s3archive import data_objects, manifests, new_bucket, read_bucket, sink_table
from tests.s3server import S3Server


def chained(agent: str, first: int, count: int) -> list[bytes]:
    """``count`` records of ``agent``'s seed chain from sequence ``first`` (from genesis)."""
    records: list[bytes] = []
    prev = ""
    for sequence in range(1, first + count):
        record: dict[str, Any] = {
            "agentId": agent,
            "sequence": sequence,
            "action": "db.query",
            "prevHash": prev,
        }
        canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        record["hash"] = SEED.digest(canonical)
        prev = record["hash"]
        if sequence >= first:
            records.append(orjson.dumps(record) + b"\n")
    return records


def daemon_config(tmp_path: Path, sinks: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "var"),
        "shutdown_timeout": "10s",
        "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
        "sinks": sinks,
    }


async def send_and_stop(raw: dict[str, Any], lines: list[bytes], until: Any) -> None:
    """Run a daemon from ``raw``, send ``lines``, wait for ``until()``, stop it."""
    config = parse_config(raw)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        address = bound["agents"][0]
        async with await trio.open_tcp_stream(address.host, address.port) as stream:
            await stream.send_all(b"".join(lines))
        await until()
        shutdown.request("test")


def events_of(objects: dict[str, Any]) -> list[dict[str, Any]]:
    out = [orjson.loads(line) for stored in objects.values() for line in stored.lines]
    return sorted(out, key=lambda e: tuple(map(int, e["id"].split("-"))))


async def test_objects_are_locked_sealed_and_chained(tmp_path: Path, s3_server: S3Server) -> None:
    """Every event lands once in a COMPLIANCE-locked object retained for the class's days; each
    object has a manifest entry with its sha256, count and range, chained to the one before,
    and each head is witnessed by an archive_seal event."""
    bucket = await new_bucket(s3_server)
    raw = daemon_config(tmp_path, {"s3": sink_table(s3_server, bucket, prefix="audit")})
    lines = chained("agent-a", 1, 50)
    before = datetime.now(UTC)

    await send_and_stop(raw, lines[:25], archived(s3_server, bucket, "audit/", 25))
    await send_and_stop(raw, lines[25:], archived(s3_server, bucket, "audit/", 50))
    stored = await read_bucket(s3_server, bucket)
    objects = data_objects(stored, "audit/")
    events = events_of(objects)
    records = [e for e in events if e.get("agent") == "agent-a"]
    assert [e["record"]["sequence"] for e in records] == list(range(1, 51))
    assert [e["chain"]["status"] for e in records] == ["genesis"] + ["ok"] * 49
    entries = manifests(stored, "audit/")
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    assert entries[0].prev is None
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev == entry_hash(stored[f"audit/manifests/{previous.seq:020d}.json"].data)
    assert {entry.key for entry in entries} == set(objects)
    for entry in entries:
        obj = objects[entry.key]
        assert hashlib.sha256(obj.data).hexdigest() == entry.sha256
        assert entry.events == len(obj.lines)
        assert orjson.loads(obj.lines[0])["id"] == entry.first
        assert orjson.loads(obj.lines[-1])["id"] == entry.last
        assert obj.mode == "COMPLIANCE"
        assert obj.retain_until is not None
        assert before + timedelta(days=1) - timedelta(minutes=1) <= obj.retain_until
        assert obj.retain_until <= datetime.now(UTC) + timedelta(days=1, minutes=1)
        assert entry.retention.mode == "COMPLIANCE"
        assert entry.retention.period == "1d"
    assert objects[entries[0].key].key.startswith(f"audit/year={before:%Y}/month={before:%m}/")
    seals = [e["record"] for e in events if e["record"].get("action") == "shipper.archive_seal"]
    heads = {
        entry_hash(stored[f"audit/manifests/{entry.seq:020d}.json"].data): entry.seq
        for entry in entries
    }
    assert seals
    assert all(heads[seal["head"]] == seal["seq"] for seal in seals)


def archived(server: S3Server, bucket: str, prefix: str, count: int) -> Any:
    """Waits until the archive under ``prefix`` holds ``count`` agents' events."""

    async def until() -> None:
        with trio.fail_after(30):
            while True:
                stored = data_objects(await read_bucket(server, bucket), prefix)
                if sum(1 for e in events_of(stored) if e.get("agent")) >= count:
                    return
                await trio.sleep(0.1)

    return until


async def test_the_daemon_refuses_to_start_against_a_bucket_without_object_lock(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """With a lock mode configured and a bucket without Object Lock, the daemon does not
    start, and says why."""
    bucket = await new_bucket(s3_server, locked=False)
    config = parse_config(daemon_config(tmp_path, {"s3": sink_table(s3_server, bucket)}))
    with pytest.RaisesGroup(
        pytest.RaisesExc(UnsafeDestination, match="no Object Lock"), flatten_subgroups=True
    ):
        await run_daemon(config, Shutdown())
