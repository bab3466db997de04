"""How the ``s3`` sink groups a batch into objects: reading envelope heads from their bytes, one
by one or a whole batch at once, gives the same objects and manifest entries as parsing every
envelope in full."""

from __future__ import annotations

from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.archive.content import summarize
from shipper.chain import PROFILES, Profile
from shipper.config import parse_config
from shipper.events import HeadReader
from shipper.sinks.base import SinkContext
from shipper.sinks.s3 import S3Sink, S3SinkConfig
from tests.envelopes import envelope_lists

RULES: list[dict[str, Any]] = [
    {"class": "long", "agent": ["agent-a", "*\\*"]},
    {"class": "long", "source": "other"},
]
#: Rules that look at the source alone: a batch may still be taken whole.
SOURCE_RULES: list[dict[str, Any]] = [{"class": "long", "source": "other"}]
KEY_PREFIXES = [
    "year={{year}}/month={{month}}/day={{day}}/",
    "year={{year}}/",
    "{{source}}/{{hour}}/",
    "{{source}}/{{agent}}/{{hour}}/",
]


def sink(profile: Profile, key_prefix: str, rules: list[dict[str, Any]]) -> S3Sink:
    """An s3 sink (never opened) with two classes picked by ``rules``."""
    table = {
        "type": "s3",
        "bucket": "audit-archive",
        "key_prefix": key_prefix,
        "object_lock": {"mode": "COMPLIANCE"},
        "retention": {"classes": {"default": 1, "long": 30}, "rules": rules},
    }
    config = parse_config(
        {
            "sources": {
                "agents": {"type": "json_tls", "address": "127.0.0.1:0"},
                "other": {"type": "syslog", "mode": "udp", "address": "127.0.0.1:0"},
            },
            "sinks": {"s3": table},
        }
    )
    s3 = config.sinks["s3"]
    assert isinstance(s3, S3SinkConfig)
    return S3Sink(s3, SinkContext(profile))


def objects(s3: S3Sink, lines: list[bytes]) -> list[tuple[Any, ...]]:
    """What the sink would store for ``lines``: per object its key prefix, class, lines, ids,
    whether it holds seals only, and its manifest entry's agent spans."""
    return [
        (g.directory, g.cls, g.lines, g.ids, g.seals_only, s3._spans(g)) for g in s3._group(lines)
    ]


def parsed_in_full(s3: S3Sink, lines: list[bytes]) -> list[tuple[Any, ...]]:
    with (
        mock.patch.object(HeadReader, "read", return_value=None),
        mock.patch.object(S3Sink, "_group_whole", return_value=None),
    ):
        return objects(s3, lines)


@settings(max_examples=400, deadline=None)
@given(
    envelope_lists() | envelope_lists(usual=True),
    st.sampled_from(list(PROFILES.values())),
    st.sampled_from(KEY_PREFIXES),
    st.sampled_from([RULES, SOURCE_RULES, []]),
    st.sets(st.integers(0, 15)) | st.just(set()),
)
def test_heads_read_from_the_bytes_make_the_objects_of_a_full_parse(
    lines: list[bytes],
    profile: Profile,
    key_prefix: str,
    rules: list[dict[str, Any]],
    held: set[int],
) -> None:
    """For batches of hostile envelopes of every shape, with events stored before left out, the
    groups (key prefix, class, lines, ids, seals only) and each object's agent spans are
    those of a full parse of every envelope, whether the batch is taken whole or event by
    event, and the spans are ``verify``'s summary of it."""
    s3 = sink(profile, key_prefix, rules)
    s3._held.update(orjson.loads(lines[i])["id"] for i in held if i < len(lines))
    got = objects(s3, lines)
    assert got == parsed_in_full(s3, lines)
    for *_, group_lines, _, _, agents in got:
        assert agents == summarize(map(orjson.loads, group_lines), profile).agents


