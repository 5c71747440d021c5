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
ONES = np.uint64(0x0101010101010101)     # a byte-wise test on eight int8 nodes at once
HIGHS = np.uint64(0x8080808080808080)


def node_words(node: np.ndarray) -> np.ndarray:
    """``node`` (int8) seen as 64-bit words, for ``cold_pages`` (empty where it cannot be)."""
    if node.dtype.itemsize == 1 and node.flags.c_contiguous and node.ctypes.data % 8 == 0:
        return node[: len(node) // 8 * 8].view(np.uint64)
    return np.zeros(0, np.uint64)


def kernels() -> dict:
    """The compiled loops (built once per process)."""
    if _K:
        return _K
    from numba import njit

    from .. import pagetable as ptf
    assert ptf.PINNED == PINNED

    @njit(cache=True, nogil=True, inline="always")
    def cpu_cohort(cohort, p):  # pragma: no cover - jitted
        """The pages expected to come home with page ``p`` when the CPU touches it on the
        device: those seen doing so last time (``cohort[p, 0]``), else, before the CPU has
        touched it there, those that went over with it (``cohort[p, 1]``)."""
        c = cohort[p, 0]
        return c if c > 0 else cohort[p, 1]

    @njit(cache=True, nogil=True, inline="always")
    def cpu_home(burst, cohort, p, gain_dev, home_move, away_move, fault,
                 away_faults):  # pragma: no cover - jitted
        """With fault-return, what a CPU touch of page ``p`` on the device costs: the way
        home (its move and its share of the CPU's fault, shared with ``cpu_cohort``
        pages) and what the device then loses: its next burst read remotely, or the move
        back (a fault's share too where ``away_faults``: without launch promotion, the
        device's touch faults it over), whichever is cheaper."""
        back = away_move
        if away_faults:
            back += fault / cohort[p, 1]
        away = burst[p, 1] * gain_dev
        if away > back:
            away = back
        return home_move + fault / cpu_cohort(cohort, p) + away

    @njit(cache=True, nogil=True, inline="always")
    def cpu_back(burst, cohort, p, gain_cpu, home_move, fault, fault_return,
                 sweep):  # pragma: no cover - jitted
        """What the CPU's next touch of page ``p`` costs with the page on the device: its
        burst (or a sweep) read remotely, or, with ``fault_return``, the way home if cheaper
        (its move and its share of the CPU's fault)."""
        b = burst[p, 0]
        remote = (b if b > 0.0 else sweep) * gain_cpu
        if fault_return:
            home = home_move + fault / cpu_cohort(cohort, p)
            if home < remote:
                remote = home
        return remote

    @njit(cache=True, nogil=True, inline="always")
    def dev_ahead(vol, vsince, burst, p):  # pragma: no cover - jitted
        """The device sectors page ``p`` can expect before the CPU next touches it: what is
        left of its usual run's sectors between CPU touches (``observe``), at least one
        burst."""
        a = vol[p] - vsince[p]
        b = burst[p, 1]
        return a if a > b else b

    @njit(cache=True, nogil=True)
    def candidates(starts, span, proc, frm, to, node, last_move, preferred, flags,
                   accessed_by, touches, ready, moved, until, acc, acc_at, since, burst, epoch,
                   dtab, wtab, gain_dev, gain_cpu, cohort, home_move, away_move, fault,
                   away_faults, fault_return,
                   break_even, price, payback, wait_on, cpu_last, gap, sweep, at_launch,
                   total, peak, min_epochs, vol, vsince, out_pages, out_rate,
                   out_wait):  # pragma: no cover - jitted
        """Pages ``starts[j] + o`` (``o < span``; ascending and disjoint) that pass every test
        of ``AccessCounter._evaluate``, written to ``out_pages`` / ``out_rate``, and those
        held back only to see the CPU's next run, written to ``out_wait``; returns both
        counts.  Whole regions come as their first pages and ``span`` (no page list to build
        and read back), a page list as itself and ``span = 1``.  ``at_launch``: the pages
        are a launch's footprint, judged before its accesses, and only pages the launch makes
        ready are judged (those ready before were judged at their epoch's end): the launch
        counts as one more touching epoch with the page's usual burst, in the reuse test
        (``total`` / ``peak``: sectors and largest burst since the page's last move) and in
        the device's rent for the payback rate (not in the rent paid).  A page the CPU comes
        back to between the device's runs (``vol``, ``vsince``: see ``observe``; unless the
        CPU is overdue by a whole run), where the CPU's touch takes it home (fault-return),
        must also pay for its move and the way home with the device's sectors expected before
        that touch (``dev_ahead``)."""
        c = 0
        nwait = 0
        nd = dtab.shape[0]
        nw = wtab.shape[0]
        for j in range(starts.shape[0]):
            for p in range(starts[j], starts[j] + span):
                if node[p] != frm or ready[p, proc] == at_launch:
                    continue
                if at_launch:
                    b = burst[p, proc]
                    pk = peak[p, proc]
                    if b > pk:
                        pk = b
                    if b <= 0.0 or touches[p, proc] + 1 < min_epochs or \
                            total[p, proc] + b < (min_epochs - 0.5) * pk:
                        continue
                if last_move[p] != moved[p] or until[p] > epoch:
                    continue
                age = epoch - acc_at[p]
                d = dtab[age if age < nd else nd - 1]
                dev = acc[p, 1] * d * gain_dev
                a_cpu = acc[p, 0] * d
                # what one CPU-touching epoch costs with the page on the device: its burst read
                # remotely, or (fault-return) the way home and what the device then loses;
                # worked out only where a rule needs it (most pages: no CPU use, no wait), so
                # that the bursts are not read for nothing
                home = np.inf
                homed = False
                cpu = 0.0
                if a_cpu > 0.0:
                    if fault_return:
                        home = cpu_home(burst, cohort, p, gain_dev, home_move, away_move, fault,
                                        away_faults)
                        homed = True
                    b = burst[p, 0]
                    if b < 1.0:
                        b = 1.0
                    per = gain_cpu
                    if home / b < per:
                        per = home / b
                    cpu = a_cpu * per
                value = dev - cpu if proc == 1 else cpu - dev
                paid = value             # the rent-paid rule counts no predicted rent
                if at_launch and proc == 1:
                    value += burst[p, 1] * gain_dev
                w = epoch - since[p] + 1
                if w < 1:
                    w = 1
                if w > nw - 1:
                    w = nw - 1
                rate = value / wtab[w]
                if rate <= 0.0:
                    continue
                if not (paid >= break_even * price or
                        (payback > 0.0 and rate * payback >= price)):
                    continue
                if proc == 1 and fault_return and 0.0 < vol[p] and vsince[p] < 2.0 * vol[p]:
                    # the CPU comes back between the device's runs (and is not overdue by a
                    # whole run); where its touch takes the page home, the move must pay
                    # before it, with the sectors left (at a launch: this one's included)
                    b0 = burst[p, 0]
                    back = home_move + fault / cpu_cohort(cohort, p)
                    if back < (b0 if b0 > 0.0 else sweep) * gain_cpu and \
                            dev_ahead(vol, vsince, burst, p) * gain_dev <= price + back:
                        continue
                if preferred[p] == frm or (flags[p] & PINNED) != 0 or \
                        ((accessed_by[p] >> to) & 1):
                    continue
                if wait_on and touches[p, 0] == 0 and cpu_last < since[p]:
                    if fault_return and not homed:
                        home = cpu_home(burst, cohort, p, gain_dev, home_move, away_move, fault,
                                        away_faults)
                    if min(sweep * gain_cpu, home) > rate * gap:
                        out_wait[nwait] = p
                        nwait += 1
                        continue
                out_pages[c] = p
                out_rate[c] = rate
                c += 1
        return c, nwait

    @njit(cache=True, nogil=True, inline="always")
    def began_away(p, node, last_move, epoch, proc):  # pragma: no cover - jitted
        """Whether page ``p`` began the epoch away from processor ``proc``'s node: it is there
        now only if it moved at this epoch's start (``last_move``)."""
        return node[p] >= 0 and (node[p] == proc) == (last_move[p] == epoch)

    @njit(cache=True, nogil=True)
    def observe(pages, by_proc, last_move, moved, acc, acc_at, since, touches, burst, total,
                peak, dtab, epoch, min_epochs, rp, node, proc, cohort, vsince, vol,
                evidence):  # pragma: no cover - jitted
        """``AccessCounter.observe``'s per-page counts for the epoch's pages (sectors
        ``by_proc[k, processor]``): decayed sectors, touching epochs, running mean burst,
        sectors and largest burst since the page last moved (reset when it has moved since
        they were kept), the window's start; ``evidence[k, processor]``: touched in
        ``min_epochs`` epochs and ``min_epochs - 0.5`` times its largest burst;
        ``cohort[p, proc]``, for the pages that began the epoch away from the node of its
        processor ``proc`` (node ``proc``): how many such pages of its region of ``rp`` pages
        it touched, those that fault together (a page whose ``last_move`` is this epoch moved
        at its start, from the other node; the pages come sorted: a region's are one run);
        ``vsince[p]``: the device's sectors since the CPU last touched ``p``, and ``vol[p]``
        the running mean of that count where a CPU touch ended it, the latest run weighing a
        quarter (wherever the page was: a pattern of use, not of placement; an average over
        several runs, since where their lengths vary the next run is as likely short as
        long)."""
        n = pages.shape[0]
        k = 0
        while k < n:
            r = pages[k] // rp
            j = k + 1
            while j < n and pages[j] // rp == r:
                j += 1
            away = 0
            for q in range(k, j):
                away += began_away(pages[q], node, last_move, epoch, proc)
            if away:
                for q in range(k, j):
                    if began_away(pages[q], node, last_move, epoch, proc):
                        cohort[pages[q], proc] = away
            k = j
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
            vsince[p] += by_proc[k, 1]
            if by_proc[k, 0] > 0:
                ds = vsince[p]
                if ds > 0:
                    r0 = vol[p]
                    vol[p] = r0 + 0.25 * (ds - r0) if r0 > 0 else ds
                vsince[p] = 0.0
            if stale or since[p] < 0:
                since[p] = epoch
            acc_at[p] = epoch
            moved[p] = lm

    @njit(cache=True, nogil=True)
    def cold_pages(node, words, flags, preferred, heat_val, heat_epoch, last_touch, dtab,
                   epoch, lo, hi, bar, device, out_pages, out_heat, out_touch, c
                   ):  # pragma: no cover - jitted
        """Append to the outputs (from position ``c``) the unpinned pages of ``[lo, hi)`` on
        node ``device`` whose decayed heat (both processors) is below ``bar``; pages preferred
        on the device get a huge heat so that they sort last.  Returns the new count and the
        page it stopped at: ``hi``, or the first that did not fit (the caller grows the
        outputs and goes on from there: usually few pages qualify, and room for the whole
        window is megabytes to map and unmap).  ``words``: ``node`` seen as 64-bit words (or
        empty), to pass over eight pages at a time where none is on the device: the window
        is mostly host pages in a large space."""
        nd = dtab.shape[0]
        room = out_pages.shape[0]
        nwords = words.shape[0] if 0 <= device < 128 else 0
        pat = np.uint64(device) * ONES
        p = lo
        while p < hi:
            if (p & 7) == 0 and p + 8 <= hi and (p >> 3) < nwords:
                x = words[p >> 3] ^ pat          # a zero byte: a page on the device
                if ((x - ONES) & ~x & HIGHS) == 0:
                    p += 8
                    continue
            q = p
            p += 1
            if node[q] != device or (flags[q] & PINNED) != 0:
                continue
            age = epoch - heat_epoch[q]
            h = (heat_val[q, 0] + heat_val[q, 1]) * dtab[age if age < nd else nd - 1]
            if h >= bar:
                continue
            if preferred[q] == device:
                h += 1e30
            if c == room:
                return c, q
            out_pages[c] = q
            out_heat[c] = h
            t = last_touch[q, 0]
            if last_touch[q, 1] > t:
                t = last_touch[q, 1]
            out_touch[c] = t
            c += 1
        return c, hi

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

    @njit(cache=True, nogil=True)
    def launch_scan(pages, first, sectors, burst, gain_dev, price, fault, cohort, vol, vsince,
                    gain_cpu, home_move, fault_return, sweep, node, preferred, flags,
                    accessed_by, ready, launch, host, device, out_pull, out_gain,
                    out_cand):  # pragma: no cover - jitted
        """``AccessCounter.fault``'s one pass over a device launch's footprint (``sectors``
        its ``[k, processor, rw]``; ``first`` >= 0: the pages are the run ``first, first + 1,
        ...``, not read).  Of the pages on ``host`` that the device touches: those whose
        device sectors expected before the CPU's next touch (``dev_ahead``) save more than
        ``price`` and what that touch then costs (``cpu_back``; for a page the CPU has not
        come back to, a fault's share instead, shared with ``cohort[p, 1]`` pages, see
        ``observe``), not preferred on the host, not pinned, not mapped remotely by the
        device, go to ``out_pull`` (that gain to ``out_gain``); with ``launch``, the others
        that the device touched before and that are not ready yet go to ``out_cand`` (the
        launch rules judge them).
        Writes only where the outputs have room, and returns both counts either way: a first
        call with empty outputs sizes the second, and most launches find nothing, so they
        allocate nothing."""
        fill = out_pull.shape[0] > 0 or out_cand.shape[0] > 0
        c = 0
        n = 0
        for k in range(pages.shape[0]):
            p = first + k if first >= 0 else pages[k]
            if node[p] != host:          # the cheapest test first: a byte per page
                continue
            b = burst[p, 1]
            if b <= 0.0 or sectors[k, 1, 0] + sectors[k, 1, 1] <= 0:
                continue
            g = gain_dev * dev_ahead(vol, vsince, burst, p)
            # beyond the move: where the CPU comes back between the device's runs, what its
            # next touch then costs; else a fault's share (the device's fault over without
            # launch promotion, else a margin for a way home not seen yet)
            if vol[p] > 0.0:
                bar = price + cpu_back(burst, cohort, p, gain_cpu, home_move, fault,
                                       fault_return, sweep)
                if not launch:
                    bar += fault / cohort[p, 1]
            else:
                bar = price + fault / cohort[p, 1]
            if g > bar:
                if preferred[p] == host or (flags[p] & PINNED) != 0 or \
                        ((accessed_by[p] >> device) & 1):
                    continue
                if fill:
                    out_pull[c] = p
                    out_gain[c] = g
                c += 1
            elif launch and not ready[p, 1]:
                if fill:
                    out_cand[n] = p
                n += 1
        return c, n

    @njit(cache=True, nogil=True)
    def any_held(pages, first, until, recent_moves, epoch,
                 thrash_moves):  # pragma: no cover - jitted
        """Whether ``AccessCounter._filter_thrash`` has anything to look at among ``pages``
        (``first`` >= 0: the run ``first, first + 1, ...``, not read): a page backing off or
        with ``thrash_moves`` recent moves (or one outside the tables: the NumPy path then
        raises as it always did).  Usually none, and one read of two tables says so."""
        n = min(until.shape[0], recent_moves.shape[0])
        for k in range(pages.shape[0]):
            p = first + k if first >= 0 else pages[k]
            if p < 0 or p >= n or until[p] > epoch or recent_moves[p] >= thrash_moves:
                return True
        return False

    @njit(cache=True, nogil=True)
    def select_top(pages, score, thr, k, out):  # pragma: no cover - jitted
        """``out``: the pages scoring above ``thr`` and the first of those scoring ``thr``,
        ``k`` in all, in the order of ``pages`` (``AccessCounter._top`` with its threshold)."""
        above = 0
        for i in range(score.shape[0]):
            if score[i] > thr:
                above += 1
        ties = k - above
        c = 0
        for i in range(score.shape[0]):
            s = score[i]
            if s > thr:
                out[c] = pages[i]
                c += 1
            elif s == thr and ties > 0:
                out[c] = pages[i]
                c += 1
                ties -= 1
        return c

    @njit(cache=True, nogil=True)
    def notified(processor, vpn, npages, proc, rp, out):  # pragma: no cover - jitted
        """The first pages of the notifications of processor ``proc`` (the fields of the
        notification records), in order, written to ``out``; returns their count and whether
        they are the usual whole regions (``npages == rp``) in ascending order, disjoint."""
        c = 0
        regular = True
        prev = 0
        for i in range(processor.shape[0]):
            if processor[i] != proc:
                continue
            v = vpn[i]
            if npages[i] != rp or (c > 0 and v - prev < rp):
                regular = False
            out[c] = v
            prev = v
            c += 1
        return c, regular

    _K.update(candidates=candidates, observe=observe, cold_pages=cold_pages,
              min_heat=min_heat, launch_scan=launch_scan, any_held=any_held,
              select_top=select_top, notified=notified)
    return _K
