"""A progress bar for long reads on a terminal: objects and bytes done, the rate, and an estimate
of the time left, redrawn in place on one line (at most ``REDRAWS_PER_SECOND`` times a second)
and erased at the end. ``progress_for`` gives one only when the stream is a terminal: piped
output gets none.

    verifying [#########...........]  37/120 objects  12.3/40.1 MB  5.2 MB/s  0:06 left
"""

from __future__ import annotations

import time
from typing import Final, Protocol, TextIO

REDRAWS_PER_SECOND: Final = 10
WIDTH: Final = 20


class Progress(Protocol):
    """Told the totals once, then each object done."""

    def start(self, objects: int, size: int) -> None: ...

    def advance(self, size: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """Shows nothing (output that is not a terminal)."""

    def start(self, objects: int, size: int) -> None:
        pass

    def advance(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """The bar (see the module docstring), drawn on ``stream``."""

    def __init__(self, stream: TextIO, label: str = "verifying") -> None:
        self.stream = stream
        self.label = label
        self.objects = self.size = self.done = self.done_size = 0
        self.started = self.drawn = 0.0
        self.visible = False

    def start(self, objects: int, size: int) -> None:
        self.objects, self.size = objects, size
        self.started = time.monotonic()
        self._draw(self.started)

    def advance(self, size: int) -> None:
        self.done += 1
        self.done_size += size
        now = time.monotonic()
        if now - self.drawn >= 1 / REDRAWS_PER_SECOND or self.done == self.objects:
            self._draw(now)

    def close(self) -> None:
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False

    def line(self, now: float) -> str:
        """The bar as it reads at ``now``."""
        if self.size:
            fraction = self.done_size / self.size
        else:
            fraction = self.done / self.objects if self.objects else 1.0
        filled = min(WIDTH, int(fraction * WIDTH))
        elapsed = now - self.started
        rate = self.done_size / elapsed if elapsed > 0 else 0.0
        left = (self.size - self.done_size) / rate if rate > 0 else None
        return (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}]"
            f"  {self.done}/{self.objects} objects"
            f"  {_mb(self.done_size)}/{_mb(self.size)} MB"
            f"  {_mb(int(rate))} MB/s"
            f"  {_duration(left)} left"
        )

    def _draw(self, now: float) -> None:
        self.drawn = now
        self.stream.write("\r\x1b[K" + self.line(now))
        self.stream.flush()
        self.visible = True


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_for(stream: TextIO) -> Progress:
    """A bar on ``stream`` if it is a terminal, else nothing."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return Bar(stream) if terminal else NoProgress()
