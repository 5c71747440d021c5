"""The CPU emulation of the CUDA kernels (``emu.h``), shared by the tests.

* :func:`build` compiles the unchanged ``ccadgpu/kernels/cuda/*.cu`` against ``emu.h`` with the
  host C++ compiler; :func:`run` executes a launch plan of :mod:`ccadgpu.backends.cuda_kernels`.
* :class:`EmuBackend` is a stand-in for :class:`ccadgpu.backends.cuda.CudaBackend` with the same
  methods: "managed" memory is page-aligned host memory, advise/prefetch are checked and
  recorded (so tests can see exactly what a cuda space asks the driver for), and the device ops
  are the real :class:`~ccadgpu.backends.cuda.CudaKernels` methods with their launches run on
  the emulation.  With it, a ``Space(backend=EmuBackend(...))`` exercises the whole cuda wiring
  of Space (placement calls, migration, in-kernel counters, evacuation) on any machine.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccadgpu.backends import cuda_kernels as ck
from ccadgpu.backends.cuda import CudaKernels, _device_arg
from ccadgpu.errors import InvalidArgumentError

HERE = Path(__file__).resolve().parent
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def build(outdir: Path) -> ctypes.CDLL:
    """Compile the emulation library (cached by the sources' digest in ``outdir``)."""
    srcs = [HERE / "emu.h", HERE / "emu_kernels.cpp", *ck.source_files(),
            ck.SOURCE_DIR / ck.HEADER]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in srcs)).hexdigest()[:16]
    out = Path(outdir) / f"emu_{digest}.so"
    if not out.exists():
        cmd = [CXX, "-std=c++17", "-O1", "-pthread", "-shared", "-fPIC",
               "-Wno-unknown-pragmas", f"-I{ck.SOURCE_DIR}", "-o", str(out),
               str(HERE / "emu_kernels.cpp")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"emulation build failed:\n{r.stderr[-4000:]}"
    return ctypes.CDLL(str(out))


_CTYPES = {np.float64: ctypes.c_double, np.float32: ctypes.c_float,
           np.int64: ctypes.c_longlong, np.int32: ctypes.c_int,
           np.uint64: ctypes.c_ulonglong, np.uint32: ctypes.c_uint}


def run(lib: ctypes.CDLL, launch: ck.Launch | None) -> None:
    """Execute a plan on the emulation (numpy arrays in host memory)."""
    if launch is None:
        return
    fn = getattr(lib, "emu_" + launch.name)
    types: list = [ctypes.c_uint] * 4
    vals: list = [launch.grid[0], launch.grid[1], launch.block[0], launch.block[1]]
    for a in launch.args:
        if isinstance(a, np.ndarray):
            types.append(ctypes.c_void_p)
            vals.append(a.ctypes.data)
        elif type(a) in _CTYPES:
            types.append(_CTYPES[type(a)])
            vals.append(a.item())
        else:
            raise TypeError(f"unexpected kernel argument {a!r}")
    fn.argtypes = types
    fn.restype = ctypes.c_int
    rc = fn(*vals)
    assert rc == 0, {-1: "deadlock: a barrier or warp collective was not reached by all "
                     "threads", -2: "partial warp mask", -3: "block not whole warps"}.get(rc, rc)


@dataclass(eq=False)
class EmuRegion:
    """A "managed" range: page-aligned host memory."""
    ptr: int
    nbytes: int
    device: int
    _raw: Any = field(repr=False)
    freed: bool = False

    def host_view(self, dtype: Any = np.uint8, shape: Any = None, offset: int = 0) -> np.ndarray:
        dt = np.dtype(dtype)
        if shape is None:
            shape = ((self.nbytes - offset) // dt.itemsize,)
        n = int(np.prod(shape)) * dt.itemsize
        base = self._raw[self.ptr - self._raw.ctypes.data:][: self.nbytes]
        return base[offset: offset + n].view(dt).reshape(shape)

    device_view = host_view


class EmuKernels(CudaKernels):
    """The real op methods; launches run on the emulation."""

    def __init__(self, backend: "EmuBackend", lib: ctypes.CDLL):
        super().__init__(backend)
        self.lib = lib
        self.launches: list[str] = []

    #: resident blocks of the imitated GPU: below max_blocks, so launches are cut to one wave
    #: as on a card (CudaKernels.launch), and every kernel must stride over what is left
    RESIDENT = 3

    def launch(self, plan: ck.Launch | None) -> None:
        if plan is not None:
            self.launches.append(plan.name)
            plan = dataclasses.replace(plan, grid=ck.fit_grid(plan.grid, self.RESIDENT))
        run(self.lib, plan)

    def _reduce(self, op: str, arrays: list[Any], counters: Any) -> Any:
        acc = np.dtype(np.int64) if np.dtype(arrays[0].dtype).kind == "i" else \
            np.dtype(np.float64)
        out = np.zeros(1, acc)
        self._run(op, (out, *arrays), counters)
        return int(out[0]) if acc.kind == "i" else float(out[0])

    @property
    def max_blocks(self) -> int:
        return 4


class EmuBackend:
    """What a cuda Space needs of :class:`~ccadgpu.backends.cuda.CudaBackend`, on the CPU."""

    ALIGN = 2 << 20

    def __init__(self, lib: ctypes.CDLL, budget: int = 1 << 30):
        self.cp = np                      # what CudaKernels uses for its checks
        self._dev = contextlib.nullcontext()
        self.stream = contextlib.nullcontext()
        self.device = 0
        self.budget = budget
        self.allocated = 0
        self.calls: list[tuple[str, int, int, Any]] = []   # (what, offset, nbytes, where)
        self.regions: list[EmuRegion] = []
        self.kernels = EmuKernels(self, lib)
        self.closed = False
        self.scratch_releases = 0

    def allocate(self, nbytes: int) -> EmuRegion:
        raw = np.zeros(nbytes + self.ALIGN, np.uint8)
        ptr = raw.ctypes.data + (-raw.ctypes.data) % self.ALIGN
        r = EmuRegion(ptr, nbytes, self.device, raw)
        self.regions.append(r)
        self.allocated += nbytes
        return r

    def free(self, region: EmuRegion) -> None:
        if not region.freed:
            region.freed = True
            self.allocated -= region.nbytes

    def _where(self, ptr: int, nbytes: int) -> int:
        for r in self.regions:
            if not r.freed and r.ptr <= ptr and ptr + nbytes <= r.ptr + r.nbytes:
                return ptr - r.ptr
        raise InvalidArgumentError(f"[{ptr:#x}, +{nbytes}) is not inside a live managed region")

    def advise(self, ptr: int, nbytes: int, advice: str, device: Any) -> None:
        self.calls.append((f"advise:{advice}", self._where(ptr, nbytes), nbytes,
                           _device_arg(device)))

    def prefetch(self, ptr: int, nbytes: int, device: Any, stream: Any = None) -> None:
        self.calls.append(("prefetch", self._where(ptr, nbytes), nbytes, _device_arg(device)))

    def synchronize(self) -> None:
        pass

    def as_device_array(self, a: Any) -> np.ndarray:
        a = np.asarray(a)
        if a.nbytes:
            self._where(a.ctypes.data, a.nbytes)      # the GPU reaches managed memory only
        return a

    def new_counters(self, base: int, nbytes: int, page_size: int, mode: str = "all"
                     ) -> ck.PageCounters:
        n = max(1, -(-nbytes // page_size))
        return ck.PageCounters(np.zeros(n, np.uint64), np.zeros(n, np.uint64), base,
                               page_size.bit_length() - 1, mode)

    def clear_counters(self, c: ck.PageCounters) -> None:
        c.clear()

    def median_time(self, fn: Any, repeat: int = 5, warmup: int = 1) -> float:
        import time
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    def read_counters(self, c: ck.PageCounters) -> tuple[np.ndarray, np.ndarray]:
        return c.rd.copy(), c.wr.copy()

    def page_sums(self, ptr: int, nbytes: int, page_size: int) -> np.ndarray:
        off = self._where(ptr, nbytes)
        r = next(r for r in self.regions if not r.freed and r.ptr <= ptr < r.ptr + r.nbytes)
        return r.host_view(np.uint64, (nbytes // page_size, page_size // 8), off).sum(
            axis=1, dtype=np.uint64)

    def release_scratch(self) -> int:
        self.scratch_releases += 1
        return 0

    def close(self) -> None:
        self.closed = True

    def placement_of(self, offset: int, nbytes: int) -> Any:
        """Where the last prefetch covering all of ``[offset, offset + nbytes)`` sent it."""
        where = None
        for what, o, n, dev in self.calls:
            if what == "prefetch" and o <= offset and offset + nbytes <= o + n:
                where = dev
        return where
