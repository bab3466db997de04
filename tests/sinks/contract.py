"""The sink contract suite's harnesses: how each sink is built, read back and made to fail.

``tests/sinks/test_contract.py`` runs one set of tests against every harness in ``HARNESSES``.
A sink joins the suite with one line there: its name, a function that builds its harness in a
temporary directory (a context manager, so that it can mount or start what it needs), and
whether its destination can refuse a batch (only those run the refusal tests). A harness says
whether its sink delivers exactly once (``exactly_once``: it can tell what its destination
holds) or at least once with an idempotency key (its ``held`` is then what a receiver that
drops a key it has seen holds).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import trio

from shipper.archive.manifest import MANIFEST_DIR
from shipper.buffer.config import BufferConfig
from shipper.buffer.segment import Position
from shipper.buffer.wal import ReadBatch, Wal, WalReader
from shipper.chain import SEED
from shipper.config import parse_config
from shipper.events import Event, entry, envelopes
from shipper.metrics import Health
from shipper.retry import RetryPolicy
from shipper.sinks.base import Batch, BatchSettings, Sink, SinkContext, position_of
from shipper.sinks.cef_syslog import CefSyslogSink
from shipper.sinks.file import FileSink, FileSinkConfig
from tests.cefparse import needs_lognormalizer, parse_cef
from tests.conftest import archive_lines, tmpfs
from tests.peers import needs_rsyslogd
from tests.s3archive import sink_table, sync_client
from tests.s3server import S3Server
from tests.siem import Siem, cef_of
from tests.sinks.memory import FAST, MemoryDestination, MemorySink
from tests.tcpproxy import Proxy, proxy_to
from tests.webhooks import Receiver, hook, receiving

SINK = "contract"
SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}


class Harness(Protocol):
    """What the suite needs to know of a sink and its destination."""

    #: Whether the sink knows what its destination holds (``resume_point``), so that a crash
    #: between delivery and acknowledgement leaves nothing to send again.
    exactly_once: bool

    def sink(self) -> Sink:
        """A new sink on the destination (a restart builds another one), retrying fast."""
        ...

    def held(self) -> list[bytes]:
        """The envelopes the destination holds, in order."""
        ...

    def make_unavailable(self) -> None:
        """From now on the destination takes nothing (and says it is unavailable)."""
        ...

    def make_available(self) -> None: ...


class Refusing(Harness, Protocol):
    """A harness whose destination can refuse batches."""

    def refuse(self, poison: bytes) -> None:
        """From now on the destination refuses for good every batch with ``poison`` in it."""
        ...


@dataclass(frozen=True)
class Kind:
    """How to build a sink's harness, and whether it can refuse (``Refusing``)."""

    make: Callable[[Path], contextlib.AbstractContextManager[Harness]]
    can_refuse: bool


class FileHarness:
    """The file sink on a small tmpfs: unavailable is a full disk. Each line has a file of its
    own (``max_file_bytes = 1``), so every write needs new room on the disk."""

    exactly_once = True

    def __init__(self, disk: Path) -> None:
        self.path = disk / "archive"
        self.ballast = disk / "ballast"

    def sink(self) -> Sink:
        sink = FileSink(FileSinkConfig(id=SINK, path=self.path, max_file_bytes=1))
        sink.retry_policy = FAST
        return sink

    def held(self) -> list[bytes]:
        return archive_lines(self.path)

    def make_unavailable(self) -> None:
        with open(self.ballast, "wb", buffering=0) as ballast:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        ballast.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def make_available(self) -> None:
        self.ballast.unlink()


@contextlib.contextmanager
def file_harness(tmp_path: Path) -> Iterator[Harness]:
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        yield FileHarness(disk)


class MemoryHarness:
    """The test-only memory sink: a destination the test switches off and poisons."""

    exactly_once = True

    def __init__(self) -> None:
        self.destination = MemoryDestination()

    def sink(self) -> Sink:
        return MemorySink(SINK, self.destination)

    def held(self) -> list[bytes]:
        return list(self.destination.held)

    def make_unavailable(self) -> None:
        self.destination.available = False

    def make_available(self) -> None:
        self.destination.available = True

    def refuse(self, poison: bytes) -> None:
        self.destination.poison = poison


