"""The ``s3`` sink through what goes wrong with a real S3 server (SeaweedFS): the server down for
a while, batches cut short, objects stored without their entry, a key taken by other bytes,
answers lost on the way back, entries hidden by delete markers. Each event ends up stored once,
under a whole manifest chain."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.archive.manifest import entry_hash
from shipper.archive.store import S3Store
from shipper.archive.verify import verify_s3
from shipper.buffer.wal import Wal
from shipper.chain import SEED
from shipper.config import parse_config
from shipper.events import Event, entry
from shipper.s3 import S3Url, open_client
from shipper.sinks.base import Sink, SinkContext
from shipper.sinks.driver import SinkDriver
from shipper.sinks.s3 import S3Sink
from shipper.topology import Topology
from tests.archive.s3archive import bomb
from tests.chains import chain_lines
from tests.conftest import LogCapture, archive_lines, wait_until
from tests.s3archive import (
    Stored,
    agent_events,
    chain_problems,
    data_objects,
    manifests,
    new_bucket,
    read_bucket,
    settings,
    sink_table,
    sync_client,
)
from tests.s3server import S3Server, weed_mini
from tests.sinks.contract import SINK, SOURCE, open_wal, reopen
from tests.sinks.memory import FAST
from tests.sinks.test_s3 import daemon_config
from tests.tcpproxy import Proxy, proxy_to


async def test_server_down_for_a_while_then_everything_arrives_once(tmp_path: Path) -> None:
    """With the S3 server stopped, events wait in the WAL (the sink unhealthy, its lag growing)
    while the daemon goes on ingesting and a file sink beside it goes on archiving; started again
    on the same data, the server gets every event once, under a whole manifest chain."""
    with weed_mini(tmp_path / "s3", kill=True) as weed:
        server = weed.server
        bucket = await new_bucket(server)
        raw = daemon_config(
            tmp_path,
            {
                "s3": sink_table(server, bucket),
                "file": {"type": "file", "path": str(tmp_path / "archive")},
            },
        )
        raw["runtime"] = {"sink_processes": False}  # its sink is tuned here: in this process
        lines = chain_lines(100, "agent-a")
        topology = Topology(parse_config(raw))
        s3, file = (slot.driver for slot in topology.sinks)
        assert s3 is not None
        assert file is not None
        s3.sink.retry_policy = FAST
        async with trio.open_nursery() as nursery:
            address = (await nursery.start(topology.run))["agents"][0]
            async with await trio.open_tcp_stream(address.host, address.port) as stream:
                await stream.send_all(b"".join(lines[:50]))
                await wait_until(lambda: s3.counters["events"] >= 50)

                weed.terminate()
                await wait_until(lambda: not weed.answers())
                await stream.send_all(b"".join(lines[50:]))
                await wait_until(lambda: len(agent_lines(tmp_path / "archive")) == 100)
                await wait_until(lambda: s3.health().status in ("degraded", "failing"))
                assert topology.wal.lag_bytes("s3") > 0
                assert file.health().status == "ok"

                await trio.to_thread.run_sync(weed.stop)
                await trio.to_thread.run_sync(weed.start)
                await wait_until(lambda: topology.wal.lag_bytes("s3") == 0, limit=60)
                assert s3.health().status == "ok"
                assert s3.counters["retries"] > 0
                topology.stop()
        stored = await read_bucket(server, bucket)
    assert chain_problems(stored) == []
    found = agent_events(data_objects(stored))
    assert sorted(found) == [("agent-a", n) for n in range(1, 101)]
    assert set(found.values()) == {1}


def agent_lines(path: Path) -> list[bytes]:
    """The lines of the file sink's archive under ``path`` that hold an agent's event."""
    return [line for line in archive_lines(path) if b'"kind":"alert"' not in line]


# --- a sink driven over a WAL of its own, reaching the session's server through a proxy -------


#: Two retention classes: records with ``"kind": "phi"`` in ``hipaa``, the others in
#: ``default``; a batch of both becomes two objects.
CLASSES: dict[str, Any] = {
    "object_lock": {"mode": "COMPLIANCE"},
    "retention": {
        "classes": {"default": "1d", "hipaa": "2d"},
        "rules": [{"class": "hipaa", "field": "kind", "equals": "phi"}],
    },
}


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[Proxy]:
    """A proxy to the session's S3 server, whose network the test can cut."""
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    with proxy_to(host, int(port)) as running:
        yield running


