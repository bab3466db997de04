"""Identity binding: the matcher alone, on memory streams, then mutual TLS into the archive."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from shipper.config import Address, parse_config
from shipper.events import IDENTITY_ALERT, Event
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._identity import (
    REASON_NO_CERT,
    REASON_NO_ENTRY,
    REASON_NOT_ALLOWED,
    IdentityPolicy,
    subject_attributes,
)
from shipper.sources._net import Connection, FramedSource
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig
from shipper.sources.syslog import SyslogSource, SyslogSourceConfig
from tests.conftest import LogCapture, TlsFiles, archive_lines, file_sink_config, wait_until

SUBJECT = "CN=agent-host-7,O=Example\\, Inc.+OU=agents"
SAN = ["agent-host-7", "spiffe://example.org/host-7"]
TABLE = {
    "agent-host-7": ("agent-host-7", "customer-service-agent-*"),
    "CN=ingest-relay": ("*",),
}


# --- the matcher -----------------------------------------------------------------------------


def test_subject_attributes_split_at_unescaped_commas_and_pluses() -> None:
    """An RFC 4514 subject splits into its TYPE=value parts, escapes kept as written."""
    assert subject_attributes(SUBJECT) == ["CN=agent-host-7", "O=Example\\, Inc.", "OU=agents"]
    assert subject_attributes("") == []


def test_san_key_allows_the_claims_its_patterns_match() -> None:
    """A SAN key grants its patterns: a matching agent and hostname pass, nothing is marked."""
    grant = IdentityPolicy(TABLE).grant(SUBJECT, SAN)
    assert grant.entries == ("agent-host-7",)
    assert grant.check("customer-service-agent-03", "agent-host-7") is None
    assert grant.check(None, None) is None


def test_foreign_claim_is_a_mismatch_naming_what_was_claimed_and_allowed() -> None:
    """An agent id outside the certificate's patterns yields the documented mismatch object."""
    grant = IdentityPolicy(TABLE).grant(SUBJECT, SAN)
    assert grant.check("billing-agent-1", "agent-host-7") == {
        "reason": REASON_NOT_ALLOWED,
        "claimed": {"agent": "billing-agent-1", "hostname": "agent-host-7"},
        "mismatched": ["agent"],
        "tls_subject": SUBJECT,
        "tls_san": SAN,
        "entries": ["agent-host-7"],
        "allowed": ["agent-host-7", "customer-service-agent-*"],
    }
    mismatch = grant.check("customer-service-agent-03", "host-8")
    assert mismatch is not None
    assert mismatch["mismatched"] == ["hostname"]


def test_agent_ids_match_case_sensitively_and_hostnames_do_not() -> None:
    """Agent ids are compared exactly; hostnames, like DNS names, ignore case."""
    grant = IdentityPolicy(TABLE).grant(SUBJECT, SAN)
    assert grant.check(None, "AGENT-HOST-7") is None
    assert grant.check("Customer-Service-Agent-03", None) is not None


@pytest.mark.parametrize(
    "key",
    ["CN=agent-host-7", "OU=agents", "O=Example\\, Inc.", SUBJECT],
    ids=["cn", "ou", "escaped-o", "whole-subject"],
)
def test_subject_keys_match_one_attribute_or_the_whole_subject(key: str) -> None:
    """A TYPE=value key matches an attribute of the subject, or the whole subject string."""
    grant = IdentityPolicy({key: ("x-*",)}).grant(SUBJECT, SAN)
    assert grant.entries == (key,)
    assert grant.check("x-1", None) is None


def test_subject_keys_never_match_sans_and_san_keys_never_match_the_subject() -> None:
    """A subject key is never compared with SAN values, nor a SAN key with the subject."""
    policy = IdentityPolicy({"CN=relay": ("*",), "relay": ("*",)})
    assert policy.grant("CN=other", ["CN=relay"]).entries == ()
    assert policy.grant("CN=relay", []).entries == ("CN=relay",)
    assert policy.grant("CN=relay", ["relay"]).entries == ("CN=relay", "relay")


