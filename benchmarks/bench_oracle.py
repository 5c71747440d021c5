"""The oracle's planning: what it costs, and how it fares where the user's moves meet a full device.

    python benchmarks/bench_oracle.py [--epochs 200] [--pages 16384] [--repeat 3]

1. Planning seconds (``ccadgpu.replay.oracle_schedule``) on a synthetic trace (``--epochs``
   epochs over ``--pages`` pages, a quarter of them touched per epoch, two device epochs to
   one CPU epoch, a device of an eighth of the pages, so that capacity binds), median of
   ``--repeat``: without user actions (the baseline), with one pinned page, and with the user
   moving a device's worth of pages to the device halfway through (the oracle then weighs
   which of those moves find room).  Each is printed as a ratio to the baseline.
2. Modeled seconds (deterministic) of the oracle against the best online policy and the
   lower bound on two small recorded runs where a move to the device meets a full device
   (the user's ``move_pages``; a preferred-location hint).
3. ``--random`` recorded runs of random launches, CPU work and user actions on a small device
   (``random_run``), and as many harder ones (actions from inside kernels, arrays allocated
   again), replayed on that device and on a quarter of it: the oracle's modeled time
   over the best policy's, and over the best but ``static``'s (``static`` escapes the hints'
   moves, which bind the oracle); and how far under what the schedule makes its planned time
   can be (planned by the model without user actions, scored by replays with them).  The
   oracle's schedule is a heuristic under capacity pressure: the ratio can exceed 1.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time

import numpy as np

import ccadgpu
from _util import machine, median_time, table
from ccadgpu import ops
from ccadgpu.clock import load_profile
from ccadgpu.replay import complete, oracle_schedule, replay

POLICIES = ["static", "first_touch", "on_demand", "access_counter", "autonuma"]


def synthetic(epochs: int, pages: int, seed: int = 0) -> ccadgpu.Trace:
    rng = np.random.default_rng(seed)
    eps = [("cpu" if e % 3 == 0 else "device",
            {int(v): 2048 for v in rng.choice(pages, pages // 4, replace=False)})
           for e in range(epochs)]
    return ccadgpu.Trace.synthetic(eps, npages=pages, device_frames=pages // 8,
                                   profile="h100-pcie")


def with_user(t: ccadgpu.Trace, event: dict | None, at: int = 0) -> ccadgpu.Trace:
    """Synthetic ``t`` with its allocations' events (made on the host before the first
    epoch), so that a replay and the oracle take user events, and ``event`` before epoch
    ``at``."""
    u = copy.copy(t)
    u.allocations = {k: {**a, "nodes": [[0, a["npages"]]]} for k, a in t.allocations.items()}
    u.events = [[0, 1, k] for k in u.allocations]
    u.user_events = []
    if event is not None:
        u.user_events.append(event)
        u.events.append([at, 2, 0])
    assert complete(u)
    return u


def planning(epochs: int, pages: int, repeat: int) -> list[list[object]]:
    t = synthetic(epochs, pages)
    prof, frames = load_profile("h100-pcie"), pages // 8
    cases = [("no user actions", with_user(t, None)),
             ("one page pinned", with_user(t, {"op": "pin", "lo": 0, "hi": 1, "on": True}, 5)),
             ("user moves a device's worth up, halfway",
              with_user(t, {"op": "move", "runs": [[0, frames]], "node": 1}, epochs // 2))]
    rows, base = [], None
    for name, tr in cases:
        s = oracle_schedule(tr, prof, frames)
        sec = median_time(lambda: oracle_schedule(tr, prof, frames), repeat)
        base = base or sec
        rows.append([name, f"{sec:.3f}", f"{sec / base:.2f}", f"{s.planned_cost * 1e3:.3f}",
                     f"{s.lower_bound * 1e3:.3f}"])
    return rows


def _user_move(sp: ccadgpu.Space) -> None:
    F = sp.page_size // 8
    a, b, c = sp.asarray(np.arange(16.0 * F)), sp.zeros(16 * F), sp.asarray(np.ones(32 * F))
    for _ in range(3):
        ops.scale(b, a, 2.0)
    sp.move_pages(c, "device")
    for _ in range(6):
        float(c.sum())
        sp.sync()


def _hint(sp: ccadgpu.Space) -> None:
    F = sp.page_size // 8
    c, a, b = sp.asarray(np.ones(8 * F)), sp.asarray(np.arange(2.0 * F)), sp.zeros(2 * F)
    sp.prefetch(c, "device")
    for _ in range(4):
        ops.scale(c, c, 1.0)
    sp.advise(a, preferred_location="device")
    for _ in range(2):
        ops.scale(b, a, 2.0)
    for _ in range(4):
        ops.scale(c, c, 1.0)


def full_device() -> list[list[object]]:
    rows = []
    for name, run, frames in (("move_pages into a full device", _user_move, 32),
                              ("preferred-location hint, device full", _hint, 8)):
        for prof in ("h100-pcie", "gh200"):
            with ccadgpu.Space(device_memory=frames * (64 << 10), page_size=64 << 10,
                               profile=prof, policy="static") as sp:
                run(sp)
                sp.sync()
                t = sp.trace            # (recorded under static: the user's moves fit)
            o = replay(t, "oracle")
            best, pol = min((replay(t, p)["modeled_s"], p) for p in POLICIES)
            rows.append([name, prof, f"{o['lower_bound_s'] * 1e6:.1f}",
                         f"{o['modeled_s'] * 1e6:.1f}", f"{best * 1e6:.1f} ({pol})",
                         f"{o['modeled_s'] / best:.3f}"])
    return rows


def random_run(seed: int, harder: bool = False) -> tuple[ccadgpu.Trace, int]:
    """A random sequence of launches, CPU work, hints, pins, moves, prefetches and offlines on
    a small device, recorded under a random policy; ``harder``: also such actions from inside
    a launch's kernel, and arrays dropped and allocated again (the same pages, maybe on the
    other node).  Returns the trace and the device's frames."""
    from ccadgpu.errors import CcadError
    rng = np.random.default_rng(seed)
    ps = 64 << 10
    F, frames = ps // 8, int(rng.choice([8, 16, 32, 64]))
    kw = {"cpu_access": "migrate_on_cpu_fault"} if rng.random() < 0.2 else {}
    with ccadgpu.Space(device_memory=frames * ps, page_size=ps, policy=str(rng.choice(POLICIES)),
                       profile=str(rng.choice(["h100-pcie", "gh200"])), **kw) as sp:
        node = lambda: str(rng.choice(["host", "device"]))  # noqa: E731

        def alloc() -> "ccadgpu.ManagedArray":
            n = int(rng.integers(1, 12)) * F
            try:
                return sp.asarray(np.arange(float(n)), placement=node())
            except CcadError:          # more than the device holds
                return sp.zeros(n)
        arrs = [alloc() for _ in range(3)]
        acts = [lambda a, b: ops.scale(b[:len(a)], a[:len(b)], 2.0),
                lambda a, b: ops.axpy(1.0, a[:len(b)], b[:len(a)]),
                lambda a, b: float(ops.sum(a)), lambda a, b: float(a.sum()),
                lambda a, b: a.__setitem__(Ellipsis, 1.0),
                lambda a, b: sp.move_pages(a, node(), pages=sorted(set(rng.integers(
                    0, len(sp.placement(a)), int(rng.integers(1, 4))).tolist()))),
                lambda a, b: sp.prefetch(a, node()),
                lambda a, b: (sp.pin(a), sp.unpin(a)) if rng.random() < 0.5 else sp.pin(a),
                lambda a, b: sp.advise(a, preferred_location=node()),
                lambda a, b: sp.advise(a, accessed_by="device"),
                lambda a, b: sp.device.offline(), lambda a, b: sp.device.online(),
                lambda a, b: sp.sync()]
        users = acts[5:12]

        def in_kernel(a: np.ndarray, b: np.ndarray) -> None:
            act, c = users[int(rng.integers(len(users)))], arrs[int(rng.integers(3))]
            n = min(len(a), len(b))

            def kernel(x: np.ndarray, y: np.ndarray) -> None:
                try:
                    act(c, c)
                except CcadError:
                    pass
                y[:] = 2.0 * x
            sp.device.launch(kernel, a[:n], b[:n], reads=[a[:n]], writes=[b[:n]])

        def again(a: np.ndarray, b: np.ndarray) -> None:
            i = int(rng.integers(3))
            arrs[i] = None
            gc.collect()                   # (its pages go back at the next step)
            arrs[i] = alloc()
        if harder:
            acts += [in_kernel, in_kernel, again]
        for _ in range(int(rng.integers(5, 30))):
            a, b = (arrs[int(i)] for i in rng.integers(0, 3, 2))
            try:
                acts[int(rng.integers(len(acts)))](a, b)
            except CcadError:          # a refused action, a launch on an offline device
                pass
        if sp.device.state != "online":
            sp.device.online()
        sp.sync()
        return sp.trace, frames


