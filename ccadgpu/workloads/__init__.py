"""The workload suite: access patterns that placement policies must handle, each a real run of
device kernels (:mod:`ccadgpu.ops`) and CPU work (NumPy on managed arrays) on a space, checked
against a NumPy reference at the end.

=================  ===========================================================================
``stream_once``    every page read once by the device (migration cannot pay off)
``stream_reuse``   STREAM triad over the same arrays, many times (migration pays off)
``hot_cold``       10% of an array is read every epoch, the rest once in a while
``random_gather``  uniform random gathers over a large table
``phase_change``   the hot quarter of an array moves every few epochs
``pingpong``       the device and the CPU take turns updating the same pages
``oversubscribe``  STREAM triad over a working set 1.5x the device capacity
``krylov``         conjugate gradients: SpMV on the device, dot products and updates on the CPU
``pipeline``       CPU produces, two device transforms, CPU consumes; batch after batch
=================  ===========================================================================

Each workload sizes its arrays from ``size`` (bytes of working set) and says how much device
memory its space should have (:attr:`Workload.device_bytes`): twice the working set, except
``oversubscribe``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .. import ops
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..space import Space


@dataclass(frozen=True)
class Workload:
    """A named access pattern: ``run(space, size, rng)`` returns True when every result equals
    its NumPy reference."""
    name: str
    description: str
    run: Callable[["Space", int, np.random.Generator], bool]
    device_ratio: float = 2.0       # device capacity / working set

    def device_bytes(self, size: int, page_size: int) -> int:
        return max(page_size * 4, int(size * self.device_ratio) // page_size * page_size)


WORKLOADS: dict[str, Workload] = {}


def _workload(name: str, description: str, device_ratio: float = 2.0):
    def deco(fn: Callable[["Space", int, np.random.Generator], bool]):
        WORKLOADS[name] = Workload(name, description, fn, device_ratio)
        return fn
    return deco


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise InvalidArgumentError(f"unknown workload {name!r}; available: "
                                   f"{', '.join(WORKLOADS)}")
    return WORKLOADS[name]


def available_workloads() -> list[str]:
    return list(WORKLOADS)


def _n(size: int, parts: int, itemsize: int = 8) -> int:
    return max(1024, size // parts // itemsize)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(np.asarray(a), b, rtol=1e-9, atol=1e-9))


@_workload("stream_once", "each page read once by the device, in 16 chunks")
def stream_once(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 2)
    ref = rng.standard_normal(n)
    a = sp.asarray(ref, name="in")
    b = sp.zeros(n, name="out")
    for c in np.array_split(np.arange(n), 16):
        ops.scale(b[c[0]: c[-1] + 1], a[c[0]: c[-1] + 1], 2.0)
    return _close(b, 2.0 * ref)


def _triad(sp: "Space", size: int, rng: np.random.Generator, times: int) -> bool:
    n = _n(size, 3)
    rb, rc = rng.standard_normal(n), rng.standard_normal(n)
    a, b, c = sp.zeros(n, name="a"), sp.asarray(rb, name="b"), sp.asarray(rc, name="c")
    for _ in range(times):
        ops.triad(a, b, c, 0.5)
    return _close(a, rb + 0.5 * rc)


@_workload("stream_reuse", "STREAM triad a = b + 0.5 c over the same arrays, 16 times")
def stream_reuse(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    return _triad(sp, size, rng, 16)


@_workload("hot_cold", "10% of an array summed every epoch, all of it every 8th epoch")
def hot_cold(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 1)
    ref = rng.standard_normal(n)
    x = sp.asarray(ref, name="x")
    hot = slice(0, n // 10)
    ok = True
    for e in range(32):
        s = ops.sum(x) if e % 8 == 7 else ops.sum(x[hot])
        want = ref.sum() if e % 8 == 7 else ref[hot].sum()
        ok &= bool(np.isclose(s, want, rtol=1e-9, atol=1e-6))
    return ok


@_workload("random_gather", "uniform random gathers from a table, 16 times")
def random_gather(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 1) * 3 // 4
    m = max(1024, n // 16)
    ref = rng.standard_normal(n)
    src = sp.asarray(ref, name="table")
    out = sp.zeros(m, name="out")
    idx = sp.empty(m, np.int64, name="idx")
    ok = True
    for _ in range(16):
        ri = rng.integers(0, n, m)
        np.asarray(idx)[:] = ri          # the index comes from elsewhere: not CPU work we model
        ops.gather(out, src, idx)
        ok &= bool(np.array_equal(np.asarray(out), ref[ri]))
    return ok


@_workload("phase_change", "the device reads one quarter of an array for 8 epochs, then the next")
def phase_change(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 1)
    ref = rng.standard_normal(n)
    x = sp.asarray(ref, name="x")
    q = n // 4
    ok = True
    for phase in range(4):
        sl = slice(phase * q, (phase + 1) * q)
        for _ in range(8):
            ok &= bool(np.isclose(ops.sum(x[sl]), ref[sl].sum(), rtol=1e-9, atol=1e-6))
    return ok


@_workload("pingpong", "the device scales shared pages, then the CPU updates them; 16 rounds")
def pingpong(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 1)
    ref = rng.standard_normal(n)
    s = sp.asarray(ref, name="shared")
    for _ in range(16):
        ops.scale(s, s, 0.5)
        ref = ref * 0.5
        s += 1.0                          # CPU: a counted read-modify-write of every page
        ref = ref + 1.0
    return _close(s, ref)


@_workload("oversubscribe", "STREAM triad over a working set 1.5x the device, 8 times",
           device_ratio=1 / 1.5)
def oversubscribe(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    return _triad(sp, size, rng, 8)


def _laplacian(g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of the 2-D 5-point Laplacian on a g x g grid (SPD), built vectorised."""
    n = g * g
    i = np.arange(n)
    r, c = i // g, i % g
    rows = [i, i[r > 0], i[r < g - 1], i[c > 0], i[c < g - 1]]
    cols = [i, i[r > 0] - g, i[r < g - 1] + g, i[c > 0] - 1, i[c < g - 1] + 1]
    vals = [np.full(n, 4.0)] + [np.full(len(x), -1.0) for x in rows[1:]]
    R, C, V = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((C, R))
    R, C, V = R[order], C[order], V[order]
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum(np.bincount(R, minlength=n))
    return indptr, C.astype(np.int64), V


