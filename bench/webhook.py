"""Webhook delivery: the webhook sink from a filled WAL to a local HTTP receiver, beside the
Python limit of the same work and a bare POST loop of the same requests, in one run.

The events are the bench's chained audit records (``bench.events.generate_lines``) in envelopes
(``bench.cef.envelope_list``), appended to a WAL; every row works on the envelopes as the WAL
hands them out (read back once, not timed), so all rows make the same bodies. Per case (batch
size, from ``--batches``; body plain or gzipped), all signed (``signing_secret``):

* **limit**: a tight loop making each batch's request as the Standard Webhooks spec and the
  sink's docstring say: the ``webhook-id`` from the first and last envelope's id (read from the
  bytes), the body (``[`` + envelopes joined with ``,`` + ``]``), gzip (ISA-L's level 1, no time in the
  header, as the sink writes it) when the case says so, and the signature (HMAC-SHA256 of
  ``id.timestamp.body``, base64). No filter, no headers dict, no threads.
* **sink requests**: the same requests made by the sink's own code (``WebhookSink._prepare``,
  which the sink runs in a worker thread, and ``_headers``), on this thread.

  Before timing, both make every batch's request and must give the same id, body, content and
  signature. They alternate over chunks of ``--chunk`` events (ABBA order,
  ``bench.timing.interleaved_best``).
* **POST loop**: each batch's request made by the limit's code, then POSTed by one
  ``httpx2.AsyncClient`` (the sink's HTTP client library, keep-alive) and awaited to its
  ``200``, one batch at a time: the limit of the whole delivery without the WAL, the driver and
  the worker thread, on loopback to this receiver.
* **webhook sink**: the sink run by its driver (``SinkDriver``) on a WAL reader of its own, with
  ``batch_size`` as the case says (``max_bytes`` 8 MiB, so batches are cut by count), from the
  driver's start until it returns with the WAL read to its end and every batch answered ``200``
  (acknowledged). The receiver must have counted every event once, in at least as many
  requests as batches (the driver sends a batch short when its ``flush_interval``, 1 s, runs
  out first: column POSTs, of the best run, counts the POST loop's warm-up too).

The receiver (``bench.receivers``, ``http``) is a ``ThreadingHTTPServer`` in another process: it
reads each body, gunzips it if need be, parses the JSON array with orjson, counts the events and
answers ``200``. The POST loop and the sink rows take turns round by round (ABBA); each keeps
its best run.

**ratio**: events/s over the case's limit's; **/POST**: over the POST loop's (what the sink
keeps of the bare delivery). MB/s: the bodies (envelopes as JSON, before gzip),
``wire MB/s``: as sent; ``CPU us/ev``: this process's CPU (all threads) per event, for the limit
and sink requests rows their best chunks', for the HTTP rows their best run's; ``rcv CPU``: the
receiver's CPU per event in that run.

Run: ``.venv/bin/python -m bench.webhook [--events N] [--batches 100,1000] [--rounds N]``
(``make bench-webhook``).
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import hmac
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import trio
from isal import igzip

from bench.cef import envelope_list, filled_wal
from bench.receivers import Receiver
from bench.timing import interleaved_best
from shipper.buffer.wal import Wal
from shipper.config.values import Secret
from shipper.logging import configure
from shipper.sinks.base import BatchSettings
from shipper.sinks.driver import SinkDriver
from shipper.sinks.webhook import WebhookSink, WebhookSinkConfig

#: A fixed signing secret (32 bytes), as a config gives it.
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
KEY = bytes(range(32))
SINK = "hook"
MAX_BYTES = 8 * 1024 * 1024
ROWS = ("limit", "sink requests", "POST loop", "webhook sink")

Request = tuple[str, bytes, bytes, str]
"""A batch's request: webhook-id, body (as signed), content (as sent), signature."""


