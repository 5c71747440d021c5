"""What choosing eviction victims costs: ``Policy.victims`` on a full device of ``--pages``
pages, for ``on_demand`` (least recently used) and ``autonuma`` (the default: coldest by
decayed heat, then least recently used), which look at every device page, against
the obvious baseline measured in the same run: the same candidates and keys put in order by one
``np.lexsort`` over all of them, which is what the victims cost before ``policies.base.coldest``
(a partition, then a sort of the ``need`` chosen only).

    python benchmarks/bench_eviction.py [--pages 262144] [--need 64,4096,65536] [--repeat 7]

Half the device pages are untouched (heat 0: ties at the cut, the case the exact tie-break is
for), one in ten is preferred on the device.  The check column says whether the victims equal
the lexsort's first ``need`` (the policies' documented order).  ``access_counter`` is not here:
it examines a clock-hand window of ``max(4096, 8 * need)`` pages, not the device.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from _util import machine, median_time, table
from ccadgpu.clock import load_profile
from ccadgpu.manager import MigrationManager, SimPlacement
from ccadgpu.tunables import Tunables

PS = 64 << 10
DEVICE = 1


def full_device(policy: str, n: int) -> MigrationManager:
    """A manager whose device holds ``n`` pages (and is full), with mixed heat and touch times,
    and a few hot host pages that want to come in."""
    rng = np.random.default_rng(0)
    init = np.ones(n + 8, np.int8)
    init[n:] = 0
    mgr = MigrationManager(SimPlacement(PS, [4 * n, n], init), policy,
                           load_profile("h100-pcie"), Tunables())
    mgr._ensure()
    warm = rng.random(n) < 0.5
    mgr.heat_val[:n] = np.where(warm, rng.random(n), 0.0)[:, None]
    mgr.heat_val[n:, 1] = 1e6
    mgr.last_touch[:n] = rng.integers(0, 1 << 20, (n, 1))
    pref = np.flatnonzero(rng.random(n) < 0.1)
    mgr.placement.preferred()[pref] = DEVICE
    return mgr


def baseline_keys(mgr: MigrationManager, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """The candidates and the lexsort keys the policy orders them by."""
    ctx = mgr.ctx
    cand = ctx.evictable(np.zeros(0, np.int64))
    touch = ctx.last_touch[cand].max(axis=1)
    if policy == "on_demand":
        return cand, np.stack([touch, ctx.preferred[cand] == DEVICE])
    h = ctx.heat(cand)
    heat = h[:, 1] + h[:, 0] + np.where(ctx.preferred[cand] == DEVICE, 1e30, 0.0)
    return cand, np.stack([touch, heat])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1 << 18)
    ap.add_argument("--need", default="64,4096,65536")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    needs = [int(x) for x in args.need.split(",")]
    if args.pages < 1 or any(k < 1 or k > args.pages for k in needs):
        ap.error("--pages must be >= 1 and each --need in [1, --pages]")
    rows = []
    for policy in ("on_demand", "autonuma"):
        mgr = full_device(policy, args.pages)
        pol, ctx = mgr.policy, mgr.ctx
        none = np.zeros(0, np.int64)
        for need in needs:
            def before() -> np.ndarray:
                cand, keys = baseline_keys(mgr, policy)
                return cand[np.lexsort(keys)[:need]]
            base_t = median_time(before, args.repeat)
            t = median_time(lambda: pol.victims(ctx, need, none), args.repeat)
            got = pol.victims(ctx, need, none)
            ok = "yes" if np.array_equal(got, before()) else "NO"
            rows.append([policy, need, f"{base_t * 1e3:.2f}", f"{t * 1e3:.2f}",
                         f"{t / base_t:.2f}", ok])
    print(f"# bench_eviction: {args.pages} device pages of {PS >> 10} KiB, medians of "
          f"{args.repeat}; {machine()}")
    print(table(["policy", "need", "lexsort ms", "victims ms", "ratio", "same order"], rows))
    return 0 if all(r[-1] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
