"""Device launches: run a kernel on the emulated device, fenced, counted, timed and traced.

Every launch (``ccadgpu.ops.*`` and ``space.device.launch``) goes through :func:`execute`:

1. validate the declared accesses (arrays of this space, index ranges) and count those known
   before the kernel runs -- nothing has changed if this raises; when every page is known, the
   manager's faults for them run now (tunable ``faults_ahead``); a launch that fails after
   them (a later step raises) is an *aborted* epoch: its faults priced and traced, nothing
   counted;
2. enter ``space.device.running()`` (raises DeviceOfflineError unless the device is online; an
   offline waits for the launch to leave);
3. register as a *writer* over every array the kernel writes (waits for in-flight migrations of
   those pages; migrations skip them with -EBUSY meanwhile), and snapshot the placement of every
   page the kernel touches: local/remote is decided by where a page was when the kernel started
   (a read-only page may migrate under a running kernel, as readers proceed during migrations);
4. run the kernel on plain views of the arrays, timing it (wall seconds);
5. count: dense accesses arithmetically, indexed ones from per-page histograms (built by
   ``ccadgpu.ops`` before the kernel on the stand-in and inside it on a GPU, or by
   ``np.bincount`` of a declared index array), price the epoch
   with the space's profile (modeled seconds), update the counters, queue notifications, append
   the epoch record to ``space.trace``.

Writing your own kernel::

    import numba, numpy as np, ccadgpu
    from ccadgpu.launch import Indexed

    @numba.njit(parallel=True, cache=True, nogil=True)
    def saxpy_gather(y, a, x, idx):
        for i in numba.prange(y.size):
            y[i] += a * x[idx[i]]

    r = sp.device.launch(saxpy_gather, y, 2.0, x, idx,
                         reads=[y, idx, Indexed(x, idx)], writes=[y])
    r.wall_seconds, r.modeled_seconds, r.bytes_remote

Declare every managed array the kernel touches: a plain array in ``reads``/``writes`` is a dense
sweep of all its bytes; ``Indexed(arr, index)`` is one element access per entry of ``index``
(flat C-order indices).  Managed arguments that are not declared are refused, so counts are never
silently incomplete.  Plain NumPy arguments are allowed but not counted (no page to charge).

On a cuda space the kernel receives the managed arguments as CuPy arrays over the same memory
(zero copy), so it can be CuPy code, a ``cupy.RawKernel`` call or a Numba-CUDA kernel; the
launch waits for the backend's stream afterwards.  Declared ``Indexed`` accesses are counted
from the index array on the host, as on the stand-in.
"""
from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .array import ManagedArray, buffer_of
from .counters import (DEVICE, READ, WRITE, Footprint, dense_footprint,
                       indexed_footprint, page_histogram_footprint)
from .errors import ForeignArrayError, InvalidArgumentError

if TYPE_CHECKING:
    from .space import Space
    from .trace import EpochRecord


@dataclass(frozen=True)
class Indexed:
    """Declares an indexed access: one access to ``array.flat[i]`` for each ``i`` in ``index``
    (``array`` C-contiguous, ``0 <= i < array.size``)."""
    array: np.ndarray
    index: Any


@dataclass
class LaunchResult:
    """What a launch did.  ``modeled_seconds`` is NaN and the byte fields 0 when access counting
    is off (tunable ``access_counters``)."""
    kernel: str
    value: Any
    epoch: int
    wall_seconds: float
    modeled_seconds: float
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_local: int = 0
    bytes_remote: int = 0
    notifications: int = 0
    record: "EpochRecord | None" = None

    @property
    def nbytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def __repr__(self) -> str:
        return (f"LaunchResult({self.kernel!r}, epoch={self.epoch}, wall={self.wall_seconds:.3g}s, "
                f"modeled={self.modeled_seconds:.3g}s, read={self.bytes_read}, "
                f"written={self.bytes_written}, remote={self.bytes_remote})")


@dataclass
class Access:
    """One declared access of a launch (internal form).  ``kind``: ``"dense"``, ``"indexed"``
    (histogram from ``index`` by NumPy) or ``"kernel"`` (the kernel returns the page histogram,
    in the order of the ``"kernel"`` accesses).  ``ahead``, for a ``"kernel"`` access: builds
    that histogram before the kernel runs (validating the indices); used when every
    ``"kernel"`` access of the launch has one, and the kernel is then asked for none."""
    array: np.ndarray
    rw: int
    kind: str = "dense"
    index: Any = None
    ahead: Callable[[], np.ndarray] | None = None


