"""Hostile input against the whole daemon, on every path in: JSON over TCP and mutual TLS, syslog
over TCP, TLS, UDP and a unix datagram socket. Whatever arrives, each input gets one counted
outcome in the archive and the daemon carries on; a defect inside shipper costs one event or one
connection, never the daemon."""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shipper.chain
from shipper.chain_stage import ChainStage
from shipper.codecs.canonical import canonicalize
from shipper.codecs.jsonlines import MAX_DEPTH, is_blank
from shipper.config import Address, parse_config
from shipper.events import Event
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources.json_tls import JsonTlsSource
from shipper.sources.syslog import SyslogSource
from tests.conftest import LogCapture, TlsFiles, archive_lines, wait_until

#: The record that ended the daemon: deep nesting around a float, within orjson's own limit.
REPORTED = (
    b'{"agentId":"x","sequence":1,"prevHash":"","hash":"sha256:00","d":'
    + b"[" * 1000
    + b"1.0"
    + b"]" * 1000
    + b"}"
)
SYSLOG_HEADER = b"<134>1 2026-11-23T10:45:23.102Z agent-host-7 openclaw 811 audit - "
PATHS = ("json", "json_tls", "syslog_tcp", "syslog_tls", "syslog_udp", "syslog_unix")


def hostile_config(root: Path, tls: TlsFiles) -> dict[str, Any]:
    """One source per path in, all into one file archive."""
    server_tls = {
        "cert": str(tls.server_pem),
        "key": str(tls.server_key),
        "client_ca": str(tls.ca_pem),
    }
    return {
        "data_dir": str(root / "var"),
        "shutdown_timeout": "10s",
        "sources": {
            "json": {"type": "json_tls", "address": "127.0.0.1:0"},
            "json_tls": {"type": "json_tls", "address": "127.0.0.1:0", "tls": server_tls},
            "syslog_tcp": {"type": "syslog", "mode": "tcp", "address": "127.0.0.1:0"},
            "syslog_tls": {
                "type": "syslog",
                "mode": "tls",
                "address": "127.0.0.1:0",
                "tls": server_tls,
            },
            "syslog_udp": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:0"},
            "syslog_unix": {"type": "syslog", "mode": "unix", "path": str(root / "log.sock")},
        },
        "sinks": {"archive": {"type": "file", "path": str(root / "archive")}},
    }


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client TLS context trusting the test CA and presenting the test client certificate."""
    context = ssl.create_default_context(cafile=str(tls.ca_pem))
    context.load_cert_chain(str(tls.client_pem), str(tls.client_key))
    return context


Sender = Callable[[list[bytes]], Awaitable[int]]


def senders(bound: dict[str, Any], root: Path, tls: TlsFiles) -> dict[str, Sender]:
    """Per path, a function that sends payloads (one frame or datagram each) and returns how many
    inputs it sent (JSON lines that are blank carry nothing and are not sent)."""

    async def stream(address: Address, data: bytes, secure: bool) -> None:
        tcp = await trio.open_tcp_stream(address.host, address.port)
        out: trio.abc.Stream = tcp
        if secure:
            out = trio.SSLStream(tcp, client_context(tls), server_hostname="127.0.0.1")
        async with out:
            await out.send_all(data)

    def lines(payloads: list[bytes]) -> list[bytes]:
        frames = [p.replace(b"\n", b" ") for p in payloads]
        return [frame for frame in frames if not is_blank(frame.rstrip(b"\r"))]

    def messages(payloads: list[bytes]) -> list[bytes]:
        return [SYSLOG_HEADER + payload for payload in payloads]

    def json_path(name: str, secure: bool) -> Sender:
        async def send(payloads: list[bytes]) -> int:
            frames = lines(payloads)
            if frames:
                await stream(bound[name][0], b"".join(f + b"\n" for f in frames), secure)
            return len(frames)

        return send

    def syslog_stream(name: str, secure: bool) -> Sender:
        async def send(payloads: list[bytes]) -> int:
            framed = b"".join(b"%d %s" % (len(m), m) for m in messages(payloads))
            if framed:
                await stream(bound[name][0], framed, secure)
            return len(payloads)

        return send

    def datagrams(family: socket.AddressFamily, target: Any) -> Sender:
        async def send(payloads: list[bytes]) -> int:
            with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
                for message in messages(payloads):
                    await sock.sendto(message, target)
            return len(payloads)

        return send

    udp = bound["syslog_udp"][0]
    return {
        "json": json_path("json", False),
        "json_tls": json_path("json_tls", True),
        "syslog_tcp": syslog_stream("syslog_tcp", False),
        "syslog_tls": syslog_stream("syslog_tls", True),
        "syslog_udp": datagrams(socket.AF_INET, (udp.host, udp.port)),
        "syslog_unix": datagrams(socket.AF_UNIX, str(root / "log.sock")),
    }


def by_source(root: Path) -> dict[str, list[dict[str, Any]]]:
    """The archived envelopes, per source id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for line in archive_lines(root / "archive"):
        envelope = orjson.loads(line)
        found.setdefault(envelope["source"]["id"], []).append(envelope)
    return found


