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
from .runs import bool_runs, group_counts, member, runs, sorted_unique

#: Freed frames a node keeps populated for reuse instead of handing them back to the OS (at most
#: this many bytes, and an eighth of the arena), as malloc keeps freed memory: a result allocated
#: and dropped per operation (:mod:`ccadgpu.interop`) then costs no page faults (measured: a
#: 2 MiB allocate + free cycle 2.4 ms with release, most of it MADV_POPULATE_WRITE + MADV_REMOVE).
WARM_POOL_BYTES = 64 << 20

#: Byte pattern written over device memory on reset, so stale reads are visible as 0xDEADBEEF.
POISON = np.frombuffer(bytes.fromhex("efbeadde"), dtype=np.uint8)

#: The hugetlb page size the arenas use (x86-64 and arm64 with 4 KiB base pages: 2 MiB).
HUGE_PAGE = 2 << 20

#: Chunks left in base pages after a collapse fails (1 GiB of 2 MiB chunks).
COLLAPSE_BACKOFF = 512


def hugetlb_pool() -> dict[str, int]:
    """The OS's 2 MiB hugetlb pool from /proc/meminfo: ``total``, ``free``, ``reserved`` pages
    (``vm.nr_hugepages``; a reserved page is promised to a mapping but not yet touched) and
    ``available`` = free - reserved.  Zeros where it cannot be read."""
    vals = {"total": 0, "free": 0, "reserved": 0, "page_size": 0}
    keys = {"HugePages_Total:": "total", "HugePages_Free:": "free", "HugePages_Rsvd:": "reserved",
            "Hugepagesize:": "page_size"}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in keys:
                    vals[keys[parts[0]]] = int(parts[1]) * (1024 if parts[0] == "Hugepagesize:"
                                                            else 1)
    except (OSError, ValueError):
        pass
    vals["available"] = max(0, vals["free"] - vals["reserved"])
    return vals


def huge_pages_summary() -> str:
    """One line for ``ccadgpu info``: what the arenas can get from the OS here."""
    pool = hugetlb_pool()
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            shmem = next((w.strip("[]") for w in f.read().split() if w.startswith("[")), "?")
    except OSError:
        shmem = "unknown"
    return (f"hugetlb 2 MiB pool: {pool['total']} pages ({pool['available']} available; "
            f"arenas use it when page_size is a multiple of 2 MiB and a node's whole capacity "
            f"fits); shmem transparent huge pages: {shmem} (with pages dividing 2 MiB, arenas "
            f"collapse fresh 2 MiB chunks into huge pages with MADV_COLLAPSE, Linux 6.1+, "
            f"whatever this setting: tunables.thp_collapse)")


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
    backing: str = ""


