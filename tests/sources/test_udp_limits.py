"""UDP limits: the burst buffer bounded in bytes as well as events, the receive buffer, counted
kernel drops, the config keys that set them; and a property of every source's decode path: no
input makes it raise, and every frame or datagram gets a counted outcome."""

from __future__ import annotations

import copy
import gc
import socket
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.codecs.framing import AutoFramer, LineFramer
from shipper.config import Address, parse_config
from shipper.errors import ConfigError
from shipper.events import Event
from shipper.sources._net import Connection, FramedSource
from shipper.sources.json_tls import JsonTlsSource, JsonTlsSourceConfig
from shipper.sources.syslog import (
    FORWARD_BYTES,
    SO_RCVBUFFORCE,
    SyslogMode,
    SyslogSource,
    SyslogSourceConfig,
    burst_cost,
)
from tests.conftest import LogCapture, wait_until
from tests.sources.handed import holds_only_plain_values

PEER = ("10.0.0.7", 514)
HEADER = b'<110>1 2026-11-23T10:45:23.102Z host-7 openclaw 811 audit [origin ip="10.0.0.7"] '


def udp_source(
    capacity: int = 0, **settings: Any
) -> tuple[SyslogSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A UDP syslog source on an ephemeral loopback port and the channel (of ``capacity``
    batches; 0: full until someone receives) it sends into."""
    config = SyslogSourceConfig(id="udp", address=Address("127.0.0.1", 0), mode="udp", **settings)
    send, receive = trio.open_memory_channel[list[Event]](capacity)
    return SyslogSource(config, send), receive


def record_datagram(sequence: int, keys: int = 20, pad: int = 0) -> bytes:
    """An RFC 5424 datagram whose MSG is an audit record with ``keys`` small extra fields and a
    field of ``pad`` bytes."""
    record: dict[str, Any] = {"agentId": "agent-1", "sequence": sequence, "pad": "p" * pad}
    record.update((f"k{index}", index) for index in range(keys))
    return HEADER + orjson.dumps(record)


@contextmanager
def traced() -> Iterator[list[int]]:
    """Measure the memory allocated and still held at the end of the block (tracemalloc).
    Decode a datagram of the same shape before: orjson fills a cache of JSON keys (at most
    2048, so each shape has fewer distinct keys)."""
    gc.collect()
    tracemalloc.start()
    held = [0]
    try:
        yield held
    finally:
        gc.collect()
        held[0] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()


# --- the burst buffer ------------------------------------------------------------------------


async def test_the_burst_buffer_is_bounded_in_bytes_and_hands_on_in_bounded_batches(
    logs: LogCapture,
) -> None:
    """While the pipeline is full, large datagrams fill burst_bytes long before burst_events; the
    rest are dropped and counted, the memory held stays within burst_bytes, and the held events
    are handed on in batches of about FORWARD_BYTES once there is room."""
    burst_bytes = 2 * 1024 * 1024
    source, receive = udp_source(burst_bytes=burst_bytes)
    sent = 150
    datagrams = [record_datagram(n, keys=200, pad=18000) for n in range(sent)]  # ~20 KB each
    source._datagram(datagrams[0], PEER, 65535)  # fills orjson's key cache (see traced)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source._forward_pending)
        with traced() as held:
            for datagram in datagrams:
                source._offer(source._datagram(datagram, PEER, 65535))
                await trio.lowlevel.checkpoint()  # as the reader does between datagrams
                assert source.held_bytes <= burst_bytes
        assert held[0] <= burst_bytes
        kept = source.held_events
        assert 0 < kept < sent
        assert source.counters["dropped_full"] == sent - kept
        batches: list[list[Event]] = []
        while sum(map(len, batches)) < kept:
            batches.append(await receive.receive())
        source._reader_done = True
        source._pending_added.set()
    assert all(holds_only_plain_values(event) for batch in batches for event in batch)
    assert len(batches) >= 2
    largest = max(map(burst_cost, (event for batch in batches for event in batch)))
    assert all(sum(map(burst_cost, batch)) < FORWARD_BYTES + largest for batch in batches)
    (dropped,) = logs.entries("udp_dropped_full")  # at most one line a second
    assert (dropped["dropped"], dropped["not_logged_since"]) == (1, 0)
    assert (dropped["burst_bytes"], dropped["burst_events"]) == (burst_bytes, 65536)


async def test_an_empty_burst_buffer_takes_any_one_datagram() -> None:
    """A datagram whose events count more than burst_bytes is not dropped when nothing else is
    held (the pipeline may well have room for it)."""
    source, _receive = udp_source(capacity=1, burst_bytes=64 * 1024)
    many = b"".join(b"5 <13>x" for _ in range(100))  # octet-counted: 100 events, ~150 KiB counted
    batch = source._datagram(many, PEER, 65535)
    assert sum(map(burst_cost, batch)) > 64 * 1024
    source._offer(batch)
    assert (source.held_events, source.counters["dropped_full"]) == (100, 0)
    source._offer(source._datagram(b"<13>one more", PEER, 65535))
    assert source.counters["dropped_full"] == 1


SHAPES = {
    "rfc5424-json-sd": record_datagram(1),
    "rfc5424-json-large": record_datagram(1, keys=500, pad=40000),
    "rfc5424-json-chained": HEADER
    + orjson.dumps(
        {"agentId": "agent-1", "sequence": 2, "prevHash": "sha256:" + "1" * 64, "hash": "x" * 99}
    ),
    "rfc3164-text": b"<13>Nov 23 10:45:23 host-7 sshd[42]: Accepted publickey for alice",
    "text-20k": b"<13>1 2026-11-23T10:45:23Z h a p m - " + b"x" * 20000,
    "control-chars": b"<13>1 2026-11-23T10:45:23Z h a p m - " + b"\x01" * 20000,
    "bad-utf8": b"<13>1 2026-11-23T10:45:23Z h a p m - " + b"\xff" * 20000,
    "not-syslog": b"garbage without a priority",
    "empty-sd-elements": b"<13>1 - h a p m " + b"".join(b"[e%d]" % i for i in range(2000)) + b" x",
    "sd-params": b"<13>1 - h a p m [e " + b" ".join(b'p%d="v"' % i for i in range(2000)) + b"] x",
    "long-hostname": b"<13>1 - " + b"h" * 20000 + b" a p m - x",
    "octet-counted-tiny-frames": b"3 <1>" * 1000,
}


@pytest.mark.parametrize("datagram", SHAPES.values(), ids=SHAPES.keys())
async def test_burst_cost_is_an_upper_bound_of_the_memory_a_waiting_event_holds(
    datagram: bytes,
) -> None:
    """For every kind of datagram, hostile ones included, what its events count against
    burst_bytes is at least the memory they hold while they wait."""
    source, _receive = udp_source()
    peer = ("2001:db8::ffff:ffff:ffff:ffff", 65535)
    source._datagram(datagram, peer, 65535)  # fills orjson's key cache (see traced)
    events: list[Event] = []
    with traced() as held:
        for _ in range(20):
            batch = source._datagram(datagram, peer, 65535)
            events.extend(batch)
    assert held[0] <= sum(map(burst_cost, events))


# --- the receive buffer and kernel drops -----------------------------------------------------


async def test_the_receive_buffer_is_requested_and_what_the_kernel_granted_is_logged(
    logs: LogCapture,
) -> None:
    """receive_buffer is requested from the kernel, and the size it granted is logged (half of
    what Linux reports); without the key, the kernel's default is logged."""
    async with trio.open_nursery() as nursery:
        for size in (None, 65536):
            source, _receive = udp_source(receive_buffer=size)
            await nursery.start(source.run)
            source.stop()
    default, requested = logs.entries("udp_receive_buffer")
    assert (default["requested"], default["level"]) == (None, "info")
    assert default["kernel_reported"] == 2 * default["granted"]
    assert (requested["requested"], requested["granted"], requested["level"]) == (
        65536,
        65536,
        "info",
    )


class CappedSocket:
    """A socket as an unprivileged process sees one: SO_RCVBUFFORCE refused, SO_RCVBUF capped at
    ``cap`` (net.core.rmem_max) and reported doubled."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == SO_RCVBUFFORCE:
            raise PermissionError(1, "Operation not permitted")
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.size = min(value, self.cap)

    def getsockopt(self, level: int, option: int) -> int:
        return 2 * self.size


def test_a_receive_buffer_capped_by_the_kernel_is_a_warning_naming_the_sysctl(
    logs: LogCapture,
) -> None:
    """Without the privilege to force it, a receive buffer above net.core.rmem_max is capped;
    the log line is a warning that says which sysctl to raise, and to what."""
    source, _receive = udp_source(receive_buffer=8 * 1024 * 1024)
    source._set_receive_buffer(CappedSocket(cap=212992))
    (line,) = logs.entries("udp_receive_buffer")
    assert line["level"] == "warning"
    assert (line["requested"], line["granted"], line["forced"]) == (8388608, 212992, False)
    assert "sysctl -w net.core.rmem_max=8388608" in line["hint"]


def blast(address: Address, datagrams: list[bytes]) -> None:
    """Send ``datagrams`` at once, blocking: the source cannot read meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:
            sender.sendto(datagram, (address.host, address.port))


async def test_datagrams_the_kernel_dropped_are_counted_and_logged(logs: LogCapture) -> None:
    """With a tiny receive buffer and a blocked pipeline, a burst the source cannot read in time
    overflows the kernel's buffer: what was sent and never arrived is counted as kernel_dropped
    and logged (udp_kernel_dropped), none of it as dropped_full."""
    source, receive = udp_source(receive_buffer=4096)
    async with trio.open_nursery() as nursery:
        address = (await nursery.start(source.run))[0]
        burst = [b"<13>burst " + b"x" * 1000 for _ in range(300)]
        blast(address, burst)
        await wait_until(lambda: source.counters["datagrams"] > 0)  # it read what was queued
        blast(address, [b"<13>last"])  # carries the kernel's drop count
        sent = len(burst) + 1
        await wait_until(
            lambda: source.counters["datagrams"] + source.counters["kernel_dropped"] == sent
        )
        arrived = source.counters["datagrams"]
        events: list[Event] = []
        while len(events) < arrived:
            events.extend(await receive.receive())
        source.stop()
    dropped = source.counters["kernel_dropped"]
    assert dropped == sent - len(events) > 0
    assert source.counters["dropped_full"] == 0
    (line,) = logs.entries("udp_kernel_dropped")
    assert (line["dropped"], line["dropped_total"]) == (dropped, dropped)


async def test_kernel_drops_are_logged_at_most_once_a_second_and_none_is_left_out(
    autojump_clock: trio.testing.MockClock, logs: LogCapture
) -> None:
    """Drops reported within a second of the last line wait for that second to pass, and are
    then logged even if no datagram comes to carry them; the lines add up to the counter."""
    source, _receive = udp_source(capacity=1000, receive_buffer=4096)
    async with trio.open_nursery() as nursery:
        address = (await nursery.start(source.run))[0]
        for _ in range(2):
            blast(address, [b"<13>burst " + b"x" * 1000 for _ in range(100)])
            before = source.counters["datagrams"]
            await wait_until(lambda: source.counters["datagrams"] > before)  # noqa: B023
            blast(address, [b"<13>last"])
            await wait_until(lambda: source.counters["datagrams"] > before + 1)  # noqa: B023
        assert len(logs.entries("udp_kernel_dropped")) == 1
        await trio.sleep(1.5)  # no datagram comes
        source.stop()
    first, second = logs.entries("udp_kernel_dropped")
    assert first["dropped"] + second["dropped"] == source.counters["kernel_dropped"]
    assert second["dropped_total"] == source.counters["kernel_dropped"]
    assert second["not_logged_since"] == 1


# --- configuration ---------------------------------------------------------------------------

MINIMAL: dict[str, Any] = {
    "sources": {"u": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:5514"}},
    "sinks": {"out": {"type": "file", "path": "var/archive"}},
}


def udp_config(**keys: Any) -> dict[str, Any]:
    """MINIMAL with extra keys in the UDP source."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["u"].update(keys)
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    """The problems ``parse_config`` reports for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return [str(problem) for problem in info.value.problems]


def test_udp_sources_get_the_documented_buffer_defaults_and_convert_the_keys() -> None:
    """Without the keys: the kernel's receive buffer, 65,536 events and 16 MiB; with them, sizes
    and counts are converted."""
    source = parse_config(udp_config(), env={}).sources["u"]
    assert isinstance(source, SyslogSourceConfig)
    assert (source.receive_buffer, source.burst_events, source.burst_bytes) == (
        None,
        65536,
        16 * 1024 * 1024,
    )
    raw = udp_config(receive_buffer="8MiB", burst_events=1000, burst_bytes="4MB")
    source = parse_config(raw, env={}).sources["u"]
    assert isinstance(source, SyslogSourceConfig)
    assert (source.receive_buffer, source.burst_events, source.burst_bytes) == (
        8 * 1024 * 1024,
        1000,
        4_000_000,
    )


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"receive_buffer": "1KiB"},
            'sources.u.receive_buffer: expected a size of at least 4096 bytes, got "1KiB"',
        ),
        (
            {"receive_buffer": "1GiB"},
            'sources.u.receive_buffer: expected a size of at most 536870912 bytes, got "1GiB"',
        ),
        (
            {"burst_events": 0},
            "sources.u.burst_events: expected an integer from 1 to 10000000, got 0",
        ),
        (
            {"burst_bytes": "1KiB"},
            'sources.u.burst_bytes: expected a size of at least 65536 bytes, got "1KiB"',
        ),
        (
            {"mode": "tcp", "burst_bytes": "1MiB"},
            'sources.u.burst_bytes: expected only with mode = "udp", got mode = "tcp"',
        ),
    ],
    ids=["receive-buffer-small", "receive-buffer-large", "no-events", "bytes-small", "tcp"],
)
def test_bad_udp_settings_are_reported_at_their_key(keys: dict[str, Any], problem: str) -> None:
    """Out-of-range buffer sizes and counts, and the UDP keys on another mode, are refused."""
    assert problems(udp_config(**keys)) == [problem]


