"""A :class:`~ccadgpu.Space` on the ``cuda`` backend: the mechanism under the same page table.

What changes against the CPU stand-in, and what does not:

* **Memory.**  The space's virtual range is *one* managed allocation (``cudaMallocManaged``):
  every array of the space is a window of it, one address for the CPU and the GPU.  The nodes'
  frames become capacity accounting only (:class:`~ccadgpu.nodes.Node` with ``backed=False``):
  the emulated device holds at most ``device_memory`` bytes of pages however large the card is.
* **Migration** (the :class:`~ccadgpu.migrate.Migrator`'s copy + remap) is one
  ``cudaMemPrefetchAsync`` per run of contiguous pages, then a stream synchronisation: the
  driver copies and remaps.  The GPU has ``SetAccessedBy`` over the whole range, so device
  kernels read host-resident pages remotely (over PCIe / C2C) instead of faulting them over:
  the driver's own fault-driven migration does not hide the policy under test (DESIGN.md).
* **Verification** (evacuation with ``verify``): a per-page checksum of the device-resident
  pages computed on the GPU before the move is compared with the same checksum computed by the
  CPU afterwards; a mismatch raises (the driver moved the only copy, so there is no old frame
  to fall back on, unlike the stand-in).
* **Read-mostly duplicates**: ``cudaMemAdviseSetReadMostly`` + a prefetch to the GPU (the driver
  keeps a read-only copy on both sides and collapses it on a write); the device frames are
  charged as on the stand-in.
* **Reset** of the emulated device: evacuate (as on the stand-in), then release the GPU-side
  scratch (CuPy's cached blocks), drop the stream and create a new one.  The physical GPU is
  never reset or reconfigured.  There is no separate device memory to poison: a page's only
  copy is the managed page.

Known limits, stated where users see them: a CPU access that bypasses the array protocols (raw
pointers, ``np.asarray(a)`` stores) to a device-resident page makes the driver migrate the page
to the CPU (x86 + PCIe has no CPU->GPU coherence), which this page table does not see until
the manager moves the page again; data stay correct (managed memory is coherent), only
placement accounting can lag.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InvalidArgumentError, MigrationError
from ..runs import runs
from ..vaspace import VASpace

__all__ = ["GpuMemory", "ManagedVASpace", "is_backend", "space_backend"]

HOST, DEVICE = 0, 1


def is_backend(obj: Any) -> bool:
    """Whether ``obj`` can carry a cuda space (has ``allocate``, ``prefetch``, ``advise``,
    ``kernels``, as :class:`~ccadgpu.backends.cuda.CudaBackend` does)."""
    return all(hasattr(obj, a) for a in ("allocate", "prefetch", "advise", "kernels"))


def space_backend(requested: Any) -> Any:
    """The backend object a cuda space runs on: ``requested`` itself when it is a backend
    instance (:func:`is_backend`), else a new :class:`~ccadgpu.backends.cuda.CudaBackend` on
    GPU 0."""
    if is_backend(requested):
        return requested
    from .cuda import CudaBackend
    return CudaBackend(0)


class ManagedVASpace(VASpace):
    """The space's virtual range inside one managed allocation: page ``v`` is at
    ``region.ptr + v * page_size``.  Nothing is mapped or unmapped here; the driver keeps one
    address for every page wherever it lives."""

    def __init__(self, npages: int, page_size: int, region: Any,
                 on_close: Callable[[], None]):
        super().__init__(npages, page_size, base=int(region.ptr))
        self.region = region
        self._on_close = on_close

    def _unmap_range(self, start: int, n: int) -> None:
        pass                                    # the managed range stays as it is

    def map_pages(self, vpns: np.ndarray, frames: np.ndarray, fds: list[int],
                  nodes: np.ndarray) -> int:
        return len(vpns)                        # placement is the driver's, see GpuMemory

    def back_with_anonymous(self, start: int, n: int) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()


class GpuMemory:
    """The cuda mechanism of one space: its managed range, placement calls and kernels.

    ``backend`` is a :class:`~ccadgpu.backends.cuda.CudaBackend` (or an object with the same
    methods, e.g. the CPU emulation the tests use); ``owns_backend``: close it with the space."""

    def __init__(self, backend: Any, npages: int, page_size: int, owns_backend: bool):
        self.b = backend
        self.page_size = page_size
        self.owns_backend = owns_backend
        self.device = int(getattr(backend, "device", 0))
        self.region = backend.allocate(npages * page_size)
        try:
            base, size = int(self.region.ptr), npages * page_size
            # new pages start on the host and stay there until the manager moves them; the
            # GPU maps host pages rather than faulting them over (the coherent model).  No
            # prefetch here: untouched pages hold no memory until an allocation places them.
            backend.advise(base, size, "preferred_location", "cpu")
            backend.advise(base, size, "accessed_by", self.device)
        except BaseException:
            backend.free(self.region)
            raise
        self.va = ManagedVASpace(npages, page_size, self.region, self.close)
        self.kernels = backend.kernels
        self.closed = False

    # -- placement -----------------------------------------------------------------------------
    def _runs(self, vpns: np.ndarray) -> list[tuple[int, int]]:
        v = np.sort(np.asarray(vpns, np.int64))
        starts, lens = runs(v, v)
        return [(int(v[s]), int(n)) for s, n in zip(starts.tolist(), lens.tolist())]

    def _loc(self, node: int) -> Any:
        return "cpu" if node == HOST else self.device

    def place(self, vpns: np.ndarray, target: int,
              hook: Callable[[str, int], None] | None = None) -> None:
        """Move pages ``vpns`` to ``target`` now: one prefetch per run of contiguous pages,
        then wait for the stream.  ``hook(stage, k)`` is the migrator's fault-injection hook.

        No per-page advice is needed to keep them there: the GPU maps every page of the range
        (accessed-by), so a kernel never faults a page over, and the range's preferred location
        (the CPU) only matters to pages nobody prefetched.  (Setting a preferred location per
        run, as a first version did, cost a third of the H2D bandwidth on an H200.)"""
        ps, loc = self.page_size, self._loc(target)
        for k, (v0, n) in enumerate(self._runs(vpns)):
            if hook is not None:
                hook("copy", k)
            self.b.prefetch(self.va.addr(v0), n * ps, loc)
        self.b.synchronize()

    def checksums(self, vpns: np.ndarray, on_device: bool) -> np.ndarray:
        """A wrapping 64-bit sum of every page's words, computed by the GPU (``on_device``)
        or by the CPU: the same pages read by each processor must agree."""
        v = np.asarray(vpns, np.int64)
        out = np.empty(len(v), np.uint64)
        ps, words = self.page_size, self.page_size // 8
        pos = np.argsort(v, kind="stable")
        i = 0
        for v0, n in self._runs(v):
            if on_device:
                got = self.b.page_sums(self.va.addr(v0), n * ps, ps)
            else:
                off = self.va.addr(v0) - int(self.region.ptr)
                got = self.region.host_view(np.uint64, (n, words), off).sum(axis=1,
                                                                            dtype=np.uint64)
            out[pos[i:i + n]] = got
            i += n
        return out

    def move(self, vpns: np.ndarray, target: int, verify: bool,
             hook: Callable[[str, int], None] | None = None) -> np.ndarray:
        """The migrator's copy + remap: place the pages on ``target``; with ``verify``, check
        pages leaving the device against their GPU-side checksums.  Returns the per-page mask
        of pages that are good (all of them, or it raises)."""
        v = np.asarray(vpns, np.int64)
        before = self.checksums(v, on_device=True) if verify and target == HOST else None
        self.place(v, target, hook)
        if before is not None:
            after = self.checksums(v, on_device=False)
            bad = v[before != after]
            if len(bad):
                raise MigrationError(f"{len(bad)} pages read differently on the CPU after the "
                                     f"move than on the GPU before it (first: {bad[:8].tolist()})")
        return np.ones(len(v), bool)

    def read_mostly(self, vpns: np.ndarray, on: bool) -> None:
        """Set (and prefetch to the GPU: the driver then keeps a read-only duplicate there) or
        unset the read-mostly advice of pages ``vpns``."""
        ps = self.page_size
        for v0, n in self._runs(vpns):
            addr = self.va.addr(v0)
            self.b.advise(addr, n * ps, "read_mostly" if on else "unset_read_mostly",
                          self.device)
            if on:
                self.b.prefetch(addr, n * ps, self.device)
        self.b.synchronize()

    def device_array(self, a: np.ndarray) -> Any:
        """``a`` (a view of the space's memory) as the backend's device array, zero copy."""
        return self.b.as_device_array(np.ascontiguousarray(a.view(np.ndarray)))

    def new_counters(self, base: int, nbytes: int) -> Any:
        return self.b.new_counters(base, nbytes, self.page_size, "indexed")

    def read_counters(self, counters: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.b.read_counters(counters)

    # -- lifecycle -----------------------------------------------------------------------------
    def reset(self) -> None:
        """The emulated device's wipe after its pages left: drop GPU-side scratch and the
        stream, start a new one (never a reset of the physical GPU)."""
        release = getattr(self.b, "release_scratch", None)
        if release is not None:
            release()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.b.free(self.region)
        finally:
            if self.owns_backend:
                self.b.close()


def check_cuda_space_args(page_size: int) -> None:
    """Refuse page sizes the driver cannot place page by page."""
    if page_size % 65536:
        raise InvalidArgumentError(
            f"page_size {page_size} is not a multiple of 64 KiB: on the cuda backend pages "
            "are placed with cudaMemPrefetchAsync/cudaMemAdvise, whose GPU granularity is "
            "64 KiB (2 MiB pages migrate fastest)")
