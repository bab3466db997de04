"""``/health``, ``/health/ready`` and ``/health/live`` of a running daemon, and the rules that
make ``/health`` fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import trio

from shipper.api.health import problems, unready
from shipper.config import parse_config
from shipper.shutdown import Shutdown, run_daemon
from shipper.topology import Topology
from tests.chains import chain_lines
from tests.conftest import LogCapture, file_sink_config
from tests.test_daemon import send
from tests.webhooks import receiving


async def poll(
    client: httpx2.AsyncClient, path: str, status: int, limit: float = 30.0
) -> httpx2.Response:
    """GET ``path`` until it answers ``status`` (health changes have no event to await over
    HTTP, as ``wait_until`` polls a counter); fail the test after ``limit`` s."""
    with trio.fail_after(limit):
        while (response := await client.get(path)).status_code != status:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return response


async def test_a_sink_failing_longer_than_allowed_makes_health_503_until_it_delivers(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A webhook sink whose receiver answers 503 goes failing; once it has failed longer than
    ``sink_failing_after``, ``/health`` answers 503 naming the sink (while ``/health/live`` and
    ``/health/ready`` stay 200, and the sink's lag in seconds grows), and 200 again once the
    receiver takes the events."""
    with receiving() as receiver:
        receiver.down = True
        raw = file_sink_config(tmp_path)
        raw["sinks"]["hook"] = {"type": "webhook", "url": receiver.url, "batch_size": 10}
        raw["api"] = {"address": "127.0.0.1:0", "sink_failing_after": "200ms"}
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
            (entry,) = logs.entries("api_listening")
            async with httpx2.AsyncClient(base_url=entry["url"]) as client:
                healthy = await poll(client, "/health", 200)
                await send(bound["agents"][0], b"".join(chain_lines(5)))
                failing = await poll(client, "/health", 503)
                live = await client.get("/health/live")
                ready = await client.get("/health/ready")
                metrics = await client.get("/metrics")
                receiver.down = False
                recovered = await poll(client, "/health", 200)
            shutdown.request("test")
    assert healthy.json()["status"] == "ok"
    assert healthy.json()["reasons"] == []
    body = failing.json()
    assert body["status"] == "unhealthy"
    (reason,) = body["reasons"]
    assert reason.startswith("sink.hook: failing for ")
    hook = body["components"]["sink.hook"]
    assert hook["status"] == "failing"
    assert hook["for_seconds"] > 0.2
    assert body["components"]["sink.archive"]["status"] == "ok"
    assert (live.status_code, ready.status_code) == (200, 200)
    lag = next(
        line
        for line in metrics.text.splitlines()
        if line.startswith("shipper_sink_lag_seconds") and 'sink="hook"' in line
    )
    assert float(lag.split()[-1]) > 0
    assert recovered.json()["status"] == "ok"
    assert len(receiver.held()) == 5


def states(**found: tuple[str, float]) -> dict[str, dict[str, Any]]:
    """Health components as ``components`` gives them: name -> (status, for_seconds)."""
    return {
        name.replace("_", "."): {"status": status, "reason": "why", "for_seconds": lasted}
        for name, (status, lasted) in found.items()
    }


def test_health_fails_for_sources_the_wal_and_sinks_past_their_allowance() -> None:
    """A source not listening, a full or refusing WAL, and a sink failing longer than allowed
    each make the daemon unhealthy; a sink degraded (retrying) or failing for less does not,
    nor does anything else degraded."""
    fine = states(
        source_a=("ok", 0),
        wal=("ok", 0),
        writer=("ok", 0),
        sink_s=("failing", 10),
        sink_t=("degraded", 1000),
        chain=("degraded", 5),
    )
    assert problems(fine, sink_failing_after=60) == []
    assert problems(fine, sink_failing_after=5) == ["sink.s: failing for 10 s: why"]
    assert problems(states(source_a=("failing", 0)), 60) == ["source.a: why"]
    assert problems(states(wal=("degraded", 0)), 60) == ["wal: why"]
    assert problems(states(writer=("failing", 3)), 60) == ["writer: why"]


def test_a_daemon_not_started_is_not_ready(tmp_path: Path) -> None:
    """Before its sources listen and its WAL is open, a topology is not ready, and says why."""
    topology = Topology(parse_config(file_sink_config(tmp_path)))
    assert unready(topology) == ["source.agents: not listening yet", "wal: not open"]
