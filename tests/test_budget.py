"""The ingest channel's bound in bytes: the budget alone, then the daemon with a stalled writer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

import shipper.topology
from shipper.budget import ByteBudget
from shipper.config import Address, parse_config
from shipper.events import EVENT_OVERHEAD, Event, batch_bytes
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._net import FEED_BYTES
from shipper.topology import Topology
from tests.conftest import LogCapture, archive_lines, file_sink_config, wait_until


async def test_a_producer_waits_while_the_budget_is_spent() -> None:
    """An acquire that would pass the limit waits until enough is released, then proceeds."""
    budget = ByteBudget(100)
    await budget.acquire(60)
    done = trio.Event()

    async def second() -> None:
        await budget.acquire(60)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert budget.used == 60
        budget.release(10)  # 50 + 60 would still pass the limit
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        budget.release(50)
    assert done.is_set()
    assert budget.used == 60


async def test_a_batch_larger_than_the_budget_passes_alone() -> None:
    """A batch larger than the whole budget is taken when nothing else is, so it never waits
    forever; the next one waits for it."""
    budget = ByteBudget(100)
    await budget.acquire(1000)
    assert budget.used == 1000
    with trio.move_on_after(0.1) as waited:
        await budget.acquire(1)
    assert waited.cancelled_caught
    budget.release(1000)
    await budget.acquire(1)
    assert budget.used == 1


def stall_writer(monkeypatch: pytest.MonkeyPatch, limit: int) -> tuple[trio.Event, list[Topology]]:
    """Give the channel a budget of ``limit`` bytes and make the writer wait, before its first
    batch, until the returned event is set; the list gets the topology once it waits."""
    monkeypatch.setattr(shipper.topology, "CHANNEL_BYTES", limit)
    gate = trio.Event()
    real = Topology._take
    stalled_in: list[Topology] = []

    async def stalled(self: Topology, batch: list[Event]) -> None:
        stalled_in.append(self)
        await gate.wait()
        await real(self, batch)

    monkeypatch.setattr(Topology, "_take", stalled)
    return gate, stalled_in


async def test_the_channel_holds_at_most_its_budget_while_the_writer_stalls(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the writer stalled and many connections sending, the bytes queued for it stay within
    the channel's budget (plus one batch passing alone), the senders are slowed; once the writer
    goes on, every record is archived."""
    limit = 1024 * 1024
    gate, stalled_in = stall_writer(monkeypatch, limit)
    shutdown = Shutdown()
    line = orjson.dumps({"agentId": "a", "notes": "x" * 2000}) + b"\n"
    per_connection = 2000  # about 4 MB each, 32 MB in all
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(file_sink_config(tmp_path)), shutdown)
        address: Address = bound["agents"][0]

        async def send() -> None:
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(line * per_connection)

        async with trio.open_nursery() as senders:
            for _ in range(8):
                senders.start_soon(send)
            await wait_until(lambda: bool(stalled_in))
            topology = stalled_in[0]
            highest = 0
            for _ in range(50):  # watch the queue while the senders push against it
                queued = topology._ingest._state.data  # what the channel holds right now
                highest = max(highest, sum(batch_bytes(batch) for batch in queued))
                await trio.sleep(0.01)
            one_read = 256 * 1024 + 2 * 2300  # one socket read of lines, and its overhead
            assert limit // 2 < highest <= limit + one_read
            assert len(archive_lines(tmp_path / "archive")) == 0
            gate.set()
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 8 * per_connection)
        shutdown.request("test")
    assert topology.budget.used == 0


async def test_connections_waiting_for_room_hold_no_decoded_events(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the writer stalled, many connections sending tiny records make no more events than
    the channel's budget holds: a connection takes its room before it decodes, so one that waits
    holds one slice's frames, not thousands of parsed records."""
    limit = 1024 * 1024
    gate, stalled_in = stall_writer(monkeypatch, limit)
    shutdown = Shutdown()
    connections, per_connection = 20, 5_000
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(file_sink_config(tmp_path)), shutdown)
        address: Address = bound["agents"][0]

        async def send() -> None:
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(b"{}\n" * per_connection)

        async with trio.open_nursery() as senders:
            for _ in range(connections):
                senders.start_soon(send)
            await wait_until(lambda: bool(stalled_in))
            topology = stalled_in[0]
            (source,) = topology.sources
            await trio.sleep(0.5)  # the senders push against the full pipeline meanwhile
            made = source.counters["events"]
            one_slice = FEED_BYTES // 3  # "{}\n": 3 bytes a record
            # the stalled writer's batch, the channel's budget, and one slice passing alone
            assert made <= 2 * limit // EVENT_OVERHEAD + 2 * one_slice
            gate.set()
        await wait_until(
            lambda: len(archive_lines(tmp_path / "archive")) == connections * per_connection, 120
        )
        shutdown.request("test")
