"""Running the daemon, and stopping it in two phases.

Phase one (SIGTERM or SIGINT): tell systemd ``STOPPING=1``, stop accepting and reading once what
senders already delivered to the kernel is read (the bytes connections' sockets hold, connections
waiting in a listen backlog, queued datagrams: ``shipper.sources._net``), and let every event read
drain to the sinks, under ``shutdown_timeout``. Phase two (the deadline passes or
a second signal arrives): cancel everything (sink processes are killed), and log per sink how
many bytes it left in the WAL, where they wait for the next start. The drain goes in order:
sources, then the writer, which closes the WAL, then the sinks, which deliver what it holds (in
the daemon's process or in their own, ``shipper.sinkproc``, the default).
Only cleanup (closing and fsyncing files) is shielded from the cancellation.

SIGHUP (``systemctl reload``) reads the config file again and applies it (``Topology.reload``:
one reload at a time; signals that come meanwhile make one more reload). A SIGHUP before the
daemon is ready waits for it; one while it stops is ignored (logged).
"""

from __future__ import annotations

import signal
from typing import Any

import trio

from shipper import __version__, heap
from shipper.config import Config
from shipper.logging import get_logger
from shipper.metrics import summary as metrics_summary
from shipper.metrics import value
from shipper.sdnotify import notify, watchdog
from shipper.sources import Listening
from shipper.topology import Topology

log = get_logger("shipper.daemon")


class Shutdown:
    """A stop request; a second request forces the stop."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.forced = trio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if self.requested.is_set():
            log.warning("shutdown_forced_by_request", reason=reason)
            self.forced.set()
            return
        self.reason = reason
        self.requested.set()


async def _watch_signals(shutdown: Shutdown) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            shutdown.request(signal.Signals(signum).name)


async def _watch_reloads(topology: Topology, ready: trio.Event, shutdown: Shutdown) -> None:
    """Reload at each SIGHUP (the receiver is open from the start: a SIGHUP's default action
    would end the process)."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        await ready.wait()
        async for _ in signals:
            if shutdown.requested.is_set():
                log.warning("reload_ignored", reason="the daemon is stopping")
                continue
            await topology.reload()


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as any of the events is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


async def run_daemon(
    config: Config,
    shutdown: Shutdown | None = None,
    *,
    handle_signals: bool = True,
    topology: Topology | None = None,
    task_status: trio.TaskStatus[dict[str, list[Listening]]] = trio.TASK_STATUS_IGNORED,
) -> bool:
    """Run until a stop is requested; True if everything read was delivered before exiting.
    ``topology``: the one to run (made from ``config`` if not given), whose ``reload`` the
    caller may call too."""
    shutdown = shutdown if shutdown is not None else Shutdown()
    topology = topology if topology is not None else Topology(config)
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_watch_signals, shutdown)
            nursery.start_soon(_watch_reloads, topology, ready, shutdown)
        if config.api.address is not None:  # first: a taken address stops before any source
            from shipper.api.server import serve_api  # (hypercorn and starlette: only with an API)

            urls = await nursery.start(serve_api, topology, config.api)
            for url in urls:
                log.info("api_listening", url=url)
        bound = await nursery.start(topology.run)
        ready.set()
        notify("READY=1\nSTATUS=listening")
        log.info(
            "shipper_ready",
            version=__version__,
            config=config.origin,
            sources={name: [str(a) for a in addresses] for name, addresses in bound.items()},
            sinks=sorted(config.sinks),
        )
        task_status.started(bound)
        nursery.start_soon(watchdog)
        heap.settle()

        await shutdown.requested.wait()
        notify("STOPPING=1")
        timeout = topology.config.shutdown_timeout  # (a reload may have changed it)
        log.info("shutdown_started", reason=shutdown.reason, timeout=timeout)
        topology.stop()
        with trio.move_on_after(timeout):
            await _first_of(topology.finished, shutdown.forced)
        drained = topology.finished.is_set()
        snapshot = topology.registry.snapshot()
        summary: dict[str, Any] = {
            "events": topology.counters["events"],
            "delivered": {
                slot.id: value(snapshot, "sink_events", slot.id) for slot in topology.sinks
            },
            "metrics": metrics_summary(snapshot),
        }
        if drained:
            log.info("shutdown_complete", **summary)
        else:
            log.error(
                "shutdown_forced",
                reason="second signal" if shutdown.forced.is_set() else "shutdown_timeout passed",
                undelivered_bytes=topology.pending(),
                discarded=topology.not_accepted(),
                **summary,
            )
        nursery.cancel_scope.cancel()
    return drained
