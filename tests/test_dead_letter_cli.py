"""``shipper dead-letter list|show|replay``: an operator reads what a receiver refused, and
sends it again once the receiver is fixed, once."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.cli import main
from shipper.config import SINK_TYPES, load_config
from shipper.sinks.base import BatchSettings
from shipper.sinks.dead_letter import REPLAYED
from shipper.sinks.driver import SinkDriver
from shipper.sinks.replay import CannotReplay, replay
from tests.sinks.contract import entries, numbers, open_wal
from tests.sinks.memory import DESTINATIONS, MemoryDestination, MemorySink, MemorySinkConfig

KEY = "k" * 32


@pytest.fixture
def memory_sinks() -> Iterator[None]:
    """``type = "memory"`` sinks for the test, on fresh destinations."""
    DESTINATIONS.clear()
    with SINK_TYPES.registered(MemorySinkConfig):
        yield
    DESTINATIONS.clear()


def write_config(root: Path, **sink: Any) -> Path:
    path = root / "shipper.toml"
    lines = [
        f'data_dir = "{root / "var"}"',
        "[sources.agents]",
        'type = "json_tls"',
        'address = "127.0.0.1:0"',
        "[sinks.hook]",
        'type = "memory"',
        'destination = "hook"',
        "[sinks.archive]",
        'type = "file"',
        f'path = "{root / "archive"}"',
    ]
    for key, value in sink.items():
        lines.insert(lines.index('destination = "hook"') + 1, f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # (a test's own config must be valid TOML)
    return path


async def refuse_some(root: Path) -> MemoryDestination:
    """Run the hook sink's driver over 9 events in batches of 3, its receiver refusing the two
    batches that hold poisoned ones: two dead-letter files of 3 events."""
    destination = DESTINATIONS.setdefault("hook", MemoryDestination())
    destination.poison = b"poison"
    wal = open_wal(root / "wal")
    await wal.append(entries(1, 3, tag="fine"))
    await wal.append(entries(4, 3, tag="poison", user="alice"))
    await wal.append(entries(7, 3, tag="poison", user="alice"))
    await wal.close()
    sink = MemorySink("hook", destination, batching=BatchSettings(max_events=3, max_age=0.01))
    driver = SinkDriver(sink, root / "var")
    await driver.run(wal.readers["contract"], wal.epoch)
    assert driver.counters["dead_letters"] == 6
    return destination


async def test_replay_delivers_every_dead_letter_once_and_keeps_it(
    tmp_path: Path, memory_sinks: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the receiver is fixed, a replay delivers the refused batches in order, redacted as
    the sink's config says, moves each file into replayed/, and a second replay sends nothing."""
    destination = await refuse_some(tmp_path)
    assert numbers(destination.held) == [1, 2, 3]
    destination.poison = None  # the receiver is fixed
    config = load_config(
        write_config(tmp_path, redact=f'{{ hash = ["record.user"], key = "{KEY}" }}')
    )
    done = await replay(config, "hook")
    assert done.complete
    assert numbers(destination.held) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    users = {orjson.loads(e)["record"]["user"] for e in destination.held[3:]}
    (user,) = users
    assert user.startswith("hmac-sha256:")
    directory = tmp_path / "var" / "dead_letter" / "hook"
    assert sorted(p.name for p in directory.iterdir()) == [REPLAYED]
    assert len(list((directory / REPLAYED).iterdir())) == 2
    again = await replay(config, "hook")
    assert (again.delivered, again.refused) == ([], [])
    assert len(destination.held) == 9
    assert "replayed" in capsys.readouterr().out


async def test_a_replay_refused_again_keeps_the_file_and_an_unavailable_receiver_stops_it(
    tmp_path: Path, memory_sinks: None
) -> None:
    """A batch refused again stays where it was, with the reason reported; a receiver that is
    down stops the replay before anything moves."""
    destination = await refuse_some(tmp_path)
    config = load_config(write_config(tmp_path))
    refused = await replay(config, "hook", report=lambda line: None)
    assert [reason for _, reason in refused.refused] == ["refused: the batch holds poison"] * 2
    destination.poison, destination.available = None, False
    down = await replay(config, "hook", report=lambda line: None)
    assert down.stopped is not None
    assert "unavailable" in down.stopped
    assert numbers(destination.held) == [1, 2, 3]
    assert len(list((tmp_path / "var" / "dead_letter" / "hook").glob("*.jsonl"))) == 2


