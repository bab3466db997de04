"""``verify`` of an S3 archive against a real S3 server (SeaweedFS), archives written as the
``s3`` sink lays them out, then altered as an attacker with access to the storage could: through
the filer, around the S3 gateway and its Object Lock."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import trio

from shipper.archive.manifest import AgentSpan, Link, ManifestEntry, entry_hash, id_key
from shipper.archive.store import S3Store
from shipper.archive.verify import Report, verify_s3
from shipper.chain import SEED
from shipper.s3 import S3Url, open_client
from tests.archive.s3archive import (
    Written,
    bomb,
    compress,
    envelope,
    in_years,
    put,
    seal,
    write_archive,
)
from tests.chains import chain
from tests.s3archive import settings
from tests.s3server import S3Server, remove_behind_gateway

PREFIX = "audit/"
AGENTS = ("agent-a", "agent-b")


def interleaved(count: int, skip: Iterable[int] = ()) -> list[bytes]:
    """Envelopes of ``count`` records of each agent, taking turns, ids 1000 apart (room for a
    seal between two); agent-a's sequences in ``skip`` never came."""
    left_out = set(skip)
    records = [
        record
        for pair in zip(*(chain(count, agent) for agent in AGENTS), strict=True)
        for record in pair
        if not (record["agentId"] == "agent-a" and record["sequence"] in left_out)
    ]
    return [envelope(f"1-{(n + 1) * 1000}", record) for n, record in enumerate(records)]


def chunks(lines: list[bytes], size: int) -> list[list[bytes]]:
    return [lines[at : at + size] for at in range(0, len(lines), size)]


def before(line: bytes, by: int = 1) -> str:
    """An id ``by`` before ``line``'s (for a seal put in front of it)."""
    segment, offset = orjson.loads(line)["id"].split("-")
    return f"{segment}-{int(offset) - by}"


async def verify(server: S3Server, written: Written, expect_head: str | None = None) -> Report:
    url = S3Url(written.bucket, written.prefix)
    async with open_client(settings(server)) as s3:
        return await verify_s3(S3Store(s3, url), url, SEED, expect_head)


async def sealed_archive(server: S3Server, bucket: str) -> Written:
    """Five objects of 8 events (agents a and b, 20 records each), each compression in turn,
    locked COMPLIANCE; object 4 begins with the seal of entry 3, as the sink's seal events come
    back through the WAL."""
    objects = chunks(interleaved(20), 8)
    async with open_client(settings(server)) as s3:
        written = await write_archive(s3, bucket, PREFIX, objects[:3])
        sealed = seal(before(objects[3][0]), bucket, PREFIX, 3, written.heads[2])
        objects[3].insert(0, sealed)
        return await write_archive(s3, bucket, PREFIX, objects[3:], written=written)


def kinds(report: Report) -> set[str]:
    return set(report.problem_counts)


def found(report: Report, kind: str) -> list[dict[str, Any]]:
    return [p.as_json() for p in report.problems if p.kind == kind]


def sequences(lines: list[bytes], agent: str) -> list[int]:
    return [
        orjson.loads(line)["record"]["sequence"]
        for line in lines
        if orjson.loads(line).get("agent") == agent
    ]


async def test_an_intact_archive_passes(s3_server: S3Server) -> None:
    """An archive as the sink writes it (gzip, zstd and plain objects, locked, with a seal
    witness) is intact: every object, event and agent counted, the head is the newest entry's
    hash, and an older head given as --expect-head is found."""
    written = await sealed_archive(s3_server, "verify-intact")
    report = await verify(s3_server, written, expect_head=written.heads[1])
    assert report.intact, report.text()
    assert report.head == written.heads[-1]
    assert (report.entries, report.manifests, report.objects) == (5, 5, 5)
    assert (report.events, report.chained, report.agents) == (41, 40, 2)
    assert report.statuses == {"genesis": 2, "ok": 38}
    assert report.skipped == {"alerts": 1}
    assert report.witnesses == {"seen": 1, "checked": 1}
    assert report.bytes == sum(entry.size for entry in map(ManifestEntry.parse, written.entries))


