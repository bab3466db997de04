"""The syslog source on unix sockets: the socket file's life, limits, and `logger -u` end to end."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.config import parse_config
from shipper.errors import ListenError
from shipper.events import Event
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._net import bind_unix_socket
from shipper.sources.syslog import SyslogSource, SyslogSourceConfig
from tests.conftest import LogCapture, archive_lines, drain, file_sink_config, wait_until
from tests.sources.test_syslog_source import AUDIT, AUDIT_JSON, RFC5424_JSON, run_logger

PLAIN = b"<13>Nov 23 10:45:23 host-7 sshd[42]: Accepted publickey for alice"


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    """A socket path short enough for sun_path, in a directory of the test's own."""
    return tmp_path / "syslog.sock"


def make_source(
    path: Path, capacity: int = 1000, **settings: Any
) -> tuple[SyslogSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A unix syslog source on ``path`` and the channel (of ``capacity`` batches) it sends into."""
    config = SyslogSourceConfig(id="local", mode="unix", path=path, **settings)
    send, receive = trio.open_memory_channel[list[Event]](capacity)
    return SyslogSource(config, send), receive


@contextlib.contextmanager
def unix_client(path: Path, kind: socket.SocketKind) -> Iterator[socket.socket]:
    """A blocking client socket connected to the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, kind) as client:
        client.connect(str(path))
        yield client


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- the socket file -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["dgram", "stream"])
def test_new_socket_gets_exactly_the_configured_mode(
    sock_path: Path, kind: socket.SocketKind
) -> None:
    """The socket file is created with socket_mode, whatever the umask, and removed by remove()."""
    old_umask = os.umask(0o077)
    try:
        sock, file = bind_unix_socket("local", sock_path, kind, 0o660)
    finally:
        os.umask(old_umask)
    with sock:
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
        assert mode_of(sock_path) == 0o660
        file.remove()
    assert not sock_path.exists()


def test_stale_socket_is_replaced_and_logged(sock_path: Path, logs: LogCapture) -> None:
    """A socket file nobody listens on (left by a crash) is removed and bound anew."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(sock_path))
    sock, file = bind_unix_socket("local", sock_path, socket.SOCK_DGRAM, 0o600)
    with sock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"hello", str(sock_path))
        assert sock.recv(10) == b"hello"
        assert mode_of(sock_path) == 0o600
        file.remove()
    assert [e["path"] for e in logs.entries("stale_socket_removed")] == [str(sock_path)]


def test_regular_file_at_the_path_is_refused_and_kept(sock_path: Path) -> None:
    """A regular file where the socket should be is never deleted: the source refuses to start."""
    sock_path.write_text("evidence, not a socket")
    with pytest.raises(ListenError, match="exists and is not a socket"):
        bind_unix_socket("local", sock_path, socket.SOCK_STREAM, 0o660)
    assert sock_path.read_text() == "evidence, not a socket"


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["dgram", "stream"])
def test_socket_another_process_listens_on_is_refused(
    sock_path: Path, kind: socket.SocketKind
) -> None:
    """A live socket (someone answers on it, of either type) is left alone: ListenError."""
    with socket.socket(socket.AF_UNIX, kind) as live:
        live.bind(str(sock_path))
        if kind == socket.SOCK_STREAM:
            live.listen()
        with pytest.raises(ListenError, match="another process is listening on it"):
            bind_unix_socket("local", sock_path, socket.SOCK_DGRAM, 0o660)
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_missing_directory_is_a_listen_error(tmp_path: Path) -> None:
    """A path in a directory that does not exist fails with a ListenError naming the path."""
    path = tmp_path / "nope" / "syslog.sock"
    with pytest.raises(ListenError, match=f"source local: cannot listen on unix socket {path}"):
        bind_unix_socket("local", path, socket.SOCK_DGRAM, 0o660)


def test_socket_replaced_by_someone_else_is_not_removed(sock_path: Path) -> None:
    """At shutdown the path is removed only if it still holds this source's socket."""
    sock, file = bind_unix_socket("local", sock_path, socket.SOCK_DGRAM, 0o660)
    with sock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        sock_path.unlink()
        other.bind(str(sock_path))
        file.remove()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


# --- datagram sockets ------------------------------------------------------------------------


async def test_datagrams_become_events_with_path_and_sender_credentials(sock_path: Path) -> None:
    """Each datagram is one message; peer is the socket path and peer_cred the sender's process."""
    source, receive = make_source(sock_path, max_message_bytes=300)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(source.run)
        assert bound == [sock_path]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for datagram in (RFC5424_JSON, b"<13>" + b"x" * 500, PLAIN):
                client.sendto(datagram, str(sock_path))
        await wait_until(lambda: source.counters["datagrams"] == 3)
        source.stop()
    assert not await trio.Path(sock_path).exists()
    first, oversized, plain = drain(receive)
    assert first.record_json == AUDIT_JSON
    assert first.source["peer"] == str(sock_path)
    assert first.source["peer_cred"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}
    assert oversized.malformed is not None
    assert oversized.malformed.reason == "datagram longer than max_message_bytes (300)"
    assert plain.record_json is not None
    assert orjson.loads(plain.record_json)["msg"] == "Accepted publickey for alice"
    assert source.counters["oversized"] == 1


