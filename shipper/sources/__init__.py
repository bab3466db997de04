"""Sources: listeners that frame and decode what senders send and hand events to the pipeline.

Each source type's config (``XSourceConfig`` beside its source, registered in
``shipper.config.SOURCE_TYPES``) builds the source: ``config.build(send, agent_of)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shipper.config import Address

if TYPE_CHECKING:
    import trio

    from shipper.budget import ByteBudget

#: Where a source listens: a TCP/UDP address, or a unix socket's path.
Listening = Address | Path
#: How a source finds the agent a record names (the chain profile's ``Profile.agent_of``).
AgentOf = Callable[[dict[str, Any]], str | None]


class Source(Protocol):
    """What the topology needs of a running source."""

    id: str
    counters: Counter[str]
    #: The bytes the pipeline's ingest channel may hold, shared by every source.
    budget: ByteBudget | None

    async def run(self, *, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """Listen, report where (``task_status.started``), serve until stopped; close the
        channel to the pipeline when done."""

    def stop(self) -> None:
        """Stop accepting and reading; what was read is still handed on."""
