"""Device kernels on managed arrays vs the same Numba kernels on plain NumPy arrays, and the cost
of access counting, in one run.

    python benchmarks/bench_kernels.py [--size 256MiB] [--repeat 9] [--page-size 64KiB]
                                       [--kernels copy,triad,gather,...] [--seed 0]

For each kernel, at ``--size`` per main array (>= 256 MiB for the recorded table), it times:

* **plain**: the Numba kernel itself (``ccadgpu.kernels.cpu``) on plain NumPy arrays, as NumPy
  allocates them (NumPy asks for transparent huge pages on large arrays).  Indexed kernels run
  with their index check on, as ``ccadgpu.ops`` runs them uncounted (counted, the page
  histogram's pass checks the indices, and the kernel runs unchecked);
* **plain 4K**: the same on plain arrays allocated without huge pages (4 KiB PTEs, as the
  managed arrays had before the arenas collapsed fresh 2 MiB chunks into huge pages, and still
  have where the kernel cannot: ``tunables.thp_collapse``);
* **raw**: the same Numba kernel on plain views of the *managed* arrays (the memory layout of
  the stand-in, none of the library's work);
* **off**: ``ccadgpu.ops.<kernel>`` on managed arrays with ``access_counters=False`` (validation,
  device fence, writer registration, launch bookkeeping, but no counting);
* **off aligned**: ``off`` on the same data in allocations made with ``tunables.cache_colouring``
  off (every array page-aligned, as before colouring was the default);
* **on**: ``off`` with counting (per-page counts, notifications, modeled time, trace record);
* **on, no manager**: ``on`` with the migration manager's per-epoch step detached (the space
  hands every epoch to the manager, which runs its policy, ``static`` by default, after each
  launch): the cost of counting alone;
* **unchecked** (indexed kernels only): *plain* with the kernel's index check off, to show
  what the check (one read of the index array, before any store) costs.

Every variant runs ``--repeat`` rounds; each round runs every variant once, in a shuffled
order, so that drift and other jobs on a noisy machine hit all of them alike.  Times are
medians; each ratio is the median over rounds of the two variants' times *in the same round*
(paired), which is steadier than a ratio of medians on a shared machine.  Ratios:
``off / plain`` (the issue's target: <= 1.05), ``off / plain 4K`` (the same against NumPy
memory without huge pages), ``off / raw`` (what the library adds on the same memory),
``aligned / plain`` (``off aligned / plain``: without cache colouring), ``on no mgr / off``
(the cost of counting; targets: <= 1.10 streaming, <= 1.5 gathers), ``on / off`` (counting
plus the manager's step, as a user gets it) and ``check`` (``plain / unchecked``).
``modeled`` is the launch's modeled time on the gh200 profile (arrays on the host, so the
device streams them over NVLink-C2C).  ``arena`` says how the space's arenas are backed
(hugetlb 2 MiB pages need ``--page-size 2MiB`` and a big enough ``vm.nr_hugepages``; with
64 KiB pages, fresh 2 MiB chunks collapsed into transparent huge pages, where the kernel has
MADV_COLLAPSE).
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import ccadgpu
from _util import machine, table

STREAMING = ("copy", "scale", "axpy", "triad", "sum", "dot", "stencil5")
INDEXED = ("gather", "scatter", "spmv_csr")


def _set_hugepage(on: bool) -> None:
    try:
        np._core.multiarray._set_madvise_hugepage(on)
    except AttributeError:  # pragma: no cover - older NumPy
        pass


def make_data(kernel: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs (never zeros) for one kernel; n = elements per main array."""
    f = lambda m: rng.random(m) + 1.0  # noqa: E731
    if kernel == "sum":
        return {"x": f(n)}
    if kernel in ("copy", "scale", "axpy", "dot"):
        return {"x": f(n), "y": f(n)}
    if kernel == "triad":
        return {"a": f(n), "b": f(n), "c": f(n)}
    if kernel == "stencil5":
        cols = 4096
        return {"inp": f(n // cols * cols).reshape(-1, cols), "out": f(n // cols * cols).reshape(-1, cols)}
    if kernel in ("gather", "scatter"):
        return {"src": f(n), "idx": rng.integers(0, n, n), "out": f(n)}
    if kernel == "spmv_csr":
        nnz = n // 2                       # data + indices = one main array's bytes
        per_row = 8
        nrows = nnz // per_row
        return {"indptr": np.arange(0, nrows * per_row + 1, per_row, dtype=np.int64),
                "indices": rng.integers(0, n, nrows * per_row), "data": f(nrows * per_row),
                "x": f(n), "y": f(nrows)}
    raise ValueError(kernel)


def plain_call(kernel: str, d: dict[str, np.ndarray], K: Any, nch: int,
               check: bool = True) -> Callable[[], Any]:
    """The bare Numba kernel on arrays ``d`` (indexed kernels with their
    index check, as ``ccadgpu.ops`` runs them, unless ``check`` is false)."""
    if kernel == "copy":
        return lambda: K.copy(d["y"], d["x"])
    if kernel == "scale":
        return lambda: K.scale(d["y"], d["x"], 2.5)
    if kernel == "axpy":
        return lambda: K.axpy(d["y"], 1e-9, d["x"])
    if kernel == "triad":
        return lambda: K.triad(d["a"], d["b"], d["c"], 3.0)
    if kernel == "sum":
        return lambda: K.sum_float(d["x"])
    if kernel == "dot":
        return lambda: K.dot_float(d["x"], d["y"])
    if kernel == "stencil5":
        return lambda: K.stencil5(d["out"], d["inp"], 0.5, 0.125)
    if kernel == "gather":
        return lambda: K.gather(d["out"], d["src"], d["idx"], check, nch)
    if kernel == "scatter":
        return lambda: K.scatter(d["src"], d["idx"], d["out"], check, nch)
    if kernel == "spmv_csr":
        return lambda: K.spmv_csr(d["y"], d["indptr"], d["indices"], d["data"], d["x"],
                                  check, nch)
    raise ValueError(kernel)


def ops_call(kernel: str, d: dict[str, np.ndarray]) -> Callable[[], Any]:
    ops = ccadgpu.ops
    if kernel == "copy":
        return lambda: ops.copy(d["y"], d["x"])
    if kernel == "scale":
        return lambda: ops.scale(d["y"], d["x"], 2.5)
    if kernel == "axpy":
        return lambda: ops.axpy(1e-9, d["x"], d["y"])
    if kernel == "triad":
        return lambda: ops.triad(d["a"], d["b"], d["c"], 3.0)
    if kernel == "sum":
        return lambda: ops.sum(d["x"])
    if kernel == "dot":
        return lambda: ops.dot(d["x"], d["y"])
    if kernel == "stencil5":
        return lambda: ops.stencil5(d["out"], d["inp"], 0.5, 0.125)
    if kernel == "gather":
        return lambda: ops.gather(d["out"], d["src"], d["idx"])
    if kernel == "scatter":
        return lambda: ops.scatter(d["src"], d["idx"], d["out"])
    if kernel == "spmv_csr":
        return lambda: ops.spmv_csr(d["y"], d["indptr"], d["indices"], d["data"], d["x"])
    raise ValueError(kernel)


def bench_kernel(kernel: str, n: int, page: int, repeat: int, rng: np.random.Generator,
                 K: Any, nch: int, order: random.Random) -> tuple[list[object], str]:
    base = make_data(kernel, n, rng)
    nbytes = sum(a.nbytes for a in base.values())
    plain = {k: v.copy() for k, v in base.items()}
    _set_hugepage(False)
    plain4k = {k: np.empty_like(v) for k, v in base.items()}
    for k in plain4k:
        plain4k[k][...] = base[k]
    _set_hugepage(True)
    host = 3 * nbytes + (128 << 20)
    host = -(-host // page) * page
    with ccadgpu.Space(device_memory=max(page, 64 << 20), host_memory=host, page_size=page,
                       profile="gh200") as sp:
        managed = {k: sp.asarray(v, name=k) for k, v in base.items()}
        del base
        gc.collect()
        raw = {k: v.view(np.ndarray) for k, v in managed.items()}
        sp.tunables.cache_colouring = False      # the same data, page-aligned allocations
        aligned = {k: sp.asarray(v.view(np.ndarray), name=f"{k}-aligned")
                   for k, v in managed.items()}
        sp.tunables.cache_colouring = True
        node = sp.nodes[0]
        arena = node.backing.split(":")[0].split(" (")[0]
        if node.collapsed_chunks:
            arena += " + fresh 2 MiB chunks collapsed into huge pages"
        calls = {"plain": plain_call(kernel, plain, K, nch),
                 "plain4k": plain_call(kernel, plain4k, K, nch),
                 "raw": plain_call(kernel, raw, K, nch),
                 "off": ops_call(kernel, managed), "aligned": ops_call(kernel, aligned),
                 "on": ops_call(kernel, managed), "onnm": ops_call(kernel, managed)}
        if kernel in INDEXED:
            calls["unchecked"] = plain_call(kernel, plain, K, nch, check=False)

        def run(name: str) -> float:
            sp.tunables.access_counters = name in ("on", "onnm")
            detach = name == "onnm" and hasattr(sp, "_run_manager")
            if detach:      # the manager's hooks in Space; restored right after
                sp._run_manager = lambda: None
                sp._queue_epoch = lambda *a, **k: None
            try:
                t = time.perf_counter()
                calls[name]()
                return time.perf_counter() - t
            finally:
                if detach:
                    del sp._run_manager, sp._queue_epoch

        for name in calls:                 # warm up: compile / load, first-touch faults
            run(name)
        times: dict[str, list[float]] = {k: [] for k in calls}
        names = list(calls)
        for _ in range(repeat):
            order.shuffle(names)
            for name in names:
                times[name].append(run(name))
        sp.tunables.access_counters = True
        calls["on"]()
        modeled = sp.device.last_launch.modeled_seconds
        sp.trace.clear()
    med = {k: statistics.median(v) for k, v in times.items()}
    ms = lambda k: f"{med[k] * 1e3:.1f}"  # noqa: E731

    def ratio(a: str, b: str) -> str:     # median of the per-round (paired) ratios
        if a not in times or b not in times:
            return "-"
        return f"{statistics.median(x / y for x, y in zip(times[a], times[b])):.2f}"
    return [kernel, ccadgpu.format_bytes(nbytes), ms("plain"), ms("plain4k"), ms("raw"),
            ms("off"), ms("aligned"), ms("on"), ms("onnm"),
            ratio("off", "plain"), ratio("off", "plain4k"), ratio("off", "raw"),
            ratio("aligned", "plain"), ratio("onnm", "off"), ratio("on", "off"),
            ratio("plain", "unchecked"), f"{modeled * 1e3:.2f}"], arena


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256MiB", help="bytes per main array (default 256MiB)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--page-size", default="64KiB")
    ap.add_argument("--kernels", default=",".join(STREAMING + INDEXED))
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffled run order")
    args = ap.parse_args(argv)
    size = ccadgpu.parse_size(args.size, "--size")
    page = ccadgpu.parse_size(args.page_size, "--page-size")
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in STREAMING + INDEXED]
    if bad:
        ap.error(f"unknown kernels {bad}; choose from {', '.join(STREAMING + INDEXED)}")
    import numba

    from ccadgpu.kernels import cpu as K
    nch = numba.get_num_threads()
    print(f"# bench_kernels: {ccadgpu.format_bytes(size)} per main array, page "
          f"{ccadgpu.format_bytes(page)}, median of {args.repeat} (rounds in shuffled order), "
          f"{machine()}, numba {numba.__version__}, {nch} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    rng = np.random.default_rng(2026)
    order = random.Random(args.seed)
    rows, arenas = [], set()
    for k in kernels:
        row, arena = bench_kernel(k, size // 8, page, args.repeat, rng, K, nch, order)
        rows.append(row)
        arenas.add(arena)
        print(f"  {k} done", file=sys.stderr, flush=True)
    print(table(["kernel", "data", "plain", "plain 4K", "raw", "off", "off aligned", "on",
                 "on no mgr", "off/plain", "off/plain 4K", "off/raw", "aligned/plain",
                 "on no mgr/off", "on/off", "check", "modeled (gh200)"], rows))
    print(f"\n(times in ms, medians; ratios: medians of per-round ratios; arena: "
          f"{', '.join(sorted(arenas))})")
    print(f"\nthreading layer: {numba.threading_layer()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
