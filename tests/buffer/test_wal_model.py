"""A model-based test of the WAL: random appends, pipelined writes, failed writes and fsyncs,
reads, acks and restarts against a simple model.

The model is the list of accepted records, the batches written and not yet accepted (pipelined
``Wal.write`` with ``fsync = "batch"``, until an fsync covers them), the refused batches waiting
to be written again, and, per sink, how far it has been handed records in this run and how far it
has acknowledged. Each rule drives the real ``Wal`` with one ``trio.run`` per step (its trio events
and lock have no waiters between steps, so they carry over) and checks what came back against the
model; the invariants check the files on disk after every step.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import itertools
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shipper.buffer import wal as wal_module
from shipper.buffer.config import BufferConfig, Fsync
from shipper.buffer.published import HEAD_FILE, LAYOUT_FILE
from shipper.buffer.record import HEADER_SIZE
from shipper.buffer.recovery import CURSOR_DIR, EPOCH_FILE, LOCK_FILE
from shipper.buffer.segment import (
    SEGMENT_HEADER_SIZE,
    Position,
    segment_name,
    segment_number,
    write_all,
)
from shipper.buffer.wake import WAKE_DIR
from shipper.buffer.wal import READ_BYTES, ReadBatch, Wal, WalWriteError
from shipper.events import Event, entry, envelopes

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
#: A batch: (source, padding) per record.
BATCHES = st.lists(st.tuples(st.sampled_from(sorted(SOURCES)), PADS), min_size=1, max_size=50)


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
class Pending:
    """A batch written by ``Wal.write`` and not yet accepted (``fsync = "batch"``)."""

    seq: int
    records: list[Appended]
    bytes: int  # what it added to the WAL's "bytes" counter


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


def wal_entries(appended: list[Appended]) -> list[bytes]:
    """The WAL entries of the model's records."""
    return [
        entry(
            Event(
                "2026-11-23T00:00:00.000000Z",
                SOURCES[record.source],
                "agent-1",
                orjson.dumps({"n": record.n, "pad": "x" * record.pad}),
            )
        )
        for record in appended
    ]


def passed(acked: Position | None, number: int, size: int) -> bool:
    """Whether a sink acknowledged at ``acked`` has passed all of segment ``number``."""
    if acked is None:
        return False
    return acked.segment > number or (acked.segment == number and acked.offset >= size)


