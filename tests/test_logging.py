"""The daemon's log: what other libraries may put in it."""

from __future__ import annotations

import io
import logging

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
