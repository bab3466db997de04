"""A WAL whose file system fills up before ``max_bytes``, on a real (small) tmpfs: it counts as a
full buffer (block or drop, as configured), checkpoints and segment reclamation go on as sinks
acknowledge, and the daemon resumes by itself once space returns, with nothing lost or doubled.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer.wal import Wal
from shipper.config import Address, parse_config
from shipper.shutdown import Shutdown, run_daemon
from tests.chains import chain_lines
from tests.conftest import LogCapture, archive_lines, file_sink_config, tmpfs, wait_until

MiB = 1024 * 1024


def small_fs(path: Path, size: int) -> contextlib.AbstractContextManager[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` for the test (skips if it cannot be)."""
    return tmpfs(path, f"size={size}")


def fill(path: Path, leave: int = 0) -> Path:
    """A file that takes the file system's free space, all but ``leave`` bytes."""
    filler = path / "filler"
    info = os.statvfs(path)
    room = info.f_bavail * info.f_frsize - leave
    chunk = b"\0" * MiB
    # Unbuffered: a write the disk refuses (the WAL took some room since statvfs) must leave no
    # bytes behind in a buffer for close() to try again, and fail on.
    with open(filler, "wb", buffering=0) as file:
        try:
            while room > 0:
                room -= file.write(chunk[: min(len(chunk), room)])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def config_on(fs: Path, root: Path, **buffer: Any) -> dict[str, Any]:
    """A daemon whose data_dir (the WAL) is on ``fs``, archiving to ``root``."""
    raw = file_sink_config(root)
    raw["data_dir"] = str(fs / "var")
    raw["buffer"] = {"max_bytes": "1GiB", "segment_bytes": "256KiB", **buffer}
    return raw


async def send(address: Address, data: bytes) -> None:
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(data)


def verified(root: Path) -> list[tuple[int, str]]:
    """(sequence, chain status) of every archived record, in archive order."""
    out = []
    for line in archive_lines(root / "archive"):
        envelope = orjson.loads(line)
        if "record" in envelope and "chain" in envelope:
            out.append((envelope["record"]["sequence"], envelope["chain"]["status"]))
    return out


async def test_a_wal_on_a_file_system_smaller_than_max_bytes_keeps_flowing(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Far more data than the WAL's file system holds flows through while the sink keeps up:
    the WAL counts as full when the disk is low, checkpoints and frees what the sink passed, and
    goes on; every record is archived once, in order, verified ok."""
    lines = chain_lines(40_000, padding=900)  # about 40 MB through a 24 MiB file system
    # The sink cannot write until the WAL has filled its file system once (a file stands where
    # its directory goes): a sink that keeps pace would otherwise never let the disk fill.
    archive = tmp_path / "archive"
    archive.write_bytes(b"")
    with small_fs(tmp_path / "fs", 24 * MiB) as fs:
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(config_on(fs, tmp_path)), shutdown)
            nursery.start_soon(send, bound["agents"][0], b"".join(lines))
            await wait_until(lambda: bool(logs.entries("wal_full_blocking")), 60)
            archive.unlink()
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) >= 40_000, 240)
            shutdown.request("test")
    found = verified(tmp_path)
    assert [sequence for sequence, _ in found] == list(range(1, 40_001))
    assert [status for _, status in found] == ["genesis"] + ["ok"] * 39_999
    assert logs.entries("wal_full_blocking"), (
        "the disk never counted as full: the test proves nothing"
    )
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["wal"]["segments_deleted"] > 0


async def test_a_full_disk_blocks_senders_until_space_returns(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With the disk filled by another file, records wait (the WAL blocks, the sender is slowed);
    once that file is deleted they all arrive, once each, in order, verified ok."""
    lines = chain_lines(3000, padding=200)
    with small_fs(tmp_path / "fs", 32 * MiB) as fs:
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(config_on(fs, tmp_path)), shutdown)
            await send(bound["agents"][0], b"".join(lines[:1000]))
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 1000)
            filler = fill(fs)
            nursery.start_soon(send, bound["agents"][0], b"".join(lines[1000:]))
            await wait_until(lambda: bool(logs.entries("wal_full_blocking")))
            await trio.sleep(0.5)  # blocked for a while: nothing more may arrive meanwhile
            assert len(archive_lines(tmp_path / "archive")) == 1000
            filler.unlink()
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 3000, 60)
            shutdown.request("test")
    found = verified(tmp_path)
    assert [sequence for sequence, _ in found] == list(range(1, 3001))
    assert [status for _, status in found] == ["genesis"] + ["ok"] * 2999
    assert logs.entries("wal_unblocked")


