"""The json_tls source: framing and decoding on memory streams, then real TCP and TLS sockets."""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from shipper.config import Address, TlsServerConfig
from shipper.events import Event
from shipper.metrics import Registry, value
from shipper.sources._net import Connection, StreamServer
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig
from tests.conftest import TlsFiles, drain, wait_until

PEER = "10.0.0.7:51234"
RECORD = b'{"agentId":"customer-service-agent-03","sequence":1,"action":"database.query"}'


def make_source(
    **settings: object,
) -> tuple[JsonTlsSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A json_tls source on an ephemeral loopback port and the channel it sends into."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), **settings)  # type: ignore[arg-type]
    send, receive = trio.open_memory_channel[list[Event]](1000)
    return JsonTlsSource(config, send), receive


async def feed(source: JsonTlsSource, chunks: Sequence[bytes]) -> None:
    """Run the source's handler on a memory stream fed ``chunks``, then EOF."""
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(source.server, server, PEER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        for chunk in chunks:
            await client.send_all(chunk)
        await client.aclose()


def payloads(events: Sequence[Event]) -> list[bytes | str]:
    """Each event's record bytes, or its malformed reason."""
    out: list[bytes | str] = []
    for event in events:
        if event.record_json is not None:
            out.append(event.record_json)
        else:
            assert event.malformed is not None
            out.append(event.malformed.reason)
    return out


async def test_records_become_events_with_agent_and_exact_bytes() -> None:
    """Each JSON object line becomes one event carrying its exact bytes, agent and peer."""
    source, receive = make_source()
    spaced = b'{ "agentId" : "a2",  "sequence": 2 }'
    await feed(source, [RECORD + b"\n" + spaced + b"\r\n"])
    events = drain(receive)
    assert payloads(events) == [RECORD, spaced]
    assert [e.agent for e in events] == ["customer-service-agent-03", "a2"]
    assert events[0].source == {"id": "agents", "kind": "json_tls", "peer": PEER}
    envelope = orjson.loads(events[0].encode("x-1"))
    assert envelope["record"] == orjson.loads(RECORD)


async def test_byte_by_byte_gives_the_same_events_as_whole() -> None:
    """Feeding the stream one byte at a time yields the same events as one write."""
    stream = RECORD + b"\nnot json\n\n" + RECORD + b"\n"
    whole, whole_rx = make_source()
    await feed(whole, [stream])
    split, split_rx = make_source()
    await feed(split, [stream[i : i + 1] for i in range(len(stream))])
    assert payloads(drain(split_rx)) == payloads(drain(whole_rx))


async def test_bad_lines_become_malformed_events_and_blank_lines_are_counted() -> None:
    """Non-JSON, non-object and invalid UTF-8 lines each become a counted malformed event."""
    source, receive = make_source()
    await feed(source, [b"hello\n[1,2]\n\n   \n\xff\xfe{}\n" + RECORD + b"\n"])
    events = drain(receive)
    reasons = payloads(events)
    assert isinstance(reasons[0], str)
    assert reasons[0].startswith("invalid JSON: unexpected character")
    assert reasons[1] == "expected a JSON object, got an array"
    assert isinstance(reasons[2], str)
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == RECORD
    assert events[2].malformed is not None
    assert events[2].malformed.raw == b"\xff\xfe{}"
    assert source.counters["malformed"] == 3
    assert source.counters["blank_lines"] == 2
    envelope = orjson.loads(events[0].encode("x-1"))
    assert base64.b64decode(envelope["malformed"]["raw_b64"]) == b"hello"
    assert "record" not in envelope


async def test_oversized_line_keeps_first_4kib_and_connection_carries_on() -> None:
    """A line over max_line_bytes becomes malformed with its first 4 KiB; the next line is read."""
    source, receive = make_source(max_line_bytes=1000)
    huge = b'{"agentId":"x","pad":"' + b"a" * 20000 + b'"}'
    stream = huge + b"\n" + RECORD + b"\n"
    await feed(source, [stream[i : i + 3000] for i in range(0, len(stream), 3000)])
    events = drain(receive)
    assert len(events) == 2
    bad = events[0].malformed
    assert bad is not None
    assert bad.reason == "line longer than max_line_bytes (1000)"
    assert bad.raw == huge[:4096]
    assert bad.size == len(huge)
    assert events[1].record_json == RECORD
    assert source.counters["oversized"] == 1


async def test_last_line_without_newline_is_decoded_at_eof() -> None:
    """A final line that lacks its LF is still an event when the sender closes cleanly."""
    source, receive = make_source()
    await feed(source, [RECORD + b"\n" + RECORD])
    assert payloads(drain(receive)) == [RECORD, RECORD]


async def test_idle_timeout_closes_and_keeps_the_partial_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A silent connection is closed after idle_timeout; its unfinished line is archived as malformed."""
    source, receive = make_source(idle_timeout=30.0, frame_timeout=60.0)
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(source.server, server, PEER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        await client.send_all(RECORD + b"\n" + b'{"agentId":"half')
        await trio.sleep(29)
        assert connection.end_reason == ""
        await trio.sleep(2)
    assert connection.end_reason == "idle_timeout"
    events = drain(receive)
    assert payloads(events) == [RECORD, "incomplete line: connection ended (idle_timeout)"]
    assert events[1].malformed is not None
    assert events[1].malformed.raw == b'{"agentId":"half'
    assert source.counters["idle_timeouts"] == 1


async def test_stop_hands_on_what_was_read_and_ends_the_connection() -> None:
    """Stopping the source ends a live connection after handing on the lines it had read."""
    source, receive = make_source()
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(source.server, server, PEER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        await client.send_all(RECORD + b"\n{")
        await wait_until(lambda: source.counters["events"] == 1)
        source.stop()
    assert connection.end_reason == "shutdown"
    assert payloads(drain(receive)) == [RECORD, "incomplete line: connection ended (shutdown)"]


# --- real sockets --------------------------------------------------------------------------


async def serve(nursery: trio.Nursery, source: JsonTlsSource) -> Address:
    """Start the source's listener; its bound loopback address."""
    bound: list[Address] = await nursery.start(source.run)
    return bound[0]


def client_context(tls: TlsFiles, cert: bool = True, rogue: bool = False) -> ssl.SSLContext:
    """A client TLS context trusting the test CA, presenting a client certificate if asked."""
    context = ssl.create_default_context(cafile=str(tls.ca_pem))
    if rogue:
        context.load_cert_chain(str(tls.rogue_pem), str(tls.rogue_key))
    elif cert:
        context.load_cert_chain(str(tls.client_pem), str(tls.client_key))
    return context


async def send_lines(
    address: Address, data: bytes, context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """Connect (TLS if a context is given), send ``data``; the open stream."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    if context is None:
        await tcp.send_all(data)
        return tcp
    tls = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    await tls.send_all(data)
    return tls


async def test_tcp_socket_delivers_events_with_peer_address() -> None:
    """Records sent over a real TCP connection arrive as events naming the peer's address."""
    source, receive = make_source()
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        stream = await send_lines(address, RECORD + b"\n" + RECORD + b"\n")
        await stream.aclose()
        await wait_until(lambda: source.counters["events"] == 2)
        source.stop()
    events = drain(receive)
    assert payloads(events) == [RECORD, RECORD]
    assert events[0].source["peer"].startswith("127.0.0.1:")
    assert "tls_subject" not in events[0].source


async def test_mutual_tls_puts_the_client_identity_in_the_envelope(tls_files: TlsFiles) -> None:
    """With mTLS, each event carries the verified client certificate's subject and SANs."""
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key, tls_files.ca_pem, True)
    source, receive = make_source(tls=tls)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        stream = await send_lines(address, RECORD + b"\n", client_context(tls_files))
        await wait_until(lambda: source.counters["events"] == 1)
        await stream.aclose()
        source.stop()
    (event,) = drain(receive)
    assert event.record_json == RECORD
    assert event.source["tls_san"] == ["agent-host-7"]
    subject = event.source["tls_subject"]
    assert subject.startswith("CN=agent-host-7,")
    envelope = orjson.loads(event.encode("x-1"))
    assert envelope["source"]["tls_subject"] == subject


@pytest.mark.parametrize("rogue", [False, True], ids=["no-certificate", "untrusted-ca"])
async def test_client_without_a_valid_certificate_is_refused(
    tls_files: TlsFiles, rogue: bool
) -> None:
    """When client certificates are required, a client without a trusted one delivers nothing."""
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key, tls_files.ca_pem, True)
    source, receive = make_source(tls=tls)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        context = client_context(tls_files, cert=False, rogue=rogue)
        tcp = await trio.open_tcp_stream(address.host, address.port)
        async with trio.SSLStream(tcp, context, server_hostname="127.0.0.1") as stream:

            async def exchange() -> None:
                await stream.send_all(RECORD + b"\n")
                # TLS 1.3: the server's refusal reaches the client on its next read.
                while await stream.receive_some(100):
                    pass  # pragma: no cover - the server sends no data
                raise trio.BrokenResourceError("closed without an alert")

            with pytest.raises(trio.BrokenResourceError):
                await exchange()
        await wait_until(lambda: source.counters["refused_handshake_failed"] == 1)
        source.stop()
    assert drain(receive) == []
    assert source.counters["events"] == 0


async def test_tls_without_client_ca_accepts_anonymous_clients(tls_files: TlsFiles) -> None:
    """Plain server TLS accepts clients without certificates and records no identity."""
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key)
    source, receive = make_source(tls=tls)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        stream = await send_lines(address, RECORD + b"\n", client_context(tls_files, cert=False))
        await wait_until(lambda: source.counters["events"] == 1)
        await stream.aclose()
        source.stop()
    (event,) = drain(receive)
    assert "tls_subject" not in event.source


