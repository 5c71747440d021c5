"""Migration throughput vs ``np.copyto`` of the same bytes, measured in the same run.

    python benchmarks/bench_migrate.py [--size 256MiB] [--repeat 7]

For each page size, moves a whole array host->device and device->host and reports the median
GB/s, the median ``np.copyto`` GB/s of the same number of bytes (node to node, the copy a
migration cannot avoid), and their ratio (targets: >= 0.8 at 2 MiB, >= 0.5 at 64 KiB).  Also
times ``space.placement`` over a 1M-page array and first touch after a move (the page-table
refaults a lazy remap leaves for later).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import ccadgpu
from _util import machine, median_time, table


def bench_page_size(size: int, page: int, repeat: int) -> list:
    with ccadgpu.Space(device_memory=size + 4 * page, page_size=page) as sp:
        a = sp.zeros(size // 8, np.float64)
        a.view(np.ndarray)[:] = np.arange(a.size, dtype=np.float64)
        src = np.empty(size, np.uint8)
        dst = np.empty(size, np.uint8)
        src[:] = 1
        dst[:] = 2
        t_copy = median_time(lambda: np.copyto(dst, src), repeat)
        h2d, d2h = [], []
        for _ in range(repeat):
            r = sp.move_pages(a, "device")
            assert r.ok, r
            h2d.append(r.seconds)
            r = sp.move_pages(a, "host")
            assert r.ok, r
            d2h.append(r.seconds)
        sp.move_pages(a, "device")
        t = time.perf_counter()
        a.view(np.ndarray)[::512].sum()   # touch every 4 KiB OS page: the refaults left for later
        t_touch = time.perf_counter() - t
        assert a[a.size - 1] == a.size - 1
    rows = []
    for name, ts in (("host->device", h2d), ("device->host", d2h)):
        t = float(np.median(ts))
        rows.append([f"{page >> 10} KiB", name, f"{size / t / 1e9:.2f}", f"{size / t_copy / 1e9:.2f}",
                     f"{t_copy / t:.2f}", f"{t * 1e3:.1f}", f"{t_touch * 1e3:.1f}"])
    return rows


def bench_placement_query(npages: int = 1 << 20) -> float:
    with ccadgpu.Space(device_memory="16MiB", page_size="4KiB", host_memory=npages * 4096 * 2) as sp:
        a = sp.empty(npages * 4096 // 8, np.float64)
        return median_time(lambda: sp.placement(a), 21)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    size = ccadgpu.parse_size(args.size)
    print(f"# bench_migrate: {ccadgpu.format_bytes(size)}, median of {args.repeat}, {machine()}")
    rows = []
    for page in (2 << 20, 64 << 10):
        rows += bench_page_size(size, page, args.repeat)
    print(table(["page", "direction", "migrate GB/s", "np.copyto GB/s", "ratio",
                 "migrate ms", "first touch ms"], rows))
    tq = bench_placement_query()
    print(f"\nspace.placement over 1,048,576 pages: {tq * 1e3:.2f} ms (median of 21)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
