"""What the writer keeps of what the WAL accepted last (``shipper.recent``): bounded, the newest
last, and an archive's seals left out of the alerts."""

from __future__ import annotations

from shipper.events import CHAIN_ALERT, Event, alert_event
from shipper.recent import AGENTS_KEPT, AGENTS_PER_BATCH, ALERTS_KEPT, Recent

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "10.0.0.7:51234"}


def event(agent: str | None) -> Event:
    return Event("2026-12-03T00:00:00.000000Z", SOURCE, agent, b'{"action":"x"}')


def test_alerts_are_kept_newest_last_up_to_the_bound_without_seals() -> None:
    """Alerts beyond ``ALERTS_KEPT`` push out the oldest; an archive seal is not kept."""
    recent = Recent()
    alerts = [alert_event(CHAIN_ALERT, f"a{n}", {"status": "gap"}) for n in range(ALERTS_KEPT + 5)]
    seal = alert_event("shipper.archive_seal", None, {"head": "sha256:00"})
    recent.accepted([], [*alerts[:10], seal])
    recent.accepted([], alerts[10:])
    assert list(recent.alerts) == alerts[5:]


def test_agents_seen_last_are_kept_most_recent_last() -> None:
    """The agents of the last events of each batch are noted, the most recent last, an agent
    seen again moving to the end; alerts and events without an agent are passed over; at most
    ``AGENTS_KEPT`` are kept."""
    recent = Recent()
    early = [event("early"), *(event("busy") for _ in range(AGENTS_PER_BATCH))]
    recent.accepted(early, [])  # "early" is not among the last AGENTS_PER_BATCH events
    recent.accepted([event("b"), event(None), event("a")], [])
    recent.accepted([event("b"), alert_event(CHAIN_ALERT, "alerted", {})], [])
    assert list(recent.agents) == ["busy", "a", "b"]
    recent.accepted([event(f"x{n}") for n in range(AGENTS_KEPT)], [])  # (16 of them noted)
    for n in range(AGENTS_KEPT // AGENTS_PER_BATCH):
        batch = [event(f"y{n}-{i}") for i in range(AGENTS_PER_BATCH)]
        recent.accepted(batch, [])
    assert len(recent.agents) == AGENTS_KEPT
    assert "busy" not in recent.agents
    assert (
        list(recent.agents)[-1] == f"y{AGENTS_KEPT // AGENTS_PER_BATCH - 1}-{AGENTS_PER_BATCH - 1}"
    )
