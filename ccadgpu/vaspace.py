"""The space's virtual address range: one reservation carved into allocations.

Every managed page has a fixed virtual address for its whole life.  The reservation is made
``PROT_NONE`` up front (it costs no memory); an allocation's pages are then mapped onto node
frames with ``mmap(MAP_FIXED|MAP_SHARED)``, one call per run of pages whose frames are contiguous
on the same node, and remapped in place when they migrate.  A freed allocation's range is first
backed by anonymous memory (a stale view reads zeros instead of crashing) and only returned for
reuse once no array refers to it any more.
"""
from __future__ import annotations

import bisect
import threading

import numpy as np

from . import _sys
from .errors import CapacityError, MapCountError
from .runs import node_steps, runs


class _MapBudget:
    """Process-wide estimate of the memory mappings (VMAs) our spaces hold.

    The kernel refuses mmap past ``vm.max_map_count``; we refuse earlier, with a clear error,
    before any page has moved.  Mappings of Python, NumPy and Numba themselves stay outside it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0
        self._limit: int | None = None

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = max(1024, _sys.max_map_count() - _sys.current_map_count() - 4096)
        return self._limit

    def charge(self, delta: int, what: str) -> None:
        with self.lock:
            if delta > 0 and self.used + delta > self.limit:
                raise MapCountError(
                    f"{what} would need {self.used + delta} memory mappings; the process may use "
                    f"about {self.limit} (vm.max_map_count={_sys.max_map_count()}). Use a larger "
                    f"page_size, fewer interleaved pages, or raise vm.max_map_count.")
            self.used += delta


MAP_BUDGET = _MapBudget()

#: The range starts at a multiple of this when the page size divides it or is a multiple of it,
#: so that hugetlb arenas can be mapped there (MAP_FIXED of a hugetlb file needs 2 MiB-aligned
#: addresses) and an arena's 2 MiB huge pages are mapped by one PMD wherever a run of pages
#: sits at the same offset within 2 MiB in the range as in its arena.
HUGE_ALIGN = 2 << 20


class VASpace:
    """A reserved virtual range of ``npages`` pages with a first-fit page-range allocator."""

    def __init__(self, npages: int, page_size: int, base: int | None = None):
        """``base``: the range's address when someone else reserved it (the cuda backend's
        managed allocation); by default a fresh ``PROT_NONE`` reservation."""
        self.page_size = page_size
        self.npages = npages
        self.size = npages * page_size
        huge = page_size % HUGE_ALIGN == 0 or HUGE_ALIGN % page_size == 0
        self.base = _sys.reserve(self.size, HUGE_ALIGN if huge else 0) if base is None else int(base)
        self._free_starts = [0]          # sorted free extents (start, length), coalesced
        self._free_lens = [npages]
        self._lock = threading.Lock()
        self.high_water = 0
        self.closed = False

    def allocate(self, n: int, phase: int = 0, period: int = 1) -> int:
        """First-fit ``n`` pages; returns the first virtual page number.  With ``period`` > 1,
        the first free place whose start is ``phase`` modulo ``period`` pages, if there is one
        (else first fit): a run of pages then sits at the same offset within a 2 MiB block as
        its frames do in their arena, so that huge pages there can be mapped as such."""
        with self._lock:
            for fit in ((phase % period, period),) * (period > 1) + ((0, 1),):
                for i, ln in enumerate(self._free_lens):
                    first = self._free_starts[i]
                    start = first + (fit[0] - first) % fit[1]
                    if start + n > first + ln:
                        continue
                    tail = first + ln - (start + n)
                    if start > first:           # the skipped head stays free
                        self._free_lens[i] = start - first
                        if tail:
                            self._free_starts.insert(i + 1, start + n)
                            self._free_lens.insert(i + 1, tail)
                    elif tail:
                        self._free_starts[i] = start + n
                        self._free_lens[i] = tail
                    else:
                        del self._free_starts[i], self._free_lens[i]
                    self.high_water = max(self.high_water, start + n)
                    return start
        raise CapacityError(f"virtual range exhausted: no {n} contiguous free pages")

    def release(self, start: int, n: int) -> None:
        """Give ``[start, start+n)`` back: re-reserve it ``PROT_NONE`` and merge free extents."""
        if self.closed:
            return
        self._unmap_range(start, n)
        with self._lock:
            i = bisect.bisect_left(self._free_starts, start)
            self._free_starts.insert(i, start)
            self._free_lens.insert(i, n)
            # merge with the right, then the left neighbour
            if i + 1 < len(self._free_starts) and start + n == self._free_starts[i + 1]:
                self._free_lens[i] += self._free_lens.pop(i + 1)
                self._free_starts.pop(i + 1)
            if i > 0 and self._free_starts[i - 1] + self._free_lens[i - 1] == start:
                self._free_lens[i - 1] += self._free_lens.pop(i)
                self._free_starts.pop(i)

    def _unmap_range(self, start: int, n: int) -> None:
        _sys.mmap(self.base + start * self.page_size, n * self.page_size, _sys.PROT_NONE,
                  _sys.MAP_PRIVATE | _sys.MAP_ANONYMOUS | _sys.MAP_NORESERVE | _sys.MAP_FIXED)

    def addr(self, vpn: int) -> int:
        return self.base + int(vpn) * self.page_size

    def map_pages(self, vpns: np.ndarray, frames: np.ndarray, fds: list[int],
                  nodes: np.ndarray) -> int:
        """Map each page ``vpns[i]`` onto frame ``frames[i]`` of node ``nodes[i]``, one mmap per
        run.  Returns the number of pages mapped before an error (re-raised), so a caller can
        account exactly for what landed."""
        vpns = np.asarray(vpns, np.int64)
        frames = np.asarray(frames, np.int64)
        nodes = np.asarray(nodes, np.int64)
        starts, lens = runs(vpns, frames, node_steps(nodes))
        ps = self.page_size
        done = 0
        for s, ln in zip(starts.tolist(), lens.tolist()):
            _sys.map_fixed_shared(self.base + int(vpns[s]) * ps, ln * ps, fds[int(nodes[s])],
                                  int(frames[s]) * ps)
            done += ln
        return done

    def back_with_anonymous(self, start: int, n: int) -> None:
        """Detach pages from any node: afterwards they read as zeros and hold no frame."""
        _sys.map_fixed_anon(self.base + start * self.page_size, n * self.page_size)

    def close(self) -> None:
        """Unmap the whole range.  Only safe when no array refers to it."""
        if not self.closed:
            self.closed = True
            _sys.munmap(self.base, self.size)



def count_breaks(node: np.ndarray, frame: np.ndarray) -> int:
    """How many mappings a page range needs: 1 + the number of node or frame discontinuities."""
    if len(node) == 0:
        return 0
    return 1 + int(np.count_nonzero((np.diff(node) != 0) | (np.diff(frame.astype(np.int64)) != 1)))
