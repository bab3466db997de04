"""Feeding sans-IO framers in chunks: whole, byte by byte, or cut at chosen offsets."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol

from shipper.codecs.framing import Framed


class Framer(Protocol):
    """What every framer in ``shipper.codecs.framing`` offers."""

    def feed(self, data: bytes, /) -> Sequence[Framed]: ...

    def finish(self) -> Framed | None: ...


def feed_chunks(framer: Framer, chunks: Iterable[bytes], finish: bool = True) -> list[Framed]:
    """Every frame the framer yields for ``chunks``, plus what finish() returns when asked."""
    frames: list[Framed] = []
    for chunk in chunks:
        frames += framer.feed(chunk)
    if finish:
        last = framer.finish()
        if last is not None:
            frames.append(last)
    return frames


def byte_by_byte(data: bytes) -> list[bytes]:
    """``data`` as one-byte chunks."""
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut into chunks at the given offsets (sorted, deduplicated, clipped)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]
