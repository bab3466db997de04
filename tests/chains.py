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


def chain(count: int, agent: str = AGENT, first: int = 1, prev: str = "") -> list[dict[str, Any]]:
    """``count`` correctly chained seed records of ``agent``, sequences from ``first``."""
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
        record["hash"] = prev = seed_hash(record)
        records.append(record)
    return records


def chain_lines(count: int, agent: str = AGENT, first: int = 1, prev: str = "") -> list[bytes]:
    """``chain(...)`` as JSON lines (LF-terminated), ready to send to a json_tls source."""
    return [json.dumps(record).encode() + b"\n" for record in chain(count, agent, first, prev)]
