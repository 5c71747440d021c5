"""Fused per-page loops of the ``access_counter`` policy (Numba, compiled on first use and
cached on disk).

A decision must cost time in proportion to the pages notified, and on the stand-in's 2-core
machines it is memory traffic that sets that cost: each NumPy pass over a candidate list reads
and writes a temporary, and a decision made of twenty such passes moves far more bytes than the
per-page state it reads.  These loops read each page's state once and write only the pages
that pass.  :mod:`ccadgpu.policies.access_counter` documents the rules they implement; the loops
are deliberately plain so that they can be read against that description.
"""
from __future__ import annotations

import numpy as np

_K: dict = {}

PINNED = 1          # ccadgpu.pagetable.PINNED (checked in kernels())


def kernels() -> dict:
    """The compiled loops (built once per process)."""
    if _K:
        return _K
    from numba import njit

    from .. import pagetable as ptf
    assert ptf.PINNED == PINNED

    @njit(cache=True, nogil=True)
    def candidates(pages, proc, frm, to, node, last_move, preferred, flags, accessed_by,
                   touches, ready, moved, until, acc, acc_at, since, burst, epoch,
                   dtab, wtab, gain_dev, gain_cpu, fault_home, fault_away, fault_return,
                   break_even, price, payback, wait_on, cpu_last, gap, sweep, out_pages,
                   out_rate,
                   out_wait):  # pragma: no cover - jitted
        """Pages of ``pages`` (sorted) that pass every test of ``AccessCounter._evaluate``,
        written to ``out_pages`` / ``out_rate``, and those held back only to see the CPU's
        next run, written to ``out_wait``; returns both counts."""
        c = 0
        nwait = 0
        nd = dtab.shape[0]
        nw = wtab.shape[0]
        for k in range(pages.shape[0]):
            p = pages[k]
            if node[p] != frm or not ready[p, proc]:
                continue
            if last_move[p] != moved[p] or until[p] > epoch:
                continue
            age = epoch - acc_at[p]
            d = dtab[age if age < nd else nd - 1]
            dev = acc[p, 1] * d * gain_dev
            a_cpu = acc[p, 0] * d
            # what one CPU-touching epoch costs with the page on the device: its burst read
            # remotely, or (fault-return) the way home and what the device then loses
            home = np.inf
            if fault_return:
                away = burst[p, 1] * gain_dev
                if away > fault_away:
                    away = fault_away
                home = fault_home + away
            cpu = 0.0
            if a_cpu > 0.0:
                b = burst[p, 0]
                if b < 1.0:
                    b = 1.0
                per = gain_cpu
                if home / b < per:
                    per = home / b
                cpu = a_cpu * per
            value = dev - cpu if proc == 1 else cpu - dev
            w = epoch - since[p] + 1
            if w < 1:
                w = 1
            if w > nw - 1:
                w = nw - 1
            rate = value / wtab[w]
            if rate <= 0.0:
                continue
            if not (value >= break_even * price or (payback > 0.0 and rate * payback >= price)):
                continue
            if preferred[p] == frm or (flags[p] & PINNED) != 0 or ((accessed_by[p] >> to) & 1):
                continue
            if wait_on and touches[p, 0] == 0 and cpu_last < since[p] and \
                    min(sweep * gain_cpu, home) > rate * gap:
                out_wait[nwait] = p
                nwait += 1
                continue
            out_pages[c] = p
            out_rate[c] = rate
            c += 1
        return c, nwait

    @njit(cache=True, nogil=True)
    def observe(pages, by_proc, last_move, moved, acc, acc_at, since, touches, burst, total,
                peak, dtab, epoch, min_epochs, evidence):  # pragma: no cover - jitted
        """``AccessCounter.observe``'s per-page counts for the epoch's pages (sectors
        ``by_proc[k, processor]``): decayed sectors, touching epochs, running mean burst,
        sectors and largest burst since the page last moved (reset when it has moved since
        they were kept), the window's start; ``evidence[k, processor]``: touched in
        ``min_epochs`` epochs and ``min_epochs - 0.5`` times its largest burst."""
        nd = dtab.shape[0]
        for k in range(pages.shape[0]):
            p = pages[k]
            lm = last_move[p]
            stale = lm != moved[p]
            age = epoch - acc_at[p]
            d = dtab[age if age < nd else nd - 1]
            for q in range(2):
                b = by_proc[k, q]
                if stale:
                    a, t, tot, pk = 0.0, 0, 0.0, 0.0
                else:
                    a, t, tot, pk = acc[p, q] * d, touches[p, q], total[p, q], peak[p, q]
                acc[p, q] = a + b
                if b > 0:
                    t += 1
                    bu = burst[p, q]
                    burst[p, q] = 0.5 * (bu + b) if bu > 0 else b
                    if b > pk:
                        pk = b
                tot += b
                touches[p, q] = t
                total[p, q] = tot
                peak[p, q] = pk
                evidence[k, q] = t >= min_epochs and tot >= (min_epochs - 0.5) * pk
            if stale or since[p] < 0:
                since[p] = epoch
            acc_at[p] = epoch
            moved[p] = lm

    @njit(cache=True, nogil=True)
    def cold_pages(node, flags, preferred, heat_val, heat_epoch, last_touch, dtab, epoch,
                   lo, hi, bar, device, out_pages, out_heat, out_touch, c
                   ):  # pragma: no cover - jitted
        """Append to the outputs (from position ``c``) the unpinned pages of ``[lo, hi)`` on
        node ``device`` whose decayed heat (both processors) is below ``bar``; pages preferred
        on the device get a huge heat so that they sort last.  Returns the new count."""
        nd = dtab.shape[0]
        for p in range(lo, hi):
            if node[p] != device or (flags[p] & PINNED) != 0:
                continue
            age = epoch - heat_epoch[p]
            h = (heat_val[p, 0] + heat_val[p, 1]) * dtab[age if age < nd else nd - 1]
            if h >= bar:
                continue
            if preferred[p] == device:
                h += 1e30
            out_pages[c] = p
            out_heat[c] = h
            t = last_touch[p, 0]
            if last_touch[p, 1] > t:
                t = last_touch[p, 1]
            out_touch[c] = t
            c += 1
        return c

    @njit(cache=True, nogil=True)
    def min_heat(pages, heat_val, heat_epoch, dtab, epoch, proc):  # pragma: no cover
        """The smallest decayed heat of processor ``proc`` over ``pages``."""
        nd = dtab.shape[0]
        m = np.inf
        for k in range(pages.shape[0]):
            p = pages[k]
            age = epoch - heat_epoch[p]
            h = heat_val[p, proc] * dtab[age if age < nd else nd - 1]
            if h < m:
                m = h
        return m

    _K.update(candidates=candidates, observe=observe, cold_pages=cold_pages,
              min_heat=min_heat)
    return _K
