"""Source ``syslog``: RFC 5424 and RFC 3164 messages over TCP, TLS (RFC 5425), UDP or a unix socket.

Modes: ``tcp``, ``tls`` and ``udp`` listen on ``address``; ``unix`` binds a unix socket at ``path``,
of ``socket_type = "datagram"`` (the default: what ``/dev/log`` is, and what ``logger -u PATH``,
``syslog(3)`` and rsyslog's omuxsock send to) or ``"stream"`` (``logger -u PATH -T``).

Framing over TCP, TLS and unix stream sockets is detected per connection
(``codecs.framing.AutoFramer``): octet counting (RFC 6587 3.4.1, what rsyslog's
``TCP_Framing="octet-counted"`` and RFC 5425 send) when the first byte is a digit, LF (or NUL)
framing otherwise; limits, and connection admission (``max_connections``,
``max_connections_per_peer``, ``idle_timeout``, ``frame_timeout``, ``handshake_timeout`` with
TLS: see ``shipper.sources._net``), are the same for all three. Over UDP and unix datagram
sockets each datagram is one message (a datagram that starts with a digit is read as
octet-counted, as ``loggen -P`` sends it).

What a message becomes:

========================================  ====================================================
input                                     outcome (counter)
========================================  ====================================================
MSG is a JSON object (an audit record)    event: ``record`` = that object, byte for byte;
                                          ``syslog`` = the header fields (``events``,
                                          ``json_records``)
any other parseable message               event: ``record`` = the parsed fields plus ``msg``
                                          and ``timestamp``; ``syslog`` as above (``events``)
MSG is a JSON object over a record limit  ``malformed`` event with the reason (``malformed``):
(deeper than 128 levels, a member name    the whole message's bytes, never verified or
given twice; ``codecs.jsonlines``)        identity-checked
MSG not valid UTF-8                       as above, ``msg`` with U+FFFD for the bad bytes,
                                          plus ``msg_b64`` (the bytes) and ``msg_error`` (why)
                                          (``events``, ``invalid_utf8``)
not a syslog message (no PRI, ...)        ``malformed`` event with the reason (``malformed``)
frame over ``max_message_bytes``          ``malformed`` event with the first 4 KiB
                                          (``malformed``, ``oversized``); carries on
bytes that break the octet framing        ``malformed`` event; the connection goes on with LF
                                          framing (``malformed``, ``bad_framing``)
a frame cut off by shutdown,              ``malformed`` event, the reason says why
``idle_timeout`` or ``frame_timeout``     ("incomplete message: connection ended
                                          (frame_timeout)"...) (``malformed``)
UDP datagram while the pipeline is full   held in a buffer of ``UDP_BUFFER_EVENTS`` events
                                          (handed on as one batch as soon as the pipeline has
                                          room); once that is full too, dropped (UDP cannot be
                                          slowed) (``dropped_full``), logged at most once a
                                          second
TLS: a claim the client certificate may   archived with ``identity_mismatch``, followed by a
not make (``[sources.X.identity]``)       ``shipper.identity_alert`` event
                                          (``identity_mismatch``), logged at most once a second
========================================  ====================================================

Every other sender is slowed instead: a full pipeline stops the reads. That includes unix datagram
sockets: unlike UDP, the kernel holds a sender (``syslog(3)``, ``logger``) while the socket's queue
is full, so nothing is dropped, as with ``/dev/log``. With a ``client_ca``, the verified client
certificate's subject and SANs go into ``source.tls_subject`` / ``source.tls_san``; over a unix
socket, ``source.peer`` is the socket's path and ``source.peer_cred`` the sender's pid, uid and
gid (see ``shipper.sources._net``). Identity binding is documented in
``shipper.sources._identity``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

import orjson
import trio

from shipper.chain import SEED
from shipper.codecs.framing import AutoFramer, SyslogFrame
from shipper.codecs.jsonlines import Refused, decode_object
from shipper.codecs.syslog import parse
from shipper.config import Address, SyslogSourceConfig
from shipper.errors import ListenError
from shipper.events import Event, Malformed, utc_timestamp
from shipper.logging import Throttle
from shipper.sources._net import (
    AgentOf,
    Bound,
    FramedSource,
    Framer,
    bind_unix_socket,
    datagram_credentials,
    format_peer,
)

T = TypeVar("T")

#: Events a UDP source holds while the pipeline is full (bursts); beyond them it drops.
UDP_BUFFER_EVENTS: Final = 65536
#: Room for one ``SCM_CREDENTIALS`` message in ``recvmsg``'s ancillary buffer.
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(12)


class SyslogSource(FramedSource):
    """Listens for syslog over TCP/TLS/UDP/unix and sends batches of events into the pipeline."""

    kind = "syslog"
    unit = "message"

    def __init__(
        self,
        config: SyslogSourceConfig,
        send: trio.MemorySendChannel[list[Event]],
        agent_of: AgentOf = SEED.agent_of,
    ) -> None:
        super().__init__(
            config.id,
            send,
            agent_of,
            config.max_message_bytes,
            "max_message_bytes",
            config.identity,
        )
        self.config = config
        self._stopping = False
        self._receive_scope: trio.CancelScope | None = None
        self._drop_log = Throttle(1)
        self.udp_buffer_events = UDP_BUFFER_EVENTS
        self._pending: list[Event] = []  # UDP events waiting for room in the pipeline
        self._pending_added = trio.Event()
        listen: Bound | None = config.path if config.mode == "unix" else config.address
        unix_stream = config.mode == "unix" and config.socket_type == "stream"
        if config.mode in ("tcp", "tls") or unix_stream:
            assert listen is not None
            self.server = self._listen(listen, config)

    async def run(self, *, task_status: trio.TaskStatus[list[Bound]]) -> None:
        """Serve until stopped; closes this source's channel to the pipeline when done."""
        async with self._send:
            if self.server is not None:
                await self.server.serve(task_status=task_status)
            elif self.config.mode == "unix":
                await self._serve_unix_datagrams(task_status)
            else:
                await self._serve_udp(task_status)

    def stop(self) -> None:
        """Stop accepting and reading; what was read is still handed on."""
        self._stopping = True
        if self._receive_scope is not None:
            self._receive_scope.cancel()
        super().stop()

    def _framer(self) -> Framer:
        return AutoFramer(self._max_frame)

    # --- datagrams: UDP and unix ---------------------------------------------------------------

    async def _serve_udp(self, task_status: trio.TaskStatus[list[Bound]]) -> None:
        address = self.config.address
        assert address is not None
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        with sock:
            try:
                await sock.bind((address.host, address.port))
            except OSError as exc:
                raise ListenError(
                    f"source {self.id}: cannot listen on {address} (udp): {exc.strerror or exc}"
                ) from exc
            host, port = sock.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_pending)
                task_status.started([Address(host, port)])
                limit = self.config.max_message_bytes
                receive = partial(sock.recvfrom, limit + 1)
                try:
                    while (received := await self._receive(receive)) is not None:
                        data, peer = received
                        self._offer(self._datagram(data, peer, limit))
                finally:
                    self._stopping = True
                    self._pending_added.set()  # the forwarder hands on the rest, then ends

    async def _forward_pending(self) -> None:
        """Hand the UDP events read meanwhile on as one batch whenever the pipeline has room."""
        while True:
            await self._pending_added.wait()
            self._pending_added = trio.Event()
            batch, self._pending = self._pending, []
            if batch:
                await self._deliver(batch)
            elif self._stopping:
                return

    async def _serve_unix_datagrams(self, task_status: trio.TaskStatus[list[Bound]]) -> None:
        path = self.config.path
        assert path is not None
        raw, file = bind_unix_socket(self.id, path, socket.SOCK_DGRAM, self.config.socket_mode)
        try:
            with trio.socket.from_stdlib_socket(raw) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                task_status.started([path])
                limit = self.config.max_message_bytes
                peer = str(path)
                receive = partial(sock.recvmsg, limit + 1, _CREDENTIALS_SPACE)
                while (received := await self._receive(receive)) is not None:
                    data, ancdata, _flags, _address = received
                    batch = self._datagram(data, peer, limit, datagram_credentials(ancdata))
                    if batch:
                        await self._deliver(batch)  # a full pipeline holds the senders
        finally:
            file.remove()

    async def _receive(self, receive: Callable[[], Awaitable[T]]) -> T | None:
        """What ``receive()`` returns (one datagram), or None once ``stop()`` was called: a stop
        cancels the wait for a datagram, never the hand-on of one already read."""
        if self._stopping:
            return None
        with trio.CancelScope() as scope:
            self._receive_scope = scope
            try:
                return await receive()
            finally:
                self._receive_scope = None
        return None

    def _datagram(
        self, data: bytes, peer: Any, limit: int, peer_cred: dict[str, int] | None = None
    ) -> list[Event]:
        self.counters["bytes"] += len(data)
        self.counters["datagrams"] += 1
        source = self.source_info(format_peer(peer))
        if peer_cred is not None:
            source["peer_cred"] = peer_cred
        received_at = utc_timestamp()
        if len(data) > limit:
            self.counters["oversized"] += 1
            reason = f"datagram longer than max_message_bytes ({limit})"
            return [self._malformed(source, received_at, reason, data, len(data))]
        frames: list[SyslogFrame] = [data]
        if data[:1].isdigit():  # loggen -P: octet counting even on UDP
            framer = AutoFramer(limit)
            frames = framer.feed(data)
            tail = framer.finish()
            if tail is not None:
                frames.append(tail)
        return self._decode(frames, source, received_at)

    def _offer(self, batch: list[Event]) -> None:
        """Queue a UDP batch for the forwarder without waiting; if the buffer is full (the
        pipeline has been full for that long), drop it (counted, logged)."""
        if not batch:
            return
        if len(self._pending) + len(batch) <= self.udp_buffer_events:
            self._pending.extend(batch)
            self._pending_added.set()
        else:
            self.counters["dropped_full"] += len(batch)
            if self._drop_log.allow(trio.current_time()) is not None:
                self.log.warning(
                    "udp_dropped_full",
                    source=self.id,
                    dropped_total=self.counters["dropped_full"],
                )

    # --- decoding ------------------------------------------------------------------------------

    def _decode_frame(self, frame: bytes, source: dict[str, Any], received_at: str) -> Event:
        message = parse(frame)
        if isinstance(message, Malformed):
            return self._rejected(source, received_at, message)
        header = message.envelope_syslog()
        body = message.msg_bytes.strip()
        if body.startswith(b"{"):
            record = decode_object(body)
            if isinstance(record, dict):
                self.counters["json_records"] += 1
                return self._record_event(received_at, source, record, body, header)
            if isinstance(record, Refused):  # a JSON record over a limit: not text either
                return self._malformed(source, received_at, record, frame, len(frame))
        fields = message.record()
        if "msg_error" in fields:  # invalid UTF-8: kept as msg_b64, with the reason
            self.counters["invalid_utf8"] += 1
        return Event(received_at, source, None, orjson.dumps(fields), syslog=header)