@dataclass(frozen=True)
class Case:
    batch: int
    compression: str

    @property
    def name(self) -> str:
        return f"batch {self.batch}, {'gzip' if self.compression == 'gzip' else 'plain'}"


@dataclass
class Row:
    seconds: float = float("inf")
    cpu: float = 0.0
    receiver_cpu: float | None = None
    requests: int | None = None
    runs: list[float] = field(default_factory=list)

    def keep(
        self,
        seconds: float,
        cpu: float,
        receiver_cpu: float | None = None,
        requests: int | None = None,
    ) -> None:
        self.runs.append(seconds)
        if seconds < self.seconds:
            self.seconds, self.cpu, self.receiver_cpu = seconds, cpu, receiver_cpu
            self.requests = requests


def config(case: Case, name: str, url: str) -> WebhookSinkConfig:
    return WebhookSinkConfig(
        id=name,
        url=Secret(url),
        batching=BatchSettings(case.batch, MAX_BYTES, 1.0),
        compression="gzip" if case.compression == "gzip" else "none",
        signing_secret=Secret(SECRET),
    )


# ------------------------------------------------------------------------------------- limit


def limit(
    batches: Sequence[Sequence[bytes]], sink: str, epoch: str, gzipped: bool, timestamp: str
) -> list[Request]:
    """Each batch's request by the shortest path (see the docstring)."""
    out = []
    new, sha256, b64 = hmac.new, hashlib.sha256, base64.b64encode
    for envelopes in batches:
        first, last = envelopes[0], envelopes[-1]  # each starts {"v":1,"id":"<id>",
        first_id = first[13 : first.index(b'"', 13)].decode()
        last_id = last[13 : last.index(b'"', 13)].decode()
        message_id = f"{sink}:{epoch}:{first_id}:{last_id}"
        body = b"[" + b",".join(envelopes) + b"]"
        content = igzip.compress(body, compresslevel=1, mtime=0) if gzipped else body
        mac = new(KEY, f"{message_id}.{timestamp}.".encode(), sha256)
        mac.update(body)
        out.append((message_id, body, content, "v1," + b64(mac.digest()).decode()))
    return out


def sink_requests(sink: WebhookSink, batches: Sequence[list[bytes]]) -> list[Request]:
    """The same requests made by the sink's code, with the timestamp it signed."""
    out = []
    for envelopes in batches:
        prepared = sink._prepare(envelopes)
        assert prepared is not None
        headers = sink._headers(prepared)
        out.append(
            (prepared.message_id, prepared.body, prepared.content, headers["webhook-signature"])
        )
    return out


def check(sink: WebhookSink, batches: Sequence[list[bytes]], case: Case, epoch: str) -> bool:
    """Whether the limit makes the sink's requests, batch by batch."""
    for envelopes in batches:
        prepared = sink._prepare(envelopes)
        assert prepared is not None
        headers = sink._headers(prepared)
        ours = limit(
            [envelopes], SINK, epoch, case.compression == "gzip", headers["webhook-timestamp"]
        )
        theirs = (
            prepared.message_id,
            prepared.body,
            prepared.content,
            headers["webhook-signature"],
        )
        if ours != [theirs] or headers["webhook-id"] != prepared.message_id:
            return False
    return True


