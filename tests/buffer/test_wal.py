"""The WAL: append, per-sink readers and cursors, deletion, restart, and the full-buffer policies."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer import record as records
from shipper.buffer import segment as segment_module
from shipper.buffer import wal as wal_module
from shipper.buffer.config import BufferConfig
from shipper.buffer.entries import take
from shipper.buffer.segment import (
    SEGMENT_HEADER_SIZE,
    Position,
    create,
    segment_name,
    write_all,
    write_buffers,
)
from shipper.buffer.wal import (
    ReadBatch,
    Wal,
    WalLocked,
    WalReader,
    WalWriteError,
    lock_directory,
)
from shipper.events import Event, alert_event, entry, envelopes, with_id
from tests.conftest import wait_until

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}
OTHER = {"id": "other", "kind": "json_tls", "peer": "127.0.0.1:2"}


def events(first: int, count: int, source: dict[str, str] = SOURCE) -> list[bytes]:
    """WAL entries of ``count`` events whose records carry n = first, first+1, ..."""
    return [
        entry(
            Event(
                "2026-11-23T00:00:00.000000Z", source, "a", orjson.dumps({"n": n, "pad": "x" * 200})
            )
        )
        for n in range(first, first + count)
    ]


def numbers(batch: ReadBatch) -> list[int]:
    """The record numbers in a read batch."""
    return [orjson.loads(envelope)["record"]["n"] for envelope in batch.envelopes]


def open_wal(
    path: Path, sinks: dict[str, frozenset[str] | None] | None = None, **settings: object
) -> Wal:
    """A WAL in ``path`` with the given sinks (default: one sink "a" taking everything)."""
    wal = Wal(path, BufferConfig(**settings), envelopes=envelopes)  # type: ignore[arg-type]
    wal.open(sinks if sinks is not None else {"a": None})
    return wal


def segment_files(directory: Path) -> list[Path]:
    """The segment files in a WAL directory, in order."""
    return sorted(directory.glob("*.seg"))


async def read_all(reader: WalReader) -> list[int]:
    """Read (without acknowledging) everything the reader can see right now."""
    seen: list[int] = []
    while reader.has_unread:
        batch = await reader.read()
        assert batch is not None
        seen.extend(numbers(batch))
    return seen


async def test_appended_events_are_read_in_order_with_their_positions_as_ids(
    tmp_path: Path,
) -> None:
    """A reader gets every appended event in order; each id is its entry's segment and offset."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 10))
    batch = await wal.readers["a"].read()
    assert batch is not None
    assert numbers(batch) == list(range(1, 11))
    ids = [orjson.loads(envelope)["id"] for envelope in batch.envelopes]
    assert ids[0] == f"1-{SEGMENT_HEADER_SIZE + records.HEADER_SIZE}"
    offsets = [int(i.split("-")[1]) for i in ids]
    assert offsets == sorted(set(offsets))
    assert batch.end == wal.committed
    await wal.close()
    assert ids_match_offsets(tmp_path) == list(range(1, 11))


async def test_restart_resumes_after_the_acknowledged_position(tmp_path: Path) -> None:
    """After a restart a sink gets again exactly what it had read but not acknowledged."""
    wal = open_wal(tmp_path)
    await wal.append(events(1, 5))
    first = await wal.readers["a"].read()
    assert first is not None
    await wal.readers["a"].ack(first.end)
    await wal.append(events(6, 5))
    unacked = await wal.readers["a"].read()
    assert unacked is not None
    assert numbers(unacked) == [6, 7, 8, 9, 10]
    await wal.close()  # no ack for 6..10: they must come again
    wal.release()

    again = open_wal(tmp_path)
    assert await read_all(again.readers["a"]) == [6, 7, 8, 9, 10]
    new_ids = {orjson.loads(e)["id"] for e in unacked.envelopes}
    await again.append(events(11, 1))
    batch = await again.readers["a"].read()
    assert batch is not None
    (envelope,) = batch.envelopes
    assert orjson.loads(envelope)["id"] not in new_ids  # ids never repeat across restarts
    await again.close()


