"""Hot reload under load: sinks and sources added, removed or changed while a sender sends; the
rest untouched; an invalid config changing nothing."""

from __future__ import annotations

import copy
import errno
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from shipper.config import Address, Config, load_config, parse_config
from shipper.errors import ConfigError
from shipper.reload import ReloadResult
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.file import FileSinkConfig
from shipper.topology import Topology
from tests.conftest import LogCapture, archive_lines, file_sink_config, free_port, wait_until
from tests.test_cli import write_config

pytestmark = pytest.mark.usefixtures("processes")


def record(agent: str, sequence: int) -> bytes:
    return orjson.dumps({"agentId": agent, "sequence": sequence, "action": "db.query"}) + b"\n"


class Sender:
    """Sends numbered records for one agent over one TCP connection, a few at a time, until
    stopped; ``sent`` counts what was sent, ``broken`` says whether the connection broke."""

    def __init__(self, address: Address, agent: str) -> None:
        self.address = address
        self.agent = agent
        self.sent = 0
        self.broken = False
        self._stop = trio.Event()

    async def run(self) -> None:
        stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        async with stream:
            while not self._stop.is_set():
                data = b"".join(record(self.agent, self.sent + n) for n in range(1, 11))
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, OSError):
                    self.broken = True
                    return
                self.sent += 10
                await trio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def daemon(config: Any) -> AsyncIterator[tuple[Topology, dict[str, Any], trio.Nursery]]:
    """A running daemon (and a nursery for senders), stopped at the end."""
    topology = Topology(config)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        run = partial(run_daemon, config, shutdown, handle_signals=False, topology=topology)
        bound = await nursery.start(run)
        yield topology, bound, nursery
        shutdown.request("test")


def parsed(raw: dict[str, Any]) -> Config:
    """``raw`` parsed (a copy: the test changes ``raw`` for the next config)."""
    return parse_config(copy.deepcopy(raw))


def sequences(lines: list[bytes], agent: str) -> list[int]:
    return [e["record"]["sequence"] for e in map(orjson.loads, lines) if e["agent"] == agent]


async def ingest_goes_on(bound: dict[str, Any], nursery: trio.Nursery, archive: Path) -> None:
    """A sender on the ``agents`` source gets its records archived, every one (after a reload
    that failed: the daemon goes on as it was)."""
    sender = Sender(bound["agents"][0], "a")
    nursery.start_soon(sender.run)
    await wait_until(lambda: len(archive_lines(archive)) >= 50)
    sender.stop()
    await wait_until(lambda: len(archive_lines(archive)) == sender.sent)


def untouched(topology: Topology, sink_id: str) -> object:
    """What runs ``sink_id`` now: its process id, or its driver."""
    (slot,) = [slot for slot in topology.sinks if slot.id == sink_id]
    return slot.process.pid if slot.process is not None else slot.driver


async def test_an_added_sink_gets_what_is_accepted_after_the_reload(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A sink added by a reload receives the events accepted from then on, the untouched sink
    and the sender's connection go on as if nothing happened."""
    raw = file_sink_config(tmp_path)
    async with daemon(parsed(raw)) as (topology, bound, nursery):
        sender = Sender(bound["agents"][0], "a")
        nursery.start_soon(sender.run)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) >= 100)
        before = untouched(topology, "archive")
        raw["sinks"]["second"] = {"type": "file", "path": str(tmp_path / "second")}
        result = await topology.reload(parsed(raw))
        assert result.started == {"sources": [], "sinks": ["second"]}
        assert result.ok
        assert result.stopped["sinks"] == result.restarted["sinks"] == []
        await wait_until(lambda: len(archive_lines(tmp_path / "second")) >= 100)
        sender.stop()
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == sender.sent)
        await wait_until(
            lambda: (
                archive_lines(tmp_path / "second")
                == archive_lines(tmp_path / "archive")[-len(archive_lines(tmp_path / "second")) :]
            )
        )
        assert untouched(topology, "archive") == before
    assert not sender.broken
    archived = archive_lines(tmp_path / "archive")
    assert sequences(archived, "a") == list(range(1, sender.sent + 1))
    second = archive_lines(tmp_path / "second")
    assert len(second) < len(archived)  # from the reload on, not the WAL's start
    (done,) = logs.entries("reload_done")
    assert done["started"]["sinks"] == ["second"]


