"""Retrying what can succeed later: how a failure is classified, and the delays between tries.

A sink's failure is one of three outcomes (``RetryPolicy.classify``), as in Vector's
``RetryLogic``:

* ``Outcome.RETRY``: the destination is unavailable (``DestinationUnavailable``); the same batch
  is tried again after a backoff, and waits in the WAL meanwhile.
* ``Outcome.REJECT``: the destination refused the batch for good (``DestinationRejected``); it
  goes to the dead-letter area with the reason and is acknowledged, so the sink goes on.
* ``Outcome.DEFECT``: any other exception, a defect in the sink's code; the sink is closed and
  opened again after a backoff of its own, and the same batch is tried again.

A sink whose destination speaks in its own terms (an HTTP status, say) overrides ``classify``
in a subclass of ``RetryPolicy``; everything else about retrying stays in the driver
(``shipper.sinks.driver``).

A destination may say how long to wait (HTTP's ``Retry-After``): the sink puts it on the
exception (``DestinationUnavailable.retry_after``), and the wait before the next try is the
longer of the backoff's and that hint, the hint bounded by ``max_retry_after``
(``RetryPolicy.wait``), so a receiver cannot park a sink for days with one header.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from shipper.errors import DestinationRejected, DestinationUnavailable


class Backoff:
    """The delays between retries of something that can succeed later: each a random half to
    all of the current step, the step doubling from ``first`` up to ``limit`` seconds (jitter
    keeps retries from many places from falling in step)."""

    def __init__(self, first: float = 0.1, limit: float = 30.0) -> None:
        self._step = first
        self._limit = limit

    def next(self) -> float:
        """Seconds to wait before the next try."""
        wait = self._step * random.uniform(0.5, 1.0)
        self._step = min(self._step * 2, self._limit)
        return wait


class Outcome(enum.Enum):
    """What to do about a sink's failure."""

    RETRY = "retry"  # unavailable: the same batch again, after a backoff
    REJECT = "reject"  # refused for good: dead letter, acknowledge, go on
    DEFECT = "defect"  # a bug in the sink: close it, open it again after a backoff, same batch


@dataclass(frozen=True)
class RetryPolicy:
    """How a sink's failures are classified, the backoffs of retries (``first`` to ``limit``
    seconds) and of restarts after a defect (``restart_first`` to ``restart_limit``), and the
    longest wait a destination's own hint may ask for (``max_retry_after``)."""

    first: float = 0.1
    limit: float = 30.0
    restart_first: float = 1.0
    restart_limit: float = 60.0
    max_retry_after: float = 300.0

    def classify(self, exc: Exception) -> Outcome:
        """The outcome of ``exc``, raised by a sink's ``open``, ``resume_point`` or
        ``deliver``. Override to map a destination's own errors; the default knows
        ``DestinationUnavailable`` and ``DestinationRejected``, and calls anything else a
        defect."""
        if isinstance(exc, DestinationUnavailable):
            return Outcome.RETRY
        if isinstance(exc, DestinationRejected):
            return Outcome.REJECT
        return Outcome.DEFECT

    def backoff(self) -> Backoff:
        """Delays between tries of an unavailable destination."""
        return Backoff(self.first, self.limit)

    def wait(self, backoff: Backoff, exc: Exception) -> float:
        """Seconds to wait before trying again after ``exc``: the next delay of ``backoff``, or
        the destination's ``retry_after`` hint if that is longer (at most ``max_retry_after``)."""
        wait = backoff.next()
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > wait:
            wait = min(float(hint), max(self.max_retry_after, wait))
        return wait

    def restart_backoff(self) -> Backoff:
        """Delays between restarts of a sink whose code raised a defect."""
        return Backoff(self.restart_first, self.restart_limit)
