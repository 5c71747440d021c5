"""What a placement policy is: a small class that looks at counters, hints and history and
returns page moves.  It never copies memory (that is :mod:`ccadgpu.migrate`), and it never has
the last word (that is :class:`ccadgpu.manager.MigrationManager`, which enforces pins, hints,
the migration switch and capacity before anything moves).

Writing one takes a few lines: subclass :class:`Policy`, give it a ``name``, and override
:meth:`Policy.fault` (decisions taken *before* an epoch's accesses are priced, i.e. at page-fault
time) and/or :meth:`Policy.epoch_end` (decisions taken after, from counters and notifications);
:meth:`Policy.observe` is where a policy keeps counts of its own.
See ``examples/custom_policy.py``.  Time inside a policy is logical: ``ctx.epoch`` (launch count)
and ``ctx.now`` (modeled seconds), so runs are deterministic and independent of machine speed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..manager import Epoch, PolicyContext

HOST, DEVICE = 0, 1
CPU, DEV = 0, 1       # processors


_DECAY: dict[float, np.ndarray] = {}


def decay_table(halflife: float) -> np.ndarray:
    """``0.5 ** (age / halflife)`` for ages 0..4095 (older ages use the last entry)."""
    t = _DECAY.get(halflife)
    if t is None:
        t = 0.5 ** (np.arange(4096) / halflife)
        _DECAY[halflife] = t
    return t


def decay(age: np.ndarray, halflife: float) -> np.ndarray:
    """``0.5 ** (age / halflife)`` for integer ages >= 0, through a table (pow is slow)."""
    t = decay_table(halflife)
    return t[np.minimum(age, len(t) - 1)]


def as_index(v: np.ndarray) -> "slice | np.ndarray":
    """A slice when the sorted page list ``v`` is one contiguous range (dense sweeps, the common
    case): slicing is several times faster than fancy indexing on the per-page tables."""
    if len(v) and int(v[-1]) - int(v[0]) + 1 == len(v) and len(v) > 1 and v[1] == v[0] + 1:
        return slice(int(v[0]), int(v[-1]) + 1)
    return v


def coldest(primary: np.ndarray, secondary: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries by ``(primary, secondary, index)``, in that order:
    exactly ``np.lexsort((secondary, primary))[:k]``, in O(n + k log k) rather than a sort of
    all ``n`` (where a NaN is at the cut: the sort).  Eviction asks for a few victims among
    every device page, and equal primaries are common there (every untouched page has heat
    0), so the tie-break must be honoured across the cut, not only among the pages a
    partition happened to keep."""
    if k <= 0:
        return np.zeros(0, np.intp)
    if k < len(primary):
        pick = _first_k(primary, secondary, k)
        if pick is not None:
            return pick[np.lexsort((secondary[pick], primary[pick]))]
    return np.lexsort((secondary, primary))[:k]


def _first_k(primary: np.ndarray, secondary: np.ndarray, k: int) -> np.ndarray | None:
    """The positions of :func:`coldest`'s ``k`` (0 < k < n), ascending; None where a NaN is at
    either cut (the sort decides then)."""
    kth = np.partition(primary, k - 1)[k - 1]
    if kth != kth:
        return None
    below = np.flatnonzero(primary < kth)        # fewer than k: the rest tie at kth
    tie = np.flatnonzero(primary == kth)
    r = k - len(below)
    sec = secondary[tie]
    kth2 = np.partition(sec, r - 1)[r - 1]
    if kth2 != kth2:
        return None
    pick = np.concatenate((below, tie[sec < kth2]))
    pick = np.concatenate((pick, tie[sec == kth2][:k - len(pick)]))   # lowest index first
    pick.sort()                             # so that a stable sort breaks the last ties by index
    return pick