async def test_a_deleted_object_is_missing_and_leaves_gaps(s3_server: S3Server) -> None:
    """A data object deleted behind the gateway is reported missing, and each agent's records it
    held as a gap."""
    written = await sealed_archive(s3_server, "verify-deleted")
    await trio.to_thread.run_sync(
        remove_behind_gateway, s3_server, written.bucket, PREFIX + written.keys[2]
    )
    report = await verify(s3_server, written)
    assert kinds(report) == {"object_missing", "gap"}, report.text()
    (missing,) = found(report, "object_missing")
    assert missing["where"] == written.keys[2]
    assert missing["seq"] == 3
    held = chunks(interleaved(20), 8)[2]
    gaps = {gap["agent"]: gap["missing"] for gap in found(report, "gap")}
    for agent in AGENTS:
        assert gaps[agent] == [min(sequences(held, agent)), max(sequences(held, agent))]
    assert written.keys[2] in report.text()


async def test_a_replaced_object_is_tampered(s3_server: S3Server) -> None:
    """An object deleted behind the gateway and stored again with one record edited is reported
    tampered (its bytes are not those its entry hashed), and the edited record as a bad hash."""
    written = await sealed_archive(s3_server, "verify-replaced")
    lines = chunks(interleaved(20), 8)[1]
    edited = lines[3].replace(b'"database.query"', b'"database.drop"')
    assert edited != lines[3]
    lines[3] = edited
    entry = ManifestEntry.parse(written.entries[1])
    await trio.to_thread.run_sync(
        remove_behind_gateway, s3_server, written.bucket, PREFIX + entry.key
    )
    until = in_years(datetime.now(UTC), 3) + timedelta(days=1)  # locked again, as before
    async with open_client(settings(s3_server)) as s3:
        data = compress(lines, entry.compression)
        await put(s3, written.bucket, PREFIX + entry.key, data, "COMPLIANCE", until)
    report = await verify(s3_server, written)
    assert kinds(report) == {"object_tampered", "bad_hash"}, report.text()
    (tampered,) = found(report, "object_tampered")
    assert tampered["where"] == entry.key
    (bad,) = found(report, "bad_hash")
    assert bad["where"] == f"{entry.key}:4"
    assert bad["sequence"] == orjson.loads(edited)["record"]["sequence"]


async def test_a_removed_manifest_entry_is_missing_and_its_object_unexpected(
    s3_server: S3Server,
) -> None:
    """A manifest entry deleted behind the gateway is reported missing from the chain, the
    object it named as unexpected, the WAL range it covered as a hole between its neighbours, and
    its events as gaps of the agents' chains."""
    written = await sealed_archive(s3_server, "verify-manifest")
    await trio.to_thread.run_sync(
        remove_behind_gateway, s3_server, written.bucket, PREFIX + written.entry_key(3)
    )
    report = await verify(s3_server, written)
    expected = {"manifest_missing", "unexpected_object", "wal_gap", "gap"}
    assert kinds(report) == expected, report.text()
    (missing,) = found(report, "manifest_missing")
    assert missing["missing"] == [3, 3]
    (unexpected,) = found(report, "unexpected_object")
    assert unexpected["where"] == written.keys[2]


async def test_a_truncated_archive_is_caught_by_the_head_witnessed_before(
    s3_server: S3Server,
) -> None:
    """The newest objects and entries removed together leave a chain that holds together; the
    head witnessed before (--expect-head) is then found in no entry, and the report says so."""
    written = await sealed_archive(s3_server, "verify-truncated")
    for seq in (4, 5):
        for key in (written.keys[seq - 1], written.entry_key(seq)):
            await trio.to_thread.run_sync(
                remove_behind_gateway, s3_server, written.bucket, PREFIX + key
            )
    alone = await verify(s3_server, written)
    assert alone.intact, alone.text()
    assert alone.head == written.heads[2]
    report = await verify(s3_server, written, expect_head=written.heads[-1])
    assert kinds(report) == {"expected_head_missing"}, report.text()
    assert written.heads[-1] in report.text()


