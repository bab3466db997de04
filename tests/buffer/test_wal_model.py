"""A model-based test of the WAL: random appends, reads, acks and restarts against a simple model.

The model is the list of appended records and, per sink, how far it has been handed records in
this run and how far it has acknowledged. Each rule drives the real ``Wal`` with one ``trio.run``
per step (its trio events and lock have no waiters between steps, so they carry over) and checks
what came back against the model; the invariants check the files on disk after every step.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shipper.buffer.record import HEADER_SIZE
from shipper.buffer.recovery import CURSOR_DIR, EPOCH_FILE, LOCK_FILE
from shipper.buffer.segment import SEGMENT_HEADER_SIZE, Position, segment_name, segment_number
from shipper.buffer.wal import ReadBatch, Wal, WalSettings, entry
from shipper.events import Event

T = TypeVar("T")

SOURCES: dict[str, dict[str, str]] = {
    "agents": {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"},
    "other": {"id": "other", "kind": "json_tls", "peer": "127.0.0.1:2"},
}
#: One sink takes every source, one only "other" (it still passes over the others' records).
SINKS: dict[str, frozenset[str] | None] = {"all": None, "other_only": frozenset({"other"})}
SEGMENT_BYTES = 64 * 1024
UNLIMITED = 2**40

#: Record padding: mostly small, some large enough that a batch spans segments, rarely one
#: record larger than a whole segment.
PADS = st.one_of(
    st.integers(0, 300),
    st.integers(300, 6000),
    st.sampled_from([20_000, 70_000]),
)
#: Read sizes: smaller than any record, a few records, and the default.
READ_SIZES = st.one_of(st.integers(1, 64), st.integers(65, 20_000), st.just(1024 * 1024))


def run(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one async WAL operation to completion in its own trio run."""
    return trio.run(function, *args)


@dataclass
class Appended:
    """One accepted record, as the model knows it."""

    n: int
    source: str
    pad: int
    id: Position | None = None  # learned when a sink is handed it
    end: Position | None = None  # the position right after it, when a read showed it


@dataclass
class SinkModel:
    """One sink's progress: indexes into the list of all accepted records."""

    inputs: frozenset[str] | None
    read: int = 0  # the next record this run hands out (records before it were handed out)
    acked: int = 0  # every record before it is acknowledged, durably
    acked_end: Position | None = None  # the position acknowledged, if any
    batches: list[tuple[Position, int]] = field(default_factory=list)  # (end, read after it)
    has_cursor: bool = False

    def wants(self, record: Appended) -> bool:
        return self.inputs is None or record.source in self.inputs


def segments_on_disk(directory: Path) -> dict[int, int]:
    """Segment number -> file size, for every segment file in ``directory``."""
    found: dict[int, int] = {}
    for path in directory.iterdir():
        number = segment_number(path.name)
        if number is not None:
            found[number] = path.stat().st_size
    return found


def passed(acked: Position | None, number: int, size: int) -> bool:
    """Whether a sink acknowledged at ``acked`` has passed all of segment ``number``."""
    if acked is None:
        return False
    return acked.segment > number or (acked.segment == number and acked.offset >= size)


