"""Load generator: sends chained audit records to a shipper ``json_tls`` or ``syslog`` source.

``--protocol json`` (the default) sends newline-delimited JSON records (``json_tls``);
``--protocol syslog`` sends each record as the MSG of an RFC 5424 message with structured data
(``bench.events.syslog_messages``, style ``rfc5424``), octet-counted (RFC 6587 3.4.1, as rsyslog
forwards and RFC 5425 requires over TLS), for a ``syslog`` source in mode ``tcp`` or ``tls``.

Plain TCP or TLS (with an optional client certificate), over several concurrent connections. Each
agent's records stay on one connection and in order (agent ``k``, counted by first appearance, goes
to connection ``k % connections``), so per-agent hash chains arrive intact.

Library use: prepare the per-connection payloads with :func:`payloads` (not timed), then
``await send_payloads(...)``. Its ``hold`` callback runs after the last byte was sent and before the
connections are closed; the harness waits there for the archive to fill, so connections stay open
(as agents' connections do) while the daemon catches up.

Paced sending (``pace``, a :class:`Pacing`): instead of as fast as the kernel takes them, the
records go out at a fixed total rate, each connection at its share (in proportion to its records,
so all finish together). Record ``k`` of connection ``c`` is due ``k / rate_c`` seconds after the
start (:meth:`Pacing.due`); a connection wakes when its next record is due (at most every
``PACE_TICK`` seconds) and sends every record due by then in one go. The start is returned as a
wall-clock time (``LoadResult.paced_from``, ``time.time()``), so a record's due time can be
compared with when it turned up elsewhere.

Every connection also runs a reader that discards whatever the server sends (TLS 1.3 session
tickets, for one): closing a socket with unread received data makes the kernel send a RST, which may
discard the tail of what we sent.

Command line::

    python -m bench.loadgen --host 127.0.0.1 --port 6515 --events 200000 --agents 100 \\
        --connections 8 [--protocol syslog] \\
        [--tls-ca ca.pem [--tls-cert client.pem --tls-key client.key]]

It reports how fast the records were handed to the kernel, not how fast the daemon stored them;
``python -m bench`` measures end to end.
"""

from __future__ import annotations

import argparse
import itertools
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
import trio

from bench.events import generate_lines, octet_counted, syslog_messages

PROTOCOLS = ("json", "syslog")
"""What :func:`payloads` can send: NDJSON lines, or octet-counted RFC 5424 messages."""

__all__ = [
    "PROTOCOLS",
    "LoadResult",
    "Pacing",
    "client_ssl_context",
    "framed_groups",
    "partition",
    "payloads",
    "send_lines",
    "send_payloads",
]

CHUNK_BYTES = 256 * 1024
"""Bytes per ``send_all`` call: large enough to be cheap, small enough to interleave connections."""

CLOSE_TIMEOUT = 10.0
"""Seconds to wait for the server to close after our EOF before closing anyway."""

PACE_TICK = 0.005
"""Paced sending: the shortest time between two sends on one connection."""


@dataclass(frozen=True)
class Pacing:
    """Paced sending: ``rate`` events per second in all, over payloads whose records end at the
    byte offsets ``ends[c]`` (one list per payload, as :func:`framed_groups` gives them)."""

    rate: float
    ends: Sequence[Sequence[int]]

    @classmethod
    def of(cls, rate: float, groups: Sequence[Sequence[bytes]]) -> Pacing:
        """Pacing over the payloads ``b"".join(group)`` of each of ``groups``."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        return cls(
            rate, [list(itertools.accumulate(len(frame) for frame in group)) for group in groups]
        )

    def connection_rate(self, connection: int) -> float:
        """Events per second of payload ``connection``: its share of ``rate``."""
        total = sum(len(ends) for ends in self.ends)
        return self.rate * len(self.ends[connection]) / total

    def due(self, connection: int, index: int) -> float:
        """Seconds after the start at which record ``index`` of payload ``connection`` is due."""
        return index / self.connection_rate(connection)


@dataclass(frozen=True)
class LoadResult:
    """What :func:`send_payloads` did; times in seconds from its start."""

    connections: int
    bytes_sent: int
    connected_at: float
    """All connections (and TLS handshakes) established."""
    sent_at: float
    """Last byte handed to the kernel."""
    held_until: float
    """The ``hold`` callback returned (equals ``sent_at`` without one)."""
    closed_at: float
    """All connections closed."""
    broken: tuple[str, ...] = ()
    """Why connections broke (the server refused or reset them), one entry per broken one."""
    paced_from: float | None = None
    """Paced sending: when the first records were due, wall clock (``time.time()``)."""


def client_ssl_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """TLS client context trusting ``ca`` (PEM file; system CAs if None), presenting ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def partition_groups(lines: Sequence[bytes], connections: int) -> list[list[bytes]]:
    """Group ``lines`` by connection, keeping each agent on one connection.

    Agents are read from each line's ``agentId`` (records without one go with agent ""). Returns at
    most ``connections`` groups, none empty, each in the original order of its lines.
    """
    if connections < 1:
        raise ValueError("connections must be >= 1")
    slot_of: dict[str, int] = {}
    groups: list[list[bytes]] = [[] for _ in range(connections)]
    for line in lines:
        record = orjson.loads(line)
        agent = record.get("agentId", "") if isinstance(record, dict) else ""
        key = agent if isinstance(agent, str) else str(agent)
        slot = slot_of.get(key)
        if slot is None:
            slot = slot_of[key] = len(slot_of) % connections
        groups[slot].append(line)
    return [group for group in groups if group]


