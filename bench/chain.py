"""Chain verification throughput (one core) beside its tight-loop limit, in the same run.

All loops take the same seed-format chained audit lines (``bench.events.generate_lines``: many
agents, interleaved) and, per event, parse the line and verify it:

* ``verifier``: ``orjson.loads`` + ``Profile.agent_of`` + ``shipper.chain.Verifier.feed`` (hash
  recomputed over the RFC 8785 form, sequence and link checked, duplicate window, gaps,
  counters; the result: the record's sequence if it is ok, else a ``Verdict``), i.e. all the
  chain stage does per event but building the envelope;
* ``limit``: the tight loop of the same necessary work inlined: ``orjson.loads``, pop ``hash``,
  ``shipper.codecs.canonical.canonicalize``, sha256, compare, and a per-agent link check against
  a dict of last hashes. The ratio ``verifier / limit`` is the figure the issue sets a target for
  (0.8 or better): it is what the state machine costs on top of the hashing it cannot avoid;
* ``orjson``: the ``limit`` loop with ``orjson.dumps(OPT_SORT_KEYS)`` in place of
  ``canonicalize``, which is right only for the subset of JSON the generator keeps to; printed
  for reference (``bench.canonical`` compares the two serializers on their own).

Each loop runs over the same chunks of ``--chunk`` events in ABBA order for ``--repeats`` rounds,
each chunk starting from the state the previous chunk left (restored outside the timer); a loop's
time is the sum over chunks of its best run. This keeps the machine's speed swings (10 to 45%
here) out of the ratio.

Then, for sizing ``[chain] max_agents``:

* memory per agent (``tracemalloc``: what feeding real records leaves allocated, divided by the
  agents): an agent with one record, and one with a full dedupe window (320 records: the ring then
  holds sequences past 256, which Python does not share);
* the chain checkpoint with ``--checkpoint-agents`` agents (100,000), each with one record or a
  full window: ``Verifier.snapshot`` and ``orjson.dumps``, and ``Verifier.snapshot_parts`` (the
  same bytes in pieces: what the daemon's worker thread does with the GIL held), the file's
  size, and ``orjson.loads`` + ``Verifier.restore`` with the garbage collector paused (what ``ChainStage.load`` does at start). The state is made as a
  snapshot holds it (hashes of the right length, not of real records: feeding 6.4 million records
  would take minutes).

Run: ``make bench-chain`` or ``.venv/bin/python -m bench.chain [--events N] [--agents N]
[--parts throughput,memory,checkpoint]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.events import generate_lines
from bench.timing import interleaved_best
from shipper.chain import SEED, SNAPSHOT_VERSION, Verifier
from shipper.codecs.canonical import canonicalize

State = Any  # a loop's state at the start of a chunk
Loop = Callable[[Sequence[bytes], State], int]


def verifier_loop(lines: Sequence[bytes], verifier: Verifier) -> int:
    """Verify with the real state machine; how many records were not ok (or genesis).

    As the chain stage does: ``feed`` returns an ok record's sequence (an int), else a Verdict."""
    loads = orjson.loads
    feed = verifier.feed
    agent_of = SEED.agent_of
    faults = 0
    for line in lines:
        record = loads(line)
        agent = agent_of(record)
        if agent is None:
            faults += 1
            continue
        verdict = feed(agent, record, line)
        if not isinstance(verdict, int) and verdict.status != "genesis":
            faults += 1
    return faults


def limit_loop(lines: Sequence[bytes], last: dict[str, str]) -> int:
    """The tight loop: parse, canonicalize without the hash, sha256, compare, check the link."""
    loads = orjson.loads
    sha256 = hashlib.sha256
    faults = 0
    for line in lines:
        record = loads(line)
        claimed = record.pop("hash")
        if "sha256:" + sha256(canonicalize(record)).hexdigest() != claimed:
            faults += 1
        agent = record["agentId"]
        prev = record["prevHash"]
        if last.get(agent, prev) != prev:
            faults += 1
        last[agent] = claimed
    return faults


def orjson_loop(lines: Sequence[bytes], last: dict[str, str]) -> int:
    """``limit_loop`` with orjson's sorted dumps as the serializer."""
    loads = orjson.loads
    dumps = orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256
    faults = 0
    for line in lines:
        record = loads(line)
        claimed = record.pop("hash")
        if "sha256:" + sha256(dumps(record, option=sort_keys)).hexdigest() != claimed:
            faults += 1
        agent = record["agentId"]
        prev = record["prevHash"]
        if last.get(agent, prev) != prev:
            faults += 1
        last[agent] = claimed
    return faults


