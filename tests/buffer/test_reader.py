"""WAL readers that need only the files: in another process, after the writer closed, and what
the writer publishes for them (torn reads, layouts, refused bytes)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
import trio

from shipper.buffer import published, wake
from shipper.buffer.published import (
    HEAD_FILE,
    Head,
    Layout,
    Publisher,
    decode_head,
    read_head,
    read_state,
)
from shipper.buffer.reader import SplitShape, WalReader
from shipper.buffer.segment import SEGMENT_HEADER_SIZE, Position, segment_name
from shipper.buffer.wake import ACKED, HELLO, WAKE_DIR, ReaderWake, WriterWake
from shipper.buffer.wal import WalWriteError
from shipper.events import alert_event, entry, envelopes
from tests.buffer.test_wal import (
    OTHER,
    events,
    failing_fsyncs,
    numbers,
    open_wal,
    read_all,
    segment_files,
)
from tests.conftest import wait_until

EPOCH = "0123456789abcdef"

#: A sink in another process: follows the WAL given as argv[1] as reader "remote", acknowledging
#: each batch, until the WAL is closed and read; writes what it got to argv[2] as JSON. It gives
#: up (exit 3) after 200 polls, so that a reader that never learns of the close fails the test.
FOLLOWER = """
import sys
from pathlib import Path

import orjson
import trio

from shipper.buffer.reader import WalReader
from shipper.events import envelopes


async def main() -> None:
    reader = WalReader(Path(sys.argv[1]), "remote", None, envelopes=envelopes, poll_seconds=0.1)
    got: list[tuple[int, str]] = []
    try:
        while (batch := await reader.read()) is not None:
            for line in batch.envelopes:
                envelope = orjson.loads(line)
                got.append((envelope["record"]["n"], envelope["id"]))
            await reader.ack(batch.end)
            if reader.counters["polls"] > 200:
                sys.exit(3)
    finally:
        reader.close()
    result = {"got": got, "counters": dict(reader.counters), "epoch": reader.epoch}
    Path(sys.argv[2]).write_bytes(orjson.dumps(result))


