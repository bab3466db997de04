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

When a feed holds no CR and no line over the limit, its lines go out as ``bytes.split`` made them.

Syslog over TCP/TLS adds octet counting, RFC 6587 section 3.4.1 (``OctetCountingFramer``)::

    SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG
    MSG-LEN      = NONZERO-DIGIT *DIGIT

``AutoFramer`` picks octet counting or LF framing per connection from the first byte, and the
syslog LF framing (``SyslogLineFramer``) also ends a frame at a NUL. These framers yield
``Framed`` values: a frame, an ``Oversized``, or a ``BadFraming(reason, prefix, size)`` for
bytes that break the framing. Their rules are in their class docstrings.
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
        if lines and b"\r" not in data and max(map(len, lines)) <= self.max_frame:
            out += lines  # the usual case, in C: no CR to remove, no frame too long
        else:
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


# --------------------------------------------------------------------------------------------
# Syslog over a stream: octet counting (RFC 6587 section 3.4.1) and automatic detection.
# --------------------------------------------------------------------------------------------

#: The most MSG-LEN digits accepted (frames up to 9,999,999,999 bytes can be skipped exactly);
#: a longer count is a framing error, not an oversized frame.
MAX_MSG_LEN_DIGITS: Final = 10

_SP: Final = 0x20
_LF: Final = 0x0A
_CR: Final = 0x0D


@dataclass(frozen=True, slots=True)
class BadFraming:
    """Bytes that do not follow the framing: why, their first bytes, and how many there were."""

    reason: str
    prefix: bytes
    size: int


#: What a framer (LF, octet counting, auto) yields: a frame, an oversized frame, or bytes that broke
#: the framing.
Framed = bytes | Oversized | BadFraming


class SyslogLineFramer:
    """LF framing for syslog (RFC 6587 section 3.4.2), where a NUL also ends a frame.

    ``LineFramer`` with one addition: a NUL byte is a frame delimiter like LF (what rsyslog calls
    an additional frame delimiter), because Python's ``SysLogHandler`` ends each message with a NUL
    and nothing else over TCP. A NUL directly followed by LF (``<PRI>msg\\0\\n``) ends one frame, not
    two (``\\0\\r\\n`` still gives an extra empty frame, which the caller counts as blank).
    Consequence: a NUL inside a message splits it into two frames (neither is lost).
    """

    def __init__(self, max_frame: int, keep: int = DEFAULT_KEEP) -> None:
        self._lines = LineFramer(max_frame, keep)
        self._after_nul = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held (or, while skipping an oversized one, counted)."""
        return self._lines.buffered

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by ``data``, in order."""
        if not data:
            return []
        if self._after_nul and data[0] == _LF:
            data = data[1:]
        self._after_nul = data.endswith(b"\0")
        if b"\0" in data:
            data = data.replace(b"\0\n", b"\0").replace(b"\0", b"\n")
        return self._lines.feed(data)

    def finish(self) -> Frame | None:
        """At the end of the stream: the final unterminated frame, if any bytes are left."""
        return self._lines.finish()


