"""Health endpoints, from the health each component tells the registry (``shipper.metrics``
``Health``; every process's, merged in the main process).

* ``GET /health/live``: 200 while the daemon's event loop answers at all (a liveness probe; it
  needs no token).
* ``GET /health/ready``: 200 once the daemon has started: every source listens, the WAL is open
  for writes; 503 before, and once it is stopping.
* ``GET /health``: 200 when the daemon does its job: every source listens (``source.<id>``; with
  ingest workers, at least one worker serves it: ``shipper.ingestproc``), the WAL accepts writes
  (``wal``: not full; ``writer``: not refusing), and no sink (``sink.<id>``) has been failing for
  longer than ``[api] sink_failing_after``; 503 otherwise. A sink is failing after several
  unavailable tries in a row, or a defect in its code (``shipper.sinks.driver``); a sink that is
  retrying or just started failing does not make the daemon unhealthy yet.

Every answer is JSON::

    {"status": "ok" | "unhealthy" | "not_ready",
     "reasons": ["sink.siem: failing for 312 s: connection refused", ...],   # empty when ok
     "components": {"sink.siem": {"status": "failing", "reason": "...", "for_seconds": 312.0},
                    ...}}

``for_seconds``: how long the component has been in that state (on the monotonic clock every
process shares; 0 when it is not known).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from shipper.config import ApiConfig
    from shipper.topology import Topology


def components(health: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """The snapshot's health entries with how long each has been so (``for_seconds``)."""
    return {
        name: {
            "status": state["status"],
            "reason": state["reason"],
            "for_seconds": round(max(0.0, now - state["since"]), 3) if state["since"] else 0.0,
        }
        for name, state in sorted(health.items())
    }


def problems(found: dict[str, dict[str, Any]], sink_failing_after: float) -> list[str]:
    """Why the daemon is not healthy (see the module docstring); empty when it is."""
    reasons = []
    for name, state in found.items():
        status, why, lasted = state["status"], state["reason"], state["for_seconds"]
        if name.startswith("source.") and status == "failing":
            reasons.append(f"{name}: {why or 'not listening'}")
        elif name in ("wal", "writer") and status != "ok":
            reasons.append(f"{name}: {why}")
        elif name.startswith("sink.") and status == "failing" and lasted > sink_failing_after:
            reasons.append(f"{name}: failing for {lasted:.0f} s: {why}")
    return reasons


def unready(topology: Topology) -> list[str]:
    """Why the daemon is not ready to take events (empty when it is)."""
    reasons = []
    for source in topology.sources:
        if source.id not in topology.bound:
            reasons.append(f"source.{source.id}: not listening yet")
        elif getattr(source, "stopping", False):
            reasons.append(f"source.{source.id}: stopping")
    if not topology.wal.is_open:
        reasons.append("wal: not open")
    return reasons


def routes(topology: Topology, config: ApiConfig) -> list[BaseRoute]:
    """The health routes over ``topology``."""

    async def live(request: Request) -> Response:
        """Liveness: the main process answers at all."""
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        reasons = unready(topology)
        status = "not_ready" if reasons else "ok"
        return JSONResponse({"status": status, "reasons": reasons}, 503 if reasons else 200)

    async def health(request: Request) -> Response:
        found = components(topology.registry.snapshot()["health"], time.monotonic())
        reasons = problems(found, config.sink_failing_after)
        body = {
            "status": "unhealthy" if reasons else "ok",
            "reasons": reasons,
            "components": found,
        }
        return JSONResponse(body, 503 if reasons else 200)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
    ]