LOOPS: dict[str, tuple[Loop, Callable[[], State]]] = {
    "verifier": (verifier_loop, Verifier),
    "limit": (limit_loop, dict),
    "orjson": (orjson_loop, dict),
}


def best_times(lines: Sequence[bytes], repeats: int, chunk: int) -> dict[str, float]:
    """Seconds each loop needs for all ``lines``: per chunk, the best of ``repeats`` runs, summed."""
    chunks = [lines[begin : begin + chunk] for begin in range(0, len(lines), chunk)]
    # The state each loop has at the start of each chunk (one untimed pass).
    starts: dict[str, list[State]] = {}
    for name, (loop, fresh) in LOOPS.items():
        state = fresh()
        starts[name] = []
        for part in chunks:
            starts[name].append(copy.deepcopy(state))
            if loop(part, state):
                raise SystemExit(f"{name}: records failed verification")

    def run(name: str, index: int) -> float:
        loop = LOOPS[name][0]
        state = copy.deepcopy(starts[name][index])
        gc.collect()
        start = time.perf_counter()
        faults = loop(chunks[index], state)
        elapsed = time.perf_counter() - start
        if faults:
            raise SystemExit(f"{name}: {faults} records failed verification")
        return elapsed

    return interleaved_best(list(LOOPS), len(chunks), repeats, run)


def memory_per_agent(agents: int, records: int, window: int = 64) -> float:
    """Bytes the verifier holds per agent after ``records`` records of each of ``agents`` agents
    (real chains, fed as the chain stage feeds them)."""
    lines = generate_lines(agents * records, agents)
    verifier = Verifier(window=window)
    feed = verifier.feed
    loads = orjson.loads
    agent_of = SEED.agent_of
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for line in lines:
            record = loads(line)
            agent = agent_of(record)
            assert agent is not None
            feed(agent, record, line)
        del record, agent
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(verifier.agents) == agents
    assert set(verifier.counts) == ({"genesis", "ok"} if records > 1 else {"genesis"})
    return (after - before) / agents


def synthetic_snapshot(agents: int, records: int, window: int = 64) -> dict[str, Any]:
    """A version 3 snapshot of ``agents`` agents with ``records`` accepted records each (their
    last ``window`` in the ring), as ``Verifier.snapshot`` writes it."""
    width = 32  # sha256
    ids: list[str] = []
    last_sequence: list[int] = []
    last_hash: list[str] = []
    sequences: list[list[int]] = []
    digests: list[str] = []
    counter = 0
    for n in range(agents):
        held = [-1] * window
        packed = bytearray(window * width)
        sequence = 1_000
        value = ""
        for sequence in range(1_000, 1_000 + records):
            counter += 1
            digest = hashlib.sha256(counter.to_bytes(8, "big")).digest()
            slot = sequence % window
            held[slot] = sequence
            packed[slot * width : (slot + 1) * width] = digest
            value = "sha256:" + digest.hex()
        ids.append(f"agent-{n:06d}")
        last_sequence.append(sequence)
        last_hash.append(value)
        sequences.append(held)
        digests.append(packed.hex())
    return {
        "v": SNAPSHOT_VERSION,
        "profile": SEED.name,
        "counts": {"genesis": agents, "ok": agents * (records - 1)},
        "agents": {
            "id": ids,
            "last_sequence": last_sequence,
            "last_hash": last_hash,
            "ok_base": [1_000] * agents,
            "swept": [1_000] * agents,
            "gaps": [[] for _ in range(agents)],
            "others": [{"genesis": 1} for _ in range(agents)],
            "sequences": sequences,
            "digests": digests,
            "odd": [None] * agents,
            "last_alert": [None] * agents,
        },
    }


