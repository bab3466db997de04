"""WAL append throughput beside the raw disk limit, measured in the same run.

For each batch size, and for each fsync policy, appends the same events to a fresh WAL and reports
events/s and MB/s (bytes written to the segments, framing included). The raw disk limit writes the
very same bytes (the encoded records, prepared beforehand and not timed) sequentially to one file
with ``os.write``, and ``fsync`` after each batch: what any write-ahead log with that durability
must pay. A second limit adds the WAL's per-event CPU work in a tight loop (encode the envelope
with its id, frame it with length and CRC-32C): the Python limit of the same work. Ratios are to
that limit at the same batch size; the issue's target is 0.8 or better with ``fsync = "batch"``.
On a machine whose disk is faster than one core can encode, the raw disk row is far above both.

Run: ``.venv/bin/python -m bench.wal [--events N] [--batches 100,1000,4096] [--dir DIR]``.
The directory defaults to ``bench/out/wal`` on the disk of the repository (not /tmp, which may be
memory), and is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import trio

from bench.events import generate_lines
from shipper.buffer import record as records
from shipper.buffer.segment import write_all
from shipper.buffer.wal import Wal, WalSettings
from shipper.events import Event

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:40000"}
RECEIVED = "2026-11-23T00:00:00.000000Z"


def make_events(lines: Sequence[bytes]) -> list[Event]:
    """Events as the json_tls source makes them (the record kept as its exact bytes)."""
    return [Event(RECEIVED, SOURCE, "agent", line.rstrip(b"\n")) for line in lines]


def _timed_writes(path: Path, chunks: Iterable[bytes]) -> float:
    """Seconds to take each chunk (made lazily, so making it is timed too), write it to ``path``
    and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    start = time.perf_counter()
    try:
        for chunk in chunks:
            write_all(fd, chunk)
            os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def raw_limit(chunks: Sequence[bytes], directory: Path) -> float:
    """Seconds to write ``chunks`` sequentially to one file with an fsync after each."""
    return _timed_writes(directory / "raw.bin", chunks)


def same_work_limit(events: Sequence[Event], batch: int, directory: Path) -> float:
    """Seconds for a tight loop doing the WAL's per-event work: encode the envelope with its id,
    frame it (length, CRC-32C), write each batch and fsync it. No trio, no threads, no state."""
    encode = records.encode

    def batches() -> Iterator[bytes]:
        offset = 16
        for index in range(0, len(events), batch):
            parts = []
            for event in events[index : index + batch]:
                framed = encode(b"agents\0" + event.encode(f"1-{offset}"))
                parts.append(framed)
                offset += len(framed)
            yield b"".join(parts)

    return _timed_writes(directory / "same.bin", batches())


def wal_pass(
    events: Sequence[Event], batch: int, policy: str, directory: Path
) -> tuple[float, int]:
    """Seconds to append every event in batches of ``batch``, and the bytes the WAL wrote."""
    shutil.rmtree(directory, ignore_errors=True)
    wal = Wal(
        directory,
        WalSettings(max_bytes=64 * 1024**3, segment_bytes=256 * 1024**2, fsync=policy),
    )
    wal.open({"bench": None})

    async def run() -> float:
        start = time.perf_counter()
        for index in range(0, len(events), batch):
            await wal.append(events[index : index + batch])
        elapsed = time.perf_counter() - start
        await wal.close()
        return elapsed

    elapsed = trio.run(run)
    written = wal.counters["bytes"]
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed, written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batches", default="100,1000,4096", help="events per append")
    parser.add_argument("--repeat", type=int, default=2, help="passes per row (best kept)")
    parser.add_argument("--dir", type=Path, default=Path("bench/out/wal"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    lines = generate_lines(args.events, 100)
    events = make_events(lines)
    print(f"{len(events)} events, WAL in {args.dir}")
    print(f"{'stage':<34}{'batch':>6}{'events/s':>12}{'MB/s':>9}{'ratio':>7}")
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            # The same bytes the WAL writes (ids included), grouped as the WAL groups them.
            chunks = [
                records.encode_many(
                    [
                        b"agents\0" + event.encode(f"1-{index + n}")
                        for n, event in enumerate(events[index : index + batch])
                    ]
                )
                for index in range(0, len(events), batch)
            ]
            size = sum(len(c) for c in chunks)
            disk = min(raw_limit(chunks, args.dir) for _ in range(args.repeat))
            limit = min(same_work_limit(events, batch, args.dir) for _ in range(args.repeat))
            for label, seconds in (
                ("raw disk: write + fsync per batch", disk),
                ("limit: encode+frame+write+fsync", limit),
            ):
                print(
                    f"{label:<34}{batch:>6}{len(events) / seconds:>12,.0f}"
                    f"{size / seconds / 1e6:>9.1f}{limit / seconds:>7.2f}"
                )
            for policy in ("batch", "interval", "never"):
                elapsed, written = min(
                    wal_pass(events, batch, policy, args.dir / "w") for _ in range(args.repeat)
                )
                label = f'wal fsync="{policy}"'
                print(
                    f"{label:<34}{batch:>6}{len(events) / elapsed:>12,.0f}"
                    f"{written / elapsed / 1e6:>9.1f}{limit / elapsed:>7.2f}"
                )
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