async def test_segments_are_deleted_only_when_every_sink_has_passed_them(tmp_path: Path) -> None:
    """A segment stays until both sinks acknowledged all of it; the active one always stays."""
    wal = open_wal(tmp_path, {"fast": None, "slow": None}, segment_bytes=4096, max_bytes=2**30)
    for n in range(0, 60, 10):
        await wal.append(events(n, 10))
    segments = segment_files(tmp_path)
    assert len(segments) > 2
    fast = wal.readers["fast"]
    while fast.has_unread:
        batch = await fast.read()
        assert batch is not None
        await fast.ack(batch.end)
    assert segment_files(tmp_path) == segments  # the slow sink still needs them
    slow = wal.readers["slow"]
    while slow.has_unread:
        batch = await slow.read()
        assert batch is not None
        await slow.ack(batch.end)
    assert segment_files(tmp_path) == [tmp_path / segment_name(wal.committed.segment)]
    await wal.close()


async def test_a_dead_sink_does_not_hold_back_a_healthy_one_until_full(tmp_path: Path) -> None:
    """With one sink never reading, the other keeps receiving until max_bytes blocks the writer."""
    wal = open_wal(
        tmp_path, {"dead": None, "healthy": None}, segment_bytes=64 * 1024, max_bytes=256 * 1024
    )
    healthy = wal.readers["healthy"]
    delivered: list[int] = []
    appended = 0
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            nonlocal appended
            for n in range(0, 10_000, 100):
                await wal.append(events(n, 100))
                appended = n + 100

        async def deliver() -> None:
            while True:
                batch = await healthy.read()
                if batch is None:
                    return
                delivered.extend(numbers(batch))
                await healthy.ack(batch.end)

        nursery.start_soon(writer)
        nursery.start_soon(deliver)
        await wait_until(lambda: wal.counters["blocked"] == 1)
        await wait_until(lambda: len(delivered) == appended)
        assert wal.total_bytes >= 256 * 1024
        assert delivered == list(range(appended))
        blocked_at = appended
        # The dead sink comes back: its acknowledgements free space, and the writer goes on.
        dead = wal.readers["dead"]
        while appended < 10_000:
            batch = await dead.read()
            assert batch is not None
            await dead.ack(batch.end)
        assert appended > blocked_at
        await wait_until(lambda: len(delivered) == 10_000)
        await wal.close()
    assert delivered == list(range(10_000))


async def test_drop_newest_drops_and_counts_when_full(tmp_path: Path) -> None:
    """With when_full = "drop_newest", an append to a full WAL is refused and counted."""
    wal = open_wal(tmp_path, segment_bytes=64 * 1024, max_bytes=128 * 1024, when_full="drop_newest")
    accepted = 0
    for n in range(0, 2000, 100):
        if await wal.append(events(n, 100)):
            accepted += 100
    assert 0 < accepted < 2000
    assert wal.counters["dropped_full"] == 2000 - accepted
    assert await read_all(wal.readers["a"]) == list(range(accepted))
    await wal.close()


async def test_inputs_limit_a_reader_to_its_sources(tmp_path: Path) -> None:
    """A reader with inputs sees only its sources' events but still advances past the others."""
    wal = open_wal(tmp_path, {"all": None, "only_other": frozenset({"other"})})
    await wal.append([*events(1, 2), *events(3, 1, OTHER), *events(4, 2)])
    batch = await wal.readers["only_other"].read()
    assert batch is not None
    assert numbers(batch) == [3]
    assert batch.records == 1  # the five events of one small append share one record
    assert batch.end == wal.committed
    assert await read_all(wal.readers["all"]) == [1, 2, 3, 4, 5]
    await wal.close()


async def test_alerts_reach_every_reader_whatever_its_inputs(tmp_path: Path) -> None:
    """An alert event is routed to every sink, including one whose inputs exclude all sources."""
    wal = open_wal(tmp_path, {"all": None, "only_other": frozenset({"other"})})
    alert = alert_event("shipper.chain_alert", "a", {"n": 9, "status": "gap"})
    await wal.append([*events(1, 1), entry(alert)])
    batch = await wal.readers["only_other"].read()
    assert batch is not None
    assert numbers(batch) == [9]
    assert orjson.loads(batch.envelopes[0])["source"] == {"id": "shipper", "kind": "alert"}
    assert await read_all(wal.readers["all"]) == [1, 9]
    await wal.close()


