"""The event envelope: what shipper adds around each agent record, and its one-line JSON form.

Every archived line is one JSON object (README, "The archived event"), keys in this order::

    {"v":1,"id":"...","received_at":"2026-11-22T10:45:23.102345Z",
     "source":{"id":"agents_tls","kind":"json_tls","peer":"10.0.0.7:51234",
               "tls_subject":"CN=host-7","tls_san":["host-7"]},
     "syslog":{...},            # syslog sources only
     "agent":"customer-service-agent-03",   # when the record names its agent
     "chain":{...},             # when the record belongs to a chain
     "identity_mismatch":{...}, # when the sender's certificate may not speak for this record
     "record":{...}}            # the agent's record, byte for byte as received
                                # or, for input that could not be parsed:
     "malformed":{"reason":"...","raw_b64":"...","size":N,"truncated":false}

``record`` is written from the exact bytes the sender sent (they were parsed once and are known to be
a JSON object), so the archive holds what the agent wrote, not a re-serialization of it; the one
change is that raw CR and LF between tokens become spaces, to keep the envelope on one line. ``size`` is
the length in bytes of the whole offending input; ``raw_b64`` holds all of it, or its first
``MALFORMED_KEEP_BYTES`` when ``truncated`` is true.

Alerts are events that shipper raises itself (``alert_event``): their ``source`` is
``{"id":"shipper","kind":"alert"}``, their ``record.action`` names the alert
(``shipper.chain_alert``, ``shipper.identity_alert``, ``shipper.delivery_alert``,
``shipper.archive_alert``; ``shipper.archive_seal`` witnesses an archive's manifest head), and they have no ``chain``. They go to every
sink, whatever its ``inputs``: in the WAL their route is the empty source id.

In the WAL (``shipper.buffer.entries``) an event is an entry (``entry``): its route, the source
id, and its envelope without ``id``. The id is the event's WAL position, ``"<segment>-<offset>"``;
the daemon's WAL readers put it in as the envelope's second key (``envelopes``).

Sealed events: a source encodes the envelope of each event it made once the event is complete
(its identity checked), before it hands it on (``Event.seal``): ``sealed`` holds the envelope
without ``id`` and ``chain``, cut where ``chain`` goes (after ``agent``, before
``identity_mismatch`` and ``record``/``malformed``) into a head and a tail, and the ``syslog`` and
``identity_mismatch`` objects are dropped (their bytes are in it). ``entry`` then joins the
route, the head, ``,"chain":`` and the verdict's JSON (or nothing), and the tail, in one copy,
without encoding the rest again: byte for byte what one ``orjson.dumps`` of the whole envelope
gives. Events made elsewhere (alerts the chain stage raises, fallbacks) are encoded whole by
``entry``, through the same ``envelope_parts``.
"""

from __future__ import annotations

import base64
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from shipper.buffer.entries import ROUTE_END
from shipper.buffer.record import MAX_PAYLOAD

if TYPE_CHECKING:
    from shipper.chain import Facts

ENVELOPE_VERSION: Final = 1
#: ``source.id`` of the events shipper raises itself.
ALERT_SOURCE_ID: Final = "shipper"
#: ``record.action`` of the alert for a chain fault, and of the one for an identity mismatch.
CHAIN_ALERT: Final = "shipper.chain_alert"
IDENTITY_ALERT: Final = "shipper.identity_alert"
#: ``record.action`` of the alert for a batch a sink's destination refused for good.
DELIVERY_ALERT: Final = "shipper.delivery_alert"
#: How much of an unparseable input a ``malformed`` event keeps (the rest is counted in ``size``).
MALFORMED_KEEP_BYTES: Final = 4096


