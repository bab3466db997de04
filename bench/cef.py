"""CEF over syslog: the cef_syslog sink's per-event work beside its Python limit, and end to end
over TCP, in one run.

The events are the bench's chained audit records (``bench.events.generate_lines``), each in an
envelope as the WAL hands it to a sink (with a ``chain`` verdict ``ok``).

* **shipper**: ``CefSyslogSink.messages``, what the sink runs per batch: ``orjson.loads`` of each
  envelope, the CEF line by the default mapping (``shipper.codecs.cef``), the RFC 5424 header,
  octet counting.
* **limit**: a tight loop doing the minimum for the *same bytes* on these events: ``orjson.loads``,
  the fields these records have read by fixed keys (no candidate lists, no key checks), values
  escaped with a chain of ``str.replace`` (as the encoder does), the timestamp by ``datetime.fromisoformat``, one f-string
  per message. It is right only for records shaped like the bench's.

Before timing, both loops run once over all events and must give the same bytes. They alternate
over chunks of ``--chunk`` events (ABBA order, ``bench.timing.interleaved_best``); the ratio
``shipper / limit`` (events/s) is the figure to watch.

* **end to end tcp**: the events appended to a WAL, then the sink run by its driver
  (``SinkDriver``) until the WAL is read, to a receiver in a process of its own that reads the
  connection to its end and counts bytes; timed from the driver's start until the receiver has
  every byte. The receiver's count must equal the bytes the sink wrote.

Run: ``.venv/bin/python -m bench.cef [--events N] [--repeats N] [--chunk N]`` (``make bench-cef``).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import trio

from bench.events import generate_lines
from bench.timing import interleaved_best
from shipper.buffer.config import BufferConfig
from shipper.buffer.wal import Wal
from shipper.codecs.cef import NAME_LIMIT, truncate
from shipper.config import Address
from shipper.events import Event, entry, envelopes
from shipper.logging import configure
from shipper.sinks.cef_syslog import CefSyslogSink, CefSyslogSinkConfig
from shipper.sinks.driver import SinkDriver

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}
RECEIVED_AT = "2026-02-13T10:45:24.000000Z"
SINK = "siem"

#: A receiver: reads one connection to its end, prints the bytes it read.
RECEIVER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
total = 0
while data := connection.recv(1 << 20):
    total += len(data)
print(total, flush=True)
"""


def envelope_list(events: int, agents: int, seed: int) -> list[bytes]:
    """The bench's records as envelopes with WAL ids, as the sink reads them."""
    out = []
    for n, line in enumerate(generate_lines(events, agents, seed)):
        record = orjson.loads(line)
        sequence = record["sequence"]
        event = Event(
            RECEIVED_AT,
            SOURCE,
            record["agentId"],
            line.rstrip(b"\n"),
            chain={"status": "ok", "sequence": sequence, "expected": sequence},
        )
        out.append(event.encode(f"1-{n}"))
    return out


# ------------------------------------------------------------------------------------- limit


def _value(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\ufffd")
    )