def partition(lines: Sequence[bytes], connections: int) -> list[bytes]:
    """Concatenate ``lines`` into one payload per connection (see :func:`partition_groups`)."""
    return [b"".join(group) for group in partition_groups(lines, connections)]


def framed_groups(
    lines: Sequence[bytes], connections: int, protocol: str = "json"
) -> list[list[bytes]]:
    """Each connection's records in ``protocol``'s framing, in the order they are sent.

    The connections are :func:`partition_groups`' groups, in that order, and the frames of a group
    are its lines, in that order. ``json``: the lines as they are. ``syslog``: each line (its
    newline removed) as the MSG of an RFC 5424 message, octet-counted.
    """
    groups = partition_groups(lines, connections)
    if protocol == "json":
        return groups
    if protocol != "syslog":
        raise ValueError(f"unknown protocol {protocol!r}")
    message_of = dict(zip(lines, syslog_messages(lines, "rfc5424"), strict=True))
    return [[octet_counted([message_of[line]]) for line in group] for group in groups]


def payloads(lines: Sequence[bytes], connections: int, protocol: str = "json") -> list[bytes]:
    """One payload per connection, each agent on one connection, in ``protocol``'s framing
    (:func:`framed_groups`, each group joined)."""
    return [b"".join(group) for group in framed_groups(lines, connections, protocol)]


