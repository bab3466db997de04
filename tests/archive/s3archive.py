"""A small writer of S3 archives for the verify tests: data objects of envelopes and the chained
manifest entries naming them, locked, as the ``s3`` sink lays them out
(``shipper.archive.manifest``), so that a test controls every byte (the sink's own archives are
verified in ``test_verify_sink``). What an entry says of its object is computed here from the
records themselves (seed fields), not with shipper's own summary. Object keys are relative to
the prefix here (the sink writes them with it): verify finds both."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import zstandard

from shipper.archive.content import SUFFIXES
from shipper.archive.manifest import (
    AgentSpan,
    Link,
    ManifestEntry,
    Retention,
    entry_hash,
    manifest_key,
)
from shipper.events import Event, alert_event
from shipper.s3 import Body, translated

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:4000"}
SEAL = "shipper.archive_seal"


def envelope(event_id: str, record: dict[str, Any]) -> bytes:
    """The envelope the daemon archives for a chained ``record`` (verdict ok)."""
    sequence = record["sequence"]
    event = Event(
        "2026-12-02T18:00:00.000000Z",
        SOURCE,
        record["agentId"],
        orjson.dumps(record),
        chain={"status": "ok", "sequence": sequence, "expected": sequence},
    )
    return event.encode(event_id)


def seal(event_id: str, bucket: str, prefix: str, seq: int, head: str) -> bytes:
    """A ``shipper.archive_seal`` alert witnessing ``head`` as entry ``seq`` of an archive."""
    details = {"head": head, "seq": seq, "bucket": bucket, "prefix": prefix}
    return alert_event(SEAL, None, details).encode(event_id)


def compress(lines: Sequence[bytes], compression: str) -> bytes:
    text = b"".join(line + b"\n" for line in lines)
    if compression == "gzip":
        return gzip.compress(text)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(text)
    return text


def bomb(compression: str, size: int) -> bytes:
    """``size`` zero bytes, gzip or zstd compressed, made 1 MiB at a time: a decompression bomb
    (256 MiB take about 250 KB of gzip, and a few KB of zstd)."""
    piece = bytes(1 << 20)
    if compression == "gzip":
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [packer.compress(piece) for _ in range(size >> 20)]
        return b"".join(parts) + packer.flush()
    packed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(packed, closefd=False) as writer:
        for _ in range(size >> 20):
            writer.write(piece)
    return packed.getvalue()


def spans(lines: Sequence[bytes]) -> dict[str, AgentSpan]:
    """Per agent, the first and last chained record among ``lines`` (their own fields)."""
    first: dict[str, Link] = {}
    last: dict[str, Link] = {}
    for line in lines:
        parsed = orjson.loads(line)
        record = parsed.get("record")
        if parsed["source"].get("kind") == "alert" or not isinstance(record, dict):
            continue
        link = Link(record["sequence"], record["hash"])
        first.setdefault(record["agentId"], link)
        last[record["agentId"]] = link
    return {agent: AgentSpan(link, last[agent]) for agent, link in first.items()}


def in_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


@dataclass
class Written:
    """An archive as written: its bucket and prefix, the data objects' keys (relative to the
    prefix), the entries' bytes and the heads (the hash of each entry, in seq order)."""

    bucket: str
    prefix: str
    keys: list[str] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)

    @property
    def heads(self) -> list[str]:
        return [entry_hash(data) for data in self.entries]

    def entry_key(self, seq: int) -> str:
        """The entry's key relative to the prefix."""
        return manifest_key("", seq)


async def make_bucket(s3: Any, bucket: str) -> None:
    with translated(f"making {bucket}"):
        await s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)


async def put(
    s3: Any, bucket: str, key: str, data: bytes, mode: str | None, until: datetime | None
) -> None:
    """Store ``data`` at ``key`` with a sha256 checksum and, if ``mode``, that lock."""
    lock: dict[str, Any] = {}
    if mode is not None and until is not None:
        lock = {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}
    with translated(f"storing {key}"):
        await s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=Body(data),
            IfNoneMatch="*",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            **lock,
        )


async def write_archive(
    s3: Any,
    bucket: str,
    prefix: str,
    objects: Sequence[Sequence[bytes]],
    *,
    compressions: Sequence[str] = ("gzip", "zstd", "none"),
    epoch: str = "3f2a9c01d4e5b6a7",
    mode: str | None = "COMPLIANCE",
    period: str = "3y",
    lock_until: datetime | None = None,
    entry_until: datetime | None = None,
    unlocked: bool = False,
    adjust: Callable[[ManifestEntry], ManifestEntry] | None = None,
    written: Written | None = None,
) -> Written:
    """Store each of ``objects`` (lists of envelope lines, in WAL order) as a data object, with
    its manifest entry, chained; the bucket is made first unless ``written`` (an archive to
    extend) is given. Objects are locked ``mode`` until ``lock_until`` (default: three years and
    a day from now), which their entries state unless ``entry_until`` is given; ``unlocked``
    stores them without a lock whatever their entries say. ``adjust`` changes each entry before
    it is stored (what a faulty sink, or a forger, would write)."""
    if written is None:
        await make_bucket(s3, bucket)
        written = Written(bucket, prefix)
    until = lock_until or in_years(datetime.now(UTC), 3) + timedelta(days=1)
    stated = (entry_until or until).strftime("%Y-%m-%dT%H:%M:%SZ")
    for lines in objects:
        seq = len(written.entries) + 1
        compression = compressions[(seq - 1) % len(compressions)]
        first = orjson.loads(lines[0])["id"]
        last = orjson.loads(lines[-1])["id"]
        key = f"year=2026/month=12/day=02/{epoch}-{first}{SUFFIXES[compression]}"
        data = compress(lines, compression)
        previous = orjson.loads(written.entries[-1]) if written.entries else None
        same_epoch = previous is not None and previous["wal"]["epoch"] == epoch
        after = previous["wal"]["covered"] if previous is not None and same_epoch else None
        entry = ManifestEntry(
            seq=seq,
            prev=entry_hash(written.entries[-1]) if written.entries else None,
            sink="s3",
            sealed_at="2026-12-02T18:00:00.000000Z",
            key=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            events=len(lines),
            compression=compression,
            epoch=epoch,
            after=after,
            first=first,
            last=last,
            covered=last,
            retention=Retention("default", mode, period, stated if mode else None),
            agents=spans(lines),
        )
        if adjust is not None:
            entry = adjust(entry)
        encoded = entry.encode()
        lock = None if unlocked else mode
        await put(s3, bucket, prefix + key, data, lock, until)
        await put(s3, bucket, prefix + manifest_key("", seq), encoded, lock, until)
        written.keys.append(key)
        written.entries.append(encoded)
    return written
