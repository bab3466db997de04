"""Where an archive's bytes come from: a store lists, reads and heads its objects, so that
``verify`` checks an S3 archive and a directory of files the same way.

* Keys are relative to the archive's root (an S3 prefix, a directory): ``manifests/...``,
  ``year=2026/.../x.jsonl.gz``, ``events-...jsonl``.
* ``read`` and ``head`` raise ``Missing`` for a key that is not there (an answer about the
  archive); anything that keeps the store from answering (S3 unreachable, refused, a directory
  that cannot be read) raises a ``ShipperError`` (``S3Unavailable``, ``S3Rejected``,
  ``ArchiveUnreadable``): then nothing can be said about the archive.
* ``Meta`` is what a store knows of an object beside its bytes: when it was stored and its
  Object Lock (mode and retain-until date; None for a directory, and for an unlocked object).
* Versions (``versions``): an S3 bucket with versioning (every bucket with Object Lock) keeps
  every version of a key. A ``DELETE`` without a version id removes nothing there: it puts a
  *delete marker* on top, which hides the key from ``ListObjectsV2`` and plain reads while its
  versions stay. ``S3Store`` therefore lists versions (``ListObjectVersions``): ``list`` holds
  every key with a stored version, hidden ones included, and ``read`` and ``head`` of a hidden
  key read its newest stored version (the evidence, as it would be restored); ``versions`` says
  which keys are hidden or hold more than one version. A directory keeps no versions.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import trio

from shipper.errors import ShipperError
from shipper.s3 import NotFound, S3Url, translated


class ArchiveUnreadable(ShipperError):
    """The archive could not be read (a directory missing or unreadable): nothing can be said
    about it until that is fixed."""


class Missing(Exception):
    """The key is not in the archive (an answer, not a failure)."""


@dataclass(frozen=True, slots=True)
class Listed:
    """An object as a listing shows it: its key (relative to the archive) and size."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class KeyVersions:
    """A key's history in a versioned bucket: its stored versions' ids, newest first, and its
    delete markers' ids; ``hidden`` when its newest version is a delete marker."""

    key: str
    versions: tuple[str, ...]
    markers: tuple[str, ...]
    hidden: bool


@dataclass(frozen=True, slots=True)
class Meta:
    """What a store knows of an object beside its bytes."""

    last_modified: datetime | None = None
    lock_mode: str | None = None
    retain_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Blob:
    """An object's bytes, and what was said of it with them."""

    data: bytes
    meta: Meta


class Store(Protocol):
    """Read access to an archive (see the module docstring)."""

    #: The archive, for messages: ``s3://bucket/prefix/`` or a directory.
    name: str
    #: The keys' prefix in the store beneath (an S3 prefix; "" for a directory).
    prefix: str

    async def list(self) -> list[Listed]:
        """Every object of the archive."""
        ...

    async def read(self, key: str) -> Blob:
        """An object's bytes (and what came with them)."""
        ...

    async def head(self, key: str) -> Meta:
        """What the store knows of an object, without its bytes."""
        ...

    def versions(self) -> dict[str, KeyVersions]:
        """After ``list``: the keys hidden by a delete marker or holding more than one version
        (none without versioning)."""
        ...


class DirStore:
    """The files of a directory (not its subdirectories): the file sink's archive."""

    prefix = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    async def list(self) -> list[Listed]:
        return await trio.to_thread.run_sync(self._list)

    def _list(self) -> builtins.list[Listed]:
        try:
            with os.scandir(self.path) as entries:
                return [
                    Listed(entry.name, entry.stat().st_size)
                    for entry in entries
                    if entry.is_file(follow_symlinks=False)
                ]
        except OSError as exc:
            raise ArchiveUnreadable(f"cannot list {self.path}: {exc.strerror or exc}") from exc

    async def read(self, key: str) -> Blob:
        return await trio.to_thread.run_sync(self._read, key)

    def _read(self, key: str) -> Blob:
        path = self.path / key
        try:
            with open(path, "rb") as file:
                stat = os.fstat(file.fileno())
                return Blob(file.read(), _file_meta(stat))
        except FileNotFoundError as exc:
            raise Missing(key) from exc
        except OSError as exc:
            raise ArchiveUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc

    async def head(self, key: str) -> Meta:
        try:
            return _file_meta(await trio.to_thread.run_sync(os.stat, self.path / key))
        except FileNotFoundError as exc:
            raise Missing(key) from exc
        except OSError as exc:
            raise ArchiveUnreadable(f"cannot read {self.path / key}: {exc}") from exc

    def versions(self) -> dict[str, KeyVersions]:
        return {}