@contextlib.contextmanager
def memory_harness(tmp_path: Path) -> Iterator[Harness]:
    yield MemoryHarness()


class S3Harness:
    """The s3 sink on a bucket of the real S3 server, reached through a proxy: unavailable is
    the network cut. What it holds is read back with a synchronous client."""

    exactly_once = True

    def __init__(self, server: S3Server, proxy: Proxy) -> None:
        self.server = server
        self.proxy = proxy
        self.client = sync_client(server)
        self.bucket = f"contract-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)

    def sink(self) -> Sink:
        table = sink_table(self.server, self.bucket, endpoint=self.proxy.url)
        table["batch"] = {"timeout": "10ms"}
        source = {"type": "json_tls", "address": "127.0.0.1:0"}
        config = parse_config({"sources": {"a": source}, "sinks": {SINK: table}}).sinks[SINK]
        sink = config.build(SinkContext(SEED))
        sink.retry_policy = FAST
        return sink

    def held(self) -> list[bytes]:
        lines: list[bytes] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"].startswith(MANIFEST_DIR):
                    continue
                data = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                lines.extend(gzip.decompress(data).splitlines())
        return sorted(lines, key=lambda line: position_of(line))

    def make_unavailable(self) -> None:
        self.proxy.cut()

    def make_available(self) -> None:
        self.proxy.restore()


@contextlib.contextmanager
def s3_harness(tmp_path: Path) -> Iterator[Harness]:
    server = SERVERS.get("s3")
    if server is None:
        raise RuntimeError("the s3 harness needs the s3_server fixture (see test_contract.py)")
    host, port = server.endpoint.removeprefix("http://").split(":")
    with proxy_to(host, int(port)) as proxy:
        yield S3Harness(server, proxy)


class CefSyslogHarness:
    """The cef_syslog sink to a private rsyslogd (the SIEM's receiver): unavailable is rsyslogd
    stopped. What it holds is read back with lognormalizer: each message's ``externalId`` (the
    event's id) and ``cn2`` (mapped from the record's ``n``) make an envelope again.

    Syslog has no acknowledgement, so this sink delivers at least once: what it wrote and the
    driver did not acknowledge before a crash comes again, with the same ``externalId``:
    ``held`` is what a receiver that drops an ``externalId`` it has seen holds."""

    exactly_once = False

    def __init__(self, siem: Siem, work: Path) -> None:
        self.siem = siem
        self.work = work
        self.sinks: list[CefSyslogSink] = []

    def sink(self) -> Sink:
        table = {
            "type": "cef_syslog",
            "address": f"127.0.0.1:{self.siem.port}",
            "mapping": {"cn2": "record.n"},
        }
        source = {"type": "json_tls", "address": "127.0.0.1:0"}
        config = parse_config({"sources": {"a": source}, "sinks": {SINK: table}}).sinks[SINK]
        sink = config.build(SinkContext(SEED))
        assert isinstance(sink, CefSyslogSink)
        sink.retry_policy = FAST
        self.sinks.append(sink)
        return sink

    def held(self) -> list[bytes]:
        written = sum(sink.counters["messages_written"] for sink in self.sinks)
        received = self.siem.wait_for_sync(written)
        parsed = parse_cef([cef_of(message) for message in received], self.work)
        held = []
        seen: set[str] = set()
        for cef in parsed:
            assert cef is not None
            extension = cef["Extensions"]
            if extension["externalId"] in seen:
                continue
            seen.add(extension["externalId"])
            record = {"n": int(extension["cn2"])}
            held.append(orjson.dumps({"v": 1, "id": extension["externalId"], "record": record}))
        return held

    def make_unavailable(self) -> None:
        self.siem.stop()

    def make_available(self) -> None:
        self.siem.start_sync()


@contextlib.contextmanager
def cef_syslog_harness(tmp_path: Path) -> Iterator[Harness]:
    needs_rsyslogd()
    needs_lognormalizer()
    siem = Siem(tmp_path / "siem")
    siem.start_sync()
    try:
        yield CefSyslogHarness(siem, tmp_path)
    finally:
        siem.stop()


