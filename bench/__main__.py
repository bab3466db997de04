"""End-to-end throughput harness: ``python -m bench`` (``make bench``).

For each transport (plain TCP, mutual TLS) it writes a config into a temporary directory, starts
``shipper run`` as a subprocess, waits for its ``shipper_ready`` log entry, sends pre-generated
chained audit records over several connections (:mod:`bench.loadgen`) and times from the first
connection attempt until the file sink's archive holds every event. Then it stops the daemon with
SIGTERM, checks that the archive holds each record exactly once and unaltered, and reports.

In the same run it measures the *Python limit of the same per-event work* on one core: split the
input into lines, ``orjson.loads`` each, check it is an object, build the envelope around the raw
line (``orjson.Fragment``), ``orjson.dumps`` it, and write the results in ~1 MiB blocks. A second
limit adds what the daemon's chain verification costs per event (sorted-key dumps, sha256, link
check). The ratio end-to-end / limit is the figure to watch: the machine is shared and noisy, so
absolute numbers swing between runs, ratios measured in one run much less.

``--protocol syslog`` does the same with a ``syslog`` source (``mode = "tcp"`` or ``"tls"``, RFC
5425): each record travels as the MSG of an octet-counted RFC 5424 message with structured data
(:func:`bench.loadgen.payloads`), and the limits start with the minimal syslog work instead of the
line split: deframe (``find`` + ``int`` + slice), cut the header and STRUCTURED-DATA as
:func:`bench.syslog.limit_5424` does, and put the header fields into the envelope's ``syslog``.

``--sinks all`` adds the forwarding sinks to the config: ``cef_syslog`` (TCP, octet counting)
and a signed ``webhook`` (default batching), each to a local receiver in a process of its own
(``bench.receivers``) that counts what it gets. The rate is still timed until the archive is
complete (the daemon's ingest rate with every sink on); a second figure times until both
receivers counted every event too. ``--sinks both`` makes a run with the file sink alone and one
with all sinks per transport and round, in turns (ABBA over rounds), so the two are measured
under the same load in one run.

The daemon may be several processes (``[runtime] sink_processes``, ingest workers): its CPU and
memory are those of its whole process tree (:class:`ProcessTree`: its session and descendants,
with the children it reaped), CPU over the timed window, resident memory summed and sampled at
every archive poll. ``--runtime KEY=VALUE[,...]`` (repeatable; ``default`` for none) writes
variants of the ``[runtime]`` table, each a row, in turns; a daemon that refuses its config
stops the bench with the daemon's error.

Latency: after each full-speed run, a fresh daemon gets the same records paced at ``--paced``
(default half) of the events/s that run reached (:class:`bench.loadgen.Pacing`). The archive is
followed while the records arrive and each line stamped when first seen (``ArchiveCounter``);
ingest-to-archive latency is that stamp minus the envelope's ``received_at``, send-to-archive
that stamp minus when the record was due to be sent (:func:`measure_latency`).

MB/s are input bytes (what was sent: the records with their newline, or the framed syslog
messages), in 10^6 bytes.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import hashlib
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType

import orjson
import trio
import trustme

from bench.events import generate_lines, octet_counted, syslog_messages
from bench.loadgen import (
    PROTOCOLS,
    LoadResult,
    Pacing,
    client_ssl_context,
    framed_groups,
    partition_groups,
    send_payloads,
)
from bench.receivers import Receiver
from bench.syslog import RFC5424_LIMIT
from shipper import procstat
from shipper.codecs.syslog import FACILITIES, SEVERITIES

QUICK_EVENTS = 20_000
DEFAULT_EVENTS = 200_000
POLL_SECONDS = 0.01
"""How often the archive and the daemon's log are polled."""
WRITE_BLOCK_BYTES = 1 << 20
READY_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 30.0
"""The daemon's own ``shutdown_timeout``; we SIGKILL it if it is still running 15 s later."""
KILL_MARGIN = 15.0


class BenchError(Exception):
    """The daemon could not be started or driven; the message says why."""


class DaemonRefused(BenchError):
    """The daemon exited before it was ready (its config refused, say): every run with the same
    config would fail alike, so the bench stops."""


# --------------------------------------------------------------------------------------- limit


def _received_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def limit_pass(data: bytes, out_path: Path) -> tuple[float, float]:
    """One pass of the per-event work without chain verification; returns (wall, CPU) seconds."""
    loads, dumps, fragment = orjson.loads, orjson.dumps, orjson.Fragment
    source = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:40000"}
    start, cpu_start = time.perf_counter(), time.process_time()
    with out_path.open("wb") as out:
        block: list[bytes] = []
        size = 0
        offset = 0
        received_at = _received_at()
        for line in data.split(b"\n"):
            if not line:
                continue
            record = loads(line)
            if not isinstance(record, dict):
                raise TypeError("record is not a JSON object")
            encoded = dumps(
                {
                    "v": 1,
                    "id": f"00000001-{offset}",
                    "received_at": received_at,
                    "source": source,
                    "agent": record.get("agentId"),
                    "record": fragment(line),
                }
            )
            offset += len(line) + 1
            block.append(encoded)
            size += len(encoded) + 1
            if size >= WRITE_BLOCK_BYTES:
                block.append(b"")
                out.write(b"\n".join(block))
                block.clear()
                size = 0
                received_at = _received_at()
        if block:
            block.append(b"")
            out.write(b"\n".join(block))
    return time.perf_counter() - start, time.process_time() - cpu_start


def limit_chain_pass(data: bytes, out_path: Path) -> tuple[float, float]:
    """:func:`limit_pass` plus the seed profile's chain check per event; (wall, CPU) seconds."""
    loads, dumps, fragment = orjson.loads, orjson.dumps, orjson.Fragment
    sha256, sort_keys = hashlib.sha256, orjson.OPT_SORT_KEYS
    source = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:40000"}
    last: dict[str, tuple[int, str]] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    with out_path.open("wb") as out:
        block: list[bytes] = []
        size = 0
        offset = 0
        received_at = _received_at()
        for line in data.split(b"\n"):
            if not line:
                continue
            record = loads(line)
            if not isinstance(record, dict):
                raise TypeError("record is not a JSON object")
            agent = record["agentId"]
            sequence = record["sequence"]
            claimed = record.pop("hash")
            digest = "sha256:" + sha256(dumps(record, option=sort_keys)).hexdigest()
            previous = last.get(agent)
            expected = 1 if previous is None else previous[0] + 1
            if digest != claimed:
                status = "bad_hash"
            elif previous is None:
                status = "genesis"
            elif sequence != expected or record["prevHash"] != previous[1]:
                status = "broken_link"
            else:
                status = "ok"
            last[agent] = (sequence, claimed)
            encoded = dumps(
                {
                    "v": 1,
                    "id": f"00000001-{offset}",
                    "received_at": received_at,
                    "source": source,
                    "agent": agent,
                    "chain": {"status": status, "sequence": sequence, "expected": expected},
                    "record": fragment(line),
                }
            )
            offset += len(line) + 1
            block.append(encoded)
            size += len(encoded) + 1
            if size >= WRITE_BLOCK_BYTES:
                block.append(b"")
                out.write(b"\n".join(block))
                block.clear()
                size = 0
                received_at = _received_at()
        if block:
            block.append(b"")
            out.write(b"\n".join(block))
    return time.perf_counter() - start, time.process_time() - cpu_start


