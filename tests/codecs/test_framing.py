"""Tests of LineFramer: newline framing with a bound on frame size (sans-IO, h11 test_io style)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.codecs.framing import DEFAULT_KEEP, Frame, LineFramer, Oversized
from tests.codecs.chunking import byte_by_byte, feed_chunks, split_at

STREAM = b'{"a":1}\n\n{"b":2}\r\nplain text\n'
STREAM_FRAMES: list[Frame] = [b'{"a":1}', b"", b'{"b":2}', b"plain text"]


def test_max_frame_must_be_positive() -> None:
    """A framer that could never accept a byte is refused at construction."""
    with pytest.raises(ValueError, match="max_frame"):
        LineFramer(0)


def test_frames_fed_whole() -> None:
    """A stream fed in one piece yields each LF-terminated frame, empty ones included."""
    framer = LineFramer(100)
    assert framer.feed(STREAM) == STREAM_FRAMES
    assert framer.buffered == 0
    assert framer.finish() is None


def test_frames_fed_byte_by_byte() -> None:
    """Feeding one byte at a time yields each frame exactly when its LF arrives."""
    framer = LineFramer(100)
    frames: list[Frame] = []
    for index, chunk in enumerate(byte_by_byte(STREAM)):
        got = framer.feed(chunk)
        if chunk == b"\n":
            assert len(got) == 1
        else:
            assert got == [], f"a frame before its LF at offset {index}"
        frames += got
    assert frames == STREAM_FRAMES
    assert framer.finish() is None


def test_empty_feed_yields_nothing() -> None:
    """Feeding no bytes, before or after data, changes nothing."""
    framer = LineFramer(100)
    assert framer.feed(b"") == []
    assert framer.feed(b"ab") == []
    assert framer.feed(b"") == []
    assert framer.buffered == 2
    assert framer.feed(b"\n") == [b"ab"]


def test_trailing_data_stays_buffered_until_its_newline() -> None:
    """An unterminated tail is held (and counted in buffered) until the rest of its line arrives."""
    framer = LineFramer(100)
    assert framer.feed(b"one\ntw") == [b"one"]
    assert framer.buffered == 2
    assert framer.feed(b"o") == []
    assert framer.buffered == 3
    assert framer.feed(b"\nthree\nfo") == [b"two", b"three"]
    assert framer.buffered == 2
    assert framer.feed(b"ur\n") == [b"four"]
    assert framer.buffered == 0


def test_finish_returns_the_unterminated_tail() -> None:
    """finish() yields the bytes after the last LF, once, and then nothing is left."""
    framer = LineFramer(100)
    assert framer.feed(b"a\nlast line") == [b"a"]
    assert framer.finish() == b"last line"
    assert framer.buffered == 0
    assert framer.finish() is None


def test_finish_without_leftovers_returns_none() -> None:
    """finish() after a stream ending in LF, or after no data at all, yields nothing."""
    assert LineFramer(100).finish() is None
    framer = LineFramer(100)
    framer.feed(b"a\nb\n")
    assert framer.finish() is None


@pytest.mark.parametrize(
    ("chunks", "frames"),
    [
        pytest.param([b"a\r\nb\r\n"], [b"a", b"b"], id="crlf"),
        pytest.param([b"a\r", b"\n"], [b"a"], id="cr-and-lf-in-two-feeds"),
        pytest.param([b"a\r\r\n"], [b"a\r"], id="only-one-cr-stripped"),
        pytest.param([b"a\rb\n"], [b"a\rb"], id="inner-cr-kept"),
        pytest.param([b"\r\n"], [b""], id="bare-crlf-is-empty-frame"),
        pytest.param([b"a\n\r"], [b"a", b""], id="cr-at-end-of-stream"),
    ],
)
def test_cr_before_lf_is_stripped(chunks: list[bytes], frames: list[Frame]) -> None:
    """One CR right before the LF is not part of the frame; every other CR is kept."""
    assert feed_chunks(LineFramer(100), chunks) == frames


@pytest.mark.parametrize(
    ("line", "frame"),
    [
        pytest.param(b"abcd\n", b"abcd", id="exactly-max"),
        pytest.param(b"abcd\r\n", b"abcd", id="exactly-max-with-cr"),
        pytest.param(b"abcde\n", Oversized(b"abcde", 5), id="one-over"),
        pytest.param(b"abcde\r\n", Oversized(b"abcde\r", 6), id="one-over-with-cr"),
    ],
)
def test_max_frame_does_not_count_the_line_ending(line: bytes, frame: Frame) -> None:
    """A frame of exactly max_frame bytes passes; one more byte makes it Oversized."""
    assert feed_chunks(LineFramer(4), [line]) == [frame]
    assert feed_chunks(LineFramer(4), byte_by_byte(line)) == [frame]


def test_oversized_line_keeps_a_prefix_and_the_next_line_comes_through() -> None:
    """An oversized line becomes Oversized(first keep bytes, size) and framing carries on."""
    line = bytes(b for b in range(256) if b != ord("\n")) * 4
    framer = LineFramer(100, keep=10)
    assert framer.feed(b"before\n" + line + b"\nafter\n") == [
        b"before",
        Oversized(line[:10], 1020),
        b"after",
    ]
    assert framer.buffered == 0
    assert framer.finish() is None


def test_oversized_line_across_many_feeds() -> None:
    """An oversized line arriving in small pieces is skipped, counted, and framing carries on."""
    line = b"x" * 1000
    framer = LineFramer(50, keep=20)
    frames = feed_chunks(framer, split_at(b"a\n" + line + b"\nnext\n", range(0, 2000, 7)))
    assert frames == [b"a", Oversized(line[:20], 1000), b"next"]


def test_buffered_counts_an_oversized_line_while_skipping_it() -> None:
    """While skipping an oversized line, buffered is the count of its bytes seen so far."""
    framer = LineFramer(10, keep=4)
    seen = 0
    for _ in range(20):
        assert framer.feed(b"y" * 5) == []
        seen += 5
        assert framer.buffered == seen
    assert framer.feed(b"\r\nz\n") == [Oversized(b"yyyy", 101), b"z"]
    assert framer.buffered == 0


def test_finish_while_skipping_an_oversized_line() -> None:
    """At the end of the stream, a line still being skipped is returned as Oversized."""
    framer = LineFramer(10, keep=3)
    assert framer.feed(b"ok\n" + b"q" * 30) == [b"ok"]
    assert framer.finish() == Oversized(b"qqq", 30)
    assert framer.finish() is None
    assert framer.buffered == 0


def test_finish_with_a_tail_over_the_limit() -> None:
    """An unterminated tail of max_frame+1 bytes (held, as a CR might follow) is Oversized."""
    framer = LineFramer(4, keep=2)
    assert framer.feed(b"abcde") == []
    assert framer.buffered == 5
    assert framer.finish() == Oversized(b"ab", 5)


def test_default_keep_is_4096() -> None:
    """Without keep, an oversized line fed whole keeps its first 4096 bytes."""
    line = b"k" * 10_000
    assert DEFAULT_KEEP == 4096
    assert LineFramer(5000).feed(line + b"\n") == [Oversized(line[:4096], 10_000)]


def test_oversized_prefix_is_keep_bytes_however_the_line_arrives() -> None:
    """With keep > max_frame, the Oversized prefix is the first keep bytes however data arrives."""
    line = bytes(range(11, 111))  # 100 bytes, no LF
    whole = feed_chunks(LineFramer(10, keep=64), [line + b"\n"])
    assert whole == [Oversized(line[:64], 100)]
    assert feed_chunks(LineFramer(10, keep=64), byte_by_byte(line + b"\n")) == whole
    assert feed_chunks(LineFramer(10, keep=64), split_at(line + b"\n", [5, 20, 90])) == whole
    assert feed_chunks(LineFramer(10, keep=64), byte_by_byte(line)) == whole  # via finish()


# A stream of lines over a small alphabet so that CR, LF and long lines all show up often.
lines = st.lists(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from([b"", b"\r"]),
    max_size=12,
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Lines joined by LF or CRLF, sometimes with an unterminated tail."""
    body = b"".join(line + draw(st.sampled_from([b"\n", b"\r\n"])) for line in draw(lines))
    return body + draw(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")))


@given(
    data=streams(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    max_frame=st.integers(min_value=1, max_value=25),
    keep=st.integers(min_value=0, max_value=60),
)
def test_any_chunking_yields_the_same_frames(
    data: bytes, cuts: list[int], max_frame: int, keep: int
) -> None:
    """Feeding a stream in any pieces yields exactly the frames of feeding it whole."""
    whole = feed_chunks(LineFramer(max_frame, keep), [data])
    assert feed_chunks(LineFramer(max_frame, keep), split_at(data, cuts)) == whole
    assert feed_chunks(LineFramer(max_frame, keep), byte_by_byte(data)) == whole


@given(
    data=streams(),
    max_frame=st.integers(min_value=1, max_value=25),
    keep=st.integers(min_value=0, max_value=60),
)
def test_frames_match_a_simple_model(data: bytes, max_frame: int, keep: int) -> None:
    """Frames are the LF-separated lines minus one trailing CR, Oversized past max_frame."""
    *complete, tail = data.split(b"\n")
    expected: list[Frame] = []
    for line in [*complete, tail] if tail else complete:
        body = line.removesuffix(b"\r")
        expected.append(body if len(body) <= max_frame else Oversized(line[:keep], len(line)))
    assert feed_chunks(LineFramer(max_frame, keep), byte_by_byte(data)) == expected


@given(
    data=streams(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    max_frame=st.integers(min_value=1, max_value=25),
)
def test_buffered_stays_within_max_frame_plus_one_unless_skipping(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    """After every feed, buffered is the pending tail's length, at most max_frame+1 unless skipped.

    The pending tail is everything after the last LF fed so far; a tail longer than max_frame+1
    bytes is being skipped (only counted), so that is the only case buffered may exceed the bound.
    """
    framer = LineFramer(max_frame, keep=4)
    fed = b""
    for chunk in split_at(data, cuts):
        framer.feed(chunk)
        fed += chunk
        pending = len(fed) - (fed.rfind(b"\n") + 1)
        assert framer.buffered == pending
        if pending <= max_frame + 1:
            assert framer.buffered <= max_frame + 1
        assert len(framer._partial) <= max_frame + 1  # the memory actually held