class WalModel(RuleBasedStateMachine):
    """Appends, reads, acks and restarts of a WAL with two sinks, checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="wal-model-")
        self.directory = Path(self.tmp.name) / "wal"
        self.records: list[Appended] = []
        self.sinks = {name: SinkModel(inputs) for name, inputs in SINKS.items()}
        self.settings = WalSettings()
        self.wal: Wal | None = None
        self.next_n = 0
        self.dropped = 0  # by the current Wal (its counters start at zero)

    # --- setup ---------------------------------------------------------------------------------

    @initialize(
        drop_limit=st.one_of(st.none(), st.integers(32 * 1024, 400 * 1024)),
        fsync=st.sampled_from(["batch", "never"]),
    )
    def start(self, drop_limit: int | None, fsync: str) -> None:
        """Open a fresh WAL: unlimited, or small with ``when_full = "drop_newest"``."""
        self.settings = WalSettings(
            max_bytes=UNLIMITED if drop_limit is None else drop_limit,
            segment_bytes=SEGMENT_BYTES,
            fsync=fsync,
            when_full="block" if drop_limit is None else "drop_newest",
        )
        self.open()

    def open(self) -> None:
        """Open a ``Wal`` on the directory; every sink resumes at its acknowledged position."""
        self.wal = Wal(self.directory, self.settings)
        report = self.wal.open(dict(SINKS))
        self.dropped = 0
        for finding in report.findings:
            assert finding.kind == "cursor", finding
            assert "no cursor" in finding.detail, finding
            (sink,) = [name for name in SINKS if f"sink {name}:" in finding.detail]
            assert not self.sinks[sink].has_cursor, finding
        for name, model in self.sinks.items():
            model.read = model.acked
            model.batches.clear()
            if model.acked_end is not None:
                assert report.cursors[name] >= model.acked_end
            if report.segments:
                model.has_cursor = True  # recovery wrote one if there was none

    def teardown(self) -> None:
        try:
            if self.wal is not None:
                run(self.wal.close)
                self.wal.release()
        finally:
            self.tmp.cleanup()

    @property
    def live(self) -> Wal:
        assert self.wal is not None
        return self.wal

    # --- rules ---------------------------------------------------------------------------------

    @rule(
        batch=st.lists(st.tuples(st.sampled_from(sorted(SOURCES)), PADS), min_size=1, max_size=50)
    )
    def append(self, batch: list[tuple[str, int]]) -> None:
        """Append a batch; with drop_newest it is refused exactly when the disk holds max_bytes."""
        wal = self.live
        full = sum(segments_on_disk(self.directory).values()) >= self.settings.max_bytes
        first = self.next_n
        appended = [Appended(first + i, source, pad) for i, (source, pad) in enumerate(batch)]
        events = [
            Event(
                "2026-11-23T00:00:00.000000Z",
                SOURCES[record.source],
                "agent-1",
                orjson.dumps({"n": record.n, "pad": "x" * record.pad}),
            )
            for record in appended
        ]
        accepted = run(wal.append, [entry(event) for event in events])
        assert accepted is not full
        self.next_n += len(appended)
        if accepted:
            self.records.extend(appended)
        else:
            self.dropped += len(appended)
        assert wal.counters["dropped_full"] == self.dropped

    @rule(sink=st.sampled_from(sorted(SINKS)), max_bytes=READ_SIZES, then_ack=st.booleans())
    def read(self, sink: str, max_bytes: int, then_ack: bool) -> None:
        """Read for one sink (exactly the next records in append order, filtered by its inputs),
        and maybe acknowledge the batch at once, as a sink whose destination took it does."""
        model = self.sinks[sink]
        reader = self.live.readers[sink]
        if model.read == len(self.records):
            assert not reader.has_unread

            async def read_nothing() -> ReadBatch | None:
                with trio.move_on_after(0):
                    return await reader.read(max_bytes)
                return None

            assert run(read_nothing) is None  # nothing to hand out: read() waits
            return
        batch = run(reader.read, max_bytes)
        assert batch is not None
        self.check_batch(sink, batch, max_bytes)
        if then_ack:
            self.ack(sink, 0)

    def check_batch(self, sink: str, batch: ReadBatch, max_bytes: int | None) -> None:
        """Check a batch against the model and advance the sink's read index past it."""
        model = self.sinks[sink]
        assert 1 <= batch.records <= batch.events <= len(self.records) - model.read
        passed_over = self.records[model.read : model.read + batch.events]
        expected = [record for record in passed_over if model.wants(record)]
        assert len(batch.envelopes) == len(expected)
        ids: list[Position] = []
        for record, raw in zip(expected, batch.envelopes, strict=True):
            envelope = orjson.loads(raw)
            assert envelope["record"] == {"n": record.n, "pad": "x" * record.pad}
            assert envelope["source"]["id"] == record.source
            segment, offset = envelope["id"].split("-")
            position = Position(int(segment), int(offset))
            if record.id is None:
                record.id = position
            assert record.id == position, "a record's id changed between deliveries"
            ids.append(position)
        assert all(position < batch.end for position in ids)
        last = passed_over[-1]
        if last.end is None:
            last.end = batch.end
        assert last.end == batch.end
        if model.inputs is None:  # every record was handed out: the ids are all known
            for record, following in itertools.pairwise(passed_over):
                assert record.id is not None
                assert following.id is not None
                assert record.id < following.id
            first = ids[0]
            # A batch starts at a record: its first event is the first entry of that record.
            path = self.directory / segment_name(first.segment)
            with open(path, "rb") as file:
                file.seek(first.offset - HEADER_SIZE)
                first_size = HEADER_SIZE + int.from_bytes(file.read(4), "little")
            if max_bytes is not None and all(p.segment == batch.end.segment for p in ids):
                total = batch.end.offset - (first.offset - HEADER_SIZE)
                # At most max_bytes, unless the first record alone is larger: then the read size
                # doubled until it fitted, so less than twice that record.
                assert total <= max_bytes or (first_size > max_bytes and total < 2 * first_size)
        for record, following in itertools.pairwise(self.records):
            # Right after a batch's end (a record's end) starts the next record's first entry.
            end, start = record.end, following.id
            if end is not None and start is not None and start.segment == end.segment:
                assert start.offset == end.offset + HEADER_SIZE
        model.read += batch.events
        model.batches.append((batch.end, model.read))

    @precondition(lambda self: any(model.batches for model in self.sinks.values()))
    @rule(sink=st.sampled_from(sorted(SINKS)), pick=st.integers(0, 7))
    def ack(self, sink: str, pick: int) -> None:
        """Acknowledge one batch handed out to a sink (usually the last, sometimes an older one)."""
        model = self.sinks[sink]
        if not model.batches:
            return
        end, read = model.batches[-1 - pick % len(model.batches)]
        effective = model.acked_end is None or end > model.acked_end
        run(self.live.readers[sink].ack, end)
        if effective:
            model.acked_end = end
            model.acked = read
            model.has_cursor = True
            # Every finished segment that all sinks have passed is gone now.
            active = self.live.committed.segment
            for number, size in segments_on_disk(self.directory).items():
                if number != active:
                    assert not all(
                        passed(other.acked_end, number, size) for other in self.sinks.values()
                    ), f"segment {number} was passed by every sink but not deleted"
        acked = model.acked_end
        model.batches = [(e, r) for e, r in model.batches if acked is None or e > acked]

    @rule(drain=st.booleans())
    def restart(self, drain: bool) -> None:
        """Close and reopen: what was handed out but not acknowledged comes again, nothing else."""
        wal = self.live
        run(wal.close)
        if drain:  # a closed WAL's readers still hand out the rest, then None
            for sink, reader in wal.readers.items():
                while (batch := run(reader.read)) is not None:
                    self.check_batch(sink, batch, None)
                assert self.sinks[sink].read == len(self.records)
        wal.release()
        self.open()

    @rule()
    def deliver_everything(self) -> None:
        """Every sink reads and acknowledges all; after an ack only empty segments and the active
        one remain."""
        collected = False
        for sink, reader in self.live.readers.items():
            while reader.has_unread:
                batch = run(reader.read)
                assert batch is not None
                self.check_batch(sink, batch, None)
            if self.sinks[sink].batches:
                self.ack(sink, 0)
                collected = True
            assert self.sinks[sink].acked == len(self.records)
        if collected:
            active = self.live.committed.segment
            for number, size in segments_on_disk(self.directory).items():
                assert number == active or size == SEGMENT_HEADER_SIZE, (
                    f"segment {number} ({size} bytes) outlived the acknowledgement of its records"
                )

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def total_bytes_is_what_is_on_disk(self) -> None:
        """``total_bytes`` equals the sizes of the segment files on disk."""
        if self.wal is not None:
            assert self.wal.total_bytes == sum(segments_on_disk(self.directory).values())

    @invariant()
    def only_wal_files(self) -> None:
        """The directory holds segments, the lock and the cursors, and nothing was quarantined."""
        if self.wal is not None:
            names = {path.name for path in self.directory.iterdir()}
            assert {n for n in names if segment_number(n) is None} <= {
                LOCK_FILE,
                CURSOR_DIR,
                EPOCH_FILE,
            }
            assert (self.directory / segment_name(self.wal.committed.segment)).exists()

    @invariant()
    def has_unread_matches_the_model(self) -> None:
        """A reader has unread records exactly when the model has records not yet handed out."""
        if self.wal is not None and not self.wal.closed:
            for name, model in self.sinks.items():
                assert self.wal.readers[name].has_unread == (model.read < len(self.records))

    @invariant()
    def ids_are_increasing_positions(self) -> None:
        """Known ids and end positions grow in append order, across restarts: ids never repeat."""
        previous: tuple[Position, str] | None = None
        for record in self.records:
            for position, kind in ((record.id, "id"), (record.end, "end")):
                if position is None:
                    continue
                if previous is not None:
                    if previous[1] == "end" and kind == "id":
                        assert previous[0] <= position, f"record {record.n} starts too early"
                    else:
                        assert previous[0] < position, f"record {record.n}: {kind} out of order"
                previous = (position, kind)

    @invariant()
    def unacknowledged_records_are_kept(self) -> None:
        """No segment that holds a record some sink has not acknowledged is deleted."""
        if not self.records:
            return
        on_disk = segments_on_disk(self.directory)
        oldest = min(model.acked for model in self.sinks.values())
        for record in self.records[oldest:]:
            if record.id is not None:
                assert record.id.segment in on_disk, f"record {record.n} is gone before its ack"

    @invariant()
    def passed_segments_are_deleted(self) -> None:
        """Every segment below the oldest acknowledged segment of all sinks is deleted."""
        ends = [model.acked_end for model in self.sinks.values()]
        if all(end is not None for end in ends):
            below = min(end.segment for end in ends if end is not None)
            stale = [n for n in segments_on_disk(self.directory) if n < below]
            assert not stale, f"segments {stale} were passed by every sink but not deleted"