async def test_a_file_that_cannot_be_moved_after_delivery_stops_the_replay_saying_so(
    tmp_path: Path, memory_sinks: None
) -> None:
    """When the disk refuses to move a delivered file into replayed/ (here a file stands where
    the folder must go), the replay stops there and says the file was delivered and would be
    sent again, instead of failing with a traceback."""
    destination = await refuse_some(tmp_path)
    destination.poison = None
    (tmp_path / "var" / "dead_letter" / "hook" / REPLAYED).write_text("not a folder")
    config = load_config(write_config(tmp_path))
    done = await replay(config, "hook", report=lambda line: None)
    assert done.stopped is not None
    assert "delivered, but not moved to replayed/" in done.stopped
    assert numbers(destination.held) == [1, 2, 3, 4, 5, 6]
    assert done.delivered == []


async def test_an_archive_sink_or_an_unknown_file_cannot_be_replayed(
    tmp_path: Path, memory_sinks: None
) -> None:
    """Replay refuses an archive sink (its events must enter the archive in WAL order) and a
    file name that is not one of the sink's dead letters, sending nothing."""
    await refuse_some(tmp_path)
    config = load_config(write_config(tmp_path))
    with pytest.raises(CannotReplay, match="archive"):
        await replay(config, "archive")
    with pytest.raises(CannotReplay, match="not a dead letter"):
        await replay(config, "hook", ["1-0-1-9.jsonl"])


def test_list_and_show_print_what_was_refused_and_why(
    tmp_path: Path,
    memory_sinks: None,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """``list`` names each file with its events, time and reason (also as JSON), ``show`` prints
    a file's envelopes as they were refused, and a sink that is not configured is a usage
    error."""
    import trio

    trio.run(refuse_some, tmp_path)
    config = str(write_config(tmp_path))
    capsys.readouterr()
    assert main(["dead-letter", "list", "hook", "-c", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all("3 events" in line and "refused: the batch holds poison" in line for line in lines)
    assert main(["dead-letter", "list", "hook", "-c", config, "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [item["events"] for item in listed] == [3, 3]
    assert main(["dead-letter", "show", "hook", listed[0]["file"], "-c", config, "--json"]) == 0
    shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["envelope"]["record"]["n"] for line in shown] == [4, 5, 6]
    assert {line["reason"] for line in shown} == {"refused: the batch holds poison"}
    assert main(["dead-letter", "list", "nosuch", "-c", config]) == 2
    assert "no sink 'nosuch'" in capsys.readouterr().err
    assert main(["dead-letter", "replay", "hook", "nosuch.jsonl", "-c", config]) == 2
    assert "not a dead letter of sink 'hook'" in capsys.readouterr().err
    assert main(["dead-letter", "list", "nosuch", "-c", config]) == 2
    assert "no sink 'nosuch'" in capsys.readouterr().err
    assert main(["dead-letter", "list", "archive", "-c", config]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_a_dead_letter_folder_that_cannot_be_read_is_reported_not_a_traceback(
    tmp_path: Path,
    memory_sinks: None,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """When the sink's dead-letter folder cannot be listed (here a file stands in its place),
    list says so and exits 1, and replay refuses to start."""
    folder = tmp_path / "var" / "dead_letter" / "hook"
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    config = write_config(tmp_path)
    assert main(["dead-letter", "list", "hook", "-c", str(config)]) == 1
    assert "cannot list the dead letters of 'hook'" in capsys.readouterr().err
    assert main(["dead-letter", "replay", "hook", "-c", str(config)]) == 1
    assert "cannot list the dead letters of sink 'hook'" in capsys.readouterr().err
