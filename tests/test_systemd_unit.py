"""Checks on the shipped systemd unit: syntax, sandboxing score, and the daemon contract."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "shipper.service"
CONFIG = "/etc/shipper/shipper.toml"
MAX_EXPOSURE = 2.0
# `systemd-analyze security --offline=` exists since systemd 250.
MIN_OFFLINE_VERSION = 250
SHUTDOWN_TIMEOUT_S = 30.0
_TIMESPAN_UNITS_S = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def _analyze() -> str:
    """Return the systemd-analyze path, or skip the test when it is not installed."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    return exe


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command with a plain C locale and no pager or colours."""
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat"}
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env, check=False)


def _directives() -> dict[str, list[str]]:
    """Parse the unit into `Section.Key -> [values]`, keeping repeated keys in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _one(directives: dict[str, list[str]], key: str) -> str:
    """Return the single value of a directive, failing if it is absent or repeated."""
    values = directives.get(key, [])
    assert len(values) == 1, f"{key} should be set exactly once, got {values}"
    return values[0]


def _seconds(span: str) -> float:
    """Convert a systemd time span such as `45s`, `1min 30s` or `45` into seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"unparseable time span {span!r}"
    for number, unit in parts:
        assert unit in _TIMESPAN_UNITS_S or unit == "", f"unknown time unit in {span!r}"
        total += float(number) * _TIMESPAN_UNITS_S.get(unit, 1.0)
    return total


def test_unit_verifies_without_syntax_errors() -> None:
    """systemd-analyze verify finds nothing wrong with the unit except a missing binary."""
    result = _run(_analyze(), "verify", "--man=no", "--recursive-errors=no", str(UNIT))
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert problems == []


def test_unit_security_exposure_is_low() -> None:
    """The offline systemd security review rates the unit's exposure below 2.0."""
    exe = _analyze()
    version = re.match(r"systemd (\d+)", _run(exe, "--version").stdout)
    if version is None or int(version.group(1)) < MIN_OFFLINE_VERSION:
        pytest.skip(f"systemd-analyze security --offline needs systemd >= {MIN_OFFLINE_VERSION}")
    result = _run(exe, "security", "--offline=true", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) < MAX_EXPOSURE, result.stdout


def test_unit_matches_daemon_contract() -> None:
    """The unit runs a validated notify service with its own user, state dir and drain time,
    and reloads it with SIGHUP."""
    d = _directives()
    assert _one(d, "Service.Type") == "notify"
    pre = _one(d, "Service.ExecStartPre").split()
    start = _one(d, "Service.ExecStart").split()
    assert pre[0] == start[0] == "/opt/shipper/bin/shipper"
    assert pre[1:] == ["validate", "-c", CONFIG]
    assert start[1:] == ["run", "-c", CONFIG]
    user = _one(d, "Service.User")
    assert user
    assert user != "root"
    assert _one(d, "Service.StateDirectory") == "shipper"
    assert _one(d, "Service.WorkingDirectory") == "/var/lib/shipper"
    assert _seconds(_one(d, "Service.TimeoutStopSec")) > SHUTDOWN_TIMEOUT_S
    assert "78" in _one(d, "Service.RestartPreventExitStatus").split()
    assert _one(d, "Service.ExecReload").split() == ["/bin/kill", "-HUP", "$MAINPID"]
    assert _one(d, "Service.NotifyAccess") == "main"
    assert _seconds(_one(d, "Service.WatchdogSec")) > 0
