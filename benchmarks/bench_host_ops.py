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
overhead (a large operation's is its memory traffic, see ``bench_kernels.py``).  The last row
is the idiom for element loops: the stores made on the view ``space.host_access(a, "w")``
yields (one counted write of the whole array).  Then the memory the open host epoch holds
after ``--calls`` x 10 counted stores and no launch (``tracemalloc``: NumPy's allocations).
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

import ccadgpu
from _util import machine, median_time, table
from ccadgpu.units import parse_size

N = 1 << 16            # elements of the test arrays (512 KiB of float64)
HOST_ACCESS = "v[i] = x in host_access"


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


def host_access_us(sp: Any, m: Any, calls: int, repeat: int) -> float:
    """µs per store of a loop on the view ``host_access`` yields."""
    mask = N - 1

    def run() -> None:
        with sp.host_access(m, "w") as v:
            for i in range(calls):
                v[(i * 97) & mask] = 1.5
    run()
    return median_time(run, repeat) / calls * 1e6


def epoch_memory_kib(sp: Any, m: Any, stores: int) -> float:
    """KiB more held (traced) after ``stores`` counted scalar stores in one host epoch (the
    same stores once before, so that the footprint cache holds their ranges already)."""
    for i in range(stores):
        m[(i * 97) & (N - 1)] = 1.5
    sp.sync()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(stores):
        m[(i * 97) & (N - 1)] = 1.5
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    sp.sync()
    return grown / 1024


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
    base[HOST_ACCESS] = base["a[i] = x"]
    rows = []
    memory: dict[str, float] = {}
    measured: dict[tuple[str, bool], dict[str, float]] = {}
    for pol in a.policies.split(","):
        for counting in (True, False):
            with ccadgpu.Space(device_memory="64MiB", page_size=page, profile=a.profile,
                               policy=pol, access_counters=counting) as sp:
                m = sp.zeros(N)
                measured[pol, counting] = {name: per_call_us(fn, a.calls, a.repeat)
                                           for name, fn in cases(m, idx).items()}
                measured[pol, counting][HOST_ACCESS] = host_access_us(sp, m, a.calls, a.repeat)
                if counting:
                    memory[pol] = epoch_memory_kib(sp, m, 10 * a.calls)
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
    print(f"\n(the {HOST_ACCESS} row's baseline: the plain store above)")
    for pol, kib in memory.items():
        print(f"{pol}: the open host epoch after {10 * a.calls} counted stores holds "
              f"{kib:.0f} KiB more (tracemalloc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
