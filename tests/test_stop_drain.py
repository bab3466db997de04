"""A stop reads what senders already delivered: the bytes in open connections' receive buffers,
the connections waiting in the listen backlog, and the datagrams queued on a socket."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.config import Address, parse_config
from shipper.shutdown import Shutdown, run_daemon
from shipper.sources._net import StreamServer
from shipper.topology import Topology
from tests.conftest import LogCapture, archive_lines, file_sink_config, wait_until
from tests.test_daemon import record

#: Records each sender sends before the stop.
PER_SENDER = 200


def connect(address: Address) -> socket.socket:
    """A blocking TCP connection that sends each write at once (no Nagle: what the test sent is
    in the daemon's receive buffer when ``sendall`` returns)."""
    client = socket.create_connection((address.host, address.port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def envelopes(root: Path) -> list[dict[str, Any]]:
    """The archived envelopes under ``root``."""
    return [orjson.loads(line) for line in archive_lines(root / "archive")]


async def run_until_stopped(
    config: dict[str, Any],
    before_stop: Callable[[dict[str, Any], Topology], Awaitable[None]],
) -> bool:
    """Run a daemon; call ``before_stop(bound, topology)`` (which must not yield to the daemon
    once it sent what the test counts on) and request the stop right after; whether the daemon
    drained."""
    shutdown = Shutdown()
    parsed = parse_config(config)
    topology = Topology(parsed)
    async with trio.open_nursery() as nursery:
        daemon = partial(run_daemon, parsed, shutdown, handle_signals=False, topology=topology)
        drained: list[bool] = []

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            drained.append(await daemon(task_status=task_status))

        bound = await nursery.start(run)
        await before_stop(bound, topology)
        shutdown.request("test")
    return drained == [True]


async def accept_three(server: StreamServer, listener: trio.SocketListener, nursery: Any) -> None:
    """An accept loop held after three connections: later ones wait in the listen backlog."""
    for _ in range(3):
        await server._admit(await listener.accept(), nursery)
    await trio.sleep_forever()


async def test_a_stop_archives_records_in_receive_buffers_and_the_listen_backlog(
    tmp_path: Path, processes: bool, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records in open connections' receive buffers, and in connections the daemon had not
    accepted yet, are all archived once when the stop comes right after they were sent."""
    monkeypatch.setattr(StreamServer, "_accept_loop", accept_three)  # (one process only)
    clients: list[socket.socket] = []

    async def before_stop(bound: dict[str, Any], topology: Topology) -> None:
        address = bound["agents"][0]
        for _ in range(3):
            clients.append(connect(address))
        source = topology.sources[0]
        await wait_until(lambda: source.open_connections() == 3)
        # From here on nothing yields: in one process the daemon runs again only once the stop
        # was requested; these two connections wait in the listen backlog until the stop.
        for _ in range(2):
            clients.append(connect(address))
        for index, client in enumerate(clients):
            client.sendall(b"".join(record(f"s{index}", n) for n in range(1, PER_SENDER + 1)))
        clients[0].sendall(b'{"agentId":"half')  # the last line is not whole at the stop
        if not processes:
            assert source.counters["connections_accepted"] == 3
            assert source.counters["events"] == 0

    try:
        drained = await run_until_stopped(file_sink_config(tmp_path), before_stop)
    finally:
        for client in clients:
            client.close()
    assert drained
    archived = envelopes(tmp_path)
    records = Counter((e["agent"], e["record"]["sequence"]) for e in archived if "record" in e)
    expected = {(f"s{i}", n) for i in range(5) for n in range(1, PER_SENDER + 1)}
    assert set(records) == expected
    assert set(records.values()) == {1}
    malformed = [e["malformed"] for e in archived if "malformed" in e]
    assert [m["reason"] for m in malformed] == ["incomplete line: connection ended (shutdown)"]
    (complete,) = logs.entries("shutdown_complete")
    assert complete["metrics"]["source"]["agents"]["connections_accepted"] == 5


@pytest.mark.usefixtures("logs")
@pytest.mark.parametrize("family", ["udp", "unix"])
async def test_a_stop_archives_the_datagrams_queued_on_the_socket(
    tmp_path: Path, processes: bool, family: str
) -> None:
    """Datagrams queued on a UDP or unix datagram source's socket when the stop comes are all
    archived once."""
    config = file_sink_config(tmp_path)
    if family == "udp":
        source = {"type": "syslog", "mode": "udp", "address": "127.0.0.1:0"}
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        source = {"type": "syslog", "mode": "unix", "path": str(tmp_path / "log.sock")}
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    config["sources"] = {"local": source}
    client.setblocking(False)  # a unix socket's queue is short: what it took is what was sent
    sent: list[str] = []

    async def before_stop(bound: dict[str, Any], topology: Topology) -> None:
        (address,) = bound["local"]
        target = (address.host, address.port) if family == "udp" else str(address)
        # (UDP: the kernel's default receive buffer holds about 250 of these)
        for n in range(200):
            message = f"message {n}"
            try:
                client.sendto(b"<134>1 - host app - - - " + message.encode(), target)
            except BlockingIOError:
                break
            sent.append(message)
        if not processes:
            assert topology.sources[0].counters["datagrams"] == 0

    try:
        drained = await run_until_stopped(config, before_stop)
    finally:
        client.close()
    assert drained
    assert len(sent) >= 10  # (a unix socket queues net.unix.max_dgram_qlen: 10 by default)
    messages = Counter(e["record"]["msg"] for e in envelopes(tmp_path))
    assert messages == Counter(sent)