def s3_sink(
    server: S3Server,
    bucket: str,
    proxy: Proxy,
    emit: Callable[[Event], bool] | None = None,
    max_events: int = 10_000,
) -> Sink:
    """An s3 sink on ``bucket`` through ``proxy``, with two retention classes (``CLASSES``),
    batches of ``max_events`` cut at 10 ms, retrying fast; ``emit``: where its seals go."""
    table = sink_table(server, bucket, endpoint=proxy.url, **CLASSES)
    table["batch"] = {"timeout": "10ms", "max_events": max_events}
    source = {"type": "json_tls", "address": "127.0.0.1:0"}
    config = parse_config({"sources": {"a": source}, "sinks": {SINK: table}}).sinks[SINK]
    sink = config.build(SinkContext(SEED, emit or (lambda event: True)))
    sink.retry_policy = FAST
    return sink


def mixed(first: int, count: int) -> list[bytes]:
    """WAL entries of records ``n`` = first, first+1, ...: even ones ``"kind": "phi"`` (class
    hipaa), odd ones not (class default)."""
    return [
        entry(
            Event(
                "2026-11-23T00:00:00.000000Z",
                SOURCE,
                "a",
                orjson.dumps({"n": n, "kind": "phi" if n % 2 == 0 else "ops"}),
            )
        )
        for n in range(first, first + count)
    ]


def stored_numbers(stored: dict[str, Stored]) -> list[int]:
    """The ``n`` of every event in the data objects of ``stored``, sorted (doubles kept)."""
    objects = data_objects(stored)
    return sorted(
        orjson.loads(line)["record"]["n"] for obj in objects.values() for line in obj.lines
    )


async def drain(wal: Wal, sink: Sink, tmp_path: Path) -> SinkDriver:
    """Start again on ``wal`` (as the next start of the daemon does) and deliver all of it."""
    wal = await reopen(wal)
    await wal.close()
    driver = SinkDriver(sink, tmp_path)
    await driver.run(wal.readers[SINK], wal.epoch)
    assert wal.lag_bytes(wal.readers[SINK]) == 0
    return driver


@pytest.mark.parametrize("max_events", [10_000, 4], ids=["same batch", "smaller batches"])
async def test_batch_cut_short_is_completed_after_the_restart_once(
    tmp_path: Path, s3_server: S3Server, proxy: Proxy, max_events: int
) -> None:
    """A sink that dies after storing and sealing the first object of a two-object batch stores,
    once restarted (with the same batches or smaller ones), the rest of it and nothing twice,
    under entries that chain."""
    bucket = await new_bucket(s3_server)
    wal = open_wal(tmp_path / "wal")
    await wal.append(mixed(1, 20))
    with trio.CancelScope() as scope:

        def die_once_sealed(event: Event) -> bool:
            scope.cancel()  # the first seal: right after the first object's entry is stored
            return True

        driver = SinkDriver(s3_sink(s3_server, bucket, proxy, die_once_sealed), tmp_path)
        await driver.run(wal.readers[SINK], wal.epoch)
    assert scope.cancelled_caught
    stored = await read_bucket(s3_server, bucket)
    (cut_short,) = manifests(stored)
    assert (cut_short.after, cut_short.covered) == (None, None)
    assert stored_numbers(stored) == list(range(1, 21, 2))  # the default class's object

    await drain(wal, s3_sink(s3_server, bucket, proxy, max_events=max_events), tmp_path)
    stored = await read_bucket(s3_server, bucket)
    assert chain_problems(stored) == []
    assert stored_numbers(stored) == list(range(1, 21))
    assert manifests(stored)[-1].covered == id_of(stored, 20)  # the WAL's last


