"""A SIEM's syslog receiver for the CEF sink's tests: a private rsyslogd (``tests.peers.Rsyslog``)
that takes octet-counted or LF-framed messages over TCP, or over TLS with client certificates
required, and writes each message it received as one line of a file."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.conftest import TlsFiles, wait_until
from tests.peers import Rsyslog

#: One line per message: the syslog header fields rsyslog parsed, then the MSG (a CEF line holds
#: no raw LF; tabs may be in it, so it comes last).
TEMPLATE = (
    'template(name="siem" type="string" '
    'string="%hostname%\\t%app-name%\\t%syslogfacility-text%\\t%syslogseverity-text%\\t%msg%\\n")'
)
LIMIT = 30.0


@dataclass(frozen=True)
class Received:
    """One message as the receiver parsed it."""

    hostname: str
    app_name: str
    facility: str
    severity: str
    msg: str


class Siem:
    """rsyslogd receiving on ``port`` (plain TCP, or TLS with the test CA's server certificate,
    requiring a client certificate the CA signed)."""

    def __init__(self, work: Path, tls: TlsFiles | None = None, driver: str = "gtls") -> None:
        self.output = work / "received.log"
        settings = 'maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"'
        imtcp = ""
        if tls is not None:
            settings += (
                f' DefaultNetstreamDriverCAFile="{tls.ca_pem}"'
                f' DefaultNetstreamDriverCertFile="{tls.server_pem}"'
                f' DefaultNetstreamDriverKeyFile="{tls.server_key}"'
            )
            imtcp = (
                f'StreamDriver.Name="{driver}" StreamDriver.Mode="1" '
                'StreamDriver.AuthMode="x509/certvalid"'
            )
        self.rsyslog = Rsyslog(
            work,
            f'action(type="omfile" file="{self.output}" template="siem")',
            settings,
            imtcp_settings=imtcp,
            preamble=TEMPLATE,
        )

    @property
    def port(self) -> int:
        return self.rsyslog.port

    async def start(self) -> None:
        """Start rsyslogd and wait until it listens."""
        self.rsyslog.start()

        def listening() -> bool:
            connection = self.rsyslog.accepting()
            if connection is None:
                return False
            connection.close()
            return True

        await wait_until(listening, LIMIT)

    def start_sync(self) -> None:
        """``start`` for synchronous callers (the contract suite's ``make_available``)."""
        self.rsyslog.start()
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            connection = self.rsyslog.accepting()
            if connection is not None:
                connection.close()
                return
            time.sleep(0.01)
        raise AssertionError(f"rsyslogd does not listen: {self.diagnostics()}")

    def stop(self) -> None:
        self.rsyslog.stop()

    def received(self) -> list[Received]:
        """Every message written so far (a line being written is left out)."""
        if not self.output.exists():
            return []
        data = self.output.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].decode("utf-8").split("\n")[:-1]
        return [Received(*line.split("\t", 4)) for line in lines]

    async def wait_for(self, count: int) -> list[Received]:
        """Wait until at least ``count`` messages arrived (bounded); return all of them."""
        with contextlib.suppress(trio.TooSlowError):
            await wait_until(lambda: len(self.received()) >= count, LIMIT)
        return self.received()

    def wait_for_sync(self, count: int) -> list[Received]:
        """``wait_for`` for synchronous callers (the contract suite's ``held``)."""
        deadline = time.monotonic() + LIMIT
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received()

    def diagnostics(self) -> str:
        return self.rsyslog.diagnostics()


def cef_of(message: Received) -> str:
    """The CEF line of a message (rsyslog keeps the space after an RFC 3164 TAG in the MSG)."""
    return message.msg.lstrip(" ")
