"""Tests of OctetCountingFramer, SyslogLineFramer and AutoFramer (RFC 6587, sans-IO, h11 style)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.codecs.framing import (
    MAX_MSG_LEN_DIGITS,
    AutoFramer,
    BadFraming,
    Framed,
    OctetCountingFramer,
    Oversized,
    SyslogLineFramer,
)
from shipper.codecs.syslog import SyslogMessage, parse
from tests.codecs.chunking import byte_by_byte, feed_chunks, split_at


def octet(message: bytes) -> bytes:
    """``message`` as one RFC 6587 octet-counted frame."""
    return b"%d %b" % (len(message), message)


MESSAGES = [b"<13>1 - - - - - - hello", b"<14>one two", b"x", b"with\nnewline\ninside"]
STREAM = b"".join(octet(m) for m in MESSAGES)

# What `loggen -P` sends: RFC 5424 with a BOM before MSG and an LF inside the octet count.
LOGGEN_MSG = (
    b"<38>1 2026-11-22T10:45:23+01:00 host-7 prg00000 1234 - "
    b'[meta sequenceId="1"] \xef\xbb\xbfseq: 0000000000, thread: 0000, runid: 1, stamp: x PAD\n'
)


@pytest.mark.parametrize("cls", [OctetCountingFramer, AutoFramer, SyslogLineFramer])
def test_max_frame_must_be_positive(
    cls: type[OctetCountingFramer | AutoFramer | SyslogLineFramer],
) -> None:
    """A framer that could never accept a byte is refused at construction."""
    with pytest.raises(ValueError, match="max_frame"):
        cls(0)


# ---- OctetCountingFramer -------------------------------------------------------------------


def test_octet_frames_fed_whole() -> None:
    """A stream fed in one piece yields each counted message exactly, LFs inside included."""
    framer = OctetCountingFramer(100)
    assert framer.feed(STREAM) == MESSAGES
    assert framer.buffered == 0
    assert framer.finish() is None


def test_octet_frames_fed_byte_by_byte() -> None:
    """Feeding one byte at a time yields each frame exactly when its last byte arrives."""
    framer = OctetCountingFramer(100)
    frames: list[Framed] = []
    ends = set(itertools.accumulate(len(octet(m)) for m in MESSAGES))
    for index, chunk in enumerate(byte_by_byte(STREAM), start=1):
        got = framer.feed(chunk)
        assert len(got) == (1 if index in ends else 0), f"offset {index}"
        frames += got
    assert frames == MESSAGES
    assert framer.finish() is None


def test_octet_trailing_data_stays_buffered() -> None:
    """An incomplete frame after complete ones is held, counted, and completed by the next feed."""
    framer = OctetCountingFramer(100)
    assert framer.feed(octet(b"<13>a") + b"11 <13>") == [b"<13>a"]
    assert framer.buffered == 7
    assert framer.feed(b"bcdefg") == []
    assert framer.buffered == 13
    assert framer.feed(b"h3 ") == [b"<13>bcdefgh"]
    assert framer.buffered == 2
    assert framer.feed(b"xyz") == [b"xyz"]
    assert framer.buffered == 0


def test_empty_feed_yields_nothing() -> None:
    """Feeding no bytes, before or inside a frame, changes nothing."""
    framer = OctetCountingFramer(100)
    assert framer.feed(b"") == []
    assert framer.feed(b"5 ab") == []
    assert framer.feed(b"") == []
    assert framer.feed(b"cde") == [b"abcde"]


def test_loggen_frame_keeps_its_lf_and_parses_without_it() -> None:
    """A loggen -P frame (LF inside the count, BOM before MSG) is framed whole and parses cleanly."""
    stream = octet(LOGGEN_MSG) * 3
    frames = feed_chunks(OctetCountingFramer(1000), byte_by_byte(stream))
    assert frames == [LOGGEN_MSG] * 3
    message = parse(LOGGEN_MSG)
    assert isinstance(message, SyslogMessage)
    assert message.msg == "seq: 0000000000, thread: 0000, runid: 1, stamp: x PAD"
    assert message.sd == {"meta": {"sequenceId": "1"}}
    assert message.app_name == "prg00000"


def test_lf_and_cr_between_frames_are_skipped() -> None:
    """An LF or CRLF a sender puts after an octet-counted frame is not a framing error."""
    stream = octet(b"<13>a") + b"\n" + octet(b"<13>b") + b"\r\n\n" + octet(b"<13>c")
    assert feed_chunks(OctetCountingFramer(100), [stream]) == [b"<13>a", b"<13>b", b"<13>c"]
    assert feed_chunks(OctetCountingFramer(100), byte_by_byte(stream)) == [
        b"<13>a",
        b"<13>b",
        b"<13>c",
    ]


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        pytest.param(b"abcd", b"abcd", id="exactly-max"),
        pytest.param(b"abcde", Oversized(b"abc", 5), id="one-over"),
        pytest.param(b"x" * 10_000, Oversized(b"xxx", 10_000), id="far-over"),
    ],
)
def test_octet_max_frame(message: bytes, frame: Framed) -> None:
    """A frame of max_frame bytes passes; a longer one is Oversized and skipped exactly."""
    stream = octet(message) + octet(b"next")
    expected = [frame, b"next"]
    assert feed_chunks(OctetCountingFramer(4, keep=3), [stream]) == expected
    assert feed_chunks(OctetCountingFramer(4, keep=3), byte_by_byte(stream)) == expected


def test_oversized_frame_is_never_held() -> None:
    """While skipping an oversized frame, only keep bytes are held and buffered counts the rest."""
    framer = OctetCountingFramer(10, keep=4)
    assert framer.feed(b"100 ") == []
    for n in range(1, 20):
        assert framer.feed(b"y" * 5) == []
        assert framer.buffered == 4 + 5 * n
        assert len(framer._body) <= 4
    assert framer.feed(b"yyyyy2 ok") == [Oversized(b"yyyy", 100), b"ok"]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        pytest.param(b"<13>hello\n", "expected a digit 1-9, got b'<'", id="not-a-digit"),
        pytest.param(b"05 hello\n", "leading zero", id="leading-zero"),
        pytest.param(b"0 \n", "leading zero", id="zero"),
        pytest.param(b"12x hello\n", "expected a digit or SP after b'12'", id="no-sp"),
        pytest.param(b" 5 hello\n", "expected a digit 1-9, got b' '", id="sp-first"),
        pytest.param(
            b"1" * (MAX_MSG_LEN_DIGITS + 1) + b" hello\n",
            f"more than {MAX_MSG_LEN_DIGITS} digits",
            id="too-many-digits",
        ),
    ],
)
def test_bad_msg_len_is_reported_with_its_bytes(stream: bytes, reason: str) -> None:
    """A bad MSG-LEN yields BadFraming with the reason and the bytes up to the next LF."""
    for chunks in ([stream], byte_by_byte(stream)):
        framer = OctetCountingFramer(100)
        frames = feed_chunks(framer, chunks)
        assert len(frames) == 1
        bad = frames[0]
        assert isinstance(bad, BadFraming)
        assert reason in bad.reason
        assert bad.prefix == stream[:-1]
        assert bad.size == len(stream) - 1
        assert framer.fell_back


def test_after_a_bad_msg_len_the_stream_is_lf_framed() -> None:
    """After a framing error the framer falls back to LF framing for the rest of the stream."""
    stream = octet(b"<13>ok") + b"5x <13>broken\n<13>line two\n" + octet(b"<13>c") + b"\n"
    expected: list[Framed] = [
        b"<13>ok",
        BadFraming(
            "bad MSG-LEN: expected a digit or SP after b'5', got b'x'", b"5x <13>broken", 13
        ),
        b"<13>line two",
        b"5 <13>c",  # no longer octet counted: the count is part of the line
    ]
    assert feed_chunks(OctetCountingFramer(100), [stream]) == expected
    assert feed_chunks(OctetCountingFramer(100), byte_by_byte(stream)) == expected


def test_bad_msg_len_without_lf_is_one_bad_frame_bounded_by_max_frame() -> None:
    """Garbage without any LF after a bad MSG-LEN is one BadFraming with a kept prefix and size."""
    stream = b"abc" + b"z" * 1000
    frames = feed_chunks(OctetCountingFramer(50, keep=8), split_at(stream, range(0, 1003, 9)))
    assert len(frames) == 1
    assert isinstance(frames[0], BadFraming)
    assert frames[0].prefix == b"abczzzzz"
    assert frames[0].size == 1003


@pytest.mark.parametrize(
    ("stream", "frame"),
    [
        pytest.param(b"12", BadFraming("stream ended inside MSG-LEN", b"12", 2), id="in-msg-len"),
        pytest.param(
            b"10 abc",
            BadFraming("stream ended inside a frame: 3 of 10 bytes received", b"10 ab", 6),
            id="in-frame",
        ),
        pytest.param(
            b"10 ",
            BadFraming("stream ended inside a frame: 0 of 10 bytes received", b"10 ", 3),
            id="right-after-sp",
        ),
        pytest.param(
            b"900 " + b"q" * 100,
            BadFraming("stream ended inside a frame: 100 of 900 bytes received", b"900 q", 104),
            id="in-oversized-frame",
        ),
    ],
)
def test_finish_inside_a_frame(stream: bytes, frame: BadFraming) -> None:
    """At the end of the stream, an unfinished frame is a BadFraming with the bytes received."""
    framer = OctetCountingFramer(20, keep=5)
    assert framer.feed(octet(b"done") + stream) == [b"done"]
    assert framer.finish() == frame
    assert framer.finish() is None
    assert framer.buffered == 0


def test_finish_after_fallback_returns_the_last_line() -> None:
    """After a fallback to LF framing, finish() returns the unterminated last line."""
    framer = OctetCountingFramer(100)
    assert framer.feed(b"<13>only line, no LF") == []
    last = framer.finish()
    assert isinstance(last, BadFraming)
    assert last.prefix == b"<13>only line, no LF"
    framer = OctetCountingFramer(100)
    assert len(framer.feed(b"x\n<13>tail")) == 1
    assert framer.finish() == b"<13>tail"


# ---- SyslogLineFramer and AutoFramer ---------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "frames"),
    [
        pytest.param(b"<13>a\0<13>b\0", [b"<13>a", b"<13>b"], id="nul-terminated"),
        pytest.param(b"<13>a\0\n<13>b\0\n", [b"<13>a", b"<13>b"], id="nul-lf-is-one-delimiter"),
        pytest.param(b"<13>a\n<13>b\r\n", [b"<13>a", b"<13>b"], id="lf-and-crlf"),
        pytest.param(b"<13>a\0b\n", [b"<13>a", b"b"], id="inner-nul-splits"),
        pytest.param(b"<13>a\0\0\n", [b"<13>a", b""], id="two-nuls"),
        pytest.param(b"<13>tail", [b"<13>tail"], id="unterminated-tail"),
    ],
)
def test_lf_mode_treats_nul_as_a_delimiter(stream: bytes, frames: list[Framed]) -> None:
    """In LF mode a NUL ends a frame like an LF, and NUL+LF is a single delimiter."""
    for chunks in ([stream], byte_by_byte(stream), split_at(stream, [6])):
        assert feed_chunks(SyslogLineFramer(100), chunks) == frames
        auto = AutoFramer(100)
        assert feed_chunks(auto, chunks) == frames
        assert auto.mode == "lf"


@pytest.mark.parametrize(
    ("stream", "mode", "frames"),
    [
        pytest.param(STREAM, "octet", MESSAGES, id="digit-means-octet-counting"),
        pytest.param(b"<13>a\n<14>b\n", "lf", [b"<13>a", b"<14>b"], id="lt-means-lf"),
        pytest.param(b"hello\n<14>b\n", "lf", [b"hello", b"<14>b"], id="other-means-lf"),
        pytest.param(b"\n<14>b\n", "lf", [b"", b"<14>b"], id="lf-first-means-lf"),
    ],
)
def test_auto_framer_detects_from_the_first_byte(
    stream: bytes, mode: str, frames: list[Framed]
) -> None:
    """The first byte of a connection picks octet counting (a digit) or LF framing (else)."""
    for chunks in ([stream], byte_by_byte(stream)):
        framer = AutoFramer(100)
        assert framer.mode is None
        assert framer.feed(b"") == []
        assert framer.mode is None
        assert feed_chunks(framer, chunks) == frames
        assert framer.mode == mode


def test_auto_framer_loggen_stream() -> None:
    """A loggen -P stream is detected as octet counted and framed message by message."""
    stream = octet(LOGGEN_MSG) * 2
    framer = AutoFramer(1000)
    assert feed_chunks(framer, split_at(stream, [1, 50, 200])) == [LOGGEN_MSG, LOGGEN_MSG]
    assert framer.mode == "octet"


def test_auto_framer_without_data() -> None:
    """A connection that sends nothing yields nothing and decides nothing."""
    framer = AutoFramer(10)
    assert framer.finish() is None
    assert framer.buffered == 0
    assert framer.mode is None


@pytest.mark.parametrize(
    ("stream", "frames"),
    [
        pytest.param(
            octet(b"<13>" + b"a" * 20) + octet(b"<13>ok"),
            [Oversized(b"<13>a", 24), b"<13>ok"],
            id="octet",
        ),
        pytest.param(
            b"<13>" + b"a" * 20 + b"\n<13>ok\n", [Oversized(b"<13>a", 24), b"<13>ok"], id="lf"
        ),
        pytest.param(
            b"<13>" + b"a" * 20 + b"\0<13>ok\0", [Oversized(b"<13>a", 24), b"<13>ok"], id="nul"
        ),
    ],
)
def test_auto_framer_oversized_in_both_modes(stream: bytes, frames: list[Framed]) -> None:
    """An oversized frame becomes Oversized in either mode and the next frame comes through."""
    for chunks in ([stream], byte_by_byte(stream)):
        framer = AutoFramer(10, keep=5)
        assert feed_chunks(framer, chunks) == frames


def test_auto_framer_buffered_follows_the_inner_framer() -> None:
    """buffered reports the bytes of the unfinished frame in either mode."""
    octet_framer = AutoFramer(100)
    octet_framer.feed(b"10 abc")
    assert octet_framer.buffered == 6
    lf_framer = AutoFramer(100)
    lf_framer.feed(b"<13>abc")
    assert lf_framer.buffered == 7


# ---- properties ----------------------------------------------------------------------------

messages = st.lists(st.binary(max_size=40), max_size=8)
chunk_cuts = st.lists(st.integers(min_value=0, max_value=500), max_size=20)


@given(msgs=messages, cuts=chunk_cuts, max_frame=st.integers(min_value=1, max_value=30))
def test_octet_frames_match_a_model(msgs: list[bytes], cuts: list[int], max_frame: int) -> None:
    """Any counted messages in any chunks come back as themselves, or Oversized past max_frame."""
    stream = b"".join(octet(m) for m in msgs if m)
    expected: list[Framed] = [
        m if len(m) <= max_frame else Oversized(m[:7], len(m)) for m in msgs if m
    ]
    assert feed_chunks(OctetCountingFramer(max_frame, keep=7), split_at(stream, cuts)) == expected


@given(
    data=st.binary(max_size=300) | messages.map(lambda ms: b"".join(octet(m) for m in ms if m)),
    garbage=st.binary(max_size=40),
    cuts=chunk_cuts,
    max_frame=st.integers(min_value=1, max_value=40),
    keep=st.integers(min_value=0, max_value=50),
)
def test_any_bytes_in_any_chunks_never_raise(
    data: bytes, garbage: bytes, cuts: list[int], max_frame: int, keep: int
) -> None:
    """Arbitrary bytes in random chunks never raise and frame as when fed whole."""
    stream = data + garbage
    for cls in (OctetCountingFramer, AutoFramer, SyslogLineFramer):
        whole = feed_chunks(cls(max_frame, keep), [stream])
        assert feed_chunks(cls(max_frame, keep), split_at(stream, cuts)) == whole
        for frame in whole:
            if isinstance(frame, bytes):
                assert len(frame) <= max_frame
            else:
                assert len(frame.prefix) <= max(keep, max_frame + 1)


@given(msgs=messages, cuts=chunk_cuts, max_frame=st.integers(min_value=1, max_value=30))
def test_octet_memory_stays_bounded(msgs: list[bytes], cuts: list[int], max_frame: int) -> None:
    """After every feed the framer holds at most max_frame bytes of frame and keep of a prefix."""
    framer = OctetCountingFramer(max_frame, keep=4)
    for chunk in split_at(b"".join(octet(m) for m in msgs if m), cuts):
        framer.feed(chunk)
        assert len(framer._body) <= max(max_frame, 4)
        assert len(framer._header) <= MAX_MSG_LEN_DIGITS


octet_pieces = st.lists(
    st.one_of(
        st.binary(max_size=30).map(lambda m: octet(m) if m else b"1 x"),
        st.sampled_from([b"\n", b"\r\n", b"0 ", b"01 x", b"12345678901 ", b"5x", b"9 ab", b" "]),
    ),
    max_size=10,
).map(b"".join)


@given(stream=octet_pieces, max_frame=st.integers(min_value=1, max_value=40))
def test_whole_feeds_frame_as_byte_by_byte(stream: bytes, max_frame: int) -> None:
    """Fed whole (complete frames take the fast path) or byte by byte (they never do), a stream
    with LF/CR between frames, bad or oversized MSG-LENs and cut frames frames the same."""
    for cls in (OctetCountingFramer, AutoFramer):
        whole = feed_chunks(cls(max_frame, keep=5), [stream])
        assert feed_chunks(cls(max_frame, keep=5), byte_by_byte(stream)) == whole
