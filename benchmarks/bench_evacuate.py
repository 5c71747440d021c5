"""Device evacuation throughput vs ``np.copyto`` of the same bytes, in the same run.

    python benchmarks/bench_evacuate.py [--size 256MiB] [--repeat 5]

Fills the device with ``--size`` bytes, takes it offline (every page copied to the host and
checked against its device copy before the device frame is released), brings it back and
refills it, ``--repeat`` times; prints median GB/s next to ``np.copyto`` of the same bytes and
the ratio (target >= 0.8 at 2 MiB pages), with verification on (the default) and off.  Then
times offline+online of an empty device (target < 1 ms).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import ccadgpu
from _util import machine, median_time, table


def bench(size: int, page: int, repeat: int, verify: bool) -> tuple[float, float, float]:
    # page-aligned (no cache colouring): the array is exactly size // page pages
    with ccadgpu.Space(device_memory=size + 4 * page, page_size=page,
                       evacuate_verify=verify, cache_colouring=False) as sp:
        a = sp.empty(size // 8, np.float64, placement="device")
        a.view(np.ndarray)[:] = np.arange(a.size, dtype=np.float64)
        src = np.full(size, 1, np.uint8)
        dst = np.full(size, 2, np.uint8)
        t_copy = median_time(lambda: np.copyto(dst, src), repeat)
        sp.device.offline()        # warm-up: compiles the verifying copy kernel once
        ts = []
        for _ in range(repeat):
            sp.device.online()
            assert sp.move_pages(a, "device").ok
            rep = sp.device.offline()
            assert rep.pages * page == size and (sp.placement(a) == 0).all()
            ts.append(rep.seconds + rep.fence_seconds)
        assert a[a.size - 1] == a.size - 1
    return statistics.median(ts), t_copy, size


def empty_offline_ms(n: int = 200) -> float:
    with ccadgpu.Space(device_memory="256MiB") as sp:
        sp.zeros(1000)
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            sp.device.offline()
            ts.append(time.perf_counter() - t)
            sp.device.online()
        return statistics.median(ts) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    size = ccadgpu.parse_size(args.size)
    print(f"# bench_evacuate: {ccadgpu.format_bytes(size)}, median of {args.repeat}, {machine()}")
    rows = []
    for page in (2 << 20, 64 << 10):
        for verify in (True, False):
            t, t_copy, n = bench(size, page, args.repeat, verify)
            rows.append([f"{page >> 10} KiB", "on" if verify else "off", f"{n / t / 1e9:.2f}",
                         f"{n / t_copy / 1e9:.2f}", f"{t_copy / t:.2f}", f"{t * 1e3:.1f}"])
    print(table(["page", "verify", "evacuate GB/s", "np.copyto GB/s", "ratio", "offline ms"],
                rows))
    print(f"\noffline of an empty device: {empty_offline_ms():.3f} ms (median of 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
