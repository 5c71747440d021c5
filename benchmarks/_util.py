"""Shared helpers for the benchmarks: medians of repeated timings and a table printer."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
                ) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs (``setup()`` untimed before each)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> str:
    import os
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table (pastes straight into the README)."""
    cells = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
         for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|",
                      *(line(r) for r in cells)])
