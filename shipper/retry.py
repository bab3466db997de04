"""Retrying what can succeed later: the delays between tries."""

from __future__ import annotations

import random


class Backoff:
    """The delays between retries of something that can succeed later (``retriable``): each a
    random half to all of the current step, the step doubling from ``first`` up to ``limit``
    seconds (jitter keeps retries from many places from falling in step)."""

    def __init__(self, first: float = 0.1, limit: float = 30.0) -> None:
        self._step = first
        self._limit = limit

    def next(self) -> float:
        """Seconds to wait before the next try."""
        wait = self._step * random.uniform(0.5, 1.0)
        self._step = min(self._step * 2, self._limit)
        return wait
