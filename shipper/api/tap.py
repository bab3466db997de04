"""The live tap: ``GET /api/tap`` streams the envelopes entering the WAL, as they are accepted.

The hub (``TapHub``) is held by the topology and fed by the writer once the WAL accepted a batch
(``publish``: the batch's events, verified, and their WAL entries), in both modes (an ingest
worker's events reach the writer too). With no client connected that costs one check per batch.
Each client has a filter (``TapFilter``) and a bounded buffer of ``[api] tap_buffer`` events, and
of ``TAP_BUFFER_BYTES`` (64 MiB) however long they are: what matches is queued there, never waited for; what does not fit is dropped and counted, and the
client is told how many it missed once it has taken what was queued before them. A client that
stops reading therefore never slows ingest, and costs at most its buffer. At most
``MAX_TAP_CLIENTS`` clients are connected (the writer offers each batch to each one); one more is
refused (503, ``Retry-After``).

The stream (``text/event-stream``, or NDJSON with ``format=ndjson``)::

    : tap                                     # first, once the client is registered
    data: {"v":1,"received_at":...}           # one envelope per event, on one line
    event: missed                             # events dropped since the last notice
    data: {"missed":120}

NDJSON gives the envelopes one per line and a notice as ``{"missed":120}`` (an envelope always
has ``"v"``). An envelope is the archived one without its ``id`` (the event's WAL position, given
by the WAL's readers), redacted by ``[api] redact`` (``shipper.redact``, as a forwarding sink's).

Query parameters (each repeatable, or a comma list; every one given must hold, any of a
parameter's values may match): ``source`` (source id; ``shipper`` for the events shipper raises),
``agent``, ``status`` (the chain verdict, ``shipper.chain.STATUSES``), ``alerts`` (``alerts``,
``alerts=1`` or ``alerts=true``: only the events shipper raises: chain alerts, archive seals,
delivery alerts). The filters see the event before redaction. Anything else is refused (400), so
that a misspelled filter does not show everything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from shipper.buffer.entries import ROUTE_END
from shipper.chain import STATUSES
from shipper.config.root import TAP_BUFFER

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute
    from starlette.types import Receive, Scope, Send

    from shipper.events import Event
    from shipper.metrics import Registry
    from shipper.redact import Redaction
    from shipper.topology import Topology

#: Entries rendered into one chunk of the stream, at most.
CHUNK_EVENTS: Final = 256
#: Bytes of entries a client's buffer holds at most, whatever ``[api] tap_buffer`` says: a record
#: may be as long as its source's ``max_line_bytes`` (1 MiB by default), and 4096 such would pin
#: 4 GiB for one client that stopped reading.
TAP_BUFFER_BYTES: Final = 64 * 1024 * 1024
#: Tap clients connected at most: the writer offers each batch to every one, so a thousand
#: would halve ingest; one more is refused (503).
MAX_TAP_CLIENTS: Final = 32
_FILTERS: Final = frozenset({"source", "agent", "status", "alerts", "format"})
_TRUE: Final = frozenset({"", "1", "true", "yes"})


class BadFilter(ValueError):
    """A tap request's query is wrong (the client's fault: retrying the same does not help)."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which events a client sees: None for a criterion not given."""

    sources: frozenset[str] | None = None
    agents: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    alerts: bool = False

    @property
    def everything(self) -> bool:
        return self == _EVERYTHING

    def wants(self, event: Event) -> bool:
        """Whether ``event`` (verified: its ``chain`` holds the verdict) passes."""
        if self.alerts and not event.alert:
            return False
        if self.sources is not None and str(event.source.get("id")) not in self.sources:
            return False
        if self.agents is not None and event.agent not in self.agents:
            return False
        if self.statuses is not None:
            chain = event.chain
            if chain is None or chain.get("status") not in self.statuses:
                return False
        return True

    @classmethod
    def of_query(cls, items: list[tuple[str, str]]) -> TapFilter:
        """The filter of a query's ``(name, value)`` pairs (``format`` is left to the caller);
        raises ``BadFilter`` saying what is wrong."""
        values: dict[str, set[str]] = {}
        alerts = False
        for name, value in items:
            if name not in _FILTERS:
                known = ", ".join(sorted(_FILTERS))
                raise BadFilter(f"unknown query parameter {name!r} (expected one of {known})")
            if name == "alerts":
                if value.lower() not in _TRUE | {"0", "false", "no"}:
                    raise BadFilter(f"alerts: expected true or false, got {value!r}")
                alerts = alerts or value.lower() in _TRUE
            elif name != "format":
                values.setdefault(name, set()).update(v for v in value.split(",") if v)
        unknown = values.get("status", set()) - set(STATUSES)
        if unknown:
            raise BadFilter(
                f"status: expected some of {', '.join(STATUSES)}, got {', '.join(sorted(unknown))}"
            )
        pick = {name: frozenset(found) for name, found in values.items() if found}
        return cls(pick.get("source"), pick.get("agent"), pick.get("status"), alerts)


