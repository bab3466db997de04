"""WAL readers: one per sink (and one for the chain stage's replay), in any process.

A reader needs the WAL directory and nothing of the writer: the segment files, what the writer
publishes (``shipper.buffer.published``: the accepted position, the segments and their ends, the
ranges recovery skipped, the epoch, whether the WAL is closed) and, for a named reader, its cursor
(``shipper.buffer.cursor``). It reads in order, up to the accepted position and never past it,
steps over skipped ranges, and hands out the payloads of the entries routed to its inputs
(``shipper.buffer.entries``), or what its ``envelopes`` function makes of them (the daemon's
readers: event envelopes with their ids, ``shipper.events.envelopes``), in batches of whole
records, each with the position to acknowledge once they are delivered. A ``SplitShape`` (the
daemon's) takes the usual record (one route, payloads alike: ``entries.uniform``) whole, with no
work per entry in the reader; any other record goes entry by entry, as corrupt bytes do.

Waiting for more: a reader in the writer's process is woken by the writer directly (``wake``);
one in another process binds a socket in ``wake/`` and is sent a byte at each publication
(``shipper.buffer.wake``), and looks at the published state again at least every
``POLL_SECONDS`` whatever happens, so it needs nothing but the files to follow the WAL.

Acknowledging: ``ack`` stores the cursor (atomically, durably), then tells the writer, directly in
its process, else through the writer's socket; the writer reads the cursors again and deletes
the segments that every configured reader has passed. A reader whose name the writer was not
opened with holds no segment: one deleted under it is logged (``wal_segment_gone``) and stepped
over.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import trio

from shipper.buffer import cursor as cursors
from shipper.buffer import record as records
from shipper.buffer.entries import take, uniform
from shipper.buffer.published import Head, NotPublished, State, read_state
from shipper.buffer.recovery import CURSOR_DIR
from shipper.buffer.segment import SEGMENT_HEADER_SIZE, Position, read_at, segment_name
from shipper.buffer.wake import ACKED, ReaderWake
from shipper.logging import get_logger

log = get_logger("shipper.buffer")

#: How many bytes of records one ``read`` takes at most (unless one record is larger).
READ_BYTES: Final = 1024 * 1024
#: How long a reader in another process waits for a wake-up before it looks again anyway.
POLL_SECONDS: Final = 1.0

#: What a reader hands out for the payloads of one read: called with their segment, the offset
#: of each one's entry (its position) and the payloads; raises ValueError for a payload it cannot
#: take (the reader then steps over that payload's record as corrupt).
Shape = Callable[[int, list[int], list[bytes]], list[bytes]]


@runtime_checkable
class SplitShape(Protocol):
    """A ``Shape`` that also takes a whole record's payloads at once, for the records
    ``entries.uniform`` splits with its ``lead`` (what every payload it takes starts with)."""

    lead: bytes

    def __call__(self, segment: int, offsets: list[int], payloads: list[bytes]) -> list[bytes]:
        """What it hands out for ``payloads`` (ValueError: one it cannot take)."""
        ...

    def rests(self, segment: int, offsets: Iterable[int], rests: list[bytes]) -> list[bytes]:
        """The same for payloads that are ``lead`` followed by each of ``rests`` (never
        refused)."""
        ...


#: The writer's hook for readers in its own process: called with the reader's name and the
#: position it acknowledged, once its cursor is stored.
Acknowledged = Callable[[str, Position], Awaitable[None]]


@dataclass
class ReadBatch:
    """What one read hands out, and the position to acknowledge once it is delivered."""

    envelopes: list[bytes]  # the payloads routed to the reader, as its ``envelopes`` made them
    end: Position
    records: int  # records passed over
    events: int  # entries in them, including those of other sinks' inputs


class WalReader:
    """One sink's view of the WAL: read in order, acknowledge, resume after a restart.

    ``name``: the cursor's (the sink's id); None for a reader that never acknowledges (a
    replay). ``inputs``: the routes (source ids) it takes, besides the empty route; None: all.
    ``position``: where to start; by default the cursor's position (for a named reader), else
    the oldest record. ``state``: a fixed view of the WAL instead of what its writer publishes
    (``published.recovered``: for a WAL no writer runs on). ``acknowledged``: set by a writer in
    the same process, which then wakes the reader itself (``wake``): no socket.
    """

    def __init__(
        self,
        directory: Path,
        name: str | None,
        inputs: frozenset[str] | None = None,
        *,
        envelopes: Shape | None = None,
        position: Position | None = None,
        state: State | None = None,
        acknowledged: Acknowledged | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.directory = directory
        self.name = name
        self.inputs = None if inputs is None else frozenset(i.encode() for i in inputs)
        self.counters: Counter[str] = Counter()
        self.poll_seconds = poll_seconds
        self._shape = envelopes
        self._split = envelopes if isinstance(envelopes, SplitShape) else None
        self._fixed = state is not None
        self._state = state
        self._acknowledged = acknowledged
        self._event = trio.Event()
        self._wake: ReaderWake | None = None
        if position is None:
            position = self._stored_position()
        self.position = position
        self.acked = position
        if name is not None and state is None and acknowledged is None:
            try:
                self._wake = ReaderWake(directory)
            except OSError as exc:
                log.warning(
                    "wal_reader_polls",
                    sink=name,
                    reason=f"no wake-up socket: {exc}",
                    poll_seconds=poll_seconds,
                )

    def _stored_position(self) -> Position:
        """The cursor's position, or the oldest record if there is none (or it is unusable)."""
        oldest = Position(1, SEGMENT_HEADER_SIZE)  # the reader moves on to the oldest segment
        if self.name is None:
            return oldest
        stored = cursors.load(self.directory / CURSOR_DIR, self.name)
        if isinstance(stored, Position):
            return stored
        if stored is not None:
            log.warning("wal_reader_cursor_unusable", sink=self.name, reason=stored)
        return oldest

    def close(self) -> None:
        """Give up the wake-up socket (a reader in another process, when it is done)."""
        if self._wake is not None:
            self._wake.close()
            self._wake = None

    # --- what the writer published --------------------------------------------------------------

    def _refresh(self) -> State | None:
        """The state as published now (or the last one seen, if none can be read now)."""
        if self._fixed:
            return self._state
        with contextlib.suppress(NotPublished, OSError):  # the last one seen, then
            self._state = read_state(self.directory, self._state, self.counters)
        return self._state

    @property
    def epoch(self) -> str:
        """The epoch of the WAL this reader reads ("" until its writer published one)."""
        state = self._refresh()
        return state.layout.epoch if state is not None else ""

    def _normalize(self, state: State) -> None:
        """Step over finished segments and skipped ranges."""
        while True:
            segment, offset = self.position.segment, self.position.offset
            limit = state.limit(segment)
            if limit is None or (offset >= limit and segment < state.committed.segment):
                following = state.following(segment)
                if following is None:
                    return
                self.position = Position(following, SEGMENT_HEADER_SIZE)
                continue
            for start, end in state.layout.skips.get(segment, ()):
                if start <= self.position.offset < end:
                    self.position = Position(segment, end)
            return

    @property
    def has_unread(self) -> bool:
        """Whether accepted records wait to be read (``read()`` would not wait)."""
        state = self._refresh()
        if state is None:
            return False
        self._normalize(state)
        return self.position < state.committed

    # --- reading --------------------------------------------------------------------------------

    def wake(self) -> None:
        """The writer (in this process) published something new."""
        self._event.set()

    async def read(self, max_bytes: int = READ_BYTES) -> ReadBatch | None:
        """The next accepted records (waiting for some); None once the WAL is closed and read."""
        while True:
            if self._event.is_set():
                self._event = trio.Event()
            if self._wake is not None:
                self.counters["wakeups"] += self._wake.drain()
            state = self._refresh()
            if state is not None:
                self._normalize(state)
                if self.position < state.committed:
                    break
                if state.head.closed:
                    return None
            await self._wait()
        return await trio.to_thread.run_sync(self._read, state, max_bytes)

    async def _wait(self) -> None:
        """Until the writer wakes this reader, or (in another process) ``poll_seconds`` pass."""
        if self._acknowledged is not None:  # the writer is in this process and wakes it
            await self._event.wait()
            self.counters["wakeups"] += 1
            return
        with trio.move_on_after(self.poll_seconds) as scope:
            if self._wake is not None:
                await self._wake.wait()
            else:
                await self._event.wait()
        if scope.cancelled_caught:
            self.counters["polls"] += 1

    def replay(
        self, end: Position | None = None, max_bytes: int = READ_BYTES
    ) -> Iterator[ReadBatch]:
        """Every batch from the reader's position up to ``end`` (None: the accepted position
        now), without waiting and without acknowledging (blocking: a worker thread's)."""
        state = self._refresh()
        if state is None:
            return
        if end is not None:
            state = State(Head(end, state.head.generation, closed=True), state.layout)
        while (batch := self._read(state, max_bytes)) is not None:
            yield batch

    def _read(self, state: State, max_bytes: int) -> ReadBatch | None:
        """The next records up to ``state``'s accepted position; None if there are none
        (blocking)."""
        self._normalize(state)
        if self.position >= state.committed:
            return None
        segment, offset = self.position.segment, self.position.offset
        limit = state.limit(segment)
        assert limit is not None
        for start, _end in state.layout.skips.get(segment, ()):
            if offset < start < limit:
                limit = start  # read up to a skipped range; the next read steps over it
        path = self.directory / segment_name(segment)
        want = min(limit - offset, max_bytes)
        try:
            while True:
                data = read_at(path, offset, want)
                found, stop, damaged = records.read_records(data)
                if found or damaged or want >= limit - offset:
                    break
                want = min(limit - offset, want * 2)  # one record is larger than the read size
            if not found:
                # Accepted bytes that hold no valid record: damaged after recovery scanned them.
                rest = read_at(path, offset, limit - offset)
        except FileNotFoundError:
            # Deleted although this reader had not passed it: the writer does not know it.
            log.error("wal_segment_gone", sink=self.name, segment=segment, offset=offset)
            self.counters["segments_gone"] += 1
            self.position = Position(segment, limit)
            return ReadBatch([], self.position, 0, 0)
        if not found:
            resume = next(
                (item.offset for item in records.scan(rest) if isinstance(item, records.Record)),
                len(rest),
            )
            self._corrupt(segment, offset, resume, "bad checksum")
            self.position = Position(segment, offset + resume)
            return ReadBatch([], self.position, 0, 0)
        self.position = Position(segment, offset + stop)
        if self._split is not None:
            shaped, events = self._split_each(segment, offset, found, self._split)
            return ReadBatch(shaped, self.position, len(found), events)
        shape = self._shape
        offsets: list[int] = []
        payloads: list[bytes] = []
        events = 0
        try:
            for item in found:
                events += take(offset + item.offset, item.payload, self.inputs, offsets, payloads)
            shaped = payloads if shape is None else shape(segment, offsets, payloads)
        except ValueError:
            # A record that take or shape refuses: all again record by record (the slow path).
            shaped = []
            events = sum(self._shape_record(segment, offset, item, shape, shaped) for item in found)
        return ReadBatch(shaped, self.position, len(found), events)

    def _split_each(
        self, segment: int, offset: int, found: list[records.Record], shape: SplitShape
    ) -> tuple[list[bytes], int]:
        """What ``shape`` makes of the records ``found`` at ``offset``, and how many entries they
        hold: each usual record (``entries.uniform``) whole, any other entry by entry, stepping
        over those that ``take`` or ``shape`` refuses (``_shape_record``)."""
        inputs = self.inputs
        lead = shape.lead
        shaped: list[bytes] = []
        events = 0
        for item in found:
            at = offset + item.offset
            split = uniform(item.payload, lead)
            if split is not None:
                route, rests = split
                events += len(rests)
                if inputs is None or not route or route in inputs:
                    step = len(route) + 2 + len(lead)  # route, NUL, lead, LF
                    first = at + records.HEADER_SIZE
                    offsets = accumulate(map(step.__add__, map(len, rests)), initial=first)
                    shaped += shape.rests(segment, offsets, rests)
                continue
            events += self._shape_record(segment, offset, item, shape, shaped)
        return shaped, events

    def _shape_record(
        self,
        segment: int,
        offset: int,
        item: records.Record,
        shape: Shape | None,
        shaped: list[bytes],
    ) -> int:
        """Append to ``shaped`` what ``shape`` makes of the entries of the record ``item`` read
        at ``offset`` (their payloads, without ``shape``); returns how many entries it holds.
        A record that ``take`` refuses (a payload that is not entries: say, one of another WAL
        format in a segment whose header was damaged) or ``shape`` refuses is stepped over like
        corrupt bytes."""
        at = offset + item.offset
        offsets: list[int] = []
        payloads: list[bytes] = []
        try:
            events = take(at, item.payload, self.inputs, offsets, payloads)
        except ValueError:
            self._corrupt(segment, at, item.end - item.offset, "not entries")
            return 0
        try:
            shaped += payloads if shape is None else shape(segment, offsets, payloads)
        except ValueError as exc:
            self._corrupt(segment, at, item.end - item.offset, str(exc))
        return events

    def _corrupt(self, segment: int, offset: int, size: int, reason: str) -> None:
        """Accepted bytes damaged after recovery scanned them: counted, logged, stepped over."""
        self.counters["corrupt_bytes"] += size
        log.error(
            "wal_corrupt_while_reading",
            sink=self.name,
            segment=segment,
            offset=offset,
            size=size,
            reason=reason,
        )

    # --- acknowledging --------------------------------------------------------------------------

    async def ack(self, end: Position) -> None:
        """The sink's destination confirmed everything before ``end``: persist the cursor and
        tell the writer, which deletes what every reader has passed."""
        if end <= self.acked:
            return
        if self.name is None:
            self.acked = end
            return
        directory = self.directory / CURSOR_DIR
        try:
            await trio.to_thread.run_sync(cursors.store, directory, self.name, end)
        except OSError as exc:
            # Delivered, but the cursor is not persisted: after a crash this part comes again.
            # The next acknowledgement tries again; segments stay until one succeeds.
            self.counters["cursor_errors"] += 1
            log.error("wal_cursor_store_failed", sink=self.name, error=str(exc))
            return
        self.acked = end
        self.counters["acks"] += 1
        if self._acknowledged is not None:
            await self._acknowledged(self.name, end)
        elif self._wake is not None:
            self._wake.tell_writer(ACKED)
