"""The command line as a user runs it: validate, run, signals, systemd notifications, README."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import (
    REPO,
    SHIPPER,
    Daemon,
    archive_lines,
    free_port,
    log_entries,
    running_daemon,
    runtime,
)


def shipper(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the shipper command to completion."""
    return subprocess.run(
        [*SHIPPER, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write a config dict as TOML (just what these tests need: tables of scalars and lists)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {orjson.dumps(value).decode()}")
        for key, value in table.items():
            if isinstance(value, dict):
                emit(value, f"{prefix}.{key}" if prefix else key)

    emit(raw, "")
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == raw
    return path


def daemon_config(root: Path, port: int) -> dict[str, Any]:
    """A config for a daemon on ``port`` archiving under ``root``."""
    return {
        "data_dir": str(root / "var"),
        "shutdown_timeout": "20s",
        "sources": {"agents": {"type": "json_tls", "address": f"127.0.0.1:{port}"}},
        "sinks": {"archive": {"type": "file", "path": str(root / "archive")}},
    }


def test_validate_accepts_the_default_config() -> None:
    """`shipper validate` exits 0 on the shipped default config and says it is ok."""
    result = shipper("validate", "-c", "config/shipper.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config/shipper.toml: ok (3 sources, 1 sinks)"


def test_console_script_is_installed() -> None:
    """The `shipper` console script exists beside the interpreter and reports its version."""
    script = Path(sys.executable).parent / "shipper"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert re.fullmatch(r"shipper \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_invalid_config_exits_78_naming_each_key(tmp_path: Path, command: str) -> None:
    """validate and run both refuse a bad config with exit 78 and one line per bad key."""
    config = tmp_path / "bad.toml"
    config.write_text(
        'data_dir = "var"\n'
        "[sources.agents]\n"
        'type = "json_tls"\naddress = "127.0.0.1"\nmax_line_bytes = "1 MiBB"\n'
        "[sinks.archive]\n"
        'type = "file"\npth = "var/archive"\n'
    )
    result = shipper(command, "-c", str(config))
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    if command == "run":  # the daemon's log gets one entry saying why it did not start
        failed = orjson.loads(lines.pop())
        assert (failed["event"], failed["error"]) == (
            "shipper_failed",
            "invalid configuration (4 problems)",
        )
        assert len(failed["problems"]) == 4
    assert lines == [
        f"{config}: invalid configuration",
        f'{config}: sources.agents.address: expected "host:port" (IPv6 as "[::1]:port"), '
        'got "127.0.0.1"',
        f'{config}: sources.agents.max_line_bytes: expected a size like "512MB" or "1GiB", '
        'got "1 MiBB"',
        f"{config}: sinks.archive.path: required key is missing",
        f'{config}: sinks.archive.pth: unknown key (did you mean "path"?)',
    ]


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    """A config path that does not exist is a configuration error, not a traceback."""
    result = shipper("validate", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A unix datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def send(port: int, data: bytes) -> None:
    """Send bytes over one TCP connection to the local daemon and close it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)


def notified_daemon_config(
    root: Path, notify_socket: socket.socket, processes: bool
) -> tuple[int, dict[str, Any], Path, dict[str, str]]:
    """A daemon's port, raw config and config file under ``root`` (in one process or spread
    over processes), and the environment that makes it tell ``notify_socket`` as systemd's."""
    port = free_port()
    raw = daemon_config(root, port)
    raw["runtime"] = runtime(processes)
    config = write_config(root / "shipper.toml", raw)
    return port, raw, config, {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": ""}


def test_run_notifies_systemd_archives_and_stops_cleanly(
    tmp_path: Path, notify_socket: socket.socket, processes: bool
) -> None:
    """`shipper run` sends READY=1 when listening, archives what it gets, STOPPING=1 on SIGTERM."""
    port, _raw, config, notify = notified_daemon_config(tmp_path, notify_socket, processes)
    with running_daemon(config, tmp_path, notify, ready=False) as daemon:
        ready = notify_socket.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1"
        records = [orjson.dumps({"agentId": "cli", "sequence": n}) for n in range(1, 101)]
        send(port, b"\n".join(records) + b"\n")
        # At once: a stop reads what the kernel holds for the daemon, accepted or not yet.
        exit_code = daemon.stop()
    assert exit_code == 0
    assert notify_socket.recv(4096).decode() == "STOPPING=1"
    lines = archive_lines(tmp_path / "archive")
    assert [orjson.loads(line)["record"]["sequence"] for line in lines] == list(range(1, 101))
    events = [entry["event"] for entry in log_entries(tmp_path)]
    assert events.index("shipper_ready") < events.index("shutdown_started")
    assert events[-1] == "shutdown_complete"
    assert all(entry["level"] in {"debug", "info"} for entry in log_entries(tmp_path))


def test_sighup_reloads_the_config_file_and_tells_systemd(
    tmp_path: Path, notify_socket: socket.socket, processes: bool
) -> None:
    """At SIGHUP `shipper run` reads its config file again (a sink added there gets the events
    sent after), telling systemd RELOADING=1 with the monotonic clock, then READY=1."""
    port, raw, config, notify = notified_daemon_config(tmp_path, notify_socket, processes)
    with running_daemon(config, tmp_path, notify, ready=False) as daemon:
        assert notify_socket.recv(4096).decode().splitlines()[0] == "READY=1"
        raw["sinks"]["second"] = {"type": "file", "path": str(tmp_path / "second")}
        write_config(config, raw)
        before = time.monotonic_ns() // 1000
        daemon.process.send_signal(signal.SIGHUP)
        reloading = dict(
            line.split("=", 1) for line in notify_socket.recv(4096).decode().splitlines()
        )
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        assert notify_socket.recv(4096).decode().splitlines()[0] == "READY=1"
        records = [orjson.dumps({"agentId": "cli", "sequence": n}) for n in range(1, 11)]
        send(port, b"\n".join(records) + b"\n")
        exit_code = daemon.stop()  # at once: the stop reads what the kernel holds
    assert exit_code == 0
    for path in ("archive", "second"):
        lines = archive_lines(tmp_path / path)
        assert [orjson.loads(line)["record"]["sequence"] for line in lines] == list(range(1, 11))
    (done,) = [e for e in log_entries(tmp_path) if e["event"] == "reload_done"]
    assert done["started"] == {"sources": [], "sinks": ["second"]}


def test_address_in_use_fails_with_exit_1_and_a_logged_reason(tmp_path: Path) -> None:
    """When the listen address is taken, `shipper run` exits 1 and logs shipper_failed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, port))
        with running_daemon(config, tmp_path, ready=False) as daemon:
            assert daemon.process.wait(timeout=60) == 1
    (failed,) = [e for e in log_entries(tmp_path) if e["event"] == "shipper_failed"]
    assert f"cannot listen on 127.0.0.1:{port}" in failed["error"]


def test_a_daemon_left_running_is_stopped_after_the_block(tmp_path: Path) -> None:
    """``running_daemon`` stops a daemon the block left running, by SIGTERM: it has exited
    cleanly once the block is over."""
    config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, free_port()))
    with running_daemon(config, tmp_path) as daemon:
        assert daemon.process.poll() is None
    assert daemon.process.returncode == 0
    assert daemon.entries()[-1]["event"] == "shutdown_complete"


def skip_unless_default_ports_are_free() -> None:
    """Skip the test if another process (a parallel test run) holds a port of the default
    config's sources or API: the daemon could not start."""
    raw = tomllib.loads((REPO / "config" / "shipper.toml").read_text())
    listeners = [*raw["sources"].values(), raw["api"]]  # the API listens too (TCP)
    for source in listeners:
        host, port = source["address"].rsplit(":", 1)
        udp = source.get("mode") == "udp"
        with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, int(port)))
            except OSError:
                what = "UDP" if udp else "TCP"
                pytest.skip(f"{what} port {port} of the default config is in use on this machine")


@contextlib.contextmanager
def default_daemon(cwd: Path) -> Iterator[Daemon]:
    """What `make run` runs, from a checkout: the default config, relative to the working dir
    ``cwd`` (a copy of config/), with ``var/`` there, ready; skips if its ports are taken."""
    skip_unless_default_ports_are_free()
    shutil.copytree(REPO / "config", cwd / "config")
    with running_daemon(Path("config/shipper.toml"), cwd) as daemon:
        yield daemon


def wait_archived(daemon: Daemon, count: int) -> list[bytes]:
    """Wait until ``var/archive`` holds ``count`` lines (fail if the daemon exits first)."""
    archive = daemon.cwd / "var" / "archive"
    daemon.wait_for(lambda: len(archive_lines(archive)) >= count, f"{count} events archived", 60)
    return archive_lines(archive)


def test_readme_quick_start_puts_the_sample_event_in_var_archive(tmp_path: Path) -> None:
    """The README's run command and sample one-liner put the event, enveloped, in var/archive."""
    readme = (REPO / "README.md").read_text()
    one_liner = next(line for line in readme.splitlines() if "/dev/tcp/127.0.0.1/6515" in line)
    assert "make run" in readme
    if shutil.which("bash") is None:  # pragma: no cover - Debian always has bash
        pytest.skip("bash is needed for the README's /dev/tcp one-liner")
    with default_daemon(tmp_path) as daemon:
        subprocess.run(["bash", "-c", one_liner], cwd=tmp_path, check=True, timeout=30)
        exit_code = daemon.stop()  # at once: the stop reads what the kernel holds
    assert exit_code == 0
    (event,) = [orjson.loads(line) for line in archive_lines(tmp_path / "var" / "archive")]
    assert event["agent"] == "demo-agent"
    assert event["source"]["id"] == "agents_json"
    assert event["record"]["hash"].startswith("sha256:")
    shown = next(line for line in readme.splitlines() if line.startswith('{"v":1,"id":'))
    assert f'"id":"{event["id"]}"' in shown  # the README shows the line as it is archived
    assert orjson.dumps(event["chain"]).decode() in shown


def test_buffer_inspect_and_repair_report_wal_damage(tmp_path: Path) -> None:
    """inspect finds a flipped bit and a torn tail without changing anything; repair fixes both."""
    from shipper.buffer.record import encode_many
    from shipper.buffer.segment import header, segment_name

    port = free_port()
    config = write_config(tmp_path / "shipper.toml", daemon_config(tmp_path, port))
    wal = tmp_path / "var" / "wal"
    wal.mkdir(parents=True)
    good = encode_many([b"agents\0" + orjson.dumps({"n": n}) for n in range(3)])
    damaged = bytearray(header(1) + good + good[:5])  # three records, then a torn one
    damaged[16 + 8 + len(good) // 3] ^= 0x01  # a bit flipped in the second record's payload
    segment = wal / segment_name(1)
    segment.write_bytes(bytes(damaged))
    (wal / "epoch").write_bytes(b"0123456789abcdef\n")  # as a WAL that wrote segments has

    inspect = shipper("buffer", "inspect", "-c", str(config), "--json")
    assert inspect.returncode == 1, inspect.stderr
    report = orjson.loads(inspect.stdout)
    # Neither the sink nor the chain checkpoint has a cursor yet: both start at the oldest record.
    kinds = sorted(f["kind"] for f in report["findings"])
    assert kinds == ["corrupt", "no_cursor", "no_cursor", "torn"]
    assert report["sinks"]["archive"]["cursor"] == "1-16"
    assert report["sinks"][".chain"]["cursor"] == "1-16"
    assert segment.read_bytes() == bytes(damaged)  # inspect changes nothing

    repair = shipper("buffer", "repair", "-c", str(config))
    assert repair.returncode == 0, repair.stderr
    assert "fixed: torn:" in repair.stdout
    assert segment.stat().st_size == 16 + len(good)
    assert len(list(wal.glob("*.quarantine"))) == 1

    again = shipper("buffer", "inspect", "-c", str(config))
    assert again.returncode == 0, again.stdout
    assert "quarantined earlier" in again.stdout


def readme_command(prefix: str) -> str:
    """The one command line in the README that starts with ``prefix``."""
    readme = (REPO / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith(prefix)]
    return line


def test_readme_logger_commands_reach_the_default_configs_syslog_sources(tmp_path: Path) -> None:
    """The README's `logger` commands, run as written against `make run`'s config, archive the
    TCP one's record verified as its agent's genesis, and the UDP one's message."""
    over_tcp = readme_command("logger -n 127.0.0.1 -P 5514 --tcp --octet-count '")
    over_udp = readme_command("logger -n 127.0.0.1 -P 5514 --udp '")
    if shutil.which("logger") is None:  # pragma: no cover - util-linux is in every Debian
        pytest.skip("logger (util-linux) is needed for the README's syslog commands")
    with default_daemon(tmp_path) as daemon:
        subprocess.run(["sh", "-c", over_tcp], cwd=tmp_path, check=True, timeout=30)
        wait_archived(daemon, 1)
        subprocess.run(["sh", "-c", over_udp], cwd=tmp_path, check=True, timeout=30)
        lines = wait_archived(daemon, 2)
        exit_code = daemon.stop()
    assert exit_code == 0
    tcp, udp = [orjson.loads(line) for line in lines]
    sent = orjson.loads(over_tcp.split(" '", 1)[1].removesuffix("'"))
    assert tcp["record"] == sent
    assert (tcp["source"]["id"], tcp["source"]["kind"]) == ("syslog_tcp", "syslog")
    assert tcp["agent"] == sent["agentId"]
    assert tcp["chain"] == {"status": "genesis", "sequence": 1}
    assert (udp["source"]["id"], udp["source"]["kind"]) == ("syslog_udp", "syslog")
    assert udp["record"]["msg"] == over_udp.split(" '", 1)[1].removesuffix("'")
