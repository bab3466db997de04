"""Child processes of the daemon: one protocol and one supervisor for every kind of child.

The daemon runs parts of itself in processes of their own: each sink (``shipper.sinkproc``) and
each ingest worker (``shipper.ingestproc``). A kind of child (``Kind``) is a module run as
``python -m <module>``, whose ``main`` calls ``child_main`` with the kind's work; the daemon runs
a ``Supervised`` per child::

    daemon ─── spec (stdin, then held open) ─────────────► child: work(spec, parent, registry)
       ▲ ◄──── frames: reports and the kind's own (stdout) ────┤
       └────── log entries, one JSON object a line (stderr) ◄──┘

Frames: a 4-byte big-endian length, then a pickle (between two processes of the same
installation, never from anywhere else); a length above ``MAX_FRAME`` is a broken stream.

* **stdin**, daemon to child: one frame, the spec (a picklable object with a ``log_level``; a
  ``ConfigSpec`` carries the config as it was parsed, for a child that parses it again). Stdin
  then stays open: its end means the daemon is gone. Later, ``("stop", *details)`` asks the
  child to finish its work early (``Supervised.stop``: a sink removed or changed by a reload,
  ingest workers at a stop); its work sees it as ``Parent.stopping``, and the ``details`` (what
  the kind's work needs to know of the stop: an ingest worker's kept sources) as
  ``Parent.stop_details``.
* **stdout**, child to daemon, frames only (whatever else the child prints goes to its stderr):
  ``("report", snapshot)``, the child's metrics and health (a ``shipper.metrics`` snapshot of the
  registry its work counts into), every ``REPORT_SECONDS`` while it changes and once more when the
  work is done; any other frame is a tuple whose first item names it, the kind's own (a sink
  process's ``("emit", event)``), awaited by the ``take`` of the daemon's ``Supervised``, which
  reads no more of the child's frames meanwhile (an ingest worker's batch waits for room in the
  ingest byte budget), so a child's writes wait in turn. A kind may name a serving frame
  (``Kind.serving``: an ingest worker's ``("serving",)``), which the child sends once it serves.
  A child queues at most ``FRAME_QUEUE`` frames (or the ``queue`` its ``child_main`` says):
  ``Parent.send`` waits for room, ``send_nowait`` refuses; reports wait their turn.
* **stderr**: the child's log entries, written to the daemon's log stream as they are (one stream
  for journald and whoever reads the logs); a line that is not an entry (a crash's traceback) is
  logged as ``<prefix>_output``. A line is kept up to ``MAX_LINE`` bytes.

Exit status: 0 once the work is done (the daemon does not start it again); ``ORPHANED`` (3) when
the daemon is gone, seen as the end of stdin, a broken stdout or a broken stderr (the child stops
its work at once, acknowledging nothing it did not finish, and silently: nobody reads its logs
any more); anything else is a failure (1 for an exception, its traceback on stderr). A child
ignores SIGTERM and SIGINT (a stop reaches the whole process group or cgroup): the daemon tells
it when to stop, through its work (a sink process stops once the WAL is closed and read).

Supervision (``Supervised.supervise``): a child that exits with any status but 0 is logged
(``<prefix>_exited``, with ``reason``: ``killed by SIGKILL``, ``exit status 1``, and
``restart_in``), counted (``<prefix>_restarts``) and started again after a capped backoff
(``RESTART_FIRST`` doubling to ``RESTART_LIMIT`` seconds, from the first again once a child ran
longer than ``RESTART_LIMIT``); its health reads failing until the new one reports (or, for a
kind with a serving frame, serves). One that was told to stop is not started again (an exit
other than 0 is logged all the same, with ``restart_in`` null). For a kind with a serving frame,
the daemon's start waits until the first child serves (or exits); restarts are not waited for.
Inherited file descriptors (an ingest worker's listening sockets) are passed at each start
(``pass_fds``). If the daemon is cancelled (a forced shutdown), the child is killed.

Metrics: the daemon's registry includes what each child reports (``Registry.include``). The
counters and histograms of a child that exited stay counted (``shipper.metrics.lasting``), and a
restarted child's are added to them, so they read as if one process had counted; its gauges and
health go with it. Health: the child's components as it reports them, and ``<component>.<name>``
(``sink.archive``, ``ingest_worker.0``), whose worst state wins: not started yet (degraded),
exited (failing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO, cast

import orjson
import trio

from shipper import heap
from shipper.logging import configure, get_logger, write_entry
from shipper.metrics import Health, Registry, lasting, merge
from shipper.retry import Backoff

if TYPE_CHECKING:
    from shipper.config import Config, SinkConfig, SourceConfig

log = get_logger("shipper.children")

#: How often a child reports its metrics and health (when they changed).
REPORT_SECONDS = 0.2
#: A child that exited is started again after a pause from this many seconds, doubling...
RESTART_FIRST = 0.5
#: ... up to this many.
RESTART_LIMIT = 30.0
#: Frames a child may queue for the daemon.
FRAME_QUEUE = 10_000
#: Exit status of a child that stopped because the daemon is gone.
ORPHANED = 3
#: The largest frame a reader takes (a report or an event is a few KiB): a larger length is a
#: broken stream, not a frame to wait for.
MAX_FRAME = 16 * 1024 * 1024
#: The longest line of a child's stderr kept whole; the rest of a longer one is dropped.
MAX_LINE = 64 * 1024
_LENGTH = struct.Struct(">I")


def frame(message: object) -> bytes:
    """One message as a frame: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Reads frames from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int = MAX_FRAME) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._limit = limit  # the largest frame taken (an ingest worker's are larger)

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            # a large frame's rest in one read, as far as the pipe holds it
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


