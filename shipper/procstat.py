"""What a process of the daemon uses, as the kernel counts it: CPU seconds and resident memory,
read from ``/proc/<pid>/stat`` (Linux; elsewhere nothing is known).

Fields of that file after the command's closing parenthesis, from 0: ``state`` is 0, ``utime``
11 and ``stime`` 12 (clock ticks), ``rss`` 21 (pages).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = resource.getpagesize()


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU time (user and system) a process has used, and its resident memory now."""

    cpu_seconds: float
    rss_bytes: int


def usage(pid: int) -> Usage | None:
    """What process ``pid`` uses now; None if there is no such process (it exited) or the
    system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
        pages = int(fields[21])
    except (IndexError, ValueError):
        return None
    return Usage(ticks / _TICKS, pages * _PAGE)