def test_a_json_tls_source_does_not_take_the_udp_keys() -> None:
    """The UDP keys are unknown to a json_tls source."""
    raw = copy.deepcopy(MINIMAL)
    raw["sources"]["u"] = {"type": "json_tls", "address": "127.0.0.1:6515", "burst_events": 5}
    assert problems(raw) == ["sources.u.burst_events: unknown key"]


# --- property: every input gets a counted outcome --------------------------------------------

RECORD = b'{"agentId":"a","sequence":1}'


def deep_json(depth: int) -> bytes:
    """An audit record holding ``depth`` nested arrays."""
    return b'{"agentId":"a","x":' + b"[" * depth + b"]" * depth + b"}"


#: Frames: random bytes, octet counts broken or huge, NULs, deep nesting inside JSON (up to 200
#: levels), records, syslog messages around them.
PIECES = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda count, body: b"%d %s" % (count, body),
        st.one_of(st.integers(0, 300), st.integers(10**9, 10**15)),
        st.binary(max_size=60),
    ),
    st.lists(st.sampled_from([b"\0", b"\n", b"\r", b" ", b"<13>", b"x", b"{", b"}", b"9"])).map(
        b"".join
    ),
    st.integers(1, 200).map(deep_json),
    st.integers(1, 200).map(lambda depth: b"<13>1 - h a - - - " + deep_json(depth)),
    st.just(RECORD),
    st.just(b'<13>1 2026-11-23T10:45:23Z host-7 app - - [a b="c"] ' + RECORD),
)


