"""WAL entries (routes and opaque payloads) and the envelopes the daemon's readers make of them."""

from __future__ import annotations

from itertools import accumulate

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.buffer.entries import count, entry, holds_entries, take, uniform
from shipper.buffer.record import HEADER_SIZE
from shipper.events import Event, envelopes
from shipper.events import entry as event_entry

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}


def test_take_hands_out_the_payloads_routed_to_the_inputs_with_their_positions() -> None:
    """``take`` keeps the payloads whose route is an input or empty, each with the offset of its
    entry, and counts every entry of the record."""
    record = b"\n".join([entry(b"a", b"one"), entry(b"b", b"two"), entry(b"", b"alert")])
    offsets: list[int] = []
    payloads: list[bytes] = []
    assert take(100, record, frozenset({b"a"}), offsets, payloads) == 3 == count(record)
    assert payloads == [b"one", b"alert"]
    first = 100 + HEADER_SIZE
    assert offsets == [first, first + len(b"a\0one\nb\0two\n")]
    assert take(100, record, None, offsets, payloads) == 3
    assert payloads[2:] == [b"one", b"two", b"alert"]


def test_take_refuses_a_record_with_an_entry_without_route_and_keeps_nothing_of_it() -> None:
    """A record payload whose entry lacks a route (say, a record of another WAL format) raises
    ValueError, and nothing of that record is handed out."""
    offsets, payloads = [7], [b"earlier"]
    with pytest.raises(ValueError, match="no route"):
        take(0, entry(b"a", b"one") + b'\n{"v":1,"id":"1-24"}', None, offsets, payloads)
    assert (offsets, payloads) == ([7], [b"earlier"])
    assert not holds_entries(b'{"v":1,"id":"1-24"}')
    assert holds_entries(entry(b"a", b"one") + b"\n" + entry(b"", b""))


def test_envelopes_put_each_events_position_in_as_its_id() -> None:
    """The daemon's envelopes carry the WAL position of their entry as ``id``, the second key,
    and are otherwise the envelope as encoded; a payload that is no envelope raises."""
    event = Event("2026-11-23T00:00:00.000000Z", SOURCE, "a", orjson.dumps({"n": 1}))
    offsets: list[int] = []
    payloads: list[bytes] = []
    take(16, event_entry(event), None, offsets, payloads)
    (envelope,) = envelopes(3, offsets, payloads)
    assert envelope == event.encode(f"3-{16 + HEADER_SIZE}")
    assert list(orjson.loads(envelope))[:2] == ["v", "id"]
    with pytest.raises(ValueError, match="not an envelope"):
        envelopes(3, [24], [b'{"x":1}'])


LEAD = b'{"v":1,'
routes = st.sampled_from([b"a", b"b", b""])
payloads = st.builds(
    bytes.__add__,
    st.sampled_from([LEAD, LEAD, LEAD, b"", b'{"v":2,', LEAD[:-1]]),
    st.binary(max_size=12).map(lambda data: data.replace(b"\n", b" ")),
)


@given(
    st.lists(st.tuples(routes, payloads), min_size=1, max_size=8),
    st.booleans(),
    st.sampled_from([b"", b"\0", b"\n" + LEAD, b"\0\n", b"a\0" + LEAD]),
)
def test_uniform_splits_a_record_exactly_as_take_reads_it_or_not_at_all(
    items: list[tuple[bytes, bytes]], same: bool, noise: bytes
) -> None:
    """For records of entries with one route or several, payloads starting with the lead or not,
    and bytes that look like the structure (NULs, LFs, the lead) appended: ``uniform`` splits
    exactly the records whose entries all have one route and start with the lead, into what
    ``take`` reads of them with the lead cut off, at the positions ``take`` gives."""
    if same:
        items = [(items[0][0], LEAD + payload) for _, payload in items]
    record = b"\n".join(route + b"\0" + payload for route, payload in items) + noise
    offsets: list[int] = []
    found: list[bytes] = []
    try:
        take(100, record, None, offsets, found)
    except ValueError:
        assert uniform(record, LEAD) is None
        return
    split = record.split(b"\n")
    routes_of = {item.partition(b"\0")[0] for item in split}
    expected = len(routes_of) == 1 and all(payload.startswith(LEAD) for payload in found)
    got = uniform(record, LEAD)
    assert (got is not None) == expected
    if got is not None:
        route, rests = got
        assert routes_of == {route}
        assert [LEAD + rest for rest in rests] == found
        step = len(route) + 2 + len(LEAD)
        assert list(accumulate((step + len(rest) for rest in rests), initial=offsets[0])) == [
            *offsets,
            offsets[-1] + step + len(rests[-1]),
        ]
    assert same <= expected or noise != b""
