"""A/B of variants of the instrumented indexed kernels on a GPU.

For gather and CSR SpMV with counters over the indexed operand's pages (as a Space counts),
times the plain kernel and the counted one built or launched each way, and checks every
variant's per-page counts against the reference.  Variants: the grid as launched
(``CudaKernels.launch`` cuts it to one wave of resident blocks; "8 blocks per SM" is the planned
grid as is, what launches were before), and preprocessor settings of
``ccadgpu/kernels/cuda/ccad_counters.cuh`` (``CCAD_WARP_VOTE=0``: no whole-warp fast path, one
shared atomic per lane).  Columns: registers and resident blocks per SM, plain/counted.
Run on a lent GPU machine::

    python benchmarks/gpu_variants.py [--n 22000000] [--repeat 7]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import table  # noqa: E402

from ccadgpu.backends import cuda_kernels as ck  # noqa: E402
from ccadgpu.backends.cuda_reference import expected_counts  # noqa: E402

#: label -> (compile options, launch the planned grid as is instead of one resident wave)
VARIANTS = {
    "default (one wave)": ((), False),
    "8 blocks per SM (before)": ((), True),
    "no warp vote": (("-DCCAD_WARP_VOTE=0",), False),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=22_000_000, help="elements of x and of idx")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    from ccadgpu.backends.cuda import CudaBackend, CudaKernels

    b = CudaBackend(0)
    n, page = args.n, 64 << 10
    rng = np.random.default_rng(0)
    nrows, per = n // 32, 16
    need = 8 * (3 * n + 2 * nrows * per + 2 * nrows + 2) + 64 * page
    region = b.allocate(need)
    cursor = [0]

    def take(count: int, dtype: type) -> tuple[np.ndarray, object]:
        start = -(-cursor[0] // page) * page
        cursor[0] = start + count * np.dtype(dtype).itemsize
        return region.host_view(dtype, count, start), region.device_view(dtype, count, start)

    xh, x = take(n, np.float64)
    yh, y = take(n, np.float64)
    ih, idx = take(n, np.int64)
    ph, indptr = take(nrows + 1, np.int64)
    jh, indices = take(nrows * per, np.int64)
    dh, data = take(nrows * per, np.float64)
    vh, v = take(nrows, np.float64)
    xh[:] = rng.standard_normal(n)
    ih[:] = rng.integers(0, n, n)
    ph[:] = np.arange(0, nrows * per + 1, per)
    jh[:] = rng.integers(0, n, nrows * per)
    dh[:] = rng.standard_normal(nrows * per)
    b.prefetch(region.ptr, need, b.device)
    b.synchronize()
    lo = ck.array_address(x) & ~(page - 1)
    cases = {"gather": (y, x, idx), "spmv": (v, indptr, indices, data, x)}
    rows, ok_all = [], True
    built: dict[tuple[str, ...], CudaKernels] = {}
    for name, (opts, as_planned) in VARIANTS.items():
        kern = built.get(opts)
        if kern is None:
            kern = built[opts] = type("K", (CudaKernels,),
                                      {"OPTIONS": CudaKernels.OPTIONS + opts})(b)
        for op, arrays in cases.items():
            cnt = b.new_counters(lo, x.nbytes + (ck.array_address(x) - lo), page, "indexed")
            plain = ck.plan(op, *arrays, max_blocks=kern.max_blocks)
            counted = ck.plan(op, *arrays, counters=cnt, max_blocks=kern.max_blocks)
            fns = [kern.function(p.module, p.name) for p in (plain, counted)]
            res = [kern.resident_blocks(f, ck.BLOCK) for f in fns]
            grids = [p.grid if as_planned else ck.fit_grid(p.grid, r)
                     for p, r in zip((plain, counted), res)]

            def go(i: int) -> None:
                p = (plain, counted)[i]
                with b._dev, b.stream:
                    fns[i](grids[i], p.block, p.args)

            t_p = b.median_time(lambda: go(0), args.repeat, 1)
            t_c = b.median_time(lambda: go(1), args.repeat, 1)
            b.clear_counters(cnt)
            go(1)
            rd, wr = b.read_counters(cnt)
            ref = expected_counts(op, *arrays, base=cnt.base, shift=cnt.shift,
                                  npages=cnt.npages, mode="indexed")
            ok = bool(np.array_equal(rd, ref[0]) and np.array_equal(wr, ref[1]))
            ok_all &= ok
            rows.append([name, op, f"{t_p * 1e3:.3f} ms", f"{t_c * 1e3:.3f} ms",
                         f"{t_c / t_p:.2f}",
                         "/".join(str(getattr(f, "num_regs", "?")) for f in fns),
                         "/".join(str(r // b.sm_count) for r in res),
                         f"{grids[0][0]}/{grids[1][0]}", "ok" if ok else "WRONG"])
    print(f"GPU: {b.name}; {n} elements, {nrows} CSR rows x {per}, 64 KiB pages, "
          f"median of {args.repeat}")
    print(table(["variant", "op", "plain", "counted", "ratio", "regs p/c", "blocks/SM p/c",
                 "grid p/c", "counts"], rows))
    b.free(region)
    b.close()
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
