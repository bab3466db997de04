"""``shipper tap``: print the daemon's live tap (``/api/tap``, ``shipper.api.tap``).

One line per event: a short human line (time, source, agent, ``#sequence``, chain status, the
record's action and outcome), or with ``--json`` the envelope as the API sent it. Missed events
(the client fell behind and its buffer in the daemon overflowed) are told on stderr. Exit codes:
0 on Ctrl-C; 1 when the API cannot be reached, refuses the request, or ends the stream (the
daemon stopped); 78 when the config, read for ``[api] address``, is invalid.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from shipper.api.client import ApiError, add_api_arguments, check, failed, required, unanswered
from shipper.chain import STATUSES
from shipper.errors import ConfigError

#: How long connecting (and each request's start) may take before tap gives up.
CONNECT_SECONDS = 10.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``tap`` subcommand's arguments."""
    tap = commands.add_parser("tap", help="live view of the events entering the WAL")
    tap.add_argument("-c", "--config", default="config/shipper.toml", help="config file (TOML)")
    add_api_arguments(tap)
    tap.add_argument("--agent", action="append", help="only this agent (repeatable)")
    tap.add_argument("--source", action="append", help="only this source id (repeatable)")
    tap.add_argument(
        "--status", action="append", choices=STATUSES, help="only this chain status (repeatable)"
    )
    tap.add_argument(
        "--alerts", action="store_true", help="only the events shipper raises (alerts, seals)"
    )
    tap.add_argument("--json", action="store_true", help="print each envelope as JSON")


def human(envelope: dict[str, Any]) -> str:
    """The short line for one envelope: time, source, agent, #sequence, status, action, outcome."""
    record = envelope.get("record")
    chain = envelope.get("chain") or {}
    parts = [
        str(envelope.get("received_at", "?")),
        str((envelope.get("source") or {}).get("id", "?")),
        str(envelope.get("agent") or "-"),
        f"#{chain['sequence']}" if "sequence" in chain else "#-",
        str(chain.get("status", "-")),
    ]
    if isinstance(record, dict):
        action = record.get("action")
        outcome = next(
            (record[key] for key in ("outcome", "effect", "result", "status") if key in record),
            None,
        )
        parts.append(str(action) if action is not None else "-")
        if outcome is not None:
            parts.append(outcome if isinstance(outcome, str) else orjson.dumps(outcome).decode())
    elif "malformed" in envelope:
        parts.append(f"malformed: {envelope['malformed'].get('reason', '?')}")
    return " ".join(parts)


def follow(lines: Iterable[str], out: TextIO, err: TextIO, *, as_json: bool) -> None:
    """Print the events of a server-sent-events stream (its ``lines``) until it ends: each
    envelope to ``out``, each missed notice to ``err``."""
    kind, data = "message", []
    for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            continue
        if data:
            text = "\n".join(data)
            if kind == "missed":
                missed = orjson.loads(text).get("missed")
                print(f"shipper tap: missed {missed} events (this client fell behind)", file=err)
            elif kind == "message":
                print(text if as_json else human(orjson.loads(text)), file=out, flush=True)
        kind, data = "message", []


def command(args: argparse.Namespace) -> int:
    """Run ``shipper tap`` with its parsed ``args``."""
    import httpx2  # (here: the daemon imports this module for its parser only)

    try:
        api = required(args.api, args.config, args.api_ca)
    except (ConfigError, ApiError) as exc:
        return failed("tap", args.config, exc)
    base = api.url
    params: list[tuple[str, str | int | float | bool | None]] = [
        *(("agent", agent) for agent in args.agent or ()),
        *(("source", source) for source in args.source or ()),
        *(("status", status) for status in args.status or ()),
    ]
    if args.alerts:
        params.append(("alerts", "true"))
    url = f"{base}/api/tap"
    timeout = httpx2.Timeout(CONNECT_SECONDS, read=None)  # a quiet stream waits for events
    connected = False
    try:
        with (
            api.blocking(timeout) as client,
            client.stream("GET", "/api/tap", params=params) as response,
        ):
            if response.status_code == 401:
                check(response, api)  # says whether a token was sent
            if response.status_code != 200:
                detail = response.read().decode(errors="replace").strip()
                print(
                    f"shipper tap: {url} answered {response.status_code}: {detail}",
                    file=sys.stderr,
                )
                return 1
            lines = response.iter_lines()
            for line in lines:  # the opening comment: registered from here on
                if not line:
                    break
            connected = True
            print(f"shipper tap: tapping {base} (Ctrl-C stops)", file=sys.stderr, flush=True)
            follow(lines, sys.stdout, sys.stderr, as_json=args.json)
    except ApiError as exc:  # (an unusable CA file, a refused token)
        print(f"shipper tap: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader of the output is gone (``| head``): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except httpx2.TransportError as exc:
        cause = f"{type(exc).__name__}: {exc}"
        if connected:
            print(f"shipper tap: the connection to {base} broke ({cause})", file=sys.stderr)
        else:
            print(f"shipper tap: {unanswered(exc, api)}", file=sys.stderr)
        return 1
    print("shipper tap: the stream ended (the daemon stopped)", file=sys.stderr)
    return 1