class WalModel(RuleBasedStateMachine):
    """Appends, pipelined writes, failures, reads, acks and restarts of a WAL with two sinks,
    checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="wal-model-")
        self.directory = Path(self.tmp.name) / "wal"
        self.records: list[Appended] = []  # accepted, in order
        self.pending: list[Pending] = []  # written, not yet accepted, in order
        self.refused: list[list[Appended]] = []  # refused batches, to be written again in order
        self.accepted_seqs: list[int] = []  # numbers of the current Wal's accepted write()s
        self.sinks = {name: SinkModel(inputs) for name, inputs in SINKS.items()}
        self.settings = BufferConfig()
        self.wal: Wal | None = None
        self.next_n = 0
        # By the current Wal (its counters start at zero): events dropped, events and bytes
        # written and not refused.
        self.dropped = 0
        self.events = 0
        self.bytes = 0
        #: After a failed fsync with ``fsync = "batch"``: the position the next write (or close)
        #: cuts the files back to.
        self.cut_due: Position | None = None

    # --- setup ---------------------------------------------------------------------------------

    @initialize(
        drop_limit=st.one_of(st.none(), st.integers(32 * 1024, 400 * 1024)),
        fsync=st.sampled_from(["batch", "never"]),
    )
    def start(self, drop_limit: int | None, fsync: Fsync) -> None:
        """Open a fresh WAL: unlimited, or small with ``when_full = "drop_newest"``."""
        self.settings = BufferConfig(
            max_bytes=UNLIMITED if drop_limit is None else drop_limit,
            segment_bytes=SEGMENT_BYTES,
            fsync=fsync,
            when_full="block" if drop_limit is None else "drop_newest",
        )
        self.open()

    def open(self) -> None:
        """Open a ``Wal`` on the directory; every sink resumes at its acknowledged position."""
        assert not self.pending
        self.wal = Wal(self.directory, self.settings, envelopes=envelopes)
        report = self.wal.open(dict(SINKS))
        self.dropped = self.events = self.bytes = 0
        self.cut_due = None
        self.accepted_seqs.clear()
        for finding in report.findings:
            assert finding.kind == "no_cursor", finding
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
            if self.wal is not None and not self.wal.closed:
                # close() makes every written batch durable: settle first, as restart does. After
                # a step that failed, that may fail too: the step's failure is the one to report.
                with contextlib.suppress(WalWriteError):
                    self.settle_all()
                run(self.wal.close)
        finally:
            if self.wal is not None:
                self.wal.release()
            self.tmp.cleanup()

    @property
    def live(self) -> Wal:
        assert self.wal is not None
        return self.wal

    @property
    def batch_fsync(self) -> bool:
        """Whether a batch is accepted only once an fsync covers it."""
        return self.settings.fsync == "batch"

    def new_records(self, batch: list[tuple[str, int]]) -> list[Appended]:
        """Fresh records (numbered on) for a batch of (source, padding)."""
        first = self.next_n
        self.next_n += len(batch)
        return [Appended(first + i, source, pad) for i, (source, pad) in enumerate(batch)]

    def full(self) -> bool:
        """Whether the segments on disk hold ``max_bytes`` (a write now is dropped or waits),
        not counting bytes refused by a failed fsync that the write cuts off first."""
        sizes = segments_on_disk(self.directory)
        keep = self.cut_due
        if keep is not None:
            # Refused bytes are no longer the WAL's: were they counted, the retry of the refused
            # batches could be dropped (drop_newest) or wait forever (block: no sink can pass
            # them, so nothing frees them) although they fit once the write has cut them off.
            sizes = {
                number: keep.offset if number == keep.segment else size
                for number, size in sizes.items()
                if number <= keep.segment
            }
        return sum(sizes.values()) >= self.settings.max_bytes

    def submit(self, appended: list[Appended], pipelined: bool) -> None:
        """Write a batch with ``write`` (pipelined) or ``append``; with drop_newest it is dropped
        exactly when the disk holds max_bytes. Records move to ``self.records`` once accepted."""
        wal = self.live
        full = self.full()
        keep, old = self.cut_due, max(segments_on_disk(self.directory), default=0)
        bytes_before = wal.counters["bytes"]
        entries = wal_entries(appended)
        if pipelined:
            seq = run(wal.write, entries)
            stored = seq is not None
        else:
            seq = None
            stored = run(wal.append, entries)
        self.check_full_policy(stored, full)
        if not stored:
            self.dropped += len(appended)
            assert wal.counters["dropped_full"] == self.dropped
            return
        if keep is not None:  # the write began by cutting back what a failed fsync refused
            self.check_cut_back(keep, old)
            self.cut_due = None
        added = wal.counters["bytes"] - bytes_before
        assert added > sum(map(len, entries))  # headers and separators come on top
        self.events += len(appended)
        self.bytes += added
        if seq is not None:
            # Accepted at once unless an fsync must cover it first.
            assert wal.accepted(seq) is not self.batch_fsync
            if self.batch_fsync:
                self.pending.append(Pending(seq, appended, added))
                return
            self.accepted_seqs.append(seq)
        else:
            # append() waited for an fsync, which covered every batch written before it too.
            for pending in self.pending:
                assert wal.accepted(pending.seq)
                self.records.extend(pending.records)
                self.accepted_seqs.append(pending.seq)
            self.pending.clear()
        self.records.extend(appended)

    def check_full_policy(self, taken: bool, full: bool) -> None:
        """With drop_newest, a write is dropped (not taken) exactly when the WAL is full."""
        assert taken is not full, (
            f"the write was {'taken' if taken else 'dropped'} but the WAL was "
            f"{'' if full else 'not '}full"
            + (" (not counting refused bytes a failed fsync left)" if self.cut_due else "")
        )

    def settle_all(self) -> None:
        """``wait_accepted`` of every pending batch in order: each is accepted, one fsync
        covering them all (group commit)."""
        wal = self.live
        fsyncs = wal.counters["fsyncs"]
        for pending in self.pending:
            run(wal.wait_accepted, pending.seq)
            assert wal.accepted(pending.seq)
            self.records.extend(pending.records)
            self.accepted_seqs.append(pending.seq)
        if self.pending:
            assert wal.counters["fsyncs"] == fsyncs + 1
        self.pending.clear()

    def refuse_pending(self) -> None:
        """Every pending batch is refused: ``accepted`` says so, ``wait_accepted`` raises, and the
        model keeps its records to write again; every batch accepted before stays accepted."""
        wal = self.live
        assert all(wal.accepted(seq) for seq in self.accepted_seqs)
        for pending in self.pending:
            assert not wal.accepted(pending.seq)
            with pytest.raises(WalWriteError):
                run(wal.wait_accepted, pending.seq)
            self.refused.append(pending.records)
            self.events -= len(pending.records)
            self.bytes -= pending.bytes
        self.pending.clear()

    def check_files_are_accounted_for(self) -> None:
        """Every segment file on disk is one the WAL counts, at its size: none is left over."""
        wal = self.live
        on_disk = segments_on_disk(self.directory)
        for number, size in on_disk.items():
            assert wal.segment_size(number) == size, f"segment {number}: {size} bytes on disk"
        assert wal.total_bytes == sum(on_disk.values())

    def check_cut_back(self, keep: Position, old: int | None) -> None:
        """After a rollback to ``keep``: of the segments numbered up to ``old`` (the highest
        before it; None: all), none beyond ``keep`` is left, and ``keep``'s own file ends exactly
        there."""
        for number, size in segments_on_disk(self.directory).items():
            if old is None or number <= old:
                assert number <= keep.segment, f"segment {number} outlived a rollback to {keep}"
                if number == keep.segment:
                    assert size == keep.offset, f"segment {number} was cut to {size}, not {keep}"
        self.check_files_are_accounted_for()

    # --- rules ---------------------------------------------------------------------------------

    @rule(batch=BATCHES)
    def append(self, batch: list[tuple[str, int]]) -> None:
        """Append a batch and wait (it and every pending batch are accepted), or see it dropped
        exactly when the disk holds max_bytes with drop_newest."""
        self.submit(self.new_records(batch), pipelined=False)

    @rule(batch=BATCHES)
    def write(self, batch: list[tuple[str, int]]) -> None:
        """Write a batch without waiting: accepted at once unless fsync = "batch", and until then
        no reader hands out its records (the invariants and ``check_batch`` check that)."""
        self.submit(self.new_records(batch), pipelined=True)

    @precondition(lambda self: self.pending)
    @rule()
    def settle(self) -> None:
        """Wait for every pending batch in order: they are accepted, in order, by one fsync."""
        self.settle_all()

    @rule(retry_now=st.booleans())
    def fail_next_fsync(self, retry_now: bool) -> None:
        """Make the next fsync fail (EIO): with fsync = "batch" every pending batch is refused
        and never handed out, and ``sync()`` reports the failure whatever the policy."""
        wal = self.live
        real = wal_module._sync_fds
        calls: list[int | None] = []

        def failing(fd: int | None, retired: list[int]) -> None:
            if calls:  # only the first fsync fails
                real(fd, retired)
                return
            calls.append(fd)
            for old in retired:  # as the real one: close them whatever happens
                with contextlib.suppress(OSError):
                    os.close(old)
            raise OSError(errno.EIO, "Input/output error")

        wal_module._sync_fds = failing
        try:
            if self.pending:
                assert self.batch_fsync
                first = self.pending[0].seq
                with pytest.raises(WalWriteError, match="fsync failed"):
                    run(wal.wait_accepted, first)
                assert len(calls) == 1
                self.refuse_pending()
            else:
                synced = run(wal.sync)
                assert synced is not bool(calls)  # False exactly when an fsync ran and failed
        finally:
            wal_module._sync_fds = real
        if calls and self.batch_fsync:
            self.cut_due = wal.committed  # the next write (or close) cuts back to here
        assert all(wal.accepted(seq) for seq in self.accepted_seqs)  # what was accepted stays
        self.check_files_are_accounted_for()
        if retry_now:
            self.retry(pipelined=True)

    @rule(batch=BATCHES, percent=st.integers(0, 99), retry_now=st.booleans())
    def fail_next_write(self, batch: list[tuple[str, int]], percent: int, retry_now: bool) -> None:
        """Make a write fail (ENOSPC) after ``percent`` of its bytes: it raises, nothing of it
        stays, and with fsync = "batch" every pending batch is refused too; earlier accepted
        batches stay accepted."""
        wal = self.live
        appended = self.new_records(batch)
        entries = wal_entries(appended)
        full = self.full()
        budget = sum(map(len, entries)) * percent // 100  # less than the framed batch
        real = wal_module.write_buffers  # type: ignore[attr-defined]  # imported there
        written = 0
        failed: list[int] = []

        def half_then_fail(fd: int, buffers: list[bytes]) -> None:
            nonlocal written
            data = b"".join(buffers)
            if failed or written + len(data) <= budget:
                written += len(data)
                real(fd, buffers)
                return
            write_all(fd, data[: budget - written])
            failed.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")

        wal_module.write_buffers = half_then_fail  # type: ignore[attr-defined]
        error: WalWriteError | None = None
        seq: int | None = None
        try:
            seq = run(wal.write, entries)
        except WalWriteError as exc:
            error = exc
        finally:
            wal_module.write_buffers = real  # type: ignore[attr-defined]
        self.check_full_policy(error is not None or seq is not None, full)
        if error is None:
            assert seq is None  # dropped: a write that got to the disk cannot succeed
            self.dropped += len(appended)
            assert wal.counters["dropped_full"] == self.dropped
            return
        assert "No space left" in str(error)
        assert failed
        self.refuse_pending()
        self.refused.append(appended)
        # The write cut back to the last accepted position (and so did any cut still due).
        self.check_cut_back(wal.committed, None)
        self.cut_due = None
        if retry_now:
            self.retry(pipelined=False)

    @precondition(lambda self: self.refused)
    @rule(pipelined=st.booleans())
    def retry(self, pipelined: bool) -> None:
        """Write the refused batches again, in order: each record then lands exactly once."""
        batches, self.refused = self.refused, []
        for records in batches:
            self.submit([Appended(r.n, r.source, r.pad) for r in records], pipelined)

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
        """Settle, close and reopen: what was handed out but not acknowledged comes again, nothing
        else (nothing refused either)."""
        wal = self.live
        # close() makes every written batch durable: settle first so the model knows them.
        self.settle_all()
        keep, old = self.cut_due, max(segments_on_disk(self.directory), default=0)
        run(wal.close)
        if keep is not None:  # close cut back what a failed fsync refused
            self.check_cut_back(keep, old)
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
            unaccepted = bool(self.pending) or self.cut_due is not None
            for number, size in segments_on_disk(self.directory).items():
                # Segments after the accepted position's may hold batches written and not accepted
                # (pending, or refused and not yet cut off): no sink could acknowledge them.
                later = number > active and unaccepted
                assert number == active or later or size == SEGMENT_HEADER_SIZE, (
                    f"segment {number} ({size} bytes) outlived the acknowledgement of its records"
                )

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def total_bytes_is_what_is_on_disk(self) -> None:
        """``total_bytes`` equals the sizes of the segment files on disk, each one counted at its
        size (also after rollbacks: a check that the cut-back is right)."""
        if self.wal is not None:
            self.check_files_are_accounted_for()

    @invariant()
    def counters_count_what_is_not_refused(self) -> None:
        """The "events" and "bytes" counters hold what was written less what was refused, and
        pending batches are not accepted."""
        if self.wal is not None:
            assert self.wal.counters["events"] == self.events
            assert self.wal.counters["bytes"] == self.bytes
            for pending in self.pending:
                assert not self.wal.accepted(pending.seq)

    @invariant()
    def only_wal_files(self) -> None:
        """The directory holds segments, the lock, the cursors, the epoch and what the writer
        publishes for readers, and nothing was quarantined."""
        if self.wal is not None:
            names = {path.name for path in self.directory.iterdir()}
            assert {n for n in names if segment_number(n) is None} <= {
                LOCK_FILE,
                CURSOR_DIR,
                EPOCH_FILE,
                HEAD_FILE,
                LAYOUT_FILE,
                WAKE_DIR,
            }
            # The accepted position's segment exists, unless every sink has passed it: it is no
            # longer the active one once a pending batch started a later one (or after a
            # rollback that deleted that later one), so it may be collected.
            committed = self.wal.committed
            assert (self.directory / segment_name(committed.segment)).exists() or all(
                model.acked_end is not None and model.acked_end >= committed
                for model in self.sinks.values()
            )

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
    """Under any sequence of appends, pipelined writes, failed writes and fsyncs (and retries),
    reads, acks and restarts, each sink gets its inputs' accepted records in order, exactly once
    per run but for redelivery of the unacknowledged, never a refused one, and segments go exactly
    when every sink has passed them."""
    run_state_machine_as_test(
        WalModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            # No "explain" phase: it reruns a failing case's variants under a line tracer, minutes
            # with real I/O in every step, and says little a failing sequence does not.
            phases=[phase for phase in Phase if phase is not Phase.explain],
        ),
    )


def replay(*steps: tuple[str, dict[str, Any]]) -> None:
    """Run the model through ``steps`` (a rule's name and arguments), checking every invariant
    after each, as hypothesis does: a sequence kept as a fast, deterministic test."""
    invariants = [
        name
        for name, member in inspect.getmembers(WalModel)
        if getattr(member, "hypothesis_stateful_invariant", None) is not None  # @invariant's mark
    ]
    # The mark found them all (hypothesis did not rename it).
    assert len(invariants) == 7, invariants
    state = WalModel()
    try:
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            for invariant_name in invariants:
                getattr(state, invariant_name)()
    finally:
        state.teardown()


def test_refused_batches_are_never_handed_out_and_their_retry_lands_once() -> None:
    """Pending batches refused by a failed write (one spans segments) and then by a failed fsync
    are cut off, never handed out, not even after restarts, and their retries land once (a
    sequence random runs, which try few rules in some, may miss)."""
    read_all = {"sink": "all", "max_bytes": READ_BYTES, "then_ack": False}
    replay(
        ("start", {"drop_limit": None, "fsync": "batch"}),
        ("append", {"batch": [("agents", 300)]}),
        ("write", {"batch": [("agents", 70_000), ("other", 10)]}),  # rotates into segment 2
        ("write", {"batch": [("other", 20)]}),
        ("read", read_all),  # only the accepted record
        ("read", read_all),  # nothing more: pending records are not handed out
        ("fail_next_write", {"batch": [("agents", 5000)] * 3, "percent": 60, "retry_now": False}),
        ("retry", {"pipelined": True}),  # the three refused batches, pending again
        ("write", {"batch": [("agents", 10)]}),
        ("fail_next_fsync", {"retry_now": False}),  # all four refused
        ("restart", {"drain": True}),  # close cuts them off
        ("retry", {"pipelined": False}),
        ("deliver_everything", {}),
        ("restart", {"drain": True}),
        ("deliver_everything", {}),
    )


def test_refused_bytes_do_not_make_the_wal_full_for_the_retry() -> None:
    """(Found by the model.) A batch refused by a failed fsync is cut off before the next write
    counts the bytes on disk: its retry fits, and is neither dropped nor kept waiting."""
    replay(
        ("start", {"drop_limit": 32768, "fsync": "batch"}),
        ("write", {"batch": [("agents", 20000), ("agents", 20000)]}),
        ("fail_next_fsync", {"retry_now": True}),
    )


def test_the_accepted_segment_may_go_while_a_pending_batch_fills_the_next() -> None:
    """When every sink passed the accepted position's segment while a pending batch is in the
    next one, the accepted segment is collected; a rollback then leaves no segment at all, and the
    retry, restart and redelivery stay exact (a sequence random runs seldom reach)."""
    read_and_ack = {"max_bytes": READ_BYTES, "then_ack": True}
    replay(
        ("start", {"drop_limit": None, "fsync": "batch"}),
        ("append", {"batch": [("agents", 70_000)]}),  # fills segment 1
        ("write", {"batch": [("other", 10)]}),  # pending, in segment 2
        ("read", {"sink": "all", **read_and_ack}),
        ("read", {"sink": "other_only", **read_and_ack}),  # segment 1 is collected
        ("fail_next_write", {"batch": [("agents", 5)], "percent": 50, "retry_now": False}),
        ("retry", {"pipelined": True}),
        ("settle", {}),
        ("deliver_everything", {}),
        ("restart", {"drain": True}),
        ("deliver_everything", {}),
    )


async def test_a_restart_deletes_segments_acknowledged_before_the_shutdown() -> None:
    """A segment whose records every sink acknowledged before a restart is gone after it."""
    with tempfile.TemporaryDirectory(prefix="wal-model-") as tmp:
        directory = Path(tmp)
        settings = BufferConfig(segment_bytes=SEGMENT_BYTES)
        wal = Wal(directory, settings, envelopes=envelopes)
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

        again = Wal(directory, settings, envelopes=envelopes)
        again.open({"all": None})
        try:
            assert not again.readers["all"].has_unread
            assert sorted(segments_on_disk(directory)) == [again.committed.segment]
            assert again.total_bytes == SEGMENT_HEADER_SIZE
        finally:
            await again.close()
            again.release()