@settings(max_examples=300, deadline=None)
@given(
    envelope_lists(usual=True),
    st.sampled_from(list(PROFILES.values())),
    st.sampled_from(KEY_PREFIXES[:3]),
    st.sampled_from([SOURCE_RULES, []]),
)
def test_usual_batches_taken_whole_make_the_objects_of_a_full_parse(
    lines: list[bytes], profile: Profile, key_prefix: str, rules: list[dict[str, Any]]
) -> None:
    """For batches mostly as the daemon makes them (one source, one day, few alerts), with
    hostile events among them, under key prefixes and rules that a batch may be taken whole
    by, the groups and spans are those of a full parse (whether taken whole or not: about a
    third are)."""
    s3 = sink(profile, key_prefix, rules)
    got = objects(s3, lines)
    assert got == parsed_in_full(s3, lines)
    for *_, group_lines, _, _, agents in got:
        assert agents == summarize(map(orjson.loads, group_lines), profile).agents


def chained(index: int, agent: str, chain: dict[str, Any], **extra: Any) -> bytes:
    """An envelope of source agents, as the chain stage passes it on."""
    return orjson.dumps(
        {
            "v": 1,
            "id": f"1-{index}",
            "received_at": f"2026-11-22T{10 + index // 1000:02}:45:23.102345Z",
            "source": {"id": "agents", "kind": "json_tls", "tls_san": ["gw"]},
            "agent": agent,
            "chain": chain,
            **extra,
            "record": {"hash": f"h{index}", "sequence": index},
        }
    )


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_a_usual_batch_is_taken_whole_and_its_spans_skip_unchained_events(
    profile: Profile,
) -> None:
    """A batch of one source and day, whose agents' first and last events are not all chained
    (no sequence, a sequence that is no integer, an identity mismatch), is taken whole, the
    heads never read one by one, with the groups and spans of a full parse."""
    s3 = sink(profile, "year={{year}}/month={{month}}/day={{day}}/", SOURCE_RULES)
    lines = [chained(index, f"agent-{index % 4}", {"status": "gap"}) for index in range(4)]
    lines += [
        chained(index, f"agent-{index % 4}", {"status": "ok", "sequence": index})
        for index in range(4, 2000)
    ]
    lines[4] = chained(4, "agent-0", {"status": "ok", "sequence": "4"})
    lines[1999] = chained(1999, "agent-3", {"sequence": 1999}, identity_mismatch={"x": 1})
    lines[1995] = chained(1995, "agent-3", {"sequence": 1.5})
    with mock.patch.object(HeadReader, "read", side_effect=AssertionError):
        got = objects(s3, lines)
    assert got == parsed_in_full(s3, lines)
    assert len(got) == 1
    assert got[0][0] == "year=2026/month=11/day=22/"


def test_a_batch_that_may_be_split_is_read_event_by_event() -> None:
    """A batch whose events fall in two hours of a key prefix by hour, one of two sources under
    a key prefix by source, and one whose agent has too many events to step over before a
    chained one, are grouped event by event, as a full parse groups them."""
    s3 = sink(PROFILES["seed"], "{{source}}/{{hour}}/", [])
    lines = [chained(index, "a", {"sequence": index}) for index in range(999, 1002)]
    read = HeadReader.read
    heads: list[bytes] = []

    def counted(reader: HeadReader, line: bytes) -> Any:
        heads.append(line)
        return read(reader, line)

    with mock.patch.object(HeadReader, "read", counted):
        got = objects(s3, lines)
    assert heads == lines
    assert [g[0] for g in got] == ["agents/10/", "agents/11/"]
    assert got == parsed_in_full(s3, lines)
    lines = [chained(index, "a", {"sequence": index}) for index in range(3)]
    lines.append(lines[2].replace(b'"id":"agents"', b'"id":"other"'))
    heads.clear()
    with mock.patch.object(HeadReader, "read", counted):
        got = objects(s3, lines)
    assert heads == lines
    assert [g[0] for g in got] == ["agents/10/", "other/10/"]
    assert got == parsed_in_full(s3, lines)
    lines = [chained(index, "a", {"status": "gap"}) for index in range(200)]
    lines.append(chained(200, "a", {"sequence": 1}))
    heads.clear()
    with mock.patch.object(HeadReader, "read", counted):
        got = objects(s3, lines)
    assert heads == lines
    assert got == parsed_in_full(s3, lines)