def limit_syslog_pass(data: bytes, out_path: Path, chain: bool = False) -> tuple[float, float]:
    """:func:`limit_pass` (``chain``: :func:`limit_chain_pass`) over octet-counted RFC 5424
    messages whose MSG is the record: deframe, header and STRUCTURED-DATA as
    :func:`bench.syslog.limit_5424` (no validation), ``syslog`` in the envelope; (wall, CPU) s."""
    loads, dumps, fragment = orjson.loads, orjson.dumps, orjson.Fragment
    sha256, sort_keys = hashlib.sha256, orjson.OPT_SORT_KEYS
    header = RFC5424_LIMIT.match
    facilities, severities = FACILITIES, SEVERITIES
    source = {"id": "agents", "kind": "syslog", "peer": "127.0.0.1:40000"}
    last: dict[str, tuple[int, str]] = {}
    find = data.find
    start, cpu_start = time.perf_counter(), time.process_time()
    with out_path.open("wb") as out:
        block: list[bytes] = []
        size = 0
        pos = 0
        end = len(data)
        received_at = _received_at()
        while pos < end:
            space = find(b" ", pos, pos + 12)
            offset = pos
            pos = space + 1 + int(data[offset:space])
            frame = data[space + 1 : pos]
            head = header(frame)
            if head is None:
                raise ValueError("not an RFC 5424 message")
            pri = int(head[1])
            _, host, app, procid, msgid = head[2].decode().split(" ")
            sd: dict[str, dict[str, str]] = {}
            raw_sd = head[3]
            if raw_sd is not None:
                for element in raw_sd[1:-1].decode().split("]["):
                    sd_id, _, params = element.partition(" ")
                    pairs = iter(params[:-1].replace('" ', '="').split('="'))
                    sd[sd_id] = dict(zip(pairs, pairs, strict=False))
            msg = frame[head.end() :]
            record = loads(msg)
            if not isinstance(record, dict):
                raise TypeError("record is not a JSON object")
            envelope = {
                "v": 1,
                "id": f"00000001-{offset}",
                "received_at": received_at,
                "source": source,
                "syslog": {
                    "facility": facilities[pri >> 3],
                    "severity": severities[pri & 7],
                    "hostname": None if host == "-" else host,
                    "app_name": None if app == "-" else app,
                    "procid": None if procid == "-" else procid,
                    "msgid": None if msgid == "-" else msgid,
                    "sd": sd,
                },
                "agent": record.get("agentId"),
            }
            if chain:
                agent = record["agentId"]
                sequence = record["sequence"]
                claimed = record.pop("hash")
                digest = "sha256:" + sha256(dumps(record, option=sort_keys)).hexdigest()
                previous = last.get(agent)
                expected = 1 if previous is None else previous[0] + 1
                if digest != claimed:
                    status = "bad_hash"
                elif previous is None:
                    status = "genesis"
                elif sequence != expected or record["prevHash"] != previous[1]:
                    status = "broken_link"
                else:
                    status = "ok"
                last[agent] = (sequence, claimed)
                envelope["chain"] = {"status": status, "sequence": sequence, "expected": expected}
            envelope["record"] = fragment(msg)
            encoded = dumps(envelope)
            block.append(encoded)
            size += len(encoded) + 1
            if size >= WRITE_BLOCK_BYTES:
                block.append(b"")
                out.write(b"\n".join(block))
                block.clear()
                size = 0
                received_at = _received_at()
        if block:
            block.append(b"")
            out.write(b"\n".join(block))
    return time.perf_counter() - start, time.process_time() - cpu_start


def limit_syslog_chain_pass(data: bytes, out_path: Path) -> tuple[float, float]:
    """:func:`limit_syslog_pass` with the chain check."""
    return limit_syslog_pass(data, out_path, chain=True)


