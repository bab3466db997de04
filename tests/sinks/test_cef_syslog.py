"""The cef_syslog sink: its config, its syslog messages, and end to end through a real receiver
(rsyslogd as the SIEM's listener, over TCP and mutual TLS), read back with lognormalizer."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer.segment import Position
from shipper.buffer.wal import ReadBatch, WalReader
from shipper.codecs.framing import OctetCountingFramer
from shipper.codecs.syslog import SyslogMessage, parse
from shipper.config import parse_config
from shipper.errors import ConfigError, DestinationUnavailable
from shipper.events import Event, Malformed, alert_event, entry
from shipper.metrics import Registry
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.base import Batch, SinkContext, position_of
from shipper.sinks.cef_syslog import CefSyslogSink, CefSyslogSinkConfig
from shipper.sinks.driver import SinkDriver
from tests.cefparse import needs_lognormalizer, parse_cef
from tests.chains import AGENT, chain, chain_lines, safeclaw_lines
from tests.conftest import (
    LogCapture,
    TlsFiles,
    archive_lines,
    file_sink_config,
    free_port,
    wait_until,
)
from tests.peers import needs_rsyslogd
from tests.siem import Received, Siem, cef_of
from tests.sinks.contract import SINK, CrashAfterDelivery, Watched, open_wal, reopen
from tests.sinks.memory import FAST

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}
TRICKY = [
    "alice|admin",
    "back\\slash\\",
    "a=b c=d",
    "two\nlines\r\n",
    "ünïcödé 漢字 🙂",
    "  padded  ",
    "x" * 3000,
]


def sink_table(port: int, **keys: Any) -> dict[str, Any]:
    return {"type": "cef_syslog", "address": f"127.0.0.1:{port}", "hostname": "shipper-1", **keys}


def config_of(table: dict[str, Any]) -> CefSyslogSinkConfig:
    source = {"type": "json_tls", "address": "127.0.0.1:0"}
    config = parse_config({"sources": {"agents": source}, "sinks": {SINK: table}}).sinks[SINK]
    assert isinstance(config, CefSyslogSinkConfig)
    return config


def build(table: dict[str, Any]) -> CefSyslogSink:
    sink = config_of(table).build(SinkContext(profile=None))  # type: ignore[arg-type]
    sink.retry_policy = FAST
    return sink


# --- config --------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    """A table with only an address sends RFC 5424 over octet-counted TCP with the default
    mapping."""
    config = config_of({"type": "cef_syslog", "address": "127.0.0.1:6514"})
    assert (config.transport, config.framing, config.format) == ("tcp", "octet-counting", "rfc5424")
    assert (config.app_name, config.facility, config.vendor) == ("shipper", "auth", "shipper")
    assert config.mapping["act"]
    assert config.hostname


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"mapping": {"userName": "record.userId"}},
            'mapping.userName: unknown CEF extension key (did you mean "suser"',
        ),
        (
            {"mapping": {"duser": "userId"}},
            "mapping.duser: expected a field path starting with an envelope key",
        ),
        ({"mapping": {"cs1": ["record.a", 3]}}, "mapping.cs1: expected a field path"),
        ({"mapping": {"cs1Label": {"text": "x"}}}, "mapping.cs1Label: expected a literal"),
        ({"transport": "udp", "framing": "lf"}, "framing: expected only with transport tcp or tls"),
        ({"tls": {"verify": False}}, 'tls: expected only with transport = "tls"'),
        ({"udp_max_bytes": 4096}, 'udp_max_bytes: expected only with transport = "udp"'),
        ({"hostname": "my host"}, "hostname: expected printable US-ASCII without spaces"),
        ({"format": "rfc3164", "app_name": "a:b"}, "app_name: expected printable US-ASCII"),
        ({"transport": "quic"}, "transport: expected"),
    ],
)
def test_config_problems_are_reported(keys: dict[str, Any], problem: str) -> None:
    """Unknown CEF keys, invalid rules and keys that do not fit the transport are refused with
    the key path and what was expected."""
    with pytest.raises(ConfigError) as raised:
        config_of(sink_table(514, **keys))
    assert problem in str(raised.value), str(raised.value)


def test_configured_mapping_replaces_defaults() -> None:
    """``[mapping]`` entries replace the default ones; false removes a key."""
    config = config_of(
        sink_table(514, mapping={"duser": ["record.principal", {"value": "nobody"}], "cs5": False})
    )
    sink = config.build(SinkContext(profile=None))  # type: ignore[arg-type]
    line = sink.encoder.encode(envelope_of({"action": "x", "hash": "h"})).line
    assert " duser=nobody" in line
    assert "cs5=" not in line


# --- messages ------------------------------------------------------------------------------------


def envelope_of(record: dict[str, Any], position: str = "1-0") -> dict[str, Any]:
    event = Event("2026-11-23T10:00:03.250000Z", SOURCE, AGENT, orjson.dumps(record))
    parsed: dict[str, Any] = orjson.loads(event.encode(position))
    return parsed


def raw_envelopes(records: list[dict[str, Any]]) -> list[bytes]:
    return [
        Event("2026-11-23T10:00:03.250000Z", SOURCE, AGENT, orjson.dumps(record)).encode(f"1-{n}")
        for n, record in enumerate(records)
    ]


def test_rfc5424_octet_counted_message() -> None:
    """An event goes out as an octet-counted RFC 5424 message: the receive time, hostname and
    app-name in the header, no structured data, the CEF line as MSG without a BOM."""
    sink = build(sink_table(514))
    (framed,) = sink.messages(raw_envelopes([{"action": "db.query", "effect": "deny"}]))
    length, _, message = framed.partition(b" ")
    assert int(length) == len(message)
    assert message.startswith(
        b"<36>1 2026-11-23T10:00:03.250000Z shipper-1 shipper - - - CEF:0|shipper|shipper|"
    )
    parsed = parse(message)
    assert isinstance(parsed, SyslogMessage)
    assert (parsed.facility, parsed.severity, parsed.hostname, parsed.app_name) == (
        "auth",
        "warning",
        "shipper-1",
        "shipper",
    )
    assert parsed.msg_bytes.startswith(b"CEF:0|")


def test_rfc3164_lf_message() -> None:
    """With format rfc3164 and LF framing, the BSD header carries the UTC receive time and the
    app-name as TAG, and each message ends with LF."""
    sink = build(
        sink_table(514, format="rfc3164", framing="lf", app_name="siem-feed", facility="local4")
    )
    (framed,) = sink.messages(raw_envelopes([{"action": "a", "effect": "allow"}]))
    assert framed.endswith(b"\n")
    assert framed.count(b"\n") == 1
    assert framed.startswith(b"<166>Nov 23 10:00:03 shipper-1 siem-feed: CEF:0|")


def test_severity_of_alerts_reaches_the_syslog_header() -> None:
    """A critical chain alert goes out with syslog severity crit."""
    sink = build(sink_table(514))
    raw = alert_event("shipper.chain_alert", AGENT, {"status": "bad_hash", "severity": "critical"})
    (framed,) = sink.messages([raw.encode("1-0")])
    message = framed.partition(b" ")[2]
    parsed = parse(message)
    assert isinstance(parsed, SyslogMessage)
    assert parsed.severity == "crit"
    assert b"|Chain alert: bad_hash|10|" in message


@pytest.mark.parametrize("syslog_format", ["rfc5424", "rfc3164"])
def test_events_received_together_keep_their_own_severity_and_time(syslog_format: str) -> None:
    """Events of one batch that share a receive time, and then one received later, each get
    the header of their own severity and receive time (headers are made once and reused)."""
    sink = build(sink_table(514, format=syslog_format, framing="lf"))
    records = [{"action": "a", "effect": effect} for effect in ("allow", "deny", "allow", "deny")]
    later = Event("2026-11-23T10:00:04.500000Z", SOURCE, AGENT, orjson.dumps(records[0]))
    messages = [
        parse(framed.rstrip(b"\n"))
        for framed in sink.messages([*raw_envelopes(records), later.encode("1-9")])
    ]
    assert all(isinstance(message, SyslogMessage) for message in messages)
    severities = [message.severity for message in messages if isinstance(message, SyslogMessage)]
    assert severities == ["info", "warning", "info", "warning", "info"]
    times = [message.timestamp for message in messages if isinstance(message, SyslogMessage)]
    assert len(set(times[:4])) == 1
    assert times[4] != times[0]


async def test_udp_drops_and_counts_a_message_too_large() -> None:
    """Over UDP a message longer than udp_max_bytes is not sent: counted and skipped, and the
    messages around it are sent."""
    receiver = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    sink = build(sink_table(port, transport="udp", udp_max_bytes=1024))
    envelopes = raw_envelopes(
        [{"action": "a"}, {"action": "b", "reason": "r" * 2000}, {"action": "c"}]
    )
    await sink.open("e")
    await sink.deliver(Batch.of(envelopes))
    got = [await receiver.recv(65536), await receiver.recv(65536)]
    assert [b"|a|" in got[0], b"|c|" in got[1]] == [True, True]
    assert sink.counters["oversized_messages"] == 1
    assert sink.counters["messages_written"] == 2
    await sink.close()
    receiver.close()


async def test_unreachable_receiver_is_unavailable_and_counted() -> None:
    """A receiver that refuses the connection makes the delivery unavailable (retried), and the
    failed attempt is counted."""
    sink = build(sink_table(free_port()))
    await sink.open("e")
    with pytest.raises(DestinationUnavailable, match=r"cannot connect to tcp://127\.0\.0\.1"):
        await sink.deliver(Batch.of(raw_envelopes([{"action": "a"}])))
    assert sink.counters["connect_failures"] == 1


# --- end to end through rsyslog ------------------------------------------------------------------


@pytest.fixture
def peers() -> None:
    """rsyslogd and lognormalizer, or skip (sync, so that the reason is kept)."""
    needs_rsyslogd()
    needs_lognormalizer()


def records(count: int) -> list[dict[str, Any]]:
    """Seed records (with tricky values in every text field the mapping sends) and SafeClaw
    records, alternating."""
    seed = chain(count)
    safeclaw = [orjson.loads(line) for line in safeclaw_lines(count)]
    out: list[dict[str, Any]] = []
    for n in range(count):
        tricky = TRICKY[n % len(TRICKY)]
        out.append(
            {
                **seed[n],
                "userId": tricky,
                "reason": tricky,
                "sessionId": f"s-{n}",
                "matchedRule": f"rule={n}",
                "target": f"https://crm.example/c?id={n}",
                "timestamp": f"2026-11-23T10:00:{n % 60:02d}.125Z",
            }
        )
        out.append(safeclaw[n])
    return out


def wal_entries(count: int) -> list[bytes]:
    events = [
        Event("2026-11-23T10:00:03.250000Z", SOURCE, AGENT, orjson.dumps(record))
        for record in records(count)
    ]
    events.append(
        alert_event("shipper.chain_alert", AGENT, {"status": "gap", "severity": "medium"})
    )
    events.append(
        Event("2026-11-23T10:00:04.000000Z", SOURCE, malformed=Malformed.of("not JSON", b"{x"))
    )
    return [entry(event) for event in events]


def millis(text: str) -> str:
    """Whole milliseconds since the epoch (the fraction below cut off)."""
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return str((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


def expected_fields(envelope: dict[str, Any]) -> dict[str, str]:
    """What the default mapping puts in the extension, from the envelope itself."""
    record = envelope.get("record")
    out = {"externalId": envelope["id"]}
    if record is None:
        out["msg"] = envelope["malformed"]["reason"]
        return out
    out["suser"] = out["cs1"] = envelope["agent"]
    action = record.get("action", record.get("actionType"))
    out["act"] = action
    effect = record.get("effect", record.get("outcome"))
    if effect is not None:
        out["outcome"] = effect
    out["rt"] = millis(record.get("timestamp", envelope["received_at"]))
    for key, field in (
        ("duser", "userId"),
        ("reason", "reason"),
        ("cs4", "sessionId"),
        ("cs2", "matchedRule"),
        ("cs5", "hash"),
    ):
        if field in record:
            out[key] = record[field]
    if "sequence" in record:
        out["cn1"] = str(record["sequence"])
    if "target" in record:
        out["request"] = record["target"]
    if "resource" in record:
        out["fname"] = record["resource"]
    if "toolName" in record:
        out["deviceProcessName"] = record["toolName"]
    return out


async def deliver_all(
    siem: Siem, table: dict[str, Any], tmp_path: Path, count: int
) -> tuple[list[dict[str, Any]], list[Received], CefSyslogSink]:
    """Append the events to a WAL, run the sink until it is delivered, wait for the receiver;
    return the envelopes sent and the messages received."""
    wal = open_wal(tmp_path / "wal")
    await wal.append(wal_entries(count))
    await wal.close()
    sink = build(table)
    driver = SinkDriver(sink, tmp_path)
    reader = wal.readers[SINK]
    sent: list[dict[str, Any]] = []

    class Recording:
        async def read(self, max_bytes: int) -> Any:
            read = await reader.read(max_bytes)
            if read is not None:
                sent.extend(orjson.loads(e) for e in read.envelopes)
            return read

        async def ack(self, end: Any) -> None:
            await reader.ack(end)

    await driver.run(Recording(), wal.epoch)
    assert driver.counters["events"] == len(sent)
    received = await siem.wait_for(len(sent))
    return sent, received, sink


def assert_received_once_each(
    sent: list[dict[str, Any]], received: list[Received], tmp_path: Path
) -> list[dict[str, Any]]:
    """Every event arrived once, in order, and lognormalizer reads from each the fields the
    envelope holds; returns the parsed CEF."""
    parsed = parse_cef([cef_of(message) for message in received], tmp_path)
    assert all(cef is not None for cef in parsed), [
        m.msg for m, c in zip(received, parsed, strict=True) if c is None
    ][:3]
    ids = [cef["Extensions"]["externalId"] for cef in parsed if cef is not None]
    assert ids == [envelope["id"] for envelope in sent]
    for envelope, cef in zip(sent, parsed, strict=True):
        assert cef is not None
        extension = cef["Extensions"]
        expected = expected_fields(envelope)
        assert {key: extension.get(key) for key in expected} == expected
    return [cef for cef in parsed if cef is not None]


@pytest.mark.parametrize(
    ("keys", "header"),
    [
        ({}, ("shipper-1", "shipper")),
        ({"framing": "lf"}, ("shipper-1", "shipper")),
        (
            {"format": "rfc3164", "app_name": "cef-feed", "hostname": "gw.example"},
            ("gw.example", "cef-feed"),
        ),
    ],
    ids=["5424-octets", "5424-lf", "3164-octets"],
)
async def test_every_event_reaches_rsyslog_once_over_tcp(
    peers: None, tmp_path: Path, keys: dict[str, Any], header: tuple[str, str]
) -> None:
    """Over TCP, every event (seed and SafeClaw records with tricky values, an alert, a
    malformed input) reaches rsyslog once, in order, with the configured header, and reads back
    through lognormalizer with the envelope's values."""
    siem = Siem(tmp_path / "siem")
    await siem.start()
    try:
        sent, received, sink = await deliver_all(
            siem, sink_table(siem.port, **keys), tmp_path, count=60
        )
    finally:
        siem.stop()
    assert len(received) == len(sent), siem.diagnostics()
    assert {(m.hostname, m.app_name, m.facility) for m in received} == {(*header, "auth")}
    parsed = assert_received_once_each(sent, received, tmp_path)
    assert parsed[-2]["Severity"] == "9"  # the chain alert
    assert parsed[-1]["SignatureID"] == "shipper.malformed"
    assert {m.severity for m in received} >= {"info", "warning", "crit"}
    assert sink.counters["reconnects"] == 0
    assert sink.counters["messages_written"] == len(sent)