trio.run(main)
"""


async def test_a_reader_in_another_process_follows_a_live_writer(tmp_path: Path) -> None:
    """A sink reading in another process, with nothing but the WAL's files, gets every event
    once and in order while the writer appends over time, is woken by the writer at each
    commit (not only by its polls), and its acknowledgements, stored in its cursor, make the
    writer delete the segments it passed."""
    directory = tmp_path / "wal"
    wal = open_wal(directory, {"remote": None}, segment_bytes=4096)
    out = tmp_path / "got.json"
    batches = 25
    finished: list[tuple[int, bytes]] = []

    async def follower() -> None:
        process = await trio.run_process(
            [sys.executable, "-c", FOLLOWER, str(directory), str(out)],
            check=False,
            capture_stderr=True,
        )
        finished.append((process.returncode, process.stderr))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal.run)
        nursery.start_soon(follower)
        # A first batch, acknowledged from the other process: it runs, and the writer knows it.
        assert await wal.append(events(0, 10))
        await wait_until(lambda: wal.lag_bytes("remote") == 0)
        for first in range(10, 10 * (batches + 1), 10):
            assert await wal.append(events(first, 10))
            await wait_until(lambda: wal.lag_bytes("remote") == 0)
        # Every segment the reader passed is gone, but for the one being written.
        await wait_until(lambda: len(segment_files(directory)) == 1)
        await wal.close()
    wal.release()
    [(returncode, stderr)] = finished
    assert returncode == 0, stderr.decode()
    result = orjson.loads(out.read_bytes())
    got = [n for n, _id in result["got"]]
    assert got == list(range(10 * (batches + 1)))
    ids = [Position(*map(int, event_id.split("-"))) for _n, event_id in result["got"]]
    assert ids == sorted(set(ids))
    assert result["counters"]["wakeups"] >= batches, result["counters"]  # one per commit
    assert result["counters"]["acks"] >= batches
    assert result["epoch"] == wal.epoch
    assert wal.counters["segments_deleted"] > 5
    assert not list((directory / "wake").iterdir())  # the reader took its socket away


async def test_a_reader_started_after_the_writer_closed_reads_to_the_end_and_stops(
    tmp_path: Path,
) -> None:
    """A reader that starts after its writer closed and released the WAL reads everything the
    WAL holds, from its cursor on, and then ends (``read`` returns None) without waiting."""
    wal = open_wal(tmp_path, {"late": None}, segment_bytes=4096)
    for first in range(1, 50, 10):
        assert await wal.append(events(first, 10))
    await wal.close()
    wal.release()
    reader = WalReader(tmp_path, "late", None, envelopes=envelopes, poll_seconds=0.01)
    seen: list[int] = []
    ended: list[bool] = []

    async def read_to_end() -> None:
        while (batch := await reader.read()) is not None:
            seen.extend(numbers(batch))
            await reader.ack(batch.end)
        ended.append(True)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_to_end)
            await wait_until(lambda: bool(ended) or reader.counters["polls"] > 0)
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
    assert ended == [True]
    assert reader.counters["polls"] == 0
    assert seen == list(range(1, 51))
    assert reader.epoch == wal.epoch


def test_a_torn_or_partial_head_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head read that overlaps its rewrite (old and new bytes mixed), or that finds it cut
    short, fails its check and is read again: the reader acts only on a whole head."""
    publisher = Publisher(tmp_path)
    generation = publisher.layout(EPOCH, {3: 9000, 4: None}, {})
    publisher.head(Position(3, 9000), generation, closed=False)
    old = (tmp_path / HEAD_FILE).read_bytes()
    publisher.head(Position(4, SEGMENT_HEADER_SIZE), generation, closed=False)
    new = (tmp_path / HEAD_FILE).read_bytes()
    publisher.close()
    torn = new[:16] + old[16:]  # the new segment with the old offset: past the accepted end
    assert decode_head(torn) is None
    reads = iter([torn, new[:10], new])
    real = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == HEAD_FILE:
            return next(reads)
        return real(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    reader = WalReader(tmp_path, None, position=Position(4, SEGMENT_HEADER_SIZE))
    assert not reader.has_unread  # it saw (4, 16), not the torn (4, 9000)
    assert reader.counters["head_rereads"] == 2
    monkeypatch.undo()
    counters: Counter[str] = Counter()
    assert read_head(tmp_path, counters) == Head(
        Position(4, SEGMENT_HEADER_SIZE), generation, False
    )
    assert counters["head_rereads"] == 0


def test_a_layout_older_than_its_head_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layout older than the head that names it (read while a writer was replacing it) is
    read again: a reader never takes where segments end from a layout its head does not go
    with."""
    publisher = Publisher(tmp_path)
    generation = publisher.layout(EPOCH, {3: None}, {})
    publisher.head(Position(4, 100), generation + 1, closed=False)
    publisher.close()
    stale = Layout(generation, EPOCH, {3: None})
    fresh = Layout(generation + 1, EPOCH, {3: 9000, 4: None})
    layouts = iter([stale, fresh])
    monkeypatch.setattr(published, "read_layout", lambda directory: next(layouts))
    counters: Counter[str] = Counter()
    state = read_state(tmp_path, None, counters)
    assert state.layout == fresh
    assert state.limit(3) == 9000
    assert counters["layout_rereads"] == 1


async def test_refused_bytes_stay_unread_when_cutting_them_off_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches refused by a failed fsync whose bytes could not be cut off the segment stay on
    disk, yet no reader ever reads them, not even one that starts afterwards: readers go by
    where the writer says each segment ends, not by the files' sizes."""
    wal = open_wal(tmp_path)
    assert await wal.append(events(1, 2))
    accepted = wal.committed
    pending = await wal.write(events(3, 2))
    assert pending is not None
    failing_fsyncs(monkeypatch, "I/O error")
    with pytest.raises(WalWriteError, match="I/O error"):
        await wal.wait_accepted(pending)
    monkeypatch.undo()

    def cannot_cut(path: object, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "truncate", cannot_cut)
    await wal.cut_refused()
    monkeypatch.undo()
    path = tmp_path / segment_name(accepted.segment)
    assert path.stat().st_size > accepted.offset  # the refused bytes are still there
    assert await wal.append(events(3, 2))  # written again, into a new segment
    assert accepted.segment < wal.committed.segment
    assert await read_all(wal.readers["a"]) == [1, 2, 3, 4]
    late = WalReader(tmp_path, None, envelopes=envelopes)
    assert await read_all(late) == [1, 2, 3, 4]
    await wal.close()
    wal.release()


@pytest.mark.parametrize("through_proc", [False, True], ids=["path", "proc-fd"])
def test_wake_ups_go_both_ways_and_a_dead_readers_socket_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through_proc: bool
) -> None:
    """A reader's socket says hello and acknowledgements to the writer's, the writer wakes
    every reader it found, and forgets and removes the socket of a reader whose process is gone;
    also when the sockets are reached through ``/proc/self/fd`` (paths too long to bind)."""
    if through_proc:
        monkeypatch.setattr(wake, "MAX_ADDRESS", 0)
    writer = WriterWake(tmp_path)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(tmp_path / WAKE_DIR / "reader-1-1"))
    dead.close()  # its file stays, as when a process dies
    reader = ReaderWake(tmp_path)
    try:
        assert writer.received() == {HELLO}
        writer.scan()
        assert len(writer.readers) == 2
        writer.wake_readers()
        writer.wake_readers()
        assert reader.drain() == 2
        sockets = sorted(p.name for p in (tmp_path / WAKE_DIR).iterdir() if p.name != "writer")
        assert sockets == writer.readers  # the dead one was forgotten and removed
        assert not (tmp_path / WAKE_DIR / "reader-1-1").exists()
        reader.tell_writer(ACKED)
        assert writer.received() == {ACKED}
    finally:
        reader.close()
        writer.close()
    assert not list((tmp_path / WAKE_DIR).iterdir())


