"""Sinks in processes of their own (``[runtime] sink_processes = true``).

The daemon starts one child process per sink (``python -m shipper.sinkproc``) and supervises it
(``SinkProcess``)::

    daemon (writer, WAL) ──── spec (stdin) ────► sink process: WalReader(cursor) ─► SinkDriver
          ▲                                          │
          └──── emitted events, reports (stdout) ◄───┘

The child needs nothing of the daemon but the WAL's files: it parses the same config again
(``Config.parsed``), builds its sink and a ``SinkDriver`` as the daemon would, and reads the WAL
from its sink's cursor through a ``WalReader`` (woken across processes, ``shipper.buffer.wake``). It
acknowledges through the cursor file, as any reader does; the writer deletes what every reader
has passed. When the WAL is closed and read (the daemon is stopping), the driver delivers what is
left and the child exits with status 0.

The pipes carry frames: a 4-byte big-endian length, then a pickle (between two processes of the
same installation, never from anywhere else).

* Daemon to child, on stdin: one ``Spec``. Stdin then stays open: its end (the daemon is gone)
  makes the child stop at once, acknowledging nothing it did not deliver.
* Child to daemon, on stdout: ``("emit", Event)`` for each event the sink raises (delivery
  alerts, archive seals), which the daemon queues for the WAL as it does for a sink in its own
  process (``Topology.emit``); and ``("report", counters, health)`` with the driver's counters
  (``SINK_COUNTERS`` and the sink's own) and health, every ``REPORT_SECONDS`` while they change and
  once more before exiting. The daemon adds the counters to what earlier children of the same
  sink counted, so ``sink_*`` metrics read as if the sink ran in the daemon.

The child's log entries go to its stderr, a pipe the daemon reads: each entry is written to the
daemon's own log stream as it is (a line that is not an entry, such as a crash's traceback, is
logged as ``sink_process_output``). Its stdout is kept for frames only. It ignores SIGTERM and
SIGINT (sent to the whole process group or cgroup at a stop): it stops when the WAL is closed, or
when the daemon is gone.

Supervision: a child that exits before the WAL is closed and read (killed, crashed) is logged
(``sink_process_exited``), counted (``sink_process_restarts``) and started again after a capped
backoff (``RESTART_FIRST`` to ``RESTART_LIMIT`` seconds, from the first again once a child ran
longer than ``RESTART_LIMIT``); it resumes from its cursor, and the sink's ``resume_point`` leaves
out what the destination took before the crash. Ingest and the other sinks go on meanwhile. If the
daemon is cancelled (a forced shutdown), the child is killed: what it did not acknowledge waits
in the WAL for the next start.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from shipper.events import Event, envelopes
from shipper.logging import configure, get_logger, write_entry
from shipper.metrics import Health, Registry
from shipper.retry import Backoff
from shipper.sinks.base import SinkContext
from shipper.sinks.driver import SinkDriver

log = get_logger("shipper.sinkproc")

#: How often a child reports its counters and health (when they changed).
REPORT_SECONDS = 0.2
#: A dead child is started again after a pause from this many seconds, doubling...
RESTART_FIRST = 0.5
#: ... up to this many.
RESTART_LIMIT = 30.0
#: Events a child's sink raised that may wait to be sent to the daemon.
EMIT_QUEUE = 10_000
#: Exit status of a child that stopped because the daemon is gone (its stdin ended).
ORPHANED = 3
_LENGTH = struct.Struct(">I")
#: What the daemon counts about its sink processes (``sink_process_<name>``, by sink).
PROCESS_COUNTERS: dict[str, str] = {
    "restarts": "Sink processes started again after one exited before the WAL was closed",
}


@dataclass(frozen=True)
class Spec:
    """What a sink process is given: the config as it was parsed from (``raw``, ``env``,
    ``origin``), the sink's id, the modules that register the config's source and sink types
    (a type registered outside ``shipper``, as tests do), the WAL's epoch and the log level."""

    raw: Mapping[str, Any]
    env: Mapping[str, str] | None
    origin: str
    sink: str
    modules: tuple[str, ...]
    epoch: str
    log_level: str


