"""Numba kernels of the CPU stand-in device.

Each kernel works in place on plain 1-D (or 2-D for the stencil) C-contiguous views of managed
memory; :mod:`ccadgpu.ops` validates the arguments, and the indexed kernels check their own
index values (``check``) before their first store.  The accesses that depend on data (gather,
scatter, the ``x`` of CSR mat-vec) are counted by :func:`page_histogram`, one pass over the
index array before the kernel runs that also checks it (the kernel then runs with
``check=False``): the launch's pages are then known before its kernel, so its faults can go
first.  Work is split into ``nch`` chunks (pass ``numba.get_num_threads()``; reading it inside
a kernel would defeat the compile cache).  A page of an access to element ``j`` is
``(off0 + j * itemsize) // page`` (a shift by ``shift`` when the page size is a power of two),
``off0`` being element 0's offset in the first page.

The number of compiled signatures is kept small: one per dtype of the data arrays (and of the
index arrays for the indexed kernels).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = dict(cache=True, parallel=True, nogil=True, fastmath=False, boundscheck=False)


@nb.njit(inline="always", cache=True, nogil=True)
def _page(off0, j, itemsize, page, shift):  # pragma: no cover - compiled
    """Page (relative to the array's first) of element j: a shift when the page size is a power
    of two (``shift >= 0``), else a division."""
    if shift >= 0:
        return (off0 + j * itemsize) >> shift
    return (off0 + j * itemsize) // page


@intrinsic
def _prefetch(typingctx, arr, i, write):  # pragma: no cover - compiled
    """Hint the CPU to fetch ``arr[i]`` into the caches (``llvm.prefetch``; never faults, no
    effect on results).  ``write`` must be a literal: 1 to prefetch for a store."""
    if not isinstance(write, types.IntegerLiteral):
        return None
    rw = write.literal_value

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]],
                                       wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(rw), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, i, write), codegen


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
# Each indexed kernel can check its indices itself, in a first parallel pass over the index
# array, and return before its first store if one is out of range (``check=True``).  The caller
# then raises with nothing written.  The pass is branch-free (an unsigned compare per index,
# OR-reduced), so it runs at the speed of reading the index array once.  When the launch is
# counted, the page histogram's pass checks instead (the same compare, one read of the index for
# both), before the launch's faults, its writer registration and its kernel.  Numba does not
# bounds-check, and an index array may change after its check (another thread storing into
# it), so the work loop tests every index again (a compare and a predictable branch on a value
# already loaded) and skips a bad one: no access outside the arrays, ever.
#
# Counting in that separate pass rather than in the kernel: a per-block histogram inside the
# kernel re-read each block of indices after its accesses; a counted launch cost 1.14-1.24x an
# uncounted one that way, and 0.88-0.91x with the pass ahead, which replaces the check's pass
# (benchmarks/bench_kernels.py, 256 MiB, 2026-12-07, 2 cores), and it gives the pages before
# the kernel runs.
#
# The random accesses are prefetched _AHEAD iterations early (the index is known that far
# ahead): each one misses the caches and, on 4 KiB pages, the TLB, and the out-of-order window
# alone overlaps too few of them.  Measured on 256 MiB (2 cores): gather and spmv_csr ~1.6x
# faster, on plain and on managed arrays alike; scatter ~1.1x faster on plain arrays, unchanged
# on managed ones (stores do not stall the way loads do).
_AHEAD = 64


@nb.njit(inline="always", cache=True, nogil=True)
def _any_outside(a, lo, hi, n):  # pragma: no cover - compiled
    """Whether any of a[lo:hi] is outside [0, n): negative values wrap to huge unsigned ones."""
    un = np.uint64(n)
    bad = False
    for i in range(lo, hi):
        bad |= np.uint64(a[i]) >= un
    return bad


@nb.njit(**_JIT)
def indices_ok(idx, n, nch):  # pragma: no cover - compiled
    """Whether every idx is in [0, n) (one parallel pass, ``nch`` chunks)."""
    m = idx.size
    bad = np.zeros(nch, np.bool_)
    for c in prange(nch):
        bad[c] = _any_outside(idx, c * m // nch, (c + 1) * m // nch, n)
    return not bad.any()


@nb.njit(**_JIT)
def page_histogram(idx, n, off0, itemsize, page, shift, npages, nch):  # pragma: no cover
    """Per-chunk page histograms of one access per idx (element idx[i] of an array of ``n``
    elements), built before a kernel runs so that its faults can go first.  Returns (hist,
    ok): ok is False when an index is outside [0, n) (such entries are not counted)."""
    m = idx.size
    hist = np.zeros((nch, npages), np.int64)
    bad = np.zeros(nch, np.bool_)
    un = np.uint64(n)
    for c in prange(nch):
        h = hist[c]
        b = False
        for i in range(c * m // nch, (c + 1) * m // nch):
            j = idx[i]
            if np.uint64(j) >= un:
                b = True
            else:
                h[_page(off0, j, itemsize, page, shift)] += 1
        bad[c] = b
    return hist, not bad.any()


@nb.njit(**_JIT)
def indptr_ok(indptr, nnz, nch):  # pragma: no cover - compiled
    """Whether a CSR row pointer starts at 0, never decreases and ends at ``nnz``."""
    nrows = indptr.size - 1
    if indptr[0] != 0 or indptr[nrows] != nnz:
        return False
    dec = np.zeros(nch, np.bool_)
    for c in prange(nch):
        d = False
        for r in range(c * nrows // nch, (c + 1) * nrows // nch):
            d |= indptr[r + 1] < indptr[r]
        dec[c] = d
    return not dec.any()


@nb.njit(cache=True, nogil=True)      # its callees run in parallel
def csr_status(indptr, indices, ncols, nch):  # pragma: no cover - compiled
    """0 if (indptr, indices) is a valid CSR structure with ``ncols`` columns; 1 if indptr does
    not start at 0, decreases or does not end at ``indices.size``; 2 if an index is outside
    [0, ncols)."""
    if not indptr_ok(indptr, indices.size, nch):
        return 1
    return 0 if indices_ok(indices, ncols, nch) else 2


def _indexed(scattering: bool):
    """The gather (a[i] = b[idx[i]]) or scatter (a[idx[i]] = b[i]) kernel ``(a, b, idx,
    check, nch)``: one loop, so that both guard every index the same way (``scattering`` is a
    constant to Numba: each kernel compiles without the other's branch)."""
    @nb.njit(**_JIT)
    def kernel(a, b, idx, check, nch):  # pragma: no cover - compiled
        n = idx.size
        size = a.size if scattering else b.size
        if check and not indices_ok(idx, size, nch):
            return 2
        un = np.uint64(size)
        bad = np.zeros(nch, np.bool_)
        for c in prange(nch):
            hi = (c + 1) * n // nch
            met = False
            for i in range(c * n // nch, hi):
                if i + _AHEAD < hi:
                    if scattering:
                        _prefetch(a, idx[i + _AHEAD], 1)
                    else:
                        _prefetch(b, idx[i + _AHEAD], 0)
                j = idx[i]
                if np.uint64(j) >= un:
                    met = True
                elif scattering:
                    a[j] = b[i]
                else:
                    a[i] = b[j]
            bad[c] = met
        return 3 if bad.any() else 0
    return kernel


_gather, _scatter = _indexed(False), _indexed(True)


def gather(out: np.ndarray, src: np.ndarray, idx: np.ndarray, check: bool, nch: int) -> int:
    """out[i] = src[idx[i]].  Returns a status: 0 done; with ``check``, 2 if an index is outside
    [0, src.size) (nothing was written); 3 if one was met anyway (changed since it was checked:
    that element was skipped, the others written)."""
    return _gather(out, src, idx, check, nch)


def scatter(dst: np.ndarray, idx: np.ndarray, src: np.ndarray, check: bool, nch: int) -> int:
    """dst[idx[i]] = src[i].  Returns a status as :func:`gather` does (indices in [0,
    dst.size)).  Duplicate indices race (which write wins is unspecified), as on a GPU."""
    return _scatter(dst, src, idx, check, nch)


@nb.njit(**_JIT)
def spmv_csr(y, indptr, indices, data, x, check, nch):  # pragma: no cover - compiled
    """y = A @ x for A in CSR form (indptr, indices, data).  Returns a status: with ``check``,
    :func:`csr_status`'s (nonzero: nothing was written); 3 if the structure was found broken
    anyway (changed since it was checked: those rows or nonzeros were skipped); else 0."""
    nrows = y.size
    if check:
        status = csr_status(indptr, indices, x.size, nch)
        if status != 0:
            return status
    nnz = indices.size
    un = np.uint64(x.size)
    bad = np.zeros(nch, np.bool_)
    for c in prange(nch):
        lo = c * nrows // nch
        hi = (c + 1) * nrows // nch
        kend = min(max(indptr[hi], 0), nnz)
        b = False
        for r in range(lo, hi):
            k0, k1 = indptr[r], indptr[r + 1]
            if k0 < 0 or k1 > nnz or k1 < k0:
                b = True
                continue
            s = 0.0
            for k in range(k0, k1):
                if k + _AHEAD < kend:
                    _prefetch(x, indices[k + _AHEAD], 0)
                j = indices[k]
                if np.uint64(j) < un:
                    s += data[k] * x[j]
                else:
                    b = True
            y[r] = s
        bad[c] = b
    return 3 if bad.any() else 0
