"""How the ``s3`` sink groups a batch into objects: reading envelope heads from their bytes
gives the same objects and manifest entries as parsing every envelope in full."""

from __future__ import annotations

from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given
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
    with mock.patch.object(HeadReader, "read", return_value=None):
        return objects(s3, lines)


@given(
    envelope_lists(),
    st.sampled_from(list(PROFILES.values())),
    st.sampled_from(["year={{year}}/", "{{source}}/{{agent}}/{{hour}}/"]),
    st.sets(st.integers(0, 15)),
)
def test_heads_read_from_the_bytes_make_the_objects_of_a_full_parse(
    lines: list[bytes], profile: Profile, key_prefix: str, held: set[int]
) -> None:
    """For batches of hostile envelopes of every shape, with events stored before left out, the
    groups (key prefix, class, lines, ids, seals only) and each object's agent spans are
    those of a full parse of every envelope, and the spans are ``verify``'s summary of it."""
    s3 = sink(profile, key_prefix, RULES)
    s3._held.update(orjson.loads(lines[i])["id"] for i in held if i < len(lines))
    got = objects(s3, lines)
    assert got == parsed_in_full(s3, lines)
    for *_, group_lines, _, _, agents in got:
        assert agents == summarize(map(orjson.loads, group_lines), profile).agents


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_only_the_first_and_last_event_of_each_agent_is_parsed(profile: Profile) -> None:
    """The spans of an object parse its agents' first and last lines only, and take the same
    hashes as a full parse; the rest of the events are never parsed."""
    s3 = sink(profile, "x/", [])
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
        (group,) = s3._group(lines)
        assert parsed == []
        agents = s3._spans(group)
    assert parsed == (lines[:3] + lines[-3:] if profile.hash is not None else [])
    assert agents == summarize(map(orjson.loads, lines), profile).agents
