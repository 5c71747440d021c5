"""``access_counter`` on hand-made sharing patterns, against ``static`` and ``on_demand``.

    python benchmarks/bench_policy_patterns.py [--cases 300] [--seed 1]
                                               [--profiles gh200,h100-pcie] [--param NAME=VALUE ...]

Two sets of synthetic traces (:meth:`ccadgpu.Trace.synthetic`, replayed: logical time, no
kernels), 64 KiB pages, two 2 MiB regions:

* **runs**: the device reads pages 0-2 of a region ``burst`` sweeps' worth per launch,
  ``launches`` launches in a row, then the CPU sweeps the whole region; 12 times.  Whether
  moving the three pages for each run of launches pays depends on the run's length (the CPU's
  sweep faults them home on PCIe);
* **varied runs**: as *runs*, but each of 24 rounds draws its run length from a small set
  ((1, 8), (1, 1, 1, 12), (1, 2, 16), (1, 15), (2, 6), (1, 1, 30)), with 2-10 sweeps per
  launch on 1, 3 or 32 pages; 144 traces;
* **random**: ``--cases`` random alternations of device launches and CPU epochs: random page
  sets for each (overlapping or not), device bursts of 0.5 to 40 sweeps, CPU bursts of 0.05 to
  2, runs of 1 to 8 launches between CPU epochs (a CPU epoch is skipped one time in five),
  6 to 19 rounds.  Each case has its own seed (``[seed, case]``).

Prints each case's ``access_counter`` time over the better of ``static`` and ``on_demand`` (the
baselines a user would otherwise pick) and over the ``oracle``; for the random set the
geometric means, how many cases are more than 5% and 25% worse than the better baseline, and
the worst cases.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from _util import machine, table
from ccadgpu.replay import replay
from ccadgpu.trace import Trace

PS = 64 << 10
SWEEP = PS // 32
POLICIES = ("static", "on_demand", "access_counter", "oracle")


def times(epochs: list, npages: int, profile: str, params: dict) -> dict[str, float]:
    """Modeled seconds of each of :data:`POLICIES` over the trace of ``epochs``."""
    tr = Trace.synthetic(epochs, npages, 48, profile, PS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {p: replay(tr, p, **(params if p == "access_counter" else {}))["modeled_s"]
                for p in POLICIES}


def runs_case(launches: int, burst: int) -> list:
    ep = []
    for _ in range(12):
        ep += [("device", {p: burst * SWEEP for p in range(3)})] * launches
        ep.append(("cpu", {p: SWEEP for p in range(32)}))
    return ep


VARIED = ((1, 8), (1, 1, 1, 12), (1, 2, 16), (1, 15), (2, 6), (1, 1, 30))


def varied_case(dist: tuple, burst: int, npg: int, seed: int) -> list:
    rng = np.random.default_rng([seed, burst, npg, len(dist)])
    ep = []
    for _ in range(24):
        ep += [("device", {p: burst * SWEEP for p in range(npg)})] * int(rng.choice(dist))
        ep.append(("cpu", {p: SWEEP for p in range(32)}))
    return ep


def ratios(cases: list, npages: int, prof: str, params: dict) -> np.ndarray:
    """``[ac / better of static and on_demand, ac / oracle]`` per trace of ``cases``."""
    out = []
    for ep in cases:
        t = times(ep, npages, prof, params)
        out.append((t["access_counter"] / min(t["static"], t["on_demand"]),
                    t["access_counter"] / t["oracle"]))
    return np.array(out).reshape(-1, 2)


def random_case(seed: int, case: int) -> tuple[list, tuple]:
    rng = np.random.default_rng([seed, case])
    npg = 64
    dev = rng.choice(npg, int(rng.integers(1, 40)), replace=False)
    cpu = rng.choice(npg, int(rng.integers(1, 40)), replace=False)
    db = float(rng.choice([0.5, 2, 5, 10, 20, 40]))
    cb = float(rng.choice([0.05, 0.5, 1, 2]))
    run = int(rng.choice([1, 1, 2, 4, 8]))
    rounds = int(rng.integers(6, 20))
    ep = []
    for _ in range(rounds):
        for _ in range(run):
            ep.append(("device", {int(p): max(1, int(db * SWEEP * rng.uniform(0.5, 1.5)))
                                  for p in dev}))
        if rng.random() < 0.8:
            ep.append(("cpu", {int(p): max(1, int(cb * SWEEP)) for p in cpu}))
    shared = len(np.intersect1d(dev, cpu))
    return ep, (len(dev), len(cpu), shared, db, cb, run, rounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profiles", default="gh200,h100-pcie")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="an access_counter parameter (repeatable)")
    a = ap.parse_args(argv)
    params = {}
    for kv in a.param:
        k, _, v = kv.partition("=")
        params[k] = float(v)
    print(f"# bench_policy_patterns: {a.cases} random cases, seed {a.seed}, "
          f"params {params or '-'}, {machine()}\n")
    for prof in a.profiles.split(","):
        rows = []
        for launches in (1, 2, 4, 8):
            for burst in (1, 3, 10):
                t = times(runs_case(launches, burst), 32, prof, params)
                best = min(t["static"], t["on_demand"])
                rows.append([launches, burst, *(f"{t[p] * 1e6:.1f}" for p in POLICIES),
                             f"{t['access_counter'] / best:.2f}",
                             f"{t['access_counter'] / t['oracle']:.2f}"])
        print(f"## {prof}: runs (us; ratio of access_counter)\n")
        print(table(["launches", "burst", *POLICIES, "ac/best", "ac/oracle"], rows))
        vr = ratios([varied_case(d, b, n, sd) for d in VARIED for b in (2, 3, 5, 10)
                     for n in (1, 3, 32) for sd in (0, 1)], 32, prof, params)
        print(f"\n## {prof}: {len(vr)} varied runs\n")
        print(f"access_counter / the better of static and on_demand: geometric mean "
              f"{np.exp(np.log(vr[:, 0]).mean()):.3f}, worst {vr[:, 0].max():.2f}, "
              f"> 1.1: {(vr[:, 0] > 1.1).sum()}; / oracle: geometric mean "
              f"{np.exp(np.log(vr[:, 1]).mean()):.3f}")
        res = []
        for c in range(a.cases):
            ep, desc = random_case(a.seed, c)
            t = times(ep, 64, prof, params)
            res.append((t["access_counter"] / min(t["static"], t["on_demand"]),
                        t["access_counter"] / t["oracle"], c, desc))
        r = np.array([x[0] for x in res])
        o = np.array([x[1] for x in res])
        print(f"\n## {prof}: {a.cases} random cases\n")
        print(f"access_counter / the better of static and on_demand: geometric mean "
              f"{np.exp(np.log(r).mean()):.3f}, worst {r.max():.2f}, > 1.05: {(r > 1.05).sum()}, "
              f"> 1.25: {(r > 1.25).sum()}; "
              f"/ oracle: geometric mean {np.exp(np.log(o).mean()):.3f}")
        worst = sorted(res, reverse=True)[:5]
        print("\n" + table(["case", "ac/best", "ac/oracle", "device pages", "cpu pages", "shared",
                            "device burst", "cpu burst", "run", "rounds"],
                           [[c, f"{x:.2f}", f"{y:.2f}", *d] for x, y, c, d in worst]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
