"""The sink driver's own rules: isolation of a broken sink, batching, resume within a batch,
retry classification, dead letters, health."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from shipper.buffer.config import BufferConfig
from shipper.buffer.wal import Wal
from shipper.config import SINK_TYPES, parse_config
from shipper.errors import DestinationRejected, DestinationUnavailable
from shipper.events import Event, entry, envelopes
from shipper.metrics import CounterSet, Health, Registry, value
from shipper.retry import Outcome, RetryPolicy
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.base import Batch, BatchSettings
from shipper.sinks.driver import FAILING_AFTER, SinkDriver
from shipper.sinks.file import FileSink, FileSinkConfig
from tests.conftest import LogCapture, archive_lines, file_sink_config, wait_until
from tests.sinks.contract import Watched, entries, numbers, open_wal
from tests.sinks.memory import (
    BrokenSink,
    BrokenSinkConfig,
    MemoryDestination,
    MemorySink,
)


async def test_a_broken_sink_restarts_with_growing_delays_beside_a_working_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, logs: LogCapture
) -> None:
    """A sink whose deliver always raises is closed and opened again after ever longer pauses,
    its events wait unacknowledged, and a file sink on the same WAL delivers everything."""
    wal = Wal(tmp_path / "wal", BufferConfig(), envelopes=envelopes)
    wal.open({"broken": None, "archive": None})
    start = wal.readers["broken"].acked
    broken = BrokenSink("broken")
    broken_driver = SinkDriver(broken, tmp_path)
    archive = Watched(wal.readers["archive"])
    archive_driver = SinkDriver(
        FileSink(FileSinkConfig(id="archive", path=tmp_path / "archive")), tmp_path
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(broken_driver.run, wal.readers["broken"], wal.epoch)
        await nursery.start(archive_driver.run, archive, wal.epoch)
        for first in range(1, 100, 10):
            await wal.append(entries(first, 10))
        await archive.acked_to(wal.committed)
        await broken.opens(6)
        await wal.close()
        nursery.cancel_scope.cancel()
    assert numbers(archive_lines(tmp_path / "archive")) == list(range(1, 101))
    assert archive_driver.counters["events"] == 100
    opened_at = broken.opened_at[:6]  # steps of 1, 2, 4, 8, 16 s: each delay longer (jitter)
    delays = [b - a for a, b in itertools.pairwise(opened_at)]
    assert delays == sorted(delays)
    assert delays[-1] > 4 * delays[0]
    assert broken_driver.counters["restarts"] >= 5
    assert broken.closes >= 5
    assert wal.readers["broken"].acked == start
    assert broken_driver.health().status == "failing"
    assert "RuntimeError: this sink is broken" in broken_driver.health().reason
    defects = logs.entries("sink_defect")
    assert len(defects) >= 5
    assert "RuntimeError: this sink is broken" in defects[0]["exception"]


async def test_a_broken_sink_never_stops_the_daemon_or_its_file_sink(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A daemon configured with a sink type whose code raises on every batch restarts that sink
    again and again, while events from the network reach the file sink beside it, every one,
    and at shutdown the broken sink's events wait in the WAL (it cannot drain: the shutdown
    ends at its deadline)."""
    raw = file_sink_config(tmp_path)
    raw["sinks"]["broken"] = {"type": "broken"}
    raw["shutdown_timeout"] = "1s"
    raw["runtime"] = {"sink_processes": False}  # the broken sink is inspected in this process
    lines = b"".join(
        orjson.dumps({"agentId": "a", "sequence": n, "action": "db.query"}) + b"\n"
        for n in range(1, 301)
    )
    with SINK_TYPES.registered(BrokenSinkConfig):
        config = parse_config(raw)
        broken_config = config.sinks["broken"]
        assert isinstance(broken_config, BrokenSinkConfig)
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, config, shutdown)
            address = bound["agents"][0]
            async with await trio.open_tcp_stream(address.host, address.port) as stream:
                await stream.send_all(lines)
            await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 300)
            (broken,) = broken_config.built
            await broken.opens(4)
            shutdown.request("test")
    sequences = [
        orjson.loads(line)["record"]["sequence"] for line in archive_lines(tmp_path / "archive")
    ]
    assert sequences == list(range(1, 301))
    assert len(logs.entries("sink_defect")) >= 3
    assert not logs.entries("shipper_failed")
    (forced,) = logs.entries("shutdown_forced")
    sinks = forced["metrics"]["sink"]
    assert sinks["broken"]["restarts"] >= 3
    assert sinks["broken"]["lag_bytes"] > 0
    assert sinks["archive"]["events"] == 300
    assert sinks["archive"]["lag_bytes"] == 0
    troubled = forced["metrics"]["health"]
    assert troubled["sink.broken"]["status"] == "failing"
    assert "sink.archive" not in troubled
    assert forced["undelivered_bytes"]["broken"] > 0
    assert forced["undelivered_bytes"]["archive"] == 0