async def test_writes_refused_for_space_are_verified_again_and_land_once(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the free space cannot be told (so no reserve is kept), a full disk makes the WAL
    refuse writes (ENOSPC) that the chain stage had verified: they are taken back out of the chain
    state and written again once space returns; each record lands once, verified ok."""
    monkeypatch.setattr(Wal, "free_bytes", lambda self: None)
    lines = chain_lines(4000, padding=200)
    with small_fs(tmp_path / "fs", 32 * MiB) as fs:
        shutdown = Shutdown()
        raw = config_on(fs, tmp_path)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
            await send(bound["agents"][0], b"".join(lines[:1000]))
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 1000)
            filler = fill(fs)
            nursery.start_soon(send, bound["agents"][0], b"".join(lines[1000:]))
            await wait_until(lambda: bool(logs.entries("wal_write_failed")))
            filler.unlink()
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) >= 4000, 60)
            shutdown.request("test")
    found = verified(tmp_path)
    assert [sequence for sequence, _ in found] == list(range(1, 4001))
    assert [status for _, status in found] == ["genesis"] + ["ok"] * 3999
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["chain"]["verdicts"] == {"genesis": 1, "ok": 3999}
    assert logs.entries("wal_write_recovered")


async def test_a_full_disk_drops_new_batches_with_drop_newest(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With ``when_full = "drop_newest"``, records arriving while the disk is full are dropped
    and counted, never blocking the sender; records after space returns are archived."""
    lines = chain_lines(300, padding=200)
    with small_fs(tmp_path / "fs", 32 * MiB) as fs:
        shutdown = Shutdown()
        raw = config_on(fs, tmp_path, when_full="drop_newest")
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
            await send(bound["agents"][0], b"".join(lines[:100]))
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 100)
            filler = fill(fs)
            await send(bound["agents"][0], b"".join(lines[100:200]))
            await wait_until(lambda: bool(logs.entries("wal_full_dropped")))
            filler.unlink()
            await send(bound["agents"][0], b"".join(lines[200:]))
            await wait_until(lambda: any(s == 300 for s, _ in verified(tmp_path)), 60)
            shutdown.request("test")
    (complete,) = logs.entries("shutdown_complete")
    dropped = complete["metrics"]["wal"]["dropped_full"]
    assert dropped > 0
    assert len(verified(tmp_path)) + dropped == 300


async def test_dropping_on_a_full_disk_logs_and_checkpoints_at_a_bounded_rate(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Hundreds of batches dropped on a full disk give at most a line or two a second, each
    counting what was dropped since the last, and no checkpoint attempt per batch."""
    lines = chain_lines(300, padding=100)
    with small_fs(tmp_path / "fs", 32 * MiB) as fs:
        shutdown = Shutdown()
        raw = config_on(fs, tmp_path, when_full="drop_newest")
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
            await send(bound["agents"][0], lines[0])
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 1)
            filler = fill(fs)
            started = trio.current_time()
            for line in lines[1:]:  # one connection, so one batch, each
                await send(bound["agents"][0], line)
            elapsed = trio.current_time() - started
            await wait_until(lambda: bool(logs.entries("wal_full_dropped")))
            filler.unlink()
            shutdown.request("test")
    (complete,) = logs.entries("shutdown_complete")
    dropped = complete["metrics"]["wal"]["dropped_full"]
    assert dropped > 100
    bound_lines = 2 * (int(elapsed) + 2)  # at most one a second, and a first one
    entries = logs.entries("wal_full_dropped")
    assert len(entries) <= bound_lines
    assert sum(entry["events"] for entry in entries) <= dropped
    assert entries[0]["free_bytes"] is not None
    assert len(logs.entries("chain_checkpoint_failed")) <= bound_lines