def random_runs(n: int) -> list[list[object]]:
    ratios: dict[str, list[float]] = {f"{k}, {d}": [] for k in ("plain", "harder")
                                      for d in ("as recorded", "a quarter of it")}
    worst: dict[str, list[float]] = {k: [] for k in ratios}
    planned: dict[str, list[float]] = {k: [] for k in ratios}
    for seed, kind in ((s, k) for k in ("plain", "harder") for s in range(n)):
        t, frames = random_run(seed, kind == "harder")
        for d, dm in (("as recorded", None), ("a quarter of it", max(1, frames // 4) << 16)):
            key = f"{kind}, {d}"
            oracle = replay(t, "oracle", device_memory=dm)
            o = oracle["modeled_s"]
            by = {p: replay(t, p, device_memory=dm)["modeled_s"] for p in POLICIES}
            if min(by.values()) <= 0:          # nothing ran
                continue
            planned[key].append(oracle["oracle_planned_s"] / o)
            ratios[key].append(o / min(by.values()))
            worst[key].append(o / min(v for p, v in by.items() if p != "static"))
    rows = []
    for key in ratios:
        r, w, pl = np.array(ratios[key]), np.array(worst[key]), np.array(planned[key])
        rows.append([key, len(r), f"{np.exp(np.log(r).mean()):.3f}", f"{r.max():.3f}",
                     int((r > 1.01).sum()), int((w > 1.01).sum()), f"{w.max():.3f}",
                     f"{pl.min():.3f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--pages", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--random", type=int, default=100, metavar="N",
                    help="random recorded runs to score the oracle on (0: none)")
    a = ap.parse_args(argv)
    print(f"# bench_oracle — {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {machine()}, "
          f"ccadgpu {ccadgpu.__version__}")
    print(f"\n## planning, {a.epochs} epochs x {a.pages} pages, device {a.pages // 8} frames, "
          f"h100-pcie, median of {a.repeat}\n")
    print(table(["trace", "planning s", "x no user actions", "planned ms", "bound ms"],
                planning(a.epochs, a.pages, a.repeat)))
    print("\n## a move to the device meets a full device (modeled µs)\n")
    print(table(["run", "profile", "bound", "oracle", "best policy", "oracle / best"],
                full_device()))
    if a.random:
        print(f"\n## {a.random} random runs of each kind (seeds 0..{a.random - 1}): oracle / "
              "best policy, modeled\n")
        print(table(["runs, device", "runs", "geo. mean", "max", "> 1.01",
                     "> 1.01 against all but static", "max against all but static",
                     "planned / made, min"],
                    random_runs(a.random)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
