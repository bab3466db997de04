"""The daemon's log: what other libraries may put in it."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import orjson
import pytest

from shipper.logging import configure


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


def test_the_daemons_processes_leave_rich_unloaded_and_shipper_top_still_loads_it() -> None:
    """A fresh interpreter that imports the daemon's entry points (the CLI, an ingest worker's and
    a sink process's modules) and logs has not loaded rich, which structlog would otherwise
    import for nothing, while `shipper top`'s module still imports and uses it."""
    code = """
import io, sys
import shipper.cli, shipper.ingestproc, shipper.sinkproc
from shipper.logging import configure, get_logger
configure("info", stream=io.StringIO())
try:
    raise ValueError("boom")
except ValueError:
    get_logger("t").exception("failed")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("rich", "pygments")))
import shipper.cli_top
print("rich.console" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["[]", "True"]
