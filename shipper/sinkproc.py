"""Sinks in processes of their own (``[runtime] sink_processes``, the default).

The daemon starts one child process per sink (``python -m shipper.sinkproc``) and supervises it
(``SinkProcess``, a ``shipper.children.Supervised``: the protocol, restarts, log relay and metrics
are that module's)::

    daemon (writer, WAL) ──── Spec (stdin) ────► sink process: WalReader(cursor) ─► SinkDriver
          ▲                                          │
          └──── ("emit", event), reports (stdout) ◄──┘

The child needs nothing of the daemon but the WAL's files: it parses the same config again
(``Spec.config``), builds its sink and a ``SinkDriver`` as the daemon would, and reads the WAL
from its sink's cursor through a ``WalReader`` (woken across processes, ``shipper.buffer.wake``),
with the WAL's epoch the daemon opened (``Spec.epoch``). It acknowledges through the cursor file,
as any reader does; the writer deletes what every reader has passed. When the WAL is closed and
read (the daemon is stopping), the driver delivers what is left and the child exits with status 0;
so it does when the daemon tells it to stop (``SinkProcess.stop``: a reload removed or changed the
sink), after delivering and acknowledging what it had read (``SinkDriver.stop``).

Its own frames: ``("emit", event)`` for each event the sink raises (delivery alerts, archive
seals), which the daemon queues for the WAL as for a sink in its own process (``Topology.emit``).
One it cannot queue for the daemon (``FRAME_QUEUE`` full) is dropped, counted in
``writer_emitted_dropped`` and logged at most once a second, as the daemon does. Its reports carry
the driver's counters (``sink_*``) and health, and that count: the daemon's metrics read as if
the sink ran in the daemon, plus ``sink_process_restarts``. The daemon declares the sink's
counters itself, at zero, from its config (``SinkConfig.own_counters``): they are known before the
child's first report, without building the sink.

A child that exits before the WAL is closed and read (killed, crashed) is logged
(``sink_process_exited``) and started again (``shipper.children``); it resumes from its cursor,
and the sink's ``resume_point`` leaves out what the destination took before the crash. Ingest and
the other sinks go on meanwhile. If the daemon is gone, the child stops at once, acknowledging
nothing it did not deliver; if the daemon is cancelled (a forced shutdown), it kills the child:
what was not acknowledged waits in the WAL for the next start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from shipper.children import ConfigSpec, Kind, Parent, Supervised, child_main
from shipper.config import Config, SinkConfig
from shipper.events import Event, envelopes
from shipper.metrics import CounterSet, Registry, mirror
from shipper.sinks.base import EMITTED_DROPPED, EmitDrops, SinkContext
from shipper.sinks.driver import SINK_COUNTERS, SinkDriver

SINK_PROCESS = Kind(
    module="shipper.sinkproc",
    prefix="sink_process",
    label="sink",
    restarts_help="Sink processes started again after one exited before the WAL was closed",
)


@dataclass(frozen=True)
class Spec:
    """What a sink process is given: the config, the sink's id and the WAL's epoch."""

    config: ConfigSpec
    sink: str
    epoch: str

    @property
    def log_level(self) -> str:
        return self.config.log_level


# --- the daemon's side ----------------------------------------------------------------------------


class SinkProcess(Supervised):
    """Runs ``sink`` in a child process and supervises it (see the module docstring). ``emit``:
    where the child's events go (``Topology.emit``). ``exited``: called after each child exits
    (the daemon reads the cursors again then)."""

    def __init__(
        self,
        config: Config,
        sink: SinkConfig,
        emit: Callable[[Event], bool],
        exited: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(SINK_PROCESS, sink.id, self._take_emit, exited)
        self.id = sink.id
        self.config = config
        self._declared = {**SINK_COUNTERS, **sink.own_counters()}
        self._emit = emit

    def spec(self, epoch: str) -> Spec:
        """The spec of this sink's process, for the WAL of ``epoch``."""
        return Spec(ConfigSpec.of(self.config), self.id, epoch)

    def register_metrics(self, registry: Registry) -> None:
        """The sink's counters (at zero here: its process counts them), and what
        ``Supervised`` registers."""
        CounterSet(registry, "sink", self.id, self._declared)
        super().register_metrics(registry)

    async def run(
        self, epoch: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the sink's process until it delivered what the WAL of ``epoch`` holds and the
        WAL is closed, starting it again each time it exits before that."""
        await self.supervise(self.spec(epoch), task_status=task_status)

    async def _take_emit(self, message: tuple[Any, ...]) -> None:
        kind, event = message
        if kind != "emit":
            raise ValueError(f"a sink process sent an unknown frame: {kind!r}")
        self._emit(event)


# --- the child's side -----------------------------------------------------------------------------


def emitter(parent: Parent, registry: Registry, sink_id: str) -> Callable[[Event], bool]:
    """The sink's ``emit`` in its process: each event queued as a frame for the daemon, or, when
    the queue is full, dropped, counted in ``writer_emitted_dropped`` (in ``registry``, which
    the daemon merges into its own) and logged at most once a second."""
    counts: Counter[str] = Counter()
    mirror(registry, "writer", lambda: counts, {"emitted_dropped": EMITTED_DROPPED})
    dropped = EmitDrops(counts, sink=sink_id)

    def emit(event: Event) -> bool:
        if parent.send_nowait(("emit", event)):
            return True
        dropped(event)
        return False

    return emit


async def _work(spec: Spec, parent: Parent, registry: Registry) -> None:
    """Run the sink of ``spec`` to the end of the WAL."""
    from shipper.buffer.reader import WalReader

    config = spec.config.parse()
    sink = config.sinks[spec.sink]
    emit = emitter(parent, registry, sink.id)
    driver = SinkDriver(
        sink.build(SinkContext(config.chain.profile_fields, emit)),
        config.data_dir,
        emit,
        sink.redact,
    )
    driver.register_metrics(registry)
    inputs = frozenset(sink.inputs) if sink.inputs is not None else None
    reader = WalReader(config.data_dir / "wal", sink.id, inputs, envelopes=envelopes)
    try:
        async with trio.open_nursery() as nursery:

            async def stop_when_told() -> None:
                await parent.stopping.wait()
                driver.stop()

            nursery.start_soon(stop_when_told)
            await driver.run(reader, spec.epoch)
            nursery.cancel_scope.cancel()
    finally:
        reader.close()


def main() -> None:
    """The sink process: ``python -m shipper.sinkproc`` (started by the daemon only)."""
    child_main(_work)


if __name__ == "__main__":
    # As the module itself, not ``__main__``: the spec unpickles to its classes.
    from shipper.sinkproc import main as sink_process

    sink_process()