@dataclass(frozen=True)
class ConfigSpec:
    """The daemon's config as a child gets it: as it was parsed from (``raw``, ``env``,
    ``origin``), with the config classes of its sources and sinks (pickled by name: the child
    imports their modules, and registers a type that was registered by hand, as tests do) and
    the log level; ``parse`` makes the same ``Config``."""

    raw: Mapping[str, Any]
    env: Mapping[str, str] | None
    origin: str
    types: tuple[type[SourceConfig | SinkConfig], ...]
    log_level: str

    @classmethod
    def of(cls, config: Config) -> ConfigSpec:
        if config.parsed is None:
            raise ValueError("child processes need a config made by parse_config (a defect)")
        types: list[type[SourceConfig | SinkConfig]] = [type(s) for s in config.sources.values()]
        types += [type(sink) for sink in config.sinks.values()]
        return cls(
            raw=config.parsed.raw,
            env=config.parsed.env,
            origin=config.origin,
            types=tuple(dict.fromkeys(types)),
            log_level=config.log_level,
        )

    def parse(self) -> Config:
        from shipper.config import SINK_TYPES, SOURCE_TYPES, SinkConfig, parse_config

        for kind in self.types:
            if issubclass(kind, SinkConfig):
                SINK_TYPES.register(kind)
            else:
                SOURCE_TYPES.register(kind)
        return parse_config(self.raw, self.env, self.origin)


@dataclass(frozen=True)
class Kind:
    """A kind of child: the ``module`` it runs (``python -m``), the ``prefix`` of its log events
    and metrics (``sink_process``: ``sink_process_exited``, ``sink_process_restarts``), the
    ``label`` that names one child in them (``sink``), and the help text of its restarts.

    ``component``: what names one child's health and process before its name (``sink.archive``,
    ``ingest_worker.0``; the label by default). ``serving``: the frame (``("serving",)``) a
    child of this kind sends once it serves: the daemon's start waits for it from the first
    child, and a child's health reads ok from then (None: the start does not wait, and the
    first report makes it ok). ``max_frame``: the largest frame the daemon takes from it."""

    module: str
    prefix: str
    label: str
    restarts_help: str
    component: str = ""
    serving: str | None = None
    max_frame: int = MAX_FRAME

    @property
    def what(self) -> str:
        """The kind in words, for health reasons (``sink process``)."""
        return self.prefix.replace("_", " ")

    @property
    def named(self) -> str:
        """What names one child's health and process before its name."""
        return self.component or self.label


# --- the daemon's side ----------------------------------------------------------------------------