async def test_a_changed_sink_path_goes_on_in_the_new_path_without_loss_or_doubles(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Changing a sink's path under load stops it (it delivers what it read) and starts it again
    at its cursor: the old path and the new one together hold every event sent, once each, in
    order."""
    raw = file_sink_config(tmp_path)
    async with daemon(parsed(raw)) as (topology, bound, nursery):
        sender = Sender(bound["agents"][0], "a")
        nursery.start_soon(sender.run)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) >= 100)
        raw["sinks"]["archive"]["path"] = str(tmp_path / "moved")
        result = await topology.reload(parsed(raw))
        assert result.restarted == {"sources": [], "sinks": ["archive"]}
        await wait_until(lambda: len(archive_lines(tmp_path / "moved")) >= 100)
        sender.stop()

        def total() -> int:
            return len(archive_lines(tmp_path / "archive")) + len(archive_lines(tmp_path / "moved"))

        await wait_until(lambda: total() >= sender.sent)
    assert not sender.broken
    lines = archive_lines(tmp_path / "archive") + archive_lines(tmp_path / "moved")
    assert sequences(lines, "a") == list(range(1, sender.sent + 1))
    assert len({orjson.loads(line)["id"] for line in lines}) == len(lines)
    assert not logs.entries("reload_stop_forced")  # it stopped by itself, having delivered


async def test_a_removed_source_refuses_and_the_others_flow(
    tmp_path: Path, logs: LogCapture, processes: bool
) -> None:
    """A source removed by a reload no longer takes connections; the other source keeps
    delivering (in one process, over the very connection opened before the reload)."""
    raw = file_sink_config(tmp_path)
    raw["sources"]["other"] = {"type": "json_tls", "address": "127.0.0.1:0"}
    async with daemon(parsed(raw)) as (topology, bound, nursery):
        gone = bound["other"][0]
        sender = Sender(bound["agents"][0], "a")
        nursery.start_soon(sender.run)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) >= 100)
        del raw["sources"]["other"]
        result = await topology.reload(parsed(raw))
        assert result.stopped == {"sources": ["other"], "sinks": []}
        assert "other" not in topology.bound
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream(gone.host, gone.port)
        if processes:  # the ingest workers were started again: a sender connects again
            await wait_until(lambda: sender.broken)
            sender = Sender(bound["agents"][0], "b")
            nursery.start_soon(sender.run)
        sent = sender.sent
        await wait_until(
            lambda: len(sequences(archive_lines(tmp_path / "archive"), sender.agent)) > sent + 100
        )
        sender.stop()
        await wait_until(
            lambda: (
                sequences(archive_lines(tmp_path / "archive"), sender.agent)[-1:] == [sender.sent]
            )
        )
    assert not sender.broken
    assert sequences(archive_lines(tmp_path / "archive"), sender.agent) == list(
        range(1, sender.sent + 1)
    )


async def test_an_added_source_serves_and_a_taken_address_is_left_out(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A reload adding two sources starts the one that can bind and logs the other, whose
    address is taken; the daemon goes on with the rest."""
    raw = file_sink_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with daemon(parsed(raw)) as (topology, _, _):
            raw["sources"]["new"] = {"type": "json_tls", "address": "127.0.0.1:0"}
            raw["sources"]["clash"] = {"type": "json_tls", "address": f"127.0.0.1:{port}"}
            result = await topology.reload(parsed(raw))
            assert result.started["sources"] == ["new"]
            assert list(result.failed) == ["sources.clash"]
            assert not result.ok
            assert sorted(topology.config.sources) == ["agents", "new"]
            address = topology.bound["new"][0]
            assert isinstance(address, Address)
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(record("n", 1))
            await wait_until(lambda: sequences(archive_lines(tmp_path / "archive"), "n") == [1])
    (failed,) = logs.entries("reload_source_failed")
    assert failed["source"] == "clash"
    assert f"127.0.0.1:{port}" in failed["error"]


async def test_an_invalid_config_keeps_the_old_one_and_logs_every_problem(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A config file that does not validate changes nothing: every problem is logged as
    ``shipper validate`` words it, and events flow as before."""
    raw = file_sink_config(tmp_path)
    path = write_config(tmp_path / "shipper.toml", raw)
    config = load_config(path)
    async with daemon(config) as (topology, bound, nursery):
        raw["sources"]["agents"]["address"] = "127.0.0.1"
        raw["sinks"]["archive"]["pth"] = "x"
        write_config(path, raw)
        with pytest.raises(ConfigError) as expected:
            load_config(path)
        result: ReloadResult = await topology.reload()
        assert not result.ok
        assert result.problems == [str(problem) for problem in expected.value.problems]
        assert len(result.problems) == 2
        assert topology.config is config
        await ingest_goes_on(bound, nursery, tmp_path / "archive")
    (failed,) = logs.entries("reload_failed")
    assert failed["problems"] == result.problems
    assert not logs.entries("reload_done")


async def test_keys_that_need_a_restart_keep_their_running_values(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A reload that changes data_dir and the log level says they need a restart and keeps
    them, while the rest of it (a new sink) applies."""
    raw = file_sink_config(tmp_path)
    async with daemon(parsed(raw)) as (topology, bound, _):
        raw["data_dir"] = str(tmp_path / "elsewhere")
        raw["log"] = {"level": "debug"}
        raw["sinks"]["second"] = {"type": "file", "path": str(tmp_path / "second")}
        result = await topology.reload(parsed(raw))
        assert result.needs_restart == ["data_dir", "log"]
        assert result.started["sinks"] == ["second"]
        assert topology.config.data_dir == tmp_path / "var"
        assert topology.config.log_level == "info"
        stream = await trio.open_tcp_stream(bound["agents"][0].host, bound["agents"][0].port)
        async with stream:
            await stream.send_all(record("a", 1))
        await wait_until(lambda: len(archive_lines(tmp_path / "second")) == 1)
    (needs,) = logs.entries("reload_needs_restart")
    assert needs["keys"] == ["data_dir", "log"]
    assert not (tmp_path / "elsewhere").exists()


async def test_a_changed_sink_that_cannot_be_built_keeps_its_events_for_a_later_reload(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed sink that cannot be built is left out, but the WAL keeps what it has not
    delivered: a later reload that can build it starts it at its cursor, losing nothing."""
    raw = file_sink_config(tmp_path)
    # Sinks in the daemon's process: a sink process builds its sink itself (and is restarted
    # by its supervisor when it cannot), so this is the one-process path.
    raw["runtime"] = {"sink_processes": False, "workers": 0}
    async with daemon(parsed(raw)) as (topology, bound, _):
        address = bound["agents"][0]

        async def send(first: int) -> None:
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(b"".join(record("a", n) for n in range(first, first + 10)))

        await send(1)
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 10)
        with monkeypatch.context() as patched:

            def refuse(*args: object) -> None:
                raise OSError("no such certificate")

            patched.setattr(FileSinkConfig, "build", refuse)
            raw["sinks"]["archive"]["path"] = str(tmp_path / "moved")
            result = await topology.reload(parsed(raw))
        assert list(result.failed) == ["sinks.archive"]
        assert topology.sinks == []
        await send(11)
        await wait_until(lambda: topology.counters["events"] == 20)
        result = await topology.reload(parsed(raw))
        assert result.started["sinks"] == ["archive"]
        await wait_until(lambda: len(archive_lines(tmp_path / "moved")) == 10)
    assert sequences(archive_lines(tmp_path / "moved"), "a") == list(range(11, 21))


async def test_a_defect_during_a_reload_is_logged_and_the_daemon_goes_on(
    tmp_path: Path, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error inside a reload is logged as a defect and returned as a failed
    reload; the daemon keeps delivering."""

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    raw = file_sink_config(tmp_path)
    async with daemon(parsed(raw)) as (topology, bound, nursery):
        monkeypatch.setattr(Topology, "_reload_sources", broken)
        raw["sources"]["new"] = {"type": "json_tls", "address": "127.0.0.1:0"}
        result = await topology.reload(parsed(raw))
        assert not result.ok
        assert result.problems == ["RuntimeError: boom"]
        await ingest_goes_on(bound, nursery, tmp_path / "archive")
    (failed,) = logs.entries("reload_failed")
    assert failed["error"] == "RuntimeError: boom"


async def test_a_changed_source_is_restarted_and_its_counts_go_on(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A source whose address changes is restarted on the new one (the old port refuses), and
    its counters go on from where they were."""
    raw = file_sink_config(tmp_path)
    async with daemon(parsed(raw)) as (topology, bound, _):
        old = bound["agents"][0]
        stream = await trio.open_tcp_stream(old.host, old.port)
        async with stream:
            await stream.send_all(b"".join(record("a", n) for n in range(1, 11)))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 10)
        await wait_until(lambda: topology.metrics()["source"]["agents"]["events"] == 10)
        port = free_port()
        raw["sources"]["agents"]["address"] = f"127.0.0.1:{port}"
        result = await topology.reload(parsed(raw))
        assert result.restarted == {"sources": ["agents"], "sinks": []}
        assert topology.bound["agents"] == [Address("127.0.0.1", port)]
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream(old.host, old.port)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"".join(record("a", n) for n in range(11, 21)))
        await wait_until(lambda: len(archive_lines(tmp_path / "archive")) == 20)
        await wait_until(lambda: topology.metrics()["source"]["agents"]["events"] == 20)
    assert sequences(archive_lines(tmp_path / "archive"), "a") == list(range(1, 21))


def _open_writer(fifo: Path) -> int | None:
    """The FIFO's write end once something reads it (None while nothing does)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


async def test_a_reload_stuck_reading_the_config_file_does_not_hold_up_a_cancel(
    tmp_path: Path,
) -> None:
    """A reload blocked reading a config file that never ends (a FIFO nothing writes to) ends as
    soon as it is cancelled, as at shutdown, rather than waiting for the file."""
    path = write_config(tmp_path / "shipper.toml", file_sink_config(tmp_path))
    text = path.read_bytes()
    async with daemon(load_config(str(path))) as (topology, _, nursery):
        path.unlink()
        os.mkfifo(path)
        scope = trio.CancelScope()
        ended = trio.Event()

        async def reloading() -> None:
            with scope:
                await topology.reload()
            ended.set()

        nursery.start_soon(reloading)
        writer: int | None = None

        def reading() -> bool:
            nonlocal writer
            writer = _open_writer(path)
            return writer is not None

        await wait_until(reading)  # the reload's read now waits for what the writer sends
        assert writer is not None
        try:
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert ended.is_set()
        finally:
            os.write(writer, text)
            os.close(writer)