# --------------------------------------------------------------------------------------- daemon


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_certs(directory: Path) -> TlsFiles:
    """A fresh CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("bench-client")
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    files.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.server_key))
    files.client_cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_string(value: str | Path) -> str:
    # A JSON string is a valid TOML basic string for the paths we write.
    return orjson.dumps(str(value)).decode()


@dataclass(frozen=True)
class Runtime:
    """A ``--runtime`` variant: ``[runtime]`` keys and their values as TOML text, in order."""

    settings: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Runtime:
        """``default`` (no ``[runtime]`` keys) or ``KEY=VALUE[,KEY=VALUE...]``. A VALUE that is a
        TOML value (``true``, ``2``, ``"x"``) is written as it is, anything else as a string."""
        if spec.strip() == "default":
            return cls()
        settings = []
        for item in spec.split(","):
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or not _BARE_KEY.fullmatch(key) or not value:
                raise ValueError(f"not KEY=VALUE: {item!r}")
            try:
                tomllib.loads(f"v = {value}")
            except tomllib.TOMLDecodeError:
                value = _toml_string(value)
            settings.append((key, value))
        return cls(tuple(settings))

    def __str__(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.settings) or "default"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def write_config(
    run_dir: Path,
    port: int,
    tls: TlsFiles | None,
    log_level: str,
    protocol: str = "json",
    forward_to: Forwarding | None = None,
    runtime: Runtime = Runtime(),
) -> tuple[Path, Path]:
    """Write ``shipper.toml`` into ``run_dir``; return (config path, archive directory).

    The source is ``json_tls`` for ``protocol`` ``json``, else ``syslog`` in mode ``tcp`` or
    ``tls``. With ``forward_to``, a ``cef_syslog`` sink (TCP, octet counting) and a signed
    ``webhook`` sink (default batching) besides the file sink. ``runtime``: the ``[runtime]``
    table (none if it has no keys)."""
    archive = run_dir / "archive"
    lines = [
        f"data_dir = {_toml_string(run_dir / 'var')}",
        f'shutdown_timeout = "{SHUTDOWN_TIMEOUT:.0f}s"',
        "",
    ]
    if runtime.settings:
        lines += ["[runtime]", *(f"{key} = {value}" for key, value in runtime.settings), ""]
    lines += [
        "[log]",
        f"level = {_toml_string(log_level)}",
        "",
        "[sources.agents]",
    ]
    if protocol == "json":
        lines += ['type = "json_tls"', 'max_line_bytes = "1MiB"']
    else:
        mode = "tcp" if tls is None else "tls"
        lines += ['type = "syslog"', f'mode = "{mode}"', 'max_message_bytes = "1MiB"']
    lines += [
        f'address = "127.0.0.1:{port}"',
        "max_connections = 1024",
        'idle_timeout = "5m"',
    ]
    if tls is not None:
        lines += [
            "",
            "[sources.agents.tls]",
            f"cert = {_toml_string(tls.server_cert)}",
            f"key = {_toml_string(tls.server_key)}",
            f"client_ca = {_toml_string(tls.ca)}",
            "require_client_cert = true",
        ]
    lines += [
        "",
        "[sinks.archive]",
        'type = "file"',
        f"path = {_toml_string(archive)}",
        'max_file_bytes = "128MiB"',
        "",
    ]
    if forward_to is not None:
        lines += [
            "[sinks.siem]",
            'type = "cef_syslog"',
            f'address = "127.0.0.1:{forward_to.syslog_port}"',
            'hostname = "bench-host"',
            "",
            "[sinks.hook]",
            'type = "webhook"',
            f'url = "http://127.0.0.1:{forward_to.http_port}/hook"',
            f"signing_secret = {_toml_string(WEBHOOK_SECRET)}",
            "",
        ]
    config = run_dir / "shipper.toml"
    config.write_text("\n".join(lines))
    return config, archive


@dataclass(frozen=True)
class Forwarding:
    """Where the forwarding sinks send: the ports of the local receivers (``bench.receivers``)."""

    syslog_port: int
    http_port: int


#: The webhook sink's signing secret in the all-sinks runs (32 fixed bytes).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/PID/stat`` says of one process."""

    pid: int
    state: str
    """``R``, ``S``, ``D``, ``Z`` (a zombie: exited, not yet reaped) and so on."""
    parent: int
    session: int
    cpu_seconds: float
    """User + system CPU of the process (all its threads) and of its children it has waited
    for (so a child that exited and was reaped still counts, in its parent's figure)."""
    rss_bytes: int
    started: int
    """Start time in clock ticks after boot: with ``pid``, names the process across PID reuse."""


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/PID/stat`` of ``pid`` (``shipper.procstat.fields``); None if there is no such
    process (or no /proc)."""
    fields = procstat.fields(pid)
    if fields is None:
        return None
    return ProcStat(
        pid=pid,
        state=fields[0].decode(),
        parent=int(fields[1]),
        session=int(fields[3]),
        cpu_seconds=sum(int(value) for value in fields[11:15]) / procstat.TICKS_PER_SECOND,
        rss_bytes=int(fields[21]) * procstat.PAGE_BYTES,
        started=int(fields[19]),
    )


class ProcessTree:
    """The daemon's processes: ``root`` and every process descended from it or in its session.

    The daemon is started as a session leader, so its children, theirs, and any of them that
    outlived their parent stay in its session; descent by parent PID catches a child that
    started a session of its own. ``scan`` reads all of /proc (a few ms); ``sample`` rereads the
    known members every call and scans again every ``RESCAN_SECONDS``, tracking the peak of the
    members' summed resident set sizes (``peak_rss_bytes``).
    """

    RESCAN_SECONDS = 1.0

    def __init__(self, root: int) -> None:
        self.root = root
        stat = read_stat(root)
        self._root_started = None if stat is None else stat.started
        self.peak_rss_bytes = 0
        self.peak_processes = 0
        self.seen: set[tuple[int, int]] = set()
        """Every member seen by a scan or sample, as (pid, start time): restarts add to it."""
        self._members: dict[int, int] = {}  # pid -> start time, from the last scan
        self._scanned = -float("inf")

    def scan(self) -> dict[int, ProcStat]:
        """Every member now (none once the root and all its session are gone)."""
        stats: dict[int, ProcStat] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = read_stat(int(entry.name))
                if stat is not None:
                    stats[stat.pid] = stat
        # A session's id stays allocated while any member lives, so it cannot name another
        # process's session; the root's PID can be reused once it has been reaped.
        members = {pid: stat for pid, stat in stats.items() if stat.session == self.root}
        root = stats.get(self.root)
        if root is not None and root.started == self._root_started:
            members[self.root] = root
        else:
            members.pop(self.root, None)
        grew = True
        while grew:
            grew = False
            for pid, stat in stats.items():
                if stat.parent in members and pid not in members:
                    members[pid] = stat
                    grew = True
        self._members = {pid: stat.started for pid, stat in members.items()}
        self._scanned = time.perf_counter()
        self.seen.update((pid, stat.started) for pid, stat in members.items())
        return members

    def cpu_seconds(self) -> float | None:
        """CPU of the members so far (each with its reaped children); None if the root is gone."""
        members = self.scan()
        if self.root not in members:
            return None
        return sum(stat.cpu_seconds for stat in members.values())

    def sample(self) -> None:
        """Add the members' resident set sizes up now and keep the peak."""
        if time.perf_counter() - self._scanned >= self.RESCAN_SECONDS:
            stats = list(self.scan().values())
        else:
            stats = []
            for pid, started in self._members.items():
                stat = read_stat(pid)
                if stat is not None and stat.started == started:
                    stats.append(stat)
        total = sum(stat.rss_bytes for stat in stats)
        if total > self.peak_rss_bytes:
            self.peak_rss_bytes = total
            self.peak_processes = len(stats)


@dataclass(frozen=True)
class StopResult:
    exit_code: int
    seconds: float
    killed: bool
    cpu_seconds: float
    """User + system CPU of the daemon (and its waited-for children) over its whole life."""
    left_behind: list[str] = field(default_factory=list)
    """Processes of the daemon's still running after it exited (then killed by the bench)."""