async def test_full_pipeline_holds_datagram_senders_and_drops_nothing(sock_path: Path) -> None:
    """Unlike UDP, a unix datagram sender is slowed by a full pipeline: every message arrives."""
    source, receive = make_source(sock_path, capacity=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for _ in range(5):  # the kernel queues what the blocked source cannot take yet
                client.sendto(PLAIN, str(sock_path))
        await wait_until(lambda: source.counters["datagrams"] == 2)  # one queued, one waiting
        events: list[Event] = []
        while len(events) < 5:
            events.extend(await receive.receive())
        source.stop()
    assert source.counters["dropped_full"] == 0
    assert len(events) == 5


async def test_stop_ends_a_datagram_source_that_waits_for_data(sock_path: Path) -> None:
    """stop() ends the wait for the next datagram; the source closes its channel."""
    source, receive = make_source(sock_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        source.stop()
    with pytest.raises(trio.EndOfChannel):
        await receive.receive()


# --- stream sockets --------------------------------------------------------------------------


async def test_stream_connections_past_max_connections_are_refused(sock_path: Path) -> None:
    """A unix stream source has TCP's limits: a connection past max_connections is closed."""
    source, receive = make_source(sock_path, socket_type="stream", max_connections=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        with unix_client(sock_path, socket.SOCK_STREAM) as first:
            first.sendall(PLAIN + b"\n")
            assert source.server is not None
            server = source.server
            await wait_until(lambda: server.connections == 1)
            with unix_client(sock_path, socket.SOCK_STREAM) as second:
                second.setblocking(False)
                await trio.lowlevel.wait_readable(second)
                with contextlib.suppress(ConnectionResetError):
                    assert second.recv(10) == b""
            assert source.counters["connections_refused"] == 1
        await wait_until(lambda: source.counters["events"] == 1)
        source.stop()
    assert not await trio.Path(sock_path).exists()
    (event,) = drain(receive)
    assert event.source["peer"] == str(sock_path)
    assert event.source["peer_cred"]["pid"] == os.getpid()


async def test_stream_socket_reports_a_stale_file_it_may_not_remove(sock_path: Path) -> None:
    """A stream source whose path holds a regular file fails to start with ListenError."""
    await trio.Path(sock_path).write_text("keep me")
    source, _receive = make_source(sock_path, socket_type="stream")
    with pytest.RaisesGroup(
        pytest.RaisesExc(ListenError, match="not a socket"),
        allow_unwrapped=True,
        flatten_subgroups=True,
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
    assert await trio.Path(sock_path).read_text() == "keep me"


# --- real senders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("socket_type", "flags"),
    [
        ("datagram", ["-d"]),
        ("stream", ["-T"]),
        ("stream", ["-T", "--octet-count", "--rfc5424"]),
    ],
    ids=["datagram", "stream-lf", "stream-octet-count-rfc5424"],
)
@pytest.mark.usefixtures("processes")
async def test_logger_messages_reach_the_archive_over_a_unix_socket(
    tmp_path: Path, logs: LogCapture, socket_type: str, flags: list[str]
) -> None:
    """util-linux logger -u PATH (datagram or stream) lands in the archive with peer_cred."""
    path = tmp_path / "log.sock"
    raw = file_sink_config(tmp_path)
    raw["sources"] = {
        "local": {"type": "syslog", "mode": "unix", "path": str(path), "socket_type": socket_type}
    }
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        assert bound["local"] == [path]
        assert mode_of(path) == 0o660
        base = ["-u", str(path), *flags, "-t", "openclaw", "-p", "auth.notice"]
        await run_logger(*base, AUDIT_JSON.decode())
        await run_logger(*base, "plain text from logger")
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 2)
        shutdown.request("test")
    assert not await trio.Path(path).exists()
    first, second = (orjson.loads(line) for line in archive_lines(tmp_path / "archive"))
    assert first["record"] == AUDIT
    assert first["agent"] == AUDIT["agentId"]
    assert (first["syslog"]["facility"], first["syslog"]["severity"]) == ("auth", "notice")
    assert first["syslog"]["app_name"] == "openclaw"
    assert second["record"]["msg"] == "plain text from logger"
    for envelope in (first, second):
        assert envelope["source"]["peer"] == str(path)
        assert envelope["source"]["peer_cred"]["uid"] == os.getuid()
    assert first["source"]["peer_cred"]["pid"] != second["source"]["peer_cred"]["pid"]
