"""Interleaved timing for the per-stage benches: keeps the machine's speed swings out of ratios."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def interleaved_best(
    names: Sequence[str], chunks: int, repeats: int, run: Callable[[str, int], float]
) -> dict[str, float]:
    """Seconds each of ``names`` needs for all chunks: per chunk the best of ``repeats`` runs,
    summed. ``run(name, index)`` times one run of ``name`` over chunk ``index``. The names take
    turns chunk by chunk in ABBA order, so the machine's speed swings hit them alike, and keeping
    each chunk's best run discards the swings that remain."""
    best = {name: [float("inf")] * chunks for name in names}
    for repeat in range(repeats):
        for index in range(chunks):
            for name in names if (index + repeat) % 2 == 0 else reversed(names):
                best[name][index] = min(best[name][index], run(name, index))
    return {name: sum(times) for name, times in best.items()}