class OctetCountingFramer:
    """Splits a byte stream into octet-counted frames (RFC 6587 section 3.4.1), sans-IO.

    RFC 6587 section 3.4.1::

        SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG   ; MSG-LEN is the octet count of the SYSLOG-MSG
        MSG-LEN      = NONZERO-DIGIT *DIGIT
        NONZERO-DIGIT = %d49-57

    Rules this framer keeps:

    * A frame is exactly the MSG-LEN bytes after the SP (transparent framing): a trailing LF
      inside the count (syslog-ng's ``loggen -P`` puts one there) stays in the frame, and the
      syslog parser treats it as a terminator.
    * LF and CR bytes *between* frames (where a MSG-LEN would start) are skipped: some senders
      end an octet-counted frame with an LF outside the count.
    * MSG-LEN greater than ``max_frame``: the frame never sits in memory; the framer keeps its
      first ``keep`` bytes, skips exactly MSG-LEN bytes, yields ``Oversized(prefix, MSG-LEN)`` and
      carries on with the next frame.
    * A bad MSG-LEN (a byte other than a digit where one must be, a leading zero, more than
      ``MAX_MSG_LEN_DIGITS`` digits, or digits not followed by SP) is a framing error. The frame
      boundaries are lost, and no count after it can be trusted, so the framer **falls back to LF
      framing (``SyslogLineFramer``) for the rest of the stream**: the bytes from the start of
      the bad MSG-LEN up to the next LF (or NUL) become one ``BadFraming(reason, prefix, size)``,
      and every following line is a frame. (A sender whose first message merely starts with a
      digit, but which uses LF framing, thus loses structure only for that first line.)
    * Bounds: at most ``max_frame`` bytes of an unfinished frame, plus ``MAX_MSG_LEN_DIGITS``
      bytes of MSG-LEN, are held between feeds.
    * ``finish()`` at the end of the stream: an incomplete frame (or MSG-LEN) is returned as a
      ``BadFraming`` holding the bytes received (MSG-LEN included), so nothing is dropped silently.

    Speed: at a frame boundary, complete frames with a well-formed MSG-LEN within ``max_frame``
    are cut with ``bytes.find`` and one slice each (``_whole_frames``); the byte-by-byte reading
    of MSG-LEN (and everything above) takes over where that path stops: a MSG-LEN or frame cut by
    the end of a feed, LF or CR between frames, a bad or too large MSG-LEN.
    """

    def __init__(self, max_frame: int, keep: int = DEFAULT_KEEP) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.keep = keep
        self._header = bytearray()  # MSG-LEN digits read so far
        self._length = 0  # MSG-LEN of the frame being read (0: reading MSG-LEN)
        self._body = bytearray()  # the frame so far (or, when skipping, its prefix)
        self._got = 0  # bytes of the current frame received so far
        self._skipping = False
        self._fallback: SyslogLineFramer | None = None
        self._fallback_reason: str | None = None

    @property
    def fell_back(self) -> bool:
        """Whether a bad MSG-LEN made the framer switch to LF framing for good."""
        return self._fallback is not None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held or counted (MSG-LEN and SP included)."""
        if self._fallback is not None:
            return self._fallback.buffered
        if self._length:
            return len(self._header) + 1 + self._got
        return len(self._header)

    def _fall_back(self, reason: str, rest: bytes) -> list[Framed]:
        self._fallback = SyslogLineFramer(self.max_frame, self.keep)
        self._fallback_reason = reason
        head = bytes(self._header)
        self._header.clear()
        return self._feed_fallback(head + rest)

    def _feed_fallback(self, data: bytes) -> list[Framed]:
        assert self._fallback is not None
        return self._mark_first(self._fallback.feed(data))

    def _mark_first(self, frames: list[Frame]) -> list[Framed]:
        out: list[Framed] = list(frames)
        if out and self._fallback_reason is not None:
            first = out[0]
            if isinstance(first, Oversized):
                out[0] = BadFraming(self._fallback_reason, first.prefix, first.size)
            else:
                assert isinstance(first, bytes)
                out[0] = BadFraming(self._fallback_reason, first[: self.keep], len(first))
            self._fallback_reason = None
        return out

    def _header_error(self, byte: int) -> str:
        if not self._header:
            if byte == ord("0"):
                return "bad MSG-LEN: leading zero"
            return f"bad MSG-LEN: expected a digit 1-9, got {bytes([byte])!r}"
        if len(self._header) >= MAX_MSG_LEN_DIGITS and 0x30 <= byte <= 0x39:
            return f"bad MSG-LEN: more than {MAX_MSG_LEN_DIGITS} digits"
        return f"bad MSG-LEN: expected a digit or SP after {bytes(self._header)!r}, got {bytes([byte])!r}"

    def feed(self, data: bytes) -> list[Framed]:
        """Frames completed by ``data``, in order."""
        if self._fallback is not None:
            return self._feed_fallback(data)
        out: list[Framed] = []
        pos = 0
        end = len(data)
        while pos < end:
            if not self._length:
                if not self._header:
                    pos = self._whole_frames(data, pos, out)
                    if pos == end:
                        break
                # Reading MSG-LEN byte by byte (or the LF/CR a sender put between frames).
                byte = data[pos]
                if not self._header and byte in (_LF, _CR):
                    pos += 1
                    continue
                if byte == _SP and self._header:
                    self._length = int(self._header)
                    self._skipping = self._length > self.max_frame
                    pos += 1
                    continue
                if (
                    0x30 <= byte <= 0x39
                    and (self._header or byte != 0x30)
                    and len(self._header) < MAX_MSG_LEN_DIGITS
                ):
                    self._header.append(byte)
                    pos += 1
                    continue
                reason = self._header_error(byte)
                return out + self._fall_back(reason, data[pos:])
            # Reading the frame body.
            want = self._length - self._got
            take = min(want, end - pos)
            if self._skipping:
                missing = self.keep - len(self._body)
                if missing > 0:
                    self._body += data[pos : pos + min(take, missing)]
            elif not self._body and take == want:
                out.append(data[pos : pos + take])  # the whole frame in this feed: no copy
                self._end_frame()
                pos += take
                continue
            else:
                self._body += data[pos : pos + take]
            self._got += take
            pos += take
            if self._got == self._length:
                if self._skipping:
                    out.append(Oversized(bytes(self._body), self._length))
                else:
                    out.append(bytes(self._body))
                self._end_frame()
        return out

    def _whole_frames(self, data: bytes, pos: int, out: list[Framed]) -> int:
        """The fast path: append each complete frame of ``data`` from ``pos`` (at a frame
        boundary) whose MSG-LEN is well-formed and within ``max_frame``, without copying it
        byte by byte; return where it stopped: the end of ``data``, or the first place that
        needs the byte-by-byte path (a partial frame, LF or CR between frames, a bad or too
        large MSG-LEN), which then does exactly what it would have done from ``pos``."""
        find = data.find
        append = out.append
        end = len(data)
        max_frame = self.max_frame
        while True:
            space = find(b" ", pos, pos + MAX_MSG_LEN_DIGITS + 1)
            if space <= pos:
                return pos
            digits = data[pos:space]
            # bytes.isdigit() is true for ASCII digits only (and false when empty).
            if not digits.isdigit() or data[pos] == 0x30:
                return pos
            length = int(digits)
            stop = space + 1 + length
            if stop > end or length > max_frame:
                return pos
            append(data[space + 1 : stop])
            pos = stop

    def _end_frame(self) -> None:
        self._header.clear()
        self._length = 0
        self._body.clear()
        self._got = 0
        self._skipping = False

    def finish(self) -> Framed | None:
        """At the end of the stream: what is left of an unfinished frame, if anything."""
        if self._fallback is not None:
            last = self._fallback.finish()
            return None if last is None else self._mark_first([last])[0]
        if not self._header:
            return None
        header = bytes(self._header)
        if not self._length:
            frame = BadFraming("stream ended inside MSG-LEN", header, len(header))
        else:
            raw = header + b" " + bytes(self._body)
            size = len(header) + 1 + self._got
            reason = f"stream ended inside a frame: {self._got} of {self._length} bytes received"
            frame = BadFraming(reason, raw[: self.keep], size)
        self._end_frame()
        return frame


class AutoFramer:
    """Octet counting or LF framing, chosen per connection from its first byte (RFC 6587 3.4).

    The first byte of the stream decides, once, for the whole connection:

    * a digit: octet counting (RFC 6587 section 3.4.1, ``OctetCountingFramer``), which falls back
      to LF framing by itself after a bad MSG-LEN;
    * ``<`` or anything else: LF framing (RFC 6587 section 3.4.2, "non-transparent framing"), with
      NUL as a delimiter as well (``SyslogLineFramer``), which also frames Python's
      ``SysLogHandler`` (``<PRI>msg\\0``).

    This is how rsyslog's imtcp tells the two apart (a syslog message starts with ``<``, an
    octet-counted frame with its MSG-LEN), except that rsyslog decides per frame; deciding per
    connection means a stream cannot switch to octet counting half-way.
    """

    def __init__(self, max_frame: int, keep: int = DEFAULT_KEEP) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.keep = keep
        self._framer: OctetCountingFramer | SyslogLineFramer | None = None

    @property
    def mode(self) -> str | None:
        """``"octet"``, ``"lf"``, or None before the first byte."""
        if self._framer is None:
            return None
        return "octet" if isinstance(self._framer, OctetCountingFramer) else "lf"

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held (or, while skipping an oversized one, counted)."""
        return 0 if self._framer is None else self._framer.buffered

    def feed(self, data: bytes) -> list[Framed]:
        """Frames completed by ``data``, in order."""
        if self._framer is None:
            if not data:
                return []
            if 0x30 <= data[0] <= 0x39:
                self._framer = OctetCountingFramer(self.max_frame, self.keep)
            else:
                self._framer = SyslogLineFramer(self.max_frame, self.keep)
        return list(self._framer.feed(data))

    def finish(self) -> Framed | None:
        """At the end of the stream: the final unfinished frame, if any bytes are left."""
        return None if self._framer is None else self._framer.finish()
