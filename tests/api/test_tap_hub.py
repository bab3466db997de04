"""The tap's parts without a daemon: a client's bounded buffer and its missed marks, the query's
filters, ``[api] redact``/``tap_buffer`` in the config, and how ``shipper tap`` prints a stream."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from shipper.api.tap import BadFilter, Missed, TapFilter, TapHub, render_ndjson, render_sse
from shipper.cli_tap import follow, human
from shipper.config import parse_config
from shipper.errors import ConfigError
from shipper.events import Event, entry
from shipper.metrics import Registry, value
from tests.conftest import file_sink_config


def event(agent: str, sequence: int) -> Event:
    """A verified event of ``agent`` from source ``agents``."""
    record = b'{"agentId":"%s","sequence":%d,"action":"db.query"}' % (agent.encode(), sequence)
    return Event(
        "2026-12-03T10:00:00.000000Z",
        {"id": "agents", "kind": "json_tls"},
        agent,
        record,
        chain={"status": "ok", "sequence": sequence},
    )


def publish(hub: TapHub, events: list[Event]) -> None:
    hub.publish(events, [entry(e) for e in events])


def drained(items: list[bytes | Missed]) -> list[Any]:
    """A queue's items as sequences (envelopes) and ``("missed", n)``."""
    out: list[Any] = []
    for line in render_sse(items, None).split(b"\n\n")[:-1]:
        if line.startswith(b"event: missed"):
            out.append(("missed", int(line.rsplit(b":", 1)[1].rstrip(b"}"))))
        else:
            out.append(int(line.split(b'"sequence":')[-1].split(b",")[0].rstrip(b"}")))
    return out


async def test_a_full_buffer_drops_and_marks_the_count_where_the_events_were_lost() -> None:
    """Events beyond a client's buffer are dropped and counted, and a mark with the count since
    the last notice sits in the queue right where they were lost, once per run of drops."""
    registry = Registry()
    hub = TapHub(registry, limit=3)
    with hub.connected(TapFilter()) as client:
        publish(hub, [event("a", n) for n in range(1, 6)])  # 1..3 kept, 4, 5 lost
        publish(hub, [event("a", 6)])  # lost too: the same notice
        first = await client.take()
        publish(hub, [event("a", n) for n in range(7, 11)])  # 7..9 kept, 10 lost
        second = await client.take()
        snapshot = registry.snapshot()
        assert value(snapshot, "tap_clients") == 1
    assert first is not None
    assert second is not None
    assert drained(first) == [1, 2, 3, ("missed", 3)]
    assert drained(second) == [7, 8, 9, ("missed", 1)]
    assert value(snapshot, "tap_events") == 6
    assert value(snapshot, "tap_missed") == 4
    assert value(registry.snapshot(), "tap_clients") == 0
    assert hub.clients == []