@_workload("krylov", "conjugate gradients, 12 iterations: SpMV on the device, dots on the CPU")
def krylov(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    # CSR (~ 5 nnz x 16 B per row) + 4 vectors (32 B per row): ~ 112 B per row
    g = max(16, int(np.sqrt(size / 112)))
    indptr, indices, data = _laplacian(g)
    n = g * g
    A = (sp.asarray(indptr, name="indptr"), sp.asarray(indices, name="indices"),
         sp.asarray(data, name="data"))
    b = rng.standard_normal(n)
    x, r, p, Ap = (sp.zeros(n, name=k) for k in ("x", "r", "p", "Ap"))
    r[:] = b
    p[:] = b
    rr = float(np.dot(r, r))
    # the same iteration in plain NumPy/SciPy-free CSR, for the reference
    xr, rref, pref = np.zeros(n), b.copy(), b.copy()
    rrr = float(rref @ rref)
    for _ in range(12):
        ops.spmv_csr(Ap, *A, p)                       # device
        alpha = rr / float(np.dot(p, Ap))             # CPU
        x += alpha * p
        r -= alpha * Ap
        rr_new = float(np.dot(r, r))
        p *= rr_new / rr
        p += r
        rr = rr_new
        apr = np.add.reduceat(data * pref[indices], indptr[:-1])
        ar = rrr / float(pref @ apr)
        xr += ar * pref
        rref -= ar * apr
        rn = float(rref @ rref)
        pref = rref + (rn / rrr) * pref
        rrr = rn
    return _close(x, xr)


@_workload("pipeline", "CPU produces, device scales then accumulates, CPU consumes; 8 batches")
def pipeline(sp: "Space", size: int, rng: np.random.Generator) -> bool:
    n = _n(size, 3)
    a, b, c = sp.zeros(n, name="produced"), sp.zeros(n, name="stage1"), sp.zeros(n, name="out")
    ok = True
    for _ in range(8):
        batch = rng.standard_normal(n)
        a[:] = batch                      # CPU produces
        ops.scale(b, a, 2.0)              # device transform 1
        ops.copy(c, b)                    # device transform 2 (c = b) ...
        ops.axpy(1.0, a, c)               # ... then c += a: 3 * batch
        ok &= bool(np.isclose(float(np.sum(c)), 3.0 * batch.sum(), rtol=1e-9, atol=1e-6))
    return ok
