"""Memory nodes: a host node and device node(s), each an arena of page frames.

On the CPU stand-in each node's memory is a ``memfd``: a file the kernel can map anywhere.  A
managed page is that file's frame mapped at the page's virtual address (see :mod:`.vaspace`), so
moving a page between nodes is "copy the frame, map the other file's frame at the same address".
Each node also keeps a *direct map* of its whole arena (like the kernel's linear map) through
which the migrator copies frames without touching user mappings.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from . import _sys
from .errors import CapacityError
from .runs import bool_runs

#: Byte pattern written over device memory on reset, so stale reads are visible as 0xDEADBEEF.
POISON = np.frombuffer(bytes.fromhex("efbeadde"), dtype=np.uint8)


@dataclass(frozen=True)
class NodeInfo:
    """A snapshot of one node's occupancy."""
    id: int
    name: str
    kind: str
    capacity: int
    page_size: int
    frames: int
    used: int
    free: int


class Node:
    """One memory node: ``frames`` page frames of ``page_size`` bytes in a memfd arena.

    Frame bookkeeping (free mask, first-touch population) is vectorised NumPy; callers hold the
    space lock around :meth:`take`/:meth:`give`.
    """

    def __init__(self, node_id: int, name: str, kind: str, capacity: int, page_size: int,
                 prefault: bool):
        self.id = node_id
        self.name = name
        self.kind = kind
        self.page_size = page_size
        self.frames = capacity // page_size
        self.capacity = self.frames * page_size
        self._free = np.ones(self.frames, dtype=bool)
        self._populated = np.zeros(self.frames, dtype=bool)
        self._nfree = self.frames
        self._lock = threading.Lock()
        self.fd = os.memfd_create(f"ccadgpu-node{node_id}-{name}", os.MFD_CLOEXEC)
        size = max(self.capacity, page_size)
        os.ftruncate(self.fd, size)
        flags = _sys.MAP_SHARED | (_sys.MAP_POPULATE if prefault else 0)
        self.base = _sys.mmap(None, size, _sys.PROT_READ | _sys.PROT_WRITE, flags, self.fd, 0)
        self._size = size
        if prefault:
            self._populated[:] = True
        # A byte view of the whole arena: the migrator copies frames through it.
        self.view = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.base))

    # -- occupancy -------------------------------------------------------------------------
    @property
    def free_frames(self) -> int:
        return self._nfree

    @property
    def used_frames(self) -> int:
        return self.frames - self._nfree

    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.name, self.kind, self.capacity, self.page_size,
                        self.frames, self.used_frames, self.free_frames)

    def __repr__(self) -> str:
        return (f"Node({self.id}, {self.name!r}, frames={self.frames}, used={self.used_frames}, "
                f"page_size={self.page_size})")

    # -- frame allocation ----------------------------------------------------------------------
    def take(self, n: int, partial: bool = False) -> np.ndarray:
        """Take ``n`` free frames (fewer if ``partial``).  Frames that are already populated go
        first, lowest address first, so that requests get contiguous runs and copies never pay
        for page faults; never-touched frames are populated before they are handed out."""
        with self._lock:
            if n > self._nfree and not partial:
                raise CapacityError(f"node {self.id} ({self.name}) has {self._nfree} free frames, "
                                    f"{n} needed")
            n = min(n, self._nfree)
            if n == 0:
                return np.zeros(0, np.int64)
            warm = self._free & self._populated
            frames = np.flatnonzero(warm)[:n]
            if len(frames) < n:
                cold = np.flatnonzero(self._free & ~self._populated)[: n - len(frames)]
                frames = np.sort(np.concatenate((frames, cold)))
            frames = frames.astype(np.int64)
            self._free[frames] = False
            self._nfree -= n
            fresh = frames[~self._populated[frames]]
            if len(fresh):
                self._advise(fresh, _sys.MADV_POPULATE_WRITE, ignore_errors=True)
                self._populated[fresh] = True
        return frames

    def give(self, frames: np.ndarray, release: bool = False) -> None:
        """Return frames to the free pool; ``release`` also hands their memory back to the OS."""
        frames = np.asarray(frames, np.int64)
        if len(frames) == 0:
            return
        if release:
            self._advise(frames, _sys.MADV_REMOVE, ignore_errors=True)
            self._populated[frames] = False
        with self._lock:
            if not self._free[frames].any() and len(np.unique(frames)) == len(frames):
                self._free[frames] = True
                self._nfree += len(frames)
            else:  # a bookkeeping bug must not silently double-free a frame
                raise AssertionError(f"node {self.id}: freeing frames that are already free")

    def is_free(self, frames: np.ndarray) -> np.ndarray:
        return self._free[np.asarray(frames, np.int64)]

    # -- raw memory ------------------------------------------------------------------------------
    def frame_bytes(self, frame: int, count: int = 1) -> np.ndarray:
        """A writable byte view of ``count`` frames starting at ``frame`` in the direct map."""
        off = int(frame) * self.page_size
        return self.view[off: off + count * self.page_size]

    def fill_pattern(self, frames: np.ndarray, pattern: np.ndarray = POISON) -> None:
        """Overwrite frames with a repeating byte pattern (reset poisoning)."""
        mask = np.zeros(self.frames, bool)
        mask[np.asarray(frames, np.int64)] = True
        starts, lens = bool_runs(mask)
        for s, n in zip(starts.tolist(), lens.tolist()):
            dst = self.frame_bytes(s, n).reshape(-1, len(pattern))
            dst[:] = pattern

    def poison_all(self) -> None:
        """Overwrite the whole arena with the poison pattern (device reset on the stand-in)."""
        self.view.view(np.uint32).fill(int(POISON.view(np.uint32)[0]))

    def _advise(self, frames: np.ndarray, advice: int, ignore_errors: bool) -> None:
        mask = np.zeros(self.frames, bool)
        mask[frames] = True
        starts, lens = bool_runs(mask)
        for s, n in zip(starts.tolist(), lens.tolist()):
            try:
                _sys.madvise(self.base + s * self.page_size, n * self.page_size, advice)
            except OSError:
                # Old kernels lack MADV_POPULATE_WRITE: frames then fault in on first copy.
                if not ignore_errors:
                    raise

    def close(self) -> None:
        if self.fd < 0:
            return
        self.view = None
        try:
            _sys.munmap(self.base, self._size)
        finally:
            os.close(self.fd)
            self.fd = -1


def default_distances(kinds: list[str]) -> np.ndarray:
    """A SLIT-style distance table: 10 local, 20 host<->device, 40 device<->device."""
    n = len(kinds)
    d = np.full((n, n), 20, dtype=np.int32)
    for i in range(n):
        for j in range(n):
            if i == j:
                d[i, j] = 10
            elif kinds[i] == "device" and kinds[j] == "device":
                d[i, j] = 40
    return d
