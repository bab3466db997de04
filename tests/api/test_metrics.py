"""``GET /metrics`` of a daemon under load: the exposition parses, and says what was sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from shipper.api.metrics import exposition
from shipper.config import parse_config
from shipper.metrics import Registry, value
from shipper.shutdown import Shutdown, run_daemon
from tests.chains import chain_lines
from tests.conftest import WORKERS, LogCapture, file_sink_config
from tests.test_daemon import send


def parsed(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of an exposition by sample name, then by its labels (sorted pairs)."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def one(samples: dict[str, Any], name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly these labels."""
    found: float = samples[name][tuple(sorted(labels.items()))]
    return found


async def scrape_until(
    client: httpx2.AsyncClient, done: Callable[[dict[str, Any]], bool], limit: float = 20.0
) -> dict[str, Any]:
    """Scrape ``/metrics`` until ``done`` holds for the parsed samples (as ``wait_until``
    polls a counter: a scrape has no event to await); fail the test after ``limit`` s."""
    with trio.fail_after(limit):
        while True:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=")
            samples = parsed(response.text)
            if done(samples):
                return samples
            await trio.sleep(0.05)


@pytest.mark.usefixtures("processes")
async def test_metrics_under_load_count_what_was_sent(
    tmp_path: Path, logs: LogCapture, processes: bool
) -> None:
    """Chained records and malformed lines over several connections: the exposition, parsed by
    prometheus_client, counts the events, bytes, connections (the one held open, then none),
    malformed lines by reason,
    verdicts, WAL and sink deliveries the test sent, an fsync histogram that agrees with the
    fsync count, no lag, and the CPU and memory of every process of the daemon."""
    raw = file_sink_config(tmp_path)
    raw["api"] = {"address": "127.0.0.1:0"}
    agents = [f"agent-{n}" for n in range(4)]
    streams = [b"".join(chain_lines(300, agent)) for agent in agents]
    junk = b"not json at all\n" * 7 + b"{broken\n" * 3
    sent_bytes = sum(map(len, streams)) + len(junk) + len(chain_lines(1, "held")[0])
    total = 4 * 300 + 10 + 1  # and one record over a connection held open
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        (entry,) = logs.entries("api_listening")
        address = bound["agents"][0]
        held = await trio.open_tcp_stream(address.host, address.port)
        await held.send_all(chain_lines(1, "held")[0])
        async with trio.open_nursery() as senders:
            for data in [*streams, junk]:
                senders.start_soon(send, address, data)
        async with httpx2.AsyncClient(base_url=entry["url"]) as client:
            samples = await scrape_until(
                client,
                lambda found: (
                    found["shipper_sink_events_total"].get((("sink", "archive"),)) == total
                    and one(found, "shipper_sink_lag_bytes", sink="archive") == 0
                    and one(found, "shipper_source_connections_open", source="agents") == 1
                ),
            )
            await held.aclose()
            closed = await scrape_until(
                client,
                lambda found: one(found, "shipper_source_connections_open", source="agents") == 0,
            )
        shutdown.request("test")

    assert one(samples, "shipper_source_events_total", source="agents") == total
    assert one(samples, "shipper_source_bytes_total", source="agents") == sent_bytes
    assert one(samples, "shipper_source_connections_accepted_total", source="agents") == 6
    assert one(closed, "shipper_source_connections_accepted_total", source="agents") == 6
    malformed = {
        reason: one(samples, "shipper_source_malformed_total", source="agents", reason=reason)
        for reason in ("oversized", "bad_framing", "undecodable")
    }
    assert malformed == {"oversized": 0, "bad_framing": 0, "undecodable": 10}
    assert one(samples, "shipper_chain_verdicts_total", status="genesis") == 5
    assert one(samples, "shipper_chain_verdicts_total", status="ok") == 4 * 299
    assert one(samples, "shipper_chain_alerts_total") == 0
    assert one(samples, "shipper_wal_events_total") == total
    assert one(samples, "shipper_wal_bytes_total") > sent_bytes  # envelopes wrap each record
    assert one(samples, "shipper_wal_buffer_bytes") > 0
    fsyncs = one(samples, "shipper_wal_fsyncs_total")
    assert fsyncs >= 1
    assert one(samples, "shipper_wal_fsync_seconds_count") == fsyncs
    assert one(samples, "shipper_wal_fsync_seconds_bucket", le="+Inf") == fsyncs
    assert one(samples, "shipper_wal_fsync_seconds_sum") > 0
    assert one(samples, "shipper_wal_blocked_seconds_total") == 0
    for reason in ("wal_full", "burst_buffer_full", "kernel", "emit_queue_full", "duplicate"):
        assert one(samples, "shipper_dropped_total", reason=reason) == 0
    assert one(samples, "shipper_sink_failures_total", sink="archive") == 0
    assert one(samples, "shipper_sink_retries_total", sink="archive") == 0
    assert one(samples, "shipper_sink_dead_letters_total", sink="archive") == 0
    assert one(samples, "shipper_sink_lag_seconds", sink="archive") == 0
    assert one(samples, "shipper_health_status", component="sink.archive") == 0
    processes_seen = {
        dict(labels)["process"] for labels in samples["shipper_process_cpu_seconds_total"]
    }
    expected = {"main"}
    if processes:
        expected |= {"sink.archive", *(f"ingest_worker.{n}" for n in range(WORKERS))}
    assert processes_seen == expected
    for process in expected:
        assert one(samples, "shipper_process_cpu_seconds_total", process=process) > 0
        assert one(samples, "shipper_process_resident_memory_bytes", process=process) > 1 << 20


def test_histograms_render_cumulative_buckets_and_counters_their_total() -> None:
    """A histogram's per-bucket counts become Prometheus's cumulative ``le`` buckets, and a
    counter gets ``_total``, as prometheus_client's parser reads them back."""
    registry = Registry()
    histogram = registry.histogram("wal_fsync_seconds", "fsyncs", unit="seconds", buckets=[0.1, 1])
    for took in (0.05, 0.5, 0.5, 3.0):
        histogram.labels().observe(took)
    registry.counter("sink_events", "delivered", labels=("sink",)).labels("a").inc(3)
    snapshot = registry.snapshot()
    samples = parsed(exposition(snapshot).decode())
    assert one(samples, "shipper_wal_fsync_seconds_bucket", le="0.1") == 1
    assert one(samples, "shipper_wal_fsync_seconds_bucket", le="1.0") == 3
    assert one(samples, "shipper_wal_fsync_seconds_bucket", le="+Inf") == 4
    assert one(samples, "shipper_wal_fsync_seconds_sum") == 4.05
    assert one(samples, "shipper_sink_events_total", sink="a") == value(
        snapshot, "sink_events", "a"
    )
