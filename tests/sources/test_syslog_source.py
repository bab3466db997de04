"""The syslog source: decoding on memory streams, then real senders (`logger`) into the archive."""

from __future__ import annotations

import base64
import itertools
import shutil
import socket
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import trio
import trio.testing

from shipper.config import Address, parse_config
from shipper.events import Event
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._net import Connection
from shipper.sources.syslog import DATAGRAM_TRUESIZE, SyslogSource, SyslogSourceConfig
from tests.conftest import LogCapture, archive_lines, file_sink_config, wait_until

AUDIT = {"agentId": "customer-service-agent-03", "sequence": 7, "action": "database.query"}
AUDIT_JSON = orjson.dumps(AUDIT)


def make_source(**settings: Any) -> tuple[SyslogSource, trio.MemoryReceiveChannel[list[Event]]]:
    """A TCP syslog source (not listening) and the channel it sends into."""
    config = SyslogSourceConfig(id="syslog", address=Address("127.0.0.1", 0), **settings)
    send, receive = trio.open_memory_channel[list[Event]](1000)
    return SyslogSource(config, send), receive


async def feed(source: SyslogSource, chunks: list[bytes]) -> None:
    """Run the handler on a memory stream fed ``chunks``, then EOF."""
    client, server = trio.testing.memory_stream_pair()
    assert source.server is not None
    connection = Connection(source.server, server, "10.0.0.7:514")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.handle, connection)
        for chunk in chunks:
            await client.send_all(chunk)
        await client.aclose()


def drain(receive: trio.MemoryReceiveChannel[list[Event]]) -> list[dict[str, Any]]:
    """The envelopes of every queued event."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            batch = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return out
        out.extend(orjson.loads(event.encode("1-16")) for event in batch)


RFC5424_JSON = (
    b"<110>1 2026-11-23T10:45:23.102Z host-7 openclaw 811 audit "
    b'[origin ip="10.0.0.7"] \xef\xbb\xbf' + AUDIT_JSON
)


async def test_json_msg_becomes_the_record_and_the_header_the_syslog_object() -> None:
    """An RFC 5424 message whose MSG is an audit record yields that record and the header."""
    source, receive = make_source()
    await feed(source, [RFC5424_JSON + b"\n"])
    (envelope,) = drain(receive)
    assert envelope["record"] == AUDIT
    assert envelope["agent"] == "customer-service-agent-03"
    assert envelope["syslog"] == {
        "facility": "security",
        "severity": "info",
        "hostname": "host-7",
        "app_name": "openclaw",
        "procid": "811",
        "msgid": "audit",
        "sd": {"origin": {"ip": "10.0.0.7"}},
    }
    assert envelope["source"]["kind"] == "syslog"


async def test_octet_counted_and_lf_framed_streams_give_the_same_events() -> None:
    """The framing is detected per connection: octet counting and LF framing both work."""
    plain = b"<13>Nov 23 10:45:23 host-7 sshd[42]: Accepted publickey for alice"
    lf_source, lf_receive = make_source()
    await feed(lf_source, [plain + b"\n" + RFC5424_JSON + b"\n"])
    octet_source, octet_receive = make_source()
    stream = b"".join(b"%d %s" % (len(frame), frame) for frame in (plain, RFC5424_JSON))
    await feed(octet_source, [stream[i : i + 7] for i in range(0, len(stream), 7)])
    by_lf, by_octets = drain(lf_receive), drain(octet_receive)
    assert [e["record"] for e in by_lf] == [e["record"] for e in by_octets]
    assert by_lf[0]["record"]["msg"] == "Accepted publickey for alice"
    assert by_lf[0]["record"]["app_name"] == "sshd"
    assert by_lf[0]["syslog"]["procid"] == "42"
    assert "agent" not in by_lf[0]


async def test_a_msg_that_is_not_utf8_keeps_its_bytes_with_a_reason() -> None:
    """A message whose MSG is not valid UTF-8 is archived with the bytes in base64 and the reason,
    and counted."""
    source, receive = make_source()
    await feed(source, [b"<13>1 2026-11-23T10:45:23Z h app - - - caf\xe9 \xff end\n"])
    (envelope,) = drain(receive)
    record = envelope["record"]
    assert base64.b64decode(record["msg_b64"]) == b"caf\xe9 \xff end"
    assert "not valid UTF-8" in record["msg_error"]
    assert record["msg"] == "caf\ufffd \ufffd end"
    assert source.counters["invalid_utf8"] == 1
    assert source.counters["events"] == 1


async def test_unparseable_and_oversized_messages_are_archived_as_malformed() -> None:
    """A frame without PRI and one over max_message_bytes each become a malformed event."""
    source, receive = make_source(max_message_bytes=300)
    await feed(source, [b"no priority here\n<13>" + b"x" * 500 + b"\n" + RFC5424_JSON + b"\n"])
    envelopes = drain(receive)
    assert [("malformed" in e) for e in envelopes] == [True, True, False]
    assert envelopes[1]["malformed"]["reason"] == "message longer than max_message_bytes (300)"
    assert source.counters["malformed"] == 2
    assert source.counters["oversized"] == 1


async def test_a_flood_of_malformed_input_is_logged_at_most_ten_times_a_second(
    logs: LogCapture, autojump_clock: trio.testing.MockClock
) -> None:
    """Every malformed frame is archived and counted, but a flood is logged ten times a second,
    the next entry saying how many were left out."""
    source, receive = make_source()
    await feed(source, [b"garbage without priority\n" * 25])
    assert len(drain(receive)) == 25
    assert source.counters["malformed"] == 25
    first = logs.entries("malformed_input")
    assert len(first) == 10
    assert [entry["not_logged_since"] for entry in first] == [0] * 10
    await trio.sleep(1.5)
    await feed(source, [b"more garbage\n"])
    (later,) = logs.entries("malformed_input")[10:]
    assert later["not_logged_since"] == 15
    assert later["malformed_total"] == 26


# --- real senders ---------------------------------------------------------------------------


def needs_logger() -> str:
    """The path of util-linux's logger, or skip."""
    path = shutil.which("logger")
    if path is None:
        pytest.skip("logger not installed (apt-get install bsdutils)")
    return path


