"""The ``cuda`` backend: the emulated device's memory is a real GPU's, through CuPy.

* **Memory**: managed (unified) allocations, ``cudaMallocManaged`` through
  ``cupy.cuda.malloc_managed``: one address for the CPU and the GPU.  :class:`ManagedRegion`
  gives a zero-copy NumPy view (the CPU's access, through the same address) and a zero-copy
  CuPy view (the GPU's).  The backend never allocates more managed memory than the GPU has
  free (less a safety margin): the emulated device's capacity is the manager's business and
  may be far smaller than the card, but the pages must always fit on it.
* **Placement**: ``cudaMemAdvise`` (preferred location, accessed-by, read-mostly) and
  ``cudaMemPrefetchAsync`` on the backend's stream (:meth:`CudaBackend.advise`,
  :meth:`CudaBackend.prefetch`).  CuPy's runtime wrappers changed with CUDA 13 (the runtime now
  takes a ``cudaMemLocation``; CuPy's ``memPrefetchAsync`` grew a ``flags`` argument); both
  shapes are tried, and the CUDA driver API (``libcuda``, through ctypes) is the fallback.
  :meth:`CudaBackend.range_attribute` reads ``cuMemRangeGetAttribute`` (CuPy does not wrap it).
* **Kernels**: :class:`CudaKernels` compiles ``ccadgpu/kernels/cuda/*.cu`` with
  ``cupy.RawModule`` (NVRTC; cached per process and in CuPy's on-disk cache) and launches the
  plans of :mod:`ccadgpu.backends.cuda_kernels` on the backend's stream, plain or counted.
* **Timing**: :meth:`CudaBackend.time_with_events` (CUDA events on the stream).
* **Reset** (:meth:`CudaBackend.reset`) is the *emulated* device's: drop the device-side
  advice, prefetch every managed byte to the CPU, release the stream and the device scratch
  memory, and bring them back.  It never resets, reconfigures or re-clocks the physical GPU
  (no ``cudaDeviceReset``, no NVML writes, no MIG changes), so other users of the card and
  CuPy arrays outside the backend are untouched.

Importing this module does not import CuPy; the first :class:`CudaBackend` does, and raises
:class:`~ccadgpu.backends.BackendUnavailableError` (with the reason and how to install) when no
usable GPU is there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import enum
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CapacityError, CcadError, InvalidArgumentError, index_changed
from . import BackendUnavailableError, INSTALL_HINT, probe_cuda
from . import cuda_kernels as ck
from .cuda_kernels import Launch, PageCounters

__all__ = ["CudaBackend", "CudaKernels", "ManagedRegion", "Advice", "RangeAttribute",
           "CudaError", "ResetReport", "CPU", "cupy_module"]

#: Device id of the CPU in advise/prefetch (``cudaCpuDeviceId``).
CPU = -1
_INVALID_DEVICE = -2          # cudaInvalidDeviceId: "no value / not the same over the range"

# cudaMemoryType (pointer attributes)
_MEMTYPE_DEVICE, _MEMTYPE_MANAGED = 2, 3


class CudaError(CcadError, RuntimeError):
    """A CUDA call failed; the message names the call and CUDA's error."""


class Advice(enum.IntEnum):
    """``cudaMemoryAdvise`` values (identical to the driver's ``CUmem_advise``)."""
    SET_READ_MOSTLY = 1
    UNSET_READ_MOSTLY = 2
    SET_PREFERRED_LOCATION = 3
    UNSET_PREFERRED_LOCATION = 4
    SET_ACCESSED_BY = 5
    UNSET_ACCESSED_BY = 6


class RangeAttribute(enum.IntEnum):
    """``CUmem_range_attribute`` values that hold one device id (or a flag)."""
    READ_MOSTLY = 1
    PREFERRED_LOCATION = 2
    ACCESSED_BY = 3            # a list of device ids
    LAST_PREFETCH_LOCATION = 4


_ADVICE_NAMES = {"read_mostly": Advice.SET_READ_MOSTLY,
                 "unset_read_mostly": Advice.UNSET_READ_MOSTLY,
                 "preferred_location": Advice.SET_PREFERRED_LOCATION,
                 "unset_preferred_location": Advice.UNSET_PREFERRED_LOCATION,
                 "accessed_by": Advice.SET_ACCESSED_BY,
                 "unset_accessed_by": Advice.UNSET_ACCESSED_BY}


def cupy_module() -> Any:
    """CuPy, imported now; :class:`BackendUnavailableError` (with the probe's reason and the
    install hint) if the cuda backend cannot run here."""
    probe = probe_cuda()
    if not probe.usable:
        raise BackendUnavailableError(f"the cuda backend cannot run here: {probe.reason}. "
                                      f"To use a GPU, {INSTALL_HINT}.")
    import cupy
    return cupy


# -- the driver API, for what CuPy does not wrap (or wraps differently across versions) --------

class _CUmemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


_LOC_DEVICE, _LOC_HOST = 1, 2


