"""The status summary (``/api/status`` and its server-sent events) of a running daemon tells what
was sent: counts per source and sink, chain totals, the agents with a planted gap and fork
first, the last alerts, the rates, and a sink's lag and last error."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
import trio

from shipper.config import Address
from tests.chains import chain, seed_hash
from tests.conftest import LogCapture, api_daemon, archive_lines, file_sink_config, free_port


def lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def planted() -> dict[str, bytes]:
    """Per connection, what it sends: a healthy agent, one whose sequence 5 never comes (a
    gap), and one whose sequence 3 comes twice with different content (a fork)."""
    gappy = chain(10, "gappy")
    forked = chain(5, "forked")
    other = {**forked[2], "effect": "changed"}
    other["hash"] = seed_hash(other)
    return {
        "steady": lines(chain(20, "steady")),
        "gappy": lines(gappy[:4] + gappy[5:]),
        "forked": lines([*forked, other]),
    }


#: Events the planted records make: 20 + 9 + 6 records, plus a gap and a fork alert.
RECORDS = 35
ALERTS = 2


async def send(address: Address, data: bytes) -> None:
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(data)


async def summaries(url: str) -> AsyncGenerator[dict[str, Any]]:
    """Every summary the daemon streams from ``url`` + ``/api/status/events``, parsed. (A plain
    HTTP/1.0 reader over a socket: its body ends only when the connection does.)"""
    address = urlsplit(url)
    assert address.hostname is not None
    assert address.port is not None
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    async with stream:
        await stream.send_all(b"GET /api/status/events HTTP/1.0\r\nHost: status\r\n\r\n")
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive_some()
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        assert b"content-type: text/event-stream" in head.lower()
        while True:
            while b"\n\n" not in buffer:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
            message, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in message.split(b"\n"))
            assert fields[b"event"] == b"status"
            yield json.loads(fields[b"data"])


async def first_summary(
    url: str, holds: Callable[[dict[str, Any]], bool], seen: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The first streamed summary for which ``holds`` is true (every one read goes in ``seen``);
    a guard against a hang fails the test after a minute."""
    with trio.fail_after(60):
        async with contextlib.aclosing(summaries(url)) as stream:
            async for summary in stream:
                if seen is not None:
                    seen.append(summary)
                if holds(summary):
                    return summary
    raise AssertionError("the stream ended")


def shows_agent(agent: str, last: int, summary: dict[str, Any]) -> bool:
    """Whether the agents table shows ``agent`` at sequence ``last``."""
    rows = summary["agents"]["rows"]
    return any(row["agent"] == agent and row["last_sequence"] == last for row in rows)


def delivered(summary: dict[str, Any]) -> bool:
    (sink,) = summary["sinks"]
    return bool(sink["delivered"] == RECORDS + ALERTS and sink["lag_bytes"] == 0)