async def run_logger(*args: str) -> None:
    """Run `logger` to completion."""
    await trio.run_process([needs_logger(), *args])


@pytest.mark.parametrize(
    ("mode", "flags"),
    [
        ("tcp", ["--tcp"]),
        ("tcp", ["--tcp", "--octet-count"]),
        ("udp", ["--udp"]),
        ("tcp", ["--tcp", "--rfc3164"]),
        ("udp", ["--udp", "--rfc3164"]),
    ],
    ids=["tcp-lf", "tcp-octet-count", "udp", "tcp-rfc3164", "udp-rfc3164"],
)
async def test_logger_messages_reach_the_archive(
    tmp_path: Path, logs: LogCapture, mode: str, flags: list[str]
) -> None:
    """util-linux logger's messages (JSON record and plain text) land enveloped in the archive."""
    needs_logger()
    raw = file_sink_config(tmp_path)
    raw["sources"] = {"syslog": {"type": "syslog", "mode": mode, "address": "127.0.0.1:0"}}
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        port = str(bound["syslog"][0].port)
        base = [*flags, "-n", "127.0.0.1", "-P", port, "-t", "openclaw", "-p", "auth.notice"]
        sd = (
            []
            if "--rfc3164" in flags
            else ["--sd-id", "origin@32473", "--sd-param", 'ip="10.0.0.7"']
        )
        await run_logger(*base, *sd, AUDIT_JSON.decode())
        await run_logger(*base, "plain text from logger")
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 2)
        shutdown.request("test")
    first, second = (orjson.loads(line) for line in archive_lines(tmp_path / "archive"))
    assert first["record"] == AUDIT
    assert first["agent"] == AUDIT["agentId"]
    assert first["syslog"]["facility"] == "auth"
    assert first["syslog"]["severity"] == "notice"
    assert first["syslog"]["app_name"] == "openclaw"
    if sd:
        assert first["syslog"]["sd"]["origin@32473"] == {"ip": "10.0.0.7"}
    assert second["record"]["msg"] == "plain text from logger"
    assert second["source"]["peer"].startswith("127.0.0.1:")


async def test_udp_bursts_wait_in_a_bounded_buffer_and_only_its_overflow_is_dropped(
    logs: LogCapture,
) -> None:
    """A UDP source cannot slow its sender: while the pipeline is full it buffers up to its bound
    (burst_events), hands the buffer on as one batch when there is room, and drops, counts and
    logs the rest."""
    config = SyslogSourceConfig(
        id="udp", address=Address("127.0.0.1", 0), mode="udp", burst_events=2
    )
    send, receive = trio.open_memory_channel[list[Event]](0)  # full: nobody is receiving yet
    source = SyslogSource(config, send)
    peer = ("10.0.0.7", 514)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source._forward_pending)
        for _ in range(5):  # a burst: two fit in the buffer, three do not
            source._offer(source._datagram(RFC5424_JSON, peer, config.max_message_bytes))
        assert source.counters["dropped_full"] == 3
        assert len(logs.entries("udp_dropped_full")) == 1  # logged at most once a second
        first = await receive.receive()  # room at last: the buffer comes as one batch
        assert [event.record_json for event in first] == [AUDIT_JSON, AUDIT_JSON]
        await wait_until(lambda: source.held_events == 0)  # the forwarder saw the send through
        source._offer(source._datagram(RFC5424_JSON, peer, config.max_message_bytes))
        assert len(await receive.receive()) == 1
        source._reader_done = True
        source._pending_added.set()
    assert source.counters["dropped_full"] == 3


class _Flood:
    """A UDP socket whose queue never empties: an empty datagram for every read."""

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_RCVBUF)
        return 212_992

    def recvmsg(self, bufsize: int, ancillary: int) -> tuple[bytes, list[Any], int, Any]:
        return b"", [], 0, ("127.0.0.1", 9)


def test_empty_datagrams_sent_on_and_on_cannot_keep_a_stop_reading() -> None:
    """At a stop, a UDP socket's queue is read up to what its receive buffer could hold, each
    datagram counted with at least DATAGRAM_TRUESIZE bytes as the kernel counts it: a sender
    of empty datagrams cannot make the drain last."""
    source, _ = make_source(mode="udp")
    flood = cast(socket.socket, _Flood())
    bound = 212_992 // DATAGRAM_TRUESIZE
    read = sum(1 for _ in itertools.islice(source._queued(flood, 65536, 0, unix=False), 10 * bound))
    assert read == bound
