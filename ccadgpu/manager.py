"""The migration manager: runs a policy between epochs, has the final say, prices everything.

One engine serves both worlds:

* **live** — ``Space(policy=...)``: after every launch (and every run of host accesses) the
  space hands the manager the epoch's per-page counts; the manager asks the policy, enforces
  pins, hints, the migration switch and capacity, and executes the moves with the real
  mechanism (:meth:`Space.move_pages`, copies and remaps);
* **replay** — :func:`ccadgpu.replay.replay`: the same steps over a recorded trace against a
  simulated placement, with no kernel run and no byte copied.

Per epoch, in this order: (1) moves when the epoch starts (``policy.fault``: faults, and moves
at a launch, whose footprint is known before its kernel runs; and CPU faults on device pages
when ``tunables.cpu_access == "migrate_on_cpu_fault"``), priced as if they happened before the
epoch's accesses, plus one profile ``fault`` cost per faulting region (moves of cause
``fault``); (2) the epoch's accesses, priced with the profile under the placement they then
see; (3) per-page heat (decayed sectors) and access-counter notifications
(:mod:`ccadgpu.notify`, the same logic as the hardware unit); (4) ``policy.epoch_end`` moves.
Live, step (1) runs *before* the accesses where they are known first (tunable
``faults_ahead``, on by default; :meth:`MigrationManager.fault_ahead`): a launch whose
declared accesses give its pages before its kernel runs, and a CPU operation over device pages
that the manager would fault home (:meth:`MigrationManager.would_fault`), which then ends the
open host epoch and is an epoch of its own.  The pages then really are where the faults put
them when the kernel or the CPU touches them, as on hardware, so the space clock and the
launch's counts agree with this model.  A launch with counts only its kernel knows (in-kernel
page histograms) and CPU operations that join the open host epoch have their step (1) after
the accesses ran, priced as if before.  A replay steps the recorded epochs in the same order
and decides the same.  A launch that fails once its faults ran (its kernel raised, the device
went offline) is an *aborted* epoch: its faults stay done and priced, steps (2)-(4) do not run
(``Epoch.aborted``; its trace record says so).

**The manager's final say** (the thread: "the manager makes the final decision"): pinned pages
never move; ``tunables.migration_enabled = False`` stops every policy move (R5; set during a
step, from a migrate listener, it rules from the next: :class:`HeldKnobs`); a preferred
location wins over counters and faults (a page preferred on the host is never promoted by them,
one preferred on the device is demoted only by eviction); pages the device is ``accessed_by``
are mapped remotely and never moved by counters or faults; promotions beyond the device's free
frames evict the policy's victims first (``Policy.victims``) or are cut, hottest kept.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np

from . import notify, upkeep
from . import pagetable as ptf
from .clock import Clock, Profile
from .policies import Move, Policy, make_policy
from .policies.base import as_index, decay, decay_table
from .runs import group_counts, sorted_unique
from .tunables import Knob, register

if TYPE_CHECKING:
    from .space import Space
    from .trace import EpochRecord

HOST, DEVICE = 0, 1
CPU, DEV = 0, 1
#: moves decided by a policy (the manager filters them by hints); "hint" and "api" are the user's
POLICY_CAUSES = ("fault", "prefetch", "access_counter", "eviction")
_NOWHERE = np.iinfo(np.int64).max

register(Knob("cpu_access", str, "coherent",
              "What a CPU access to a device page does: 'coherent' (the CCAD model: a remote "
              "access, counted and priced as remote) or 'migrate_on_cpu_fault' (HMM "
              "device-private memory: the page returns to the host first).",
              lambda v: v in ("coherent", "migrate_on_cpu_fault"),
              "'coherent' or 'migrate_on_cpu_fault'"))
register(Knob("faults_ahead", bool, True,
              "Live spaces run the manager's moves at an epoch's start before its accesses: a "
              "launch's (when its declared accesses give its pages before it runs) and a CPU "
              "operation's over device pages the policy faults home (the operation is then an "
              "epoch of its own).  False: they run after the accesses (which see the pages "
              "where they were) and are priced as if before."))
register(Knob("thrash_window_epochs", int, 8,
              "A page that moves again within this many epochs of its last move counts as "
              "ping-ponging (ctx.recent_moves; access_counter backs off such pages).",
              lambda v: v >= 1, ">= 1"))
register(Knob("heat_halflife_epochs", float, 4.0,
              "Half-life, in epochs, of the per-page decayed access counts policies rank by.",
              lambda v: v > 0, "> 0"))


#: the knobs the manager and the policies decide by: part of a recorded run, so a replay
#: starts from their recorded values and takes their changes where the run made them
DECISION_KNOBS = ("cpu_access", "migration_enabled", "thrash_window_epochs",
                  "heat_halflife_epochs", "access_counter_granularity", "access_counter_threshold")


class HeldKnobs:
    """The manager's view of the space's tunables: during each of its calls (a step, an
    epoch's faults run ahead) the knobs it decides by (:data:`DECISION_KNOBS`) read as they
    were when the call began; set meanwhile (from a migrate listener of its moves), they rule
    from its next call.  A replay can then put the change where it takes effect, between two
    calls (the trace records it there), instead of between two moves of one step, where no
    position of the trace can.  Every other name reads and writes the tunables themselves."""

    def __init__(self, tunables: Any) -> None:
        object.__setattr__(self, "_tunables", tunables)
        object.__setattr__(self, "_held", None)

    def __getattr__(self, name: str) -> Any:
        held = self._held
        if held is not None and name in held:
            return held[name]
        return getattr(self._tunables, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tunables, name, value)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the decision knobs still for the duration (the outermost hold decides)."""
        if self._held is not None:
            yield
            return
        object.__setattr__(self, "_held", {k: getattr(self._tunables, k)
                                           for k in DECISION_KNOBS})
        try:
            yield
        finally:
            object.__setattr__(self, "_held", None)


def _extend(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    """``a`` grown to ``n`` rows, the new ones ``fill`` (zeros come from calloc: no pass)."""
    out = (np.zeros((n,) + a.shape[1:], a.dtype) if fill == 0 else
           np.full((n,) + a.shape[1:], fill, a.dtype))
    out[: len(a)] = a
    return out


@dataclass
class Epoch:
    """One epoch as the manager sees it: the touched pages and their 32-byte sectors
    ``[page, processor, rw]``, and which processor ran it (``launch``: a kernel, not host
    accesses)."""
    index: int
    epoch: int
    kernel: str
    processor: int
    vpns: np.ndarray
    sectors: np.ndarray
    launch: bool
    wall: float = float("nan")
    #: pages whose allocation went away before the manager saw the epoch: priced with the node
    #: they had (``gone_node``), otherwise ignored (no heat, no moves)
    gone_sectors: np.ndarray | None = None
    gone_node: np.ndarray | None = None
    #: each page's allocation id (-1 none, -2 several during a host epoch) and (live) node
    #: when the epoch was queued
    alloc_ids: np.ndarray | None = None
    rec_node: np.ndarray | None = None
    #: step (1), already run before the accesses (live, :meth:`MigrationManager.fault_ahead`)
    ahead: "FaultsAhead | None" = None
    #: a launch that failed after its faults ran: the manager steps its faults (1) only
    aborted: bool = False

    def touched_by(self, proc: int) -> np.ndarray:
        return self.by_proc[:, proc] > 0

    @property
    def by_proc(self) -> np.ndarray:
        """Sectors per page and processor (reads + writes), ``[n, 2]``; computed once."""
        bp = self.__dict__.get("_by_proc")
        if bp is None:
            bp = self.sectors[:, :, 0] + self.sectors[:, :, 1]
            self.__dict__["_by_proc"] = bp
        return bp

    @classmethod
    def from_record(cls, rec: "EpochRecord", index: int) -> "Epoch":
        dev = rec.processor == "device"
        ep = cls(index, rec.epoch, rec.kernel, DEV if dev else CPU,
                 np.asarray(rec.vpns, np.int64), np.asarray(rec.sectors, np.int64),
                 dev, rec.wall_seconds)
        ep.alloc_ids = np.asarray(rec.alloc, np.int64)
        ep.aborted = rec.aborted
        return ep


class Placement(Protocol):
    """Where pages are, and how to move them: the live space or a simulation."""
    page_size: int

    @property
    def node(self) -> np.ndarray: ...
    def free_frames(self, node: int) -> int: ...
    def used_frames(self, node: int) -> int: ...
    def flags(self) -> np.ndarray: ...
    def seen_by(self, proc: int, v: np.ndarray) -> np.ndarray: ...
    def duplicated(self, v: np.ndarray) -> np.ndarray: ...
    def preferred(self) -> np.ndarray: ...
    def accessed_by(self) -> np.ndarray: ...
    def accepts(self, node: int) -> bool: ...
    def move(self, vpns: np.ndarray, target: int, cause: str) -> tuple[np.ndarray, float]: ...


class SimPlacement:
    """A placement without memory: node per page and frame counts per node (replay)."""

    def __init__(self, page_size: int, frames: list[int], node: np.ndarray):
        self.page_size = page_size
        self.frames = list(frames)
        self._node = np.asarray(node, np.int8).copy()
        self._flags = np.zeros(len(self._node), np.uint8)
        self._pref = np.full(len(self._node), -1, np.int8)
        self._acc = np.zeros(len(self._node), np.uint8)
        #: host pages with a read-mostly duplicate on the device (a device frame each)
        self._dup = np.zeros(len(self._node), bool)
        self._ndup = 0
        self.used = [int(np.count_nonzero(self._node == n)) for n in range(len(frames))]
        for n, (u, f) in enumerate(zip(self.used, self.frames)):
            if u > f:
                raise ValueError(f"initial placement puts {u} pages on node {n} of {f} frames")

    @property
    def node(self) -> np.ndarray:
        return self._node

    def free_frames(self, node: int) -> int:
        return self.frames[node] - self.used[node]

    def used_frames(self, node: int) -> int:
        return self.used[node]

    def flags(self) -> np.ndarray:
        return self._flags

    def seen_by(self, proc: int, v: np.ndarray) -> np.ndarray:
        if proc == DEV and self._ndup:
            node = self._node[v].copy()
            node[self._dup[v]] = DEVICE
            return node
        return self._node[v]

    def duplicated(self, v: np.ndarray) -> np.ndarray:
        return self._dup[v]

    def preferred(self) -> np.ndarray:
        return self._pref

    def accessed_by(self) -> np.ndarray:
        return self._acc

    def accepts(self, node: int) -> bool:
        return True

    def move(self, vpns: np.ndarray, target: int, cause: str) -> tuple[np.ndarray, float]:
        """As the live mechanism: the manager's moves of read-mostly pages to the device
        duplicate them there instead (reported as not moved; the user's own, cause
        ``"api"``, move them as ``move_pages`` does), then as many of the others as fit
        move, and a page now on the device loses its duplicate."""
        moved = np.zeros(len(vpns), bool)
        todo = np.arange(len(vpns))
        if target == DEVICE and cause != "api":
            rm = (self._flags[vpns] & ptf.READ_MOSTLY) != 0
            if rm.any():
                self.duplicate(vpns[rm])
                todo = np.flatnonzero(~rm)
        sel = todo[: max(0, min(len(todo), self.free_frames(target)))]
        moved[sel] = True
        v = vpns[sel]
        for n, c in enumerate(np.bincount(self._node[v], minlength=len(self.used)).tolist()):
            self.used[n] -= c
        self.used[target] += len(v)
        self._node[v] = target
        if target == DEVICE and self._ndup:
            self._undup(v)
        return moved, 0.0

    def duplicate(self, v: np.ndarray) -> None:
        """Device duplicates of the host pages among ``v``, as many as the device has room
        for (``hints.duplicate``)."""
        v = v[(self._node[v] == HOST) & ~self._dup[v]]
        if not self.accepts(DEVICE):
            return
        v = v[: max(0, self.free_frames(DEVICE))]
        self._dup[v] = True
        self._ndup += len(v)
        self.used[DEVICE] += len(v)

    def collapse(self, lo: int, hi: int) -> None:
        """Drop the device duplicates of pages ``[lo, hi)`` (a write, ``hints.collapse``)."""
        self._undup(slice(lo, hi))

    def _undup(self, idx: "slice | np.ndarray") -> None:
        n = int(np.count_nonzero(self._dup[idx]))
        if n:
            self._dup[idx] = False
            self._ndup -= n
            self.used[DEVICE] -= n


class LivePlacement:
    """The real thing: a space's page table and mechanism."""

    def __init__(self, space: "Space"):
        self.space = space
        self.page_size = space.page_size

    @property
    def node(self) -> np.ndarray:
        return self.space.pt.node

    def free_frames(self, node: int) -> int:
        return self.space.nodes[node].free_frames

    def used_frames(self, node: int) -> int:
        return self.space.nodes[node].used_frames

    def flags(self) -> np.ndarray:
        return self.space.pt.flags

    def seen_by(self, proc: int, v: np.ndarray) -> np.ndarray:
        """Node of pages ``v`` as processor ``proc`` sees them: a read-mostly duplicate makes a
        host page local to the device."""
        iv = as_index(v)                          # a slice for one run of pages
        node = self.space.pt.node[iv]
        node = node.copy() if isinstance(iv, slice) else node
        if proc == DEV:
            dup = self.space.pt.dup[iv] >= 0
            if dup.any():
                node[dup] = DEVICE
        return node

    def duplicated(self, v: np.ndarray) -> np.ndarray:
        return self.space.pt.dup[v] >= 0

    def preferred(self) -> np.ndarray:
        return self.space.pt.preferred

    def accessed_by(self) -> np.ndarray:
        return self.space.pt.accessed_by

    def accepts(self, node: int) -> bool:
        return node == HOST or self.space.device.accepts_pages()

    def move(self, vpns: np.ndarray, target: int, cause: str) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        moved = self.space._move_vpns(vpns, target, cause)
        return moved, time.perf_counter() - t


class PolicyContext:
    """What a policy may look at (read-only by convention): logical time, placement, per-page
    history and hints, capacities.  Page arrays are indexed by virtual page number (vpn)."""

    def __init__(self, mgr: "MigrationManager"):
        self._m = mgr
        self.epoch = 0                 #: epochs stepped so far (logical time)
        self.now = 0.0                 #: modeled seconds so far (logical time)
        self.page_size = mgr.placement.page_size
        self.profile: Profile = mgr.clock.profile
        self.tunables = mgr.tunables

    # -- placement & capacity --------------------------------------------------------------------
    @property
    def node(self) -> np.ndarray:
        """Node of every page (-1: not allocated)."""
        return self._m.placement.node

    @property
    def npages(self) -> int:
        return len(self._m.placement.node)

    def free(self, node: int) -> int:
        return self._m.placement.free_frames(node)

    def duplicated(self, vpns: np.ndarray) -> np.ndarray:
        """Whether pages ``vpns`` have a read-mostly copy on the device (local to its reads)."""
        return self._m.placement.duplicated(np.asarray(vpns, np.int64))

    def allocated_pages(self) -> np.ndarray:
        return np.flatnonzero(self.node >= 0)

    @property
    def pages_per_region(self) -> int:
        return self._m.pages_per_region

    def region_pages(self, first: np.ndarray, npages: np.ndarray) -> np.ndarray:
        """The allocated pages of regions given by first vpn and page count."""
        first = np.asarray(first, np.int64)
        npages = np.asarray(npages, np.int64)
        if len(first) == 0:
            return np.zeros(0, np.int64)
        rep = np.repeat(first, npages)
        off = np.arange(len(rep)) - np.repeat(np.cumsum(npages) - npages, npages)
        v = sorted_unique(rep + off)
        v = v[v < self.npages]
        return v[self.node[v] >= 0]

    def dense_regions(self, pages: np.ndarray, density: float) -> np.ndarray:
        """Allocated pages of the regions in which at least ``density`` of the allocated pages
        are among ``pages``."""
        rp = self.pages_per_region
        regions, _, hits = group_counts(np.asarray(pages, np.int64) // rp)
        allp = self.region_pages(regions * rp, np.full(len(regions), rp))
        r_all, inv, n_all = group_counts(allp // rp)
        dense = hits >= density * n_all[np.searchsorted(r_all, regions)]
        is_dense = np.zeros(len(r_all), bool)
        is_dense[np.searchsorted(r_all, regions[dense])] = True
        return allp[is_dense[inv]]

    # -- history ------------------------------------------------------------------------------------
    def heat(self, vpns: np.ndarray) -> np.ndarray:
        """Decayed sectors per page and processor (``[k, 2]``; half-life
        ``tunables.heat_halflife_epochs``)."""
        m = self._m
        v = as_index(np.asarray(vpns, np.int64))
        age = self.epoch - m.heat_epoch[v]
        return m.heat_val[v] * decay(age, m.tunables.heat_halflife_epochs)[:, None]

    def heat_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tables behind :meth:`heat`, for policies with loops of their own:
        ``(value[vpn, processor], epoch[vpn], decay by age)``; the heat of page ``v`` is
        ``value[v] * decay[min(ctx.epoch - epoch[v], len(decay) - 1)]``."""
        m = self._m
        return m.heat_val, m.heat_epoch, decay_table(m.tunables.heat_halflife_epochs)

    @property
    def flags(self) -> np.ndarray:
        """Page-table flags of every page (``ccadgpu.pagetable``: PINNED, ...)."""
        return self._m.placement.flags()

    @property
    def last_touch(self) -> np.ndarray:
        """Epoch each processor last touched each page (``[vpn, 2]``, -1 never)."""
        return self._m.last_touch

    def touched_at(self, vpns: np.ndarray) -> np.ndarray:
        """Epoch each page of ``vpns`` was last touched by either processor (-1 never)."""
        lt = self._m.last_touch
        v = as_index(np.asarray(vpns, np.int64))
        return np.maximum(lt[v, 0], lt[v, 1])

    @property
    def recent_moves(self) -> np.ndarray:
        """Moves of each page within the thrash window of each other (1 = a single move)."""
        return self._m.recent_moves

    @property
    def last_move(self) -> np.ndarray:
        return self._m.last_move

    # -- hints ----------------------------------------------------------------------------------------
    @property
    def pinned(self) -> np.ndarray:
        return (self._m.placement.flags() & ptf.PINNED) != 0

    def pinned_at(self, vpns: np.ndarray) -> np.ndarray:
        """Whether pages ``vpns`` are pinned (O(len(vpns)), unlike ``pinned``)."""
        return (self._m.placement.flags()[vpns] & ptf.PINNED) != 0

    @property
    def preferred(self) -> np.ndarray:
        return self._m.placement.preferred()

    @property
    def accessed_by(self) -> np.ndarray:
        return self._m.placement.accessed_by()

    def evictable(self, exclude: np.ndarray) -> np.ndarray:
        """Device pages that may be evicted: not pinned, not in ``exclude``; pages preferred on
        the device come last."""
        node = self.node
        v = np.flatnonzero(node == DEVICE)
        v = v[~self.pinned_at(v)]
        v = self._m._without(v, exclude)
        pref = self.preferred[v] == DEVICE
        return np.concatenate((v[~pref], v[pref]))

    def without_mask(self, v: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Mask of the pages of ``v`` that are not in ``exclude``; O(len(v) + len(exclude))."""
        return self._m._without_mask(v, exclude)

    # -- accounting hooks ------------------------------------------------------------------------------
    def charge_faults(self, n: int, seconds_each: float) -> None:
        """Add ``n`` faults of ``seconds_each`` modeled seconds to this epoch (e.g. hint faults)."""
        self._m._extra_fault += n * seconds_each

    def note_thrashing(self, vpns: np.ndarray) -> None:
        """Report pages a policy found ping-ponging (counted in the results)."""
        self._m.thrashing.update(np.asarray(vpns).tolist())


@dataclass
class StepResult:
    """One epoch's modeled outcome."""
    index: int
    kernel: str
    processor: int
    access_s: float
    migrate_s: float
    fault_s: float
    touched_bytes: int
    remote_bytes: int
    notifications: int
    moved: dict = field(default_factory=dict)   # (cause, src, dst) -> pages
    wall_s: float = float("nan")
    migrate_wall_s: float = 0.0
    device_pages: int = 0

    @property
    def total_s(self) -> float:
        return self.access_s + self.migrate_s + self.fault_s


@dataclass
class FaultsAhead:
    """Step (1) of an epoch run before its accesses (:meth:`MigrationManager.fault_ahead`)."""
    res: StepResult
    decide_s: float
    step_s: float
    #: the faults' modeled seconds
    fault_s: float


class MigrationManager:
    """Runs ``policy`` over epochs against ``placement`` (see the module docs)."""

    def __init__(self, placement: Placement, policy: "str | Policy", profile: Profile,
                 tunables: Any, **policy_params: Any):
        self.placement = placement
        self.policy = make_policy(policy, **policy_params)
        self.clock = Clock(profile)
        self.tunables = HeldKnobs(tunables)
        self.results: list[StepResult] = []
        self.heat_val = np.zeros((0, 2))
        self.heat_epoch = np.zeros(0, np.int64)
        self.last_touch = np.zeros((0, 2), np.int64)
        self.last_move = np.zeros(0, np.int64)
        self.recent_moves = np.zeros(0, np.int32)
        self.thrashing: set[int] = set()
        self._acc = np.zeros((2, 0), np.int64)
        self._rp = 0
        self._extra_fault = 0.0
        self._decide_s = 0.0
        self._step_s = 0.0
        #: keep the placement of every page after each epoch (for heatmaps); off by default
        self.record_history = False
        self._history: list[np.ndarray] = []
        self.ctx = PolicyContext(self)
        self.policy.setup(self.ctx)

    @property
    def pages_per_region(self) -> int:
        return max(1, self.tunables.access_counter_granularity // self.placement.page_size)

    def _ensure(self) -> None:
        n = len(self.placement.node)
        if len(self.heat_epoch) < n:
            self.heat_val = _extend(self.heat_val, n, 0)
            self.heat_epoch = _extend(self.heat_epoch, n, 0)
            self.last_touch = _extend(self.last_touch, n, -1)
            self.last_move = _extend(self.last_move, n, -(1 << 40))
            self.recent_moves = _extend(self.recent_moves, n, 0)
        rp = self.pages_per_region
        if rp != self._rp:
            self._acc = np.zeros((2, 0), np.int64)
            self._rp = rp
        self._acc = notify.grow_accumulators(self._acc, -(-n // rp))

    # -- scratch tables (page-indexed, reused so that a decision costs O(its pages)) ------------
    def _pos_table(self, n: int) -> np.ndarray:
        t = self.__dict__.get("_pos")
        if t is None or len(t) < n:
            t = np.full(max(n, 1024), _NOWHERE, np.int64)
            self._pos = t
        return t

    def _first_of_each(self, v: np.ndarray) -> np.ndarray:
        """Mask of the first occurrence of each value of the page list ``v``; O(len(v))."""
        pos = self._pos_table(int(v.max()) + 1)
        at = np.arange(len(v), dtype=np.int64)
        np.minimum.at(pos, v, at)
        first = pos[v] == at
        pos[v] = _NOWHERE
        return first

    def _without_mask(self, v: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        if len(v) == 0 or len(exclude) == 0:
            return np.ones(len(v), bool)
        ex = np.asarray(exclude, np.int64)
        pos = self._pos_table(max(int(v.max()), int(ex.max())) + 1)
        pos[ex] = 0
        keep = pos[v] != 0
        pos[ex] = _NOWHERE
        return keep

    def _without(self, v: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Pages ``v`` that are not in ``exclude``; O(len(v) + len(exclude))."""
        if len(v) == 0 or len(exclude) == 0:
            return v
        return v[self._without_mask(v, exclude)]

    # -- executing decisions ---------------------------------------------------------------------
    def _filter(self, m: Move) -> np.ndarray:
        """The manager's say over one move: returns the pages that may go, in the policy's
        order (so that a cut for capacity keeps what the policy ranked first)."""
        node = self.placement.node
        v = np.asarray(m.vpns, np.int64)
        if not self.tunables.migration_enabled and m.cause != "evacuation":
            return v[:0]
        veto_pref, veto_access = -1, False
        if m.cause in POLICY_CAUSES and not m.mandatory:
            veto_pref = HOST if m.target == DEVICE else -1 if m.cause == "eviction" else DEVICE
            # the target's processor maps these pages remotely: it never pulls them over
            veto_access = m.cause != "eviction"
        # the usual move (pages ascending, within the tables) in one fused pass, the rest below
        out = np.empty(len(v), np.int64)
        n = upkeep.kernels()["may_move"](
            v, node, self.placement.flags(), self.placement.preferred(),
            self.placement.accessed_by(), m.target, veto_pref, veto_access, ptf.PINNED, out)
        if n >= 0:
            v = out[:n]
        else:
            v = self._filter_any(v, m.target, veto_pref, veto_access)
        if m.target == DEVICE and len(v):
            dup = self.placement.duplicated(v)       # already local to the device for reads
            if dup.any():
                v = v[~dup]
        return v

    def _filter_any(self, v: np.ndarray, target: int, veto_pref: int, veto_access: bool
                    ) -> np.ndarray:
        """:meth:`_filter`'s tests for pages in any order, duplicates and pages outside the
        space included."""
        node = self.placement.node
        if len(v) and (v.min() < 0 or v.max() >= len(node)):
            v = v[(v >= 0) & (v < len(node))]
        increasing = len(v) < 2 or bool((np.diff(v) > 0).all())
        if not increasing:
            v = v[self._first_of_each(v)]                  # duplicates: keep the first of each
        # one mask, one compression: a decision costs a few passes over its own pages
        i = as_index(v) if increasing else v
        nd = node[i]
        ok = (nd >= 0) & (nd != target) & ((self.placement.flags()[i] & ptf.PINNED) == 0)
        if veto_pref >= 0:
            ok &= self.placement.preferred()[i] != veto_pref
        if veto_access:
            ok &= (self.placement.accessed_by()[i] & (1 << target)) == 0
        return v[ok]

    def _execute(self, v: np.ndarray, target: int, cause: str, res: StepResult) -> np.ndarray:
        if len(v) == 0:
            return v
        src = self.placement.node[v]                 # a gather: a copy the move leaves alone
        there = src >= 0
        if not there.all():
            v, src = v[there], src[there]            # freed meanwhile: nothing to move
        if len(v) == 0:
            return v
        moved, wall = self.placement.move(v, target, cause)
        res.migrate_wall_s += wall
        mv, ms = (v, src) if moved.all() else (v[moved], src[moved])
        if target == DEVICE and not moved.all():
            # read-mostly pages are copied to the device instead (_filter left out those
            # copied already): the same bytes over the link, priced and counted as the move
            dup = self.placement.duplicated(v[~moved])
            if dup.any():
                self._price(src[~moved][dup], target, cause, res)
        if len(mv) == 0:
            return mv
        self._price(ms, target, cause, res)
        upkeep.note_moves(self, mv)
        return mv

    def _price(self, src: np.ndarray, target: int, cause: str, res: StepResult) -> None:
        """Pages from nodes ``src`` copied onto ``target`` for ``cause``: their seconds and
        counts in ``res``."""
        res.migrate_s += self.clock.migration_seconds(src, target, self.placement.page_size)
        for s, c in enumerate(np.bincount(src).tolist()):
            if c:
                key = (cause, s, int(target))
                res.moved[key] = res.moved.get(key, 0) + c

    def _apply(self, moves: list[Move], res: StepResult) -> np.ndarray:
        """Filter and execute moves, demotions first; returns the pages moved by cause fault."""
        faulted = []
        # evictions only make room on the device: none while it takes no pages (going offline)
        room = self.placement.accepts(DEVICE)
        for m in sorted(moves, key=lambda m: m.target != HOST):
            if m.cause == "eviction" and not room:
                continue
            v = self._filter(m)
            if len(v) == 0:
                continue
            if m.target != HOST:
                if not self.placement.accepts(m.target):
                    continue
                short = len(v) - self.placement.free_frames(m.target)
                if short > 0 and self.policy.evicts:
                    victims = self.policy.victims(self.ctx, short, v)
                    victims = self._filter(Move(victims, HOST, "eviction"))
                    self._execute(victims, HOST, "eviction", res)
                v = v[: max(0, self.placement.free_frames(m.target))]
            mv = self._execute(v, m.target, m.cause, res)
            if m.cause == "fault":
                faulted.append(mv)
        return np.concatenate(faulted) if faulted else np.zeros(0, np.int64)

    # -- one epoch ---------------------------------------------------------------------------------------
    def _fault_phase(self, ep: Epoch, res: StepResult) -> tuple[np.ndarray, float]:
        """Step (1): the policy's moves when the epoch starts, the preferred locations and the
        mandatory CPU faults, executed; returns the pages moved by faults and the decision
        seconds.  ``self._extra_fault`` holds the faults the policy charged itself."""
        self._extra_fault = 0.0
        v = ep.vpns
        t_dec = time.perf_counter()
        moves = list(self.policy.fault(self.ctx, ep))
        if self.policy.name != "static" and len(v):
            # a preferred location is where a page goes when its processor touches it
            iv = as_index(v)
            mine = DEVICE if ep.processor == DEV else HOST
            want = self.placement.preferred()[iv] == mine
            if want.any():
                want &= (self.placement.node[iv] != mine) & ep.touched_by(ep.processor)
                if want.any():
                    moves.insert(0, Move(v[want], mine, "hint"))     # hints first: they win
        if self.tunables.cpu_access == "migrate_on_cpu_fault":
            cpu = v[ep.touched_by(CPU)]
            moves.append(Move(cpu[self.placement.node[cpu] == DEVICE], HOST, "fault",
                              mandatory=True))
        faulted = self._apply(moves, res)
        return faulted, time.perf_counter() - t_dec

    def would_fault(self, ep: Epoch) -> bool:
        """Whether step (1) of the CPU epoch ``ep`` may move pages, asked before its accesses
        run (nothing changes): true when it touches device pages that must come home
        (``migrate_on_cpu_fault``, a preferred location on the host) or that the policy may
        fault home (:meth:`Policy.would_fault`)."""
        self._ensure()
        v = ep.vpns
        if ep.processor != CPU or len(v) == 0 or not self.cpu_may_fault or \
                not self.tunables.migration_enabled:
            return False
        # the device pages the CPU touches that a move home could take at all (as _filter)
        movable = self._filter_any(v[ep.touched_by(CPU)], HOST, -1, False)
        if not len(movable):
            return False
        if self.tunables.cpu_access == "migrate_on_cpu_fault" or \
                (self.placement.preferred()[movable] == HOST).any():
            return True                  # mandatory faults, hint moves: nothing vetoes them
        # a policy's fault is vetoed by a device preference and by the CPU mapping them remotely
        if not len(self._filter_any(movable, HOST, DEVICE, True)):
            return False
        return bool(self.policy.would_fault(self.ctx, ep))

    @property
    def cpu_may_fault(self) -> bool:
        """Whether a CPU touch of a device page can ever fault it home here."""
        return self.policy.name != "static" or \
            self.tunables.cpu_access == "migrate_on_cpu_fault"

    def fault_ahead(self, ep: Epoch) -> FaultsAhead:
        """Run step (1) of ``ep`` now, before its accesses (live: a launch whose footprint is
        known, a CPU operation that touches device pages): the pages move for real first, as
        on hardware, where a fault precedes the access it serves.  Pass the result as
        ``ep.ahead`` to :meth:`step`, which then goes on from step (2).  The manager must have
        stepped every epoch before ``ep``, so that a replay of the trace decides the same."""
        t0 = time.perf_counter()
        self._ensure()
        res = StepResult(self.ctx.epoch, ep.kernel, ep.processor, 0.0, 0.0, 0.0, 0, 0, 0,
                         wall_s=ep.wall)
        with self.tunables.hold():
            faulted, decide = self._fault_phase(ep, res)
            fault_s = self._fault_seconds(faulted)
        return FaultsAhead(res, decide, time.perf_counter() - t0, fault_s)

    def _fault_seconds(self, faulted: np.ndarray) -> float:
        """The faults' cost: the profile's per faulting region, and what the policy charged."""
        n_regions = len(sorted_unique(faulted // self._rp)) if len(faulted) else 0
        return n_regions * self.clock.profile.fault + self._extra_fault

    def step(self, ep: Epoch) -> StepResult:
        """Run the manager over one epoch (see the module docs for the order)."""
        with self.tunables.hold():
            return self._step(ep)

    def _step(self, ep: Epoch) -> StepResult:
        t0 = time.perf_counter()
        self._ensure()
        ctx = self.ctx
        # (1) fault time: now, or already (ep.ahead, from fault_ahead)
        ahead = ep.ahead
        if ahead is None:
            res = StepResult(ep.index, ep.kernel, ep.processor, 0.0, 0.0, 0.0, 0, 0, 0,
                             wall_s=ep.wall)
            faulted, decide = self._fault_phase(ep, res)
            res.fault_s, before = self._fault_seconds(faulted), 0.0
        else:
            res, decide, before = ahead.res, ahead.decide_s, ahead.step_s
            res.index, res.kernel, res.processor, res.wall_s = (ep.index, ep.kernel,
                                                                  ep.processor, ep.wall)
            res.fault_s = ahead.fault_s
        v = ep.vpns
        if not ep.aborted:       # an aborted launch made no access the manager can know of
            # (2) the accesses, under the placement they now see; (3) counters: heat,
            # recency, notifications (one fused pass over the pages, ccadgpu.upkeep)
            notes = upkeep.account_epoch(self, ep, self.placement.seen_by(ep.processor, v),
                                         res)
            res.notifications = len(notes)
            self.policy.observe(ctx, ep)
            # (4) decisions from counters
            t_dec = time.perf_counter()
            self._apply(list(self.policy.epoch_end(ctx, ep, notes)), res)
            decide += time.perf_counter() - t_dec
        res.device_pages = self.placement.used_frames(DEVICE)
        ctx.now += res.total_s
        ctx.epoch += 1
        self.results.append(res)
        if self.record_history:
            self._history.append(self.placement.node.copy())
        self._decide_s += decide - res.migrate_wall_s      # the policy and the manager's say
        self._step_s += time.perf_counter() - t0 + before - res.migrate_wall_s
        return res

    def forget(self, lo: int, hi: int) -> None:
        """Pages ``[lo, hi)`` were freed: their history must not follow whatever reuses them."""
        n = len(self.heat_epoch)
        lo, hi = min(lo, n), min(hi, n)
        self.heat_val[lo:hi] = 0.0
        self.last_touch[lo:hi] = -1
        self.last_move[lo:hi] = -(1 << 40)
        self.recent_moves[lo:hi] = 0
        self.thrashing.difference_update(range(lo, hi))
        self.policy.forget(lo, hi)

    # -- results ----------------------------------------------------------------------------------------
    def history_array(self) -> np.ndarray:
        """``[epoch, vpn]`` node of every page after each epoch (-1: not allocated), when
        ``record_history`` was on."""
        if not self._history:
            return np.zeros((0, 0), np.int8)
        n = max(len(h) for h in self._history)
        out = np.full((len(self._history), n), -1, np.int8)
        for i, h in enumerate(self._history):
            out[i, : len(h)] = h
        return out

    def summary(self) -> dict[str, Any]:
        """Totals over every epoch stepped (the row format of ``ccadgpu bench``)."""
        return summarize(self.results, self.placement.page_size, self.policy.name,
                         len(self.thrashing | set(np.flatnonzero(self.recent_moves >= 3).tolist())),
                         (self._decide_s, self._step_s))


def summarize(results: list[StepResult], page_size: int, policy: str, thrashing: int,
              decide_s: tuple[float, float]) -> dict[str, Any]:
    """``decide_s``: (seconds in policy decisions and the manager's filtering, seconds in the
    whole manager step including counter upkeep), both without executing migrations."""
    per = np.array([r.total_s for r in results]) if results else np.zeros(1)
    modeled = float(per.sum())
    touched = sum(r.touched_bytes for r in results)
    moved: Counter = Counter()
    for r in results:
        moved.update(r.moved)
    by_cause: Counter = Counter()
    by_dir: Counter = Counter()
    names = {HOST: "host", DEVICE: "device"}
    for (cause, s, d), n in moved.items():
        by_cause[cause] += n * page_size
        by_dir[f"{names.get(s, s)}_to_{names.get(d, d)}"] += n * page_size
    mig_bytes = sum(by_dir.values())
    mig_s = sum(r.migrate_s for r in results)
    mig_wall = sum(r.migrate_wall_s for r in results)
    wall = float(np.nansum([r.wall_s for r in results])) if results else 0.0
    return {
        "policy": policy, "epochs": len(results), "modeled_s": modeled,
        "wall_s": wall, "touched_bytes": touched,
        "throughput_gbps": touched / modeled / 1e9 if modeled > 0 else 0.0,
        "access_s": float(sum(r.access_s for r in results)),
        "migrate_s": float(mig_s), "fault_s": float(sum(r.fault_s for r in results)),
        "migrated_bytes": int(mig_bytes),
        "migrated_bytes_by_direction": dict(by_dir),
        "migrated_bytes_by_cause": dict(by_cause),
        "migration_gbps_modeled": mig_bytes / mig_s / 1e9 if mig_s > 0 else 0.0,
        "migration_gbps_wall": mig_bytes / mig_wall / 1e9 if mig_wall > 0 else 0.0,
        "remote_fraction": (sum(r.remote_bytes for r in results) / touched) if touched else 0.0,
        "thrashing_pages": int(thrashing),
        "epoch_p50_s": float(np.percentile(per, 50)), "epoch_p99_s": float(np.percentile(per, 99)),
        "device_peak_pages": int(max((r.device_pages for r in results), default=0)),
        "notifications": int(sum(r.notifications for r in results)),
        "decision_s": float(decide_s[0]), "manager_s": float(decide_s[1]),
    }
