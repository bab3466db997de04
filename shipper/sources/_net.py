"""Stream listeners shared by the network sources: accept, TLS, limits, peer identity, shutdown.

A ``StreamServer`` accepts TCP connections (wrapped in TLS when it has an ``SSLContext``), or
connections to a unix stream socket, and hands each connection to the source's handler as a
``Connection``. The handler reads with ``Connection.receive()``, which ends the stream on peer EOF,
on a timeout, and when the server is stopping; the handler's sends to the pipeline are never
interrupted by a stop, so what has been read is handed on (phase one of shutdown). Only a forced
shutdown cancels everything.

A stop reads what senders had delivered to the kernel when it came (TCP acknowledged it to
them): each connection reads, without waiting, the bytes its socket held then, and the peer's
close if it had closed (``Draining``: a read waiting for the peer stops waiting; with TLS, the
records already received, and a handshake is finished only if the peer's part of it is there).
Those bytes are framed and handed on like any other read; a last frame they leave unfinished is
what it is when a connection ends mid-frame (a ``malformed`` event, "incomplete ...: connection
ended (shutdown)"; after the peer's close, the last frame as at any EOF). Bytes that arrive after
the stop are not read. The listener then accepts, without waiting, the connections the kernel
completed and nobody accepted yet (the listen backlog, at most ``SOMAXCONN``), admits them as
usual, and each reads what it holds the same way.

Admission: no sender may hold connection slots it does not use. A connection is refused at once
when ``max_connections`` are open, or when ``max_connections_per_peer`` are open from its peer (the
remote IP address; over a unix stream socket, the sender's uid from ``SO_PEERCRED``). The TLS
handshake must complete within ``handshake_timeout``. Once the first byte of a frame (a line, a
syslog message) has arrived, the frame must be complete within ``frame_timeout``, else the
connection is closed and its partial frame becomes a ``malformed`` event ("incomplete ...:
connection ended (frame_timeout)"); only time spent waiting for the peer counts, not time the
handler waits for the pipeline (backpressure). Between frames, a connection silent for
``idle_timeout`` is closed. Every refusal (``max_connections``, ``max_connections_per_peer``,
``handshake_failed``, ``handshake_timeout``, ``frame_timeout``) is counted as
``connections_refused`` and as ``refused_<reason>``, and logged as ``connection_refused`` with the
``reason`` at most ``REFUSAL_LOGS_PER_SECOND`` times a second per source, each line with
``not_logged_since`` (how many refusals were left out before it).

Unix sockets (``bind_unix_socket``, ``UnixSocketFile``): at start, a file already at the path is
removed only if it is a socket that nobody listens on any more (a stale one, left by a crash);
a live socket (another process answers) or anything that is not a socket (a regular file, a
directory) is left alone and the source refuses to start (``ListenError``). The new socket is
created with at most ``socket_mode`` permissions (the mode is set on the socket before ``bind``,
then exactly with ``chmod``), and removed at shutdown if the path still holds this socket. A unix
connection's ``peer`` is the socket's path; the sender's process credentials (``SO_PEERCRED``, or
``SCM_CREDENTIALS`` per datagram) go into ``source.peer_cred`` (``{"pid", "uid", "gid"}``).

``FramedSource`` is what the stream sources share on top of that: a framer per connection, the
counted outcome of every frame, ``malformed`` events for what is not a message, with an
``identity`` table the check of each event's claims against the client certificate
(``shipper.sources._identity``), and the stateless half of the chain check: each record's
``Facts`` taken as soon as it is parsed (the parse is dropped then), and each event sealed
(``_seal``: the sender as agent for line hashing, the envelope encoded) before it is handed on.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import ssl
import stat
import struct
import termios
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import orjson
import trio

from shipper.balance import AcceptGate
from shipper.budget import ByteBudget
from shipper.chain import Profile, sender_identity
from shipper.codecs.framing import BadFraming, Framed, Oversized
from shipper.codecs.jsonlines import is_blank
from shipper.codecs.syslog import RECORD_FIELDS
from shipper.config import Address
from shipper.errors import ListenError
from shipper.events import (
    EVENT_OVERHEAD,
    IDENTITY_ALERT,
    Batch,
    Event,
    Malformed,
    alert_event,
    envelope_start,
    utc_timestamp,
)
from shipper.logging import Throttle, get_logger
from shipper.metrics import CounterSet, Health, Registry, Status
from shipper.sources import SOURCE_COUNTERS, Listening
from shipper.sources._identity import Grant, IdentityPolicy, IdentityTable, claims
from shipper.sources._listener import (
    FRAME_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    ListenerConfig,
)

#: The most one read of a connection takes (TLS records hold 16 KiB; TCP reads rarely more than
#: 64 KiB): what a connection holds while it waits for room in the pipeline, with...
RECEIVE_BYTES: Final = 64 * 1024
#: ... the frames of one slice of it: a read is framed and decoded in slices of this size.
FEED_BYTES: Final = 16 * 1024
#: A source logs at most this many `malformed_input` entries a second (all are counted).
MALFORMED_LOGS_PER_SECOND: Final = 10
#: A source logs at most this many `connection_refused` (and `connection_reset_early`) entries a
#: second (all are counted).
REFUSAL_LOGS_PER_SECOND: Final = 10
#: The permissions of a unix socket a source creates, unless its config says otherwise.
SOCKET_MODE: Final = 0o660
_ACCEPT_RETRY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: What ``accept`` may say of one connection gone before it was taken (the next one is taken).
_ACCEPT_SKIP_ERRNOS: Final = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
#: A socket whose peer closed or that failed: a read returns at once (EOF or the error).
_ENDED: Final = select.POLLRDHUP | select.POLLHUP | select.POLLERR
_RDN_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}

log = get_logger("shipper.sources")

#: ``struct ucred`` (``SO_PEERCRED``, ``SCM_CREDENTIALS``): pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


class UnixSocketFile:
    """The file of a unix socket this process bound; ``remove()`` deletes it if it is still ours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        info = os.lstat(path)
        self._identity = (info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Delete the socket file, unless another process has replaced it since."""
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("socket_file_not_removed", path=str(self.path), error=str(exc))


def _socket_in_use(path: Path) -> bool | str:
    """True if a process answers on the unix socket at ``path``, False if it is stale, or why
    that cannot be told."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            probe.setblocking(False)
            try:
                probe.connect(str(path))
            except BlockingIOError:  # a listener with a full backlog: alive
                return True
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EPROTOTYPE):
                    continue  # nobody there, or a socket of the other type: try that one
                return exc.strerror or str(exc)
            return True
    return False