@pytest.mark.parametrize("driver", ["gtls", "ossl"])
async def test_every_event_reaches_rsyslog_once_over_mutual_tls(
    peers: None, tmp_path: Path, tls_files: TlsFiles, driver: str
) -> None:
    """Over TLS, the sink verifies rsyslog's certificate against the configured CA and name and
    presents its client certificate, which rsyslog requires; every event arrives once."""
    needs_rsyslogd(driver)
    siem = Siem(tmp_path / "siem", tls=tls_files, driver=driver)
    await siem.start()
    tls = {
        "ca": str(tls_files.ca_pem),
        "cert": str(tls_files.client_pem),
        "key": str(tls_files.client_key),
        "server_name": "localhost",
    }
    try:
        sent, received, _ = await deliver_all(
            siem, sink_table(siem.port, transport="tls", tls=tls), tmp_path, count=30
        )
    finally:
        siem.stop()
    assert len(received) == len(sent), siem.diagnostics()
    assert_received_once_each(sent, received, tmp_path)


async def test_a_receiver_with_an_untrusted_certificate_gets_nothing(
    peers: None, tmp_path: Path, tls_files: TlsFiles
) -> None:
    """A receiver whose certificate the configured CA did not sign is never written to: the
    delivery is unavailable and says the certificate is not trusted."""
    siem = Siem(tmp_path / "siem", tls=tls_files)
    await siem.start()
    other = tmp_path / "other-ca.pem"
    tls_files.other_ca.cert_pem.write_to_path(str(other))
    sink = build(
        sink_table(siem.port, transport="tls", tls={"ca": str(other), "server_name": "localhost"})
    )
    try:
        await sink.open("e")
        with pytest.raises(DestinationUnavailable, match="certificate is not trusted"):
            await sink.deliver(Batch.of(raw_envelopes([{"action": "a"}])))
    finally:
        await sink.close()
        siem.stop()
    assert siem.received() == []
    assert sink.counters["messages_written"] == 0


