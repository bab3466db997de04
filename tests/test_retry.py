"""Retrying: the delays of ``shipper.retry.Backoff``."""

from __future__ import annotations

from shipper.retry import Backoff


def test_backoff_delays_double_with_jitter_up_to_the_limit() -> None:
    """Each delay is half to all of a step that doubles from the first one and stops at the
    limit."""
    backoff = Backoff(0.1, 1.0)
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for step in steps:
        wait = backoff.next()
        assert step / 2 <= wait <= step