def test_every_matching_key_adds_its_patterns() -> None:
    """A certificate matching several keys may claim what any of them allows."""
    policy = IdentityPolicy({"agent-host-7": ("a-*",), "CN=agent-host-7": ("b-*", "a-*")})
    grant = policy.grant(SUBJECT, SAN)
    assert grant.allowed == ("a-*", "b-*")
    assert grant.check("b-2", None) is None


@pytest.mark.parametrize(
    ("subject", "san", "reason"),
    [("CN=stranger", ["stranger"], REASON_NO_ENTRY), (None, [], REASON_NO_CERT)],
    ids=["unknown-certificate", "no-certificate"],
)
def test_sender_without_an_entry_is_a_mismatch_whatever_it_claims(
    subject: str | None, san: list[str], reason: str
) -> None:
    """A certificate the table does not name (or none at all) may claim nothing, not even nothing."""
    grant = IdentityPolicy(TABLE).grant(subject, san)
    for agent in (None, "customer-service-agent-03"):
        mismatch = grant.check(agent, None)
        assert mismatch is not None
        assert (mismatch["reason"], mismatch["entries"], mismatch["allowed"]) == (reason, [], [])


# --- on memory streams -----------------------------------------------------------------------

RECORD_03 = b'{"agentId":"customer-service-agent-03","action":"database.query"}'
RECORD_09 = b'{"agentId":"billing-agent-09","action":"refund.issue"}'


async def feed(source: FramedSource, data: bytes, subject: str | None, san: list[str]) -> None:
    """Run the source's handler on a memory stream as a client with this certificate identity."""
    client, server = trio.testing.memory_stream_pair()
    assert source.server is not None
    connection = Connection(source.server, server, "10.0.0.7:51234", subject, san)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        await client.send_all(data)
        await client.aclose()


def envelope(event: Event) -> dict[str, Any]:
    """The envelope the event will be archived as (its source encoded it once it was checked)."""
    assert event.sealed is not None
    parsed: dict[str, Any] = orjson.loads(event.encode("1-0"))
    return parsed


def drain(receive: trio.MemoryReceiveChannel[list[Event]]) -> list[list[Event]]:
    """Every batch queued in the channel right now."""
    batches: list[list[Event]] = []
    while True:
        try:
            batches.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return batches


async def test_mismatched_event_is_kept_and_followed_by_its_alert_in_the_same_batch(
    logs: LogCapture,
) -> None:
    """A foreign claim keeps its event, marks it, and puts one alert right after it."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, RECORD_03 + b"\n" + RECORD_09 + b"\n" + RECORD_03 + b"\n", SUBJECT, SAN)
    (batch,) = drain(receive)
    assert [e.alert for e in batch] == [False, False, True, False]
    ok, foreign, alert, ok_again = batch
    assert "identity_mismatch" not in envelope(ok)
    assert "identity_mismatch" not in envelope(ok_again)
    assert foreign.record_json == RECORD_09
    assert foreign.facts is None  # never verified
    assert envelope(foreign)["identity_mismatch"]["claimed"] == {"agent": "billing-agent-09"}
    assert alert.record_json is not None
    record = orjson.loads(alert.record_json)
    assert record["action"] == IDENTITY_ALERT
    assert record["agent"] == "billing-agent-09"
    assert (record["status"], record["severity"]) == ("identity_mismatch", "critical")
    assert (record["source"], record["peer"]) == ("agents", "10.0.0.7:51234")
    assert record["event_received_at"] == foreign.received_at
    assert record["allowed"] == ["agent-host-7", "customer-service-agent-*"]
    assert source.counters["identity_mismatch"] == 1
    (entry,) = logs.entries("identity_mismatch")
    assert entry["claimed"] == {"agent": "billing-agent-09"}


@pytest.mark.parametrize(
    "claim",
    [b'["billing-agent-09"]', b'{"id":"billing-agent-09"}', b"true", b"null", b'""', b"1.5"],
)
async def test_an_agent_field_that_is_not_a_string_claims_nothing(claim: bytes) -> None:
    """A record whose agent field is neither a string nor an integer names no agent: its event has
    no agent, and a certificate with an entry passes the identity check."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, b'{"agentId":%s,"action":"refund.issue"}\n' % claim, SUBJECT, SAN)
    (batch,) = drain(receive)
    (event,) = batch
    assert event.agent is None
    assert "identity_mismatch" not in envelope(event)


