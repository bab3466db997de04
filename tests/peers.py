"""Real syslog senders for end-to-end tests: a private rsyslogd, and syslog-ng's loggen.

rsyslog comes from Debian's packages (``rsyslog rsyslog-gnutls rsyslog-openssl``); the tests run
``rsyslogd`` in the foreground with a config, pid file and work directory of their own, never the
system's. ``loggen`` is in ``syslog-ng-core``, which cannot be installed beside rsyslog, so
``.ci/run`` unpacks that package (``dpkg -x``) into ``.ci/peers/syslog-ng``; set ``LOGGEN_ROOT``
to use another unpacked tree. A ``loggen`` on ``PATH`` (syslog-ng installed) is used as is.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, stop_process

#: Where ``.ci/run`` unpacks syslog-ng-core (``LOGGEN_ROOT`` overrides it).
LOGGEN_ROOT = REPO / ".ci" / "peers" / "syslog-ng"


# --- loggen ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loggen:
    """How to run loggen: its executable and the environment it needs."""

    executable: str
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        """The argument vector of one loggen run."""
        return [self.executable, *args]


def needs_loggen() -> Loggen:
    """loggen from an unpacked syslog-ng-core (or from PATH), or skip the test."""
    root = Path(os.environ.get("LOGGEN_ROOT", LOGGEN_ROOT))
    executable = root / "usr" / "bin" / "loggen"
    if executable.is_file():
        env = {
            **os.environ,
            # the shared libraries beside it, and the plugins under PREFIX/lib/syslog-ng
            "LD_LIBRARY_PATH": str(root / "usr" / "lib" / "syslog-ng"),
            "SYSLOGNG_PREFIX": str(root / "usr"),
        }
        return Loggen(str(executable), env)
    found = shutil.which("loggen")
    if found is not None:
        return Loggen(found, dict(os.environ))
    pytest.skip(
        f"loggen not found in {root} or on PATH (run .ci/run, or: apt-get download "
        f"syslog-ng-core && dpkg -x syslog-ng-core_*.deb {root})"
    )


def loggen_count(output: str) -> int:
    """How many messages loggen says it sent (its exit code is 0 even when it sent nothing)."""
    counts = re.findall(r"count\s*=\s*(\d+)", output)
    assert counts, f"no count in loggen's output: {output!r}"
    return int(counts[-1])


# --- rsyslog -----------------------------------------------------------------------------------


def needs_rsyslogd(driver: str | None = None) -> str:
    """The rsyslogd executable (and the named TLS stream driver, if any), or skip the test."""
    path = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip("rsyslogd not installed (apt-get install rsyslog)")
    if driver is not None:
        module = f"lmnsd_{driver}.so"
        if not glob.glob(f"/usr/lib/*/rsyslog/{module}") + glob.glob(f"/usr/lib/rsyslog/{module}"):
            package = {"gtls": "rsyslog-gnutls", "ossl": "rsyslog-openssl"}[driver]
            pytest.skip(f"rsyslog's {driver} driver not installed (apt-get install {package})")
    return path


class Rsyslog:
    """A private ``rsyslogd -n`` that takes messages (LF-framed or octet-counted) on a loopback
    TCP port and runs ``action`` on them. rsyslogd's own messages go to ``internal_log`` (by
    default it would hand some of them to the host's syslog(3), some to stderr).

    ``global_settings`` go into ``global(...)``, ``imtcp_settings`` into imtcp's
    ``module(...)`` (a TLS stream driver, say), ``preamble`` before the ruleset (templates).
    ``start`` after ``stop`` runs it again on the same port."""

    def __init__(
        self,
        work: Path,
        action: str,
        global_settings: str = "",
        *,
        imtcp_settings: str = "",
        preamble: str = "",
    ) -> None:
        self.executable = needs_rsyslogd()
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.internal_log = work / "rsyslogd.log"
        self.stderr_log = work / "stderr.log"
        self.port = free_port()
        self.config = work / "rsyslog.conf"
        self.config.write_text(
            f'global(workDirectory="{work}" processInternalMessages="on" {global_settings})\n'
            "# tests wait for what they need; rsyslogd need not drain its queue for long on SIGTERM\n"
            'main_queue(queue.timeoutShutdown="100")\n'
            f'module(load="imtcp" {imtcp_settings})\n'
            f"{preamble}\n"
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="forward")\n'
            'ruleset(name="forward") {\n'
            f"    {action}\n"
            "}\n"
            "# rsyslogd's own messages (start, errors) land in the default ruleset\n"
            f'action(type="omfile" file="{self.internal_log}")\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Check the config, then start rsyslogd in the foreground."""
        check = subprocess.run(
            [self.executable, "-N1", "-f", str(self.config)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        with self.stderr_log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "-n",
                    "-f",
                    str(self.config),
                    "-i",
                    str(self.work / "rsyslogd.pid"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.work,
            )

    def stop(self) -> None:
        """Stop rsyslogd (by its PID) if it runs."""
        if self.process is not None:
            stop_process(self.process)

    def accepting(self) -> socket.socket | None:
        """A connection to rsyslogd's input, or None while it is not listening yet."""
        assert self.process is not None
        assert self.process.poll() is None, self.diagnostics()
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except ConnectionRefusedError:
            return None

    def internal_messages(self) -> str:
        """What rsyslogd has logged about itself so far (and written to stderr)."""
        paths = (self.internal_log, self.stderr_log)
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def diagnostics(self) -> str:
        """The exit code and messages, for an assertion message."""
        code = None if self.process is None else self.process.poll()
        return f"rsyslogd exit code {code}; its messages:\n{self.internal_messages()}"