async def test_reader_waits_for_appends_and_ends_when_closed(tmp_path: Path) -> None:
    """A reader at the end waits for the next append, and returns None once the WAL is closed."""
    wal = open_wal(tmp_path)
    got: list[ReadBatch | None] = []

    async def read_twice() -> None:
        got.append(await wal.readers["a"].read())
        got.append(await wal.readers["a"].read())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_twice)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await wal.append(events(1, 1))
        await wait_until(lambda: len(got) == 1)
        await wal.close()
    assert got[1] is None
    assert got[0] is not None
    assert numbers(got[0]) == [1]


async def test_interval_fsync_policy_accepts_and_syncs_in_the_background(tmp_path: Path) -> None:
    """With fsync = "interval", appends are readable at once and fsynced by the background task."""
    wal = open_wal(tmp_path, fsync="interval", fsync_interval=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.run)
        await wal.append(events(1, 3))
        assert await read_all(wal.readers["a"]) == [1, 2, 3]
        await wait_until(lambda: wal.counters["fsyncs"] >= 1)
        await wal.close()


async def test_position_ordering_follows_segments_then_offsets() -> None:
    """Positions compare by segment first, so a later segment is always further on."""
    assert Position(1, 10_000) < Position(2, SEGMENT_HEADER_SIZE)
    assert str(Position(3, 16)) == "3-16"


def ids_match_offsets(directory: Path) -> list[int]:
    """Check every event's id names the true position of its entry in the segment file; the
    record numbers in file order."""
    found: list[int] = []
    for path in segment_files(directory):
        number = int(path.name.removesuffix(".seg"))
        data = path.read_bytes()
        for item in records.scan(data, SEGMENT_HEADER_SIZE):
            assert isinstance(item, records.Record), item
            offsets: list[int] = []
            payloads: list[bytes] = []
            take(item.offset, item.payload, None, offsets, payloads)
            for envelope in envelopes(number, offsets, payloads):
                event_id = orjson.loads(envelope)["id"]
                segment, offset = map(int, event_id.split("-"))
                assert segment == number
                assert item.offset < offset < item.end
                # An entry starts right after its record's header or after the LF before it.
                assert offset == item.offset + records.HEADER_SIZE or data[offset - 1] == 0x0A
                stored = data[offset : item.end].split(b"\n", 1)[0]
                assert with_id(stored.partition(b"\0")[2], event_id) == envelope
                found.append(orjson.loads(envelope)["record"]["n"])
    return found


async def read_close_and_check(wal: Wal, directory: Path, expected: list[int]) -> None:
    """Sink "a" can read exactly ``expected`` now, in order; closed, the files hold exactly
    those, each id its entry's true offset; then release the WAL."""
    assert await read_all(wal.readers["a"]) == expected
    await wal.close()
    assert ids_match_offsets(directory) == expected
    wal.release()


