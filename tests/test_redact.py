"""Redaction for forwarding sinks: what is removed or hashed, how the table is read, and that
the driver redacts what a sink sees but dead-letters the original."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.config import SINK_TYPES, parse_config
from shipper.config.values import Secret
from shipper.errors import ConfigError
from shipper.redact import Redaction
from shipper.sinks.base import BatchSettings
from shipper.sinks.driver import SinkDriver
from tests.probe_sink import ProbeSinkConfig
from tests.sinks.contract import entries, numbers, open_wal
from tests.sinks.memory import MemoryDestination, MemorySink

KEY = "k" * 32


def keyed(value: Any, key: str = KEY) -> str:
    """The expected hash of ``value``, computed independently: HMAC-SHA256 over its JSON text
    with sorted keys and no spaces."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "hmac-sha256:" + hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def redaction(remove: list[str], hashed: list[str], key: str = KEY) -> Redaction:
    return Redaction(
        tuple(tuple(p.split(".")) for p in remove),
        tuple(tuple(p.split(".")) for p in hashed),
        Secret(key),
    )


ENVELOPE = {
    "v": 1,
    "id": "1-0",
    "source": {"id": "agents", "peer": "10.0.0.7:5000"},
    "agent": "agent-1",
    "record": {
        "userId": "alice@example.com",
        "details": {"ssn": "123", "rows": 7},
        "messages": [{"content": "secret one", "role": "user"}, {"role": "tool"}],
        "hash": "sha256:abc",
    },
}


def test_named_fields_are_removed_or_replaced_by_their_keyed_hash() -> None:
    """Removed paths are gone, hashed ones hold the HMAC of their JSON text, lists are walked
    item by item, paths that lead nowhere change nothing, and the rest (the record's hash)
    stays as it was."""
    rules = redaction(
        ["source.peer", "record.details.ssn", "record.nothing.here"],
        ["record.userId", "record.messages.content", "record.details"],
    )
    out = orjson.loads(rules.apply(orjson.dumps(ENVELOPE)))
    assert out == {
        "v": 1,
        "id": "1-0",
        "source": {"id": "agents"},
        "agent": "agent-1",
        "record": {
            "userId": keyed("alice@example.com"),
            "details": keyed({"rows": 7}),
            "messages": [{"content": keyed("secret one"), "role": "user"}, {"role": "tool"}],
            "hash": "sha256:abc",
        },
    }


def test_equal_values_correlate_and_another_key_gives_other_hashes() -> None:
    """Two events with the same user give the same hash under one key, and a different one
    under another key."""
    first = orjson.loads(redaction([], ["record.userId"]).apply(orjson.dumps(ENVELOPE)))
    again = orjson.loads(redaction([], ["record.userId"]).apply(orjson.dumps(ENVELOPE)))
    other = orjson.loads(redaction([], ["record.userId"], "o" * 32).apply(orjson.dumps(ENVELOPE)))
    assert first["record"]["userId"] == again["record"]["userId"]
    assert first["record"]["userId"] != other["record"]["userId"]


def sink_problems(sink: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    raw = {
        "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
        "sinks": {"out": sink},
    }
    with SINK_TYPES.registered(ProbeSinkConfig), pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return [str(problem) for problem in info.value.problems]


def test_a_forwarding_sink_takes_a_redact_table() -> None:
    """A forwarding sink's ``redact`` table is read into its config, the key as a secret."""
    raw = {
        "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
        "sinks": {
            "out": {
                "type": "probe",
                "redact": {"remove": ["source.peer"], "hash": ["agent"], "key": "${KEY}"},
            }
        },
    }
    with SINK_TYPES.registered(ProbeSinkConfig):
        config = parse_config(raw, env={"KEY": KEY})
    assert config.sinks["out"].redact == redaction(["source.peer"], ["agent"])


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        (
            {"type": "file", "path": "archive", "redact": {"remove": ["agent"]}},
            "sinks.out.redact: a file sink archives events as received (their hash chains "
            "must verify): only forwarding sinks take redact",
        ),
        (
            {"type": "probe", "redact": {"hash": ["agent"]}},
            "sinks.out.redact.key: required key is missing (hash needs a key)",
        ),
        (
            {"type": "probe", "redact": {"hash": ["agent"], "key": "short"}},
            "sinks.out.redact.key: expected a key of at least 16 bytes",
        ),
        (
            {"type": "probe", "redact": {"remove": ["id"]}},
            'sinks.out.redact.remove[0]: "id" cannot be redacted (receivers match events by it)',
        ),
        (
            {"type": "probe", "redact": {"remove": ["record..x"]}},
            'sinks.out.redact.remove[0]: expected a dotted field path, got "record..x"',
        ),
        (
            {"type": "probe", "redact": {}},
            "sinks.out.redact: expected remove or hash (a list of field paths)",
        ),
        (
            {"type": "probe", "redact": {"remove": ["agent"], "hahs": ["x"]}},
            "sinks.out.redact.hahs: unknown key",
        ),
    ],
)
def test_a_wrong_redact_table_is_named_with_its_key(sink: dict[str, Any], expected: str) -> None:
    """Each wrong ``redact`` table is refused at its key path, saying what was expected; an
    archive sink refuses ``redact`` altogether."""
    assert any(problem.startswith(expected) for problem in sink_problems(sink)), sink_problems(sink)


async def test_the_sink_sees_redacted_events_and_a_dead_letter_keeps_the_originals(
    tmp_path: Path,
) -> None:
    """The driver hands the sink redacted envelopes, while a batch the destination refuses is
    kept in the dead-letter area as the WAL gave it, to be redacted again on a replay."""
    destination = MemoryDestination()
    destination.poison = b"poison"
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 3, user="alice", tag="fine"))
    await wal.append(entries(4, 2, user="bob", tag="poison"))
    await wal.close()
    rules = redaction(["record.pad"], ["record.user"])
    sink = MemorySink("contract", destination, batching=BatchSettings(max_events=3, max_age=0.01))
    driver = SinkDriver(sink, tmp_path, redact=rules)
    await driver.run(wal.readers["contract"], wal.epoch)
    assert numbers(destination.held) == [1, 2, 3]
    for envelope in destination.held:
        record = orjson.loads(envelope)["record"]
        assert record == {"n": record["n"], "user": keyed("alice"), "tag": "fine"}
    (letters,) = (tmp_path / "dead_letter" / "contract").iterdir()
    kept = [orjson.loads(line)["envelope"]["record"] for line in letters.read_bytes().splitlines()]
    assert [(r["n"], r["user"], len(r["pad"])) for r in kept] == [(4, "bob", 200), (5, "bob", 200)]
