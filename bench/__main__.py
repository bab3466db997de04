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

MB/s are input bytes (what was sent: the records with their newline, or the framed syslog
messages), in 10^6 bytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType

import orjson
import trio
import trustme

from bench.events import generate_lines, octet_counted, syslog_messages
from bench.loadgen import PROTOCOLS, LoadResult, client_ssl_context, payloads, send_payloads
from bench.receivers import Receiver
from bench.syslog import RFC5424_LIMIT
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


def write_config(
    run_dir: Path,
    port: int,
    tls: TlsFiles | None,
    log_level: str,
    protocol: str = "json",
    forward_to: Forwarding | None = None,
) -> tuple[Path, Path]:
    """Write ``shipper.toml`` into ``run_dir``; return (config path, archive directory).

    The source is ``json_tls`` for ``protocol`` ``json``, else ``syslog`` in mode ``tcp`` or
    ``tls``. With ``forward_to``, a ``cef_syslog`` sink (TCP, octet counting) and a signed
    ``webhook`` sink (default batching) besides the file sink."""
    archive = run_dir / "archive"
    lines = [
        f"data_dir = {_toml_string(run_dir / 'var')}",
        f'shutdown_timeout = "{SHUTDOWN_TIMEOUT:.0f}s"',
        "",
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


def _tree_cpu(root: int) -> float | None:
    """User + system CPU seconds of process ``root`` and its live descendants (Linux /proc).

    Each process's own figure includes its threads and its children that it has waited for.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17).
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(value) for value in fields[11:15]) / ticks
    if root not in cpu:
        return None
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(cpu[pid] for pid in tree)


@dataclass(frozen=True)
class StopResult:
    exit_code: int
    seconds: float
    killed: bool
    cpu_seconds: float
    """User + system CPU of the daemon (and its waited-for children) over its whole life."""


class Daemon:
    """``shipper run -c CONFIG`` as a child process; stderr and stdout go to ``log_path``.

    As a context manager it guarantees the process is gone on exit (SIGTERM, then SIGKILL).
    """

    def __init__(self, executable: Path, config: Path, log_path: Path) -> None:
        self._argv = [str(executable.absolute()), "run", "-c", str(config.absolute())]
        self._cwd = config.parent
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._cpu_before = 0.0

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
                # Not in our process group: Ctrl-C reaches only us, and we stop it our way.
                start_new_session=True,
            )
        deadline = start + ready_timeout
        while True:
            if any(entry.get("event") == "shipper_ready" for entry in self.log_entries()):
                return time.perf_counter() - start
            code = self._process.poll()
            if code is not None:
                raise BenchError(f"shipper exited with {code} before ready:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"shipper not ready after {ready_timeout} s:\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)

    @property
    def started(self) -> bool:
        return self._process is not None

    def cpu_seconds(self) -> float | None:
        """CPU used so far by the daemon and its live descendants; None where /proc is missing."""
        if self._process is None or self._process.poll() is not None:
            return None
        return _tree_cpu(self._process.pid)

    def peak_rss_bytes(self) -> int | None:
        """The daemon process's peak resident set size (VmHWM); None where /proc is missing."""
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
        return StopResult(
            exit_code=self._process.returncode,
            seconds=time.perf_counter() - start,
            killed=killed,
            cpu_seconds=_children_cpu() - self._cpu_before,
        )

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

    Files are tracked by inode, so a renamed file is not counted twice.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: dict[tuple[int, int], tuple[int, int]] = {}  # (dev, ino) -> (offset, lines)

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
            file.seek(offset)
            while chunk := file.read(4 << 20):
                lines += chunk.count(b"\n")
                offset += len(chunk)
            self._seen[key] = (offset, lines)


async def wait_for_archive(
    counter: ArchiveCounter, expected: int, daemon: Daemon, stall_timeout: float
) -> int:
    """Poll until the archive holds ``expected`` lines, stops growing, or the daemon dies."""
    last = -1
    changed = time.perf_counter()
    while True:
        count = counter.count()
        now = time.perf_counter()
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
    ready_seconds: float = 0.0
    seconds: float | None = None
    """First connection attempt until the archive held every event; None if it never did."""
    timed_cpu_seconds: float | None = None
    """CPU the daemon used during ``seconds`` (from /proc; None if unavailable)."""
    peak_rss_bytes: int | None = None
    """The daemon's peak resident memory, read just before SIGTERM."""
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
        )

    @property
    def label(self) -> str:
        return self.transport if self.sinks == "file" else f"{self.transport}, all sinks"


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