async def test_a_batch_cut_short_is_completed_without_doubles(tmp_path: Path) -> None:
    """When the destination took part of a batch and then failed, the retry sends only the
    rest: the driver asks what the destination holds before trying again."""
    destination = MemoryDestination()
    destination.take_then_fail = 4
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 10))
    await wal.close()
    driver = SinkDriver(MemorySink("contract", destination), tmp_path)
    await driver.run(wal.readers["contract"], wal.epoch)
    assert numbers(destination.held) == list(range(1, 11))
    assert destination.batches == [6]
    assert driver.counters["retries"] == 1
    assert driver.counters["already_delivered"] == 4
    assert driver.counters["events"] == 6


async def test_a_read_split_by_max_events_is_acknowledged_after_its_last_part(
    tmp_path: Path,
) -> None:
    """Batches hold at most ``max_events``; a read cut into several batches is acknowledged
    once, when its last part is delivered."""
    destination = MemoryDestination()
    sink = MemorySink("contract", destination, batching=BatchSettings(max_events=3, max_age=0.0))
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 10))
    await wal.close()
    reader = Watched(wal.readers["contract"])
    await SinkDriver(sink, tmp_path).run(reader, wal.epoch)
    assert destination.batches == [3, 3, 3, 1]
    assert numbers(destination.held) == list(range(1, 11))
    assert reader.acks == [wal.committed]


@pytest.mark.parametrize(
    ("max_events", "max_envelopes", "batches"),
    [(3, 10.5, [3] * 10), (100, 4.5, [4] * 7 + [2])],
    ids=["by-events", "by-bytes"],
)
async def test_the_rest_of_a_split_read_is_filled_up_from_the_next_reads(
    tmp_path: Path, max_events: int, max_envelopes: float, batches: list[int]
) -> None:
    """When reads hold more than a batch takes (``max_events``, or ``max_bytes``: here about
    ``max_envelopes`` envelopes), the rest of a read is not sent alone: the next reads fill
    its batch up, every batch but the last is full, and every read is acknowledged once its
    last part is delivered."""
    wal = open_wal(tmp_path / "wal")
    for first in range(1, 31, 10):
        await wal.append(entries(first, 10))
    await wal.close()
    envelope = len(entries(10, 1)[0])  # (about: the id is not in, the route is)
    destination = MemoryDestination()
    # (a batch waits for the next read: the WAL is closed, so the last goes out at its end)
    limits = BatchSettings(max_events, int(envelope * max_envelopes), max_age=3600.0)
    reader = Watched(wal.readers["contract"])
    await SinkDriver(MemorySink("contract", destination, batching=limits), tmp_path).run(
        reader, wal.epoch
    )
    assert destination.batches == batches
    assert numbers(destination.held) == list(range(1, 31))
    assert reader.acks == sorted(reader.acks)
    assert reader.acks[-1] == wal.committed


