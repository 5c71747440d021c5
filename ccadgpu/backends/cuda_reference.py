"""NumPy reference of what every device op computes and counts.

The instrumented kernels in ``ccadgpu/kernels/cuda`` count memory traffic per page as the CPU
stand-in does (:mod:`ccadgpu.counters`): every byte of a dense operand once per launch, and
``itemsize`` bytes per access of an indexed operand (gather's source, scatter's destination,
SpMV's x).  This module spells that out by brute force, one element at a time, so that tests
can compare a kernel's counters with ``np.bincount`` of the addresses it must have touched, and
its results with NumPy.  It is slow on purpose (it materialises every access) and meant for
test-sized inputs.

Arrays are given as for :func:`ccadgpu.backends.cuda_kernels.plan` (outputs first); NumPy or
CuPy arrays both work (values are fetched to the host where needed, addresses are read from the
array interface).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .cuda_kernels import COUNT_MODES, INDEXED_OPERANDS, OPS, array_address

__all__ = ["expected_counts", "expected_result", "to_numpy", "CountRef"]


def to_numpy(a: Any) -> np.ndarray:
    """Host copy (or view) of a NumPy or CuPy array."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if callable(get):
        return np.asarray(get())
    return np.asarray(a)


class CountRef:
    """Accumulates reference per-page byte counts for one range ``[base, base + npages <<
    shift)``; accesses outside it are not counted (as in the kernels)."""

    def __init__(self, base: int, shift: int, npages: int, op: str = "", mode: str = "all"):
        self.base, self.shift, self.npages = int(base), int(shift), int(npages)
        self.op, self.flags = op, COUNT_MODES[mode]
        self.rd = np.zeros(self.npages, np.uint64)
        self.wr = np.zeros(self.npages, np.uint64)

    def _add(self, out: np.ndarray, a: Any, elems: np.ndarray | None) -> None:
        itemsize = int(np.dtype(a.dtype).itemsize)
        n = int(np.prod(a.shape, dtype=np.int64)) if len(a.shape) else 1
        e = np.arange(n, dtype=np.int64) if elems is None else np.asarray(elems, np.int64).ravel()
        if e.size == 0:
            return
        addr = np.int64(array_address(a)) + e * itemsize - np.int64(self.base)
        ok = addr >= 0
        pages = addr[ok] >> self.shift
        pages = pages[pages < self.npages]
        out += (np.bincount(pages, minlength=self.npages).astype(np.uint64)
                * np.uint64(itemsize))

    def _wanted(self, name: str) -> bool:
        indexed = name in INDEXED_OPERANDS.get(self.op, ())
        return bool(self.flags & (2 if indexed else 1))

    def read(self, a: Any, elems: np.ndarray | None = None, name: str = "") -> None:
        """Count one load of each element ``elems`` (default: every element) of ``a``
        (operand ``name`` of the op, for the count mode)."""
        if self._wanted(name):
            self._add(self.rd, a, elems)

    def write(self, a: Any, elems: np.ndarray | None = None, name: str = "") -> None:
        """Count one store of each element ``elems`` (default: every element) of ``a``."""
        if self._wanted(name):
            self._add(self.wr, a, elems)


def _csr_positions(indptr: np.ndarray) -> np.ndarray:
    """Every k in [indptr[r], indptr[r+1]) for every row, in row order."""
    starts = indptr[:-1].astype(np.int64)
    lengths = np.diff(indptr.astype(np.int64))
    if lengths.size == 0 or lengths.sum() == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets, lengths)
            + np.repeat(starts, lengths))


def _same(a: Any, b: Any) -> bool:
    return array_address(a) == array_address(b) and a.nbytes == b.nbytes