async def test_a_stop_reads_the_tls_records_already_received(tls_files: TlsFiles) -> None:
    """At a stop, every record a TLS client sent before it is handed on, and a connection whose
    handshake is not finished is closed without waiting for it."""
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key, tls_files.ca_pem, True)
    source, receive = make_source(tls=tls, handshake_timeout=3600.0)
    lines = [b'{"agentId":"a","sequence":%d}' % n for n in range(1, 501)]
    context = client_context(tls_files)
    with contextlib.ExitStack() as clients:
        async with trio.open_nursery() as nursery:
            address = await serve(nursery, source)
            silent = socket.create_connection((address.host, address.port))  # sends no hello
            clients.callback(silent.close)
            raw = socket.create_connection((address.host, address.port))
            clients.callback(raw.close)
            # Sent at once (Nagle would hold it until the handshake's last segment is acked):
            # what the test counts on is in the source's receive buffer when the stop comes.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = await trio.to_thread.run_sync(
                partial(context.wrap_socket, raw, server_hostname="127.0.0.1")
            )
            clients.callback(client.close)
            client.sendall(b"\n".join(lines) + b"\n")  # the source runs again at the stop only
            source.stop()
    assert payloads(drain(receive)) == lines
    assert source.counters["connections_refused"] == 0
    assert source.counters["handler_errors"] == 0


