"""The DuckDB query of docs/s3-archive.md, read from the page itself and run as written against an
archive the ``s3`` sink wrote to a real S3 server, fetched as the page says (data objects only,
keeping their keys)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from tests.chains import seed_hash
from tests.conftest import REPO
from tests.s3archive import Stored, data_objects, new_bucket, read_bucket, sink_table
from tests.s3server import S3Server
from tests.sinks.test_s3 import daemon_config, events_of, send_and_stop

DOC = REPO / "docs" / "s3-archive.md"
#: The agent the documented query asks about.
AGENT = "billing-agent-07"
OTHER = "support-agent-02"
PREFIX = "audit/"


def documented_query() -> str:
    """The SQL between the page's ``duckdb-query`` markers, without its code fence."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(
        r"<!-- duckdb-query:start -->\s*```sql\n(.*?)```\s*<!-- duckdb-query:end -->", text, re.S
    )
    assert match is not None, f"{DOC} has no duckdb-query block"
    return match.group(1)


def chain_lines(agent: str, actions: list[tuple[str, str]], leave_out: int = 0) -> list[bytes]:
    """Seed-chained records of ``agent``, one per (action, effect), sequences from 1, each with
    a target naming its agent and sequence; the record of sequence ``leave_out`` is not sent."""
    lines = []
    prev = ""
    for sequence, (action, effect) in enumerate(actions, 1):
        record: dict[str, Any] = {
            "sequence": sequence,
            "agentId": agent,
            "action": action,
            "target": f"/{agent}/{sequence}",
            "effect": effect,
            "reason": f"policy {effect}",
            "prevHash": prev,
        }
        record["hash"] = prev = seed_hash(record)
        if sequence != leave_out:
            lines.append(orjson.dumps(record) + b"\n")
    return lines


def fetch(objects: dict[str, Stored], into: Path) -> None:
    """What ``aws s3 sync s3://bucket/<prefix> ./archive --exclude 'manifests/*'`` does: each
    data object, as stored, at its key below the prefix."""
    for key, stored in objects.items():
        path = into / key.removeprefix(PREFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored.data)


async def test_the_documented_duckdb_query_returns_the_denied_actions_of_the_agent(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run against a real archive of two agents' allowed and denied actions (one with a chain
    gap, so a chain alert about it is archived too), and a malformed line, the page's query
    returns exactly the denied actions of the agent it names, in its order, with their chain
    verdicts."""
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed (the test extra)")
    agent_lines = chain_lines(
        AGENT,
        [
            ("invoice.read", "allow"),
            ("customer.export", "deny"),
            ("refund.create", "deny"),
            ("invoice.read", "allow"),
            ("payout.approve", "deny"),
            ("invoice.send", "allow"),
        ],
        leave_out=4,  # record 5 arrives as a gap, and a chain alert about AGENT follows it
    )
    other_lines = chain_lines(
        OTHER, [("ticket.read", "allow"), ("customer.export", "deny"), ("refund.create", "deny")]
    )
    lines = [*agent_lines, b"not json\n", *other_lines]
    records = len(agent_lines) + len(other_lines)
    bucket = await new_bucket(s3_server)
    raw = daemon_config(tmp_path, {"s3": sink_table(s3_server, bucket, prefix=PREFIX)})

    async def all_archived() -> None:
        while True:
            objects = data_objects(await read_bucket(s3_server, bucket), PREFIX)
            if sum(1 for e in events_of(objects) if "effect" in e.get("record", {})) == records:
                return
            await trio.sleep(0.1)

    await send_and_stop(raw, lines, all_archived)
    fetch(data_objects(await read_bucket(s3_server, bucket), PREFIX), tmp_path / "archive")
    monkeypatch.chdir(tmp_path)  # the page's query reads ./archive
    result = duckdb.connect().execute(documented_query())
    names = [column[0] for column in result.description]
    rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]

    assert [(row["action"], row["target"], row["chain_status"]) for row in rows] == [
        ("customer.export", f"/{AGENT}/2", "ok"),
        ("refund.create", f"/{AGENT}/3", "ok"),
        ("payout.approve", f"/{AGENT}/5", "gap"),
    ]
    assert all(row["reason"] == "policy deny" for row in rows)
