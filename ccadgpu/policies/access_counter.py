"""``access_counter``: hardware access counters drive migration (the thread's central idea).

Notifications say *where* the other node's processor is pounding on memory; per-page counters
say *how much*.  Whether a page should move is then the ski-rental (rent-or-buy) question: every
remote access pays rent (the extra time of a remote over a local access, from the profile), a
migration buys the page (link time plus per-page cost).  A page in a notified region moves when
the rent its accesses since it last moved would have saved on the other node, *net of the rent
the other processor's accesses would then have paid* (on a PCIe card a CPU read of device memory
is a hundred times slower than of host memory), reaches ``break_even`` times the price of moving
it.  With ``break_even = 1`` that is the classic 2-competitive rule for a page used by one
processor: it never costs more than twice what an oracle that knew the future would have paid
for it (without capacity pressure), and a page touched once is never moved.  The sectors counted
decay with ``owed_halflife_epochs`` so that ancient history does not trigger moves, and a page
must have been touched in ``min_epochs`` epochs since it last moved (one burst of use says
nothing about the next, and on the first touch the other processor has not shown its hand).

Real systems fight three failure modes, and so does this policy:

* **ping-pong** (thrashing between CPU and device): a page that has already moved
  ``thrash_moves`` times within the manager's thrash window is left where it is, mapped
  remotely, for ``backoff_epochs`` epochs (doubling each time it is caught again); demotions
  need ``hysteresis`` times more rent than promotions;
* **migration storms**: promotions to the device are limited to ``rate_limit_mbps`` MB/s per
  1-second window of modeled time (Linux's ``numa_balancing_promote_rate_limit_MBps``);
* **oversubscription**: when the device is full, the coldest device pages by decayed counters
  are evicted, and only for pages clearly hotter than them (``hysteresis``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import CPU, DEV, DEVICE, HOST, Move, Policy, RateLimit, as_index, decay

if TYPE_CHECKING:
    from ..manager import Epoch, PolicyContext

SECTOR = 32


class AccessCounter(Policy):
    """Counter-driven migration: ski-rental break-even per page, hysteresis, thrash back-off,
    a promotion rate limit and coldest-first eviction (see the module docs)."""
    name = "access_counter"

    def __init__(self, break_even: float = 1.0, hysteresis: float = 2.0, thrash_moves: int = 2,
                 backoff_epochs: int = 16, rate_limit_mbps: float = 65536.0,
                 owed_halflife_epochs: float = 64.0, min_epochs: int = 2,
                 demote: bool = True) -> None:
        if break_even <= 0 or hysteresis < 1.0 or owed_halflife_epochs <= 0:
            raise ValueError("break_even and owed_halflife_epochs must be > 0, hysteresis >= 1")
        if thrash_moves < 1 or backoff_epochs < 0:
            raise ValueError("thrash_moves must be >= 1 and backoff_epochs >= 0")
        if rate_limit_mbps <= 0:
            raise ValueError(f"rate_limit_mbps must be > 0, got {rate_limit_mbps!r}")
        self.break_even = float(break_even)
        self.hysteresis = float(hysteresis)
        self.thrash_moves = int(thrash_moves)
        self.backoff_epochs = int(backoff_epochs)
        self.rate_limit_mbps = float(rate_limit_mbps)
        self.owed_halflife_epochs = float(owed_halflife_epochs)
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be >= 1, got {min_epochs!r}")
        self.min_epochs = int(min_epochs)
        self.demote = bool(demote)

    def setup(self, ctx: "PolicyContext") -> None:
        p = ctx.profile
        bw = p.bandwidth
        # seconds per sector saved by the device when a page moves host -> device, and the extra
        # seconds per sector the CPU then pays (and conversely for device -> host)
        self._gain = np.array([SECTOR * (1 / bw[CPU, DEVICE] - 1 / bw[CPU, HOST]),
                               SECTOR * (1 / bw[DEV, HOST] - 1 / bw[DEV, DEVICE])])
        self._price = np.array([ctx.page_size / p.link[DEVICE, HOST] + p.per_page,   # to host
                                ctx.page_size / p.link[HOST, DEVICE] + p.per_page])  # to device
        self._acc = np.zeros((0, 2))        # sectors per page and processor since its last move
        self._acc_at = np.zeros(0, np.int64)
        self._touches = np.zeros((0, 2), np.int32)   # epochs touching the page since its move
        self._until = np.zeros(0, np.int64)      # back-off: no move before this epoch
        self._caught = np.zeros(0, np.int16)     # times caught thrashing (doubles the back-off)
        self._moved = np.zeros(0, np.int64)      # ctx.last_move seen, to restart the count
        self._rate = RateLimit(self.rate_limit_mbps)

    def _grow(self, n: int) -> None:
        k = n - len(self._until)
        if k > 0:
            self._acc = np.vstack((self._acc, np.zeros((k, 2))))
            self._acc_at = np.concatenate((self._acc_at, np.zeros(k, np.int64)))
            self._touches = np.vstack((self._touches, np.zeros((k, 2), np.int32)))
            self._until = np.concatenate((self._until, np.zeros(k, np.int64)))
            self._caught = np.concatenate((self._caught, np.zeros(k, np.int16)))
            self._moved = np.concatenate((self._moved, np.full(k, -(1 << 40), np.int64)))

    def sectors_since_move(self, ctx: "PolicyContext", v: np.ndarray) -> np.ndarray:
        """Decayed sectors per processor since pages ``v`` last moved, ``[k, processor]``."""
        i = as_index(v)
        age = ctx.epoch - self._acc_at[i]
        stale = ctx.last_move[i] != self._moved[i]
        out = self._acc[i] * decay(age, self.owed_halflife_epochs)[:, None]
        if stale.any():
            out[stale] = 0.0
        return out

    def net_gain(self, ctx: "PolicyContext", v: np.ndarray, toward: int) -> np.ndarray:
        """Seconds the accesses counted since the last move would have saved had pages ``v``
        been on the node local to processor ``toward``, net of the other processor's loss."""
        acc = self.sectors_since_move(ctx, v)
        return acc[:, toward] * self._gain[toward] - acc[:, 1 - toward] * self._gain[1 - toward]

    def _count(self, ctx: "PolicyContext", ep: "Epoch") -> None:
        v = ep.vpns
        i = as_index(v)
        lm = ctx.last_move[i]
        stale = lm != self._moved[i]
        touches = self._touches[i]
        if stale.any():
            touches[stale] = 0
        self._touches[i] = touches + (ep.by_proc > 0)
        self._acc[i] = self.sectors_since_move(ctx, v) + ep.by_proc
        self._acc_at[i] = ctx.epoch
        self._moved[i] = lm

    def forget(self, lo: int, hi: int) -> None:
        hi = min(hi, len(self._until))
        if lo < hi:
            self._acc[lo:hi] = 0.0
            self._touches[lo:hi] = 0
            self._until[lo:hi] = 0
            self._caught[lo:hi] = 0

    def _filter_thrash(self, ctx: "PolicyContext", pages: np.ndarray) -> np.ndarray:
        pages = pages[self._until[pages] <= ctx.epoch]
        # ping-pong: moved thrash_moves times, the last one recently (a back-off served, or a
        # quiet spell longer than the thrash window, lets the page move again)
        recent = (ctx.epoch - ctx.last_move[pages]) <= ctx.tunables.thrash_window_epochs
        hot = (ctx.recent_moves[pages] >= self.thrash_moves) & recent & \
            (self._until[pages] <= ctx.last_move[pages])
        caught = pages[hot]
        if len(caught):
            k = np.minimum(self._caught[caught], 10).astype(np.int64)
            self._until[caught] = ctx.epoch + self.backoff_epochs * (1 << k)
            self._caught[caught] += 1
            ctx.note_thrashing(caught)
        return pages[~hot]

    def _candidates(self, ctx: "PolicyContext", notes: np.ndarray, proc: int, frm: int,
                    factor: float) -> np.ndarray:
        sel = notes[notes["processor"] == proc]
        if len(sel) == 0:
            return np.zeros(0, np.int64)
        pages = ctx.region_pages(sel["vpn"], sel["npages"])
        pages = pages[ctx.node[pages] == frm]
        # what the manager would refuse anyway must not use up the rate limit
        to = DEVICE if proc == DEV else HOST
        pages = pages[~ctx.pinned[pages] & (ctx.preferred[pages] != frm) &
                      ((ctx.accessed_by[pages] & (1 << to)) == 0)]
        gain = self.net_gain(ctx, pages, proc)
        keep = (gain >= factor * self.break_even * self._price[proc]) & \
            (self._touches[pages, proc] >= self.min_epochs)
        pages, gain = pages[keep], gain[keep]
        return pages[np.argsort(-gain, kind="stable")]          # the biggest gain first

    def observe(self, ctx: "PolicyContext", ep: "Epoch") -> None:
        self._grow(ctx.npages)
        self._count(ctx, ep)

    def epoch_end(self, ctx: "PolicyContext", ep: "Epoch", notes: np.ndarray) -> list[Move]:
        moves = []
        up = self._filter_thrash(ctx, self._candidates(ctx, notes, DEV, HOST, 1.0))
        up = self._rate.admit(ctx.now, up, ctx.page_size)
        if len(up):
            moves.append(Move(up, DEVICE, "access_counter"))
        if self.demote:
            down = self._filter_thrash(ctx, self._candidates(ctx, notes, CPU, DEVICE,
                                                             self.hysteresis))
            if len(down):
                moves.append(Move(down, HOST, "access_counter"))
        return moves

    def victims(self, ctx: "PolicyContext", need: int, incoming: np.ndarray) -> np.ndarray:
        out = super().victims(ctx, need, incoming)
        if len(out) == 0 or len(incoming) == 0:
            return out
        # evict only pages clearly colder than what comes in
        bar = ctx.heat(incoming)[:, DEV].min() / self.hysteresis
        hv = ctx.heat(out)
        return out[(hv[:, DEV] + hv[:, CPU]) < bar]
