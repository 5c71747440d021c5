"""Page moves by remapping, with the CUDA virtual memory management (VMM) API: the mechanism a
redesign of the cuda backend would use, measured against the pinned copy and the managed
prefetch of the same bytes in the same run.

Managed-memory moves to the host run at ~0.2x the pinned copy on a PCIe H100 because the
driver's own remap of the host side costs as much as the whole move (``gpu_d2h.py``).  Here the
space owns both sides: one virtual range (the space's addresses) whose 2 MiB chunks are backed
either by device frames (``cuMemCreate`` on the GPU) or by pinned host frames (``cuMemCreate``
on a host NUMA node, CPU access granted with ``cuMemSetAccess``).  A move copies the chunks into
free frames of the other node (mapped in a second, staging range) with one DMA, then swaps the
mappings: ``cuMemUnmap`` / ``cuMemMap`` per chunk, one ``cuMemSetAccess`` per range.  The addresses
do not change; the frames under them do.

After every move the data is checked on the GPU through the space's addresses, a kernel read
shows which memory is under them (HBM speed or link speed), and at the end the CPU reads the
host-backed range through the same addresses.  Run on a lent GPU machine::

    python benchmarks/gpu_vmm.py [--size 1GiB] [--repeat 5]

Not part of the cuda backend: a measured answer to "what would the redesign reach".
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import table  # noqa: E402

from ccadgpu.units import format_bytes, parse_size  # noqa: E402

_LOC_DEVICE, _LOC_HOST, _LOC_HOST_NUMA = 1, 2, 3
_ALLOC_PINNED = 1
_ACCESS_RW = 3
_GRAN_MIN = 0


class _Loc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int),
                ("location", _Loc), ("win32HandleMetaData", ctypes.c_void_p),
                ("allocFlags", _AllocFlags)]


class _Access(ctypes.Structure):
    _fields_ = [("location", _Loc), ("flags", ctypes.c_int)]


class Vmm:
    """The few VMM entry points of ``libcuda`` the probe needs, each checked."""

    def __init__(self) -> None:
        from ccadgpu.backends import cuda as cb
        self.drv = cb._drv()
        lib = self.drv.lib
        u64, sz, ull = ctypes.c_uint64, ctypes.c_size_t, ctypes.c_ulonglong
        sig = {
            "cuMemGetAllocationGranularity": [ctypes.POINTER(sz), ctypes.POINTER(_Prop),
                                              ctypes.c_int],
            "cuMemAddressReserve": [ctypes.POINTER(u64), sz, sz, u64, ull],
            "cuMemAddressFree": [u64, sz],
            "cuMemCreate": [ctypes.POINTER(u64), sz, ctypes.POINTER(_Prop), ull],
            "cuMemRelease": [u64],
            "cuMemMap": [u64, sz, sz, u64, ull],
            "cuMemUnmap": [u64, sz],
            "cuMemSetAccess": [u64, sz, ctypes.POINTER(_Access), sz],
        }
        self.f = {}
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
            self.f[name] = fn

    def call(self, name: str, *args) -> None:
        self.drv.check(self.f[name](*args), name)

    @staticmethod
    def prop(loc_type: int, loc_id: int) -> _Prop:
        p = _Prop()
        p.type, p.location = _ALLOC_PINNED, _Loc(loc_type, loc_id)
        return p

    def granularity(self, p: _Prop) -> int:
        g = ctypes.c_size_t()
        self.call("cuMemGetAllocationGranularity", ctypes.byref(g), ctypes.byref(p), _GRAN_MIN)
        return g.value

    def reserve(self, nbytes: int, align: int) -> int:
        ptr = ctypes.c_uint64()
        self.call("cuMemAddressReserve", ctypes.byref(ptr), nbytes, align, 0, 0)
        return ptr.value

    def create(self, nbytes: int, p: _Prop) -> int:
        h = ctypes.c_uint64()
        self.call("cuMemCreate", ctypes.byref(h), nbytes, ctypes.byref(p), 0)
        return h.value

    def map_chunks(self, base: int, chunk: int, handles: list[int]) -> None:
        for i, h in enumerate(handles):
            self.call("cuMemMap", base + i * chunk, chunk, 0, h, 0)

    def unmap_chunks(self, base: int, chunk: int, n: int) -> None:
        for i in range(n):
            self.call("cuMemUnmap", base + i * chunk, chunk)

    unmap_mode = "one call per range"

    def unmap_range(self, base: int, chunk: int, n: int) -> None:
        """One ``cuMemUnmap`` over ``n`` adjacent mappings (one TLB invalidation), or one per
        chunk where the driver refuses that."""
        if self.unmap_mode == "one call per range":
            if self.f["cuMemUnmap"](base, n * chunk) == 0:
                return
            self.unmap_mode = "one call per chunk (the driver refused a range)"
        self.unmap_chunks(base, chunk, n)

    def release_all(self, space: int, stage: int, nbytes: int, chunk: int,
                    frames: list[int], extra: int | None = None) -> None:
        ranges = [space, stage] + ([extra] if extra is not None else [])
        for base in ranges:
            self.unmap_range(base, chunk, nbytes // chunk)
        for h in frames:
            self.call("cuMemRelease", h)
        for base in ranges:
            self.call("cuMemAddressFree", base, nbytes)

    def set_access(self, base: int, nbytes: int, locs: list[_Loc]) -> None:
        arr = (_Access * len(locs))(*[_Access(loc, _ACCESS_RW) for loc in locs])
        self.call("cuMemSetAccess", base, nbytes, arr, len(locs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numa", type=int, default=0, help="host NUMA node of the host frames")
    ap.add_argument("--batch", default="8MiB,32MiB,128MiB",
                    help="bytes per DMA in the pipelined moves (one batch is always measured)")
    ap.add_argument("--windows", action="store_true",
                    help="keep every frame mapped in a per-node window as well, so a move "
                         "remaps only the space's range (a frame may be mapped twice)")
    ap.add_argument("--no-cpu-access", action="store_true",
                    help="map the host frames for the GPU only (isolates the CPU page-table "
                         "cost of a move; the CPU check at the end is skipped)")
    args = ap.parse_args(argv)
    import cupy as cp

    rt = cp.cuda.runtime
    dev_id = 0
    cp.cuda.Device(dev_id).use()
    cp.zeros(1)                                     # the primary context, current here
    name = rt.getDeviceProperties(dev_id)["name"].decode()
    v = Vmm()
    pdev, phost = v.prop(_LOC_DEVICE, dev_id), v.prop(_LOC_HOST_NUMA, args.numa)
    gran = max(v.granularity(pdev), v.granularity(phost))
    chunk = max(gran, 2 << 20)
    nbytes = max(chunk, parse_size(args.size, "--size") // chunk * chunk)
    n = nbytes // chunk
    gpu, cpu = _Loc(_LOC_DEVICE, dev_id), _Loc(_LOC_HOST_NUMA, args.numa)
    host_locs = [gpu] if args.no_cpu_access else [gpu, cpu]
    print(f"GPU: {name}; {format_bytes(nbytes)} in {n} chunks of {format_bytes(chunk)} "
          f"(granularity {format_bytes(gran)}); host frames on NUMA node {args.numa}",
          flush=True)

    space = v.reserve(nbytes, chunk)                # the space's addresses: never change
    stage = v.reserve(nbytes, chunk)                # where free frames of the other node sit
    t = time.perf_counter()
    dframes = [v.create(chunk, pdev) for _ in range(n)]
    t_cdev = time.perf_counter() - t
    t = time.perf_counter()
    hframes = [v.create(chunk, phost) for _ in range(n)]
    t_chost = time.perf_counter() - t
    print(f"created {n} device frames in {t_cdev * 1e3:.0f} ms, {n} pinned host frames in "
          f"{t_chost * 1e3:.0f} ms", flush=True)
    v.map_chunks(space, chunk, dframes)
    v.map_chunks(stage, chunk, hframes)
    v.set_access(space, nbytes, [gpu])
    v.set_access(stage, nbytes, host_locs)
    windows = {}                                    # node -> a range where all its frames sit
    if args.windows:
        windows = {"dev": v.reserve(nbytes, chunk), "host": stage}
        v.map_chunks(windows["dev"], chunk, dframes)
        v.set_access(windows["dev"], nbytes, [gpu])
    on_device = True                                # what backs the space's range now

    def view(ptr: int) -> "cp.ndarray":
        mem = cp.cuda.UnownedMemory(ptr, nbytes, None, dev_id)
        return cp.ndarray(nbytes // 8, cp.uint64, cp.cuda.MemoryPointer(mem, 0))

    sv = view(space)
    fill = cp.ElementwiseKernel("uint64 s", "uint64 y",
                                "y = (unsigned long long)i * 2654435761ull + s", "ccad_vmm_fill")
    idx = cp.asarray(np.linspace(0, nbytes // 8 - 1, 1 << 16).astype(np.int64))

    def data_ok(seed: int) -> bool:
        want = idx.astype(cp.uint64) * cp.uint64(2654435761) + cp.uint64(seed)
        return bool(cp.array_equal(sv[idx], want))

    def read_gbps() -> float:
        rt.deviceSynchronize()
        t = time.perf_counter()
        sv.sum()
        rt.deviceSynchronize()
        return nbytes / (time.perf_counter() - t) / 1e9

    stream = cp.cuda.Stream(non_blocking=True)

    def move(batch: int) -> dict[str, float]:
        """Copy the space's chunks into the staged frames of the other node, ``batch`` chunks
        per DMA, all enqueued at once; as each batch lands, swap its two mappings (the remap
        of one batch overlaps the copies of the next).  Returns seconds: total and per phase
        (wait for the copy, unmap, map, set access)."""
        nonlocal on_device
        rt.deviceSynchronize()
        t0 = time.perf_counter()
        landed = []
        dst = (windows["host"] if on_device else windows["dev"]) if windows else stage
        for b0 in range(0, n, batch):
            nb = min(batch, n - b0)
            rt.memcpyAsync(dst + b0 * chunk, space + b0 * chunk, nb * chunk, 4, stream.ptr)
            ev = cp.cuda.Event(disable_timing=True)
            ev.record(stream)
            landed.append((b0, nb, ev))
        now, spare = (hframes, dframes) if on_device else (dframes, hframes)
        space_locs, stage_locs = (host_locs, [gpu]) if on_device else ([gpu], host_locs)
        ph = dict.fromkeys(("wait", "unmap", "map", "access"), 0.0)
        for b0, nb, ev in landed:
            ta = time.perf_counter()
            ev.synchronize()
            tb = time.perf_counter()
            v.unmap_range(space + b0 * chunk, chunk, nb)
            if not windows:
                v.unmap_range(stage + b0 * chunk, chunk, nb)
            tc = time.perf_counter()
            v.map_chunks(space + b0 * chunk, chunk, now[b0:b0 + nb])
            if not windows:
                v.map_chunks(stage + b0 * chunk, chunk, spare[b0:b0 + nb])
            td = time.perf_counter()
            v.set_access(space + b0 * chunk, nb * chunk, space_locs)
            if not windows:
                v.set_access(stage + b0 * chunk, nb * chunk, stage_locs)
            te = time.perf_counter()
            for k, dt in zip(ph, (tb - ta, tc - tb, td - tc, te - td)):
                ph[k] += dt
        rt.deviceSynchronize()
        ph["total"] = time.perf_counter() - t0
        on_device = not on_device
        return ph

    # baselines in the same run: pinned copies and managed prefetch of the same bytes
    dbuf = cp.empty(nbytes // 8, cp.uint64)
    pin = cp.cuda.alloc_pinned_memory(nbytes)
    managed = cp.cuda.malloc_managed(nbytes)
    mview = cp.ndarray(nbytes // 8, cp.uint64, managed)

    def timed(fn) -> float:
        ts = []
        for r in range(args.repeat + 1):
            rt.deviceSynchronize()
            t = time.perf_counter()
            fn()
            rt.deviceSynchronize()
            if r:
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    t_pin_d2h = timed(lambda: rt.memcpyAsync(pin.ptr, dbuf.data.ptr, nbytes, 2, 0))
    t_pin_h2d = timed(lambda: rt.memcpyAsync(dbuf.data.ptr, pin.ptr, nbytes, 1, 0))

    def managed_move(to_host: bool) -> float:
        """Prefetch of the whole managed range, its pages filled on the device first (to the
        host) or moved home first (to the device)."""
        ts = []
        for r in range(args.repeat + 1):
            v.drv.prefetch(managed.ptr, nbytes, dev_id, 0)
            fill(np.uint64(r), mview)
            if not to_host:
                v.drv.prefetch(managed.ptr, nbytes, -1, 0)
            rt.deviceSynchronize()
            t = time.perf_counter()
            v.drv.prefetch(managed.ptr, nbytes, -1 if to_host else dev_id, 0)
            rt.deviceSynchronize()
            if r:
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    t_man_d2h = managed_move(True)
    t_man_h2d = managed_move(False)

    batches = sorted({n, *(max(1, parse_size(x, "--batch") // chunk)
                           for x in args.batch.split(",") if x)}, reverse=True)
    ok = True
    seed = 1
    rows = []
    for direction, t_pin, t_man in (("d2h", t_pin_d2h, t_man_d2h),
                                    ("h2d", t_pin_h2d, t_man_h2d)):
        label = "D2H" if direction == "d2h" else "H2D"
        gb = lambda s: f"{nbytes / s / 1e9:.1f} GB/s"  # noqa: E731
        rows.append([f"{label} pinned copy (baseline)", gb(t_pin), "1.00", "", ""])
        rows.append([f"{label} managed prefetch", gb(t_man), f"{t_pin / t_man:.2f}", "", ""])
        for batch in batches:
            res, reads = [], []
            for r in range(args.repeat + 1):
                if (direction == "d2h") != on_device:     # put the range where the move starts
                    move(n)
                seed += 1
                fill(np.uint64(seed), sv)
                ph = move(batch)
                ok &= data_ok(seed)
                reads.append(read_gbps())
                if r:                                    # the first is a warm-up
                    res.append(ph)
            med = {k: statistics.median(x[k] for x in res) for k in res[0]}
            how = "one batch" if batch == n else f"{format_bytes(batch * chunk)} batches"
            rows.append([f"{label} VMM move, {how}", gb(med["total"]),
                         f"{t_pin / med['total']:.2f}",
                         ", ".join(f"{k} {med[k] * 1e3:.1f}" for k in
                                   ("wait", "unmap", "map", "access")) + " ms",
                         f"{statistics.median(reads):.0f} GB/s"])
    print(f"median of {args.repeat}; GB/s = 1e9 B/s; "
          f"{'frames in per-node windows, only the space remapped; ' if windows else ''}"
          f"host frames mapped for "
          f"{'the GPU only' if args.no_cpu_access else 'the GPU and the CPU'}; "
          f"unmap {v.unmap_mode}; data checked after "
          f"every move: {'ok' if ok else 'WRONG'}")
    print(table(["move", "bandwidth", "vs pinned", "remap phases (CPU side)",
                 "GPU read after the move"], rows), flush=True)

    if args.no_cpu_access:
        v.release_all(space, stage, nbytes, chunk, dframes + hframes, windows.get("dev"))
        return 0 if ok else 1
    # The CPU through the space's addresses: the last move left the range on the device, so
    # one more move puts it on the host first.  A fault here kills the process (after the table).
    if on_device:
        seed += 1
        fill(np.uint64(seed), sv)
        move(n)
    rt.deviceSynchronize()
    host = np.ctypeslib.as_array((ctypes.c_uint64 * (nbytes // 8)).from_address(space))
    hi = cp.asnumpy(idx)
    want = hi.astype(np.uint64) * np.uint64(2654435761) + np.uint64(seed)
    cpu_ok = bool(np.array_equal(host[hi], want))
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        s = int(host.sum(dtype=np.uint64))
        ts.append(time.perf_counter() - t)
    host[0] = 7                                     # a CPU store, then the GPU reads it
    gpu_sees = int(sv[0].get()) == 7
    print(f"CPU through the space's addresses (host-backed): data {'ok' if cpu_ok else 'WRONG'},"
          f" read {nbytes / statistics.median(ts) / 1e9:.1f} GB/s (one thread, checksum "
          f"{s % 1000}), a CPU store seen by the GPU: {gpu_sees}", flush=True)

    v.release_all(space, stage, nbytes, chunk, dframes + hframes, windows.get("dev"))
    return 0 if ok and cpu_ok and gpu_sees else 1


if __name__ == "__main__":
    sys.exit(main())