class Supervised:
    """Runs one child of ``kind`` named ``name`` and supervises it (see the module docstring).

    ``take``: awaited with each of the child's own frames (not its reports, nor its serving
    frame); while it waits, the daemon reads no more of that child's frames. ``exited``: awaited
    after each child exits (a sink process's daemon reads the cursors again then)."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        take: Callable[[tuple[Any, ...]], Awaitable[None]],
        exited: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self._take_own = take
        self._exited = exited
        self.pid: int | None = None
        self.restarts = 0
        self.started = trio.Event()  # set at each start (tests wait for a restart with it)
        self._health = Health("degraded", f"{kind.what} not started yet", time.monotonic())
        self._ran: dict[str, Any] | None = None  # what the children that exited counted
        self._report: dict[str, Any] | None = None  # the running child's last report
        self._stopping = False
        self._stop_frame = frame(("stop",))
        self._stdin: trio.abc.SendStream | None = None  # the running child's
        self._wake = trio.Event()  # a stop during the pause before a restart
        self._serving: trio.TaskStatus[None] | None = None  # the start, until a child serves

    @property
    def _fields(self) -> dict[str, Any]:
        """What names this child in a log entry."""
        return {self.kind.label: self.name, "pid": self.pid}

    def register_metrics(self, registry: Registry) -> None:
        """The child's metrics and health as it reports them, its health as the daemon sees it
        (``<component>.<name>``), and ``<prefix>_restarts``."""
        registry.health(f"{self.kind.named}.{self.name}", self.health)
        restarts = registry.counter(
            f"{self.kind.prefix}_restarts", self.kind.restarts_help, labels=(self.kind.label,)
        ).labels(self.name)

        def collect() -> None:
            restarts.value = self.restarts

        registry.collector(collect)
        registry.include(self.snapshot)

    def stop(self, *details: Any) -> None:
        """Ask the child to finish its work and exit (``("stop", *details)``: what the kind's
        work needs to know of the stop, ``Parent.stop_details``); one that exits from now on is
        not started again."""
        self._stopping = True
        self._stop_frame = frame(("stop", *details))
        self._wake.set()
        if self._stdin is not None:
            trio.lowlevel.spawn_system_task(_tell_stop, self._stdin, self._stop_frame)

    def health(self) -> Health:
        """How the child is as the daemon sees it: running, not started yet, or exited."""
        return self._health

    def snapshot(self) -> dict[str, Any] | None:
        """What the children so far counted (the running one's last report, plus what those
        that exited counted); None before any reported."""
        parts = [part for part in (self._ran, self._report) if part is not None]
        return merge(parts) if len(parts) > 1 else (parts[0] if parts else None)

    async def supervise(
        self,
        spec: Any,
        *,
        pass_fds: Sequence[int] = (),
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the child with ``spec`` (and the file descriptors ``pass_fds``, inherited as they
        are numbered here) until it exits with status 0, or exits once told to stop, starting
        it again each time it exits otherwise. Started (``task_status``) at once, or, for a kind
        with a ``serving`` frame, once the first child serves or exits."""
        if self.kind.serving is None:
            task_status.started()
        else:
            self._serving = task_status
        backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
        while True:
            began = time.monotonic()
            returncode, reason = await self._run_once(spec, pass_fds)
            self._served()  # it never served: the start goes on anyway
            if self._report is not None:  # its counts stay; its gauges and health go
                self._ran = lasting(merge(part for part in (self._ran, self._report) if part))
                self._report = None
            if self._exited is not None:
                await self._exited()
            if returncode == 0:
                return
            delay: float | None = None  # told to stop: not started again
            if not self._stopping:
                if time.monotonic() - began > RESTART_LIMIT:
                    backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
                delay = backoff.next()
                self.restarts += 1
                self._health = Health("failing", f"{self.kind.what} {reason}", time.monotonic())
            log.error(
                f"{self.kind.prefix}_exited",
                **self._fields,
                returncode=returncode,
                reason=reason,
                restart_in=None if delay is None else round(delay, 3),
                restarts=self.restarts,
            )
            if delay is None:
                return
            with trio.move_on_after(delay):
                await self._wake.wait()
            if self._stopping:
                return

    def _served(self) -> None:
        """The start waited for a child to serve: it goes on."""
        if self._serving is not None:
            self._serving.started()
            self._serving = None

    async def _run_once(self, spec: Any, pass_fds: Sequence[int]) -> tuple[int | None, str]:
        """Start one child, relay its frames until it closes its stdout; its exit status and
        what it means (None: it could not be started). Kills it if cancelled."""
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", self.kind.module],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
            )
        except OSError as exc:  # out of processes or memory: try again later
            return None, f"could not be started: {exc}"
        try:
            self.pid = process.pid
            log.info(f"{self.kind.prefix}_started", **self._fields)
            self.started.set()
            self.started = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay_logs, process.stderr)
                await self._talk(process, spec)
            returncode = await process.wait()
        finally:
            await reap(process)
        return returncode, exit_reason(returncode)

    async def _talk(self, process: trio.Process, spec: Any) -> None:
        """Send the spec, then take the child's frames until it closes its stdout."""
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            await process.stdin.send_all(frame(spec))
            if self._stopping:
                await process.stdin.send_all(self._stop_frame)
            self._stdin = process.stdin
            frames = Frames(process.stdout, self.kind.max_frame)
            while (message := await frames.next()) is not None:
                await self._take(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is gone: its exit status says how
        except Exception as exc:  # a frame that does not unpickle: a defect, the child's or ours
            log.exception(f"{self.kind.prefix}_protocol_error", **self._fields, error=repr(exc))
            process.kill()
        finally:
            self._stdin = None

    async def _take(self, message: tuple[Any, ...]) -> None:
        if message[0] == "report":
            self._report = message[1]
            if self.kind.serving is None and self._health.status != "ok":
                self._health = Health("ok", "", time.monotonic())
        elif message[0] == self.kind.serving:
            self._health = Health("ok", "", time.monotonic())
            self._served()
        else:
            await self._take_own(message)

    async def _relay_logs(self, stderr: trio.abc.ReceiveStream | None) -> None:
        await relay_logs(stderr, f"{self.kind.prefix}_output", lambda: self._fields)


async def reap(process: trio.Process) -> None:
    """The end of a child, however its supervision ended: killed if it still runs, waited for
    and its pipes closed (shielded: cancellation must not leave a zombie or open pipes)."""
    if process.returncode is None:
        process.kill()
    with trio.CancelScope(shield=True):
        await process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


def exit_reason(returncode: int) -> str:
    """How a child ended, for its log entry and health: ``killed by SIGKILL``, ``exit status 1``."""
    if returncode < 0 and -returncode in signal.Signals._value2member_map_:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


async def _tell_stop(stdin: trio.abc.SendStream, stop: bytes) -> None:
    """Send a child its stop frame (it may be gone already: its exit says the rest)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stdin.send_all(stop)


async def relay_logs(
    stderr: trio.abc.ReceiveStream | None, output: str, fields: Callable[[], dict[str, Any]]
) -> None:
    """A child's log entries, into the daemon's log stream; a line that is not an entry (a
    crash's traceback) is logged as ``output`` with ``fields()`` (what names the child now).
    Lines are cut at MAX_LINE."""
    assert stderr is not None
    pending = bytearray()
    overlong = False  # the rest of a line longer than MAX_LINE, until its end, is dropped
    while data := await stderr.receive_some(65536):
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if not overlong:
                pending += data[start:end]
                _relay_line(bytes(pending[:MAX_LINE]), output, fields)
            pending.clear()
            overlong = False
            start = end + 1
        if not overlong:
            pending += data[start:]
            if len(pending) > MAX_LINE:
                _relay_line(bytes(pending[:MAX_LINE]), output, fields)
                pending.clear()
                overlong = True
    if pending:
        _relay_line(bytes(pending), output, fields)


def _relay_line(line: bytes, output: str, fields: Callable[[], dict[str, Any]]) -> None:
    if not line.strip():
        return
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        entry = None
    if isinstance(entry, dict):
        write_entry(line.decode(errors="replace"))
    else:
        log.error(output, **fields(), line=line[:2000].decode(errors="replace"))


# --- the child's side -----------------------------------------------------------------------------


class Parent:
    """A child's side of its pipes: frames to the daemon (queued, written by a task of their
    own), and the watch for the daemon's end (see the module docstring)."""

    def __init__(
        self, stdin: Frames, out: trio.lowlevel.FdStream, queue: int = FRAME_QUEUE
    ) -> None:
        self._stdin = stdin
        self._out = out
        #: Set when the daemon asks the work to finish early (``("stop", *details)``).
        self.stopping = trio.Event()
        #: The ``details`` of that stop (``Supervised.stop``).
        self.stop_details: tuple[Any, ...] = ()
        self._send, self._receive = trio.open_memory_channel[bytes](queue)
        self._scope = trio.CancelScope()
        self._token = trio.lowlevel.current_trio_token()
        #: Whether the daemon is gone.
        self.gone = False

    def send_nowait(self, message: tuple[Any, ...]) -> bool:
        """Queue a frame for the daemon; False if the queue is full (or the work is over)."""
        try:
            self._send.send_nowait(frame(message))
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def send(self, message: tuple[Any, ...]) -> None:
        """Queue a frame for the daemon, waiting for room."""
        await self._send.send(frame(message))

    async def serve(
        self,
        work: Callable[[Any, Parent, Registry], Awaitable[None]],
        spec: Any,
    ) -> int:
        """Run ``work(spec, self, registry)``, reporting ``registry`` meanwhile, and send the
        last report once it returns; the exit status (0, or ORPHANED)."""
        registry = Registry()
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward)
                async with trio.open_nursery() as working:
                    working.start_soon(self._watch)
                    working.start_soon(self._reports, registry)
                    await work(spec, self, registry)
                    working.cancel_scope.cancel()
                await self.send(("report", registry.snapshot()))
                self._send.close()
        return ORPHANED if self.gone else 0

    def _orphaned(self) -> None:
        """The daemon is gone: stop at once, and write nothing more (nobody reads it)."""
        if self.gone:
            return
        self.gone = True
        _silence()
        self._scope.cancel()

    def _log_broken(self) -> None:
        """A log entry found stderr broken (from any thread): the daemon is gone. The entries
        after it go nowhere, and the work stops at its next checkpoint, its cleanup intact."""
        _silence()
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._orphaned)

    async def _forward(self) -> None:
        async with self._receive:
            async for data in self._receive:
                try:
                    await self._out.send_all(data)
                except trio.BrokenResourceError:
                    self._orphaned()
                    return

    async def _watch(self) -> None:
        while (message := await self._stdin.next()) is not None:
            if isinstance(message, tuple) and message and message[0] == "stop":
                self.stop_details = message[1:]
                self.stopping.set()
        self._orphaned()  # the end of stdin: the daemon is gone

    async def _reports(self, registry: Registry) -> None:
        last = None
        while True:
            await trio.sleep(REPORT_SECONDS)
            now = registry.snapshot()
            if now != last:  # waits its turn among the frames (a short queue stays full)
                await self.send(("report", now))
                last = now


