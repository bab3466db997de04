"""Source ``syslog``: RFC 5424 and RFC 3164 messages over TCP, TLS (RFC 5425) or UDP.

Framing over TCP and TLS is detected per connection (``codecs.framing.AutoFramer``): octet counting
(RFC 6587 3.4.1, what rsyslog's ``TCP_Framing="octet-counted"`` and RFC 5425 send) when the first
byte is a digit, LF (or NUL) framing otherwise. Over UDP each datagram is one message (a datagram
that starts with a digit is read as octet-counted, as ``loggen -P`` sends it).

What a message becomes:

========================================  ====================================================
input                                     outcome (counter)
========================================  ====================================================
MSG is a JSON object (an audit record)    event: ``record`` = that object, byte for byte;
                                          ``syslog`` = the header fields (``events``,
                                          ``json_records``)
any other parseable message               event: ``record`` = the parsed fields plus ``msg``
                                          and ``timestamp``; ``syslog`` as above (``events``)
not a syslog message (no PRI, ...)        ``malformed`` event with the reason (``malformed``)
frame over ``max_message_bytes``          ``malformed`` event with the first 4 KiB
                                          (``malformed``, ``oversized``); carries on
bytes that break the octet framing        ``malformed`` event; the connection goes on with LF
                                          framing (``malformed``, ``bad_framing``)
UDP datagram while the pipeline is full   dropped (UDP cannot be slowed) (``dropped_full``),
                                          logged at most once a second
========================================  ====================================================

TCP and TLS senders are slowed instead: a full pipeline stops the reads. With a ``client_ca``, the
verified client certificate's subject and SANs go into ``source.tls_subject`` / ``source.tls_san``.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import orjson
import trio

from shipper.codecs.framing import AutoFramer, BadFraming, Oversized, SyslogFrame
from shipper.codecs.jsonlines import is_blank
from shipper.codecs.syslog import SyslogMessage, parse
from shipper.config import Address, SyslogSourceConfig
from shipper.errors import ListenError
from shipper.events import Event, Malformed, utc_timestamp
from shipper.logging import get_logger
from shipper.sources._net import Connection, StreamServer, format_peer

log = get_logger("shipper.sources.syslog")

Batch = list[Event]


class SyslogSource:
    """Listens for syslog over TCP/TLS/UDP and sends batches of events into the pipeline."""

    kind = "syslog"

    def __init__(
        self,
        config: SyslogSourceConfig,
        send: trio.MemorySendChannel[Batch],
        agent_field: str = "agentId",
    ) -> None:
        self.config = config
        self.id = config.id
        self._send = send
        self._agent_field = agent_field
        self.counters: Counter[str] = Counter()
        self._stopping = False
        self._udp_scope = trio.CancelScope()
        self._last_drop_log = -1.0
        self.server: StreamServer | None = None
        if config.mode in ("tcp", "tls"):
            self.server = StreamServer(
                config.id,
                config.address,
                self.handle,
                self.counters,
                ssl_context=config.tls.build() if config.tls is not None else None,
                max_connections=config.max_connections,
                idle_timeout=config.idle_timeout,
            )

    async def run(self, *, task_status: trio.TaskStatus[list[Address]]) -> None:
        """Serve until stopped; closes this source's channel to the pipeline when done."""
        async with self._send:
            if self.server is not None:
                await self.server.serve(task_status=task_status)
            else:
                await self._serve_udp(task_status)

    def stop(self) -> None:
        """Stop accepting and reading; what was read is still handed on."""
        self._stopping = True
        self._udp_scope.cancel()
        if self.server is not None:
            self.server.stop()

    # --- TCP and TLS ---------------------------------------------------------------------------

    def _source_info(self, peer: str, connection: Connection | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.id, "kind": self.kind, "peer": peer}
        if connection is not None and (connection.tls_subject is not None or connection.tls_san):
            info["tls_subject"] = connection.tls_subject
            info["tls_san"] = connection.tls_san
        return info

    async def handle(self, connection: Connection) -> None:
        """Read frames until the stream ends; every frame gets a counted outcome."""
        framer = AutoFramer(self.config.max_message_bytes)
        source = self._source_info(connection.peer, connection)
        while data := await connection.receive():
            self.counters["bytes"] += len(data)
            batch = self._decode(framer.feed(data), source, utc_timestamp())
            if batch:
                await self._send.send(batch)
        tail = framer.finish()
        if tail is not None:
            received_at = utc_timestamp()
            if connection.end_reason == "eof" or isinstance(tail, BadFraming):
                batch = self._decode([tail], source, received_at)
            else:
                raw = tail.prefix if isinstance(tail, Oversized) else tail
                size = tail.size if isinstance(tail, Oversized) else len(tail)
                reason = f"incomplete message: connection ended ({connection.end_reason})"
                batch = [self._malformed(source, received_at, reason, raw, size)]
            if batch:
                await self._send.send(batch)
        if connection.end_reason == "idle_timeout":
            self.counters["idle_timeouts"] += 1
            log.info("connection_idle_closed", source=self.id, peer=connection.peer)

    # --- UDP ---------------------------------------------------------------------------------

    async def _serve_udp(self, task_status: trio.TaskStatus[list[Address]]) -> None:
        address = self.config.address
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
            task_status.started([Address(host, port)])
            limit = self.config.max_message_bytes
            with self._udp_scope:
                while True:
                    data, peer = await sock.recvfrom(limit + 1)
                    self._offer(self._datagram(data, peer, limit))

    def _datagram(self, data: bytes, peer: Any, limit: int) -> Batch:
        self.counters["bytes"] += len(data)
        self.counters["datagrams"] += 1
        source = self._source_info(format_peer(peer))
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

    def _offer(self, batch: Batch) -> None:
        """Hand a UDP batch on without waiting: a full pipeline drops it (counted, logged)."""
        if not batch:
            return
        try:
            self._send.send_nowait(batch)
        except trio.WouldBlock:
            self.counters["dropped_full"] += len(batch)
            now = trio.current_time()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                log.warning(
                    "udp_dropped_full",
                    source=self.id,
                    dropped_total=self.counters["dropped_full"],
                )

    # --- decoding ------------------------------------------------------------------------------

    def _decode(self, frames: list[SyslogFrame], source: dict[str, Any], received_at: str) -> Batch:
        batch: Batch = []
        for frame in frames:
            if isinstance(frame, Oversized):
                self.counters["oversized"] += 1
                reason = f"message longer than max_message_bytes ({self.config.max_message_bytes})"
                batch.append(self._malformed(source, received_at, reason, frame.prefix, frame.size))
                continue
            if isinstance(frame, BadFraming):
                self.counters["bad_framing"] += 1
                batch.append(
                    self._malformed(source, received_at, frame.reason, frame.prefix, frame.size)
                )
                continue
            if is_blank(frame):
                self.counters["blank_lines"] += 1
                continue
            message = parse(frame)
            if isinstance(message, Malformed):
                self.counters["malformed"] += 1
                log.warning(
                    "malformed_input", source=self.id, peer=source["peer"], reason=message.reason
                )
                batch.append(Event(received_at, source, malformed=message))
                continue
            batch.append(self._event(message, source, received_at))
        self.counters["events"] += len(batch)
        return batch

    def _event(self, message: SyslogMessage, source: dict[str, Any], received_at: str) -> Event:
        body = message.msg_bytes.strip()
        agent = None
        if body.startswith(b"{"):
            try:
                record = orjson.loads(body)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                self.counters["json_records"] += 1
                value = record.get(self._agent_field)
                agent = value if isinstance(value, str) else None
                return Event(received_at, source, agent, body, syslog=message.envelope_syslog())
        return Event(
            received_at,
            source,
            None,
            orjson.dumps(message.record()),
            syslog=message.envelope_syslog(),
        )

    def _malformed(
        self, source: dict[str, Any], received_at: str, reason: str, raw: bytes, size: int
    ) -> Event:
        self.counters["malformed"] += 1
        log.warning(
            "malformed_input", source=self.id, peer=source["peer"], reason=reason, size=size
        )
        return Event(received_at, source, malformed=Malformed.of(reason, raw, size))
