"""Fused per-page loops of the per-epoch upkeep (Numba, compiled on first use and cached on
disk): the access-counter unit's notification accumulators (live and in the manager's replay
of them), the migration manager's accounting of one epoch (its modeled traffic, heat,
recency and remote sectors) and its bookkeeping of the pages that moved.

Every launch ends in this upkeep, and a launch over a few 256 MiB arrays touches ten thousand
pages or more.  As NumPy passes it was some twenty temporaries per epoch (and 2-D fancy
indexing, which is slow), milliseconds per launch, as much as a tenth of a streaming kernel:
these loops read each page's state once.  They compute exactly what the passes did (integer
sums; the same floating-point operations, in the same order, for the heat).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .policies.base import decay_table

if TYPE_CHECKING:
    from .manager import Epoch, MigrationManager, StepResult

_K: dict = {}
#: the node local to each processor in the manager's view (cpu: host, device: device)
_LOCAL = np.array([0, 1], np.int64)


def kernels() -> dict:
    """The compiled loops (built once per process)."""
    if _K:
        return _K
    from numba import njit

    @njit(cache=True, nogil=True, inline="always")
    def settle(acc, p, r, s, threshold, out_region, out_sectors,
               counts):  # pragma: no cover - jitted
        """Region ``r`` received ``s`` > 0 remote sectors of processor ``p``: add them to its
        accumulator; at ``threshold`` record a notification and restart from zero."""
        a = acc[p, r] + s
        if a >= threshold:
            c = counts[p]
            out_region[p, c] = r
            out_sectors[p, c] = a
            counts[p] = c + 1
            a = 0
        acc[p, r] = a

    @njit(cache=True, nogil=True)
    def notify(acc, vpns, remote0, remote1, rp, threshold, out_region, out_sectors,
               counts):  # pragma: no cover - jitted
        """Add ``remote0[i]`` / ``remote1[i]`` (the cpu's / device's remote sectors on page
        ``vpns[i]``, sorted and unique; an empty array: none) to the accumulators
        ``acc[proc, vpns[i] // rp]``: see :func:`settle` (per region, after summing)."""
        n = vpns.shape[0]
        has0 = remote0.shape[0] > 0
        has1 = remote1.shape[0] > 0
        i = 0
        while i < n:
            r = vpns[i] // rp
            end = (r + 1) * rp          # the next region's first vpn: one division per region
            s0 = 0
            s1 = 0
            while i < n and vpns[i] < end:
                if has0:
                    s0 += remote0[i]
                if has1:
                    s1 += remote1[i]
                i += 1
            if s0 > 0:
                settle(acc, 0, r, s0, threshold, out_region, out_sectors, counts)
            if s1 > 0:
                settle(acc, 1, r, s1, threshold, out_region, out_sectors, counts)

    @njit(cache=True, nogil=True)
    def account(vpns, sectors, node, local, heat_val, heat_epoch, last_touch, dtab, epoch,
                by_node, acc, rp, threshold, out_region, out_sectors,
                counts):  # pragma: no cover - jitted
        """One epoch's pages ``vpns`` (sorted, unique) with ``sectors[i, proc, rw]``, seen on
        ``node[i]``: adds each processor's sectors per node to ``by_node`` (pages on a node
        outside it are left out and reported), updates the heat (``value * decay[age] +
        sectors``, the age capped at the table's end), its epoch and the last touch of every
        page a processor touched, and feeds the sectors on pages not local to each processor
        to the notification accumulators (as :func:`notify`).  Returns (sectors, remote
        sectors, pages outside ``by_node``)."""
        nd = dtab.shape[0]
        nn = by_node.shape[1]
        touched = 0
        far = 0
        outside = 0
        r = -1
        s0 = 0
        s1 = 0
        b00 = 0                         # by_node[proc, node] for nodes 0 and 1, in registers
        b01 = 0
        b10 = 0
        b11 = 0
        for i in range(vpns.shape[0]):
            v = vpns[i]
            if v >= (r + 1) * rp:       # a new region: settle the last one
                if s0 > 0:
                    settle(acc, 0, r, s0, threshold, out_region, out_sectors, counts)
                if s1 > 0:
                    settle(acc, 1, r, s1, threshold, out_region, out_sectors, counts)
                r = v // rp
                s0 = 0
                s1 = 0
            nodei = node[i]
            age = epoch - heat_epoch[v]
            d = dtab[age if age < nd else nd - 1]
            heat_epoch[v] = epoch
            for p in range(2):
                s = sectors[i, p, 0] + sectors[i, p, 1]
                h = heat_val[v, p] * d
                if s > 0:
                    touched += s
                    if nodei != local[p]:
                        far += s
                        if p == 0:
                            s0 += s
                        else:
                            s1 += s
                    if nodei >= nn:
                        outside += 1
                    elif nodei == 0:
                        if p == 0:
                            b00 += s
                        else:
                            b10 += s
                    elif nodei == 1:
                        if p == 0:
                            b01 += s
                        else:
                            b11 += s
                    elif nodei > 1:
                        by_node[p, nodei] += s
                    last_touch[v, p] = epoch
                heat_val[v, p] = h + s
        if s0 > 0:
            settle(acc, 0, r, s0, threshold, out_region, out_sectors, counts)
        if s1 > 0:
            settle(acc, 1, r, s1, threshold, out_region, out_sectors, counts)
        if nn > 0:
            by_node[0, 0] += b00
            by_node[1, 0] += b10
        if nn > 1:
            by_node[0, 1] += b01
            by_node[1, 1] += b11
        return touched, far, outside

    @njit(cache=True, nogil=True)
    def moved(vpns, last_move, recent_moves, epoch, window, acc,
              rp):  # pragma: no cover - jitted
        """Pages ``vpns`` (distinct) have just moved: count the moves within ``window``
        epochs of the previous one (``recent_moves``, else restart at 1), stamp ``last_move``
        and clear the notification accumulators of their regions (clear-on-migrate).
        Returns False, having changed nothing, if a page is outside the tables."""
        n = min(last_move.shape[0], recent_moves.shape[0])
        for i in range(vpns.shape[0]):
            if vpns[i] < 0 or vpns[i] >= n:
                return False
        nr = acc.shape[1]
        last = -1
        for i in range(vpns.shape[0]):
            v = vpns[i]
            if epoch - last_move[v] <= window:
                recent_moves[v] += 1
            else:
                recent_moves[v] = 1
            last_move[v] = epoch
            r = v // rp
            if r != last and r < nr:   # pages come in runs: once per run of a region's pages
                for q in range(acc.shape[0]):
                    acc[q, r] = 0
                last = r
        return True

    @njit(cache=True, nogil=True)
    def may_move(vpns, node, flags, preferred, accessed_by, target, veto_pref, veto_access,
                 pinned, out):  # pragma: no cover - jitted
        """The manager's say over a move of pages ``vpns`` to node ``target``: writes to
        ``out``, in order, the allocated pages not already there, not ``pinned``, not
        preferred on node ``veto_pref`` (-1: none) and, with ``veto_access``, not mapped
        remotely by the target's processor; returns their count.  -1 (nothing written) if
        ``vpns`` is not strictly increasing or reaches outside the tables: the caller's
        general path handles duplicates and strays."""
        n = min(node.shape[0], flags.shape[0], preferred.shape[0], accessed_by.shape[0])
        prev = -1
        for i in range(vpns.shape[0]):
            v = vpns[i]
            if v <= prev or v >= n:
                return -1
            prev = v
        c = 0
        for i in range(vpns.shape[0]):
            v = vpns[i]
            nd = node[v]
            if nd < 0 or nd == target or (flags[v] & pinned) != 0:
                continue
            if veto_pref >= 0 and preferred[v] == veto_pref:
                continue
            if veto_access and (accessed_by[v] >> target) & 1:
                continue
            out[c] = v
            c += 1
        return c

    _K.update(notify=notify, account=account, moved=moved, may_move=may_move)
    return _K


_NONE = np.zeros(0, np.int64)


def _outputs(vpns: np.ndarray, rp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Room for one notification per processor and region ``vpns`` (sorted) reach."""
    m = min(len(vpns), int(vpns[-1]) // rp - int(vpns[0]) // rp + 1) if len(vpns) else 0
    return np.empty((2, m), np.int64), np.empty((2, m), np.int64), np.zeros(2, np.int64)


def _records(out_region: np.ndarray, out_sectors: np.ndarray, counts: np.ndarray, rp: int,
             epoch: int, dtype: np.dtype) -> np.ndarray:
    """The notifications the kernels wrote: processor by processor, regions ascending."""
    c = counts.tolist()
    rec = np.zeros(sum(c), dtype)
    if len(rec):
        rec["epoch"] = epoch
        rec["processor"] = np.repeat(np.arange(2), c)
        hit = np.concatenate([out_region[p, : c[p]] for p in range(2)])
        rec["region"] = hit
        rec["vpn"] = hit * rp
        rec["npages"] = rp
        rec["sectors"] = np.concatenate([out_sectors[p, : c[p]] for p in range(2)])
    return rec


def notifications(acc: np.ndarray, vpns: np.ndarray, remote: Any, rp: int, threshold: int,
                  epoch: int, dtype: np.dtype) -> np.ndarray:
    """See :func:`ccadgpu.notify.raise_notifications` (which this implements); ``remote``:
    ``[2, n]``, or a pair of arrays of ``n`` (None or an empty one: no remote sectors)."""
    if acc.shape[0] != 2:
        raise ValueError(f"accumulators for 2 processors (cpu, device), got {acc.shape[0]}")
    vpns = np.asarray(vpns, np.int64)
    r0, r1 = (_NONE if r is None or not len(r) else np.asarray(r, np.int64) for r in remote)
    outs = _outputs(vpns, rp)
    kernels()["notify"](acc, vpns, r0, r1, rp, threshold, *outs)
    return _records(*outs, rp, epoch, dtype)


def note_moves(mgr: "MigrationManager", vpns: np.ndarray) -> None:
    """The manager's bookkeeping of pages that have just moved (distinct): ping-pong counts
    (``recent_moves``, ``last_move``) and clear-on-migrate of the notification accumulators;
    one pass over the pages."""
    v = np.asarray(vpns, np.int64)
    if not kernels()["moved"](v, mgr.last_move, mgr.recent_moves, mgr.ctx.epoch,
                              mgr.tunables.thrash_window_epochs, mgr._acc, mgr._rp):
        raise IndexError(f"moved pages outside the manager's {len(mgr.last_move)}")


def account_epoch(mgr: "MigrationManager", ep: "Epoch", node: np.ndarray,
                  res: "StepResult") -> np.ndarray:
    """Steps (2) and (3) of :meth:`MigrationManager.step` for ``ep``'s pages, seen on ``node``:
    ``res``'s access seconds and touched / remote bytes, the heat, recency and notification
    accumulators; returns the notifications raised."""
    from .notify import NOTIFICATION_DTYPE
    v = np.asarray(ep.vpns, np.int64)
    if len(v) and (int(v[-1]) >= len(mgr.heat_epoch) or int(v[0]) < 0):
        raise IndexError(f"epoch pages {int(v[0])}..{int(v[-1])} outside the manager's "
                         f"{len(mgr.heat_epoch)}")
    clock = mgr.clock
    by_node = np.zeros((2, clock._nnodes), np.int64)
    sectors = np.asarray(ep.sectors, np.int64)
    outs = _outputs(v, mgr._rp)
    touched, far, outside = kernels()["account"](
        v, sectors, node, _LOCAL, mgr.heat_val, mgr.heat_epoch, mgr.last_touch,
        decay_table(mgr.tunables.heat_halflife_epochs), mgr.ctx.epoch, by_node, mgr._acc,
        mgr._rp, mgr.tunables.access_counter_threshold, *outs)
    gone = ep.gone_sectors is not None and len(ep.gone_sectors)
    if outside or gone:     # rare: traffic the profile may not price, or freed pages
        res.access_s = clock.epoch_seconds(
            np.concatenate((sectors, ep.gone_sectors)) if gone else sectors,
            np.concatenate((node, ep.gone_node)) if gone else node, launch=ep.launch)
    else:
        res.access_s = clock.tally_seconds(by_node.astype(np.float64), launch=ep.launch)
    res.touched_bytes = int(touched) * 32
    res.remote_bytes = int(far) * 32
    if gone:
        gp = ep.gone_sectors.sum(axis=2)
        res.touched_bytes += int(gp.sum()) * 32
        res.remote_bytes += int((gp * (ep.gone_node[:, None] != _LOCAL[None, :])).sum()) * 32
    return _records(*outs, mgr._rp, mgr.ctx.epoch, NOTIFICATION_DTYPE)