class Daemon:
    """``shipper run -c CONFIG`` as a child process; stderr and stdout go to ``log_path``.

    As a context manager it guarantees the process is gone on exit (SIGTERM, then SIGKILL), and
    every process of its tree too (:meth:`stop`).
    """

    LEFTOVER_GRACE = 5.0
    """Seconds the daemon's other processes get to end after it exited before they are killed."""

    def __init__(self, executable: Path, config: Path, log_path: Path) -> None:
        self._argv = [str(executable.absolute()), "run", "-c", str(config.absolute())]
        self._cwd = config.parent
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._cpu_before = 0.0
        self.tree: ProcessTree | None = None
        """Its process tree, once started."""

    def __enter__(self) -> Daemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self.stop(KILL_MARGIN)

    def start(self, ready_timeout: float) -> float:
        """Start and wait for ``shipper_ready``; returns seconds until ready."""
        self._cpu_before = _children_cpu()
        start = time.perf_counter()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._argv,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Not in our process group: Ctrl-C reaches only us, and we stop it our way. In a
                # session of its own, which its processes share (ProcessTree).
                start_new_session=True,
            )
        self.tree = ProcessTree(self._process.pid)
        deadline = start + ready_timeout
        while True:
            if any(entry.get("event") == "shipper_ready" for entry in self.log_entries()):
                return time.perf_counter() - start
            code = self._process.poll()
            if code is not None:
                raise DaemonRefused(f"shipper exited with {code} before ready: {self.failure()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"shipper not ready after {ready_timeout} s:\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)

    @property
    def started(self) -> bool:
        return self._process is not None

    def cpu_seconds(self) -> float | None:
        """CPU used so far by the daemon's process tree; None where /proc is missing."""
        if self._process is None or self.tree is None or self._process.poll() is not None:
            return None
        return self.tree.cpu_seconds()

    def failure(self) -> str:
        """Why the daemon failed, from its ``shipper_failed`` log entry (else its log's tail)."""
        for entry in self.log_entries():
            if entry.get("event") == "shipper_failed":
                problems = entry.get("problems")
                listed = (
                    "; ".join(str(problem) for problem in problems)
                    if isinstance(problems, list)
                    else ""
                )
                return f"{entry.get('error')}" + (f": {listed}" if listed else "")
        return "\n" + self.log_tail()

    def peak_rss_bytes(self) -> int | None:
        """The main process's peak resident set size (VmHWM); None where /proc is missing."""
        if self._process is None:
            return None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float) -> StopResult:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        if self._process is None:
            raise BenchError("daemon not started")
        start = time.perf_counter()
        killed = False
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self._process.kill()
                self._process.wait()
        seconds = time.perf_counter() - start
        return StopResult(
            exit_code=self._process.returncode,
            seconds=seconds,
            killed=killed,
            cpu_seconds=_children_cpu() - self._cpu_before,
            left_behind=self._end_leftovers(),
        )

    def _end_leftovers(self) -> list[str]:
        """Once the daemon has exited: wait ``LEFTOVER_GRACE`` for the rest of its tree to end,
        then SIGKILL what is left, each by its PID (checked against its start time)."""
        if self.tree is None:
            return []

        def running() -> dict[int, ProcStat]:
            assert self.tree is not None
            return {pid: stat for pid, stat in self.tree.scan().items() if stat.state != "Z"}

        deadline = time.perf_counter() + self.LEFTOVER_GRACE
        while (members := running()) and time.perf_counter() < deadline:
            time.sleep(POLL_SECONDS)
        left = []
        for pid, stat in members.items():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            except OSError:
                continue
            now = read_stat(pid)
            if now is None or now.started != stat.started:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            left.append(f"{pid} ({command.decode(errors='replace')})")
        return left

    def log_entries(self) -> list[dict[str, object]]:
        """The daemon's log so far; lines that are not JSON objects come back as ``{"raw": ...}``."""
        try:
            text = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        entries: list[dict[str, object]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                entries.append({"raw": line.decode(errors="replace")})
        return entries

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------------------- archive


class ArchiveCounter:
    """Counts lines in ``DIR/*.jsonl`` incrementally (reads only what was appended since last time).

    Files are tracked by inode, so a renamed file is not counted twice. Each time a file's count
    grows, the new count is stamped with the wall clock (``time.time()``) taken after the read:
    line ``i`` of a file had appeared (its newline was written) by the first stamp whose count
    exceeds ``i`` (:meth:`appeared`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: dict[tuple[int, int], tuple[int, int]] = {}  # (dev, ino) -> (offset, lines)
        self._stamps: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        self._paths: dict[tuple[int, int], Path] = {}

    def count(self) -> int:
        if self.directory.is_dir():
            for path in self.directory.glob("*.jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    self._update(path)
        return sum(lines for _, lines in self._seen.values())

    def _update(self, path: Path) -> None:
        with path.open("rb") as file:
            stat = os.fstat(file.fileno())
            key = (stat.st_dev, stat.st_ino)
            offset, lines = self._seen.get(key, (0, 0))
            if stat.st_size <= offset:
                return
            before = lines
            file.seek(offset)
            while chunk := file.read(4 << 20):
                lines += chunk.count(b"\n")
                offset += len(chunk)
            self._seen[key] = (offset, lines)
            self._paths[key] = path
            if lines > before:
                counts, stamps = self._stamps.setdefault(key, ([], []))
                counts.append(lines)
                stamps.append(time.time())

    def appeared(self) -> Iterator[tuple[Path, Callable[[int], float | None]]]:
        """Each file counted, with a function from a line's index to when it had appeared (None:
        not counted yet)."""
        for key, (counts, stamps) in self._stamps.items():

            def stamp(
                index: int, counts: list[int] = counts, stamps: list[float] = stamps
            ) -> float | None:
                at = bisect.bisect_right(counts, index)
                return stamps[at] if at < len(stamps) else None

            yield self._paths[key], stamp


async def wait_for_archive(
    counter: ArchiveCounter, expected: int, daemon: Daemon, stall_timeout: float
) -> int:
    """Poll until the archive holds ``expected`` lines, stops growing, or the daemon dies;
    sample the daemon's process tree meanwhile."""
    last = -1
    changed = time.perf_counter()
    while True:
        count = counter.count()
        now = time.perf_counter()
        if daemon.tree is not None:
            daemon.tree.sample()
        if count >= expected or not daemon.alive():
            return count
        if count != last:
            last, changed = count, now
        elif now - changed > stall_timeout:
            return count
        await trio.sleep(POLL_SECONDS)


@dataclass
class Verification:
    """What the archive holds compared with what was sent."""

    lines: int = 0
    records: int = 0
    missing: int = 0
    duplicates: int = 0
    altered: int = 0
    unknown: int = 0
    """Records that were never sent (other than chain alerts)."""
    alerts: int = 0
    malformed: int = 0
    unparseable_lines: int = 0
    chain_status: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.duplicates
            or self.altered
            or self.unknown
            or self.malformed
            or self.unparseable_lines
        )

    def summary(self) -> str:
        problems = [
            f"{name} {value}"
            for name, value in (
                ("missing", self.missing),
                ("duplicates", self.duplicates),
                ("altered", self.altered),
                ("unknown", self.unknown),
                ("malformed", self.malformed),
                ("unparseable lines", self.unparseable_lines),
                ("chain alerts", self.alerts),
            )
            if value
        ]
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.chain_status.items())) or "none"
        verdict = "ok" if self.ok else "FAILED: " + ", ".join(problems)
        if self.ok and problems:
            verdict += " (" + ", ".join(problems) + ")"
        return f"{verdict}; {self.records} records in {self.lines} lines; chain.status: {statuses}"


def _archive_lines(directory: Path) -> Iterator[bytes]:
    for path in sorted(directory.glob("*.jsonl")):
        with path.open("rb") as file:
            yield from file


def verify_archive(directory: Path, sent: Sequence[bytes]) -> Verification:
    """Check that every sent record is archived exactly once, byte-identical once re-encoded."""
    expected: dict[tuple[object, object], bytes] = {}
    for line in sent:
        record = orjson.loads(line)
        expected[(record["agentId"], record["sequence"])] = line.rstrip(b"\n")
    result = Verification()
    seen: set[tuple[object, object]] = set()
    statuses: Counter[str] = Counter()
    for line in _archive_lines(directory):
        result.lines += 1
        try:
            envelope = orjson.loads(line)
        except orjson.JSONDecodeError:
            result.unparseable_lines += 1
            continue
        if not isinstance(envelope, dict):
            result.unparseable_lines += 1
            continue
        if "malformed" in envelope:
            result.malformed += 1
            continue
        record = envelope.get("record")
        if not isinstance(record, dict):
            result.unparseable_lines += 1
            continue
        if record.get("action") == "shipper.chain_alert":
            result.alerts += 1
            continue
        result.records += 1
        chain = envelope.get("chain")
        statuses[str(chain.get("status")) if isinstance(chain, dict) else "(no chain)"] += 1
        key = (record.get("agentId"), record.get("sequence"))
        original = expected.get(key)
        if original is None:
            result.unknown += 1
        elif key in seen:
            result.duplicates += 1
        else:
            seen.add(key)
            if orjson.dumps(record) != original:
                result.altered += 1
    result.missing = len(expected) - len(seen)
    result.chain_status = dict(statuses)
    return result


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds at the 50th and 99th percentile (nearest rank) and the largest."""

    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles | None:
        if not seconds:
            return None
        seconds.sort()

        def rank(fraction: float) -> float:
            return seconds[max(0, math.ceil(fraction * len(seconds)) - 1)] * 1e3

        return cls(rank(0.50), rank(0.99), seconds[-1] * 1e3)

    def __str__(self) -> str:
        return f"p50 {self.p50:.0f} ms, p99 {self.p99:.0f} ms, max {self.max:.0f} ms"


@dataclass(frozen=True)
class Latency:
    """How long the records took to reach the archive, over ``events`` archived records."""

    events: int
    ingest: Percentiles | None
    """From the envelope's ``received_at`` (stamped by the daemon when it decoded the record)
    to when the bench saw the record's line in the archive."""
    send: Percentiles | None = None
    """Paced runs: from when the load generator was due to send the record to when the bench saw
    its line in the archive."""


