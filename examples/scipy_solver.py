"""The thread's first use case: a scientific library handed arrays it did not allocate.

Unmodified ``scipy.sparse.linalg.cg`` solves a 2-D Poisson problem.  The matrix is held in a
space and wrapped by ``ccadgpu.scipy.aslinearoperator``: every mat-vec runs on the device
(``ccadgpu.ops.spmv_csr``), while SciPy's dot products and vector updates run on the CPU.  The
same solve runs under each placement policy; the table shows what the manager did: where the
matrix ended up, how many bytes it moved (matrix vs vectors), modeled time on the machine
profile and wall time here.  A good policy moves the matrix to the device once and leaves the
vectors alone; a fault-driven one ping-pongs them.

    python examples/scipy_solver.py [--grid 96] [--profile h100-pcie] [--policies ...]
"""
import argparse
import time

import numpy as np
import scipy.sparse as sps
import scipy.sparse.linalg as spla

import ccadgpu
import ccadgpu.scipy

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--grid", type=int, default=96, help="grid side: grid**2 unknowns (96)")
ap.add_argument("--profile", default="h100-pcie", help="machine profile (h100-pcie)")
ap.add_argument("--policies", default="static,on_demand,access_counter,autonuma",
                help="comma-separated policies")
ap.add_argument("--rtol", type=float, default=1e-8)
args = ap.parse_args()

# An ordinary SciPy Poisson matrix (5-point Laplacian) and right-hand side
g = args.grid
T = sps.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(g, g))
A = (sps.kron(sps.eye(g), T) + sps.kron(T, sps.eye(g))).tocsr()
b = np.random.default_rng(0).standard_normal(g * g)
t0 = time.perf_counter()
x_ref, info = spla.cg(A, b, rtol=args.rtol, maxiter=20 * g)
print(f"Poisson {g}x{g} ({g * g} unknowns, {A.nnz} nonzeros); plain SciPy: "
      f"{'converged' if info == 0 else f'info={info}'} in {time.perf_counter() - t0:.2f} s")

rows = []
for policy in args.policies.split(","):
    with ccadgpu.Space(device_memory="256MiB", profile=args.profile, policy=policy) as sp:
        op = ccadgpu.scipy.aslinearoperator(A, space=sp)     # CSR copied into the space once
        matrix = {sp.allocation_of(m).id for m in (op.indptr, op.indices, op.data)}
        moved = {"matrix": 0, "vectors": 0}

        def on_move(vpns, src, target):                      # split moved bytes by owner
            mine = np.isin(sp.pt.alloc[vpns], list(matrix))
            moved["matrix"] += int(mine.sum()) * sp.page_size
            moved["vectors"] += int((~mine).sum()) * sp.page_size
        sp.migrate_listeners.append(on_move)

        t0 = time.perf_counter()
        x, info = spla.cg(op, b, rtol=args.rtol, maxiter=20 * g)   # unmodified SciPy
        sp.sync()
        wall = time.perf_counter() - t0
        pages = np.concatenate([sp.placement(m) for m in (op.indptr, op.indices, op.data)])
        rows.append((policy, info, op.matvecs, wall, sp.clock.elapsed,
                     moved["matrix"], moved["vectors"], int((pages == 1).sum()), len(pages),
                     float(np.abs(x - x_ref).max())))
        assert info == 0, f"{policy}: cg did not converge (info={info})"
        assert np.allclose(x, x_ref, rtol=1e-6, atol=1e-8), f"{policy}: another solution"

print(f"\nprofile {args.profile}; modeled = kernels + CPU work on managed memory + migrations + faults")
print(f"{'policy':15s} {'matvecs':>7s} {'wall s':>7s} {'modeled ms':>10s} {'matrix MiB':>10s} "
      f"{'vector MiB':>10s} {'matrix on dev':>13s} {'max|x-x_ref|':>12s}")
for pol, info, mv, wall, modeled, mm, vm, dev, tot, err in rows:
    print(f"{pol:15s} {mv:7d} {wall:7.2f} {modeled * 1e3:10.2f} {mm / 2**20:10.1f} "
          f"{vm / 2**20:10.1f} {f'{dev}/{tot} pages':>13s} {err:12.1e}")
print("ok")
