"""``shipper top``: one frame (``--once``) of a running daemon's sources, sinks and troubled
agents, printed by the command as a subprocess, and a clear failure when there is no API."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import trio

from tests.api.test_status import first_summary, planted, send, shows_agent
from tests.conftest import SHIPPER, LogCapture, api_daemon, file_sink_config, free_port


async def test_top_once_prints_the_sources_sinks_and_the_agents_with_problems(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Against a daemon that received a gap and a fork, ``shipper top --once --api URL`` exits 0
    and prints the source with its event count, the sink, and both troubled agents with their
    status, the healthy agent left out."""
    async with api_daemon(file_sink_config(tmp_path), logs) as daemon:
        sends = planted()
        for name, last in (("steady", 20), ("gappy", 10), ("forked", 5)):
            await send(daemon.bound["agents"][0], sends[name])
            await first_summary(daemon.url, partial(shows_agent, name, last))
        done = await trio.run_process(
            [*SHIPPER, "top", "--once", "--api", daemon.url], capture_stdout=True, check=False
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "Sources" in out
    source_line = next(line for line in out.splitlines() if "agents" in line and "json_tls" in line)
    assert " 35 " in source_line  # the events it received
    assert "archive" in out
    assert "Agents with problems" in out
    troubled = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    assert "fork" in troubled["forked"]
    assert "gap" in troubled["gappy"]
    assert "steady" not in troubled


def test_top_says_so_when_the_api_cannot_be_reached(tmp_path: Path) -> None:
    """Nothing listening at ``--api``: exit 1 and a message naming the address; a config
    without ``[api] address``: exit 1 and a message saying to set it or pass ``--api``."""
    port = free_port()
    done = subprocess.run(
        [*SHIPPER, "top", "--once", "--api", f"127.0.0.1:{port}"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{port}" in done.stderr.decode()
    assert done.stdout == b""
    config = tmp_path / "shipper.toml"
    config.write_text(
        '[sources.a]\ntype = "json_tls"\naddress = "127.0.0.1:0"\n'
        f'[sinks.b]\ntype = "file"\npath = "{tmp_path / "archive"}"\n'
    )
    done = subprocess.run(
        [*SHIPPER, "top", "--once", "-c", str(config)], capture_output=True, check=False
    )
    assert done.returncode == 1
    assert "has no [api] address" in done.stderr.decode()
    assert "--api" in done.stderr.decode()