@pytest.mark.parametrize("driver", ["gtls", "ossl"])
async def test_a_receiver_requiring_a_client_certificate_is_not_written_to_without_one(
    peers: None, tmp_path: Path, tls_files: TlsFiles, driver: str
) -> None:
    """A receiver that requires a client certificate and closes the connection after the TLS
    handshake (rsyslog with GnuTLS checks it then) is not written to: each delivery fails as
    unavailable, saying a client certificate may be missing, and nothing is counted as written."""
    needs_rsyslogd(driver)
    siem = Siem(tmp_path / "siem", tls=tls_files, driver=driver)
    await siem.start()
    tls = {"ca": str(tls_files.ca_pem), "server_name": "localhost"}
    sink = build(sink_table(siem.port, transport="tls", tls=tls))
    try:
        await sink.open("e")
        for _ in range(2):
            with pytest.raises(DestinationUnavailable, match="client certificate"):
                await sink.deliver(Batch.of(raw_envelopes([{"action": "a"}])))
    finally:
        await sink.close()
        siem.stop()
    assert siem.received() == []
    assert sink.counters["messages_written"] == 0
    assert sink.counters["connect_failures"] == 2


async def test_receiver_restart_mid_stream_loses_nothing_and_is_counted(
    peers: None, tmp_path: Path
) -> None:
    """rsyslog stops and starts again between batches: the sink finds the connection closed
    before writing into it, retries while the receiver is down, reconnects, and every event
    arrives once; the counters say a connection was lost and one reconnect was made."""
    siem = Siem(tmp_path / "siem")
    await siem.start()
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    sink = build(sink_table(siem.port))
    driver = SinkDriver(sink, tmp_path)
    registry = Registry()
    driver.register_metrics(registry)
    batches = [wal_entries(10)[:20], wal_entries(10)[:20], wal_entries(10)[:20]]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, reader, wal.epoch)
            await wal.append(batches[0])
            await reader.acked_to(wal.committed)
            assert len(await siem.wait_for(20)) == 20
            siem.stop()  # closes the sink's connection
            await wal.append(batches[1])
            await wait_until(lambda: driver.counters["retries"] >= 2)
            await siem.start()
            await reader.acked_to(wal.committed)
            await wal.append(batches[2])
            await reader.acked_to(wal.committed)
            await wal.close()
        received = await siem.wait_for(60)
    finally:
        siem.stop()
    parsed = parse_cef([cef_of(message) for message in received], tmp_path)
    ids = [cef["Extensions"]["externalId"] for cef in parsed if cef is not None]
    assert len(ids) == 60, siem.diagnostics()
    assert len(set(ids)) == 60
    assert sink.counters["connections_lost"] == 1
    assert sink.counters["reconnects"] == 1
    assert sink.counters["connect_failures"] >= 1
    snapshot = registry.snapshot()
    assert "sink_reconnects" in snapshot["metrics"]


