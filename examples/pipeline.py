"""The thread's pipeline use case: the CPU produces a batch, the device applies two
transformations in turn, the CPU consumes the result; batch after batch.  What does a "migrate
before work" hint buy?

Without hints every page stays where it was allocated (the host) or goes where a policy sends
it.  With hints the application says where each phase will run before it starts: the
intermediate stage lives on the device (``advise(preferred_location="device")``), the produced
batch is prefetched to the device before the transforms and the result to the host before the
CPU consumes it (``prefetch``).  The table compares bytes moved and time, per policy, with and
without the hints: *modeled ms* by the space clock (accesses charged where the pages were when
each operation ran, migrations, and faults, which run before the accesses they serve),
*manager ms* by the migration manager (as ``ccadgpu bench`` reports; the user's own moves, the
hints' prefetches, are not in it; see the README's *What is still weak*).

    python examples/pipeline.py [--mib 8] [--batches 6] [--profiles h100-pcie,gh200]
"""
import argparse
import time

import numpy as np

import ccadgpu
from ccadgpu import ops

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--mib", type=int, default=8, help="MiB per array (8)")
ap.add_argument("--batches", type=int, default=6)
ap.add_argument("--profiles", default="h100-pcie,gh200",
                help="machine profiles, comma-separated (h100-pcie,gh200)")
ap.add_argument("--page-size", default="2MiB",
                help="migration granularity (2MiB, as GPU drivers migrate; with 64KiB the "
                     "profiles' per-page migration cost dominates)")
ap.add_argument("--policies", default="static,on_demand,access_counter")
args = ap.parse_args()
n = (args.mib << 20) // 8


def run(profile: str, policy: str, hints: bool) -> dict:
    rng = np.random.default_rng(0)
    with ccadgpu.Space(device_memory="256MiB", page_size=args.page_size, profile=profile,
                       policy=policy) as sp:
        a, b, c = sp.zeros(n, name="produced"), sp.zeros(n, name="stage1"), sp.zeros(n, name="out")
        if hints:
            sp.advise(b, preferred_location="device")    # the intermediate never leaves it
            sp.prefetch(b, "device")
        t0 = time.perf_counter()
        ok = True
        for _ in range(args.batches):
            batch = rng.standard_normal(n)
            if hints:
                sp.prefetch(a, "host")           # the CPU is about to write a
            a[...] = batch                       # CPU produces
            if hints:
                sp.prefetch(a, "device")         # migrate before the device works on it
                sp.prefetch(c, "device")
            ops.scale(b, a, 2.0)                 # device transform 1: b = 2a
            ops.copy(c, b)                       # device transform 2: c = b + a
            ops.axpy(1.0, a, c)
            if hints:
                sp.prefetch(c, "host")           # migrate before the CPU consumes it
            ok &= bool(np.isclose(float(np.sum(c)), 3.0 * batch.sum()))   # CPU consumes
        sp.sync()
        s = sp.stats()
        remote = sum(v for k, v in s.items() if k.startswith("access_bytes_") and
                     k.endswith("_remote"))
        return {"ok": ok, "wall": time.perf_counter() - t0, "modeled": sp.clock.elapsed,
                "manager": sp.manager.summary()["modeled_s"],
                "kinds": dict(sp.clock.by_kind), "moved": s["pgmigrate_bytes"],
                "remote": remote}


for profile in args.profiles.split(","):
    print(f"\n{args.batches} batches of {args.mib} MiB, profile {profile}, pages of "
          f"{args.page_size}")
    print(f"{'policy':15s} {'hints':5s} {'modeled ms':>10s} {'(migration)':>11s} "
          f"{'manager ms':>10s} {'moved MiB':>9s} {'remote MiB':>10s} {'wall ms':>8s}")
    results = {}
    for policy in args.policies.split(","):
        for hints in (False, True):
            r = run(profile, policy, hints)
            assert r["ok"], f"{profile} {policy} hints={hints}: wrong result"
            results[policy, hints] = r
            print(f"{policy:15s} {'yes' if hints else 'no':5s} {r['modeled'] * 1e3:10.3f} "
                  f"{r['kinds']['migration'] * 1e3:11.3f} {r['manager'] * 1e3:10.3f} "
                  f"{r['moved'] / 2**20:9.1f} "
                  f"{r['remote'] / 2**20:10.1f} {r['wall'] * 1e3:8.1f}")
    for policy in args.policies.split(","):
        off, on = results[policy, False], results[policy, True]
        print(f"  {policy}: with the hints, modeled time x{on['modeled'] / off['modeled']:.2f} "
              f"({off['modeled'] * 1e3:.3f} -> {on['modeled'] * 1e3:.3f} ms), bytes moved "
              f"{off['moved'] / 2**20:.0f} -> {on['moved'] / 2**20:.0f} MiB")
print("ok")
