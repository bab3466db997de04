"""``GET /metrics``: the daemon's metrics in Prometheus's text exposition format.

Every metric of the topology's registry (``shipper.metrics``: every process's, merged in the
main process) is rendered at each scrape by a ``prometheus_client`` collector over
``Registry.snapshot()``, as the snapshot's names say with the ``shipper_`` prefix: a counter
``source_events{source}`` is ``shipper_source_events_total{source="..."}``, a gauge keeps its
name (``shipper_sink_lag_bytes``), a histogram has its ``_bucket``, ``_sum`` and ``_count``
(``shipper_wal_fsync_seconds``). Units are in the names (``_bytes``, ``_seconds``).

Beside them, three families are made from the snapshot here:

* ``shipper_source_malformed_total{source, reason}`` in place of the registry's unlabelled
  ``source_malformed``: ``reason`` is ``oversized`` (a frame or datagram past the source's limit),
  ``bad_framing`` (bytes that broke the framing) or ``undecodable`` (a frame the codec could not
  read, or a connection cut off mid-frame); they add up to every malformed input.
* ``shipper_dropped_total{reason}``: what the daemon dropped, by why, each also counted by the
  component that dropped it: ``wal_full`` (events, ``when_full = "drop_newest"``:
  ``writer_dropped``), ``burst_buffer_full`` (datagrams' events, ``source_dropped_full``),
  ``kernel`` (datagrams the kernel dropped, ``source_kernel_dropped``), ``emit_queue_full``
  (events the sinks raised, ``writer_emitted_dropped``), ``duplicate`` (exact duplicates the
  chain stage removed, ``chain_duplicates_dropped``).
* ``shipper_health_status{component}``: 0 ok, 1 degraded, 2 failing (``/health`` says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from shipper.topology import Topology

PREFIX = "shipper_"
#: ``shipper_dropped_total``'s reasons and the counter each sums (over its labels).
DROPPED: dict[str, str] = {
    "wal_full": "writer_dropped",
    "burst_buffer_full": "source_dropped_full",
    "kernel": "source_kernel_dropped",
    "emit_queue_full": "writer_emitted_dropped",
    "duplicate": "chain_duplicates_dropped",
}
#: Malformed inputs' reasons counted on their own; the rest of ``source_malformed`` is
#: ``undecodable``.
MALFORMED_COUNTED = {"oversized": "source_oversized", "bad_framing": "source_bad_framing"}
_STATUS = {"ok": 0, "degraded": 1, "failing": 2}


class SnapshotCollector(Collector):
    """A ``prometheus_client`` collector over a ``shipper.metrics`` snapshot, taken at each
    collect."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return iter(families(self._snapshot()))


def families(snapshot: dict[str, Any]) -> list[Metric]:
    """The Prometheus families of ``snapshot`` (see the module docstring)."""
    metrics: dict[str, Any] = snapshot["metrics"]
    out: list[Metric] = []
    for name, metric in metrics.items():
        if name == "source_malformed":
            out.append(_malformed(metrics))
            continue
        out.append(_family(PREFIX + name, metric))
    dropped = CounterMetricFamily(
        PREFIX + "dropped", "What the daemon dropped, by reason", labels=["reason"]
    )
    for reason, name in DROPPED.items():
        dropped.add_metric([reason], _total(metrics, name))
    out.append(dropped)
    health = GaugeMetricFamily(
        PREFIX + "health_status",
        "How each component is: 0 ok, 1 degraded, 2 failing",
        labels=["component"],
    )
    for component, state in sorted(snapshot["health"].items()):
        health.add_metric([component], _STATUS[state["status"]])
    out.append(health)
    return out


def _family(name: str, metric: dict[str, Any]) -> Metric:
    labels: list[str] = metric["labels"]
    kind = metric["kind"]
    if kind == "histogram":
        histogram = HistogramMetricFamily(name, metric["help"], labels=labels)
        for values, sample in metric["samples"]:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip([*sample["buckets"], math.inf], sample["counts"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            histogram.add_metric(values, buckets, sample["sum"])
        return histogram
    family: CounterMetricFamily | GaugeMetricFamily
    if kind == "counter":
        family = CounterMetricFamily(name, metric["help"], labels=labels)
    else:
        family = GaugeMetricFamily(name, metric["help"], labels=labels)
    for values, sample in metric["samples"]:
        family.add_metric(values, sample)
    return family


def _total(metrics: dict[str, Any], name: str) -> float:
    """The sum of every sample of counter ``name`` (0 if the registry has none)."""
    metric = metrics.get(name)
    return sum(sample for _, sample in metric["samples"]) if metric is not None else 0


def _malformed(metrics: dict[str, Any]) -> Metric:
    """``source_malformed`` split by reason (see the module docstring)."""
    family = CounterMetricFamily(
        PREFIX + "source_malformed",
        "Inputs archived as malformed events, by reason",
        labels=["source", "reason"],
    )
    counted = {
        reason: {tuple(v): n for v, n in metrics[name]["samples"]} if name in metrics else {}
        for reason, name in MALFORMED_COUNTED.items()
    }
    for values, total in metrics["source_malformed"]["samples"]:
        rest = total
        for reason, by_source in counted.items():
            count = min(rest, by_source.get(tuple(values), 0))
            family.add_metric([*values, reason], count)
            rest -= count
        family.add_metric([*values, "undecodable"], rest)
    return family


def exposition(snapshot: dict[str, Any]) -> bytes:
    """``snapshot`` in the text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return generate_latest(registry)


def routes(topology: Topology) -> list[BaseRoute]:
    """``/metrics`` over ``topology``'s registry."""

    async def metrics(request: Request) -> Response:
        snapshot = topology.registry.snapshot()
        await trio.lowlevel.checkpoint()
        # rendering many label sets takes a while: a thread, not the daemon's event loop
        body = await trio.to_thread.run_sync(exposition, snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