def finish_record(path: str) -> bytes:
    """A plain, well-formed record that must still be archived after the hostile ones."""
    return orjson.dumps({"agentId": f"after-{path}", "action": "still.here"})


async def run_paths(
    root: Path, tls: TlsFiles, logs: LogCapture, payloads: list[bytes]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Send ``payloads`` over every path, then one well-formed record each; stop the daemon once
    everything is archived. The archive per source, and the final metrics."""
    logs.stream.seek(0)  # one capture serves every hypothesis example: start it afresh
    logs.stream.truncate()
    shutdown = Shutdown()
    expected: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(hostile_config(root, tls)), shutdown)
        sends = senders(bound, root, tls)
        for path in PATHS:
            expected[path] = await sends[path](payloads)
            expected[path] += await sends[path]([finish_record(path)])

        def arrived() -> bool:
            found = by_source(root)
            return all(
                any(e.get("agent") == f"after-{path}" for e in found.get(path, ()))
                for path in PATHS
            )

        await wait_until(arrived, limit=60)
        shutdown.request("test")
    (complete,) = logs.entries("shutdown_complete")
    found = by_source(root)
    metrics = complete["metrics"]
    archived = sum(len(found.get(path, ())) for path in PATHS)
    dropped = metrics["chain"].get("duplicates_dropped", 0)
    assert archived + dropped == sum(expected.values())
    return found, metrics


@pytest.fixture
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """A fresh directory per call (one per hypothesis example); unix socket paths stay short."""
    return lambda: tmp_path_factory.mktemp("h")


async def test_the_reported_record_is_malformed_on_every_path(
    sandbox: Callable[[], Path], tls_files: TlsFiles, logs: LogCapture
) -> None:
    """The deep record that ended the daemon becomes one malformed event per path, naming the
    depth limit, and each path still archives the next record."""
    found, metrics = await run_paths(sandbox(), tls_files, logs, [REPORTED])
    for path in PATHS:
        first, after = found[path]
        assert first["malformed"]["reason"] == (
            f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
        )
        assert "chain" not in first
        assert after["agent"] == f"after-{path}"
    assert metrics["chain"].get("verify_errors", 0) == 0
    assert not logs.entries("connection_failed")


async def test_duplicate_names_are_malformed_and_never_identity_checked(
    sandbox: Callable[[], Path], tls_files: TlsFiles, logs: LogCapture
) -> None:
    """A record naming agentId twice is archived as malformed on every path, naming the key, and
    claims nothing (no agent, no chain, no identity verdict)."""
    record = b'{"agentId":"billing-agent-1","action":"x","agentId":"agent-host-7"}'
    found, _metrics = await run_paths(sandbox(), tls_files, logs, [record])
    for path in PATHS:
        first = found[path][0]
        assert first["malformed"]["reason"].startswith('duplicate member name "agentId"')
        assert "agent" not in first
        assert "identity_mismatch" not in first


# Hostile structures: deep and wide nesting, repeated names, numbers at and past every limit,
# raw bytes, and fields of the seed chain profile with every wrong type.
_depth = st.integers(1, 1100)
_deep = st.builds(
    lambda depth, opener, leaf: (
        (opener * depth) + leaf + (b"]" if opener == b"[" else b"}") * depth
    ),
    _depth,
    st.sampled_from([b"[", b'{"a":']),
    st.sampled_from([b"1.0", b"1", b'"x"', b"{}", b"1e-7", b"-0.0", b"[]"]),
).map(
    lambda inner: (
        b'{"agentId":"deep","sequence":1,"prevHash":"","hash":"sha256:0","d":' + inner + b"}"
    )
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["\ud7ff", "\ue000", "\U0001f600", "\\", '"', "\x00"]),
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
_chained = st.fixed_dictionaries(
    {"agentId": st.one_of(st.just("agent-h"), _values)},
    optional={"sequence": _values, "hash": _values, "prevHash": _values, "d": _values},
).map(lambda record: orjson.dumps(record))
_duplicates = st.builds(
    lambda name, first, second, nested: (
        (b'{"x":{"%s":%s,"%s":%s}}' if nested else b'{"%s":%s, "%s" :%s}')
        % (name, first, name, second)
    ),
    st.sampled_from([b"agentId", b"sequence", b"a", b"\\u0061gentId"]),
    _values.map(orjson.dumps),
    _values.map(orjson.dumps),
    st.booleans(),
)
_numbers = st.sampled_from(
    [b"9" * 400, b"-" + b"9" * 30, b"1e308", b"1e309", b"1e-400", b"0.0000015", b"2e21"]
).map(lambda number: b'{"agentId":"num","sequence":1,"n":' + number + b"}")
_wide = st.integers(1, 3000).map(lambda n: b'{"a":[' + b",".join([b"[[]]"] * n) + b"]}")
HOSTILE = st.one_of(_deep, _chained, _duplicates, _numbers, _wide, st.binary(max_size=300))


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(HOSTILE, min_size=1, max_size=12))
async def test_hostile_structures_get_one_outcome_each_on_every_path(
    sandbox: Callable[[], Path], tls_files: TlsFiles, logs: LogCapture, payloads: list[bytes]
) -> None:
    """Any mix of hostile structures sent over every path yields one archived event per input
    (or a counted duplicate), every malformed one with a reason, no defect logged, and the daemon
    archives the next record."""
    found, metrics = await run_paths(sandbox(), tls_files, logs, payloads)
    for path in PATHS:
        for envelope in found[path]:
            assert ("record" in envelope) != ("malformed" in envelope)
            if "malformed" in envelope:
                assert envelope["malformed"]["reason"]
    assert metrics["chain"].get("verify_errors", 0) == 0
    assert not logs.entries("connection_failed")
    assert not logs.entries("event_encode_failed")


async def test_a_defect_while_verifying_costs_only_that_event(
    sandbox: Callable[[], Path],
    tls_files: TlsFiles,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception raised inside the verifier for one record archives that record unverified with
    a critical alert and a logged cause; the records around it are verified as usual."""
    real = canonicalize

    def failing(value: Any) -> bytes:
        if value.get("boom"):
            raise RuntimeError("injected defect")
        return real(value)

    monkeypatch.setattr(shipper.chain, "canonicalize", failing)
    records = [
        orjson.dumps(
            {"agentId": "a", "sequence": n, "prevHash": "", "hash": "sha256:0", "boom": n == 2}
        )
        for n in (1, 2, 3)
    ]
    found, metrics = await run_paths(sandbox(), tls_files, logs, records)
    for path in PATHS:
        statuses = [e.get("chain", {}).get("status") for e in found[path]]
        assert len(statuses) == 4
    alerts = [e for e in found["shipper"] if e["record"].get("status") == "verify_failed"]
    assert len(alerts) == len(PATHS)
    assert alerts[0]["record"]["severity"] == "critical"
    assert "injected defect" in alerts[0]["record"]["detail"]
    assert metrics["chain"]["verify_errors"] == len(PATHS)
    failed = logs.entries("chain_verify_failed")
    assert failed
    assert "RuntimeError: injected defect" in failed[0]["error"]


async def test_a_defect_while_encoding_keeps_the_event_as_malformed(
    sandbox: Callable[[], Path],
    tls_files: TlsFiles,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event whose envelope cannot be encoded (a defect: in its source, then again in the
    writer) is archived as malformed with its record's bytes and the cause; its neighbours are
    archived as usual."""
    real = Event.envelope_parts

    def failing(self: Event) -> tuple[bytes, bytes]:
        if self.record_json is not None and b'"boom"' in self.record_json:
            raise TypeError("injected defect")
        return real(self)

    monkeypatch.setattr(Event, "envelope_parts", failing)
    found, _metrics = await run_paths(sandbox(), tls_files, logs, [b'{"boom":1}'])
    for path in PATHS:
        first = found[path][0]
        assert "injected defect" in first["malformed"]["reason"]
        assert b'"boom"' in base64.b64decode(first["malformed"]["raw_b64"])
    assert logs.entries("event_encode_failed")


async def test_a_defect_in_one_connection_ends_only_that_connection(
    sandbox: Callable[[], Path],
    tls_files: TlsFiles,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler that raises for one line ends that connection, logged with its cause; another
    connection's records are archived."""
    root = sandbox()
    real = JsonTlsSource._decode_frame

    def failing(self: JsonTlsSource, frame: bytes, source: dict[str, Any], at: str) -> Event:
        if b"boom" in frame:
            raise RuntimeError("injected defect")
        return real(self, frame, source, at)

    monkeypatch.setattr(JsonTlsSource, "_decode_frame", failing)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            run_daemon, parse_config(hostile_config(root, tls_files)), shutdown
        )
        sends = senders(bound, root, tls_files)
        await sends["json"]([b'{"boom":1}'])
        await wait_until(lambda: bool(logs.entries("connection_failed")))
        await sends["json"]([finish_record("json")])
        await wait_until(
            lambda: any(e.get("agent") == "after-json" for e in by_source(root).get("json", ()))
        )
        shutdown.request("test")
    (failed,) = logs.entries("connection_failed")
    assert "injected defect" in failed["error"]
    assert [e["agent"] for e in by_source(root)["json"]] == ["after-json"]


async def test_a_defect_while_decoding_a_datagram_costs_only_that_datagram(
    sandbox: Callable[[], Path],
    tls_files: TlsFiles,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decoder that raises for one datagram (UDP or unix) archives it as malformed with the
    cause and a logged traceback; the source goes on with the next datagram."""
    real = SyslogSource._datagram

    def failing(self: SyslogSource, data: bytes, *args: Any) -> list[Event]:
        if b"boom" in data:
            raise RuntimeError("injected defect")
        return real(self, data, *args)

    monkeypatch.setattr(SyslogSource, "_datagram", failing)
    found, _metrics = await run_paths(sandbox(), tls_files, logs, [b'{"boom":1}'])
    for path in ("syslog_udp", "syslog_unix"):
        first, after = found[path]
        assert "injected defect" in first["malformed"]["reason"]
        assert b"boom" in base64.b64decode(first["malformed"]["raw_b64"])
        assert after["agent"] == f"after-{path}"
    failed = logs.entries("datagram_failed")
    assert failed
    assert "RuntimeError: injected defect" in failed[0]["error"]


async def test_a_defect_while_checkpointing_costs_only_that_checkpoint(
    sandbox: Callable[[], Path],
    tls_files: TlsFiles,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint that raises something other than an I/O error (a state orjson cannot write,
    say) is logged with its cause and counted; the daemon goes on archiving."""

    def failing(self: ChainStage, epoch: str, position: object) -> int:
        raise TypeError("Integer exceeds 64-bit range")

    monkeypatch.setattr(ChainStage, "checkpoint", failing)
    found, metrics = await run_paths(sandbox(), tls_files, logs, [b'{"agentId":"a"}'])
    assert all(found[path] for path in PATHS)
    failed = logs.entries("chain_checkpoint_failed")
    assert failed
    assert failed[0]["error"] == "TypeError: Integer exceeds 64-bit range"
    assert metrics["chain"]["checkpoint_errors"] >= 2  # at start and at shutdown