async def test_an_integer_agent_field_is_a_claim_in_decimal() -> None:
    """An integer agent field is claimed as its decimal string, and checked like any other."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, b'{"agentId":7,"action":"refund.issue"}\n', SUBJECT, SAN)
    (batch,) = drain(receive)
    event, alert = batch
    assert event.agent == "7"
    assert envelope(event)["identity_mismatch"]["claimed"] == {"agent": "7"}
    assert alert.alert


async def test_a_record_naming_its_agent_twice_is_malformed_and_claims_nothing() -> None:
    """A record with two agentId members is malformed: neither value is claimed or checked."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    line = b'{"agentId":"customer-service-agent-03","agentId":"billing-agent-09"}\n'
    await feed(source, line, SUBJECT, SAN)
    (batch,) = drain(receive)
    (event,) = batch
    assert event.malformed is not None
    assert event.malformed.reason.startswith('duplicate member name "agentId"')
    assert event.agent is None
    assert "identity_mismatch" not in envelope(event)


async def test_mismatch_warnings_are_logged_at_most_once_a_second(
    logs: LogCapture, autojump_clock: trio.testing.MockClock
) -> None:
    """Many mismatches in one second give one warning; the next one says how many were left out."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), identity=TABLE)
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, RECORD_09 + b"\n" + RECORD_09 + b"\n" + RECORD_09 + b"\n", SUBJECT, SAN)
    await trio.sleep(1.5)
    await feed(source, RECORD_09 + b"\n", SUBJECT, SAN)
    entries = logs.entries("identity_mismatch")
    assert [(e["not_logged_since"], e["mismatches_total"]) for e in entries] == [(0, 1), (2, 4)]
    assert source.counters["identity_mismatch"] == 4
    assert sum(e.alert for batch in drain(receive) for e in batch) == 4


async def test_syslog_hostname_is_a_claim_and_nilvalue_is_none() -> None:
    """Over syslog, HOSTNAME is checked too; a NILVALUE hostname claims nothing."""
    config = SyslogSourceConfig(
        id="syslog", address=Address("127.0.0.1", 0), mode="tcp", identity=TABLE
    )
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = SyslogSource(config, send)
    messages = [
        b"<14>1 2026-11-23T10:45:23Z agent-host-7 app - - - " + RECORD_03,
        b"<14>1 2026-11-23T10:45:23Z - app - - - " + RECORD_03,
        b"<14>1 2026-11-23T10:45:23Z host-8 app - - - plain text",
    ]
    await feed(source, b"".join(m + b"\n" for m in messages), SUBJECT, SAN)
    events = [e for batch in drain(receive) for e in batch]
    assert [e.alert for e in events] == [False, False, False, True]
    mismatch = envelope(events[2])["identity_mismatch"]
    assert (mismatch["claimed"], mismatch["mismatched"]) == ({"hostname": "host-8"}, ["hostname"])


async def test_source_without_an_identity_table_checks_nothing() -> None:
    """Without [sources.X.identity] no event is marked, whoever sends it."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0))
    send, receive = trio.open_memory_channel[list[Event]](100)
    source = JsonTlsSource(config, send)
    await feed(source, RECORD_09 + b"\n", None, [])
    events = [e for batch in drain(receive) for e in batch]
    assert ["identity_mismatch" in envelope(e) for e in events] == [False]