def test_wal_behaves_like_its_model() -> None:
    """Under any sequence of appends, reads, acks and restarts, each sink gets its inputs' records
    in order, exactly once per run but for redelivery of the unacknowledged, and segments go
    exactly when every sink has passed them."""
    run_state_machine_as_test(
        WalModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


async def test_a_restart_deletes_segments_acknowledged_before_the_shutdown() -> None:
    """A segment whose records every sink acknowledged before a restart is gone after it."""
    with tempfile.TemporaryDirectory(prefix="wal-model-") as tmp:
        directory = Path(tmp)
        settings = WalSettings(segment_bytes=SEGMENT_BYTES)
        wal = Wal(directory, settings)
        wal.open({"all": None})
        source = SOURCES["agents"]
        record = orjson.dumps({"n": 1})
        event = Event("2026-11-23T00:00:00.000000Z", source, "a", record)
        assert await wal.append([entry(event)])
        reader = wal.readers["all"]
        batch = await reader.read()
        assert batch is not None
        await reader.ack(batch.end)  # all of segment 1, but it is the active one: it stays
        await wal.close()
        wal.release()

        again = Wal(directory, settings)
        again.open({"all": None})
        try:
            assert not again.readers["all"].has_unread
            assert sorted(segments_on_disk(directory)) == [again.committed.segment]
            assert again.total_bytes == SEGMENT_HEADER_SIZE
        finally:
            await again.close()
            again.release()