def test_a_rule_on_a_record_field_splits_events_of_one_key_prefix_by_class() -> None:
    """With a retention rule that looks into the record, events of one hour, source and agent
    (one key prefix) go to the object of their own class, each in batch order."""
    s3 = sink(
        PROFILES["seed"],
        "{{source}}/{{hour}}/",
        [{"class": "long", "field": "hash", "equals": "h1"}],
    )
    lines = [chained(index, "a", {"sequence": index}) for index in range(4)]
    got = objects(s3, lines)
    assert [(g[0], g[1], g[3]) for g in got] == [
        ("agents/10/", "default", ["1-0", "1-2", "1-3"]),
        ("agents/10/", "long", ["1-1"]),
    ]


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
@pytest.mark.parametrize("key_prefix", ["x/", "{{agent}}/"], ids=["whole", "each"])
def test_only_the_first_and_last_event_of_each_agent_is_parsed(
    profile: Profile, key_prefix: str
) -> None:
    """An object's spans parse its agents' first and last lines only, and take the same hashes
    as a full parse; the rest of the events are never parsed (event by event, only the hashes
    the spans need: none without a hash in the profile)."""
    s3 = sink(profile, key_prefix, [])
    lines = [
        orjson.dumps(
            {
                "v": 1,
                "id": f"1-{index}",
                "received_at": "2026-11-22T10:45:23.102345Z",
                "source": {"id": "agents", "kind": "json_tls"},
                "agent": f"agent-{index % 3}",
                "chain": {"status": "ok", "sequence": index // 3 + 1},
                "record": {"hash": f"h{index}", "sequence": index // 3 + 1},
            }
        )
        for index in range(30)
    ]
    parsed: list[bytes] = []
    real = orjson.loads

    def loads(data: bytes) -> Any:
        if data in lines:
            parsed.append(data)
        return real(data)

    with mock.patch("orjson.loads", loads):
        groups = s3._group(lines)
        agents = {a: span for group in groups for a, span in s3._spans(group).items()}
    ends = lines[:3] + lines[-3:]
    if key_prefix == "x/":
        assert sorted(parsed) == sorted(ends)
    else:
        assert len(groups) == 3
        assert sorted(parsed) == (sorted(ends) if profile.hash is not None else [])
    assert agents == summarize(map(orjson.loads, lines), profile).agents


async def test_the_rest_of_a_batch_taken_whole_and_partly_stored_before_has_its_own_spans() -> None:
    """When a key is taken by an object holding the first part of a batch taken whole (stored
    before a crash), the part left to store gets the spans of a full parse of that part, not
    ends kept from the whole batch."""
    profile = PROFILES["seed"]
    s3 = sink(profile, "x/", [])
    lines = [chained(index, f"agent-{index % 2}", {"sequence": index}) for index in range(10)]
    (group,) = s3._group(lines)
    assert group.sparse
    stored = s3._compress(b"\n".join(lines[:6]) + b"\n")

    async def get_object(key: str) -> tuple[bytes, dict[str, Any]]:
        return stored, {}

    with mock.patch.object(s3, "_get_object", get_object):
        adopted = await s3._adopt("x/0-1-0-default.jsonl.gz", group)
    assert adopted is not None
    assert adopted.group.lines == lines[:6]
    assert group.lines == lines[6:]
    assert s3._spans(group) == summarize(map(orjson.loads, lines[6:]), profile).agents
