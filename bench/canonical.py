"""Seed-profile hash verification with RFC 8785 canonicalization, beside its tight-loop limit.

Both loops take the same seed-format audit records (``bench.events.generate_lines``) and, per
event, parse the line, remove ``hash``, serialize, sha256 and compare with the removed hash:

* ``jcs``: ``orjson.loads`` + pop ``hash`` + ``shipper.codecs.canonical.canonicalize`` + sha256 +
  compare, the verification the ``seed`` profile needs;
* ``limit``: the same with ``orjson.dumps(record, option=OPT_SORT_KEYS)`` inlined in place of
  ``canonicalize``: what the work costs when the serializer does nothing beyond orjson (and is
  right only for the value subset the generator keeps to).

The loops alternate over the same chunks of ``--chunk`` events (ABBA order) for ``--repeats``
rounds; each loop's time is the sum over chunks of its best run per chunk, which keeps the
machine's speed swings (large on these machines) out of the ratio. The ratio ``jcs /
limit`` is the figure to watch (target 0.8 or better); absolute rates swing with machine noise.

Figures (200,000 events, 100 agents, chunks of 2,000, best of 5 runs per chunk; one core of the
development VM, which is about twice as slow as a reference workstation), two consecutive runs::

    jcs     166,424 ev/s  6.01 us/ev      158,940 ev/s  6.29 us/ev
    limit   210,544 ev/s  4.75 us/ev      208,732 ev/s  4.79 us/ev
    ratio   0.790                         0.761

Below the 0.8 target: the screens over orjson's output (``find`` of ``+``, two literal-prefix
regular expressions, ``isascii``) cost about 1.2-1.5 us here; each multi-byte scan of a ~450-byte
record costs 0.3-0.5 us on this machine.

Run: ``.venv/bin/python -m bench.canonical [--events N] [--agents N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time
from collections.abc import Callable, Sequence

import orjson

from bench.events import generate_lines
from bench.timing import interleaved_best
from shipper.codecs.canonical import canonicalize


def verify_all(lines: Sequence[bytes], serialize: Callable[[object], bytes]) -> int:
    """Verify every line's hash with ``serialize`` as the canonical form; return how many fail."""
    loads = orjson.loads
    sha256 = hashlib.sha256
    failures = 0
    for line in lines:
        record = loads(line)
        expected = record.pop("hash")
        if "sha256:" + sha256(serialize(record)).hexdigest() != expected:
            failures += 1
    return failures


def limit_all(lines: Sequence[bytes]) -> int:
    """The tight loop: ``verify_all`` with ``orjson.dumps`` inlined (no Python-level call)."""
    loads = orjson.loads
    dumps = orjson.dumps
    sha256 = hashlib.sha256
    sort_keys = orjson.OPT_SORT_KEYS
    failures = 0
    for line in lines:
        record = loads(line)
        expected = record.pop("hash")
        if "sha256:" + sha256(dumps(record, option=sort_keys)).hexdigest() != expected:
            failures += 1
    return failures


def _timed(lines: Sequence[bytes], loop: Callable[[Sequence[bytes]], int]) -> float:
    """Seconds for one verification pass over ``lines``; exits if any record fails to verify."""
    start = time.perf_counter()
    failures = loop(lines)
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{failures} records failed verification")
    return elapsed


def _jcs_all(lines: Sequence[bytes]) -> int:
    return verify_all(lines, canonicalize)


LOOPS: dict[str, Callable[[Sequence[bytes]], int]] = {"jcs": _jcs_all, "limit": limit_all}


def best_times(lines: Sequence[bytes], repeats: int, chunk: int) -> dict[str, float]:
    """Seconds each loop needs for all ``lines``: per chunk, the best of ``repeats`` runs, summed.

    The loops alternate chunk by chunk (ABBA order), so the machine's speed swings hit both alike;
    keeping each chunk's best run discards the swings that remain.
    """
    chunks = [lines[begin : begin + chunk] for begin in range(0, len(lines), chunk)]
    return interleaved_best(
        list(LOOPS), len(chunks), repeats, lambda name, index: _timed(chunks[index], LOOPS[name])
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run both loops and print events/s for each and their ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.canonical", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=2_000, help="events per interleaved run")
    args = parser.parse_args(argv)

    lines = generate_lines(args.events, args.agents, args.seed)
    gc.collect()
    best = best_times(lines, args.repeats, args.chunk)
    rate = {name: args.events / seconds for name, seconds in best.items()}
    print(
        f"events: {args.events}, agents: {args.agents}, chunks of {args.chunk}, best of"
        f" {args.repeats} runs per chunk"
    )
    print(
        f"jcs   (loads + pop hash + canonicalize + sha256 + compare): {rate['jcs']:>10,.0f} ev/s"
        f"  {best['jcs'] / args.events * 1e6:.2f} us/ev"
    )
    print(
        f"limit (loads + pop hash + dumps(SORT_KEYS) + sha256 + compare): {rate['limit']:>10,.0f}"
        f" ev/s  {best['limit'] / args.events * 1e6:.2f} us/ev"
    )
    print(f"ratio jcs/limit: {rate['jcs'] / rate['limit']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