async def test_records_read_whole_give_what_reading_entry_by_entry_gives(tmp_path: Path) -> None:
    """Records of one source's events (read whole, ``entries.uniform``) and records that mix
    sources, alerts and a payload that is no envelope (read entry by entry, that record stepped
    over as corrupt) give the same envelopes, entry counts and corrupt bytes as the plain
    shape reads them, for a reader of every source and one of a single source."""
    wal = open_wal(tmp_path, {}, segment_bytes=64 * 1024)
    assert await wal.append(events(1, 40))
    assert await wal.append(events(41, 5, OTHER) + events(46, 5))
    assert await wal.append([entry(alert_event("x", None, {})), *events(51, 3)])
    assert await wal.append([b"agents\0" + b'{"v":2}', *events(54, 3)])
    assert await wal.append(events(57, 30, OTHER) + events(87, 300))
    assert await wal.append(events(387, 20, OTHER))
    await wal.close()
    wal.release()

    def plain(segment: int, offsets: list[int], payloads: list[bytes]) -> list[bytes]:
        return envelopes(segment, offsets, payloads)

    for inputs in (None, frozenset({"agents"})):
        got = []
        for shape in (envelopes, plain):
            reader = WalReader(tmp_path, None, inputs, envelopes=shape)
            batches = list(reader.replay(max_bytes=5000))
            got.append(
                (
                    [b.envelopes for b in batches],
                    [(b.end, b.records, b.events) for b in batches],
                    reader.counters,
                )
            )
        assert isinstance(envelopes, SplitShape)
        assert not isinstance(plain, SplitShape)
        assert got[0] == got[1]
        assert got[0][2]["corrupt_bytes"] > 0
        assert sum(len(b) for b in got[0][0]) == (404 if inputs is None else 349)
