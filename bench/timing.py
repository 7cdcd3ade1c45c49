"""Timing shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import time
from typing import Callable


def interleaved_best(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best-of-`repeats` seconds of each fn, the repeats interleaved across fns so that load from
    other processes hits every variant alike (after one warm-up call each)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best