def id_of(stored: dict[str, Stored], n: int) -> str:
    """The id of the event whose record has ``n`` in the data objects of ``stored``."""
    for obj in data_objects(stored).values():
        for line in obj.lines:
            envelope = orjson.loads(line)
            if envelope["record"]["n"] == n:
                return str(envelope["id"])
    raise AssertionError(f"no event {n} is stored")


@pytest.mark.parametrize("max_events", [10_000, 4], ids=["same batch", "smaller batches"])
async def test_object_stored_without_its_entry_is_sealed_at_the_next_start(
    tmp_path: Path, s3_server: S3Server, proxy: Proxy, max_events: int, logs: LogCapture
) -> None:
    """A crash between an object's PUT and its entry's leaves the object unsealed; the next
    start finds its key taken (412), reads it back, seals it, and stores nothing twice."""
    bucket = await new_bucket(s3_server)
    wal = open_wal(tmp_path / "wal")
    await wal.append(mixed(1, 20))
    proxy.cut_before(rb"PUT \S*/%s/manifests/" % bucket.encode())
    driver = SinkDriver(s3_sink(s3_server, bucket, proxy), tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run, wal.readers[SINK], wal.epoch)
        await wait_until(lambda: driver.counters["retries"] >= 2)
        nursery.cancel_scope.cancel()  # the crash, while the entry cannot be stored
    stored = await read_bucket(s3_server, bucket)
    assert manifests(stored) == []
    (unsealed,) = data_objects(stored)

    proxy.restore()
    await drain(wal, s3_sink(s3_server, bucket, proxy, max_events=max_events), tmp_path)
    stored = await read_bucket(s3_server, bucket)
    assert chain_problems(stored) == []
    assert manifests(stored)[0].key == unsealed
    assert stored_numbers(stored) == list(range(1, 21))
    assert [e["key"] for e in logs.entries("sink_s3_already_stored")] == [unsealed]


@pytest.mark.parametrize(
    ("lost", "puts"), [(4, rb"\S+"), (1, rb"\S+-hipaa\.jsonl\.gz")], ids=["every PUT", "the second"]
)
async def test_a_retried_put_whose_answer_was_lost_creates_no_second_object(
    tmp_path: Path, s3_server: S3Server, proxy: Proxy, logs: LogCapture, lost: int, puts: bytes
) -> None:
    """When the answer to each PUT (objects and entries), or to the second object's only, is
    lost, the retries find the keys taken (412) and adopt what the lost tries stored: one object
    per group, one entry each, every head witnessed by a seal, and no false alarm of another
    writer."""
    bucket = await new_bucket(s3_server)
    wal = open_wal(tmp_path / "wal")
    await wal.append(mixed(1, 20))
    await wal.close()
    proxy.lose_answers(rb"PUT \S*/%s/%s" % (bucket.encode(), puts))
    seals: list[Event] = []

    def witness(event: Event) -> bool:
        seals.append(event)
        return True

    driver = SinkDriver(s3_sink(s3_server, bucket, proxy, witness), tmp_path)
    await driver.run(wal.readers[SINK], wal.epoch)
    stored = await read_bucket(s3_server, bucket)
    assert len(proxy.lost) == lost  # of two objects (one per class) and their two entries
    assert driver.counters["retries"] >= lost
    assert chain_problems(stored) == []
    assert len(data_objects(stored)) == 2
    assert len(manifests(stored)) == 2
    assert stored_numbers(stored) == list(range(1, 21))
    assert {e["key"] for e in logs.entries("sink_s3_already_stored")} == set(data_objects(stored))
    heads = {entry_hash(stored[f"manifests/{seq:020d}.json"].data) for seq in (1, 2)}
    assert {orjson.loads(seal.record_json or b"")["head"] for seal in seals} == heads
    failures = [e["error"] for e in logs.entries("sink_write_failed")]
    assert not [error for error in failures if "another writer" in error]