def run_end_to_end(
    transport: str,
    lines: Sequence[bytes],
    payloads: Sequence[bytes],
    run_dir: Path,
    options: Options,
    sinks: str = "file",
) -> EndToEnd:
    """One daemon start, timed load, stop and archive check, all inside ``run_dir`` (created).
    ``sinks``: ``file`` (the file sink alone) or ``all`` (also ``cef_syslog`` and ``webhook``,
    each to a receiver of its own, started here)."""
    with contextlib.ExitStack() as stack:
        receivers: list[Receiver] = []
        if sinks == "all":
            receivers = [stack.enter_context(Receiver(kind)) for kind in ("syslog", "http")]
        return _run_end_to_end(transport, lines, payloads, run_dir, options, receivers)


def _run_end_to_end(
    transport: str,
    lines: Sequence[bytes],
    payloads: Sequence[bytes],
    run_dir: Path,
    options: Options,
    receivers: Sequence[Receiver],
) -> EndToEnd:
    run_dir.mkdir()
    tls = write_certs(run_dir) if transport == "tls" else None
    port = free_port()
    forward_to = Forwarding(receivers[0].port, receivers[1].port) if receivers else None
    config, archive = write_config(
        run_dir, port, tls, options.log_level, options.protocol, forward_to
    )
    result = EndToEnd(
        transport,
        run_dir.name,
        len(lines),
        sum(len(p) for p in payloads),
        sinks="all" if receivers else "file",
    )
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

            async def hold() -> None:
                result.archived_before_stop = await wait_for_archive(
                    counter, len(lines), daemon, options.stall_timeout
                )
                finished.append(time.perf_counter())
                cpu.append(daemon.cpu_seconds())
                if receivers and result.archived_before_stop >= len(lines):
                    counts = await wait_for_receivers(
                        receivers, len(lines), daemon, options.stall_timeout, done_at
                    )
                    at, daemon_cpu = time.perf_counter(), daemon.cpu_seconds()
                    receivers_then = sum(receiver.cpu_seconds() for receiver in receivers)
                    delivered.append((at, daemon_cpu, receivers_then, counts))

            receivers_cpu = sum(receiver.cpu_seconds() for receiver in receivers)
            cpu.append(daemon.cpu_seconds())
            start = time.perf_counter()
            result.load = trio.run(
                _interruptible,
                partial(send_payloads, "127.0.0.1", port, payloads, ssl_context=context, hold=hold),
            )
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
        except BenchError as exc:
            result.error = str(exc)
        except Exception as exc:  # a broken connection, typically: report it, keep going
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if daemon.alive():
                result.peak_rss_bytes = daemon.peak_rss_bytes()
            if daemon.started:
                result.stop = daemon.stop(SHUTDOWN_TIMEOUT + KILL_MARGIN)
            result.log_problems = _log_problems(daemon)
    result.archived_after_stop = counter.count()
    if archive.is_dir():
        result.verification = verify_archive(archive, lines)
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


def _row(
    stage: str,
    events: int,
    input_bytes: int,
    seconds: float | None,
    cpu_seconds: float | None,
    base: float,
) -> str:
    cpu = f"{cpu_seconds / events * 1e6:>9.1f}" if cpu_seconds else f"{'-':>9}"
    if seconds is None or seconds <= 0:
        return f"{stage:<44} {'-':>10} {'-':>7} {'-':>6} {cpu}"
    rate = events / seconds
    return (
        f"{stage:<44} {rate:>10,.0f} {input_bytes / seconds / 1e6:>7.1f} {rate / base:>6.2f} {cpu}"
    )


