"""User hints, in CUDA ``cudaMemAdvise`` and Linux mempolicy vocabulary.

* ``preferred_location`` (``cudaMemAdviseSetPreferredLocation``, ``MPOL_PREFERRED``): the node a
  page should live on.  It wins over counters and faults: the manager never moves such a page
  away on their account (only eviction under capacity pressure demotes a page preferred on the
  device), and pages touched by the processor local to their preferred node are moved there
  (cause ``hint``) by every policy but ``static``.
* ``accessed_by`` (``cudaMemAdviseSetAccessedBy``): the listed processors map the pages
  remotely; counters and faults never migrate them.
* ``read_mostly`` (``cudaMemAdviseSetReadMostly``): a prefetch to the device (or a policy's
  promotion) makes a read-only *duplicate* on the device instead of moving the page: device
  reads are then local and the host copy stays where it is.  Any write, by the CPU or a device
  kernel, collapses the duplicate first (its device frame is freed), so no one ever reads stale
  data.  On the CPU stand-in the duplicate's bytes are a real copy in a device frame, but every
  access goes through the one mapping of the canonical page; the duplicate counts for capacity,
  the counters (device reads local) and the modeled clock.
* ``prefetch(arr, node)`` (``cudaMemPrefetchAsync``): move the pages now, cause ``prefetch``; a
  hint, so pages that cannot move (pinned, no room, device offline) stay where they are and the
  call does not raise for a valid array.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from . import pagetable as ptf
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .migrate import MigrationReport
    from .space import Space

HOST, DEVICE = 0, 1
_UNSET = object()


def _nodes_mask(space: "Space", value: Any) -> int:
    if value is None:
        return 0
    items: Iterable[Any] = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
    mask = 0
    for v in items:
        mask |= 1 << space.node_id(v)
    return mask


def advise(space: "Space", arr: np.ndarray, preferred_location: Any = _UNSET,
           accessed_by: Any = _UNSET, read_mostly: Any = _UNSET) -> None:
    """Set hints on the pages ``arr`` spans; arguments left out keep their value.
    ``preferred_location=None`` and ``accessed_by=()`` unset.  Everything is validated before
    anything changes."""
    pref = None
    if preferred_location is not _UNSET:
        pref = -1 if preferred_location is None else space.node_id(preferred_location)
    acc = None
    if accessed_by is not _UNSET:
        acc = _nodes_mask(space, accessed_by)
    if read_mostly is not _UNSET and not isinstance(read_mostly, (bool, np.bool_)):
        raise InvalidArgumentError(f"read_mostly must be True or False, got {read_mostly!r}")
    _, lo, hi = space._span_vpns(arr)
    space._settle_ahead()
    with space._cond:
        space.pt.gen += 1
        if pref is not None:
            space.pt.preferred[lo:hi] = pref
        if acc is not None:
            space.pt.accessed_by[lo:hi] = acc
        if read_mostly is not _UNSET:
            ptf.set_flag(space.pt.flags, lo, hi, ptf.READ_MOSTLY, bool(read_mostly))
            if not read_mostly:
                collapse(space, lo, hi)
        space.trace._user({"op": "hint", "lo": lo, "hi": hi, "preferred": pref,
                           "accessed_by": acc, "read_mostly": None if read_mostly is _UNSET
                           else bool(read_mostly)})
    space.vmstat.add(madvise_calls=1)


def hints(space: "Space", arr: np.ndarray) -> dict[str, np.ndarray]:
    """The hints of every page ``arr`` spans: ``preferred`` (node or -1), ``accessed_by``
    (bit mask of nodes), ``read_mostly`` (bool) and ``duplicated`` (a device duplicate exists)."""
    _, lo, hi = space._span_vpns(arr)
    with space._cond:
        pt = space.pt
        return {"preferred": pt.preferred[lo:hi].copy(),
                "accessed_by": pt.accessed_by[lo:hi].copy(),
                "read_mostly": (pt.flags[lo:hi] & ptf.READ_MOSTLY) != 0,
                "duplicated": pt.dup[lo:hi] >= 0}


def duplicate(space: "Space", vpns: np.ndarray) -> np.ndarray:
    """Make device duplicates of host-resident read-mostly pages ``vpns`` (as many as the
    device has room for).  Returns the pages duplicated.  Space lock held by the caller."""
    pt = space.pt
    v = np.asarray(vpns, np.int64)
    v = v[(pt.node[v] == HOST) & (pt.dup[v] < 0) & ((pt.flags[v] & ptf.READ_MOSTLY) != 0)
          & ((pt.flags[v] & ptf.MIGRATING) == 0)]
    v = v[~space._writer_mask(v)]       # a page being written now would be copied mid-write
    if len(v) == 0 or not space.device.accepts_pages():
        return v[:0]
    dev = space.nodes[DEVICE]
    frames = dev.take(len(v), partial=True)
    v = v[: len(frames)]
    if space.gpu is not None:
        space.gpu.read_mostly(v, True)      # the driver keeps the duplicate
    else:
        src = space.nodes[HOST]
        for f_dst, f_src in zip(frames.tolist(), pt.frame[v].tolist()):
            np.copyto(dev.frame_bytes(f_dst), src.frame_bytes(f_src))
    pt.dup[v] = frames
    space.vmstat.add(pgduplicate=len(v))
    # the copy crossed the link as a move would have
    space.clock.migration(np.zeros(len(v), np.int64), DEVICE, space.page_size)
    return v


def collapse(space: "Space", lo: int, hi: int) -> int:
    """Drop the device duplicates of pages ``[lo, hi)`` (a write is coming).  Space lock held."""
    if hi - lo == 1 and space.pt.dup[lo] < 0:        # one page, no duplicate: a scalar store
        return 0
    d = space.pt.dup[lo:hi]
    has = d >= 0
    if not has.any():
        return 0
    space.nodes[DEVICE].give(d[has])
    space.pt.dup[lo:hi] = np.where(has, -1, d)
    if space.gpu is not None:
        space.gpu.read_mostly(lo + np.flatnonzero(has), False)
    n = int(has.sum())
    space.vmstat.add(pgcollapse=n)
    return n


def drop_all_duplicates(space: "Space") -> int:
    """Drop every device duplicate (device offline).  Space lock held."""
    hw = space.va.high_water
    return collapse(space, 0, hw)


def prefetch(space: "Space", arr: np.ndarray, node: Any) -> "MigrationReport":
    """Move the pages ``arr`` spans to ``node`` now (cause ``prefetch``); read-mostly pages
    bound for the device are duplicated instead.  Never raises for a valid array and node."""
    target = space.node_id(node)
    alloc, first, n = space._resolve(arr)
    rel = np.arange(first, first + n, dtype=np.int64)
    space._settle_ahead((alloc,))
    if target == DEVICE:
        with space._cond:
            vp = alloc.vstart + rel
            rm = (space.pt.flags[vp] & ptf.READ_MOSTLY) != 0
            space.trace._moved(duplicate(space, vp[rm]), None)
            rel = rel[~rm]
    return space.migrator.move(alloc, rel, target, cause="prefetch", user=True)
