"""Source ``json_tls``: newline-delimited JSON objects over TCP, TLS when configured.

Each line is one agent audit record (see ``shipper.codecs.jsonlines``). What a line becomes:

========================================  ====================================================
line                                      outcome (counter)
========================================  ====================================================
a JSON object                             event with ``record`` (``events``)
blank or whitespace only                  nothing to archive (``blank_lines``)
not JSON / not an object / bad UTF-8      ``malformed`` event with the reason (``malformed``)
longer than ``max_line_bytes``            ``malformed`` event with its first 4 KiB
                                          (``malformed``, ``oversized``); the connection
                                          carries on with the next line
unterminated at the peer's EOF            decoded like any line (a last line may lack its LF)
unterminated when shutdown or the         ``malformed`` event, reason names why (``malformed``)
idle timeout ends the connection
========================================  ====================================================

With ``[sources.X.tls]`` and a ``client_ca``, the verified client certificate's subject (RFC 4514)
and subjectAltName values go into every event's ``source.tls_subject`` / ``source.tls_san``; with
``require_client_cert`` a client without a valid certificate is refused at the handshake (logged as
``connection_refused``, counted as ``tls_handshake_failed``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from shipper.codecs.framing import LineFramer, Oversized
from shipper.codecs.jsonlines import decode_object, is_blank
from shipper.config import Address, JsonTlsSourceConfig
from shipper.events import Event, Malformed, utc_timestamp
from shipper.logging import get_logger
from shipper.sources._net import Connection, StreamServer

log = get_logger("shipper.sources.json_tls")

Batch = list[Event]


class JsonTlsSource:
    """Listens for NDJSON over TCP/TLS and sends batches of events into the pipeline."""

    kind = "json_tls"

    def __init__(
        self,
        config: JsonTlsSourceConfig,
        send: trio.MemorySendChannel[Batch],
        agent_field: str = "agentId",
    ) -> None:
        self.config = config
        self.id = config.id
        self._send = send
        self._agent_field = agent_field
        self.counters: Counter[str] = Counter()
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
            await self.server.serve(task_status=task_status)

    def stop(self) -> None:
        """Stop accepting and reading; what was read is still handed on."""
        self.server.stop()

    def _source_info(self, connection: Connection) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.id, "kind": self.kind, "peer": connection.peer}
        if connection.tls_subject is not None or connection.tls_san:
            info["tls_subject"] = connection.tls_subject
            info["tls_san"] = connection.tls_san
        return info

    async def handle(self, connection: Connection) -> None:
        """Read lines until the stream ends; every line gets a counted outcome."""
        framer = LineFramer(self.config.max_line_bytes)
        source = self._source_info(connection)
        events_before = self.counters["events"]
        while data := await connection.receive():
            self.counters["bytes"] += len(data)
            batch = self._decode(framer.feed(data), source, utc_timestamp())
            if batch:
                await self._send.send(batch)
        tail = framer.finish()
        if tail is not None:
            received_at = utc_timestamp()
            if connection.end_reason == "eof":
                batch = self._decode([tail], source, received_at)
            else:
                raw = tail.prefix if isinstance(tail, Oversized) else tail
                size = tail.size if isinstance(tail, Oversized) else len(tail)
                reason = f"incomplete line: connection ended ({connection.end_reason})"
                batch = [self._malformed(source, received_at, reason, raw, size)]
            if batch:
                await self._send.send(batch)
        log.debug(
            "connection_closed",
            source=self.id,
            peer=connection.peer,
            reason=connection.end_reason,
            events=self.counters["events"] - events_before,
            bytes=connection.bytes_received,
        )
        if connection.end_reason == "idle_timeout":
            self.counters["idle_timeouts"] += 1
            log.info("connection_idle_closed", source=self.id, peer=connection.peer)

    def _decode(
        self, frames: list[bytes | Oversized], source: dict[str, Any], received_at: str
    ) -> Batch:
        batch: Batch = []
        agent_field = self._agent_field
        for frame in frames:
            if isinstance(frame, Oversized):
                self.counters["oversized"] += 1
                reason = f"line longer than max_line_bytes ({self.config.max_line_bytes})"
                batch.append(self._malformed(source, received_at, reason, frame.prefix, frame.size))
                continue
            record = decode_object(frame)
            if isinstance(record, dict):
                agent = record.get(agent_field)
                batch.append(
                    Event(
                        received_at,
                        source,
                        agent if isinstance(agent, str) else None,
                        frame,
                    )
                )
            elif is_blank(frame):
                self.counters["blank_lines"] += 1
            else:
                batch.append(self._malformed(source, received_at, record, frame, len(frame)))
        self.counters["events"] += len(batch)
        return batch

    def _malformed(
        self, source: dict[str, Any], received_at: str, reason: str, raw: bytes, size: int
    ) -> Event:
        self.counters["malformed"] += 1
        log.warning(
            "malformed_input", source=self.id, peer=source["peer"], reason=reason, size=size
        )
        return Event(received_at, source, malformed=Malformed.of(reason, raw, size))