def _file_meta(stat: os.stat_result) -> Meta:
    return Meta(last_modified=datetime.fromtimestamp(stat.st_mtime, UTC))


class S3Store:
    """The objects under an S3 prefix, through a client from ``shipper.s3.open_client``."""

    def __init__(self, client: Any, url: S3Url) -> None:
        self.client = client
        self.url = url
        self.name = str(url)
        self.prefix = url.prefix
        self._versions: dict[str, KeyVersions] = {}
        self._hidden: dict[str, str] = {}  # a hidden key: the version read for it

    async def list(self) -> list[Listed]:
        found: list[Listed] = []
        self._versions, self._hidden = {}, {}
        for full, (history, size) in (
            await list_versions(self.client, self.url.bucket, self.prefix)
        ).items():
            key = full[len(self.prefix) :]
            if history.hidden or len(history.versions) > 1:
                self._versions[key] = history
            if history.versions:
                found.append(Listed(key, size))
                if history.hidden:
                    self._hidden[key] = history.versions[0]
        return found

    def versions(self) -> dict[str, KeyVersions]:
        return self._versions

    async def read(self, key: str) -> Blob:
        full = self.prefix + key
        try:
            with translated(f"reading s3://{self.url.bucket}/{full}"):
                answer = await self.client.get_object(
                    Bucket=self.url.bucket, Key=full, **self._version_of(key)
                )
                async with answer["Body"] as body:
                    data = await body.read()
        except NotFound as exc:
            raise Missing(key) from exc
        return Blob(bytes(data), _s3_meta(answer))

    async def head(self, key: str) -> Meta:
        full = self.prefix + key
        try:
            with translated(f"reading s3://{self.url.bucket}/{full}"):
                answer = await self.client.head_object(
                    Bucket=self.url.bucket, Key=full, **self._version_of(key)
                )
        except NotFound as exc:
            raise Missing(key) from exc
        return _s3_meta(answer)

    def _version_of(self, key: str) -> dict[str, str]:
        version = self._hidden.get(key)
        return {} if version is None else {"VersionId": version}


async def list_versions(
    client: Any, bucket: str, prefix: str
) -> dict[str, tuple[KeyVersions, int]]:
    """Every key of ``bucket`` under ``prefix`` (a whole key: that key alone) with its history,
    and the size of its newest stored version (0: none), by full key, in key order. A bucket
    without versioning answers one version (``null``) a key."""
    versions: dict[str, list[str]] = {}
    markers: dict[str, list[str]] = {}
    latest_marker: set[str] = set()
    sizes: dict[str, int] = {}
    paginator = client.get_paginator("list_object_versions")
    with translated(f"listing the versions of s3://{bucket}/{prefix}"):
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Versions", ()):  # (a key's newest first)
                key = str(item["Key"])
                versions.setdefault(key, []).append(str(item["VersionId"]))
                sizes.setdefault(key, int(item.get("Size", 0)))
            for item in page.get("DeleteMarkers", ()):
                key = str(item["Key"])
                markers.setdefault(key, []).append(str(item["VersionId"]))
                if item.get("IsLatest"):
                    latest_marker.add(key)
    return {
        key: (
            KeyVersions(
                key,
                tuple(versions.get(key, ())),
                tuple(markers.get(key, ())),
                key in latest_marker,
            ),
            sizes.get(key, 0),
        )
        for key in sorted(versions.keys() | markers.keys())
    }


def _s3_meta(answer: dict[str, Any]) -> Meta:
    return Meta(
        last_modified=_utc(answer.get("LastModified")),
        lock_mode=answer.get("ObjectLockMode"),
        retain_until=_utc(answer.get("ObjectLockRetainUntilDate")),
    )


def _utc(value: Any) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None
