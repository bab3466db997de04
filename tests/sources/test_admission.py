"""Connection admission of the stream sources: frame and handshake timeouts, the per-peer limit,
rate-limited refusal logs, slow senders, and the config keys that set them."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from shipper.config import Address, TlsServerConfig, parse_config
from shipper.errors import ConfigError
from shipper.events import Event
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._listener import ListenerConfig
from shipper.sources._net import Connection, Draining, FramedSource, StreamServer, WouldWait
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig
from shipper.sources.syslog import SyslogSource, SyslogSourceConfig
from tests.conftest import LogCapture, TlsFiles, archive_lines, drain, file_sink_config, wait_until

PEER = "10.0.0.7:51234"
RECORD = b'{"agentId":"customer-service-agent-03","sequence":1,"action":"database.query"}'
SYSLOG = b"<13>1 2026-11-23T10:45:23Z host-7 app - - - " + RECORD


def json_source(
    capacity: int = 1000, **settings: Any
) -> tuple[JsonTlsSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A json_tls source on an ephemeral loopback port and the channel it sends into."""
    config = JsonTlsSourceConfig(id="agents", address=Address("127.0.0.1", 0), **settings)
    send, receive = trio.open_memory_channel[list[Event]](capacity)
    return JsonTlsSource(config, send), receive


def syslog_source(**settings: Any) -> tuple[SyslogSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A TCP syslog source on an ephemeral loopback port and the channel it sends into."""
    config = SyslogSourceConfig(id="syslog", address=Address("127.0.0.1", 0), **settings)
    send, receive = trio.open_memory_channel[list[Event]](1000)
    return SyslogSource(config, send), receive


def server_of(source: FramedSource) -> StreamServer:
    assert source.server is not None
    return source.server


def reasons(events: list[Event]) -> list[bytes | str]:
    """Each event's record bytes, or its malformed reason."""
    out: list[bytes | str] = []
    for event in events:
        if event.malformed is not None:
            out.append(event.malformed.reason)
        else:
            assert event.record_json is not None
            out.append(event.record_json)
    return out


async def serve(nursery: trio.Nursery, source: JsonTlsSource | SyslogSource) -> Address:
    """Start the source's listener; its bound loopback address."""
    bound: list[Address] = await nursery.start(source.run)
    return bound[0]


async def closed_by_server(stream: trio.abc.Stream) -> None:
    """Read until the server closes the connection (an EOF or a reset); fail after 20 s."""
    with trio.fail_after(20), contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(1000):
            pass


# --- frame_timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "frame", "unit"),
    [
        (json_source, RECORD + b"\n", "line"),
        (syslog_source, b"%d %s" % (len(SYSLOG), SYSLOG), "message"),
    ],
    ids=["json-line", "syslog-octet-counted"],
)
async def test_a_frame_trickled_byte_by_byte_is_cut_off_at_frame_timeout(
    autojump_clock: trio.testing.MockClock,
    logs: LogCapture,
    make: Callable[..., tuple[FramedSource, trio.MemoryReceiveChannel[list[Event]]]],
    frame: bytes,
    unit: str,
) -> None:
    """Whole frames may come slower than frame_timeout (idle_timeout applies between frames), but
    a frame whose bytes trickle in is cut off frame_timeout after its first byte, although every
    byte came well within idle_timeout; its partial frame is archived as malformed."""
    source, receive = make(idle_timeout=60.0, frame_timeout=20.0)
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(server_of(source), server, PEER)
    ended = 0.0
    async with trio.open_nursery() as nursery:

        async def handle() -> None:
            nonlocal ended
            await source.handle(connection)
            ended = trio.current_time()
            nursery.cancel_scope.cancel()  # the sender notices no more than a closed socket

        nursery.start_soon(handle)
        for _ in range(3):  # whole frames 25 s apart: slower than frame_timeout, not idle
            await client.send_all(frame)
            await trio.sleep(25)
        start = trio.current_time()
        for byte in range(len(frame)):  # one byte every 5 s: the idle timer never fires
            await client.send_all(frame[byte : byte + 1])
            await trio.sleep(5)
    assert connection.end_reason == "frame_timeout"
    assert 20 <= ended - start < 25
    events = drain(receive)
    assert len(events) == 4
    assert all(event.record_json is not None for event in events[:3])
    assert events[3].malformed is not None
    reason = events[3].malformed.reason
    assert reason.startswith(f"incomplete {unit}: connection ended (frame_timeout)")
    assert events[3].malformed.raw == frame[:4]  # the bytes sent at 0, 5, 10 and 15 s
    assert source.counters["refused_frame_timeout"] == 1
    assert source.counters["connections_refused"] == 1
    (refused,) = logs.entries("connection_refused")
    assert (refused["reason"], refused["peer"]) == ("frame_timeout", PEER)