def _epoch_seconds(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def measure_latency(
    counter: ArchiveCounter, due: Callable[[object, object], float | None] | None = None
) -> Latency:
    """Latencies of the records the counter saw appear (chain alerts and malformed events are left
    out): ``received_at`` to appearance, and with ``due`` (agent, sequence to a wall-clock due
    time) from then to appearance. A record archived twice counts once, at its first line."""
    ingest: list[float] = []
    send: list[float] = []
    seen: set[tuple[object, object]] = set()
    for path, appeared in counter.appeared():
        with path.open("rb") as file:
            for index, line in enumerate(file):
                if not line.endswith(b"\n"):
                    break  # written after the last poll: not stamped
                try:
                    envelope = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                record = envelope.get("record") if isinstance(envelope, dict) else None
                if not isinstance(record, dict) or record.get("action") == "shipper.chain_alert":
                    continue
                key = (record.get("agentId"), record.get("sequence"))
                if key in seen:
                    continue
                seen.add(key)
                at = appeared(index)
                if at is None:
                    break
                received = _epoch_seconds(envelope.get("received_at"))
                if received is not None:
                    ingest.append(at - received)
                sent = due(*key) if due is not None else None
                if sent is not None:
                    send.append(at - sent)
    return Latency(len(seen), Percentiles.of(ingest), Percentiles.of(send))


# --------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Options:
    executable: Path
    log_level: str
    stall_timeout: float
    protocol: str = "json"


@dataclass
class EndToEnd:
    transport: str
    name: str
    """The run's directory name, e.g. ``tcp-1``."""
    events: int
    input_bytes: int
    sinks: str = "file"
    """``file``: the file sink alone; ``all``: with the forwarding sinks too."""
    runtime: str = "default"
    """The ``--runtime`` variant: the daemon's ``[runtime]`` keys."""
    paced_rate: float | None = None
    """Paced runs: the events/s the load generator sent at; None: as fast as it could."""
    ready_seconds: float = 0.0
    seconds: float | None = None
    """First connection attempt until the archive held every event; None if it never did."""
    timed_cpu_seconds: float | None = None
    """CPU the daemon's process tree used during ``seconds`` (from /proc; None if unavailable)."""
    peak_rss_bytes: int | None = None
    """The main process's peak resident memory (VmHWM), read just before SIGTERM."""
    tree_rss_bytes: int | None = None
    """The peak of the process tree's summed resident memory, sampled while timed."""
    tree_processes: int = 0
    """Processes in the tree at that peak."""
    processes_seen: int = 0
    """Processes of the tree seen while timed (more than ``tree_processes``: some restarted)."""
    latency: Latency | None = None
    bench_cpu_seconds: float | None = None
    """CPU of the bench's own process (load generator, archive follower) while timed."""
    delivered_seconds: float | None = None
    """With all sinks: first connection attempt until every receiver counted every event."""
    delivered_cpu_seconds: float | None = None
    forwarded: dict[str, int] = field(default_factory=dict)
    """With all sinks: events each receiver counted (``cef_syslog``, ``webhook``)."""
    forwarded_seconds: dict[str, float] = field(default_factory=dict)
    """With all sinks: when each receiver had every event (from the first connection attempt)."""
    receivers_cpu_seconds: float | None = None
    """The receivers' CPU during ``delivered_seconds``."""
    load: LoadResult | None = None
    archived_before_stop: int = 0
    archived_after_stop: int = 0
    stop: StopResult | None = None
    verification: Verification | None = None
    error: str | None = None
    log_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.seconds is not None
            and self.load is not None
            and not self.load.broken
            and self.stop is not None
            and self.stop.exit_code == 0
            and not self.stop.killed
            and self.verification is not None
            and self.verification.ok
            and (self.sinks == "file" or self.delivered_seconds is not None)
            and not self.stop.left_behind
        )

    @property
    def label(self) -> str:
        """The transport, the sinks and the runtime variant (unless default); not the pacing."""
        return (
            self.transport
            + ("" if self.sinks == "file" else ", all sinks")
            + ("" if self.runtime == "default" else f", {self.runtime}")
        )


def _log_problems(daemon: Daemon) -> list[str]:
    """Log entries at warning level or above, and lines that are not JSON objects."""
    return [
        orjson.dumps(entry).decode()
        for entry in daemon.log_entries()
        if "raw" in entry or str(entry.get("level", "")).lower() in _PROBLEM_LEVELS
    ]


_PROBLEM_LEVELS = frozenset({"warning", "warn", "error", "critical", "exception", "fatal"})


async def _interruptible(run: Callable[[], Awaitable[LoadResult]]) -> LoadResult:
    """Run ``run``; on SIGTERM or SIGINT cancel it cleanly, then raise KeyboardInterrupt."""
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    interrupted = False
    result: LoadResult | None = None
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(*signals) as received:
                async for _ in received:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        result = await run()
        nursery.cancel_scope.cancel()
    if interrupted or result is None:
        raise KeyboardInterrupt
    return result


