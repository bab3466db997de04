"""Test helpers for the webhook sink: a real HTTP(S) receiver (pytest-httpserver) that records
what it is sent and answers as a test scripts it, and configs of the sink."""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shipper.chain import SEED
from shipper.config import parse_config
from shipper.sinks.base import SinkContext
from shipper.sinks.webhook import WebhookSink, WebhookSinkConfig
from tests.sinks.memory import FAST

PATH = "/hook"


def new_secret() -> str:
    """A fresh Standard Webhooks signing secret (``whsec_`` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it: lower-case headers, the body as sent and as
    decompressed (``Content-Encoding: gzip``), and the status it answered."""

    headers: dict[str, str]
    raw: bytes
    body: bytes
    status: int

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def envelopes(self) -> list[bytes]:
        """The envelopes of the body, each in its one-line form (keys in their order)."""
        return [orjson.dumps(item) for item in orjson.loads(self.body)]


class Receiver:
    """A webhook receiver on a real HTTP server: records every request, and answers each with
    the next of ``script`` (status, headers, body), then 200."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.requests: list[Received] = []
        self.script: list[tuple[int, dict[str, str], str]] = []
        #: While set, every request is answered 503 (the receiver is overloaded).
        self.down = False
        #: A request whose body holds these bytes is answered 400 (refused for good).
        self.poison: bytes | None = None
        self._lock = threading.Lock()
        server.expect_request(PATH, method="POST").respond_with_handler(self._handle)
        self.url = server.url_for(PATH)

    def _handle(self, request: Request) -> Response:
        raw = request.get_data()
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        with self._lock:
            status, answer_headers, answer = self.script.pop(0) if self.script else (200, {}, "")
            if self.down:
                status, answer_headers, answer = 503, {}, "down"
            elif self.poison is not None and self.poison in body:
                status, answer_headers, answer = 400, {}, '{"error":"poisoned"}'
            self.requests.append(Received(headers, raw, body, status))
        return Response(answer, status=status, headers=answer_headers)

    def taken(self) -> list[Received]:
        """The requests it answered with a 2xx."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def held(self) -> list[bytes]:
        """The envelopes a receiver that drops a webhook-id it has seen holds, in order."""
        seen: set[str] = set()
        held: list[bytes] = []
        for request in self.taken():
            if request.id not in seen:
                seen.add(request.id)
                held.extend(request.envelopes())
        return held


@contextlib.contextmanager
def receiving(ssl_context: ssl.SSLContext | None = None, port: int = 0) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (HTTPS with ``ssl_context``), stopped at the end."""
    server = HTTPServer("127.0.0.1", port, ssl_context=ssl_context)
    server.start()
    try:
        yield Receiver(server)
    finally:
        if server.is_running():
            server.stop()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context with ``cert`` and ``key``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def hook_config(
    url: str, env: Mapping[str, str] | None = None, sink_id: str = "hook", **keys: Any
) -> WebhookSinkConfig:
    """The webhook sink ``sink_id`` to ``url`` with ``keys``, read as the daemon reads it (with
    ``env`` as the environment)."""
    source = {"type": "json_tls", "address": "127.0.0.1:0"}
    table = {"type": "webhook", "url": url, **keys}
    raw = {"sources": {"a": source}, "sinks": {sink_id: table}}
    config = parse_config(raw, env).sinks[sink_id]
    assert isinstance(config, WebhookSinkConfig)
    return config


def hook(
    url: str, env: Mapping[str, str] | None = None, sink_id: str = "hook", **keys: Any
) -> WebhookSink:
    """A webhook sink built from ``hook_config``, retrying within milliseconds."""
    sink = hook_config(url, env, sink_id, **keys).build(SinkContext(SEED))
    sink.retry_policy = FAST
    return sink
