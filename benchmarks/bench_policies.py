"""Policies against the oracle: modeled time of every policy on every workload, per profile.

    python benchmarks/bench_policies.py [--size 64MiB] [--page-size 64KiB] [--seed 0]
                                        [--profiles gh200,h100-pcie] [--param NAME=VALUE ...]
                                        [--cpu-access coherent|migrate_on_cpu_fault]

Each workload runs once for real on the CPU stand-in (kernels, counters, a recorded trace,
results checked against NumPy); the trace is then replayed under every policy and profile
(``ccadgpu.replay``), so all policies see exactly the same accesses.  Prints modeled
milliseconds, each policy's ratio to the oracle, and the targets of the manager issue.  Also
times the manager's decisions per 100k notified pages on a synthetic trace (every page notified
every epoch, the device full), and again with the same pages notified in a space ten times
larger: the cost must follow the notified pages, not the size of the space.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import ccadgpu
from _util import machine, table
from ccadgpu.replay import replay
from ccadgpu.workloads import WORKLOADS

POLICIES = ["static", "first_touch", "on_demand", "access_counter", "autonuma", "oracle"]
PROFILES = ["gh200", "h100-pcie"]


def record(name: str, size: int, page: int, seed: int, d: str) -> tuple[str, bool, float]:
    wl = WORKLOADS[name]
    with ccadgpu.Space(device_memory=wl.device_bytes(size, page), page_size=page) as sp:
        t = time.perf_counter()
        ok = wl.run(sp, size, np.random.default_rng(seed))
        wall = time.perf_counter() - t
        path = os.path.join(d, f"{name}.npz")
        sp.trace.save(path)
    return path, ok, wall


def decision_cost(npages: int = 200_000, epochs: int = 5, total: int | None = None,
                  **params: float | int) -> tuple[float, float, int]:
    """Seconds per 100k notified pages (access_counter, synthetic run where ``npages`` pages are
    touched every epoch and the device is full; the space holds ``total`` pages, by default
    just those; ``params``: the policy's): (policy decisions and the manager's filtering, the
    whole manager step including counter upkeep, the notified pages they are divided by)."""
    from ccadgpu.clock import load_profile
    from ccadgpu.manager import Epoch, MigrationManager, SimPlacement
    from ccadgpu.tunables import Tunables
    ps = 64 << 10
    total = total or npages
    mgr = MigrationManager(SimPlacement(ps, [4 * total, npages // 2], np.zeros(total, np.int8)),
                           "access_counter", load_profile("h100-pcie"), Tunables(), **params)
    v = np.arange(npages)
    sec = np.zeros((npages, 2, 2), np.int64)
    sec[:, 1, 0] = ps // 32 * 4
    for e in range(epochs):
        mgr.step(Epoch(e, e, "k", 1, v, sec, True))
    s = mgr.summary()
    n = max(s["notifications"] * mgr.pages_per_region, 1)
    return s["decision_s"] / n * 1e5, s["manager_s"] / n * 1e5, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="64MiB")
    ap.add_argument("--page-size", default="64KiB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profiles", default=",".join(PROFILES),
                    help=f"comma-separated profiles (default {','.join(PROFILES)})")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="an access_counter parameter for this run (repeatable), e.g. "
                         "min_epochs=1")
    ap.add_argument("--cpu-access", default="coherent",
                    choices=["coherent", "migrate_on_cpu_fault"],
                    help="the spaces' cpu_access for every replay (a cuda space's default is "
                         "migrate_on_cpu_fault)")
    args = ap.parse_args(argv)
    params: dict[str, float | int] = {}
    for kv in args.param:
        name, _, value = kv.partition("=")
        try:
            params[name] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            ap.error(f"--param {kv!r}: expected NAME=NUMBER, e.g. min_epochs=1")
    size = ccadgpu.parse_size(args.size)
    page = ccadgpu.parse_size(args.page_size)
    print(f"# bench_policies: working set {ccadgpu.format_bytes(size)}, pages "
          f"{ccadgpu.format_bytes(page)}, seed {args.seed}, {machine()}"
          + (f"; access_counter with {params}" if params else "")
          + (f"; cpu_access={args.cpu_access}" if args.cpu_access != "coherent" else ""))
    tun = {"cpu_access": args.cpu_access}
    with tempfile.TemporaryDirectory() as d:
        traces = {}
        for name in WORKLOADS:
            path, ok, wall = record(name, size, page, args.seed, d)
            traces[name] = ccadgpu.Trace.load(path)
            if not ok:
                print(f"!! {name}: results differ from NumPy")
                return 1
        for prof in args.profiles.split(","):
            rows, ratios, notes, vs_best = [], [], [], []
            for name, tr in traces.items():
                res = {p: replay(tr, p, profile=prof, tunables=tun,
                                 **(params if p == "access_counter" else {}))
                       for p in POLICIES}
                o = res["oracle"]["modeled_s"]
                rows.append([name] + [f"{res[p]['modeled_s'] * 1e3:.3f} ({res[p]['modeled_s'] / o:.2f})"
                                      for p in POLICIES] +
                            [f"{res['oracle']['lower_bound_s'] / o:.2f}"])
                ac = res["access_counter"]
                ratios.append(ac["modeled_s"] / o)
                best = min(res["static"]["modeled_s"], res["on_demand"]["modeled_s"])
                vs_best.append((ac["modeled_s"] / best, name))
                if ac["modeled_s"] > 1.05 * best:
                    notes.append(f"{name}: access_counter {ac['modeled_s'] / best:.2f}x the better "
                                 "of static/on_demand")
                if name in ("pingpong", "oversubscribe"):
                    notes.append(f"{name}: on_demand / access_counter = "
                                 f"{res['on_demand']['modeled_s'] / ac['modeled_s']:.2f} "
                                 "(target >= 1.5)")
                if name == "pingpong":
                    ws = sum(a["nbytes"] for a in tr.allocations.values())
                    notes.append(f"pingpong: access_counter migrated "
                                 f"{ac['migrated_bytes'] / ws:.2f}x the working set (target <= 2)")
            print(f"\n## profile {prof}: modeled ms (ratio to oracle)\n")
            print(table(["workload"] + POLICIES + ["bound/oracle"], rows))
            g = float(np.exp(np.mean(np.log(ratios))))
            print(f"\naccess_counter / oracle, geometric mean: {g:.3f} (target <= 1.25)")
            worst, wname = max(vs_best)
            print(f"access_counter / the better of static and on_demand, worst: {worst:.2f} "
                  f"({wname}; target <= 1.05)")
            for n in notes:
                print(f"- {n}")
    decision_cost(20_000, 2, **params)       # warm-up: the policy's loops are compiled once
    runs = [(decision_cost(**params), decision_cost(total=2_000_000, **params))
            for _ in range(5)]
    d = float(np.median([r[0][0] for r in runs]))
    m = float(np.median([r[0][1] for r in runs]))
    big = float(np.median([r[1][0] for r in runs]))
    print(f"\nper 100k notified pages (median of 5): decisions {d * 1e3:.2f} ms (target <= 5), "
          f"whole manager step incl. counter upkeep {m * 1e3:.2f} ms; decisions with the same "
          f"pages notified in a space 10x larger: {big * 1e3:.2f} ms ({runs[0][0][2]} pages "
          f"notified over the synthetic run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