async def test_a_batch_waits_up_to_max_age_for_more_events(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A batch that is not full is delivered ``max_age`` after its first event was read, not
    before."""
    destination = MemoryDestination()
    sink = MemorySink("contract", destination, batching=BatchSettings(max_age=5.0))
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers["contract"])
    async with trio.open_nursery() as nursery:
        await nursery.start(SinkDriver(sink, tmp_path).run, reader, wal.epoch)
        await wal.append(entries(1, 1))
        appended = trio.current_time()
        await reader.acked_to(wal.committed)
        await wal.close()
    (taken_at,) = destination.taken_at
    assert 5.0 <= taken_at - appended < 5.5


async def test_health_degrades_fails_and_recovers(tmp_path: Path, logs: LogCapture) -> None:
    """An unavailable destination makes the sink degraded, then failing after FAILING_AFTER
    tries in a row; the next delivery makes it ok again, logged as sink_recovered."""
    destination = MemoryDestination()
    destination.available = False
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers["contract"])
    driver = SinkDriver(MemorySink("contract", destination), tmp_path)
    assert driver.health().status == "ok"
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        await wal.append(entries(1, 3))
        await wait_until(lambda: driver.counters["retries"] >= 1)
        degraded = driver.health()
        await wait_until(lambda: driver.counters["retries"] >= FAILING_AFTER)
        failing = driver.health()
        destination.available = True
        await reader.acked_to(wal.committed)
        await wal.close()
    assert degraded.status == "degraded"
    assert degraded.reason == "the memory destination is down"
    assert failing.status == "failing"
    assert driver.health().status == "ok"
    assert logs.entries("sink_open_failed")
    (recovered,) = logs.entries("sink_recovered")
    assert recovered["was"] == "failing"


async def test_a_sinks_own_health_is_reported_when_it_is_worse(tmp_path: Path) -> None:
    """What a sink says of its own health counts when it is worse than what the driver saw; a
    health() that raises makes the sink failing."""

    class Unlocked(MemorySink):
        def health(self) -> Health:
            return Health("degraded", "bucket lock unknown", 12.0)

    class Raising(MemorySink):
        def health(self) -> Health:
            raise KeyError("lock")

    unlocked = SinkDriver(Unlocked("u", MemoryDestination()), tmp_path).health()
    assert (unlocked.status, unlocked.reason) == ("degraded", "bucket lock unknown")
    raising = SinkDriver(Raising("r", MemoryDestination()), tmp_path).health()
    assert raising.status == "failing"
    assert "KeyError" in raising.reason


class HttpStatus(Exception):
    """A test destination's answer: an HTTP status code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class HttpPolicy(RetryPolicy):
    """Status codes as a webhook sink would map them: 4xx (but 408 and 429) refused for good,
    the rest unavailable."""

    def classify(self, exc: Exception) -> Outcome:
        if isinstance(exc, HttpStatus):
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                return Outcome.REJECT
            return Outcome.RETRY
        return super().classify(exc)


class AnsweringSink(MemorySink):
    """A sink whose destination answers each try with the next status code, then takes."""

    def __init__(self, destination: MemoryDestination, codes: list[int]) -> None:
        super().__init__("contract", destination, retry_policy=HttpPolicy(0.01, 0.05))
        self.codes = codes

    async def deliver(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint()
        if self.codes:
            raise HttpStatus(self.codes.pop(0))
        self.destination.take(batch)


async def test_a_sinks_retry_policy_classifies_its_own_errors(tmp_path: Path) -> None:
    """A sink's retry policy decides: its 503 is retried, its 404 sends the batch to the dead
    letters, and the batch after it is delivered."""
    destination = MemoryDestination()
    sink = AnsweringSink(destination, [503, 429, 404])
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers["contract"])
    driver = SinkDriver(sink, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        await wal.append(entries(1, 5))
        await reader.acked_to(wal.committed)
        await wal.append(entries(6, 5))
        await reader.acked_to(wal.committed)
        await wal.close()
    assert driver.counters["retries"] == 2
    assert driver.counters["dead_letters"] == 5
    assert driver.counters["restarts"] == 0
    assert numbers(destination.held) == list(range(6, 11))
    (letters,) = (tmp_path / "dead_letter" / "contract").iterdir()
    assert {orjson.loads(line)["reason"] for line in letters.read_bytes().splitlines()} == {
        "HTTP 404"
    }


async def test_a_defect_at_open_restarts_the_sink(tmp_path: Path, logs: LogCapture) -> None:
    """A sink whose open raises a defect is closed and opened again until it works; nothing is
    lost."""

    class FlakyOpen(MemorySink):
        failures = 2

        async def open(self, epoch: str) -> None:
            if self.failures:
                self.failures -= 1
                raise ZeroDivisionError("a bug in open")
            await super().open(epoch)

    destination = MemoryDestination()
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 5))
    await wal.close()
    driver = SinkDriver(FlakyOpen("contract", destination), tmp_path)
    await driver.run(wal.readers["contract"], wal.epoch)
    assert numbers(destination.held) == [1, 2, 3, 4, 5]
    assert driver.counters["restarts"] == 2
    assert [entry["step"] for entry in logs.entries("sink_defect")] == ["open", "open"]


