"""``verify`` on archives the daemon's own sinks wrote: the ``s3`` sink (retention classes, so
one batch becomes several objects) and the ``file`` sink beside it, which holds the seals of
the S3 archive's heads: a witness from outside that catches a truncated tail."""

from __future__ import annotations

from pathlib import Path

import orjson
import trio

from shipper.archive.manifest import ManifestEntry, manifest_key
from shipper.archive.store import DirStore, S3Store
from shipper.archive.verify import Report, verify_dir, verify_s3
from shipper.chain import SEED
from shipper.s3 import S3Url, open_client, translated
from tests.chains import chain_lines
from tests.conftest import archive_lines
from tests.s3archive import new_bucket, settings, sink_table
from tests.s3server import S3Server, remove_behind_gateway
from tests.sinks.test_s3 import archived, daemon_config, send_and_stop


async def verify(server: S3Server, url: S3Url, expect_head: str | None = None) -> Report:
    async with open_client(settings(server)) as s3:
        return await verify_s3(S3Store(s3, url), url, SEED, expect_head)


async def test_what_the_sinks_wrote_is_intact_and_a_truncation_is_caught_by_their_seal(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """The s3 sink's archive (two retention classes, two daemon runs) and the file sink's beside
    it verify intact; the newest S3 head the file archive witnessed is found; once the S3
    archive's newest objects and entries are removed, that head is not, and verify says so."""
    bucket = await new_bucket(s3_server)
    table = sink_table(s3_server, bucket, prefix="audit")
    del table["object_lock"]["retention_days"]
    table["retention"] = {
        "classes": {"default": 1, "long": "3d"},
        "rules": [{"class": "long", "agent": "long-*"}],
    }
    files = tmp_path / "archive"
    raw = daemon_config(tmp_path, {"s3": table, "archive": {"type": "file", "path": str(files)}})
    lines = [
        line
        for pair in zip(chain_lines(20, "long-a"), chain_lines(20, "short-a"), strict=True)
        for line in pair
    ]
    await send_and_stop(raw, lines[:20], archived(s3_server, bucket, "audit/", 20))
    await send_and_stop(raw, lines[20:], archived(s3_server, bucket, "audit/", 40))
    url = S3Url.parse(f"s3://{bucket}/audit")

    report = await verify(s3_server, url)
    assert report.intact, report.text()
    assert (report.chained, report.agents) == (40, 2)
    assert report.statuses == {"genesis": 2, "ok": 38}
    assert report.witnesses["checked"] >= 1
    on_file = await verify_dir(DirStore(files))
    assert on_file.intact, on_file.text()
    assert on_file.chained == 40

    seals = [
        record
        for record in (orjson.loads(line)["record"] for line in archive_lines(files))
        if record.get("action") == "shipper.archive_seal"
    ]
    newest = max(seals, key=lambda seal: seal["seq"])
    found = await verify(s3_server, url, expect_head=newest["head"])
    assert found.intact, found.text()

    # Remove the entry that seal names, and every later one, with their objects.
    async with open_client(settings(s3_server)) as s3:
        for seq in range(newest["seq"], report.entries + 1):
            key = manifest_key("audit/", seq)
            with translated(f"reading {key}"):
                answer = await s3.get_object(Bucket=bucket, Key=key)
                async with answer["Body"] as body:
                    entry = ManifestEntry.parse(await body.read())
            for gone in (entry.key, key):
                await trio.to_thread.run_sync(remove_behind_gateway, s3_server, bucket, gone)
    truncated = await verify(s3_server, url, expect_head=newest["head"])
    assert set(truncated.problem_counts) == {"expected_head_missing"}, truncated.text()
    assert truncated.entries == newest["seq"] - 1


async def test_a_bucket_without_versioning_is_written_resumed_and_verified(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """Without object_lock, on a bucket without versioning (whose version listing has one "null"
    version a key), the sink writes, resumes after a restart, and its archive verifies intact."""
    bucket = await new_bucket(s3_server, locked=False)
    table = sink_table(s3_server, bucket)
    del table["object_lock"]
    raw = daemon_config(tmp_path, {"s3": table})
    lines = chain_lines(20, "agent-a")
    await send_and_stop(raw, lines[:10], archived(s3_server, bucket, "", 10))
    await send_and_stop(raw, lines[10:], archived(s3_server, bucket, "", 20))
    report = await verify(s3_server, S3Url(bucket, ""))
    assert report.intact, report.text()
    assert (report.chained, report.statuses) == (20, {"genesis": 1, "ok": 19})
    assert report.notice_counts["unlocked"] == 1
