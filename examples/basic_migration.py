"""One address, two nodes: allocate on the host, move pages to the device and back.

    python examples/basic_migration.py
"""
import numpy as np

import ccadgpu

with ccadgpu.Space(device_memory="64MiB", page_size="64KiB") as sp:
    a = sp.asarray(np.arange(4 << 20, dtype=np.float32))      # 16 MiB, on the host
    view = np.asarray(a)                                         # zero-copy
    print("pages:", len(sp.placement(a)), "on nodes", np.unique(sp.placement(a)))
    r = sp.move_pages(a, "device")
    print(r)
    assert view[123456] == 123456.0                             # same address, same bytes
    r = sp.move_pages(a, "host", pages=np.arange(0, 256, 2))
    print("now on:", np.bincount(sp.placement(a)))
    print({k: v for k, v in sp.stats().items() if k.startswith("pgmigrate")})