async def test_time_the_pipeline_holds_the_reader_does_not_count_against_frame_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A partial frame read just before the pipeline blocks for longer than frame_timeout is not
    cut off: only the time spent waiting for the sender counts."""
    source, receive = json_source(capacity=0, idle_timeout=60.0, frame_timeout=20.0)
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(server_of(source), server, PEER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        await client.send_all(RECORD + b"\n" + RECORD[:10])  # a record and a partial one
        await trio.sleep(5)
        await client.send_all(RECORD[10:20])  # 5 s of the 20 used
        await trio.sleep(100)  # the pipeline takes nothing for 100 s
        first = await receive.receive()
        await trio.sleep(10)  # 15 s of waiting for the sender so far
        await client.send_all(RECORD[20:] + b"\n")
        second = await receive.receive()
        await client.aclose()
    assert connection.end_reason == "eof"
    assert reasons(first + second) == [RECORD, RECORD]
    assert source.counters["refused_frame_timeout"] == 0


# --- handshake_timeout -----------------------------------------------------------------------


async def test_a_client_that_never_handshakes_is_refused_at_handshake_timeout(
    autojump_clock: trio.testing.MockClock, logs: LogCapture, tls_files: TlsFiles
) -> None:
    """A TCP connection to a TLS source that sends no handshake is closed after
    handshake_timeout, long before idle_timeout, and counted and logged as a refusal."""
    tls = TlsServerConfig(tls_files.server_pem, tls_files.server_key)
    source, receive = json_source(tls=tls, idle_timeout=300.0, handshake_timeout=10.0)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        start = trio.current_time()
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await closed_by_server(stream)
        assert 10 <= trio.current_time() - start < 11
        source.stop()
    assert source.counters["refused_handshake_timeout"] == 1
    assert source.counters["connections_refused"] == 1
    (refused,) = logs.entries("connection_refused")
    assert refused["reason"] == "handshake_timeout"
    assert refused["peer"].startswith("127.0.0.1:")
    assert drain(receive) == []


# --- max_connections_per_peer ----------------------------------------------------------------


async def test_one_peer_cannot_open_more_than_max_connections_per_peer(logs: LogCapture) -> None:
    """A peer's connection past max_connections_per_peer is refused although the source has room;
    once one of its connections closes, it may open another."""
    source, receive = json_source(max_connections=10, max_connections_per_peer=2)
    server = server_of(source)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        first = await trio.open_tcp_stream(address.host, address.port)
        second = await trio.open_tcp_stream(address.host, address.port)
        await wait_until(lambda: server.connections == 2)
        third = await trio.open_tcp_stream(address.host, address.port)
        async with third:
            await closed_by_server(third)
        assert source.counters["refused_max_connections_per_peer"] == 1
        assert server.connections_from("127.0.0.1") == 2
        await first.aclose()
        await wait_until(lambda: server.connections == 1)
        fourth = await trio.open_tcp_stream(address.host, address.port)
        await fourth.send_all(RECORD + b"\n")
        await wait_until(lambda: source.counters["events"] == 1)
        await fourth.aclose()
        await second.aclose()
        await wait_until(lambda: server.connections == 0)
        source.stop()
    assert reasons(drain(receive)) == [RECORD]
    assert server.connections_from("127.0.0.1") == 0
    (refused,) = logs.entries("connection_refused")
    assert refused["reason"] == "max_connections_per_peer"
    assert refused["detail"] == "2 connections from 127.0.0.1 open"


async def test_over_a_unix_stream_socket_the_peer_is_the_senders_uid(
    tmp_path: Path, logs: LogCapture
) -> None:
    """On a unix stream socket, connections are counted per sending uid (SO_PEERCRED)."""
    path = tmp_path / "s.sock"
    config = SyslogSourceConfig(
        id="local", mode="unix", path=path, socket_type="stream", max_connections_per_peer=1
    )
    send, _receive = trio.open_memory_channel[list[Event]](10)
    source = SyslogSource(config, send)
    server = server_of(source)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.connect(str(path))
            await wait_until(lambda: server.connections == 1)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second:
                second.connect(str(path))
                second.setblocking(False)
                await trio.lowlevel.wait_readable(second)
                with contextlib.suppress(ConnectionResetError):
                    assert second.recv(10) == b""
        source.stop()
    assert source.counters["refused_max_connections_per_peer"] == 1
    (refused,) = logs.entries("connection_refused")
    assert refused["detail"] == f"1 connections from uid {os.getuid()} open"


# --- refusal logs ----------------------------------------------------------------------------


async def test_a_flood_of_refusals_is_logged_ten_times_a_second(
    autojump_clock: trio.testing.MockClock, logs: LogCapture
) -> None:
    """Every refused connection is counted, but at most ten a second are logged, and the next
    line says how many were left out."""
    source, _receive = json_source(max_connections=1)
    server = server_of(source)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        holder = await trio.open_tcp_stream(address.host, address.port)
        await wait_until(lambda: server.connections == 1)
        for _ in range(25):
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await closed_by_server(stream)
        await trio.sleep(1.5)
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await closed_by_server(stream)
        await holder.aclose()
        source.stop()
    assert source.counters["refused_max_connections"] == 26
    lines = logs.entries("connection_refused")
    assert len(lines) == 11
    assert [line["not_logged_since"] for line in lines] == [0] * 10 + [15]
    assert {line["reason"] for line in lines} == {"max_connections"}
    assert lines[-1]["refused_total"] == 26


# --- slow senders ----------------------------------------------------------------------------


async def trickle(stream: trio.abc.Stream, interval: float) -> None:
    """A slowloris sender: one byte of a never-ending line every ``interval`` seconds, until the
    server has closed the connection."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                await stream.send_all(b"x")
                await trio.sleep(interval)


