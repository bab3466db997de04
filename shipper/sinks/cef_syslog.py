"""Sink ``cef_syslog``: every event as one CEF line (``shipper.codecs.cef``) in a syslog message,
to a SIEM's syslog receiver over TCP, TLS or UDP.

What goes on the wire, per event::

    RFC 5424 (default):  <PRI>1 RECEIVED_AT HOSTNAME APP-NAME - - - CEF:0|...
    RFC 3164:            <PRI>Mmm dd hh:mm:ss HOSTNAME APP-NAME: CEF:0|...

``RECEIVED_AT`` is when shipper received the event (the envelope's ``received_at``; RFC 3164 has
its UTC wall-clock time), so a message sent again is the same bytes. ``PRI`` is ``facility``
(default ``auth``) with a syslog severity from the CEF severity: 9-10 ``crit``, 7-8 ``err``, 5-6
``warning``, 4 ``notice``, 0-3 ``info``. The MSG is the CEF line as UTF-8, without a BOM (CEF
parsers refuse one before ``CEF:``).

Transports:

* ``tcp`` (default): RFC 6587 octet counting (``LEN SP MSG``, the default) or ``framing = "lf"``
  (each message ends with LF; a CEF line holds no raw LF).
* ``tls``: the same over TLS (RFC 5425), the server verified against certifi's bundle or
  ``tls.ca``, its name against ``tls.server_name`` or the host;
  ``tls.cert`` and ``tls.key`` present a client certificate (mutual TLS). After the handshake
  the sink waits ``TLS_SETTLE_SECONDS`` (0.25 s) before writing: in TLS 1.3 a receiver checks the
  client's certificate after the client's handshake has ended, and some (rsyslog with GnuTLS)
  close the connection then; written into, such a connection would lose every batch. A
  connection refused so is a failed connection attempt, retried, and says why.
* ``udp``: one datagram per message (RFC 5426), no framing. A message longer than
  ``udp_max_bytes`` (default 2048, what RFC 5426 says receivers should take) is not sent: it is
  counted (``sink_oversized_messages``) and logged (``cef_syslog_message_too_large``, with the
  event's id); the WAL and the archive still hold the event.

Delivery: plain syslog has no application acknowledgement. A batch counts as delivered, and the
driver moves the WAL cursor, once its bytes are written to the socket (handed to the kernel).
Delivery is therefore **at least once**:

* a connection that breaks while messages are written: the sink reconnects (the driver's retries,
  with backoff) and sends the batch again from the first message it had not finished writing
  (``resume_point``: the last message written on this run), so messages are not duplicated by
  the retry;
* a crash or restart between a write and the driver's acknowledgement: the next start sends
  those messages again (the receiver sees them twice; ``externalId`` is the event's id, the same
  both times);
* loss is possible only inside the kernel's send buffer of a connection that then breaks: bytes
  written but never read by the receiver (it crashed, or closed while they were in flight). Before
  each batch the sink checks whether the receiver closed the connection (a syslog receiver sends
  nothing, so a readable socket means it closed; over TLS what it sent is read first), and
  reconnects instead of writing into a closed connection; a connection found closed, or broken
  by a write, is counted (``sink_connections_lost``). Over UDP anything may be lost, unseen.

Reconnects are counted (``sink_reconnects``: connections made after the connection was lost or
could not be made; the first connection is not one), and so are connection attempts that failed
(``sink_connect_failures``), and the messages and bytes written (``sink_messages_written``,
``sink_written_bytes``).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Final, Literal

import orjson
import trio

from shipper import __version__
from shipper.buffer.segment import Position
from shipper.codecs import cef
from shipper.codecs.syslog import FACILITIES, format_rfc3164, format_rfc5424
from shipper.config import SINK_TYPES, Address, SinkCommon, SinkConfig, Table, TlsClientConfig
from shipper.config.reader import did_you_mean, show
from shipper.config.values import literal_values
from shipper.errors import DestinationUnavailable
from shipper.logging import get_logger
from shipper.metrics import CounterSet, Registry
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext, position_of

log = get_logger("shipper.sinks.cef_syslog")

Transport = Literal["tcp", "tls", "udp"]
Framing = Literal["octet-counting", "lf"]
SyslogFormat = Literal["rfc5424", "rfc3164"]

#: What the sink counts (``sink_<name>`` metrics, labelled with the sink's id).
CEF_SYSLOG_COUNTERS: Final[dict[str, str]] = {
    "messages_written": "Syslog messages written to the receiver's connection",
    "written_bytes": "Bytes written to the receiver's connection, framing included",
    "reconnects": "Connections made after the connection was lost or could not be made",
    "connect_failures": "Connection attempts that failed",
    "connections_lost": "Connections found closed by the receiver, or broken by a write",
    "oversized_messages": "Messages longer than udp_max_bytes, not sent",
}
#: Bytes written to the socket at a time (whole messages; one longer message alone).
WRITE_BYTES: Final = 64 * 1024
#: How long to wait for what a TLS receiver sent (a session ticket, or its close) to be read.
PROBE_SECONDS: Final = 0.05
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: How long the sink waits after a TLS handshake for the receiver to refuse the connection.
TLS_SETTLE_SECONDS: Final = 0.25
#: Batches of at most 2000 events or 512 KiB, sent as soon as they are read.
CEF_BATCHING: Final = BatchSettings(max_events=2000, max_bytes=512 * 1024, max_age=0.0)


@SINK_TYPES.register
@dataclass(frozen=True, kw_only=True)
class CefSyslogSinkConfig(SinkConfig):
    """``type = "cef_syslog"``: CEF over syslog to a SIEM (see the module docstring, README)."""

    kind: ClassVar[str] = "cef_syslog"
    forwards: ClassVar[bool] = True
    address: Address
    transport: Transport = "tcp"
    framing: Framing = "octet-counting"
    format: SyslogFormat = "rfc5424"
    hostname: str = field(default_factory=socket.gethostname)
    app_name: str = "shipper"
    facility: str = "auth"
    vendor: str = "shipper"
    product: str = "shipper"
    version: str = __version__
    tls: TlsClientConfig | None = None
    udp_max_bytes: int = 2048
    connect_timeout: float = 10.0
    mapping: dict[str, cef.Rule] = field(default_factory=lambda: dict(cef.DEFAULT_MAPPING))

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> CefSyslogSinkConfig | None:
        before = table.problem_count
        address = table.address("address")
        transport = table.choice("transport", literal_values(Transport), "tcp")
        framing = table.choice("framing", literal_values(Framing), "octet-counting")
        if transport == "udp" and table.has("framing"):
            table.problem("framing", "expected only with transport tcp or tls (UDP is unframed)")
        syslog_format = table.choice("format", literal_values(SyslogFormat), "rfc5424")
        hostname = table.string("hostname", "") or socket.gethostname()
        app_name = table.string("app_name", cls.app_name)
        facility = table.choice("facility", FACILITIES, "auth")
        _check_header(table, syslog_format, hostname, app_name)
        vendor = table.string("vendor", cls.vendor)
        product = table.string("product", cls.product)
        version = table.string("version", cls.version)
        tls_table = table.table("tls")
        tls: TlsClientConfig | None = None
        if tls_table is not None:
            if transport != "tls":
                table.problem("tls", 'expected only with transport = "tls"')
                tls_table.skip()
            else:
                tls = tls_table.tls_client()
        udp_max_bytes = table.size("udp_max_bytes", cls.udp_max_bytes, minimum=480, maximum=65507)
        if transport != "udp" and table.has("udp_max_bytes"):
            table.problem("udp_max_bytes", 'expected only with transport = "udp"')
        connect_timeout = table.duration("connect_timeout", cls.connect_timeout, minimum=0.1)
        mapping = read_mapping(table)
        if table.problem_count > before or mapping is None:
            return None
        return cls(
            **common,
            address=address,
            transport=transport,
            framing=framing,
            format=syslog_format,
            hostname=hostname,
            app_name=app_name,
            facility=facility,
            vendor=vendor,
            product=product,
            version=version,
            tls=tls,
            udp_max_bytes=udp_max_bytes,
            connect_timeout=connect_timeout,
            mapping=mapping,
        )

    def build(self, context: SinkContext) -> CefSyslogSink:
        return CefSyslogSink(self)

    def own_counters(self) -> Mapping[str, str]:
        return CefSyslogSink.own_counters


def _check_header(table: Table, syslog_format: str, hostname: str, app_name: str) -> None:
    """The hostname and app-name must fit the syslog header they go into."""
    try:
        format_rfc5424("user", "info", hostname=hostname)
    except ValueError:
        table.problem(
            "hostname", f"expected printable US-ASCII without spaces, got {show(hostname)}"
        )
    if len(hostname) > 255:
        table.problem("hostname", "expected at most 255 characters (RFC 5424)")
    try:
        if syslog_format == "rfc3164":
            format_rfc3164("user", "info", timestamp=_EPOCH, app_name=app_name)
        else:
            format_rfc5424("user", "info", app_name=app_name)
    except ValueError:
        table.problem(
            "app_name",
            "expected printable US-ASCII without spaces"
            + (", ':', '[' or ']' (an RFC 3164 TAG)" if syslog_format == "rfc3164" else "")
            + f", got {show(app_name)}",
        )
    if len(app_name) > 48:
        table.problem("app_name", "expected at most 48 characters (RFC 5424)")


def read_mapping(table: Table) -> dict[str, cef.Rule] | None:
    """``[sinks.X.mapping]``: CEF key = field path, list of paths, ``{ value = ... }`` literal,
    or false; merged into the default mapping. None after a problem."""
    mapping_table = table.table("mapping")
    if mapping_table is None:
        return dict(cef.DEFAULT_MAPPING)
    before = table.problem_count
    overrides: dict[str, cef.Rule] = {}
    for key in list(mapping_table.keys()):
        if key not in cef.KEYS:
            mapping_table.refuse(
                [key],
                "unknown CEF extension key" + did_you_mean(key, sorted(cef.KEYS)),
            )
            continue
        rule = mapping_table.convert(key, None, cef.parse_rule, None)
        if rule is not None:
            overrides[key] = rule
    mapping_table.finish()
    if table.problem_count > before:
        return None
    return cef.mapping_with(overrides)


# --- the sink ----------------------------------------------------------------------------------

_SYSLOG_SEVERITY: Final = ("info",) * 4 + (
    "notice",
    "warning",
    "warning",
    "err",
    "err",
    "crit",
    "crit",
)


#: Syslog headers kept for reuse (by received_at and severity); all are dropped when full.
_HEADS_KEPT: Final = 64


class CefSyslogSink(SinkBase):
    """Writes each event as a CEF syslog message to one receiver (see the module docstring)."""

    kind = "cef_syslog"
    batching = CEF_BATCHING
    own_counters: Mapping[str, str] = CEF_SYSLOG_COUNTERS

    def __init__(self, config: CefSyslogSinkConfig) -> None:
        super().__init__(config.id)
        self.config = config
        self.encoder = cef.CefEncoder(config.vendor, config.product, config.version, config.mapping)
        self.counters = CounterSet(Registry(), "sink", config.id, CEF_SYSLOG_COUNTERS)
        self._stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        self._udp: trio.socket.SocketType | None = None
        self._ssl: ssl.SSLContext | None = None
        self._epoch = ""
        self._last: Position | None = None  # the last message written on this run (this epoch)
        # The first and last message written on the current connection (what may be lost if it
        # breaks: logged then).
        self._on_connection: tuple[Position, Position] | None = None
        self._ever_connected = False
        self._failed_since_connect = False  # a connection was lost, or could not be made
        self._heads: dict[tuple[object, int], bytes] = {}  # (received_at, severity) -> header

    def count_into(self, counters: CounterSet) -> None:
        """Count into the driver's counters from now on (``shipper.sinks.base.Counting``)."""
        self.counters = counters

    async def open(self, epoch: str) -> None:
        """Nothing to open yet: the connection is made at the first delivery (so that a
        receiver that is down shows as a failed write, retried)."""
        if epoch != self._epoch:
            self._epoch, self._last = epoch, None

    async def resume_point(self) -> Position | None:
        """The last message written to a connection on this run: a retry after a broken
        connection goes on after it. (After a restart: None; what was written and not
        acknowledged is sent again.)"""
        return self._last

    async def deliver(self, batch: Batch) -> None:
        """Write every message of the batch to the receiver, connecting first if need be."""
        messages = self.messages(batch.envelopes)
        if self.config.transport == "udp":
            await self._send_datagrams(batch.envelopes, messages)
            return
        if self._stream is not None and await self._peer_closed():
            await self._lost("the receiver closed the connection")
        if self._stream is None:
            await self._connect()
        assert self._stream is not None
        start = 0
        while start < len(messages):
            end = start + 1
            size = len(messages[start])
            while end < len(messages) and size + len(messages[end]) <= WRITE_BYTES:
                size += len(messages[end])
                end += 1
            try:
                await self._stream.send_all(b"".join(messages[start:end]))
            except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
                await self._lost(f"writing failed: {_reason(exc)}")
                raise DestinationUnavailable(
                    f"connection to {self._where()} lost while writing: {_reason(exc)} "
                    f"({start} of {len(messages)} messages of the batch written)"
                ) from exc
            self._written(
                position_of(batch.envelopes[start]), position_of(batch.envelopes[end - 1])
            )
            self.counters["messages_written"] += end - start
            self.counters["written_bytes"] += size
            start = end

    async def close(self) -> None:
        await self._disconnect()

    # --- messages ------------------------------------------------------------------------------

    def messages(self, envelopes: list[bytes]) -> list[bytes]:
        """Each envelope as one syslog message, framed for the transport."""
        config = self.config
        out: list[bytes] = []
        octets = config.transport != "udp" and config.framing == "octet-counting"
        lf = config.transport != "udp" and config.framing == "lf"
        for envelope in envelopes:
            parsed = orjson.loads(envelope)
            encoded = self.encoder.encode(parsed)
            message = self.syslog_message(parsed, encoded)
            if octets:
                message = b"%d %b" % (len(message), message)
            elif lf:
                message += b"\n"
            out.append(message)
        return out

    def syslog_message(self, envelope: dict[str, object], encoded: cef.Encoded) -> bytes:
        """The CEF line behind the configured syslog header."""
        received = envelope.get("received_at")
        key = (received, encoded.severity)
        if type(received) is str and (head := self._heads.get(key)) is not None:
            return head + encoded.line.encode("utf-8")
        head = self._syslog_head(received, encoded.severity)
        if type(received) is str:
            # The events of a batch mostly share their received_at (a source stamps each
            # read): the header, the timestamp parsed and checked, is made once for them.
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[key] = head
        return head + encoded.line.encode("utf-8")

    def _syslog_head(self, received: object, cef_severity: int) -> bytes:
        """The syslog header of an event received at ``received``, with the space before MSG."""
        config = self.config
        severity = _SYSLOG_SEVERITY[cef_severity]
        moment = _moment(received)
        if config.format == "rfc3164":
            return format_rfc3164(
                config.facility,
                severity,
                timestamp=(moment or _EPOCH).astimezone(UTC),
                hostname=config.hostname,
                app_name=config.app_name,
                msg=b"",
            )
        return format_rfc5424(
            config.facility,
            severity,
            timestamp=received if isinstance(received, str) and moment is not None else None,
            hostname=config.hostname,
            app_name=config.app_name,
            msg=b"",
        )

    # --- connections ---------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.config.transport}://{self.config.address}"

    async def _connect(self) -> None:
        config = self.config
        host, port = config.address.host, config.address.port
        try:
            context = self._context() if config.transport == "tls" else None
            with trio.fail_after(config.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                if context is not None:
                    tls = config.tls or TlsClientConfig()
                    ssl_stream = trio.SSLStream(
                        stream, context, server_hostname=tls.server_hostname(host)
                    )
                    try:
                        await ssl_stream.do_handshake()
                        refused = await _refused_after_handshake(ssl_stream)
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    if refused is not None:
                        await trio.aclose_forcefully(ssl_stream)
                        raise _Refused(refused)
                    self._stream = ssl_stream
                else:
                    self._stream = stream
        except (
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            ssl.SSLError,
            _Refused,
        ) as exc:
            self.counters["connect_failures"] += 1
            self._failed_since_connect = True
            raise DestinationUnavailable(_connect_problem(self._where(), exc)) from exc
        self._connected()

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = (self.config.tls or TlsClientConfig()).build()
        return self._ssl

    def _connected(self) -> None:
        if self._ever_connected and self._failed_since_connect:
            self.counters["reconnects"] += 1
        self._ever_connected = True
        self._failed_since_connect = False
        self._on_connection = None
        log.info("cef_syslog_connected", sink=self.id, to=self._where())

    async def _peer_closed(self) -> bool:
        """Whether the receiver closed the connection (it never sends anything else, except
        TLS's own records, which are read here)."""
        stream = self._stream
        assert stream is not None
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        state = _peek(raw.socket)
        if state == "data" and isinstance(stream, trio.SSLStream):
            with trio.move_on_after(PROBE_SECONDS):
                try:
                    return await stream.receive_some(65536) == b""
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return True
            return False  # TLS records only (session tickets): the receiver is there
        return state == "closed"

    def _written(self, first: Position, last: Position) -> None:
        self._last = last
        if self._on_connection is None:
            self._on_connection = (first, last)
        else:
            self._on_connection = (self._on_connection[0], last)

    async def _lost(self, why: str) -> None:
        """The connection is gone: count it, log it (with the range of events written on it:
        those the receiver may not have read), and close it."""
        self.counters["connections_lost"] += 1
        self._failed_since_connect = True
        written = self._on_connection
        log.warning(
            "cef_syslog_connection_lost",
            sink=self.id,
            to=self._where(),
            reason=why,
            written_first=None if written is None else str(written[0]),
            written_last=None if written is None else str(written[1]),
        )
        await self._disconnect()

    async def _disconnect(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()

    # --- UDP -----------------------------------------------------------------------------------

    async def _send_datagrams(self, envelopes: list[bytes], messages: list[bytes]) -> None:
        config = self.config
        if self._udp is None:
            udp = trio.socket.socket(
                socket.AF_INET6 if ":" in config.address.host else socket.AF_INET,
                socket.SOCK_DGRAM,
            )
            try:
                await udp.connect((config.address.host, config.address.port))
            except OSError as exc:
                udp.close()
                self.counters["connect_failures"] += 1
                self._failed_since_connect = True
                raise DestinationUnavailable(_connect_problem(self._where(), exc)) from exc
            self._udp = udp
            self._connected()
        for envelope, message in zip(envelopes, messages, strict=True):
            if len(message) > config.udp_max_bytes:
                self._oversized(envelope, len(message))
                continue
            try:
                await self._udp.send(message)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    self._oversized(envelope, len(message))
                    continue
                await self._lost(f"sending failed: {_reason(exc)}")
                raise DestinationUnavailable(
                    f"cannot send to {self._where()}: {_reason(exc)}"
                ) from exc
            self._written(position_of(envelope), position_of(envelope))
            self.counters["messages_written"] += 1
            self.counters["written_bytes"] += len(message)

    def _oversized(self, envelope: bytes, size: int) -> None:
        self.counters["oversized_messages"] += 1
        self._last = position_of(envelope)
        log.warning(
            "cef_syslog_message_too_large",
            sink=self.id,
            id=str(position_of(envelope)),
            bytes=size,
            limit=self.config.udp_max_bytes,
        )


class _Refused(Exception):
    """The TLS receiver closed the connection right after the handshake."""


async def _refused_after_handshake(stream: trio.SSLStream[trio.SocketStream]) -> str | None:
    """Why the receiver refused this client right after the TLS handshake, or None.

    In TLS 1.3 the client's handshake ends before the server has checked the client's
    certificate, and some receivers (rsyslog with GnuTLS) check it after their handshake and
    then close the connection: what the client wrote meanwhile would be lost. So the sink waits
    ``TLS_SETTLE_SECONDS`` for such a close (reading what the receiver sends, such as session
    tickets) before it writes.
    """
    with trio.move_on_after(TLS_SETTLE_SECONDS):
        try:
            if await stream.receive_some(65536) == b"":
                return "it closed the connection"
        except (trio.BrokenResourceError, OSError) as exc:
            return _reason(exc)
    return None


def _peek(sock: trio.socket.SocketType) -> Literal["idle", "data", "closed"]:
    """Whether the peer sent something (``data``), closed or reset the connection (``closed``),
    or neither (``idle``), without waiting and without taking what it sent."""
    fd = sock.fileno()
    poll = select.poll()  # (not select.select: a daemon's descriptors may pass FD_SETSIZE)
    poll.register(fd, select.POLLIN)
    if not poll.poll(0):
        return "idle"
    with socket.socket(fileno=os.dup(fd)) as view:
        try:
            return "data" if view.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else "closed"
        except BlockingIOError:
            return "idle"
        except OSError:
            return "closed"


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    return str(cause) or type(cause).__name__


def _connect_problem(where: str, exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"cannot connect to {where}: the receiver's certificate is not trusted "
            f"({cause.verify_message}); fix tls.ca, tls.server_name or the receiver's certificate"
        )
    if isinstance(exc, _Refused):
        return (
            f"cannot connect to {where}: the receiver refused the TLS connection after the "
            f"handshake ({exc}); does it require a client certificate (tls.cert, tls.key) that "
            "it trusts?"
        )
    if isinstance(exc, trio.TooSlowError):
        return f"cannot connect to {where}: no answer within connect_timeout"
    return f"cannot connect to {where}: {_reason(exc)}"
