"""The ``ccadgpu`` command: ``info`` and ``demo``."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _console():
    from rich.console import Console
    return Console(highlight=False)


def cmd_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    import ccadgpu
    from ccadgpu import _sys
    con = _console()
    con.print(f"ccadgpu {ccadgpu.__version__}")
    con.print("backend: cpu (CPU stand-in: memfd arenas remapped in place; "
              "the CUDA backend is not built yet)")
    con.print(f"OS page {_sys.OS_PAGE} B, vm.max_map_count {_sys.max_map_count()}")
    with ccadgpu.Space(device_memory=args.device_memory, page_size=args.page_size) as sp:
        t = Table(title="nodes")
        for c in ("id", "name", "capacity", "frames"):
            t.add_column(c)
        for n in sp.node_info():
            t.add_row(str(n.id), n.name, ccadgpu.format_bytes(n.capacity), str(n.frames))
        con.print(t)
        t = Table(title="tunables")
        for c in ("name", "value", "meaning"):
            t.add_column(c)
        for name, val, doc in sp.tunables.describe():
            t.add_row(name, str(val), doc)
        con.print(t)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Allocate, migrate both ways, check every byte, and print throughput."""
    import ccadgpu
    con = _console()
    size = ccadgpu.parse_size(args.size, "--size")
    checks: list[tuple[str, bool]] = []
    with ccadgpu.Space(device_memory=size + (4 << 20), page_size=args.page_size) as sp:
        rng = np.random.default_rng(args.seed)
        ref = rng.integers(0, 2**62, size // 8, dtype=np.int64)
        a = sp.asarray(ref, name="demo")
        con.print(f"allocated {ccadgpu.format_bytes(a.nbytes)} on the host: "
                  f"{len(sp.placement(a))} pages of {ccadgpu.format_bytes(sp.page_size)}")
        view = np.asarray(a)
        checks.append(("np.asarray is zero-copy", np.shares_memory(view, a)))
        r1 = sp.move_pages(a, "device")
        con.print(f"host -> device: {r1.pages_moved} pages, {r1.seconds * 1e3:.1f} ms, "
                  f"{r1.gbps:.2f} GB/s")
        checks.append(("all pages on the device", bool((sp.placement(a) == 1).all())))
        checks.append(("same bytes at the same address", bool(np.array_equal(view, ref))))
        half = np.arange(0, len(sp.placement(a)), 2)
        r2 = sp.move_pages(a, "host", pages=half)
        con.print(f"every other page back to the host: {r2.pages_moved} pages, "
                  f"{r2.gbps:.2f} GB/s")
        view[::1000] += 1
        ref[::1000] += 1
        checks.append(("writes after migration land", bool(np.array_equal(view, ref))))
        sp.pin(a[: 1 << 10])
        r3 = sp.move_pages(a, "device")
        checks.append(("pinned page refused with -EBUSY", r3.errors().get("EBUSY", 0) == 1))
        dst = np.full_like(ref, 1)        # pre-faulted, as the device arena is
        t = time.perf_counter()
        np.copyto(dst, ref)
        t_copy = time.perf_counter() - t
        con.print(f"np.copyto of the same bytes: {a.nbytes / t_copy / 1e9:.2f} GB/s "
                  f"(migration/copy = {t_copy / r1.seconds:.2f})")
        st = sp.stats()
        con.print(f"pgmigrate_success={st['pgmigrate_success']} "
                  f"pgmigrate_fail={st['pgmigrate_fail']}")
    ok = all(v for _, v in checks)
    for name, v in checks:
        con.print(f"  [{'green' if v else 'red'}]{'PASS' if v else 'FAIL'}[/] {name}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ccadgpu", description="Emulate a cache-coherent "
                                 "accelerator device on this machine.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="version, backend, nodes and tunables")
    p.add_argument("--device-memory", default="256MiB")
    p.add_argument("--page-size", default="64KiB")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="a short end-to-end run with checks")
    p.add_argument("--size", default="64MiB")
    p.add_argument("--page-size", default="64KiB")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    from .errors import CcadError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CcadError as exc:
        print(f"ccadgpu: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
