"""WAL append throughput beside the raw disk limit, measured in the same run.

For each batch size, and for each fsync policy, appends the same events to a fresh WAL and reports
events/s and MB/s (bytes written to the segments, framing included). The events are WAL entries
(``shipper.buffer.wal.entry``: route and envelope), encoded beforehand as the pipeline does before
its append; the encoding is timed on its own row.

* ``raw disk``: the very bytes the WAL writes (prepared beforehand, not timed) written sequentially
  to one file with ``os.write`` and an ``fsync`` after each batch: what any write-ahead log with
  that durability must pay. The issue's target is ``wal fsync="batch"`` at 0.8 of it or better
  (column ``/disk``).
* ``limit``: the same plus the WAL's CPU work in a tight inline loop: cut each batch into groups
  of about ``GROUP_BYTES``, join each group and frame it (length, CRC-32C), write, fsync. The
  Python limit of the same work (column ``/limit``).
* ``encode``: ``wal.entry`` for every event (the envelope's orjson encoding), no I/O: the work
  the pipeline does before the WAL. ``encode + wal fsync="batch"`` is both, as the daemon's writer
  task does them.

Run: ``.venv/bin/python -m bench.wal [--events N] [--batches 100,1000,4096] [--dir DIR]``.
The directory defaults to ``bench/out/wal`` on the disk of the repository (not /tmp, which may be
memory), and is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from pathlib import Path

import trio
from crc32c import crc32c

from bench.events import generate_lines
from shipper.buffer.record import HEADER
from shipper.buffer.segment import write_buffers
from shipper.buffer.wal import GROUP_BYTES, Wal, WalSettings, entry
from shipper.events import Event

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:40000"}
RECEIVED = "2026-11-23T00:00:00.000000Z"
SEGMENT_BYTES = 256 * 1024**2  # larger than any run: no rotation inside the timed loops


def make_events(lines: Sequence[bytes]) -> list[Event]:
    """Events as the json_tls source makes them (the record kept as its exact bytes)."""
    return [Event(RECEIVED, SOURCE, "agent", line.rstrip(b"\n")) for line in lines]


def framed_batches(entries: Sequence[bytes], batch: int) -> Iterator[list[bytes]]:
    """The buffers the WAL writes per append of ``batch`` entries, made by a tight inline loop:
    groups of about ``GROUP_BYTES``, each joined with LF and framed (length, CRC-32C)."""
    pack = HEADER.pack
    for index in range(0, len(entries), batch):
        part = entries[index : index + batch]
        ends = list(accumulate(map(len, part)))
        out = []
        start, base = 0, 0
        while start < len(part):
            stop = max(bisect_right(ends, base + GROUP_BYTES, start), start + 1)
            payload = b"\n".join(part[start:stop])
            size = len(payload)
            out.append(pack(size, crc32c(payload, crc32c(size.to_bytes(4, "little")))))
            out.append(payload)
            base = ends[stop - 1]
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
    items: Sequence[bytes] | Sequence[Event], batch: int, policy: str, directory: Path
) -> tuple[float, int]:
    """Seconds to append every item in batches of ``batch``, and the bytes the WAL wrote. Events
    are encoded as entries inside the timed loop, batch by batch, as the daemon's writer does."""
    shutil.rmtree(directory, ignore_errors=True)
    wal = Wal(
        directory, WalSettings(max_bytes=64 * 1024**3, segment_bytes=SEGMENT_BYTES, fsync=policy)
    )
    wal.open({"bench": None})

    async def run() -> float:
        start = time.perf_counter()
        for index in range(0, len(items), batch):
            part = items[index : index + batch]
            await wal.append([entry(e) if isinstance(e, Event) else e for e in part])
        elapsed = time.perf_counter() - start
        await wal.close()
        return elapsed

    elapsed = trio.run(run)
    written = wal.counters["bytes"]
    wal.release()
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed, written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batches", default="100,1000,4096", help="events per append")
    parser.add_argument("--repeat", type=int, default=3, help="passes per row (best kept)")
    parser.add_argument("--dir", type=Path, default=Path("bench/out/wal"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    events = make_events(generate_lines(args.events, 100))
    entries = [entry(event) for event in events]
    count = len(entries)
    print(f"{count} events, WAL in {args.dir}")
    print(f"{'stage':<34}{'batch':>6}{'events/s':>12}{'MB/s':>9}{'/disk':>7}{'/limit':>7}")
    try:
        seconds = min(encode_pass(events) for _ in range(args.repeat))
        print(f"{'encode: wal.entry(event)':<34}{'':>6}{count / seconds:>12,.0f}")
        for batch in (int(b) for b in args.batches.split(",")):
            chunks = [[b"".join(buffers)] for buffers in framed_batches(entries, batch)]
            size = sum(len(c[0]) for c in chunks)
            disk = limit = float("inf")
            for _ in range(args.repeat):  # alternate, so that a slow spell hits both alike
                disk = min(disk, _timed_writes(args.dir / "raw.bin", chunks))
                limit = min(
                    limit, _timed_writes(args.dir / "limit.bin", framed_batches(entries, batch))
                )
            rows = [("raw disk: write + fsync per batch", disk, size)]
            rows.append(("limit: group+frame+write+fsync", limit, size))
            for policy in ("batch", "interval", "never"):
                elapsed, written = min(
                    wal_pass(entries, batch, policy, args.dir / "w") for _ in range(args.repeat)
                )
                if written != size:
                    raise SystemExit(f"the WAL wrote {written} bytes, the limits {size}")
                rows.append((f'wal fsync="{policy}"', elapsed, written))
            elapsed, written = min(
                wal_pass(events, batch, "batch", args.dir / "w") for _ in range(args.repeat)
            )
            rows.append(('encode + wal fsync="batch"', elapsed, written))
            for label, seconds, written in rows:
                print(
                    f"{label:<34}{batch:>6}{count / seconds:>12,.0f}{written / seconds / 1e6:>9.1f}"
                    f"{disk / seconds:>7.2f}{limit / seconds:>7.2f}"
                )
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
