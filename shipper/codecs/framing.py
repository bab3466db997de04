"""Framing: cutting a byte stream into frames, with a bound on frame size.

Newline framing, as used by newline-delimited JSON and by RFC 6587 section 3.4.2
("non-transparent framing") for syslog over TCP::

    stream = *frame [partial]
    frame  = *(%x00-09 / %x0B-FF) LF      ; a CR right before the LF is not part of the frame

Rules this framer keeps:

* A frame longer than ``max_frame`` bytes (CR and LF not counted) never sits in memory whole: the
  framer keeps its first ``keep`` bytes, counts the rest while skipping to the next LF, and yields an
  ``Oversized(prefix, size)``. The stream carries on with the next frame.
* The framer holds at most ``max_frame`` bytes of an unfinished frame between feeds.
* ``finish()`` at the end of the stream yields what is left after the last LF (a final line without
  a newline), so nothing a sender sent is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_KEEP: Final = 4096


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame over the size limit: its first bytes and its size (every byte before the LF)."""

    prefix: bytes
    size: int


Frame = bytes | Oversized


class LineFramer:
    """Splits a byte stream into LF-terminated frames (sans-IO: feed bytes, get frames)."""

    def __init__(self, max_frame: int, keep: int = DEFAULT_KEEP) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.keep = keep
        self._partial = bytearray()
        self._discarding = False
        self._discard_prefix = b""
        self._discard_size = 0

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held (or, while skipping an oversized one, counted)."""
        return self._discard_size if self._discarding else len(self._partial)

    def _frame(self, line: bytes, out: list[Frame]) -> None:
        body = line[:-1] if line.endswith(b"\r") else line
        if len(body) > self.max_frame:
            out.append(Oversized(line[: self.keep], len(line)))
        else:
            out.append(body)

    def _start_discarding(self, head: bytes) -> None:
        self._discarding = True
        self._discard_prefix = head[: self.keep]
        self._discard_size = len(head)
        self._partial.clear()

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by ``data``, in order."""
        out: list[Frame] = []
        if self._discarding:
            newline = data.find(b"\n")
            missing = self.keep - len(self._discard_prefix)
            if missing > 0:
                end = len(data) if newline < 0 else newline
                self._discard_prefix += data[: min(end, missing)]
            if newline < 0:
                self._discard_size += len(data)
                return out
            out.append(Oversized(self._discard_prefix, self._discard_size + newline))
            self._discarding = False
            self._discard_prefix = b""
            self._discard_size = 0
            data = data[newline + 1 :]
        if self._partial:
            newline = data.find(b"\n")
            if newline < 0:
                self._partial += data
                if len(self._partial) > self.max_frame + 1:  # +1: a CR may still precede the LF
                    self._start_discarding(bytes(self._partial))
                return out
            self._partial += data[:newline]
            line = bytes(self._partial)
            self._partial.clear()
            self._frame(line, out)
            data = data[newline + 1 :]
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            self._frame(line, out)
        if tail:
            if len(tail) > self.max_frame + 1:
                self._start_discarding(tail)
            else:
                self._partial += tail
        return out

    def finish(self) -> Frame | None:
        """At the end of the stream: the final unterminated frame, if any bytes are left."""
        if self._discarding:
            frame: Frame = Oversized(self._discard_prefix, self._discard_size)
            self._discarding = False
            self._discard_prefix = b""
            self._discard_size = 0
            return frame
        if not self._partial:
            return None
        out: list[Frame] = []
        self._frame(bytes(self._partial), out)
        self._partial.clear()
        return out[0]
