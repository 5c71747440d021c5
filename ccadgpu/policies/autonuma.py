"""``autonuma``: software NUMA balancing, the thread's alternative to hardware counters.

As Linux does it (``task_numa_work`` / ``do_numa_page``): every ``scan_period_epochs`` a window
of ``scan_fraction`` of the pages is unmapped (``PROT_NONE``) in a rolling scan; the next touch
of such a page takes a *hint fault* (each costs ``hint_fault_us`` of modeled time, migrated or
not), which tells which processor uses it.  A page is migrated to that processor's node when
it sits on the other node, passed the two-fault filter (the same processor also took its
previous hint fault, Linux's ``cpupid`` check) and, as in the memory-tiering mode, was touched
within ``hot_threshold_s`` of being unmapped (hot); promotions obey ``rate_limit_mbps`` per
1-second window of modeled time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import CPU, DEV, DEVICE, HOST, Move, Policy, RateLimit

if TYPE_CHECKING:
    from ..manager import Epoch, PolicyContext


class AutoNuma(Policy):
    """Sampled hint faults decide placement (see the module docs)."""
    name = "autonuma"

    def __init__(self, scan_period_epochs: int = 4, scan_fraction: float = 0.25,
                 hot_threshold_s: float = 1.0, rate_limit_mbps: float = 65536.0,
                 hint_fault_us: float = 1.5, two_stage_filter: bool = True) -> None:
        if scan_period_epochs < 1 or not 0 < scan_fraction <= 1:
            raise ValueError("scan_period_epochs must be >= 1 and scan_fraction in (0, 1]")
        if hot_threshold_s <= 0 or rate_limit_mbps <= 0 or hint_fault_us < 0:
            raise ValueError("hot_threshold_s and rate_limit_mbps must be > 0, "
                             "hint_fault_us >= 0")
        self.scan_period_epochs = int(scan_period_epochs)
        self.scan_fraction = float(scan_fraction)
        self.hot_threshold_s = float(hot_threshold_s)
        self.rate_limit_mbps = float(rate_limit_mbps)
        self.hint_fault_us = float(hint_fault_us)
        self.two_stage_filter = bool(two_stage_filter)

    def setup(self, ctx: "PolicyContext") -> None:
        self._marked = np.zeros(0, np.float64)     # modeled time unmapped, NaN = mapped
        self._last = np.zeros(0, np.int8)          # processor of the previous hint fault
        self._cursor = 0
        self._rate = RateLimit(self.rate_limit_mbps)

    def _grow(self, n: int) -> None:
        if len(self._marked) < n:
            k = n - len(self._marked)
            self._marked = np.concatenate((self._marked, np.full(k, np.nan)))
            self._last = np.concatenate((self._last, np.full(k, -1, np.int8)))

    def forget(self, lo: int, hi: int) -> None:
        hi = min(hi, len(self._marked))
        self._marked[lo:hi] = np.nan
        self._last[lo:hi] = -1

    def _hint_faults(self, ctx: "PolicyContext", v: np.ndarray,
                     proc: int) -> tuple[np.ndarray, np.ndarray]:
        """The pages of ``v`` that hint-fault (unmapped by the scanner), and which of them are
        hot enough, and pass the two-stage filter, to move toward ``proc``."""
        f = v[~np.isnan(self._marked[v])]
        hot = (ctx.now - self._marked[f]) <= self.hot_threshold_s
        ok = (self._last[f] == proc) if self.two_stage_filter else np.ones(len(f), bool)
        return f, hot & ok

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        self._grow(ctx.npages)
        proc = ep.processor
        f, want = self._hint_faults(ctx, ep.vpns, proc)
        if len(f) == 0:
            return []
        ctx.charge_faults(len(f), self.hint_fault_us * 1e-6)
        target = DEVICE if proc == DEV else HOST
        self._last[f] = proc
        self._marked[f] = np.nan                     # the fault maps the page again
        cand = f[want & (ctx.node[f] != target)]
        if target == DEVICE and len(cand):
            cand = self._rate.admit(ctx.now, cand, ctx.page_size)
        return [Move(cand, target, "fault")] if len(cand) else []

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        # fault()'s test for the CPU, without unmarking anything
        v = ep.vpns
        f, want = self._hint_faults(ctx, v[v < len(self._marked)], CPU)
        return bool((want & (ctx.node[f] != HOST)).any())

    def epoch_end(self, ctx: "PolicyContext", ep: "Epoch", notes: np.ndarray) -> list[Move]:
        if (ctx.epoch + 1) % self.scan_period_epochs:
            return []
        self._grow(ctx.npages)
        pages = ctx.allocated_pages()
        if len(pages) == 0:
            return []
        k = max(1, int(np.ceil(self.scan_fraction * len(pages))))
        start = self._cursor % len(pages)
        idx = (start + np.arange(k)) % len(pages)
        self._marked[pages[idx]] = ctx.now
        self._cursor = start + k
        return []