async def test_a_failed_write_is_all_or_nothing_and_the_retry_is_not_duplicated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails halfway leaves nothing of the batch; the retry lands once, ids true."""
    wal = open_wal(tmp_path, segment_bytes=8192)
    await wal.append(events(1, 5))

    def half_then_fail(fd: int, buffers: list[bytes]) -> None:
        data = b"".join(buffers)
        write_all(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module, "write_buffers", half_then_fail)
    with pytest.raises(WalWriteError, match="No space left"):
        await wal.append(events(6, 40))  # spans segments: a rotation happens inside the batch
    monkeypatch.setattr(wal_module, "write_buffers", write_buffers)
    await wal.append(events(6, 40))
    assert await read_all(wal.readers["a"]) == list(range(1, 46))
    await wal.close()
    assert ids_match_offsets(tmp_path) == list(range(1, 46))
    wal.release()


async def test_groups_stay_within_their_bound_whatever_the_entry_sizes(tmp_path: Path) -> None:
    """Records hold at most 1.5 x GROUP_BYTES of entries (or one larger entry) even when the
    sizes change abruptly, and every event comes back once, in order, with its true id."""
    wal = open_wal(tmp_path, segment_bytes=1024**3)
    sizes = [10] * 3000 + [3000] * 200 + [200_000] + [10] * 500 + [40_000] * 5 + [10] * 100
    batch = [
        entry(Event("t", SOURCE, "a", orjson.dumps({"n": n, "pad": "x" * size})))
        for n, size in enumerate(sizes)
    ]
    for index in range(0, len(batch), 1500):
        assert await wal.append(batch[index : index + 1500])
    await wal.close()
    (path,) = segment_files(tmp_path)
    for item in records.scan(path.read_bytes(), SEGMENT_HEADER_SIZE):
        assert isinstance(item, records.Record)
        entries_in = item.payload.count(b"\n") + 1
        assert len(item.payload) <= wal_module.GROUP_BYTES * 3 // 2 or entries_in == 1
    assert ids_match_offsets(tmp_path) == list(range(len(sizes)))
    wal.release()


def test_write_buffers_writes_every_byte_in_order_through_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_buffers`` writes all buffers in order, however short each ``writev`` is, and in
    slices of at most IOV_MAX buffers."""
    writev = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        return writev(fd, [b"".join(buffers)[: 5 + len(calls) % 9]])  # a short prefix

    monkeypatch.setattr(segment_module, "IOV_MAX", 4)
    monkeypatch.setattr(os, "writev", short_writev)
    buffers = [bytes([65 + n % 26]) * (n * 3 % 20) for n in range(50)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_buffers(fd, buffers)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(buffers)
    assert max(calls) <= 4


async def test_a_failed_segment_creation_leaves_the_writer_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a new segment cannot be created, the batch fails whole and a retry succeeds."""
    wal = open_wal(tmp_path, segment_bytes=4096)
    await wal.append(events(1, 3))

    def refuse(directory: Path, number: int) -> int:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(wal_module, "create", refuse)
    with pytest.raises(WalWriteError, match="quota"):
        await wal.append(events(4, 30))
    monkeypatch.setattr(wal_module, "create", create)
    await wal.append(events(4, 30))
    assert await read_all(wal.readers["a"]) == list(range(1, 34))
    await wal.close()
    assert ids_match_offsets(tmp_path) == list(range(1, 34))
    wal.release()


async def test_one_record_larger_than_the_free_space_does_not_deadlock(tmp_path: Path) -> None:
    """A record that fills the WAL past max_bytes is delivered, and the writer goes on after it."""
    wal = open_wal(tmp_path, segment_bytes=64 * 1024, max_bytes=1024 * 1024)
    source = {"id": "agents", "kind": "json_tls", "peer": "p"}
    big = Event("t", source, "a", orjson.dumps({"n": 1, "pad": "x" * 1_100_000}))
    done = trio.Event()
    delivered: list[int] = []

    async def writer() -> None:
        await wal.append([entry(big)])
        await wal.append(events(2, 3))
        done.set()

    async def sink() -> None:
        while len(delivered) < 4:
            batch = await wal.readers["a"].read()
            assert batch is not None
            delivered.extend(numbers(batch))
            await wal.readers["a"].ack(batch.end)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(sink)
            await done.wait()
    assert delivered == [1, 2, 3, 4]
    assert wal.total_bytes < 1024 * 1024
    await wal.close()
    wal.release()


async def test_interval_fsync_task_ends_as_soon_as_the_wal_closes(tmp_path: Path) -> None:
    """The interval fsync task does not hold shutdown for the rest of its interval."""
    wal = open_wal(tmp_path, fsync="interval", fsync_interval=3600)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wal.run)
            await wal.append(events(1, 1))
            await trio.testing.wait_all_tasks_blocked()
            await wal.close()
    wal.release()


async def test_the_directory_stays_locked_until_released(tmp_path: Path) -> None:
    """close() ends appends but keeps the lock; only release() lets another process in."""
    wal = open_wal(tmp_path)
    await wal.close()
    with pytest.raises(WalLocked):
        lock_directory(tmp_path)
    wal.release()
    os.close(lock_directory(tmp_path))


# --- group commit: writes go on while an fsync runs; a failure refuses every batch after it ----


class Gate:
    """A stand-in for one of the WAL's blocking calls (run in a worker thread) that waits until
    the test opens the gate, then fails if told to, else calls the real one."""

    def __init__(self, real: Callable[..., None], fail: OSError | None = None) -> None:
        self.real = real
        self.fail = fail
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, *args: Any) -> None:
        self.calls += 1
        self.entered.set()
        self.open.wait(30)
        if self.fail is not None:
            raise self.fail
        self.real(*args)


def failing_fsyncs(monkeypatch: pytest.MonkeyPatch, message: str, *, opened: bool = True) -> Gate:
    """Make the WAL's fsyncs fail with EIO (``message``), each once the gate is open (at once by
    default)."""
    gate = Gate(wal_module._sync_fds, OSError(errno.EIO, message))
    if opened:
        gate.open.set()
    monkeypatch.setattr(wal_module, "_sync_fds", gate)
    return gate


async def entered(gate: Gate) -> None:
    """Wait (without blocking trio) until a worker thread is inside the gate."""
    await wait_until(gate.entered.is_set)


async def test_batches_written_during_an_fsync_are_accepted_together_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one fsync runs, later batches are written but neither accepted nor visible to
    readers; the next fsync accepts all of them at once (group commit), in order."""
    wal = open_wal(tmp_path)
    reader = wal.readers["a"]
    gate = Gate(wal_module._sync_fds)
    monkeypatch.setattr(wal_module, "_sync_fds", gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.run)
        first = await wal.write(events(1, 3))
        assert first is not None
        await entered(gate)  # the sync lane's fsync of the first batch is under way
        later = [await wal.write(events(n, 3)) for n in (4, 7, 10)]
        assert all(seq is not None and not wal.accepted(seq) for seq in [first, *later])
        assert not reader.has_unread
        gate.open.set()
        for seq in later:
            assert seq is not None
            await wal.wait_accepted(seq)
        assert gate.calls == 2  # one for the first batch, one for the three written meanwhile
        assert wal.counters["fsyncs"] == 2
        assert await read_all(reader) == list(range(1, 13))
        await wal.close()
    assert ids_match_offsets(tmp_path) == list(range(1, 13))
    wal.release()


