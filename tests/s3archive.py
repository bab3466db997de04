"""Reading back what the ``s3`` sink wrote, for tests: objects, manifest entries, locks."""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import zstandard

from shipper.archive.manifest import MANIFEST_DIR, ManifestEntry
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
