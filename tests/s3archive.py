"""Reading back what the ``s3`` sink wrote, for tests: objects, manifest entries, locks."""

from __future__ import annotations

import gzip
import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import zstandard

from shipper.archive.manifest import MANIFEST_DIR, ManifestEntry, entry_hash, id_key
from shipper.config.values import Secret
from shipper.s3 import S3Settings, open_client, translated
from tests.s3server import S3Server


def settings(server: S3Server) -> S3Settings:
    """Client settings for ``server``, with its keys."""
    return S3Settings(
        endpoint=server.endpoint,
        access_key_id=Secret(server.access_key),
        secret_access_key=Secret(server.secret_key),
    )


def sync_client(server: S3Server) -> Any:
    """A blocking S3 client (botocore's own) for ``server``, for tests outside trio."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


def sink_table(server: S3Server, bucket: str, **keys: Any) -> dict[str, Any]:
    """A raw ``[sinks.ID]`` table of an s3 sink writing to ``bucket`` of ``server``, locked
    COMPLIANCE for a day, batches cut at 0.2 s."""
    return {
        "type": "s3",
        "bucket": bucket,
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "object_lock": {"mode": "COMPLIANCE", "retention_days": 1},
        "batch": {"timeout": "200ms"},
        **keys,
    }


async def new_bucket(server: S3Server, locked: bool = True) -> str:
    """A new, empty bucket (with Object Lock unless ``locked`` is false)."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    async with open_client(settings(server)) as s3:
        with translated("creating a test bucket"):
            await s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    return name


@dataclass
class Stored:
    """An object in the bucket: its key, bytes, and lock."""

    key: str
    data: bytes
    mode: str | None
    retain_until: datetime | None
    head: dict[str, Any]

    @property
    def lines(self) -> list[bytes]:
        data = self.data
        if self.key.endswith(".gz"):
            data = gzip.decompress(data)
        elif self.key.endswith(".zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return data.splitlines()


async def read_bucket(server: S3Server, bucket: str) -> dict[str, Stored]:
    """Every object of ``bucket`` (latest versions), by key."""
    out: dict[str, Stored] = {}
    async with open_client(settings(server)) as s3:
        with translated("reading a test bucket"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    answer = await s3.get_object(Bucket=bucket, Key=item["Key"])
                    async with answer["Body"] as body:
                        data = await body.read()
                    out[item["Key"]] = Stored(
                        item["Key"],
                        data,
                        answer.get("ObjectLockMode"),
                        answer.get("ObjectLockRetainUntilDate"),
                        {k: v for k, v in answer.items() if k not in ("Body", "ResponseMetadata")},
                    )
    return out


def manifests(stored: dict[str, Stored], prefix: str = "") -> list[ManifestEntry]:
    """The manifest entries in ``stored``, in seq order."""
    keys = sorted(key for key in stored if key.startswith(prefix + MANIFEST_DIR))
    return [ManifestEntry.parse(stored[key].data) for key in keys]


def data_objects(stored: dict[str, Stored], prefix: str = "") -> dict[str, Stored]:
    """The data objects in ``stored`` (not manifest entries)."""
    return {
        key: value
        for key, value in stored.items()
        if key.startswith(prefix) and not key.startswith(prefix + MANIFEST_DIR)
    }


def chain_problems(stored: dict[str, Stored], prefix: str = "") -> list[str]:
    """What is wrong with the archive under ``prefix`` in ``stored`` (nothing: an empty list):
    entries numbered from 1 without holes, each linked to the one before by its hash, each
    naming an object that holds what it says (sha256, count, first and last id, all after
    ``after``), every data object named by exactly one entry, and within an epoch each entry's
    ``after`` the previous entry's ``covered``."""
    problems: list[str] = []
    keys = sorted(key for key in stored if key.startswith(prefix + MANIFEST_DIR))
    objects = data_objects(stored, prefix)
    named: Counter[str] = Counter()
    previous: ManifestEntry | None = None
    previous_hash: str | None = None
    for number, key in enumerate(keys, 1):
        entry = ManifestEntry.parse(stored[key].data)
        where = f"entry {entry.seq} ({key})"
        if entry.seq != number:
            problems.append(f"{where}: expected seq {number}")
        if entry.prev != previous_hash:
            problems.append(f"{where}: prev {entry.prev} is not the previous entry's hash")
        if previous is not None and previous.epoch == entry.epoch:
            if entry.after != previous.covered:
                problems.append(
                    f"{where}: after {entry.after}, but the previous entry covered "
                    f"{previous.covered}"
                )
        elif entry.after is not None:
            problems.append(f"{where}: first of epoch {entry.epoch} with after {entry.after}")
        if entry.covered != entry.after and (
            entry.covered is None or id_key(entry.covered) < id_key(entry.last)
        ):
            problems.append(f"{where}: covers {entry.covered}, short of its last {entry.last}")
        named[entry.key] += 1
        obj = objects.get(entry.key)
        if obj is None:
            problems.append(f"{where}: its object {entry.key} is missing")
        else:
            ids = [orjson.loads(line)["id"] for line in obj.lines]
            if hashlib.sha256(obj.data).hexdigest() != entry.sha256:
                problems.append(f"{where}: sha256 differs from {entry.key}'s")
            if (len(ids), ids[:1], ids[-1:]) != (entry.events, [entry.first], [entry.last]):
                problems.append(f"{where}: count, first or last differ from {entry.key}'s")
            if entry.after is not None and any(id_key(i) <= id_key(entry.after) for i in ids):
                problems.append(f"{where}: {entry.key} holds events up to after {entry.after}")
        previous, previous_hash = entry, entry_hash(stored[key].data)
    problems += [f"{key}: named by no entry" for key in objects if key not in named]
    problems += [f"{key}: named by {n} entries" for key, n in named.items() if n > 1]
    return problems


def agent_events(objects: dict[str, Stored]) -> Counter[tuple[str, int]]:
    """How many times each (agent, sequence) is in ``objects`` (events of agents: not shipper's
    own alerts and seals)."""
    found: Counter[tuple[str, int]] = Counter()
    for stored in objects.values():
        for line in stored.lines:
            envelope = orjson.loads(line)
            if envelope["source"]["kind"] != "alert":
                found[(envelope["agent"], envelope["record"]["sequence"])] += 1
    return found


class BucketMirror:
    """What a bucket holds, read with a blocking client and kept: each refresh lists the keys
    and reads only the new ones (what the sink stores is never rewritten)."""

    def __init__(self, server: S3Server, bucket: str) -> None:
        self.client = sync_client(server)
        self.bucket = bucket
        self.objects: dict[str, Stored] = {}

    def refresh(self) -> dict[str, Stored]:
        """Every object of the bucket now, by key."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key not in self.objects:
                    answer = self.client.get_object(Bucket=self.bucket, Key=key)
                    self.objects[key] = Stored(
                        key,
                        answer["Body"].read(),
                        answer.get("ObjectLockMode"),
                        answer.get("ObjectLockRetainUntilDate"),
                        {k: v for k, v in answer.items() if k not in ("Body", "ResponseMetadata")},
                    )
        return self.objects
