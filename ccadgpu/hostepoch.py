"""The CPU accesses of the open host epoch, kept compact.

Every counted CPU operation adds its tally to the host epoch that stays open until the next
launch (or a fault, or ``sync``) closes it; the space hands that epoch to the manager and
its trace records the same tally.  A loop of small operations (``a[i] = x`` a million times) adds a tally
of a page or two per operation: kept one by one they would hold memory per operation and
make closing the epoch one merge of all of them.  :class:`HostAccesses` merges them every
:data:`COMPACT` additions, so it holds memory in proportion to the pages touched, and each
tally is merged once or, after that, once per :data:`COMPACT` additions as part of the
running sum.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .counters import Tally, merge_tallies
from .runs import expand_runs

#: additions between merges: large enough that merging is a small part of each operation's
#: cost, small enough that the pending tallies stay a few hundred KiB at most
COMPACT = 64

_MAX = np.iinfo(np.int64).max
_MIN = np.iinfo(np.int64).min


class HostAccesses:
    """The tallies of one open host epoch, merged as they come.

    ``ids``: keep, for each page, the range of allocation ids it had in the operations that
    touched it (the caller passes them with each tally), so that :meth:`take` can tell a page
    that one allocation held throughout from one freed and reused in between."""

    def __init__(self, ids: bool = False):
        self._with_ids = ids
        self._merged: Tally | None = None
        self._lo = self._hi = np.zeros(0, np.int64)   # per row of _merged, with ids
        self._pending: list[Tally] = []
        self._pending_ids: list[Any] = []
        #: tallies added since the last :meth:`take`
        self.adds = 0

    def __bool__(self) -> bool:
        return self._merged is not None or bool(self._pending)

    def add(self, t: Tally, ids: Any = None) -> None:
        """One operation's tally; with ``ids``, its pages' allocation ids now
        (:meth:`Tally.alloc_ids` of the page table's)."""
        if not t.n:
            return
        self._pending.append(t)
        self.adds += 1
        if self._with_ids:
            self._pending_ids.append(ids)
        if len(self._pending) >= COMPACT:
            self._compact()

    def take(self) -> tuple[Tally, np.ndarray | None]:
        """The epoch's merged tally and, with ids, one allocation id per row (-2 where its
        pages were touched under more than one allocation); empties the accumulator."""
        self._compact()
        t, lo, hi = self._merged, self._lo, self._hi
        self.clear()
        assert t is not None, "take() of an empty host epoch"
        return t, (np.where(lo == hi, lo, -2) if self._with_ids else None)

    def clear(self) -> None:
        self._merged = None
        self._lo = self._hi = np.zeros(0, np.int64)
        self._pending, self._pending_ids = [], []
        self.adds = 0

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = ([self._merged] if self._merged is not None else []) + self._pending
        t = merge_tallies(parts)
        if self._with_ids:
            # (vpn, id) pairs: a parts-form tally's ids are one per part, expanded over its
            # span in one go (a page in two parts gets its id twice: min/max do not mind)
            vs: list[np.ndarray] = [np.asarray(self._merged.vpns, np.int64)] \
                if self._merged is not None else []
            lo_in, hi_in = [self._lo], [self._hi]
            starts, lens, pid = [], [], []
            for t_, ids in zip(self._pending, self._pending_ids):
                if isinstance(ids, list):
                    for (_r, _p, _w, fp, _nd, _kk), i in zip(t_.parts, ids):
                        starts.append(fp.vlo)
                        lens.append(len(fp.nbytes))
                        pid.append(i)
                else:
                    vs.append(np.asarray(t_.vpns, np.int64))
                    ids = np.asarray(ids, np.int64)
                    lo_in.append(ids)
                    hi_in.append(ids)
            if lens:
                vs.append(expand_runs(starts, lens))
                ids = np.repeat(np.asarray(pid, np.int64), lens)
                lo_in.append(ids)
                hi_in.append(ids)
            rows = np.searchsorted(t.vpns, np.concatenate(vs))
            lo = np.full(t.n, _MAX)
            hi = np.full(t.n, _MIN)
            np.minimum.at(lo, rows, np.concatenate(lo_in))
            np.maximum.at(hi, rows, np.concatenate(hi_in))
            self._lo, self._hi = lo, hi
        self._merged = t
        self._pending, self._pending_ids = [], []
