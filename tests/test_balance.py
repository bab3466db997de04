"""Ingest workers share the connections of their stream listeners evenly (``shipper.balance``)."""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from shipper.balance import BOARD_FILE, DEFER_LIMIT, STALE, AcceptBoard, AcceptGate
from tests.conftest import WORKERS, archive_lines, free_port, running_daemon, tmpfs, wait_for
from tests.test_cli import daemon_config, write_config
from tests.test_ingestproc import server_side, socket_inodes, workers_started


class Clock:
    """A clock the test moves by hand (the board's heartbeats)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_holding_more_than_another_live_one_is_over(tmp_path: Path) -> None:
    """Two workers' boards on one file see each other's counts per source: the one holding
    more connections of a source than the other is over for that source only, equal counts
    are not, and a worker alone is never over."""
    clock = Clock()
    path = tmp_path / "board"
    first = AcceptBoard(path, 2, 0, ["b", "a"], clock)
    assert not first.over("a", 5)  # the other has not written its slots yet (a zeroed file)
    second = AcceptBoard(path, 2, 1, ["a", "b"], clock)
    assert first.over("a", 1)
    assert not first.over("b", 0)
    second.set("a", 1)
    assert not first.over("a", 1)
    assert second.others("a") == [1]
    assert first.over("a", 2)
    assert not second.over("a", 0)
    alone = AcceptBoard(tmp_path / "alone", 1, 0, ["a"], clock)
    assert not alone.over("a", 100)


def test_a_worker_whose_heartbeat_is_old_does_not_count(tmp_path: Path) -> None:
    """A slot not written for STALE seconds (its worker died or restarts, or the file is a
    previous run's) is left out, and counts again once its worker writes it."""
    clock = Clock()
    path = tmp_path / "board"
    first = AcceptBoard(path, 2, 0, ["a"], clock)
    second = AcceptBoard(path, 2, 1, ["a"], clock)
    assert first.over("a", 1)
    clock.now += STALE + 0.1
    assert not first.over("a", 1)
    second.publish()
    assert first.over("a", 1)


def test_the_board_file_grows_to_the_workers_and_sources_it_holds(tmp_path: Path) -> None:
    """A board file of a previous run with fewer workers or sources is grown, not misread."""
    path = tmp_path / "board"
    AcceptBoard(path, 1, 0, ["a"]).close()
    assert path.stat().st_size == 16
    board = AcceptBoard(path, 3, 2, ["a", "b"])
    assert path.stat().st_size == 3 * 2 * 16
    board.set("b", 7)
    assert AcceptBoard(path, 3, 0, ["a", "b"]).others("b") == [7]  # (worker 1 never wrote)


async def test_a_loaded_worker_lets_the_other_accept_then_takes_what_is_left(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Before an accept, a worker holding more connections than another live worker waits
    while that one may take the pending connection; once DEFER_LIMIT passed with it still
    pending, it accepts it anyway (a stuck worker keeps nobody waiting), and with equal counts
    it accepts at once."""
    path = tmp_path / "board"
    held = {"a": 1}
    gate = AcceptGate(AcceptBoard(path, 2, 0, ["a"]), held.__getitem__)
    other = AcceptBoard(path, 2, 1, ["a"])  # the other worker, live and holding none
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    try:
        start = trio.current_time()
        await gate.turn(listener, "a")
        assert trio.current_time() - start >= DEFER_LIMIT
        other.set("a", 1)
        start = trio.current_time()
        await gate.turn(listener, "a")
        assert trio.current_time() == start
    finally:
        client.close()
        listener.close()


async def test_a_deferring_worker_waits_for_the_next_connection_once_another_took_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """When the less loaded worker accepts the pending connection, the deferring one does not
    accept the next connection unasked: it waits for it and decides again."""
    path = tmp_path / "board"
    gate = AcceptGate(AcceptBoard(path, 2, 0, ["a"]), lambda _: 1)
    AcceptBoard(path, 2, 1, ["a"])
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    turned = False

    async def turn() -> None:
        nonlocal turned
        await gate.turn(listener, "a")
        turned = True

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(turn)
            await trio.sleep(DEFER_LIMIT / 2)
            accepted, _ = await listener.accept()  # the other worker takes it
            accepted.close()
            await trio.sleep(DEFER_LIMIT * 4)
            assert not turned
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        listener.close()


def test_connections_opened_at_once_are_spread_evenly_over_the_workers(tmp_path: Path) -> None:
    """Eight agents connecting at once to a daemon with two ingest workers end up four on
    each (the kernel alone gave most of them to one worker), and every record is archived."""
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = {"workers": WORKERS}
    clients: list[socket.socket] = []
    with running_daemon(write_config(tmp_path / "shipper.toml", raw), tmp_path) as daemon:
        try:
            wait_for(lambda: len(workers_started(tmp_path)) == WORKERS, "the workers")
            pids = [pid for _, pid in workers_started(tmp_path)]
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            for number, client in enumerate(clients):
                client.sendall(orjson.dumps({"agentId": f"agent-{number}", "sequence": 1}) + b"\n")
            wait_for(lambda: len(archive_lines(tmp_path / "archive")) == 8, "the records")
            holders: Counter[int] = Counter()
            for client in clients:
                inode = server_side(port, client.getsockname()[1])
                (pid,) = [pid for pid in pids if inode in socket_inodes(pid)]
                holders[pid] += 1
            assert sorted(holders.values()) == [4, 4], holders
        finally:
            for client in clients:
                client.close()
        assert daemon.stop() == 0


def test_a_heartbeat_from_the_future_or_a_closed_board_does_not_count(tmp_path: Path) -> None:
    """A slot written before a reboot (a monotonic clock ahead of this boot's) is not live, and
    a worker whose board is closed (it ended) clears its heartbeats."""
    clock = Clock()
    path = tmp_path / "board"
    first = AcceptBoard(path, 2, 0, ["a"], clock)
    clock.now += 1000.0
    AcceptBoard(path, 2, 1, ["a"], clock).set("a", 0)  # written at the previous boot's time
    clock.now -= 1000.0
    assert first.others("a") == []
    second = AcceptBoard(path, 2, 1, ["a"], clock)
    assert first.others("a") == [0]
    second.close()
    assert first.others("a") == []


def test_a_board_that_is_no_regular_file_or_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    """The board is never opened through a symbolic link (its target is left untouched) nor
    when it is a directory: both raise OSError, which a worker takes as "no balance"."""
    target = tmp_path / "precious"
    target.write_bytes(b"precious")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError, match="symbolic links"):  # ELOOP: O_NOFOLLOW
        AcceptBoard(tmp_path / "link", 2, 0, ["a"])
    assert target.read_bytes() == b"precious"
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        AcceptBoard(tmp_path / "dir", 2, 0, ["a"])


def test_workers_serve_without_balance_when_the_board_cannot_be_used(tmp_path: Path) -> None:
    """A board path that cannot be used (a directory there) costs the workers their balance
    only: each logs why, serves, and every record is archived."""
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = {"workers": WORKERS}
    (tmp_path / "var" / BOARD_FILE).mkdir(parents=True)
    with running_daemon(write_config(tmp_path / "shipper.toml", raw), tmp_path) as daemon:
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(orjson.dumps({"agentId": "a", "sequence": 1}) + b"\n")
            wait_for(lambda: len(archive_lines(tmp_path / "archive")) == 1, "the record")
        unusable = [e for e in daemon.entries() if e.get("event") == "ingest_board_unusable"]
        assert sorted(entry["worker"] for entry in unusable) == list(range(WORKERS))
        assert not [e for e in daemon.entries() if e.get("event") == "ingest_worker_exited"]
        assert daemon.stop() == 0


def test_a_board_on_a_full_disk_is_refused_not_a_crash(tmp_path: Path) -> None:
    """On a full file system the board refuses at once (ENOSPC, which a worker takes as "no
    balance"), instead of a mapped hole that kills the worker (SIGBUS) at its first write."""
    with tmpfs(tmp_path / "fs", "size=64k") as fs:
        with (fs / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from shipper.balance import AcceptBoard\n"
                "try:\n"
                f"    AcceptBoard(Path({str(fs / 'board')!r}), 2, 0, ['a']).set('a', 1)\n"
                "except OSError as exc:\n"
                "    sys.exit(f'refused: {exc.errno}')\n",
            ],
            capture_output=True,
            text=True,
        )
    assert (probe.returncode, probe.stderr.strip()) == (1, f"refused: {errno.ENOSPC}")