def report(
    args: argparse.Namespace,
    events: int,
    input_bytes: int,
    limits: Sequence[Limit],
    runs: Sequence[EndToEnd],
) -> str:
    base = events / limits[0].seconds
    out = [
        f"shipper bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}"
        f", {os.cpu_count()} CPUs",
        f"{events} events ({input_bytes / events:.0f} B average, {input_bytes / 1e6:.1f} MB), "
        f"{args.agents} agents, {args.connections} connections, protocol {args.protocol}",
        "",
        f"{'stage':<44} {'events/s':>10} {'MB/s':>7} {'ratio':>6} {'CPU us/ev':>9}",
    ]
    labels = {
        "limit": "python limit, 1 core (parse+envelope+write)"
        if args.protocol == "json"
        else "python limit, 1 core (syslog+parse+env+write)",
        "limit+chain": "  same + chain verification, 1 core",
    }
    for limit in limits:
        out.append(
            _row(labels[limit.name], events, input_bytes, limit.seconds, limit.cpu_seconds, base)
        )
    for label in dict.fromkeys(run.label for run in runs):
        timed = [run for run in runs if run.label == label and run.seconds]
        best = min(timed, key=lambda run: run.seconds or 0.0) if timed else None
        out.append(
            _row(
                f"end-to-end {label}",
                events,
                input_bytes,
                best.seconds if best else None,
                best.timed_cpu_seconds if best else None,
                base,
            )
        )
        timed = [run for run in runs if run.label == label and run.delivered_seconds]
        if timed:
            best = min(timed, key=lambda run: run.delivered_seconds or 0.0)
            out.append(
                _row(
                    "  every event forwarded too",
                    events,
                    input_bytes,
                    best.delivered_seconds,
                    best.delivered_cpu_seconds,
                    base,
                )
            )
    out.append("")
    out.append(
        "ratio = events/s divided by the python limit's (first row); each row is its best run."
    )
    out.append(
        "CPU us/ev = CPU time per event: of the limit loop (best pass), of the daemon process"
        " tree while timed (end-to-end)."
    )
    for limit in limits:
        spread = ", ".join(f"{t:.3f}" for t in limit.all_seconds)
        out.append(f"{limit.name}: best of {len(limit.all_seconds)} passes ({spread} s)")
    for run in runs:
        out.append("")
        out.append(f"[{run.label}, {run.name}] {'ok' if run.ok else 'PROBLEM'}")
        if run.error:
            out.append(f"  error: {run.error}")
        if run.ready_seconds:
            out.append(f"  ready after {run.ready_seconds:.2f} s")
        if run.load is not None:
            out.append(
                f"  {run.load.connections} connections up at {run.load.connected_at:.3f} s, "
                f"all sent at {run.load.sent_at:.3f} s, archive complete at "
                + (f"{run.seconds:.3f} s" if run.seconds is not None else "never")
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
                f"  daemon CPU while timed: {run.timed_cpu_seconds:.2f} s, "
                f"{run.timed_cpu_seconds / run.events * 1e6:.1f} us/event, "
                f"{run.timed_cpu_seconds / run.seconds:.2f} cores busy on average"
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
        if run.peak_rss_bytes is not None:
            out.append(f"  daemon peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB")
        if run.stop is not None:
            stop = run.stop
            out.append(
                f"  SIGTERM to exit {stop.seconds:.2f} s, exit code {stop.exit_code}"
                + (" (KILLED: hung on SIGTERM)" if stop.killed else "")
                + f"; daemon CPU over its whole life {stop.cpu_seconds:.2f} s"
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
    options = Options(executable, args.log_level, args.stall_timeout, args.protocol)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    work = Path(tempfile.mkdtemp(prefix="shipper-bench-", dir=args.tmp_dir))
    try:
        print(f"generating {events} events for {args.agents} agents...", file=sys.stderr)
        lines = generate_lines(events, args.agents, args.seed)
        per_connection = payloads(lines, args.connections, args.protocol)
        input_bytes = sum(len(payload) for payload in per_connection)
        limit_times: dict[str, list[tuple[float, float]]] = {}
        runs: list[EndToEnd] = []
        for round_ in range(1, args.repeat + 1):
            print(f"round {round_}: measuring the python limit...", file=sys.stderr)
            measure_limits(lines, work, args.limit_repeats, limit_times, args.protocol)
            for transport in transports:
                for sinks in sink_sets if round_ % 2 else reversed(sink_sets):
                    print(
                        f"round {round_}: end-to-end over {transport}, sinks {sinks}...",
                        file=sys.stderr,
                    )
                    run_dir = work / f"{transport}-{sinks}-{round_}"
                    runs.append(
                        run_end_to_end(transport, lines, per_connection, run_dir, options, sinks)
                    )
                    if not args.keep:
                        shutil.rmtree(run_dir, ignore_errors=True)
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
