"""Hypothesis strategies for envelopes as ``Event.encode`` writes them, of every shape and with
hostile content: strings and records that hold the envelope's own keys, quotes, braces and
backslashes, nested objects in every object-valued key."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from shipper.events import ALERT_SOURCE_ID, Event, Malformed, alert_event

#: Pieces of text that look like the envelope's structure.
TRICKS = (
    '"agent":"x"',
    ',"record":{',
    ',"chain":{"sequence":1},',
    ',"malformed":{',
    "}",
    "},",
    '"',
    "\\",
    '\\"',
    "shipper.archive_seal",
    "\n",
    "é\u2028",
)
texts = (
    st.text(max_size=12)
    | st.sampled_from(TRICKS)
    | st.lists(st.sampled_from(TRICKS), max_size=4).map("".join)
)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | texts
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
objects = st.dictionaries(
    texts | st.sampled_from(["id", "agent", "record", "sequence"]), values, max_size=3
)


@st.composite
def sources(draw: st.DrawFn) -> dict[str, Any]:
    source_id = draw(st.sampled_from(["agents", "other", ALERT_SOURCE_ID]) | scalars)
    return {"id": source_id, **draw(objects)}


@st.composite
def chains(draw: st.DrawFn) -> dict[str, Any]:
    sequence = draw(st.integers(0, 2**63 - 1) | scalars | values)
    chain = {"status": draw(st.sampled_from(["ok", "genesis"]) | texts), "sequence": sequence}
    return {**chain, **draw(objects)} if draw(st.booleans()) else chain


@st.composite
def records(draw: st.DrawFn) -> bytes:
    record: dict[str, Any] = draw(objects)
    if draw(st.booleans()):
        record["hash"] = draw(texts | scalars)
    if draw(st.booleans()):
        record["action"] = draw(st.sampled_from(["shipper.archive_seal", "x"]))
    spaced = draw(st.booleans())
    return orjson.dumps(record).replace(b",", b", ") if spaced else orjson.dumps(record)


#: Sources as the daemon's make them (plain, flat objects).
PLAIN_SOURCES = (
    {"id": "agents", "kind": "json_tls", "peer": "10.0.0.7:5", "tls_san": ["gw-1"]},
    {"id": "other", "kind": "json_tls", "peer": "10.0.0.8:6"},
)


@st.composite
def envelope_lists(draw: st.DrawFn, max_size: int = 16, usual: bool = False) -> list[bytes]:
    """Envelopes with ids in WAL order, drawing their sources from a few (as connections share
    theirs) and their agents from a few, with hostile ones among them; most of the shape the
    daemon writes most (a plain timestamp, a chain, a record). ``usual``: most batches as the
    daemon makes them most (one plain source, one day, few alerts), hostile events among them."""
    if usual:
        pool = [draw(st.sampled_from(PLAIN_SOURCES))]
        if draw(st.integers(0, 3)) == 0:
            pool.append(draw(sources() | st.sampled_from(PLAIN_SOURCES)))
    else:
        pool = draw(st.lists(sources(), min_size=1, max_size=3))
    agents = ["agent-a", "agent-b", draw(texts) if draw(st.integers(0, 4 * usual)) == 0 else "é"]
    count = draw(st.integers(0, max_size))
    times = ["2026-11-22T10:45:23.102345Z", "2026-11-23T00:00:00.000000Z"]
    lines = []
    for index in range(count):
        received_at = draw(
            st.sampled_from(times[:1] * 30 * usual + times)
            if draw(st.integers(0, 9 + 40 * usual))
            else texts
        )
        malformed = draw(st.integers(0, 9)) == 0
        if draw(st.integers(0, 4 + 30 * usual)) == 0:  # an alert (a seal, most of them)
            action = draw(st.sampled_from(["shipper.archive_seal", "shipper.archive_seal", "x"]))
            alert = alert_event(action, draw(st.sampled_from(agents)), draw(objects))
            lines.append(alert.encode(f"{1 + index // 10}-{index * 97}"))
            continue
        event = Event(
            received_at,
            draw(st.sampled_from(pool)),
            draw(st.sampled_from(agents)) if draw(st.integers(0, 5)) else None,
            None if malformed else draw(records()),
            Malformed.of(draw(texts), draw(st.binary(max_size=8))) if malformed else None,
            syslog=draw(st.none() | objects) if draw(st.integers(0, 3 + 16 * usual)) == 0 else None,
            chain=draw(chains()) if draw(st.integers(0, 3)) else None,
            identity_mismatch=draw(objects) if draw(st.integers(0, 5)) == 0 else None,
        )
        lines.append(event.encode(f"{1 + index // 10}-{index * 97}"))
    return lines