class RateLimit:
    """Bytes per 1-second window of modeled time (Linux's promote rate limit, in MB/s)."""

    def __init__(self, mbps: float):
        self.mbps = float(mbps)
        self.start = 0.0
        self.used = 0

    def room(self, now: float, page_size: int) -> int:
        """Pages that still fit in the window holding ``now``."""
        if now - self.start >= 1.0:
            self.start = now - (now - self.start) % 1.0
            self.used = 0
        return max(int((self.mbps * 1e6 - self.used) // page_size), 0)

    def admit(self, now: float, pages: np.ndarray, page_size: int) -> np.ndarray:
        """The leading pages of ``pages`` that still fit in the current window."""
        pages = pages[: self.room(now, page_size)]
        self.used += len(pages) * page_size
        return pages


@dataclass
class Move:
    """Move pages ``vpns`` to node ``target``; ``cause`` is one of
    :data:`ccadgpu.telemetry.CAUSES` and ends up in ``space.stats()``."""
    vpns: np.ndarray
    target: int
    cause: str
    #: semantics, not a decision (an HMM CPU fault must bring the page back): hints do not veto
    mandatory: bool = False

    def __post_init__(self) -> None:
        self.vpns = np.asarray(self.vpns, np.int64).reshape(-1)


class Policy:
    """Base class: never moves anything (which is exactly the ``static`` policy)."""

    name: ClassVar[str] = "base"
    #: whether the policy may demote (evict) device pages to make room for its promotions
    evicts: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        if params:
            raise TypeError(f"policy {self.name!r} takes no parameters {sorted(params)}")

    def setup(self, ctx: "PolicyContext") -> None:
        """Called once, before the first epoch."""

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        """Moves made when the epoch starts, before its accesses are priced: faults of those
        accesses (cause ``"fault"``: the manager adds the profile's fault cost per faulting
        region), or moves made at a launch (other causes: priced as migrations only).  A
        launch's page set (``ep.vpns``) is fixed before its kernel runs by its declared
        accesses: a dense operand's extent, and for an indexed operand the pages its index
        array points at (an input of the launch, though a runtime would have to scan it); its
        counts (``ep.sectors``) are what the kernel then did, so a move that is not a fault
        should not depend on them."""
        return []

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        """Whether :meth:`fault` may move pages of the CPU epoch ``ep``, asked live before a CPU
        operation over device pages runs; it must change nothing.  True makes the operation an
        epoch of its own whose faults run first (the pages come home before the CPU reads
        them, as on hardware); a policy that says False where it would move pages has them
        read remotely live and brought home afterwards (the manager still prices the epoch as
        if they had faulted first).  By default: whether the policy has a :meth:`fault`."""
        return type(self).fault is not Policy.fault

    def observe(self, ctx: "PolicyContext", ep: "Epoch") -> None:
        """Update the policy's own per-page counters from the epoch (called before
        :meth:`epoch_end`; accounted as counter upkeep, not as decision time)."""

    def epoch_end(self, ctx: "PolicyContext", ep: "Epoch", notes: np.ndarray) -> list[Move]:
        """Moves decided after the epoch from counters (``ctx``) and the access-counter
        notifications it raised (``notes``, a :data:`ccadgpu.counters.NOTIFICATION_DTYPE`
        array)."""
        return []

    def forget(self, lo: int, hi: int) -> None:
        """Pages ``[lo, hi)`` were freed: drop any per-page state (they may be reused)."""

    def victims(self, ctx: "PolicyContext", need: int, exclude: np.ndarray) -> np.ndarray:
        """Device pages to evict so that ``need`` more pages fit: by default the coldest by
        decayed device heat (then least recently touched), never ``exclude``d ones."""
        cand = ctx.evictable(exclude)
        if len(cand) == 0 or need <= 0:
            return cand[:0]
        # ctx.heat's two columns, summed without the [k, 2] temporaries (same rounding)
        val, at, dtab = ctx.heat_tables()
        d = dtab[np.minimum(ctx.epoch - at[cand], len(dtab) - 1)]
        heat = val[cand, DEV] * d + val[cand, CPU] * d
        # pages preferred on the device go last: they leave only under real capacity pressure
        heat[ctx.preferred[cand] == DEVICE] += 1e30
        return cand[coldest(heat, ctx.touched_at(cand), need)]

    def params(self) -> dict[str, Any]:
        """The policy's parameters (reported with results)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"
