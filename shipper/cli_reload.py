"""``shipper reload``: ask the running daemon, through its API (``POST /api/reload``,
``shipper.api.reload``), to read its config file again, as SIGHUP (``systemctl reload shipper``)
does.

It prints what the reload did (sources and sinks started, stopped, restarted, those that could
not be started, and keys that take effect at the next start only), or why the new config was
refused, as ``shipper validate`` words it (the daemon validates the file, with its own
environment: only the ``[api]`` table is read here, to find the API). Exit codes: 0 when the
reload was applied; 1 when it was refused or could not be asked (the API cannot be reached, or
refused the token); 78 when the ``[api]`` table cannot be read.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from shipper.api.client import (
    TIMEOUT,
    ApiError,
    add_api_arguments,
    check,
    failed,
    required,
    unanswered,
)
from shipper.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``reload`` subcommand's arguments."""
    reload = commands.add_parser(
        "reload", help="make the running daemon read its config again (as SIGHUP does)"
    )
    reload.add_argument("-c", "--config", default="config/shipper.toml", help="config file (TOML)")
    add_api_arguments(reload)
    reload.add_argument("--json", action="store_true", help="print the result as JSON")


def describe(result: dict[str, Any]) -> list[str]:
    """The lines that tell a reload's ``result`` (``ReloadResult.as_dict``) to a person."""
    if not result.get("ok"):
        return ["reload refused; the daemon runs on with its config as it was:"] + [
            f"  {problem}" for problem in result.get("problems", [])
        ]
    lines = []
    for what in ("started", "stopped", "restarted"):
        for kind in ("sources", "sinks"):
            ids = result.get(what, {}).get(kind, [])
            if ids:
                lines.append(f"{what} {kind}: {', '.join(ids)}")
    for component, why in result.get("failed", {}).items():
        lines.append(f"could not start {component}: {why}")
    if result.get("needs_restart"):
        keys = ", ".join(result["needs_restart"])
        lines.append(f"changed, but take effect at the next start only: {keys}")
    return ["reloaded" + ("" if lines else ": nothing changed"), *lines]


def command(args: argparse.Namespace) -> int:
    """Run ``shipper reload`` with its parsed ``args``."""
    import httpx2  # (here: the daemon imports this module for its parser only)

    try:
        api = required(args.api, args.config, args.api_ca)
        with api.blocking(httpx2.Timeout(TIMEOUT, read=None)) as client:  # stops take their time
            try:
                response = client.post("/api/reload")
            except httpx2.HTTPError as exc:
                raise unanswered(exc, api) from exc
        if response.status_code not in (200, 422, 503):  # those three carry a result
            check(response, api)  # says whether a token was sent
    except (ConfigError, ApiError) as exc:
        return failed("reload", args.config, exc)
    result = response.json()
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(describe(result)))
    return 0 if response.status_code == 200 else 1