async def test_a_seal_past_the_end_of_the_chain_says_truncated(s3_server: S3Server) -> None:
    """A seal witness naming an entry past the chain's end (the chain lost its newest entries
    after that head was witnessed) is reported as truncation; seals of other prefixes are not
    this archive's and are left alone."""
    objects = chunks(interleaved(10), 5)
    bucket = "verify-seal-past"
    objects[1].insert(0, seal(before(objects[1][0]), bucket, PREFIX, 7, "sha256:" + "e" * 64))
    objects[1].insert(0, seal(before(objects[1][0], 2), bucket, "other/", 9, "sha256:00"))
    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(s3, bucket, PREFIX, objects)
    report = await verify(s3_server, written)
    assert kinds(report) == {"truncated"}, report.text()
    (truncated,) = found(report, "truncated")
    assert truncated["seq"] == 7
    assert report.witnesses == {"seen": 2, "checked": 1}


async def test_a_rewritten_manifest_chain_is_caught_by_a_seal_in_the_archive(
    s3_server: S3Server,
) -> None:
    """An alert taken out of object 2, the object stored again and entries 2 to 5 rewritten to
    match (every link recomputed, locked again; the later objects left as they were): the
    agents' chains cannot tell, but the seal of entry 3's first head, in object 4, can."""
    bucket = "verify-rewritten"
    objects = chunks(interleaved(20), 8)
    objects[1].insert(4, seal(before(objects[1][4]), "elsewhere", "", 1, "sha256:" + "0" * 64))
    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(s3, bucket, PREFIX, objects[:3])
        objects[3].insert(0, seal(before(objects[3][0]), bucket, PREFIX, 3, written.heads[2]))
        written = await write_archive(s3, bucket, PREFIX, objects[3:], written=written)
    entries = [ManifestEntry.parse(data) for data in written.entries]
    del objects[1][4]
    data = compress(objects[1], entries[1].compression)
    rewritten = [written.entries[0]]
    for entry in entries[1:]:
        changes: dict[str, Any] = {"prev": entry_hash(rewritten[-1])}
        if entry.seq == 2:
            changes.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data), events=8)
        rewritten.append(dataclasses.replace(entry, **changes).encode())
    replaced = {PREFIX + entries[1].key: data}
    for seq in range(2, 6):
        replaced[PREFIX + written.entry_key(seq)] = rewritten[seq - 1]
    until = in_years(datetime.now(UTC), 3) + timedelta(days=1)
    async with open_client(settings(s3_server)) as s3:
        for key, content in replaced.items():
            await trio.to_thread.run_sync(remove_behind_gateway, s3_server, bucket, key)
            await put(s3, bucket, key, content, "COMPLIANCE", until)
    report = await verify(s3_server, written)
    assert kinds(report) == {"rewritten"}, report.text()
    (witness,) = found(report, "rewritten")
    assert (witness["seq"], witness["head"]) == (3, written.heads[2])
    assert witness["where"] == f"{entries[3].key}:1"
    assert report.head == entry_hash(rewritten[-1]) != written.heads[-1]


async def test_a_gap_across_objects_is_named(s3_server: S3Server) -> None:
    """Records of an agent that never reached the archive, between two objects, are a gap of its
    chain, named with the agent and the missing sequences."""
    objects = chunks(interleaved(12, skip=range(7, 10)), 6)
    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(s3, "verify-gap", PREFIX, objects)
    report = await verify(s3_server, written)
    assert kinds(report) == {"gap"}, report.text()
    (gap,) = found(report, "gap")
    assert (gap["agent"], gap["missing"]) == ("agent-a", [7, 9])
    assert "agent agent-a: sequences 7-9 missing" in report.text()


