"""The sink contract: every sink, run by the driver against a real WAL, delivers each event
once across crashes, outages, refusals and restarts (harnesses in ``tests/sinks/contract.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import orjson
import pytest
import trio

from shipper.sinks.driver import SinkDriver
from tests.conftest import wait_until
from tests.sinks.contract import (
    HARNESSES,
    NEEDS,
    SERVERS,
    SINK,
    CrashAfterDelivery,
    Harness,
    Refusing,
    Watched,
    entries,
    ids,
    numbers,
    open_wal,
    reopen,
)


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each sink's harness in turn (only those that can refuse, where a test says so)."""
    if request.param in NEEDS:
        SERVERS[request.param] = request.getfixturevalue(NEEDS[request.param])
    with HARNESSES[request.param].make(tmp_path) as built:
        yield built


REFUSING = [name for name, kind in HARNESSES.items() if kind.can_refuse]


async def test_crash_between_delivery_and_ack_leaves_each_event_once(
    harness: Harness, tmp_path: Path
) -> None:
    """A sink that dies after its destination took a batch but before the acknowledgement gets
    that batch again at the next start, and the destination still holds each event once (a
    sink delivering at least once sends it again under the same idempotency key)."""
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    with trio.CancelScope() as scope:
        driver = SinkDriver(CrashAfterDelivery(harness.sink(), scope, deliveries=2), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, reader, wal.epoch)
            await wal.append(entries(1, 20))
            await reader.acked_to(wal.committed)
            acked = wal.readers[SINK].acked
            await wal.append(entries(21, 20))
            await trio.sleep_forever()  # until the sink dies after its second delivery
    assert scope.cancelled_caught
    assert numbers(harness.held()) == list(range(1, 41))  # taken, but 21..40 never acknowledged
    assert wal.readers[SINK].acked == acked

    wal = await reopen(wal)
    await wal.close()
    restarted = SinkDriver(harness.sink(), tmp_path)
    await restarted.run(wal.readers[SINK], wal.epoch)
    held = harness.held()
    assert numbers(held) == list(range(1, 41))
    assert len(set(ids(held))) == 40
    if harness.exactly_once:  # else sent again under the same key, which held() drops
        assert restarted.counters["already_delivered"] == 20
    assert wal.lag_bytes(wal.readers[SINK]) == 0


async def test_destination_down_then_back_loses_nothing(harness: Harness, tmp_path: Path) -> None:
    """While the destination is unavailable the driver retries and acknowledges nothing; once it
    is back every event is delivered, once, and the sink is healthy again."""
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    start = wal.readers[SINK].acked
    harness.make_unavailable()
    driver = SinkDriver(harness.sink(), tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        await wal.append(entries(1, 10))
        await wait_until(lambda: driver.counters["retries"] >= 3)
        assert harness.held() == []
        assert wal.readers[SINK].acked == start
        assert driver.health().status in ("degraded", "failing")
        assert driver.health().reason
        harness.make_available()
        await reader.acked_to(wal.committed)
        await wal.close()
    assert numbers(harness.held()) == list(range(1, 11))
    assert driver.counters["events"] == 10
    assert driver.health().status == "ok"


@pytest.mark.parametrize("harness", REFUSING, indirect=True)
async def test_refused_batch_is_dead_lettered_and_the_sink_goes_on(
    harness: Harness, tmp_path: Path
) -> None:
    """A batch the destination refuses for good goes to the dead-letter area with the reason,
    is acknowledged, and the batches after it are delivered."""
    refusing = cast(Refusing, harness)
    refusing.refuse(b"poison")
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    driver = SinkDriver(harness.sink(), tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        for first, fields in ((1, {}), (6, {"tag": "poison"}), (11, {})):
            await wal.append(entries(first, 5, **fields))
            await reader.acked_to(wal.committed)
        await wal.close()
    assert numbers(harness.held()) == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    (letters,) = (tmp_path / "dead_letter" / SINK).iterdir()
    lines = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
    assert [line["envelope"]["record"]["n"] for line in lines] == [6, 7, 8, 9, 10]
    assert all("poison" in line["reason"] for line in lines)
    assert all(line["sink"] == SINK for line in lines)
    assert driver.counters["dead_letters"] == 5
    assert driver.counters["events"] == 10


async def test_shutdown_during_a_retry_acknowledges_nothing_undelivered(
    harness: Harness, tmp_path: Path
) -> None:
    """Cancelled while it retries an unavailable destination, the driver has acknowledged
    nothing; the next start delivers every event, once."""
    wal = open_wal(tmp_path / "wal")
    start = wal.readers[SINK].acked
    harness.make_unavailable()
    driver = SinkDriver(harness.sink(), tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, wal.readers[SINK], wal.epoch)
        await wal.append(entries(1, 10))
        await wait_until(lambda: driver.counters["retries"] >= 2)
        nursery.cancel_scope.cancel()
    assert harness.held() == []
    assert wal.readers[SINK].acked == start

    harness.make_available()
    wal = await reopen(wal)
    await wal.close()
    restarted = SinkDriver(harness.sink(), tmp_path)
    await restarted.run(wal.readers[SINK], wal.epoch)
    assert numbers(harness.held()) == list(range(1, 11))
    assert wal.lag_bytes(wal.readers[SINK]) == 0


async def test_resume_after_a_clean_restart_neither_loses_nor_doubles(
    harness: Harness, tmp_path: Path
) -> None:
    """A sink stopped cleanly and started again goes on after what it acknowledged: every event
    once, nothing skipped as already delivered."""
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 10))
    await wal.close()
    await SinkDriver(harness.sink(), tmp_path).run(wal.readers[SINK], wal.epoch)

    wal = await reopen(wal)
    await wal.append(entries(11, 10))
    await wal.close()
    restarted = SinkDriver(harness.sink(), tmp_path)
    await restarted.run(wal.readers[SINK], wal.epoch)
    held = harness.held()
    assert numbers(held) == list(range(1, 21))
    assert len(set(ids(held))) == 20
    assert restarted.counters["already_delivered"] == 0
    assert restarted.counters["events"] == 10