def position(text: str) -> Position:
    segment, offset = text.split("-")
    return Position(int(segment), int(offset))


class Recorded(Watched):
    """A watched reader that also records the id of every event the driver read."""

    def __init__(self, reader: WalReader) -> None:
        super().__init__(reader)
        self.ids: list[Position] = []

    async def read(self, max_bytes: int) -> ReadBatch | None:
        read = await super().read(max_bytes)
        if read is not None:
            self.ids.extend(position_of(envelope) for envelope in read.envelopes)
        return read


async def test_receiver_stopped_while_the_sink_writes(
    peers: None, tmp_path: Path, logs: LogCapture
) -> None:
    """rsyslog stops while the sink writes a stream of events and starts again: the sink
    reconnects and sends the rest; no event arrives twice, and any event missing is one written
    on the connection that broke (the documented loss: bytes the receiver never read), as
    logged with that connection's range."""
    siem = Siem(tmp_path / "siem")
    await siem.start()
    wal = open_wal(tmp_path / "wal")
    reader = Recorded(wal.readers[SINK])
    sink = build(sink_table(siem.port))
    driver = SinkDriver(sink, tmp_path)
    chunk = wal_entries(50)  # 102 events
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, reader, wal.epoch)
            for _ in range(200):
                await wal.append(chunk)
            await wait_until(lambda: len(siem.received()) >= 2000, 60)
            siem.stop()
            await wait_until(lambda: sink.counters["connections_lost"] >= 1)
            await siem.start()
            await reader.acked_to(wal.committed)
            await wal.close()
        last = f"externalId={reader.ids[-1]}"
        await wait_until(lambda: any(last in m.msg for m in siem.received()), 60)
        received = siem.received()
    finally:
        siem.stop()
    parsed = parse_cef([cef_of(message) for message in received], tmp_path)
    ids = [position(cef["Extensions"]["externalId"]) for cef in parsed if cef is not None]
    assert len(ids) == len(received)
    assert len(set(ids)) == len(ids), "an event arrived twice"
    lost = logs.entries("cef_syslog_connection_lost")
    assert len(lost) == sink.counters["connections_lost"]
    assert len(lost) >= 1
    assert sink.counters["reconnects"] == len(lost)
    at_risk = [
        (position(entry["written_first"]), position(entry["written_last"]))
        for entry in lost
        if entry["written_first"] is not None
    ]
    missing = sorted(set(reader.ids) - set(ids))
    assert all(any(first <= p <= last for first, last in at_risk) for p in missing), (
        missing[:5],
        at_risk,
    )
    assert ids[-1] == reader.ids[-1]