async def test_objects_not_locked_as_their_entries_say_are_reported(s3_server: S3Server) -> None:
    """Objects stored without the lock their entries state are ``lock_missing``; a lock shorter
    than the entry states, or an entry's date shorter than the class's period, ``lock_short``."""
    lines = interleaved(4)
    now = datetime.now(UTC)
    async with open_client(settings(s3_server)) as s3:
        bucket = "verify-locks"
        written = await write_archive(s3, bucket, PREFIX, [lines[:4]], unlocked=True)
        written = await write_archive(
            s3,
            bucket,
            PREFIX,
            [lines[4:6]],
            lock_until=now + timedelta(days=2),
            entry_until=now + timedelta(days=400 * 3),
            written=written,
        )
        written = await write_archive(
            s3, bucket, PREFIX, [lines[6:]], lock_until=now + timedelta(days=2), written=written
        )
    report = await verify(s3_server, written)
    assert kinds(report) == {"lock_missing", "lock_short"}, report.text()
    missing = {problem["where"] for problem in found(report, "lock_missing")}
    assert missing == {written.keys[0], written.entry_key(1)}
    short = [(problem["where"], problem["detail"]) for problem in found(report, "lock_short")]
    assert {where for where, _ in short} == {
        written.keys[1],
        written.entry_key(2),
        written.keys[2],
    }
    assert any("class 'default' keeps 3y" in detail for _, detail in short)


async def test_an_object_no_entry_names_is_unexpected(s3_server: S3Server) -> None:
    """A data object added under the prefix, which no entry names, is reported unexpected."""
    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(s3, "verify-extra", PREFIX, chunks(interleaved(4), 4))
        extra = "year=2026/month=12/day=03/planted.jsonl"
        await put(s3, written.bucket, PREFIX + extra, b"{}\n", None, None)
    report = await verify(s3_server, written)
    assert kinds(report) == {"unexpected_object"}, report.text()
    assert found(report, "unexpected_object")[0]["where"] == extra


async def test_a_replaced_entry_breaks_the_link_after_it(s3_server: S3Server) -> None:
    """An entry replaced behind the gateway by another (its object untouched) no longer hashes
    to the next entry's prev: a broken manifest link, at the next entry."""
    written = await sealed_archive(s3_server, "verify-link")
    forged = dataclasses.replace(
        ManifestEntry.parse(written.entries[1]), sealed_at="2026-12-03T00:00:00.000000Z"
    )
    key = PREFIX + written.entry_key(2)
    await trio.to_thread.run_sync(remove_behind_gateway, s3_server, written.bucket, key)
    until = in_years(datetime.now(UTC), 3) + timedelta(days=1)
    async with open_client(settings(s3_server)) as s3:
        await put(s3, written.bucket, key, forged.encode(), "COMPLIANCE", until)
    report = await verify(s3_server, written)
    assert kinds(report) == {"manifest_link_broken"}, report.text()
    (broken,) = found(report, "manifest_link_broken")
    assert (broken["where"], broken["seq"]) == (written.entry_key(3), 3)


async def test_an_entry_that_misdescribes_its_object_is_named(s3_server: S3Server) -> None:
    """An entry whose event count, first id and an agent's last link are not its object's (the
    object's bytes as hashed): each difference is named."""

    def misdescribe(entry: ManifestEntry) -> ManifestEntry:
        if entry.seq != 2:
            return entry
        span = entry.agents["agent-b"]
        agents = {**entry.agents, "agent-b": AgentSpan(span.first, Link(99, span.last.hash))}
        return dataclasses.replace(entry, events=9, first="1-1", agents=agents)

    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(
            s3, "verify-content", PREFIX, chunks(interleaved(8), 4), adjust=misdescribe
        )
    report = await verify(s3_server, written)
    assert kinds(report) == {"object_content"}, report.text()
    (wrong,) = found(report, "object_content")
    assert wrong["where"] == written.keys[1]
    assert "4 lines, not 9" in wrong["detail"]
    assert "not 1-1.." in wrong["detail"]
    assert "agent agent-b:" in wrong["detail"]
    assert "agent agent-a" not in wrong["detail"]


