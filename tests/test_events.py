"""Tests of the event envelope: key order, the verbatim record, malformed input, timestamps."""

from __future__ import annotations

import base64
import copy
import pickle
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chain import SEED
from shipper.events import (
    ENVELOPE_VERSION,
    MALFORMED_KEEP_BYTES,
    Event,
    HeadReader,
    Malformed,
    alert_event,
    entry,
    envelope_start,
    utc_timestamp,
)
from tests.envelopes import chains, envelope_lists, objects, records, sources, texts

SOURCE: dict[str, Any] = {
    "id": "agents_tls",
    "kind": "json_tls",
    "peer": "10.0.0.7:51234",
    "tls_subject": "CN=host-7",
    "tls_san": ["host-7"],
}
RECEIVED = "2026-11-22T10:45:23.102345Z"
SYSLOG: dict[str, Any] = {"facility": "auth", "severity": "info", "hostname": "host-7", "sd": {}}
CHAIN: dict[str, Any] = {"status": "ok", "sequence": 4821, "expected": 4821}


def decode(line: bytes) -> dict[str, Any]:
    """The envelope of an encoded event, after checking it is exactly one line of a JSON object."""
    assert b"\n" not in line
    assert b"\r" not in line
    value = orjson.loads(line)
    assert isinstance(value, dict)
    return value


def test_full_envelope_keys_are_in_the_documented_order() -> None:
    """With every optional part present, keys come in the order v,id,received_at,source,...,record."""
    event = Event(RECEIVED, SOURCE, "agent-3", b'{"x":1}', syslog=SYSLOG, chain=CHAIN)
    envelope = decode(event.encode("00000001-42"))
    assert list(envelope) == [
        "v",
        "id",
        "received_at",
        "source",
        "syslog",
        "agent",
        "chain",
        "record",
    ]
    assert envelope == {
        "v": ENVELOPE_VERSION,
        "id": "00000001-42",
        "received_at": RECEIVED,
        "source": SOURCE,
        "syslog": SYSLOG,
        "agent": "agent-3",
        "chain": CHAIN,
        "record": {"x": 1},
    }
    assert ENVELOPE_VERSION == 1


@pytest.mark.parametrize(
    ("kwargs", "keys"),
    [
        pytest.param({}, [], id="none"),
        pytest.param({"agent": "a"}, ["agent"], id="agent"),
        pytest.param({"chain": CHAIN}, ["chain"], id="chain"),
        pytest.param({"syslog": SYSLOG, "chain": CHAIN}, ["syslog", "chain"], id="syslog-chain"),
        pytest.param({"syslog": SYSLOG, "agent": "a"}, ["syslog", "agent"], id="syslog-agent"),
    ],
)
def test_optional_parts_are_left_out_when_absent(kwargs: dict[str, Any], keys: list[str]) -> None:
    """syslog, agent and chain appear only when set, still in their place in the order."""
    event = Event(RECEIVED, SOURCE, record_json=b"{}", **kwargs)
    envelope = decode(event.encode("1-0"))
    assert list(envelope) == ["v", "id", "received_at", "source", *keys, "record"]


def test_encode_is_one_line_without_a_newline() -> None:
    """The encoded envelope is a single line with no trailing newline."""
    line = Event(RECEIVED, SOURCE, record_json=b'{"msg":"a\\nb"}').encode("1-0")
    assert line.startswith(b'{"v":1,"id":"1-0",')
    assert not line.endswith(b"\n")
    assert decode(line)["record"] == {"msg": "a\nb"}


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b'{"b":1, "a":2}', id="key-order-and-space"),
        pytest.param(b'{ "a" : 1.50 , "b" : 1e2 }', id="number-spelling"),
        pytest.param(b'{"a":"\\u00e9\\/"}', id="escapes"),
        pytest.param('{"a":"caf\u00e9"}'.encode(), id="utf8"),
        pytest.param(b'{"a":1,"a":2}', id="duplicate-key"),
        pytest.param(b'{"n":123456789012345678901234567890}', id="big-number"),
    ],
)
def test_record_bytes_are_embedded_verbatim(record: bytes) -> None:
    """The record is written as the exact bytes received, not re-serialized."""
    line = Event(RECEIVED, SOURCE, "agent-3", record).encode("7-9")
    assert line.endswith(b',"record":' + record + b"}")
    assert line.count(record) == 1
    decode(line)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        max_size=6,
    )
)
def test_any_record_round_trips(record: dict[str, Any]) -> None:
    """Whatever object the record bytes hold, decoding the envelope gives it back."""
    record_json = orjson.dumps(record)
    line = Event(RECEIVED, SOURCE, record_json=record_json).encode("1-0")
    assert record_json in line
    assert decode(line)["record"] == record