class WebhookHarness:
    """The webhook sink to a real HTTP receiver: unavailable is the receiver answering 503,
    a refusal its 400. A receiver cannot be asked what it holds, so a batch taken but not
    acknowledged comes again, with the same webhook-id: ``held`` is what a receiver that drops
    a webhook-id it has seen holds."""

    exactly_once = False

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def sink(self) -> Sink:
        return hook(self.receiver.url, sink_id=SINK, flush_interval="10ms")

    def held(self) -> list[bytes]:
        return self.receiver.held()

    def make_unavailable(self) -> None:
        self.receiver.down = True

    def make_available(self) -> None:
        self.receiver.down = False

    def refuse(self, poison: bytes) -> None:
        self.receiver.poison = poison


@contextlib.contextmanager
def webhook_harness(tmp_path: Path) -> Iterator[Harness]:
    with receiving() as receiver:
        yield WebhookHarness(receiver)


#: Session servers a harness needs, put here by the harness fixture (``"s3"``: the S3 server).
SERVERS: dict[str, S3Server] = {}
#: Which session fixture each harness needs.
NEEDS: dict[str, str] = {"s3": "s3_server"}

HARNESSES: dict[str, Kind] = {
    "file": Kind(file_harness, can_refuse=False),
    "memory": Kind(memory_harness, can_refuse=True),
    "s3": Kind(s3_harness, can_refuse=False),
    "cef_syslog": Kind(cef_syslog_harness, can_refuse=False),
    "webhook": Kind(webhook_harness, can_refuse=True),
}


# --- the WAL side --------------------------------------------------------------------------------


def open_wal(directory: Path) -> Wal:
    """The WAL in ``directory`` (created or recovered), with one reader, the sink's."""
    wal = Wal(directory, BufferConfig(), envelopes=envelopes)
    wal.open({SINK: None})
    return wal


async def reopen(wal: Wal) -> Wal:
    """Close ``wal`` and open its directory again, as a restart of the daemon does."""
    await wal.close()
    wal.release()
    return open_wal(wal.directory)


def entries(first: int, count: int, **fields: Any) -> list[bytes]:
    """WAL entries of events whose records hold ``n`` = first, first+1, ... and ``fields``."""
    return [
        entry(
            Event(
                "2026-11-23T00:00:00.000000Z",
                SOURCE,
                "a",
                orjson.dumps({"n": n, "pad": "x" * 200, **fields}),
            )
        )
        for n in range(first, first + count)
    ]


def numbers(envelopes: list[bytes]) -> list[int]:
    """The ``n`` of each envelope's record, in order."""
    return [orjson.loads(envelope)["record"]["n"] for envelope in envelopes]


def ids(envelopes: list[bytes]) -> list[str]:
    return [orjson.loads(envelope)["id"] for envelope in envelopes]


class Watched:
    """A sink's WAL reader whose acknowledgements a test can await."""

    def __init__(self, reader: WalReader) -> None:
        self.reader = reader
        self.acks: list[Position] = []
        self._acked = trio.Event()

    async def read(self, max_bytes: int) -> ReadBatch | None:
        return await self.reader.read(max_bytes)

    async def ack(self, end: Position) -> None:
        await self.reader.ack(end)
        self.acks.append(end)
        self._acked.set()
        self._acked = trio.Event()

    async def acked_to(self, position: Position) -> None:
        """Wait until everything before ``position`` is acknowledged."""
        while self.reader.acked < position:
            await self._acked.wait()


class CrashAfterDelivery:
    """``inner``, except that once its destination has taken ``deliveries`` batches it dies:
    ``scope`` is cancelled before the driver gets to acknowledge the batch."""

    def __init__(self, inner: Sink, scope: trio.CancelScope, deliveries: int = 1) -> None:
        self.inner = inner
        self.scope = scope
        self.left = deliveries
        self.id = inner.id
        self.kind = inner.kind
        self.retry_policy: RetryPolicy = inner.retry_policy
        self.batching: BatchSettings = inner.batching

    async def open(self, epoch: str) -> None:
        await self.inner.open(epoch)

    async def resume_point(self) -> Position | None:
        return await self.inner.resume_point()

    async def deliver(self, batch: Batch) -> None:
        await self.inner.deliver(batch)
        self.left -= 1
        if not self.left:
            self.scope.cancel()
            await trio.lowlevel.checkpoint()  # dies here: taken, never acknowledged

    async def close(self) -> None:
        await self.inner.close()

    def health(self) -> Health:
        return self.inner.health()