def frame(message: object) -> bytes:
    """One message as a frame: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


#: The largest frame a reader takes (a report or an event is a few KiB): a larger length is a
#: broken stream, not a frame to wait for.
MAX_FRAME = 16 * 1024 * 1024
#: The longest line of a child's stderr kept whole; the rest of a longer one is dropped.
MAX_LINE = 64 * 1024


class Frames:
    """Reads frames from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int = MAX_FRAME) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._limit = limit

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            data = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not data:
                return False
            self._buffer += data
        return True

    async def next(self) -> Any:
        """The next message; None at the end of the stream (a torn last frame included)."""
        if not await self._fill(_LENGTH.size):
            return None
        (size,) = _LENGTH.unpack_from(self._buffer)
        if size > self._limit:  # not a frame of ours: never buffer a stream's worth for it
            raise ValueError(f"a frame of {size} bytes announced (at most {self._limit})")
        if not await self._fill(_LENGTH.size + size):
            return None
        data = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
        del self._buffer[: _LENGTH.size + size]
        return pickle.loads(data)


# --- the daemon's side ----------------------------------------------------------------------------


class SinkProcess:
    """Runs one sink in a child process and supervises it (see the module docstring).

    ``driver``: the sink's driver as the daemon built it; it never runs here, but its counters
    are the sink's metrics in the daemon's registry, kept up to date from the child's reports.
    ``emit``: where the child's events go (``Topology.emit``). ``exited``: called after each child
    exits (the daemon reads the cursors again then)."""

    def __init__(
        self,
        driver: SinkDriver,
        spec: Spec,
        emit: Callable[[Event], bool],
        exited: Callable[[], Awaitable[None]],
    ) -> None:
        self.driver = driver
        self.id = driver.id
        self.spec = spec
        self._emit = emit
        self._exited = exited
        self.pid: int | None = None
        self.restarts = 0
        self.started = trio.Event()  # set at each start (tests wait for a restart with it)
        self._base: dict[str, int] = driver.counters.as_dict()
        self._health = Health("degraded", "sink process not started yet", time.monotonic())

    def register_metrics(self, registry: Registry) -> None:
        """The sink's counters (the driver's), its health as the child reports it, and the
        restarts of its process."""
        self.driver.register_metrics(registry)
        registry.health(f"sink.{self.id}", self.health)
        restarts = registry.counter(
            "sink_process_restarts", PROCESS_COUNTERS["restarts"], labels=("sink",)
        ).labels(self.id)

        def collect() -> None:
            restarts.value = self.restarts

        registry.collector(collect)

    def health(self) -> Health:
        return self._health

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the sink's process until it delivered what the WAL holds and the WAL is closed,
        starting it again each time it exits before that."""
        task_status.started()
        backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
        while True:
            began = time.monotonic()
            returncode, reason = await self._run_once()
            await self._exited()
            if returncode == 0:
                return
            if time.monotonic() - began > RESTART_LIMIT:
                backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
            delay = backoff.next()
            self.restarts += 1
            self._health = Health("failing", f"sink process {reason}", time.monotonic())
            log.error(
                "sink_process_exited",
                sink=self.id,
                pid=self.pid,
                returncode=returncode,
                reason=reason,
                restart_in=round(delay, 3),
                restarts=self.restarts,
            )
            await trio.sleep(delay)

    async def _run_once(self) -> tuple[int | None, str]:
        """Start one child, relay its frames until it closes its stdout; its exit status and
        what it means (None: it could not be started). Kills it if cancelled."""
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "shipper.sinkproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:  # out of processes or memory: try again later
            return None, f"could not be started: {exc}"
        try:
            self.pid = process.pid
            self._base = self.driver.counters.as_dict()
            log.info("sink_process_started", sink=self.id, pid=process.pid)
            self.started.set()
            self.started = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay_logs, process.stderr)
                await self._talk(process)
            returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        await stream.aclose()
        if returncode < 0 and -returncode in signal.Signals._value2member_map_:
            return returncode, f"killed by {signal.Signals(-returncode).name}"
        return returncode, f"exit status {returncode}"

    async def _talk(self, process: trio.Process) -> None:
        """Send the spec, then take the child's frames until it closes its stdout."""
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            await process.stdin.send_all(frame(self.spec))
            frames = Frames(process.stdout)
            while (message := await frames.next()) is not None:
                self._take(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is gone: its exit status says how
        except Exception as exc:  # a frame that does not unpickle: a defect, the child's or ours
            log.exception(
                "sink_process_protocol_error", sink=self.id, pid=self.pid, error=repr(exc)
            )
            process.kill()

    async def _relay_logs(self, stderr: trio.abc.ReceiveStream | None) -> None:
        """The child's log entries, into the daemon's log stream (one stream for journald and
        for whoever reads the logs); a line that is not an entry (a crash's traceback) is
        logged as ``sink_process_output``."""
        assert stderr is not None
        pending = bytearray()
        overlong = False  # the rest of a line longer than MAX_LINE, until its end, is dropped
        while data := await stderr.receive_some(65536):
            start = 0
            while (end := data.find(b"\n", start)) >= 0:
                if not overlong:
                    pending += data[start:end]
                    self._relay_line(bytes(pending[:MAX_LINE]))
                pending.clear()
                overlong = False
                start = end + 1
            if not overlong:
                pending += data[start:]
                if len(pending) > MAX_LINE:
                    self._relay_line(bytes(pending[:MAX_LINE]))
                    pending.clear()
                    overlong = True
        if pending:
            self._relay_line(bytes(pending))

    def _relay_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            write_entry(line.decode(errors="replace"))
        else:
            log.error(
                "sink_process_output",
                sink=self.id,
                pid=self.pid,
                line=line[:2000].decode(errors="replace"),
            )

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "emit":
            self._emit(message[1])
        elif kind == "report":
            counts: dict[str, int] = message[1]
            self.driver.counters.restore(
                {key: self._base.get(key, 0) + count for key, count in counts.items()}
            )
            self._health = Health(**message[2])


def spec_of(config: Any, sink: str, epoch: str) -> Spec:
    """The spec of ``sink``'s process, for ``config`` (a ``shipper.config.Config``)."""
    if config.parsed is None:
        raise ValueError("sink processes need a config made by parse_config (a defect)")
    modules = {type(part).__module__ for part in (*config.sources.values(), *config.sinks.values())}
    return Spec(
        raw=config.parsed.raw,
        env=config.parsed.env,
        origin=config.origin,
        sink=sink,
        modules=tuple(sorted(modules)),
        epoch=epoch,
        log_level=config.log_level,
    )


# --- the child's side -----------------------------------------------------------------------------


class _Outbox:
    """The child's frames to the daemon, queued without blocking the sink."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](EMIT_QUEUE)
        self.dropped = 0

    def emit(self, event: Event) -> bool:
        try:
            self.send.send_nowait(frame(("emit", event)))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1
            log.warning("emitted_event_dropped", dropped=self.dropped, where="sink process")
            return False
        return True


async def _child(spec: Spec, stdin: trio.abc.ReceiveStream, out: trio.abc.SendStream) -> int:
    """Run the sink of ``spec`` to the end of the WAL; the exit status."""
    from shipper.buffer.reader import WalReader
    from shipper.config import parse_config

    for module in spec.modules:
        importlib.import_module(module)
    config = parse_config(spec.raw, spec.env, spec.origin)
    sink = config.sinks[spec.sink]
    outbox = _Outbox()
    context = SinkContext(config.chain.profile_fields, outbox.emit)
    driver = SinkDriver(sink.build(context), config.data_dir, outbox.emit, sink.redact)
    inputs = frozenset(sink.inputs) if sink.inputs is not None else None
    reader = WalReader(config.data_dir / "wal", sink.id, inputs, envelopes=envelopes)
    orphaned = False

    def report() -> bytes:
        return frame(("report", driver.counters.as_dict(), driver.health().as_dict()))

    async def forward() -> None:
        async with outbox.receive:
            async for data in outbox.receive:
                await out.send_all(data)

    async def reports() -> None:
        last = b""
        while True:
            await trio.sleep(REPORT_SECONDS)
            now = report()
            if now != last:
                last = now
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    outbox.send.send_nowait(now)  # full: the next report says it all

    async def watch_daemon(cancel: trio.CancelScope) -> None:
        nonlocal orphaned
        while await stdin.receive_some(4096):
            pass
        orphaned = True
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            async with trio.open_nursery() as work:
                work.start_soon(watch_daemon, work.cancel_scope)
                work.start_soon(reports)
                await driver.run(reader, spec.epoch)
                work.cancel_scope.cancel()
            if not orphaned:
                await outbox.send.send(report())
            outbox.send.close()
    finally:
        reader.close()
    return ORPHANED if orphaned else 0


async def _child_main() -> int:
    # Frames only on the real stdout; anything else printed goes to stderr with the logs.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    out = trio.lowlevel.FdStream(out_fd)
    spec = await Frames(stdin).next()
    if spec is None:
        return ORPHANED  # the daemon was gone before it sent the spec
    assert isinstance(spec, Spec), type(spec)
    configure(spec.log_level)
    async with out:
        return await _child(spec, stdin, out)


def main() -> None:
    """The sink process: ``python -m shipper.sinkproc`` (started by the daemon only)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(trio.run(_child_main))


if __name__ == "__main__":
    # As the module itself, not ``__main__``: the spec unpickles to its classes.
    from shipper.sinkproc import main as sink_process

    sink_process()