class BreakingStream:
    """A connection that takes ``good`` writes, then breaks (what a receiver that resets does
    to the writer); ``taken`` is every byte it took."""

    def __init__(self, taken: bytearray, good: int) -> None:
        self.taken = taken
        self.good = good

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.good == 0:
            raise trio.BrokenResourceError("connection reset by peer")
        self.good -= 1
        self.taken += data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class ScriptedSink(CefSyslogSink):
    """The sink on scripted connections: the first breaks after two writes, the next ones
    hold."""

    def __init__(self, config: CefSyslogSinkConfig) -> None:
        super().__init__(config)
        self.taken = bytearray()
        self.connections = 0

    async def _connect(self) -> None:
        self.connections += 1
        self._stream = BreakingStream(self.taken, 2 if self.connections == 1 else 1 << 30)  # type: ignore[assignment]
        self._connected()

    async def _peer_closed(self) -> bool:
        return False


async def test_a_connection_broken_mid_batch_resumes_after_the_last_write(tmp_path: Path) -> None:
    """When a write fails part-way through a batch, the retry sends the batch from the first
    message not yet written, so the messages written before the break are not sent twice; the
    break and the reconnect are counted."""
    sink = ScriptedSink(config_of(sink_table(514)))
    sink.retry_policy = FAST
    wal = open_wal(tmp_path / "wal")
    await wal.append(wal_entries(300))  # 602 events: several writes of WRITE_BYTES
    await wal.close()
    driver = SinkDriver(sink, tmp_path)
    await driver.run(wal.readers[SINK], wal.epoch)
    framer = OctetCountingFramer(1 << 20)
    frames = framer.feed(bytes(sink.taken))
    ids = [re.search(rb"externalId=(\S+)", frame).group(1) for frame in frames]  # type: ignore[union-attr, arg-type]
    assert len(ids) == 602
    assert len(set(ids)) == 602
    assert driver.counters["retries"] == 1
    assert driver.counters["already_delivered"] > 0
    assert (sink.counters["connections_lost"], sink.counters["reconnects"]) == (1, 1)


