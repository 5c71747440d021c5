"""Quickstart: a space, your NumPy array under management, unmodified NumPy on it, a device
kernel, where the pages went, and the numbers (bytes moved, modeled time).

    python examples/quickstart.py [--mib 16]
"""
import argparse

import numpy as np

import ccadgpu
from ccadgpu import ops

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--mib", type=int, default=16, help="size of each array in MiB (default 16)")
args = ap.parse_args()
n = (args.mib << 20) // 8

with ccadgpu.Space(device_memory="256MiB", page_size="64KiB", profile="gh200",
                   policy="access_counter") as sp:
    data = np.random.default_rng(0).standard_normal(n)   # an array you already have
    a = sp.register(data)                # its bytes are copied in once, onto the host node
    b = sp.zeros(n)
    view = np.asarray(a)                 # zero-copy: the same address (R6a)

    # Unmodified NumPy: ufuncs, reductions, np.* functions; new results stay in the space
    c = np.sqrt(a * a + 1.0)
    assert np.allclose(c, np.sqrt(data * data + 1.0)) and np.isclose(a.sum(), data.sum())
    print(f"c = np.sqrt(a * a + 1.0) is a {type(c).__name__} in the space: {c.space is sp}, "
          f"on node(s) {np.unique(sp.placement(c)).tolist()}")

    # Device kernels: every page access is counted; access_counter moves what the device uses
    for _ in range(8):
        ops.axpy(0.5, a, b)              # b += 0.5 a, on the device
    sp.sync()
    for name, x in (("a (read)", a), ("b (read + written)", b)):
        p = sp.placement(x)
        print(f"after 8 launches, {name}: {int((p == 1).sum())}/{len(p)} pages on the device")
    assert view.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    assert np.allclose(b, 4.0 * data)    # the CPU reads device pages coherently

    r = sp.move_pages(b, "host")         # explicit moves: move_pages(2)-style per-page status
    print(f"move b to the host: {r.pages_moved} pages, {r.bytes_moved >> 20} MiB, "
          f"modeled {r.modeled_seconds * 1e3:.3f} ms")
    s = sp.stats()
    print(f"migrated {s['pgmigrate_bytes'] / 2**20:.1f} MiB in {s['pgmigrate_success']:.0f} "
          f"pages; modeled time {sp.clock.elapsed * 1e3:.3f} ms "
          f"(kernels {sp.clock.by_kind['kernel'] * 1e3:.3f}, host "
          f"{sp.clock.by_kind['host'] * 1e3:.3f}, migration "
          f"{sp.clock.by_kind['migration'] * 1e3:.3f})")

    result = sp.unregister(b)            # back to plain NumPy memory, allocation freed
    assert type(result) is np.ndarray and np.allclose(result, 4.0 * data)
    print("ok")
