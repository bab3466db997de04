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
(deeper than 254 levels, a member name    the whole message's bytes, never verified or
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
UDP datagram while the pipeline is full   held in the burst buffer (see below); once that is
                                          full too, dropped (``dropped_full``), logged
                                          (``udp_dropped_full``) at most once a second
UDP datagram while shipper cannot read    dropped by the kernel when the socket's receive
fast enough                               buffer is full; counted (``kernel_dropped``), logged
                                          (``udp_kernel_dropped``) at most once a second
TLS: a claim the client certificate may   archived with ``identity_mismatch``, followed by a
not make (``[sources.X.identity]``)       ``shipper.identity_alert`` event
                                          (``identity_mismatch``), logged at most once a second
========================================  ====================================================

UDP cannot slow its senders, and loses data in two places, each counted:

* The kernel's receive buffer (``receive_buffer``; the kernel's default,
  ``net.core.rmem_default``, when not set) holds datagrams until shipper reads them; when it is
  full the kernel drops them. With ``receive_buffer`` the source asks for that size with
  ``SO_RCVBUFFORCE`` (not capped by ``net.core.rmem_max``; needs CAP_NET_ADMIN), else with
  ``SO_RCVBUF``, and logs ``udp_receive_buffer`` with what it asked for and what the kernel
  granted (half of what Linux reports: the other half is the kernel's bookkeeping), as a warning
  naming the sysctl to raise when it got less. Linux counts the drops per socket
  (``SO_RXQ_OVFL``) and hands the count over with the next datagram received: its increase is
  counted as ``kernel_dropped`` and logged as ``udp_kernel_dropped`` (``dropped`` since the last
  line, ``dropped_total``) at most once a second, a second after the last line at the latest.
* The burst buffer holds what the source read while the pipeline was full, and hands it on as
  soon as there is room, in batches of at most about ``FORWARD_BYTES``. It is bounded by
  ``burst_events`` and ``burst_bytes``; an event counts its bytes plus a fixed overhead, and its
  syslog header's and structured data's objects (``burst_cost``, an upper bound of the memory it
  holds; its parsed record was dropped as soon as its ``Facts`` were taken). The batch being handed
  on counts until the pipeline took it. A datagram whose events do not fit is dropped
  (``dropped_full``; logged as ``udp_dropped_full`` at most once a second); an empty buffer takes
  any one datagram.

Every other sender is slowed instead: a full pipeline stops the reads. That includes unix datagram
sockets: unlike UDP, the kernel holds a sender (``syslog(3)``, ``logger``) while the socket's queue
is full, so nothing is dropped, as with ``/dev/log``. With a ``client_ca``, the verified client
certificate's subject and SANs go into ``source.tls_subject`` / ``source.tls_san``; over a unix
socket, ``source.peer`` is the socket's path and ``source.peer_cred`` the sender's pid, uid and
gid (see ``shipper.sources._net``). Identity binding is documented in
``shipper.sources._identity``.

A stop reads, without waiting for more, the datagrams queued on the socket (at most what its
queue can hold: a UDP socket's receive buffer in bytes, a unix datagram socket's
``net.unix.max_dgram_qlen`` in datagrams), and hands them on like any other (UDP's through the
burst buffer); stream connections read what they hold too (``shipper.sources._net``).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar

import orjson
import trio

from shipper.chain import SEED, Profile
from shipper.codecs.framing import AutoFramer, Framed
from shipper.codecs.jsonlines import Refused, decode_object
from shipper.codecs.syslog import parse
from shipper.config import SOURCE_TYPES, Address, Endpoint, SourceCommon, Table, literal_values
from shipper.config.reader import show
from shipper.errors import ListenError
from shipper.events import Event, Malformed, utc_timestamp
from shipper.logging import Throttle
from shipper.sources import Listening
from shipper.sources._listener import (
    MAX_LINE_BYTES,
    ListenerConfig,
    read_admission,
    read_identity,
    read_limits,
    read_tls,
    refuse_stream_keys,
)
from shipper.sources._net import (
    SOCKET_MODE,
    Bound,
    FramedSource,
    Framer,
    bind_unix_socket,
    datagram_credentials,
    format_peer,
)

T = TypeVar("T")

#: At a stop, the least a queued UDP datagram is counted as against the receive buffer: the
#: kernel charges each with its buffer's whole size (several hundred bytes for an empty one).
DATAGRAM_TRUESIZE: Final = 256
#: At a stop, the queued datagrams read between two turns given to trio (its timers, signals).
DRAIN_CHECKPOINT: Final = 64

#: ``mode``: the transport a syslog source listens on.
SyslogMode = Literal["tcp", "tls", "udp", "unix"]
SYSLOG_MODES: Final[tuple[SyslogMode, ...]] = literal_values(SyslogMode)
#: ``socket_type`` of a syslog source with ``mode = "unix"``.
UnixSocketType = Literal["datagram", "stream"]
UNIX_SOCKET_TYPES: Final[tuple[UnixSocketType, ...]] = literal_values(UnixSocketType)
#: The longest unix socket path the kernel binds (``sun_path`` holds 108 bytes with its NUL).
MAX_UNIX_PATH_BYTES: Final = 107
_FILE_MODE_RE: Final = re.compile(r"0?[0-7]{3}")
#: Keys that only a syslog source with ``mode = "udp"`` takes.
UDP_ONLY_KEYS: Final = ("receive_buffer", "burst_events", "burst_bytes")
#: Defaults of the burst buffer of a ``syslog`` source with ``mode = "udp"`` (events, bytes).
BURST_EVENTS: Final = 65536
BURST_BYTES: Final = 16 * 1024 * 1024
#: ``receive_buffer`` bounds: SO_RCVBUF takes a C int, which the kernel doubles.
MIN_RECEIVE_BUFFER: Final = 4096
MAX_RECEIVE_BUFFER: Final = 512 * 1024 * 1024


@SOURCE_TYPES.register
@dataclass(frozen=True, kw_only=True)
class SyslogSourceConfig(ListenerConfig):
    """``type = "syslog"``: RFC 5424/3164 over TCP, TLS (RFC 5425), UDP or a unix socket.

    ``address`` is set for every mode but ``"unix"``, which has ``path`` (and ``socket_type``,
    ``socket_mode``) instead. The connection keys (``max_connections`` ... ``frame_timeout``)
    apply to the stream modes; ``receive_buffer`` (None: the kernel's default) and the burst
    buffer's bounds to ``mode = "udp"``. ``tls`` is required with ``mode = "tls"``, and taken
    only then.
    """

    kind: ClassVar[str] = "syslog"
    address: Address | None = None
    mode: SyslogMode = "tcp"
    max_message_bytes: int = 64 * 1024
    path: Path | None = None
    socket_type: UnixSocketType = "datagram"
    socket_mode: int = SOCKET_MODE
    receive_buffer: int | None = None
    burst_events: int = BURST_EVENTS
    burst_bytes: int = BURST_BYTES

    @classmethod
    def read(cls, table: Table, common: SourceCommon) -> SyslogSourceConfig:
        mode = table.choice("mode", SYSLOG_MODES, cls.mode)
        address, path, socket_type, socket_mode = _read_listener(table, mode)
        tls_table, tls = read_tls(table)
        limits = read_limits(table)
        extra: dict[str, Any] = {}
        if mode in ("tcp", "tls") or (mode == "unix" and socket_type == "stream"):
            no_tls = (
                None if mode == "tls" else f'expected only with mode = "tls", got mode = "{mode}"'
            )
            extra = read_admission(table, limits["max_connections"], no_tls)
            table.refuse(UDP_ONLY_KEYS, f'expected only with mode = "udp", got mode = "{mode}"')
        else:
            got = f'mode = "{mode}"' + (' with socket_type = "datagram"' if mode == "unix" else "")
            refuse_stream_keys(table, got)
            if mode == "udp":
                extra = _read_udp_buffers(table)
            else:
                table.refuse(UDP_ONLY_KEYS, f'expected only with mode = "udp", got {got}')
        identity = read_identity(table, tls_table, 'mode = "tls" and ')
        if mode == "tls" and tls_table is None:
            table.problem("tls", 'required table is missing (mode = "tls")')
        elif mode != "tls" and tls_table is not None:
            table.problem("tls", f'expected only with mode = "tls", got mode = "{mode}"')
        return cls(
            **common,
            address=address,
            mode=mode,
            tls=tls,
            max_message_bytes=table.size(
                "max_message_bytes", cls.max_message_bytes, minimum=64, maximum=MAX_LINE_BYTES
            ),
            path=path,
            socket_type=socket_type,
            socket_mode=socket_mode,
            identity=identity,
            **limits,
            **extra,
        )

    def build(
        self, send: trio.MemorySendChannel[list[Event]], profile: Profile = SEED
    ) -> SyslogSource:
        return SyslogSource(self, send, profile)

    def endpoint(self) -> Endpoint | None:
        if self.path is not None:
            return Endpoint("path", "unix", self.path)
        if self.address is None or self.address.port == 0:
            return None
        return Endpoint("address", "udp" if self.mode == "udp" else "tcp", self.address)


def _file_mode(value: object) -> int:
    if not isinstance(value, str) or _FILE_MODE_RE.fullmatch(value) is None:
        raise ValueError('expected an octal file mode in a string, like "0660"')
    return int(value, 8)


def _read_listener(
    table: Table, mode: SyslogMode
) -> tuple[Address | None, Path | None, UnixSocketType, int]:
    """``address`` for the network modes; ``path``, ``socket_type``, ``socket_mode`` for unix."""
    if mode != "unix":
        unix_keys = ("path", "socket_type", "socket_mode")
        table.refuse(unix_keys, f'expected only with mode = "unix", got mode = "{mode}"')
        return (
            table.address("address"),
            None,
            SyslogSourceConfig.socket_type,
            SyslogSourceConfig.socket_mode,
        )
    table.refuse(("address",), 'expected only with a network mode, got mode = "unix" (use path)')
    path: Path | None = None
    if not table.has("path"):
        table.problem("path", 'required key is missing (mode = "unix")')
    else:
        path = table.path_("path")
        if path is not None and len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
            table.problem(
                "path",
                f"expected a socket path of at most {MAX_UNIX_PATH_BYTES} bytes, "
                f"got {show(str(path))}",
            )
    socket_type = table.choice("socket_type", UNIX_SOCKET_TYPES, SyslogSourceConfig.socket_type)
    socket_mode = table.convert(
        "socket_mode", SyslogSourceConfig.socket_mode, _file_mode, SyslogSourceConfig.socket_mode
    )
    return None, path, socket_type, socket_mode


def _read_udp_buffers(table: Table) -> dict[str, Any]:
    """``receive_buffer`` (None: the kernel's default) and the burst buffer's bounds."""
    receive_buffer = None
    if table.has("receive_buffer"):
        receive_buffer = table.size(
            "receive_buffer", minimum=MIN_RECEIVE_BUFFER, maximum=MAX_RECEIVE_BUFFER
        )
    return {
        "receive_buffer": receive_buffer,
        "burst_events": table.integer("burst_events", BURST_EVENTS, minimum=1, maximum=10_000_000),
        "burst_bytes": table.size("burst_bytes", BURST_BYTES, minimum=64 * 1024),
    }


#: What one event counts in the burst buffer beyond its bytes (``record`` or ``malformed`` raw
#: bytes) and its syslog header's strings: the ``Event``, its ``source`` and ``syslog`` dicts.
#: Measured with tracemalloc at 0.5 (malformed) to 1.2 KiB (see ``burst_cost``).
BURST_EVENT_OVERHEAD: Final = 1536
#: What a record's ``Facts`` count beyond 4 bytes a character of their strings (the tuple, its
#: sequence, the headers of its strings: about 330 bytes).
FACTS_OVERHEAD: Final = 512
#: What each SD-ID and each SD-PARAM of the structured data counts beyond 4 bytes a character
#: of its names and value (a dict or a dict slot and its strings: measured at 80 to 145 bytes).
SD_ITEM_OVERHEAD: Final = 192
#: The burst buffer is handed on in batches of at most about this many bytes (as counted above).
FORWARD_BYTES: Final = 1024 * 1024
#: No UDP datagram is longer (IPv6 allows 65,527 payload bytes, IPv4 65,507).
_UDP_MAX_DATAGRAM: Final = 65535
#: Linux's socket options, where Python's socket module lacks the names.
SO_RXQ_OVFL: Final[int] = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE: Final[int] = getattr(socket, "SO_RCVBUFFORCE", 33)
#: Room in ``recvmsg``'s ancillary buffer for one ``SO_RXQ_OVFL`` count (a 32-bit counter) and
#: for one ``SCM_CREDENTIALS`` message.
_OVERFLOW_SPACE: Final = socket.CMSG_SPACE(4)
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(12)


def unix_queue_length() -> int:
    """How many datagrams the kernel queues on a unix datagram socket before it holds the
    senders (``net.unix.max_dgram_qlen``; 512, what systemd sets, when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return 512


def burst_cost(event: Event) -> int:
    """What an event counts against ``burst_bytes``: an upper bound of the memory it holds while
    it waits (its parsed record is gone: only its ``Facts`` came along). Its bytes,
    ``BURST_EVENT_OVERHEAD``, 4 bytes a character of the syslog header's strings (a Python string
    takes at most 4 a character), ``FACTS_OVERHEAD`` plus 4 bytes a character of the strings of
    its ``Facts``, and ``SD_ITEM_OVERHEAD`` plus 4 bytes a character for each SD-ID and SD-PARAM: a datagram of many empty SD-ELEMENTs takes 25 times
    its size in objects, and counts as much (``tests/sources/test_udp_limits.py`` measures it)."""
    if event.record_json is not None:
        cost = len(event.record_json) + BURST_EVENT_OVERHEAD
    else:
        cost = BURST_EVENT_OVERHEAD + (len(event.malformed.raw) if event.malformed else 0)
    facts = event.facts
    if facts is not None:
        cost += FACTS_OVERHEAD + 4 * sum(len(value) for value in facts if type(value) is str)
    header = event.syslog
    if header is not None:
        for key in ("hostname", "app_name", "procid", "msgid"):
            value = header.get(key)
            if isinstance(value, str):
                cost += 4 * len(value)
        for sd_id, params in header["sd"].items():
            cost += SD_ITEM_OVERHEAD + 4 * len(sd_id)
            for name, value in params.items():
                cost += SD_ITEM_OVERHEAD + 4 * (len(name) + len(value))
    return cost


def kernel_drop_count(ancdata: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The socket's drop counter (``SO_RXQ_OVFL``) from ``recvmsg`` ancillary data: how many
    datagrams the kernel had dropped for a full receive buffer when this one was queued (a 32-bit
    counter; Linux sends it only once it is not zero)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return None


def request_receive_buffer(sock: Any, size: int) -> bool:
    """Ask for a receive buffer of ``size`` bytes: with ``SO_RCVBUFFORCE`` (not capped by
    ``net.core.rmem_max``; needs CAP_NET_ADMIN), else ``SO_RCVBUF``. Whether it was forced."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # EPERM without the privilege
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return False
    return True


