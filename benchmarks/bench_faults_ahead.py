"""Faults before the accesses they serve (tunable ``faults_ahead``): what the space clock says
against the manager's model, and what it costs, with and without.

    python benchmarks/bench_faults_ahead.py [--size 8MiB] [--page-size 64KiB] [--repeat 5]
                                            [--profiles h100-pcie,gh200]
                                            [--policies on_demand,access_counter]

Every workload runs live (kernels, CPU work, results checked against NumPy) under each policy
and profile, once with ``faults_ahead`` and once without.  Printed per run: the space clock
(each access charged where its pages were when it ran, migrations, faults that ran ahead),
the manager's modeled time (faults priced before the accesses they serve: the baseline the
space clock should meet) and their ratio, with and without.  Then the overhead: median wall
microseconds per call of a small launch and of a CPU ``sum`` over device pages, ahead against
not, measured in the same run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

import ccadgpu
from _util import machine, median_time, table
from ccadgpu import ops
from ccadgpu.units import parse_size
from ccadgpu.workloads import WORKLOADS


def live(name: str, policy: str, profile: str, size: int, page: int, ahead: bool,
         seed: int) -> tuple[float, float, bool]:
    """(space clock s, manager's modeled s, results verified) of one live run."""
    wl = WORKLOADS[name]
    with ccadgpu.Space(device_memory=wl.device_bytes(size, page), page_size=page,
                       profile=profile, policy=policy, faults_ahead=ahead) as sp:
        ok = wl.run(sp, size, np.random.default_rng(seed))
        sp.sync()
        return sp.clock.elapsed, sp.manager.summary()["modeled_s"], bool(ok)


def overhead(policy: str, profile: str, ahead: bool, repeat: int) -> tuple[float, float]:
    """Median µs per small launch (ops.scale over 8 pages) and per CPU sum of 8 device pages."""
    with ccadgpu.Space(device_memory="64MiB", page_size="64KiB", profile=profile,
                       policy=policy, faults_ahead=ahead) as sp:
        n = 1 << 16
        x, y = sp.asarray(np.ones(n)), sp.zeros(n)
        d = sp.asarray(np.ones(n), placement="device")
        calls = 200
        for _ in range(20):                       # warm up (JIT, first moves)
            ops.scale(y, x, 2.0)
            float(d.sum())

        def launches() -> None:
            for _ in range(calls):
                ops.scale(y, x, 2.0)

        def sums() -> None:
            for _ in range(calls):
                float(d.sum())
        return (median_time(launches, repeat) / calls * 1e6,
                median_time(sums, repeat) / calls * 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="8MiB")
    ap.add_argument("--page-size", default="64KiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profiles", default="h100-pcie,gh200")
    ap.add_argument("--policies", default="on_demand,access_counter")
    ap.add_argument("--workloads", default="all")
    a = ap.parse_args()
    size, page = parse_size(a.size, "--size"), parse_size(a.page_size, "--page-size")
    names = list(WORKLOADS) if a.workloads == "all" else a.workloads.split(",")
    profiles, policies = a.profiles.split(","), a.policies.split(",")
    print(f"# faults ahead: {machine()}, ccadgpu {ccadgpu.__version__}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}, size {a.size}, pages {a.page_size}\n")
    rows, ratios, bad = [], {True: [], False: []}, []
    for prof in profiles:
        for pol in policies:
            for name in names:
                out = {}
                for ahead in (True, False):
                    clock, model, ok = live(name, pol, prof, size, page, ahead, a.seed)
                    if not ok:
                        bad.append(f"{name}/{pol}/{prof}/ahead={ahead}")
                    out[ahead] = (clock, model)
                    ratios[ahead].append(clock / model if model > 0 else 1.0)
                (c1, m1), (c0, m0) = out[True], out[False]
                rows.append([name, prof, pol, f"{c1 * 1e3:.3f}", f"{m1 * 1e3:.3f}",
                             f"{c1 / m1:.3f}", f"{c0 * 1e3:.3f}", f"{m0 * 1e3:.3f}",
                             f"{c0 / m0:.3f}"])
    print(table(["workload", "profile", "policy", "clock ms (ahead)", "manager ms (ahead)",
                 "clock/manager", "clock ms (after)", "manager ms (after)", "clock/manager"],
                rows))

    def spread(r: list[float]) -> str:
        g = math.exp(statistics.fmean(math.log(x) for x in r))
        far = sum(1 for x in r if abs(x - 1.0) > 0.05)
        return f"geomean {g:.3f}, median {statistics.median(r):.3f}, " \
               f"max {max(r):.3f}, {far}/{len(r)} off by more than 5%"
    print(f"\nspace clock / manager, faults ahead: {spread(ratios[True])}")
    print(f"space clock / manager, faults after: {spread(ratios[False])}")

    print("\n## overhead (median of", a.repeat, "runs of 200 calls)\n")
    orows = []
    for prof in profiles:
        for pol in ["static"] + policies:
            (l1, s1), (l0, s0) = (overhead(pol, prof, ahead, a.repeat)
                                  for ahead in (True, False))
            orows.append([prof, pol, f"{l1:.1f}", f"{l0:.1f}", f"{l1 / l0:.2f}",
                          f"{s1:.1f}", f"{s0:.1f}", f"{s1 / s0:.2f}"])
    print(table(["profile", "policy", "launch µs (ahead)", "launch µs (after)", "ratio",
                 "CPU sum µs (ahead)", "CPU sum µs (after)", "ratio"], orows))
    if bad:
        print("\nFAILED verification:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