async def test_a_dead_letter_is_durable_before_the_batch_is_acknowledged(
    tmp_path: Path, logs: LogCapture
) -> None:
    """While the dead-letter area cannot be written, the refused batch is not acknowledged;
    once it can, the batch is written there, then acknowledged."""
    data_dir = tmp_path / "data"
    data_dir.write_text("a file where data_dir should be")
    destination = MemoryDestination()
    destination.poison = b"poison"
    wal = open_wal(tmp_path / "wal")
    start = wal.readers["contract"].acked
    reader = Watched(wal.readers["contract"])
    driver = SinkDriver(MemorySink("contract", destination), data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        await wal.append(entries(1, 5, tag="poison"))
        await wait_until(lambda: driver.counters["dead_letter_errors"] >= 2)
        assert wal.readers["contract"].acked == start
        data_dir.unlink()
        await reader.acked_to(wal.committed)
        await wal.close()
    (letters,) = (data_dir / "dead_letter" / "contract").iterdir()
    assert len(letters.read_bytes().splitlines()) == 5
    assert logs.entries("sink_dead_letter_failed")
    (lettered,) = logs.entries("sink_dead_lettered")
    assert lettered["path"] == str(letters)


async def test_reads_with_nothing_for_the_sink_are_acknowledged_at_once(tmp_path: Path) -> None:
    """Events of sources a sink does not take are acknowledged as soon as they are read; the
    sink is never even opened for them."""
    wal = Wal(tmp_path / "wal", BufferConfig(), envelopes=envelopes)
    wal.open({"contract": frozenset({"other"})})
    reader = Watched(wal.readers["contract"])
    sink = MemorySink("contract", MemoryDestination())
    async with trio.open_nursery() as nursery:
        await nursery.start(SinkDriver(sink, tmp_path).run, reader, wal.epoch)
        await wal.append(entries(1, 5))
        await reader.acked_to(wal.committed)
        await wal.close()
    assert sink.opens == 0
    assert reader.acks == [wal.committed]


async def test_a_dead_lettered_batch_raises_an_alert_but_refused_alerts_raise_none(
    tmp_path: Path,
) -> None:
    """A refused batch raises one ``shipper.delivery_alert`` naming the sink, the reason and the
    dead-letter file; a refused batch made only of such alerts raises none (no loop)."""
    destination = MemoryDestination()
    destination.poison = b"poison"
    emitted: list[Event] = []

    def emit(event: Event) -> bool:
        emitted.append(event)
        return True

    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 3, tag="poison"))
    await wal.close()
    driver = SinkDriver(MemorySink("contract", destination), tmp_path, emit)
    await driver.run(wal.readers["contract"], wal.epoch)
    (alert,) = emitted
    record = orjson.loads(alert.record_json or b"")
    assert alert.alert
    assert record["action"] == "shipper.delivery_alert"
    assert record["sink"] == "contract"
    assert record["events"] == 3
    assert "poison" in record["reason"]
    (letters,) = (tmp_path / "dead_letter" / "contract").iterdir()
    assert record["dead_letter"] == letters.name

    wal = open_wal(tmp_path / "wal2")
    await wal.append([entry(alert)])
    await wal.close()
    destination.poison = b"delivery_alert"
    again = SinkDriver(MemorySink("contract", destination), tmp_path / "2", emit)
    await again.run(wal.readers["contract"], wal.epoch)
    assert again.counters["dead_letters"] == 1
    assert len(emitted) == 1


