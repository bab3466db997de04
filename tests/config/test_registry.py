"""Tests of the registry of source and sink types: lookup, test-registered types, import order."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from shipper.config import SINK_TYPES, SOURCE_TYPES, parse_config
from shipper.errors import ConfigError
from shipper.shutdown import Shutdown, run_daemon
from shipper.sinks.file import FileSinkConfig
from shipper.topology import Topology
from tests.conftest import LogCapture, file_sink_config, wait_until
from tests.probe_sink import ProbeSink, ProbeSinkConfig

MINIMAL: dict[str, Any] = {
    "sources": {"a": {"type": "json_tls", "address": "127.0.0.1:6515"}},
    "sinks": {"out": {"type": "probe"}},
}


def problems(raw: dict[str, Any]) -> list[str]:
    """The problems ``parse_config`` reports for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return [str(problem) for problem in info.value.problems]


def test_the_built_in_types_are_registered() -> None:
    """Without a central list, the registries find every built-in source and sink type."""
    assert list(SOURCE_TYPES) == ["json_tls", "syslog"]
    assert list(SINK_TYPES) == ["cef_syslog", "file", "s3", "webhook"]
    assert SINK_TYPES.get("file") is FileSinkConfig


def test_a_registered_sink_type_is_read_with_the_shared_keys() -> None:
    """A type registered by a test is parsed like a built-in one: its own keys through its reader,
    ``inputs`` read for it, and its unknown keys reported with the nearest known one."""
    raw = copy.deepcopy(MINIMAL)
    raw["sinks"]["out"].update(capacity=7, inputs=["a"])
    with SINK_TYPES.registered(ProbeSinkConfig):
        sink = parse_config(raw, env={}).sinks["out"]
        assert sink == ProbeSinkConfig(id="out", inputs=("a",), capacity=7)
        raw["sinks"]["out"].update(capacitty=8, inputs=["b"])
        assert problems(raw) == [
            'sinks.out.inputs[0]: expected one of the sources (a), got "b"',
            'sinks.out.capacitty: unknown key (did you mean "capacity"?)',
        ]


def test_a_type_is_gone_once_its_registration_ends() -> None:
    """After ``registered`` ends the type is unknown again, and the error lists what is left."""
    with SINK_TYPES.registered(ProbeSinkConfig):
        assert "probe" in SINK_TYPES
    assert "probe" not in SINK_TYPES
    assert problems(MINIMAL) == [
        'sinks.out.type: expected "cef_syslog", "file", "s3" or "webhook", got "probe"'
    ]
    SINK_TYPES.register(ProbeSinkConfig)
    try:
        assert isinstance(parse_config(MINIMAL, env={}).sinks["out"], ProbeSinkConfig)
    finally:
        SINK_TYPES.unregister("probe")
    assert "probe" not in SINK_TYPES


def test_a_taken_type_name_is_refused() -> None:
    """Registering another class under a built-in type's name is an error; the built-in stays."""

    class Impostor(ProbeSinkConfig):
        kind = "file"

    with pytest.raises(ValueError, match='sink type "file" is already registered'):
        SINK_TYPES.register(Impostor)
    assert SINK_TYPES.get("file") is FileSinkConfig


@pytest.mark.parametrize(
    ("table", "kind", "expected"),
    [
        (
            "sources",
            "sislog",
            'sources.a.type: expected "json_tls" or "syslog", got "sislog" (did you mean '
            '"syslog"?)',
        ),
        (
            "sinks",
            "fiel",
            'sinks.out.type: expected "cef_syslog", "file", "s3" or "webhook", got "fiel" (did you mean "file"?)',
        ),
        ("sinks", 5, 'sinks.out.type: expected "cef_syslog", "file", "s3" or "webhook", got 5'),
    ],
)
def test_an_unknown_type_suggests_the_nearest_registered_one(
    table: str, kind: object, expected: str
) -> None:
    """A misspelt type is refused with the registered names and the nearest one, and nothing
    else in its table is reported (its keys mean nothing without a type)."""
    raw = copy.deepcopy(MINIMAL)
    raw["sinks"]["out"] = {"type": "file", "path": "var/archive"}
    name = "a" if table == "sources" else "out"
    raw[table][name]["type"] = kind
    raw[table][name]["colour"] = "blue"
    assert problems(raw) == [expected]


def test_the_topology_builds_each_component_from_its_config(tmp_path: Path) -> None:
    """Sources and sinks are built by their configs (a test-registered sink included), and the
    WAL gets the [buffer] config object itself."""
    raw = copy.deepcopy(MINIMAL)
    raw["data_dir"] = str(tmp_path / "var")
    raw["buffer"] = {"max_bytes": "8MiB", "fsync": "never"}
    raw["runtime"] = {"sink_processes": False}  # the sinks are built in this process
    with SINK_TYPES.registered(ProbeSinkConfig):
        config = parse_config(raw, env={})
    topology = Topology(config)
    [source] = topology.sources
    assert source.id == "a"
    [slot] = topology.sinks
    assert slot.driver is not None
    assert isinstance(slot.driver.sink, ProbeSink)
    assert slot.driver.sink.config is config.sinks["out"]
    assert topology.wal.settings is config.buffer


async def test_a_registered_sink_type_runs_in_the_daemon(tmp_path: Path, logs: LogCapture) -> None:
    """A sink type registered from outside shipper gets events end to end, beside the file sink,
    with no change to shipper's code."""
    raw = file_sink_config(tmp_path)
    raw["sinks"]["probe"] = {"type": "probe"}
    raw["runtime"] = {"sink_processes": False}  # what the probe received is in this process
    with SINK_TYPES.registered(ProbeSinkConfig):
        config = parse_config(raw, env={})
    probe = config.sinks["probe"]
    assert isinstance(probe, ProbeSinkConfig)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, config, shutdown)
        address = bound["agents"][0]
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await stream.send_all(b'{"agentId":"a","sequence":1}\n{"agentId":"a","sequence":2}\n')
        await wait_until(lambda: len(probe.received) == 2)
        shutdown.request("test")
    assert [orjson.loads(line)["record"]["sequence"] for line in probe.received] == [1, 2]
    (complete,) = logs.entries("shutdown_complete")
    assert complete["delivered"] == {"archive": 2, "probe": 2}


def test_importing_the_config_package_imports_no_component() -> None:
    """``import shipper.config`` loads neither trio nor any source or sink module; the types are
    found when a config is first parsed."""
    script = (
        "import sys, shipper.config as c\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith("
        "('trio', 'shipper.sources', 'shipper.sinks')))\n"
        "print(loaded())\n"
        "c.parse_config({'sources': {'a': {'type': 'json_tls', 'address': '127.0.0.1:0'}},"
        " 'sinks': {'o': {'type': 'file', 'path': 'x'}}}, env={})\n"
        "print('shipper.sinks.file' in loaded(), 'shipper.sources.syslog' in loaded())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["[]", "True True"]


def _modules() -> list[str]:
    """Every module of the shipper package (but ``__main__``, which runs the command line)."""
    root = Path(__file__).resolve().parents[2] / "shipper"
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_without_a_cycle() -> None:
    """Each shipper module can be the first one imported in a fresh interpreter (the config
    package, the buffer and the components import each other without a cycle)."""
    modules = _modules()
    assert "shipper.config.registry" in modules
    assert "shipper.buffer.config" in modules
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in modules
    }
    failed = {}
    for name, process in running.items():
        _, err = process.communicate()
        if process.returncode != 0:
            failed[name] = err.decode().strip().splitlines()[-1]
    assert failed == {}
