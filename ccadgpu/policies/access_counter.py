"""``access_counter``: hardware access counters drive migration (the thread's central idea).

Notifications say *where* the other node's processor is pounding on memory; per-page counters
say *how much*.  Whether a page should move is a rent-or-buy question priced with the machine
profile: every remote access pays rent (the extra time of a remote over a local access), a
migration buys the page (link time plus the per-page cost).  The policy estimates, per page and
from its counters since it last moved, the **net rent** the move would have saved: the device's
remote sectors times the device's gain per sector, minus what the CPU's own accesses would then
cost (see *CPU touches*).  Counts decay with ``owed_halflife_epochs``; the **rate** is that net
rent over the decayed length of the window since the page's first touch (a page touched twice
in nine epochs has about a quarter of the rate of one touched twice in two).

**Promotion** (after each epoch, pages of the regions the device raised notifications for).  A
page moves when it has shown reuse (one burst says nothing about the next: a page streamed once
must never move): it was touched in at least ``min_epochs`` epochs since it last moved, and
in at least ``min_epochs - 0.5`` times its largest burst's sectors (a page that two chunks of a
stream share, a few sectors in one epoch and the rest in the next, has had no byte touched
twice).  One epoch suffices where the processor's working set in the page's allocation has just
moved on from data it was reusing (the epoch left at least half of the pages its previous epoch
on the allocation touched, and at least half of those had shown reuse): the new pages are the
new working set of a phase change.  No per-page history tells, after one epoch, a stream with
reuse from a stream without it or from a page the CPU takes next, so the first working set of
an allocation waits for its second use; but not for the end of it (*promotion at launch*,
below).  Then either

* **payback** (the fast rule): its rate would pay for the move within ``payback_epochs``
  epochs.  Such a page moves as soon as its reuse is seen, since every epoch of waiting costs
  rent the move would have saved; a page that cannot pay back within the horizon does not move
  on this rule however long it has been used: the only evidence of its future is its past rate,
  and the further ahead a prediction reaches the likelier the use has ended by then.  On PCIe
  (``h100-pcie``) a full-page sweep of remote memory costs ~30% of a move, so a page swept every
  epoch pays back in ~4 epochs and moves at the end of its second; over NVLink-C2C (``gh200``)
  a sweep is ~7% of a move (the per-page cost dominates), so only intensely used pages move
  early; or
* **rent paid** (the slow rule, ski rental): the net rent it has already paid reaches
  ``break_even`` times the price of the move.  This catches long-lived pages used too lightly
  for the fast rule.  With ``break_even = b`` a page whose use stops right after it moved cost
  at most ``(1 + b) / b`` of leaving it where it was (1.5 for the default 2; with 1, the
  classic 2-competitive rule, late moves of pages used ~14 epochs on gh200 cost 1.75x);

and the CPU has shown its hand.  A page the CPU has not touched may still be one it touches
every time it runs (a pipeline's output).  Unless the CPU ran since the page's first touch and
left it alone, or has stopped running (overdue by twice its usual gap between runs), the policy
waits for the CPU's next run wherever a wrong guess (one CPU touch of the page on the device)
would cost more than the rent that waiting costs; the CPU's usual gap, before it has run twice,
is taken to be the time since it ran.  Pages held back only for that are judged again right
after the CPU's next run, without waiting for another notification.  Demotions (CPU
notifications) use the same rules with ``hysteresis`` times the price.

**Promotion at launch** (``launch_promote``, on by default).  A launch declares what it
touches, so its footprint is known before its kernel runs (a dense operand's extent; for an
indexed one, the pages its index array, an input, points at), and a device launch over host pages
that the device used before is itself the evidence of reuse: the pages of the footprint that
the launch makes ready (counted as one more touching epoch; pages ready before were judged at
their epoch's end) and that pass the rules above move when the launch starts, and the launch
reads them locally (cause ``access_counter``, priced as migrations: no fault is taken, as
when a runtime prefetches a kernel's operands).  Only the footprint is known then, not the
launch's sectors: the page's usual burst stands for the launch's, in the reuse test and in the
payback rate (what the launch would pay remotely joins what the page has paid, over a window
that includes the launch: the rate the epoch's end would find if the burst repeats); the
rent-paid rule counts only rent paid, so its bound holds for moves at a launch too.  A stream
without reuse never has a page in a later launch's footprint (a page two chunks share: its
one-sector burst cannot pay), and a page the CPU touched in between is judged with that touch
(ping-pong stays where it is).  On PCIe this saves the
second epoch's remote sweep of a working set, ~30% of a move per page; over NVLink-C2C few
pages pay back that fast.

**Moves when an epoch starts**, where a move pays for itself within that epoch:

* **CPU touches** (``cpu_fault_return``): a device page the CPU touches is read remotely (the
  CCAD model) unless that would cost more than bringing it home, in which case the page is left
  unmapped on the CPU side and the touch faults it home first (cause ``fault``; the fault is
  priced: the profile's ``fault_us`` per region; CPU work declares nothing ahead).  Judged per
  page: the CPU's expected burst (its previous one on this page, else one full sweep) read
  remotely, against the way home (move and fault share) plus what the device then loses (its
  next burst read remotely, or the move back, whichever is cheaper).  On ``h100-pcie`` that is
  every CPU touch of a device page (0.5 GB/s over BAR1: a sweep costs ~30 moves); on ``gh200``
  none (the CPU reads HBM at 297 GB/s).  In a space with ``cpu_access="migrate_on_cpu_fault"``
  (a cuda space on x86 + PCIe) there is no remote read to weigh: every CPU touch of a device
  page costs its way home, and the rules price it so.  The promotion rules count the CPU's
  accesses at the same cost, so a page the CPU also uses is judged on the net.
* **device bursts**: a host page whose device sectors until the CPU is expected back (what is
  left of its usual run's sectors between the CPU's touches, a running mean per page; at
  least one burst, the only measure for a page the CPU leaves alone) save more than a move
  and a margin moves when the next launch over it starts (cause ``access_counter``, no fault:
  the footprint is known; with ``launch_promote=False`` the touch faults it over, cause
  ``fault``), instead of being read remotely.  The margin, for a page the CPU comes back to,
  is what the CPU's next touch then costs (its way home, or its remote read); for the
  others, a fault's share: the way home of such a page, when the CPU takes it, is a fault
  (without it, ``krylov`` on ``gh200`` under ``migrate_on_cpu_fault`` pulled pages whose burst
  paid for the move but not for the trip back, and fell behind ``static``).  Where the CPU's
  touch takes pages home (fault-return), the promotion rules above also ask a page the CPU
  comes back to to pay its move and its way home with the sectors expected before the CPU is
  due (not once the CPU is overdue by a whole run).
  Here and in the thrash exemption below a page's share of a fault is the fault over the
  pages of its region that were away from the processor with it the last time the processor
  touched it away, those that would fault with it (the manager prices one fault per faulting
  region; the way home is the CPU's fault, the way over the device's): a lone page of a
  small array pays a whole fault, as a SciPy solver's staging vector did
  (``examples/scipy_solver.py`` on ``h100-pcie``: it went over and back on every iteration,
  priced at a 32nd of each fault).  The CPU-side rules price a CPU touch's way home with the
  CPU's share the same way (three device pages among 29 host pages that the CPU sweeps share
  a third of each fault, not a 32nd).

Real systems fight three failure modes, and so does this policy:

* **ping-pong** (thrashing between CPU and device): a page that has already moved
  ``thrash_moves`` times within the manager's thrash window is left where it is, mapped
  remotely, for ``backoff_epochs`` epochs (doubling each time it is caught again), whatever
  moved it (counters or faults), unless the device's use of it until the CPU is expected
  back (the sectors left of its usual run between the CPU's touches) saves more than its way
  over and back, its fault shares included (a CG search direction the device
  reads many times per product and the CPU updates in between, or a page the device reads
  for eight launches between the CPU's visits: ping-pong that pays is not thrashing);
  demotions need ``hysteresis`` times more net rent than promotions;
* **migration storms**: promotions to the device are limited to ``rate_limit_mbps`` MB/s per
  1-second window of modeled time (Linux's ``numa_balancing_promote_rate_limit_MBps``);
* **oversubscription**: when more pages qualify than the device has free frames, the best by
  rate are kept and the policy evicts device pages clearly colder than them (decayed heat below
  the coldest incoming page's over ``hysteresis``), coldest first, found by a clock hand that
  examines ``max(4096, 8 * need)`` pages of the virtual range per request: the work grows with
  what is promoted, not with the size of the device or the space.

**Cost.**  A decision reads the state of the pages of notified regions (and of the eviction
window) once, in fused loops (:mod:`ccadgpu.policies._fused`, Numba); selecting the best ``k``
candidates is a partition, not a sort; nothing is O(pages in the space).
``benchmarks/bench_policies.py`` measures it per 100k notified pages.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runs import group_counts
from . import _fused
from .base import (CPU, DEV, DEVICE, HOST, Move, Policy, RateLimit, as_index, coldest,
                   decay, decay_table)

if TYPE_CHECKING:
    from ..manager import Epoch, PolicyContext

SECTOR = 32
#: slots of the per-allocation table of the phase-change rule (see ``AccessCounter._learn``)
ALLOC_SLOTS = 4096

_WINDOW: dict[float, np.ndarray] = {}
_NO_VALUES = np.zeros(0)


def _run_start(i: "slice | np.ndarray") -> int:
    """The first page of a run of pages that :func:`as_index` made a slice (the fused loops
    then need not read the page list), else -1."""
    return i.start if isinstance(i, slice) else -1


def _not_duplicated(ctx: "PolicyContext", pages: np.ndarray, score: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``pages`` (and their scores) less those with a read-mostly copy on the device, which
    the device reads locally already: no counter notifies them, but a launch's footprint
    holds them."""
    if len(pages) == 0:
        return pages, score
    local = ctx.duplicated(pages)
    return (pages[~local], score[~local]) if local.any() else (pages, score)


