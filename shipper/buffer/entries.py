"""WAL entries: what a record's payload holds (sans-IO: bytes in, bytes out).

The WAL stores *entries*, each a route and an opaque payload; the writer groups the entries of
one append into records (``shipper.buffer.record``) of about ``GROUP_BYTES`` each::

    entry    = route, NUL, payload
    record   = entry *(LF entry)          (the record's payload)

A route is a byte string without LF or NUL; the empty route goes to every reader, any other only
to readers whose inputs name it (the daemon routes by source id, and gives alerts the empty
route). A payload holds no LF; the WAL never looks into it (the daemon stores an event envelope
without its id: ``shipper.events.entry``).

Positions: an entry's position is its segment and the offset of its first byte in the segment
file (the offset of its record, plus the record header, plus the bytes of the entries before
it and their LFs). The WAL stores no ids: whoever needs one derives it from the position
(``shipper.events.envelopes``).

Readers take a record entry by entry (``take``), or, for the usual record (every entry of one
route, every payload starting alike), with a few calls for the whole record (``uniform``).
"""

from __future__ import annotations

import re
from typing import Final

from shipper.buffer.record import HEADER_SIZE

#: What ends an entry's route.
ROUTE_END: Final = b"\0"
#: What separates the entries of a record.
SEPARATOR: Final = b"\n"

_ENTRY: Final = rb"[^\n\0]*+\0[^\n]*+"
_ENTRIES: Final = re.compile(_ENTRY + rb"(?:\n" + _ENTRY + rb")*+")


def entry(route: bytes, payload: bytes) -> bytes:
    """One entry: ``route`` (no LF or NUL) for ``payload`` (no LF)."""
    if b"\n" in route or b"\0" in route or b"\n" in payload:
        raise ValueError("a route holds neither LF nor NUL, a payload no LF")
    return route + ROUTE_END + payload


def holds_entries(payload: bytes) -> bool:
    """Whether a record's payload is entries (each with its route), as the writer makes them."""
    return _ENTRIES.fullmatch(payload) is not None


def count(payload: bytes) -> int:
    """How many entries a record's payload holds."""
    return payload.count(SEPARATOR) + 1


def uniform(payload: bytes, lead: bytes) -> tuple[bytes, list[bytes]] | None:
    """The route and the payloads, ``lead`` cut off each, of a record's payload in which every
    entry has the same route and a payload starting with ``lead``; None for any other (``take``
    it entry by entry). One split of the whole record, no work per entry.

    Exact: every LF of the record is followed by route, NUL, ``lead`` (the pieces between
    those patterns hold no LF), so the pieces are the entries, each entry's route is that route
    (it holds no NUL) and its payload is ``lead`` and its piece. An entry at offset ``p`` with
    rest ``r`` is followed by one at ``p + len(route) + 2 + len(lead) + len(r)``.
    """
    end = payload.find(ROUTE_END)
    if end < 0:
        return None
    start = payload[: end + 1] + lead  # the first entry's route, NUL, lead
    if not payload.startswith(start):
        return None
    rests = payload.split(SEPARATOR + start)
    # No LF left in the pieces (the first still holds ``start``: so none in the route or lead
    # either). A copy and a memchr: far cheaper than counting the LFs.
    if SEPARATOR in b"".join(rests):
        return None
    rests[0] = rests[0][len(start) :]
    route = payload[:end]
    return route, rests


def take(
    offset: int,
    payload: bytes,
    routes: frozenset[bytes] | None,
    offsets: list[int],
    payloads: list[bytes],
) -> int:
    """Append to ``payloads`` the payload of each entry of the record at ``offset`` whose
    payload is ``payload``, and to ``offsets`` its position's offset; with ``routes``, only the
    entries whose route is one of them or empty. Returns how many entries the record holds.

    The readers' hot loop: per entry one split, one partition and two appends. Raises
    ValueError (appending nothing) if an entry has no route (damage that passed the record's
    checksum, such as a record of another WAL format).
    """
    items = payload.split(SEPARATOR)
    first = len(offsets)
    position = offset + HEADER_SIZE
    for item in items:
        route, found, data = item.partition(ROUTE_END)
        if not found:
            del offsets[first:], payloads[first:]
            raise ValueError(f"a WAL entry at offset {position} has no route")
        if routes is None or not route or route in routes:
            offsets.append(position)
            payloads.append(data)
        position += len(item) + 1
    return len(items)
