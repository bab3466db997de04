"""Retrying: the delays of ``shipper.retry.Backoff``, and how ``RetryPolicy`` classifies."""

from __future__ import annotations

from shipper.errors import DestinationRejected, DestinationUnavailable
from shipper.retry import Backoff, Outcome, RetryPolicy


def test_backoff_delays_double_with_jitter_up_to_the_limit() -> None:
    """Each delay is half to all of a step that doubles from the first one and stops at the
    limit."""
    backoff = Backoff(0.1, 1.0)
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for step in steps:
        wait = backoff.next()
        assert step / 2 <= wait <= step


def test_the_default_policy_classifies_by_who_is_at_fault() -> None:
    """Unavailable is retried, rejected is dead-lettered, and anything else is a defect."""
    policy = RetryPolicy()
    assert policy.classify(DestinationUnavailable("down")) is Outcome.RETRY
    assert policy.classify(DestinationRejected("no")) is Outcome.REJECT
    assert policy.classify(OSError("untranslated")) is Outcome.DEFECT
    assert policy.classify(RuntimeError("bug")) is Outcome.DEFECT


def test_a_destinations_hint_is_waited_for_within_the_bound() -> None:
    """The wait after an unavailable destination is the longer of the backoff and its
    retry_after hint, never longer than max_retry_after; without a hint it is the backoff."""
    policy = RetryPolicy(first=0.1, limit=1.0, max_retry_after=60.0)
    assert policy.wait(policy.backoff(), DestinationUnavailable("429", retry_after=12.5)) == 12.5
    assert policy.wait(policy.backoff(), DestinationUnavailable("429", retry_after=1e9)) == 60.0
    assert policy.wait(policy.backoff(), DestinationUnavailable("429", retry_after=0.0)) <= 0.1
    assert policy.wait(policy.backoff(), DestinationUnavailable("503")) <= 0.1