async def wait_for_receivers(
    receivers: Sequence[Receiver],
    expected: int,
    daemon: Daemon,
    stall_timeout: float,
    done_at: list[float | None],
) -> list[int]:
    """Poll until every receiver counted ``expected`` events, they stop growing, or the daemon
    dies; returns their counts. ``done_at[i]``: when receiver ``i`` had them all
    (``time.perf_counter``)."""
    last: list[int] = []
    changed = time.perf_counter()
    while True:
        counts = [receiver.counts()["events"] for receiver in receivers]
        now = time.perf_counter()
        if daemon.tree is not None:
            daemon.tree.sample()
        for index, count in enumerate(counts):
            if count >= expected and done_at[index] is None:
                done_at[index] = now
        if min(counts) >= expected or not daemon.alive():
            return counts
        if counts != last:
            last, changed = counts, now
        elif now - changed > stall_timeout:
            return counts
        await trio.sleep(POLL_SECONDS)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, or of each different exception in it if it is a group
    (trio's nurseries wrap what their tasks raise), with how many times it occurred."""

    def leaves(exc: BaseException) -> Iterator[str]:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                yield from leaves(inner)
        else:
            yield f"{type(exc).__name__}: {exc}"

    counted = Counter(leaves(exc))
    return "; ".join(text + (f" (x{n})" if n > 1 else "") for text, n in counted.items())


@dataclass(frozen=True)
class Load:
    """What the load generator sends, prepared once and not timed: the records (``lines``), each
    connection's frames and payload, and where each record is sent (its connection and index
    there, by agent and sequence) to pair what is archived with when it was due (paced runs)."""

    lines: Sequence[bytes]
    groups: list[list[bytes]]
    payloads: list[bytes]
    positions: dict[tuple[object, object], tuple[int, int]]

    @classmethod
    def prepare(cls, lines: Sequence[bytes], connections: int, protocol: str) -> Load:
        groups = framed_groups(lines, connections, protocol)
        positions: dict[tuple[object, object], tuple[int, int]] = {}
        for connection, group in enumerate(partition_groups(lines, connections)):
            for index, line in enumerate(group):
                record = orjson.loads(line)
                positions[(record["agentId"], record["sequence"])] = (connection, index)
        return cls(lines, groups, [b"".join(group) for group in groups], positions)

    @property
    def input_bytes(self) -> int:
        return sum(len(payload) for payload in self.payloads)


def run_end_to_end(
    transport: str,
    load: Load,
    run_dir: Path,
    options: Options,
    sinks: str = "file",
    runtime: Runtime = Runtime(),
    rate: float | None = None,
) -> EndToEnd:
    """One daemon start, timed load, stop and archive check, all inside ``run_dir`` (created).
    ``sinks``: ``file`` (the file sink alone) or ``all`` (also ``cef_syslog`` and ``webhook``,
    each to a receiver of its own, started here). ``runtime``: the daemon's ``[runtime]`` keys.
    ``rate``: send at this many events/s (else as fast as possible). Raises
    :class:`DaemonRefused` if the daemon exits before it is ready."""
    with contextlib.ExitStack() as stack:
        receivers: list[Receiver] = []
        if sinks == "all":
            receivers = [stack.enter_context(Receiver(kind)) for kind in ("syslog", "http")]
        return _run_end_to_end(transport, load, run_dir, options, receivers, runtime, rate)


def _run_end_to_end(
    transport: str,
    load: Load,
    run_dir: Path,
    options: Options,
    receivers: Sequence[Receiver],
    runtime: Runtime,
    rate: float | None,
) -> EndToEnd:
    lines = load.lines
    run_dir.mkdir()
    tls = write_certs(run_dir) if transport == "tls" else None
    port = free_port()
    forward_to = Forwarding(receivers[0].port, receivers[1].port) if receivers else None
    config, archive = write_config(
        run_dir, port, tls, options.log_level, options.protocol, forward_to, runtime
    )
    result = EndToEnd(
        transport,
        run_dir.name,
        len(lines),
        load.input_bytes,
        sinks="all" if receivers else "file",
        runtime=str(runtime),
        paced_rate=rate,
    )
    pace = None if rate is None else Pacing.of(rate, load.groups)
    counter = ArchiveCounter(archive)
    context = (
        None
        if tls is None
        else client_ssl_context(str(tls.ca), str(tls.client_cert), str(tls.client_key))
    )
    with Daemon(options.executable, config, run_dir / "daemon.log") as daemon:
        try:
            result.ready_seconds = daemon.start(READY_TIMEOUT)
            finished: list[float] = []
            cpu: list[float | None] = []
            delivered: list[tuple[float, float | None, float, list[int]]] = []
            done_at: list[float | None] = [None] * len(receivers)

            async def drive() -> LoadResult:
                archived = trio.Event()

                async def follow() -> None:
                    result.archived_before_stop = await wait_for_archive(
                        counter, len(lines), daemon, options.stall_timeout
                    )
                    finished.append(time.perf_counter())
                    cpu.append(daemon.cpu_seconds())
                    result.bench_cpu_seconds = time.process_time() - bench_cpu
                    archived.set()

                async def hold() -> None:
                    await archived.wait()
                    if receivers and result.archived_before_stop >= len(lines):
                        counts = await wait_for_receivers(
                            receivers, len(lines), daemon, options.stall_timeout, done_at
                        )
                        at, daemon_cpu = time.perf_counter(), daemon.cpu_seconds()
                        receivers_then = sum(receiver.cpu_seconds() for receiver in receivers)
                        delivered.append((at, daemon_cpu, receivers_then, counts))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow)
                    return await send_payloads(
                        "127.0.0.1", port, load.payloads, ssl_context=context, hold=hold, pace=pace
                    )

            receivers_cpu = sum(receiver.cpu_seconds() for receiver in receivers)
            cpu.append(daemon.cpu_seconds())
            bench_cpu = time.process_time()
            start = time.perf_counter()
            result.load = trio.run(_interruptible, drive)
            if result.archived_before_stop < len(lines):
                result.error = (
                    "daemon died during the run"
                    if not daemon.alive()
                    else f"archive stuck at {result.archived_before_stop} of {len(lines)} "
                    f"lines for {options.stall_timeout} s"
                )
            else:
                result.seconds = finished[0] - start
                if cpu[0] is not None and cpu[-1] is not None:
                    result.timed_cpu_seconds = cpu[-1] - cpu[0]
            if delivered:
                at, cpu_then, receivers_then, counts = delivered[0]
                result.forwarded = dict(zip(("cef_syslog", "webhook"), counts, strict=True))
                result.forwarded_seconds = {
                    sink: at - start
                    for sink, at in zip(("cef_syslog", "webhook"), done_at, strict=True)
                    if at is not None
                }
                if min(counts) < len(lines):
                    result.error = (
                        f"receivers stuck at {counts} of {len(lines)} events "
                        f"for {options.stall_timeout} s"
                    )
                else:
                    result.delivered_seconds = at - start
                    result.receivers_cpu_seconds = receivers_then - receivers_cpu
                    if cpu[0] is not None and cpu_then is not None:
                        result.delivered_cpu_seconds = cpu_then - cpu[0]
        except DaemonRefused as exc:
            raise DaemonRefused(f"{exc} ([runtime] {runtime})") from None
        except BenchError as exc:
            result.error = str(exc)
        except Exception as exc:  # a broken connection, typically: report it, keep going
            result.error = _describe(exc)
        finally:
            if daemon.alive():
                result.peak_rss_bytes = daemon.peak_rss_bytes()
            if daemon.tree is not None:
                result.tree_rss_bytes = daemon.tree.peak_rss_bytes or None
                result.tree_processes = daemon.tree.peak_processes
                result.processes_seen = len(daemon.tree.seen)
            if daemon.started:
                result.stop = daemon.stop(SHUTDOWN_TIMEOUT + KILL_MARGIN)
            result.log_problems = _log_problems(daemon)
    result.archived_after_stop = counter.count()
    if archive.is_dir():
        result.verification = verify_archive(archive, lines)
        paced_from = result.load.paced_from if result.load is not None else None

        def due(agent: object, sequence: object) -> float | None:
            position = load.positions.get((agent, sequence))
            if pace is None or paced_from is None or position is None:
                return None
            return paced_from + pace.due(*position)

        result.latency = measure_latency(counter, due)
    return result


@dataclass(frozen=True)
class Limit:
    name: str
    seconds: float
    """Best of the repetitions."""
    cpu_seconds: float
    """Best CPU time (``time.process_time``) of the repetitions: less sensitive to noise."""
    all_seconds: list[float]


def measure_limits(
    lines: Sequence[bytes],
    work: Path,
    repeats: int,
    times: dict[str, list[tuple[float, float]]],
    protocol: str = "json",
) -> None:
    """Run both limit loops ``repeats`` times, alternating (so both see the same conditions),
    appending the (wall, CPU) seconds of each pass to ``times[name]``."""
    out = work / "limit.jsonl"
    passes: dict[str, Callable[[bytes, Path], tuple[float, float]]]
    if protocol == "json":
        data = b"".join(lines)
        passes = {"limit": limit_pass, "limit+chain": limit_chain_pass}
    else:
        data = octet_counted(syslog_messages(lines, "rfc5424"))
        passes = {"limit": limit_syslog_pass, "limit+chain": limit_syslog_chain_pass}
    for _ in range(repeats):
        for name, run in passes.items():
            times.setdefault(name, []).append(run(data, out))
            out.unlink()


# --------------------------------------------------------------------------------------- report