async def test_a_buffer_holds_a_bounded_number_of_bytes_however_few_the_events() -> None:
    """Long events fill a client's buffer by their bytes before its event count: what would pass
    ``max_bytes`` is dropped and marked, an event longer than that alone still reaches an empty
    queue, and the room comes back as the client reads."""
    registry = Registry()
    events = [event("a", n) for n in range(1, 8)]
    size = len(entry(events[0]))
    hub = TapHub(registry, limit=100, max_bytes=3 * size)
    with hub.connected(TapFilter()) as client:
        publish(hub, events[:5])  # 1..3 fit, 4, 5 lost
        first = await client.take()
        publish(hub, events[5:7])  # room again for both
        second = await client.take()
    assert first is not None
    assert second is not None
    assert drained(first) == [1, 2, 3, ("missed", 2)]
    assert drained(second) == [6, 7]
    assert client.queued_bytes == 0
    small = TapHub(registry, limit=100, max_bytes=size // 2)
    with small.connected(TapFilter()) as client:
        publish(small, events[:2])
        alone = await client.take()
    assert alone is not None
    assert drained(alone) == [1, ("missed", 1)]


async def test_a_filtered_client_counts_only_what_it_would_have_seen() -> None:
    """Events another agent's filter rejects neither fill a client's buffer nor count as
    missed."""
    registry = Registry()
    hub = TapHub(registry, limit=2)
    with hub.connected(TapFilter(agents=frozenset({"a"}))) as client:
        publish(hub, [event("b", n) for n in range(1, 50)] + [event("a", 1), event("a", 2)])
        taken = await client.take()
    assert taken is not None
    assert drained(taken) == [1, 2]
    assert value(registry.snapshot(), "tap_missed") == 0


async def test_a_closed_hub_ends_each_stream_after_its_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the writer is done, a client takes what was queued, then nothing (its stream
    ends) rather than waiting for more."""
    hub = TapHub(Registry())
    with hub.connected(TapFilter()) as client:
        publish(hub, [event("a", 1)])
        hub.close()
        taken = await client.take()
        assert taken is not None
        assert drained(taken) == [1]
        with trio.fail_after(1):  # (virtual time: a wait for more fails at once)
            assert await client.take() is None


def test_query_filters_take_lists_and_repeats_and_refuse_the_unknown() -> None:
    """Comma lists and repeated parameters add values; an unknown parameter, status or alerts
    value is refused, saying which."""
    wants = TapFilter.of_query(
        [("agent", "a,b"), ("agent", "c"), ("status", "gap"), ("alerts", "")]
    )
    assert wants == TapFilter(None, frozenset("abc"), frozenset({"gap"}), alerts=True)
    assert TapFilter.of_query([("format", "ndjson")]).everything
    with pytest.raises(BadFilter, match="unknown query parameter 'agents'"):
        TapFilter.of_query([("agents", "a")])
    with pytest.raises(BadFilter, match="got fine"):
        TapFilter.of_query([("status", "ok,fine")])
    with pytest.raises(BadFilter, match="alerts: expected true or false"):
        TapFilter.of_query([("alerts", "maybe")])


def test_api_redact_and_tap_buffer_are_read_like_a_sinks(tmp_path: Path) -> None:
    """``[api] redact`` is read by the sinks' rules (a hash needs a key), and ``tap_buffer``
    must be positive; problems name their key path."""
    raw = file_sink_config(tmp_path)
    raw["api"] = {"address": "127.0.0.1:0", "tap_buffer": 10, "redact": {"remove": ["agent"]}}
    api = parse_config(raw).api
    assert api.tap_buffer == 10
    assert api.redact is not None
    assert api.redact.remove == (("agent",),)
    raw["api"] = {"tap_buffer": 0, "redact": {"hash": ["agent"]}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    problems = [str(problem) for problem in caught.value.problems]
    assert any(p.startswith("api.tap_buffer") for p in problems), problems
    assert any(p.startswith("api.redact.key") for p in problems), problems


def test_shipper_tap_tells_missed_events_on_stderr() -> None:
    """A stream's envelopes go to stdout, one line each; a missed notice goes to stderr with
    its count; comments are skipped."""
    envelope = entry(event("a", 7)).split(b"\0", 1)[1].decode()
    lines = [": tap", "", f"data: {envelope}", "", "event: missed", 'data: {"missed":42}', ""]
    out, err = io.StringIO(), io.StringIO()
    follow(lines, out, err, as_json=False)
    assert out.getvalue().splitlines() == ["2026-12-03T10:00:00.000000Z agents a #7 ok db.query"]
    assert err.getvalue() == "shipper tap: missed 42 events (this client fell behind)\n"
    assert human({"source": {"id": "s"}, "malformed": {"reason": "bad"}}).endswith("malformed: bad")


def test_ndjson_gives_envelopes_and_notices_one_per_line() -> None:
    """``format=ndjson`` renders each entry as its envelope (the route cut off, no id) on a
    line, and a missed mark as ``{"missed":N}``."""
    one = event("a", 1)
    rendered = render_ndjson([entry(one), Missed(5)], None)
    assert rendered == one.encode_without_id() + b'\n{"missed":5}\n'