def bind_unix_socket(
    source_id: str, path: Path, kind: socket.SocketKind, mode: int
) -> tuple[socket.socket, UnixSocketFile]:
    """A unix socket of ``kind`` bound at ``path`` with permissions ``mode`` (see the module doc).

    Raises ``ListenError`` when the path holds something else than a stale socket, or cannot be
    bound (missing directory, no permission).
    """

    def refuse(why: str) -> ListenError:
        return ListenError(f"source {source_id}: cannot listen on unix socket {path}: {why}")

    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from exc
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise refuse(
                "the path exists and is not a socket (it is left alone: remove or move it)"
            )
        live = _socket_in_use(path)
        if live is True:
            raise refuse("another process is listening on it")
        if live is not False:
            raise refuse(f"cannot tell whether the existing socket is in use ({live})")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise refuse(f"cannot remove the stale socket: {exc.strerror or exc}") from exc
        log.warning("stale_socket_removed", source=source_id, path=str(path))
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        os.fchmod(sock.fileno(), mode)  # Linux creates the file with these bits (less the umask)
        sock.bind(str(path))
        file = UnixSocketFile(path)
        try:
            os.chmod(path, mode)
        except OSError:
            file.remove()
            raise
    except OSError as exc:
        sock.close()
        raise refuse(exc.strerror or str(exc)) from exc
    return sock, file


def peer_credentials(sock: Any) -> dict[str, int] | None:
    """``{"pid", "uid", "gid"}`` of the process at the other end of a unix stream socket."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return _ucred(raw)


def _ucred(raw: bytes) -> dict[str, int] | None:
    if len(raw) < _UCRED.size:
        return None
    pid, uid, gid = _UCRED.unpack(raw[: _UCRED.size])
    return {"pid": pid, "uid": uid, "gid": gid}


def datagram_credentials(ancdata: Sequence[tuple[int, int, bytes]]) -> dict[str, int] | None:
    """The sender's credentials from ``recvmsg`` ancillary data (the socket has ``SO_PASSCRED``)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return _ucred(data)
    return None


def peer_host(sockname: Any) -> str:
    """The IP address of a socket address tuple, the key of the per-peer connection limit (an
    IPv4-mapped IPv6 address counts as its IPv4 address)."""
    host = str(sockname[0]) if isinstance(sockname, tuple) and sockname else str(sockname)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def format_peer(sockname: Any) -> str:
    """``host:port`` (``[v6]:port``) from a socket address tuple."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname) or "unix"


def _escape_rdn_value(value: str) -> str:
    out = []
    for index, char in enumerate(value):
        if char in ',+"\\<>;=' or (char == "#" and index == 0):
            out.append("\\" + char)
        elif char == " " and index in (0, len(value) - 1):
            out.append("\\ ")
        else:
            out.append(char)
    return "".join(out)


def format_subject(subject: Any) -> str | None:
    """An RFC 4514 string (``CN=host-7,O=Example``) from ``SSLSocket.getpeercert()["subject"]``."""
    if not subject:
        return None
    rdns = []
    for rdn in reversed(subject):  # RFC 4514 writes the most specific RDN first
        rdns.append(
            "+".join(
                f"{_RDN_NAMES.get(name, name)}={_escape_rdn_value(value)}" for name, value in rdn
            )
        )
    return ",".join(rdns)


def peer_identity(cert: Any) -> tuple[str | None, list[str]]:
    """Subject and subjectAltName values of a verified peer certificate (``getpeercert()``)."""
    if not cert:
        return None, []
    sans = [str(value) for _kind, value in cert.get("subjectAltName", ())]
    return format_subject(cert.get("subject")), sans


@dataclass
class Bound:
    """The sockets a source listens on, bound by the daemon's main process (ingest worker
    processes inherit them, ``shipper.ingestproc``), where they listen, and the unix socket file
    to remove at the end (only the process that bound it removes it)."""

    sockets: list[socket.socket]
    addresses: list[Listening]
    unix_file: UnixSocketFile | None = None

    def close(self) -> None:
        """Close the sockets, and remove the unix socket file if it is still ours."""
        for sock in self.sockets:
            sock.close()
        if self.unix_file is not None:
            self.unix_file.remove()


def bind_tcp(owner: str, address: Address) -> tuple[list[socket.socket], list[Listening]]:
    """Listening TCP sockets on ``address``: one per address its host resolves to (every
    interface, IPv4 and IPv6, for an empty host), as ``trio.open_tcp_listeners`` makes them, and
    where each listens. ``ListenError`` naming ``owner`` (``source ID``, ``api``) when one
    cannot be bound."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            address.host or None,
            address.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        for family, kind, proto, _name, sockaddr in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT and len(infos) > 1:
                    continue  # say, IPv6 switched off: the other families serve
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = exc.strerror or str(exc)
        raise ListenError(f"{owner}: cannot listen on {address}: {why}") from exc
    bound: list[Listening] = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        bound.append(Address(host, port))
    return sockets, bound


