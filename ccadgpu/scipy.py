"""SciPy interop: a sparse matrix held in a space as a ``scipy.sparse.linalg.LinearOperator``
whose mat-vec runs on the device.

>>> import numpy as np, scipy.sparse as sps, scipy.sparse.linalg as spla, ccadgpu
>>> import ccadgpu.scipy
>>> A = sps.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(1000, 1000), format="csr")
>>> with ccadgpu.Space(device_memory="64MiB", policy="access_counter") as sp:
...     op = ccadgpu.scipy.aslinearoperator(A, space=sp)     # the CSR arrays are copied in once
...     x, info = spla.cg(op, np.ones(1000), rtol=1e-10, maxiter=5000)
...     assert info == 0 and np.allclose(A @ x, 1.0)

Unmodified SciPy solvers call ``op.matvec(v)``: the operand is staged into a managed buffer
(a counted CPU write; skipped when ``v`` already is a C-contiguous managed vector of the same
space and dtype), :func:`ccadgpu.ops.spmv_csr` runs on the device, and the product comes back
as a **new** managed vector each call (solvers such as BiCGSTAB keep earlier products, so an
output buffer cannot be reused), allocated on the host like every result; the CPU's reads of it
(the solver's dot products and updates) are counted through the array protocols.  SciPy turns
``b`` and ``x0`` into plain arrays (``np.asarray``), so the solver's own vectors are ordinary host
memory outside the space: the space sees and prices the matrix, the staged operand and the
products.  Where pages live is the policy's business: under ``access_counter`` the matrix,
read by the device every iteration, moves to the device.

SciPy is imported when this module is (``import ccadgpu`` alone never imports it); install it
with ``pip install 'ccadgpu[scipy]'``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import scipy.sparse as _sps
    from scipy.sparse.linalg import LinearOperator as _LinearOperator
except ImportError as _exc:  # pragma: no cover - exercised only without SciPy
    raise ImportError("ccadgpu.scipy needs SciPy: pip install 'ccadgpu[scipy]'") from _exc

from . import ops
from .array import ManagedArray, buffer_of
from .errors import ForeignArrayError, InvalidArgumentError

if TYPE_CHECKING:
    from .space import Space

__all__ = ["DeviceCSROperator", "aslinearoperator"]


class DeviceCSROperator(_LinearOperator):
    """``A`` in CSR form, held in a space, as a SciPy ``LinearOperator`` whose ``matvec`` runs
    :func:`ccadgpu.ops.spmv_csr` on the device (see the module docs).  Build it with
    :func:`aslinearoperator`.

    ``indptr``, ``indices``, ``data``: the managed CSR arrays (one space); ``matvecs`` counts
    the device products run so far."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 shape: tuple[int, int]):
        super().__init__(dtype=data.dtype, shape=shape)
        self.indptr, self.indices, self.data = indptr, indices, data
        self.space: "Space" = buffer_of(data).space
        self.matvecs = 0
        self._x: ManagedArray | None = None        # staging buffer for plain operands
        self._t_op: DeviceCSROperator | None = None

    # SciPy's LinearOperator.matvec ends with np.asarray(y), which would hand the solver a plain
    # view of the product: its CPU reads would go uncounted.  Same checks, subclass kept.
    def matvec(self, x: Any) -> np.ndarray:
        """``A @ x`` on the device; ``x`` of shape ``(N,)`` or ``(N, 1)``, result likewise."""
        x = np.asanyarray(x)
        M, N = self.shape
        if x.shape not in ((N,), (N, 1)):
            raise ValueError(f"dimension mismatch: operator is {M}x{N}, vector has shape "
                             f"{x.shape}")
        y = self._matvec(x.reshape(N))
        return y.reshape(M, 1) if x.ndim == 2 else y

    def _operand(self, v: np.ndarray) -> np.ndarray:
        """``v`` as a managed C-contiguous vector of this space and the operator's dtype."""
        if v.dtype.kind == "c" and self.dtype.kind != "c":
            raise InvalidArgumentError(
                f"complex vector ({v.dtype}) for a real {self.dtype} operator: the device "
                "kernel multiplies real vectors; apply it to v.real and v.imag separately")
        buf = buffer_of(v)
        if buf is not None and buf.space is self.space and v.dtype == self.dtype \
                and v.flags.c_contiguous:
            return v
        if self._x is None:
            self._x = self.space.empty(self.shape[1], self.dtype, name="matvec_x")
        self._x[...] = v                        # a counted CPU write (ManagedArray protocols)
        return self._x

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        xs = self._operand(np.asanyarray(x))
        y = self.space.empty(self.shape[0], self.dtype, name="matvec_y")
        ops.spmv_csr(y, self.indptr, self.indices, self.data, xs)
        self.matvecs += 1
        return y

    def _adjoint_op(self) -> "DeviceCSROperator":
        # A^T (real data: the adjoint) as its own CSR, built and copied in on first use
        if self._t_op is None:
            d, i, p = (np.asarray(a) for a in (self.data, self.indices, self.indptr))
            at = _sps.csr_array((d, i, p), shape=self.shape).T.tocsr()
            self._t_op = _from_scipy(at, self.space)
        return self._t_op

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._adjoint_op()._matvec(x)

    def _adjoint(self) -> _LinearOperator:
        return self._adjoint_op()

    def __repr__(self) -> str:
        M, N = self.shape
        return (f"<{M}x{N} DeviceCSROperator, {len(self.indices)} nonzeros, {self.dtype}, "
                f"{self.matvecs} mat-vecs>")