def checkpoint_times(agents: int, records: int, repeats: int) -> dict[str, float]:
    """Best seconds of the checkpoint's steps for ``agents`` agents of ``records`` records each;
    ``bytes``: the size of the state."""
    verifier = Verifier.restore(synthetic_snapshot(agents, records), max_agents=agents)
    best = dict.fromkeys(("snapshot", "dumps", "pieces", "loads", "restore"), float("inf"))
    size = 0
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        snapshot = verifier.snapshot()
        taken = time.perf_counter()
        data = orjson.dumps(snapshot)
        dumped = time.perf_counter()
        del snapshot
        size = len(data)
        start_pieces = time.perf_counter()
        pieces_size = sum(map(len, verifier.snapshot_parts()))  # what the checkpoint writes
        pieced = time.perf_counter()
        assert pieces_size == size
        enabled = gc.isenabled()
        gc.disable()  # as ChainStage.load does
        try:
            start_load = time.perf_counter()
            parsed = orjson.loads(data)
            loaded = time.perf_counter()
            restored = Verifier.restore(parsed, max_agents=agents)
            done = time.perf_counter()
        finally:
            if enabled:
                gc.enable()
        assert len(restored.agents) == agents
        del parsed, restored, data
        for name, seconds in (
            ("snapshot", taken - start),
            ("dumps", dumped - taken),
            ("pieces", pieced - start_pieces),
            ("loads", loaded - start_load),
            ("restore", done - loaded),
        ):
            best[name] = min(best[name], seconds)
    return {**best, "bytes": float(size)}


def print_throughput(args: argparse.Namespace) -> None:
    """Run the loops and print events/s for each and the ratios."""
    lines = generate_lines(args.events, args.agents, args.seed)
    megabytes = sum(len(line) + 1 for line in lines) / 1e6
    best = best_times(lines, args.repeats, args.chunk)
    print(
        f"events: {args.events} ({megabytes:.1f} MB), agents: {args.agents}, chunks of"
        f" {args.chunk}, best of {args.repeats} runs per chunk"
    )
    for name, label in (
        ("verifier", "verifier (loads + Verifier.feed)          "),
        ("limit", "limit    (loads + JCS + sha256 + link)     "),
        ("orjson", "orjson   (loads + sorted dumps + sha256 + link)"),
    ):
        seconds = best[name]
        print(
            f"{label} {args.events / seconds:>10,.0f} ev/s  {megabytes / seconds:6.1f} MB/s"
            f"  {seconds / args.events * 1e6:.2f} us/ev"
        )
    print(f"ratio verifier/limit: {best['limit'] / best['verifier']:.3f}  (target 0.8)")
    print(f"ratio verifier/orjson: {best['orjson'] / best['verifier']:.3f}")


def print_memory() -> None:
    """Print the memory an agent's state takes (dedupe window 64)."""
    one = memory_per_agent(2_000, 1)
    # 320 records: the ring holds sequences 257 to 320, past the integers Python shares.
    full = memory_per_agent(200, 320)
    print("memory per agent (tracemalloc, dedupe_window 64):")
    print(f"  one record                        {one:>8,.0f} bytes")
    print(f"  full dedupe window (320 records)  {full:>8,.0f} bytes")


def print_checkpoint(agents: int, repeats: int) -> None:
    """Print what the checkpoint of ``agents`` agents costs."""
    print(f"checkpoint of {agents:,} agents (best of {repeats}):")
    print("  records/agent  snapshot   dumps  (GIL held)  pieces      size   loads  restore")
    for records in (1, 64):
        times = checkpoint_times(agents, records, repeats)
        held = times["snapshot"] + times["dumps"]
        print(
            f"  {records:>13}  {times['snapshot']:7.3f}s {times['dumps']:6.3f}s  ({held:6.3f}s)"
            f" {times['pieces']:6.3f}s  {times['bytes'] / 1e6:6.1f} MB {times['loads']:6.3f}s"
            f"  {times['restore']:6.3f}s"
        )
    print(
        "  pieces: Verifier.snapshot_parts, what the checkpoint writes (GIL held); the same bytes"
        " as dumps of the snapshot, made 1,024 agents at a time"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for and print their figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=5_000, help="events per interleaved run")
    parser.add_argument(
        "--parts", default="throughput,memory,checkpoint", help="which figures to measure"
    )
    parser.add_argument("--checkpoint-agents", type=int, default=100_000)
    parser.add_argument("--checkpoint-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if "throughput" in parts:
        print_throughput(args)
    if "memory" in parts:
        print_memory()
    if "checkpoint" in parts:
        print_checkpoint(args.checkpoint_agents, args.checkpoint_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