async def test_a_failed_fsync_refuses_every_unaccepted_batch_and_cuts_them_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When an fsync fails, every batch written and not yet accepted is refused and cut off
    the files (readers never see it, not even after a restart); written again, in order, each
    lands once."""
    wal = open_wal(tmp_path, segment_bytes=8192)
    reader = wal.readers["a"]
    assert await wal.append(events(1, 5))
    accepted_end = wal.committed
    pending = [await wal.write(events(n, 10)) for n in (6, 16)]  # spans segments
    failing = failing_fsyncs(monkeypatch, "Input/output error")
    for seq in pending:
        assert seq is not None
        with pytest.raises(WalWriteError, match="Input/output error"):
            await wal.wait_accepted(seq)
        assert not wal.accepted(seq)
    assert failing.calls == 1
    monkeypatch.undo()
    assert await read_all(reader) == [1, 2, 3, 4, 5]
    assert wal.counters["events"] == 5
    assert await wal.append(events(6, 10))  # cut back before this write: nothing doubles
    assert (tmp_path / segment_name(accepted_end.segment)).stat().st_size == accepted_end.offset
    assert await wal.append(events(16, 10))
    assert wal.total_bytes == sum(path.stat().st_size for path in segment_files(tmp_path))
    assert await read_all(reader) == list(range(6, 26))
    await wal.close()
    wal.release()
    assert ids_match_offsets(tmp_path) == list(range(1, 26))
    again = open_wal(tmp_path)
    assert await read_all(again.readers["a"]) == list(range(1, 26))
    await again.close()
    again.release()


async def test_a_write_in_flight_when_an_fsync_fails_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose write was under way when an earlier batch's fsync failed lies after the
    refused bytes: it is refused as well, and the files are cut back to the last accepted one."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 2))
    accepted_end = wal.committed
    pending = await wal.write(events(3, 2))
    assert pending is not None
    writing = Gate(write_buffers)
    monkeypatch.setattr(wal_module, "write_buffers", writing)
    failing_fsyncs(monkeypatch, "I/O error")
    refused: list[str] = []

    async def write_later() -> None:
        with pytest.raises(WalWriteError, match="fsync failed"):
            await wal.write(events(5, 2))
        refused.append("write")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_later)
        await entered(writing)
        with pytest.raises(WalWriteError, match="I/O error"):
            await wal.wait_accepted(pending)
        writing.open.set()
    assert refused == ["write"]
    monkeypatch.undo()
    (path,) = segment_files(tmp_path)
    assert path.stat().st_size == accepted_end.offset
    assert wal.total_bytes == accepted_end.offset
    assert await wal.append(events(3, 4))
    await read_close_and_check(wal, tmp_path, [1, 2, 3, 4, 5, 6])


async def test_a_failed_write_refuses_the_batches_still_waiting_for_their_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync="batch", a write that fails also refuses the earlier batches not yet
    accepted (they precede it in the file, and the WAL goes back to its last accepted
    position); with fsync="never" those were accepted when written and stay."""
    for policy, kept in (("batch", [1, 2]), ("never", [1, 2, 3, 4])):
        directory = tmp_path / policy
        wal = open_wal(directory, fsync=policy)
        assert await wal.append(events(1, 2))
        pending = await wal.write(events(3, 2))
        assert pending is not None

        def fail(fd: int, buffers: list[bytes]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(wal_module, "write_buffers", fail)
        with pytest.raises(WalWriteError, match="No space left"):
            await wal.write(events(5, 2))
        monkeypatch.undo()
        assert wal.accepted(pending) == (policy == "never")
        assert await read_all(wal.readers["a"]) == kept
        assert wal.counters["events"] == len(kept)
        await wal.close()
        wal.release()
        assert ids_match_offsets(directory) == kept


@pytest.mark.parametrize("policy", ["batch", "never"])
async def test_segment_files_left_by_rotations_are_closed(tmp_path: Path, policy: str) -> None:
    """The fds of segments a rotation left are closed at once, or by the next fsync when one
    runs, not kept open until the WAL closes (a daemon rotates thousands of times; with
    "never" no fsync may come)."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    wal = open_wal(tmp_path, segment_bytes=4096, fsync=policy)
    baseline = open_fds()
    for first in range(1, 400, 20):
        assert await wal.append(events(first, 20))  # several rotations per append
    assert len(segment_files(tmp_path)) > 30
    assert open_fds() <= baseline + 1  # the active segment, perhaps another one than at first
    await wal.close()
    wal.release()


async def test_a_write_after_an_unreported_refusal_fails_so_that_order_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches refused by a failed fsync that no exception has reported yet make the next write
    fail (it must not land before them); after that the writer writes them again, in order."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 2))
    pending = await wal.write(events(3, 2))
    assert pending is not None
    failing_fsyncs(monkeypatch, "Input/output error")
    assert not await wal.sync()  # the sync lane's failure: nobody is told by an exception
    monkeypatch.undo()
    with pytest.raises(WalWriteError, match="before this one were refused"):
        await wal.write(events(5, 2))
    assert not wal.accepted(pending)
    assert await wal.append(events(3, 2))
    assert await wal.append(events(5, 2))
    await read_close_and_check(wal, tmp_path, [1, 2, 3, 4, 5, 6])


async def test_a_writer_blocked_on_a_full_wal_wakes_when_an_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write waiting for space behind batches that an fsync then refuses stops waiting: it
    fails, and the refused bytes, cut off the files, no longer count toward max_bytes."""
    wal = open_wal(tmp_path, max_bytes=32 * 1024)
    assert await wal.append(events(1, 2))
    accepted_bytes = wal.total_bytes
    pending = await wal.write(events(3, 150))  # ~40 KB: the WAL is full now
    assert pending is not None
    assert wal.full
    failing = failing_fsyncs(monkeypatch, "Input/output error", opened=False)
    outcome: list[str] = []

    async def blocked_write() -> None:
        with pytest.raises(WalWriteError, match="refused"):
            await wal.write(events(200, 2))
        outcome.append("refused")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_write)
            await trio.testing.wait_all_tasks_blocked()
            assert wal.counters["blocked"] == 1
            nursery.start_soon(wal.sync)
            await entered(failing)
            failing.open.set()
    assert outcome == ["refused"]
    assert not wal.accepted(pending)
    monkeypatch.undo()
    assert wal.total_bytes == accepted_bytes
    assert await wal.append(events(3, 2))
    assert await read_all(wal.readers["a"]) == [1, 2, 3, 4]
    await wal.close()
    wal.release()