class _LogStream:
    """A child's stderr for its log entries: a write that finds the pipe broken (the daemon is
    gone) calls ``broken`` instead of raising, so that no log entry fails the code that logs it
    (a sink closing its destination as it stops)."""

    def __init__(self, stream: TextIO, broken: Callable[[], None]) -> None:
        self._stream = stream
        self._broken = broken

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._broken()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._broken()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence() -> None:
    """Point stdout and stderr at /dev/null: the pipes to a daemon that is gone are broken, and a
    log entry or the interpreter's last flush would fail on them."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


async def _child_main(
    work: Callable[[Any, Parent, Registry], Awaitable[None]], queue: int, pipe_bytes: int | None
) -> int:
    # Frames only on the real stdout; anything else printed goes to stderr with the logs.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    if pipe_bytes is not None:
        with contextlib.suppress(OSError):  # a larger pipe: the daemon reads it between frames
            fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, pipe_bytes)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    out = trio.lowlevel.FdStream(out_fd)
    async with stdin, out:
        frames = Frames(stdin)  # one reader: a stop may come in the same read as the spec
        spec = await frames.next()
        if spec is None:  # the daemon was gone before it sent the spec
            _silence()
            return ORPHANED
        parent = Parent(frames, out, queue)
        configure(spec.log_level, cast(TextIO, _LogStream(sys.stderr, parent._log_broken)))
        return await parent.serve(work, spec)


def child_main(
    work: Callable[[Any, Parent, Registry], Awaitable[None]],
    *,
    queue: int = FRAME_QUEUE,
    pipe_bytes: int | None = None,
) -> None:
    """The whole of a child process (its module's ``main``): read the spec, run
    ``work(spec, parent, registry)`` until it returns, exit with the status (see the module
    docstring). The work counts into ``registry`` and sends its own frames through ``parent``,
    which queues up to ``queue`` of them; ``pipe_bytes``: the size asked for the pipe to the
    daemon (Linux's default holds 64 KiB)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heap.enable()
    sys.exit(trio.run(_child_main, work, queue, pipe_bytes))