def counter_grew(source: FramedSource, *names: str) -> Callable[[], bool]:
    """A predicate: whether any of the source's counters ``names`` grew since now."""
    before = [source.counters[name] for name in names]
    return lambda: any(source.counters[name] > was for name, was in zip(names, before, strict=True))


async def test_slow_senders_holding_every_slot_cannot_keep_a_new_client_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While slowloris senders trickle bytes into every connection slot, a new client that retries
    once a second gets through within frame_timeout, and its record is handed on."""
    slots = 4
    source, receive = json_source(max_connections=slots, idle_timeout=300.0, frame_timeout=20.0)
    server = server_of(source)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, source)
        for _ in range(slots):
            slow = await trio.open_tcp_stream(address.host, address.port)
            nursery.start_soon(trickle, slow, 5.0)
        await wait_until(lambda: server.connections == slots)
        start = trio.current_time()
        with trio.fail_after(60):  # virtual time; the slots would be held forever otherwise
            while True:
                accepted = source.counters["connections_accepted"]
                answered = counter_grew(source, "connections_accepted", "refused_max_connections")
                client = await trio.open_tcp_stream(address.host, address.port)
                await wait_until(answered)
                if source.counters["connections_accepted"] > accepted:
                    break
                await client.aclose()
                await trio.sleep(1)
        assert trio.current_time() - start <= 21
        async with client:
            await client.send_all(RECORD + b"\n")
        await wait_until(lambda: source.counters["events"] == slots + 1)
        source.stop()
    events = reasons(drain(receive))
    assert events.count(RECORD) == 1
    assert events.count("incomplete line: connection ended (frame_timeout)") == slots
    assert source.counters["refused_frame_timeout"] == slots


async def test_slow_senders_do_not_keep_a_record_out_of_the_archive(
    tmp_path: Path, logs: LogCapture
) -> None:
    """The daemon with every slot taken by slowloris senders still archives a new client's record
    (which retries until it is archived); the slow senders' partial lines are archived too."""
    raw = file_sink_config(tmp_path)
    raw["sources"]["agents"].update(max_connections=2, idle_timeout="1m", frame_timeout="300ms")
    shutdown = Shutdown()

    def archived() -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in archive_lines(tmp_path / "archive")]

    def honest_archived() -> bool:
        return any(e.get("record") == orjson.loads(RECORD) for e in archived())

    def cut_off() -> list[dict[str, Any]]:
        return [e for e in archived() if "malformed" in e]

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        address = bound["agents"][0]
        async with trio.open_nursery() as senders:
            for _ in range(2):
                slow = await trio.open_tcp_stream(address.host, address.port)
                senders.start_soon(trickle, slow, 0.05)
            await wait_until(lambda: len(logs.entries("connection_opened")) == 2)
            with trio.fail_after(20):
                while not honest_archived():
                    with contextlib.suppress(trio.BrokenResourceError):
                        async with await trio.open_tcp_stream(address.host, address.port) as client:
                            await client.send_all(RECORD + b"\n")
                    await trio.sleep(0.05)  # the sender's reconnect delay
            await wait_until(lambda: len(cut_off()) == 2)  # the slow senders were cut off
        shutdown.request("test")
    assert {e["malformed"]["reason"] for e in cut_off()} == {
        "incomplete line: connection ended (frame_timeout)"
    }
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["source"]["agents"]["refused_frame_timeout"] == 2


