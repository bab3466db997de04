"""Chained audit records for tests, built independently of shipper's own hashing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

AGENT = "customer-service-agent-03"


def seed_hash(record: dict[str, Any]) -> str:
    """The seed profile's hash, computed independently of shipper (ASCII records, integers only,
    for which sorted compact json.dumps is the RFC 8785 form)."""
    content = {key: value for key, value in record.items() if key != "hash"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def chain(
    count: int, agent: str = AGENT, first: int = 1, prev: str = "", padding: int = 0
) -> list[dict[str, Any]]:
    """``count`` correctly chained seed records of ``agent``, sequences from ``first``; with
    ``padding``, each carries that many more bytes of notes."""
    records = []
    for sequence in range(first, first + count):
        record: dict[str, Any] = {
            "sequence": sequence,
            "action": "database.query",
            "effect": "allow" if sequence % 3 else "deny",
            "agentId": agent,
            "requestDetails": {"rows": sequence * 7, "table": f"t{sequence % 5}"},
            "prevHash": prev,
        }
        if padding:
            record["notes"] = "n" * padding
        record["hash"] = prev = seed_hash(record)
        records.append(record)
    return records


def chain_lines(
    count: int, agent: str = AGENT, first: int = 1, prev: str = "", padding: int = 0
) -> list[bytes]:
    """``chain(...)`` as JSON lines (LF-terminated), ready to send to a json_tls source."""
    records = chain(count, agent, first, prev, padding)
    return [json.dumps(record).encode() + b"\n" for record in records]


def safeclaw_lines(count: int, *, compact: bool = True) -> list[bytes]:
    """Lines (without LF) as SafeClaw writes its audit file: prevHash = hex sha256 of the previous
    line, GENESIS first. ``compact=False`` puts spaces after separators: the hash is over the
    exact bytes either way."""
    separators = (",", ":") if compact else (", ", ": ")
    lines = []
    prev = "GENESIS"
    for n in range(count):
        entry = {
            "timestamp": f"2026-11-23T10:00:{n % 60:02d}.000Z",
            "toolName": "exec",
            "actionType": "shell.exec",
            "resource": f"/srv/job/{n}",
            "outcome": "allow" if n % 4 else "deny",
            "source": "gateway",
            "prevHash": prev,
        }
        line = json.dumps(entry, separators=separators).encode()
        prev = hashlib.sha256(line).hexdigest()
        lines.append(line)
    return lines
