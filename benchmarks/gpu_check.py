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


INDEXED_OPERAND = {"gather": 1, "scatter": 0, "spmv": 4}     # position in the op's arrays


def indexed_row(b: Any, op: str, arrays: tuple, sc: dict, page: int, repeat: int,
                t_plain: float, checks: list[tuple[str, bool]], data: dict[str, Any]
                ) -> list[Any]:
    """The op counted as a Space counts it: in-kernel counters over the pages of its indexed
    operand only (dense operands are priced on the host, arithmetically)."""
    k = b.kernels
    a = arrays[INDEXED_OPERAND[op]]
    lo = ck.array_address(a) & ~(page - 1)
    hi = ck.array_address(a) + a.nbytes
    cnt = b.new_counters(lo, hi - lo, page, "indexed")
    counted = ck.plan(op, *arrays, counters=cnt, max_blocks=k.max_blocks, **sc)
    t = b.median_time(lambda: k.launch(counted), repeat, 1)
    b.clear_counters(cnt)
    k.launch(counted)
    rd, wr = b.read_counters(cnt)
    ref_rd, ref_wr = expected_counts(op, *arrays, base=cnt.base, shift=cnt.shift,
                                     npages=cnt.npages, mode="indexed")
    ok = bool(np.array_equal(rd, ref_rd) and np.array_equal(wr, ref_wr))
    checks.append((f"{op} (indexed operand's pages): counts == reference", ok))
    data.setdefault("kernels_indexed", {})[op] = {"counted_s": t, "plain_s": t_plain,
                                                  "pages": cnt.npages, "counts_ok": ok}
    return [f"kernel {op}, counters on its indexed operand", f"{cnt.npages} pages",
            _ms(t), _r(t / t_plain), f"as a Space counts; counts {'ok' if ok else 'WRONG'}"]


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
    (ih, idx), (_, out) = ar.take(n, np.int64), ar.take(1, np.float64)
    (bad_h, bad) = ar.take(1, np.uint32)     # the indexed kernels' skipped-index count, as ops pass it
    bad_h[:] = 0
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
        ("gather", (z, x, idx), {"bad": bad}),
        ("scatter", (z, idx, y), {"bad": bad}),
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
        if op in INDEXED_OPERAND:
            rows.append(indexed_row(b, op, arrays, sc, ar.page, repeat, t_plain, checks, data))
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
        plain = ck.plan("spmv", *arrays, max_blocks=k.max_blocks, bad=bad)
        counted = ck.plan("spmv", *arrays, counters=cnt, max_blocks=k.max_blocks, bad=bad)
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
        rows.append(indexed_row(b, "spmv", arrays, {}, ar.page, repeat, t_plain, checks, data))
    b.synchronize()
    checks.append(("indexed kernels skipped no valid index (bad == 0)", int(bad_h[0]) == 0))
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