def expected_counts(op: str, *arrays: Any, base: int, shift: int, npages: int,
                    mode: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(rd, wr) uint64 bytes per page that the instrumented ``op`` must report for these
    operands (arrays as :func:`~ccadgpu.backends.cuda_kernels.plan` takes them), counting
    ``mode`` (``"all"``, ``"dense"`` or ``"indexed"``) operands."""
    if op not in OPS:
        raise InvalidArgumentError(f"unknown device op {op!r}")
    ref = CountRef(base, shift, npages, op, mode)
    if op in ("copy", "scale"):
        y, x = arrays
        ref.read(x)
        ref.write(y)
    elif op == "axpy":
        y, x = arrays
        ref.read(x)
        if not _same(x, y):               # the very same array is read once
            ref.read(y)
        ref.write(y)
    elif op == "triad":
        a, b, c = arrays
        ref.read(b)
        if not _same(b, c):
            ref.read(c)
        ref.write(a)
    elif op == "sum":
        _out, x = arrays                  # the result is scratch: not counted
        ref.read(x)
    elif op == "dot":
        _out, x, y = arrays
        ref.read(x)
        if not _same(x, y):
            ref.read(y)
    elif op == "stencil5":
        out, inp = arrays                 # dense: the input once, whatever the neighbours
        ref.read(inp)
        ref.write(out)
    elif op == "gather":
        y, x, idx = arrays
        ref.read(idx)
        ref.read(x, to_numpy(idx), name="x")
        ref.write(y)
    elif op == "scatter":
        y, idx, x = arrays
        ref.read(idx)
        ref.read(x)
        ref.write(y, to_numpy(idx), name="y")
    elif op == "spmv":
        y, indptr, indices, data, x = arrays
        ip = to_numpy(indptr).astype(np.int64)
        pos = _csr_positions(ip)
        ref.read(indptr)
        ref.read(indices, pos)
        ref.read(data, pos)
        ref.read(x, to_numpy(indices).astype(np.int64)[pos], name="x")
        ref.write(y)
    return ref.rd, ref.wr


def expected_result(op: str, *arrays: Any, **scalars: Any) -> Any:
    """What ``op`` computes, from host copies of the inputs: the new value of the output array
    (a NumPy array), or a float for ``sum`` / ``dot`` (the amount added to ``out[0]``)."""
    h = [to_numpy(a) for a in arrays]
    if op == "copy":
        return h[1].copy()
    if op == "scale":
        dt = h[1].dtype
        return (dt.type(scalars["a"]) * h[1]).astype(dt)
    if op == "axpy":
        dt = h[1].dtype
        return (dt.type(scalars["a"]) * h[1] + h[0]).astype(dt)
    if op == "triad":
        dt = h[1].dtype
        return (h[1] + dt.type(scalars["s"]) * h[2]).astype(dt)
    if op == "sum":
        x = h[1]
        if x.dtype.kind == "i":
            return int(np.sum(x, dtype=np.int64))
        return float(np.sum(x, dtype=np.float64))
    if op == "dot":
        x, y = h[1].ravel(), h[2].ravel()
        if x.dtype.kind == "i":
            return int(np.dot(x.astype(np.int64), y.astype(np.int64)))
        return float(np.dot(x.astype(np.float64), y.astype(np.float64)))
    if op == "stencil5":
        inp = h[1]
        dt = inp.dtype
        cc = dt.type(scalars.get("center", 0.5))
        cn = dt.type(scalars.get("neighbor", 0.125))
        p = np.pad(inp, 1, mode="edge")                # an index past an edge reads the edge
        return (cc * inp + cn * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
                ).astype(dt)
    if op == "gather":
        return h[1][h[2]]
    if op == "scatter":
        y = h[0].copy()
        y[h[1]] = h[2]
        return y
    if op == "spmv":
        _y, indptr, indices, data, x = h
        pos = _csr_positions(indptr.astype(np.int64))
        rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr.astype(np.int64)))
        out = np.zeros(indptr.size - 1, np.float64)
        np.add.at(out, rows, data[pos].astype(np.float64) * x[indices[pos]].astype(np.float64))
        return out.astype(data.dtype)
    raise InvalidArgumentError(f"unknown device op {op!r}")
