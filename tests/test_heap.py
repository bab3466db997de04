"""The garbage collector settles only in the daemon's own processes (``shipper.heap``)."""

from __future__ import annotations

import subprocess
import sys

from shipper import heap

_PROBE = """
import gc
from shipper import heap
before = (gc.get_freeze_count(), gc.get_threshold())
heap.settle()
idle = (gc.get_freeze_count(), gc.get_threshold())
heap.enable()
heap.settle()
print(before == idle, gc.get_freeze_count() > 1000, gc.get_threshold() == heap.YOUNG_THRESHOLDS)
"""


def test_settle_freezes_only_once_enabled() -> None:
    """settle leaves the collector alone until the process's entry point enabled it, then
    freezes what the start built and makes young collections rarer."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "True", "True"]


def test_settle_is_off_in_this_process() -> None:
    """A test process that runs the daemon inside itself never freezes its heap."""
    import gc

    count = gc.get_freeze_count()
    heap.settle()
    assert gc.get_freeze_count() == count


_AGAIN = """
import gc, weakref
from shipper import heap
class Node:
    pass
node = Node()
node.me = node  # a cycle, alive while the start holds it
gone = weakref.ref(node)
heap.enable()
heap.settle()
del node  # replaced (a reload): cyclic garbage, and frozen
gc.collect()
print(gone() is not None)  # a frozen cycle survives collections...
heap.settle()
print(gone() is None)  # ...until the next settle lets go of it
"""


def test_a_later_settle_frees_what_an_earlier_one_froze_and_has_become_garbage() -> None:
    """Something frozen at a start that later becomes a cycle of garbage (a component a
    reload replaced) is freed by the next settle, not kept for the life of the process."""
    out = subprocess.run(
        [sys.executable, "-c", _AGAIN], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "True"]


_LARGE_BLOCKS = """
import ctypes, sys
from shipper import heap

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t fields
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "enabled":
    heap.enable()
freed = bytearray(1_000_000)
del freed  # (a mapped block freed: glibc's own threshold rises past what follows)
large = [b"x" * 300_000 for _ in range(100)]
print(mallinfo2().hblkhd // 1_000_000)
"""


def test_a_process_that_enabled_the_heap_maps_its_large_blocks_on_their_own() -> None:
    """Once a process's entry point enabled the heap settings, each large block (30 MB of
    300 KB blocks here) is mapped on its own, so that freeing it gives it back to the system,
    where glibc's own threshold, raised by the first mapped block freed, would have put them in
    the heap, which small blocks above them keep from shrinking."""
    out = subprocess.run(
        [sys.executable, "-c", _LARGE_BLOCKS, "enabled"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out) >= 30
