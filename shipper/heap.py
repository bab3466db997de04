"""The heap of a process of the daemon: what was built to start is frozen out of the garbage
collector, and large blocks go back to the system once freed.

CPython's cyclic collector walks every tracked object of a generation when that generation is
collected; the oldest generation holds everything a process built to start (its modules, their
functions and classes, the config, trio's and the sources' state): about 50,000 objects in the
daemon's main process, 40,000 in a file sink's, that live as long as the process and never form
garbage. Under load the events in flight make young collections frequent and full ones regular,
and each full collection walked all of that again (see bench/README.md, "The garbage collector
after the start").

``settle()`` collects once and then freezes what is left (``gc.freeze``: the collector leaves
those objects alone from then on; they are still freed by reference counting when they go), and
makes the young collections rarer (``YOUNG_THRESHOLDS``: 20,000 new container objects before
a collection of the youngest generation instead of 700, 20 of those before the next one instead
of 10): an event's objects are freed by reference counting as soon as it is written, so the
collector finds almost nothing, and every pass it makes over the events waiting in the queues
is wasted. Together about 5 us of CPU per event over the process tree (31 to 26). It is
called where each process has finished starting: the daemon once it is ready (and after each
reload), a sink process once its sink is open, an ingest worker once its sources serve. Only in
processes that ``enable()`` it (the command that runs the daemon and the child processes' entry
points): a test that runs the daemon inside its own process keeps its collector as it was,
since a frozen object that later becomes part of a cycle of garbage is never collected.

``enable()`` also fixes glibc's thresholds for large blocks (``mallopt``): a block of
``MMAP_THRESHOLD`` (128 KiB) or more is mapped on its own and unmapped when freed, and the heap
is given back past ``TRIM_THRESHOLD`` (256 KiB) free at its top. glibc starts there too, but
raises both as soon as a mapped block is freed (up to 32 MiB), after which the large blocks a
process frees all the time (its socket reads, an ingest worker's frames, the WAL's writes) stay
in the heap, among small objects that keep it from shrinking: an ingest worker whose live
Python objects never passed 5 MB grew 10 to 15 MB past its size at rest. Fixed, each process of
the daemon holds 3 to 6 MB less under load, no CPU cost the bench could tell (bench/README.md,
"Memory: imports and large blocks"). Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Final

__all__ = ["enable", "fix_large_blocks", "settle"]

_enabled = False

#: ``gc.set_threshold`` once settled (CPython's default: 700, 10, 10).
YOUNG_THRESHOLDS: Final = (20_000, 20, 20)
#: Blocks at least this large are mapped on their own (``mallopt(M_MMAP_THRESHOLD)``).
MMAP_THRESHOLD: Final = 128 * 1024
#: Free memory at the heap's top past this is given back (``mallopt(M_TRIM_THRESHOLD)``).
TRIM_THRESHOLD: Final = 256 * 1024
_M_TRIM_THRESHOLD: Final = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3


def enable() -> None:
    """Let ``settle`` freeze this process's heap, and fix glibc's thresholds for large blocks
    (``fix_large_blocks``): called by a process's entry point only."""
    global _enabled
    _enabled = True
    fix_large_blocks()


def fix_large_blocks() -> bool:
    """Set ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD`` (see the module docstring); whether the C
    library took both (False where it has no ``mallopt``, as on musl, or refused one)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: its C library's
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mapped: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trimmed: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mapped and trimmed


def settle() -> None:
    """Collect, then freeze every object left out of future collections (if ``enable``\\ d).
    Again after a later start (a sink opened again, a reload), it first lets go of what it froze
    before, so that what that start replaced is collected (a frozen object in a cycle of
    garbage is never freed) and what it built is frozen."""
    if _enabled:
        gc.unfreeze()  # what an earlier start froze and has since become garbage goes too
        gc.collect()
        gc.freeze()
        gc.set_threshold(*YOUNG_THRESHOLDS)
