"""The emulated machine: nodes, one virtual address space, one page table.

>>> import ccadgpu, numpy as np
>>> with ccadgpu.Space(device_memory="64MiB", page_size="64KiB") as sp:
...     a = sp.asarray(np.arange(1 << 20, dtype=np.float64))
...     r = sp.move_pages(a, "device")
...     assert r.ok and (sp.placement(a) == 1).all() and a[12345] == 12345.0
"""
from __future__ import annotations

import collections
import contextlib
import math
import operator
import os
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import _sys
from . import hints as _hints
from . import pagetable as ptf
from .array import ManagedArray, _Buffer, buffer_of
from .clock import Clock, Profile, load_profile
from .counters import AccessCounters
from .hostepoch import HostAccesses
from .errors import (CapacityError, CcadError, DeviceOfflineError, ForeignArrayError, FreedArrayError,
                     InvalidArgumentError,
                     PinnedError, SpaceClosedError, UnknownNodeError, UnsupportedPlatformError)
from .migrate import MigrationReport, Migrator, notify, repoint
from .nodes import Node, NodeInfo, default_distances
from .pagetable import PageTable
from .placement import parse as parse_placement
from .placement import plan as plan_placement
from .telemetry import VmStat
from .trace import Trace
from .tunables import Tunables
from .units import parse_size
from .runs import run_phase
from .vaspace import HUGE_ALIGN, MAP_BUDGET, VASpace, count_breaks

HOST, DEVICE = 0, 1

#: Arrays spanning at least this many pages may take one page more for their cache colour
#: (:meth:`Space._colour`); smaller ones are coloured only within the room in their last page.
COLOUR_EXTRA_PAGE_MIN = 16


@dataclass(eq=False)
class Allocation:
    """One managed allocation: a run of virtual pages ``[vstart, vstart + npages)``."""
    id: int
    vstart: int
    npages: int
    nbytes: int
    shape: tuple
    dtype: np.dtype
    placement: str
    name: str | None
    freed: bool = False
    vmas: int = 0
    buffer: Any = field(default=None, repr=False)   # weakref to the _Buffer
    #: the last epoch (number) that touched the allocation, -1 none: freeing it releases its
    #: pages only once the manager has stepped that epoch (:meth:`Space._free_locked`)
    last_epoch: int = -1
    #: its pages went back to their nodes (freed, and no epoch the manager has still to step
    #: touched it); ``buffer_dead``: no array refers to it any more
    released: bool = False
    buffer_dead: bool = False

    def __hash__(self) -> int:
        return self.id


