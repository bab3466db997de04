"""The CEF encoder: escaping checked by a third-party parser (lognormalizer), header limits, the
default mapping of both record profiles, severities, and the mapping syntax of the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.codecs.cef import (
    DEFAULT_MAPPING,
    NAME_LIMIT,
    SIGNATURE_ID_LIMIT,
    VENDOR_LIMIT,
    CefEncoder,
    FieldPath,
    Literal,
    describe,
    format_cef,
    mapping_with,
    parse_rule,
    truncate,
)
from shipper.events import Event, Malformed, alert_event
from tests.cefparse import needs_lognormalizer, parse_cef

TRICKY = [
    "plain",
    "pipe|in|it",
    "|",
    "back\\slash",
    "\\",
    "ends with backslash\\",
    "\\|",
    "\\=",
    "equals=sign",
    "=",
    "a=b c=d",
    "key=value and more",
    "line\nfeed",
    "\n",
    "carriage\rreturn",
    "crlf\r\n",
    "\\n literally",
    "tab\there",
    "  spaces around  ",
    " ",
    "unicode: é ü 漢字 🙂 ‮rtl",
    "\u2028\u0085 line separators",
    "\ufeffbom first",
    "nul\0inside",
    "",
    "x" * 5000,
    "é" * 3000,
    "quotes \" and ' and ]",
]


def header_expected(text: str, limit: int) -> str:
    """What a header field reads back as: cut to ``limit`` bytes, line breaks as spaces."""
    cut = truncate(text, limit)
    return cut.replace("\r", " ").replace("\n", " ").replace("\0", "\ufffd")


def value_expected(text: str) -> str | None:
    """What an extension value reads back as (None: the key is left out)."""
    return text.replace("\0", "\ufffd") or None


def lines_for(values: list[str]) -> list[str]:
    """For each value: one line with it in every header field, and in two extension keys (one
    first, one last: both ends of the extension)."""
    return [
        format_cef(
            value, value, value, value, value, 5, [("msg", value), ("cs1", "x"), ("cs2", value)]
        )
        for value in values
    ]


def assert_round_trip(values: list[str], tmp_path: Path) -> None:
    parsed = parse_cef(lines_for(values), tmp_path)
    for value, cef in zip(values, parsed, strict=True):
        assert cef is not None, f"lognormalizer refused the line for {value!r}"
        for field, limit in (
            ("DeviceVendor", VENDOR_LIMIT),
            ("DeviceProduct", VENDOR_LIMIT),
            ("DeviceVersion", VENDOR_LIMIT),
            ("SignatureID", SIGNATURE_ID_LIMIT),
            ("Name", NAME_LIMIT),
        ):
            assert cef[field] == header_expected(value, limit), (field, value)
        assert cef["Severity"] == "5"
        expected = {"msg": value_expected(value), "cs1": "x", "cs2": value_expected(value)}
        assert cef["Extensions"] == {k: v for k, v in expected.items() if v is not None}, value


@pytest.fixture
def lognormalizer() -> str:
    """lognormalizer, or skip (a sync fixture, so that the reason is kept)."""
    return needs_lognormalizer()


def test_tricky_values_read_back_as_written(lognormalizer: str, tmp_path: Path) -> None:
    """Pipes, backslashes, equals signs, line breaks, unicode, empty and very long values read
    back through lognormalizer as the original (header fields cut to their limits, line breaks
    there as spaces, empty extension values left out)."""
    assert_round_trip(TRICKY, tmp_path)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=40))
def test_random_text_reads_back_as_written(
    lognormalizer: str, tmp_path: Path, values: list[str]
) -> None:
    """Any text, in the header and in extension values, reads back through lognormalizer as
    the encoder promises (one lognormalizer run per list of values)."""
    assert_round_trip(values, tmp_path)


def test_header_limits_cut_on_a_character_boundary() -> None:
    """Header fields are cut to ArcSight's lengths in UTF-8 bytes, never inside a character."""
    name = "a" + "€" * 300  # 1 + 3n bytes: 512 falls inside a character
    line = format_cef("v" * 100, "p", "1", "s" * 2000, name, 3, [])
    fields = line.split("|")
    assert fields[1] == "v" * 63
    assert fields[4] == "s" * 1023
    assert fields[5] == "a" + "€" * 170
    assert len(fields[5].encode()) == 511
    assert truncate("ab🙂", 5) == "ab"
    assert truncate("ab🙂", 6) == "ab🙂"


