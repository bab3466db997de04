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

Run: ``make bench-chain`` or ``.venv/bin/python -m bench.chain [--events N] [--agents N]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.events import generate_lines
from bench.timing import interleaved_best
from shipper.chain import SEED, Verifier
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the loops and print events/s for each and the ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=5_000, help="events per interleaved run")
    args = parser.parse_args(argv)

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