def check_events(source: FramedSource, events: list[Event]) -> None:
    """Each event is a record or a malformed input, encodes to one JSON line, and is counted."""
    for event in events:
        assert (event.record_json is None) != (event.malformed is None)
        assert isinstance(orjson.loads(event.encode("1-1")), dict)
    assert source.counters["events"] == len(events)
    assert source.counters["malformed"] == sum(event.malformed is not None for event in events)


async def feed_stream(source: FramedSource, chunks: list[bytes]) -> list[Event]:
    """Run the source's handler over a memory stream fed ``chunks``; the events it handed on."""
    events: list[Event] = []
    send, receive = trio.open_memory_channel[list[Event]](0)
    source._send = send
    client, server = trio.testing.memory_stream_pair()
    assert source.server is not None
    connection = Connection(source.server, server, "10.0.0.7:51234")

    async def collect() -> None:
        async for batch in receive:
            events.extend(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        async with send:
            nursery.start_soon(source.handle, connection)
            for chunk in chunks:
                await client.send_all(chunk)
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
    return events


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(PIECES, max_size=12),
    separator=st.sampled_from([b"\n", b"\r\n", b"\0", b""]),
    cuts=st.lists(st.integers(1, 64), max_size=20),
    kind=st.sampled_from(["json_tls", "syslog"]),
)
def test_any_stream_gives_every_frame_one_counted_outcome(
    pieces: list[bytes], separator: bytes, cuts: list[int], kind: str
) -> None:
    """Whatever bytes a stream carries, cut anywhere, the source never raises: every frame its
    framer finds becomes one event or one blank line, each event is counted and encodes."""
    data = separator.join(pieces)
    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    source: FramedSource
    if kind == "json_tls":
        source = JsonTlsSource(
            JsonTlsSourceConfig(id="j", address=Address("127.0.0.1", 0), max_line_bytes=256),
            trio.open_memory_channel[list[Event]](0)[0],
        )
        framer: LineFramer | AutoFramer = LineFramer(256)
    else:
        source = SyslogSource(
            SyslogSourceConfig(id="s", address=Address("127.0.0.1", 0), max_message_bytes=256),
            trio.open_memory_channel[list[Event]](0)[0],
        )
        framer = AutoFramer(256)
    events = trio.run(feed_stream, source, [chunk for chunk in chunks if chunk])
    frames = len(framer.feed(data)) + (framer.finish() is not None)
    assert source.counters["events"] + source.counters["blank_lines"] == frames
    assert source.counters["bytes"] == len(data)
    check_events(source, events)