@pytest.mark.parametrize("forgery", ["other events", "a decompression bomb"])
async def test_a_locked_key_holding_other_bytes_dead_letters_the_batch_and_alerts(
    tmp_path: Path, s3_server: S3Server, proxy: Proxy, forgery: str
) -> None:
    """A key the sink is about to use, taken beforehand by a locked object of other bytes
    (other events, or a bomb the sink stops reading back at its limit): the batch goes to the
    dead-letter area with a reason naming the key, a delivery alert reaches the file sink
    beside it, and the sink goes on with the next batches."""
    bucket = await new_bucket(s3_server)
    archive = tmp_path / "archive"
    table = sink_table(s3_server, bucket, endpoint=proxy.url, key_prefix="events/")
    raw = daemon_config(tmp_path, {"s3": table, "file": {"type": "file", "path": str(archive)}})
    raw["runtime"] = {"sink_processes": False}  # its sink is tuned here: in this process
    lines = chain_lines(20, "agent-a")
    proxy.cut()  # the sink waits, its first batch in hand, until the key is taken
    topology = Topology(parse_config(raw))
    driver = topology.sinks[0].driver
    assert driver is not None
    sink = driver.sink
    sink.retry_policy = FAST
    assert isinstance(sink, S3Sink)
    sink._read_limit = 1 << 20  # (the test's bomb: 8 MiB)
    async with trio.open_nursery() as nursery:
        address = (await nursery.start(topology.run))["agents"][0]
        async with await trio.open_tcp_stream(address.host, address.port) as stream:
            await stream.send_all(b"".join(lines[:10]))
            await wait_until(lambda: len(agent_lines(archive)) == 10)
            first = orjson.loads(agent_lines(archive)[0])["id"]
            key = f"events/{topology.wal.epoch}-{first}-default.jsonl.gz"
            forged = gzip.compress(orjson.dumps({"v": 1, "id": first, "forged": True}) + b"\n")
            if forgery == "a decompression bomb":
                forged = bomb("gzip", 8 << 20)
            client = sync_client(s3_server)
            await trio.to_thread.run_sync(
                lambda: client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=forged,
                    ObjectLockMode="COMPLIANCE",
                    ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
                )
            )
            proxy.restore()
            letters = tmp_path / "var" / "dead_letter" / "s3"
            await wait_until(lambda: letters.is_dir() and any(letters.glob("*.jsonl")))
            await stream.send_all(b"".join(lines[10:]))
            await wait_until(lambda: len(agent_lines(archive)) == 20)
            await wait_until(lambda: topology.wal.lag_bytes("s3") == 0)
            topology.stop()

    refused = [
        orjson.loads(line) for f in letters.glob("*.jsonl") for line in f.read_bytes().splitlines()
    ]
    assert refused[0]["envelope"]["id"] == first
    assert all(key in letter["reason"] for letter in refused)
    if forgery == "a decompression bomb":
        assert f"more than {1 << 20:,} bytes decompressed" in refused[0]["reason"]
    alerts = [
        orjson.loads(line)["record"]
        for line in archive_lines(archive)
        if b'"action":"shipper.delivery_alert"' in line
    ]
    assert [(alert["sink"], alert["events"]) for alert in alerts] == [("s3", len(refused))]
    assert key in alerts[0]["reason"]
    stored = await read_bucket(s3_server, bucket)
    assert stored.pop(key).data == forged  # locked: still the other bytes
    assert chain_problems(stored) == []
    found = agent_events(data_objects(stored))
    dead = {(e["envelope"]["agent"], e["envelope"]["record"]["sequence"]) for e in refused}
    assert sorted(found) == sorted({("agent-a", n) for n in range(1, 21)} - dead)
    assert set(found.values()) == {1}
    assert ("agent-a", 20) in found  # the sink went on after the refused batch