async def test_a_batch_cut_into_objects_is_read_back_in_wal_order(s3_server: S3Server) -> None:
    """One WAL batch stored as two objects whose id ranges interleave (one per agent, as retention
    classes would cut it; the first entry covers nothing yet, the second the whole batch) is
    merged back by id: intact, every chain whole."""
    batch = interleaved(6)
    parts = [[line for line in batch if orjson.loads(line)["agent"] == agent] for agent in AGENTS]
    last = orjson.loads(batch[-1])["id"]

    def cut(entry: ManifestEntry) -> ManifestEntry:
        if entry.seq == 1:  # not the batch's last object: the sink's progress does not move
            return dataclasses.replace(entry, covered="1-0")
        return dataclasses.replace(entry, after="1-0", covered=last)

    async with open_client(settings(s3_server)) as s3:
        written = await write_archive(s3, "verify-batch", PREFIX, parts, adjust=cut)
    entries = [ManifestEntry.parse(data) for data in written.entries]
    assert id_key(entries[0].last) > id_key(entries[1].first)  # the ranges interleave
    report = await verify(s3_server, written)
    assert report.intact, report.text()
    assert report.statuses == {"genesis": 2, "ok": 10}


async def test_an_entry_that_does_not_parse_is_tampered(s3_server: S3Server) -> None:
    """An entry replaced by bytes that are no manifest entry is reported tampered, and the next
    entry's link to it broken; its object, named by nothing readable, is unexpected."""
    written = await sealed_archive(s3_server, "verify-garbled")
    key = PREFIX + written.entry_key(2)
    await trio.to_thread.run_sync(remove_behind_gateway, s3_server, written.bucket, key)
    async with open_client(settings(s3_server)) as s3:
        await put(s3, written.bucket, key, b'{"v":1,"seq":2}\n', None, None)
    report = await verify(s3_server, written)
    expected = {"manifest_tampered", "manifest_link_broken", "unexpected_object", "wal_gap", "gap"}
    assert kinds(report) == expected, report.text()
    (tampered,) = found(report, "manifest_tampered")
    assert (tampered["where"], tampered["seq"]) == (written.entry_key(2), 2)
    assert found(report, "unexpected_object")[0]["where"] == written.keys[1]


async def test_entries_and_objects_hidden_by_delete_markers_are_reported_and_checked(
    s3_server: S3Server,
) -> None:
    """A plain DELETE of the newest entries and objects (a delete marker on each; the locked
    versions stay) is reported as hidden, key by key, with the marker to delete; the hidden
    versions are still checked, as they would be restored; once the markers are deleted the
    archive is intact again."""
    written = await sealed_archive(s3_server, "verify-hidden")
    hidden = [written.keys[3], written.entry_key(4), written.keys[4], written.entry_key(5)]
    markers: dict[str, str] = {}
    async with open_client(settings(s3_server)) as s3:
        for key in hidden:
            answer = await s3.delete_object(Bucket=written.bucket, Key=PREFIX + key)
            assert answer["DeleteMarker"]
            markers[key] = answer["VersionId"]
    report = await verify(s3_server, written)
    assert kinds(report) == {"hidden"}, report.text()
    problems = report.as_json()["problems"]
    assert sorted(p["where"] for p in problems) == sorted(hidden)
    for problem in problems:
        assert (problem["versions"], problem["markers"]) == (1, [markers[problem["where"]]])
        assert f"--key {PREFIX}{problem['where']} --version-id" in problem["detail"]
    assert (report.entries, report.objects, report.head) == (5, 5, written.heads[-1])
    assert report.witnesses == {"seen": 1, "checked": 1}
    assert "NOT INTACT: 4 problems (hidden 4)" in report.text()

    async with open_client(settings(s3_server)) as s3:
        for key, marker in markers.items():
            await s3.delete_object(Bucket=written.bucket, Key=PREFIX + key, VersionId=marker)
    restored = await verify(s3_server, written, expect_head=written.heads[-1])
    assert restored.intact, restored.text()


