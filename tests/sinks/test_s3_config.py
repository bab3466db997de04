"""The ``s3`` sink's config: its keys, their defaults, and the problems a wrong value gives."""

from __future__ import annotations

from typing import Any

import pytest

from shipper.archive.retention import Period, Rule
from shipper.config import parse_config
from shipper.errors import ConfigError
from shipper.sinks.s3 import DEFAULT_KEY_PREFIX, S3SinkConfig, _render

SOURCE = {"type": "json_tls", "address": "127.0.0.1:0"}


def parse(table: dict[str, Any], env: dict[str, str] | None = None) -> S3SinkConfig:
    config = parse_config({"sources": {"agents": SOURCE}, "sinks": {"s3": table}}, env=env or {})
    sink = config.sinks["s3"]
    assert isinstance(sink, S3SinkConfig)
    return sink


def problems(table: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(table, env)
    return [str(problem) for problem in info.value.problems]


def test_a_minimal_table_takes_the_defaults() -> None:
    """Only ``bucket`` is required: Hive-style keys, gzip, us-east-1, the AWS credential chain,
    no lock, and large batches."""
    sink = parse({"type": "s3", "bucket": "audit-archive"})
    assert sink.key_prefix == DEFAULT_KEY_PREFIX == "year={{year}}/month={{month}}/day={{day}}/"
    assert (sink.prefix, sink.compression, sink.region) == ("", "gzip", "us-east-1")
    assert sink.compression_level == 1
    assert sink.access_key_id is None
    assert sink.object_lock is None
    assert sink.batching.max_events == 10_000
    assert sink.batching.max_age == 30.0


def test_every_key_is_read() -> None:
    """Credentials come from ``${ENV}`` as secrets, retention classes and rules are read in
    order, and the batch table sets the batching."""
    sink = parse(
        {
            "type": "s3",
            "bucket": "audit-archive",
            "prefix": "shipper",
            "key_prefix": "{{source}}/{{year}}/{{agent}}/",
            "endpoint": "http://127.0.0.1:8333",
            "region": "eu-west-1",
            "access_key_id": "${KEY}",
            "secret_access_key": "${SECRET}",
            "compression": "zstd",
            "compression_level": 19,
            "object_lock": {"mode": "GOVERNANCE"},
            "legal_hold": True,
            "sse": "aws:kms",
            "sse_kms_key_id": "alias/audit",
            "storage_class": "STANDARD_IA",
            "batch": {"max_events": 500, "max_bytes": "2MiB", "timeout": "5s"},
            "retention": {
                "classes": {"default": "3y", "hipaa": "6y", "short": 30},
                "rules": [
                    {"class": "hipaa", "agent": ["clinical-*"]},
                    {"class": "short", "source": "agents", "field": "env", "equals": "test"},
                ],
            },
        },
        env={"KEY": "AKIA1", "SECRET": "s3cr3t"},
    )
    assert sink.prefix == "shipper/"
    assert (sink.compression, sink.compression_level) == ("zstd", 19)
    assert sink.access_key_id is not None
    assert sink.access_key_id.reveal() == "AKIA1"
    assert "s3cr3t" not in repr(sink)
    assert sink.object_lock is not None
    assert sink.object_lock.mode == "GOVERNANCE"
    assert dict(sink.classes.periods) == {
        "default": Period(3, True),
        "hipaa": Period(6, True),
        "short": Period(30),
    }
    assert list(sink.classes.rules) == [
        Rule("hipaa", agents=("clinical-*",)),
        Rule("short", sources=("agents",), field=("env",), equals=("test",)),
    ]
    assert (sink.batching.max_events, sink.batching.max_bytes) == (500, 2 * 1024 * 1024)
    assert sink.batching.max_age == 5.0


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"object_lock": {"mode": "compliant", "retention_days": 1}},
            'sinks.s3.object_lock.mode: expected "COMPLIANCE" or "GOVERNANCE", got "compliant"',
        ),
        (
            {"object_lock": {"mode": "COMPLIANCE"}},
            "sinks.s3.object_lock.retention_days: required key is missing (or give a retention "
            "class named default)",
        ),
        (
            {"key_prefix": "{{yaer}}/"},
            "sinks.s3.key_prefix: unknown placeholder {{yaer}}: expected {{year}}, {{month}}, "
            "{{day}}, {{hour}}, {{source}}, {{agent}}",
        ),
        (
            {"access_key_id": "AKIA1"},
            "sinks.s3.secret_access_key: access_key_id and secret_access_key go together (or "
            "neither, for the AWS credential chain)",
        ),
        (
            {"retention": {"classes": {"default": 5}}},
            "sinks.s3.retention: retention classes need object_lock (a mode to lock with)",
        ),
        (
            {
                "object_lock": {"mode": "COMPLIANCE"},
                "retention": {"classes": {"default": "6m"}},
            },
            'sinks.s3.retention.classes.default: expected a number of days (2190, "2190d") or '
            'of years ("6y"), got "6m"',
        ),
        (
            {
                "object_lock": {"mode": "COMPLIANCE", "retention_days": 5},
                "retention": {"classes": {"x": 5}, "rules": [{"class": "y", "agent": "a"}]},
            },
            'sinks.s3.retention.rules[0].class: no such class in sinks.s3.retention.classes, got "y"',
        ),
        (
            {
                "object_lock": {"mode": "COMPLIANCE", "retention_days": 5},
                "retention": {
                    "classes": {"x": 5},
                    "rules": [
                        {"class": "x", "source": "agents"},
                        {"class": "x", "source": "agnts"},
                    ],
                },
            },
            "sinks.s3.retention.rules[1].source: expected one of the sources (agents, shipper), "
            'got "agnts"',
        ),
        (
            {"bucket": "Not_A_Bucket"},
            'sinks.s3.bucket: expected an S3 bucket name, got "Not_A_Bucket"',
        ),
        (
            {"compression": "lz4"},
            'sinks.s3.compression: expected "gzip", "zstd" or "none", got "lz4"',
        ),
        (
            {"compression_level": 6},
            "sinks.s3.compression_level: expected an integer from 0 to 3, got 6",
        ),
        (
            {"compression": "zstd", "compression_level": 0},
            "sinks.s3.compression_level: expected an integer from 1 to 19, got 0",
        ),
        (
            {"compression": "none", "compression_level": 1},
            'sinks.s3.compression_level: compression = "none" takes no level',
        ),
        ({"sse_kms_key_id": "k"}, 'sinks.s3.sse_kms_key_id: only sse = "aws:kms" takes a key id'),
    ],
)
def test_a_wrong_value_is_named_with_its_key(keys: dict[str, Any], expected: str) -> None:
    """Each wrong value is reported at its key path, saying what was expected."""
    assert expected in problems({"type": "s3", "bucket": "audit-archive", **keys})


