"""Numba kernels of the CPU stand-in device.

Each kernel works in place on plain 1-D (or 2-D for the stencil) C-contiguous views of managed
memory; :mod:`ccadgpu.ops` does the validation.  Kernels whose accesses depend on data (gather,
scatter, the ``x`` of CSR mat-vec) take ``count`` and build a per-page histogram of those
accesses inside the kernel, one row per chunk of work so that threads never share a counter; the
caller sums the rows (``nch`` chunks: pass ``numba.get_num_threads()``; reading it inside a
kernel would defeat the compile cache).  With ``count=False`` the same kernel skips the histogram (this is the
"plain kernel" the benchmarks compare against).  A page of an access to element ``j`` is
``(off0 + j * itemsize) // page`` (a shift by ``shift`` when the page size is a power of two),
``off0`` being element 0's offset in the first page.

The number of compiled signatures is kept small: one per dtype of the data arrays (and of the
index arrays for the indexed kernels).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange

_JIT = dict(cache=True, parallel=True, nogil=True, fastmath=False, boundscheck=False)


@nb.njit(inline="always", cache=True, nogil=True)
def _page(off0, j, itemsize, page, shift):  # pragma: no cover - compiled
    """Page (relative to the array's first) of element j: a shift when the page size is a power
    of two (``shift >= 0``), else a division."""
    if shift >= 0:
        return (off0 + j * itemsize) >> shift
    return (off0 + j * itemsize) // page


# -- streaming ---------------------------------------------------------------------------------
@nb.njit(**_JIT)
def copy(dst, src):  # pragma: no cover - compiled
    """dst[i] = src[i]"""
    for i in prange(dst.size):
        dst[i] = src[i]


@nb.njit(**_JIT)
def scale(dst, src, alpha):  # pragma: no cover - compiled
    """dst[i] = alpha * src[i]"""
    for i in prange(dst.size):
        dst[i] = alpha * src[i]


@nb.njit(**_JIT)
def axpy(y, alpha, x):  # pragma: no cover - compiled
    """y[i] = alpha * x[i] + y[i]"""
    for i in prange(y.size):
        y[i] = alpha * x[i] + y[i]


@nb.njit(**_JIT)
def triad(a, b, c, alpha):  # pragma: no cover - compiled
    """a[i] = b[i] + alpha * c[i]  (STREAM triad)"""
    for i in prange(a.size):
        a[i] = b[i] + alpha * c[i]


# -- reductions ------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def sum_float(x):  # pragma: no cover - compiled
    """sum of x, accumulated in float64"""
    s = 0.0
    for i in prange(x.size):
        s += x[i]
    return s


@nb.njit(**_JIT)
def sum_int(x):  # pragma: no cover - compiled
    """sum of x, accumulated in int64 (wraps like NumPy's int64 sum)"""
    s = 0
    for i in prange(x.size):
        s += x[i]
    return s


@nb.njit(**_JIT)
def dot_float(x, y):  # pragma: no cover - compiled
    """sum of x[i] * y[i], accumulated in float64"""
    s = 0.0
    for i in prange(x.size):
        s += x[i] * y[i]
    return s


@nb.njit(**_JIT)
def dot_int(x, y):  # pragma: no cover - compiled
    """sum of x[i] * y[i], accumulated in int64"""
    s = 0
    for i in prange(x.size):
        s += x[i] * y[i]
    return s


# -- stencil ---------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def stencil5(out, inp, cc, cn):  # pragma: no cover - compiled
    """2-D 5-point stencil with clamped (replicated) edges, as Rodinia's hotspot treats them:
    out[i, j] = cc * inp[i, j] + cn * (inp[i-1, j] + inp[i+1, j] + inp[i, j-1] + inp[i, j+1])"""
    n, m = inp.shape
    for i in prange(n):
        im = i - 1 if i > 0 else 0
        ip = i + 1 if i < n - 1 else n - 1
        if m == 1:
            out[i, 0] = cc * inp[i, 0] + cn * (inp[im, 0] + inp[ip, 0] + inp[i, 0] + inp[i, 0])
            continue
        out[i, 0] = cc * inp[i, 0] + cn * (inp[im, 0] + inp[ip, 0] + inp[i, 0] + inp[i, 1])
        for j in range(1, m - 1):
            out[i, j] = cc * inp[i, j] + cn * (inp[im, j] + inp[ip, j] + inp[i, j - 1]
                                               + inp[i, j + 1])
        out[i, m - 1] = cc * inp[i, m - 1] + cn * (inp[im, m - 1] + inp[ip, m - 1]
                                                   + inp[i, m - 2] + inp[i, m - 1])


# -- indexed ---------------------------------------------------------------------------------------
# The histogram runs block by block *after* the block's accesses rather than fused into the same
# loop: a fused read-modify-write of the histogram serialises the loop enough to cut the memory
# parallelism of the random accesses (measured: +16% for a 256 MiB gather fused, ~0% blocked).
_BLOCK = 2048


@nb.njit(**_JIT)
def gather(out, src, idx, count, off0, itemsize, page, shift, npages,
           nch):  # pragma: no cover - compiled
    """out[i] = src[idx[i]]; with ``count``, returns per-chunk page histograms of src accesses"""
    n = idx.size
    hist = np.zeros((nch, npages if count else 1), np.int64)
    for c in prange(nch):
        lo = c * n // nch
        hi = (c + 1) * n // nch
        if count:
            h = hist[c]
            for b0 in range(lo, hi, _BLOCK):
                b1 = min(b0 + _BLOCK, hi)
                for i in range(b0, b1):
                    out[i] = src[idx[i]]
                for i in range(b0, b1):
                    h[_page(off0, idx[i], itemsize, page, shift)] += 1
        else:
            for i in range(lo, hi):
                out[i] = src[idx[i]]
    return hist


@nb.njit(**_JIT)
def scatter(dst, idx, src, count, off0, itemsize, page, shift, npages,
            nch):  # pragma: no cover - compiled
    """dst[idx[i]] = src[i]; with ``count``, returns per-chunk page histograms of dst accesses.
    Duplicate indices race (which write wins is unspecified), as on a GPU."""
    n = idx.size
    hist = np.zeros((nch, npages if count else 1), np.int64)
    for c in prange(nch):
        lo = c * n // nch
        hi = (c + 1) * n // nch
        if count:
            h = hist[c]
            for b0 in range(lo, hi, _BLOCK):
                b1 = min(b0 + _BLOCK, hi)
                for i in range(b0, b1):
                    dst[idx[i]] = src[i]
                for i in range(b0, b1):
                    h[_page(off0, idx[i], itemsize, page, shift)] += 1
        else:
            for i in range(lo, hi):
                dst[idx[i]] = src[i]
    return hist


@nb.njit(**_JIT)
def spmv_csr(y, indptr, indices, data, x, count, off0, itemsize, page, shift, npages,
             nch):  # pragma: no cover - compiled
    """y = A @ x for A in CSR form (indptr, indices, data); with ``count``, returns per-chunk
    page histograms of the x accesses (one per nonzero)."""
    nrows = y.size
    hist = np.zeros((nch, npages if count else 1), np.int64)
    rows_per_block = 256
    for c in prange(nch):
        lo = c * nrows // nch
        hi = (c + 1) * nrows // nch
        h = hist[c]
        for r0 in range(lo, hi, rows_per_block):
            r1 = min(r0 + rows_per_block, hi)
            for r in range(r0, r1):
                s = 0.0
                for k in range(indptr[r], indptr[r + 1]):
                    s += data[k] * x[indices[k]]
                y[r] = s
            if count:
                for k in range(indptr[r0], indptr[r1]):
                    h[_page(off0, indices[k], itemsize, page, shift)] += 1
    return hist


# -- validation ------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def minmax(a, nch):  # pragma: no cover - compiled
    """(min, max) of a non-empty integer array"""
    n = a.size
    lo_v = np.empty(nch, np.int64)
    hi_v = np.empty(nch, np.int64)
    for c in prange(nch):
        lo = c * n // nch
        hi = (c + 1) * n // nch
        mn = a[0]
        mx = a[0]
        for i in range(lo, hi):
            v = a[i]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        lo_v[c] = mn
        hi_v[c] = mx
    return lo_v.min(), hi_v.max()
