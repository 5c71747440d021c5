"""Access-counter notification logic, shared by the emulated hardware unit
(:mod:`ccadgpu.counters`) and the migration manager's replay of a trace, so that a policy sees
the same notifications live and in replay."""
from __future__ import annotations

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


def remote_sectors(node: np.ndarray, sectors: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``[processor, page]`` sectors each processor moved to pages on a node not local to it,
    from ``sectors[page, processor, rw]`` and where each page lived (``node``)."""
    by_proc = sectors[:, :, 0] + sectors[:, :, 1]
    return np.stack([np.where(node != local[p], by_proc[:, p], 0)
                     for p in range(sectors.shape[1])])


def raise_notifications(acc: np.ndarray, vpns: np.ndarray, remote: np.ndarray,
                        pages_per_region: int, threshold: int, epoch: int) -> np.ndarray:
    """Add one update's remote sectors (``remote[processor, page]`` for the sorted, unique
    ``vpns``) to the per-region accumulators ``acc`` (in place) and return the notifications it
    raises: regions whose accumulator reached ``threshold`` (they restart from zero).
    Vectorised: one ``reduceat`` per processor over the runs of pages sharing a region."""
    rp = pages_per_region
    if len(vpns) == 0:
        return np.zeros(0, NOTIFICATION_DTYPE)
    regions = vpns // rp
    starts = np.flatnonzero(np.concatenate(([True], regions[1:] != regions[:-1])))
    reg = regions[starts]
    found = []
    for p in range(acc.shape[0]):
        rs = remote[p]
        if not rs.any():
            continue
        sums = np.add.reduceat(rs, starts)
        nz = sums > 0
        rg = reg[nz]
        acc[p, rg] += sums[nz]
        hit = rg[acc[p, rg] >= threshold]
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
        # zeroing a region twice is harmless: no need to de-duplicate
        r = np.asarray(vpns, np.int64) // pages_per_region
        if r.max() >= acc.shape[1]:
            r = r[r < acc.shape[1]]
        acc[:, r] = 0
