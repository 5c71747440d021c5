"""One-shot measurements for a lent GPU machine (run by ``benchmarks/gpu_check.sh``).

Prints one compact table:

* migration GB/s (managed ``cudaMemPrefetchAsync``, H2D and D2H) next to a pinned CuPy copy
  (``cudaMemcpyAsync`` from page-locked host memory) of the same bytes, and their ratio;
* kernel read throughput over device-resident vs host-resident managed pages;
* every device op, instrumented vs plain (GPU time, CUDA events), the overhead ratio, and a
  check that the instrumented counts equal the reference totals;
* modeled vs measured time, with the shipped profile for this kind of card and with the
  profile just calibrated (for kernels the calibration did not time).

Needs no network.  Uses at most min(2 GiB, 25 % of free) GPU memory.  Exit status 0 when
every check passed, 1 otherwise.  ``--json PATH`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import table  # noqa: E402

from ccadgpu import calibrate as cal  # noqa: E402
from ccadgpu.backends import nvml, select_backend  # noqa: E402
from ccadgpu.backends import cuda_kernels as ck  # noqa: E402
from ccadgpu.backends.cuda_reference import expected_counts, expected_result  # noqa: E402
from ccadgpu.units import format_bytes, parse_size  # noqa: E402


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _r(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "n/a"


class Arena:
    """Operands carved out of one managed region (the emulated space), with counters over
    all of it."""

    def __init__(self, b: Any, nbytes: int, page: int = 64 << 10):
        self.b = b
        self.region = b.allocate(nbytes)
        self.page = page
        self.cursor = 0

    def take(self, shape: Any, dtype: Any) -> tuple[np.ndarray, Any]:
        dt = np.dtype(dtype)
        n = int(np.prod(shape))
        start = -(-self.cursor // 256) * 256
        if start + n * dt.itemsize > self.region.nbytes:
            raise MemoryError("arena exhausted")
        self.cursor = start + n * dt.itemsize
        return (self.region.host_view(dt, shape, start), self.region.device_view(dt, shape, start))

    def counters(self) -> Any:
        return self.b.new_counters(self.region.ptr, self.region.nbytes, self.page)


def kernel_rows(b: Any, budget: int, repeat: int, checks: list[tuple[str, bool]],
                data: dict[str, Any]) -> tuple[list[list[Any]], dict[str, float]]:
    """Instrumented vs plain for every op on device-resident pages."""
    k = b.kernels
    ar = Arena(b, budget)
    # x, y, z, idx: 32 n bytes; the CSR matrix below about 8.5 n more
    n = budget // (8 * 6)
    n -= n % 1024
    rng = np.random.default_rng(0)
    (xh, x), (yh, y), (zh, z) = (ar.take(n, np.float64) for _ in range(3))
    (ih, idx), (oh, out) = ar.take(n, np.int64), ar.take(1, np.float64)
    xh[:] = rng.standard_normal(n)
    yh[:] = rng.standard_normal(n)
    ih[:] = rng.integers(0, n, n)
    side = int(np.sqrt(n))
    g_in, g_out = x[: side * side].reshape(side, side), z[: side * side].reshape(side, side)
    # CSR: ~16 nonzeros per row, random columns (x is reused as the vector)
    nrows = n // 32
    nnz_row = 16
    b.prefetch(ar.region.ptr, ar.cursor, b.device)
    b.synchronize()
    cases: list[tuple[str, tuple, dict]] = [
        ("copy", (z, x), {}), ("scale", (z, x), {"a": 2.0}), ("axpy", (z, x), {"a": 0.5}),
        ("triad", (z, x, y), {"s": 3.0}), ("sum", (out, x), {}), ("dot", (out, x, y), {}),
        ("stencil5", (g_out, g_in), {"center": 0.5, "neighbor": 0.125}),
        ("gather", (z, x, idx), {}),
        ("scatter", (z, idx, y), {}),
    ]
    rows = []
    times: dict[str, float] = {}
    cnt = ar.counters()
    for op, arrays, sc in cases:
        plain = ck.plan(op, *arrays, max_blocks=k.max_blocks, **sc)
        counted = ck.plan(op, *arrays, counters=cnt, max_blocks=k.max_blocks, **sc)
        t_plain = b.median_time(lambda: k.launch(plain), repeat, 1)
        t_cnt = b.median_time(lambda: k.launch(counted), repeat, 1)
        # one counted launch on zeroed counters: totals against the reference
        b.clear_counters(cnt)
        k.launch(counted)
        rd, wr = b.read_counters(cnt)
        ref_rd, ref_wr = expected_counts(op, *arrays, base=cnt.base, shift=cnt.shift,
                                         npages=cnt.npages)
        ok = bool(np.array_equal(rd, ref_rd) and np.array_equal(wr, ref_wr))
        checks.append((f"{op}: per-page counts == reference", ok))
        moved = int(rd.sum() + wr.sum())
        times[op] = t_plain
        data.setdefault("kernels", {})[op] = {"plain_s": t_plain, "counted_s": t_cnt,
                                               "bytes": moved, "counts_ok": ok}
        rows.append([f"kernel {op} (device pages)", f"{moved / t_plain / 1e9:.1f} GB/s plain",
                     f"{moved / t_cnt / 1e9:.1f} GB/s counted", _r(t_cnt / t_plain),
                     f"{_ms(t_plain)} vs {_ms(t_cnt)}; counts {'ok' if ok else 'WRONG'}"])
    # SpMV on its own matrix
    room = ar.region.nbytes - ar.cursor
    if nrows > 0 and room > (nrows * nnz_row * 16 + nrows * 16 + 4096):
        (ph, indptr) = ar.take(nrows + 1, np.int64)
        nnz = nrows * nnz_row
        (jh, indices) = ar.take(nnz, np.int64)
        (dh, dat) = ar.take(nnz, np.float64)
        (vh, vy) = ar.take(nrows, np.float64)
        ph[:] = np.arange(0, nnz + 1, nnz_row)
        jh[:] = rng.integers(0, n, nnz)
        dh[:] = rng.standard_normal(nnz)
        b.prefetch(ar.region.ptr, ar.cursor, b.device)
        b.synchronize()
        arrays = (vy, indptr, indices, dat, x)
        plain = ck.plan("spmv", *arrays, max_blocks=k.max_blocks)
        counted = ck.plan("spmv", *arrays, counters=cnt, max_blocks=k.max_blocks)
        t_plain = b.median_time(lambda: k.launch(plain), repeat, 1)
        t_cnt = b.median_time(lambda: k.launch(counted), repeat, 1)
        b.clear_counters(cnt)
        k.launch(counted)
        rd, wr = b.read_counters(cnt)
        ref_rd, ref_wr = expected_counts("spmv", *arrays, base=cnt.base, shift=cnt.shift,
                                         npages=cnt.npages)
        ok = bool(np.array_equal(rd, ref_rd) and np.array_equal(wr, ref_wr))
        want = expected_result("spmv", vh, ph, jh, dh, xh)
        ok_val = bool(np.allclose(vh, want, rtol=1e-9, atol=1e-9))
        checks.append(("spmv: per-page counts == reference", ok))
        checks.append(("spmv: result == NumPy", ok_val))
        moved = int(rd.sum() + wr.sum())
        data.setdefault("kernels", {})["spmv"] = {"plain_s": t_plain, "counted_s": t_cnt,
                                                  "bytes": moved, "counts_ok": ok}
        rows.append(["kernel spmv (device pages)", f"{moved / t_plain / 1e9:.1f} GB/s plain",
                     f"{moved / t_cnt / 1e9:.1f} GB/s counted", _r(t_cnt / t_plain),
                     f"{_ms(t_plain)} vs {_ms(t_cnt)}; counts {'ok' if ok else 'WRONG'}"])
    # results of the last runs against NumPy (a cheap end-to-end check of two ops)
    k.triad(z, x, y, 3.0)
    b.synchronize()
    checks.append(("triad: result == NumPy", bool(np.allclose(zh, xh + 3.0 * yh))))
    k.gather(z, x, idx)
    b.synchronize()
    checks.append(("gather: result == NumPy", bool(np.array_equal(zh, xh[ih]))))
    data["kernel_elements"] = n
    times["_triad_bytes"] = float(3 * n * 8)
    b.free(ar.region)
    return rows, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--max-bytes", default="2GiB",
                    help="GPU memory to use at most (never more than min(2 GiB, 25%% of free))")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    choice = select_backend("auto")
    print(f"backend: {choice}")
    if choice.name != "cuda":
        print("gpu_check: no usable GPU, nothing to measure", file=sys.stderr)
        return 1
    from ccadgpu.backends.cuda import CudaBackend

    checks: list[tuple[str, bool]] = []
    data: dict[str, Any] = {"backend_reason": choice.reason}
    b = CudaBackend(0)
    free, total = b.mem_info()
    cap = min(cal.memory_cap(free), parse_size(args.max_bytes, "--max-bytes"))
    info = nvml.gpu_info()
    data["nvml"] = info
    print(f"GPU: {b.name} (cc {b.compute_capability}), {format_bytes(total)} total, "
          f"{format_bytes(free)} free; using at most {format_bytes(cap)}")
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(b.device)
    coherence = {k: props.get(k) for k in ("concurrentManagedAccess", "pageableMemoryAccess",
                                            "pageableMemoryAccessUsesHostPageTables",
                                            "directManagedMemAccessFromHost")}
    data["coherence"] = coherence
    print(f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}; "
          f"{coherence}")
    if info:
        print(f"NVML: driver {info.get('driver_version')}, PCIe gen {info.get('pcie_link_gen')} "
              f"x{info.get('pcie_link_width')}, util {info.get('utilization_gpu')}%")

    # 1. link and memory measurements (calibration), at most cap: half managed, half pinned copy
    meas = cal.measure(size=cap // 2, repeat=args.repeat, backend=b,
                       log=lambda m: print("  " + m, flush=True))
    data["calibration"] = meas
    nb = meas["bytes"]
    rows: list[list[Any]] = []
    for d, key, pin in (("H2D", "h2d_prefetch_gbps", "pinned_h2d_gbps"),
                        ("D2H", "d2h_prefetch_gbps", "pinned_d2h_gbps")):
        rows.append([f"migrate {d} (prefetch {format_bytes(nb)})", f"{meas[key]:.2f} GB/s",
                     f"{meas[pin]:.2f} GB/s pinned copy", _r(meas[key] / meas[pin]),
                     "ratio = prefetch / pinned cudaMemcpyAsync"])
    rows.append(["kernel read, device-resident pages", f"{meas['device_read_local_gbps']:.1f} GB/s",
                 f"{meas['device_read_remote_gbps']:.2f} GB/s host-resident",
                 _r(meas["device_read_local_gbps"] / meas["device_read_remote_gbps"]),
                 f"host-resident read remotely (accessed-by); fault-migrated: "
                 f"{meas['device_read_fault_gbps']:.2f} GB/s"])
    checks.append(("migration and reads measured", all(
        np.isfinite(meas[k]) and meas[k] > 0 for k in
        ("h2d_prefetch_gbps", "d2h_prefetch_gbps", "device_read_local_gbps",
         "device_read_remote_gbps"))))

    # 2. instrumented vs plain, every op
    krows, ktimes = kernel_rows(b, min(cap, 1 << 30), args.repeat, checks, data)
    rows += krows

    # 3. modeled vs measured: shipped profile for this kind of card, and the calibrated one
    base_name = cal.base_profile_name(b.name)
    base = cal._load_doc(base_name)
    calibrated = tomllib.loads(cal.profile_text(meas, "calibrated", base))
    t_h2d = nb / (meas["h2d_prefetch_gbps"] * 1e9)
    pages = nb // (2 << 20)
    for pname, doc in ((base_name, base), ("calibrated", calibrated)):
        m = cal.model_seconds(doc, "migration", nb, pages=pages)
        rows.append([f"model: migrate H2D {format_bytes(nb)} ({pname})", _ms(t_h2d),
                     f"{_ms(m)} modeled", _r(m / t_h2d), "2 MiB pages; ratio = modeled/measured"])
    tri = ktimes.get("triad")
    if tri:
        tb = ktimes["_triad_bytes"]
        for pname, doc in ((base_name, base), ("calibrated", calibrated)):
            m = cal.model_seconds(doc, "kernel", int(tb), processor="device", node="device")
            rows.append([f"model: triad on device pages ({pname})", _ms(tri), f"{_ms(m)} modeled",
                         _r(m / tri), f"{format_bytes(tb)} moved"])
    data["modeled_profile"] = base_name
    b.close()

    print()
    print(table(["check", "measured", "baseline / other", "ratio", "note"], rows))
    print()
    bad = [name for name, ok in checks if not ok]
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    data["checks"] = {name: ok for name, ok in checks}
    data["seconds"] = time.perf_counter() - t_start
    print(f"gpu_check: {len(checks) - len(bad)}/{len(checks)} checks passed in "
          f"{data['seconds']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    return 0 if not bad else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