@pytest.mark.usefixtures("processes")
async def test_the_daemon_forwards_verified_records_and_counts_into_its_registry(
    peers: None, tmp_path: Path, logs: LogCapture
) -> None:
    """The daemon with a cef_syslog sink beside its archive forwards each chained record once,
    with the chain's verdict (cs6) and the record's hash (cs5); the sink's own counters are in
    the metrics of its shutdown entry."""
    siem = Siem(tmp_path / "siem")
    await siem.start()
    raw = file_sink_config(tmp_path)
    raw["sinks"]["siem"] = sink_table(siem.port)
    shutdown = Shutdown()
    lines = chain_lines(40)
    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
            address = bound["agents"][0]
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(b"".join(lines))
            received = await siem.wait_for(40)
            shutdown.request("test")
    finally:
        siem.stop()
    assert len(received) == 40, siem.diagnostics()
    parsed = parse_cef([cef_of(message) for message in received], tmp_path)
    extensions = [cef["Extensions"] for cef in parsed if cef is not None]
    assert [e["cn1"] for e in extensions] == [str(n) for n in range(1, 41)]
    assert {e["cs6"] for e in extensions[1:]} == {"ok"}
    assert [e["cs5"] for e in extensions] == [orjson.loads(line)["hash"] for line in lines]
    archived_ids = [orjson.loads(line)["id"] for line in archive_lines(tmp_path / "archive")]
    assert [e["externalId"] for e in extensions] == archived_ids
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["sink"]["siem"]["messages_written"] == 40
    assert complete["metrics"]["sink"]["siem"]["events"] == 40


