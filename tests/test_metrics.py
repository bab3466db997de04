"""The metrics registry: values, snapshots as plain data, merging across processes, health."""

from __future__ import annotations

import orjson
import pytest

from shipper.metrics import CounterSet, Health, Registry, merge, summary, value


def test_counters_keep_one_value_per_label_set() -> None:
    """A counter's children count separately per label values, and the snapshot shows each."""
    registry = Registry()
    events = registry.counter("source_events", "Events decoded", labels=("source",))
    agents, syslog = events.labels("agents"), events.labels("syslog")
    agents.inc(3)
    agents.inc()
    syslog.inc(2)
    assert events.labels("agents") is agents
    snapshot = registry.snapshot()
    assert value(snapshot, "source_events", "agents") == 4
    assert value(snapshot, "source_events", "syslog") == 2
    assert value(snapshot, "source_events", "other") == 0
    with pytest.raises(ValueError, match="takes labels"):
        events.labels()


def test_gauge_reads_its_callable_at_each_snapshot() -> None:
    """A gauge that observes a callable reports the callable's value when the snapshot is taken."""
    registry = Registry()
    held = [10]
    registry.gauge("wal_bytes", "Bytes in the WAL", unit="bytes").labels().observe(lambda: held[0])
    set_gauge = registry.gauge("connections_open", "Open connections").labels()
    set_gauge.set(5)
    set_gauge.dec(2)
    assert value(registry.snapshot(), "wal_bytes") == 10
    held[0] = 25
    snapshot = registry.snapshot()
    assert value(snapshot, "wal_bytes") == 25
    assert value(snapshot, "connections_open") == 3


def test_histogram_counts_into_prometheus_buckets() -> None:
    """An observation equal to a bound falls into that bound's bucket (``le``), beyond the last
    into the implied +Inf bucket, with sum and count kept."""
    registry = Registry()
    fsync = registry.histogram(
        "wal_fsync_seconds", "fsync time", unit="seconds", buckets=(0.001, 0.01, 0.1)
    ).labels()
    for seconds in (0.0005, 0.001, 0.05, 0.1, 2.0):
        fsync.observe(seconds)
    sample = value(registry.snapshot(), "wal_fsync_seconds")
    assert sample["counts"] == [2, 0, 2, 1]
    assert sample["count"] == 5
    assert sample["sum"] == pytest.approx(2.1515)


def test_snapshots_of_processes_merge_after_a_trip_through_json() -> None:
    """Snapshots survive JSON, and merging adds counters and histograms, adds or maximises
    gauges as each says, and keeps label sets apart."""

    def process(events: int, lag: int, backlog: int, fsyncs: list[float]) -> bytes:
        registry = Registry()
        registry.counter("sink_events", "Delivered", labels=("sink",)).labels("s3").inc(events)
        registry.gauge("sink_lag_bytes", "Lag", unit="bytes", merge="max").labels().set(lag)
        registry.gauge("ingest_bytes", "Queued", unit="bytes").labels().set(backlog)
        histogram = registry.histogram(
            "wal_fsync_seconds", "fsync time", unit="seconds", buckets=(0.01, 0.1)
        ).labels()
        for seconds in fsyncs:
            histogram.observe(seconds)
        return orjson.dumps(registry.snapshot())

    merged = merge(
        orjson.loads(data) for data in (process(3, 100, 7, [0.001]), process(4, 40, 5, [0.05, 1.0]))
    )
    assert value(merged, "sink_events", "s3") == 7
    assert value(merged, "sink_lag_bytes") == 100
    assert value(merged, "ingest_bytes") == 12
    histogram = value(merged, "wal_fsync_seconds")
    assert histogram["counts"] == [1, 1, 1]
    assert histogram["count"] == 3


def test_merge_refuses_metrics_that_disagree() -> None:
    """Two processes describing one metric differently is a defect that merge names."""
    first, second = Registry(), Registry()
    first.counter("sink_events", "Delivered", labels=("sink",)).labels("a").inc()
    second.counter("sink_events", "Delivered", labels=("sink", "kind")).labels("a", "b").inc()
    with pytest.raises(ValueError, match="sink_events"):
        merge([first.snapshot(), second.snapshot()])