def queued_bytes(fd: int) -> int:
    """The bytes a stream socket holds now, received and not read yet (``SIOCINQ``)."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little", signed=True)


def ended(fd: int) -> bool:
    """Whether a read of the socket would return at once with no data: the peer closed, or the
    socket failed."""
    poller = select.poll()
    poller.register(fd, _ENDED)
    return bool(poller.poll(0))


class WouldWait(Exception):
    """A read during a stop found nothing more that was there when the stop came: the stream
    ends (``Connection.end_reason`` "shutdown")."""


class Draining(trio.abc.Stream):
    """A connection's socket stream, whose reads stop waiting for the peer once ``drain()`` is
    called (a stop): a read waiting then, and every later one, takes what the socket held when
    ``drain()`` came (``queued_bytes``) and the peer's close if it closed, and raises
    ``WouldWait`` instead of waiting for more. Under TLS it is the ``SSLStream``'s transport: the
    TLS stream reads the records already received and no others."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._left: int | None = None  # None: not draining; else bytes still to take
        self._waiting: trio.CancelScope | None = None

    def drain(self) -> None:
        """From now on, read only what the socket holds now (idempotent)."""
        if self._left is not None:
            return
        try:
            self._left = queued_bytes(self.stream.socket.fileno())
        except OSError:
            self._left = 0  # (a closed or failed socket: its reads say so)
        if self._waiting is not None:
            self._waiting.cancel()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._left is None:
            with trio.CancelScope() as scope:
                self._waiting = scope
                try:
                    return await self.stream.receive_some(max_bytes)
                finally:
                    self._waiting = None
            # drain() cancelled the wait, before anything was read: read what is there
        return await self._receive_held(max_bytes)

    async def _receive_held(self, max_bytes: int | None) -> bytes | bytearray:
        left = self._left
        assert left is not None
        fd = self.stream.socket.fileno()
        try:
            queued = queued_bytes(fd)
        except OSError:
            queued = 0
        if queued:
            if left <= 0:
                raise WouldWait  # what came after the stop
            max_bytes = left if max_bytes is None else min(max_bytes, left)
        elif not ended(fd):
            raise WouldWait
        else:
            max_bytes = max(left, 1)  # the peer's close (or the error): b"" (or raises)
        data = await self.stream.receive_some(max_bytes)
        self._left = left - len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Connection:
    """One accepted connection as a source handler sees it."""

    def __init__(
        self,
        server: StreamServer,
        stream: trio.abc.Stream,
        peer: str,
        tls_subject: str | None = None,
        tls_san: list[str] | None = None,
        peer_cred: dict[str, int] | None = None,
        peer_key: str | None = None,
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.tls_subject = tls_subject
        self.tls_san = tls_san or []
        #: The sending process's pid, uid and gid (unix sockets only).
        self.peer_cred = peer_cred
        #: What the per-peer connection limit counts this connection under (None: not counted).
        self.peer_key = peer_key
        #: Why reading ended: "eof", "idle_timeout", "frame_timeout", "shutdown" or
        #: "broken: <reason>".
        self.end_reason = ""
        self._scope: trio.CancelScope | None = None
        #: Seconds of waiting for the peer left to the unfinished frame (None: between frames).
        self._frame_left: float | None = None
        self.bytes_received = 0
        #: The socket stream under ``stream`` whose reads a stop turns into reads of what it
        #: holds (None for other streams: a stop ends them at once).
        self.draining = stream if isinstance(stream, Draining) else None
        server.register(self)
        if server.stopping:
            self.stop_reading()  # taken from the listen backlog during a stop

    def stop_reading(self) -> None:
        """Make ``receive()`` read what the socket holds now without waiting, then end the
        stream (shutdown); a stream that is not a ``Draining`` socket ends at once."""
        if self.draining is not None:
            self.draining.drain()
        elif self._scope is not None:
            self._scope.cancel()

    def frame_progress(self, unfinished: bool, began_now: bool) -> None:
        """After each feed of the framer: whether a frame is unfinished, and whether it began in
        that feed (a frame was completed before it). An unfinished frame must be completed within
        ``frame_timeout`` of waiting for the peer, counted from the read that began it."""
        if not unfinished:
            self._frame_left = None
        elif began_now or self._frame_left is None:
            self._frame_left = self.server.frame_timeout

    async def receive(self) -> bytes:
        """The next bytes; ``b""`` when the stream has ended (see ``end_reason``). Once the
        server stops, the bytes the socket held then, without waiting (``Draining``)."""
        if self.server.stopping and self.draining is None:
            self.end_reason = "shutdown"
            return b""
        idle = self.server.idle_timeout
        frame_left = self._frame_left
        wait = idle if frame_left is None else max(0.0, min(idle, frame_left))
        start = trio.current_time()
        with trio.CancelScope(deadline=start + wait) as scope:
            self._scope = scope
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except WouldWait:
                self.end_reason = "shutdown"
                return b""
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__ or exc
                self.end_reason = f"broken: {cause}"
                return b""
            finally:
                self._scope = None
        if frame_left is not None:  # only the time spent waiting for the peer counts
            self._frame_left = frame_left - (trio.current_time() - start)
        if scope.cancelled_caught:
            if self.server.stopping:
                self.end_reason = "shutdown"
            elif frame_left is not None and frame_left <= idle:
                self.end_reason = "frame_timeout"
            else:
                self.end_reason = "idle_timeout"
            return b""
        if not data:
            self.end_reason = "eof"
        self.bytes_received += len(data)
        return data if isinstance(data, bytes) else bytes(data)


Handler = Callable[[Connection], Awaitable[None]]


class StreamServer:
    """Listens on one address or unix socket path; runs ``handler`` per connection; stops in two
    steps."""

    def __init__(
        self,
        source_id: str,
        address: Listening,
        handler: Handler,
        counters: CounterSet,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        socket_mode: int = SOCKET_MODE,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        frame_timeout: float = FRAME_TIMEOUT,
    ) -> None:
        self.source_id = source_id
        self.address = address
        self.handler = handler
        self.counters = counters
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.socket_mode = socket_mode
        self.stopping = False
        self._take_backlog = True
        self.bound: list[Listening] = []
        self._accept_scope = trio.CancelScope()
        #: In an ingest worker: waits, before each accept, for this worker's turn
        #: (``shipper.balance``); None in one process.
        self.gate: AcceptGate | None = None
        self._connections: set[Connection] = set()
        self._per_peer: Counter[str] = Counter()
        self._refusal_log = Throttle(REFUSAL_LOGS_PER_SECOND)
        self._reset_log = Throttle(REFUSAL_LOGS_PER_SECOND)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def connections_from(self, peer_key: str) -> int:
        """How many open connections the per-peer limit counts under ``peer_key``."""
        return self._per_peer[peer_key]

    def register(self, connection: Connection) -> None:
        """Count a connection and let ``stop()`` reach it (until ``unregister``)."""
        if connection not in self._connections and connection.peer_key is not None:
            self._per_peer[connection.peer_key] += 1
        self._connections.add(connection)

    def unregister(self, connection: Connection) -> None:
        if connection in self._connections and connection.peer_key is not None:
            self._per_peer[connection.peer_key] -= 1
            if not self._per_peer[connection.peer_key]:
                del self._per_peer[connection.peer_key]  # the table holds live peers only
        self._connections.discard(connection)

    def refuse(self, peer: str, reason: str, detail: str) -> None:
        """Count a connection refused (or cut off) for ``reason`` and log it, at most
        ``REFUSAL_LOGS_PER_SECOND`` lines a second, each saying how many were left out."""
        self.counters["connections_refused"] += 1
        self.counters[f"refused_{reason}"] += 1
        left_out = self._refusal_log.allow(trio.current_time())
        if left_out is None:
            return
        log.warning(
            "connection_refused",
            source=self.source_id,
            peer=peer,
            reason=reason,
            detail=detail,
            not_logged_since=left_out,
            refused_total=self.counters["connections_refused"],
        )

    def stop(self, *, backlog: bool = True) -> None:
        """Stop accepting, and make every connection read what its socket holds and stop (what
        it read is handed on); ``backlog``: then accept the connections waiting, which do the
        same (not when the listening socket lives on: whoever serves it next takes them)."""
        self.stopping = True
        self._take_backlog = backlog
        self._accept_scope.cancel()
        for connection in list(self._connections):
            connection.stop_reading()

    def bind(self) -> Bound:
        """Bind and listen (blocking; at start): a TCP address (one socket per address family
        its host resolves to), or a unix stream socket (``bind_unix_socket``)."""
        if not isinstance(self.address, Path):
            return Bound(*bind_tcp(f"source {self.source_id}", self.address))
        sock, unix_file = bind_unix_socket(
            self.source_id, self.address, socket.SOCK_STREAM, self.socket_mode
        )
        try:
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            unix_file.remove()
            raise
        return Bound([sock], [self.address], unix_file)

    async def serve(self, bound: Bound, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """Accept on ``bound``'s sockets; report where; return once stopped and every connection
        ended. The sockets are closed at the end (in this process: ``bound`` undoes the rest)."""
        self.bound = list(bound.addresses)
        listeners = [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in bound.sockets
        ]
        async with trio.open_nursery() as connections:
            try:
                with self._accept_scope:
                    task_status.started(self.bound)
                    async with trio.open_nursery() as accepters:
                        for listener in listeners:
                            accepters.start_soon(self._accept_loop, listener, connections)
                for sock in bound.sockets if self._take_backlog else ():
                    await self._accept_waiting(sock, connections)  # stopped: those waiting
            finally:
                for listener in listeners:
                    listener.socket.close()  # sync: also under cancellation
            if self._connections:
                log.info(
                    "source_draining", source=self.source_id, connections=len(self._connections)
                )

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                if self.gate is not None:
                    await self.gate.turn(listener.socket, self.source_id)
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.error("accept_failed", source=self.source_id, error=str(exc))
                    self.counters["accept_errors"] += 1
                    await trio.sleep(0.1)
                    continue
                raise
            await self._admit(stream, nursery)

    async def _accept_waiting(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        """At a stop: take the connections the kernel completed and nobody accepted yet (the
        listen backlog), without waiting for more, and admit each as ``_accept_loop`` does (it
        reads what it holds, then ends). At most a backlog's worth: later ones are left. Not for
        TLS: a client there cannot have sent a record yet (its handshake needs our answer
        first), so taking them would cost a handshake each for nothing."""
        if self.ssl_context is not None:
            return
        for _ in range(socket.SOMAXCONN):
            try:
                raw, _address = sock.accept()  # non-blocking: trio made the socket so
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP_ERRNOS:
                    continue
                log.error("accept_failed", source=self.source_id, error=str(exc))
                self.counters["accept_errors"] += 1
                return
            await self._admit(trio.SocketStream(trio.socket.from_stdlib_socket(raw)), nursery)

    async def _admit(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        """Identify an accepted connection's peer, apply the connection limits, and run it (or
        close it, counted)."""
        peer_cred: dict[str, int] | None = None
        try:
            if isinstance(self.address, Path):
                peer = str(self.address)
                peer_cred = peer_credentials(stream.socket)
                uid = "unknown" if peer_cred is None else peer_cred["uid"]
                key = f"uid {uid}"
            else:
                sockname = stream.socket.getpeername()
                peer = format_peer(sockname)
                key = peer_host(sockname)
        except OSError as exc:  # reset before we got to it (a port scan, a health check)
            self.counters["connections_reset_early"] += 1
            left_out = self._reset_log.allow(trio.current_time())
            if left_out is not None:
                log.info(
                    "connection_reset_early",
                    source=self.source_id,
                    error=str(exc),
                    not_logged_since=left_out,
                )
            await _close(stream)
            return
        if len(self._connections) >= self.max_connections:
            self.refuse(peer, "max_connections", f"{self.max_connections} connections open")
            await _close(stream)
            return
        if self._per_peer[key] >= self.max_connections_per_peer:
            self.refuse(
                peer,
                "max_connections_per_peer",
                f"{self.max_connections_per_peer} connections from {key} open",
            )
            await _close(stream)
            return
        self.counters["connections_accepted"] += 1
        # Registers now: counts toward the limits.
        connection = Connection(self, Draining(stream), peer, peer_cred=peer_cred, peer_key=key)
        nursery.start_soon(self._run_connection, connection)

    async def _run_connection(self, connection: Connection) -> None:
        tcp = connection.stream
        peer = connection.peer
        stream: trio.abc.Stream = tcp
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(tcp, self.ssl_context, server_side=True)
                stream = tls
                connection.stream = tls
                if not await self._handshake(connection, tls):
                    return
            log.debug(
                "connection_opened",
                source=self.source_id,
                peer=peer,
                tls_subject=connection.tls_subject,
            )
            await self.handler(connection)
        except Exception as exc:
            # A handler bug must not take the daemon down with it; the traceback is logged.
            self.counters["handler_errors"] += 1
            log.exception("connection_failed", source=self.source_id, peer=peer, error=str(exc))
        finally:
            self.unregister(connection)
            await _close(stream)

    async def _handshake(self, connection: Connection, tls: trio.SSLStream[Any]) -> bool:
        """Complete the TLS handshake within ``handshake_timeout``; refuse the connection if it
        fails or takes longer."""
        failure = ""
        stopped = False
        with trio.CancelScope(deadline=trio.current_time() + self.handshake_timeout) as scope:
            connection._scope = scope
            try:
                await tls.do_handshake()
            except WouldWait:  # a stop, and the peer's part of the handshake is not there yet
                stopped = True
            except trio.BrokenResourceError as exc:
                failure = str(exc.__cause__ or exc) or "connection closed during handshake"
            finally:
                connection._scope = None
        if scope.cancelled_caught or stopped:
            if self.stopping:
                log.debug(
                    "connection_closed",
                    source=self.source_id,
                    peer=connection.peer,
                    reason="shutdown during the TLS handshake",
                )
            else:
                detail = f"no TLS handshake within handshake_timeout ({self.handshake_timeout}s)"
                self.refuse(connection.peer, "handshake_timeout", detail)
            return False
        if failure:
            self.refuse(connection.peer, "handshake_failed", failure)
            return False
        connection.tls_subject, connection.tls_san = peer_identity(tls.getpeercert())
        return True


async def _close(stream: trio.abc.AsyncResource) -> None:
    """Close a stream within a second, even while the surrounding scope is cancelled."""
    with trio.move_on_after(1) as scope:
        scope.shield = True
        await stream.aclose()


class _Listening:
    """A task status that marks its source as listening when the source reports where."""

    def __init__(self, source: FramedSource, inner: trio.TaskStatus[list[Listening]]) -> None:
        self._source = source
        self._inner = inner

    def started(self, value: list[Listening] | None = None) -> None:
        self._source.listening = True
        self._inner.started(value if value is not None else [])


class Framer(Protocol):
    """What a stream source needs of a sans-IO framer (``codecs.framing``)."""

    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes) -> Sequence[Framed]: ...

    def finish(self) -> Framed | None: ...


class FramedSource:
    """What every stream source shares: the listener, reading frames off each connection, and
    the counted outcome of frames that are not messages (oversized, bad framing, blank, cut off).

    A subclass names its ``kind`` and its ``unit`` ("line", "message"), makes a framer per
    connection, and turns one complete frame into an event (``_decode_frame``).
    """

    kind: ClassVar[str]
    unit: ClassVar[str]

    def __init__(
        self,
        source_id: str,
        send: trio.MemorySendChannel[list[Event]],
        profile: Profile,
        max_frame: int,
        limit_key: str,
        identity: IdentityTable | None = None,
    ) -> None:
        self.id = source_id
        self._send = send
        self.profile = profile
        self._agent_of = profile.agent_of
        self._facts = profile.facts
        # Whether a record that names no agent is still verified: line hashing takes the sender's
        # identity for its agent (``sender_identity``).
        self._by_sender = profile.line_hashed
        # Whether the records of syslog messages that are not JSON (``SyslogMessage.record``) may
        # be verified: their agent comes from their fields, or from the sender.
        self._text_chained = profile.line_hashed or profile.agent[0] in RECORD_FIELDS
        self._max_frame = max_frame
        self._oversized_reason = f"{self.unit} longer than {limit_key} ({max_frame})"
        self.counters = CounterSet(Registry(), "source", source_id, SOURCE_COUNTERS)
        self.listening = False  # set once the source listens (its run reported where)
        self.stopping = False
        self.log = get_logger(f"shipper.sources.{self.kind}")
        self.server: StreamServer | None = None
        self.open_elsewhere: dict[int, int] = {}
        self.served_by: dict[int, Callable[[], Health]] = {}
        #: The bytes the pipeline's ingest channel may hold, shared by every source (the
        #: topology sets it; the writer gives back what it takes out).
        self.budget: ByteBudget | None = None
        self.identity = IdentityPolicy(identity) if identity is not None else None
        self._mismatch_log = Throttle(1)
        self._malformed_log = Throttle(MALFORMED_LOGS_PER_SECOND)

    def _listen(
        self, address: Listening, config: ListenerConfig, socket_mode: int = SOCKET_MODE
    ) -> StreamServer:
        tls = config.tls
        return StreamServer(
            self.id,
            address,
            self.handle,
            self.counters,
            ssl_context=tls.build() if tls is not None else None,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            socket_mode=socket_mode,
            max_connections_per_peer=config.max_connections_per_peer,
            handshake_timeout=config.handshake_timeout,
            frame_timeout=config.frame_timeout,
        )

    async def _deliver(
        self, batch: list[Event], size: int | None = None, *, reserved: bool = False
    ) -> None:
        """Hand a batch of events on to the pipeline, counted as ``size`` bytes (default:
        ``batch_bytes``). Every send of a source goes through here; a full pipeline (in batches,
        or in bytes with a ``budget``) makes it wait (backpressure). ``reserved``: the caller
        took ``size`` from the budget already (before it made the events)."""
        sent = Batch(batch, size)
        budget = self.budget
        if budget is None:
            if sent:
                self._seal(sent)
                await self._send.send(sent)
            return
        if not sent:
            if reserved:
                budget.release(sent.size)
            return
        if not reserved:
            await budget.acquire(sent.size)
        self._seal(sent)
        try:
            await self._send.send(sent)
        except BaseException:
            budget.release(sent.size)  # not sent: not in the channel
            raise

    def stop(self, *, backlog: bool = True) -> None:
        """Stop accepting and reading, once what the sockets hold is read (``StreamServer.stop``);
        what was read is still handed on."""
        self.stopping = True
        if self.server is not None:
            self.server.stop(backlog=backlog)

    @property
    def shared(self) -> bool:
        """A stream listener may be served by several processes at once; a datagram socket
        (a syslog source's, without a server) by one."""
        return self.server is not None

    def bind(self) -> Bound:
        """Bind and listen (blocking, at start; ``ListenError`` when it cannot)."""
        assert self.server is not None  # a datagram source binds its own way
        return self.server.bind()

    async def serve(self, bound: Bound, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """Serve ``bound`` until stopped; closes this source's channel to the pipeline when
        done."""
        assert self.server is not None  # a datagram source serves its own way
        async with self._send:
            await self.server.serve(bound, task_status=self._reporting(task_status))

    async def run(self, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """``bind``, ``serve``, and close what was bound: the source in one process."""
        bound = self.bind()
        try:
            await self.serve(bound, task_status=task_status)
        finally:
            bound.close()

    def register_metrics(self, registry: Registry) -> None:
        """Count into ``registry`` from now on (what was counted so far comes along), and tell it
        this source's health (``source.<id>``)."""
        counters = CounterSet(registry, "source", self.id, SOURCE_COUNTERS)
        counters.restore(self.counters.as_dict())
        self.counters = counters
        if self.server is not None:
            self.server.counters = counters  # its connections count with the source's
        registry.gauge(
            "source_connections_open", "Connections open now", labels=("source",)
        ).labels(self.id).observe(self.open_connections)
        registry.health(f"source.{self.id}", self.health)

    def open_connections(self) -> int:
        """Connections open now, here and in the ingest workers (``open_elsewhere``)."""
        here = self.server.connections if self.server is not None else 0
        return here + sum(self.open_elsewhere.values())

    def health(self) -> Health:
        """``ok`` while listening, and once stopping (asked to: the reason says so); ``failing``
        until it listens. With ingest workers (``served_by``): ``degraded`` while some of the
        workers that serve it do not (not started yet, exited: the others take its
        connections), ``failing`` while none does; the reason names them."""
        if self.stopping:
            return Health("ok", "stopping")
        if not self.listening:
            return Health("failing", "not listening")
        down = [health for serves in self.served_by.values() if (health := serves()).status != "ok"]
        if not down:
            return Health()
        status: Status = "failing" if len(down) == len(self.served_by) else "degraded"
        reason = "not served by " + "; ".join(health.reason for health in down)
        return Health(status, reason, max(health.since for health in down))

    def _reporting(
        self, task_status: trio.TaskStatus[list[Listening]]
    ) -> trio.TaskStatus[list[Listening]]:
        """``task_status``, noting that the source listens once it reports where."""
        return _Listening(self, task_status)

    def source_info(self, peer: str, connection: Connection | None = None) -> dict[str, Any]:
        """The envelope's ``source`` object (shared by every event of a connection)."""
        info: dict[str, Any] = {"id": self.id, "kind": self.kind, "peer": peer}
        if connection is not None and (connection.tls_subject is not None or connection.tls_san):
            info["tls_subject"] = connection.tls_subject
            info["tls_san"] = connection.tls_san
        if connection is not None and connection.peer_cred is not None:
            info["peer_cred"] = connection.peer_cred
        return info

    def _framer(self) -> Framer:
        raise NotImplementedError

    def _decode_frame(self, frame: bytes, source: dict[str, Any], received_at: str) -> Event:
        raise NotImplementedError

    def _record_event(
        self,
        received_at: str,
        source: dict[str, Any],
        record: dict[str, Any],
        raw: bytes,
        syslog: dict[str, Any] | None = None,
    ) -> Event:
        """The event of a record parsed from ``raw``, with its ``Facts`` if it may be verified:
        the parse can go as soon as this returns. (A defect that raises while the facts are
        taken leaves them out: ``_seal`` tries again, and leaves the event to the chain stage.)"""
        agent = self._agent_of(record)
        event = Event(received_at, source, agent, raw, syslog=syslog)
        if agent is not None or self._by_sender:
            try:
                event.facts = self._facts(record, raw)
            except Exception:
                event.facts = None  # (see _seal)
        return event

    def _seal(self, batch: list[Event]) -> None:
        """The last of a source's work on its events, once each is complete (identity checked):
        the agent of a line-hashed record that names none (the sender's identity), and the
        envelope encoded (``Event.seal``). An event with ``identity_mismatch`` loses its facts:
        it is never verified.

        A defect that raises here leaves the event unsealed: the chain stage and the writer then
        do it all, as for events made elsewhere, and report the defect as they do (the chain
        stage archives the event unverified with a ``verify_failed`` alert, the writer as
        ``malformed``), so that a defect costs that event only, wherever it strikes."""
        # The envelopes of one read share their start (``received_at`` and ``source``).
        starts: dict[tuple[str, int], bytes] = {}
        for event in batch:
            try:
                raw = event.record_json
                if raw is not None and not event.alert:
                    if event.identity_mismatch is not None:
                        event.facts = None
                    elif event.facts is not None:
                        if event.agent is None and self._by_sender:
                            event.agent = sender_identity(event.source, event.syslog)
                    elif (
                        event.agent is not None
                        or self._by_sender
                        or (event.syslog is not None and self._text_chained)
                    ):
                        self._late_facts(event, raw)
                key = (event.received_at, id(event.source))
                start = starts.get(key)
                if start is None:
                    start = starts[key] = envelope_start(event.received_at, event.source)
                event.seal(start)
            except Exception:
                event.sealed = None

    def _late_facts(self, event: Event, raw: bytes) -> None:
        """The agent and ``Facts`` of a record whose facts were not taken as it was parsed: a
        syslog message's record made of its fields (not JSON), whose agent is no claim its
        sender's certificate is checked against (``claims``), so it is read only now (a custom
        profile's agent field among the syslog fields, or the sender for line hashing); or a
        record whose facts a defect kept from being taken (which raises again: see ``_seal``)."""
        record = orjson.loads(raw)
        agent = self._agent_of(record)
        if agent is None and self._by_sender:
            agent = sender_identity(event.source, event.syslog)
        if agent is not None:
            event.facts = self._facts(record, raw)
            event.agent = agent

    async def handle(self, connection: Connection) -> None:
        """Read frames until the stream ends; every frame gets a counted outcome."""
        framer = self._framer()
        source = self.source_info(connection.peer, connection)
        grant = None
        if self.identity is not None:
            grant = self.identity.grant(connection.tls_subject, connection.tls_san)
        events_before = self.counters["events"]
        while data := await connection.receive():
            self.counters["bytes"] += len(data)
            # In slices, each one's room in the pipeline taken before its events exist: a
            # connection that must wait holds at most one slice's frames, never thousands of
            # parsed events (tiny records multiply memory by some hundred).
            for start in range(0, len(data), FEED_BYTES):
                chunk = data[start : start + FEED_BYTES] if len(data) > FEED_BYTES else data
                frames = framer.feed(chunk)
                connection.frame_progress(framer.buffered > 0, bool(frames))
                if not frames:
                    continue
                # counted as the bytes fed (each record is within them) and more per event
                size = len(chunk) + EVENT_OVERHEAD * len(frames)
                if self.budget is not None:
                    await self.budget.acquire(size)
                batch = self._decode(frames, source, utc_timestamp())
                if grant is not None:
                    batch = self.check_identity(batch, grant)
                await self._deliver(batch, size, reserved=True)
        tail = framer.finish()
        if tail is not None:
            received_at = utc_timestamp()
            cut_off = f"incomplete {self.unit}: connection ended ({connection.end_reason})"
            if connection.end_reason == "eof":
                batch = self._decode([tail], source, received_at)
            elif isinstance(tail, BadFraming):  # counted as bad framing; the reason says why
                reason = f"{cut_off}: {tail.reason}"
                batch = self._decode(
                    [BadFraming(reason, tail.prefix, tail.size)], source, received_at
                )
            else:
                raw = tail.prefix if isinstance(tail, Oversized) else tail
                size = tail.size if isinstance(tail, Oversized) else len(tail)
                batch = [self._malformed(source, received_at, cut_off, raw, size)]
                self.counters["events"] += 1
            if grant is not None:
                batch = self.check_identity(batch, grant)
            if batch:
                await self._deliver(batch)
        self.log.debug(
            "connection_closed",
            source=self.id,
            peer=connection.peer,
            reason=connection.end_reason,
            events=self.counters["events"] - events_before,
            bytes=connection.bytes_received,
        )
        if connection.end_reason == "idle_timeout":
            self.counters["idle_timeouts"] += 1
            self.log.info("connection_idle_closed", source=self.id, peer=connection.peer)
        elif connection.end_reason == "frame_timeout":
            server = connection.server
            detail = (
                f"a {self.unit} was not completed within frame_timeout ({server.frame_timeout}s)"
            )
            server.refuse(connection.peer, "frame_timeout", detail)

    def check_identity(self, batch: list[Event], grant: Grant) -> list[Event]:
        """Mark each event whose claims the certificate may not make (``identity_mismatch``) and
        put a ``shipper.identity_alert`` right after it; every event stays."""
        out: list[Event] = []
        for event in batch:
            out.append(event)
            agent, hostname = claims(event)
            mismatch = grant.check(agent, hostname)
            if mismatch is None:
                continue
            event.identity_mismatch = mismatch
            self.counters["identity_mismatch"] += 1
            peer = event.source.get("peer")
            self._log_mismatch(peer, mismatch)
            details = {
                "status": "identity_mismatch",
                "severity": "critical",
                **mismatch,
                "source": self.id,
                "peer": peer,
                "event_received_at": event.received_at,
            }
            out.append(alert_event(IDENTITY_ALERT, agent, details))
        return out

    def _log_mismatch(self, peer: Any, mismatch: dict[str, Any]) -> None:
        """A warning at most once a second per source; it counts the ones left out since."""
        left_out = self._mismatch_log.allow(trio.current_time())
        if left_out is None:
            return
        self.log.warning(
            "identity_mismatch",
            source=self.id,
            peer=peer,
            reason=mismatch["reason"],
            claimed=mismatch["claimed"],
            tls_subject=mismatch["tls_subject"],
            tls_san=mismatch["tls_san"],
            allowed=mismatch["allowed"],
            not_logged_since=left_out,
            mismatches_total=self.counters["identity_mismatch"],
        )

    def _decode(
        self, frames: Sequence[Framed], source: dict[str, Any], received_at: str
    ) -> list[Event]:
        batch: list[Event] = []
        for frame in frames:
            if isinstance(frame, Oversized):
                self.counters["oversized"] += 1
                reason = self._oversized_reason
                batch.append(self._malformed(source, received_at, reason, frame.prefix, frame.size))
            elif isinstance(frame, BadFraming):
                self.counters["bad_framing"] += 1
                batch.append(
                    self._malformed(source, received_at, frame.reason, frame.prefix, frame.size)
                )
            elif is_blank(frame):
                self.counters["blank_lines"] += 1
            else:
                batch.append(self._decode_frame(frame, source, received_at))
        self.counters["events"] += len(batch)
        return batch

    def _malformed(
        self, source: dict[str, Any], received_at: str, reason: str, raw: bytes, size: int
    ) -> Event:
        return self._rejected(source, received_at, Malformed.of(reason, raw, size))

    def _rejected(self, source: dict[str, Any], received_at: str, malformed: Malformed) -> Event:
        """A ``malformed`` event, counted and logged."""
        self.counters["malformed"] += 1
        left_out = self._malformed_log.allow(trio.current_time())
        if left_out is not None:
            self.log.warning(
                "malformed_input",
                source=self.id,
                peer=source["peer"],
                reason=malformed.reason,
                size=malformed.size,
                not_logged_since=left_out,
                malformed_total=self.counters["malformed"],
            )
        return Event(received_at, source, malformed=malformed)
