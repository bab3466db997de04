"""The WAL: append, per-sink readers and cursors, deletion, restart, and the full-buffer policies."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest
import trio

from shipper.buffer import record as records
from shipper.buffer import segment as segment_module
from shipper.buffer import wal as wal_module
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
    WalSettings,
    WalWriteError,
    entry,
    envelopes,
    lock_directory,
)
from shipper.events import Event, alert_event, with_id
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
    wal = Wal(path, WalSettings(**settings))  # type: ignore[arg-type]
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
        nursery.start_soon(wal.run_interval_fsync)
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
            for envelope in envelopes(number, item.offset, item.payload):
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
            nursery.start_soon(wal.run_interval_fsync)
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