# The workqueue threading layer of Numba is not thread-safe: serialise parallel kernels then.
_SERIAL = threading.Lock()


def _serial() -> Any:
    nb = sys.modules.get("numba")
    if nb is None:
        return contextlib.nullcontext()
    try:
        layer = nb.threading_layer()
    except ValueError:          # no parallel kernel has run yet
        layer = "workqueue"
    return _SERIAL if layer == "workqueue" else contextlib.nullcontext()


def _check_space(space: "Space", arr: Any, what: str) -> tuple[int, int]:
    """Validate a launch operand; returns its (first vpn, pages)."""
    if not isinstance(arr, np.ndarray):
        raise InvalidArgumentError(f"{what}: expected an array, got {type(arr).__name__}")
    buf = buffer_of(arr)
    if buf is None:
        raise ForeignArrayError(f"{what}: array (shape {arr.shape}, {arr.dtype}) is not managed "
                                "memory; allocate it with space.empty/asarray")
    if buf.space is not space:
        raise ForeignArrayError(f"{what}: array (shape {arr.shape}, {arr.dtype}) belongs to "
                                "another space than the device's")
    alloc, first, n = space._resolve(arr)     # freed / closed raise here
    return alloc.vstart + first, n


def execute(space: "Space", name: str, run: Callable[[bool], tuple[Any, Sequence[np.ndarray]]],
            accesses: Sequence[Access]) -> LaunchResult:
    """Run ``run(counting)`` as one device launch over ``accesses`` (see the module docs).
    ``run`` returns ``(value, histograms)``: one per-page histogram per ``"kernel"`` access when
    ``counting`` is true (false when every access is counted without the kernel)."""
    if space.device._runners.get(threading.get_ident()):
        # (Numba's workqueue layer would deadlock on _SERIAL; the others would nest epochs)
        raise InvalidArgumentError(f"{name}: launched from inside a running kernel of this "
                                   "thread; launches do not nest (make it before or after)")
    span = [_check_space(space, a.array, name) for a in accesses]
    counters = space.counters
    counting = counters.enabled
    pre: list[Footprint | None] = []
    # histograms built ahead give the pages before the kernel runs, so its faults can go first
    kernel_counts = counting and any(a.kind == "kernel" and a.ahead is None for a in accesses)
    if counting:
        for a, sp_ in zip(accesses, span):
            if a.kind == "dense":
                pre.append(dense_footprint(space, a.array, sp_))
            elif a.kind == "indexed":
                pre.append(indexed_footprint(space, a.array, a.index))
            else:
                pre.append(None if kernel_counts or a.ahead is None else
                           page_histogram_footprint(space, a.array, a.ahead()))
    early = None
    if counting and pre and all(fp is not None for fp in pre):
        # every page is known before the kernel runs: its faults go first, as on hardware
        early = space._fault_ahead_launch(
            name, [(fp, a.rw, lo, n) for fp, a, (lo, n) in zip(pre, accesses, span)])
    dev = space.device
    with _aborts(space, name, early) as counted, dev.running():
        with contextlib.ExitStack() as writers:
            for a in accesses:
                if a.rw == WRITE:
                    writers.enter_context(space._writing(a.array))
            spans: list[tuple[int, np.ndarray]] = []
            if counting:
                with space._cond:
                    for lo, n in span:
                        spans.append((lo, space._device_view(lo, lo + n)))
            with _serial():
                t0 = time.perf_counter()
                value, hists = run(kernel_counts)
                wall = time.perf_counter() - t0
            if not counting:
                space.vmstat.add(kernel_launches=1, kernel_wall_seconds=wall)
                res = LaunchResult(name, value, -1, wall, math.nan)
                dev.last_launch = res
                return res
            ahead = ep = None
            if early is not None:
                ahead, ep, t, views = early
                if not all(np.array_equal(v, node) for v, (_lo, node) in zip(views, spans)):
                    ep = None                 # pages moved since: count where they are now
            if ep is None:
                hi_iter = iter(hists)
                t = counters._launch_tally(
                    (_kernel_footprint(space, name, a, hi_iter) if fp is None else fp, a.rw, node)
                    for a, fp, (_lo, node) in zip(accesses, pre, spans))
            with space._cond:
                epoch = counters._next_launch_epoch()
                modeled = space.clock.tally_seconds(t.sectors_by_node(len(space.nodes)),
                                                    launch=True)
                nnot = counters._apply(t, epoch)
                ids = t.alloc_ids(space.pt.alloc)
                space._queue_epoch(epoch, name, DEVICE, t, wall, ids, ahead, ep)
                counted.append(True)
                space.clock.advance("kernel", modeled, wall)
                rec = None
                if space.trace._recording():
                    rec = space.trace._record(epoch, name, "device", t, wall, modeled, None, nnot,
                                              ids)
                    space.trace._append(rec)
            space.vmstat.add(kernel_launches=1, kernel_wall_seconds=wall,
                             kernel_modeled_seconds=modeled)
    counters._deliver()
    space._run_manager()        # the migration manager acts between launches
    c = t.get_totals()[DEVICE]                       # [rw, loc]
    res = LaunchResult(name, value, epoch, wall, modeled,
                       bytes_read=int(c[READ].sum()), bytes_written=int(c[WRITE].sum()),
                       bytes_local=int(c[:, 0].sum()), bytes_remote=int(c[:, 1].sum()),
                       notifications=nnot, record=rec)
    dev.last_launch = res
    return res