# --- configuration ---------------------------------------------------------------------------

MINIMAL: dict[str, Any] = {
    "sources": {"a": {"type": "json_tls", "address": "127.0.0.1:6515"}},
    "sinks": {"out": {"type": "file", "path": "var/archive"}},
}


def config_with(**source: Any) -> dict[str, Any]:
    """MINIMAL with source "a" replaced by ``source`` (type json_tls unless given)."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["a"] = {"type": "json_tls", "address": "127.0.0.1:6515", **source}
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    """The problems ``parse_config`` reports for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return [str(problem) for problem in info.value.problems]


@pytest.mark.parametrize(
    "source",
    [
        {"type": "json_tls", "address": "127.0.0.1:6515"},
        {"type": "syslog", "address": "127.0.0.1:6515"},
        {"type": "syslog", "mode": "unix", "path": "/run/s.sock", "socket_type": "stream"},
    ],
    ids=["json_tls", "syslog-tcp", "syslog-unix-stream"],
)
def test_stream_sources_get_the_documented_admission_defaults(source: dict[str, Any]) -> None:
    """Without the keys, a stream source gets frame_timeout 30s, handshake_timeout 10s and 64
    connections per peer."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["a"] = source
    config = parse_config(raw, env={}).sources["a"]
    assert isinstance(config, ListenerConfig)
    assert (config.frame_timeout, config.handshake_timeout) == (30.0, 10.0)
    assert config.max_connections_per_peer == 64


def test_admission_keys_are_converted(tls_files: TlsFiles) -> None:
    """frame_timeout, handshake_timeout and max_connections_per_peer are read and converted."""
    tls = {"cert": str(tls_files.server_pem), "key": str(tls_files.server_key)}
    raw = config_with(
        tls=tls, frame_timeout="1m30s", handshake_timeout="2500ms", max_connections_per_peer=8
    )
    config = parse_config(raw, env={}).sources["a"]
    assert isinstance(config, ListenerConfig)
    assert (config.frame_timeout, config.handshake_timeout) == (90.0, 2.5)
    assert config.max_connections_per_peer == 8


def test_the_per_peer_default_never_exceeds_max_connections() -> None:
    """With max_connections below 64, the per-peer limit defaults to max_connections; a per-peer
    limit above max_connections is refused."""
    config = parse_config(config_with(max_connections=10), env={}).sources["a"]
    assert isinstance(config, ListenerConfig)
    assert config.max_connections_per_peer == 10
    assert problems(config_with(max_connections=10, max_connections_per_peer=11)) == [
        "sources.a.max_connections_per_peer: expected at most max_connections (10), got 11"
    ]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"frame_timeout": 0},
            "sources.a.frame_timeout: expected a duration of at least 0.001s, got 0",
        ),
        (
            {"frame_timeout": "soon"},
            'sources.a.frame_timeout: expected a duration like "5s", "250ms" or "2m", got "soon"',
        ),
        (
            {"max_connections_per_peer": 0},
            "sources.a.max_connections_per_peer: expected an integer from 1 to 1000000, got 0",
        ),
        (
            {"handshake_timeout": "10s"},
            "sources.a.handshake_timeout: expected only with TLS, got no tls table",
        ),
        (
            {"type": "syslog", "handshake_timeout": "10s"},
            'sources.a.handshake_timeout: expected only with mode = "tls", got mode = "tcp"',
        ),
        (
            {"type": "syslog", "mode": "udp", "frame_timeout": "5s"},
            'sources.a.frame_timeout: expected only with a stream mode ("tcp", "tls", or "unix" '
            'with socket_type = "stream"), got mode = "udp"',
        ),
    ],
    ids=["zero", "not-a-duration", "per-peer-zero", "json-no-tls", "syslog-tcp", "udp"],
)
def test_bad_admission_settings_are_reported_at_their_key(
    keys: dict[str, Any], problem: str
) -> None:
    """Durations must be positive, the per-peer limit at least 1, the handshake timeout needs TLS,
    and datagram sources take none of the admission keys."""
    assert problems(config_with(**keys)) == [problem]


def test_a_unix_datagram_source_refuses_the_admission_keys() -> None:
    """A unix datagram source has no connections: max_connections_per_peer is refused there."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["a"] = {
        "type": "syslog",
        "mode": "unix",
        "path": "/run/shipper/s.sock",
        "max_connections_per_peer": 4,
    }
    assert problems(raw) == [
        'sources.a.max_connections_per_peer: expected only with a stream mode ("tcp", "tls", '
        'or "unix" with socket_type = "stream"), got mode = "unix" with socket_type = "datagram"'
    ]