# --- mutual TLS into the archive -------------------------------------------------------------


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client context trusting the test CA and presenting the agent-host-7 certificate."""
    context = ssl.create_default_context(cafile=str(tls.ca_pem))
    context.load_cert_chain(str(tls.client_pem), str(tls.client_key))
    return context


def mtls_config(root: Path, tls: TlsFiles, source: dict[str, Any]) -> dict[str, Any]:
    """A raw daemon config: one mTLS source (``source`` keys) with an identity table, a file sink."""
    raw = file_sink_config(root)
    raw["sources"] = {
        "agents": {
            **source,
            "address": "127.0.0.1:0",
            "tls": {
                "cert": str(tls.server_pem),
                "key": str(tls.server_key),
                "client_ca": str(tls.ca_pem),
            },
            "identity": {
                "agent-host-7": ["agent-host-7", "customer-service-agent-*"],
                "CN=ingest-relay": ["*"],
            },
        }
    }
    return raw


async def send_over_mtls(raw: dict[str, Any], tls: TlsFiles, root: Path, data: bytes) -> None:
    """Run the daemon, send ``data`` over one mutual-TLS connection, wait for 3 archived lines."""
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        address = bound["agents"][0]
        tcp = await trio.open_tcp_stream(address.host, address.port)
        async with trio.SSLStream(tcp, client_context(tls), server_hostname="127.0.0.1") as stream:
            await stream.send_all(data)
        await wait_until(lambda: len(archive_lines(root / "archive")) == 3)
        shutdown.request("test")


def check_archive(root: Path) -> None:
    """The permitted record passes; the foreign one is marked and followed by exactly one alert."""
    envelopes = [orjson.loads(line) for line in archive_lines(root / "archive")]
    assert [e["source"]["kind"] for e in envelopes].count("alert") == 1
    permitted, foreign, alert = envelopes
    assert permitted["agent"] == "customer-service-agent-03"
    assert "identity_mismatch" not in permitted
    assert permitted["source"]["tls_san"] == ["agent-host-7"]
    assert foreign["agent"] == "billing-agent-09"
    assert foreign["record"] == orjson.loads(RECORD_09)
    mismatch = foreign["identity_mismatch"]
    assert mismatch["reason"] == REASON_NOT_ALLOWED
    assert mismatch["claimed"]["agent"] == "billing-agent-09"
    assert mismatch["mismatched"] == ["agent"]
    assert mismatch["tls_san"] == ["agent-host-7"]
    assert mismatch["allowed"] == ["agent-host-7", "customer-service-agent-*"]
    assert "chain" not in foreign  # an impostor's record never moves the claimed agent's chain
    assert alert["record"]["action"] == IDENTITY_ALERT
    assert alert["record"]["agent"] == "billing-agent-09"
    assert alert["record"]["source"] == "agents"
    assert alert["record"]["tls_subject"] == foreign["source"]["tls_subject"]


async def test_json_tls_foreign_claim_is_archived_with_identity_mismatch_and_an_alert(
    tmp_path: Path, tls_files: TlsFiles, logs: LogCapture
) -> None:
    """Over json_tls with mTLS, a record for another agent is archived, marked, and alerted."""
    raw = mtls_config(tmp_path, tls_files, {"type": "json_tls"})
    await send_over_mtls(raw, tls_files, tmp_path, RECORD_03 + b"\n" + RECORD_09 + b"\n")
    check_archive(tmp_path)


async def test_syslog_tls_foreign_claim_is_archived_with_identity_mismatch_and_an_alert(
    tmp_path: Path, tls_files: TlsFiles, logs: LogCapture
) -> None:
    """Over syslog TLS (RFC 5425 octet counting), the same: permitted passes, foreign is alerted."""
    raw = mtls_config(tmp_path, tls_files, {"type": "syslog", "mode": "tls"})
    messages = [
        b"<110>1 2026-11-23T10:45:23.102Z agent-host-7 openclaw 811 audit - " + record
        for record in (RECORD_03, RECORD_09)
    ]
    data = b"".join(b"%d %s" % (len(m), m) for m in messages)
    await send_over_mtls(raw, tls_files, tmp_path, data)
    check_archive(tmp_path)
    foreign = orjson.loads(archive_lines(tmp_path / "archive")[1])
    assert foreign["identity_mismatch"]["claimed"] == {
        "agent": "billing-agent-09",
        "hostname": "agent-host-7",
    }