async def _accept_nothing(
    server: StreamServer, listener: trio.SocketListener, nursery: Any
) -> None:
    """An accept loop that never accepts: connections wait in the listen backlog."""
    await trio.sleep_forever()


async def test_a_stop_leaves_a_tls_listeners_backlog_alone(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a stop, a TLS listener does not accept the connections waiting in its backlog: their
    clients cannot have sent a record yet (a handshake needs the server's answer first), so
    taking them would cost a handshake each for nothing."""
    monkeypatch.setattr(StreamServer, "_accept_loop", _accept_nothing)
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key, tls_files.ca_pem, True)
    source, _receive = make_source(tls=tls)
    with contextlib.ExitStack() as clients:
        async with trio.open_nursery() as nursery:
            address = await serve(nursery, source)
            waiting = socket.create_connection((address.host, address.port))
            clients.callback(waiting.close)
            waiting.sendall(b"\x16\x03\x01")  # the start of a ClientHello
            source.stop()
    assert source.counters["connections_accepted"] == 0


async def test_connections_past_max_connections_are_refused() -> None:
    """A connection beyond max_connections is closed at once and counted; the first one works."""
    source, receive = make_source(max_connections=1)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        first = await send_lines(address, RECORD + b"\n")
        await wait_until(lambda: source.server.connections == 1)
        second = await trio.open_tcp_stream(address.host, address.port)
        with trio.fail_after(10):
            with contextlib.suppress(trio.BrokenResourceError):  # a reset is a refusal too
                assert await second.receive_some(10) == b""
        assert source.counters["connections_refused"] == 1
        await second.aclose()
        await first.aclose()
        await wait_until(lambda: source.counters["events"] == 1)
        source.stop()
    assert payloads(drain(receive)) == [RECORD]


async def test_counts_and_health_go_to_the_registry_it_is_given() -> None:
    """A source counts into the registry it is given (what it counted before comes along), and
    its health is failing until it listens, ok while it does, and ok, saying so, once it stops."""
    source, receive = make_source()
    await feed(source, [RECORD + b"\n"])
    registry = Registry()
    source.register_metrics(registry)
    assert registry.snapshot()["health"]["source.agents"]["status"] == "failing"
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(source.run)
        assert registry.snapshot()["health"]["source.agents"]["status"] == "ok"
        assert isinstance(address, Address)
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await stream.send_all(RECORD + b"\n" + RECORD + b"\n")
        await wait_until(lambda: source.counters["events"] == 3)
        source.stop()
    snapshot = registry.snapshot()
    assert value(snapshot, "source_events", "agents") == 3
    assert value(snapshot, "source_connections_accepted", "agents") == 1
    assert snapshot["health"]["source.agents"] == {
        "status": "ok",
        "reason": "stopping",
        "since": 0.0,
    }
    assert len(drain(receive)) == 3
