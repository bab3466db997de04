"""WAL append throughput beside the raw disk limit, measured in the same run.

For each batch size, and for each fsync policy, appends the same events to a fresh WAL and reports
events/s and MB/s (bytes written to the segments, framing included). The events are WAL entries
(``shipper.events.entry``: route and envelope), encoded beforehand as the pipeline does before
its append; the encoding is timed on its own row.

* ``raw disk``: the very bytes the WAL writes (prepared beforehand, not timed) written sequentially
  to one file with ``os.write`` and an ``fsync`` after each batch: what any write-ahead log with
  that durability must pay. The issue's target is ``wal fsync="batch"`` at 0.8 of it or better
  (column ``/disk``).
* ``limit``: the same plus the WAL's CPU work in a tight inline loop: cut each batch into groups
  of about ``GROUP_BYTES``, join each group and frame it (length, CRC-32C), write the buffers
  with ``writev``, fsync. The Python limit of the same work (column ``/limit``).
* ``wal fsync=...``: the WAL driven as the daemon's writer drives it: ``Wal.write`` per batch,
  keeping ``PIPELINE_DEPTH`` batches written and not yet accepted before it waits for the oldest
  (``Wal.wait_accepted``), the sync lane fsyncing meanwhile (group commit). ``wal fsync="batch",
  one at a time`` is ``Wal.append`` per batch: write, fsync, and only then the next batch.
* ``encode``: ``events.entry`` for every event (the envelope's orjson encoding), no I/O: the work
  the pipeline does before the WAL. ``encode + wal fsync="batch"`` is both, as the daemon's writer
  task does them.

All rows take turns chunk by chunk in ABBA order (``bench.timing``), each keeping its best run per
chunk: the disk's fsync latency here swings by 2x within a minute, and the rows must see the same
disk. Run: ``.venv/bin/python -m bench.wal [--events N] [--batches 100,1000,4096] [--chunks N]
[--repeats N] [--dir DIR]``.
The directory defaults to ``bench/out/wal`` on the disk of the repository (not /tmp, which may be
memory), and is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio
from crc32c import crc32c

from bench.events import generate_lines
from bench.timing import interleaved_best
from shipper.buffer.config import FSYNC_POLICIES, BufferConfig, Fsync
from shipper.buffer.record import HEADER
from shipper.buffer.segment import write_buffers
from shipper.buffer.wal import GROUP_BYTES, PIPELINE_DEPTH, Wal
from shipper.events import Event, entry

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:40000"}
RECEIVED = "2026-11-23T00:00:00.000000Z"
SEGMENT_BYTES = 256 * 1024**2  # larger than any run: no rotation inside the timed loops


def make_events(lines: Sequence[bytes]) -> list[Event]:
    """Events as the json_tls source makes them (the record kept as its exact bytes)."""
    return [Event(RECEIVED, SOURCE, "agent", line.rstrip(b"\n")) for line in lines]


def framed_batches(entries: Sequence[bytes], batch: int) -> Iterator[list[bytes]]:
    """The buffers the WAL writes per append of ``batch`` entries, made by a tight inline loop:
    groups of about ``GROUP_BYTES`` (as many entries as the previous group's average size says
    fit, halved while too many), each joined with LF and framed (length, CRC-32C)."""
    pack = HEADER.pack
    average = 512
    for index in range(0, len(entries), batch):
        part = entries[index : index + batch]
        out = []
        start, count = 0, len(part)
        while start < count:
            stop = min(count, start + max(1, GROUP_BYTES // average))
            payload = b"\n".join(part[start:stop])
            while len(payload) > GROUP_BYTES * 3 // 2 and stop - start > 1:
                stop = start + (stop - start) // 2
                payload = b"\n".join(part[start:stop])
            size = len(payload)
            average = max(1, size // (stop - start))
            out.append(pack(size, crc32c(payload, crc32c(size.to_bytes(4, "little")))))
            out.append(payload)
            start = stop
        yield out


def _timed_writes(path: Path, chunks: Iterable[list[bytes]]) -> float:
    """Seconds to take each chunk (made lazily, so making it is timed too), write its buffers to
    ``path`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    start = time.perf_counter()
    try:
        for chunk in chunks:
            write_buffers(fd, chunk)
            os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def encode_pass(events: Sequence[Event]) -> float:
    """Seconds to encode every event as a WAL entry."""
    start = time.perf_counter()
    for event in events:
        entry(event)
    return time.perf_counter() - start


def wal_pass(
    items: Sequence[bytes] | Sequence[Event],
    batch: int,
    policy: Fsync,
    directory: Path,
    depth: int = PIPELINE_DEPTH,
) -> tuple[float, int, int]:
    """Seconds to append every item in batches of ``batch``, the bytes the WAL wrote, and the
    fsyncs it counted (those that accept batches). Events are encoded as entries inside the
    timed loop, batch by batch, as the daemon's writer does.

    ``depth``: batches written and not yet waited for, as the daemon's writer keeps them
    (``Wal.write``, then ``Wal.wait_accepted`` of the oldest, with the sync lane ``Wal.run``
    fsyncing meanwhile); 0: one ``Wal.append`` at a time."""
    shutil.rmtree(directory, ignore_errors=True)
    wal = Wal(
        directory, BufferConfig(max_bytes=64 * 1024**3, segment_bytes=SEGMENT_BYTES, fsync=policy)
    )
    wal.open({"bench": None})
    encode = bool(items) and isinstance(items[0], Event)

    async def run() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wal.run)
            start = time.perf_counter()
            pending: deque[int] = deque()
            for index in range(0, len(items), batch):
                part = items[index : index + batch]
                entries = [entry(e) for e in part] if encode else part  # type: ignore[arg-type]
                if not depth:
                    await wal.append(entries)  # type: ignore[arg-type]
                    continue
                seq = await wal.write(entries)  # type: ignore[arg-type]
                assert seq is not None
                pending.append(seq)
                while len(pending) > depth:
                    await wal.wait_accepted(pending.popleft())
            for seq in pending:
                await wal.wait_accepted(seq)
            elapsed = time.perf_counter() - start
            await wal.close()
        return elapsed

    elapsed = trio.run(run)
    written, fsyncs = wal.counters["bytes"], wal.counters["fsyncs"]
    wal.release()
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed, written, fsyncs


ROWS = (
    "raw disk: write + fsync per batch",
    "limit: group+frame+write+fsync",
    'wal fsync="batch"',
    'wal fsync="batch", one at a time',
    'wal fsync="interval"',
    'wal fsync="never"',
    'encode + wal fsync="batch"',
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batches", default="100,1000,4096", help="events per append")
    parser.add_argument("--chunks", type=int, default=4, help="parts the events are timed in")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row and chunk (best kept)")
    parser.add_argument("--dir", type=Path, default=Path("bench/out/wal"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    events = make_events(generate_lines(args.events, 100))
    entries = [entry(event) for event in events]
    count = len(entries)
    step = -(-count // args.chunks)
    parts = [(events[i : i + step], entries[i : i + step]) for i in range(0, count, step)]
    print(f"{count} events in {len(parts)} chunks, best of {args.repeats}; WAL in {args.dir}")
    print(
        f"{'stage':<34}{'batch':>6}{'events/s':>12}{'MB/s':>9}{'/disk':>7}{'/limit':>7}"
        f"{'fsyncs/batch':>14}"
    )
    try:
        seconds = min(encode_pass(events) for _ in range(args.repeats))
        print(f"{'encode: events.entry(event)':<34}{'':>6}{count / seconds:>12,.0f}")
        fsyncs: Counter[tuple[int, str]] = Counter()  # per batch size and row, over all runs
        appends: Counter[tuple[int, str]] = Counter()
        for batch in (int(b) for b in args.batches.split(",")):
            joined = [
                [[b"".join(buffers)] for buffers in framed_batches(part, batch)]
                for _, part in parts
            ]
            size = sum(len(chunk[0]) for chunks in joined for chunk in chunks)

            def run(name: str, index: int, batch: int = batch, joined: list[Any] = joined) -> float:
                part_events, part = parts[index]
                appends[batch, name] += len(joined[index])
                if name in ROWS[:2]:
                    fsyncs[batch, name] += len(joined[index])  # one per batch
                if name == ROWS[0]:
                    return _timed_writes(args.dir / "raw.bin", joined[index])
                if name == ROWS[1]:
                    return _timed_writes(args.dir / "limit.bin", framed_batches(part, batch))
                items = part_events if name == ROWS[6] else part
                policy = FSYNC_POLICIES[FSYNC_POLICIES.index(name.split('"')[1])]
                depth = 0 if name == ROWS[3] else PIPELINE_DEPTH
                elapsed, written, synced = wal_pass(items, batch, policy, args.dir / "w", depth)
                fsyncs[batch, name] += synced
                expected = sum(len(chunk[0]) for chunk in joined[index])
                if written != expected:  # the limits write what the WAL writes, byte for byte
                    raise SystemExit(f"the WAL wrote {written} bytes, the limits {expected}")
                return elapsed

            best = interleaved_best(ROWS, len(parts), args.repeats, run)
            disk, limit = best[ROWS[0]], best[ROWS[1]]
            for label in ROWS:
                seconds = best[label]
                per_batch = fsyncs[batch, label] / appends[batch, label]
                print(
                    f"{label:<34}{batch:>6}{count / seconds:>12,.0f}{size / seconds / 1e6:>9.1f}"
                    f"{disk / seconds:>7.2f}{limit / seconds:>7.2f}{per_batch:>14.2f}"
                )
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