# --- a stop: reading what the socket holds ---------------------------------------------------


def draining_pair() -> tuple[socket.socket, Draining]:
    """A connected pair: the sender's socket, and the other end as a ``Draining`` stream."""
    sender, receiver = socket.socketpair()
    return sender, Draining(trio.SocketStream(trio.socket.from_stdlib_socket(receiver)))


async def test_a_drained_stream_reads_what_the_socket_held_at_the_stop_and_no_more() -> None:
    """After ``drain()``, reads return the bytes the socket held then, and then raise WouldWait
    although more bytes came since (they came after the stop)."""
    sender, stream = draining_pair()
    with sender:
        sender.sendall(b"x" * 1000)
        stream.drain()
        sender.sendall(b"y" * 1000)
        received = [await stream.receive_some(300) for _ in range(4)]
        assert b"".join(received) == b"x" * 1000
        with pytest.raises(WouldWait):
            await stream.receive_some(300)
        await stream.aclose()


async def test_a_drained_stream_reads_the_peer_close_and_a_waiting_read_stops_waiting() -> None:
    """A read waiting when ``drain()`` comes raises WouldWait (nothing was there); bytes and the
    peer's close that were there are read: the bytes, then the end of the stream."""
    sender, stream = draining_pair()
    with sender:
        with pytest.RaisesGroup(WouldWait):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.receive_some)
                await trio.testing.wait_all_tasks_blocked()
                stream.drain()
        await stream.aclose()
    sender, stream = draining_pair()
    with sender:
        sender.sendall(b"the last line\n")
        sender.shutdown(socket.SHUT_WR)
        stream.drain()
        assert await stream.receive_some() == b"the last line\n"
        assert await stream.receive_some() == b""
        await stream.aclose()


async def accept_nothing(server: StreamServer, listener: trio.SocketListener, nursery: Any) -> None:
    """An accept loop that takes no connection: they wait in the listen backlog."""
    await trio.sleep_forever()


@pytest.mark.parametrize("backlog", [True, False], ids=["backlog", "listener-lives-on"])
async def test_a_stop_takes_the_listen_backlog_unless_the_listener_lives_on(
    monkeypatch: pytest.MonkeyPatch, backlog: bool
) -> None:
    """A stopping source accepts and reads the connections waiting in its listen backlog, and
    leaves them there when told its listening socket lives on (for a reload's next workers)."""
    monkeypatch.setattr(StreamServer, "_accept_loop", accept_nothing)
    source, receive = json_source()
    with contextlib.ExitStack() as clients:
        async with trio.open_nursery() as nursery:
            (address,) = await nursery.start(source.run)
            client = clients.enter_context(socket.create_connection((address.host, address.port)))
            client.sendall(RECORD + b"\n")
            source.stop(backlog=backlog)
    assert [event.record_json for event in drain(receive)] == ([RECORD] if backlog else [])
    assert source.counters["connections_accepted"] == int(backlog)
