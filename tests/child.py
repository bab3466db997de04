"""A child process kind that exists only in tests: ``python -m tests.child`` runs ``work``.

It counts ``spec.ticks`` into ``child_ticks`` (a counter) and sets ``child_running`` (a gauge),
logs ``child_ticked``, then, as ``spec.mode`` says:

* ``"once"``: the first time (``spec.marker`` absent: it creates it), sends its report and a
  ``("ticked",)`` frame and waits to be killed; any later time, returns (exit status 0);
* ``"chatty"``: sends a ``("tick", n)`` frame and logs an entry every millisecond, forever (a
  child busy writing when its daemon goes away);
* ``"serving"`` (for ``SERVING``): sends its report and a ``("ticked",)`` frame, writes
  "inherited" into the file descriptor ``spec.fd`` (inherited from the daemon), then sends
  ``("serving",)``; once told to stop, writes the stop's details (``repr``) there too and exits
  with status 5 (a child that fails as it stops);
* ``"busy"``: sends ``("tick", 1)``, then works without yielding for 50 ms at a time and logs an
  entry after each stretch, forever (a child whose log entry finds the daemon gone before its
  watch of stdin can).

Once stopped, the last two log ``child_stopping`` and write "cleaned up" into ``spec.marker``
(as a sink closes its destination).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import trio

from shipper.children import Kind, Parent, child_main
from shipper.logging import get_logger
from shipper.metrics import Registry

log = get_logger("tests.child")

CHILD = Kind(
    module="tests.child",
    prefix="test_child",
    label="worker",
    restarts_help="Test children started again after one exited",
)
#: The same children, as a kind with a serving frame.
SERVING = replace(CHILD, component="test_child", serving="serving")


@dataclass(frozen=True)
class TickSpec:
    """What a test child is told."""

    ticks: int
    mode: Literal["once", "chatty", "busy", "serving"]
    marker: Path
    log_level: str = "info"
    fd: int | None = None


async def work(spec: TickSpec, parent: Parent, registry: Registry) -> None:
    registry.counter("child_ticks", "Ticks a test child counted").labels().inc(spec.ticks)
    registry.gauge("child_running", "Test children running").labels().set(1)
    log.info("child_ticked", ticks=spec.ticks)
    if spec.mode == "serving":
        assert spec.fd is not None
        await parent.send(("report", registry.snapshot()))
        await parent.send(("ticked",))
        os.write(spec.fd, b"inherited")
        await parent.send(("serving",))
        await parent.stopping.wait()
        os.write(spec.fd, repr(parent.stop_details).encode())
        os._exit(5)
    if spec.mode == "once":
        if spec.marker.exists():
            return
        spec.marker.touch()
        await parent.send(("report", registry.snapshot()))
        await parent.send(("ticked",))
        await trio.sleep_forever()
    try:
        await parent.send(("tick", 1))
        for n in itertools.count(2):
            if spec.mode == "busy":
                time.sleep(0.05)  # noqa: ASYNC251 - CPU-bound work: nothing else runs meanwhile
            else:
                await trio.sleep(0.001)
                await parent.send(("tick", n))
            log.info("child_working", n=n)
            await trio.lowlevel.checkpoint()
    finally:
        log.info("child_stopping")  # as a sink closing its destination does, then
        spec.marker.write_text("cleaned up")


def main() -> None:
    child_main(work)


if __name__ == "__main__":
    from tests.child import main as test_child

    test_child()
