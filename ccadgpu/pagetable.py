"""The one page table of the space (R3): the same metadata for every page, whichever node
holds it.

Flat NumPy arrays indexed by virtual page number, so that queries and policy decisions over a
million pages are vector operations.  The OS page table is the *mapping*; this table is the
*metadata* (node, frame, flags, owner, hints) that the OS does not keep for us.
"""
from __future__ import annotations

import numpy as np

#: Page flags (bit mask in :attr:`PageTable.flags`).
PINNED = np.uint8(1)        #: unmovable: never migrated, never evacuated
MIGRATING = np.uint8(2)     #: a migration holds the page; mediated writers wait
READ_MOSTLY = np.uint8(4)   #: read-mostly hint (duplicated for reads)

NO_NODE = -1
NO_HINT = -1


def set_flag(flags: np.ndarray, lo: int, hi: int, flag: np.uint8, on: bool) -> None:
    """Set (``on``) or clear ``flag`` on pages ``[lo, hi)`` of the flag array ``flags``."""
    if on:
        flags[lo:hi] |= flag
    else:
        flags[lo:hi] &= ~flag


class PageTable:
    """Per-page arrays: ``node`` (int8, -1 unmapped), ``frame`` (int64), ``flags`` (uint8),
    ``alloc`` (int32 allocation id, -1 none), ``preferred`` (int8 hint, -1 none),
    ``accessed_by`` (uint8 bit mask of nodes that map the page remotely), ``dup`` (int64 device
    frame of a read-mostly duplicate, -1 none)."""

    _FIELDS = (("node", np.int8, NO_NODE), ("frame", np.int64, -1), ("flags", np.uint8, 0),
               ("alloc", np.int32, -1), ("preferred", np.int8, NO_HINT),
               ("accessed_by", np.uint8, 0), ("dup", np.int64, -1))

    def __init__(self, page_size: int, initial: int = 1024):
        self.page_size = page_size
        self.size = 0
        #: bumped whenever a page's node, hints or pinning change (answers cached against it go stale)
        self.gen = 0
        for name, dt, fill in self._FIELDS:
            setattr(self, name, np.full(initial, fill, dtype=dt))
        self.size = initial

    def ensure(self, npages: int) -> None:
        """Grow every array to hold at least ``npages`` entries (amortised doubling)."""
        if npages <= self.size:
            return
        new = max(npages, 2 * self.size)
        for name, dt, fill in self._FIELDS:
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=dt)
            arr[: self.size] = old
            setattr(self, name, arr)
        self.size = new

    def clear(self, lo: int, hi: int) -> None:
        for name, _dt, fill in self._FIELDS:
            getattr(self, name)[lo:hi] = fill

    def pages_on(self, node: int) -> int:
        return int(np.count_nonzero(self.node[: self.size] == node))