COLUMNS = (
    ("events/s", 10),
    ("MB/s", 7),
    ("ratio", 6),
    ("CPU us/ev", 9),
    ("cores", 5),
    ("RSS MiB", 7),
    ("p50 ms", 7),
    ("p99 ms", 7),
)


def _row(
    stage: str,
    width: int,
    events: int,
    input_bytes: int,
    seconds: float | None,
    cpu_seconds: float | None,
    base: float,
    run: EndToEnd | None = None,
) -> str:
    """One line of the table; ``run``: the end-to-end run the row shows (its cores busy, peak
    RSS of the process tree and ingest-to-archive latency), None for a limit. A paced run has
    no ratio: its rate was chosen, not reached."""
    cells: list[str] = []
    timed = seconds is not None and seconds > 0
    if seconds is not None and timed:
        rate = events / seconds
        paced = run is not None and run.paced_rate is not None
        cells += [
            f"{rate:,.0f}",
            f"{input_bytes / seconds / 1e6:.1f}",
            "-" if paced else f"{rate / base:.2f}",
        ]
    else:
        cells += ["-", "-", "-"]
    cells.append(f"{cpu_seconds / events * 1e6:.1f}" if cpu_seconds else "-")
    if run is not None and seconds is not None and timed and cpu_seconds:
        cells.append(f"{cpu_seconds / seconds:.2f}")
    else:
        cells.append("-")
    rss = run.tree_rss_bytes if run is not None else None
    cells.append(f"{rss / 2**20:.0f}" if rss else "-")
    ingest = run.latency.ingest if run is not None and run.latency is not None else None
    cells += [f"{ingest.p50:.0f}", f"{ingest.p99:.0f}"] if ingest else ["-", "-"]
    return f"{stage:<{width}}" + "".join(
        f" {cell:>{size}}" for cell, (_, size) in zip(cells, COLUMNS, strict=True)
    )


def _best(runs: Sequence[EndToEnd], key: Callable[[EndToEnd], float | None]) -> EndToEnd | None:
    """The run with the least ``key`` among those that have one."""
    keyed = [(value, index) for index, run in enumerate(runs) if (value := key(run)) is not None]
    return runs[min(keyed)[1]] if keyed else None


def _p99(run: EndToEnd) -> float | None:
    if run.seconds is None or run.latency is None or run.latency.ingest is None:
        return None
    return run.latency.ingest.p99


def report(
    args: argparse.Namespace,
    events: int,
    input_bytes: int,
    limits: Sequence[Limit],
    runs: Sequence[EndToEnd],
) -> str:
    base = events / limits[0].seconds
    labels = {
        "limit": "python limit, 1 core (parse+envelope+write)"
        if args.protocol == "json"
        else "python limit, 1 core (syslog+parse+env+write)",
        "limit+chain": "  same + chain verification, 1 core",
    }
    rows: list[tuple[str, float | None, float | None, EndToEnd | None]] = [
        (labels[limit.name], limit.seconds, limit.cpu_seconds, None) for limit in limits
    ]
    for label in dict.fromkeys(run.label for run in runs):
        full = [run for run in runs if run.label == label and run.paced_rate is None]
        best = _best(full, lambda run: run.seconds)
        rows.append(
            (
                f"end-to-end {label}",
                best.seconds if best else None,
                best.timed_cpu_seconds if best else None,
                best,
            )
        )
        forwarded = _best(full, lambda run: run.delivered_seconds)
        if forwarded is not None:
            rows.append(
                (
                    "  every event forwarded too",
                    forwarded.delivered_seconds,
                    forwarded.delivered_cpu_seconds,
                    None,
                )
            )
        paced = [run for run in runs if run.label == label and run.paced_rate is not None]
        if paced:
            best = _best(paced, _p99)
            rows.append(
                (
                    f"  paced at {args.paced:.0%} of its events/s",
                    best.seconds if best else None,
                    best.timed_cpu_seconds if best else None,
                    best,
                )
            )
    width = max(44, *(len(row[0]) for row in rows))
    out = [
        f"shipper bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}"
        f", {os.cpu_count()} CPUs",
        f"{events} events ({input_bytes / events:.0f} B average, {input_bytes / 1e6:.1f} MB), "
        f"{args.agents} agents, {args.connections} connections, protocol {args.protocol}",
        "",
        f"{'stage':<{width}}" + "".join(f" {name:>{size}}" for name, size in COLUMNS),
    ]
    for stage, seconds, cpu_seconds, run in rows:
        out.append(_row(stage, width, events, input_bytes, seconds, cpu_seconds, base, run))
    out += [
        "",
        "ratio = events/s divided by the python limit's (first row). Each full-speed row is its"
        " best (fastest) run, each paced row its run with the least p99.",
        "CPU us/ev = CPU time per event: of the limit loop (best pass), of the daemon's whole"
        " process tree while timed (end-to-end); cores = that CPU time / the row's wall time.",
        "RSS MiB = the peak of the process tree's summed resident memory, sampled every"
        f" {POLL_SECONDS * 1e3:.0f} ms while timed.",
        "p50/p99 ms = ingest-to-archive latency: the envelope's received_at to when the bench saw"
        " the line in the archive (polled every"
        f" {POLL_SECONDS * 1e3:.0f} ms); paced rows send at the given fraction of the full-speed"
        " run's events/s.",
    ]
    for limit in limits:
        spread = ", ".join(f"{t:.3f}" for t in limit.all_seconds)
        out.append(f"{limit.name}: best of {len(limit.all_seconds)} passes ({spread} s)")
    for run in runs:
        out.append("")
        pacing = "" if run.paced_rate is None else f", paced at {run.paced_rate:,.0f} events/s"
        out.append(f"[{run.label}, {run.name}{pacing}] {'ok' if run.ok else 'PROBLEM'}")
        if run.runtime != "default":
            out.append(f"  [runtime] {run.runtime}")
        if run.error:
            out.append(f"  error: {run.error}")
        if run.ready_seconds:
            out.append(f"  ready after {run.ready_seconds:.2f} s")
        if run.load is not None:
            out.append(
                f"  {run.load.connections} connections up at {run.load.connected_at:.3f} s, "
                f"all sent at {run.load.sent_at:.3f} s, archive complete at "
                + (f"{run.seconds:.3f} s" if run.seconds is not None else "never")
                + (
                    f" ({run.events / run.seconds:,.0f} events/s)"
                    if run.seconds is not None
                    else ""
                )
            )
            if run.load.broken:
                out.append(
                    f"  {len(run.load.broken)} connections broken by the server, first: "
                    f"{run.load.broken[0]}"
                )
        out.append(
            f"  archived {run.archived_before_stop} lines before SIGTERM, "
            f"{run.archived_after_stop} after"
        )
        if run.seconds is not None and run.timed_cpu_seconds is not None:
            out.append(
                f"  daemon's process tree CPU while timed: {run.timed_cpu_seconds:.2f} s, "
                f"{run.timed_cpu_seconds / run.events * 1e6:.1f} us/event, "
                f"{run.timed_cpu_seconds / run.seconds:.2f} cores busy on average"
                + (
                    f"; the bench's own process {run.bench_cpu_seconds / run.seconds:.2f} cores"
                    if run.bench_cpu_seconds is not None
                    else ""
                )
            )
        if run.latency is not None:
            latency = run.latency
            out.append(
                f"  latency over {latency.events} records: ingest-to-archive "
                + (str(latency.ingest) if latency.ingest else "-")
                + (f"; send-to-archive {latency.send}" if latency.send else "")
            )
        if run.forwarded:
            counted = ", ".join(
                f"{sink} {count}"
                + (
                    f" (all at {run.forwarded_seconds[sink]:.3f} s)"
                    if sink in run.forwarded_seconds
                    else ""
                )
                for sink, count in run.forwarded.items()
            )
            out.append(f"  events the receivers counted: {counted}")
        if run.delivered_seconds is not None and run.delivered_cpu_seconds is not None:
            out.append(
                f"  every event forwarded at {run.delivered_seconds:.3f} s; daemon CPU until "
                f"then {run.delivered_cpu_seconds:.2f} s, "
                f"{run.delivered_cpu_seconds / run.events * 1e6:.1f} us/event, "
                f"{run.delivered_cpu_seconds / run.delivered_seconds:.2f} cores busy on average"
                + (
                    f"; receivers' CPU {run.receivers_cpu_seconds:.2f} s"
                    if run.receivers_cpu_seconds is not None
                    else ""
                )
            )
        if run.tree_rss_bytes is not None or run.peak_rss_bytes is not None:
            out.append(
                "  peak RSS: process tree "
                + (
                    f"{run.tree_rss_bytes / 2**20:.0f} MiB ({run.tree_processes} processes)"
                    if run.tree_rss_bytes
                    else "-"
                )
                + ", main process "
                + (f"{run.peak_rss_bytes / 2**20:.0f} MiB" if run.peak_rss_bytes else "-")
                + f"; {run.processes_seen} processes seen"
            )
        if run.stop is not None:
            stop = run.stop
            out.append(
                f"  SIGTERM to exit {stop.seconds:.2f} s, exit code {stop.exit_code}"
                + (" (KILLED: hung on SIGTERM)" if stop.killed else "")
                + f"; daemon CPU over its whole life {stop.cpu_seconds:.2f} s"
            )
            if stop.left_behind:
                out.append(
                    f"  LEFT BEHIND after the daemon exited, killed: {', '.join(stop.left_behind)}"
                )
        if run.verification is not None:
            out.append(f"  archive check: {run.verification.summary()}")
        if run.log_problems:
            out.append(f"  daemon logged {len(run.log_problems)} warnings or errors, first ones:")
            out.extend(f"    {entry[:300]}" for entry in run.log_problems[:5])
    return "\n".join(out)


