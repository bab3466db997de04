"""Metrics and health: what every component counts and how well it is, in one registry.

A component registers its metrics once, when it is built, and updates them on its paths::

    events = registry.counter("source_events", "Events decoded", labels=("source",))
    events_here = events.labels("agents")     # a child per label values, made once
    events_here.inc(len(batch))               # the hot path: one attribute update

Kinds:

* counter: only goes up (``inc``). Merged across processes by adding. A counter kept elsewhere,
  possibly fractional (a process's CPU seconds), is registered with ``cumulative`` and read at
  each snapshot, as an observed gauge is.
* gauge: a value now (``set``, ``inc``, ``dec``), or read when a snapshot is taken (``observe``
  a callable). Merged by adding (each process reports its own part: bytes held, connections),
  or by the maximum, as its ``merge`` says.
* histogram: observations counted into fixed buckets (upper bounds, ascending; ``+Inf`` is
  implied), with their sum and count, as Prometheus keeps them. Merged by adding bucket-wise.

Names are ``snake_case`` without the ``shipper_`` prefix (the exporter adds it); a unit is one of
``UNITS``, and a name ends with its unit (``wal_bytes``, ``fsync_seconds``), so that names keep
Prometheus's conventions (a counter's ``_total`` is added by the exporter).

Health: a component registers a callable that says how it is (``Health``: ``ok``, ``degraded`` or
``failing``, why, and since when). Merged per component: the worst wins.

Snapshot (``Registry.snapshot()``), plain data that survives JSON and a pipe between processes::

    {"v": 1,
     "metrics": {"<name>": {"kind": "counter", "help": "...", "unit": "",
                            "labels": ["source"], "merge": "sum",
                            "samples": [[["agents"], 1500], ...]}},     # histogram sample value:
                                                                        # {"buckets": [..],
                                                                        #  "counts": [..],
                                                                        #  "sum": s, "count": n}
     "health": {"<component>": {"status": "ok", "reason": "", "since": 0.0}}}

``merge`` combines snapshots of several processes (metrics of the same name must agree on kind,
unit, labels and buckets: a mismatch is a defect, and raises ``ValueError``); a registry merges
the snapshots of its child processes into its own (``Registry.include``; ``shipper.children``
relays them), so one snapshot holds every process's metrics. ``value`` reads one sample;
``summary`` renders a snapshot for a log entry.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Kind = Literal["counter", "gauge", "histogram"]
Merge = Literal["sum", "max"]
Status = Literal["ok", "degraded", "failing"]

#: Units a metric may have: Prometheus's base units, or "" for a count of what the name says
#: (``source_events``: events).
UNITS = frozenset({"", "bytes", "seconds", "ratio"})
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_RANK: dict[str, int] = {"ok": 0, "degraded": 1, "failing": 2}


@dataclass(frozen=True, slots=True)
class Health:
    """How a component is: ``ok``, ``degraded`` (working, but not as it should: retrying, lagging)
    or ``failing`` (not doing its job), why, and since when (a monotonic time, 0 if unknown)."""

    status: Status = "ok"
    reason: str = ""
    since: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "since": self.since}


class CounterValue:
    """One counter (one set of label values): a count of things, so a whole number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class GaugeValue:
    """One gauge (one set of label values): set, or read from a callable at each snapshot."""

    __slots__ = ("read", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.read: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def observe(self, read: Callable[[], float]) -> None:
        """Take the value from ``read`` whenever a snapshot is taken."""
        self.read = read

    def current(self) -> float:
        return self.read() if self.read is not None else self.value


class HistogramValue:
    """One histogram (one set of label values)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)


class Family(Generic[V]):
    """A metric: its description, and one value per set of label values."""

    def __init__(
        self,
        name: str,
        kind: Kind,
        help: str,
        unit: str,
        labels: tuple[str, ...],
        make: Callable[[], V],
        merge: Merge = "sum",
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.unit = unit
        self.label_names = labels
        self.merge = merge
        self.buckets = buckets
        self._make: Callable[[], V] = make
        self.children: dict[tuple[str, ...], V] = {}

    def labels(self, *values: str) -> V:
        """The value for these label values (made on first use); keep it for the hot path."""
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._make()
        return child

    def remove(self, *values: str) -> None:
        """Forget the value for these label values (a component that is gone)."""
        self.children.pop(values, None)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "kind": self.kind,
            "help": self.help,
            "unit": self.unit,
            "labels": list(self.label_names),
            "merge": self.merge,
        }
        if self.kind == "histogram":
            described["buckets"] = list(self.buckets)
        return described

    def samples(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for values, child in self.children.items():
            if isinstance(child, HistogramValue):
                sample: Any = {
                    "buckets": list(child.bounds),
                    "counts": list(child.counts),
                    "sum": child.sum,
                    "count": child.count,
                }
            elif isinstance(child, GaugeValue):
                sample = child.current()
            else:
                sample = child.value
            out.append([list(values), sample])
        return out


class Registry:
    """The metrics and health checks of the components of one process."""

    def __init__(self) -> None:
        self._families: dict[str, Family[Any]] = {}
        self._health: dict[str, Callable[[], Health]] = {}
        self._collectors: list[Callable[[], None]] = []
        self._included: list[Callable[[], dict[str, Any] | None]] = []

    def collector(self, collect: Callable[[], None]) -> None:
        """Call ``collect`` before each snapshot (to bring metrics kept elsewhere up to date)."""
        self._collectors.append(collect)

    def counter(
        self, name: str, help: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> Family[CounterValue]:
        return self._register(Family(name, "counter", help, unit, tuple(labels), CounterValue))

    def cumulative(
        self, name: str, help: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> Family[GaugeValue]:
        """A counter whose value is kept elsewhere and read at each snapshot (``observe``), or
        set by a collector: it only goes up, but need not be whole (seconds of CPU)."""
        return self._register(Family(name, "counter", help, unit, tuple(labels), GaugeValue))

    def gauge(
        self,
        name: str,
        help: str,
        *,
        unit: str = "",
        labels: Sequence[str] = (),
        merge: Merge = "sum",
    ) -> Family[GaugeValue]:
        return self._register(Family(name, "gauge", help, unit, tuple(labels), GaugeValue, merge))

    def histogram(
        self,
        name: str,
        help: str,
        *,
        unit: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> Family[HistogramValue]:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or math.inf in bounds:
            raise ValueError(f"{name}: buckets must be finite, distinct and ascending")
        return self._register(
            Family(
                name,
                "histogram",
                help,
                unit,
                tuple(labels),
                lambda: HistogramValue(bounds),
                buckets=bounds,
            )
        )

    def _register(self, family: Family[V]) -> Family[V]:
        """Register ``family``; registering the same metric again (another component of the same
        kind) returns the one registered first."""
        name, unit = family.name, family.unit
        if not _NAME.match(name) or name.startswith("shipper_") or name.endswith("_total"):
            raise ValueError(f"metric name {name!r}: snake_case, no shipper_ prefix, no _total")
        if unit not in UNITS:
            raise ValueError(f"metric {name}: unit {unit!r} is not one of {sorted(UNITS)}")
        if unit and not name.endswith(f"_{unit}"):
            raise ValueError(f"metric {name}: a name ends with its unit ({unit})")
        known = self._families.get(name)
        if known is None:
            self._families[name] = family
            return family
        if known.describe() != family.describe():
            raise ValueError(f"metric {name} registered twice, differently")
        return known

    def health(self, component: str, check: Callable[[], Health]) -> None:
        """Register how ``component`` tells its health (one check per component)."""
        self._health[component] = check

    def unregister_health(self, component: str) -> None:
        self._health.pop(component, None)

    def include(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        """Merge what ``snapshot`` returns (another process's metrics and health, as a snapshot;
        None: nothing yet) into each snapshot of this registry (``merge``)."""
        self._included.append(snapshot)

    def snapshot(self) -> dict[str, Any]:
        """Every metric and health check now, as plain data (see the module docstring), with
        what the included snapshots hold merged in."""
        for collect in self._collectors:
            collect()
        health: dict[str, Any] = {}
        for component, check in self._health.items():
            try:
                health[component] = check().as_dict()
            except Exception as exc:  # a defect in a check: the component says so, not the caller
                health[component] = Health("failing", f"health check raised {exc!r}").as_dict()
        own = {
            "v": 1,
            "metrics": {
                name: {**family.describe(), "samples": family.samples()}
                for name, family in self._families.items()
            },
            "health": health,
        }
        others = [found for include in self._included if (found := include()) is not None]
        return merge([own, *others]) if others else own


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot of several processes' (counters and histograms added, gauges added or the
    maximum taken as each says, health the worst per component)."""
    metrics: dict[str, dict[str, Any]] = {}
    merged_samples: dict[str, dict[tuple[str, ...], Any]] = {}
    health: dict[str, Any] = {}
    for snapshot in snapshots:
        for name, metric in snapshot["metrics"].items():
            described = {key: value for key, value in metric.items() if key != "samples"}
            known = metrics.get(name)
            if known is None:
                metrics[name] = described
                merged_samples[name] = {}
            elif known != described:
                raise ValueError(f"metric {name} differs between the snapshots merged")
            samples = merged_samples[name]
            for values, value in metric["samples"]:
                key = tuple(values)
                if key not in samples:
                    samples[key] = _copy(value)
                else:
                    samples[key] = _combine(described, samples[key], value)
        for component, state in snapshot["health"].items():
            known_state = health.get(component)
            if known_state is None or _RANK[state["status"]] > _RANK[known_state["status"]]:
                health[component] = dict(state)
    return {
        "v": 1,
        "metrics": {
            name: {
                **described,
                "samples": [[list(key), value] for key, value in merged_samples[name].items()],
            }
            for name, described in metrics.items()
        },
        "health": health,
    }


def lasting(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What of a process's snapshot still counts once the process is gone: its counters and
    histograms (merged with those of the process that takes its place, they count on as one
    process would), not its gauges or health (they were its state, not a count)."""
    return {
        "v": 1,
        "metrics": {
            name: metric
            for name, metric in snapshot["metrics"].items()
            if metric["kind"] != "gauge"
        },
        "health": {},
    }


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {**value, "counts": list(value["counts"])}
    return value


def _combine(described: dict[str, Any], old: Any, new: Any) -> Any:
    if described["kind"] == "histogram":
        if old["buckets"] != new["buckets"]:
            raise ValueError("histograms with different buckets cannot be merged")
        return {
            "buckets": old["buckets"],
            "counts": [a + b for a, b in zip(old["counts"], new["counts"], strict=True)],
            "sum": old["sum"] + new["sum"],
            "count": old["count"] + new["count"],
        }
    if described["kind"] == "gauge" and described["merge"] == "max":
        return max(old, new)
    return old + new


def value(snapshot: dict[str, Any], name: str, *labels: str) -> Any:
    """The sample of ``name`` for these label values in ``snapshot`` (0 if it has none)."""
    metric = snapshot["metrics"].get(name)
    if metric is None:
        raise KeyError(f"no metric {name}")
    for values, sample in metric["samples"]:
        if tuple(values) == labels:
            return sample
    return 0


def summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` for a log entry, grouped by component: ``<component>_<rest>`` goes under
    ``out[component]``, then under the component's id when its first label is named after the
    component (``source_events{source="agents"}``: ``out["source"]["agents"]["events"]``), then
    under ``rest``, nested by the other label values. A histogram shows its count and sum. The
    health of each component that is not ok is under ``out["health"]``."""
    out: dict[str, Any] = {}
    for name, metric in snapshot["metrics"].items():
        component, _, rest = name.partition("_")
        labels = metric["labels"]
        by_id = bool(labels) and labels[0] == component
        for values, sample in metric["samples"]:
            shown = (
                {"count": sample["count"], "sum": round(sample["sum"], 6)}
                if isinstance(sample, dict)
                else sample
            )
            place = out.setdefault(component, {})
            if by_id:
                place = place.setdefault(values[0], {})
                values = values[1:]
            if not values:
                place[rest] = shown
                continue
            place = place.setdefault(rest, {})
            for label in values[:-1]:
                place = place.setdefault(label, {})
            place[values[-1]] = shown
    troubled = {
        component: state
        for component, state in snapshot["health"].items()
        if state["status"] != "ok"
    }
    if troubled:
        out["health"] = troubled
    return out


class CounterSet:
    """A component's counters by short name, each a metric of the registry.

    ``counters["events"] += n`` updates the metric ``<component>_events`` labelled with the
    component's id (``source="agents"``), so a component counts as it would with a
    ``collections.Counter``, and every count is in the registry's snapshot. The names are
    declared up front, with their help text (and unit, for names ending in ``_bytes`` or
    ``_seconds``); an undeclared name is a defect (``KeyError``).
    """

    __slots__ = ("_values",)

    def __init__(
        self,
        registry: Registry,
        component: str,
        component_id: str | None,
        declared: dict[str, str],
    ) -> None:
        self._values: dict[str, CounterValue] = {}
        labels = (component,) if component_id is not None else ()
        values = (component_id,) if component_id is not None else ()
        for key, help in declared.items():
            name = f"{component}_{key}"
            unit = next((u for u in ("bytes", "seconds") if name.endswith(f"_{u}")), "")
            family = registry.counter(name, help, unit=unit, labels=labels)
            self._values[key] = family.labels(*values)

    def __getitem__(self, key: str) -> int:
        return self._values[key].value

    def __setitem__(self, key: str, value: int) -> None:
        self._values[key].value = value

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def as_dict(self) -> dict[str, int]:
        """Every counter's value now, by short name (for a log entry, or to restore later)."""
        return {key: child.value for key, child in self._values.items()}

    def restore(self, values: dict[str, int]) -> None:
        """Set the counters back to ``values`` (taken by ``as_dict``): work taken back."""
        for key, value in values.items():
            self._values[key].value = value


def mirror(
    registry: Registry,
    component: str,
    counters: Callable[[], Mapping[str, int]],
    declared: dict[str, str],
    labelled: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Register a component's ``collections.Counter`` (as ``counters()`` returns it at each
    snapshot, since a component may replace it) as metrics ``<component>_<name>`` for each
    ``declared`` name (with its help text); for each ``labelled`` prefix, the names
    ``<prefix>_<value>`` become one metric ``<component>_<prefix>`` labelled
    ``(label, value)`` (``labelled = {"recovery": ("kind", "WAL damage recovery found")}``).

    For components whose counts live on paths that must not change shape (the WAL's, the chain
    stage's); the others count into a ``CounterSet`` directly."""
    families = {}
    for key, help in declared.items():
        name = f"{component}_{key}"
        unit = next((u for u in ("bytes", "seconds") if name.endswith(f"_{u}")), "")
        families[key] = registry.counter(name, help, unit=unit)
    groups = {
        prefix: registry.counter(f"{component}_{prefix}", help, labels=(label,))
        for prefix, (label, help) in (labelled or {}).items()
    }

    def collect() -> None:
        now = counters()
        for key, family in families.items():
            family.labels().value = now.get(key, 0)
        for key, count in now.items():
            prefix, _, rest = key.partition("_")
            if prefix in groups and key not in families:
                groups[prefix].labels(rest).value = count

    registry.collector(collect)