def test_a_rule_may_name_a_source_or_the_daemons_own_events() -> None:
    """A retention rule's ``source`` may be a configured source id or ``shipper`` (alerts and
    seals), in a string or a list."""
    sink = parse(
        {
            "type": "s3",
            "bucket": "audit-archive",
            "object_lock": {"mode": "COMPLIANCE", "retention_days": 5},
            "retention": {
                "classes": {"x": 7},
                "rules": [{"class": "x", "source": ["agents", "shipper"]}],
            },
        }
    )
    assert sink.classes.rules[0].sources == ("agents", "shipper")


def test_zstd_takes_its_own_default_level() -> None:
    """Without ``compression_level``, zstd compresses at its usual level 3, not gzip's 1."""
    assert (
        parse({"type": "s3", "bucket": "audit-archive", "compression": "zstd"}).compression_level
        == 3
    )


def test_a_hostile_agent_id_becomes_one_harmless_key_segment() -> None:
    """An agent id with slashes, dots only, or thousands of characters renders as one key
    segment of safe characters, at most 64 long, never ``..``."""
    template = "{{source}}/{{agent}}/"
    stamp = "2026-12-02T18:00:00.000000Z"
    assert _render(template, stamp, "agents", "../../etc") == "agents/.._.._etc/"
    assert _render(template, stamp, "agents", "..") == "agents/__/"
    assert _render(template, stamp, "agents", ".") == "agents/_/"
    assert _render(template, stamp, "agents", "") == "agents/unknown/"
    assert _render(template, stamp, "agents", "a" * 5000) == f"agents/{'a' * 64}/"
    assert _render(template, stamp, "agents", None) == "agents/unknown/"
