"""Sources: listeners that frame and decode what senders send and hand events to the pipeline.

Each source type's config (``XSourceConfig`` beside its source, registered in
``shipper.config.SOURCE_TYPES``) builds the source: ``config.build(send, profile)``, ``profile``
being the chain profile (``shipper.chain.Profile``): a source does the stateless half of the chain
check itself (the agent, ``Profile.facts``) and encodes each envelope (``Event.seal``). A source
binds its sockets (``bind``) apart from serving them (``serve``), so that the daemon's main
process binds them once and ingest worker processes (``shipper.ingestproc``) serve them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shipper.config import Address

if TYPE_CHECKING:
    import trio

    from shipper.budget import ByteBudget
    from shipper.metrics import CounterSet, Health, Registry
    from shipper.sources._net import Bound

#: Where a source listens: a TCP/UDP address, or a unix socket's path.
Listening = Address | Path

#: What every source counts (``source_<name>`` metrics, labelled with the source's id).
SOURCE_COUNTERS: dict[str, str] = {
    "events": "Events handed to the pipeline (records, malformed input, syslog messages)",
    "bytes": "Bytes read from connections and datagrams",
    "malformed": "Inputs archived as malformed events",
    "oversized": "Frames longer than the source's limit",
    "bad_framing": "Bytes that broke the framing",
    "blank_lines": "Blank lines skipped (counted, not archived)",
    "identity_mismatch": "Events whose claims the client certificate does not cover",
    "connections_accepted": "Connections accepted",
    "connections_refused": "Connections refused or cut off, for any reason",
    "refused_max_connections": "Connections refused: max_connections open",
    "refused_max_connections_per_peer": "Connections refused: max_connections_per_peer open",
    "refused_handshake_timeout": "Connections cut off: no TLS handshake within its timeout",
    "refused_handshake_failed": "Connections cut off: the TLS handshake failed",
    "refused_frame_timeout": "Connections cut off: a frame not completed within frame_timeout",
    "connections_reset_early": "Connections reset before they were accepted",
    "accept_errors": "Errors accepting connections",
    "idle_timeouts": "Connections closed for being idle",
    "handler_errors": "Connections or datagrams ended by a defect (logged with the cause)",
    "datagrams": "Datagrams received (UDP, unix)",
    "dropped_full": "Datagrams' events dropped: the pipeline was full past the burst buffer",
    "kernel_dropped": "Datagrams the kernel dropped (its receive buffer was full)",
    "json_records": "Syslog messages whose MSG is a JSON record",
    "invalid_utf8": "Syslog messages whose text is not UTF-8",
}


class Source(Protocol):
    """What the topology needs of a running source."""

    id: str
    counters: CounterSet
    #: The bytes the pipeline's ingest channel may hold, shared by every source.
    budget: ByteBudget | None
    #: Whether it listens (its sockets are bound); its health says so.
    listening: bool
    #: Connections open in each ingest worker, by worker, as the workers last reported
    #: (``source_connections_open`` adds them to this process's own).
    open_elsewhere: dict[int, int]
    #: How each ingest worker that serves it does now, by worker (ok while it serves, else
    #: why not: not started yet, exited); its health takes them in.
    served_by: dict[int, Callable[[], Health]]

    @property
    def shared(self) -> bool:
        """Whether several processes may serve this source's sockets at once (ingest workers):
        stream listeners may; a datagram source is served by one process (its counters, such
        as the kernel's drop counter, are the socket's)."""

    def bind(self) -> Bound:
        """Bind and listen (blocking, at start; ``ListenError`` when it cannot)."""

    async def serve(self, bound: Bound, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """Serve on ``bound`` (bound here or in the daemon's main process), report where
        (``task_status.started``), until stopped; close the channel to the pipeline when done.
        ``bound`` is left to its owner to close."""

    async def run(self, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """``bind``, ``serve``, and close what was bound: the source in one process."""

    def stop(self, *, backlog: bool = True) -> None:
        """Stop accepting and reading, once what the sockets hold now is read (and, with
        ``backlog``, the connections waiting to be accepted: not when the listening socket lives
        on, for the ingest workers a reload starts); what was read is still handed on."""

    def open_connections(self) -> int:
        """Connections open now, here and in the ingest workers (``open_elsewhere``)."""

    def register_metrics(self, registry: Registry) -> None:
        """Count into ``registry`` from now on, and tell it this source's health."""

    def health(self) -> Health:
        """``ok`` while listening and once stopping; ``failing`` before it listens; with ingest
        workers, ``degraded`` while some of those that serve it do not, ``failing`` while none
        does."""