def _managed_in(arrs: tuple, space: "Space | None") -> bool:
    bufs = [buffer_of(a) for a in arrs]
    if any(b is None for b in bufs):
        return False
    spaces = {id(b.space) for b in bufs}
    return len(spaces) == 1 and (space is None or bufs[0].space is space)


def _from_scipy(A: Any, space: "Space") -> DeviceCSROperator:
    A = A.tocsr()
    data = A.data if A.data.dtype.kind in "fc" else A.data.astype(np.float64)
    if data.dtype.kind == "c":
        raise InvalidArgumentError(f"complex matrices ({data.dtype}) are not supported by the "
                                   "device SpMV kernel")
    arrs = (A.indptr, A.indices, data)
    if not _managed_in(arrs, space):
        names = ("indptr", "indices", "data")
        made = []
        try:
            for a, n in zip(arrs, names):
                made.append(space.register(np.ascontiguousarray(a), name=f"csr_{n}"))
        except BaseException:
            for m in made:                  # nothing stays allocated when one fails
                space.free(m)
            raise
        arrs = tuple(made)
    return DeviceCSROperator(*arrs, shape=A.shape)


def aslinearoperator(A: Any, space: "Space | None" = None) -> DeviceCSROperator:
    """A ``LinearOperator`` for ``A`` whose mat-vec runs on the device of a space.

    ``A``: a SciPy sparse matrix or array (other formats are converted to CSR), or a tuple
    ``(indptr, indices, data, shape)`` of managed arrays of one space, used in place (no copy).
    A SciPy matrix whose arrays are all managed is used in place too; otherwise ``space`` is
    required and its arrays are copied into it once (:meth:`Space.register`; integer data
    becomes float64).  Note that SciPy's CSR constructor copies ``indices`` and ``data`` even
    with ``copy=False`` when they look like a slice of a larger buffer (``_prune_array``), which
    managed arrays do: to wrap arrays already in a space without a copy, use the tuple form.

    Raises ``ForeignArrayError`` when ``A`` is not in a space and no ``space`` is given,
    ``InvalidArgumentError`` for anything that is not a sparse matrix or a valid CSR tuple
    (complex matrices included); nothing stays allocated when it raises."""
    if isinstance(A, tuple):
        if len(A) != 4:
            raise InvalidArgumentError("aslinearoperator: a CSR tuple is (indptr, indices, "
                                       f"data, shape), got {len(A)} items")
        indptr, indices, data, shape = A
        if not all(isinstance(a, np.ndarray) for a in (indptr, indices, data)):
            raise InvalidArgumentError("aslinearoperator: indptr, indices and data must be "
                                       "arrays")
        if not _managed_in((indptr, indices, data), space):
            raise ForeignArrayError("aslinearoperator: the CSR arrays must be managed arrays of "
                                    "one space (space.register them), or pass a SciPy matrix "
                                    "with space=")
        try:
            shp = (int(shape[0]), int(shape[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise InvalidArgumentError(f"aslinearoperator: bad shape {shape!r}") from exc
        if len(indptr) != shp[0] + 1:
            raise InvalidArgumentError(f"aslinearoperator: indptr has {len(indptr)} entries "
                                       f"for {shp[0]} rows")
        if data.dtype.kind != "f":
            raise InvalidArgumentError(f"aslinearoperator: data must be real floating point, "
                                       f"got {data.dtype}")
        return DeviceCSROperator(indptr, indices, data, shp)
    if not _sps.issparse(A):
        raise InvalidArgumentError(f"aslinearoperator takes a SciPy sparse matrix or a CSR "
                                   f"tuple, got {type(A).__name__}")
    if A.ndim != 2:
        raise InvalidArgumentError(f"aslinearoperator: A must be 2-D, got {A.ndim}-D")
    csr = A.tocsr()
    if space is None:
        if not _managed_in((csr.indptr, csr.indices, csr.data), None):
            raise ForeignArrayError("aslinearoperator: A's arrays are not in a space; pass "
                                    "space= to copy them into one")
        space = buffer_of(csr.data).space
    return _from_scipy(csr, space)
