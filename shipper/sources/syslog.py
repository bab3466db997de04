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
from typing import Any

import orjson
import trio

from shipper.codecs.framing import AutoFramer, SyslogFrame
from shipper.codecs.jsonlines import decode_object
from shipper.codecs.syslog import parse
from shipper.config import Address, SyslogSourceConfig
from shipper.errors import ListenError
from shipper.events import Event, Malformed, utc_timestamp
from shipper.sources._net import FramedSource, Framer, format_peer


class SyslogSource(FramedSource):
    """Listens for syslog over TCP/TLS/UDP and sends batches of events into the pipeline."""

    kind = "syslog"
    unit = "message"

    def __init__(
        self,
        config: SyslogSourceConfig,
        send: trio.MemorySendChannel[list[Event]],
        agent_field: str = "agentId",
    ) -> None:
        super().__init__(
            config.id, send, agent_field, config.max_message_bytes, "max_message_bytes"
        )
        self.config = config
        self._udp_scope = trio.CancelScope()
        self._last_drop_log = -1.0
        if config.mode in ("tcp", "tls"):
            self.server = self._listen(
                config.address, config.tls, config.max_connections, config.idle_timeout
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
        self._udp_scope.cancel()
        super().stop()

    def _framer(self) -> Framer:
        return AutoFramer(self._max_frame)

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

    def _datagram(self, data: bytes, peer: Any, limit: int) -> list[Event]:
        self.counters["bytes"] += len(data)
        self.counters["datagrams"] += 1
        source = self.source_info(format_peer(peer))
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
                return Event(received_at, source, self._agent(record), body, syslog=header)
        return Event(received_at, source, None, orjson.dumps(message.record()), syslog=header)
