"""ccadgpu.scipy: unmodified SciPy solvers with the mat-vec on the device (issue 8)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E

sps = pytest.importorskip("scipy.sparse")
spla = pytest.importorskip("scipy.sparse.linalg")
cscipy = pytest.importorskip("ccadgpu.scipy")


def poisson(g: int):
    T = sps.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(g, g))
    return (sps.kron(sps.eye(g), T) + sps.kron(T, sps.eye(g))).tocsr()


def test_import_ccadgpu_does_not_import_scipy():
    code = "import sys, ccadgpu; assert 'scipy' not in sys.modules, 'scipy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("solver", ["cg", "bicgstab", "gmres", "minres"])
def test_unmodified_solvers_converge_to_the_plain_solution(solver):
    A = poisson(16)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    kw = {"rtol": 1e-10, "maxiter": 2000}
    ref, info = getattr(spla, solver)(A, b, **kw)
    assert info == 0
    with ccadgpu.Space(device_memory="16MiB", policy="access_counter") as sp:
        op = cscipy.aslinearoperator(A, space=sp)
        x, info = getattr(spla, solver)(op, b, **kw)
        assert info == 0 and op.matvecs > 0
        np.testing.assert_allclose(x, ref, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(A @ x, b, rtol=1e-6, atol=1e-7)


def test_matvec_runs_on_the_device_and_results_stay_managed():
    A = poisson(20)
    v = np.random.default_rng(1).standard_normal(A.shape[0])
    with ccadgpu.Space(device_memory="16MiB") as sp:
        op = cscipy.aslinearoperator(A, space=sp)
        launches = sp.stats().get("kernel_launches", 0)
        y = op.matvec(v)
        assert isinstance(y, ccadgpu.ManagedArray) and y.space is sp
        assert sp.stats()["kernel_launches"] == launches + 1
        assert sp.device.last_launch.kernel == "spmv_csr"
        np.testing.assert_allclose(np.asarray(y), A @ v)
        y2 = op @ v.reshape(-1, 1)                       # column vectors, LinearOperator API
        assert y2.shape == (A.shape[0], 1)
        np.testing.assert_allclose(np.asarray(y2)[:, 0], A @ v)
        assert not np.shares_memory(y, op.matvec(v))      # every product is new memory
        # a managed operand of the same space is used in place, not staged
        mv = sp.asarray(v)
        np.testing.assert_allclose(np.asarray(op.matvec(mv)), A @ v)
        # the adjoint has its own CSR on the device
        B = sps.random(30, 20, density=0.2, random_state=2, format="csr")
        opb = cscipy.aslinearoperator(B, space=sp)
        u = np.arange(30.0)
        np.testing.assert_allclose(np.asarray(opb.rmatvec(u)), B.T @ u)
        np.testing.assert_allclose(np.asarray(opb.H.matvec(u)), B.T @ u)


def test_matrix_already_in_the_space_is_used_in_place():
    A = poisson(16)
    with ccadgpu.Space(device_memory="16MiB") as sp:
        arrs = [sp.register(a) for a in (A.indptr, A.indices, A.data)]
        op = cscipy.aslinearoperator((*arrs, A.shape))
        assert op.data is arrs[2] and op.space is sp
        v = np.ones(A.shape[0])
        np.testing.assert_allclose(np.asarray(op.matvec(v)), A @ v)
        # SciPy's constructor keeps indptr but copies indices and data even with copy=False
        # (its _prune_array copies arrays that look like a slice of a larger buffer)
        Am = sps.csr_array((arrs[2], arrs[1], arrs[0]), shape=A.shape, copy=False)
        with pytest.raises(E.ForeignArrayError, match="space="):
            cscipy.aslinearoperator(Am)
        np.testing.assert_allclose(np.asarray(cscipy.aslinearoperator(Am, space=sp).matvec(v)),
                                   A @ v)


def test_bad_input_raises_and_allocates_nothing():
    A = poisson(8)
    with ccadgpu.Space(device_memory="16MiB") as sp:
        n0 = sp.stats()["nr_allocations"]
        with pytest.raises(E.ForeignArrayError, match="space="):
            cscipy.aslinearoperator(A)
        with pytest.raises(E.InvalidArgumentError, match="sparse"):
            cscipy.aslinearoperator(A.toarray(), space=sp)
        with pytest.raises(E.InvalidArgumentError, match="complex"):
            cscipy.aslinearoperator(A.astype(np.complex128), space=sp)
        with pytest.raises(E.ForeignArrayError):
            cscipy.aslinearoperator((A.indptr, A.indices, A.data, A.shape))
        with pytest.raises(E.InvalidArgumentError, match="CSR tuple"):
            cscipy.aslinearoperator((A.indptr, A.indices), space=sp)
        assert sp.stats()["nr_allocations"] == n0
        op = cscipy.aslinearoperator(A, space=sp)
        with pytest.raises(ValueError, match="dimension mismatch"):
            op.matvec(np.ones(3))
        with pytest.raises(E.InvalidArgumentError, match="complex"):
            op.matvec(np.ones(A.shape[0], complex))


def test_access_counter_keeps_the_matrix_on_the_device_and_the_vectors_still():
    A = poisson(32)
    b = np.random.default_rng(3).standard_normal(A.shape[0])
    with ccadgpu.Space(device_memory="16MiB", profile="h100-pcie",
                       policy="access_counter") as sp:
        op = cscipy.aslinearoperator(A, space=sp)
        matrix = {sp.allocation_of(m).id for m in (op.indptr, op.indices, op.data)}
        moved = {"matrix": 0, "vectors": 0}

        def on_move(vpns, src, target):
            mine = np.isin(sp.pt.alloc[vpns], list(matrix))
            moved["matrix"] += int(mine.sum())
            moved["vectors"] += int((~mine).sum())
        sp.migrate_listeners.append(on_move)
        x, info = spla.cg(op, b, rtol=1e-8, maxiter=2000)
        sp.sync()
        assert info == 0 and op.matvecs > 50
        assert (sp.placement(op.data) == 1).all() and (sp.placement(op.indices) == 1).all()
        # no ping-pong: the matrix moved once; vector pages not every iteration (the staged
        # operand may bounce a few times while the thrash back-off doubles: log-bounded)
        assert moved["matrix"] <= 2 * sum(len(sp.placement(m)) for m in
                                          (op.indptr, op.indices, op.data))
        assert moved["vectors"] <= 2 * (np.log2(op.matvecs) + 1)