def d2h_threads(b: Any, nbytes: int, repeat: int, data: dict[str, Any]) -> list[list[Any]]:
    """Prefetch of ``nbytes`` to the CPU split over k host threads (one stream each): the
    driver migrates towards the CPU in the calling thread, so parallel calls may scale."""
    import threading

    cp = b.cp
    region = b.allocate(nbytes)
    region.host_view()[:] = 1
    rows = []
    chunk_unit = 2 << 20
    try:
        for k in (1, 2, 4, 8):
            streams = [cp.cuda.Stream(non_blocking=True) for _ in range(k)]
            per = -(-nbytes // k // chunk_unit) * chunk_unit
            parts = [(o, min(per, nbytes - o)) for o in range(0, nbytes, per)]
            ts = []
            for _ in range(repeat):
                b.prefetch(region.ptr, nbytes, b.device)
                b.synchronize()

                def work(i: int) -> None:
                    o, n = parts[i]
                    with b._dev:
                        b.prefetch(region.ptr + o, n, "cpu", stream=streams[i])
                        streams[i].synchronize()
                threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                ts.append(time.perf_counter() - t0)
            g = nbytes / float(np.median(ts)) / 1e9
            data.setdefault("d2h_threads_gbps", {})[k] = g
            rows.append([f"migrate D2H, {k} host thread(s)", f"{g:.2f} GB/s", "", "",
                         f"{format_bytes(nbytes)} in {len(parts)} chunk(s), wall clock"])
    finally:
        b.free(region)
    return rows


def space_rows(b: Any, nbytes: int, repeat: int, pinned: dict[str, float],
               checks: list[tuple[str, bool]], data: dict[str, Any]) -> list[list[Any]]:
    """The same through a Space on this GPU: move_pages (2 MiB pages) against the pinned
    copy, and device ops (counted, synchronous launches) against the plain kernel."""
    import ccadgpu
    from ccadgpu import ops

    rows = []
    n = nbytes // 8
    with ccadgpu.Space(backend=b, device_memory=4 * nbytes, host_memory=8 * nbytes,
                       page_size="2MiB", profile=cal.base_profile_name(b.name)) as sp:
        want = np.random.default_rng(0).standard_normal(n)
        a = sp.asarray(want)
        res: dict[str, list] = {"h2d": [], "d2h": [], "h2d_model": [], "d2h_model": []}
        for _ in range(repeat):
            r1 = sp.move_pages(a, "device")
            r2 = sp.move_pages(a, "host")
            ok = r1.ok and r2.ok
            res["h2d"].append(r1.seconds)
            res["d2h"].append(r2.seconds)
            res["h2d_model"].append(r1.modeled_seconds)
            res["d2h_model"].append(r2.modeled_seconds)
        checks.append(("Space.move_pages both ways: every page moved", bool(ok)))
        checks.append(("Space.move_pages: data intact", bool(np.array_equal(np.asarray(a),
                                                                             want))))
        for d, key in (("h2d", "pinned_h2d_gbps"), ("d2h", "pinned_d2h_gbps")):
            t = float(np.median(res[d]))
            g = nbytes / t / 1e9
            data[f"space_{d}_gbps"] = g
            rows.append([f"Space.move_pages {d.upper()} ({format_bytes(nbytes)}, 2 MiB pages)",
                         f"{g:.2f} GB/s", f"{pinned[key]:.2f} GB/s pinned copy",
                         _r(g / pinned[key]),
                         f"modeled {_ms(float(np.median(res[d + '_model'])))} vs "
                         f"{_ms(t)} measured"])
        # device ops through the Space: counted, traced, synchronous
        x = sp.asarray(want, placement="device")
        y = sp.asarray(want[::-1].copy(), placement="device")
        z = sp.zeros(n, placement="device")
        idx = sp.asarray(np.random.default_rng(1).integers(0, n, n), placement="device")
        k = b.kernels
        for op, fn, plain in (
                ("triad", lambda: ops.triad(z, x, y, 3.0), lambda: k.triad(z, x, y, 3.0)),
                ("gather", lambda: ops.gather(z, x, idx),
                 lambda: k.gather(z, x, idx, check=False))):
            fn()
            ts = []
            for _ in range(repeat):
                fn()
                ts.append(sp.device.last_launch.wall_seconds)
            t = float(np.median(ts))
            base = b.median_time(plain, repeat, 1)
            data.setdefault("space_ops", {})[op] = t
            rows.append([f"ops.{op} in a Space ({format_bytes(nbytes)} operands)", _ms(t),
                         f"{_ms(base)} plain kernel" if base else "",
                         _r(t / base) if base else "n/a",
                         "whole launch (checks, counting, sync; wall) vs the plain kernel "
                         "on the same arrays (events)"])
        checks.append(("ops.triad in a Space == NumPy",
                       bool(np.allclose(np.asarray(ops.triad(z, x, y, 3.0)),
                                        want + 3.0 * want[::-1]))))
        checks.append(("ops.gather in a Space == NumPy",
                       bool(np.array_equal(np.asarray(ops.gather(z, x, idx)),
                                           want[np.asarray(idx)]))))
        rep = sp.device.reset()
        checks.append(("Space device reset: all pages back, data intact",
                       bool(sp.stats()["nr_pages_device"] == 0 and
                            np.array_equal(np.asarray(x), want))))
        rows.append(["Space device reset (verified evacuation)",
                     f"{rep.bytes / max(rep.seconds, 1e-9) / 1e9:.2f} GB/s", "", "",
                     f"{rep.pages} pages in {_ms(rep.seconds)}"])
    return rows


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

    # 3. D2H prefetch over several host threads; the Space on this GPU
    for name, fn in (("d2h threads", lambda: d2h_threads(b, nb, args.repeat, data)),
                     ("space", lambda: space_rows(b, min(cap // 8, 256 << 20), args.repeat,
                                                  meas, checks, data))):
        try:
            rows += fn()
        except Exception as exc:  # noqa: BLE001 - report and go on: one table either way
            import traceback
            traceback.print_exc()
            checks.append((f"{name}: ran", False))
            rows.append([name, "FAILED", repr(exc)[:60], "", ""])

    # 4. modeled vs measured: shipped profile for this kind of card, and the calibrated one
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
