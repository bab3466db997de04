"""A source does the stateless half of the chain check and encodes each envelope: what it hands
on is small and plain, and the chain stage and writer make of it the very WAL entries they made
when they did that work themselves."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import orjson
import trio

from shipper.chain import SAFECLAW_JSONL, SEED, Profile
from shipper.chain_stage import ChainStage
from shipper.config import Address, ChainConfig
from shipper.events import Event, entry
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig
from shipper.sources.syslog import SyslogSource, SyslogSourceConfig
from tests.chains import AGENT, chain, chain_lines, safeclaw_lines
from tests.sources.handed import holds_only_plain_values
from tests.sources.test_identity import SAN, SUBJECT, TABLE, drain, feed

ALERT_TIME = re.compile(rb'"received_at":"[^"]*"')
SYSLOG_HEADER = b"<14>1 2026-11-23T10:45:23Z agent-host-7 app - - - "


def unsealed(event: Event, profile: Profile) -> Event:
    """``event`` as sources made it before they sealed events: no facts, its syslog and
    identity_mismatch objects (back from its sealed envelope), the agent its record names (none
    for a syslog message's text; an alert's own)."""
    if event.sealed is None:
        return copy.copy(event)
    envelope = orjson.loads(event.encode_without_id())
    record = envelope.get("record")
    text = isinstance(record, dict) and "facility" in record and "msg" in record
    agent = profile.agent_of(record) if isinstance(record, dict) and not text else None
    if event.alert:
        agent = event.agent
    return Event(
        event.received_at,
        event.source,
        agent,
        event.record_json,
        event.malformed,
        syslog=envelope.get("syslog"),
        identity_mismatch=envelope.get("identity_mismatch"),
        alert=event.alert,
    )


def wal_entries(events: list[Event], profile: Profile, tmp_path: Path) -> list[bytes]:
    """The WAL entries a fresh chain stage and the writer make of ``events``, the time each
    alert was raised (the chain stage's clock) left out."""
    stage = ChainStage(ChainConfig(profile=profile.name, profile_fields=profile), tmp_path)
    return [
        ALERT_TIME.sub(b'"received_at":"-"', line) if line.startswith(b"\0") else line
        for line in map(entry, stage.process(events, 0.0))
    ]


async def test_json_events_verify_and_encode_as_they_did_before_sealing(tmp_path: Path) -> None:
    """A chain with a gap, a resend and an edited record, a record naming no agent, a malformed
    line and an identity mismatch, through a json_tls source with an identity table: the events
    it hands on hold only plain values (and survive pickling), and give the same WAL entries,
    verdicts and alerts as the same events unsealed."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    records = chain(6, "customer-service-agent-03")
    edited = {**records[5], "effect": "edited"}
    lines = [orjson.dumps(r) for r in [*records[:3], *records[4:5], records[1], edited]]
    lines += [b'{"action":"no agent"}', b"{not json", orjson.dumps(chain(1, "billing-09")[0])]
    await feed(source, b"\n".join(lines) + b"\n", SUBJECT, SAN)
    events = [event for batch in drain(receive) for event in batch]
    assert all(event.sealed is not None for event in events)
    assert all(holds_only_plain_values(event) for event in events)
    events = pickle.loads(pickle.dumps(events))
    before = [unsealed(event, SEED) for event in events]
    expected = wal_entries(before, SEED, tmp_path / "a")
    assert wal_entries(events, SEED, tmp_path / "b") == expected
    statuses = [orjson.loads(e.split(b"\0", 1)[1]).get("chain", {}).get("status") for e in expected]
    assert statuses == [
        *("genesis", "ok", "ok", "gap"),
        None,  # the gap's alert
        "bad_hash",
        None,  # its alert
        *(None, None, None, None),  # no agent, malformed, mismatch and its alert
    ]  # (the resend of record 2 is dropped as a duplicate)


async def test_line_hashed_syslog_events_take_the_senders_identity_in_the_source(
    tmp_path: Path,
) -> None:
    """With line hashing, a syslog message's record that names no agent gets the sender's
    identity (the certificate's first SAN) as its agent in the source, and its facts (the line's
    digest): the entries are those of the same events unsealed, ``genesis`` then ``ok``; a text
    message is verified too, under the same agent."""
    config = SyslogSourceConfig(id="syslog", address=Address("127.0.0.1", 0), mode="tcp")
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = SyslogSource(config, send, SAFECLAW_JSONL)
    messages = [SYSLOG_HEADER + line for line in safeclaw_lines(3)] + [SYSLOG_HEADER + b"text"]
    await feed(source, b"".join(m + b"\n" for m in messages), SUBJECT, SAN)
    events = [event for batch in drain(receive) for event in batch]
    assert [event.agent for event in events] == [SAN[0]] * 4
    assert events[0].facts is not None
    assert events[0].facts.hash == SAFECLAW_JSONL.digest(safeclaw_lines(3)[0])
    assert all(holds_only_plain_values(event) for event in events)
    before = [unsealed(event, SAFECLAW_JSONL) for event in events]
    expected = wal_entries(before, SAFECLAW_JSONL, tmp_path / "a")
    assert wal_entries(events, SAFECLAW_JSONL, tmp_path / "b") == expected
    chains = [orjson.loads(e.split(b"\0", 1)[1])["chain"]["status"] for e in expected]
    assert chains == ["genesis", "ok", "ok", "unchained"]


async def test_a_syslog_texts_agent_is_read_after_the_identity_check(tmp_path: Path) -> None:
    """With a profile whose agent field is a syslog field, a text message's record names its
    agent only for the chain check, not as a claim for the identity check (as before sources
    sealed events): no mismatch, and the event is verified (unchained: no sequence)."""
    config = SyslogSourceConfig(
        id="syslog",
        address=Address("127.0.0.1", 0),
        mode="tcp",
        identity={"agent-host-7": ("agent-host-7",)},
    )
    send, receive = trio.open_memory_channel[list[Event]](100)
    profile = Profile("by-app", agent=("app_name",))
    source = SyslogSource(config, send, profile)
    await feed(source, SYSLOG_HEADER + b"plain text\n", SUBJECT, SAN)
    (event,) = [event for batch in drain(receive) for event in batch]
    assert event.agent == "app"
    assert event.facts is not None
    assert event.facts.unchained == "no usable 'sequence'"
    stage = ChainStage(ChainConfig(profile=profile.name, profile_fields=profile), tmp_path)
    (envelope,) = stage.process([event], 0.0)
    parsed: dict[str, Any] = orjson.loads(envelope.encode("1-0"))
    assert "identity_mismatch" not in parsed
    assert parsed["chain"] == {"status": "unchained", "detail": "no usable 'sequence'"}


async def test_the_chain_stage_never_consumes_what_a_source_sealed(tmp_path: Path) -> None:
    """Verifying sealed events again from an earlier state (the writer's way back when the WAL
    refused a batch) gives the same entries: neither their facts nor their bytes are used up."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0))
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, b"".join(chain_lines(4, AGENT)), None, [])
    events = [event for batch in drain(receive) for event in batch]
    stage = ChainStage(ChainConfig(), tmp_path)
    first = [entry(event) for event in stage.process(events[:2], 0.0)]
    state = stage.verifier.snapshot()
    rest = [entry(event) for event in stage.process(events[2:], 0.0)]
    stage.verifier = stage._new_verifier(orjson.loads(orjson.dumps(state)))
    assert [entry(event) for event in stage.process(events[2:], 0.0)] == rest
    assert len(first + rest) == 4
