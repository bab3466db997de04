"""The status summary of the running daemon, its live stream, and the status page.

Routes:

* ``GET /api/status``: the summary below, as JSON.
* ``GET /api/status/events``: server-sent events, one ``status`` event holding the summary each
  time it is refreshed (every ``INTERVAL`` seconds). Each client is served by its own task and
  always gets the latest summary: a slow client skips summaries, and never holds up ingest or
  another client.
* ``GET /``: the status page (``status.html``, shipped in this package and read once; plain
  JavaScript and inline SVG, nothing fetched from elsewhere, so it works on an isolated network).

The summary is made by a ``Board`` every ``INTERVAL`` seconds while the API serves (so the rate
chart covers the last minute however long nobody watched): it reads the metrics registry (every
process's counters and health, merged), the chain verifier's list of agents with problems
(``shipper.chain.Troubled``: no pass over every agent) and what the writer accepted last
(``shipper.recent``). Format (version 1)::

    {"v": 1, "version": "0.1.0", "time": "2026-12-03T13:30:00.000000Z", "uptime_seconds": 812.4,
     "interval_seconds": 1.0,
     "health": {"status": "ok", "problems": {"<component>": {"status", "reason", "since"}}},
     "sources": [{"id", "kind", "events", "bytes", "malformed", "connections_accepted",
                  "connections_refused", "events_per_second", "bytes_per_second",
                  "health", "reason"}],
     "sinks": [{"id", "kind", "delivered", "bytes", "failures", "retries", "dead_letters",
                "events_per_second", "lag_bytes", "lag_seconds", "health", "reason",
                "last_error": {"error", "at"} | null}],
     "wal": {"events", "bytes", "max_bytes", "free_bytes"},
     "chain": {"profile", "agents", "problems", "alerts", "totals": {"<status>": count}},
     "agents": {"total", "problems", "shown", "rows": [{"agent", "status", "problem",
                "last_sequence", "open_gaps", "counts", "last_alert"}]},
     "alerts": [{"received_at", "action", "agent", "status", "severity", ...}],
     "rates": {"seconds": [-59.0, ..., 0.0], "received": [...], "delivered": {"<sink>": [...]}}}

* Rates are per second. A source's and a sink's are averaged over the last ``RATE_SAMPLES``
  refreshes (ingest workers report their counters in bursts); the chart's (``rates``) are per
  refresh, the oldest first, ``seconds`` their age.
* ``lag_bytes``: WAL bytes the sink has not acknowledged. ``lag_seconds``: how long ago the WAL
  accepted the oldest of them (0 without lag; null when that was before the last ``HISTORY``
  refreshes, or before this start: more than a minute).
* ``last_error``: why the sink last failed, and when that was first seen, kept after it
  recovered: its health's reason at a refresh after a failed try (or while it is ``failing``: a
  sink process that exited), or, when it recovered before the refresh, how many tries failed.
  (A sink process not started yet is not an error.)
* ``agents.rows``: at most ``AGENT_ROWS``; first the agents with problems (``problem``: a fork,
  broken link or bad hash, then gaps and regressions; the worst severity first, the most recent
  first within it), then the agents seen most recently. ``status`` is the worst the agent's chain
  had (``shipper.chain.AgentState.worst``). ``total`` counts every tracked agent.
* ``alerts``: the last ``ALERTS_SHOWN`` alerts the WAL accepted, newest first, each a few fields
  of its record (``Event`` ``record``: ``action``, ``agent``, ``status``, ``severity``,
  ``missing``, ``detail``, ``source``, ``peer``, ``sink``, ``reason``, and the received and
  expected sequence), those it has.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from itertools import islice, pairwise
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from shipper import __version__
from shipper.events import utc_timestamp
from shipper.logging import get_logger
from shipper.metrics import value

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from shipper.chain import AgentState
    from shipper.topology import Topology

log = get_logger("shipper.api")

#: Seconds between two summaries.
INTERVAL: Final = 1.0
#: Refreshes kept for the rates and the lag's age (a minute at ``INTERVAL``).
HISTORY: Final = 60
#: Refreshes a source's or sink's rate is averaged over.
RATE_SAMPLES: Final = 5
#: Rows of the agents table at most.
AGENT_ROWS: Final = 50
#: Alerts listed at most (``shipper.recent`` keeps a few more).
ALERTS_SHOWN: Final = 20
#: Fields of an alert's record the summary shows (beside its received sequence and expected one).
ALERT_FIELDS: Final = (
    "action",
    "agent",
    "status",
    "severity",
    "missing",
    "detail",
    "source",
    "peer",
    "sink",
    "reason",
)
#: The page's security policy: nothing but itself (its inline script and style) and this API.
PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)
_RANK: Final = {"ok": 0, "degraded": 1, "failing": 2}


@dataclass(frozen=True, slots=True)
class Sample:
    """The counts at one refresh (monotonic ``at``): events and bytes per source, events
    delivered per sink, and the bytes the WAL accepted since this start."""

    at: float
    sources: dict[str, tuple[int, int]]
    sinks: dict[str, int]
    wal_bytes: int


class Board:
    """Makes the summary every ``interval`` seconds (``run``) and hands it to every client."""

    def __init__(
        self, topology: Topology, *, interval: float = INTERVAL, history: int = HISTORY
    ) -> None:
        self.topology = topology
        self.interval = interval
        self._samples: deque[Sample] = deque(maxlen=history + 1)
        self._started = time.monotonic()
        self._errors: dict[str, dict[str, str]] = {}  # sink id: its last error, and when
        self._failures: dict[str, int] = {}  # sink id: its failed tries at the last refresh
        self.summary: dict[str, Any] | None = None
        self.encoded = b""
        self.serial = 0  # how many summaries were made
        self.made_running = False  # whether the last summary was made with the daemon running
        self._changed = trio.Event()

    # --- refreshing -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh the summary every ``interval`` seconds until cancelled. A defect making it is
        logged (once while it stays the same) and the next refresh tries again: never the
        daemon's end; the clients keep the last summary meanwhile."""
        failing = ""
        while True:
            try:
                self.refresh()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != failing:
                    log.exception("status_summary_failed", error=error)
                failing = error
            else:
                failing = ""
            await trio.sleep(self.interval)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """The application's lifespan: the board refreshes while the API serves."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run)
            yield
            nursery.cancel_scope.cancel()

    def refresh(self) -> dict[str, Any]:
        """Take a sample now and make the summary of it; wake the clients waiting for one."""
        topology = self.topology
        snapshot = topology.registry.snapshot()
        sample = Sample(
            time.monotonic(),
            {
                source.id: (
                    int(value(snapshot, "source_events", source.id)),
                    int(value(snapshot, "source_bytes", source.id)),
                )
                for source in topology.sources
            },
            {slot.id: int(value(snapshot, "sink_events", slot.id)) for slot in topology.sinks},
            topology.wal.counters["bytes"],
        )
        self._samples.append(sample)
        self.made_running = topology.running
        self.summary = self._summary(snapshot)
        self.encoded = orjson.dumps(self.summary)
        self.serial += 1
        self._changed.set()
        self._changed = trio.Event()
        return self.summary

    async def next_after(self, serial: int) -> tuple[int, bytes]:
        """The first summary made after the one numbered ``serial`` (waits for it), encoded."""
        while self.serial <= serial:
            await self._changed.wait()
        return self.serial, self.encoded

    # --- the summary ----------------------------------------------------------------------------

    def _summary(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        topology = self.topology
        health = snapshot["health"]
        problems = {name: state for name, state in health.items() if state["status"] != "ok"}
        worst = max(
            (state["status"] for state in problems.values()), key=_RANK.__getitem__, default="ok"
        )
        verdicts = snapshot["metrics"].get("chain_verdicts", {"samples": []})["samples"]
        troubled = topology.chain.verifier.troubled
        return {
            "v": 1,
            "version": __version__,
            "time": utc_timestamp(),
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "interval_seconds": self.interval,
            "health": {"status": worst, "problems": problems},
            "sources": self._sources(snapshot),
            "sinks": self._sinks(snapshot),
            "wal": {
                "events": int(value(snapshot, "wal_events")),
                "bytes": int(value(snapshot, "wal_buffer_bytes")),
                "max_bytes": topology.config.buffer.max_bytes,
                "free_bytes": int(value(snapshot, "wal_free_bytes")),
            },
            "chain": {
                "profile": topology.config.chain.profile_fields.name,
                "agents": int(value(snapshot, "chain_agents")),
                "problems": len(troubled),
                "alerts": int(value(snapshot, "chain_alerts")),
                "totals": {labels[0]: count for labels, count in verdicts if count},
            },
            "agents": self._agents(),
            "alerts": self._alerts(),
            "rates": self._chart(),
        }

    def _rate(self, count: Any) -> float:
        """Per second, over the last ``RATE_SAMPLES`` refreshes, of what ``count(sample)``
        gives; 0 before two refreshes."""
        samples = self._samples
        if len(samples) < 2:
            return 0.0
        first = samples[max(0, len(samples) - 1 - RATE_SAMPLES)]
        last = samples[-1]
        elapsed = last.at - first.at
        return round(max(0, count(last) - count(first)) / elapsed, 1) if elapsed > 0 else 0.0

    def _sources(self, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for source in self.topology.sources:
            name = source.id
            state = snapshot["health"].get(f"source.{name}", {"status": "ok", "reason": ""})
            out.append(
                {
                    "id": name,
                    "kind": self.topology.config.sources[name].kind,
                    "events": int(value(snapshot, "source_events", name)),
                    "bytes": int(value(snapshot, "source_bytes", name)),
                    "malformed": int(value(snapshot, "source_malformed", name)),
                    "connections_accepted": int(
                        value(snapshot, "source_connections_accepted", name)
                    ),
                    "connections_refused": int(value(snapshot, "source_connections_refused", name)),
                    "events_per_second": self._rate(
                        lambda s, name=name: s.sources.get(name, (0, 0))[0]
                    ),
                    "bytes_per_second": self._rate(
                        lambda s, name=name: s.sources.get(name, (0, 0))[1]
                    ),
                    "health": state["status"],
                    "reason": state["reason"],
                }
            )
        return out

    def _sinks(self, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for slot in self.topology.sinks:
            name = slot.id
            state = snapshot["health"].get(f"sink.{name}", {"status": "ok", "reason": ""})
            failures = int(value(snapshot, "sink_failures", name))
            failed = failures - self._failures.get(name, 0)
            self._failures[name] = failures
            error = state["reason"] if state["status"] != "ok" else ""
            if failed > 0 and not error:
                error = f"{failed} tries failed, then it delivered"
            if error and (failed > 0 or state["status"] == "failing"):
                known = self._errors.get(name)
                if known is None or known["error"] != error:
                    self._errors[name] = {"error": error, "at": utc_timestamp()}
            lag = int(value(snapshot, "sink_lag_bytes", name))
            out.append(
                {
                    "id": name,
                    "kind": self.topology.config.sinks[name].kind,
                    "delivered": int(value(snapshot, "sink_events", name)),
                    "bytes": int(value(snapshot, "sink_bytes", name)),
                    "failures": failures,
                    "retries": int(value(snapshot, "sink_retries", name)),
                    "dead_letters": int(value(snapshot, "sink_dead_letters", name)),
                    "events_per_second": self._rate(lambda s, name=name: s.sinks.get(name, 0)),
                    "lag_bytes": lag,
                    "lag_seconds": self._lag_seconds(lag),
                    "health": state["status"],
                    "reason": state["reason"],
                    "last_error": self._errors.get(name),
                }
            )
        return out

    def _lag_seconds(self, lag: int) -> float | None:
        """How long ago the WAL accepted the oldest of the ``lag`` bytes a sink has not
        acknowledged: the first refresh by which the WAL had accepted more than the sink has
        (None: before the oldest refresh kept)."""
        if lag <= 0:
            return 0.0
        samples = self._samples
        acknowledged = samples[-1].wal_bytes - lag
        if samples[0].wal_bytes > acknowledged:
            return None
        for sample in samples:
            if sample.wal_bytes > acknowledged:
                return round(samples[-1].at - sample.at, 1)
        return 0.0  # (written since the last refresh)

    def _agents(self) -> dict[str, Any]:
        """The agents with problems, worst first, then those seen last, ``AGENT_ROWS`` at
        most; only those are looked at, however many agents there are."""
        verifier = self.topology.chain.verifier
        agents = verifier.agents
        troubled = verifier.troubled
        rows = []
        for name in islice(troubled.worst_first(), AGENT_ROWS):
            state = agents.get(name)
            if state is not None:
                rows.append(_row(name, state, problem=True))
        for name in reversed(self.topology.recent.agents):
            if len(rows) >= AGENT_ROWS:
                break
            state = agents.get(name)
            if state is not None and name not in troubled:
                rows.append(_row(name, state, problem=False))
        return {"total": len(agents), "problems": len(troubled), "shown": len(rows), "rows": rows}

    def _alerts(self) -> list[dict[str, Any]]:
        out = []
        for event in islice(reversed(self.topology.recent.alerts), ALERTS_SHOWN):
            assert event.record_json is not None  # (``Recent`` keeps only those with one)
            record = orjson.loads(event.record_json)
            shown: dict[str, Any] = {"received_at": event.received_at}
            shown.update({key: record[key] for key in ALERT_FIELDS if record.get(key) is not None})
            received, expected = record.get("received"), record.get("expected")
            if isinstance(received, dict) and received.get("sequence") is not None:
                shown["sequence"] = received["sequence"]
            if isinstance(expected, dict) and expected.get("sequence") is not None:
                shown["expected"] = expected["sequence"]
            out.append(shown)
        return out

    def _chart(self) -> dict[str, Any]:
        """Per-refresh rates over the history kept: received (all sources) and delivered (per
        sink), each point the rate since the refresh before it."""
        samples = list(self._samples)
        now = samples[-1].at if samples else 0.0
        seconds, received = [], []
        delivered: dict[str, list[float]] = {slot.id: [] for slot in self.topology.sinks}
        for before, after in pairwise(samples):
            elapsed = after.at - before.at
            if elapsed <= 0:
                continue
            seconds.append(round(after.at - now, 1))
            got = sum(e for e, _ in after.sources.values()) - sum(
                e for e, _ in before.sources.values()
            )
            received.append(round(max(0, got) / elapsed, 1))
            for name, points in delivered.items():
                done = after.sinks.get(name, 0) - before.sinks.get(name, 0)
                points.append(round(max(0, done) / elapsed, 1))
        return {"seconds": seconds, "received": received, "delivered": delivered}


def _row(name: str, state: AgentState, *, problem: bool) -> dict[str, Any]:
    return {"agent": name, "status": state.worst, "problem": problem, **state.status()}


def routes(board: Board) -> list[BaseRoute]:
    """The status routes over ``board`` (whose ``lifespan`` the application runs)."""
    page = resources.files("shipper.api").joinpath("status.html").read_bytes()

    async def status(request: Request) -> Response:
        """The summary now: the latest made, or one made for this request before the first,
        or when the latest was made before the daemon ran (its sources did not listen yet)."""
        stale = not board.made_running and board.topology.running
        encoded = orjson.dumps(board.refresh()) if stale or not board.encoded else board.encoded
        return Response(encoded, media_type="application/json")

    async def events(request: Request) -> Response:
        """The summary as server-sent events, each as soon as it is made (HEAD: the headers
        only, no stream)."""
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=headers)

        async def stream() -> AsyncIterator[bytes]:
            serial = 0
            if board.encoded:
                serial = board.serial
                yield b"event: status\ndata: " + board.encoded + b"\n\n"
            while True:
                serial, encoded = await board.next_after(serial)
                yield b"event: status\ndata: " + encoded + b"\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def index(request: Request) -> Response:
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store"},
        )

    return [
        Route("/", index, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/status/events", events, methods=["GET"]),
    ]
