"""The live tap against the running daemon: ``/api/tap`` shows exactly the events its filters
match, in WAL order, redacted as ``[api] redact`` says; a client that stops reading slows no
ingest and is told what it missed; a client that leaves is removed; ``shipper tap`` prints it."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import orjson
import pytest
import trio

from shipper import shutdown as shutdown_module
from shipper.api import tap as tap_module
from shipper.config import Address, Config, parse_config
from shipper.metrics import value
from shipper.shutdown import Shutdown, run_daemon
from shipper.topology import Topology
from tests.chains import chain
from tests.conftest import REPO, LogCapture, archive_lines, file_sink_config, free_port, wait_until

REDACT_KEY = "tap-redaction-key-0123456789"
#: How long a read waits before the test fails: a guard against a hang (an event that never
#: comes), not a limit on how fast anything is.
HANG_GUARD = 60.0


def lines(records: list[dict[str, Any]]) -> bytes:
    """Records as the JSON lines a json_tls source takes."""
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


async def send(address: Address, data: bytes) -> None:
    """Send ``data`` over one TCP connection and close it."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(data)


class Running:
    """A daemon started for a test: its sources' addresses, its API's URL, its topology."""

    def __init__(self, bound: dict[str, Any], url: str, topology: Topology) -> None:
        self.bound = bound
        self.url = url
        self.topology = topology

    def metric(self, name: str) -> Any:
        return value(self.topology.registry.snapshot(), name)


