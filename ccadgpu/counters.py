"""The access-counter unit: the emulated hardware that counts who touched which page.

**What is counted.**  For every page (by virtual page number, the index of ``space.pt``) and
every processor (``cpu`` = 0, ``device`` = 1): bytes **read** and **written**, each split
**local** / **remote** by the node the page lived on when it was accessed (local for the cpu is
the host node 0, for the device its own node).  ``AccessCounters.bytes`` is that table,
``int64[vpn, processor, rw, loc]``, indexed like the page table so that a policy can act on it
with vector operations.  Counts model *memory traffic*: a dense kernel sweeping an array counts
each of its bytes once per sweep (perfect reuse inside the kernel, as a cache would give); an
indexed access (gather, scatter, the ``x`` of a sparse mat-vec) counts ``itemsize`` bytes per
access, whatever the reuse.  Dense counts are computed arithmetically from the array's byte
range; indexed counts are per-page histograms of the index array (on the stand-in built in one
pass before the kernel runs, which also checks the indices; on a GPU inside the kernel; on the
generic launch path by ``np.bincount`` of a declared index array).

**Notifications** work like a GPU's access counters (NVIDIA's UVM driver consumes them): the
address space is cut into regions of ``access_counter_granularity`` bytes (default 2 MiB, at
least one page; a region is ``max(1, granularity // page_size)`` consecutive pages), and for
every processor and region the unit accumulates **remote accesses in 32-byte sectors** (a dense
sweep of ``b`` bytes of a page counts ``ceil(b / 32)`` sectors; an indexed access counts one
sector per element of up to 32 bytes).  When a region's accumulator reaches
``access_counter_threshold`` (default 256 sectors = 8 KiB of remote traffic) at the end of an
update (one kernel launch or one host operation), the unit queues one notification for it and
resets that accumulator.  Notifications are delivered in **batches**: subscribers
(:meth:`subscribe`) are called once ``access_counter_batch`` notifications are pending (or on
:meth:`flush`); without subscribers they wait to be polled with :meth:`drain`.  The queue holds
at most ``access_counter_buffer`` entries; beyond that new ones are dropped and counted
(``access_counter_notifications_dropped`` in ``space.stats()``), as a full hardware buffer would.

**Clear-on-migrate.**  When pages migrate, their per-page counts and the accumulators of the
regions they belong to are cleared (the unit is registered in ``space.migrate_listeners``);
freeing an allocation clears its pages too.  Space-wide totals in ``space.stats()``
(``access_bytes_<proc>_<read|write>_<local|remote>``) are never cleared.

**What the unit cannot see.**  CPU traffic is counted where the library sees it: the array
protocols of :class:`~ccadgpu.ManagedArray` (ufuncs, NumPy functions, indexing reads and writes)
and ``space.host_access(arr, mode)``.  Raw access through ``np.asarray(a)`` views, the buffer
protocol, ``ctypes`` pointers or C extensions writing through a pointer is invisible, as are
NumPy functions' partial reads (a ``np.take`` is counted as a read of its whole operand).
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .clock import SECTOR
from .notify import NOTIFICATION_DTYPE, raise_notifications
from .runs import expand_runs
from .errors import InvalidArgumentError
from .tunables import Knob, register

if TYPE_CHECKING:
    from .space import Space

CPU, DEVICE = 0, 1
READ, WRITE = 0, 1
LOCAL, REMOTE = 0, 1
PROC_NAMES = ("cpu", "device")
RW_NAMES = ("read", "write")
LOC_NAMES = ("local", "remote")
#: the vmstat counter of each (proc, rw, loc), in ``proc*4 + rw*2 + loc`` order
_BYTE_STATS = tuple(f"access_bytes_{p}_{r}_{lc}" for p in PROC_NAMES for r in RW_NAMES
                    for lc in LOC_NAMES)



def _pow2_at_least_4k(v: int) -> bool:
    return v >= 4096 and (v & (v - 1)) == 0


register(Knob("access_counters", bool, True,
              "Count device and host accesses per page (bytes read/written, local/remote), raise "
              "access-counter notifications and record the trace.  False: launches and host "
              "operations are not counted and their modeled time is NaN."))
register(Knob("access_counter_granularity", int, 2 << 20,
              "Access-counter region size in bytes (power of two, >= 4 KiB; effectively at least "
              "one page).  Notifications are per region.", _pow2_at_least_4k,
              "a power of two >= 4096"))
register(Knob("access_counter_threshold", int, 256,
              "Remote accesses (32-byte sectors) by one processor to one region that raise a "
              "notification.", lambda v: v >= 1, ">= 1"))
register(Knob("access_counter_batch", int, 256,
              "Notifications per delivery to subscribers (batched like a hardware notification "
              "buffer's interrupt).", lambda v: v >= 1, ">= 1"))
register(Knob("access_counter_buffer", int, 1 << 16,
              "Notification queue capacity; further notifications are dropped and counted.",
              lambda v: v >= 1, ">= 1"))


# --------------------------------------------------------------------------------------------
# Footprints: which pages an access touches, and how many bytes / sectors of each
# --------------------------------------------------------------------------------------------
@dataclass
class Footprint:
    """Per-page traffic of one access to one array: pages ``[vlo, vlo + len(nbytes))``.
    ``full``: every page has bytes (None: not known)."""
    vlo: int
    nbytes: np.ndarray     # int64 bytes per page
    sectors: np.ndarray    # int64 32-byte sectors per page
    full: bool | None = None

    @property
    def vhi(self) -> int:
        return self.vlo + len(self.nbytes)

    def is_full(self) -> bool:
        if self.full is None:
            self.full = bool(len(self.nbytes)) and bool(self.nbytes.all())
        return self.full


def _sectors_of(nbytes: np.ndarray) -> np.ndarray:
    return (nbytes + (SECTOR - 1)) // SECTOR


class _RangeCache:
    """Per-page bytes and sectors of one contiguous byte range, by (page size, pages, offset
    in the first page, bytes): the same for every launch over the same array, so they are
    computed once and shared (read-only) by every footprint and tally that uses them, trace
    records included.  Bounded by the pages it holds and by its entries (oldest go first):
    scalar stores all over a large array make one-page entries at every offset, each a few
    hundred bytes, which only the entry bound keeps in check."""

    def __init__(self, max_pages: int = 1 << 20, max_entries: int = 1 << 13):
        self.max_pages = max_pages
        self.max_entries = max_entries
        self._d: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._pages = 0
        self._lock = threading.Lock()

    def get(self, P: int, n: int, lo: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        key = (P, n, lo, size)
        hit = self._d.get(key)
        if hit is not None:
            return hit
        nbytes = np.full(n, P, np.int64)
        hi = lo + size
        nbytes[0] = min(hi, P) - lo
        if n > 1:
            nbytes[-1] = hi - (n - 1) * P
        sectors = _sectors_of(nbytes)
        nbytes.flags.writeable = False
        sectors.flags.writeable = False
        with self._lock:
            if key not in self._d and n <= self.max_pages:
                while self._d and (self._pages + n > self.max_pages or
                                   len(self._d) >= self.max_entries):
                    old = next(iter(self._d))
                    self._pages -= len(self._d.pop(old)[0])
                self._d[key] = (nbytes, sectors)
                self._pages += n
        return nbytes, sectors


_RANGES = _RangeCache()


def _span(space: "Space", arr: np.ndarray) -> tuple[int, int]:
    """(first vpn, page count) of the pages ``arr`` spans, with the usual validation (foreign /
    freed / closed raise)."""
    alloc, first, n = space._resolve(arr)
    return alloc.vstart + first, n


def _base_offset(space: "Space", arr: np.ndarray, vlo: int) -> int:
    """Byte offset of ``arr``'s data pointer from the start of its first spanned page."""
    return int(arr.__array_interface__["data"][0] - space.va.addr(vlo))


