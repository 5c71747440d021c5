"""Device reset drill (R1a): the device may be taken out of service at any moment, and no byte
may be lost.  Data sits on the device, a reset evacuates it (every copy verified), wipes the
device memory and brings the device back; the arrays keep their addresses and contents; work
goes on.  Pinned device pages refuse an offline, with a report that names the array.

    python examples/device_reset.py [--mib 32]
"""
import argparse
import zlib

import numpy as np

import ccadgpu
from ccadgpu import ops
from ccadgpu.errors import DeviceOfflineError, OfflineRefusedError

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--mib", type=int, default=32, help="MiB per array (32)")
args = ap.parse_args()
n = (args.mib << 20) // 8


def crc(a: np.ndarray) -> int:
    return zlib.crc32(np.asarray(a))            # zero-copy through the buffer protocol


with ccadgpu.Space(device_memory=f"{4 * args.mib}MiB", page_size="64KiB", profile="gh200",
                   policy="access_counter") as sp:
    rng = np.random.default_rng(0)
    x = sp.asarray(rng.standard_normal(n), placement="device", name="x")
    y = sp.zeros(n, placement="device", name="y")
    ops.axpy(2.0, x, y)                         # y = 2x, on the device
    addr = x.__array_interface__["data"][0]
    before = {k: crc(v) for k, v in (("x", x), ("y", y))}
    print(f"on the device: {sp.stats()['nr_pages_device']} pages "
          f"({2 * args.mib} MiB of x and y)")

    @sp.device.on_reset                         # a library can re-prime its caches here
    def _after(rep):
        print(f"  on_reset callback: {rep.pages} pages came back")

    rep = sp.device.reset()                     # offline (evacuate, verified), wipe, online
    print(f"reset: evacuated {rep.pages} pages, {rep.bytes / 2**20:.0f} MiB in "
          f"{rep.seconds * 1e3:.1f} ms ({rep.gbps:.1f} GB/s), fence {rep.fence_seconds * 1e3:.2f} ms")
    assert {k: crc(v) for k, v in (("x", x), ("y", y))} == before, "a byte was lost"
    assert x.__array_interface__["data"][0] == addr and (sp.placement(x) == 0).all()
    print("every byte intact, same addresses, all pages on the host now")

    ops.axpy(1.0, x, y)                         # work goes on: y = 3x
    assert np.allclose(y, 3.0 * np.asarray(x))

    # Pinned pages cannot be evacuated: offline is refused before anything moves
    buf = sp.zeros(n // 4, placement="device", pinned=True, name="dma_buffer")
    try:
        sp.device.offline()
        raise SystemExit("offline should have been refused")
    except OfflineRefusedError as exc:
        print(f"offline refused: {exc.report.reason}; arrays: {exc.report.refused_arrays}")
    assert sp.device.state == "online"
    sp.unpin(buf)
    rep = sp.device.offline()
    print(f"after unpin: offline evacuated {rep.pages} pages (the buffer, and what "
          f"access_counter had moved back since the reset); device is {sp.device.state}")
    try:
        ops.axpy(1.0, x, y)
    except DeviceOfflineError as exc:
        print(f"a launch while offline is refused: {exc}")
    total = float(np.sum(y))                    # the CPU still has all the data
    sp.device.online()
    ops.axpy(-3.0, x, y)                        # y = 0
    assert np.allclose(y, 0.0) and np.isfinite(total)
    s = sp.stats()
    print(f"stats: device_reset={s.get('device_reset', 0):.0f}, "
          f"device_offline={s.get('device_offline', 0):.0f}, pgevacuate={s.get('pgevacuate', 0):.0f}")
    print("ok")