def test_refuses_unknown_keys_and_severities() -> None:
    """A key outside CEF's dictionary or a severity outside 0..10 is refused, not written."""
    with pytest.raises(ValueError, match="CEF extension key"):
        format_cef("v", "p", "1", "s", "n", 3, [("no-such-key", "x")])
    with pytest.raises(ValueError, match="severity"):
        format_cef("v", "p", "1", "s", "n", 11, [])
    with pytest.raises(ValueError, match="CEF extension key"):
        CefEncoder("v", "p", "1", {"bogus": (Literal("x"),)})


# --- the default mapping -------------------------------------------------------------------------

SEED_RECORD = {
    "action": "database.query",
    "effect": "deny",
    "agentId": "agent-7",
    "userId": "alice",
    "target": "https://crm.example/api/customers?id=9",
    "reason": "policy=no-pii",
    "sessionId": "sess-1",
    "matchedRule": "deny-pii",
    "timestamp": "2026-11-23T10:00:01.250Z",
    "sequence": 42,
    "hash": "sha256:abc",
}
SAFECLAW_RECORD = {
    "timestamp": "2026-11-23T10:00:02.000Z",
    "toolName": "exec",
    "actionType": "shell.exec",
    "resource": "/srv/job/1",
    "outcome": "allow",
    "source": "gateway",
    "prevHash": "GENESIS",
}


