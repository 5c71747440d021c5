"""The thread's first use case: a scientific library handed arrays it did not allocate.

A conjugate-gradient solver written for plain NumPy (it never heard of ccadgpu) gets managed
arrays; its mat-vec runs on the device (ccadgpu.ops.spmv_csr), its dot products and vector
updates on the CPU through ordinary NumPy calls, which the array protocols count as CPU
traffic.  The access-counter policy moves the matrix to the device and leaves the vectors the
CPU keeps touching where the profile says they belong.

    python examples/krylov_library.py
"""
import numpy as np

import ccadgpu
from ccadgpu import ops
from ccadgpu.workloads import _laplacian


def cg(matvec, b, x, iters):
    """Textbook CG in plain NumPy: any array type that supports the array protocols works."""
    r = b - matvec(x)
    p = r.copy()
    rr = float(np.dot(r, r))
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / float(np.dot(p, ap))
        x += alpha * p
        r -= alpha * ap
        rr_new = float(np.dot(r, r))
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, np.sqrt(rr)


with ccadgpu.Space(device_memory="256MiB", profile="h100-pcie", policy="access_counter") as sp:
    indptr, indices, data = _laplacian(512)                   # 262,144 unknowns
    A = [sp.asarray(v) for v in (indptr, indices, data)]
    n = len(indptr) - 1
    b = np.ones(n)
    x = sp.zeros(n)
    p_dev, ap = sp.zeros(n), sp.zeros(n)

    def matvec(v):
        p_dev[:] = v                                          # CPU writes the operand ...
        ops.spmv_csr(ap, *A, p_dev)                           # ... the device multiplies
        return ap

    x, res = cg(matvec, b, x, 50)
    sp.sync()
    ref, _ = cg(lambda v: np.add.reduceat(data * v[indices], indptr[:-1]), b, np.zeros(n), 50)
    print(f"residual after 50 iterations: {res:.3e}; same iterate as plain NumPy: "
          f"{np.allclose(np.asarray(x), ref)}")
    for name, arr in zip(("indptr", "indices", "data"), A):
        print(f"{name:8s} pages on device: {int((sp.placement(arr) == 1).sum())}/"
              f"{len(sp.placement(arr))}")
    s = sp.manager.summary()
    print(f"modeled {s['modeled_s'] * 1e3:.2f} ms, remote share {s['remote_fraction']:.0%}, "
          f"migrated {s['migrated_bytes'] >> 20} MiB")
