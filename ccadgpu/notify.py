"""Access-counter notification logic, shared by the emulated hardware unit
(:mod:`ccadgpu.counters`) and the migration manager's replay of a trace, so that a policy sees
the same notifications live and in replay."""
from __future__ import annotations

import numpy as np

from .runs import group_counts, sorted_unique

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


def raise_notifications(acc: np.ndarray, vpns: np.ndarray, node: np.ndarray,
                        sectors: np.ndarray, local: np.ndarray, pages_per_region: int,
                        threshold: int, epoch: int) -> np.ndarray:
    """Add one update's remote sectors to the per-region accumulators ``acc`` (in place) and
    return the notifications it raises (regions whose accumulator reached ``threshold``; those
    accumulators restart from zero).

    ``vpns`` unique pages, ``node`` where each lived during the access, ``sectors[page,
    processor, rw]``, ``local[processor]`` the processor's local node.  Vectorised."""
    found = []
    rp = pages_per_region
    for p in range(acc.shape[0]):
        remote = node != local[p]
        rs = np.where(remote, sectors[:, p, :].sum(axis=1), 0)
        nz = rs > 0
        if not nz.any():
            continue
        regions, inv, _ = group_counts(vpns[nz] // rp)
        acc[p, regions] += np.bincount(inv, weights=rs[nz]).astype(np.int64)
        hit = regions[acc[p, regions] >= threshold]
        if len(hit):
            rec = np.zeros(len(hit), NOTIFICATION_DTYPE)
            rec["epoch"] = epoch
            rec["processor"] = p
            rec["region"] = hit
            rec["vpn"] = hit * rp
            rec["npages"] = rp
            rec["sectors"] = acc[p, hit]
            acc[p, hit] = 0
            found.append(rec)
    return np.concatenate(found) if found else np.zeros(0, NOTIFICATION_DTYPE)


def clear_regions(acc: np.ndarray, vpns: np.ndarray, pages_per_region: int) -> None:
    """Clear-on-migrate: zero the accumulators of the regions holding ``vpns``."""
    if len(vpns):
        r = sorted_unique(np.asarray(vpns, np.int64) // pages_per_region)
        acc[:, r[r < acc.shape[1]]] = 0