def utc_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: ``2026-11-22T10:45:23.102345Z``."""
    moment = datetime.now(UTC) if now is None else now.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Malformed:
    """Input that could not become a record: why, and the bytes (or their first part)."""

    reason: str
    raw: bytes
    size: int

    @classmethod
    def of(cls, reason: str, raw: bytes, size: int | None = None) -> Malformed:
        """Keep at most ``MALFORMED_KEEP_BYTES`` of ``raw``; ``size`` defaults to its length."""
        return cls(reason, raw[:MALFORMED_KEEP_BYTES], len(raw) if size is None else size)

    def as_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "raw_b64": base64.b64encode(self.raw).decode("ascii"),
            "size": self.size,
            "truncated": self.size > len(self.raw),
        }


@dataclass(slots=True)
class Event:
    """One received unit of evidence, before it has an id.

    ``source`` is the envelope's source object; one dict is shared by all events of a connection.
    Exactly one of ``record_json`` (the record's exact JSON bytes) and ``malformed`` is set.
    """

    received_at: str
    source: dict[str, Any]
    agent: str | None = None
    record_json: bytes | None = None
    malformed: Malformed | None = None
    syslog: dict[str, Any] | None = None
    chain: dict[str, Any] | None = None
    identity_mismatch: dict[str, Any] | None = None
    #: Raised by shipper (an alert): goes to every sink, and is never chain-verified.
    alert: bool = False
    #: What the chain check needs of the record (``shipper.chain.Facts``), computed by the source
    #: that parsed it (which drops the parse at once); None when the record is not verified.
    facts: Facts | None = None
    #: The envelope without its id, encoded by the source once the event was complete, cut where
    #: ``chain`` goes (``envelope_parts``); None for events made elsewhere (encoded in full by
    #: ``entry``). Such an event's ``agent`` and ``facts`` are final: the chain stage only
    #: checks them against each agent's chain.
    sealed: tuple[bytes, bytes] | None = None

    @property
    def source_id(self) -> str:
        """The WAL route: the source's id, or "" (every sink) for an alert."""
        return "" if self.alert else str(self.source["id"])

    def encode(self, event_id: str) -> bytes:
        """The envelope as one line of JSON (no trailing newline)."""
        return with_id(self.encode_without_id(), event_id)

    def encode_without_id(self) -> bytes:
        """The envelope without its ``id`` (``with_id`` puts it in): what the WAL stores, since
        the id is the position the WAL gives the event. ``sealed`` with ``chain`` spliced in,
        if the source sealed it, else encoded now."""
        return _spliced(self, b"")

    def envelope_parts(self, start: bytes | None = None) -> tuple[bytes, bytes]:
        """The envelope without its ``id`` and ``chain``, cut where ``chain`` goes (after
        ``agent``): the head, from the opening brace, and the tail, from the comma before
        ``identity_mismatch`` or ``record`` to the closing brace. ``head + tail`` is the
        envelope without a chain; ``head + CHAIN_KEY + chain + tail`` the envelope with one.
        (The pieces are what ``orjson.dumps`` of the whole envelope writes around ``chain``.)
        ``start``: ``envelope_start`` of this event's ``received_at`` and ``source``, when the
        caller has it (the events of one read share it)."""
        head = envelope_start(self.received_at, self.source) if start is None else start
        if self.syslog is not None:
            head += SYSLOG_KEY + orjson.dumps(self.syslog)
        if self.agent is not None:
            head += AGENT_KEY + orjson.dumps(self.agent)
        if self.record_json is not None:
            raw = self.record_json
            if b"\n" in raw or b"\r" in raw:
                # Raw CR/LF can only be whitespace between JSON tokens (never inside a string):
                # turn them into spaces so that the envelope stays one line.
                raw = raw.replace(b"\n", b" ").replace(b"\r", b" ")
            body = b"".join((RECORD_KEY, raw, b"}"))
        else:
            assert self.malformed is not None
            body = b"".join((MALFORMED_KEY, orjson.dumps(self.malformed.as_json()), b"}"))
        if self.identity_mismatch is None:
            return head, body
        return head, b"".join((IDENTITY_MISMATCH_KEY, orjson.dumps(self.identity_mismatch), body))

    def seal(self, start: bytes | None = None) -> None:
        """Encode the envelope now (``sealed``), and drop what only that needed: the ``syslog``
        and ``identity_mismatch`` objects (their bytes are in ``sealed``; ``facts`` is None for
        an event with ``identity_mismatch``, which is never verified). What is left is bytes,
        strings, numbers, small tuples and the shared ``source`` object. ``start``: as for
        ``envelope_parts``."""
        self.sealed = self.envelope_parts(start)
        self.syslog = None
        self.identity_mismatch = None


def envelope_start(received_at: str, source: dict[str, Any]) -> bytes:
    """What every envelope without its id of an event received at ``received_at`` from
    ``source`` starts with: the opening brace, ``v``, ``received_at`` and ``source``, as
    ``orjson.dumps`` writes them (``SYSLOG_KEY`` and ``AGENT_KEY`` go next)."""
    return orjson.dumps({"v": ENVELOPE_VERSION, "received_at": received_at, "source": source})[:-1]


#: What goes before each top-level value that follows the start of an envelope (``Event``).
SYSLOG_KEY: Final = b',"syslog":'
AGENT_KEY: Final = b',"agent":'
CHAIN_KEY: Final = b',"chain":'
IDENTITY_MISMATCH_KEY: Final = b',"identity_mismatch":'
RECORD_KEY: Final = b',"record":'
MALFORMED_KEY: Final = b',"malformed":'


#: An event's fields, in the order its constructor takes them (``_reduce_event``).
_EVENT_FIELDS: Final = operator.attrgetter(*(field.name for field in fields(Event)))


def _reduce_event(event: Event) -> tuple[type[Event], tuple[Any, ...]]:
    """How an event pickles (ingest workers send them to the writer): its class and its fields,
    one C call each way, about a quarter of the cost of the default for a slots class."""
    return Event, _EVENT_FIELDS(event)


Event.__reduce__ = _reduce_event  # type: ignore[assignment,method-assign]


def record_bytes(envelope: bytes, parsed: dict[str, Any]) -> bytes:
    """The record's bytes as received, cut out of its envelope (``record`` is the last key;
    ``parsed`` is the envelope parsed)."""
    rest = {key: value for key, value in parsed.items() if key != "record"}
    prefix = orjson.dumps(rest)[:-1] + b',"record":'
    if envelope.startswith(prefix) and envelope.endswith(b"}"):
        return envelope[len(prefix) : -1]
    return orjson.dumps(parsed["record"])  # cannot happen for envelopes shipper wrote


#: What every envelope without its id starts with; the id goes right after it.
ENVELOPE_HEAD: Final = b'{"v":%d,' % ENVELOPE_VERSION


def with_id(envelope: bytes, event_id: str) -> bytes:
    """An envelope from ``Event.encode_without_id`` with ``"id":event_id`` as its second key."""
    if not envelope.startswith(ENVELOPE_HEAD):
        raise ValueError(f"not an envelope of version {ENVELOPE_VERSION}: {envelope[:20]!r}")
    return b'%s"id":"%s",%s' % (
        ENVELOPE_HEAD,
        event_id.encode("ascii"),
        envelope[len(ENVELOPE_HEAD) :],
    )


def _spliced(event: Event, lead: bytes) -> bytes:
    """``lead`` and the envelope of ``event`` without its id, ``chain`` spliced into ``sealed``
    (or into ``envelope_parts`` if the source did not seal it), in one copy."""
    head, tail = event.sealed or event.envelope_parts()
    chain = event.chain
    if chain is None:
        return b"".join((lead, head, tail))
    return b"".join((lead, head, CHAIN_KEY, orjson.dumps(chain), tail))


def entry(event: Event) -> bytes:
    """What the WAL stores for ``event`` (an entry, ``shipper.buffer.entries``): its route
    (``source_id``) and its envelope without the id, the event's ``chain`` spliced into what the
    source sealed (no re-encoding). An envelope too large for a WAL record (impossible within
    the config's limits) is stored as a ``malformed`` event instead of failing the batch."""
    lead = event.source_id.encode() + ROUTE_END
    line = _spliced(event, lead)
    if len(line) - len(lead) + 256 > MAX_PAYLOAD:  # (256: room for the route)
        raw = event.record_json or b""
        event = Event(
            event.received_at,
            event.source,
            event.agent,
            malformed=Malformed.of("envelope larger than the WAL's record limit", raw),
        )
        line = _spliced(event, event.source_id.encode() + ROUTE_END)
    return line


class _Envelopes:
    """The envelopes, ids put in, of the WAL entries read from a segment: what the daemon's
    ``WalReader``s hand out (a ``shipper.buffer.reader.SplitShape``)."""

    #: What every payload (``Event.encode_without_id``) starts with; the id goes right after it.
    lead: bytes = ENVELOPE_HEAD

    def __call__(self, segment: int, offsets: list[int], payloads: list[bytes]) -> list[bytes]:
        """The envelopes of the entries whose payloads are ``payloads``, each at the offset in
        ``offsets`` in ``segment``.

        Per event one formatted id and one copy of the envelope. Raises ValueError if a payload
        is not an envelope without its id (damage that passed its record's checksum): the
        reader then steps over its record as corrupt.
        """
        head = ENVELOPE_HEAD
        prefix = b'%s"id":"%d-' % (head, segment)
        found: list[bytes] = []
        for offset, payload in zip(offsets, payloads, strict=True):
            if not payload.startswith(head):
                raise ValueError(f"the WAL entry at {segment}-{offset} is not an envelope")
            found.append(payload.replace(head, prefix + b'%d",' % offset, 1))
        return found

    def rests(self, segment: int, offsets: Iterable[int], rests: list[bytes]) -> list[bytes]:
        """The envelopes of payloads that are ``lead`` followed by each of ``rests`` (a whole
        record: ``shipper.buffer.entries.uniform``), each at the offset in ``offsets``: per
        event an id formatted and a concatenation, both in C (no Python work per event)."""
        heads = b'%s"id":"%d-' % (ENVELOPE_HEAD, segment) + b'%d",'
        return list(map(bytes.__add__, map(heads.__mod__, offsets), rests))


#: The daemon's ``WalReader``s' ``envelopes`` (``_Envelopes``): called as a ``Shape``.
envelopes: Final = _Envelopes()


#: What an event takes beyond its raw bytes, in the WAL and in memory: the envelope's keys,
#: timestamp and source object, the ``Event`` itself.
EVENT_OVERHEAD: Final = 256


def event_bytes(event: Event) -> int:
    """About how many bytes ``event`` takes (its sealed tail, which holds its record or its
    malformed bytes; else its record's bytes, or its malformed bytes as base64; plus
    ``EVENT_OVERHEAD``): what bounds batches and buffers in bytes."""
    sealed = event.sealed
    if sealed is not None:  # (its record is in the tail: an ingest worker's has no record_json)
        return EVENT_OVERHEAD + len(sealed[1])
    raw = event.record_json
    if raw is not None:
        return EVENT_OVERHEAD + len(raw)
    malformed = event.malformed
    return EVENT_OVERHEAD + (len(malformed.raw) * 4 // 3 if malformed is not None else 0)


def batch_bytes(events: list[Event]) -> int:
    """``event_bytes`` of a batch."""
    return sum(map(event_bytes, events))


class Batch(list[Event]):
    """Events as a source hands them on, with the bytes they are counted as (``size``): the
    source's own estimate (say, the bytes it read plus ``EVENT_OVERHEAD`` an event), or
    ``batch_bytes``. It travels with the batch so that what is taken from a budget and given back
    is the same number, and is counted once."""

    __slots__ = ("size",)

    def __init__(self, events: Iterable[Event] = (), size: int | None = None) -> None:
        super().__init__(events)
        self.size = batch_bytes(self) if size is None else size


def size_of(batch: list[Event]) -> int:
    """The bytes a batch counts as: its ``Batch.size``, else ``batch_bytes``."""
    return batch.size if type(batch) is Batch else batch_bytes(batch)


def alert_event(action: str, agent: str | None, details: dict[str, Any]) -> Event:
    """An alert raised by shipper: ``record`` = ``{"action": action, "agent": agent, **details}``."""
    record = {"action": action, "agent": agent, **details}
    return Event(
        utc_timestamp(),
        {"id": ALERT_SOURCE_ID, "kind": "alert"},
        agent,
        orjson.dumps(record),
        alert=True,
    )


#: An envelope's head, read by ``HeadReader``: its id, ``received_at``, ``source`` object,
#: ``agent`` (None without one), ``chain`` (None without one), and whether it holds a ``record``
#: (not ``malformed``).
Head = tuple[str, str, dict[str, Any], str | None, dict[str, Any] | None, bool]

_STRING: Final = rb'"([^"\\]*+)"'  # a string without escapes: its bytes are its text
#: An object nested at most three deep (as a syslog event's structured data) whose strings have
#: no escapes: its text ends at the first ``}`` outside its strings and inner objects.
#: (Possessive: no backtracking, linear in the envelope's length.)
_ATOM: Final = rb'[^{}"\\]++|"[^"\\]*+"'  # text without braces outside strings, or a string
_DEPTH_1: Final = rb"\{(?:%s)*+\}" % _ATOM
_DEPTH_2: Final = rb"\{(?:%s|%s)*+\}" % (_ATOM, _DEPTH_1)
_OBJECT: Final = rb"(\{(?:%s|%s)*+\})" % (_ATOM, _DEPTH_2)
#: What every envelope starts with, up to its ``source`` object, given the patterns of the texts of
#: ``id`` and ``received_at`` (in their quotes): ``HeadReader``'s and ``BatchHeads``' one start.
_START: Final = rb'\{"v":1,"id":%s,"received_at":%s,"source":'
_START_RE: Final = re.compile(_START % (_STRING, _STRING))
_OBJECT_RE: Final = re.compile(_OBJECT)
_REST_RE: Final = re.compile(
    rb'(?:,"syslog":%s)?(?:,"agent":%s)?(?:,"chain":%s)?(?:,"identity_mismatch":%s)?'
    rb',"(record|malformed)":\{' % (_OBJECT, _STRING, _OBJECT, _OBJECT)
)


#: The usual shape (no syslog, no identity_mismatch), in one match: source and chain objects
#: without inner objects, up to their first ``}``. (That ``}`` cannot be inside a string: what
#: must follow it starts with ``,"``, and in a string a ``"`` is escaped, while a string closed
#: right after ``},`` would be followed by a key's letters, which is not JSON.)
_QUICK_RE: Final = re.compile(
    _START % (_STRING, _STRING)
    + rb'(\{[^{}]*+\})(?:,"agent":%s)?(?:,"chain":(\{[^{}]*+\}))?,"(record|malformed)":\{' % _STRING
)
_SOURCE_MEMO: Final = 64


class HeadReader:
    """Reads the head of envelopes (everything before ``record``) from their bytes, without
    parsing the record, for the envelopes ``Event.encode`` writes with their id put in.

    Exact, or nothing: ``read`` returns the values a full ``orjson.loads`` of the envelope would
    give, or None when the bytes are not of the shape it follows (then parse them in full).
    Regular expressions follow the top-level keys in the order ``encode_without_id`` writes
    them, taking strings only without escapes (their bytes are their text) and objects only
    where their text is known to end (``_QUICK_RE``; else, for objects nested at most three
    deep whose strings have no escapes, at the first ``}`` outside their strings and inner
    objects). Those objects are then parsed alone, a ``source`` once per distinct bytes (one
    per connection).
    """

    __slots__ = ("_sources",)

    def __init__(self) -> None:
        self._sources: dict[bytes, dict[str, Any]] = {}

    def _source(self, blob: bytes) -> dict[str, Any]:
        source = self._sources.get(blob)
        if source is None:
            if len(self._sources) >= _SOURCE_MEMO:
                self._sources.clear()
            source = self._sources[blob] = orjson.loads(blob)
        return source

    def read(self, line: bytes) -> Head | None:
        quick = _QUICK_RE.match(line)
        parts = quick.groups() if quick is not None else _nested_parts(line)
        if parts is None:
            return None
        event_id, received_at, blob, agent, chain, kind = parts
        return (
            event_id.decode(),
            received_at.decode(),
            self._source(blob),
            agent.decode() if agent is not None else None,
            orjson.loads(chain) if chain is not None else None,
            kind == b"record",
        )


def _nested_parts(line: bytes) -> tuple[bytes | Any, ...] | None:
    """The bytes ``_QUICK_RE``'s groups hold (id, ``received_at``, source, agent, chain, kind)
    for an envelope whose objects nest (``HeadReader``), or None."""
    start = _START_RE.match(line)
    if start is None:
        return None
    found = _OBJECT_RE.match(line, start.end())
    if found is None:
        return None
    rest = _REST_RE.match(line, found.end())
    if rest is None:
        return None
    _, agent, chain, _, kind = rest.groups()
    return (*start.groups(), found.group(), agent, chain, kind)


_TEXT: Final = rb'[^"\\\n]*+'  # a string's text without escapes (and no LF: one line)
#: After the source object: what tells whether the event may be chained. An agent followed by a
#: chain (the agent captured), an agent without one, or none.
_LINKED: Final = rb'(?:,"agent":"(%s)","chain":\{|,"agent":"%s"(?!,"chain":)' % (_TEXT, _TEXT) + (
    rb'|(?=,"(?:chain|identity_mismatch|record|malformed)":))'
)
_BATCH_MEMO: Final = 16
_ID: Final = operator.methodcaller("group", 1)
_AGENT: Final = operator.methodcaller("group", 2)


class BatchHeads:
    """Reads the heads of a whole batch of envelopes in one pass over their bytes, for a sink
    that groups a batch by the start of ``received_at`` and the source id alone: whether every
    envelope is of the usual shape with a ``received_at`` that starts with a given prefix and a
    given source id, and each one's id and, if it may be chained, its agent.

    Exact, or nothing, like ``HeadReader``, whose reasoning it follows: one regular expression
    matched at the start of each line, all in C calls (no Python work per envelope, and only
    the heads' bytes read); if one does not match, ``read`` returns None. An envelope matches when its ``received_at`` has no escapes and starts with ``prefix``, its
    ``source`` is an object without inner objects whose first key is ``id``, a string without
    escapes equal to ``source`` (None: any but ``ALERT_SOURCE_ID``), and no ``syslog`` follows;
    then an agent without escapes and a chain (the agent is captured: the event is chained
    unless its chain's sequence is no integer or it holds ``malformed``), an agent and no chain,
    or no agent (the event is not chained).
    """

    __slots__ = ("_patterns",)

    def __init__(self) -> None:
        self._patterns: dict[tuple[str, str | None], re.Pattern[bytes]] = {}

    def _compiled(self, prefix: str, source: str | None) -> re.Pattern[bytes]:
        pattern = self._patterns.get((prefix, source))
        if pattern is None:
            if len(self._patterns) >= _BATCH_MEMO:
                self._patterns.clear()
            source_id = (
                rb'(?!%s")%s' % (ALERT_SOURCE_ID.encode(), _TEXT)
                if source is None
                else re.escape(source.encode())
            )
            start = _START % (rb'"(%s)"' % _TEXT, rb'"%s%s"' % (re.escape(prefix.encode()), _TEXT))
            pattern = self._patterns[(prefix, source)] = re.compile(
                start + rb'\{"id":"%s"(?:\}|,[^{}\n]*+\})%s' % (source_id, _LINKED)
            )
        return pattern

    def read(
        self, lines: list[bytes], prefix: str, source: str | None
    ) -> tuple[list[str], list[bytes | None]] | None:
        """The ids of the envelopes ``lines``, and for each its agent if it may be chained,
        else None; None unless every envelope is as the class says."""
        matches = list(map(self._compiled(prefix, source).match, lines))
        if None in matches:
            return None
        return list(map(bytes.decode, map(_ID, matches))), list(map(_AGENT, matches))
