"""A TCP proxy for tests, in threads: a real server behind it, and a network the test can cut
(every connection closed, new ones refused) and restore, now or at a chosen request: just before
a request goes through (``cut_before``), or just after the server answered it, the answer lost
(``lose_answers``). Requests are recognised by a pattern on the bytes the client sends (an HTTP
request line, say)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class _Connection:
    """One client's connection: whether the next answer from the server is to be lost."""

    lose_answer: bool = False


def _interim(data: bytes) -> bool:
    """Whether ``data`` from the server is only interim HTTP answers (``100 Continue``: the
    client may send the body), which come before the answer."""
    while data.startswith(b"HTTP/1.1 1"):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        data = data[end + 4 :]
    return not data


class Proxy:
    """Forwards connections to ``target`` while ``available``; ``cut()`` ends them all."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.available = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._cut_before: re.Pattern[bytes] | None = None
        self._lose: re.Pattern[bytes] | None = None
        self._seen: set[bytes] = set()
        #: Set once a request was cut (``cut_before``) or an answer lost (``lose_answers``).
        self.tripped = threading.Event()
        #: The requests (what matched) whose answers were lost.
        self.lost: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """From now on no connection gets through; those open are closed."""
        with self._lock:
            self.available = False
            for sock in self._live:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._live.clear()

    def restore(self) -> None:
        with self._lock:
            self.available = True
            self._cut_before = None

    def cut_before(self, pattern: bytes) -> None:
        """Cut the network (as ``cut``) when the client sends bytes matching ``pattern``,
        before they reach the server."""
        self._cut_before = re.compile(pattern)

    def lose_answers(self, pattern: bytes) -> None:
        """Let every request matching ``pattern`` reach the server, and lose its answer (the
        connection is closed when the server answers, after any ``100 Continue``), once for
        each distinct match."""
        self._lose = re.compile(pattern)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self.available or self._closed:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live.update((client, upstream))
            connection = _Connection()
            for a, b, requests in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(a, b, requests, connection), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, requests: bool, connection: _Connection
    ) -> None:
        try:
            while data := source.recv(65536):
                if requests and self._trapped(data, connection):
                    return
                if not requests and connection.lose_answer and not _interim(data):
                    self.tripped.set()
                    return  # the server answered: the answer is lost with the connection
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._live.discard(source)
            source.close()

    def _trapped(self, data: bytes, connection: _Connection) -> bool:
        """Whether ``data`` from the client is cut (the network with it); marks the connection
        whose answer is to be lost."""
        pattern = self._cut_before
        if pattern is not None and pattern.search(data):
            self.cut()
            self.tripped.set()
            return True
        pattern = self._lose
        match = pattern.search(data) if pattern is not None else None
        if match is not None:
            with self._lock:
                if match.group(0) not in self._seen:
                    self._seen.add(match.group(0))
                    self.lost.append(match.group(0))
                    connection.lose_answer = True
        return False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[Proxy]:
    """A running proxy to ``host:port``, closed afterwards."""
    proxy = Proxy((host, port))
    proxy._thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
