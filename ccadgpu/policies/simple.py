"""The reference policies: ``static`` (R5), ``first_touch`` and ``on_demand``."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runs import member
from .base import CPU, DEV, DEVICE, HOST, Move, Policy, coldest

if TYPE_CHECKING:
    from ..manager import Epoch, PolicyContext


class Static(Policy):
    """Never migrates a page: the thread's "no migration" mode for jitter-sensitive, hand-tuned
    work (R5).  Pages stay where they were allocated; the other processor maps them remotely."""
    name = "static"
    evicts = False


class FirstTouch(Policy):
    """A page goes to the node of the first processor that touches it, then stays (Linux's
    default local allocation, applied at first touch)."""
    name = "first_touch"
    evicts = False

    def setup(self, ctx: "PolicyContext") -> None:
        self._seen = np.zeros(0, bool)

    def forget(self, lo: int, hi: int) -> None:
        self._seen[lo:min(hi, len(self._seen))] = False

    def _new(self, v: np.ndarray) -> np.ndarray:
        """The pages of ``v`` never touched before."""
        seen = np.zeros(len(v), bool)
        known = v < len(self._seen)
        seen[known] = self._seen[v[known]]
        return v[~seen]

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        v = ep.vpns
        new = self._new(v)
        if len(self._seen) < ctx.npages:
            self._seen = np.concatenate((self._seen, np.zeros(ctx.npages - len(self._seen), bool)))
        self._seen[v] = True
        if len(new) == 0:
            return []
        # the first toucher: the epoch's processor (a host epoch is the CPU's)
        target = DEVICE if ep.processor == DEV else HOST
        new = new[ctx.node[new] != target]
        return [Move(new, target, "fault")] if len(new) else []

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        return bool((ctx.node[self._new(ep.vpns)] != HOST).any())


class OnDemand(Policy):
    """Fault-driven migration, like default CUDA unified memory without hints: a device touch of
    a host page migrates it to the device, a CPU touch of a device page migrates it back; when
    the device is full the least recently used device pages are evicted.

    ``prefetch_density`` (0 disables): when at least that share of a region's pages (the
    access-counter granularity) faulted in one epoch, the rest of the region comes along
    (cause ``prefetch``), as the UVM driver's density prefetcher does."""
    name = "on_demand"

    def __init__(self, prefetch_density: float = 0.5, cpu_faults: bool = True) -> None:
        if not 0.0 <= prefetch_density <= 1.0:
            raise ValueError(f"prefetch_density must be in [0, 1], got {prefetch_density!r}")
        self.prefetch_density = float(prefetch_density)
        self.cpu_faults = bool(cpu_faults)

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        moves = []
        dev_touch = ep.vpns[ep.touched_by(DEV)]
        up = dev_touch[ctx.node[dev_touch] == HOST]
        if len(up):
            moves.append(Move(up, DEVICE, "fault"))
            if self.prefetch_density > 0:
                extra = ctx.dense_regions(up, self.prefetch_density)
                extra = extra[ctx.node[extra] == HOST]
                extra = extra[~member(extra, up)]
                if len(extra):
                    moves.append(Move(extra, DEVICE, "prefetch"))
        if self.cpu_faults:
            cpu_touch = ep.vpns[ep.touched_by(CPU)]
            down = cpu_touch[ctx.node[cpu_touch] == DEVICE]
            if len(down):
                moves.append(Move(down, HOST, "fault"))
        return moves

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        v = ep.vpns[ep.touched_by(CPU)]
        return self.cpu_faults and bool((ctx.node[v] == DEVICE).any())

    def victims(self, ctx: "PolicyContext", need: int, exclude: np.ndarray) -> np.ndarray:
        cand = ctx.evictable(exclude)
        if len(cand) == 0 or need <= 0:
            return cand[:0]
        # least recently used first; pages preferred on the device last
        pref = (ctx.preferred[cand] == DEVICE).view(np.int8)
        return cand[coldest(pref, ctx.touched_at(cand), need)]
