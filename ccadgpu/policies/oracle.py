"""``oracle``: the offline yardstick.  From a recorded trace and a profile, a placement schedule
(which pages sit on the device before each epoch) that minimises modeled time.

**What it guarantees, exactly.**  The model prices each epoch's traffic per page
(``sectors * 32 / bandwidth[processor, node]``) and each migration per page
(``page_size / link + per_page``); it is additive over pages, so without a capacity limit the
optimum decomposes into one two-state shortest path per page, solved exactly by dynamic
programming over the epochs (vectorised over pages).  That uncapacitated optimum is reported
as ``lower_bound``: **no placement policy, online or offline, can beat it** under this model
(the launch overheads are added as they are, and each epoch's per-node latency terms are
bounded below by one smallest latency per active processor).  With the device's capacity, the oracle adds a price
``lambda`` per device page per epoch (Lagrangian relaxation; ``lambda`` by bisection, the
smallest that respects the capacity) and, if an epoch still overflows, sends the pages with the
least benefit in that epoch to the host.  The resulting schedule is **feasible and, when capacity does
not bind, optimal for the traffic and migration terms** (an epoch it splits over both nodes may
pay one more per-node latency, a few hundred ns, than the best single-node choice); under capacity pressure it is a heuristic whose gap is
bounded by ``cost - lower_bound``, which the results report.  Moves happen before the epoch as
prefetches (no fault cost), the way a perfect prefetcher would issue them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .base import DEVICE, HOST, Move, Policy

if TYPE_CHECKING:
    from ..clock import Profile
    from ..manager import Epoch, PolicyContext

SECTOR = 32
CPU_PROC = 0               # the CPU's processor index in an epoch's sectors


@dataclass
class OracleSchedule:
    """``on_device[e, i]``: page ``vpns[i]`` is on the device during epoch ``e``."""
    vpns: np.ndarray
    on_device: np.ndarray
    lower_bound: float         # seconds: the uncapacitated optimum (access + migration)
    planned_cost: float        # seconds: the schedule's traffic + migration cost, plus the
    #                            same placement-independent terms as lower_bound
    lam: float                 # the capacity price used


def _costs(epochs: Sequence["Epoch"], vpns: np.ndarray, profile: "Profile"
           ) -> tuple[np.ndarray, np.ndarray]:
    E, U = len(epochs), len(vpns)
    ch = np.zeros((E, U))
    cd = np.zeros((E, U))
    inv_bw = 1.0 / profile.bandwidth          # [proc, node]
    for e, ep in enumerate(epochs):
        if len(ep.vpns) == 0:
            continue
        idx = np.searchsorted(vpns, ep.vpns)
        by_proc = ep.sectors.sum(axis=2) * SECTOR          # [n, proc] bytes
        ch[e, idx] = by_proc @ inv_bw[:, HOST]
        cd[e, idx] = by_proc @ inv_bw[:, DEVICE]
    return ch, cd


def _dp(ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray, up: float, down: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Per page, the cheapest host/device sequence.  Returns (on_device[E, U], cost[U])."""
    E, U = ch.shape
    if E == 0:
        return np.zeros((0, U), bool), np.zeros(U)
    # state before epoch 0 is the initial placement; moving costs up/down
    vh = np.where(init_dev, down, 0.0) + ch[0]
    vd = np.where(init_dev, 0.0, up) + cd[0]
    from_d_to_h = np.zeros((E, U), bool)      # best predecessor of host-at-e is device
    from_h_to_d = np.zeros((E, U), bool)
    from_d_to_h[0] = init_dev
    from_h_to_d[0] = ~init_dev
    for e in range(1, E):
        stay_h, switch_h = vh, vd + down
        stay_d, switch_d = vd, vh + up
        from_d_to_h[e] = switch_h < stay_h
        from_h_to_d[e] = switch_d < stay_d
        vh = ch[e] + np.minimum(stay_h, switch_h)
        vd = cd[e] + np.minimum(stay_d, switch_d)
    on = np.zeros((E, U), bool)
    cur = vd < vh
    cost = np.minimum(vh, vd)
    for e in range(E - 1, -1, -1):
        on[e] = cur
        prev_dev = np.where(cur, ~from_h_to_d[e], from_d_to_h[e])
        cur = prev_dev
    return on, cost


