"""``shipper verify`` as a user runs it: exit codes, the JSON report's shape, the progress bar
on a terminal and none when piped, S3 credentials from the environment, an unreachable S3."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import orjson
import trio

from shipper.s3 import open_client
from tests.archive.s3archive import envelope, write_archive
from tests.chains import chain
from tests.conftest import REPO, free_port
from tests.s3archive import settings
from tests.s3server import S3Server

SHIPPER = [sys.executable, "-m", "shipper", "verify"]
REPORT_KEYS = [
    "v",
    "archive",
    "layout",
    "profile",
    "intact",
    "checked",
    "statuses",
    "skipped",
    "witnesses",
    "problem_counts",
    "problems",
    "notice_counts",
    "notices",
]


def lines(count: int) -> list[bytes]:
    """Envelopes of ``count`` chained records of one agent, ids 100 apart."""
    return [
        envelope(f"1-{(n + 1) * 100}", record) for n, record in enumerate(chain(count, "agent-a"))
    ]


def dir_archive(path: Path, broken: bool = False) -> Path:
    """A file archive of 40 events in four files (``broken``: the third file left out)."""
    path.mkdir()
    events = lines(40)
    for index in range(4):
        if broken and index == 2:
            continue
        name = f"events-20261202T180000Z-{index + 1:04d}-5e1f00aa.jsonl"
        (path / name).write_bytes(b"".join(e + b"\n" for e in events[index * 10 : index * 10 + 10]))
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHIPPER, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_exit_codes_say_intact_not_intact_and_usage(tmp_path: Path) -> None:
    """Exit 0 for an intact archive, 1 for one with a problem, 2 for a usage error (an S3 option
    with --dir, a malformed --expect-head or URL, no archive named)."""
    intact = run("--dir", str(dir_archive(tmp_path / "intact")))
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "INTACT" in intact.stdout
    broken = run("--dir", str(dir_archive(tmp_path / "broken", broken=True)))
    assert broken.returncode == 1
    assert "agent agent-a: sequences 21-30 missing" in broken.stdout
    for args in (
        ["--dir", str(tmp_path), "--endpoint", "http://127.0.0.1:1"],
        ["--dir", str(tmp_path), "--expect-head", "sha256:" + "a" * 64],
        ["--s3", "s3://bucket/p", "--expect-head", "abc"],
        ["--s3", "http://bucket/p"],
        ["--s3", "s3://bucket/p", "--dir", str(tmp_path)],
        [],
    ):
        usage = run(*args)
        assert usage.returncode == 2, args
        assert "usage:" in usage.stderr


def test_the_json_report_has_its_documented_shape(tmp_path: Path) -> None:
    """--json prints one JSON object with the documented keys, in order; each problem has a
    kind, where and detail."""
    done = run("--dir", str(dir_archive(tmp_path / "broken", broken=True)), "--json")
    assert done.returncode == 1
    report = orjson.loads(done.stdout)
    assert list(report) == REPORT_KEYS
    assert report["intact"] is False
    assert report["layout"] == "dir"
    assert report["profile"] == "seed"
    assert report["checked"] == {
        "objects": 3,
        "bytes": report["checked"]["bytes"],
        "manifests": 0,
        "events": 30,
        "chained": 30,
        "agents": 1,
    }
    assert report["problem_counts"] == {"gap": 1}
    (problem,) = report["problems"]
    assert problem == {
        "kind": "gap",
        "where": "events-20261202T180000Z-0004-5e1f00aa.jsonl:1",
        "detail": "agent agent-a: sequences 21-30 missing, before id 1-3100",
        "agent": "agent-a",
        "missing": [21, 30],
        "id": "1-3100",
    }


def test_no_progress_bar_when_piped_one_on_a_terminal(tmp_path: Path) -> None:
    """With stderr piped, verify writes nothing to it; with stderr on a terminal, it draws the
    progress bar (objects, bytes, rate, time left) and erases it at the end."""
    archive = str(dir_archive(tmp_path / "archive"))
    piped = run("--dir", archive)
    assert piped.returncode == 0
    assert piped.stderr == ""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*SHIPPER, "--dir", archive],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        out, _ = process.communicate(timeout=120)
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: nothing more, the other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert process.returncode == 0
    assert b"INTACT" in out
    assert b"verifying [####################]  4/4 objects" in drawn
    assert b"MB/s" in drawn
    assert b"left" in drawn
    assert drawn.endswith(b"\r\x1b[K")


async def test_s3_credentials_come_from_the_environment(s3_server: S3Server) -> None:
    """--s3 with --endpoint reads the archive with the keys of the standard AWS chain (here the
    environment) and reports it intact with its head; a wrong key is a one-line error, exit 1."""
    async with open_client(settings(s3_server)) as s3:
        events = lines(10)
        written = await write_archive(s3, "verify-cli", "a/", [events[:5], events[5:]])
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    args = [*SHIPPER, "--s3", "s3://verify-cli/a", "--endpoint", s3_server.endpoint]
    done = await trio.run_process(
        [*args, "--json", "--expect-head", written.heads[-1]],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(done.stdout)
    assert report["head"] == written.heads[-1]
    assert report["checked"]["objects"] == 2
    assert done.stderr == b""
    wrong = await trio.run_process(
        args,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        cwd=REPO,
    )
    assert wrong.returncode == 1
    assert wrong.stderr.decode().startswith("shipper verify: cannot verify s3://verify-cli/a")
    assert len(wrong.stderr.splitlines()) == 1
    assert wrong.stdout == b""


def test_an_unreachable_s3_is_one_line_and_exit_1() -> None:
    """An endpoint where nothing listens: one line on stderr saying so, exit 1 (not intact)."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = run("--s3", "s3://bucket/prefix", "--endpoint", endpoint, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("shipper verify: cannot verify s3://bucket/prefix")
    assert len(done.stderr.splitlines()) == 1
    assert done.stdout == ""