@asynccontextmanager
async def daemon(
    config: Config, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    """The daemon running ``config`` (with ``[api] address``) until the block ends."""
    built: list[Topology] = []

    def recording(config: Config) -> Topology:
        built.append(Topology(config))
        return built[-1]

    monkeypatch.setattr(shutdown_module, "Topology", recording)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        (entry,) = logs.entries("api_listening")
        yield Running(bound, entry["url"], built[0])
        shutdown.request("test")


class Tap:
    """One tap client's server-sent events over a plain HTTP/1.0 connection (the body is the
    stream itself, until the server closes it), parsed: ("message", envelope) or ("missed", n).
    It reads only when asked: until then it is a client that does not read."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self._buffer:
            with trio.fail_after(HANG_GUARD):
                chunk = await self.stream.receive_some()
            if not chunk:
                raise AssertionError("the tap stream ended")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.removesuffix(b"\r")

    async def head(self) -> tuple[bytes, list[bytes]]:
        """The response's status line and header lines."""
        status = await self.line()
        headers = []
        while header := await self.line():
            headers.append(header.lower())
        return status, headers

    async def next(self) -> tuple[str, Any]:
        kind, data = "message", []
        while True:
            line = await self.line()
            if line.startswith(b"event: "):
                kind = line.removeprefix(b"event: ").decode()
            elif line.startswith(b"data: "):
                data.append(line.removeprefix(b"data: "))
            elif not line and data:
                parsed = orjson.loads(b"\n".join(data))
                return (kind, parsed["missed"] if kind == "missed" else parsed)

    async def envelopes(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` envelopes (no missed notice may come between)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            kind, item = await self.next()
            assert kind == "message", item
            found.append(item)
        return found


@asynccontextmanager
async def tapping(url: str, params: list[tuple[str, str]]) -> AsyncIterator[Tap]:
    """A tap client with the query ``params``, registered (the opening comment read) when the
    block starts."""
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    stream = await trio.open_tcp_stream(where.hostname, where.port)
    async with stream:
        query = f"?{urlencode(params)}" if params else ""
        await stream.send_all(f"GET /api/tap{query} HTTP/1.0\r\nHost: tap\r\n\r\n".encode())
        tap = Tap(stream)
        status, headers = await tap.head()
        assert status.split()[1] == b"200", status
        assert b"content-type: text/event-stream; charset=utf-8" in headers
        assert await tap.line() == b": tap"
        assert await tap.line() == b""
        yield tap


def without_id(envelope: dict[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in envelope.items() if key != "id"}


def tap_config(tmp_path: Path, **api: Any) -> Config:
    """Two json_tls sources (``agents``, ``other``), a file sink, the API on port 0."""
    raw = file_sink_config(tmp_path)
    raw["sources"]["other"] = {"type": "json_tls", "address": "127.0.0.1:0"}
    raw["api"] = {"address": "127.0.0.1:0", **api}
    return parse_config(raw)


#: Each tap client's query, and which archived envelopes it must show (a filter of its own).
FILTERS: dict[str, tuple[list[tuple[str, str]], Callable[[dict[str, Any]], bool]]] = {
    "everything": ([], lambda e: True),
    "source": ([("source", "other")], lambda e: e["source"]["id"] == "other"),
    "agent": ([("agent", "x")], lambda e: e.get("agent") == "x"),
    "agents": ([("agent", "a"), ("agent", "b")], lambda e: e.get("agent") in ("a", "b")),
    "status": ([("status", "gap")], lambda e: e.get("chain", {}).get("status") == "gap"),
    "alerts": ([("alerts", "")], lambda e: e["source"]["id"] == "shipper"),
    "combined": (
        [("agent", "a,x"), ("status", "gap,late")],
        lambda e: e.get("agent") in ("a", "x") and e.get("chain", {}).get("status") == "gap",
    ),
}


@pytest.mark.usefixtures("processes")
async def test_each_filter_shows_exactly_the_matching_events(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients tapping with each filter see, in WAL order, exactly the archived events their
    filter matches (envelopes without their id), alerts included where they match."""
    agent_a = chain(9, "a")
    phase_one = [
        ("agents", [*agent_a[:5], *agent_a[7:]]),  # a: 1..5, then a gap, 8, 9
        ("other", chain(3, "x")),
        ("other", chain(2, "b")),
    ]
    fence = chain(10, "x")[9]  # x jumps from 3 to 10: a gap, and its alert, last in the WAL
    async with (
        daemon(tap_config(tmp_path), logs, monkeypatch) as running,
        AsyncExitStack() as stack,
    ):
        taps = {
            name: await stack.enter_async_context(tapping(running.url, query))
            for name, (query, _) in FILTERS.items()
        }
        assert running.metric("tap_clients") == len(taps)
        for source_id, records in phase_one:
            await send(running.bound[source_id][0], lines(records))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 13)
        await send(running.bound["other"][0], lines([fence]))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 15)
        archived = [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]
        shown = {}
        for name, tap in taps.items():
            expected = [without_id(e) for e in archived if FILTERS[name][1](e)]
            shown[name] = (await tap.envelopes(len(expected)), expected)
    for name, (seen, expected) in shown.items():
        assert seen == expected, name
    # the filters are not vacuous: what each must show, by (agent, sequence or alert)
    keys = {
        name: [(e.get("agent"), e.get("chain", {}).get("sequence", "alert")) for e in expected]
        for name, (_, expected) in shown.items()
    }
    assert keys["status"] == [("a", 8), ("x", 10)]
    assert keys["alerts"] == [("a", "alert"), ("x", "alert")]
    assert keys["combined"] == [("a", 8), ("x", 10)]
    assert keys["agent"] == [("x", 1), ("x", 2), ("x", 3), ("x", 10), ("x", "alert")]
    assert len(keys["agents"]) == 7 + 1 + 2  # a's events and alert, b's events
    assert len(keys["source"]) == 6
    assert len(keys["everything"]) == 15


async def test_redaction_applies_to_tapped_envelopes(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``[api] redact``, the tap removes and hashes the named fields (the keyed hash of
    the value's JSON text), while the archive keeps them and filters still see the originals."""
    redact = {"remove": ["record.requestDetails"], "hash": ["agent"], "key": REDACT_KEY}
    records = chain(3, "redacted-agent")
    config = tap_config(tmp_path, redact=redact)
    async with (
        daemon(config, logs, monkeypatch) as running,
        tapping(running.url, [("agent", "redacted-agent")]) as tap,
    ):
        await send(running.bound["agents"][0], lines(records))
        seen = await tap.envelopes(3)
    archived = [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]
    hashed = hmac.new(REDACT_KEY.encode(), b'"redacted-agent"', hashlib.sha256).hexdigest()
    for envelope, stored, record in zip(seen, archived, records, strict=True):
        assert envelope["agent"] == "hmac-sha256:" + hashed
        assert "requestDetails" not in envelope["record"]
        assert envelope["record"]["hash"] == record["hash"]
        assert stored["agent"] == "redacted-agent"
        assert stored["record"]["requestDetails"] == record["requestDetails"]


async def test_a_client_that_leaves_is_removed(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tap_clients`` counts a connected client, and goes back down once it disconnects."""
    async with daemon(tap_config(tmp_path), logs, monkeypatch) as running:
        assert running.metric("tap_clients") == 0
        async with tapping(running.url, []), tapping(running.url, [("alerts", "1")]):
            assert running.metric("tap_clients") == 2
        await wait_until(lambda: running.metric("tap_clients") == 0)


async def test_clients_beyond_the_bound_are_refused(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of ten clients asking together, ``MAX_TAP_CLIENTS`` are served and the others refused
    with 503 and a ``Retry-After``; once they left, a new client is accepted."""
    monkeypatch.setattr(tap_module, "MAX_TAP_CLIENTS", 3)
    async with daemon(tap_config(tmp_path), logs, monkeypatch) as running:
        where = urlsplit(running.url)
        host, port = where.hostname, where.port
        assert host is not None
        assert port is not None
        statuses: list[bytes] = []
        streams: list[trio.SocketStream] = []

        async def ask() -> None:
            stream = await trio.open_tcp_stream(host, port)
            streams.append(stream)
            await stream.send_all(b"GET /api/tap HTTP/1.0\r\nHost: tap\r\n\r\n")
            status, headers = await Tap(stream).head()
            statuses.append(status.split()[1])
            if status.split()[1] == b"503":
                assert b"retry-after: 10" in headers

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(ask)
        assert sorted(statuses) == [b"200"] * 3 + [b"503"] * 7
        assert running.metric("tap_clients") == 3
        for stream in streams:
            await stream.aclose()
        await wait_until(lambda: running.metric("tap_clients") == 0)
        async with tapping(running.url, []):
            assert running.metric("tap_clients") == 1


async def test_a_bad_filter_is_refused(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown query parameter or chain status is answered 400 with the reason, not with an
    unfiltered stream."""
    async with (
        daemon(tap_config(tmp_path), logs, monkeypatch) as running,
        httpx2.AsyncClient(base_url=running.url) as client,
    ):
        misspelled = await client.get("/api/tap", params={"agnet": "x"})
        status = await client.get("/api/tap", params={"status": "ok,fine"})
    assert misspelled.status_code == 400
    assert "unknown query parameter 'agnet'" in misspelled.text
    assert status.status_code == 400
    assert "got fine" in status.text


@pytest.mark.usefixtures("processes")
async def test_a_stalled_client_slows_no_ingest_and_is_told_what_it_missed(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a client connected that never reads, every event sent is archived, as many as in a
    run without it; once the client reads, what it was shown plus the missed notices make up
    every event sent, and the missed ones are counted in ``tap_missed``."""
    count = 20_000
    config = tap_config(tmp_path, tap_buffer=100)
    archive = tmp_path / "archive"
    async with daemon(config, logs, monkeypatch) as running:
        address = running.bound["agents"][0]
        await send(address, lines(chain(count, "alone")))
        await wait_until(lambda: len(archive_lines(archive)) == count, limit=120)
        alone = len(archive_lines(archive))
        async with tapping(running.url, [("agent", "watched")]) as stalled:
            await send(address, lines(chain(count, "watched")))
            await wait_until(lambda: len(archive_lines(archive)) == 2 * count, limit=120)
            watched = len(archive_lines(archive)) - alone
            missed_metric = running.metric("tap_missed")
            shown, missed, notices = 0, 0, 0
            while shown + missed < count:
                kind, item = await stalled.next()
                if kind == "missed":
                    missed += item
                    notices += 1
                else:
                    shown += 1
        assert running.metric("tap_events") == shown
    assert watched == alone == count
    assert missed == missed_metric > 0
    assert notices >= 1
    assert shown >= 100  # at least the buffer's worth was kept for it


def run_tap(url: str, *args: str) -> list[str]:
    """The command line of ``shipper tap`` against ``url``."""
    return [sys.executable, "-m", "shipper", "tap", "--api", url, *args]


async def read_until(stream: trio.abc.ReceiveStream, done: Callable[[bytes], bool]) -> bytes:
    """What ``stream`` gives until ``done`` holds for it."""
    seen = b""
    while not done(seen):
        with trio.fail_after(HANG_GUARD):
            chunk = await stream.receive_some()
        assert chunk, f"the stream ended after {seen!r}"
        seen += chunk
    return seen


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
async def test_shipper_tap_prints_the_events_sent(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """``shipper tap --agent ID`` run as a command prints one line per event of that agent sent
    (a short line, or the envelope with ``--json``), and exits 0 on Ctrl-C (SIGINT)."""
    records = chain(4, "printed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with daemon(tap_config(tmp_path), logs, monkeypatch) as running:
        flags = ["--agent", "printed", *(["--json"] if as_json else [])]
        process = await trio.lowlevel.open_process(
            run_tap(running.url, *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            told = await read_until(process.stderr, lambda seen: b"\n" in seen)
            assert b"tapping" in told
            await send(running.bound["agents"][0], lines([*chain(2, "other"), *records]))
            out = await read_until(process.stdout, lambda seen: seen.count(b"\n") >= 4)
            process.send_signal(signal.SIGINT)
            code = await process.wait()
        finally:
            process.kill()
    printed = out.decode().splitlines()
    assert code == 0
    assert len(printed) == 4
    if as_json:
        assert [orjson.loads(line)["record"] for line in printed] == records
    else:
        for line, record in zip(printed, records, strict=True):
            _, source, agent, sequence, status, action, outcome = line.split(" ")
            assert (source, agent, sequence) == ("agents", "printed", f"#{record['sequence']}")
            assert status == ("genesis" if record["sequence"] == 1 else "ok")
            assert (action, outcome) == (record["action"], record["effect"])


def test_shipper_tap_without_a_daemon_says_so() -> None:
    """``shipper tap`` pointed at an address nothing serves exits 1, saying it cannot reach
    the API."""
    port = free_port()
    result = subprocess.run(
        run_tap(f"127.0.0.1:{port}"),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{port}" in result.stderr


async def test_the_stream_ends_when_the_daemon_stops(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connected tap client, reading or not, holds up no shutdown: the daemon drains and
    stops, and the client's stream ends."""
    async with AsyncExitStack() as clients:
        with trio.fail_after(HANG_GUARD):  # a guard against a shutdown that waits for them
            async with daemon(tap_config(tmp_path), logs, monkeypatch) as running:
                reading = await clients.enter_async_context(tapping(running.url, []))
                stalled = await clients.enter_async_context(tapping(running.url, []))
                await send(running.bound["agents"][0], lines(chain(3, "a")))
                assert len(await reading.envelopes(3)) == 3
        (complete,) = logs.entries("shutdown_complete")
        assert complete["delivered"] == {"archive": 3}
        for tap in (reading, stalled):
            rest = b""
            with trio.fail_after(HANG_GUARD):  # a guard against a hang, as in Tap.line
                while chunk := await tap.stream.receive_some():
                    rest += chunk
            assert rest.count(b"data: ") == (0 if tap is reading else 3)