@settings(max_examples=150, deadline=None)
@given(datagrams=st.lists(PIECES, max_size=12), udp=st.booleans())
def test_any_datagram_gets_counted_outcomes(datagrams: list[bytes], udp: bool) -> None:
    """Whatever datagrams come, the source never raises: each gives as many counted outcomes
    (events, blank lines) as it holds frames, and over UDP, with the pipeline full, each event
    is either held in the burst buffer or counted as dropped."""
    mode: SyslogMode = "udp" if udp else "unix"
    config = SyslogSourceConfig(
        id="d",
        mode=mode,
        address=Address("127.0.0.1", 0) if udp else None,
        max_message_bytes=256,
        burst_events=20,
        burst_bytes=64 * 1024,
    )
    source = SyslogSource(config, trio.open_memory_channel[list[Event]](0)[0])

    async def run() -> list[Event]:
        events: list[Event] = []
        for datagram in datagrams:
            before = source.counters["events"] + source.counters["blank_lines"]
            batch = source._datagram(datagram, PEER if udp else "/run/s.sock", 256)
            frames = 1
            if datagram[:1].isdigit() and len(datagram) <= 256:
                framer = AutoFramer(256)
                frames = len(framer.feed(datagram)) + (framer.finish() is not None)
            outcomes = source.counters["events"] + source.counters["blank_lines"] - before
            assert outcomes == frames
            events.extend(batch)
            if udp:
                source._offer(batch)
        return events

    events = trio.run(run)
    check_events(source, events)
    if udp:
        assert source.held_events + source.counters["dropped_full"] == len(events)
