"""Access-counter notification logic, shared by the emulated hardware unit
(:mod:`ccadgpu.counters`) and the migration manager's replay of a trace, so that a policy sees
the same notifications live and in replay (both run the loops of :mod:`ccadgpu.upkeep`)."""
from __future__ import annotations

from typing import Any

import numpy as np


#: One notification: the epoch it was raised in, the processor whose remote accesses crossed the
#: threshold, the region (``vpn // pages_per_region``), its first vpn and page count, and the
#: remote sectors accumulated since the region was last cleared or notified.
NOTIFICATION_DTYPE = np.dtype([("epoch", np.int64), ("processor", np.int8), ("region", np.int64),
                               ("vpn", np.int64), ("npages", np.int32), ("sectors", np.int64)])


def grow_accumulators(acc: np.ndarray, nregions: int) -> np.ndarray:
    """``acc`` (``int64[processor, region]``) grown to at least ``nregions`` regions."""
    if acc.shape[1] >= nregions:
        return acc
    out = np.zeros((acc.shape[0], nregions), np.int64)
    out[:, : acc.shape[1]] = acc
    return out


_NO_NOTIFICATIONS = np.zeros(0, NOTIFICATION_DTYPE)
_NO_NOTIFICATIONS.flags.writeable = False      # shared by every CPU operation on local pages


def raise_notifications(acc: np.ndarray, vpns: np.ndarray, remote: Any,
                        pages_per_region: int, threshold: int, epoch: int) -> np.ndarray:
    """Add one update's remote sectors (``remote[processor, page]`` for the sorted, unique
    ``vpns``; or one array per processor, None for one without remote sectors) to the
    per-region accumulators ``acc`` (in place) and return the notifications it
    raises: regions that received sectors and whose accumulator reached ``threshold`` (they
    restart from zero), processor by processor, regions ascending.  One fused pass over the
    pages (:mod:`ccadgpu.upkeep`)."""
    if len(vpns) == 0 or all(r is None or not len(r) for r in remote):
        return _NO_NOTIFICATIONS                   # nothing remote: no region can cross
    from .upkeep import notifications
    return notifications(acc, vpns, remote, pages_per_region, threshold, epoch,
                         NOTIFICATION_DTYPE)