def envelope(record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A parsed envelope of ``record``, as a sink reads it from the WAL."""
    event = Event(
        "2026-11-23T10:00:03.000000Z",
        {"id": "agents", "kind": "json_tls"},
        extra.pop("agent", "agent-7"),
        orjson.dumps(record),
        chain=extra.pop("chain", {"status": "ok", "sequence": 42, "expected": 42}),
    )
    parsed: dict[str, Any] = orjson.loads(event.encode("3-128"))
    return parsed


def test_seed_record_maps_to_the_documented_keys() -> None:
    """A seed-profile record fills act, outcome, suser/cs1, duser, rt (ms), cs2, reason, the
    target under request (a URL), cs4, cn1, cs5 and cs6, labels beside them."""
    encoder = CefEncoder("shipper", "shipper", "0.1.0")
    encoded = encoder.encode(envelope(SEED_RECORD))
    pairs = dict(encoder.extension(envelope(SEED_RECORD)))
    assert pairs == {
        "act": "database.query",
        "outcome": "deny",
        "suser": "agent-7",
        "duser": "alice",
        "rt": "1795428001250",
        "reason": "policy=no-pii",
        "request": "https://crm.example/api/customers?id=9",
        "externalId": "3-128",
        "cn1": "42",
        "cn1Label": "sequence",
        "cs1": "agent-7",
        "cs1Label": "agentId",
        "cs2": "deny-pii",
        "cs2Label": "matchedRule",
        "cs4": "sess-1",
        "cs4Label": "sessionId",
        "cs5": "sha256:abc",
        "cs5Label": "recordHash",
        "cs6": "ok",
        "cs6Label": "chainStatus",
    }
    assert encoded.line.startswith(
        "CEF:0|shipper|shipper|0.1.0|database.query|Agent action denied: database.query|6|act="
    )
    assert encoded.severity == 6


def test_safeclaw_record_maps_through_its_own_field_names() -> None:
    """A SafeClaw record's actionType, outcome, resource (a file path: fname), toolName and
    timestamp land where the seed profile's fields do."""
    pairs = dict(CefEncoder("v", "p", "1").extension(envelope(SAFECLAW_RECORD, chain=None)))
    assert pairs["act"] == "shell.exec"
    assert pairs["outcome"] == "allow"
    assert pairs["fname"] == "/srv/job/1"
    assert pairs["deviceProcessName"] == "exec"
    assert pairs["rt"] == "1795428002000"
    assert pairs["suser"] == pairs["cs1"] == "agent-7"
    assert "request" not in pairs
    assert "cs3" not in pairs
    assert "cs6" not in pairs
    assert "cs6Label" not in pairs  # a label only beside its value
    assert describe(envelope(SAFECLAW_RECORD)).severity == 3


def test_target_that_is_neither_url_nor_path_goes_to_cs3() -> None:
    """A target that is no URL and no file path is written as cs3 with its label."""
    pairs = dict(CefEncoder("v", "p", "1").extension(envelope({"target": "customers table"})))
    assert (pairs["cs3"], pairs["cs3Label"]) == ("customers table", "resource")
    assert "request" not in pairs
    assert "fname" not in pairs


def test_target_in_request_details_is_found() -> None:
    """A seed record that names its target in requestDetails.resource has it mapped too."""
    record = {"requestDetails": {"resource": "postgres://crm/customers", "method": "SELECT"}}
    pairs = dict(CefEncoder("v", "p", "1").extension(envelope(record)))
    assert pairs["request"] == "postgres://crm/customers"


def test_rt_falls_back_to_received_at_and_odd_values_are_left_out() -> None:
    """Without a usable record timestamp rt is the time shipper received the event; a sequence
    that is no integer is left out rather than written wrong."""
    pairs = dict(CefEncoder("v", "p", "1").extension(envelope({"sequence": "x7"}, chain=None)))
    assert pairs["rt"] == "1795428003000"
    assert "cn1" not in pairs
    odd = envelope({"timestamp": "yesterday", "sequence": 3.5}, chain=None)
    odd_pairs = dict(CefEncoder("v", "p", "1").extension(odd))
    assert odd_pairs["rt"] == "1795428003000"
    assert "cn1" not in odd_pairs


@pytest.mark.parametrize(
    ("record", "severity", "name"),
    [
        ({"action": "a", "effect": "allow"}, 3, "Agent action allowed: a"),
        ({"action": "a", "effect": "DENY"}, 6, "Agent action denied: a"),
        ({"action": "a", "effect": "error"}, 5, "Agent action failed: a"),
        ({"action": "a", "effect": "maybe"}, 4, "Agent action (maybe): a"),
        ({"action": "a"}, 4, "Agent action: a"),
        ({"effect": "allow"}, 3, "Agent action allowed: unknown"),
    ],
)
def test_severity_and_name_of_agent_actions(
    record: dict[str, Any], severity: int, name: str
) -> None:
    """Denied actions rank above allowed ones; the name says what happened in a few words."""
    about = describe(envelope(record))
    assert (about.severity, about.name) == (severity, name)
    assert about.signature_id == record.get("action", "unknown")


def alert(action: str, **details: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(alert_event(action, "agent-7", details).encode("1-0"))
    return parsed


@pytest.mark.parametrize(
    ("event", "severity", "name"),
    [
        (
            alert("shipper.chain_alert", status="broken_link", severity="critical"),
            10,
            "Chain alert: broken_link",
        ),
        (alert("shipper.chain_alert", status="gap", severity="medium"), 9, "Chain alert: gap"),
        (
            alert("shipper.identity_alert", reason="san mismatch", severity="high"),
            9,
            "Identity alert: san mismatch",
        ),
        (
            alert("shipper.delivery_alert", sink="hook", events=5, severity="high"),
            7,
            "Delivery alert: sink hook refused 5 events",
        ),
        (alert("shipper.archive_seal", head="sha256:x"), 1, "Archive sealed"),
        (alert("shipper.something_new", severity="critical"), 10, "Alert: shipper.something_new"),
        (alert("shipper.something_new"), 5, "Alert: shipper.something_new"),
    ],
)
def test_alerts_rank_by_kind(event: dict[str, Any], severity: int, name: str) -> None:
    """Chain and identity alerts rank 9 to 10, other alerts by their own severity."""
    about = describe(event)
    assert (about.severity, about.name) == (severity, name)
    assert about.signature_id == event["record"]["action"]


def test_malformed_input_is_described_with_its_reason() -> None:
    """Input that could not be parsed gets its own signature, its reason as name and msg."""
    event = Event(
        "2026-11-23T10:00:03.000000Z",
        {"id": "agents", "kind": "json_tls"},
        malformed=Malformed.of("not JSON", b"\xff{"),
    )
    parsed = orjson.loads(event.encode("1-0"))
    about = describe(parsed)
    assert (about.signature_id, about.name, about.severity) == (
        "shipper.malformed",
        "Malformed input: not JSON",
        5,
    )
    assert dict(CefEncoder("v", "p", "1").extension(parsed))["msg"] == "not JSON"


# --- the mapping syntax ----------------------------------------------------------------------------


def test_rules_of_the_config() -> None:
    """A path, a list of paths ending in a literal, a literal, and false each become a rule."""
    assert parse_rule("record.userId") == (FieldPath(("record", "userId")),)
    assert parse_rule(["record.user", "agent", {"value": "nobody"}]) == (
        FieldPath(("record", "user")),
        FieldPath(("agent",)),
        Literal("nobody"),
    )
    assert parse_rule({"value": 7}) == (Literal(7),)
    assert parse_rule(False) == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("userId", "starting with an envelope key"),
        ("record..x", "dotted field path"),
        ("", "dotted field path"),
        ([], "expected a field path"),
        ([1], "expected a field path"),
        ({"value": True}, "literal"),
        ({"text": "x"}, "literal"),
        (True, "expected a field path"),
        (3, "expected a field path"),
    ],
)
def test_invalid_rules_are_refused(value: object, message: str) -> None:
    """A path outside the envelope, an empty segment, or a value of another shape is refused
    with what was expected."""
    with pytest.raises(ValueError, match=message):
        parse_rule(value)


