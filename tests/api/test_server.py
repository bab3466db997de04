"""The API server in the running daemon: it listens where ``[api] address`` says, answers, and a
taken address stops the start as a source's does."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import pytest
import trio

from shipper.config import parse_config
from shipper.errors import ListenError
from shipper.shutdown import Shutdown, run_daemon
from tests.conftest import LogCapture, api_daemon, file_sink_config


async def test_the_daemon_serves_liveness_on_its_api_address(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With ``[api] address`` on port 0, the daemon logs the URL it serves, and
    ``/health/live`` there answers 200."""
    async with (
        api_daemon(file_sink_config(tmp_path), logs) as daemon,
        httpx2.AsyncClient(base_url=daemon.url) as client,
    ):
        response = await client.get("/health/live")
    assert daemon.url.startswith("http://127.0.0.1:")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_an_api_address_taken_stops_the_start(tmp_path: Path) -> None:
    """An ``[api] address`` another socket holds raises ListenError naming the API."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = file_sink_config(tmp_path)
        raw["api"] = {"address": f"127.0.0.1:{port}"}
        with pytest.RaisesGroup(
            pytest.RaisesExc(ListenError, match=f"api: cannot listen on 127.0.0.1:{port}"),
            flatten_subgroups=True,
        ):
            await run_daemon(parse_config(raw), Shutdown(), handle_signals=False)


async def test_head_on_a_stream_answers_its_headers_and_takes_no_tap_place(
    tmp_path: Path, logs: LogCapture
) -> None:
    """HEAD on ``/api/tap`` and ``/api/status/events`` answers 200 with the stream's type and
    no stream (it ends), and registers no tap client."""
    async with (
        api_daemon(file_sink_config(tmp_path), logs) as daemon,
        httpx2.AsyncClient(base_url=daemon.url) as client,
    ):
        with trio.fail_after(60):  # a stream never ends: a hang, not a slow answer
            tap = await client.head("/api/tap")
            events = await client.head("/api/status/events")
        metrics = (await client.get("/metrics")).text
    assert tap.status_code == 200
    assert tap.headers["content-type"].startswith("text/event-stream")
    assert events.status_code == 200
    assert events.headers["content-type"].startswith("text/event-stream")
    assert "\nshipper_tap_clients 0.0\n" in metrics