async def test_redacted_fields_leave_as_keyed_hashes(tmp_path: Path) -> None:
    """With ``redact``, the CEF line carries the keyed hash of a hashed field and nothing of a
    removed one; the record's own hash is sent as it is."""
    config = config_of(
        sink_table(
            514, redact={"hash": ["record.userId"], "remove": ["record.reason"], "key": "k" * 32}
        )
    )
    sink = ScriptedSink(config)
    wal = open_wal(tmp_path / "wal")
    await wal.append(wal_entries(3)[:6])
    await wal.close()
    await SinkDriver(sink, tmp_path, redact=config.redact).run(wal.readers[SINK], wal.epoch)
    text = bytes(sink.taken).decode()
    assert text.count("duser=hmac-sha256:") == 3
    for value in TRICKY[:3]:
        assert f"duser={value}" not in text
    assert " reason=" not in text
    assert text.count(" cs5=sha256:") == 3


async def test_a_crash_before_the_acknowledgement_sends_that_batch_again_and_nothing_else(
    peers: None, tmp_path: Path
) -> None:
    """A sink that dies after writing a batch but before the driver acknowledged it sends that
    batch again at the next start, with the same externalIds, and nothing it had acknowledged."""
    siem = Siem(tmp_path / "siem")
    await siem.start()
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    first, second = wal_entries(10)[:20], wal_entries(10)[:20]
    try:
        with trio.CancelScope() as scope:
            sink = CrashAfterDelivery(build(sink_table(siem.port)), scope, deliveries=2)
            async with trio.open_nursery() as nursery:
                await nursery.start(SinkDriver(sink, tmp_path).run, reader, wal.epoch)
                await wal.append(first)
                await reader.acked_to(wal.committed)
                await wal.append(second)
                await trio.sleep_forever()  # until the sink dies after its second delivery
        wal = await reopen(wal)
        await wal.close()
        await SinkDriver(build(sink_table(siem.port)), tmp_path).run(wal.readers[SINK], wal.epoch)
        received = await siem.wait_for(60)
    finally:
        siem.stop()
    parsed = parse_cef([cef_of(message) for message in received], tmp_path)
    ids = [cef["Extensions"]["externalId"] for cef in parsed if cef is not None]
    assert len(ids) == 60, siem.diagnostics()
    assert len(set(ids[:40])) == 40
    assert ids[40:] == ids[20:40]  # the unacknowledged batch, once more
