"""The S3 boundary (``shipper.s3``) against a real S3 server: what the library raises arrives
as shipper's errors, and large bodies go up whole."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest

from shipper.config.values import Secret
from shipper.s3 import (
    Body,
    NotFound,
    PreconditionFailed,
    S3Rejected,
    S3Settings,
    S3Unavailable,
    S3Url,
    open_client,
    translated,
)
from tests.s3server import S3Server


def settings(server: S3Server) -> S3Settings:
    return S3Settings(
        endpoint=server.endpoint,
        access_key_id=Secret(server.access_key),
        secret_access_key=Secret(server.secret_key),
    )


async def test_a_taken_key_and_a_missing_one_are_answers_of_their_own(s3_server: S3Server) -> None:
    """A second ``If-None-Match: *`` PUT raises PreconditionFailed, a missing key NotFound."""
    async with open_client(settings(s3_server)) as s3:
        with translated("making a bucket"):
            await s3.create_bucket(Bucket="boundary")
            await s3.put_object(Bucket="boundary", Key="k", Body=Body(b"x"), IfNoneMatch="*")
        with pytest.raises(PreconditionFailed) as taken, translated("storing k"):
            await s3.put_object(Bucket="boundary", Key="k", Body=Body(b"y"), IfNoneMatch="*")
        assert taken.value.status == 412
        assert "storing k" in str(taken.value)
        with pytest.raises(NotFound), translated("reading"):
            await s3.get_object(Bucket="boundary", Key="absent")


async def test_a_wrong_key_is_a_rejection_not_a_retry(s3_server: S3Server) -> None:
    """A PUT signed with a secret the server does not know is refused for good (the same PUT
    never passes), not called unavailable."""
    wrong = S3Settings(
        endpoint=s3_server.endpoint,
        access_key_id=Secret(s3_server.access_key),
        secret_access_key=Secret("not-the-secret"),
    )
    async with open_client(wrong) as s3:
        with pytest.raises(S3Rejected) as refused, translated("storing"):
            await s3.put_object(Bucket="boundary", Key="k2", Body=Body(b"x"))
    assert not isinstance(refused.value, S3Unavailable)
    assert refused.value.status == 403


async def test_nothing_listening_is_unavailable() -> None:
    """An endpoint where nothing listens is S3Unavailable (try again later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    where = S3Settings(
        endpoint=f"http://127.0.0.1:{port}",
        access_key_id=Secret("a"),
        secret_access_key=Secret("b"),
    )
    async with open_client(where) as s3:
        with pytest.raises(S3Unavailable), translated("listing"):
            await s3.list_buckets()


async def test_a_large_compressed_body_arrives_byte_for_byte(s3_server: S3Server) -> None:
    """A 3 MiB incompressible body goes up through ``Body`` in chunks and comes back whole."""
    data = gzip.compress(os.urandom(3 * 1024 * 1024), mtime=0)
    async with open_client(settings(s3_server)) as s3:
        with translated("round trip"):
            await s3.create_bucket(Bucket="bodies")
            await s3.put_object(Bucket="bodies", Key="big", Body=Body(data))
            got = await (await s3.get_object(Bucket="bodies", Key="big"))["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_body_yields_large_chunks_not_lines() -> None:
    """Iterating a Body gives pieces of BODY_CHUNK bytes, whatever newlines the data holds."""
    data = b"a\n" * 300_000
    pieces = list(Body(data))
    assert b"".join(pieces) == data
    assert len(pieces) == 3


def test_s3_urls_parse_to_bucket_and_prefix() -> None:
    """``s3://bucket/a/b`` is bucket ``bucket`` and prefix ``a/b/``; other schemes are refused."""
    assert S3Url.parse("s3://bucket/a/b") == S3Url("bucket", "a/b/")
    assert S3Url.parse("s3://bucket") == S3Url("bucket", "")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3Url.parse("https://bucket/a")


class _InstanceMetadata(http.server.BaseHTTPRequestHandler):
    """The EC2 instance metadata service (IMDSv2) as far as the credential chain asks it (a
    session token, the role's name, the role's keys), and, on any other path, an S3 endpoint
    that notes how each request was signed and lists no buckets."""

    asked: ClassVar[list[str]] = []
    signed: ClassVar[list[tuple[str, str]]] = []  # (Authorization, X-Amz-Security-Token)

    @property
    def _path(self) -> str:
        return urlsplit(self.path).path  # (the metadata client sends the absolute form)

    def do_PUT(self) -> None:
        self._answer(b"imds-session-token" if self._path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        if not self._path.startswith("/latest/"):
            self.signed.append(
                (
                    self.headers.get("Authorization", ""),
                    self.headers.get("X-Amz-Security-Token", ""),
                )
            )
            self._answer(b"<ListAllMyBucketsResult><Buckets/></ListAllMyBucketsResult>")
            return
        self.asked.append(self._path)
        if self.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
            self._answer(None, 401)
        elif self._path == f"{_ROLES}/":
            self._answer(b"archive-writer")
        elif self._path == f"{_ROLES}/archive-writer":
            expires = datetime.now(UTC) + timedelta(hours=6)
            self._answer(
                json.dumps(
                    {
                        "Code": "Success",
                        "AccessKeyId": "ASIAROLEKEY",
                        "SecretAccessKey": "role-secret",
                        "Token": "role-session-token",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
            )
        else:
            self._answer(None)

    def _answer(self, body: bytes | None, status: int = 200) -> None:
        self.send_response(404 if body is None and status == 200 else status)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        return


_ROLES = "/latest/meta-data/iam/security-credentials"


async def test_an_instance_role_gives_the_credentials_on_trio(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no keys in the config, the environment or shared files, the client fetches the
    instance role's keys from the metadata service on trio and signs its requests with them."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    _InstanceMetadata.asked, _InstanceMetadata.signed = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _InstanceMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        here = f"http://127.0.0.1:{server.server_port}"
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", here + "/")
        async with open_client(S3Settings(endpoint=here)) as s3:
            with translated("listing with the role's keys"):
                await s3.list_buckets()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert f"{_ROLES}/archive-writer" in _InstanceMetadata.asked
    [(authorization, token)] = _InstanceMetadata.signed
    assert "Credential=ASIAROLEKEY/" in authorization
    assert token == "role-session-token"