_EVERYTHING: Final = TapFilter()


class Missed:
    """In a client's queue: how many events were dropped at this point (its buffer was full)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class TapClient:
    """One connected client: its filter, its bounded queue of WAL entries (and ``Missed``
    marks): at most ``limit`` entries of at most ``max_bytes`` together (one entry always
    fits in an empty queue), and the wake-up of its stream."""

    def __init__(self, wants: TapFilter, limit: int, max_bytes: int = TAP_BUFFER_BYTES) -> None:
        self.filter = wants
        self.limit = limit
        self.max_bytes = max_bytes
        self.queue: deque[bytes | Missed] = deque()
        self.queued = 0  # entries in the queue (Missed marks are not counted)
        self.queued_bytes = 0  # their bytes
        self.closed = False
        self._wake = trio.Event()

    def offer(self, entries: list[bytes]) -> tuple[int, int]:
        """Queue what fits of ``entries``, mark the rest as missed; (queued, missed)."""
        room = self.limit - self.queued
        taken = entries if len(entries) <= room else entries[: max(room, 0)]
        size = sum(map(len, taken))
        if self.queued_bytes + size > self.max_bytes:  # the bytes bound first: keep what fits
            size, fits = self.queued_bytes, 0
            for entry in taken:
                if size + len(entry) > self.max_bytes and (self.queued or fits):
                    break
                size, fits = size + len(entry), fits + 1
            taken, size = taken[:fits], size - self.queued_bytes
        missed = len(entries) - len(taken)
        if taken:
            self.queue.extend(taken)
            self.queued += len(taken)
            self.queued_bytes += size
        if missed:
            last = self.queue[-1] if self.queue else None
            if isinstance(last, Missed):
                last.count += missed
            else:
                self.queue.append(Missed(missed))
        self._wake.set()
        return len(taken), missed

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self) -> list[bytes | Missed] | None:
        """What is queued (at most ``CHUNK_EVENTS`` entries), waiting for some; None once the
        hub is closed and the queue is empty."""
        while not self.queue:
            if self.closed:
                return None
            self._wake = trio.Event()
            await self._wake.wait()
        items: list[bytes | Missed] = []
        queue = self.queue
        while queue and len(items) < CHUNK_EVENTS:
            item = queue.popleft()
            items.append(item)
            if not isinstance(item, Missed):
                self.queued -= 1
                self.queued_bytes -= len(item)
        return items


class TapHub:
    """The tap's clients, fed by the writer with every batch the WAL accepted."""

    def __init__(
        self, registry: Registry, limit: int = TAP_BUFFER, max_bytes: int = TAP_BUFFER_BYTES
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        #: The connected clients: the writer checks this before anything else.
        self.clients: list[TapClient] = []
        self._closed = False
        self._tapped = registry.counter(
            "tap_events", "Events queued for tap clients (once per client)"
        ).labels()
        self._missed = registry.counter(
            "tap_missed", "Events a tap client missed because its buffer was full"
        ).labels()
        registry.gauge("tap_clients", "Tap clients connected").labels().observe(
            lambda: len(self.clients)
        )

    def publish(self, events: list[Event], entries: list[bytes]) -> None:
        """Offer a batch the WAL accepted (``entries[i]`` is the entry of ``events[i]``) to each
        client; never waits. Call it only when ``clients`` is not empty."""
        for client in self.clients:
            wants = client.filter
            if wants.everything:
                matched = entries
            else:
                matched = [e for ev, e in zip(events, entries, strict=True) if wants.wants(ev)]
                if not matched:
                    continue
            queued, missed = client.offer(matched)
            self._tapped.inc(queued)
            if missed:
                self._missed.inc(missed)

    @contextmanager
    def connected(self, wants: TapFilter) -> Iterator[TapClient]:
        """A client registered for as long as the block runs."""
        client = TapClient(wants, self.limit, self.max_bytes)
        if self._closed:
            client.close()
        self.clients.append(client)
        try:
            yield client
        finally:
            self.clients.remove(client)

    def close(self) -> None:
        """Nothing more comes (the writer is done): each stream ends once it sent its queue."""
        self._closed = True
        for client in self.clients:
            client.close()


def envelope(entry: bytes, redaction: Redaction | None) -> bytes:
    """The envelope of a WAL entry (``shipper.events.entry``: its route cut off; no ``id``),
    redacted if ``redaction`` is given."""
    line = entry[entry.index(ROUTE_END) + 1 :]
    return redaction.apply(line) if redaction is not None else line


def render_sse(items: list[bytes | Missed], redaction: Redaction | None) -> bytes:
    """Server-sent events for ``items``: ``data:`` per envelope, ``event: missed`` per mark."""
    out = []
    for item in items:
        if isinstance(item, Missed):
            out.append(b'event: missed\ndata: {"missed":%d}\n\n' % item.count)
        else:
            out.append(b"data: %s\n\n" % envelope(item, redaction))
    return b"".join(out)


def render_ndjson(items: list[bytes | Missed], redaction: Redaction | None) -> bytes:
    """NDJSON for ``items``: a line per envelope, ``{"missed":N}`` per mark."""
    out = []
    for item in items:
        if isinstance(item, Missed):
            out.append(b'{"missed":%d}\n' % item.count)
        else:
            out.append(envelope(item, redaction) + b"\n")
    return b"".join(out)


def routes(topology: Topology) -> list[BaseRoute]:
    """``/api/tap`` over ``topology``'s hub. (Starlette is imported here, by the API's server:
    the hub alone is all the writer needs, in a daemon with or without an API.)"""
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    class _Tapped(Response):
        """The answer to a tap request: the client is registered, or refused when
        ``MAX_TAP_CLIENTS`` are connected, as the answer starts (with nothing awaited between the
        count and the registration, so that the bound holds however many ask at once), and
        removed once its stream ends however it ends."""

        def __init__(
            self, hub: TapHub, wants: TapFilter, respond: Callable[[TapClient], Response]
        ) -> None:
            super().__init__()
            self.hub, self.wants, self.respond = hub, wants, respond

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if len(self.hub.clients) >= MAX_TAP_CLIENTS:
                refused = PlainTextResponse(
                    f"{MAX_TAP_CLIENTS} tap clients are connected already; retry once one left\n",
                    status_code=503,
                    headers={"Retry-After": "10"},
                )
                await refused(scope, receive, send)
                return
            with self.hub.connected(self.wants) as client:
                await self.respond(client)(scope, receive, send)

    hub = topology.tap
    redaction = topology.config.api.redact

    async def tap(request: Request) -> Response:
        """The live stream of envelopes entering the WAL, filtered by the query."""
        items = list(request.query_params.multi_items())
        try:
            wants = TapFilter.of_query(items)
        except BadFilter as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        kind = request.query_params.get("format", "sse")
        if kind not in ("sse", "ndjson"):
            return PlainTextResponse(
                f"format: expected sse or ndjson, got {kind!r}\n", status_code=400
            )
        render = render_ndjson if kind == "ndjson" else render_sse

        async def stream(client: TapClient) -> AsyncIterator[bytes]:
            if kind == "sse":
                yield b": tap\n\n"  # the client is registered: what follows is tapped
            while (taken := await client.take()) is not None:
                yield render(taken, redaction)

        media = "application/x-ndjson" if kind == "ndjson" else "text/event-stream"
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the headers only: no stream, and no client's place taken
            return Response(media_type=media, headers=headers)
        return _Tapped(
            hub,
            wants,
            lambda client: StreamingResponse(stream(client), media_type=media, headers=headers),
        )

    return [Route("/api/tap", tap, methods=["GET"])]