class Node:
    """One memory node: ``frames`` page frames of ``page_size`` bytes in a memfd arena.

    Frame bookkeeping (free mask, first-touch population) is vectorised NumPy; callers hold the
    space lock around :meth:`take`/:meth:`give`.
    """

    def __init__(self, node_id: int, name: str, kind: str, capacity: int, page_size: int,
                 prefault: bool, backed: bool = True, hugetlb: bool = False,
                 collapse: bool = False):
        self.id = node_id
        self.name = name
        self.kind = kind
        self.page_size = page_size
        self.frames = capacity // page_size
        self.capacity = self.frames * page_size
        self._free = np.ones(self.frames, dtype=bool)
        self._populated = np.zeros(self.frames, dtype=bool)
        self._nfree = self.frames
        self._nwarm = 0          # free frames that are populated (taken first)
        self._warm_cap = min(WARM_POOL_BYTES, capacity // 8) // page_size
        self._lock = threading.Lock()
        #: False on the cuda backend: the frames are capacity accounting only (the memory is
        #: the GPU driver's managed pages), there is no arena to map or copy through
        self.backed = backed
        #: whether the arena is hugetlb memory (2 MiB PTEs), and why it is or is not
        self.huge = False
        self.backing = "none (cuda: capacity accounting)"
        #: frames per 2 MiB chunk when fresh chunks are collapsed into huge pages, else 0
        self._chunk = 0
        #: chunks of fresh frames (2 MiB, or a page where pages are larger) the kernel has
        #: collapsed into huge pages so far
        self.collapsed_chunks = 0
        self._backoff = 0        # chunks to leave in base pages after a failed collapse
        if not backed:
            self.fd, self.base, self._size, self.view = -1, 0, 0, None
            self._populated[:] = True
            self._nwarm = self.frames
            return
        size = max(self.capacity, page_size)
        flags = _sys.MAP_SHARED | (_sys.MAP_POPULATE if prefault else 0)
        why = "4 KiB pages: hugetlb not asked for (tunables.hugetlb)"
        if hugetlb:
            why = self._open_hugetlb(f"ccadgpu-node{node_id}-{name}", size, flags)
        if not self.huge:
            if collapse and (HUGE_PAGE % page_size == 0 or page_size % HUGE_PAGE == 0):
                self._chunk = max(1, HUGE_PAGE // page_size)
            thp = page_size % HUGE_PAGE == 0
            if thp or self._chunk:               # populated below, not by MAP_POPULATE
                flags &= ~_sys.MAP_POPULATE
            self.fd = os.memfd_create(f"ccadgpu-node{node_id}-{name}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(self.fd, size)
                # 2 MiB-aligned, so that the arena's huge pages (if any) map as huge pages
                where = _sys.reserve(size, HUGE_PAGE)
                try:
                    self.base = _sys.mmap(where, size, _sys.PROT_READ | _sys.PROT_WRITE,
                                          flags | _sys.MAP_FIXED, self.fd, 0)
                except OSError:
                    _sys.munmap(where, size)
                    raise
                if thp:
                    self._ask_thp(size, prefault and not self._chunk)
            except BaseException:
                os.close(self.fd)
                raise
            self.backing = f"memfd, {why}"
            if self._chunk:
                no = self._can_collapse()
                if no:
                    self._chunk = 0
                    self.backing += f"; {no}"
                else:
                    self.backing += "; fresh 2 MiB chunks collapsed into transparent huge pages"
        self._size = size
        # A byte view of the whole arena: the migrator copies frames through it.
        self.view = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.base))
        if prefault:
            if self._chunk:
                self._populate(np.arange(self.frames, dtype=np.int64))
            self._populated[:] = True
            self._nwarm = self.frames

    def _ask_thp(self, size: int, prefault: bool) -> None:
        """Ask for transparent huge pages on a memfd arena (page_size a multiple of 2 MiB), then
        pre-fault it if asked.  They come only where the OS gives shmem huge pages
        (/sys/kernel/mm/transparent_hugepage/shmem_enabled ``advise``, ``within_size`` or
        ``always``); with ``never`` (this project's machines) the advice changes nothing."""
        try:
            _sys.madvise(self.base, size, _sys.MADV_HUGEPAGE)
        except OSError:
            pass
        if prefault:
            try:
                _sys.madvise(self.base, size, _sys.MADV_POPULATE_WRITE)
            except OSError:          # old kernels: frames fault in on first copy
                pass

    def _open_hugetlb(self, label: str, size: int, flags: int) -> str:
        """Try a hugetlb memfd arena; on success set ``fd``, ``base``, ``huge``.  The mapping
        reserves the node's whole capacity from the pool up front (no MAP_NORESERVE), so a
        page can never fail to fault in later; without room it fails here, cleanly, and the
        caller falls back to 4 KiB pages.  Returns why it fell back (or "")."""
        if self.page_size % HUGE_PAGE:
            return (f"4 KiB pages: page_size {self.page_size} is not a multiple of 2 MiB, "
                    "so hugetlb pages cannot back it")
        try:
            fd = os.memfd_create(label, os.MFD_CLOEXEC | os.MFD_HUGETLB | os.MFD_HUGE_2MB)
        except (OSError, AttributeError) as exc:
            return f"4 KiB pages: this kernel has no hugetlb memfd ({exc})"
        try:
            os.ftruncate(fd, size)
            self.base = _sys.mmap(None, size, _sys.PROT_READ | _sys.PROT_WRITE, flags, fd, 0)
        except OSError as exc:
            os.close(fd)
            pool = hugetlb_pool()
            return (f"4 KiB pages: hugetlb pool too small ({size // HUGE_PAGE} pages of 2 MiB "
                    f"needed, {pool['available']} available, vm.nr_hugepages="
                    f"{pool['total']}: {os.strerror(exc.errno or 0)})")
        self.fd, self.huge = fd, True
        self.backing = f"hugetlb, 2 MiB pages ({size // HUGE_PAGE} reserved)"
        return ""

    # -- occupancy -------------------------------------------------------------------------
    @property
    def free_frames(self) -> int:
        return self._nfree

    @property
    def used_frames(self) -> int:
        return self.frames - self._nfree

    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.name, self.kind, self.capacity, self.page_size,
                        self.frames, self.used_frames, self.free_frames, self.backing)

    def __repr__(self) -> str:
        return (f"Node({self.id}, {self.name!r}, frames={self.frames}, used={self.used_frames}, "
                f"page_size={self.page_size})")

    # -- frame allocation ----------------------------------------------------------------------
    def take(self, n: int, partial: bool = False, phase: int = 0,
             period: int = 1) -> np.ndarray:
        """Take ``n`` free frames (fewer if ``partial``).  With ``period`` > 1, the first free
        run of ``n`` frames starting at ``phase`` modulo ``period`` if there is one (a run of
        pages then maps its huge pages as such).  Otherwise frames that are already populated
        go first, lowest address first, so that requests get contiguous runs and copies never
        pay for page faults; never-touched frames are populated before they are handed out."""
        with self._lock:
            if n > self._nfree and not partial:
                raise CapacityError(f"node {self.id} ({self.name}) has {self._nfree} free frames, "
                                    f"{n} needed")
            n = min(n, self._nfree)
            if n == 0:
                return np.zeros(0, np.int64)
            if period > 1 and n >= period:
                run = self._aligned_run(n, phase % period, period)
                if run is not None:
                    return self._hand_out(run)
            # Early-stopping scans: a host arena has as many frames as the machine has pages,
            # and a full scan per allocation would cost more than a small allocation itself.
            frames = self._first_free(True, min(n, self._nwarm)) if self._nwarm else \
                np.zeros(0, np.int64)
            if len(frames) < n:
                cold = self._first_free(False, n - len(frames))
                frames = np.sort(np.concatenate((frames, cold)))
            if len(frames) < n:
                # the warm count went out of step with the masks: never hand out too few
                rest = np.setdiff1d(np.flatnonzero(self._free), frames)[: n - len(frames)]
                frames = np.sort(np.concatenate((frames, rest)))
            return self._hand_out(frames.astype(np.int64))

    def _aligned_run(self, n: int, phase: int, period: int) -> np.ndarray | None:
        """The first ``n`` free frames in a row starting at ``phase`` modulo ``period``, or
        None.  Scans the free mask in growing windows and gives up after ``max(64 n, 2^18)``
        frames, so that a request costs about its own size, not the arena's.  Lock held."""
        lo, step, budget = 0, max(4 * n, 1 << 16), max(64 * n, 1 << 18)
        while lo < self.frames and budget > 0:
            hi = min(self.frames, lo + step + n)        # overlap: a run may cross windows
            starts, lens = bool_runs(self._free[lo:hi])
            starts = starts + lo
            first = starts + (phase - starts) % period
            ok = np.flatnonzero(first + n <= starts + lens)
            if len(ok):
                return np.arange(first[ok[0]], first[ok[0]] + n, dtype=np.int64)
            budget -= hi - lo
            lo, step = lo + step, step * 2
        return None

    def _hand_out(self, frames: np.ndarray) -> np.ndarray:
        """Mark ``frames`` (distinct, free) taken, populating the never-touched ones.  Lock
        held."""
        self._nwarm -= int(np.count_nonzero(self._populated[frames]))
        self._free[frames] = False
        self._nfree -= len(frames)
        fresh = frames[~self._populated[frames]]
        if len(fresh):
            self._populate(np.sort(fresh))
            self._populated[fresh] = True
        return frames

    def _populate(self, fresh: np.ndarray) -> None:
        """Fault in never-touched frames (sorted).  Whole 2 MiB-aligned chunks among them
        become transparent huge pages where the kernel collapses them: one base page touched,
        then MADV_COLLAPSE, which costs about what faulting in 512 base pages does; a chunk the
        kernel will not collapse (no huge page free, an old kernel) gets base pages."""
        rest = fresh
        if self._chunk:
            c = self._chunk
            chunk = fresh // c
            ids, _, count = group_counts(chunk)
            whole = ids[count == c]
            if len(whole):
                done = self._collapse(whole)
                if len(done):
                    rest = fresh[~member(chunk, done)]
        if len(rest):
            self._advise(rest, _sys.MADV_POPULATE_WRITE, ignore_errors=True)

    def _collapse(self, chunks: np.ndarray) -> np.ndarray:
        """Collapse the given chunks (sorted, every frame fresh; a chunk is 2 MiB, or one page
        when pages are larger) into huge pages through the direct map; returns the chunks
        that were (per run of adjacent chunks: all or none).  A run the kernel will not
        collapse (EAGAIN/ENOMEM: no free huge page; EINVAL/EBUSY: something in the range)
        gets base pages, and so do the next :data:`COLLAPSE_BACKOFF` chunks: collapsing
        compacts memory synchronously, and a machine short of huge pages should not pay for
        that on every allocation."""
        cb = self._chunk * self.page_size
        # collapse needs a populated base page in each 2 MiB it makes huge: write the zero
        # that fresh memory holds anyway into the first byte of each
        first = (chunks[:, None] * cb + np.arange(0, cb, HUGE_PAGE)).reshape(-1)
        self.view[first] = 0
        done = []
        at, lens = runs(chunks)
        for s, n in zip(chunks[at].tolist(), lens.tolist()):
            if self._backoff > 0:
                self._backoff -= n
                continue
            try:
                _sys.madvise(self.base + s * cb, n * cb, _sys.MADV_COLLAPSE)
            except OSError:
                self._backoff = COLLAPSE_BACKOFF
                continue
            done.append(np.arange(s, s + n, dtype=np.int64))
            self.collapsed_chunks += n
        return np.concatenate(done) if done else np.zeros(0, np.int64)

    def _can_collapse(self) -> str:
        """Why this arena's fresh chunks cannot be collapsed into huge pages, or "" if they
        can: the kernel knows MADV_COLLAPSE (a zero-length call says so) and its PMD huge
        page is the 2 MiB the arenas and the virtual range are aligned to."""
        try:
            with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
                pmd = int(f.read())
        except (OSError, ValueError):
            return "no transparent huge pages on this kernel (base pages)"
        if pmd != HUGE_PAGE:
            return f"PMD huge pages are {pmd} bytes here, not 2 MiB (base pages)"
        try:
            _sys.madvise(self.base, 0, _sys.MADV_COLLAPSE)
        except OSError:
            return "no MADV_COLLAPSE on this kernel (base pages)"
        return ""

    def give(self, frames: np.ndarray, release: bool = False) -> None:
        """Return frames to the free pool; ``release`` also hands their memory back to the OS,
        except for what the warm pool (:data:`WARM_POOL_BYTES`) still has room for (and except
        on a hugetlb arena, whose pages were reserved for the node's life)."""
        frames = np.asarray(frames, np.int64)
        if len(frames) == 0:
            return
        if release and self.backed and not self.huge:   # hugetlb: keep the reserved pages
            room = max(0, self._warm_cap - self._nwarm)
            gone = frames[room:]
            if len(gone):
                self._advise(gone, _sys.MADV_REMOVE, ignore_errors=True)
                self._populated[gone] = False
        with self._lock:
            if not self._free[frames].any() and len(np.unique(frames)) == len(frames):
                self._free[frames] = True
                self._nfree += len(frames)
                self._nwarm += int(np.count_nonzero(self._populated[frames]))
            else:  # a bookkeeping bug must not silently double-free a frame
                raise AssertionError(f"node {self.id}: freeing frames that are already free")

    def _first_free(self, populated: bool, n: int) -> np.ndarray:
        """The first ``n`` free frames (lowest first) whose populated state is ``populated``;
        scans in growing chunks and stops once it has them.  Lock held."""
        parts: list[np.ndarray] = []
        got, start, step = 0, 0, max(8192, 4 * n)
        while got < n and start < self.frames:
            end = min(self.frames, start + step)
            m = self._free[start:end] & (self._populated[start:end] == populated)
            idx = np.flatnonzero(m)[: n - got] + start
            parts.append(idx)
            got += len(idx)
            start, step = end, step * 2
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

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
        """Overwrite the whole arena with the poison pattern (device reset on the stand-in;
        nothing to do for an unbacked node)."""
        if self.view is None:
            return
        self.view.view(np.uint32).fill(int(POISON.view(np.uint32)[0]))

    def _advise(self, frames: np.ndarray, advice: int, ignore_errors: bool) -> None:
        # runs from the sorted frame list, not from a mask over the whole arena: O(k log k)
        f = sorted_unique(np.asarray(frames, np.int64))
        at, lens = runs(f)
        for s, n in zip(f[at].tolist(), lens.tolist()):
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
