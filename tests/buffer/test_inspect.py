"""``shipper buffer inspect`` and ``repair`` on WAL damage: the epoch, damaged cursors, levels."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.buffer.cursor import cursor_path
from shipper.buffer.recovery import CURSOR_DIR, EPOCH_FILE
from shipper.buffer.segment import Position
from shipper.chain_stage import CHAIN_CURSOR, Checkpoint, store_checkpoint
from shipper.cli import main
from shipper.config import load_config
from shipper.shutdown import Shutdown, run_daemon
from tests.buffer.test_recovery import EPOCH, segment_size, snapshot, store_cursor, write_segment
from tests.chains import chain_lines
from tests.conftest import LogCapture, archive_lines, file_sink_config, free_port, wait_until
from tests.test_cli import daemon_config, write_config

CHECKPOINT_EPOCH = "fedcba9876543210"


def healthy_wal(root: Path) -> tuple[Path, Path]:
    """A config whose WAL holds one whole segment that the sink and the chain checkpoint have
    both passed; the config's path and the WAL directory."""
    config = write_config(root / "shipper.toml", daemon_config(root, 6514))
    wal = root / "var" / "wal"
    wal.mkdir(parents=True)
    write_segment(wal, 1)
    for reader in ("archive", CHAIN_CURSOR):
        store_cursor(wal, reader, Position(1, segment_size()))
    return config, wal


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the command line in this process: its exit code and what it printed."""
    code = main(list(args))
    return code, capsys.readouterr().out


def inspect(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, dict[str, Any]]:
    """``buffer inspect --json``: its exit code and the parsed report."""
    code, out = run(capsys, "buffer", "inspect", "-c", str(config), "--json")
    report: dict[str, Any] = orjson.loads(out)
    return code, report


def test_inspect_reports_the_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``buffer inspect`` shows the WAL's epoch, in JSON and in text, and finds no damage."""
    config, _wal = healthy_wal(tmp_path)
    code, report = inspect(capsys, config)
    assert code == 0
    assert report["epoch"] == EPOCH
    assert report["findings"] == []
    code, out = run(capsys, "buffer", "inspect", "-c", str(config))
    assert code == 0
    assert f"  epoch: {EPOCH}\n" in out


def test_inspect_reports_a_damaged_epoch_and_repair_takes_the_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged epoch file makes ``inspect`` exit 1 with an error-level finding and change
    nothing; ``repair`` keeps a copy and writes the chain checkpoint's epoch back."""
    config, wal = healthy_wal(tmp_path)
    store_checkpoint(tmp_path / "var", Checkpoint(CHECKPOINT_EPOCH, Position(1, 16), {}))
    (wal / EPOCH_FILE).write_bytes(b"\xff\xfe\x00")
    before = snapshot(wal)
    code, report = inspect(capsys, config)
    assert code == 1
    assert snapshot(wal) == before
    [finding] = report["findings"]
    assert (finding["kind"], finding["level"]) == ("epoch", "error")
    assert CHECKPOINT_EPOCH in finding["detail"]
    assert report["epoch"] == CHECKPOINT_EPOCH

    code, out = run(capsys, "buffer", "repair", "-c", str(config))
    assert code == 0
    assert "fixed: epoch: " in out
    assert (wal / EPOCH_FILE).read_bytes() == CHECKPOINT_EPOCH.encode() + b"\n"
    assert (wal / f"{EPOCH_FILE}.corrupt").read_bytes() == b"\xff\xfe\x00"
    code, report = inspect(capsys, config)
    assert (code, report["findings"], report["epoch"]) == (0, [], CHECKPOINT_EPOCH)


def test_inspect_exits_1_for_a_cursor_beyond_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sink cursor beyond the end of the WAL is damage: ``inspect`` exits 1, reports it at
    error level and shows the sink at the oldest record, where ``repair`` puts it."""
    config, wal = healthy_wal(tmp_path)
    store_cursor(wal, "archive", Position(7, 16))
    code, report = inspect(capsys, config)
    assert code == 1
    [finding] = report["findings"]
    assert (finding["kind"], finding["level"], finding["segment"]) == ("bad_cursor", "error", 7)
    assert report["sinks"]["archive"] == {"cursor": "1-16", "lag_bytes": segment_size() - 16}
    code, _out = run(capsys, "buffer", "repair", "-c", str(config))
    assert code == 0
    cursor = orjson.loads((wal / CURSOR_DIR / "archive.json").read_bytes())
    assert (cursor["segment"], cursor["offset"]) == (1, 16)


async def test_inspect_of_a_running_daemon_whose_sink_acknowledged_nothing_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], logs: LogCapture
) -> None:
    """Against a running daemon, a sink that has acknowledged nothing yet (no cursor file) is
    reported as having no cursor yet and ``inspect`` exits 0; a corrupt cursor still exits 1."""
    raw = file_sink_config(tmp_path)
    raw["shutdown_timeout"] = "1s"  # the hook never answers: don't drain to it at the end
    # Nobody listens at the hook's address: it retries and never acknowledges.
    raw["sinks"]["hook"] = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook"}
    config = write_config(tmp_path / "shipper.toml", raw)
    cursors = tmp_path / "var" / "wal" / CURSOR_DIR
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        daemon = partial(run_daemon, load_config(config), shutdown, handle_signals=False)
        bound = await nursery.start(daemon)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", bound["agents"][0].port)
            async with stream:
                await stream.send_all(b"".join(chain_lines(3)))
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 3, 30)
            assert not cursor_path(cursors, "hook").exists()

            code, report = await trio.to_thread.run_sync(inspect, capsys, config)
            assert code == 0, report["findings"]
            [finding] = [f for f in report["findings"] if "sink hook:" in f["detail"]]
            assert (finding["kind"], finding["level"]) == ("no_cursor", "info")
            assert "no cursor yet" in finding["detail"]
            code, out = await trio.to_thread.run_sync(
                partial(run, capsys, "buffer", "inspect", "-c", str(config))
            )
            assert code == 0, out
            assert "  note: no_cursor: sink hook: no cursor yet" in out
            assert "  no damage found\n" in out

            cursor_path(cursors, "hook").write_bytes(b"{not json")
            code, report = await trio.to_thread.run_sync(inspect, capsys, config)
            assert code == 1
            [finding] = [f for f in report["findings"] if "sink hook:" in f["detail"]]
            assert (finding["kind"], finding["level"]) == ("cursor", "warning")
        finally:
            shutdown.request("test")