async def test_starting_a_segment_after_a_failed_fsync_does_not_expose_refused_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_next_segment`` after a failed fsync first cuts the refused bytes off: readers never
    get the refused batch."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 2))
    pending = await wal.write(events(3, 2))
    assert pending is not None
    failing_fsyncs(monkeypatch, "I/O error")
    assert not await wal.sync()
    monkeypatch.undo()
    assert await wal.open_next_segment()
    assert await read_all(wal.readers["a"]) == [1, 2]
    await wal.close()
    wal.release()


async def test_a_blocked_writer_retries_a_failing_rotation_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full, every sink past the active segment, and the new segment that would free it cannot
    be created: the blocked writer tries again with growing delays (no busy loop, no fd
    leaked), and goes on once the disk takes it."""
    source = {"id": "agents", "kind": "json_tls", "peer": "p"}
    huge = Event("t", source, "a", orjson.dumps({"n": 1, "pad": "x" * 1_100_000}))
    wal = open_wal(tmp_path, max_bytes=1024 * 1024, segment_bytes=64 * 1024)
    reader = wal.readers["a"]
    assert await wal.append([entry(huge)])  # one record larger than max_bytes
    while reader.has_unread:
        batch = await reader.read(10**9)
        assert batch is not None
        await reader.ack(batch.end)
    assert wal.full
    attempts = 0

    def refuse(directory: Path, number: int) -> int:
        nonlocal attempts
        attempts += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module, "create", refuse)
    fds = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.append, events(2, 2))
        await trio.sleep(1)
        assert 2 <= attempts < 10  # 0.05-0.1 s, then doubling
        assert len(os.listdir("/proc/self/fd")) <= fds
        monkeypatch.undo()
    assert await read_all(reader) == [2, 3]
    await wal.close()
    wal.release()


async def test_a_write_cancelled_while_it_fails_still_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forced shutdown (a cancellation) while a failed write waits to roll back does not
    leave the failed batch's records on disk for the next start to deliver."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 2))
    pending = await wal.write(events(3, 2))
    assert pending is not None
    gate = Gate(wal_module._sync_fds)
    monkeypatch.setattr(wal_module, "_sync_fds", gate)

    def half_then_fail(fd: int, buffers: list[bytes]) -> None:
        write_buffers(fd, buffers[:2])  # the first record of the batch lands
        raise OSError(errno.ENOSPC, "No space left on device")

    async def open_later() -> None:
        await trio.sleep(0.3)
        gate.open.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.sync)  # the sync lane's fsync of the pending batch is under way
        await entered(gate)
        monkeypatch.setattr(wal_module, "write_buffers", half_then_fail)
        nursery.start_soon(open_later)
        with trio.move_on_after(0.1), pytest.raises(WalWriteError, match="No space"):
            await wal.write(events(100, 400))  # several records; cancelled inside _fail
    monkeypatch.undo()
    await wal.close()
    wal.release()
    again = open_wal(tmp_path)
    assert await read_all(again.readers["a"]) == [1, 2, 3, 4]
    await again.close()
    again.release()