def _header(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("\r", " ")
        .replace("\n", " ")
        .replace("\0", "\ufffd")
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_NAMES = {"allow": (3, "allowed: "), "deny": (6, "denied: ")}
_PRI = {3: b"<38>", 4: b"<37>", 6: b"<36>"}  # auth: info, notice, warning


def limit(batch: Sequence[bytes]) -> list[bytes]:
    """The sink's bytes for the bench's events, by the shortest path (see the docstring)."""
    out = []
    for raw in batch:
        envelope = orjson.loads(raw)
        record = envelope["record"]
        action = record["action"]
        effect = record["effect"]
        severity, verb = _NAMES.get(effect, (4, f"({effect}): "))
        name = _header(truncate(f"Agent action {verb}{action}", NAME_LIMIT))
        resource = record["requestDetails"]["resource"]
        where = "request" if "://" in resource else "fname" if resource[0] == "/" else "cs3"
        rt = (datetime.fromisoformat(record["timestamp"]) - _EPOCH) // _MS
        agent = _value(envelope["agent"])
        chain = envelope["chain"]
        value = _value(resource)
        early = f" {where}={value}" if where != "cs3" else ""
        late = f" cs3={value} cs3Label=resource" if where == "cs3" else ""
        line = (
            f"CEF:0|shipper|shipper|0.1.0|{_header(action)}|{name}|{severity}|"
            f"act={_value(action)} outcome={_value(effect)} suser={agent}"
            f" duser={_value(record['userId'])} rt={rt}"
            f" reason={_value(record['reason'])}"
            f"{early}"
            f" externalId={envelope['id']} cn1={record['sequence']} cn1Label=sequence"
            f" cs1={agent} cs1Label=agentId cs2={_value(record['matchedRule'])}"
            f" cs2Label=matchedRule{late}"
            f" cs4={_value(record['sessionId'])} cs4Label=sessionId"
            f" cs5={_value(record['hash'])} cs5Label=recordHash"
            f" cs6={chain['status']} cs6Label=chainStatus"
        ).encode()
        message = b"%b1 %b bench-host shipper - - - %b" % (
            _PRI[severity],
            envelope["received_at"].encode(),
            line,
        )
        out.append(b"%d %b" % (len(message), message))
    return out


# ------------------------------------------------------------------------------------ e2e


def make_sink(port: int) -> CefSyslogSink:
    return CefSyslogSink(
        CefSyslogSinkConfig(id=SINK, address=Address("127.0.0.1", port), hostname="bench-host")
    )


async def end_to_end(items: list[bytes], work: Path, port: int) -> tuple[float, int]:
    """The events appended to a WAL, then the sink run by its driver to the receiver on
    ``port`` until the WAL is read (it closes the connection at the end); returns when the run
    began (``time.perf_counter``) and the bytes the sink wrote."""
    wal = await filled_wal(items, work / "wal", [SINK])
    try:
        sink = make_sink(port)
        driver = SinkDriver(sink, work)
        began = time.perf_counter()
        await driver.run(wal.readers[SINK], wal.epoch)
        return began, sink.counters["written_bytes"]
    finally:
        wal.release()


async def filled_wal(items: Sequence[bytes], directory: Path, readers: Sequence[str]) -> Wal:
    """A WAL in ``directory`` holding the events of ``items`` (envelopes), closed, with a reader
    for each of ``readers`` (release it when done)."""
    wal = Wal(directory, BufferConfig(), envelopes=envelopes)
    wal.open(dict.fromkeys(readers))
    try:
        for start in range(0, len(items), 1000):
            await wal.append([entry(_event(raw)) for raw in items[start : start + 1000]])
        await wal.close()
    except BaseException:
        wal.release()
        raise
    return wal


def _event(raw: bytes) -> Event:
    envelope: dict[str, Any] = orjson.loads(raw)
    return Event(
        envelope["received_at"],
        envelope["source"],
        envelope["agent"],
        orjson.dumps(envelope["record"]),
        chain=envelope["chain"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cef", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="runs per chunk (best kept)")
    parser.add_argument("--chunk", type=int, default=2_000, help="events per interleaved run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure("warning")
    items = envelope_list(args.events, args.agents, args.seed)
    sink = make_sink(514)
    if sink.messages(items) != limit(items):
        print("the limit loop does not give the sink's bytes", file=sys.stderr)
        return 1
    chunks = [items[i : i + args.chunk] for i in range(0, len(items), args.chunk)]
    size = sum(map(len, items)) / len(items)

    def run(name: str, index: int) -> float:
        batch = chunks[index]
        began = time.perf_counter()
        sink.messages(batch) if name == "shipper" else limit(batch)
        return time.perf_counter() - began

    gc.disable()
    try:
        seconds = interleaved_best(["shipper", "limit"], len(chunks), args.repeats, run)
    finally:
        gc.enable()
    rates = {name: len(items) / seconds[name] for name in seconds}
    print(f"{len(items)} events ({size:.0f} bytes of envelope each), {args.agents} agents")
    print(f"{'stage':<28}{'events/s':>12}{'us/event':>10}{'ratio':>8}")
    for name in ("limit", "shipper"):
        print(
            f"{'encode ' + name:<28}{rates[name]:>12,.0f}"
            f"{1e6 / rates[name]:>10.2f}{rates[name] / rates['limit']:>8.2f}"
        )
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        with tempfile.TemporaryDirectory() as work:
            began, written = trio.run(end_to_end, items, Path(work), port)
            received = int(receiver.stdout.readline())  # once it read the connection to its end
            took = time.perf_counter() - began
    finally:
        receiver.kill()
        receiver.wait()
    if written != received:
        print(f"the receiver read {received} bytes of {written} written", file=sys.stderr)
        return 1
    rate = len(items) / took
    print(
        f"{'end to end tcp':<28}{rate:>12,.0f}{1e6 / rate:>10.2f}{rate / rates['limit']:>8.2f}"
        f"   ({written / took / 1e6:.1f} MB/s of messages)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
