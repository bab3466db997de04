"""What the writer accepted last, for the status summary (``shipper.api.status``): the last
alerts and the agents last seen. Plain data, no trio.

Fed by the writer once the WAL accepted a batch (``Recent.accepted``), so an alert is noted once
even when the WAL refused its batch and the chain stage verified it again. Both are bounded:

* alerts: the last ``ALERTS_KEPT`` alert events (``Event.alert``: chain, identity and delivery
  alerts; an S3 archive's seals, which witness rather than warn, are left out), oldest first;
* agents: up to ``AGENTS_KEPT`` agents, the most recently seen last, from the last
  ``AGENTS_PER_BATCH`` events of each batch: a sample of who is active that costs a few
  microseconds a batch, however many events it holds (no work per event).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from shipper.events import Event

ALERTS_KEPT: Final = 50
AGENTS_KEPT: Final = 256
AGENTS_PER_BATCH: Final = 16
#: How the record of an archive seal (``shipper.sinks.s3``) begins: not an alert to show.
_SEAL: Final = b'{"action":"shipper.archive_seal"'


class Recent:
    """The last alerts and the agents last seen (see the module docstring)."""

    def __init__(self) -> None:
        self.alerts: deque[Event] = deque(maxlen=ALERTS_KEPT)
        self.agents: dict[str, None] = {}

    def accepted(self, events: list[Event], alerts: list[Event]) -> None:
        """The WAL accepted a batch of ``events``, among which (or raised for them) ``alerts``."""
        for alert in alerts:
            if alert.record_json is not None and not alert.record_json.startswith(_SEAL):
                self.alerts.append(alert)
        agents = self.agents
        for event in events[-AGENTS_PER_BATCH:]:
            agent = event.agent
            if agent is not None and not event.alert:
                agents.pop(agent, None)
                agents[agent] = None
        while len(agents) > AGENTS_KEPT:
            del agents[next(iter(agents))]