class _Driver:
    """``libcuda`` through ctypes: advise, prefetch and range attributes.  Uses the
    ``cudaMemLocation`` (``_v2``) entry points where the driver has them (CUDA 12.2+) and the
    device-id ones otherwise; both are exported by current drivers."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("cuda") or "libcuda.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            lib = ctypes.CDLL("libcuda.so.1")
        self.lib = lib
        u64, sz, vp, c_int, c_uint = (ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_uint)
        self.advise_v2 = getattr(lib, "cuMemAdvise_v2", None)
        if self.advise_v2 is not None:
            self.advise_v2.argtypes = [u64, sz, c_int, _CUmemLocation]
        self.advise_v1 = getattr(lib, "cuMemAdvise", None)
        if self.advise_v1 is not None:
            self.advise_v1.argtypes = [u64, sz, c_int, c_int]
        self.prefetch_v2 = getattr(lib, "cuMemPrefetchAsync_v2", None)
        if self.prefetch_v2 is not None:
            self.prefetch_v2.argtypes = [u64, sz, _CUmemLocation, c_uint, vp]
        self.prefetch_v1 = getattr(lib, "cuMemPrefetchAsync", None)
        if self.prefetch_v1 is not None:
            self.prefetch_v1.argtypes = [u64, sz, c_int, vp]
        # CUDA 13: remap managed ranges to a location without moving their contents
        self.discard_prefetch = getattr(lib, "cuMemDiscardAndPrefetchBatchAsync", None)
        if self.discard_prefetch is not None:
            self.discard_prefetch.argtypes = [
                ctypes.POINTER(u64), ctypes.POINTER(sz), sz, ctypes.POINTER(_CUmemLocation),
                ctypes.POINTER(sz), sz, ctypes.c_ulonglong, vp]
        self.range_attr = lib.cuMemRangeGetAttribute
        self.range_attr.argtypes = [vp, sz, c_int, u64, sz]
        for f in (self.advise_v2, self.advise_v1, self.prefetch_v2, self.prefetch_v1,
                  self.discard_prefetch, self.range_attr):
            if f is not None:
                f.restype = c_int
        self.get_name = lib.cuGetErrorName
        self.get_name.argtypes = [c_int, ctypes.POINTER(ctypes.c_char_p)]
        self.get_name.restype = c_int

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            s = ctypes.c_char_p()
            self.get_name(rc, ctypes.byref(s))
            name = s.value.decode() if s.value else f"CUresult {rc}"
            raise CudaError(f"{what} failed: {name}")

    @staticmethod
    def _loc(device: int) -> _CUmemLocation:
        return _CUmemLocation(_LOC_HOST, 0) if device < 0 else _CUmemLocation(_LOC_DEVICE, device)

    def advise(self, ptr: int, nbytes: int, advice: int, device: int) -> None:
        if self.advise_v2 is not None:
            self.check(self.advise_v2(ptr, nbytes, advice, self._loc(device)), "cuMemAdvise_v2")
        elif self.advise_v1 is not None:
            self.check(self.advise_v1(ptr, nbytes, advice, device), "cuMemAdvise")
        else:
            raise CudaError("the CUDA driver exports no cuMemAdvise")

    def prefetch(self, ptr: int, nbytes: int, device: int, stream: int) -> None:
        if self.prefetch_v2 is not None:
            self.check(self.prefetch_v2(ptr, nbytes, self._loc(device), 0, stream),
                       "cuMemPrefetchAsync_v2")
        elif self.prefetch_v1 is not None:
            self.check(self.prefetch_v1(ptr, nbytes, device, stream), "cuMemPrefetchAsync")
        else:
            raise CudaError("the CUDA driver exports no cuMemPrefetchAsync")

    @property
    def can_discard(self) -> bool:
        return self.discard_prefetch is not None

    def discard_prefetch_batch(self, ranges: Sequence[tuple[int, int]], device: int,
                               stream: int) -> None:
        """``cuMemDiscardAndPrefetchBatchAsync``: the ranges' pages are placed on ``device``
        and their contents become undefined (nothing is copied)."""
        if self.discard_prefetch is None:
            raise CudaError("the CUDA driver exports no cuMemDiscardAndPrefetchBatchAsync "
                            "(CUDA 13+ drivers)")
        k = len(ranges)
        ptrs = (ctypes.c_uint64 * k)(*[int(p) for p, _ in ranges])
        sizes = (ctypes.c_size_t * k)(*[int(n) for _, n in ranges])
        locs = (_CUmemLocation * 1)(self._loc(device))
        first = (ctypes.c_size_t * 1)(0)
        self.check(self.discard_prefetch(ptrs, sizes, k, locs, first, 1, 0, stream),
                   "cuMemDiscardAndPrefetchBatchAsync")

    def attribute(self, ptr: int, nbytes: int, attr: int, count: int = 1) -> list[int]:
        buf = (ctypes.c_int * count)()
        self.check(self.range_attr(ctypes.cast(buf, ctypes.c_void_p), 4 * count, attr, ptr,
                                   nbytes), "cuMemRangeGetAttribute")
        return list(buf)


_driver: _Driver | None = None
_driver_lock = threading.Lock()


def _drv() -> _Driver:
    global _driver
    with _driver_lock:
        if _driver is None:
            try:
                _driver = _Driver()
            except (OSError, AttributeError) as exc:
                raise CudaError(f"cannot load the CUDA driver library (libcuda): {exc}") from exc
        return _driver


# -- managed memory ----------------------------------------------------------------------------

class _HostWindow:
    """Exposes a managed range to NumPy through ``__array_interface__`` and keeps the CuPy
    allocation alive for as long as any NumPy view of it lives."""

    def __init__(self, ptr: int, nbytes: int, owner: Any):
        self.owner = owner
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1",
                                    "data": (ptr, False), "version": 3}


@dataclass(eq=False)
class ManagedRegion:
    """One managed allocation: ``nbytes`` at ``ptr``, the same address on CPU and GPU.

    Views share the memory (zero copy) and keep it alive; :meth:`CudaBackend.free` releases the
    backend's reference, the memory goes when the last view does."""
    ptr: int
    nbytes: int
    device: int
    _mem: Any = field(repr=False)            # the CuPy MemoryPointer that owns the allocation
    freed: bool = False

    def _check(self, dtype: Any, shape: Any, offset: int) -> tuple[np.dtype, tuple[int, ...], int]:
        if self.freed:
            raise InvalidArgumentError("the managed region was freed")
        dt = np.dtype(dtype)
        if shape is None:
            shape = ((self.nbytes - offset) // dt.itemsize,)
        elif isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if offset < 0 or offset % max(dt.alignment, 1) or offset + n > self.nbytes or \
                any(s < 0 for s in shape):
            raise InvalidArgumentError(f"view of {shape} {dt} at offset {offset} does not fit "
                                       f"the {self.nbytes}-byte region (or is misaligned)")
        return dt, shape, n

    def host_view(self, dtype: Any = np.uint8, shape: Any = None, offset: int = 0) -> np.ndarray:
        """A NumPy array over ``[offset, offset + size)``: the CPU's zero-copy access to the
        same address (pages migrate or are read remotely as the driver decides)."""
        dt, shape, n = self._check(dtype, shape, offset)
        # the view owns the CuPy allocation itself (not this record): freeing the region
        # drops the backend's reference only, never memory a view still points into
        raw = np.asarray(_HostWindow(self.ptr, self.nbytes, self._mem))
        return raw[offset:offset + n].view(dt).reshape(shape)

    def device_view(self, dtype: Any = np.uint8, shape: Any = None, offset: int = 0) -> Any:
        """A CuPy array over the same bytes (zero copy)."""
        cp = cupy_module()
        dt, shape, _n = self._check(dtype, shape, offset)
        mem = cp.cuda.UnownedMemory(self.ptr, self.nbytes, self._mem, self.device)
        return cp.ndarray(shape, dt, cp.cuda.MemoryPointer(mem, offset))

    def address(self, offset: int = 0) -> int:
        return self.ptr + offset


@dataclass
class ResetReport:
    """What a reset of the emulated device did."""
    regions: int
    bytes_evacuated: int
    seconds: float
    scratch_bytes_released: int


def _device_arg(device: int | str) -> int:
    if isinstance(device, str):
        d = device.strip().lower()
        if d in ("cpu", "host"):
            return CPU
        if d.startswith("cuda:") or d.startswith("gpu:"):
            d = d.split(":", 1)[1]
        try:
            return int(d)
        except ValueError:
            raise InvalidArgumentError(f"device must be an int, 'cpu'/'host' or 'cuda:N', got "
                                       f"{device!r}") from None
    if isinstance(device, (bool, np.bool_)) or not isinstance(device, (int, np.integer)):
        raise InvalidArgumentError(f"device must be an int or 'cpu', got {device!r}")
    if int(device) < CPU:
        raise InvalidArgumentError(f"device {device} is not a device id (use -1 or 'cpu' for "
                                   "the host)")
    return int(device)


class CudaBackend:
    """Managed memory, placement, kernels and timing on one GPU.

    Parameters
    ----------
    device:
        CUDA device ordinal (as CuPy counts them, i.e. after ``CUDA_VISIBLE_DEVICES``).
    margin:
        Bytes of GPU memory always left free (default: the larger of 256 MiB and 5 % of the
        card): CUDA contexts, CuPy's pool and other processes need room.
    budget:
        Cap on this backend's managed bytes (default: the GPU's free memory when the backend
        starts, less ``margin``).  Managed allocations never exceed it, so every page can be
        resident on the GPU at once."""

    def __init__(self, device: int = 0, margin: int | None = None, budget: int | None = None):
        self.cp = cupy_module()
        cp = self.cp
        ndev = cp.cuda.runtime.getDeviceCount()
        if not isinstance(device, (int, np.integer)) or not 0 <= int(device) < ndev:
            raise InvalidArgumentError(f"device {device!r} does not exist; this machine has "
                                       f"{ndev} CUDA device(s)")
        self.device = int(device)
        self._dev = cp.cuda.Device(self.device)
        self._lock = threading.RLock()
        with self._dev:
            free, total = cp.cuda.runtime.memGetInfo()
            self.total_memory = int(total)
            self.margin = int(margin) if margin is not None else max(256 << 20, total // 20)
            cap = free - self.margin
            self.budget = max(0, min(cap, int(budget)) if budget is not None else cap)
            # A blocking stream: work that user code queues on the legacy default stream stays
            # ordered with ours, so mixing CuPy calls and device ops cannot race.
            self.stream = cp.cuda.Stream()
            props = cp.cuda.runtime.getDeviceProperties(self.device)
        name = props.get("name", b"")
        self.name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        self.sm_count = int(props.get("multiProcessorCount", 1)) or 1
        self.compute_capability = f"{props.get('major')}.{props.get('minor')}"
        self.allocated = 0
        self._live: dict[int, ManagedRegion] = {}
        self._prefetch_style: str | None = None
        self._advise_style: str | None = None
        self.resets = 0
        self._kernels: CudaKernels | None = None
        self.closed = False

    # -- memory -------------------------------------------------------------------------------
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of GPU memory now."""
        with self._dev:
            free, total = self.cp.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def allocate(self, nbytes: int) -> ManagedRegion:
        """A new managed allocation of ``nbytes`` (contents undefined; pages are placed on
        first touch).  Raises :class:`~ccadgpu.errors.CapacityError` if it would take this
        backend past its budget or the GPU below its free-memory margin."""
        self._check_open()
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise InvalidArgumentError(f"nbytes must be a positive int, got {nbytes!r}")
        nbytes = int(nbytes)
        with self._lock:
            free, _total = self.mem_info()
            if self.allocated + nbytes > self.budget:
                raise CapacityError(
                    f"managed allocation of {nbytes} B refused: this backend holds "
                    f"{self.allocated} B of its {self.budget} B budget (the GPU's free memory at "
                    f"start less a {self.margin} B margin); managed memory must fit on the GPU")
            if nbytes > free - self.margin:
                raise CapacityError(
                    f"managed allocation of {nbytes} B refused: the GPU has {free} B free and "
                    f"{self.margin} B must stay free")
            with self._dev:
                try:
                    mem = self.cp.cuda.malloc_managed(nbytes)
                except Exception as exc:  # noqa: BLE001 - OutOfMemoryError, CUDARuntimeError
                    raise CapacityError(f"cudaMallocManaged({nbytes}) failed: {exc}") from exc
            region = ManagedRegion(int(mem.ptr), nbytes, self.device, mem)
            self.allocated += nbytes
            self._live[id(region)] = region
            return region

    def free(self, region: ManagedRegion) -> None:
        """Release the backend's hold on ``region`` (waits for the stream first).  The memory
        returns to CUDA when the last NumPy/CuPy view of it is gone.  Idempotent."""
        with self._lock:
            if region.freed or id(region) not in self._live:
                return
            self.synchronize()
            del self._live[id(region)]
            region.freed = True
            self.allocated -= region.nbytes
            region._mem = None

    def regions(self) -> list[ManagedRegion]:
        """Live managed regions of this backend."""
        with self._lock:
            return list(self._live.values())

    def as_device_array(self, a: Any) -> Any:
        """``a`` as a CuPy array, zero copy: CuPy arrays pass through; NumPy arrays must be
        views of managed (or device) memory, e.g. :meth:`ManagedRegion.host_view` or a
        :class:`~ccadgpu.ManagedArray` of a cuda space.  Host memory the GPU cannot reach
        raises :class:`InvalidArgumentError` instead of faulting in a kernel."""
        cp = self.cp
        if isinstance(a, cp.ndarray):
            return a
        if not isinstance(a, np.ndarray):
            raise InvalidArgumentError(f"expected a NumPy or CuPy array, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise InvalidArgumentError("device ops take C-contiguous arrays")
        ptr = int(a.__array_interface__["data"][0])
        if a.nbytes:
            not_reachable = InvalidArgumentError(
                "this NumPy array is not in managed memory, so the GPU cannot reach it; "
                "allocate it from the cuda backend (a ManagedRegion view or a cuda space)")
            try:
                attrs = cp.cuda.runtime.pointerGetAttributes(ptr)
            except Exception as exc:  # noqa: BLE001 - CUDA < 11 errors on plain host memory
                raise not_reachable from exc
            mtype = getattr(attrs, "type", None)      # absent / -1 in old builds: cannot tell
            if mtype is not None and int(mtype) >= 0 and \
                    int(mtype) not in (_MEMTYPE_DEVICE, _MEMTYPE_MANAGED):
                raise not_reachable
        # the NumPy array is the owner: the CuPy view keeps it (and its managed buffer) alive
        mem = cp.cuda.UnownedMemory(ptr, max(a.nbytes, 1), a, self.device)
        return cp.ndarray(a.shape, a.dtype, cp.cuda.MemoryPointer(mem, 0))

    # -- placement ----------------------------------------------------------------------------
    def advise(self, ptr: int, nbytes: int, advice: Advice | int | str, device: int | str
               ) -> None:
        """``cudaMemAdvise(ptr, nbytes, advice, device)``; ``device`` is a GPU id or
        ``"cpu"``/-1.  ``advice``: an :class:`Advice` or one of ``"read_mostly"``,
        ``"preferred_location"``, ``"accessed_by"`` and their ``"unset_..."`` forms."""
        self._check_open()
        adv = self._advice(advice)
        dev = _device_arg(device)
        ptr, nbytes = self._range(ptr, nbytes)
        rt = self.cp.cuda.runtime
        errors: list[str] = []
        with self._dev:
            if self._advise_style in (None, "rt"):
                try:
                    rt.memAdvise(ptr, nbytes, int(adv), dev)
                    self._advise_style = "rt"
                    return
                except Exception as exc:  # noqa: BLE001 - TypeError (signature), CUDA error
                    errors.append(f"cupy.cuda.runtime.memAdvise: {exc}")
            try:
                _drv().advise(ptr, nbytes, int(adv), dev)
                self._advise_style = "driver"
            except CudaError as exc:
                raise CudaError("; ".join([*errors, str(exc)])) from exc

    def prefetch(self, ptr: int, nbytes: int, device: int | str, stream: Any = None) -> None:
        """``cudaMemPrefetchAsync`` of ``[ptr, ptr + nbytes)`` to ``device`` (a GPU id or
        ``"cpu"``/-1) on ``stream`` (default: the backend's).  Asynchronous: the pages are
        where they should be once the stream has caught up (:meth:`synchronize`)."""
        self._check_open()
        dev = _device_arg(device)
        ptr, nbytes = self._range(ptr, nbytes)
        s = self.stream if stream is None else stream
        sptr = int(getattr(s, "ptr", s) or 0)
        rt = self.cp.cuda.runtime
        errors: list[str] = []
        with self._dev:
            # CuPy >= 13.6 / 14: (ptr, count, device, flags, stream); older: no flags.
            styles = [self._prefetch_style] if self._prefetch_style else ["rt5", "rt4"]
            for style in styles:
                if style == "driver":
                    break
                try:
                    if style == "rt5":
                        rt.memPrefetchAsync(ptr, nbytes, dev, 0, sptr)
                    else:
                        rt.memPrefetchAsync(ptr, nbytes, dev, sptr)
                    self._prefetch_style = style
                    return
                except TypeError as exc:
                    errors.append(f"memPrefetchAsync[{style}]: {exc}")
                except Exception as exc:  # noqa: BLE001 - a CUDA error: try the driver
                    errors.append(f"memPrefetchAsync[{style}]: {exc}")
                    break
            try:
                _drv().prefetch(ptr, nbytes, dev, sptr)
                self._prefetch_style = "driver"
            except CudaError as exc:
                raise CudaError("; ".join([*errors, str(exc)])) from exc

    def range_attribute(self, ptr: int, nbytes: int, attr: RangeAttribute | int) -> int:
        """``cuMemRangeGetAttribute`` for a one-value attribute: a device id (-1 CPU, -2 when
        unset or not the same over the whole range) or, for READ_MOSTLY, 0/1.  The last
        prefetch location is what was *asked*, not necessarily where the pages are now (faults
        may have moved them since)."""
        self._check_open()
        ptr, nbytes = self._range(ptr, nbytes)
        with self._dev:
            self.cp.cuda.runtime.getDevice()      # binds the primary context to this thread
            return _drv().attribute(ptr, nbytes, int(attr))[0]

    def accessed_by(self, ptr: int, nbytes: int) -> list[int]:
        """Devices (-1 = CPU) with accessed-by advice over the whole range."""
        self._check_open()
        ptr, nbytes = self._range(ptr, nbytes)
        n = self.cp.cuda.runtime.getDeviceCount() + 1
        with self._dev:
            self.cp.cuda.runtime.getDevice()
            ids = _drv().attribute(ptr, nbytes, int(RangeAttribute.ACCESSED_BY), n)
        return [i for i in ids if i != _INVALID_DEVICE]

    def placement(self, ptr: int, nbytes: int, page_size: int,
                  attr: RangeAttribute = RangeAttribute.LAST_PREFETCH_LOCATION) -> np.ndarray:
        """``attr`` (default: last prefetch location) of every ``page_size`` page of the range,
        as an int32 array (-1 CPU, -2 none).  One driver call per page: for checks and
        reports, not hot paths (the manager's page table is the source of truth)."""
        if page_size <= 0:
            raise InvalidArgumentError(f"page_size must be positive, got {page_size}")
        npages = -(-int(nbytes) // int(page_size))
        out = np.empty(npages, np.int32)
        for p in range(npages):
            lo = ptr + p * page_size
            out[p] = self.range_attribute(lo, min(page_size, ptr + nbytes - lo), attr)
        return out

    def synchronize(self) -> None:
        """Wait for everything queued on the backend's stream."""
        with self._dev:
            self.stream.synchronize()

    # -- kernels and timing -------------------------------------------------------------------
    @property
    def kernels(self) -> "CudaKernels":
        """The device ops (compiled on first use)."""
        with self._lock:
            if self._kernels is None:
                self._kernels = CudaKernels(self)
            return self._kernels

    def new_counters(self, base: int, nbytes: int, page_size: int, mode: str = "all"
                     ) -> PageCounters:
        """Zeroed per-page counters (in GPU memory) for ``[base, base + nbytes)``."""
        if page_size <= 0 or page_size & (page_size - 1):
            raise InvalidArgumentError(f"page_size must be a power of two, got {page_size}")
        npages = max(1, -(-int(nbytes) // int(page_size)))
        with self._dev, self.stream:
            rd = self.cp.zeros(npages, self.cp.uint64)
            wr = self.cp.zeros(npages, self.cp.uint64)
        return PageCounters(rd, wr, int(base), int(page_size).bit_length() - 1, mode)

    def clear_counters(self, counters: PageCounters) -> None:
        """Zero ``counters`` in stream order (after the launches queued before)."""
        with self._dev, self.stream:
            counters.rd.fill(0)
            counters.wr.fill(0)

    def read_counters(self, counters: PageCounters) -> tuple[np.ndarray, np.ndarray]:
        """(rd, wr) as host NumPy arrays, once every queued launch has finished."""
        self.synchronize()
        get = (lambda a: a.get()) if hasattr(counters.rd, "get") else np.asarray
        return get(counters.rd), get(counters.wr)

    def time_with_events(self, fn: Callable[[], Any], repeat: int = 1, warmup: int = 0
                         ) -> list[float]:
        """Seconds each of ``repeat`` calls of ``fn`` took on the backend's stream, measured
        with CUDA events (``fn`` must queue its work on ``backend.stream``; everything this
        backend does, does).  ``warmup`` calls run first, untimed."""
        cp = self.cp
        out = []
        with self._dev, self.stream:
            for _ in range(max(0, warmup)):
                fn()
            self.stream.synchronize()
            for _ in range(max(1, repeat)):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record(self.stream)
                fn()
                end.record(self.stream)
                end.synchronize()
                out.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return out

    def median_time(self, fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
        return statistics.median(self.time_with_events(fn, repeat, warmup))

    def page_sums(self, ptr: int, nbytes: int, page_size: int) -> np.ndarray:
        """Wrapping 64-bit sum of the words of every ``page_size`` page of ``[ptr, ptr +
        nbytes)``, computed by the GPU (a checksum for verified moves)."""
        ptr, nbytes = self._range(ptr, nbytes)
        if page_size % 8 or nbytes % page_size:
            raise InvalidArgumentError(f"page_sums: {nbytes} B is not whole pages of "
                                       f"{page_size} B")
        cp = self.cp
        words = page_size // 8
        npages = nbytes // page_size
        mem = cp.cuda.UnownedMemory(ptr, nbytes, None, self.device)
        with self._dev, self.stream:
            d = cp.ndarray((npages, words), cp.uint64, cp.cuda.MemoryPointer(mem, 0))
            s = d.sum(axis=1, dtype=cp.uint64)
            out = s.get(stream=self.stream)
        self.synchronize()
        return out

    def release_scratch(self) -> int:
        """Wait for the stream, hand CuPy's cached free blocks back to the driver and start a
        new stream (the emulated device's memory wipe).  Returns the bytes released."""
        with self._lock, self._dev:
            self.synchronize()
            pool = self.cp.get_default_memory_pool()
            released = int(pool.free_bytes())
            pool.free_all_blocks()
            self.stream = self.cp.cuda.Stream()
        return released

    # -- the emulated device's reset ----------------------------------------------------------
    def reset(self) -> ResetReport:
        """Reset the *emulated* device: wait for queued work, drop this device's advice,
        prefetch every managed byte to the CPU, release the scratch memory, the stream and
        CuPy's cached free blocks, and create a fresh stream.  Data are preserved (they are on
        the host afterwards).  Never resets or reconfigures the physical GPU."""
        self._check_open()
        t0 = time.perf_counter()
        with self._lock, self._dev:
            self.synchronize()
            regions = self.regions()
            moved = 0
            for r in regions:
                for adv in (Advice.UNSET_PREFERRED_LOCATION, Advice.UNSET_READ_MOSTLY):
                    self.advise(r.ptr, r.nbytes, adv, self.device)
                self.advise(r.ptr, r.nbytes, Advice.UNSET_ACCESSED_BY, self.device)
                self.prefetch(r.ptr, r.nbytes, CPU)
                moved += r.nbytes
            # the device-side scratch (counters, reduction results) lives in CuPy's pool once
            # freed: hand the cached blocks back; arrays still in use are not touched
            released = self.release_scratch()
            self.resets += 1
        return ResetReport(len(regions), moved, time.perf_counter() - t0, released)

    def close(self) -> None:
        """Free every region (views keep their memory alive) and forget the stream.
        Idempotent."""
        if self.closed:
            return
        with self._lock:
            try:
                self.synchronize()
            except Exception:  # noqa: BLE001 - closing must not raise over a dead context
                pass
            for r in list(self._live.values()):
                r.freed = True
                r._mem = None
            self._live.clear()
            self.allocated = 0
            self._kernels = None
            self.closed = True

    def __enter__(self) -> "CudaBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<CudaBackend device={self.device} {self.name!r} allocated={self.allocated} "
                f"budget={self.budget}>")

    # -- helpers --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgumentError("the cuda backend is closed")

    @staticmethod
    def _advice(advice: Advice | int | str) -> Advice:
        if isinstance(advice, str):
            try:
                return _ADVICE_NAMES[advice.strip().lower()]
            except KeyError:
                raise InvalidArgumentError(f"unknown advice {advice!r}; use one of "
                                           f"{sorted(_ADVICE_NAMES)}") from None
        try:
            return Advice(int(advice))
        except (ValueError, TypeError):
            raise InvalidArgumentError(f"unknown advice {advice!r}") from None

    @staticmethod
    def _range(ptr: int, nbytes: int) -> tuple[int, int]:
        if isinstance(ptr, bool) or not isinstance(ptr, (int, np.integer)) or int(ptr) <= 0:
            raise InvalidArgumentError(f"ptr must be a positive address, got {ptr!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or \
                int(nbytes) <= 0:
            raise InvalidArgumentError(f"nbytes must be a positive int, got {nbytes!r}")
        return int(ptr), int(nbytes)


class CudaKernels:
    """The device ops on a :class:`CudaBackend`: compiled from ``ccadgpu/kernels/cuda`` with
    NVRTC on first use, launched on the backend's stream.

    Every op takes NumPy views of managed memory or CuPy arrays, and ``counters`` (a
    :class:`PageCounters`, e.g. :meth:`CudaBackend.new_counters`) for the instrumented variant
    or None for the plain one.  Index operands are range-checked first (``check=False`` skips
    that pass).  Launches are asynchronous, in order on ``backend.stream``: call
    ``backend.synchronize()`` before the CPU reads an output.  Ops return their output
    (sum/dot: a Python number, after a synchronisation)."""

    #: compile options.  No fused multiply-add: the ops are memory-bound, so FMA buys nothing,
    #: and without it axpy/triad round exactly as NumPy and the CPU backend do (same test
    #: vectors, same bits), instead of differing in the last place where terms cancel.
    OPTIONS: tuple[str, ...] = ("--fmad=false",)

    def __init__(self, backend: CudaBackend):
        self.b = backend
        self.cp = backend.cp
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._resident: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------------
    def module(self, name: str) -> Any:
        """The compiled ``cupy.RawModule`` of ``<name>.cu``."""
        with self._lock:
            mod = self._modules.get(name)
            if mod is None:
                src = ck.load_source(name)
                with self.b._dev:
                    mod = self.cp.RawModule(code=src, options=self.OPTIONS)
                self._modules[name] = mod
            return mod

    def function(self, module: str, name: str) -> Any:
        key = f"{module}:{name}"
        fn = self._functions.get(key)
        if fn is None:
            mod = self.module(module)
            with self.b._dev:
                fn = mod.get_function(name)
            self._functions[key] = fn
        return fn

    def compile_all(self) -> float:
        """Compile every module and look up every entry point (seconds taken); front-loads the
        NVRTC cost, e.g. before timing."""
        t0 = time.perf_counter()
        for mod in ck.MODULES:
            for name in ck.kernel_names(mod):
                self.function(mod, name)
        return time.perf_counter() - t0

    def resident_blocks(self, fn: Any, threads: int) -> int:
        """Blocks of ``fn`` (a compiled kernel) at ``threads`` threads each that the whole GPU
        holds at once (CUDA's occupancy calculator; 8 per SM when it cannot say)."""
        key = (id(fn), threads)
        n = self._resident.get(key)
        if n is None:
            try:
                per_sm = int(self.cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    fn.kernel.ptr, threads, 0))
            except Exception:  # noqa: BLE001 - old CuPy: fall back to the planned grid
                per_sm = 8
            n = self._resident[key] = self.b.sm_count * max(1, per_sm)
        return n

    def launch(self, plan: Launch | None) -> None:
        """Queue one planned launch on the backend's stream, its grid cut to one wave of
        resident blocks (:func:`~ccadgpu.backends.cuda_kernels.fit_grid`)."""
        if plan is None:
            return
        fn = self.function(plan.module, plan.name)
        threads = plan.block[0] * plan.block[1] * plan.block[2]
        grid = ck.fit_grid(plan.grid, self.resident_blocks(fn, threads))
        with self.b._dev, self.b.stream:
            fn(grid, plan.block, plan.args)

    # -- ops ----------------------------------------------------------------------------------
    @property
    def max_blocks(self) -> int:
        return self.b.sm_count * 8

    def _arrs(self, *arrays: Any) -> list[Any]:
        return [self.b.as_device_array(a) for a in arrays]

    def _check_index(self, op: str, idx: Any, n: int, name: str = "idx") -> None:
        if int(idx.size) == 0:
            return
        with self.b._dev, self.b.stream:      # in stream order: after whatever wrote idx
            lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            raise InvalidArgumentError(f"{op}: {name} out of range: values {lo}..{hi}, valid "
                                       f"0..{n - 1}")

    def check_csr(self, indptr: Any, nnz: int) -> None:
        """Raise unless ``indptr`` (a device array) starts at 0, never decreases and ends at
        ``nnz``; computed on the GPU, in stream order."""
        if int(indptr.size) == 0:
            return
        with self.b._dev, self.b.stream:
            first, last = int(indptr[0]), int(indptr[-1])
            decreasing = int(indptr.size) > 1 and bool((self.cp.diff(indptr) < 0).any())
        if first != 0 or last != nnz or decreasing:
            raise InvalidArgumentError(f"spmv: indptr must start at 0, never decrease and end "
                                       f"at nnz = {nnz}")

    def _run(self, op: str, arrays: Sequence[Any], counters: PageCounters | None,
             **scalars: Any) -> None:
        self.launch(ck.plan(op, *arrays, counters=counters, max_blocks=self.max_blocks,
                            **scalars))

    def copy(self, y: Any, x: Any, counters: PageCounters | None = None) -> Any:
        yy, xx = self._arrs(y, x)
        self._run("copy", (yy, xx), counters)
        return y

    def scale(self, y: Any, x: Any, a: float, counters: PageCounters | None = None) -> Any:
        yy, xx = self._arrs(y, x)
        self._run("scale", (yy, xx), counters, a=a)
        return y

    def axpy(self, y: Any, x: Any, a: float, counters: PageCounters | None = None) -> Any:
        yy, xx = self._arrs(y, x)
        self._run("axpy", (yy, xx), counters, a=a)
        return y

    def triad(self, a: Any, b: Any, c: Any, s: float, counters: PageCounters | None = None
              ) -> Any:
        aa, bb, cc = self._arrs(a, b, c)
        self._run("triad", (aa, bb, cc), counters, s=s)
        return a

    def _reduce(self, op: str, arrays: list[Any], counters: PageCounters | None) -> Any:
        acc_dt = np.dtype(np.int64) if np.dtype(arrays[0].dtype).kind == "i" else \
            np.dtype(np.float64)
        with self.b._dev, self.b.stream:
            out = self.cp.zeros(1, acc_dt)
        self._run(op, (out, *arrays), counters)
        self.b.synchronize()
        v = out.get()[0]
        return int(v) if acc_dt.kind == "i" else float(v)

    def sum(self, x: Any, counters: PageCounters | None = None) -> Any:
        return self._reduce("sum", self._arrs(x), counters)

    def dot(self, x: Any, y: Any, counters: PageCounters | None = None) -> Any:
        return self._reduce("dot", self._arrs(x, y), counters)

    def stencil5(self, out: Any, inp: Any, center: float = 0.5, neighbor: float = 0.125,
                 counters: PageCounters | None = None) -> Any:
        oo, ii = self._arrs(out, inp)
        self._run("stencil5", (oo, ii), counters, center=center, neighbor=neighbor)
        return out

    def _run_indexed(self, op: str, arrays: Sequence[Any], counters: PageCounters | None,
                     label: str, name: str) -> None:
        """Run an indexed op whose indices were checked: the kernel skips any it then finds
        out of range (changed since, by another thread) and flags them, and that raises."""
        with self.b._dev, self.b.stream:
            bad = self.cp.zeros(1, self.cp.uint32)
        self._run(op, arrays, counters, bad=bad)
        self.b.synchronize()
        if int(bad[0]):
            raise index_changed(label, name)

    def gather(self, y: Any, x: Any, idx: Any, counters: PageCounters | None = None,
               check: bool = True) -> Any:
        yy, xx, ii = self._arrs(y, x, idx)
        if check:
            self._check_index("gather", ii, int(xx.size))
        self._run_indexed("gather", (yy, xx, ii), counters, "gather", "idx")
        return y

    def scatter(self, y: Any, idx: Any, x: Any, counters: PageCounters | None = None,
                check: bool = True) -> Any:
        yy, ii, xx = self._arrs(y, idx, x)
        if check:
            self._check_index("scatter", ii, int(yy.size))
        self._run_indexed("scatter", (yy, ii, xx), counters, "scatter", "idx")
        return y

    def spmv(self, y: Any, indptr: Any, indices: Any, data: Any, x: Any,
             counters: PageCounters | None = None, check: bool = True) -> Any:
        yy, pp, ii, dd, xx = self._arrs(y, indptr, indices, data, x)
        if check:
            self.check_csr(pp, int(ii.size))
            self._check_index("spmv", ii, int(xx.size), "indices")
        self._run_indexed("spmv", (yy, pp, ii, dd, xx), counters, "spmv_csr",
                          "indices or indptr")
        return y