def dense_footprint(space: "Space", arr: np.ndarray,
                    span: tuple[int, int] | None = None) -> Footprint:
    """Bytes of ``arr`` in each page it spans, computed arithmetically (any strides);
    ``span``: ``arr``'s (first vpn, pages) if the caller has them.

    C/F-contiguous arrays are one byte range (cached: see :class:`_RangeCache`); other
    layouts are split into their contiguous inner blocks, whose per-page coverage is summed
    with sorted prefix sums (no per-element Python work; memory proportional to the number of
    blocks)."""
    vlo, n = _span(space, arr) if span is None else span
    P = space.page_size
    if arr.size and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        # one byte range from an offset in [0, P): read-only arrays shared by every launch
        nbytes, sectors = _RANGES.get(P, n, _base_offset(space, arr, vlo), arr.nbytes)
        return Footprint(vlo, nbytes, sectors, True)
    nbytes = np.zeros(n, np.int64)
    if arr.size == 0:
        return Footprint(vlo, nbytes, nbytes.copy(), False)
    bounds = np.arange(n + 1, dtype=np.int64) * P     # page boundaries, relative to page 0
    # Strided: starts of the contiguous inner blocks of length L bytes.
    shape, strides, isz = arr.shape, arr.strides, arr.itemsize
    k = arr.ndim
    inner = isz
    while k > 0 and strides[k - 1] == inner:
        inner *= shape[k - 1]
        k -= 1
    L = inner
    base = _base_offset(space, arr, vlo)
    # covered(b): bytes of the blocks [s, s + L) that lie below byte b; per-page bytes are its
    # differences at the page boundaries.  nstart(b): blocks starting below b.
    if k == 1 and abs(strides[0]) >= L:
        # one row of non-overlapping blocks s_i = b0 + i*st: closed form, O(pages)
        N, st = shape[0], abs(strides[0])
        b0 = base if strides[0] >= 0 else base + (N - 1) * strides[0]

        def count_le(x: np.ndarray) -> np.ndarray:       # #{i : s_i <= x}
            return np.clip(np.floor_divide(x - b0, st) + 1, 0, N)

        def count_lt(x: np.ndarray) -> np.ndarray:       # #{i : s_i < x}
            return np.clip(-np.floor_divide(b0 - x, st), 0, N)

        def covered(b: np.ndarray) -> np.ndarray:
            i1, i2 = count_le(b - L), count_lt(b)
            ssum = b0 * (i2 - i1) + st * ((i2 * (i2 - 1) - i1 * (i1 - 1)) // 2)
            return L * i1 + b * (i2 - i1) - ssum
        nstart = count_lt
    else:
        starts = np.zeros((), np.int64) + base
        for d in range(k):
            starts = np.add.outer(starts, np.arange(shape[d], dtype=np.int64) * strides[d])
        S = np.sort(starts.reshape(-1))
        cum = np.concatenate(([0], np.cumsum(S)))

        def covered(b: np.ndarray) -> np.ndarray:
            i1 = np.searchsorted(S, b - L, side="right")
            i2 = np.searchsorted(S, b, side="left")
            return L * i1 + b * (i2 - i1) - (cum[i2] - cum[i1])

        def nstart(b: np.ndarray) -> np.ndarray:
            return np.searchsorted(S, b, side="left")

    nbytes[:] = np.diff(covered(bounds))
    if L >= SECTOR:
        sectors = _sectors_of(nbytes)
    else:   # each small block touches at least one sector of its own
        sectors = np.diff(nstart(bounds)).astype(np.int64)
        sectors = np.maximum(sectors, _sectors_of(nbytes))
    return Footprint(vlo, nbytes, sectors)


def page_histogram_footprint(space: "Space", arr: np.ndarray, hist: np.ndarray) -> Footprint:
    """Footprint of ``hist[p]`` element accesses to page ``p`` of the pages ``arr`` spans."""
    vlo, n = _span(space, arr)
    h = np.asarray(hist, np.int64)
    if h.shape != (n,):
        raise InvalidArgumentError(f"page histogram has shape {h.shape}, expected ({n},)")
    per = max(1, -(-arr.itemsize // SECTOR))
    return Footprint(vlo, h * arr.itemsize, h * per)


def kernel_page_params(space: "Space", arr: np.ndarray) -> tuple[int, int, int, int]:
    """(byte offset of element 0 within its first page, itemsize, page size, npages): what an
    in-kernel page histogram over a C-contiguous ``arr`` needs."""
    vlo, n = _span(space, arr)
    return _base_offset(space, arr, vlo), arr.itemsize, space.page_size, n


def indexed_footprint(space: "Space", arr: np.ndarray, index: Any) -> Footprint:
    """Footprint of one access per entry of ``index`` (flat C-order element indices of the
    C-contiguous ``arr``), via ``np.bincount`` of the pages.  Validates the indices."""
    if not arr.flags.c_contiguous:
        raise InvalidArgumentError("indexed accesses need a C-contiguous array (flat indices)")
    idx = np.asarray(index)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise InvalidArgumentError(f"index array must be integer, got {idx.dtype}")
    idx = idx.reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= arr.size):
        raise InvalidArgumentError(f"index out of range for an array of {arr.size} elements: "
                                   f"{idx.min()}..{idx.max()}")
    off0, isz, P, n = kernel_page_params(space, arr)
    pages = (off0 + idx.astype(np.int64) * isz) // P
    return page_histogram_footprint(space, arr, np.bincount(pages, minlength=n)[:n])


def _is_basic_key(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    for k in items:
        if k is None or k is Ellipsis or isinstance(k, slice):
            continue
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            continue
        return False
    return True


def _element_offset(arr: np.ndarray, key: Any) -> int | None:
    """Byte offset from ``arr``'s data of the one element an integer key (one int per
    dimension) selects; None for any other key, or one out of range (NumPy raises then)."""
    items = key if type(key) is tuple else (key,)
    if len(items) != arr.ndim or not arr.ndim:
        return None
    off = 0
    for k, size, stride in zip(items, arr.shape, arr.strides):
        if type(k) is not int:
            if not isinstance(k, np.integer):
                return None
            k = int(k)
        if k < 0:
            k += size
        if not 0 <= k < size:
            return None
        off += k * stride
    return off


def key_footprint(space: "Space", arr: np.ndarray, key: Any) -> Footprint:
    """Footprint of the elements ``arr[key]`` selects (basic or advanced indexing)."""
    elem = _element_offset(arr, key)
    if elem is not None:             # one element (a scalar store): no view to resolve
        alloc = space._allocation_of(arr)
        P = space.page_size
        off = arr.__array_interface__["data"][0] + elem - space.va.addr(alloc.vstart)
        first = off // P
        n = max(1, (off + arr.itemsize - 1) // P - first + 1)    # itemsize 0: one page
        nbytes, sectors = _RANGES.get(P, n, off - first * P, arr.itemsize)
        return Footprint(alloc.vstart + first, nbytes, sectors, True)
    plain = arr.view(np.ndarray)
    if _is_basic_key(key):
        items = key if isinstance(key, tuple) else (key,)
        if not any(k is Ellipsis for k in items):
            items = items + (Ellipsis,)
        return dense_footprint(space, plain[items])
    # Advanced indexing: the selected elements' byte offsets, from zero-copy broadcast grids of
    # each dimension's index (memory proportional to the selection, not the array).
    offs = np.zeros((), np.int64)
    for d in range(arr.ndim):
        shp = [1] * arr.ndim
        shp[d] = arr.shape[d]
        grid = np.broadcast_to(np.arange(arr.shape[d], dtype=np.int64).reshape(shp), arr.shape)
        offs = offs + grid[key] * arr.strides[d]
    vlo, n = _span(space, arr)
    start = _base_offset(space, arr, vlo)
    offs = np.asarray(offs, np.int64).reshape(-1)
    if offs.size == 0:
        z = np.zeros(n, np.int64)
        return Footprint(vlo, z, z.copy())
    pages = (start + offs) // space.page_size
    return page_histogram_footprint(space, arr, np.bincount(pages, minlength=n)[:n])


def host_footprints(ops: list[tuple[np.ndarray, str, Any]]) -> list[tuple[Any, list]]:
    """The footprints of CPU accesses ``(array, mode, key)`` (``key`` None: the whole array)
    seen by the array protocols, grouped by space: ``[(space, [(footprint, mode), ...])]``
    (an empty list for a space that counts nothing).  Validates the arrays."""
    from .array import buffer_of
    by_space: dict[int, tuple[Any, list]] = {}
    for arr, mode, key in ops:
        buf = buffer_of(arr)
        if buf is None:
            continue
        by_space.setdefault(id(buf.space), (buf.space, []))[1].append((arr, mode, key))
    out = []
    for sp, items in by_space.values():
        if not sp.counters.enabled:
            for arr, _m, _k in items:
                sp._resolve(arr)
            out.append((sp, []))
            continue
        out.append((sp, [(dense_footprint(sp, a) if k is None else key_footprint(sp, a, k), m)
                         for a, m, k in items]))
    return out


def fault_host_ahead(groups: list[tuple[Any, list]]) -> list:
    """Let each space fault the device pages these CPU accesses will touch home first, where
    its manager would (tunable ``faults_ahead``); before the operation's writers register
    (a migration skips pages being written).  Returns, per group, the faults that ran (None:
    none), for :func:`count_footprints`."""
    return [sp._fault_ahead_host(fps) if fps else None for sp, fps in groups]


def count_footprints(groups: list[tuple[Any, list]], aheads: list | None = None) -> None:
    """Count the CPU accesses of :func:`host_footprints`, one update per space; ``aheads``:
    what :func:`fault_host_ahead` returned for them (each taken, set to None, once counted)."""
    for i, (sp, fps) in enumerate(groups):
        if fps:
            ahead = aheads[i] if aheads else None
            sp.counters._host_footprints(fps, ahead)
            if aheads:
                aheads[i] = None


class host_operation:
    """Around one CPU operation over ``ops`` (as :func:`count_host`'s): its faults run first
    (:func:`fault_host_ahead`, when it is made); ``with`` yields the function that counts it,
    to call once the operation has completed.  An operation that raises before then counts
    nothing (it is bad input, mostly, which NumPy refuses before touching memory), and the
    faults that ran for it are an aborted epoch (:meth:`Space._abort`: priced, traced,
    replayed).  A class, not a generator: it wraps every small CPU operation."""

    __slots__ = ("groups", "aheads")

    def __init__(self, ops: list[tuple[np.ndarray, str, Any]]):
        self.groups = host_footprints(ops) if ops else []
        self.aheads = fault_host_ahead(self.groups)

    def count(self) -> None:
        """Count the operation (each space's faults are then taken: no abort after)."""
        count_footprints(self.groups, self.aheads)

    def abort(self) -> None:
        """The operation failed: the faults that ran for what was not counted are aborted
        epochs."""
        for (sp, fps), ahead in zip(self.groups, self.aheads):
            if ahead is not None:
                sp._abort("host", CPU, ahead, fps=fps)

    def __enter__(self) -> Callable[[], None]:
        return self.count

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        if et is not None:
            self.abort()
        return False


def count_host(ops: list[tuple[np.ndarray, str, Any]]) -> None:
    """Count CPU accesses ``(array, mode, key)`` (``key`` None: the whole array) seen by the
    array protocols, one update per space, their faults first (:func:`fault_host_ahead`).
    Validates the arrays even when counting is off."""
    groups = host_footprints(ops)
    count_footprints(groups, fault_host_ahead(groups))


# --------------------------------------------------------------------------------------------
# Tallies: the sparse per-page counts of one epoch (or one host operation)
# --------------------------------------------------------------------------------------------
class Tally:
    """Sparse counts of one epoch (or one host operation): ``vpns`` (sorted, unique), the
    placement ``node[n]`` the local/remote split was made with, bytes
    ``counts[n, proc, rw, loc]`` and 32-byte ``sectors[n, proc, rw]``.

    Held in one of three forms, all read through the same methods: the full matrices; column
    by column (only the (proc, rw, loc) columns an epoch touched exist, in ``cols``/``scols``,
    keyed ``proc*4 + rw*2 + loc`` and ``proc*2 + rw``; the matrices are materialised on first
    access); or, when every access of the epoch touched every page of its span (dense sweeps,
    the common case), as those accesses themselves: ``parts``, each (first row, processor, rw,
    footprint, node, byte column) over the rows ``runs`` (merged spans ``(first vpn, end)``);
    a part on one node has that node and its column, one on both sides its per-page nodes
    and -1.  A dense sweep's footprint is shared with every other launch over the same array
    (:class:`_RangeCache`), so nothing per page is kept: vpns, nodes, columns and matrices are
    computed when asked for, and not kept (a trace holds thousands of tallies).
    ``totals[proc, rw, loc]`` and ``by_node[proc, node]`` (sectors) summarise it;
    ``remote_sectors[proc, n]`` feeds the notification accumulators."""

    def __init__(self, vpns: np.ndarray | None, node: np.ndarray | None,
                 counts: np.ndarray | None = None, sectors: np.ndarray | None = None,
                 cols: dict[int, np.ndarray] | None = None,
                 scols: dict[int, np.ndarray] | None = None,
                 totals: np.ndarray | None = None, by_node: np.ndarray | None = None,
                 remote_sectors: np.ndarray | None = None, parts: list | None = None,
                 local: tuple[int, int] = (0, 1), runs: list | None = None):
        self._vpns = vpns
        self._node = node
        self._counts = counts
        self._sectors = sectors
        self._cols = cols
        self._scols = scols
        self.totals = totals
        self.by_node = by_node
        self.remote_sectors = remote_sectors
        self.parts = parts
        self.local = local
        self.runs = runs
        self.n = len(vpns) if vpns is not None else sum(b - a for a, b in runs or ())

    @staticmethod
    def empty() -> "Tally":
        return Tally(np.zeros(0, np.int64), np.zeros(0, np.int8),
                     np.zeros((0, 2, 2, 2), np.int64), np.zeros((0, 2, 2), np.int64),
                     totals=np.zeros((2, 2, 2), np.int64), by_node=np.zeros((2, 2)),
                     remote_sectors=np.zeros((2, 0), np.int64))

    @property
    def vpns(self) -> np.ndarray:
        if self._vpns is not None:
            return self._vpns
        runs = self.runs or []
        if len(runs) == 1:
            return np.arange(runs[0][0], runs[0][1], dtype=np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])

    @property
    def node(self) -> np.ndarray:
        if self._node is not None:
            return self._node
        node = np.full(self.n, -1, np.int8)
        for row, _proc, _rw, fp, nd, _kk in self.parts or ():
            node[row: row + len(fp.nbytes)] = nd
        return node

    # -- the parts form ------------------------------------------------------------------------
    def _pieces(self, local: tuple[int, int] | None = None) -> Any:
        """Per part (and, for a part on both sides, per side): (first row, first vpn, byte
        column, sector column, bytes, sectors, remote?)."""
        local = self.local if local is None else local
        for row, proc, rw, fp, nd, kk in self.parts or ():
            k, ks = proc * 4 + rw * 2, proc * 2 + rw
            if kk >= 0:
                yield row, fp.vlo, kk, ks, fp.nbytes, fp.sectors, nd != local[proc]
                continue
            remote = nd != local[proc]
            for side, mask in ((LOCAL, ~remote), (REMOTE, remote)):
                yield (row, fp.vlo, k + side, ks, np.where(mask, fp.nbytes, 0),
                       np.where(mask, fp.sectors, 0), side == REMOTE)

    def _matrix(self, width: int, sectors: bool) -> np.ndarray:
        m = np.zeros((self.n, width), np.int64)
        for row, _v, kk, ks, b, s, _r in self._pieces():
            if sectors:
                m[row: row + len(s), ks] += s
            else:
                m[row: row + len(b), kk] += b
        return m

    def _columns(self, sectors: bool) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for row, _v, kk, ks, b, s, _r in self._pieces():
            key, val = (ks, s) if sectors else (kk, b)
            if key not in out:
                out[key] = np.zeros(self.n, np.int64)
            out[key][row: row + len(val)] += val
        return out

    def alloc_ids(self, alloc: np.ndarray) -> np.ndarray | list[int]:
        """The allocation id of every row, from the page table's ``alloc`` now; in the parts
        form one per part (each lies in one allocation: see :meth:`expand_alloc`)."""
        if self.parts is not None:
            return [int(alloc[fp.vlo]) for _r, _p, _w, fp, _nd, _kk in self.parts]
        v = self.vpns
        if len(v) and int(v[-1]) - int(v[0]) + 1 == len(v):      # one run: a slice
            return alloc[int(v[0]): int(v[-1]) + 1].copy()
        return alloc[v]

    def expand_alloc(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """:meth:`alloc_ids` as one int32 per row."""
        if not isinstance(ids, list):
            return ids
        out = np.full(self.n, -1, np.int32)
        for (row, _p, _w, fp, _nd, _kk), i in zip(self.parts or (), ids):
            out[row: row + len(fp.nbytes)] = i
        return out

    def add_bytes(self, table: np.ndarray) -> None:
        """Add the bytes to ``table[vpn, proc*4 + rw*2 + loc]`` (the counters' table)."""
        if self.parts is not None:
            for _row, v0, kk, _ks, b, _s, _r in self._pieces():
                table[v0: v0 + len(b), kk] += b
            return
        vp = self.vpns
        n = len(vp)
        if n and vp[-1] - vp[0] + 1 == n:               # one contiguous run
            runs_ = [(0, n)]
        else:
            brk = np.flatnonzero(np.diff(vp) != 1) + 1
            runs_ = list(zip([0, *brk.tolist()], [*brk.tolist(), n])) if len(brk) < 32 \
                else None
        for k, c in self.byte_columns():
            if runs_ is None:
                table[vp, k] += c                          # vpns are unique
            else:
                for a, b in runs_:
                    table[vp[a]: vp[a] + (b - a), k] += c[a:b]

    # -- columns and matrices -------------------------------------------------------------------
    @property
    def cols(self) -> dict[int, np.ndarray] | None:
        return self._columns(False) if self.parts is not None else self._cols

    @property
    def scols(self) -> dict[int, np.ndarray] | None:
        return self._columns(True) if self.parts is not None else self._scols

    @property
    def counts(self) -> np.ndarray:
        if self.parts is not None:
            return self._matrix(8, False).reshape(-1, 2, 2, 2)
        if self._counts is None:
            c = np.zeros((self.n, 8), np.int64)
            for k, col in (self._cols or {}).items():
                c[:, k] = col
            self._counts = c.reshape(-1, 2, 2, 2)
        return self._counts

    @property
    def sectors(self) -> np.ndarray:
        if self.parts is not None:
            return self._matrix(4, True).reshape(-1, 2, 2)
        if self._sectors is None:
            c = np.zeros((self.n, 4), np.int64)
            for k, col in (self._scols or {}).items():
                c[:, k] = col
            self._sectors = c.reshape(-1, 2, 2)
        return self._sectors

    def byte_columns(self) -> list[tuple[int, np.ndarray]]:
        """(proc*4 + rw*2 + loc, bytes per page) of every column that may be nonzero."""
        cols = self.cols
        if cols is not None:
            return list(cols.items())
        flat = self.counts.reshape(-1, 8)
        return [(k, flat[:, k]) for k in range(8) if flat[:, k].any()]

    def sector_column(self, proc: int) -> np.ndarray:
        """Sectors per page of processor ``proc`` (reads + writes)."""
        scols = self.scols
        if scols is not None:
            out = np.zeros(self.n, np.int64)
            for k, col in scols.items():
                if k // 2 == proc:
                    out += col
            return out
        return self.sectors[:, proc, 0] + self.sectors[:, proc, 1]

    @property
    def nbytes(self) -> int:
        return int(self.get_totals().sum())

    def get_totals(self) -> np.ndarray:
        if self.totals is None:
            t = np.zeros(8, np.int64)
            for k, col in self.byte_columns():
                t[k] = col.sum()
            self.totals = t.reshape(2, 2, 2)
        return self.totals

    def sectors_by_node(self, nnodes: int) -> np.ndarray:
        """``[proc, node]`` sectors, for the clock."""
        if self.by_node is not None and self.by_node.shape[1] >= nnodes:
            return self.by_node
        out = np.zeros((2, nnodes), np.float64)
        node = self.node.astype(np.int64)
        ok = node >= 0
        for p in range(2):
            w = self.sector_column(p)
            if w.any():
                out[p] = np.bincount(node[ok], weights=w[ok], minlength=nnodes)[:nnodes]
        self.by_node = out
        return out

    def get_remote_sectors(self, local: tuple[int, int]) -> np.ndarray:
        """``[proc, n]`` sectors on pages not local to each processor (kept, except in the
        parts form)."""
        if self.remote_sectors is not None:
            return self.remote_sectors
        if self.parts is not None:
            return np.stack([np.zeros(self.n, np.int64) if r is None else r
                             for r in self.remote_rows(local)])
        rs = np.zeros((2, self.n), np.int64)
        for p in range(2):
            w = self.sector_column(p)
            if w.any():
                rs[p] = np.where(self.node != local[p], w, 0)
        self.remote_sectors = rs
        return rs

    def remote_rows(self, local: tuple[int, int]) -> tuple[Any, Any]:
        """:meth:`get_remote_sectors` per processor, None for one without any; in the parts
        form a part that alone covers every row gives its own array (nothing is copied)."""
        if self.parts is None:
            rs = self.get_remote_sectors(local)
            return rs[0], rs[1]
        n = self.n
        out: list[Any] = [None, None]
        own = [False, False]
        for row, _v, _kk, ks, _b, s, remote in self._pieces(local):
            if not remote:
                continue
            p = ks // 2
            if out[p] is None and row == 0 and len(s) == n:
                out[p] = s
                continue
            if not own[p]:
                out[p] = np.zeros(n, np.int64) if out[p] is None else out[p].copy()
                own[p] = True
            out[p][row: row + len(s)] += s
        return out[0], out[1]


def _sum_parts(parts: list, rows: list[int], n: int, local: tuple[int, int], nnodes: int,
               columns: bool) -> tuple:
    """Sum footprints ``parts`` (proc, rw, footprint, node), part ``i`` from row ``rows[i]``
    of ``n``: returns the node per row, the totals ``[proc, rw, loc]``, sectors by node
    ``[proc, node]``, each part's byte column (-1: its pages lie on both sides) and, with
    ``columns``, the byte and sector columns, remote sectors ``[proc, row]`` and the touched
    rows (else None for those, and for the nodes)."""
    cols: dict[int, np.ndarray] = {}
    scols: dict[int, np.ndarray] = {}
    rsec: dict[int, np.ndarray] = {}

    def col(d: dict[int, np.ndarray], k: int) -> np.ndarray:
        c = d.get(k)
        if c is None:
            c = d[k] = np.zeros(n, np.int64)
        return c

    node = np.full(n, -1, np.int8) if columns else None
    touched = np.zeros(n, bool) if columns else None
    totals = np.zeros(8, np.int64)
    by_node = np.zeros((2, nnodes))
    kks = []
    for (proc, rw, fp, nd), row in zip(parts, rows):
        s = slice(row, row + len(fp.nbytes))
        k = proc * 4 + rw * 2
        nmin, nmax = int(nd.min()), int(nd.max())
        ssum = int(fp.sectors.sum())
        if nmin == nmax:                        # the whole span on one node
            kk = k + (LOCAL if nmin == local[proc] else REMOTE)
            totals[kk] += int(fp.nbytes.sum())
            if columns:
                col(cols, kk)[s] += fp.nbytes
                if kk == k + REMOTE:
                    col(rsec, proc)[s] += fp.sectors
            if 0 <= nmin < nnodes:
                by_node[proc, nmin] += ssum
        else:
            kk = -1
            remote = nd != local[proc]
            rb = np.where(remote, fp.nbytes, 0)
            r = int(rb.sum())
            totals[k + REMOTE] += r
            totals[k + LOCAL] += int(fp.nbytes.sum()) - r
            if columns:
                col(cols, k + REMOTE)[s] += rb
                col(cols, k + LOCAL)[s] += fp.nbytes - rb
                col(rsec, proc)[s] += np.where(remote, fp.sectors, 0)
            ok = nd >= 0
            by_node[proc] += np.bincount(nd[ok].astype(np.intp), weights=fp.sectors[ok],
                                         minlength=nnodes)[:nnodes]
        kks.append(kk)
        if columns:
            node[s] = nd
            col(scols, proc * 2 + rw)[s] += fp.sectors
            touched[s] |= fp.nbytes > 0
    rs = None
    if columns:
        rs = np.zeros((2, n), np.int64)
        for p, c in rsec.items():
            rs[p] = c
    return node, totals.reshape(2, 2, 2), by_node, kks, cols, scols, rs, touched


class TallyBuilder:
    """Collects footprints (processor, rw, pages, bytes, sectors) with the placement they were
    made under, and merges them into one :class:`Tally`."""

    def __init__(self, local_nodes: tuple[int, int], nnodes: int = 2):
        self.local = local_nodes
        self.nnodes = nnodes
        self.parts: list[tuple[int, int, Footprint, np.ndarray]] = []

    def add(self, proc: int, rw: int, fp: Footprint, node: np.ndarray) -> None:
        if len(fp.nbytes):
            self.parts.append((proc, rw, fp, node))

    def build(self) -> Tally:
        parts = self.parts
        if not parts:
            return Tally.empty()
        if all(p[2].is_full() for p in parts):
            if len(parts) == 1 and len(parts[0][2].nbytes) == 1:
                return self._build_page(*parts[0])
            return self._build_parts()
        lo = min(p[2].vlo for p in parts)
        hi = max(p[2].vhi for p in parts)
        total = sum(len(p[2].nbytes) for p in parts)
        if hi - lo > 4 * total + 64:
            return self._build_sparse()
        if len({(p[2].vlo, len(p[2].nbytes)) for p in parts}) == 1:
            fast = self._build_one_span(parts)
            if fast is not None:
                return fast
        # Dense accumulation over the hull of the spans, one 1-D array per (proc, rw, loc)
        # column that occurs; then keep the touched rows.  Summaries come from the parts.
        node, totals, by_node, _, cols, scols, rs, touched = _sum_parts(
            parts, [p[2].vlo - lo for p in parts], hi - lo, self.local, self.nnodes, True)
        if touched.all():
            return Tally(np.arange(lo, hi, dtype=np.int64), node, cols=cols, scols=scols,
                         totals=totals, by_node=by_node, remote_sectors=rs)
        keep = np.flatnonzero(touched)
        return Tally(keep + lo, node[keep], cols={k: c[keep] for k, c in cols.items()},
                     scols={k: c[keep] for k, c in scols.items()},
                     totals=totals, by_node=by_node, remote_sectors=rs[:, keep])

    def _build_page(self, proc: int, rw: int, fp: Footprint, nd: np.ndarray) -> Tally:
        """One access to one page (a scalar store, a small slice): :meth:`_build_parts`'s
        tally, without its merging of spans."""
        node = int(nd[0])
        kk = proc * 4 + rw * 2 + (LOCAL if node == self.local[proc] else REMOTE)
        totals = np.zeros(8, np.int64)
        totals[kk] = fp.nbytes[0]
        by_node = np.zeros((2, self.nnodes))
        if 0 <= node < self.nnodes:
            by_node[proc, node] = fp.sectors[0]
        return Tally(None, None, totals=totals.reshape(2, 2, 2), by_node=by_node,
                     parts=[(0, proc, rw, fp, node, kk)], local=self.local,
                     runs=[(fp.vlo, fp.vhi)])

    def _build_parts(self) -> Tally:
        """Every part touches every page of its span: the rows are the union of the spans,
        and the tally keeps the parts (see :class:`Tally`)."""
        runs: list[list[int]] = []          # [first vpn, end, first row] of merged spans
        n = 0
        for lo, hi in sorted({(p[2].vlo, p[2].vhi) for p in self.parts}):
            if runs and lo <= runs[-1][1]:
                if hi > runs[-1][1]:
                    n += hi - runs[-1][1]
                    runs[-1][1] = hi
            else:
                runs.append([lo, hi, n])
                n += hi - lo
        starts = [r[0] for r in runs]
        rows = []
        for p in self.parts:
            r = runs[bisect.bisect_right(starts, p[2].vlo) - 1]
            rows.append(r[2] + p[2].vlo - r[0])
        _, totals, by_node, kks, *_ = _sum_parts(self.parts, rows, n, self.local, self.nnodes,
                                                 False)
        parts = [(row, proc, rw, fp, int(nd[0]) if kk >= 0 else nd, kk)
                 for row, (proc, rw, fp, nd), kk in zip(rows, self.parts, kks)]
        return Tally(None, None, totals=totals, by_node=by_node, parts=parts,
                     local=self.local, runs=[(a, b) for a, b, _ in runs])

    def _build_one_span(self, parts: list) -> Tally | None:
        """Every part covers the same pages, all on one node (a host operation on one array,
        say): the columns are the parts' own arrays.  None if that does not hold."""
        fp0, nd0 = parts[0][2], parts[0][3]
        node = int(nd0[0])
        for _p, _r, _fp, nd in parts:
            if int(nd.min()) != node or int(nd.max()) != node:
                return None
        n = len(fp0.nbytes)
        cols: dict[int, np.ndarray] = {}
        scols: dict[int, np.ndarray] = {}
        totals = np.zeros(8, np.int64)
        by_node = np.zeros((2, self.nnodes))
        rs = np.zeros((2, n), np.int64)
        touched = np.zeros(n, bool)
        for proc, rw, fp, _nd in parts:
            remote = node != self.local[proc]
            kk = proc * 4 + rw * 2 + (REMOTE if remote else LOCAL)
            cols[kk] = cols[kk] + fp.nbytes if kk in cols else fp.nbytes
            ks = proc * 2 + rw
            scols[ks] = scols[ks] + fp.sectors if ks in scols else fp.sectors
            totals[kk] += int(fp.nbytes.sum())
            ssum = int(fp.sectors.sum())
            if 0 <= node < self.nnodes:
                by_node[proc, node] += ssum
            if remote:
                rs[proc] += fp.sectors
            touched |= fp.nbytes > 0
        node_arr = np.full(n, node, np.int8)
        if touched.all():
            return Tally(np.arange(fp0.vlo, fp0.vhi, dtype=np.int64), node_arr, cols=cols,
                         scols=scols, totals=totals.reshape(2, 2, 2), by_node=by_node,
                         remote_sectors=rs)
        keep = np.flatnonzero(touched)
        return Tally(keep + fp0.vlo, node_arr[keep], cols={k: c[keep] for k, c in cols.items()},
                     scols={k: c[keep] for k, c in scols.items()},
                     totals=totals.reshape(2, 2, 2), by_node=by_node, remote_sectors=rs[:, keep])

    def _build_sparse(self) -> Tally:
        """Spans far apart in the address space: one small tally per part, merged."""
        out = []
        for proc, rw, fp, nd in self.parts:
            sub = TallyBuilder(self.local, self.nnodes)
            sub.parts = [(proc, rw, fp, nd)]
            out.append(sub.build())
        return merge_tallies(out)


def merge_tallies(tallies: list[Tally]) -> Tally:
    """Sum tallies page by page (the node of the last tally that touched a page wins; the
    summaries add up; ``remote_sectors`` is recomputed on demand).

    Vectorised over the tallies: the parts of tallies in the parts form (the host epoch's
    many small CPU operations, dense launches) are gathered as columns, so merging costs a
    few list appends per part, not a matrix per tally."""
    tallies = [t for t in tallies if t.n]
    if not tallies:
        return Tally.empty()
    if len(tallies) == 1:
        return tallies[0]
    # single-node parts: first vpn, length, byte column, sector column, node, order, values
    lo: list[int] = []
    ln: list[int] = []
    kks: list[int] = []
    kss: list[int] = []
    nds: list[int] = []
    seq: list[int] = []
    nb: list[np.ndarray] = []
    sc: list[np.ndarray] = []
    dense: list[tuple[int, tuple]] = []         # (order, (vpns, bytes, sectors, node))
    for i, t in enumerate(tallies):
        if t.parts is None or any(p[5] < 0 for p in t.parts):     # matrices (kept, or made)
            dense.append((i, (t.vpns, t.counts.reshape(-1, 8), t.sectors.reshape(-1, 4),
                              t.node)))
            continue
        for _row, proc, rw, fp, nd, kk in t.parts:
            lo.append(fp.vlo)
            ln.append(len(fp.nbytes))
            kks.append(kk)
            kss.append(proc * 2 + rw)
            nds.append(nd)
            seq.append(i)
            nb.append(fp.nbytes)
            sc.append(fp.sectors)
    lens = np.asarray(ln, np.int64)
    v_parts = expand_runs(lo, lens)
    v_all = np.concatenate([v_parts, *(f[0] for _i, f in dense)])
    u, inv = np.unique(v_all, return_inverse=True)
    m = len(v_parts)
    counts = np.zeros((len(u), 8), np.int64)
    sectors = np.zeros((len(u), 4), np.int64)
    if m:
        np.add.at(counts.reshape(-1), inv[:m] * 8 + np.repeat(np.asarray(kks), lens),
                  np.concatenate(nb))
        np.add.at(sectors.reshape(-1), inv[:m] * 4 + np.repeat(np.asarray(kss), lens),
                  np.concatenate(sc))
    if dense:
        inv_d = inv[m:]
        np.add.at(counts, inv_d, np.concatenate([f[1] for _i, f in dense]))
        np.add.at(sectors, inv_d, np.concatenate([f[2] for _i, f in dense]))
    # the node of each page's last entry (by tally, then part: lexsort is stable)
    order_all = np.concatenate([np.repeat(np.asarray(seq, np.int64), lens),
                                *(np.full(len(f[0]), i, np.int64) for i, f in dense)])
    node_all = np.concatenate([np.repeat(np.asarray(nds, np.int8), lens),
                               *(np.asarray(f[3], np.int8) for _i, f in dense)])
    o = np.lexsort((order_all, inv))
    last = np.flatnonzero(np.append(inv[o][1:] != inv[o][:-1], True))
    node = node_all[o][last]
    nn = max(t.sectors_by_node(2).shape[1] for t in tallies)
    by_node = np.zeros((2, nn))
    for t in tallies:
        b = t.sectors_by_node(2)
        by_node[:, : b.shape[1]] += b
    totals = np.sum([t.get_totals() for t in tallies], axis=0)
    return Tally(u, node, counts.reshape(-1, 2, 2, 2), sectors.reshape(-1, 2, 2),
                 totals=totals, by_node=by_node)


# --------------------------------------------------------------------------------------------
# The unit
# --------------------------------------------------------------------------------------------
class AccessCounters:
    """``space.counters``: per-page access counters and notifications of one space (see the
    module docs).  Thread-safe; updates run under the space lock."""

    def __init__(self, space: "Space"):
        self._space = space
        self.bytes = np.zeros((0, 2, 2, 2), np.int64)   #: int64[vpn, proc, rw, loc], bytes
        self._acc = np.zeros((2, 0), np.int64)           # remote sectors per proc x region
        self._region_pages = 0
        self._ensured = (-1, -1)       # (page-table size, tunables generation) last ensured
        self._nlock = threading.Lock()
        self._pending: list[np.ndarray] = []
        self._npending = 0
        self._subscribers: list[Callable[[np.ndarray], Any]] = []
        #: number of the epoch now open (launches and host epochs are numbered in order)
        self.epoch = 0
        self._host_open = False
        space.migrate_listeners.append(self._on_migrate)

    # -- configuration --------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self._space.tunables.access_counters)

    @property
    def pages_per_region(self) -> int:
        """Pages per notification region: ``max(1, granularity // page_size)``."""
        return max(1, self._space.tunables.access_counter_granularity // self._space.page_size)

    def local_nodes(self) -> tuple[int, int]:
        return (0, self._space.device.id)

    def _ensure(self) -> None:
        """Grow the tables to the page table's size; reset the accumulators if the region size
        changed (they are per region)."""
        sp = self._space
        size = sp.pt.size
        key = (size, sp.tunables.gen)       # what the tables' shapes depend on
        if key == self._ensured:
            return
        if len(self.bytes) < size:
            grown = np.zeros((size, 2, 2, 2), np.int64)
            grown[: len(self.bytes)] = self.bytes
            self.bytes = grown
        rp = self.pages_per_region
        nreg = -(-size // rp)
        if rp != self._region_pages:
            self._acc = np.zeros((2, nreg), np.int64)
            self._region_pages = rp
        elif self._acc.shape[1] < nreg:
            grown = np.zeros((2, nreg), np.int64)
            grown[:, : self._acc.shape[1]] = self._acc
            self._acc = grown
        self._ensured = key

    # -- updates (caller holds the space lock) ------------------------------------------------
    def _apply(self, t: Tally, epoch: int) -> int:
        """Add a tally to the per-page counters, accumulate remote sectors per region and queue
        notifications.  Returns the number of notifications raised."""
        n = t.n
        if n == 0:
            return 0
        sp = self._space
        self._ensure()
        vp = t.vpns
        t.add_bytes(self.bytes.reshape(-1, 8))
        tot = t.get_totals()
        sp.vmstat.add_named({name: v for name, v in zip(_BYTE_STATS, tot.reshape(-1).tolist())
                             if v})
        new = raise_notifications(self._acc, vp, t.remote_rows(self.local_nodes()),
                                  self._region_pages,
                                  sp.tunables.access_counter_threshold, epoch)
        if not len(new):
            return 0
        cap = sp.tunables.access_counter_buffer
        with self._nlock:
            room = max(0, cap - self._npending)
            if len(new) > room:
                sp.vmstat.add(access_counter_notifications_dropped=len(new) - room)
                new = new[:room]
            if len(new):
                self._pending.append(new)
                self._npending += len(new)
        sp.vmstat.add(access_counter_notifications=len(new))
        return len(new)

    def _on_migrate(self, vpns: np.ndarray, src_nodes: np.ndarray, target: int) -> None:
        """Migration listener (space lock held): clear the moved pages and their regions."""
        self._ensure()
        vpns = np.asarray(vpns, np.int64)
        self.bytes[vpns] = 0
        self._acc[:, np.unique(vpns // self._region_pages)] = 0
        self._space.vmstat.add(access_counter_clears=len(vpns))

    def forget(self, lo: int, hi: int) -> None:
        """Clear pages ``[lo, hi)`` (their allocation was freed).  Space lock held."""
        self._ensure()
        self.bytes[lo:hi] = 0
        rp = self._region_pages
        self._acc[:, lo // rp: -(-hi // rp)] = 0

    # -- host side ------------------------------------------------------------------------------
    def host(self, arr: np.ndarray, mode: str, key: Any = None) -> None:
        """Count a CPU access to ``arr`` (or to ``arr[key]``): ``mode`` ``"r"``, ``"w"`` or
        ``"rw"``.  Validates ``arr`` even when counting is off."""
        if mode not in ("r", "w", "rw"):
            raise InvalidArgumentError(f"mode must be 'r', 'w' or 'rw', got {mode!r}")
        sp = self._space
        if not self.enabled:
            sp._resolve(arr)
            return
        fp = dense_footprint(sp, arr) if key is None else key_footprint(sp, arr, key)
        self._host_footprints([(fp, mode)], sp._fault_ahead_host([(fp, mode)]))

    def _launch_tally(self, parts: Iterable[tuple[Footprint, int, np.ndarray]]) -> "Tally":
        """The tally of one launch's accesses ``(footprint, rw, node of its pages as the
        device sees them)``."""
        b = TallyBuilder(self.local_nodes(), len(self._space.nodes))
        for fp, rw, node in parts:
            b.add(DEVICE, rw, fp, node)
        return b.build()

    def _host_tally(self, items: list[tuple[Footprint, str]]) -> "Tally":
        """The tally of one CPU operation's accesses, split local/remote by where its pages
        are now (space lock held)."""
        sp = self._space
        b = TallyBuilder(self.local_nodes(), len(sp.nodes))
        for fp, mode in items:
            node = sp.pt.node[fp.vlo:fp.vhi].copy()
            if "r" in mode:
                b.add(CPU, READ, fp, node)
            if "w" in mode:
                b.add(CPU, WRITE, fp, node)
        return b.build()

    def _host_footprints(self, items: list[tuple[Footprint, str]], ahead: Any = None) -> None:
        """Count one CPU operation; ``ahead``: the faults that ran for it first
        (:meth:`Space._fault_ahead_host`), which make it a host epoch of its own."""
        sp = self._space
        with sp._cond:
            if ahead is not None:
                sp._window = None
            if (sp._host_alone or ahead is not None) and self._host_open:
                self._close_host_epoch()     # the operation before faulted, or this one did
            t = self._host_tally(items)
            if t.n == 0:
                return
            if ahead is not None:            # set with the count, so no other operation's
                sp._host_alone, sp._host_ahead = True, ahead     # epoch can take them
            modeled = sp.clock.tally_seconds(t.sectors_by_node(len(sp.nodes)), launch=False)
            sp.clock.advance("host", modeled)
            self._apply(t, self.epoch)
            self._host_open = True
            sp.trace._add_host(t, modeled, sp._host_tallies.adds)
            sp._note_host_tally(t)
        self._deliver()

    # -- epochs (space lock held) -----------------------------------------------------------------
    def _close_host_epoch(self) -> Any:
        """Close the open host epoch (if any): it gets the current number, and its trace
        record (if tracing)."""
        if not self._host_open:
            return None
        t = self._space._queue_host_epoch(self.epoch)
        rec = self._space.trace._close_host(self.epoch, t)
        self.epoch += 1
        self._host_open = False
        return rec

    def _next_launch_epoch(self) -> int:
        self._close_host_epoch()
        e = self.epoch
        self.epoch += 1
        return e

    # -- notifications ------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[np.ndarray], Any]) -> None:
        """Call ``fn(batch)`` with each batch of notifications (a structured array of
        :data:`NOTIFICATION_DTYPE`).  Called outside the space lock, on the thread whose
        launch or host operation completed the batch."""
        if not callable(fn):
            raise InvalidArgumentError(f"subscribe needs a callable, got {type(fn).__name__}")
        with self._nlock:
            self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[np.ndarray], Any]) -> None:
        with self._nlock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    @property
    def pending(self) -> int:
        """Notifications queued and not yet delivered or drained."""
        return self._npending

    def _take(self, n: int | None) -> np.ndarray:
        # caller holds _nlock
        if not self._pending:
            return np.zeros(0, NOTIFICATION_DTYPE)
        allq = np.concatenate(self._pending)
        n = len(allq) if n is None else min(n, len(allq))
        out, rest = allq[:n], allq[n:]
        self._pending = [rest] if len(rest) else []
        self._npending = len(rest)
        return out

    def drain(self, max_items: int | None = None) -> np.ndarray:
        """Take (and remove) up to ``max_items`` pending notifications, oldest first."""
        with self._nlock:
            return self._take(max_items)

    def flush(self) -> int:
        """Deliver every pending notification to the subscribers now (even a partial batch).
        Returns how many were delivered (0 without subscribers: they stay pending)."""
        return self._deliver(force=True)

    def _deliver(self, force: bool = False) -> int:
        batches = []
        with self._nlock:
            if not self._subscribers:
                return 0
            size = self._space.tunables.access_counter_batch
            while self._npending >= size or (force and self._npending):
                batches.append(self._take(size))
            subs = list(self._subscribers)
        for batch in batches:
            for fn in subs:
                fn(batch)
        return sum(len(b) for b in batches)

    # -- queries ----------------------------------------------------------------------------------
    def counts(self, arr: np.ndarray) -> np.ndarray:
        """Counters of the pages ``arr`` spans: ``int64[page, proc, rw, loc]`` (a copy)."""
        _, lo, hi = self._space._span_vpns(arr)
        with self._space._cond:
            self._ensure()
            return self.bytes[lo:hi].copy()

    def totals(self, arr: np.ndarray | None = None) -> dict[str, int]:
        """Bytes by ``"<proc>_<read|write>_<local|remote>"``, over ``arr``'s pages (current
        counters, cleared by migration) or, without ``arr``, space-wide since creation."""
        if arr is None:
            snap = self._space.vmstat.snapshot()
            return {f"{p}_{r}_{lc}": int(snap.get(f"access_bytes_{p}_{r}_{lc}", 0))
                    for p in PROC_NAMES for r in RW_NAMES for lc in LOC_NAMES}
        c = self.counts(arr).sum(axis=0)
        return {f"{PROC_NAMES[p]}_{RW_NAMES[r]}_{LOC_NAMES[lc]}": int(c[p, r, lc])
                for p in range(2) for r in range(2) for lc in range(2)}

    def clear(self, arr: np.ndarray | None = None) -> None:
        """Zero the per-page counters and region accumulators (of ``arr``'s pages, or all)."""
        with self._space._cond:
            self._ensure()
            if arr is None:
                self.bytes[:] = 0
                self._acc[:] = 0
            else:
                _, lo, hi = self._space._span_vpns(arr)
                self.forget(lo, hi)

    def region_sectors(self, processor: int | str = "device") -> np.ndarray:
        """Remote sectors accumulated per region (since its last notification or clear)."""
        p = PROC_NAMES.index(processor) if isinstance(processor, str) else int(processor)
        with self._space._cond:
            self._ensure()
            return self._acc[p].copy()

    def __repr__(self) -> str:
        return (f"<AccessCounters pages={len(self.bytes)} region={self.pages_per_region} pages "
                f"pending={self._npending}>")