class SyslogSource(FramedSource):
    """Listens for syslog over TCP/TLS/UDP/unix and sends batches of events into the pipeline."""

    kind = "syslog"
    unit = "message"

    def __init__(
        self,
        config: SyslogSourceConfig,
        send: trio.MemorySendChannel[list[Event]],
        profile: Profile = SEED,
    ) -> None:
        super().__init__(
            config.id,
            send,
            profile,
            config.max_message_bytes,
            "max_message_bytes",
            config.identity,
        )
        self.config = config
        self._stopping = False
        self._receive_scope: trio.CancelScope | None = None
        # UDP: the burst buffer. Held = waiting here, or in the batch being handed on.
        self._pending: list[Event] = []
        self._pending_added = trio.Event()
        self._reader_done = False
        self.held_events = 0
        self.held_bytes = 0
        self._full_log = Throttle(1)
        self._error_log = Throttle(1)
        self._full_logged = 0
        # UDP: the kernel's drop counter, as last reported, and what the log has reported.
        self._kernel_reported = 0
        self._kernel_logged = 0
        self._kernel_log = Throttle(1)
        self._kernel_unlogged = trio.Event()
        self._kernel_reporting = trio.CancelScope()
        listen: Listening | None = config.path if config.mode == "unix" else config.address
        unix_stream = config.mode == "unix" and config.socket_type == "stream"
        if config.mode in ("tcp", "tls") or unix_stream:
            assert listen is not None
            self.server = self._listen(listen, config, config.socket_mode)

    def bind(self) -> Bound:
        """Bind (and listen): a stream listener, a UDP socket (with its receive buffer and the
        kernel's drop counter), or a unix datagram socket (with the senders' credentials)."""
        if self.server is not None:
            return self.server.bind()
        if self.config.mode == "unix":
            path = self.config.path
            assert path is not None
            raw, file = bind_unix_socket(self.id, path, socket.SOCK_DGRAM, self.config.socket_mode)
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            except BaseException:
                raw.close()
                file.remove()
                raise
            return Bound([raw], [path], file)
        address = self.config.address
        assert address is not None
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address.host, address.port))
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._set_receive_buffer(sock)
        except OSError as exc:
            sock.close()
            raise ListenError(
                f"source {self.id}: cannot listen on {address} (udp): {exc.strerror or exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        return Bound([sock], [Address(host, port)])

    async def serve(self, bound: Bound, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """Serve ``bound`` until stopped; closes this source's channel to the pipeline when
        done."""
        task_status = self._reporting(task_status)
        async with self._send:
            if self.server is not None:
                await self.server.serve(bound, task_status=task_status)
                return
            (raw,) = bound.sockets
            with trio.socket.from_stdlib_socket(raw) as sock:
                if self.config.mode == "unix":
                    task_status.started(list(bound.addresses))
                    bufsize = self.config.max_message_bytes + 1
                    path = str(bound.addresses[0])
                    await self._read_datagrams(raw, sock, bufsize, _CREDENTIALS_SPACE, path)
                else:
                    await self._serve_udp(raw, sock, bound.addresses, task_status)

    def stop(self, *, backlog: bool = True) -> None:
        """Stop accepting and reading, once what the sockets hold now is read (see the module
        doc); what was read is still handed on."""
        self._stopping = True
        if self._receive_scope is not None:
            self._receive_scope.cancel()
        super().stop(backlog=backlog)

    def _framer(self) -> Framer:
        return AutoFramer(self._max_frame)

    # --- datagrams: UDP and unix ---------------------------------------------------------------

    async def _serve_udp(
        self,
        raw: socket.socket,
        sock: trio.socket.SocketType,
        addresses: list[Listening],
        task_status: trio.TaskStatus[list[Listening]],
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_pending)
            nursery.start_soon(self._report_kernel_drops)
            task_status.started(list(addresses))
            try:
                bufsize = min(self.config.max_message_bytes + 1, _UDP_MAX_DATAGRAM + 1)
                await self._read_datagrams(raw, sock, bufsize, _OVERFLOW_SPACE, None)
            finally:
                self._kernel_reporting.cancel()
                self._reader_done = True
                self._pending_added.set()  # the forwarder hands on the rest, then ends

    def _set_receive_buffer(self, sock: Any) -> None:
        """Apply ``receive_buffer`` (if set) and log what the kernel granted."""
        requested = self.config.receive_buffer
        forced = False
        if requested is not None:
            forced = request_receive_buffer(sock, requested)
        # Linux reports twice what it granted (the other half is its bookkeeping).
        reported = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        granted = reported // 2
        fields: dict[str, Any] = {
            "source": self.id,
            "requested": requested,
            "granted": granted,
            "kernel_reported": reported,
            "forced": forced,
        }
        if requested is not None and granted < requested:
            self.log.warning(
                "udp_receive_buffer",
                **fields,
                hint=f"the kernel capped receive_buffer: raise net.core.rmem_max to at least "
                f"{requested} (sysctl -w net.core.rmem_max={requested}), or give shipper "
                "CAP_NET_ADMIN",
            )
        else:
            self.log.info("udp_receive_buffer", **fields)

    async def _read_datagrams(
        self,
        raw: socket.socket,
        sock: trio.socket.SocketType,
        bufsize: int,
        ancillary: int,
        unix_path: str | None,
    ) -> None:
        """Read datagrams until stopped, then those queued when the stop came (``_queued``).
        UDP (``unix_path`` None): each goes to the burst buffer, and the kernel's drop counter is
        followed. Unix: each is handed on, a full pipeline holding the senders (the kernel queues
        them)."""
        receive = partial(sock.recvmsg, bufsize, ancillary)
        limit = self.config.max_message_bytes

        async def take(received: tuple[bytes, list[tuple[int, int, bytes]], int, Any]) -> None:
            data, ancdata, _flags, address = received
            if unix_path is None:
                self._note_kernel_drops(kernel_drop_count(ancdata))
                self._offer(self._guarded(data, address, limit))
            else:
                credentials = datagram_credentials(ancdata)
                batch = self._guarded(data, unix_path, limit, credentials)
                if batch:
                    await self._deliver(batch)

        while (received := await self._receive(receive)) is not None:
            await take(received)
        for count, received in enumerate(
            self._queued(raw, bufsize, ancillary, unix_path is not None)
        ):
            await take(received)
            if count % DRAIN_CHECKPOINT == DRAIN_CHECKPOINT - 1:
                await trio.lowlevel.checkpoint()  # timers, signals and the API go on meanwhile

    def _queued(
        self, raw: socket.socket, bufsize: int, ancillary: int, unix: bool
    ) -> Iterator[tuple[bytes, list[tuple[int, int, bytes]], int, Any]]:
        """At a stop: the datagrams the socket holds, one at a time, without waiting for more.
        At most what its queue can hold when the stop came: a UDP socket's receive buffer in
        bytes (``SO_RCVBUF``, each datagram counted with at least ``DATAGRAM_TRUESIZE``, as the
        kernel counts it with its buffer's size: empty datagrams sent on and on end the drain
        too), a unix datagram socket's queue in datagrams (``net.unix.max_dgram_qlen``); what
        comes on meanwhile is left."""
        if unix:
            bytes_left, datagrams_left = sys.maxsize, unix_queue_length()
        else:
            bytes_left = raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            datagrams_left = sys.maxsize
        while bytes_left > 0 and datagrams_left > 0:
            try:
                received = raw.recvmsg(bufsize, ancillary)  # non-blocking: trio made it so
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                self.log.warning("datagram_read_failed", source=self.id, error=str(exc))
                return
            bytes_left -= max(len(received[0]), DATAGRAM_TRUESIZE)
            datagrams_left -= 1
            yield received

    def _guarded(
        self, data: bytes, peer: Any, limit: int, peer_cred: dict[str, int] | None = None
    ) -> list[Event]:
        """``_datagram``, except that a defect raising while one datagram is decoded costs that
        datagram only: it is archived as ``malformed`` with the cause, logged with the traceback
        (``datagram_failed``, at most once a second) and counted (``handler_errors``)."""
        try:
            return self._datagram(data, peer, limit, peer_cred)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            cause = f"{type(exc).__name__}: {exc}"[:300]
            if self._error_log.allow(trio.current_time()) is not None:
                self.log.exception("datagram_failed", source=self.id, error=cause)
            source = {"id": self.id, "kind": self.kind, "peer": str(peer)}
            reason = f"shipper failed to decode this datagram ({cause})"
            self.counters["events"] += 1
            return [self._malformed(source, utc_timestamp(), reason, data, len(data))]

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
            self.counters["events"] += 1
            return [self._malformed(source, received_at, reason, data, len(data))]
        frames: list[Framed] = [data]
        if data[:1].isdigit():  # loggen -P: octet counting even on UDP
            framer = AutoFramer(limit)
            frames = framer.feed(data)
            tail = framer.finish()
            if tail is not None:
                frames.append(tail)
        return self._decode(frames, source, received_at)

    # --- UDP: the burst buffer -----------------------------------------------------------------

    def _offer(self, batch: list[Event]) -> None:
        """Put a datagram's events in the burst buffer without waiting. If they do not fit in
        ``burst_events`` and ``burst_bytes`` (the pipeline has been full that long), drop them
        (counted, logged); an empty buffer takes any one datagram."""
        if not batch:
            return
        size = sum(map(burst_cost, batch))
        config = self.config
        if self.held_events and (
            self.held_events + len(batch) > config.burst_events
            or self.held_bytes + size > config.burst_bytes
        ):
            self._drop_full(len(batch))
            return
        self._pending.extend(batch)
        self.held_events += len(batch)
        self.held_bytes += size
        self._pending_added.set()

    def _drop_full(self, events: int) -> None:
        self.counters["dropped_full"] += events
        left_out = self._full_log.allow(trio.current_time())
        if left_out is None:
            return
        total = self.counters["dropped_full"]
        self.log.warning(
            "udp_dropped_full",
            source=self.id,
            dropped=total - self._full_logged,
            dropped_total=total,
            not_logged_since=left_out,
            burst_events=self.config.burst_events,
            burst_bytes=self.config.burst_bytes,
        )
        self._full_logged = total

    async def _forward_pending(self) -> None:
        """Hand the burst buffer on, in batches of about ``FORWARD_BYTES``, whenever the pipeline
        has room; end once the reader has ended and everything is handed on."""
        while True:
            await self._pending_added.wait()
            self._pending_added = trio.Event()
            while self._pending:
                taken = size = 0
                for event in self._pending:
                    taken += 1
                    size += burst_cost(event)
                    if size >= FORWARD_BYTES:
                        break
                batch = self._pending[:taken]
                del self._pending[:taken]
                await self._deliver(batch, size)
                self.held_events -= taken
                self.held_bytes -= size
            if self._reader_done:
                return

    # --- UDP: what the kernel dropped ------------------------------------------------------------

    def _note_kernel_drops(self, reported: int | None) -> None:
        """Count what the kernel dropped since its last report (the counter wraps at 2**32)."""
        if reported is None or reported == self._kernel_reported:
            return
        self.counters["kernel_dropped"] += (reported - self._kernel_reported) % 2**32
        self._kernel_reported = reported
        self._log_kernel_drops()

    def _log_kernel_drops(self) -> None:
        """Log the drops not logged yet, at most once a second; else leave them to the reporter."""
        total = self.counters["kernel_dropped"]
        if total == self._kernel_logged:
            return
        left_out = self._kernel_log.allow(trio.current_time())
        if left_out is None:
            self._kernel_unlogged.set()
            return
        self.log.warning(
            "udp_kernel_dropped",
            source=self.id,
            dropped=total - self._kernel_logged,
            dropped_total=total,
            not_logged_since=left_out,
            hint="the receive buffer overflowed: raise receive_buffer",
        )
        self._kernel_logged = total

    async def _report_kernel_drops(self) -> None:
        """Log drops that came within a second of the last line once that second has passed
        (more datagrams may never come to carry them); cancelled when the reader ends."""
        with self._kernel_reporting:
            while True:
                await self._kernel_unlogged.wait()
                self._kernel_unlogged = trio.Event()
                await trio.sleep(1.0)  # the rate limit: the throttle's second has passed then
                self._log_kernel_drops()

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
        # A copy: orjson's result keeps an allocation of 4 KiB or more however short it is, and
        # the event may wait (the burst buffer, the ingest channel).
        record_json = bytes(memoryview(orjson.dumps(fields)))
        return Event(received_at, source, None, record_json, syslog=header)