def test_malformed_envelope() -> None:
    """A malformed event carries reason, raw_b64 of the raw bytes, size and truncated, last."""
    raw = b'\xff\x00not json {"\n'
    event = Event(RECEIVED, SOURCE, malformed=Malformed.of("invalid JSON: oops", raw))
    envelope = decode(event.encode("2-5"))
    assert list(envelope) == ["v", "id", "received_at", "source", "malformed"]
    assert "record" not in envelope
    assert list(envelope["malformed"]) == ["reason", "raw_b64", "size", "truncated"]
    malformed = envelope["malformed"]
    assert malformed["reason"] == "invalid JSON: oops"
    assert base64.b64decode(malformed["raw_b64"], validate=True) == raw
    assert malformed["size"] == len(raw)
    assert malformed["truncated"] is False


def test_malformed_of_keeps_at_most_4096_bytes() -> None:
    """Malformed.of keeps the first 4096 bytes of a long input and records its full size."""
    raw = bytes(range(256)) * 40
    malformed = Malformed.of("too long", raw)
    assert MALFORMED_KEEP_BYTES == 4096
    assert malformed.raw == raw[:4096]
    assert malformed.size == len(raw) == 10_240
    as_json = malformed.as_json()
    assert base64.b64decode(as_json["raw_b64"]) == raw[:4096]
    assert as_json["truncated"] is True
    assert as_json["size"] == 10_240


@pytest.mark.parametrize("length", [0, 1, 4095, 4096])
def test_malformed_of_short_input_is_not_truncated(length: int) -> None:
    """An input of at most 4096 bytes is kept whole and not marked truncated."""
    raw = b"z" * length
    malformed = Malformed.of("bad", raw)
    assert malformed.raw == raw
    assert malformed.as_json() == {
        "reason": "bad",
        "raw_b64": base64.b64encode(raw).decode(),
        "size": length,
        "truncated": False,
    }


def test_malformed_of_with_an_explicit_size() -> None:
    """A prefix with the size of the whole input (an oversized frame) is marked truncated."""
    malformed = Malformed.of("frame too long", b"p" * 100, size=2_000_000)
    assert malformed.raw == b"p" * 100
    assert malformed.as_json()["size"] == 2_000_000
    assert malformed.as_json()["truncated"] is True


def test_source_id() -> None:
    """source_id is the envelope source's id."""
    assert Event(RECEIVED, SOURCE, record_json=b"{}").source_id == "agents_tls"