def _kernel_footprint(space: "Space", name: str, a: Access, hists: Iterator) -> Footprint:
    """Access ``a``'s footprint from the next page histogram its kernel returned."""
    h = next(hists, None)
    if h is None:
        raise InvalidArgumentError(f"{name}: kernel returned fewer page histograms than it "
                                   "declared")
    return page_histogram_footprint(space, a.array, h)


@contextlib.contextmanager
def _aborts(space: "Space", name: str, early: Any) -> Iterator[list]:
    """Around a launch whose faults may have run already (``early``): if it fails before it
    is counted (the caller appends to the yielded list once it is), it is an aborted epoch
    (:meth:`Space._abort`), so the moves its faults made are priced and replayed."""
    counted: list = []
    try:
        yield counted
    except BaseException:
        if early is not None and not counted:
            try:
                ahead, ep, t, _views = early
                space._abort(name, DEVICE, ahead, t, ep)
            except Exception as exc:  # noqa: BLE001 - the launch's own error is the one to see
                warnings.warn(f"{name}: could not record the aborted launch: {exc!r}",
                              RuntimeWarning, stacklevel=3)
        raise


def _declared(space: "Space", items: Iterable[Any], rw: int, what: str) -> list[Access]:
    out = []
    if isinstance(items, (np.ndarray, Indexed)):
        items = [items]
    for it in items:
        if isinstance(it, Indexed):
            _check_space(space, it.array, what)
            out.append(Access(it.array, rw, "indexed", it.index))
        elif isinstance(it, np.ndarray):
            out.append(Access(it, rw, "dense"))
        else:
            raise InvalidArgumentError(f"{what} takes managed arrays or Indexed(array, index), "
                                       f"got {type(it).__name__}")
    return out


def launch(space: "Space", kernel: Callable[..., Any], args: tuple, reads: Any = (),
           writes: Any = (), name: str | None = None) -> LaunchResult:
    """``space.device.launch``: run ``kernel(*args)`` (managed arrays passed as plain views of
    the same memory) as a device launch that reads ``reads`` and writes ``writes``."""
    if not callable(kernel):
        raise InvalidArgumentError(f"launch needs a callable kernel, got {type(kernel).__name__}")
    kname = name or getattr(kernel, "__name__", None) or type(kernel).__name__
    acc = _declared(space, reads, READ, "reads") + _declared(space, writes, WRITE, "writes")
    declared = set()
    for a in acc:
        _check_space(space, a.array, kname)
        declared.add(buffer_of(a.array).alloc.id)
    plain_args = []
    for i, x in enumerate(args):
        if isinstance(x, np.ndarray) and buffer_of(x) is not None:
            _check_space(space, x, f"{kname} argument {i}")
            if buffer_of(x).alloc.id not in declared:
                raise InvalidArgumentError(
                    f"{kname}: managed argument {i} (shape {x.shape}, {x.dtype}) is not declared "
                    "in reads= or writes=; declare every managed array the kernel touches")
        if space.gpu is not None and isinstance(x, np.ndarray) and buffer_of(x) is not None:
            plain_args.append(space.gpu.device_array(x))    # the GPU's view: a CuPy array
        else:
            plain_args.append(x.view(np.ndarray) if isinstance(x, ManagedArray) else x)

    def run(counting: bool) -> tuple[Any, list]:
        value = kernel(*plain_args)
        if space.gpu is not None:
            space.gpu.b.synchronize()
        return value, []

    return execute(space, kname, run, acc)
