"""Arena huge pages (``tunables.thp_collapse``) on vs off, interleaved in the same run.

    python benchmarks/bench_hugepages.py [--size 256MiB] [--device 1GiB] [--repeat 7]

With 64 KiB pages, fresh whole 2 MiB chunks of an arena are collapsed into transparent huge
pages (MADV_COLLAPSE) instead of being faulted in as base pages.  Each round runs both
settings, in alternating order, of:

* **device arena**: creating (and closing) a space whose ``--device`` arena is pre-faulted;
* **offline**: a verified evacuation of ``--size`` bytes of device pages to fresh host frames;
* **gather**: ``ops.gather`` (counting off) of ``--size`` / 8 random elements from a
  ``--size`` table on the host, where huge pages save TLB misses.

Prints medians and the ratio on / off (below 1: huge pages are faster), and how many 2 MiB
chunks were collapsed, since a kernel without MADV_COLLAPSE gives base pages either way.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import ccadgpu
from _util import machine, table

PAGE = 64 << 10


def arena(device: int, on: bool) -> tuple[float, int]:
    t = time.perf_counter()
    sp = ccadgpu.Space(device_memory=device, page_size=PAGE, thp_collapse=on)
    t = time.perf_counter() - t
    n = sp.nodes[1].collapsed_chunks
    sp.close()
    return t, n


class Evacuation:
    """A space with ``size`` bytes on its device, taken offline and back each round."""

    def __init__(self, size: int, on: bool):
        self.sp = ccadgpu.Space(device_memory=size + 4 * PAGE, page_size=PAGE,
                                cache_colouring=False, thp_collapse=on)
        self.a = self.sp.empty(size // 8, np.float64, placement="device")
        self.a.view(np.ndarray)[:] = np.arange(self.a.size, dtype=np.float64)
        self.sp.device.offline()         # warm-up: compiles the verifying copy once

    def __call__(self) -> float:
        self.sp.device.online()
        assert self.sp.move_pages(self.a, "device").ok
        rep = self.sp.device.offline()
        assert rep.pages * PAGE == self.a.nbytes
        return rep.seconds + rep.fence_seconds


class Gather:
    """``ops.gather`` from a host table of ``size`` bytes, counting off."""

    def __init__(self, size: int, on: bool, rng: np.random.Generator):
        self.sp = ccadgpu.Space(device_memory=64 << 20, page_size=PAGE, thp_collapse=on,
                                access_counters=False)
        n = size // 8
        self.src = self.sp.asarray(rng.standard_normal(n))
        self.idx = self.sp.asarray(rng.integers(0, n, n // 8))
        self.out = self.sp.empty(n // 8)
        self()                           # warm-up: compile, first touch

    def __call__(self) -> float:
        t = time.perf_counter()
        ccadgpu.ops.gather(self.out, self.src, self.idx)
        return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--device", default="1GiB")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    size, device = ccadgpu.parse_size(args.size), ccadgpu.parse_size(args.device)
    print(f"# bench_hugepages: {ccadgpu.format_bytes(size)}, device arena "
          f"{ccadgpu.format_bytes(device)}, 64 KiB pages, {args.repeat} interleaved rounds, "
          f"{machine()}")
    rng = np.random.default_rng(0)
    times: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []}
                                                 for k in ("arena", "offline", "gather")}
    collapsed = {True: 0, False: 0}
    evac = {on: Evacuation(size, on) for on in (True, False)}
    gath = {on: Gather(size, on, rng) for on in (True, False)}
    try:
        for r in range(args.repeat):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                t, n = arena(device, on)
                times["arena"][on].append(t)
                collapsed[on] = n
                times["offline"][on].append(evac[on]())
                times["gather"][on].append(gath[on]())
        chunks = {on: evac[on].sp.nodes[0].collapsed_chunks + gath[on].sp.nodes[0].collapsed_chunks
                  for on in (True, False)}
    finally:
        for x in (*evac.values(), *gath.values()):
            x.sp.close()
    rows = []
    for k, label in (("arena", f"create a {ccadgpu.format_bytes(device)} device arena"),
                     ("offline", f"offline {ccadgpu.format_bytes(size)} (verified)"),
                     ("gather", f"gather {ccadgpu.format_bytes(size // 8)} from "
                                f"{ccadgpu.format_bytes(size)}")):
        on, off = (statistics.median(times[k][b]) for b in (True, False))
        rows.append([label, f"{on * 1e3:.1f}", f"{off * 1e3:.1f}", f"{on / off:.2f}"])
    print(table(["operation", "huge pages ms", "base pages ms", "ratio"], rows))
    print(f"\n2 MiB chunks collapsed: device arena {collapsed[True]} (off: {collapsed[False]}), "
          f"host frames {chunks[True]} (off: {chunks[False]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
