"""The ``ccadgpu`` command: ``info``, ``demo``, ``bench``, ``trace record|replay``,
``calibrate``.  Exit status: 0 success, 1 a check or verification failed, 2 bad usage or input."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

BAR = 24


def _console():
    from rich.console import Console
    # piped output (logs, CI, files) gets a width tables fit in instead of rich's 80
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _writable(path: str, what: str) -> str:
    from .errors import InvalidArgumentError
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{what} {path!r} is a directory; give a file name")
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise InvalidArgumentError(f"{what} {path!r}: directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise InvalidArgumentError(f"{what} {path!r}: directory {d!r} is not writable")
    return path


def _common(args: argparse.Namespace) -> None:
    """Validate the options several subcommands share, before anything runs."""
    import ccadgpu
    from .errors import InvalidArgumentError
    if getattr(args, "seed", 0) < 0:
        raise InvalidArgumentError(f"--seed must be >= 0, got {args.seed}")
    if getattr(args, "iters", 1) < 1:
        raise InvalidArgumentError(f"--iters must be >= 1, got {args.iters}")
    if hasattr(args, "page_size"):
        ps = ccadgpu.parse_size(args.page_size, "--page-size")
        if ps <= 0 or ps % 4096:
            raise InvalidArgumentError(f"--page-size {args.page_size!r} must be a positive "
                                       "multiple of 4 KiB")


def _names(value: str, valid: list[str], what: str) -> list[str]:
    from .errors import InvalidArgumentError
    names = valid if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise InvalidArgumentError(f"unknown {what} {', '.join(bad) or value!r}; valid: "
                                   f"{', '.join(valid)} (or 'all')")
    return names


# -- info ---------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    import ccadgpu
    from ccadgpu import _sys
    from ccadgpu.clock import available_profiles, load_profile
    con = _console()
    con.print(f"[bold]ccadgpu {ccadgpu.__version__}[/]  Python {platform.python_version()}, "
              f"NumPy {np.__version__}")
    try:
        from ccadgpu.backends import select_backend
        choice = select_backend("auto")          # honours CCADGPU_BACKEND
        con.print(f"backend: [bold]{choice.name}[/] ({choice.reason})")
    except Exception as exc:  # noqa: BLE001 - info must always print something
        con.print(f"backend: cpu (backend probe failed: {exc})")
    con.print("Space(backend='auto') takes this backend; the CLI commands run on the CPU "
              "stand-in unless given --backend auto|cuda")
    try:
        from ccadgpu.backends.nvml import gpu_info
        g = gpu_info()
    except Exception:  # noqa: BLE001
        g = None
    if g:
        con.print("GPU (NVML): " + ", ".join(f"{k}={v}" for k, v in g.items() if v is not None))
    else:
        con.print("GPU (NVML): none visible")
    con.print(f"OS page {_sys.OS_PAGE} B, vm.max_map_count {_sys.max_map_count()}")
    from ccadgpu.nodes import huge_pages_summary
    con.print(huge_pages_summary())
    t = Table(title="machine profiles (modeled time)")
    for c in ("name", "cpu<-host", "cpu<-device", "dev<-host", "dev<-device", "link h2d",
              "description"):
        t.add_column(c)
    for name in available_profiles():
        try:
            p = load_profile(name)
        except Exception as exc:  # noqa: BLE001
            t.add_row(name, "-", "-", "-", "-", "-", f"unreadable: {exc}")
            continue
        bw = p.bandwidth / 1e9
        t.add_row(name, f"{bw[0, 0]:g}", f"{bw[0, 1]:g}", f"{bw[1, 0]:g}", f"{bw[1, 1]:g}",
                  f"{p.link[0, 1] / 1e9:g}", p.description)
    con.print(t)
    con.print("bandwidths in GB/s")
    from ccadgpu.policies import available_policies
    from ccadgpu.workloads import available_workloads
    con.print(f"policies: {', '.join(available_policies())}")
    con.print(f"workloads: {', '.join(available_workloads())}")
    from ccadgpu.tunables import Tunables
    t = Table(title="tunables (defaults)")
    for c in ("name", "value", "meaning"):
        t.add_column(c)
    for name, val, doc in Tunables().describe():
        t.add_row(name, str(val), doc)
    con.print(t)
    return 0


# -- demo ---------------------------------------------------------------------------------------------
def _bar(frac: float) -> str:
    n = int(round(frac * BAR))
    return "[green]" + "█" * n + "[/][dim]" + "░" * (BAR - n) + "[/]"


def _demo_run(con: Any, policy: str, profile: str, size: int, page: int, seed: int,
              reset_at: int, iters: int, checks: list, backend: str = "cpu") -> dict:
    import ccadgpu
    from ccadgpu import ops
    n = size // 3 // 8
    rng = np.random.default_rng(seed)
    rb, rc = rng.standard_normal(n), rng.standard_normal(n)
    with ccadgpu.Space(device_memory=2 * size, page_size=page, profile=profile,
                       policy=policy, backend=backend) as sp:
        a, b, c = sp.zeros(n, name="a"), sp.asarray(rb, name="b"), sp.asarray(rc, name="c")
        arrays = (a, b, c)
        total = sum(len(sp.placement(x)) for x in arrays)
        con.print(f"\n[bold]{policy}[/] on {profile}: STREAM triad a = b + 0.5 c over "
                  f"{ccadgpu.format_bytes(3 * n * 8)} ({total} pages), {iters} launches; "
                  f"device reset after launch {reset_at}")
        for it in range(iters):
            ops.triad(a, b, c, 0.5)
            sp.sync()
            on_dev = sum(int((sp.placement(x) == 1).sum()) for x in arrays)
            last = sp.manager.results[-1]
            moved = sum(v for (cause, s, d), v in last.moved.items() if d == 1)
            con.print(f"  launch {it:2d} {_bar(on_dev / total)} {on_dev:4d}/{total} on device"
                      f"{f' +{moved} promoted' if moved else ''}"
                      f"{f' ({last.notifications} notes)' if last.notifications else ''}")
            if it == reset_at:
                before = [np.asarray(x).copy() for x in arrays]
                rep = sp.device.reset()
                same = all(np.array_equal(np.asarray(x), y) for x, y in zip(arrays, before))
                con.print(f"  [yellow]device reset[/]: {rep.pages} pages evacuated "
                          f"({ccadgpu.format_bytes(rep.bytes)}, {rep.gbps:.1f} GB/s), "
                          f"every byte {'identical' if same else '[red]DIFFERENT[/]'}")
                checks.append((f"{policy}: reset loses no byte", same))
                checks.append((f"{policy}: device empty after reset",
                               all((sp.placement(x) == 0).all() for x in arrays)))
        ok = bool(np.allclose(np.asarray(a), rb + 0.5 * rc))
        checks.append((f"{policy}: results equal NumPy's", ok))
        row = sp.manager.summary()
        row["wall_s"] = sum(r.wall_s for r in sp.manager.results if np.isfinite(r.wall_s))
        return row


def cmd_demo(args: argparse.Namespace) -> int:
    """Placement changing as counters fire, a device reset that loses nothing, throughput."""
    import ccadgpu
    from rich.table import Table
    con = _console()
    size = ccadgpu.parse_size(args.size, "--size")
    page = ccadgpu.parse_size(args.page_size, "--page-size")
    if size < 3 * page:
        from .errors import InvalidArgumentError
        raise InvalidArgumentError(f"--size {args.size!r} must hold at least 3 pages")
    checks: list[tuple[str, bool]] = []
    t0 = time.perf_counter()
    with ccadgpu.Space(device_memory="1MiB", host_memory="16MiB",
                       backend=args.backend) as warm:                      # JIT the kernels
        x = warm.zeros(1024)
        ccadgpu.ops.triad(x, x, x, 0.5)
        warm.device.offline()
    rows = {p: _demo_run(con, p, args.profile, size, page, args.seed, args.iters // 2,
                         args.iters, checks, args.backend)
            for p in ("static", "access_counter")}
    t = Table(title=f"throughput on {args.profile} (modeled) and here (wall)")
    for c in ("policy", "modeled ms", "GB/s", "migrated", "remote", "p99 us", "wall ms"):
        t.add_column(c, justify="right")
    for p, r in rows.items():
        t.add_row(p, f"{r['modeled_s'] * 1e3:.3f}", f"{r['throughput_gbps']:.1f}",
                  ccadgpu.format_bytes(r["migrated_bytes"]), f"{r['remote_fraction']:.0%}",
                  f"{r['epoch_p99_s'] * 1e6:.1f}", f"{r['wall_s'] * 1e3:.1f}")
    con.print(t)
    speed = rows["static"]["modeled_s"] / rows["access_counter"]["modeled_s"]
    con.print(f"access_counter vs static: {speed:.2f}x the modeled throughput")
    checks.append(("access_counter moved pages to the device",
                   rows["access_counter"]["migrated_bytes"] > 0))
    checks.append(("static moved nothing", rows["static"]["migrated_bytes"] == 0))
    for name, v in checks:
        con.print(f"  [{'green' if v else 'red'}]{'PASS' if v else 'FAIL'}[/] {name}")
    con.print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0 if all(v for _, v in checks) else 1


# -- bench --------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    import ccadgpu
    from rich.progress import Progress
    from rich.table import Table

    from ccadgpu.bench import SCHEMA, run_workload
    from ccadgpu.clock import available_profiles, load_profile
    from ccadgpu.policies import available_policies
    from ccadgpu.workloads import available_workloads
    con = _console()
    wls = _names(args.workload, available_workloads(), "workload")
    pols = _names(args.policy, available_policies(), "policy")
    profs = [p.strip() for p in args.profile.split(",")] if args.profile != "all" \
        else available_profiles()
    for p in profs:
        load_profile(p)                      # raises UnknownProfileError listing valid names
    size = ccadgpu.parse_size(args.size, "--size")
    if args.repeat < 1:
        from .errors import InvalidArgumentError
        raise InvalidArgumentError(f"--repeat must be >= 1, got {args.repeat}")
    from ccadgpu.tunables import Tunables
    tunables = dict(Tunables.parse(t) for t in args.tunable)
    if args.json:
        _writable(args.json, "--json")
    if args.plot:
        _writable(args.plot, "--plot")
        from .plot import require_matplotlib
        require_matplotlib()
    runs = []
    jobs = [(w, p, f, r) for w in wls for f in profs for p in pols for r in range(args.repeat)]
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("bench", total=len(jobs))
        for w, p, f, r in jobs:
            prog.update(task, description=f"{w} / {p} / {f}")
            runs.append(run_workload(w, p, f, size, args.seed, args.page_size,
                                     history=bool(args.plot), repeat=r,
                                     backend=args.backend, tunables=tunables))
            prog.advance(task)
    rows = [r.row for r in runs]
    t = Table(title=f"ccadgpu bench: {ccadgpu.format_bytes(size)}, seed {args.seed}")
    for c in ("workload", "profile", "policy", "ok", "modeled ms", "GB/s", "migrated",
              "remote", "thrash", "p50 us", "p99 us", "wall s"):
        t.add_column(c, justify="right")
    for row in rows:
        t.add_row(row["workload"], row["profile"], row["policy"],
                  "yes" if row["verified"] else "[red]NO[/]", f"{row['modeled_s'] * 1e3:.3f}",
                  f"{row['throughput_gbps']:.1f}", ccadgpu.format_bytes(row["migrated_bytes"]),
                  f"{row['remote_fraction']:.0%}", str(row["thrashing_pages"]),
                  f"{row['epoch_p50_s'] * 1e6:.1f}", f"{row['epoch_p99_s'] * 1e6:.1f}",
                  f"{row['wall_s']:.2f}")
    con.print(t)
    if args.json:
        doc = {"schema": SCHEMA, "ccadgpu": ccadgpu.__version__,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.system()} "
                          f"{platform.release()}",
               "command": " ".join(["ccadgpu"] + sys.argv[1:]), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        con.print(f"wrote {args.json} ({len(rows)} rows)")
    if args.plot:
        from .plot import bench_figure
        bench_figure(runs, args.plot)
        con.print(f"wrote {args.plot}")
    return 0 if all(r["verified"] for r in rows) else 1


# -- trace --------------------------------------------------------------------------------------------
def cmd_trace_record(args: argparse.Namespace) -> int:
    from ccadgpu.bench import run_workload
    from ccadgpu.workloads import get_workload
    get_workload(args.workload)
    _writable(args.output, "--output")
    run = run_workload(args.workload, "static", args.profile, args.size, args.seed,
                       args.page_size, keep_trace=True)
    run.trace.save(args.output)
    con = _console()
    s = run.trace.summary()
    con.print(f"recorded {args.workload} under static on {args.profile}: {s['epochs']} epochs, "
              f"{s['bytes']} bytes counted -> {args.output}")
    return 0 if run.row["verified"] else 1


def _tunable_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--tunable", action="append", default=[], metavar="NAME=VALUE",
                   help=f"{what} (repeatable; `ccadgpu info` lists them), e.g. "
                        "cpu_access=migrate_on_cpu_fault, a cuda space's default")


def cmd_trace_replay(args: argparse.Namespace) -> int:
    from rich.table import Table

    import ccadgpu
    from ccadgpu.errors import InvalidArgumentError
    from ccadgpu.policies import available_policies
    from ccadgpu.replay import recorded_cpu_access, replay
    if not os.path.isfile(args.file):
        raise InvalidArgumentError(f"trace file {args.file!r} does not exist")
    tr = ccadgpu.Trace.load(args.file)
    pols = _names(args.policy, available_policies(), "policy")
    from ccadgpu.tunables import Tunables
    # the knobs the manager decides by replay as recorded (how the CPU reached device pages
    # among them: a cuda space migrates them home) unless asked otherwise
    tunables = dict(Tunables.parse(x) for x in args.tunable)
    Tunables(**tunables)                    # a bad name or value raises here, before any replay
    con = _console()
    t = Table(title=f"replay of {args.file} ({len(tr)} epochs, cpu_access="
                    f"{tunables.get('cpu_access', recorded_cpu_access(tr))})")
    for c in ("policy", "profile", "modeled ms", "GB/s", "migrated", "remote", "p99 us"):
        t.add_column(c, justify="right")
    rows = []
    for p in pols:
        r = replay(tr, p, profile=args.profile, tunables=tunables)
        rows.append(r)
        t.add_row(p, r["profile"], f"{r['modeled_s'] * 1e3:.3f}", f"{r['throughput_gbps']:.1f}",
                  ccadgpu.format_bytes(r["migrated_bytes"]), f"{r['remote_fraction']:.0%}",
                  f"{r['epoch_p99_s'] * 1e6:.1f}")
    con.print(t)
    if args.json:
        _writable(args.json, "--json")
        with open(args.json, "w") as f:
            json.dump({"schema": "ccadgpu-replay/1", "trace": args.file, "rows": rows}, f,
                      indent=1, default=float)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ccadgpu import calibrate
    return int(calibrate.calibrate_cli(args) or 0)


# -- parser -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ccadgpu", description="Emulate a cache-coherent "
                                 "accelerator device on this machine and measure placement "
                                 "policies.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="version, backend and why, profiles, tunables")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="pages moving as counters fire, a device reset, throughput")
    p.add_argument("--size", default="24MiB", help="working set (default 24MiB)")
    p.add_argument("--page-size", default="64KiB")
    p.add_argument("--profile", default="h100-pcie")
    p.add_argument("--iters", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="cpu", choices=("cpu", "auto", "cuda"),
                   help="cpu (default: the stand-in), auto (a GPU when usable) or cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="workloads x policies x profiles: table, JSON, plot")
    p.add_argument("--workload", default="all", help="comma-separated names or 'all'")
    p.add_argument("--policy", default="all", help="comma-separated names or 'all'")
    p.add_argument("--profile", default="gh200,h100-pcie", help="comma-separated or 'all'")
    p.add_argument("--size", default="32MiB", help="working set per run")
    p.add_argument("--page-size", default="64KiB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="write every row (schema ccadgpu-bench/1)")
    p.add_argument("--plot", metavar="PATH.png", help="placement heatmaps + throughput chart")
    p.add_argument("--backend", default="cpu", choices=("cpu", "auto", "cuda"),
                   help="cpu (default), auto or cuda: where the workloads' memory and kernels "
                        "run (modeled times come from --profile either way)")
    _tunable_option(p, "a space tunable for every run")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("trace", help="record a workload's trace; replay it under policies")
    tsub = p.add_subparsers(dest="tcmd", required=True)
    r = tsub.add_parser("record", help="run a workload under static and save its trace")
    r.add_argument("--workload", required=True)
    r.add_argument("--output", "-o", required=True, metavar="FILE.npz")
    r.add_argument("--size", default="32MiB")
    r.add_argument("--page-size", default="64KiB")
    r.add_argument("--profile", default="gh200")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_trace_record)
    r = tsub.add_parser("replay", help="score policies on a recorded trace, no kernels run")
    r.add_argument("file")
    r.add_argument("--policy", default="all")
    r.add_argument("--profile", default=None, help="default: the recorded one")
    r.add_argument("--json", metavar="PATH")
    _tunable_option(r, "a tunable for the replays (default: the recorded cpu_access)")
    r.set_defaults(func=cmd_trace_replay)

    from .calibrate import build_parser as calibrate_parser
    p = calibrate_parser(sub.add_parser("calibrate", help="measure a GPU's bandwidths into a "
                                        "profile (needs the CUDA backend)"))
    p.set_defaults(func=cmd_calibrate)
    return ap


def main(argv: list[str] | None = None) -> int:
    from .errors import CcadError
    args = build_parser().parse_args(argv)
    try:
        if args.func is not cmd_calibrate:
            _common(args)
        return int(args.func(args))
    except CcadError as exc:
        print(f"ccadgpu: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:            # unwritable output, a full disk, a vanished file
        print(f"ccadgpu: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ccadgpu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