def _phys_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class Space:
    """An emulated coherent machine: host node 0, device node 1, one virtual address space.

    Parameters
    ----------
    device_memory:
        Device node capacity, bytes or a string like ``"256MiB"``.
    host_memory:
        Host node capacity (default: the machine's physical memory; memory is only used as pages
        are allocated).  Set it small to test host exhaustion.
    page_size:
        Migration granularity; a multiple of the OS page (4 KiB).  Larger pages need fewer
        memory mappings (``vm.max_map_count``) and migrate faster; smaller ones track access
        more finely.
    backend:
        ``"auto"`` (default): ``"cuda"`` when CuPy imports and a GPU is usable, else ``"cpu"``
        (``CCADGPU_BACKEND`` overrides; ``backend_reason`` says which and why).  ``"cpu"``: the
        CPU stand-in (memfd arenas remapped in place).  ``"cuda"``: the space is one managed
        allocation on a real GPU, pages are placed with ``cudaMemAdvise`` +
        ``cudaMemPrefetchAsync`` and device ops run as instrumented CUDA kernels (see
        :mod:`ccadgpu.backends.gpu_space` for what differs).  A
        :class:`~ccadgpu.backends.cuda.CudaBackend` instance picks the GPU, its memory budget
        and margin; the space does not close a backend it was given.
    profile:
        Machine profile for modeled time (:mod:`ccadgpu.clock`): a name (``"gh200"``,
        ``"h100-pcie"``, ``"capi-power8"``, ``"cxl-type2"``, or one of yours), a path to a
        ``.toml`` file, or a :class:`~ccadgpu.clock.Profile`.
    policy:
        Placement policy run by the migration manager after every epoch (:mod:`ccadgpu.manager`):
        ``"static"`` (default: never migrates, R5), ``"first_touch"``, ``"on_demand"``,
        ``"access_counter"``, ``"autonuma"``, a registered name, or a
        :class:`~ccadgpu.policies.Policy` instance; ``policy_params`` are its parameters.
    tunables:
        Initial knob values, see :mod:`ccadgpu.tunables`.
    """

    def __init__(self, device_memory: int | str = "256MiB", host_memory: int | str | None = None,
                 page_size: int | str = "64KiB", backend: Any = "auto",
                 profile: "str | os.PathLike[str] | Profile" = "gh200",
                 policy: Any = "static", policy_params: dict[str, Any] | None = None,
                 **tunables: Any):
        if not _sys.SUPPORTED:
            raise UnsupportedPlatformError(
                "ccadgpu's CPU stand-in needs Linux (memfd_create and mmap(MAP_FIXED)); "
                f"this is {os.sys.platform}")
        backend_obj = backend if not isinstance(backend, str) else None
        backend, self.backend_reason = _resolve_backend(backend)
        ps = parse_size(page_size, "page_size")
        if ps <= 0 or ps % _sys.OS_PAGE:
            raise InvalidArgumentError(
                f"page_size {page_size!r} must be a positive multiple of the OS page "
                f"({_sys.OS_PAGE} bytes)")
        dev = parse_size(device_memory, "device_memory")
        host = parse_size(host_memory, "host_memory") if host_memory is not None \
            else _phys_bytes()
        if host < ps:
            raise InvalidArgumentError(f"host_memory {host_memory!r} is smaller than one page "
                                       f"({ps} bytes)")
        if backend == "cuda":
            from .backends.gpu_space import check_cuda_space_args
            check_cuda_space_args(ps)
            # x86 + PCIe: a CPU touch of a device page makes the driver bring it back; say so
            tunables.setdefault("cpu_access", "migrate_on_cpu_fault")
        self.tunables = Tunables(**tunables)
        self.profile: Profile = load_profile(profile)
        from .policies import make_policy
        policy = make_policy(policy, **(policy_params or {}))   # bad names raise before any mmap
        self.page_size = ps
        self.backend = backend
        self.vmstat = VmStat()
        self._cond = threading.Condition(threading.RLock())
        self._writers: list[tuple[int, int, int]] = []   # (vlo, vhi, thread id)
        self._allocs: dict[int, Allocation] = {}
        self._next_id = 0
        self._graveyard: collections.deque[Allocation] = collections.deque()
        self._live_buffers = 0
        self.closed = False
        self.nodes: list[Node] = []
        #: the cuda mechanism (:class:`~ccadgpu.backends.gpu_space.GpuMemory`), None on the CPU
        self.gpu: Any = None
        try:
            if backend == "cuda":
                self._init_gpu(backend_obj, host_memory, host, dev, ps)
            else:
                huge = self.tunables.hugetlb
                self.nodes.append(Node(HOST, "host", "host", host, ps, prefault=False,
                                       hugetlb=huge, collapse=self.tunables.thp_collapse))
                # device memory is pre-faulted: migrations then run at memcpy speed
                self.nodes.append(Node(DEVICE, "device", "device", dev, ps, prefault=True,
                                       hugetlb=huge, collapse=self.tunables.thp_collapse))
                total = sum(n.frames for n in self.nodes)
                self.va = VASpace(2 * total + 1024, ps)
        except BaseException:
            for n in self.nodes:
                n.close()
            raise
        self.distance = default_distances([n.kind for n in self.nodes])
        self.pt = PageTable(ps)
        # Called as fn(vpns, src_nodes, target) under the space lock after pages moved
        # (e.g. the access-counter unit clears the moved pages' counters).
        self.migrate_listeners: list[Any] = []
        self._listening: set[int] = set()        # threads running migrate listeners
        self.migrator = Migrator(self)
        from .device import Device
        self.device = Device(self, self.nodes[DEVICE])
        self.clock = Clock(self.profile, len(self.nodes))   # modeled time
        self.counters = AccessCounters(self)                # registers a migrate listener
        self.trace = Trace.for_space(self)
        from .manager import LivePlacement, MigrationManager
        self._mq: list[Any] = []                 # epochs waiting for the manager
        self._host_tallies = HostAccesses(ids=True)   # CPU accesses of the open host epoch
        #: the open host epoch is one CPU operation whose faults ran first (it closes before
        #: the next operation), and those faults (tunable faults_ahead)
        self._host_alone = False
        self._host_ahead: Any = None
        #: the epoch whose faults ran ahead and that is neither queued nor the open host epoch
        #: yet (its kernel or CPU operation is running): a user action now comes between its
        #: faults and the rest of its step, and the trace says so
        self._window: int | None = None
        #: dense CPU operations the manager would not fault, while nothing has changed since
        #: (the manager's epoch and the page table's generation)
        self._no_faults: set[tuple] = set()
        self._no_faults_at: tuple[int, int, int] = (-1, -1, -1)
        self._mlock = threading.Lock()
        self._mowner: int | None = None          # the thread stepping the manager
        self._forget_q: list[tuple[int, int]] = []   # freed ranges the manager must forget
        #: freed allocations whose pages wait for the manager to step the epochs that touched
        #: them (see _free_locked); epochs numbered up to _stepped have been stepped
        self._retired: list[Allocation] = []
        self._stepped = -1
        self.manager = MigrationManager(LivePlacement(self), policy, self.profile,
                                        self.tunables)
        self.tunables.listen(self._tunables_set)

    def _init_gpu(self, given: Any, host_memory: Any, host: int, dev: int, ps: int) -> None:
        """Nodes as capacity accounting and the virtual range as one managed allocation,
        sized to what the GPU can hold (every page must fit on it at once)."""
        from .backends.gpu_space import GpuMemory, space_backend
        b = space_backend(given)
        try:
            budget = int(getattr(b, "budget", 1 << 62)) - int(getattr(b, "allocated", 0))
            if dev + ps > budget:
                raise CapacityError(f"device_memory {dev} B does not fit the GPU's free "
                                    f"memory budget ({budget} B)")
            if host_memory is None:      # default: room for a few device-fulls, not all RAM
                host = min(host, max(4 * dev, 1 << 30), budget - dev)
            elif host + dev > budget:
                raise CapacityError(f"host_memory + device_memory = {host + dev} B exceed the "
                                    f"GPU's free memory budget ({budget} B): on the cuda "
                                    "backend every page must fit on the GPU")
            self.nodes.append(Node(HOST, "host", "host", host, ps, prefault=False,
                                   backed=False))
            self.nodes.append(Node(DEVICE, "device", "device", dev, ps, prefault=False,
                                   backed=False))
            total = sum(n.frames for n in self.nodes)
            npages = min(2 * total + 64, budget // ps)
            self.gpu = GpuMemory(b, npages, ps, owns_backend=given is None)
        except BaseException:
            if given is None:
                b.close()
            raise
        self.va = self.gpu.va

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "Space":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every frame and arena.  Idempotent.  Arrays still alive afterwards read
        zeros (their range is backed by anonymous memory) instead of crashing."""
        with self._cond:
            if self.closed:
                return
            for a in list(self._allocs.values()):
                if not a.freed:
                    self._free_locked(a)
            self._release_retired(lambda a: True)     # no manager step comes any more
            self.closed = True
            for n in self.nodes:
                n.close()
            if self._live_buffers == 0:
                self.va.close()
            self._cond.notify_all()

    def _check_open(self) -> None:
        if self.closed:
            raise SpaceClosedError("the space is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._allocs)} allocations"
        return (f"<Space page_size={self.page_size} host={self.nodes[0].capacity} "
                f"device={self.nodes[1].capacity} {state}>")

    # -- nodes ------------------------------------------------------------------------------------
    @property
    def host(self) -> Node:
        return self.nodes[HOST]

    def node_id(self, node: int | str | Node) -> int:
        """Resolve a node given as id, name (``"host"``, ``"device"``) or :class:`Node`."""
        if isinstance(node, Node):
            node = node.id
        if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
            if 0 <= int(node) < len(self.nodes):
                return int(node)
        elif isinstance(node, str):
            for n in self.nodes:
                if n.name == node.lower():
                    return n.id
        names = ", ".join(f"{n.id}={n.name!r}" for n in self.nodes)
        raise UnknownNodeError(f"unknown node {node!r}; this space has {names}")

    def node_info(self) -> list[NodeInfo]:
        return [n.info() for n in self.nodes]

    def _node_accepts(self, node: int, cause: str) -> bool:
        """Whether pages may move onto ``node`` now (a draining/offline device takes none)."""
        return node == HOST or self.device.accepts_pages()

    def _host_reserve(self) -> int:
        """Host frames kept free so that every device page can come back (R1b)."""
        if self.tunables.emergency_device_alloc:
            return 0
        return sum(n.used_frames for n in self.nodes[1:])

    # -- allocation ----------------------------------------------------------------------------------
    def empty(self, shape: int | Sequence[int], dtype: Any = np.float64,
              placement: str | int = "host", pinned: bool = False,
              name: str | None = None) -> ManagedArray:
        """A new uninitialised managed array (see :mod:`ccadgpu.placement` for ``placement``).

        ``pinned=True`` pages are unmovable and never placed on the device implicitly."""
        return self._empty(shape, dtype, placement, pinned, name, True)

    def _gpu_settle(self, vstart: int, nodes: np.ndarray) -> None:
        """cuda: put freshly allocated pages where the page table says they are."""
        for n in np.unique(nodes).tolist():
            self.gpu.place(vstart + np.flatnonzero(nodes == n), n)

    def _filled(self, shape: Any, dtype: Any, placement: Any, pinned: bool, name: Any,
                fill: Any) -> ManagedArray:
        """A new array whose contents ``fill(plain_view)`` writes before its pages go to their
        nodes: on the cuda backend the CPU then writes host-resident memory and device pages
        are moved once, instead of being faulted back and forth."""
        a = self._empty(shape, dtype, placement, pinned, name, self.gpu is None)
        fill(a.view(np.ndarray))
        if self.gpu is not None:
            alloc, first, n = self._resolve(a)
            with self._cond:
                self._gpu_settle(alloc.vstart, self.pt.node[alloc.vstart:
                                                            alloc.vstart + alloc.npages])
        return a

    def _colour(self, nbytes: int) -> int:
        """Byte offset of the next allocation's data in its first page (``cache_colouring``).

        Page-aligned arrays swept together all start at the same offset modulo the page and
        compete for the same cache sets, and on this project's machines kernels streaming
        several page- (so cache-line-) aligned managed arrays ran 1.1-1.3x slower than on
        NumPy's arrays, which start 16 bytes into a cache line (glibc's chunk header) at
        page-varying offsets (``benchmarks/bench_kernels.py``, column ``aligned/plain``).  So
        each allocation starts 16 bytes into a cache line, a few lines and pages further into
        its first page than the previous one (steps of 4160 bytes).
        The offset never costs a small array a page: an array with too little room left in
        its last page gets a smaller offset, or none, unless it spans at least
        :data:`COLOUR_EXTRA_PAGE_MIN` pages (then one more page is <= 1/16 more memory, and
        :meth:`_plan` drops the colour when that page does not fit where the rest goes).
        Off on the cuda backend (GPU kernels want their arrays aligned, and the GPU's caches
        are not the stand-in's)."""
        P = self.page_size
        if not self.tunables.cache_colouring or self.gpu is not None:
            return 0
        want = 16 + (self._next_id * 4160) % P // 64 * 64        # in [16, P)
        need = max(1, -(-nbytes // P))
        slack = need * P - nbytes
        if want <= slack or need >= COLOUR_EXTRA_PAGE_MIN:
            return want
        return 16 + (want - 16) % (slack - 15) // 64 * 64 if slack >= 16 else 0

    def _plan(self, pl: Any, nbytes: int, colour: int, pinned: bool) -> tuple[np.ndarray, int]:
        """(node of each page, colour) of a new allocation.  A colour that costs one more page
        is dropped (the array starts page-aligned) when that page would not fit, or would put
        the array's pages anywhere else than its aligned layout would: a colour never turns a
        fitting allocation into a CapacityError nor spills a device-sized array.  Lock held."""
        free = np.array([n.free_frames for n in self.nodes])
        usable = np.array([n.id == HOST or self._node_accepts(n.id, "api") for n in self.nodes])
        names = [n.name for n in self.nodes]

        def plan(npages: int) -> np.ndarray:
            return plan_placement(pl, npages, free, usable, self._host_reserve(),
                                  self.tunables.emergency_device_alloc, pinned, names)
        need = max(1, -(-nbytes // self.page_size))
        aligned = plan(need)
        if max(1, -(-(colour + nbytes) // self.page_size)) == need:
            return aligned, colour
        try:
            nodes = plan(need + 1)
        except CapacityError:
            return aligned, 0
        if np.array_equal(nodes[:need], aligned) and np.isin(nodes[need:], aligned).all():
            return nodes, colour
        return aligned, 0

    def _huge_phase(self, seq: np.ndarray) -> tuple[int, int]:
        """``(phase, period)`` that puts the longest run of ``seq`` (frames for a new range of
        pages, or pages for new frames) at the same offset within 2 MiB on the other side, so
        that arena huge pages map as such: ``period`` is the pages per 2 MiB on the CPU
        stand-in when the page size divides 2 MiB and ``seq`` spans at least that many, else
        1 (no alignment asked for)."""
        if self.gpu is not None or HUGE_ALIGN % self.page_size or \
                len(seq) < HUGE_ALIGN // self.page_size:
            return 0, 1
        period = HUGE_ALIGN // self.page_size
        return run_phase(seq, period), period

    def _empty(self, shape: Any, dtype: Any, placement: Any, pinned: bool, name: Any,
               place_now: bool) -> ManagedArray:
        try:
            return self._empty_once(shape, dtype, placement, pinned, name, place_now)
        except CapacityError:
            # freed pages that wait for the manager (see _free_locked) hold frames and virtual
            # range: under pressure, end the open host epoch here and let the manager step it
            if not self._retired or not self._flush_retired():
                raise
        return self._empty_once(shape, dtype, placement, pinned, name, place_now)

    def _empty_once(self, shape: Any, dtype: Any, placement: Any, pinned: bool, name: Any,
                    place_now: bool) -> ManagedArray:
        self._reap()
        dt = _check_dtype(dtype)
        shp = _check_shape(shape)
        nbytes = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        colour = self._colour(nbytes)
        pl = parse_placement(placement, {n.name: n.id for n in self.nodes}, len(self.nodes))
        if pinned and pl.kind == "bind" and pl.node != HOST \
                and not self.tunables.allow_pinned_on_device:
            raise PinnedError("pinned pages may not be placed on the device "
                              "(tunables.allow_pinned_on_device is off)")
        with self._cond:
            self._check_open()
            if pl.node is not None and pl.node != HOST and pl.kind == "bind":
                self.device.check_explicit_allocation()
            nodes, colour = self._plan(pl, nbytes, colour, pinned)
            npages = len(nodes)
            frames = np.empty(npages, np.int64)
            taken: list[tuple[int, np.ndarray]] = []
            vstart = -1
            charged = 0
            try:
                for n in np.unique(nodes).tolist():
                    sel = nodes == n
                    f = self.nodes[n].take(int(sel.sum()))
                    taken.append((n, f))
                    frames[sel] = f
                vstart = self.va.allocate(npages, *self._huge_phase(frames))
                if self.gpu is None:
                    charged = count_breaks(nodes, frames)
                    MAP_BUDGET.charge(charged, f"allocating {npages} pages")
                    self.va.map_pages(np.arange(vstart, vstart + npages), frames,
                                      [n.fd for n in self.nodes], nodes)
                elif place_now:
                    self._gpu_settle(vstart, nodes)
            except BaseException:
                for n, f in taken:
                    self.nodes[n].give(f)
                if vstart >= 0:
                    self.va.release(vstart, npages)
                if charged:
                    MAP_BUDGET.charge(-charged, "rollback")
                raise
            self.pt.ensure(self.va.high_water)
            vs = slice(vstart, vstart + npages)
            self.pt.node[vs] = nodes
            self.pt.gen += 1
            self.pt.frame[vs] = frames
            self.pt.flags[vs] = ptf.PINNED if pinned else 0
            alloc = Allocation(self._next_id, vstart, npages, nbytes, shp, dt,
                               str(placement), name, vmas=charged)
            self.pt.alloc[vs] = alloc.id
            self._next_id += 1
            self._allocs[alloc.id] = alloc
            self.trace._born(alloc, nodes)
            buf = _Buffer(self.va.addr(vstart), npages * self.page_size, alloc, self)
            alloc.buffer = weakref.ref(buf)
            self._live_buffers += 1
            weakref.finalize(buf, Space._buffer_died, weakref.ref(self), alloc)
        raw = np.asarray(buf)[colour: colour + nbytes]
        return raw.view(dt).reshape(shp).view(ManagedArray)

    def zeros(self, shape: int | Sequence[int], dtype: Any = np.float64,
              placement: str | int = "host", pinned: bool = False,
              name: str | None = None) -> ManagedArray:
        """Like :meth:`empty`, filled with zeros."""
        return self._filled(shape, dtype, placement, pinned, name, lambda v: v.fill(0))

    def asarray(self, obj: Any, dtype: Any = None, placement: str | int = "host",
                pinned: bool = False, name: str | None = None) -> ManagedArray:
        """``obj`` as a managed array: returned as is if it already is one of this space (and
        ``dtype`` matches), else copied into a new allocation."""
        if isinstance(obj, ManagedArray) and buffer_of(obj) is not None \
                and buffer_of(obj).space is self and (dtype is None or obj.dtype == dtype):
            self._resolve(obj)
            return obj
        try:
            src = np.asarray(obj, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"asarray: cannot convert {type(obj).__name__}: {exc}") \
                from exc
        return self._filled(src.shape, src.dtype, placement, pinned, name,
                            lambda v: np.copyto(v, src))

    def register(self, array: np.ndarray, placement: str | int = "host", pinned: bool = False,
                 name: str | None = None) -> ManagedArray:
        """Bring ``array``, a NumPy array allocated anywhere, under management (R6b): its
        elements are copied once into a new allocation (same shape, dtype and C/Fortran
        order); ``array`` itself is left alone and not linked.  Exactly what is and is not
        copied: :func:`ccadgpu.interop.register`.  :meth:`unregister` is the way back."""
        from .interop import register
        return register(self, array, placement, pinned, name)

    def unregister(self, arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Copy a whole managed allocation back into plain NumPy memory (``out``, e.g. the array
        that was registered, or a new array) and free it (:func:`ccadgpu.interop.unregister`)."""
        from .interop import unregister
        return unregister(self, arr, out)

    def free(self, arr: np.ndarray) -> None:
        """Release the allocation ``arr`` belongs to (any view of it will do).  Views that are
        still alive read zeros afterwards; space operations on them raise FreedArrayError.

        Like ``cudaFree``, it synchronises: when an epoch the manager has not stepped yet
        touched the array (the open host epoch ends here, as at a launch), the manager steps it
        first, so that its pages go back to their nodes before this returns (see
        :meth:`_free_locked`; an array that dies with its last reference instead waits for the
        next launch or :meth:`sync`)."""
        alloc, _, _ = self._resolve(arr)
        with self._cond:
            self._free_locked(alloc)
            if alloc.released:
                return
            if self._in_open_host_epoch(alloc):
                self.counters._close_host_epoch()
        self._step_manager()

    def _in_open_host_epoch(self, alloc: Allocation) -> bool:
        """Whether the open host epoch touched ``alloc`` (space lock held)."""
        return self.counters._host_open and alloc.last_epoch >= self.counters.epoch

    def _settle_ahead(self, touching: Iterable[Allocation] = ()) -> None:
        """A placement action of the user's (a hint, a pin, a move, the device offline) comes
        next: an epoch whose faults already ran ahead is stepped first (the open host epoch
        ending here), so that the action falls between two whole epochs, where the trace
        places it for a replay, and not between an epoch's faults and its accesses.

        The open host epoch also ends here when it touched one of ``touching``, the
        allocations whose pages the action moves: the manager must price the CPU's accesses
        made before the action where the pages were then (as :meth:`free` does); stepped at
        the next launch, the epoch would see them where the action had since put them (a CPU
        write made on the host priced as remote writes to the device: ``examples/pipeline.py``
        under ``static`` with its hints; CPU reads of device pages just before an offline
        priced as local ones)."""
        with self._cond:
            if self.counters._host_open and (
                    self._host_ahead is not None
                    or any(self._in_open_host_epoch(a) for a in touching)):
                self.counters._close_host_epoch()
            elif not any(ep.ahead is not None for ep in self._mq):
                return
        self._step_manager()

    def _tunables_set(self, values: dict[str, Any]) -> None:
        """Knobs were set: those the manager decides by go into the trace, between whole
        epochs as a user's placement action does (they rule from the manager's next step)."""
        from .manager import DECISION_KNOBS
        mine = {k: v for k, v in values.items() if k in DECISION_KNOBS}
        if not mine or self.closed:
            return
        self._settle_ahead()
        with self._cond:
            self.trace._user({"op": "tunables", "values": mine})

    def _step_manager(self) -> None:
        """Let the manager step every queued epoch now, and wait for it; but not from inside a
        migration (a migrate listener: this thread holds the space lock, which the manager's
        moves need) or from the manager's own step (it would wait for itself): there the
        epochs wait for the next launch or :meth:`sync` outside them."""
        if self._cond._is_owned() or self._mowner == threading.get_ident():
            return
        self._run_manager(wait=True)

    def _free_locked(self, alloc: Allocation) -> None:
        """Free ``alloc`` (space lock held).  Its views read zeros from now on and space
        operations on them raise; its pages go back to their nodes (and its range may be
        reused) at once, unless an epoch the manager has still to step touched them: the open
        host epoch, or one queued.  The manager must see those pages as they were when they
        were touched, as a replay of the trace does: a CPU epoch that read device pages, then
        freed them before the manager's step (``sync()`` after the arrays went out of scope,
        say) would otherwise be priced as remote reads that no fault-time move could prevent,
        and the range could be reused under the epoch's feet.  Such pages wait in
        ``_retired`` (moved, if the policy says so, in the bookkeeping only: their contents are
        dead) until the manager has stepped that epoch (:meth:`_release_stepped`)."""
        lo, hi = alloc.vstart, alloc.vstart + alloc.npages
        while (self.pt.flags[lo:hi] & ptf.MIGRATING).any():
            if threading.get_ident() in self._listening:
                raise InvalidArgumentError(
                    f"cannot free {alloc.name or 'an array'} from a migrate listener while "
                    "pages of it are being migrated (perhaps by the move that called the "
                    "listener): free it after the move")
            self._cond.wait()
        if alloc.freed:
            return
        alloc.freed = True
        self.va.back_with_anonymous(lo, alloc.npages)
        MAP_BUDGET.charge(-alloc.vmas, "free")
        alloc.vmas = 0
        self.vmstat.add(pgfree=alloc.npages)
        if alloc.last_epoch > self._stepped and not self.closed:
            self._retired.append(alloc)
            self.vmstat.add(frees_deferred=1)
        else:
            self._release_locked(alloc)

    def _release_locked(self, alloc: Allocation) -> None:
        """Give a freed allocation's pages back to their nodes and forget them (space lock
        held); its range is reused once no array refers to it either."""
        if alloc.released:
            return
        alloc.released = True
        lo, hi = alloc.vstart, alloc.vstart + alloc.npages
        node = self.pt.node[lo:hi]
        frame = self.pt.frame[lo:hi]
        for n in np.unique(node).tolist():
            if n >= 0:
                # host memory goes back to the OS; device memory stays faulted in
                self.nodes[n].give(frame[node == n], release=(n == HOST))
        _hints.collapse(self, lo, hi)
        self.pt.clear(lo, hi)
        self._forget_q.append((lo, hi))
        self.counters.forget(lo, hi)
        self.trace._died(alloc)
        if alloc.buffer_dead:
            self._finish_dead(alloc)

    def _release_retired(self, done: Any) -> None:
        """Release the waiting freed allocations for which ``done(alloc)`` holds (lock held)."""
        if not self._retired:
            return
        go = [a for a in self._retired if done(a)]
        if go:
            self._retired = [a for a in self._retired if not done(a)]
            for a in go:
                self._release_locked(a)

    def _release_stepped(self) -> None:
        """The manager stepped every epoch up to ``_stepped``: release what waited for it."""
        self._release_retired(lambda a: a.last_epoch <= self._stepped)

    def _flush_retired(self) -> bool:
        """End the open host epoch and let the manager step every queued epoch, so that the
        freed pages waiting for it go back to their nodes (under memory pressure: a new
        allocation did not fit).  Returns whether any did."""
        with self._cond:
            n = len(self._retired)
            self.counters._close_host_epoch()
        self._step_manager()
        return len(self._retired) < n

    def _touched(self, ids: Any, epoch: int) -> None:
        """Pages of allocations ``ids`` (one per page, in runs; -1 none) are in epoch ``epoch``
        (lock held): freeing those allocations waits for the manager to step it."""
        ids = np.asarray(ids).ravel()
        if len(ids) > 1:
            ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))]
        for aid in set(ids.tolist()):
            a = self._allocs.get(aid) if aid >= 0 else None
            if a is not None and a.last_epoch < epoch:
                a.last_epoch = epoch

    def _finish_dead(self, a: Allocation) -> None:
        """No array refers to ``a`` and its pages were released: give its range back."""
        if not self.closed:
            self.va.release(a.vstart, a.npages)
        self._allocs.pop(a.id, None)
        self._live_buffers -= 1
        if self.closed and self._live_buffers == 0:
            self.va.close()

    @staticmethod
    def _buffer_died(space_ref: "weakref.ref[Space]", alloc: Allocation) -> None:
        # Runs at garbage collection, possibly on any thread and inside our own locked code:
        # never block here, queue the work for the next call that holds the lock.
        sp = space_ref()
        if sp is None:
            return
        sp._graveyard.append(alloc)
        if sp._cond.acquire(blocking=False):
            try:
                sp._reap_locked()
            finally:
                sp._cond.release()

    def _reap(self) -> None:
        if self._graveyard:
            with self._cond:
                self._reap_locked()

    def _reap_locked(self) -> None:
        keep = []
        while self._graveyard:
            a = self._graveyard.popleft()
            lo, hi = a.vstart, a.vstart + a.npages
            if not self.closed and (self.pt.flags[lo:hi] & ptf.MIGRATING).any():
                keep.append(a)      # a migration still holds it; try again later
                continue
            if not self.closed and not a.freed:
                self._free_locked(a)
            if self.closed or a.released:
                self._finish_dead(a)
            else:
                a.buffer_dead = True     # finished when its pages are released
        self._graveyard.extend(keep)

    # -- resolving arrays --------------------------------------------------------------------------
    def _resolve(self, arr: Any) -> tuple[Allocation, int, int]:
        """(allocation, first page, page count) of the pages ``arr``'s bytes span, relative to the
        allocation.  Raises ForeignArrayError / FreedArrayError / SpaceClosedError."""
        alloc = self._allocation_of(arr)
        base = self.va.addr(alloc.vstart)
        fl = arr.flags
        if arr.size == 0 or fl.c_contiguous or fl.f_contiguous:
            # one run of bytes from the data pointer (byte_bounds' answer, without its walk
            # over the dimensions: this runs for every CPU operation)
            lo_b = arr.__array_interface__["data"][0] - base
            hi_b = lo_b + arr.nbytes
        else:
            lo_addr, hi_addr = np.lib.array_utils.byte_bounds(arr)
            lo_b, hi_b = lo_addr - base, hi_addr - base
        first = lo_b // self.page_size
        last = max(first + 1, -(-hi_b // self.page_size))
        return alloc, int(first), int(last - first)

    def _allocation_of(self, arr: Any) -> Allocation:
        """The live allocation of this space that ``arr`` is memory of (the checks of
        :meth:`_resolve`)."""
        if not isinstance(arr, np.ndarray):
            raise ForeignArrayError(f"expected a managed array, got {type(arr).__name__}")
        buf = buffer_of(arr)
        if buf is None or buf.space is not self:
            where = "another space" if buf is not None else "outside any space"
            raise ForeignArrayError(f"array (shape {arr.shape}, {arr.dtype}) was allocated "
                                    f"{where}; allocate it with this space's empty/asarray")
        self._check_open()
        alloc = buf.alloc
        if alloc.freed:
            raise FreedArrayError(f"allocation {alloc.id} ({alloc.name or 'unnamed'}, shape "
                                  f"{alloc.shape}) was freed")
        return alloc

    def _span_vpns(self, arr: Any) -> tuple[Allocation, int, int]:
        alloc, first, n = self._resolve(arr)
        return alloc, alloc.vstart + first, alloc.vstart + first + n

    def allocation_of(self, arr: np.ndarray) -> Allocation:
        """The :class:`Allocation` record ``arr`` lives in."""
        return self._resolve(arr)[0]

    def allocations(self) -> list[Allocation]:
        """Live (not freed) allocations."""
        with self._cond:
            return [a for a in self._allocs.values() if not a.freed]

    # -- queries ------------------------------------------------------------------------------------
    def placement(self, arr: np.ndarray) -> np.ndarray:
        """Node id of every page ``arr`` spans (``move_pages(2)`` query mode)."""
        _, lo, hi = self._span_vpns(arr)
        with self._cond:
            return self.pt.node[lo:hi].copy()

    def pinned(self, arr: np.ndarray) -> np.ndarray:
        """Whether each page ``arr`` spans is pinned."""
        _, lo, hi = self._span_vpns(arr)
        with self._cond:
            return (self.pt.flags[lo:hi] & ptf.PINNED) != 0

    # -- migration ------------------------------------------------------------------------------------
    def move_pages(self, arr: np.ndarray, node: int | str, pages: Any = None,
                   cause: str = "api") -> MigrationReport:
        """Move pages of ``arr`` to ``node``; ``pages`` indexes the pages ``arr`` spans (as
        :meth:`placement` lists them), default all.  Never raises for pages that cannot move:
        the report's ``status`` says, page by page, where each is or why it stayed."""
        self._reap()
        target = self.node_id(node)
        alloc, first, n = self._resolve(arr)
        rel = _check_pages(pages, n) + first
        self._settle_ahead((alloc,))
        return self.migrator.move(alloc, rel, target, cause, user=True)

    def pin(self, arr: np.ndarray) -> None:
        """Make the pages ``arr`` spans unmovable (waits for an in-flight migration of them)."""
        self._set_pinned(arr, True)

    def unpin(self, arr: np.ndarray) -> None:
        """Make the pages ``arr`` spans movable again."""
        self._set_pinned(arr, False)

    def _set_pinned(self, arr: np.ndarray, on: bool) -> None:
        _, lo, hi = self._span_vpns(arr)
        with self._cond:
            self._check_pinnable(lo, hi, on)   # a refused pin steps nothing (as below)
        self._settle_ahead()
        with self._cond:
            while (self.pt.flags[lo:hi] & ptf.MIGRATING).any():
                self._cond.wait()
            self._check_pinnable(lo, hi, on)   # the settled epoch may have moved them
            ptf.set_flag(self.pt.flags, lo, hi, ptf.PINNED, on)
            self.pt.gen += 1             # whether a CPU touch may fault them has changed
            self.trace._user({"op": "pin", "lo": lo, "hi": hi, "on": bool(on)})

    def _check_pinnable(self, lo: int, hi: int, on: bool) -> None:
        """Raise if pages ``[lo, hi)`` may not be pinned now (space lock held)."""
        if not on or not (self.pt.node[lo:hi] != HOST).any():
            return
        if self.device.state != "online":
            raise DeviceOfflineError(f"the device is {self.device.state}: its pages "
                                     "cannot be pinned now")
        if not self.tunables.allow_pinned_on_device:
            raise PinnedError("cannot pin pages that are on the device "
                              "(tunables.allow_pinned_on_device is off); move them first")

    # -- host access ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def host_access(self, arr: np.ndarray, mode: str = "r") -> Iterator[np.ndarray]:
        """CPU access to ``arr`` through the library: ``"r"``, ``"w"`` or ``"rw"``.

        Writers wait for in-flight migrations of their pages, and migrations skip pages under a
        write (they report ``-EBUSY``), so no write is ever lost to a copy.  Yields a plain
        ndarray view.  The access is counted as CPU traffic to every byte of ``arr`` (read,
        written or both, see :mod:`ccadgpu.counters`).  Plain NumPy stores through
        ``np.asarray(a)`` bypass this: they are not counted and must not race a migration of the
        same pages."""
        if mode not in ("r", "w", "rw"):
            raise InvalidArgumentError(f"host_access mode must be 'r', 'w' or 'rw', got {mode!r}")
        from .counters import host_operation
        self._resolve(arr)                   # this space's, not freed: or it raises here
        # its faults first, before the writer holds the pages in place; if the writer never
        # gets them (the space closed meanwhile), they are an aborted epoch
        with host_operation([(arr, mode, None)]) as count:
            with self._writing(arr) if "w" in mode else contextlib.nullcontext():
                count()
                yield arr.view(np.ndarray)

    @contextlib.contextmanager
    def _writing(self, arr: np.ndarray) -> Iterator[np.ndarray]:
        """Register a writer over the pages ``arr`` spans, without counting anything (device
        launches and :meth:`host_access` both use it): waits for in-flight migrations of those
        pages; until it exits, migrations skip them with ``-EBUSY``."""
        entry = self._begin_write(arr)
        try:
            yield arr.view(np.ndarray)
        finally:
            self._end_write(entry)

    def _begin_write(self, arr: np.ndarray) -> tuple[int, int, int]:
        """:meth:`_writing`'s start: returns the writer's entry, for :meth:`_end_write`."""
        _, lo, hi = self._span_vpns(arr)
        entry = (lo, hi, threading.get_ident())
        with self._cond:
            f = self._flags_of(lo, hi)
            while f & ptf.MIGRATING:
                self._cond.wait()
                self._check_open()
                f = self._flags_of(lo, hi)
            self._writers.append(entry)
            _hints.collapse(self, lo, hi)       # a write makes read-mostly duplicates stale
            if f & ptf.READ_MOSTLY:
                self.trace._written(lo, hi)
        return entry

    def _flags_of(self, lo: int, hi: int) -> int:
        """Every page-table flag set on any page of ``[lo, hi)``, in one reduction (a scalar
        read for one page: the usual store).  Read from the page table each time: an
        allocation made while a writer waits replaces its arrays.  Space lock held."""
        flags = self.pt.flags
        return int(flags[lo]) if hi - lo == 1 else int(np.bitwise_or.reduce(flags[lo:hi]))

    def _end_write(self, entry: tuple[int, int, int]) -> None:
        with self._cond:
            self._writers.remove(entry)
            self._cond.notify_all()

    def _writer_mask(self, vpns: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(vpns), bool)
        for lo, hi, _t in self._writers:
            mask |= (vpns >= lo) & (vpns < hi)
        return mask

    # -- counters --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """vmstat-like counters (events since creation) and gauges (current occupancy)."""
        self._reap()
        with self._cond:
            s: dict[str, float] = {"pgmigrate_success": 0, "pgmigrate_fail": 0,
                                   "pgmigrate_bytes": 0}
            s.update(self.vmstat.snapshot())
            for n in self.nodes:
                s[f"nr_pages_{n.name}"] = n.used_frames
                s[f"nr_free_pages_{n.name}"] = n.free_frames
            live = [a for a in self._allocs.values() if not a.freed]
            pinned = 0
            for a in live:
                pinned += int(np.count_nonzero(
                    self.pt.flags[a.vstart:a.vstart + a.npages] & ptf.PINNED))
            s["nr_pinned"] = pinned
            s["nr_allocations"] = len(live)
            s["nr_mappings"] = sum(a.vmas for a in live)
            s["page_size"] = self.page_size
        return s

    # -- hints ----------------------------------------------------------------------------------------
    def advise(self, arr: np.ndarray, preferred_location: Any = _hints._UNSET,
               accessed_by: Any = _hints._UNSET, read_mostly: Any = _hints._UNSET) -> None:
        """Hints on the pages ``arr`` spans (``cudaMemAdvise`` vocabulary, see
        :mod:`ccadgpu.hints`): ``preferred_location`` (node, or None to unset), ``accessed_by``
        (node or nodes; ``()`` unsets), ``read_mostly`` (bool)."""
        _hints.advise(self, arr, preferred_location, accessed_by, read_mostly)

    def prefetch(self, arr: np.ndarray, node: int | str) -> MigrationReport:
        """Move ``arr``'s pages to ``node`` now (cause ``prefetch``); read-mostly pages bound
        for the device are duplicated instead.  A hint: pages that cannot move stay put."""
        return _hints.prefetch(self, arr, node)

    def hints(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        """Per-page hints of ``arr``: preferred, accessed_by, read_mostly, duplicated."""
        return _hints.hints(self, arr)

    # -- the migration manager ---------------------------------------------------------------------
    def _epoch_of(self, epoch: int, kernel: str, processor: int, tally: Any,
                  wall: float) -> Any:
        from .manager import Epoch
        return Epoch(0, epoch, kernel, processor, np.asarray(tally.vpns, np.int64),
                     np.asarray(tally.sectors, np.int64), processor == DEVICE, wall)

    def _queue_epoch(self, epoch: int, kernel: str, processor: int, tally: Any,
                     wall: float, ids: Any = None, ahead: Any = None, ep: Any = None,
                     aborted: bool = False) -> None:
        """Hand a finished epoch to the manager (space lock held); it runs in
        :meth:`_run_manager`, outside every lock and writer section.  Each page's allocation
        and node are captured now, so that pages freed (and perhaps reused) before the manager
        gets to the epoch are recognised (``ids``: ``tally.alloc_ids`` if the caller has
        them).  ``ahead``: its step (1), already run (:meth:`_faults_ahead`); ``ep``: the
        epoch it ran on, when made from this same tally; ``aborted``: see :meth:`_abort`."""
        if ahead is not None:
            self._window = None
        if tally.n:
            if ep is None:
                ep = self._epoch_of(epoch, kernel, processor, tally, wall)
            else:
                ep.epoch, ep.wall = epoch, wall
            ep.alloc_ids = tally.expand_alloc(tally.alloc_ids(self.pt.alloc) if ids is None
                                              else ids)
            ep.rec_node = np.asarray(tally.node, np.int8)
            ep.ahead, ep.aborted = ahead, aborted
            self._touched(ep.alloc_ids, epoch)
            self._mq.append(ep)

    # -- faults before the accesses they serve (tunable faults_ahead) ----------------------------
    def _may_fault_ahead(self) -> bool:
        """Whether the manager's faults may run now, on this thread: not inside a migration (a
        migrate listener holds the space lock) nor the manager's own step."""
        return (self.tunables.faults_ahead and not self.closed and
                not self._cond._is_owned() and self._mowner != threading.get_ident())

    def _faults_ahead(self, ep: Any) -> Any:
        """Step every epoch before ``ep`` (the open host epoch ends here), then run ``ep``'s
        step (1) now: its moves happen before its accesses, and a replay of the trace decides
        the same, since it steps the same epochs in the same order.  Returns the
        :class:`~ccadgpu.manager.FaultsAhead` for ``ep.ahead`` (None if the policy failed)."""
        with self._cond:
            self.counters._close_host_epoch()
        self._run_manager(wait=True)
        with self._mlock:
            self._mowner = threading.get_ident()
            try:
                self._forget_freed()
                self._window = self.counters.epoch     # its number, the host epoch closed
                ahead = self.manager.fault_ahead(ep)
                self.clock.advance("fault", ahead.fault_s)    # the access waited for them
                return ahead
            except Exception as exc:  # noqa: BLE001 - a policy must not break the access
                self._window = None
                self.vmstat.add(manager_errors=1)
                warnings.warn(f"migration manager failed on the faults of {ep.kernel}: "
                              f"{exc!r}", RuntimeWarning, stacklevel=3)
                return None
            finally:
                self._mowner = None

    def _no_faults_stamp(self) -> tuple[int, int, int]:
        return (self.manager.ctx.epoch, self.pt.gen, self.tunables.gen)

    def _fault_ahead_host(self, fps: list) -> Any:
        """A CPU operation over ``fps`` (footprint, mode) is about to run: where it touches
        device pages that the manager would fault home, those faults run first (the pages come
        home before the CPU reads them), and the returned
        :class:`~ccadgpu.manager.FaultsAhead`, passed to its count, makes it a host epoch of
        its own; otherwise (None) it joins the open host epoch, and reads device pages
        remotely."""
        m = self.manager
        if not m.cpu_may_fault or not self._may_fault_ahead():
            return None
        dev = self.device.id
        with self._cond:
            if not any(((self.pt.node[fp.vlo:fp.vhi] == dev) & (fp.nbytes > 0)).any()
                       for fp, _ in fps):
                return None
            # the answer cannot change until the manager steps, the page table changes (a
            # page moves, its hints or pinning change) or a tunable is set: a loop of CPU
            # operations over device pages read remotely asks once
            stamp = self._no_faults_stamp()
            if stamp != self._no_faults_at:
                self._no_faults, self._no_faults_at = set(), stamp
            key = tuple((fp.vlo, fp.vhi, mode) for fp, mode in fps) \
                if all(fp.is_full() for fp, _ in fps) else None
            if key is not None and key in self._no_faults:
                return None
            ep = self._epoch_of(self.counters.epoch, "host", 0,
                                self.counters._host_tally(fps), float("nan"))
        with self._mlock:
            self._mowner = threading.get_ident()
            try:
                self._forget_freed()
                would = m.would_fault(ep)
            except Exception:  # noqa: BLE001 - the epoch's own step will report it
                would = False
            finally:
                self._mowner = None
        if not would:
            with self._cond:
                if key is not None and stamp == self._no_faults_stamp():
                    self._no_faults.add(key)
            return None
        return self._faults_ahead(ep)

    def _fault_ahead_launch(self, name: str, footprints: list) -> Any:
        """A launch over ``footprints`` ((footprint, rw, first vpn, pages) of each declared
        access, all known before the kernel runs) is about to start: run its faults now
        (:meth:`_faults_ahead`).  Returns None, or (faults, its epoch, the tally and the
        device's view of each access it was made with): the launch's own tally when no page
        has moved since."""
        if not self._may_fault_ahead() or self.manager.policy.name == "static" or \
                self.device.state != "online":
            return None
        with self._cond:
            views = [self._device_view(lo, lo + n) for _fp, _rw, lo, n in footprints]
        t = self.counters._launch_tally((fp, rw, node) for (fp, rw, _lo, _n), node
                                        in zip(footprints, views))
        if t.n == 0:
            return None
        ep = self._epoch_of(self.counters.epoch, name, DEVICE, t, float("nan"))
        return self._faults_ahead(ep), ep, t, views

    def _abort(self, kernel: str, processor: int, ahead: Any, tally: Any = None,
               ep: Any = None, fps: Any = None) -> None:
        """An operation whose faults ran (``ahead``, from :meth:`_faults_ahead`) failed before
        it was counted: a launch whose kernel raised or whose device went offline meanwhile
        (``tally``, ``ep``: what its faults ran on), a CPU operation that raised (``fps``,
        its footprints).  Its faults stay done, so it is an epoch of its own, *aborted*: the
        manager steps its faults only, the trace records it, a replay steps it the same way."""
        if ahead is None:
            return
        dev = processor == DEVICE
        with self._cond:
            if self.closed:
                return
            if tally is None:
                tally = self.counters._host_tally(fps)
            if tally.n == 0:
                return
            epoch = self.counters._next_launch_epoch()     # ends the open host epoch
            ids = tally.alloc_ids(self.pt.alloc)
            self._queue_epoch(epoch, kernel, processor, tally, math.nan, ids, ahead, ep,
                              aborted=True)
            if self.trace._recording():
                self.trace._append(self.trace._record(
                    epoch, kernel, "device" if dev else "cpu", tally, math.nan, 0.0, None, 0,
                    ids, aborted=True))
        self.vmstat.add(**{"kernel_aborts" if dev else "host_aborts": 1})
        self._run_manager()

    def _device_view(self, lo: int, hi: int) -> np.ndarray:
        """Node of pages ``[lo, hi)`` as the device sees them: a read-mostly page with a device
        duplicate is local to it.  Space lock held."""
        node = self.pt.node[lo:hi].copy()
        node[self.pt.dup[lo:hi] >= 0] = self.device.id
        return node

    def _note_host_tally(self, tally: Any) -> None:
        # the pages' allocations now: they may be freed and reused before the epoch closes
        ids = tally.alloc_ids(self.pt.alloc)
        self._touched(ids, self.counters.epoch)          # the open host epoch's number
        self._host_tallies.add(tally, ids)

    def _queue_host_epoch(self, epoch: int) -> Any:
        """Hand the open host epoch to the manager (space lock held); returns its tally (None
        if it has none)."""
        if not self._host_tallies:
            return None
        t, ids = self._host_tallies.take()
        ahead, self._host_alone, self._host_ahead = self._host_ahead, False, None
        self._queue_epoch(epoch, "host", 0, t, float("nan"), ahead=ahead)
        # a page counts as the same page only if one allocation held it throughout
        if self._mq and self._mq[-1].kernel == "host":
            self._mq[-1].alloc_ids = ids
        return t

    def _forget_freed(self, forget: list | None = None) -> None:
        """Have the manager forget the ranges freed since it last did, before it decides
        anything (manager lock held; ``forget``: taken from the queue already)."""
        if forget is None:
            with self._cond:
                forget, self._forget_q = self._forget_q, []
        for lo, hi in forget:
            self.manager.forget(lo, hi)

    def _run_manager(self, wait: bool = False) -> None:
        """Step the manager over the queued epochs, one thread at a time (``wait``: block until
        this thread may; otherwise a thread already stepping picks the epochs up)."""
        while self._mq and not self.closed:
            if not self._mlock.acquire(blocking=wait):
                return
            self._mowner = threading.get_ident()
            try:
                while True:
                    with self._cond:
                        if not self._mq or self.closed:
                            break
                        ep = self._fresh(self._mq.pop(0))
                        forget, self._forget_q = self._forget_q, []
                    self._forget_freed(forget)
                    ep.index = self.manager.ctx.epoch
                    try:
                        self.manager.step(ep)
                    except Exception as exc:  # noqa: BLE001 - a policy must not break a launch
                        self.vmstat.add(manager_errors=1)
                        warnings.warn(f"migration manager failed on epoch {ep.epoch} "
                                      f"({ep.kernel}): {exc!r}", RuntimeWarning, stacklevel=2)
                    finally:
                        with self._cond:
                            self._stepped = max(self._stepped, ep.epoch)
                            self._release_stepped()
            finally:
                self._mowner = None
                self._mlock.release()

    def _fresh(self, ep: Any) -> Any:
        """Split off the pages of an epoch whose allocation has gone since it was queued (space
        lock held): they are priced where they were, and otherwise ignored."""
        ids = getattr(ep, "alloc_ids", None)
        if ids is None:
            return ep
        v = ep.vpns
        now = self.pt.alloc[int(v[0]): int(v[-1]) + 1] \
            if len(v) and int(v[-1]) - int(v[0]) + 1 == len(v) else self.pt.alloc[v]
        ok = now == ids
        if not ok.all():
            ep.gone_sectors, ep.gone_node = ep.sectors[~ok], ep.rec_node[~ok]
            ep.vpns, ep.sectors, ep.alloc_ids = ep.vpns[ok], ep.sectors[ok], ids[ok]
            ep.__dict__.pop("_by_proc", None)
        return ep

    def sync(self) -> None:
        """Close the open host epoch and let the manager act on everything so far; returns
        once every epoch queued before the call has been stepped (call it at the end of a run;
        every launch does it for the epochs before it).  From inside a migrate listener or the
        manager's own step it cannot wait: the epochs are stepped by the next call outside."""
        with self._cond:
            self._check_open()
            self.counters._close_host_epoch()
        self._step_manager()

    def _move_vpns(self, vpns: np.ndarray, target: int, cause: str) -> np.ndarray:
        """Mechanism for the manager: move pages given by vpn (any allocations).  Returns a
        per-page mask of pages now on ``target``.  Read-mostly pages bound for the device are
        duplicated instead (and reported as not moved)."""
        vpns = np.asarray(vpns, np.int64)
        moved = np.zeros(len(vpns), bool)
        with self._cond:
            owners = self.pt.alloc[vpns].copy()
            if target != HOST:
                rm = (self.pt.flags[vpns] & ptf.READ_MOSTLY) != 0
                if rm.any():
                    _hints.duplicate(self, vpns[rm])
                    owners[rm] = -1
        for aid in np.unique(owners[owners >= 0]).tolist():
            sel = np.flatnonzero(owners == aid)
            alloc = self._allocs.get(aid)
            if alloc is None or alloc.released:
                continue
            if alloc.freed:          # freed, waiting for the manager: bookkeeping only
                with self._cond:
                    if not alloc.released:
                        moved[sel] = self._move_retired(vpns[sel], target)
                continue
            try:
                r = self.migrator.move(alloc, vpns[sel] - alloc.vstart, target, cause,
                                       enabled=self.manager.tunables.migration_enabled)
            except CcadError:
                # freed meanwhile, a failed copy (MigrationError) or no mapping budget left
                # (MapCountError): the pages stay where they are, the space is consistent
                self.vmstat.add(manager_move_errors=1)
                continue
            moved[sel] = r.status == target
        return moved

    def _move_retired(self, vpns: np.ndarray, target: int) -> np.ndarray:
        """Move pages of a freed allocation that waits for the manager (space lock held): its
        contents are dead and its range is backed by anonymous memory, so only the page table
        and the frames change, as they would have had the manager stepped the epoch before the
        free.  Returns a per-page mask of pages now on ``target``."""
        node = self.pt.node[vpns]
        todo = np.flatnonzero((node >= 0) & (node != target))
        if len(todo) and self._node_accepts(target, "manager"):
            frames = self.nodes[target].take(len(todo), partial=True)
            todo = todo[: len(frames)]
            mv, src = vpns[todo], node[todo].astype(np.int64)
            repoint(self, mv, src, self.pt.frame[mv].copy(), frames, target, drop_host=True)
            notify(self, mv, src, target)
            if len(mv):
                self.vmstat.add(manager_moves_of_freed_pages=len(mv))
        return self.pt.node[vpns] == target

    def _check_alloc(self, alloc: Allocation) -> None:
        self._check_open()
        if alloc.freed:
            raise FreedArrayError(f"allocation {alloc.id} was freed")


def _resolve_backend(requested: Any) -> tuple[str, str]:
    """The backend a Space runs on, and why: ``"cpu"``, ``"cuda"`` or ``"auto"`` (see
    :func:`ccadgpu.backends.select_backend`; ``CCADGPU_BACKEND`` overrides ``"auto"``), or a
    backend object (cuda)."""
    if not isinstance(requested, str):
        from .backends.gpu_space import is_backend
        if not is_backend(requested):
            raise InvalidArgumentError(f"backend must be 'auto', 'cpu', 'cuda' or a CudaBackend, "
                                       f"got {type(requested).__name__}")
        return "cuda", f"given: {requested!r}"
    if requested not in ("cpu", "auto", "cuda"):
        raise InvalidArgumentError(f"backend {requested!r} is not one of 'cpu', 'auto', 'cuda'")
    from .backends import select_backend
    try:
        choice = select_backend(requested)
    except CcadError as exc:
        raise InvalidArgumentError(f"backend {requested!r}: {exc}") from exc
    return choice.name, choice.reason


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidArgumentError(f"invalid dtype {dtype!r}: {exc}") from exc
    if dt.hasobject:
        raise InvalidArgumentError(f"dtype {dt} holds Python objects, which cannot live in "
                                   "device memory; use a numeric or fixed-size dtype")
    if dt.itemsize == 0:
        raise InvalidArgumentError(f"dtype {dt} has no size")
    return dt


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        if any(isinstance(s, (bool, np.bool_)) for s in shape):
            raise TypeError("bool is not a size")
        shp = tuple(operator.index(s) for s in shape)
    except TypeError as exc:
        raise InvalidArgumentError(f"shape must be an int or a sequence of ints, got "
                                   f"{shape!r}") from exc
    if any(s < 0 for s in shp):
        raise InvalidArgumentError(f"shape {shp} has a negative dimension")
    return shp


def _check_pages(pages: Any, n: int) -> np.ndarray:
    """Validate a page index list against ``n`` spanned pages."""
    if pages is None:
        return np.arange(n, dtype=np.int64)
    p = np.asarray(pages)
    if p.dtype == bool:
        if p.shape != (n,):
            raise InvalidArgumentError(f"pages mask has shape {p.shape}, expected ({n},)")
        return np.flatnonzero(p).astype(np.int64)
    if p.ndim == 0:
        p = p.reshape(1)
    if p.ndim != 1 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise InvalidArgumentError(f"pages must be a 1-D list of integer page indices, got "
                                   f"{p.dtype} array of shape {p.shape}")
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n):
        raise InvalidArgumentError(f"page index out of range: the array spans {n} pages "
                                   f"(0..{n - 1}), got {p.min()}..{p.max()}")
    if len(np.unique(p)) != len(p):
        raise InvalidArgumentError("pages has duplicate indices")
    return p