@pytest.mark.usefixtures("processes")
async def test_the_summary_tells_what_was_sent(tmp_path: Path, logs: LogCapture) -> None:
    """After three connections (a healthy agent, a gap, a fork), the streamed summary counts every
    event at the source and the sink with no lag, the chain totals, the fork then the gap at the
    top of the agents table and the healthy agent after them, both alerts newest first, and a
    rate above zero on the chart; ``/api/status`` answers the same summary as JSON."""
    seen: list[dict[str, Any]] = []
    async with api_daemon(file_sink_config(tmp_path), logs) as daemon:
        url, bound = daemon.url, daemon.bound
        before = await first_summary(url, lambda s: True)
        sends = planted()
        for name, last in (("steady", 20), ("gappy", 10), ("forked", 5)):
            await send(bound["agents"][0], sends[name])  # one after the other: alerts in order
            await first_summary(url, partial(shows_agent, name, last))
        summary = await first_summary(url, delivered, seen)
        async with httpx2.AsyncClient(base_url=url) as client:
            answered = (await client.get("/api/status")).json()
    assert before["sources"][0]["events"] == 0
    (source,) = summary["sources"]
    assert source["id"] == "agents"
    assert source["kind"] == "json_tls"
    assert source["events"] == RECORDS
    assert source["connections_accepted"] == 3
    assert source["health"] == "ok"
    (sink,) = summary["sinks"]
    assert (sink["id"], sink["kind"], sink["health"]) == ("archive", "file", "ok")
    assert sink["lag_seconds"] == 0
    assert sink["last_error"] is None
    assert len(archive_lines(tmp_path / "archive")) == RECORDS + ALERTS
    chain_totals = summary["chain"]["totals"]
    assert chain_totals == {"genesis": 3, "ok": 30, "gap": 1, "fork": 1}
    assert summary["chain"]["agents"] == 3
    assert summary["chain"]["problems"] == 2
    agents = summary["agents"]
    assert (agents["total"], agents["problems"], agents["shown"]) == (3, 2, 3)
    rows = [(r["agent"], r["status"], r["problem"]) for r in agents["rows"]]
    assert rows == [("forked", "fork", True), ("gappy", "gap", True), ("steady", "ok", False)]
    gappy = agents["rows"][1]
    assert gappy["open_gaps"] == [[5, 5]]
    assert gappy["last_sequence"] == 10
    assert summary["agents"]["rows"][2]["last_sequence"] == 20
    alerts = [(a["agent"], a["status"], a["severity"]) for a in summary["alerts"]]
    assert alerts == [("forked", "fork", "critical"), ("gappy", "gap", "medium")]
    assert summary["alerts"][1]["missing"] == [5, 5]
    assert summary["alerts"][0]["sequence"] == 3
    assert any(point > 0 for s in seen for point in s["rates"]["received"])
    assert any(point > 0 for s in seen for point in s["rates"]["delivered"]["archive"])
    assert summary["health"]["status"] == "ok"
    assert answered["v"] == 1
    assert answered["sources"][0]["events"] == RECORDS
    assert [r["agent"] for r in answered["agents"]["rows"]] == ["forked", "gappy", "steady"]


@pytest.mark.usefixtures("processes")
async def test_a_sink_that_cannot_deliver_shows_its_lag_and_last_error(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A webhook sink whose receiver is not there is degraded, says why in ``last_error``, and
    lags by the bytes of what was sent, an age that grows; the file sink beside it does not."""
    raw = file_sink_config(tmp_path)
    port = free_port()  # nothing listens there
    raw["sinks"]["hook"] = {"type": "webhook", "url": f"http://127.0.0.1:{port}/in"}
    async with api_daemon(raw, logs) as daemon:
        await send(daemon.bound["agents"][0], lines(chain(10, "steady")))

        def lagging(summary: dict[str, Any]) -> bool:
            hook = next(s for s in summary["sinks"] if s["id"] == "hook")
            return bool(
                hook["last_error"] is not None
                and hook["lag_seconds"] is not None
                and hook["lag_seconds"] >= 2
            )

        summary = await first_summary(daemon.url, lagging)
        daemon.shutdown.request("test")
        daemon.shutdown.request("test: the webhook will never deliver")
    sinks = {s["id"]: s for s in summary["sinks"]}
    hook, archive = sinks["hook"], sinks["archive"]
    assert f"127.0.0.1:{port}" in hook["last_error"]["error"]
    assert hook["health"] in ("degraded", "failing")
    assert "ConnectError" in hook["last_error"]["error"]
    assert hook["reason"] == hook["last_error"]["error"]
    assert hook["lag_bytes"] > 0
    assert hook["delivered"] == 0
    assert hook["failures"] >= 1
    assert archive["lag_bytes"] == 0
    assert archive["lag_seconds"] == 0
    assert archive["delivered"] == 10
    assert summary["health"]["status"] in ("degraded", "failing")
    assert "sink.hook" in summary["health"]["problems"]


async def test_the_summary_asked_right_after_the_start_shows_the_sources_listening(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The board's first summary is made as the API starts, before the sources listen; asked
    for once the daemon runs, ``/api/status`` makes a new one instead of serving that one (the
    board here refreshes once only, so nothing else would)."""
    from shipper.api import status

    async def refresh_once(self: status.Board) -> None:
        self.refresh()
        await trio.sleep_forever()

    monkeypatch.setattr(status.Board, "run", refresh_once)
    async with (
        api_daemon(file_sink_config(tmp_path), logs) as daemon,
        httpx2.AsyncClient(base_url=daemon.url) as client,
    ):
        summary = (await client.get("/api/status")).json()
    assert [(source["id"], source["health"]) for source in summary["sources"]] == [("agents", "ok")]
