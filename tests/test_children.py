"""The daemon's child processes (``shipper.children``): supervision, metrics across restarts, and
a child whose daemon is gone, with a child kind that exists only in tests (``tests.child``)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

import pytest
import trio

from shipper.children import _LENGTH, ORPHANED, Supervised, frame
from shipper.metrics import Registry, value
from tests.child import CHILD, SERVING, TickSpec
from tests.conftest import REPO, LogCapture


async def test_a_killed_child_is_started_again_and_its_counts_carry_on(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A child killed after it reported is logged and counted under its kind's prefix and label,
    and started again; its counters carry on in the next child's, its gauge goes with it, its
    log entries reach the daemon's log, and supervision ends once a child exits with 0."""
    registry = Registry()
    while_running: list[dict[str, Any]] = []

    async def take(message: tuple[Any, ...]) -> None:
        assert message == ("ticked",)
        while_running.append(registry.snapshot())
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)

    child = Supervised(CHILD, "w1", take)
    child.register_metrics(registry)
    assert child.health().status == "degraded"  # not started yet
    await child.supervise(TickSpec(5, "once", tmp_path / "marker"))
    (running,) = while_running
    assert value(running, "child_ticks") == 5
    assert value(running, "child_running") == 1
    after = registry.snapshot()
    assert value(after, "child_ticks") == 10  # the second child counted on from the first
    assert "child_running" not in after["metrics"]  # a gauge is the state of a child gone now
    assert value(after, "test_child_restarts", "w1") == 1
    assert after["health"]["worker.w1"]["status"] == "ok"
    (exited,) = logs.entries("test_child_exited")
    assert (exited["worker"], exited["reason"]) == ("w1", "killed by SIGKILL")
    assert len(logs.entries("test_child_started")) == 2
    assert [entry["ticks"] for entry in logs.entries("child_ticked")] == [5, 5]


async def test_a_kind_with_a_serving_frame_starts_once_its_child_serves(
    tmp_path: Path, logs: LogCapture
) -> None:
    """For a kind with a serving frame, the start waits until the child serves (its report
    before that does not make it ok), the child inherits the file descriptors passed, its work
    sees the details of its stop, and one that fails once told to stop is logged with no
    restart and not started again."""
    seen: list[tuple[tuple[Any, ...], str]] = []

    async def take(message: tuple[Any, ...]) -> None:
        seen.append((message, child.health().status))

    child = Supervised(SERVING, "s1", take)
    registry = Registry()
    child.register_metrics(registry)
    read_end, write_end = os.pipe()
    try:
        spec = TickSpec(1, "serving", tmp_path / "marker", fd=write_end)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(child.supervise, spec, pass_fds=[write_end]))
            assert registry.snapshot()["health"]["test_child.s1"]["status"] == "ok"
            assert seen == [(("ticked",), "degraded")]
            assert os.read(read_end, 100) == b"inherited"
            child.stop(("kept",))
        assert os.read(read_end, 100) == b"(('kept',),)"
    finally:
        os.close(read_end)
        os.close(write_end)
    (exited,) = logs.entries("test_child_exited")
    assert (exited["reason"], exited["restart_in"]) == ("exit status 5", None)
    assert child.restarts == 0
    assert len(logs.entries("test_child_started")) == 1


def read_frame(stream: IO[bytes]) -> Any:
    """One frame from a child's stdout, read as the daemon would."""
    (size,) = _LENGTH.unpack(stream.read(_LENGTH.size))
    return pickle.loads(stream.read(size))


@pytest.mark.parametrize(
    ("mode", "closed"),
    [
        ("chatty", ("stdin", "stdout", "stderr")),
        ("busy", ("stdin", "stdout", "stderr")),
        ("chatty", ("stdin",)),
        ("chatty", ("stdout",)),
    ],
    ids=["killed", "killed_while_busy", "stdin_ended", "stdout_broken"],
)
def test_a_child_whose_daemon_is_gone_stops_quietly_as_orphaned(
    tmp_path: Path, mode: Literal["chatty", "busy"], closed: tuple[str, ...]
) -> None:
    """A child writing frames and log entries stops with ORPHANED, its cleanup whole and no
    traceback written, however the daemon's end shows: all its pipes closed at once (the daemon
    was SIGKILLed), seen first by its watch of stdin or by a log entry it writes, its stdin
    ended, or its stdout broken."""
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.child"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if "stderr" in closed else stderr,
        )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(frame(TickSpec(1, mode, tmp_path / "marker")))
        process.stdin.flush()
        assert read_frame(process.stdout) == ("tick", 1)  # it is running
        for name in closed:
            getattr(process, name).close()
        assert process.wait() == ORPHANED
    finally:
        if process.poll() is None:  # pragma: no cover - a hang is a failure
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert b"Traceback" not in errors.read_bytes()
    assert (tmp_path / "marker").read_text() == "cleaned up"  # its cleanup ran to its end
