"""What a process of the daemon uses, as the kernel counts it: CPU seconds and resident memory,
read from ``/proc/<pid>/stat`` (Linux; elsewhere nothing is known).

Fields of that file after the command's closing parenthesis (``fields``), from 0, as proc(5)
numbers them less 3: ``state`` is 0, ``ppid`` 1, ``session`` 3, ``utime`` 11 and ``stime`` 12,
``cutime`` 13 and ``cstime`` 14 (clock ticks: ``TICKS_PER_SECOND``), ``starttime`` 19 (clock ticks
after boot), ``rss`` 21 (pages: ``PAGE_BYTES``).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Final

#: Clock ticks a second: the unit of the CPU times and of ``starttime``.
TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Bytes of one page, the unit of ``rss``.
PAGE_BYTES: Final = resource.getpagesize()


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU time (user and system) a process has used, and its resident memory now."""

    cpu_seconds: float
    rss_bytes: int


def fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (the module says which is which);
    None if there is no such process (it exited) or no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def usage(pid: int) -> Usage | None:
    """What process ``pid`` uses now; None if there is no such process (it exited) or the
    system does not say."""
    found = fields(pid)
    if found is None:
        return None
    try:
        ticks = int(found[11]) + int(found[12])
        pages = int(found[21])
    except (IndexError, ValueError):
        return None
    return Usage(ticks / TICKS_PER_SECOND, pages * PAGE_BYTES)