@pytest.mark.parametrize("hide", ["newest", "middle", "rewritten"])
async def test_entries_hidden_by_delete_markers_stop_the_sink_until_they_are_restored(
    tmp_path: Path, s3_server: S3Server, proxy: Proxy, logs: LogCapture, hide: str
) -> None:
    """Entries hidden by plain DELETEs (delete markers over their locked versions: the newest two
    with their objects, or one in the middle of the chain, where the resume search stops), or the
    newest entry stored again as a second version, make a restarted sink refuse to write: no
    second chain, no cursor move, no dead letter, one alert naming the key however often it
    retries; once the markers (or the second version) are deleted it goes on by itself, and the
    archive verifies intact."""
    bucket = await new_bucket(s3_server)
    wal = open_wal(tmp_path / "wal")
    await wal.append(mixed(1, 20))
    driver = SinkDriver(s3_sink(s3_server, bucket, proxy, max_events=4), tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run, wal.readers[SINK], wal.epoch)
        await wait_until(lambda: wal.lag_bytes(SINK) == 0)
        nursery.cancel_scope.cancel()
    entries = manifests(await read_bucket(s3_server, bucket))
    assert len(entries) == 10  # five batches of two classes
    if hide == "newest":
        hidden = [f"manifests/{seq:020d}.json" for seq in (9, 10)]
        hidden += [entries[8].key, entries[9].key]
    else:
        hidden = [f"manifests/{4 if hide == 'middle' else 10:020d}.json"]
    client = sync_client(s3_server)

    def versions() -> set[tuple[str, str]]:
        listing = client.list_object_versions(Bucket=bucket)
        return {(item["Key"], item["VersionId"]) for item in listing.get("Versions", [])}

    if hide == "rewritten":  # the same bytes again, without If-None-Match: a second version
        (key,) = hidden
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        restore = {key: client.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]}
    else:
        restore = {key: client.delete_object(Bucket=bucket, Key=key)["VersionId"] for key in hidden}
    before = versions()

    wal = await reopen(wal)
    await wal.append(mixed(21, 8))
    alerts: list[dict[str, Any]] = []

    def emit(event: Event) -> bool:
        record = orjson.loads(event.record_json or b"")
        if record["action"] == "shipper.archive_alert":
            alerts.append(record)
        return True

    driver = SinkDriver(s3_sink(s3_server, bucket, proxy, emit, max_events=4), tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run, wal.readers[SINK], wal.epoch)
        await wait_until(lambda: len(logs.entries("sink_s3_archive_tampered")) >= 3)
        assert versions() == before  # nothing written over the hidden entries
        assert wal.lag_bytes(SINK) > 0
        assert (driver.counters["events"], driver.counters["dead_letters"]) == (0, 0)
        assert not (tmp_path / "dead_letter").exists()
        assert [alert["key"] for alert in alerts] == [hidden[0]]
        assert f"--key {hidden[0]} --version-id <id>" in alerts[0]["reason"]
        remedy = "stored after the first" if hide == "rewritten" else "delete the delete markers"
        assert remedy in alerts[0]["reason"]
        assert {e["key"] for e in logs.entries("sink_s3_archive_tampered")} == {hidden[0]}

        for key, version in restore.items():
            client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        await wait_until(lambda: wal.lag_bytes(SINK) == 0)
        nursery.cancel_scope.cancel()
    await wal.close()
    wal.release()
    stored = await read_bucket(s3_server, bucket)
    assert chain_problems(stored) == []
    assert stored_numbers(stored) == list(range(1, 29))
    assert len(alerts) == 1
    url = S3Url(bucket, "")
    async with open_client(settings(s3_server)) as s3:
        report = await verify_s3(S3Store(s3, url), url, SEED)
    assert report.intact, report.text()
    assert report.entries == len(manifests(stored)) > 10