def test_utc_timestamp_of_a_given_moment() -> None:
    """A UTC moment is written as RFC 3339 with microseconds and a Z."""
    moment = datetime(2026, 11, 22, 10, 45, 23, 102345, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-11-22T10:45:23.102345Z"
    assert utc_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


def test_utc_timestamp_now() -> None:
    """Without an argument, the timestamp is the current UTC time in the same format."""
    before = datetime.now(UTC)
    stamp = utc_timestamp()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after


def test_utc_timestamp_converts_other_time_zones() -> None:
    """An aware datetime in another zone is converted to UTC before the Z is written."""
    moment = datetime(2026, 11, 22, 12, 45, 23, 102345, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(moment) == "2026-11-22T10:45:23.102345Z"


def test_record_with_a_raw_newline_still_encodes_to_one_line() -> None:
    """A record whose JSON whitespace contains LF (valid JSON) still yields one archive line."""
    line = Event(RECEIVED, SOURCE, record_json=b'{"a":\n1,\r\n"b":2}').encode("1-0")
    assert decode(line)["record"] == {"a": 1, "b": 2}


def test_identity_mismatch_is_written_after_chain_and_before_record() -> None:
    """An event from a sender not allowed to speak for its agent carries identity_mismatch."""
    mismatch = {"claimed": "agent-9", "allowed": ["agent-1"], "tls_subject": "CN=host-7"}
    event = Event(RECEIVED, SOURCE, "agent-9", b'{"a":1}', identity_mismatch=mismatch)
    envelope = decode(event.encode("1-64"))
    assert list(envelope)[-2:] == ["identity_mismatch", "record"]
    assert envelope["identity_mismatch"] == mismatch


def test_alert_event_is_an_internal_event_routed_to_every_sink() -> None:
    """alert_event builds an envelope whose source is shipper itself and whose route is empty."""
    event = alert_event("shipper.chain_alert", "agent-1", {"status": "gap", "missing": [3, 4]})
    envelope = decode(event.encode("1-64"))
    assert envelope["source"] == {"id": "shipper", "kind": "alert"}
    assert envelope["agent"] == "agent-1"
    assert envelope["record"] == {
        "action": "shipper.chain_alert",
        "agent": "agent-1",
        "status": "gap",
        "missing": [3, 4],
    }
    assert "chain" not in envelope
    assert event.source_id == ""


def test_the_head_reader_reads_the_daemons_envelopes_without_a_full_parse() -> None:
    """The shapes the daemon writes most (a chained record; a syslog one; an alert) are read
    from their bytes, with the values a full parse gives."""
    lines = [
        Event(RECEIVED, SOURCE, "agent-3", b'{"agent":"x","record":{}}', chain=CHAIN).encode("1-0"),
        Event(RECEIVED, SOURCE, "agent-3", b'{"a":1}', syslog=SYSLOG, chain=CHAIN).encode("1-9"),
        alert_event("shipper.chain_alert", None, {"status": "gap"}).encode("2-0"),
    ]
    reader = HeadReader()
    for line in lines:
        parsed = orjson.loads(line)
        assert reader.read(line) == (
            parsed["id"],
            parsed["received_at"],
            parsed["source"],
            parsed.get("agent"),
            parsed.get("chain"),
            True,
        )


@given(envelope_lists())
def test_the_head_reader_is_exact_or_says_nothing(lines: list[bytes]) -> None:
    """For envelopes of every shape with hostile content (strings and records holding the
    envelope's keys, quotes, braces, escapes), the head read from the bytes is what a full
    parse gives, or None."""
    reader = HeadReader()
    for line in lines:
        head = reader.read(line)
        if head is None:
            continue
        parsed = orjson.loads(line)
        assert head == (
            parsed["id"],
            parsed["received_at"],
            parsed["source"],
            parsed.get("agent"),
            parsed.get("chain"),
            "record" in parsed,
        )


@pytest.mark.parametrize(
    "event",
    [
        Event(RECEIVED, {"id": "s", "x": {"y": 1}, "agent": "evil", "record": {}}),
        Event(RECEIVED, {"id": "s", "x": {"y": "}"}, "record": {}}, "a", chain=CHAIN),
        Event(RECEIVED, SOURCE, "a", chain={"sequence": 1, "x": {"y": 2}, "record": {}}),
        Event(RECEIVED, {"id": 'a"},"agent":"evil'}, "a\\b", chain={"detail": '"},"x'}),
        Event(RECEIVED, SOURCE, syslog={"sd": {"a": {"b": {"c": {"agent": "evil"}}}}}),
    ],
)
def test_the_head_reader_is_not_misled_by_objects_inside_the_head(event: Event) -> None:
    """Objects in the head holding objects and keys of the envelope's own names, and strings
    holding its punctuation, are read as a full parse reads them, or not at all."""
    event.record_json = b'{"agent":"evil","chain":{"sequence":1}}'
    line = event.encode("3-7")
    parsed = orjson.loads(line)
    head = HeadReader().read(line)
    assert head is None or head == (
        parsed["id"],
        parsed["received_at"],
        parsed["source"],
        parsed.get("agent"),
        parsed.get("chain"),
        True,
    )


def test_an_event_survives_pickling_with_every_field() -> None:
    """An event pickled (as ingest workers send them to the writer) comes back equal, every
    field set or not, and with the connection's shared ``source`` dict still shared."""
    source = {"id": "agents", "kind": "json_tls", "peer": "10.0.0.7:5000"}
    full = Event(
        "2026-12-03T10:00:00.000000Z",
        source,
        "agent-1",
        b'{"a":1}',
        None,
        {"facility": "auth"},
        {"status": "ok", "sequence": 1},
        {"claimed": "x"},
        True,
        SEED.facts({"agentId": "agent-1", "sequence": 1, "hash": "x", "prevHash": ""}, b""),
        (b'{"v":1,"received_at":"2026-12-03T10:00:00.000000Z",', b'"record":{"a":1}}'),
    )
    bare = Event("2026-12-03T10:00:00.000000Z", source, malformed=Malformed.of("bad", b"\xff"))
    back = pickle.loads(pickle.dumps([full, bare], protocol=pickle.HIGHEST_PROTOCOL))
    assert back == [full, bare]
    assert back[0].source is back[1].source


def envelope_before_sealing(event: Event) -> bytes:
    """The envelope without its id as ``Event.encode_without_id`` wrote it before sources sealed
    their events: one ``orjson.dumps`` of the whole envelope (the reference the splice must
    match byte for byte)."""
    envelope: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "received_at": event.received_at,
        "source": event.source,
    }
    if event.syslog is not None:
        envelope["syslog"] = event.syslog
    if event.agent is not None:
        envelope["agent"] = event.agent
    if event.chain is not None:
        envelope["chain"] = event.chain
    if event.identity_mismatch is not None:
        envelope["identity_mismatch"] = event.identity_mismatch
    if event.record_json is not None:
        raw = event.record_json.replace(b"\n", b" ").replace(b"\r", b" ")
        envelope["record"] = orjson.Fragment(raw)
    else:
        assert event.malformed is not None
        envelope["malformed"] = event.malformed.as_json()
    return orjson.dumps(envelope)


@st.composite
def unsealed_events(draw: st.DrawFn) -> Event:
    """Events of every shape a source hands on: syslog or not, an agent or not, a mismatch or
    not, a record (with raw CR/LF between its tokens, sometimes) or malformed input; sometimes
    an alert."""
    malformed = draw(st.integers(0, 5)) == 0
    record = None
    if not malformed:
        record = draw(records())
        if draw(st.booleans()):
            record = record.replace(b",", draw(st.sampled_from([b",\n", b"\r\n,", b"\r,\n "])))
    event = Event(
        draw(st.sampled_from([RECEIVED]) | texts),
        draw(sources()),
        draw(st.none() | texts),
        record,
        Malformed.of(draw(texts), draw(st.binary(max_size=8))) if malformed else None,
        syslog=draw(st.none() | objects),
        identity_mismatch=draw(st.none() | objects),
        alert=draw(st.integers(0, 9)) == 0,
    )
    return event


@settings(max_examples=500)
@given(unsealed_events(), st.none() | chains())
def test_a_sealed_event_with_its_chain_spliced_in_is_the_envelope_encoded_whole(
    event: Event, chain: dict[str, Any] | None
) -> None:
    """The WAL entry of an event its source sealed, with the chain stage's verdict spliced in
    (or none), is byte for byte what encoding the whole envelope at once gives, and so is that of
    an event nobody sealed (alerts, fallbacks); sealing leaves only bytes behind for the syslog
    and identity_mismatch objects."""
    sealed = copy.copy(event)
    sealed.seal()
    assert sealed.syslog is None
    assert sealed.identity_mismatch is None
    started = copy.copy(event)  # sealed as sources do, with the start its read shares
    started.seal(envelope_start(event.received_at, event.source))
    event.chain = sealed.chain = started.chain = chain
    route = ("" if event.alert else str(event.source["id"])).encode() + b"\0"
    expected = route + envelope_before_sealing(event)
    assert entry(sealed) == expected
    assert entry(started) == expected
    assert entry(event) == expected
    assert sealed.encode("1-0") == event.encode("1-0")