async def test_a_second_version_of_an_object_is_reported_replaced(s3_server: S3Server) -> None:
    """A data object stored again through the gateway without If-None-Match (a second version
    over the locked one, unlocked, one record edited) is reported replaced, with both versions,
    besides its bytes being tampered, its lock missing and the edited record's hash bad."""
    written = await sealed_archive(s3_server, "verify-second-version")
    lines = chunks(interleaved(20), 8)[1]
    lines[3] = lines[3].replace(b'"database.query"', b'"database.drop"')
    entry = ManifestEntry.parse(written.entries[1])
    async with open_client(settings(s3_server)) as s3:
        data = compress(lines, entry.compression)
        await s3.put_object(Bucket=written.bucket, Key=PREFIX + entry.key, Body=data)
        listing = await s3.list_object_versions(Bucket=written.bucket, Prefix=PREFIX + entry.key)
    report = await verify(s3_server, written)
    expected = {"replaced", "object_tampered", "lock_missing", "bad_hash"}
    assert kinds(report) == expected, report.text()
    (replaced,) = found(report, "replaced")
    assert replaced["where"] == entry.key
    assert replaced["versions"] == [version["VersionId"] for version in listing["Versions"]]
    assert len(replaced["versions"]) == 2
    assert f"replaced: {entry.key}: 2 stored versions" in report.text()


@pytest.mark.parametrize("index", [0, 1], ids=["gzip", "zstd"])
async def test_a_decompression_bomb_is_too_large_not_a_crash(
    s3_server: S3Server, index: int
) -> None:
    """An object replaced by a bomb (256 MiB of zeros, gzip or zstd) is reported too large at
    its key, read no further than the limit, and the rest of the archive is still checked."""
    written = await sealed_archive(s3_server, f"verify-bomb-{index}")
    entry = ManifestEntry.parse(written.entries[index])
    await trio.to_thread.run_sync(
        remove_behind_gateway, s3_server, written.bucket, PREFIX + entry.key
    )
    async with open_client(settings(s3_server)) as s3:
        data = bomb(entry.compression, 256 << 20)
        await put(
            s3,
            written.bucket,
            PREFIX + entry.key,
            data,
            "COMPLIANCE",
            in_years(datetime.now(UTC), 4),
        )
        url = S3Url(written.bucket, written.prefix)
        report = await verify_s3(S3Store(s3, url), url, SEED, max_object_bytes=1 << 20)
    (large,) = found(report, "object_too_large")
    assert large["where"] == entry.key
    assert large["seq"] == index + 1
    # (and its events' absence: gaps after it, or the agents adopted after the first object)
    assert kinds(report) - {"gap"} == {"object_too_large", "object_tampered"}, report.text()
    assert report.objects == len(written.entries)


async def test_an_object_stored_larger_than_the_limit_is_not_read(s3_server: S3Server) -> None:
    """An uncompressed object larger than the limit as stored is reported too large from the
    listing, without being read (compressed ones are, and found too large decompressed)."""
    written = await sealed_archive(s3_server, "verify-bomb-plain")
    entry = ManifestEntry.parse(written.entries[2])
    assert entry.compression == "none"
    url = S3Url(written.bucket, written.prefix)
    async with open_client(settings(s3_server)) as s3:
        report = await verify_s3(S3Store(s3, url), url, SEED, max_object_bytes=entry.size - 1)
    large = {p["where"]: p["detail"] for p in found(report, "object_too_large")}
    assert "as stored" in large[entry.key]
    # (the others, as large decompressed, were read and found so)
    assert all("decompressed" in large[key] for key in large.keys() - {entry.key})
    assert report.objects == len(written.entries) - 1
