"""The S3 server the S3 tests run against enforces what the archive relies on, through the client
the daemon will use (aiobotocore's httpx backend, on trio)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from tests.s3server import S3Server


@asynccontextmanager
async def client(server: S3Server) -> AsyncIterator[Any]:
    """An S3 client on trio for ``server``."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=AioConfig(http_session_cls=HttpxSession),
    ) as s3:
        yield s3


async def test_locked_objects_cannot_be_rewritten_or_deleted(s3_server: S3Server) -> None:
    """In a bucket with Object Lock, a COMPLIANCE-locked object is stored once: a second PUT
    with ``If-None-Match: *`` is refused with 412, and deleting its version is refused."""
    body = b'{"v":1}\n'
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
    async with client(s3_server) as s3:
        await s3.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
        lock = await s3.get_object_lock_configuration(Bucket="locked")
        assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
        stored = await s3.put_object(
            Bucket="locked",
            Key="events/1-24",
            Body=body,
            IfNoneMatch="*",
            ChecksumSHA256=checksum,
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
        )
        with pytest.raises(ClientError) as again:
            await s3.put_object(Bucket="locked", Key="events/1-24", Body=b"other", IfNoneMatch="*")
        assert again.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        with pytest.raises(ClientError) as deleted:
            await s3.delete_object(
                Bucket="locked", Key="events/1-24", VersionId=stored["VersionId"]
            )
        assert deleted.value.response["Error"]["Code"] == "AccessDenied"
        kept = await s3.get_object(Bucket="locked", Key="events/1-24")
        assert await kept["Body"].read() == body


async def test_a_bucket_without_object_lock_says_so(s3_server: S3Server) -> None:
    """A bucket made without Object Lock has no lock configuration: the sink's start check can
    tell it apart."""
    async with client(s3_server) as s3:
        await s3.create_bucket(Bucket="plain")
        with pytest.raises(ClientError) as missing:
            await s3.get_object_lock_configuration(Bucket="plain")
        assert "ObjectLock" in missing.value.response["Error"]["Code"]
