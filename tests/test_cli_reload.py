"""``shipper reload``: the running daemon reads its config again through its API, as at SIGHUP,
and the command says what changed, or why the new config was refused."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import archive_lines, free_port, running_daemon, wait_for
from tests.test_cli import daemon_config, send, shipper, write_config


def test_shipper_reload_applies_a_changed_config_and_reports_a_refused_one(tmp_path: Path) -> None:
    """`shipper reload` makes a running daemon start a sink added to its config file (exit 0,
    naming it), and for an invalid file says the daemon refused it with validate's words (exit
    1, the daemon runs on), whether it found the API in that file or was given it."""
    port, api_port = free_port(), free_port()
    raw = daemon_config(tmp_path, port)
    raw["api"] = {"address": f"127.0.0.1:{api_port}"}
    config = write_config(tmp_path / "shipper.toml", raw)
    with running_daemon(config, tmp_path) as daemon:
        raw["sinks"]["second"] = {"type": "file", "path": str(tmp_path / "second")}
        write_config(config, raw)
        applied = shipper("reload", "-c", str(config))
        send(port, orjson.dumps({"agentId": "cli", "sequence": 1}) + b"\n")
        wait_for(lambda: len(archive_lines(tmp_path / "second")) == 1, "the added sink")

        raw["sinks"]["second"]["max_file_bytes"] = "lots"
        write_config(config, raw)
        asked = shipper("reload", "--api", f"127.0.0.1:{api_port}", "-c", str(tmp_path / "none"))
        local = shipper("reload", "-c", str(config))
        as_json = shipper("reload", "--json", "--api", f"127.0.0.1:{api_port}", "-c", "none")
        send(port, orjson.dumps({"agentId": "cli", "sequence": 2}) + b"\n")
        wait_for(lambda: len(archive_lines(tmp_path / "second")) == 2, "the daemon running on")
        assert daemon.stop() == 0
    assert (applied.returncode, applied.stdout) == (0, "reloaded\nstarted sinks: second\n")
    assert asked.returncode == 1
    assert asked.stdout.startswith("reload refused; the daemon runs on")
    assert "sinks.second.max_file_bytes: " in asked.stdout
    assert local.returncode == 1
    assert "sinks.second.max_file_bytes: " in local.stdout  # (only [api] is read here)
    refused = orjson.loads(as_json.stdout)
    assert as_json.returncode == 1
    assert refused["ok"] is False
    assert any("max_file_bytes" in problem for problem in refused["problems"])


def test_shipper_reload_without_a_running_daemon_says_so(tmp_path: Path) -> None:
    """With nothing listening at the API's address, `shipper reload` exits 1 saying nothing
    answers there."""
    result = shipper("reload", "--api", f"127.0.0.1:{free_port()}", "-c", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "nothing answers at http://127.0.0.1:" in result.stderr
