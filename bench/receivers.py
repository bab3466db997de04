"""Local receivers for the forwarding sinks' benches, each in a process of its own.

* ``http``: a webhook receiver, ``http.server.ThreadingHTTPServer`` speaking HTTP/1.1 with
  keep-alive (a thread per connection). Each POST's body is read whole (``Content-Length``),
  gunzipped when ``Content-Encoding: gzip``, parsed with ``orjson.loads`` (a JSON array of
  envelopes) and counted; the answer is ``200`` with an empty body. It checks nothing else (no
  signature: the benches check the sink's requests against their own before timing).
* ``syslog``: a TCP receiver for octet-counted syslog (RFC 6587 3.4.1), a thread per
  connection, counting frames and bytes.

Both print their port on the first line of stdout, then answer each line read on stdin with one
line of JSON: what they have received so far (``events``, ``bytes`` as received, ``requests``
for ``http``). They exit at the end of stdin.

``Receiver`` starts one (``python -m bench.receivers http|syslog``) and asks it.
"""

from __future__ import annotations

import gzip
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar

import orjson

from shipper import procstat


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"events": 0, "bytes": 0, "requests": 0}

    def add(self, events: int, size: int, requests: int = 0) -> None:
        with self.lock:
            self.values["events"] += events
            self.values["bytes"] += size
            self.values["requests"] += requests


class _Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: ClassVar[_Counts]

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(size)
        data = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        self.counts.add(len(orjson.loads(data)), size, 1)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Syslog(socketserver.BaseRequestHandler):
    counts: ClassVar[_Counts]

    def handle(self) -> None:
        buffer = b""
        while data := self.request.recv(1 << 20):
            buffer += data
            frames = 0
            pos = 0
            while (space := buffer.find(b" ", pos, pos + 12)) > 0:
                end = space + 1 + int(buffer[pos:space])
                if end > len(buffer):
                    break
                pos = end
                frames += 1
            buffer = buffer[pos:]
            self.counts.add(frames, len(data))


class _ThreadingTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(kind: str) -> None:
    counts = _Counts()
    server: socketserver.TCPServer
    if kind == "http":
        _Hook.counts = counts
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        server.daemon_threads = True
    else:
        _Syslog.counts = counts
        server = _ThreadingTcp(("127.0.0.1", 0), _Syslog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    for _ in sys.stdin:
        with counts.lock:
            print(orjson.dumps(counts.values).decode(), flush=True)


class Receiver:
    """A receiver process (``kind``: ``http`` or ``syslog``): its ``port``, and ``counts()``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.receivers", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def counts(self) -> dict[str, int]:
        """What it received so far: ``events``, ``bytes``, ``requests``."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        counts: dict[str, int] = orjson.loads(self.process.stdout.readline())
        return counts

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the receiver so far (Linux /proc)."""
        usage = procstat.usage(self.process.pid)
        assert usage is not None, "the receiver is gone"
        return usage.cpu_seconds

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1])