class HintingSink(MemorySink):
    """A sink whose destination is unavailable at its first try, asking to be left alone for
    ``hint`` seconds; the times of its tries are in ``tries``."""

    def __init__(self, destination: MemoryDestination, hint: float, policy: RetryPolicy) -> None:
        super().__init__("contract", destination, retry_policy=policy)
        self.hint = hint
        self.tries: list[float] = []

    async def deliver(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint()
        self.tries.append(trio.current_time())
        if len(self.tries) == 1:
            raise DestinationUnavailable("HTTP 429", retry_after=self.hint)
        self.destination.take(batch)


async def test_a_retry_waits_at_least_the_destinations_hint_within_the_bound(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A destination's retry_after longer than the backoff is waited for; a hint beyond the
    policy's max_retry_after waits that bound instead."""
    gaps: list[float] = []
    for hint, bound in ((7.0, 300.0), (86_400.0, 20.0)):
        policy = RetryPolicy(first=0.01, limit=0.05, max_retry_after=bound)
        sink = HintingSink(MemoryDestination(), hint, policy)
        wal = open_wal(tmp_path / f"wal-{hint}")
        await wal.append(entries(1, 3))
        await wal.close()
        await SinkDriver(sink, tmp_path).run(wal.readers["contract"], wal.epoch)
        assert sink.destination.held
        first, second = sink.tries
        gaps.append(second - first)
    assert 7.0 <= gaps[0] < 7.1
    assert 20.0 <= gaps[1] < 20.1


async def test_a_dead_letter_keeps_the_destinations_status_and_answer(tmp_path: Path) -> None:
    """A refusal carrying the destination's status and answer leaves both on every line of the
    dead-letter file, beside the reason."""

    class Refusing(MemorySink):
        async def deliver(self, batch: Batch) -> None:
            await trio.lowlevel.checkpoint()
            raise DestinationRejected("HTTP 400", status=400, answer='{"error":"no field x"}')

    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 3))
    await wal.close()
    driver = SinkDriver(Refusing("contract", MemoryDestination()), tmp_path)
    await driver.run(wal.readers["contract"], wal.epoch)
    (letters,) = (tmp_path / "dead_letter" / "contract").iterdir()
    lines = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
    assert [(line["reason"], line["status"], line["answer"]) for line in lines] == [
        ("HTTP 400", 400, '{"error":"no field x"}')
    ] * 3
    assert driver.counters["dead_letters"] == 3


async def test_a_sinks_own_counters_are_counted_beside_the_drivers(tmp_path: Path) -> None:
    """A sink that declares counters of its own counts them in the driver's counter set, and
    they reach the metrics registry as sink_<name> with the sink's id, kept across the move."""

    class Seeing(MemorySink):
        own_counters: Mapping[str, str] = {"seen": "Events the test sink saw"}

        def count_into(self, counters: CounterSet) -> None:
            self.counts = counters

        async def deliver(self, batch: Batch) -> None:
            await super().deliver(batch)
            self.counts["seen"] += len(batch.envelopes)

    sink = Seeing("contract", MemoryDestination())
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 4))
    driver = SinkDriver(sink, tmp_path)
    async with trio.open_nursery() as nursery:
        reader = Watched(wal.readers["contract"])
        await nursery.start(driver.run, reader, wal.epoch)
        await reader.acked_to(wal.committed)
        registry = Registry()
        driver.register_metrics(registry)
        await wal.append(entries(5, 2))
        await reader.acked_to(wal.committed)
        await wal.close()
    assert driver.counters["seen"] == 6
    assert value(registry.snapshot(), "sink_seen", "contract") == 6