def plan_oracle(epochs: Sequence["Epoch"], profile: "Profile", page_size: int,
                device_frames: int, initial_node: np.ndarray, vpns: np.ndarray,
                cpu_access: str = "coherent") -> OracleSchedule:
    """Plan the schedule for pages ``vpns`` (sorted) starting on ``initial_node``.

    ``cpu_access`` is the space's (tunable ``cpu_access``): under ``"migrate_on_cpu_fault"`` a
    page the CPU touches in an epoch cannot stay on the device for it (the space would fault it
    home), so the schedule has it on the host for that epoch, moved there beforehand."""
    if cpu_access not in ("coherent", "migrate_on_cpu_fault"):
        raise InvalidArgumentError(f"cpu_access must be 'coherent' or 'migrate_on_cpu_fault', "
                                   f"got {cpu_access!r}")
    vpns = np.asarray(vpns, np.int64)
    ch, cd = _costs(epochs, vpns, profile)
    up = page_size / profile.link[HOST, DEVICE] + profile.per_page
    down = page_size / profile.link[DEVICE, HOST] + profile.per_page
    if cpu_access == "migrate_on_cpu_fault":
        # dearer than any whole schedule that keeps the page on the host (always allowed), so
        # no optimum and no capacity price ever puts a page on the device for such an epoch
        forbid = float(ch.sum() + cd.sum()) + (up + down) * (len(epochs) + 1) + 1.0
        for e, ep in enumerate(epochs):
            if len(ep.vpns):
                cpu = ep.vpns[ep.touched_by(CPU_PROC)]
                cd[e, np.searchsorted(vpns, cpu)] += forbid
    init_dev = np.asarray(initial_node) == DEVICE
    on, cost = _dp(ch, cd, init_dev, up, down)
    # placement-independent terms, so that the bound compares with whole modeled times: launch
    # overheads, and for each processor active in an epoch its smallest latency
    fixed = sum((profile.launch if ep.launch else 0.0) +
                sum(float(profile.latency[p].min()) for p in range(ep.sectors.shape[1])
                    if ep.sectors[:, p, :].any()) for ep in epochs)
    lower = float(cost.sum()) + fixed
    lam = 0.0
    if len(on) and on.sum(axis=1).max() > device_frames:
        on, lam = _capacitated(ch, cd, init_dev, up, down, on, cost, device_frames)
    planned = _schedule_cost(on, ch, cd, init_dev, up, down) + fixed
    return OracleSchedule(vpns, on, lower, planned, lam)


def _capacitated(ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray, up: float, down: float,
                 on: np.ndarray, cost: np.ndarray, cap: int) -> tuple[np.ndarray, float]:
    """A capacity-feasible schedule: the better of (a) a Lagrangian price per device page and
    epoch, found by bisection, then trimmed, and (b) a greedy knapsack over pages that admits
    whole per-page optimal schedules by savings per device-epoch while every epoch has room."""
    cands = []
    # (a) Lagrangian
    hi = float(max(ch.max(), cd.max(), up, down)) * 4 + 1e-12
    for _ in range(60):
        o, _ = _dp(ch, cd + hi, init_dev, up, down)
        if o.sum(axis=1).max() <= cap:
            break
        hi *= 2
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        o, _ = _dp(ch, cd + mid, init_dev, up, down)
        if o.sum(axis=1).max() <= cap:
            hi = mid
        else:
            lo = mid
    a, _ = _dp(ch, cd + hi, init_dev, up, down)
    for e in np.flatnonzero(a.sum(axis=1) > cap):
        idx = np.flatnonzero(a[e])
        drop = idx[np.argsort(ch[e, idx] - cd[e, idx], kind="stable")[: len(idx) - cap]]
        a[e, drop] = False
    cands.append((a, hi))
    # (b) greedy knapsack over pages: each page either follows its optimal schedule or stays
    # on the host throughout
    all_host = np.where(init_dev, down, 0.0) + ch.sum(axis=0)
    saving = all_host - cost
    used = on.sum(axis=0)
    order = np.argsort(-(saving / np.maximum(used, 1)), kind="stable")
    b = np.zeros_like(on)
    load = np.zeros(on.shape[0], np.int64)
    for i in order[saving[order] > 0]:
        col = on[:, i]
        if (load[col] < cap).all():
            b[:, i] = col
            load += col
    cands.append((b, 0.0))
    best = min(cands, key=lambda c: _schedule_cost(c[0], ch, cd, init_dev, up, down))
    return best


def _schedule_cost(on: np.ndarray, ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray,
                   up: float, down: float) -> float:
    if len(on) == 0:
        return 0.0
    prev = np.vstack((init_dev[None, :], on[:-1]))
    acc = np.where(on, cd, ch).sum()
    mig = (on & ~prev).sum() * up + (~on & prev).sum() * down
    return float(acc + mig)


class Oracle(Policy):
    """Replays an :class:`OracleSchedule`: before epoch ``e`` it moves pages to where the
    schedule wants them (cause ``prefetch``).  Build it with :func:`plan_oracle`, or let
    :func:`ccadgpu.replay.replay` do it from the trace being replayed."""
    name = "oracle"
    evicts = False

    def __init__(self, schedule: OracleSchedule | None = None) -> None:
        if schedule is None:
            raise ValueError("the oracle needs a schedule planned from a recorded trace: use "
                             "ccadgpu.replay.replay(trace, 'oracle') or plan_oracle(...)")
        self.schedule = schedule

    def params(self) -> dict:
        return {"lower_bound": self.schedule.lower_bound, "lambda": self.schedule.lam}

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        return False        # its moves follow the recorded epochs: splitting one would shift them

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        s = self.schedule
        if ctx.epoch >= len(s.on_device):
            return []
        want = s.on_device[ctx.epoch]
        cur = ctx.node[s.vpns] == DEVICE
        return [Move(s.vpns[cur & ~want], HOST, "prefetch"),
                Move(s.vpns[want & ~cur], DEVICE, "prefetch")]