def test_overrides_replace_add_and_remove_keys() -> None:
    """Configured keys replace defaults, add new keys (labels beside their keys), and false
    removes a default key."""
    mapping = mapping_with(
        {
            "cn2Label": (Literal("tokens"),),
            "cn2": (FieldPath(("record", "tokens")),),
            "duser": (FieldPath(("record", "principal")), Literal("nobody")),
            "cs5": (),
            "dvchost": (Literal("gateway-1"),),
        }
    )
    assert "cs5" not in mapping
    assert "cs5" in DEFAULT_MAPPING
    encoder = CefEncoder("v", "p", "1", mapping)
    pairs = encoder.extension(envelope({"tokens": 12, "hash": "sha256:x"}))
    keys = [key for key, _ in pairs]
    assert keys.index("cn2Label") == keys.index("cn2") + 1
    assert dict(pairs)["duser"] == "nobody"
    assert dict(pairs)["dvchost"] == "gateway-1"
    assert "cs5" not in dict(pairs)
    assert "cs5Label" not in mapping  # its key is gone, so is its default label
    with pytest.raises(ValueError, match="CEF extension key"):
        mapping_with({"userName": (Literal("x"),)})


def test_values_of_other_json_types_are_written_as_text() -> None:
    """Booleans, numbers, objects and lists in a text key are written as JSON writes them."""
    mapping = {"cs1": (FieldPath(("record", "v")),)}
    encoder = CefEncoder("v", "p", "1", mapping)
    for value, text in [
        (True, "true"),
        (1.5, "1.5"),
        ({"b": [1, "x"]}, '{"b":[1,"x"]}'),
        ("", None),
        (None, None),
    ]:
        assert dict(encoder.extension(envelope({"v": value}))).get("cs1") == text
