"""What the array protocols cost a CPU operation on a managed array: wall µs per call of small
NumPy operations on a ``ManagedArray`` against the same call on a plain ``ndarray``.

    python benchmarks/bench_host_ops.py [--repeat 7] [--calls 2000] [--policies static,access_counter]
                                        [--page-size 64KiB]

Each operation runs ``--calls`` times per timing, ``--repeat`` timings, medians printed; the
managed array's pages are on the host (the common case: NumPy work on data the CPU owns), once
with the access counters on (every operation counted, traced and seen by the manager) and once
with ``access_counters=False`` (the protocol's own cost: writers registered, arrays resolved).
The baseline is the same operation on a plain array in the same run; the ratio column is
managed/plain.  Only scalars and small slices are here: these are the calls whose cost is all
overhead (a large operation's is its memory traffic, see ``bench_kernels.py``).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

import ccadgpu
from _util import machine, median_time, table
from ccadgpu.units import parse_size

N = 1 << 16            # elements of the test arrays (512 KiB of float64)


def cases(a: Any, idx: np.ndarray) -> dict[str, Callable[[int], Any]]:
    """The operations, each a function of the call number ``i`` (so that scalar stores walk
    the array rather than hit one element)."""
    mask = N - 1

    def store(i: int) -> None:
        a[(i * 97) & mask] = 1.5

    def load(i: int) -> Any:
        return a[(i * 97) & mask]

    def slice_store(i: int) -> None:
        j = (i * 97) & (mask - 8)
        a[j:j + 8] = 2.0

    def small_ufunc(i: int) -> Any:
        return a[:8] + 1.0

    def inplace_page(i: int) -> None:
        v = a[:512]                      # 4 KiB: within one page
        v *= 1.0

    def reduce_16_pages(i: int) -> Any:
        return a.sum()

    def fancy_read(i: int) -> Any:
        return a[idx]

    return {"a[i] = x": store, "x = a[i]": load, "a[j:j+8] = x": slice_store,
            "a[:8] + 1": small_ufunc, "a[:512] *= 1": inplace_page,
            f"a.sum() ({N * 8 >> 10} KiB)": reduce_16_pages, "a[idx] (64)": fancy_read}


def per_call_us(fn: Callable[[int], Any], calls: int, repeat: int) -> float:
    def run() -> None:
        for i in range(calls):
            fn(i)
    run()                                # warm up (JIT, first faults, caches)
    return median_time(run, repeat) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--policies", default="static,access_counter")
    ap.add_argument("--page-size", default="64KiB")
    ap.add_argument("--profile", default="h100-pcie")
    a = ap.parse_args()
    page = parse_size(a.page_size, "--page-size")
    print(f"# host operations on managed arrays: {machine()}, ccadgpu {ccadgpu.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}, pages {a.page_size}, profile {a.profile}, "
          f"medians of {a.repeat} x {a.calls} calls\n")
    idx = np.random.default_rng(0).integers(0, N, 64)
    plain = np.zeros(N)
    base = {name: per_call_us(fn, a.calls, a.repeat) for name, fn in cases(plain, idx).items()}
    rows = []
    measured: dict[tuple[str, bool], dict[str, float]] = {}
    for pol in a.policies.split(","):
        for counting in (True, False):
            with ccadgpu.Space(device_memory="64MiB", page_size=page, profile=a.profile,
                               policy=pol, access_counters=counting) as sp:
                m = sp.zeros(N)
                measured[pol, counting] = {name: per_call_us(fn, a.calls, a.repeat)
                                           for name, fn in cases(m, idx).items()}
    for name, b in base.items():
        row: list[object] = [name, f"{b:.2f}"]
        for pol in a.policies.split(","):
            for counting in (True, False):
                t = measured[pol, counting][name]
                row += [f"{t:.1f}", f"{t / b:.0f}x"]
        rows.append(row)
    heads = ["operation", "plain µs"]
    for pol in a.policies.split(","):
        heads += [f"{pol} µs", "ratio", f"{pol}, uncounted µs", "ratio"]
    print(table(heads, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