def _to_json(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError


# --------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="End-to-end throughput of shipper vs the Python limit."
    )
    parser.add_argument("--events", type=int, help=f"default {DEFAULT_EVENTS}")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--transport", choices=("tcp", "tls", "both"), default="both")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="json",
        help="json: NDJSON to a json_tls source; syslog: octet-counted RFC 5424 to a syslog source",
    )
    parser.add_argument(
        "--sinks",
        choices=("file", "all", "both"),
        default="file",
        help="file: the file sink alone; all: also cef_syslog and webhook, each to a local "
        "receiver; both: a run of each per transport and round, in turns",
    )
    parser.add_argument(
        "--runtime",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="a variant of the daemon's [runtime] table ('default': none); repeat for more "
        "variants, run in turns; e.g. --runtime default --runtime sink_processes=true",
    )
    parser.add_argument(
        "--paced",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="after each full-speed run, one paced at this fraction of its events/s, for the "
        "latency at that load (0: none)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_EVENTS} events unless --events"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of (limit passes, one end-to-end run per transport); the best of each counts",
    )
    parser.add_argument(
        "--limit-repeats", type=int, default=3, help="passes of each limit loop per round"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="the daemon's [log] level (shipper_ready is logged at info)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="give up when the archive has not grown for this many seconds",
    )
    parser.add_argument("--shipper", type=Path, help="shipper executable (default: next to python)")
    parser.add_argument("--tmp-dir", type=Path, help="parent of the temporary work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: behave as on Ctrl-C (through trio's SIGINT handler while trio runs)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    executable = args.shipper or Path(sys.executable).parent / "shipper"
    if not executable.exists():
        print(f"shipper executable not found: {executable}", file=sys.stderr)
        return 2
    transports = ["tcp", "tls"] if args.transport == "both" else [args.transport]
    sink_sets = ["file", "all"] if args.sinks == "both" else [args.sinks]
    try:
        runtimes = list(dict.fromkeys(Runtime.parse(spec) for spec in args.runtime or ["default"]))
    except ValueError as exc:
        print(f"--runtime: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.paced < 1:
        print("--paced: a fraction from 0 (no paced runs) to below 1", file=sys.stderr)
        return 2
    variants = [(runtime, sinks) for runtime in runtimes for sinks in sink_sets]
    options = Options(executable, args.log_level, args.stall_timeout, args.protocol)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    work = Path(tempfile.mkdtemp(prefix="shipper-bench-", dir=args.tmp_dir))
    try:
        print(f"generating {events} events for {args.agents} agents...", file=sys.stderr)
        lines = generate_lines(events, args.agents, args.seed)
        load = Load.prepare(lines, args.connections, args.protocol)
        input_bytes = load.input_bytes
        limit_times: dict[str, list[tuple[float, float]]] = {}
        runs: list[EndToEnd] = []
        for round_ in range(1, args.repeat + 1):
            print(f"round {round_}: measuring the python limit...", file=sys.stderr)
            measure_limits(lines, work, args.limit_repeats, limit_times, args.protocol)
            for transport in transports:
                for runtime, sinks in variants if round_ % 2 else reversed(variants):
                    number = runtimes.index(runtime) + 1
                    print(
                        f"round {round_}: end-to-end over {transport}, sinks {sinks}, "
                        f"runtime {runtime}...",
                        file=sys.stderr,
                    )
                    name = f"{transport}-{sinks}-r{number}-{round_}"
                    run = run_end_to_end(transport, load, work / name, options, sinks, runtime)
                    runs.append(run)
                    if not args.keep:
                        shutil.rmtree(work / name, ignore_errors=True)
                    if not args.paced or run.seconds is None:
                        continue
                    rate = args.paced * events / run.seconds
                    print(
                        f"round {round_}: the same, paced at {rate:,.0f} events/s...",
                        file=sys.stderr,
                    )
                    name += "-paced"
                    runs.append(
                        run_end_to_end(transport, load, work / name, options, sinks, runtime, rate)
                    )
                    if not args.keep:
                        shutil.rmtree(work / name, ignore_errors=True)
        limits = [
            Limit(name, min(w for w, _ in spent), min(c for _, c in spent), [w for w, _ in spent])
            for name, spent in limit_times.items()
        ]
        print(report(args, events, input_bytes, limits, runs))
        if args.json is not None:
            results = {
                "date": datetime.now(UTC).isoformat(),
                "events": events,
                "input_bytes": input_bytes,
                "agents": args.agents,
                "connections": args.connections,
                "protocol": args.protocol,
                "runtimes": [str(runtime) for runtime in runtimes],
                "paced": args.paced,
                "limits": [asdict(limit) for limit in limits],
                "runs": [asdict(run) for run in runs],
            }
            args.json.write_bytes(
                orjson.dumps(results, default=_to_json, option=orjson.OPT_INDENT_2)
            )
        return 0 if all(run.ok for run in runs) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