def measure_cpu_rows(
    case: Case, items: list[bytes], epoch: str, chunk: int, repeats: int
) -> dict[str, Row] | None:
    """The limit and the sink's request making, interleaved; None if they differ."""
    sink = WebhookSink(config(case, SINK, "http://127.0.0.1:1/"))
    sink._epoch = epoch  # (what open does; no client is needed to make requests)
    batches = [items[i : i + case.batch] for i in range(0, len(items), case.batch)]
    if not check(sink, batches, case, epoch):
        return None
    per_chunk = max(1, chunk // case.batch)
    chunks = [batches[i : i + per_chunk] for i in range(0, len(batches), per_chunk)]
    gzipped = case.compression == "gzip"
    timestamp = str(int(time.time()))
    cpu = {"limit": [float("inf")] * len(chunks), "sink requests": [float("inf")] * len(chunks)}

    def run(name: str, index: int) -> float:
        began, cpu_began = time.perf_counter(), time.process_time()
        if name == "limit":
            limit(chunks[index], SINK, epoch, gzipped, timestamp)
        else:
            sink_requests(sink, chunks[index])
        spent = time.perf_counter() - began
        cpu[name][index] = min(cpu[name][index], time.process_time() - cpu_began)
        return spent

    gc.disable()
    try:
        seconds = interleaved_best(["limit", "sink requests"], len(chunks), repeats, run)
    finally:
        gc.enable()
    rows = {}
    for name, spent in seconds.items():
        rows[name] = Row()
        rows[name].keep(spent, sum(cpu[name]))
    return rows


# ------------------------------------------------------------------------------------ HTTP


async def post_loop(batches: Sequence[Sequence[bytes]], epoch: str, url: str, case: Case) -> float:
    """Each batch's request made by ``limit`` and POSTed, one at a time; returns the seconds."""
    gzipped = case.compression == "gzip"
    encoding = {"Content-Encoding": "gzip"} if gzipped else {}
    async with httpx2.AsyncClient(trust_env=False, timeout=httpx2.Timeout(30.0)) as client:
        await client.post(url, content=b"[]")  # the connection made before the timer starts
        began = time.perf_counter()
        for batch in batches:
            timestamp = str(int(time.time()))
            ((message_id, _, content, signature),) = limit([batch], SINK, epoch, gzipped, timestamp)
            headers = {
                "Content-Type": "application/json",
                **encoding,
                "webhook-id": message_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": signature,
            }
            response = await client.post(url, content=content, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"the receiver answered {response.status_code}")
        return time.perf_counter() - began


async def sink_run(case: Case, wal: Wal, reader: str, url: str, work: Path) -> float:
    """The sink through its driver on ``reader`` until the WAL is read; returns the seconds."""
    sink = WebhookSink(config(case, reader, url))
    driver = SinkDriver(sink, work)
    began = time.perf_counter()
    await driver.run(wal.readers[reader], wal.epoch)
    took = time.perf_counter() - began
    counters = driver.counters.as_dict()
    if counters.get("dead_letters") or counters.get("failures"):
        raise SystemExit(f"the sink did not deliver cleanly: {counters}")
    return took


async def read_all(wal: Wal, reader: str) -> list[bytes]:
    """The envelopes as the WAL hands them to a sink."""
    out: list[bytes] = []
    while (read := await wal.readers[reader].read()) is not None:
        out += read.envelopes
    return out


# ------------------------------------------------------------------------------------ main


async def measure(args: argparse.Namespace, cases: list[Case], work: Path) -> int:
    raw = envelope_list(args.events, args.agents, args.seed)
    readers = [
        f"{SINK}-{case.batch}-{case.compression}-{round_}"
        for case in cases
        for round_ in range(args.rounds)
    ]
    wal = await filled_wal(raw, work / "wal", ["source", *readers])
    try:
        items = await read_all(wal, "source")
        if len(items) != len(raw):
            print(f"the WAL gave {len(items)} envelopes of {len(raw)}", file=sys.stderr)
            return 1
        size = sum(map(len, items)) + len(items) + 1
        print(
            f"{len(items):,} events ({sum(map(len, items)) / len(items):.0f} bytes of envelope"
            f" each), {args.agents} agents, signed; {args.rounds} rounds"
        )
        results: dict[Case, dict[str, Row]] = {}
        wire: dict[Case, int] = {}
        with Receiver("http") as receiver:
            url = f"http://127.0.0.1:{receiver.port}/hook"
            for case in cases:
                print(f"{case.name}: limit and sink requests...", file=sys.stderr)
                rows = measure_cpu_rows(case, items, wal.epoch, args.chunk, args.repeats)
                if rows is None:
                    print(f"{case.name}: the limit does not make the sink's requests")
                    return 1
                results[case] = rows
                batches = [items[i : i + case.batch] for i in range(0, len(items), case.batch)]
                requests = limit(
                    batches, SINK, wal.epoch, case.compression == "gzip", str(int(time.time()))
                )
                wire[case] = sum(len(content) for _, _, content, _ in requests)
                rows["POST loop"], rows["webhook sink"] = Row(), Row()
                for round_ in range(args.rounds):
                    order = ["POST loop", "webhook sink"]
                    for name in order if round_ % 2 == 0 else reversed(order):
                        print(f"{case.name}: {name}, round {round_ + 1}...", file=sys.stderr)
                        before = receiver.counts()
                        receiver_cpu = receiver.cpu_seconds()
                        cpu = time.process_time()
                        if name == "POST loop":
                            took = await post_loop(batches, wal.epoch, url, case)
                        else:
                            reader = f"{SINK}-{case.batch}-{case.compression}-{round_}"
                            took = await sink_run(case, wal, reader, url, work)
                        cpu = time.process_time() - cpu
                        receiver_cpu = receiver.cpu_seconds() - receiver_cpu
                        after = receiver.counts()
                        got = {key: after[key] - before[key] for key in after}
                        # The POST loop sends each batch (and its warm-up); the driver may cut
                        # a batch short where its flush interval ran out first.
                        posts = len(batches) + (name == "POST loop")
                        if got["events"] != len(items) or got["requests"] < posts:
                            print(
                                f"{case.name}, {name}: the receiver counted {got['events']} events"
                                f" in {got['requests']} requests, not {len(items)} in {posts}"
                                " or more",
                                file=sys.stderr,
                            )
                            return 1
                        rows[name].keep(took, cpu, receiver_cpu, got["requests"])
    finally:
        wal.release()
    report(results, wire, len(items), size)
    return 0


def report(
    results: dict[Case, dict[str, Row]], wire: dict[Case, int], events: int, size: int
) -> None:
    print(
        f"\n{'case':<18}{'row':<15}{'events/s':>11}{'MB/s':>8}{'wire MB/s':>10}{'ratio':>7}"
        f"{'/POST':>7}{'CPU us/ev':>10}{'rcv CPU':>8}{'POSTs':>7}  runs (s)"
    )
    for case, rows in results.items():
        base = events / rows["limit"].seconds
        post = events / rows["POST loop"].seconds
        for name in ROWS:
            row = rows[name]
            rate = events / row.seconds
            receiver = f"{row.receiver_cpu / events * 1e6:>8.1f}" if row.receiver_cpu else " " * 8
            receiver += f"{row.requests:>7}" if row.requests else " " * 7
            runs = " ".join(f"{t:.2f}" for t in row.runs) if name in ROWS[2:] else ""
            print(
                f"{case.name:<18}{name:<15}{rate:>11,.0f}{size / row.seconds / 1e6:>8.1f}"
                f"{wire[case] / row.seconds / 1e6:>10.1f}{rate / base:>7.2f}{rate / post:>7.2f}"
                f"{row.cpu / events * 1e6:>10.1f}{receiver}  {runs}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--batches", default="100,1000", help="batch sizes, comma-separated")
    parser.add_argument(
        "--compression", default="none,gzip", help="none, gzip or both (comma-separated)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each HTTP row (best kept)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per chunk of the limit rows")
    parser.add_argument("--chunk", type=int, default=10_000, help="events per interleaved run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure("warning")
    cases = [
        Case(int(batch), compression)
        for batch in args.batches.split(",")
        for compression in args.compression.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="shipper-bench-webhook-") as work:
        return trio.run(measure, args, cases, Path(work))


if __name__ == "__main__":
    raise SystemExit(main())
