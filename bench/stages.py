"""The daemon's per-event stages on one core, each timed alone, beside the limit of the same work.

End-to-end runs (``make bench``) put every process on a shared two-core machine, where the
figures swing by 20% from run to run and a change worth 5% cannot be seen. This bench times the
stages an event goes through in the daemon, in one process, over the same seed-format chained
lines (``bench.events.generate_lines``), in chunks of ``--chunk`` lines (about what one socket
read or one worker frame holds):

* ``decode``: the ``json_tls`` source's ``_decode`` of a chunk's frames (``orjson.loads``, the
  depth and member-name checks, the agent, the stateless half of the chain check: canonical form,
  sha256, ``Facts``), the ``Event`` per line;
* ``seal``: the source's ``_seal`` (the envelope encoded once, cut where ``chain`` goes);
* ``chain``: ``ChainStage.process`` (per agent: sequence, link, duplicates);
* ``entries``: ``shipper.events.entry`` of each verified event (the verdict spliced in): the
  bytes the WAL appends;
* ``handoff``, with ingest workers only: the worker's ``rows`` and pickled frame, and the main
  process's unpickling and ``events``: what crossing a pipe adds per event.

``limit`` is the tight loop of ``make bench``'s "limit with chain" row (``bench.__main__``
``limit_chain_pass``: parse, canonical form and sha256, link check, envelope), written to
``/dev/null``. The daemon's main process in one process does ``decode`` to ``entries`` (plus
the socket reads, framing, the WAL and trio's scheduling, which this bench leaves out); the
``one process`` row is their sum.

Each repeat runs the limit and the stages over every chunk (a fresh chain stage each time, the
stages in their order, the limit first in odd repeats and last in even ones); each row keeps
its best repeat. The garbage collector is set as the daemon sets it (``shipper.heap``).

Run: ``make bench-stages`` or ``.venv/bin/python -m bench.stages [--events N] [--agents N]
[--chunk N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.__main__ import limit_chain_pass
from bench.events import generate_lines
from shipper.chain import SEED
from shipper.chain_stage import ChainStage
from shipper.children import frame
from shipper.config.root import ChainConfig
from shipper.config.values import Address
from shipper.events import Event, entry, utc_timestamp
from shipper.heap import YOUNG_THRESHOLDS
from shipper.ingestproc import events, rows
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig

STAGES = ("decode", "seal", "chain", "entries", "handoff")


def one_pass(
    chunks: list[list[bytes]], source: JsonTlsSource, info: dict[str, Any], state_dir: Path
) -> dict[str, float]:
    """Seconds each stage takes over every chunk, in the daemon's order."""
    spent = dict.fromkeys(STAGES, 0.0)
    stage = ChainStage(ChainConfig(profile=SEED.name, profile_fields=SEED), state_dir)
    clock = time.perf_counter
    for chunk in chunks:
        received_at = utc_timestamp()
        start = clock()
        batch = source._decode(chunk, info, received_at)
        decoded = clock()
        source._seal(batch)
        sealed = clock()
        verified = stage.process(batch, 0.0)
        checked = clock()
        lines = [entry(event) for event in verified]
        done = clock()
        data = frame(("batch", rows(batch), 0, {}, 0))
        back: list[Event] = events(pickle.loads(data[4:])[1])
        handed = clock()
        if len(lines) != len(chunk) or len(back) != len(chunk):
            raise SystemExit("a stage lost events: the lines are not one chain per agent")
        spent["decode"] += decoded - start
        spent["seal"] += sealed - decoded
        spent["chain"] += checked - sealed
        spent["entries"] += done - checked
        spent["handoff"] += handed - done
    return spent


def limit_pass(chunks: list[list[bytes]]) -> float:
    """Seconds the limit loop takes over every chunk (each chunk a pass of its own)."""
    return sum(limit_chain_pass(b"\n".join(chunk), Path(os.devnull))[0] for chunk in chunks)


def measure(lines: list[bytes], chunk: int, repeats: int) -> dict[str, float]:
    """Each stage's and the limit's best seconds over ``lines`` in ``repeats`` repeats."""
    send, _receive = trio.open_memory_channel[list[Event]](1)
    source = JsonTlsSource(JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0)), send)
    info = source.source_info("127.0.0.1:40000")
    chunks = [lines[begin : begin + chunk] for begin in range(0, len(lines), chunk)]
    best = dict.fromkeys((*STAGES, "limit"), float("inf"))
    gc.collect()
    gc.freeze()
    gc.set_threshold(*YOUNG_THRESHOLDS)
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for repeat in range(repeats):
            limit_first = repeat % 2 == 0
            if limit_first:
                best["limit"] = min(best["limit"], limit_pass(chunks))
            state_dir = Path(tmp, str(repeat))
            state_dir.mkdir()
            for name, seconds in one_pass(chunks, source, info, state_dir).items():
                best[name] = min(best[name], seconds)
            if not limit_first:
                best["limit"] = min(best["limit"], limit_pass(chunks))
    return best


def report(best: dict[str, float], count: int, size: int) -> None:
    """The table: per row microseconds per event, events/s, MB/s of the input lines, and the
    limit's time over the row's."""
    main_sum = sum(best[name] for name in ("decode", "seal", "chain", "entries"))
    rows_shown: list[tuple[str, float]] = [
        ("limit with chain (parse+hash+link+envelope)", best["limit"]),
        *((name, best[name]) for name in STAGES),
        ("one process: decode+seal+chain+entries", main_sum),
    ]
    print(f"{'stage':46s} {'us/ev':>7s} {'events/s':>11s} {'MB/s':>7s} {'limit/row':>9s}")
    for label, seconds in rows_shown:
        print(
            f"{label:46s} {seconds / count * 1e6:7.2f} {count / seconds:11,.0f}"
            f" {size / seconds / 1e6:7.1f} {best['limit'] / seconds:9.2f}"
        )
    print(
        "\nEach row: its best repeat. limit/row: the limit's time over the row's (1.00: as fast as"
        " the limit).\nNot in the stages: socket reads, framing, the WAL (make bench-wal), trio's"
        " scheduling, other processes."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=300, help="lines per read (default 300)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if min(args.events, args.agents, args.chunk, args.repeats) < 1:
        parser.error("--events, --agents, --chunk and --repeats must be at least 1")
    lines = [line.rstrip(b"\n") for line in generate_lines(args.events, args.agents)]
    size = sum(map(len, lines)) + len(lines)
    print(
        f"shipper per-stage bench: {len(lines):,} events ({size / len(lines):.0f} B average),"
        f" {args.agents} agents, chunks of {args.chunk}, best of {args.repeats} repeats\n"
    )
    report(measure(lines, args.chunk, args.repeats), len(lines), size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