def test_names_and_units_follow_the_conventions() -> None:
    """A name ends with its unit, has no prefix or ``_total``, and one name means one metric."""
    registry = Registry()
    with pytest.raises(ValueError, match="ends with its unit"):
        registry.gauge("wal_size", "Bytes", unit="bytes")
    with pytest.raises(ValueError, match="unit"):
        registry.gauge("wal_size_furlongs", "Length", unit="furlongs")
    for bad in ("shipper_events", "events_total", "Events"):
        with pytest.raises(ValueError, match="snake_case"):
            registry.counter(bad, "Events")
    first = registry.counter("source_events", "Decoded", labels=("source",))
    assert registry.counter("source_events", "Decoded", labels=("source",)) is first
    with pytest.raises(ValueError, match="registered twice"):
        registry.gauge("source_events", "Decoded", labels=("source",))
    with pytest.raises(ValueError, match="ascending"):
        registry.histogram("x_seconds", "x", unit="seconds", buckets=(1.0, 0.5))


def test_health_is_the_worst_per_component_and_a_raising_check_is_failing() -> None:
    """Each component's health check is asked at the snapshot; a check that raises reports
    failing; merged, the worst status of a component wins."""
    first, second = Registry(), Registry()
    first.health("sink.s3", lambda: Health("degraded", "retrying", 12.0))
    second.health("sink.s3", lambda: Health("failing", "refused", 15.0))
    second.health("source.agents", lambda: Health())

    def broken() -> Health:
        raise RuntimeError("boom")

    first.health("wal", broken)
    merged = merge([first.snapshot(), second.snapshot()])
    assert merged["health"]["sink.s3"] == {"status": "failing", "reason": "refused", "since": 15.0}
    assert merged["health"]["source.agents"]["status"] == "ok"
    assert merged["health"]["wal"]["status"] == "failing"
    assert "boom" in merged["health"]["wal"]["reason"]


def test_summary_groups_by_component_and_names_troubled_components() -> None:
    """The log view of a snapshot groups each metric under its component (and the component's
    id when labelled by it), nests other labels, shows a histogram as count and sum, and lists
    only the components that are not ok."""
    registry = Registry()
    registry.counter("wal_events", "Written").labels().inc(9)
    refused = registry.counter("source_refused", "Refused", labels=("source", "reason"))
    refused.labels("agents", "timeout").inc(2)
    registry.counter("chain_verdicts", "Verdicts", labels=("status",)).labels("ok").inc(4)
    registry.histogram("wal_fsync_seconds", "f", unit="seconds", buckets=(1.0,)).labels().observe(
        0.5
    )
    registry.health("wal", lambda: Health())
    registry.health("sink.archive", lambda: Health("degraded", "disk full"))
    shown = summary(registry.snapshot())
    assert shown["wal"] == {"events": 9, "fsync_seconds": {"count": 1, "sum": 0.5}}
    assert shown["source"] == {"agents": {"refused": {"timeout": 2}}}
    assert shown["chain"] == {"verdicts": {"ok": 4}}
    assert shown["health"] == {
        "sink.archive": {"status": "degraded", "reason": "disk full", "since": 0.0}
    }


def test_counter_set_counts_into_the_registry_by_component() -> None:
    """A component's counter set counts like a ``Counter`` into metrics labelled with its id,
    takes the unit from the name, refuses undeclared names, and restores taken-back counts."""
    registry = Registry()
    declared = {"events": "Events decoded", "bytes": "Bytes read"}
    agents = CounterSet(registry, "source", "agents", declared)
    syslog = CounterSet(registry, "source", "syslog", declared)
    agents["events"] += 3
    agents["bytes"] += 100
    syslog["events"] += 1
    before = agents.as_dict()
    agents["events"] += 5
    agents.restore(before)
    snapshot = registry.snapshot()
    assert value(snapshot, "source_events", "agents") == 3
    assert value(snapshot, "source_events", "syslog") == 1
    assert snapshot["metrics"]["source_bytes"]["unit"] == "bytes"
    assert agents.as_dict() == {"events": 3, "bytes": 100}
    with pytest.raises(KeyError):
        agents["typo"] += 1


def test_collectors_run_before_each_snapshot() -> None:
    """A collector brings a metric kept elsewhere up to date at each snapshot, and a singleton
    component's counter set has no label."""
    registry = Registry()
    kept = {"ok": 0}
    verdicts = registry.counter("chain_verdicts", "Verdicts", labels=("status",))

    def collect() -> None:
        for status, count in kept.items():
            verdicts.labels(status).value = count

    registry.collector(collect)
    stage = CounterSet(registry, "chain", None, {"alerts": "Alerts raised"})
    stage["alerts"] += 2
    kept["ok"] = 7
    snapshot = registry.snapshot()
    assert value(snapshot, "chain_verdicts", "ok") == 7
    assert value(snapshot, "chain_alerts") == 2
