"""``shipper verify --dir`` on file archives the real daemon wrote (json_tls source, file sink
with small files), intact and then altered: each alteration fails the verification and the
report names it, as text and as JSON."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.cli import main
from shipper.config import parse_config
from shipper.shutdown import Shutdown, run_daemon
from tests.chains import chain_lines
from tests.conftest import archive_lines, file_sink_config, wait_until

AGENTS = ("agent-a", "agent-b")


def interleaved(count: int, missing: dict[str, range] | None = None) -> list[bytes]:
    """Lines of ``count`` chained records of each agent, taking turns; the sequences in
    ``missing`` of an agent are never sent."""
    missing = missing or {}
    lines = []
    for pair in zip(*(chain_lines(count, agent) for agent in AGENTS), strict=True):
        for line in pair:
            record = orjson.loads(line)
            if record["sequence"] not in missing.get(record["agentId"], range(0)):
                lines.append(line)
    return lines


async def daemon_archive(root: Path, lines: list[bytes], alerts: int = 0) -> Path:
    """Run the daemon (files of at most 4 KiB), send ``lines``, wait until all are archived
    (with the ``alerts`` the daemon raises about them), stop it; the archive's directory."""
    config = parse_config(file_sink_config(root, max_file_bytes=4096))
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        address = bound["agents"][0]
        async with await trio.open_tcp_stream(address.host, address.port) as stream:
            await stream.send_all(b"".join(lines))
        count = len(lines) + alerts
        await wait_until(lambda: len(archive_lines(root / "archive")) == count)
        shutdown.request("test")
    return root / "archive"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two archives, made once: every record of both agents (``intact``), and one where agent-b's
    records 21 to 25 never came (``gap``)."""
    root = tmp_path_factory.mktemp("archives")
    return {
        "intact": trio.run(daemon_archive, root / "intact", interleaved(30)),
        "gap": trio.run(
            daemon_archive, root / "gap", interleaved(30, {"agent-b": range(21, 26)}), 1
        ),
    }


def copy(archives: dict[str, Path], name: str, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of an archive to alter, and its files in order."""
    target = tmp_path / name
    shutil.copytree(archives[name], target)
    return target, sorted(target.glob("events-*.jsonl"))


def verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, int, dict[str, Any]]:
    """Run ``shipper verify --dir`` as text, then as JSON: both exit codes, the text, the JSON."""
    code = main(["verify", "--dir", str(path)])
    text = capsys.readouterr().out
    json_code = main(["verify", "--dir", str(path), "--json"])
    report = orjson.loads(capsys.readouterr().out)
    return code, text, json_code, report


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def by_kind(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [problem for problem in report["problems"] if problem["kind"] == kind]


def test_an_intact_archive_passes(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The archive the daemon wrote is intact: exit 0, every file, event and agent checked, and
    every record's chain verdict found again."""
    path, files = copy(archives, "intact", tmp_path)
    assert len(files) >= 5  # small files: the checks cross file boundaries
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (0, 0)
    assert "INTACT: no problem found" in text
    assert report["intact"] is True
    assert report["layout"] == "dir"
    assert report["checked"]["objects"] == len(files)
    assert report["checked"]["events"] == 60
    assert report["checked"]["chained"] == 60
    assert report["checked"]["agents"] == 2
    assert report["statuses"] == {"genesis": 2, "ok": 58}
    assert report["problems"] == []


def test_a_removed_middle_file_leaves_gaps(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Removing a file from the middle of the archive fails it, with each agent's records that
    the file held named as a gap."""
    path, files = copy(archives, "intact", tmp_path)
    removed = files[len(files) // 2]
    held: dict[str, list[int]] = {}
    for line in lines_of(removed):
        record = orjson.loads(line)["record"]
        held.setdefault(record["agentId"], []).append(record["sequence"])
    removed.unlink()
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert set(report["problem_counts"]) == {"gap"}
    gaps = {gap["agent"]: gap["missing"] for gap in by_kind(report, "gap")}
    assert gaps == {agent: [min(seqs), max(seqs)] for agent, seqs in held.items()}
    for agent, (first, last) in gaps.items():
        assert f"agent {agent}: sequences {first}-{last} missing" in text
    assert "NOT INTACT" in text


def test_an_edited_line_is_a_bad_hash(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A record edited in place (its hash left as it was) fails the archive as a bad hash at
    that file and line."""
    path, files = copy(archives, "intact", tmp_path)
    lines = lines_of(files[1])
    lines[1] = lines[1].replace(b'"database.query"', b'"database.drop"', 1)
    files[1].write_bytes(b"".join(line + b"\n" for line in lines))
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert set(report["problem_counts"]) == {"bad_hash"}
    (bad,) = by_kind(report, "bad_hash")
    assert bad["where"] == f"{files[1].name}:2"
    assert bad["id"] == orjson.loads(lines[1])["id"]
    assert f"bad_hash: {files[1].name}:2: agent" in text


def test_a_line_moved_to_a_later_file_is_out_of_order(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A line taken out of one file and appended to a later one fails the archive: its id comes
    after higher ids of its epoch, and the report says where."""
    path, files = copy(archives, "intact", tmp_path)
    lines = lines_of(files[1])
    moved = lines.pop(2)
    files[1].write_bytes(b"".join(line + b"\n" for line in lines))
    with open(files[3], "ab") as later:
        later.write(moved + b"\n")
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert set(report["problem_counts"]) == {"out_of_order"}
    (problem,) = by_kind(report, "out_of_order")
    assert problem["where"] == f"{files[3].name}:{len(lines_of(files[3]))}"
    assert problem["id"] == orjson.loads(moved)["id"]
    assert f"out_of_order: {files[3].name}:" in text
    assert report["statuses"]["late"] == 1  # its chain took it back where it belongs


def test_a_gap_the_daemon_recorded_fails_the_archive(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Records of an agent that never came (the daemon marked the next one ``gap``) are a gap of
    the archive too, named with the agent and the missing sequences."""
    path, files = copy(archives, "gap", tmp_path)
    recorded = [
        envelope["chain"]
        for envelope in map(orjson.loads, (line for f in files for line in lines_of(f)))
        if envelope.get("chain", {}).get("status") == "gap"
    ]
    assert recorded == [{"status": "gap", "sequence": 26, "expected": 21, "missing": [21, 25]}]
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert set(report["problem_counts"]) == {"gap"}
    (gap,) = by_kind(report, "gap")
    assert (gap["agent"], gap["missing"]) == ("agent-b", [21, 25])
    assert "agent agent-b: sequences 21-25 missing" in text
    assert report["skipped"] == {"alerts": 1}  # the daemon's alert about it: not chained


def test_an_event_archived_twice_is_a_duplicate(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A line written again (an event archived twice) fails the archive as a repeated id and a
    duplicate in its agent's chain."""
    path, files = copy(archives, "intact", tmp_path)
    lines = lines_of(files[2])
    with open(files[2], "ab") as file:
        file.write(lines[0] + b"\n")
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert set(report["problem_counts"]) == {"duplicate_id", "duplicate"}
    (twice,) = by_kind(report, "duplicate_id")
    assert twice["first"] == f"{files[2].name}:1"
    assert "duplicate_id" in text


def test_a_torn_line_fails_unless_it_ends_the_newest_file(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that ends in an unfinished line fails the archive; at the end of the newest file,
    where a write may be in progress, the torn line is a notice only."""
    path, files = copy(archives, "intact", tmp_path)
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[:-10])
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (0, 0)
    assert report["notice_counts"] == {"torn_line": 1}
    assert "torn_line" in text
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-10])
    code, text, json_code, report = verify(path, capsys)
    assert (code, json_code) == (1, 1)
    assert report["problem_counts"]["torn_line"] == 1
    (torn,) = by_kind(report, "torn_line")
    assert torn["where"] == f"{files[1].name}:{len(data.splitlines())}"


def test_a_line_that_is_no_envelope_is_named(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A line that is not a JSON envelope fails the archive, named by file and line."""
    path, files = copy(archives, "intact", tmp_path)
    lines = lines_of(files[0])
    lines.insert(1, b"not json at all")
    files[0].write_bytes(b"".join(line + b"\n" for line in lines))
    code, _, _, report = verify(path, capsys)
    assert code == 1
    (bad,) = by_kind(report, "bad_line")
    assert bad["where"] == f"{files[0].name}:2"


def test_an_empty_or_missing_directory_is_not_intact(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A directory without archive files fails (nothing was verified), and one that does not
    exist cannot be read: one line on stderr, exit 1."""
    assert main(["verify", "--dir", str(tmp_path)]) == 1
    assert "empty" in capsys.readouterr().out
    assert main(["verify", "--dir", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shipper verify: cannot verify")
    assert len(err.splitlines()) == 1


def test_a_file_larger_than_max_object_bytes_is_named_not_read(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file past ``--max-object-bytes`` (one grown with zeros, as a file made to exhaust
    verify's memory would be) is a problem named in the report, exit 1, and not read: the
    other files are still checked."""
    path, files = copy(archives, "intact", tmp_path)
    grown = files[len(files) // 2]
    with open(grown, "ab") as file:
        file.truncate(64 << 10)
    argv = ["verify", "--dir", str(path), "--max-object-bytes", "32KiB", "--json"]
    assert main(argv) == 1
    report = orjson.loads(capsys.readouterr().out)
    (large,) = by_kind(report, "object_too_large")
    assert large["where"] == grown.name
    assert large["limit"] == 32 << 10
    assert "65,536 bytes" in large["detail"]
    assert report["checked"]["objects"] == len(files) - 1
    assert set(report["problem_counts"]) == {"object_too_large", "gap"}
    assert main(["verify", "--dir", str(path), "--max-object-bytes", "64KiB"]) == 1
    assert "object_too_large" not in capsys.readouterr().out  # (read now: a bad line instead)


def test_verify_leaves_the_garbage_collector_running(
    archives: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """verify pauses Python's garbage collector while it checks objects, and runs it again
    after, found intact or not."""
    path, files = copy(archives, "intact", tmp_path)
    assert gc.isenabled()
    assert main(["verify", "--dir", str(path)]) == 0
    assert gc.isenabled()
    files[0].write_bytes(b"not an envelope\n")
    assert main(["verify", "--dir", str(path)]) == 1
    assert gc.isenabled()
    capsys.readouterr()
