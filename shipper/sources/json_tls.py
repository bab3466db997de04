"""Source ``json_tls``: newline-delimited JSON objects over TCP, TLS when configured.

Each line is one agent audit record (see ``shipper.codecs.jsonlines``). What a line becomes:

========================================  ====================================================
line                                      outcome (counter)
========================================  ====================================================
a JSON object                             event with ``record`` (``events``)
blank or whitespace only                  nothing to archive (``blank_lines``)
not JSON / not an object / bad UTF-8      ``malformed`` event with the reason (``malformed``)
a JSON object over a record limit         ``malformed`` event with the reason (``malformed``),
(deeper than 254 levels, a member name    never verified or identity-checked
given twice; see ``codecs.jsonlines``)
longer than ``max_line_bytes``            ``malformed`` event with its first 4 KiB
                                          (``malformed``, ``oversized``); the connection
                                          carries on with the next line
unterminated at the peer's EOF            decoded like any line (a last line may lack its LF)
unterminated when shutdown,               ``malformed`` event, reason names why (``malformed``)
``idle_timeout`` or ``frame_timeout``     ("incomplete line: connection ended
ends the connection                       (frame_timeout)")
========================================  ====================================================

Connection admission (``max_connections``, ``max_connections_per_peer``, ``idle_timeout``,
``frame_timeout``, ``handshake_timeout``) is ``shipper.sources._net``'s: a line must be complete
within ``frame_timeout`` of its first byte.

With ``[sources.X.tls]`` and a ``client_ca``, the verified client certificate's subject (RFC 4514)
and subjectAltName values go into every event's ``source.tls_subject`` / ``source.tls_san``; with
``require_client_cert`` a client without a valid certificate is refused at the handshake (logged as
``connection_refused``, counted as ``refused_handshake_failed``). With ``[sources.X.identity]``, each
record's agent id is checked against what that certificate may claim: a record it may not claim is
archived with ``identity_mismatch`` and followed by a ``shipper.identity_alert`` event (counted as
``identity_mismatch``; see ``shipper.sources._identity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from shipper.chain import SEED, Profile
from shipper.codecs.framing import LineFramer
from shipper.codecs.jsonlines import decode_object
from shipper.config import SOURCE_TYPES, Address, Endpoint, SourceCommon, Table
from shipper.events import Event
from shipper.sources._listener import (
    MAX_LINE_BYTES,
    ListenerConfig,
    read_admission,
    read_identity,
    read_limits,
    read_tls,
)
from shipper.sources._net import FramedSource, Framer, StreamServer


@SOURCE_TYPES.register
@dataclass(frozen=True, kw_only=True)
class JsonTlsSourceConfig(ListenerConfig):
    """``type = "json_tls"``: newline-delimited JSON objects over TCP, TLS when ``tls`` is set.

    Keys: ``address`` (required), ``max_line_bytes``, and the listener's (``_listener``):
    ``tls``, ``max_connections``, ``idle_timeout``, ``max_connections_per_peer``,
    ``frame_timeout``, ``handshake_timeout`` (with ``tls`` only), ``identity``.
    """

    kind: ClassVar[str] = "json_tls"
    address: Address
    max_line_bytes: int = 1024 * 1024

    @classmethod
    def read(cls, table: Table, common: SourceCommon) -> JsonTlsSourceConfig:
        address = table.address("address")
        tls_table, tls = read_tls(table)
        limits = read_limits(table)
        no_tls = None if tls_table is not None else "expected only with TLS, got no tls table"
        admission = read_admission(table, limits["max_connections"], no_tls)
        return cls(
            **common,
            address=address,
            tls=tls,
            identity=read_identity(table, tls_table),
            max_line_bytes=table.size(
                "max_line_bytes", cls.max_line_bytes, minimum=64, maximum=MAX_LINE_BYTES
            ),
            **limits,
            **admission,
        )

    def build(
        self, send: trio.MemorySendChannel[list[Event]], profile: Profile = SEED
    ) -> JsonTlsSource:
        return JsonTlsSource(self, send, profile)

    def endpoint(self) -> Endpoint | None:
        return Endpoint("address", "tcp", self.address) if self.address.port else None


class JsonTlsSource(FramedSource):
    """Listens for NDJSON over TCP/TLS and sends batches of events into the pipeline."""

    kind = "json_tls"
    unit = "line"

    def __init__(
        self,
        config: JsonTlsSourceConfig,
        send: trio.MemorySendChannel[list[Event]],
        profile: Profile = SEED,
    ) -> None:
        super().__init__(
            config.id, send, profile, config.max_line_bytes, "max_line_bytes", config.identity
        )
        self.config = config
        self.server: StreamServer = self._listen(config.address, config)

    def _framer(self) -> Framer:
        return LineFramer(self._max_frame)

    def _decode_frame(self, frame: bytes, source: dict[str, Any], received_at: str) -> Event:
        record = decode_object(frame)
        if isinstance(record, dict):
            return self._record_event(received_at, source, record, frame)
        return self._malformed(source, received_at, record, frame, len(frame))
