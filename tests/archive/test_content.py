"""What an archived object holds (``shipper.archive.content``): decompression, lines, envelopes,
and the summary a manifest entry gives of them, which must be what the s3 sink writes."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import Callable

import orjson
import pytest
import zstandard

from shipper.archive.content import (
    ContentError,
    TooLarge,
    decompress,
    is_data_key,
    parse_envelope,
    split_lines,
    summarize,
)
from shipper.archive.manifest import AgentSpan, Link
from shipper.chain import PROFILES, Profile
from shipper.events import Event, Malformed, alert_event
from tests.archive.s3archive import bomb
from tests.chains import chain, safeclaw_lines

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:4000"}
TEXT = b'{"a":1}\n{"b":2}\n'


@pytest.mark.parametrize(
    ("compression", "data"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("gzip", gzip.compress(TEXT[:8]) + gzip.compress(TEXT[8:])),
        ("zstd", zstandard.ZstdCompressor().compress(TEXT)),
        ("zstd", zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)),
        ("none", TEXT),
    ],
)
def test_each_compression_gives_the_lines_back(compression: str, data: bytes) -> None:
    """gzip (one member or several), zstd (with or without a content size) and none all give
    the lines back."""
    assert decompress(data, compression) == TEXT


@pytest.mark.parametrize("compression", ["gzip", "zstd", "brotli"])
def test_bytes_that_do_not_decompress_are_a_content_error(compression: str) -> None:
    """Bytes that are not of the compression named (or an unknown compression) raise
    ContentError, saying what they are not."""
    with pytest.raises(ContentError):
        decompress(TEXT, compression)


def test_lines_and_a_torn_tail_are_told_apart() -> None:
    """Complete lines come without their LF; what follows the last LF is the torn tail."""
    assert split_lines(b"a\nb\n") == ([b"a", b"b"], b"")
    assert split_lines(b"a\nb") == ([b"a"], b"b")
    assert split_lines(b"") == ([], b"")
    assert is_data_key("x/y-1-0-default.jsonl.gz")
    assert not is_data_key("manifests/00000000000000000001.json")


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1]",
        b'{"v":2,"id":"1-0","source":{},"record":{}}',
        b'{"v":1,"id":"x","source":{},"record":{}}',
        b'{"v":1,"id":"1-0","record":{}}',
        b'{"v":1,"id":"1-0","source":{}}',
    ],
)
def test_a_line_that_is_not_an_envelope_is_refused(line: bytes) -> None:
    """Not JSON, not an object, another version, no WAL id, no source, neither record nor
    malformed: each is a ContentError."""
    with pytest.raises(ContentError):
        parse_envelope(line)


def envelopes(profile: Profile) -> list[bytes]:
    """A mix of envelopes as the daemon archives them: chained records of two agents, an alert,
    a malformed event, a record without a verdict, one whose hash is not a string."""
    out: list[bytes] = []
    if profile.line_hashed:
        records = [orjson.loads(line) for line in safeclaw_lines(4)]
        agents = ["host-1", "host-2", "host-1", "host-2"]
    else:
        records = [r for pair in zip(chain(2, "a"), chain(2, "b"), strict=True) for r in pair]
        agents = [r["agentId"] for r in records]
    for n, (record, agent) in enumerate(zip(records, agents, strict=True)):
        sequence = n // 2 + 1
        event = Event(
            "2026-12-02T18:00:00.000000Z",
            SOURCE,
            agent,
            orjson.dumps(record),
            chain={"status": "ok", "sequence": sequence, "expected": sequence},
        )
        out.append(event.encode(f"1-{n * 10}"))
    out.append(alert_event("shipper.chain_alert", "a", {"status": "gap"}).encode("1-100"))
    out.append(Event("t", SOURCE, malformed=Malformed.of("bad", b"x")).encode("1-110"))
    out.append(Event("t", SOURCE, "c", b'{"agentId":"c"}').encode("1-120"))
    odd = Event("t", SOURCE, "d", b'{"agentId":"d","hash":7}', chain={"status": "unchained"})
    odd.chain = {"status": "unchained", "sequence": 3}
    out.append(odd.encode("1-130"))
    return out


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_summary_spans_each_agents_first_and_last_chained_event(name: str) -> None:
    """For every profile, the summary (which the s3 sink writes into its manifest entries, and
    verify checks) counts the events, names the first and last id, and spans each agent from
    its first to its last chained event, by sequence and record hash."""
    profile = PROFILES[name]
    lines = envelopes(profile)
    parsed = [parse_envelope(line) for line in lines]
    summary = summarize(parsed, profile)
    expected: dict[str, AgentSpan] = {}
    for p in parsed:
        record, sequence = p.get("record"), (p.get("chain") or {}).get("sequence")
        if "agent" not in p or not isinstance(record, dict) or not isinstance(sequence, int):
            continue
        value = record.get(profile.hash) if profile.hash is not None else None
        link = Link(sequence, value if isinstance(value, str) else "")
        first = expected[p["agent"]].first if p["agent"] in expected else link
        expected[p["agent"]] = AgentSpan(first, link)
    assert summary.agents == expected
    assert (summary.events, summary.first, summary.last) == (len(lines), "1-0", "1-130")
    assert set(summary.agents) >= {"d"}  # a chained event whose hash is no string counts, as ""
    assert summary.agents["d"].first.hash == ""


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_an_object_is_read_up_to_its_limit_and_no_further(compression: str) -> None:
    """An object that holds exactly the limit decompresses; one byte more is TooLarge (a
    ContentError, naming the limit)."""
    packers: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "zstd": zstandard.compress,
        "none": bytes,
    }
    data = packers[compression](TEXT)
    assert decompress(data, compression, limit=len(TEXT)) == TEXT
    with pytest.raises(TooLarge, match=f"more than {len(TEXT) - 1} bytes"):
        decompress(data, compression, limit=len(TEXT) - 1)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_decompression_bomb_stops_at_the_limit_without_expanding(compression: str) -> None:
    """A real bomb (256 MiB of zeros in a few hundred KB) raises TooLarge with a 1 MiB limit,
    and never holds much more than the limit in memory."""
    data = bomb(compression, 256 << 20)
    assert len(data) < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            decompress(data, compression, limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_bomb_in_a_second_gzip_member_is_caught_too() -> None:
    """The limit counts every gzip member: a small first member does not let a bomb behind it
    through."""
    data = gzip.compress(TEXT) + bomb("gzip", 8 << 20)
    with pytest.raises(TooLarge):
        decompress(data, "gzip", limit=1 << 20)
    assert decompress(data, "gzip", limit=(8 << 20) + len(TEXT)).startswith(TEXT)
