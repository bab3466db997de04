"""``shipper top``: the running daemon's status in the terminal, a table refreshed every second
(rich's ``Live``), from the API's ``/api/status`` (``shipper.api.status``): sources and their
rates, sinks with their lag and last error, the chain's totals, the agents with problems and
the last alerts. ``--once`` prints one frame and exits (for scripts).

Exit codes: 0 (stopped with Ctrl-C, or ``--once`` printed), 1 the API cannot be reached (or
answered with an error), 78 (EX_CONFIG) the config file read for the API's address is invalid.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Final

import httpx2
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shipper.api.client import Api, ApiError, check, failed, required, unanswered
from shipper.errors import ConfigError

#: Seconds between two refreshes of the live table.
REFRESH_SECONDS: Final = 1.0
#: Seconds to wait for the API's answer.
TIMEOUT_SECONDS: Final = 5.0
#: Alerts shown at most.
ALERTS_SHOWN: Final = 5
_STYLE: Final = {"ok": "green", "degraded": "yellow", "failing": "bold red"}
#: Columns of text (the others hold numbers, right-aligned).
_TEXT_COLUMNS: Final = frozenset({"source", "sink", "kind", "health"})


def fetch_status(api: Api) -> dict[str, Any]:
    """The daemon's status summary from ``api`` (``ApiError`` saying why not)."""
    try:
        with api.blocking(TIMEOUT_SECONDS) as client:
            response = client.get("/api/status")
    except httpx2.HTTPError as exc:
        raise unanswered(exc, api) from exc
    check(response, api)
    if response.status_code != 200:
        raise ApiError(
            f"the API at {api.url} answered {response.status_code} for /api/status: "
            f"{response.text[:200]}"
        )
    summary: dict[str, Any] = response.json()
    return summary


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "over a minute"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _health(status: str, reason: str = "") -> Text:
    return Text(status + (f": {reason}" if reason else ""), style=_STYLE.get(status, ""))


def render(summary: dict[str, Any], url: str) -> RenderableType:
    """One frame: what ``summary`` (``/api/status``) says, as rich tables."""
    wal = summary["wal"]
    chain = summary["chain"]
    head = Text.assemble(
        ("shipper ", "bold"),
        f"{summary['version']} at {url}, up {_age(summary['uptime_seconds'])}, health ",
        _health(summary["health"]["status"]),
        f"; WAL {_bytes(wal['bytes'])} of {_bytes(wal['max_bytes'])}",
    )

    sources = Table(title="Sources", title_justify="left", expand=False)
    for column in ("source", "kind", "events", "events/s", "bytes/s", "connections", "health"):
        sources.add_column(column, justify="left" if column in _TEXT_COLUMNS else "right")
    for source in summary["sources"]:
        sources.add_row(
            source["id"],
            source["kind"],
            _count(source["events"]),
            _count(source["events_per_second"]),
            _bytes(source["bytes_per_second"]) + "/s",
            _count(source["connections_accepted"]),
            _health(source["health"], source["reason"]),
        )

    sinks = Table(title="Sinks", title_justify="left")
    for column in ("sink", "kind", "delivered", "events/s", "lag", "lag age", "health"):
        sinks.add_column(column, justify="left" if column in _TEXT_COLUMNS else "right")
    sinks.add_column("last error", overflow="fold")
    for sink in summary["sinks"]:
        error = sink["last_error"]
        sinks.add_row(
            sink["id"],
            sink["kind"],
            _count(sink["delivered"]),
            _count(sink["events_per_second"]),
            _bytes(sink["lag_bytes"]),
            _age(sink["lag_seconds"]),
            _health(sink["health"]),
            f"{error['at']}: {error['error']}" if error else "",
        )

    totals = ", ".join(f"{status} {_count(n)}" for status, n in chain["totals"].items())
    chain_line = Text(
        f"Chain ({chain['profile']}): {_count(chain['agents'])} agents, "
        f"{_count(chain['problems'])} with problems; {totals or 'nothing verified yet'}"
    )

    troubled = [row for row in summary["agents"]["rows"] if row["problem"]]
    agents = Table(title="Agents with problems", title_justify="left")
    for column in ("agent", "chain", "last sequence", "open gaps", "last alert"):
        agents.add_column(column, overflow="fold")
    for row in troubled:
        alert = row["last_alert"] or {}
        agents.add_row(
            row["agent"],
            Text(row["status"], style="bold red"),
            str(row["last_sequence"]),
            ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in row["open_gaps"]),
            " ".join(str(v) for v in alert.values()),
        )
    parts: list[RenderableType] = [head, sources, sinks, chain_line]
    parts.append(agents if troubled else Text("No agent has a problem.", style="green"))
    if summary["alerts"]:
        alerts = Table(title="Last alerts", title_justify="left")
        for column in ("received", "alert", "agent", "status", "severity"):
            alerts.add_column(column, overflow="fold")
        for alert in summary["alerts"][:ALERTS_SHOWN]:
            alerts.add_row(
                alert["received_at"],
                alert["action"].removeprefix("shipper."),
                alert.get("agent") or alert.get("sink") or "",
                alert.get("status", ""),
                alert.get("severity", ""),
            )
        parts.append(alerts)
    return Group(*parts)


def cmd_top(address: str | None, config_path: str, once: bool, ca: str | None = None) -> int:
    """``shipper top``: see the module docstring."""
    try:
        api = required(address, config_path, ca)
        summary = fetch_status(api)
    except (ConfigError, ApiError) as exc:
        return failed("top", config_path, exc)
    url = api.url
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if once:
        console.print(render(summary, url))
        return 0
    try:
        with Live(render(summary, url), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(REFRESH_SECONDS)
                live.update(render(fetch_status(api), url), refresh=True)
    except ApiError as exc:
        print(f"shipper top: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