def decayed_window_table(halflife: float) -> np.ndarray:
    """Entry ``w`` (1..4096): the decayed length of a window of ``w`` epochs,
    ``sum_{k<w} 0.5**(k/halflife)`` (the weight a decayed count gives a constant rate of one
    per epoch over it); longer windows use the last entry."""
    t = _WINDOW.get(halflife)
    if t is None:
        t = np.concatenate(([0.0], np.cumsum(decay_table(halflife))))
        _WINDOW[halflife] = t
    return t


def decayed_window(length: np.ndarray, halflife: float) -> np.ndarray:
    """:func:`decayed_window_table` for an array of window lengths."""
    t = decayed_window_table(halflife)
    return t[np.clip(length, 1, len(t) - 1)]


class AccessCounter(Policy):
    """Counter-driven migration, priced with the profile: payback and rent-paid rules, CPU
    fault-return where remote CPU access costs more than a round trip, hysteresis, thrash
    back-off, a promotion rate limit and bounded coldest-first eviction (see the module docs)."""
    name = "access_counter"

    def __init__(self, payback_epochs: float = 8.0, break_even: float = 2.0,
                 hysteresis: float = 2.0, thrash_moves: int = 2, backoff_epochs: int = 16,
                 rate_limit_mbps: float = 65536.0, owed_halflife_epochs: float = 64.0,
                 min_epochs: int = 2, demote: bool = True, cpu_fault_return: bool = True,
                 launch_promote: bool = True) -> None:
        if break_even <= 0 or hysteresis < 1.0 or owed_halflife_epochs <= 0:
            raise ValueError("break_even and owed_halflife_epochs must be > 0, hysteresis >= 1")
        if payback_epochs < 0:
            raise ValueError(f"payback_epochs must be >= 0 (0: off), got {payback_epochs!r}")
        if thrash_moves < 1 or backoff_epochs < 0:
            raise ValueError("thrash_moves must be >= 1 and backoff_epochs >= 0")
        if rate_limit_mbps <= 0:
            raise ValueError(f"rate_limit_mbps must be > 0, got {rate_limit_mbps!r}")
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be >= 1, got {min_epochs!r}")
        self.payback_epochs = float(payback_epochs)
        self.break_even = float(break_even)
        self.hysteresis = float(hysteresis)
        self.thrash_moves = int(thrash_moves)
        self.backoff_epochs = int(backoff_epochs)
        self.rate_limit_mbps = float(rate_limit_mbps)
        self.owed_halflife_epochs = float(owed_halflife_epochs)
        self.min_epochs = int(min_epochs)
        self.demote = bool(demote)
        self.cpu_fault_return = bool(cpu_fault_return)
        self.launch_promote = bool(launch_promote)

    # -- state ---------------------------------------------------------------------------------
    def setup(self, ctx: "PolicyContext") -> None:
        p = ctx.profile
        bw = p.bandwidth
        # seconds per sector the device saves when a page moves host -> device, and the CPU
        # saves when it moves device -> host (the CPU's loss while the page is on the device)
        self._gain = np.array([SECTOR * (1 / bw[CPU, DEVICE] - 1 / bw[CPU, HOST]),
                               SECTOR * (1 / bw[DEV, HOST] - 1 / bw[DEV, DEVICE])])
        self._price = np.array([ctx.page_size / p.link[DEVICE, HOST] + p.per_page,   # to host
                                ctx.page_size / p.link[HOST, DEVICE] + p.per_page])  # to device
        # what a CPU touch of a device page can cost: read remotely (coherent), or only the way
        # home when the space faults such pages back (migrate_on_cpu_fault), whatever we say
        forced = ctx.tunables.cpu_access == "migrate_on_cpu_fault"
        self._cpu_remote_gain = np.inf if forced else self._gain[CPU]
        self._cpu_returns = self.cpu_fault_return or forced
        self._sweep = ctx.page_size / SECTOR        # sectors of one full pass over a page
        self._acc = np.zeros((0, 2))        # decayed sectors per page and processor since move
        self._acc_at = np.zeros(0, np.int64)
        self._since = np.zeros(0, np.int64)      # first touch since the last move (-1: none)
        self._touches = np.zeros((0, 2), np.int32)   # epochs touching the page since its move
        self._total = np.zeros((0, 2))           # sectors since its move (not decayed)
        self._peak = np.zeros((0, 2))            # most sectors in one epoch since its move
        self._fast = np.zeros((0, 2), bool)      # one epoch of use suffices (see _learn)
        self._ready = np.zeros((0, 2), bool)     # has shown reuse enough to move (observe)
        self._seen = np.zeros((0, 2), np.int64)  # last epoch each processor touched it
        # per allocation (slot: id modulo ALLOC_SLOTS, tagged) and processor: its last epoch
        # on it, the pages it touched then and how many of those had shown reuse
        self._tag = np.full(ALLOC_SLOTS, -1, np.int64)
        self._prev_e = np.full((ALLOC_SLOTS, 2), -1, np.int64)
        self._prev_n = np.zeros((ALLOC_SLOTS, 2), np.int64)
        self._prev_r = np.zeros((ALLOC_SLOTS, 2), np.int64)
        self._burst = np.zeros((0, 2))           # sectors per touching epoch (running mean)
        # per processor: the pages of its region that were away from the processor with it
        # when it last touched the page away, those that would fault with it (the CPU's: 0
        # until seen, see _cpu_cohort)
        self._cohort = np.ones((0, 2), np.int32)
        # the device's sectors since the CPU last touched the page, and their running mean
        # where a CPU touch ended them: the device's use between the CPU's visits
        self._vsince = np.zeros(0)
        self._vol = np.zeros(0)
        self._until = np.zeros(0, np.int64)      # back-off: no move before this epoch
        self._caught = np.zeros(0, np.int16)     # times caught thrashing (doubles the back-off)
        self._moved = np.zeros(0, np.int64)      # ctx.last_move seen, to restart the count
        self._rate = RateLimit(self.rate_limit_mbps)
        self._hand = 0                           # eviction clock hand (a vpn)
        self._cpu_last = -1                      # last epoch the CPU touched managed pages
        self._cpu_gap = -1.0                     # epochs between its runs (running mean)
        self._pending = np.zeros(0, np.int64)    # held back to see the CPU's next run
        self._grow(ctx.npages)

    def _grow(self, n: int) -> None:
        if n <= len(self._until):
            return

        def ext(a: np.ndarray, fill: int = 0) -> np.ndarray:
            out = (np.zeros if fill == 0 else lambda sh, dt: np.full(sh, fill, dt))(
                (n,) + a.shape[1:], a.dtype)
            out[: len(a)] = a
            return out
        self._acc, self._acc_at = ext(self._acc), ext(self._acc_at)
        self._since, self._touches = ext(self._since, -1), ext(self._touches)
        self._total, self._peak, self._fast = ext(self._total), ext(self._peak), ext(self._fast)
        self._ready = ext(self._ready)
        self._seen = ext(self._seen, -2)
        self._burst, self._until = ext(self._burst), ext(self._until)
        old = len(self._cohort)
        self._cohort = ext(self._cohort, 1)
        self._cohort[old:, CPU] = 0
        self._vsince, self._vol = ext(self._vsince), ext(self._vol)
        self._caught, self._moved = ext(self._caught), ext(self._moved, -(1 << 40))

    def forget(self, lo: int, hi: int) -> None:
        self._pending = self._pending[(self._pending < lo) | (self._pending >= hi)]
        hi = min(hi, len(self._until))
        if lo < hi:
            self._acc[lo:hi] = 0.0
            self._since[lo:hi] = -1
            self._touches[lo:hi] = 0
            self._total[lo:hi] = 0.0
            self._peak[lo:hi] = 0.0
            self._fast[lo:hi] = False
            self._ready[lo:hi] = False
            self._seen[lo:hi] = -2
            self._burst[lo:hi] = 0.0
            self._cohort[lo:hi, DEV] = 1
            self._cohort[lo:hi, CPU] = 0
            self._vsince[lo:hi] = 0.0
            self._vol[lo:hi] = 0.0
            self._until[lo:hi] = 0
            self._caught[lo:hi] = 0

    def observe(self, ctx: "PolicyContext", ep: "Epoch") -> None:
        self._grow(ctx.npages)
        v = ep.vpns
        if len(v) == 0:
            return
        if ep.processor == CPU:
            if self._cpu_last >= 0:
                g = float(ctx.epoch - self._cpu_last)
                self._cpu_gap = g if self._cpu_gap < 0 else 0.5 * (self._cpu_gap + g)
            self._cpu_last = ctx.epoch
        limit = min(len(ctx.last_move), len(self._until), len(ctx.node))
        if v[0] < 0 or v[-1] >= limit:      # the fused loop does not check bounds
            raise IndexError(f"epoch pages outside the {limit} pages the policy tracks")
        bp = ep.by_proc
        evidence = np.empty(bp.shape, bool)
        _fused.kernels()["observe"](
            v, bp, ctx.last_move, self._moved, self._acc, self._acc_at, self._since,
            self._touches, self._burst, self._total, self._peak,
            decay_table(self.owed_halflife_epochs), ctx.epoch, self.min_epochs,
            ctx.pages_per_region, ctx.node, ep.processor, self._cohort, self._vsince, self._vol,
            evidence)
        i = as_index(v)
        self._learn(i, ep, bp > 0, evidence, ctx.epoch)
        # ready to move: the evidence, or one touching epoch of a page of a new working set
        self._ready[i] = evidence | (self._fast[i] & (self._touches[i] >= 1))

    def _learn(self, i: "slice | np.ndarray", ep: "Epoch", hit: np.ndarray,
               reused: np.ndarray, epoch: int) -> None:
        """Has a processor's working set in an allocation just moved on, from data it was
        reusing?  Yes when this epoch left at least half of the pages of the allocation that
        the processor's previous epoch on it touched, and at least half of those had shown
        reuse (``reused``: ``min_epochs`` touching epochs and ``min_epochs - 0.5`` times the
        largest burst's sectors, so that a page two chunks of a stream share is no evidence).
        Then the pages it touches now are the new working set and need only one epoch of use
        (:meth:`_evaluate`): a phase change is followed after one epoch, not two.

        The per-allocation state lives in a direct-mapped table of :data:`ALLOC_SLOTS` slots
        tagged with the allocation id (ids only grow, so a table indexed by id would too); an
        allocation that lands on a slot another one holds starts again from nothing, which
        only means waiting for the usual two epochs."""
        ids = ep.alloc_ids
        if ids is None or len(ids) != len(ep.vpns) or len(ids) == 0:
            return                           # epochs built by hand: no allocation known
        ids = np.asarray(ids, np.int64)
        mine = ids >= 0                      # -1: no allocation, -2: several (a host epoch)
        if not mine.any():
            return
        # an allocation is one contiguous range of pages, and the pages come sorted: runs
        start = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        run_id = ids[start]
        run_len = np.diff(np.append(start, len(ids)))
        ok_run = run_id >= 0
        slot_r = np.where(ok_run, run_id, 0) % ALLOC_SLOTS
        claim = ok_run & (self._tag[slot_r] != run_id)
        if claim.any():                      # a new allocation takes the slot over
            c = slot_r[claim]
            self._tag[c] = run_id[claim]
            self._prev_e[c], self._prev_n[c], self._prev_r[c] = -1, 0, 0
        slot = np.repeat(slot_r, run_len)
        seen = self._seen[i]
        fast = np.zeros((len(ids), 2), bool)
        for proc in (CPU, DEV):
            t = hit[:, proc] & mine
            cont = t & (seen[:, proc] == self._prev_e[slot, proc])
            n_now = np.add.reduceat(t, start)
            n_cont = np.add.reduceat(cont, start)
            n_reused = np.add.reduceat(reused[:, proc] & t, start)
            prev = self._prev_n[slot_r, proc]
            moved_on = ok_run & (prev > 0) & (2 * (prev - n_cont) >= prev) & \
                (2 * self._prev_r[slot_r, proc] >= prev)
            fast[:, proc] = np.repeat(moved_on, run_len) & t
            upd = ok_run & (n_now > 0)
            self._prev_e[slot_r[upd], proc] = epoch
            self._prev_n[slot_r[upd], proc] = n_now[upd]
            self._prev_r[slot_r[upd], proc] = n_reused[upd]
            seen[:, proc] = np.where(t, epoch, seen[:, proc])
        self._seen[i] = seen
        self._fast[i] = fast | (self._fast[i] & ~hit)

    # -- the rules -----------------------------------------------------------------------------
    def _dev_ahead(self, v: "slice | np.ndarray") -> np.ndarray:
        """The device sectors pages ``v`` can expect before the CPU next touches them: what is
        left of their usual run's sectors between the CPU's touches, at least one burst (a
        page the CPU has not touched: one burst).  A running mean over runs, not the last
        one: where run lengths vary, the next is as likely short as long."""
        return np.maximum(self._vol[v] - self._vsince[v], self._burst[v, DEV])

    def _cpu_cohort(self, v: "slice | np.ndarray") -> np.ndarray:
        """The pages expected to come home with pages ``v`` when the CPU touches them on the
        device: those seen doing so last time, else, before the CPU has touched a page there,
        those that went over with it (a default of one would price a whole fault per page,
        and a page so priced never goes over for the CPU to show otherwise)."""
        c = self._cohort[v]
        return np.where(c[:, CPU] > 0, c[:, CPU], c[:, DEV])

    def _pull_margin(self, ctx: "PolicyContext", v: "slice | np.ndarray") -> np.ndarray:
        """What a device pull of pages ``v`` (at a launch) must save beyond the move: for a
        page the CPU comes back to between the device's runs, the CPU's next touch with the
        page on the device (its burst, or a sweep, read remotely, or with fault-return the way
        home if cheaper) and, without launch promotion, the device's fault over; for the
        others a fault's share (the fault over, or a margin for a way home not seen yet)."""
        fault = ctx.profile.fault
        over = fault / self._cohort[v, DEV]
        b = self._burst[v, CPU]
        back = np.where(b > 0, b, self._sweep) * self._cpu_remote_gain
        if self._cpu_returns:
            back = np.minimum(back, self._price[HOST] + fault / self._cpu_cohort(v))
        if not self.launch_promote:
            back = back + over
        return np.where(self._vol[v] > 0, back, over)

    def _cpu_epoch_cost(self, ctx: "PolicyContext", v: "slice | np.ndarray",
                        burst_cpu: np.ndarray, together: np.ndarray | None = None
                        ) -> np.ndarray:
        """What one CPU-touching epoch of pages ``v`` costs with them on the device: the CPU's
        ``burst_cpu`` read remotely, or, with ``cpu_fault_return``, the way home (the move and
        the page's share of the CPU's fault: see the cohorts; ``together``, where known, the
        pages that come home with each) plus what the device then loses (its next burst read
        remotely, or the move back, whichever is cheaper)."""
        remote = burst_cpu * self._cpu_remote_gain
        if not self._cpu_returns:
            return remote
        fault = ctx.profile.fault
        back = self._price[DEVICE]
        if not self.launch_promote:       # else the move back is made at a launch: no fault
            back = back + fault / self._cohort[v, DEV]
        loss = self._burst[v, DEV] * self._gain[DEV]
        if together is None:
            together = self._cpu_cohort(v)
        home = self._price[HOST] + fault / together + np.minimum(loss, back)
        return np.minimum(remote, home)

    def net_value(self, ctx: "PolicyContext", v: np.ndarray, toward: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """For pages ``v`` (their counts must be current): ``(value, rate)``, the decayed net
        rent in seconds that their accesses since the last move would have saved on the node
        local to processor ``toward``, and that value per (decayed) epoch of the window since
        their first touch."""
        acc = self._acc[v]
        d = decay(ctx.epoch - self._acc_at[v], self.owed_halflife_epochs)
        dev = acc[:, DEV] * d * self._gain[DEV]
        acc_cpu = acc[:, CPU] * d
        cpu = acc_cpu
        if acc_cpu.any():
            b = np.maximum(self._burst[v, CPU], 1.0)
            cpu = acc_cpu * self._cpu_epoch_cost(ctx, v, b) / b
        value = dev - cpu if toward == DEV else cpu - dev
        window = decayed_window(ctx.epoch - self._since[v] + 1, self.owed_halflife_epochs)
        return value, value / window

    @staticmethod
    def _notified_regions(ctx: "PolicyContext", notes: np.ndarray, proc: int
                          ) -> tuple[np.ndarray, int]:
        """The pages of the regions ``proc`` raised notifications for, sorted, as ``(starts,
        span)``: pages ``starts[j] + o`` for ``o < span``.  Whole regions in ascending order
        (the rule) come as their first pages and the region size, so that no page list is
        built; anything else as the allocated pages of the regions and ``span = 1``."""
        rp = ctx.pages_per_region
        # one pass over the fields: selecting records of a structured array copies them
        # field by field, and sorting what comes sorted is a waste
        first = np.empty(len(notes), np.int64)
        n, regular = _fused.kernels()["notified"](notes["processor"], notes["vpn"],
                                                  notes["npages"], proc, rp, first)
        first = first[:n]
        if regular:
            return first, rp
        npages = notes["npages"][notes["processor"] == proc]
        first = np.sort(first)
        if not (npages == rp).all() or (len(first) > 1 and (np.diff(first) < rp).any()):
            return ctx.region_pages(first, npages), 1
        return first, rp

    def _candidates(self, ctx: "PolicyContext", notes: np.ndarray, proc: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_evaluate` over the pages of the regions ``proc`` raised notifications for."""
        starts, span = self._notified_regions(ctx, notes, proc)
        if len(starts) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        return self._evaluate(ctx, starts, proc, span)

    def _evaluate(self, ctx: "PolicyContext", pages: np.ndarray, proc: int, span: int = 1,
                  at_launch: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pages of ``pages`` (sorted; with ``span`` > 1, the first pages of disjoint runs of
        ``span`` pages) that sit on the node away from processor ``proc``, may move toward
        it, and pass a rule; with their net rent per epoch (their score).

        The tests, in the order the fused loop applies them: on the other node; touched in
        ``min_epochs`` epochs since its last move; counts not stale (the page moved since they
        were kept: not evidence); not backing off; a positive net rent that passes the payback
        or the rent-paid rule; nothing the manager would refuse anyway (pinned, preferred
        where it is, mapped remotely by ``accessed_by``) so that refused pages do not use up
        the rate limit; and the CPU has shown its hand (below).

        Has the CPU shown its hand?  A page it has not touched may still be one it touches
        every time it runs.  Unless it ran since the page's first touch (and left it alone), or
        has stopped running (overdue by twice its usual gap), the policy waits for its next
        run where a wrong guess (one CPU touch of the page on the device) would cost more than
        the rent that waiting costs.  Its usual gap, before it has run twice, is taken to be
        the time since it ran.  Pages held back only for that are kept aside and evaluated
        again right after the CPU's next run, without waiting for another notification.

        ``at_launch``: ``pages`` are the footprint of a launch about to run (see
        :meth:`fault`); the launch counts as one more touching epoch with the page's usual
        burst (reuse test and payback rate), and pages held back only for the CPU are not
        kept aside (this epoch's end judges them again with their counts)."""
        empty = np.zeros(0, np.int64), np.zeros(0)
        frm, to = (HOST, DEVICE) if proc == DEV else (DEVICE, HOST)
        # the fused loop does not check bounds: every table it reads must cover the pages
        limit = min(len(ctx.node), len(ctx.last_move), len(ctx.preferred), len(ctx.flags),
                    len(ctx.accessed_by), len(self._until))
        if len(pages) and (pages[-1] + span - 1 >= limit or pages[0] < 0):
            if span > 1:
                pages = (pages[:, None] + np.arange(span, dtype=np.int64)).reshape(-1)
                span = 1
            pages = pages[(pages >= 0) & (pages < limit)]
        if len(pages) == 0:
            return empty
        factor = 1.0 if proc == DEV else self.hysteresis
        gap, wait_on = 0.0, False
        if proc == DEV and self._cpu_last >= 0:
            quiet = ctx.epoch - self._cpu_last
            gap = self._cpu_gap if self._cpu_gap > 0 else float(quiet)
            wait_on = not (self._cpu_gap > 0 and quiet > 2 * gap)
        h = self.owed_halflife_epochs
        out_p = np.empty(len(pages) * span, np.int64)
        out_r = np.empty(len(pages) * span)
        out_w = np.empty(len(pages) * span if wait_on else 0, np.int64)   # written only then
        n, nw = _fused.kernels()["candidates"](
            pages, span, proc, frm, to, ctx.node, ctx.last_move, ctx.preferred, ctx.flags,
            ctx.accessed_by, self._touches, self._ready, self._moved, self._until, self._acc,
            self._acc_at, self._since, self._burst, ctx.epoch,
            decay_table(h), decayed_window_table(h), self._gain[DEV], self._cpu_remote_gain,
            self._cohort, self._price[HOST], self._price[DEVICE], ctx.profile.fault,
            not self.launch_promote, self._cpu_returns,
            self.break_even,
            factor * self._price[to], self.payback_epochs, wait_on, self._cpu_last, gap,
            self._sweep, at_launch, self._total, self._peak, self.min_epochs, self._vol,
            self._vsince, out_p, out_r, out_w)
        if nw and not at_launch:
            self._pending = np.union1d(self._pending, out_w[:nw])
        return out_p[:n], out_r[:n]

    def _filter_thrash(self, ctx: "PolicyContext", pages: np.ndarray, score: np.ndarray,
                       proc: int) -> tuple[np.ndarray, np.ndarray]:
        """Drop pages backing off, and catch the ones ping-ponging (see the module docs), when
        moving toward processor ``proc``.  A page whose device bursts until the CPU is
        expected back (:meth:`_dev_ahead`) save more than its way over and its way back
        (faults included) is exempt: moving it for each run of device touches pays even if
        the CPU takes it home each time (ping-pong that pays is not thrashing)."""
        i = as_index(pages)               # a slice for one run of pages: no gathers
        # usually nothing is backing off or ping-ponging: one fused look says so
        if len(pages) == 0 or not _fused.kernels()["any_held"](
                pages, _run_start(i), self._until, ctx.recent_moves, ctx.epoch,
                self.thrash_moves):
            return pages, score
        ok = self._until[i] <= ctx.epoch
        # ping-pong: moved thrash_moves times, the last one recently (a back-off served, or a
        # quiet spell longer than the thrash window, lets the page move again)
        hot = ctx.recent_moves[i] >= self.thrash_moves
        if hot.any():
            h = np.flatnonzero(hot)
            lm = ctx.last_move[pages[h]]
            hot[h] = ((ctx.epoch - lm) <= ctx.tunables.thrash_window_epochs) & \
                (self._until[pages[h]] <= lm)
        held = ~ok | hot
        if proc == DEV and held.any():    # ... unless the device's use pays the round trip
            h = np.flatnonzero(held)
            # the way home is the CPU's fault (shared with the pages of its region that the
            # CPU's last touch of it found on the device too); the way over too unless it is
            # made at a launch; the device's use, its bursts until the CPU is expected back
            ph = pages[h]
            share = 1.0 / self._cpu_cohort(ph)
            if not self.launch_promote:
                share = share + 1.0 / self._cohort[ph, DEV]
            pays = self._dev_ahead(ph) * self._gain[DEV] > \
                self._price[DEVICE] + self._price[HOST] + ctx.profile.fault * share
            ok[h[pays]] = True
            hot[h[pays]] = False
        if hot.any():
            caught = pages[hot]
            k = np.minimum(self._caught[caught], 10).astype(np.int64)
            self._until[caught] = ctx.epoch + self.backoff_epochs * (1 << k)
            self._caught[caught] += 1
            ctx.note_thrashing(caught)
        keep = ok & ~hot
        if not keep.all():
            pages, score = pages[keep], score[keep]
        return pages, score

    @staticmethod
    def _top(pages: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` pages with the highest scores, in the order of ``pages`` (ties: the
        earlier ones).  O(len(pages))."""
        if k >= len(pages):
            return pages
        if k <= 0:
            return pages[:0]
        thr = np.partition(score, len(score) - k)[len(score) - k]
        out = np.empty(k, pages.dtype)
        return out[: _fused.kernels()["select_top"](pages, score, thr, k, out)]

    def _promote(self, ctx: "PolicyContext", pages: np.ndarray, score: np.ndarray,
                 cause: str, keep: np.ndarray | None = None, taken: int = 0) -> list[Move]:
        """Moves promoting the best-scored of ``pages`` that fit: the rate limit's room, and
        the device's free frames (less ``taken``, promised to moves of the same step) plus the
        cold pages worth evicting for them (evicted first, by this policy's own move: the
        manager then needs no victims), never a page of ``keep`` (a launch's footprint: its
        device pages are about to be read, whatever their heat says so far)."""
        k = min(len(pages), self._rate.room(ctx.now, ctx.page_size))
        free = max(0, ctx.free(DEVICE) - taken)
        moves = []
        if k > free:
            top = self._top(pages, score, k)
            heat_val, heat_epoch, dtab = ctx.heat_tables()
            lim = min(len(heat_val), len(heat_epoch))
            if len(top) and top[-1] >= lim:          # sorted: one look at the last page
                top = top[top < lim]
            bar = _fused.kernels()["min_heat"](top, heat_val, heat_epoch, dtab, ctx.epoch,
                                               DEV) / self.hysteresis
            cold = self._cold(ctx, k - free, bar,
                              top if keep is None else np.concatenate((top, keep)), order=False)
            if len(cold):
                moves.append(Move(cold, HOST, "eviction"))
            k = free + len(cold)
        up = self._rate.admit(ctx.now, self._top(pages, score, k), ctx.page_size)
        if len(up):
            moves.append(Move(up, DEVICE, cause))
        return moves

    def _cpu_home(self, ctx: "PolicyContext", ep: "Epoch") -> np.ndarray:
        """The device pages of the CPU epoch ``ep`` that its touch faults home (changes
        nothing)."""
        v = ep.vpns
        if not self.cpu_fault_return or len(v) == 0 or v[-1] >= len(self._until):
            return v[:0]
        ok = ctx.node[as_index(v)] == DEVICE
        if not ok.any():
            return v[:0]
        ok &= ep.touched_by(CPU)
        v = v[ok]
        # the CPU's expected burst: its previous one on this page, else one full sweep;
        # bringing the page home pays if that burst read remotely would cost more than the
        # way home plus what the device then loses.  The pages that come home together
        # are known here: this epoch's device pages of each region (the cohort, learnt
        # after the fact, is not known before the CPU's first touch of a page away).
        # Back-offs do not keep the CPU off a page it does not map (no thrash filter here).
        burst = self._burst[v, CPU]
        burst = np.where(burst > 0, burst, self._sweep)
        remote = burst * self._gain[CPU]
        _, region, count = group_counts(v // ctx.pages_per_region)
        return v[remote > self._cpu_epoch_cost(ctx, v, burst, count[region])]

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        self._grow(ctx.npages)
        return len(self._cpu_home(ctx, ep)) > 0

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        """Moves when an epoch starts (see the module docs): a CPU touch of a device page
        faults it home where that pays (``cpu_fault_return``); a device launch moves the host
        pages of its footprint whose device sectors until the CPU is expected back
        (:meth:`_dev_ahead`) save more than the move and :meth:`_pull_margin`, and those it
        makes ready that pass the promotion rules (``launch_promote``)."""
        v = ep.vpns
        if len(v) == 0:
            return []
        self._grow(ctx.npages)
        if len(v) and v[-1] >= len(self._until):
            return []                        # pages the policy has never seen: no history
        proc = ep.processor
        i = as_index(v)
        if proc == CPU:
            back = self._cpu_home(ctx, ep)
            return [Move(back, HOST, "fault")] if len(back) else []
        # the device: pages whose use until the CPU's next touch pays for the move go; then
        # the launch's footprint may bring the evidence of reuse that others lacked
        node, pref, flags, acc_by = ctx.node, ctx.preferred, ctx.flags, ctx.accessed_by
        sec = ep.sectors
        launch = self.launch_promote
        if v[0] >= 0 and v[-1] < min(len(node), len(pref), len(flags), len(acc_by)) and \
                isinstance(sec, np.ndarray) and sec.ndim == 3 and len(sec) == len(v):
            # one fused pass, and no allocation in the usual launch that finds nothing (the
            # NumPy passes below cost a page-sized temporary each, page faults included)
            k = _fused.kernels()["launch_scan"]
            args = (v, _run_start(i), sec, self._burst, self._gain[DEV], self._price[DEVICE],
                    ctx.profile.fault, self._cohort, self._vol, self._vsince,
                    self._cpu_remote_gain, self._price[HOST], self._cpu_returns, self._sweep,
                    node, pref, flags, acc_by, self._ready, launch, HOST, DEVICE)
            n_pull, n_cand = k(*args, v[:0], _NO_VALUES, v[:0])
            if n_pull == 0 and n_cand == 0:
                return []
            pull, gain, cand = np.empty(n_pull, v.dtype), np.empty(n_pull), np.empty(n_cand,
                                                                                     v.dtype)
            k(*args, pull, gain, cand)
        else:              # pages outside the tables (NumPy raises) or hand-made sectors
            b = self._burst[i, DEV]
            gain = self._gain[DEV] * self._dev_ahead(i)
            on = (node[i] == HOST) & (b > 0) & ep.touched_by(DEV)
            over = on & (gain > self._price[DEVICE] + self._pull_margin(ctx, i))
            pull, gain = v[over], gain[over]
            p_ok = (pref[pull] != HOST) & ~ctx.pinned_at(pull) & \
                ((acc_by[pull] & (1 << DEVICE)) == 0)
            pull, gain = pull[p_ok], gain[p_ok]
            cand = v[on & ~over & ~self._ready[i, DEV]] if launch else v[:0]
        pull, gain = self._filter_thrash(ctx, *_not_duplicated(ctx, pull, gain), DEV)
        # known at launch, such a page moves before the kernel runs; else its touch faults
        moves = self._promote(ctx, pull, gain, "access_counter" if launch else "fault",
                              keep=v) if len(pull) else []
        if len(cand):
            taken = sum(len(m.vpns) if m.target == DEVICE else -len(m.vpns) for m in moves)
            moves += self._at_launch(ctx, cand, v, taken)
        return moves

    def _at_launch(self, ctx: "PolicyContext", v: np.ndarray, footprint: np.ndarray,
                   taken: int) -> list[Move]:
        """Promotions when a launch starts (see *Promotion at launch* in the module docs):
        host pages ``v`` of its ``footprint``, not ready before it, that it makes ready;
        ``taken``: device frames already promised in this step."""
        up, score = _not_duplicated(ctx, *self._evaluate(ctx, v, DEV, at_launch=True))
        up, score = self._filter_thrash(ctx, up, score, DEV)
        if len(up) == 0:
            return []
        return self._promote(ctx, up, score, "access_counter", keep=footprint, taken=taken)

    def epoch_end(self, ctx: "PolicyContext", ep: "Epoch", notes: np.ndarray) -> list[Move]:
        if len(notes) == 0 and not (ep.processor == CPU and len(self._pending)):
            return []
        self._grow(ctx.npages)
        moves = []
        up, score = self._candidates(ctx, notes, DEV)
        if ep.processor == CPU and len(self._pending):
            # the CPU has run: pages held back to see it run are judged again
            pend, self._pending = self._pending, self._pending[:0]
            p2, s2 = self._evaluate(ctx, pend, DEV)
            if len(p2):
                order = np.argsort(np.concatenate((up, p2)), kind="stable")
                up = np.concatenate((up, p2))[order]
                score = np.concatenate((score, s2))[order]
                keep = np.concatenate(([True], up[1:] != up[:-1]))
                up, score = up[keep], score[keep]
        up, score = self._filter_thrash(ctx, up, score, DEV)
        if len(up):
            moves += self._promote(ctx, up, score, "access_counter")
        if self.demote:
            down, score = self._candidates(ctx, notes, CPU)
            down, score = self._filter_thrash(ctx, down, score, CPU)
            if len(down):
                moves.append(Move(self._top(down, score, ctx.free(HOST)), HOST,
                                  "access_counter"))
        return moves

    # -- eviction --------------------------------------------------------------------------------
    def _cold(self, ctx: "PolicyContext", need: int, bar: float, exclude: np.ndarray,
              order: bool) -> np.ndarray:
        """Up to ``need`` device pages whose decayed heat is below ``bar``, the coldest (then
        least recently touched) ones, pages preferred on the device last; examined: a window
        of ``max(4096, 8 * need)`` pages of the virtual range after a clock hand that advances
        with each call, so that the work grows with the promotion, not with the device, and
        every page is examined in turn.  In coldest-first order when ``order``, else by vpn."""
        heat_val, heat_epoch, dtab = ctx.heat_tables()
        # the fused loop does not check bounds: every table it reads must cover the window
        n = min(len(ctx.node), len(ctx.flags), len(ctx.preferred), len(heat_val),
                len(heat_epoch), len(ctx.last_touch))
        if need <= 0 or bar <= 0 or n == 0:
            return np.zeros(0, np.int64)
        budget = max(4096, 8 * need)
        if budget >= n:
            segs = [(0, n)]
        else:
            lo = self._hand % n
            hi = lo + budget
            segs = [(lo, min(hi, n))] + ([(0, hi - n)] if hi > n else [])
            self._hand = hi % n
        room = min(sum(h - lo for lo, h in segs), 4096)
        out_p, out_h, out_t = np.empty(room, np.int64), np.empty(room), np.empty(room, np.int64)
        c = 0
        k = _fused.kernels()["cold_pages"]
        node = ctx.node
        words = _fused.node_words(node)
        for lo, hi in segs:
            while lo < hi:
                c, lo = k(node, words, ctx.flags, ctx.preferred, heat_val, heat_epoch,
                          ctx.last_touch, dtab, ctx.epoch, lo, hi, bar, DEVICE, out_p, out_h,
                          out_t, c)
                if lo < hi:                  # full: more room, and on from that page
                    out_p, out_h, out_t = (np.concatenate((a[:c], np.empty(max(c, 64), a.dtype)))
                                           for a in (out_p, out_h, out_t))
        cand, heat, touch = out_p[:c], out_h[:c], out_t[:c]
        if len(exclude) and len(cand):
            keep = ctx.without_mask(cand, exclude)
            cand, heat, touch = cand[keep], heat[keep], touch[keep]
        if need >= len(cand) and not order:
            return cand
        pick = coldest(heat, touch, need)
        return cand[pick if order else np.sort(pick)]

    def victims(self, ctx: "PolicyContext", need: int, incoming: np.ndarray) -> np.ndarray:
        """Device pages clearly colder than what comes in (decayed heat below the incoming
        pages' coldest device heat over ``hysteresis``), coldest first (see :meth:`_cold`)."""
        if need <= 0 or len(incoming) == 0:
            return np.zeros(0, np.int64)
        heat_val, heat_epoch, dtab = ctx.heat_tables()
        inc = np.asarray(incoming, np.int64)
        inc = inc[(inc >= 0) & (inc < min(len(heat_val), len(heat_epoch)))]
        if len(inc) == 0:
            return inc
        bar = _fused.kernels()["min_heat"](inc, heat_val, heat_epoch, dtab, ctx.epoch,
                                           DEV) / self.hysteresis
        return self._cold(ctx, need, bar, inc, order=True)
