"""The daemon's log: what other libraries may put in it."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from typing import Any

import orjson
import pytest

from shipper.logging import configure, get_logger


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_http_clients_per_request_lines_show_only_at_debug(
    level: str, restore_logging: None
) -> None:
    """The S3 client's httpx (httpx2) one INFO line per request (two per archived S3 object) stays out of the log
    unless the level is debug, while its warnings always come through, as JSON."""
    stream = io.StringIO()
    configure(level, stream=stream)
    logging.getLogger("httpx2").info('HTTP Request: PUT http://s3/k "HTTP/1.1 200 OK"')
    logging.getLogger("httpcore2.http11").warning("connection reset")
    entries = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    messages = [entry["message"] for entry in entries]
    expected = ["connection reset"]
    if level == "debug":
        expected.insert(0, 'HTTP Request: PUT http://s3/k "HTTP/1.1 200 OK"')
    assert messages == expected
    assert entries[-1]["logger"] == "httpcore2.http11"


#: Packages a daemon without an API never uses: the console renderer's (rich, pygments), the API
#: client's (httpx2, for `shipper reload`, `tap`, `top`), the API server's (hypercorn,
#: starlette, and asyncio under them).
UNUSED_BY_THE_DAEMON = ("rich", "pygments", "httpx2", "hypercorn", "starlette", "asyncio")


def test_the_daemons_processes_leave_unused_packages_unloaded_and_the_commands_load_them() -> None:
    """A fresh interpreter that imports the daemon's entry points (the CLI and what `run` starts
    without an API, an ingest worker's and a sink process's modules) and logs has loaded none of
    ``UNUSED_BY_THE_DAEMON`` (each one's memory would be in every process), while `shipper top`'s
    module still imports rich and the API server its own."""
    code = f"""
import io, sys
import shipper.cli, shipper.shutdown, shipper.ingestproc, shipper.sinkproc
from shipper.logging import configure, get_logger
configure("info", stream=io.StringIO())
try:
    raise ValueError("boom")
except ValueError:
    get_logger("t").exception("failed")
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({UNUSED_BY_THE_DAEMON!r})))
import shipper.cli_top, shipper.api.server
print("rich.console" in sys.modules, "starlette" in sys.modules, "httpx2" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["[]", "True True True"]


def test_an_entry_is_one_json_line_with_its_keys_in_order_and_its_exception(
    restore_logging: None,
) -> None:
    """Each entry is one JSON line holding ``logger``, the fields as given, ``event``, ``level``
    and ``ts`` in that order, entries below the configured level are dropped, and the traceback
    of the exception being handled, or of one given as ``exc_info``, follows as ``exception``."""
    stream = io.StringIO()
    configure("info", stream=stream)
    log = get_logger("shipper.test")
    log.debug("dropped", n=1)
    log.info("first", b=2, a=[1, None])
    try:
        raise ValueError("handled")
    except ValueError:
        log.exception("caught", error="ValueError")
    log.error("given", exc_info=KeyError("given"))
    log.warning("plain", exc_info=False)
    entries = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [list(entry) for entry in entries] == [
        ["logger", "b", "a", "event", "level", "ts"],
        ["logger", "error", "event", "level", "ts", "exception"],
        ["logger", "event", "level", "ts", "exception"],
        ["logger", "event", "level", "ts"],
    ]
    assert [(entry["event"], entry["level"]) for entry in entries] == [
        ("first", "info"),
        ("caught", "error"),
        ("given", "error"),
        ("plain", "warning"),
    ]
    assert entries[0]["logger"] == "shipper.test"
    assert entries[0]["a"] == [1, None]
    assert entries[1]["exception"].startswith("Traceback (most recent call last):")
    assert entries[1]["exception"].endswith("ValueError: handled")
    assert entries[2]["exception"] == "KeyError: 'given'"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", entries[3]["ts"])


def test_a_field_orjson_cannot_write_goes_in_as_its_repr(restore_logging: None) -> None:
    """An integer past 64 bits or a value nested past orjson's depth limit in a field costs
    that field its JSON form (its ``repr``, cut at 1,000 characters), never the entry: the
    other fields and the order stay, and the call does not raise."""
    stream = io.StringIO()
    configure("info", stream=stream)
    deep: list[Any] = []
    inner = deep
    for _ in range(300):
        inner.append([])
        inner = inner[0]
    get_logger("shipper.test").warning("odd_values", big=2**70, deep=deep, fine=[1, "a"])
    (entry,) = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert list(entry) == ["logger", "big", "deep", "fine", "event", "level", "ts"]
    assert entry["big"] == str(2**70)
    assert entry["deep"] == repr(deep)[:1000]
    assert entry["fine"] == [1, "a"]