async def _open(
    host: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream(host, port)
    if ssl_context is None:
        return tcp
    tls = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


async def _connect_all(
    host: str,
    port: int,
    count: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> list[trio.abc.Stream]:
    streams: list[trio.abc.Stream | None] = [None] * count

    async def connect(index: int) -> None:
        streams[index] = await _open(host, port, ssl_context, server_hostname)

    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(connect, index)
    except BaseException:
        for stream in streams:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        raise
    return [stream for stream in streams if stream is not None]


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(exc) or (repr(cause) if cause is not None else type(exc).__name__)


class _Connection:
    """One stream plus what its reader saw."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.eof = trio.Event()
        self.broken: str | None = None
        self.closing = False

    async def drain(self) -> None:
        """Read and discard until EOF, or until the stream is closed under us."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.ClosedResourceError:
            pass
        except trio.BrokenResourceError as exc:
            if not self.closing and self.broken is None:
                self.broken = _reason(exc)
        finally:
            self.eof.set()

    async def send(self, payload: bytes, chunk_bytes: int) -> None:
        view = memoryview(payload)
        try:
            for offset in range(0, len(view), chunk_bytes):
                await self.stream.send_all(view[offset : offset + chunk_bytes])
        except trio.BrokenResourceError as exc:
            if self.broken is None:
                self.broken = _reason(exc)

    async def send_paced(
        self, payload: bytes, ends: Sequence[int], rate: float, start: float, chunk_bytes: int
    ) -> None:
        """Send record ``k`` (ending at byte ``ends[k]``) once ``start + k / rate`` (trio's clock)
        has come, the records due at each wake-up together."""
        view = memoryview(payload)
        offset = done = 0
        try:
            while done < len(ends):
                now = trio.current_time()
                due = min(len(ends), int((now - start) * rate) + 1)
                if due <= done:
                    await trio.sleep_until(max(start + done / rate, now + PACE_TICK))
                    continue
                end = ends[due - 1]
                while offset < end:
                    await self.stream.send_all(view[offset : min(end, offset + chunk_bytes)])
                    offset = min(end, offset + chunk_bytes)
                done = due
        except trio.BrokenResourceError as exc:
            if self.broken is None:
                self.broken = _reason(exc)

    async def close(self) -> None:
        self.closing = True
        stream = self.stream
        if isinstance(stream, trio.SocketStream):
            # Half-close, then give the server the chance to close first (no RST either way).
            try:
                await stream.send_eof()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            else:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.eof.wait()
        # SSLStream.aclose sends close_notify without waiting for the peer's reply.
        try:
            await stream.aclose()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(stream)


async def send_payloads(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    hold: Callable[[], Awaitable[None]] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    pace: Pacing | None = None,
) -> LoadResult:
    """Open one connection per payload, send them concurrently, run ``hold``, close.

    ``server_hostname`` is the name checked against the server certificate (default ``host``).
    ``pace``: send at its rate (its ``ends`` must describe ``payloads``, none empty), from when
    every connection is up; else as fast as the kernel takes the bytes.
    """
    if pace is not None and [ends[-1] if ends else 0 for ends in pace.ends] != [
        len(payload) or -1 for payload in payloads
    ]:
        raise ValueError("pace.ends do not describe the payloads (or one is empty)")
    payloads = [payload for payload in payloads if payload]
    start = time.perf_counter()
    streams = await _connect_all(host, port, len(payloads), ssl_context, server_hostname)
    connected_at = time.perf_counter() - start
    connections = [_Connection(stream) for stream in streams]
    paced_from: float | None = None
    try:
        async with trio.open_nursery() as nursery:
            for connection in connections:
                nursery.start_soon(connection.drain)
            async with trio.open_nursery() as senders:
                if pace is None:
                    for connection, payload in zip(connections, payloads, strict=True):
                        senders.start_soon(connection.send, payload, chunk_bytes)
                else:
                    paced_from, trio_start = time.time(), trio.current_time()
                    for index, (connection, payload) in enumerate(
                        zip(connections, payloads, strict=True)
                    ):
                        senders.start_soon(
                            connection.send_paced,
                            payload,
                            pace.ends[index],
                            pace.connection_rate(index),
                            trio_start,
                            chunk_bytes,
                        )
            sent_at = time.perf_counter() - start
            if hold is not None:
                await hold()
            held_until = time.perf_counter() - start
            async with trio.open_nursery() as closers:
                for connection in connections:
                    closers.start_soon(connection.close)
            closed_at = time.perf_counter() - start
            # The readers end by themselves once their stream is closed; this is a safety net.
            nursery.cancel_scope.cancel()
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    return LoadResult(
        connections=len(streams),
        bytes_sent=sum(len(payload) for payload in payloads),
        connected_at=connected_at,
        sent_at=sent_at,
        held_until=held_until,
        closed_at=closed_at,
        broken=tuple(c.broken for c in connections if c.broken is not None),
        paced_from=paced_from,
    )


async def send_lines(
    host: str,
    port: int,
    lines: Sequence[bytes],
    connections: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    hold: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """Convenience: :func:`partition` then :func:`send_payloads` (partitioning is then timed)."""
    return await send_payloads(
        host,
        port,
        partition(lines, connections),
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        hold=hold,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Send chained audit records to a shipper json_tls or syslog source.",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="json",
        help="json: NDJSON lines (json_tls); syslog: octet-counted RFC 5424 (syslog tcp/tls)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tls-ca", help="CA file to trust; enables TLS")
    parser.add_argument("--tls-cert", help="client certificate (PEM) to present")
    parser.add_argument("--tls-key", help="key of --tls-cert (if not in the same file)")
    parser.add_argument(
        "--server-hostname", help="name to check in the server certificate (default --host)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        print("--tls-cert/--tls-key need --tls-ca", file=sys.stderr)
        return 2
    lines = generate_lines(args.events, args.agents, args.seed)
    per_connection = payloads(lines, args.connections, args.protocol)
    context = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    result = trio.run(
        lambda: send_payloads(
            args.host,
            args.port,
            per_connection,
            ssl_context=context,
            server_hostname=args.server_hostname,
        )
    )
    seconds = max(result.sent_at, 1e-9)
    print(
        f"sent {len(lines)} events ({result.bytes_sent / 1e6:.1f} MB) over {result.connections} "
        f"{'TLS' if context else 'TCP'} connections in {seconds:.3f} s: "
        f"{len(lines) / seconds:,.0f} events/s, {result.bytes_sent / 1e6 / seconds:.1f} MB/s "
        f"(handed to the kernel; not end-to-end)"
    )
    for reason in result.broken:
        print(f"connection broken: {reason}", file=sys.stderr)
    return 1 if result.broken else 0


if __name__ == "__main__":
    sys.exit(main())
