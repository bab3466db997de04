"""Start-up failures as an operator meets them: one `shipper_failed` entry or one config problem
per cause, a non-zero exit, never a traceback; and a crash loop that does not replay an ever
longer WAL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import heap
from shipper.cli import main
from shipper.config import directory_problem
from shipper.logging import reset as reset_logging
from shipper.topology import Topology
from tests.conftest import archive_lines, free_port, running_daemon, tmpfs
from tests.test_cli import daemon_config, send, shipper, write_config

EX_CONFIG = 78


def failed_entries(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a failed run, checking that nothing else (a traceback) was printed."""
    assert "Traceback" not in stderr
    entries = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry["event"] == "shipper_failed"]


def test_a_data_dir_that_is_a_file_is_a_config_problem(tmp_path: Path) -> None:
    """`validate` and `run` refuse a data_dir that is a regular file (78), naming the key."""
    (tmp_path / "var").write_text("not a directory")
    config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, free_port()))
    for command in ("validate", "run"):
        result = shipper(command, "-c", str(config))
        assert result.returncode == EX_CONFIG
        assert (
            f"data_dir: expected a directory shipper can create and write, {tmp_path / 'var'} is not a directory"
            in result.stderr
        )
        assert "Traceback" not in result.stderr
    (failed,) = failed_entries(shipper("run", "-c", str(config)).stderr)
    assert failed["error"] == "invalid configuration (1 problem)"


def test_a_data_dir_below_a_file_is_a_config_problem(tmp_path: Path) -> None:
    """A data_dir that could only be created inside a regular file is refused at validation."""
    (tmp_path / "state").write_text("a file")
    raw = daemon_config(tmp_path, free_port())
    raw["data_dir"] = str(tmp_path / "state" / "var")
    result = shipper("validate", "-c", str(write_config(tmp_path / "shipper.toml", raw)))
    assert result.returncode == EX_CONFIG
    assert f"{tmp_path / 'state'} is not a directory" in result.stderr


def test_a_data_dir_that_cannot_be_written_is_a_config_problem(tmp_path: Path) -> None:
    """A data_dir on a read-only file system is refused by validate, even for root."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as readonly:
        assert directory_problem(readonly / "var") is not None
        raw = daemon_config(tmp_path, free_port())
        raw["data_dir"] = str(readonly / "var")
        result = shipper("validate", "-c", str(write_config(tmp_path / "shipper.toml", raw)))
    assert result.returncode == EX_CONFIG
    assert f"{readonly} is not writable (it would be created in {readonly})" in result.stderr


def test_a_wal_directory_in_the_way_fails_the_start_with_one_entry(tmp_path: Path) -> None:
    """When the WAL directory cannot be made (a file named wal), `run` exits 1 with one
    `shipper_failed` entry naming data_dir and the cause, and no traceback."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "wal").write_text("in the way")
    config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, free_port()))
    result = shipper("run", "-c", str(config))
    assert result.returncode == 1
    (failed,) = failed_entries(result.stderr)
    assert failed["error"].startswith(f"cannot use data_dir {tmp_path / 'var'}: ")
    assert "File exists" in failed["error"] or "Not a directory" in failed["error"]


def test_a_config_that_is_not_utf8_is_a_config_problem(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is refused (78) with a message, not a decode traceback."""
    config = tmp_path / "shipper.toml"
    config.write_bytes(b'data_dir = "caf\xe9"\n')
    for command in ("validate", "run"):
        result = shipper(command, "-c", str(config))
        assert result.returncode == EX_CONFIG
        assert (
            f"{config}: {config} is not UTF-8 text (TOML must be): bad byte at offset 15"
            in result.stderr
        )
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["${ARCHIVE", "${}", "${1X}/x", "a/${ARCHIVE-DIR}"])
def test_an_unterminated_or_empty_variable_is_a_config_problem(tmp_path: Path, text: str) -> None:
    """A `${` that opens no `${NAME}` is refused at its key instead of being kept literally."""
    raw = daemon_config(tmp_path, free_port())
    raw["sinks"]["archive"]["path"] = text
    result = shipper("validate", "-c", str(write_config(tmp_path / "shipper.toml", raw)))
    assert result.returncode == EX_CONFIG
    assert 'sinks.archive.path: expected "${NAME}"' in result.stderr
    assert f"got {orjson.dumps(text).decode()}" in result.stderr


def test_a_crash_loop_does_not_replay_an_ever_longer_wal(tmp_path: Path) -> None:
    """A daemon killed before its first periodic checkpoint replays the WAL once at the next
    start, which checkpoints at once: the start after that replays nothing."""
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["chain"] = {"checkpoint_interval": "1h"}
    config = write_config(tmp_path / "shipper.toml", raw)
    records = b"".join(
        orjson.dumps({"agentId": "loop", "sequence": n, "hash": f"h{n}"}) + b"\n"
        for n in range(1, 201)
    )
    replayed = []
    for start in range(3):
        with running_daemon(config, tmp_path) as daemon:
            if start == 0:
                send(port, records)
                daemon.wait_for(
                    lambda: len(archive_lines(tmp_path / "archive")) >= 200, "the records", 60
                )
            loaded = [e for e in daemon.entries() if e["event"] == "chain_state_loaded"]
            replayed.append(loaded[-1]["replayed"])
            daemon.kill()  # a crash: no shutdown checkpoint
        (tmp_path / "daemon.log").rename(tmp_path / f"daemon-{start}.log")
    assert replayed == [0, 200, 0]


def test_a_defect_at_start_is_one_entry_with_its_traceback_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception while starting ends `run` with exit 1 and one `shipper_failed`
    entry that names it and carries the traceback as a field, nothing else on stderr."""

    async def broken(self: Topology, **_: Any) -> None:
        raise RuntimeError("injected defect")

    monkeypatch.setattr(Topology, "run", broken)
    monkeypatch.setattr(heap, "_enabled", False)  # restored after: `run` enables it
    config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, free_port()))
    try:
        assert main(["run", "-c", str(config)]) == 1
    finally:
        reset_logging()
    stderr = capsys.readouterr().err
    lines = stderr.splitlines()
    assert all(line.startswith("{") for line in lines), stderr
    (failed,) = failed_entries_of(lines)
    assert failed["error"] == "RuntimeError: injected defect"
    assert "Traceback (most recent call last)" in failed["traceback"]


def failed_entries_of(lines: list[str]) -> list[dict[str, Any]]:
    """The `shipper_failed` entries among JSON log lines."""
    return [e for e in map(orjson.loads, lines) if e["event"] == "shipper_failed"]
