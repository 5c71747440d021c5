"""The CUDA kernels' logic, run on the CPU.

``tests/cuda_emu/emu.h`` emulates the bit of CUDA the kernels use (threads, blocks,
``__syncthreads``, ``__match_any_sync``, ``__shfl_down_sync``, atomics) with real threads, and
the unchanged ``ccadgpu/kernels/cuda/*.cu`` are compiled against it with the host C++ compiler.
Launch plans come from :func:`ccadgpu.backends.cuda_kernels.plan`, exactly as on a GPU, so these
tests check, without a GPU: every op's result against NumPy, every instrumented op's per-page
counts against the brute-force reference (:mod:`ccadgpu.backends.cuda_reference`), the warp
aggregation and the shared-memory page table (including its overflow path, with pages small
enough that a block touches more pages than the table holds), warp-uniform control flow (a
divergent collective would deadlock and fail the launch), and that the plain variants leave the
counters alone.  Timing, memory placement and the real compiler (NVRTC) are for the GPU tests.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from ccadgpu.backends import cuda_kernels as ck
from ccadgpu.backends.cuda_reference import expected_counts, expected_result
from ccadgpu.errors import InvalidArgumentError
from cuda_emu.harness import CXX, build, run


pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++/c++/clang++) "
                                "on PATH: cannot build the CPU emulation of the CUDA kernels")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return build(tmp_path_factory.mktemp("emu"))


class Arena:
    """One page-aligned host buffer standing in for a managed range; operands are carved out
    at arbitrary (element-aligned) offsets, so they straddle page boundaries."""

    def __init__(self, nbytes: int, shift: int):
        self.shift = shift
        ps = 1 << shift
        self.npages = -(-nbytes // ps)
        self._raw = np.zeros(self.npages * ps + ps, np.uint8)
        off = (-self._raw.ctypes.data) % ps
        self.buf = self._raw[off:off + self.npages * ps]
        self.base = self.buf.ctypes.data
        self.cursor = 0

    def take(self, shape, dtype, gap: int = 24) -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape))
        start = -(-(self.cursor + gap) // 8) * 8          # element-aligned, not page-aligned
        end = start + n * dt.itemsize
        assert end <= self.buf.size, "arena too small"
        self.cursor = end
        return self.buf[start:end].view(dt).reshape(shape)

    def counters(self, mode: str = "all") -> ck.PageCounters:
        return ck.PageCounters(np.zeros(self.npages, np.uint64), np.zeros(self.npages, np.uint64),
                               self.base, self.shift, mode)


def check(lib, op, arrays, scalars, arena, out_index=0, max_blocks=3, counted=True, rtol=1e-12,
          mode="all"):
    before = [a.copy() for a in arrays]
    want = expected_result(op, *before, **scalars)
    cnt = arena.counters(mode) if counted else None
    run(lib, ck.plan(op, *arrays, counters=cnt, max_blocks=max_blocks, **scalars))
    got = arrays[0][0] if op in ("sum", "dot") else arrays[out_index]
    if np.asarray(got).dtype.kind == "i":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol)
    if counted:
        rd, wr = expected_counts(op, *arrays, base=arena.base, shift=arena.shift,
                                 npages=arena.npages, mode=mode)
        np.testing.assert_array_equal(cnt.rd, rd, err_msg=f"{op}: bytes read per page")
        np.testing.assert_array_equal(cnt.wr, wr, err_msg=f"{op}: bytes written per page")
        assert rd.sum() + wr.sum() > 0
    return cnt


DTYPES = [np.float64, np.float32]
ALL_DTYPES = [np.float64, np.float32, np.int64, np.int32]


def _fill(rng, a):
    if a.dtype.kind == "i":
        a[...] = rng.integers(-1000, 1000, a.shape)
    else:
        a[...] = rng.standard_normal(a.shape)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shift", [12, 8])
def test_streaming_ops(emu, dtype, shift):
    rng = np.random.default_rng(1)
    n = 9000                                    # several tiles per block, a ragged last tile
    ar = Arena(6 * n * 8 + 4096, shift)
    x, y, z = (ar.take(n, dtype) for _ in range(3))
    for a in (x, y, z):
        _fill(rng, a)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    out = ar.take(1, np.int64 if np.dtype(dtype).kind == "i" else np.float64)
    for op, arrays, sc, oi in [("copy", (z, x), {}, 0), ("scale", (z, x), {"a": 3}, 0),
                               ("axpy", (z, x), {"a": -2}, 0),
                               ("triad", (z, x, y), {"s": 3}, 0)]:
        check(emu, op, arrays, sc, ar, oi, rtol=rtol)
    for op, arrays in [("sum", (out, x)), ("dot", (out, x, y))]:
        out[:] = 0
        check(emu, op, arrays, {}, ar, rtol=1e-10)


def test_same_array_operands_are_read_once(emu):
    """axpy(x, x), triad(a, b, b), dot(x, x): one distinct array is one read (traffic model)."""
    rng = np.random.default_rng(7)
    ar = Arena(1 << 17, 12)
    x, a = ar.take(5000, np.float64), ar.take(5000, np.float64)
    out = ar.take(1, np.float64)
    _fill(rng, x)
    check(emu, "axpy", (x, x), {"a": 2.0}, ar)
    check(emu, "triad", (a, x, x), {"s": 2.0}, ar)
    out[:] = 0
    cnt = check(emu, "dot", (out, x, x), {}, ar)
    assert cnt.rd.sum() == x.nbytes


def test_scale_in_place(emu):
    ar = Arena(1 << 16, 12)
    x = ar.take(3000, np.float64)
    x[:] = np.arange(3000)
    cnt = ar.counters()
    run(emu, ck.plan("scale", x, x, a=2.0, counters=cnt, max_blocks=2))
    np.testing.assert_array_equal(x, 2.0 * np.arange(3000))
    assert cnt.rd.sum() == cnt.wr.sum() == x.nbytes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 70), (3, 3), (1, 50), (50, 2), (9, 33)])
def test_stencil(emu, dtype, shape):
    rng = np.random.default_rng(2)
    ar = Arena(2 * shape[0] * shape[1] * 8 + 4096, 9)
    inp, out = ar.take(shape, dtype), ar.take(shape, dtype)
    inp[:] = rng.standard_normal(shape)
    cnt = check(emu, "stencil5", (out, inp), {"center": 0.5, "neighbor": 0.125}, ar,
                rtol=1e-12 if dtype == np.float64 else 1e-5)
    assert cnt.rd.sum() == inp.nbytes and cnt.wr.sum() == out.nbytes   # dense: once each


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("itype", [np.int64, np.int32])
@pytest.mark.parametrize("shift", [12, 6])   # 64 B pages: more pages per block than slots
def test_gather_scatter(emu, dtype, itype, shift):
    rng = np.random.default_rng(3)
    # 4 KiB pages: the page-indexed table; 64 B pages: the range has more pages than the
    # table's 4096 slots (hash mode), and each block touches more than fit (global fallback)
    n, m = (5000, 7000) if shift == 12 else (30000, 60000)
    ar = Arena((2 * m + 2 * n) * 8 + n * 8 + 8192, shift)
    x, y = ar.take(m, dtype), ar.take(n, dtype)
    idx = ar.take(n, itype)
    _fill(rng, x)
    idx[:] = rng.integers(0, m, n)
    check(emu, "gather", (y, x, idx), {}, ar)
    # scatter with unique targets, so the result is defined
    t = ar.take(m, dtype)
    t[:] = -1
    idx[:] = rng.permutation(m)[:n]
    check(emu, "scatter", (t, idx, y), {}, ar)


@pytest.mark.parametrize("mode", ["dense", "indexed"])
def test_count_modes(emu, mode):
    """"indexed" counts only the per-access operands (what the host cannot compute), "dense"
    only the swept ones; together they make "all"."""
    rng = np.random.default_rng(8)
    ar = Arena(1 << 18, 10)
    x, y = ar.take(6000, np.float64), ar.take(3000, np.float64)
    idx = ar.take(3000, np.int64)
    _fill(rng, x)
    idx[:] = rng.integers(0, 6000, 3000)
    cnt = check(emu, "gather", (y, x, idx), {}, ar, mode=mode)
    if mode == "indexed":
        assert cnt.wr.sum() == 0 and cnt.rd.sum() == 3000 * 8
    else:
        assert cnt.wr.sum() == y.nbytes and cnt.rd.sum() == idx.nbytes


def test_gather_clustered_indices(emu):
    """Many lanes of a warp on one page: the __match_any_sync aggregation path."""
    ar = Arena(1 << 19, 12)
    x = ar.take(4096, np.float64)
    y = ar.take(20000, np.float64)
    idx = ar.take(20000, np.int64)
    x[:] = np.arange(4096)
    idx[:] = (np.arange(20000) // 97) % 4096
    check(emu, "gather", (y, x, idx), {}, ar)


def _csr(rng, nrows, ncols, density, itype):
    mask = rng.random((nrows, ncols)) < density
    mask[::7] = False                          # empty rows
    mask[3, :] = True                          # one long row (several warp iterations)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(itype)
    indices = np.nonzero(mask)[1].astype(itype)
    return indptr, indices


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("itype", [np.int64, np.int32])
def test_spmv(emu, dtype, itype):
    rng = np.random.default_rng(4)
    nrows, ncols = 300, 200
    ip, ind = _csr(rng, nrows, ncols, 0.05, itype)
    nnz = ind.size
    ar = Arena((nrows + 1 + 2 * nnz + ncols + nrows) * 8 + 8192, 10)
    indptr, indices = ar.take(nrows + 1, itype), ar.take(nnz, itype)
    data, x, y = ar.take(nnz, dtype), ar.take(ncols, dtype), ar.take(nrows, dtype)
    indptr[:], indices[:] = ip, ind
    data[:] = rng.standard_normal(nnz)
    x[:] = rng.standard_normal(ncols)
    check(emu, "spmv", (y, indptr, indices, data, x), {}, ar,
          rtol=1e-10 if dtype == np.float64 else 1e-4)


def test_plain_variants_leave_counters_alone(emu):
    rng = np.random.default_rng(5)
    ar = Arena(1 << 17, 12)
    x, y = ar.take(4000, np.float64), ar.take(4000, np.float64)
    idx = ar.take(4000, np.int64)
    x[:] = rng.standard_normal(4000)
    idx[:] = rng.integers(0, 4000, 4000)
    for op, arrays in [("copy", (y, x)), ("gather", (y, x, idx))]:
        launch = ck.plan(op, *arrays, counters=None, max_blocks=2)
        assert launch.name.endswith("_plain")
        run(emu, launch)
    np.testing.assert_array_equal(y, x[idx])


def test_counters_accumulate_across_launches(emu):
    ar = Arena(1 << 16, 12)
    x, y = ar.take(2000, np.float64), ar.take(2000, np.float64)
    cnt = ar.counters()
    for _ in range(3):
        run(emu, ck.plan("copy", y, x, counters=cnt, max_blocks=2))
    assert cnt.rd.sum() == 3 * x.nbytes and cnt.wr.sum() == 3 * y.nbytes


def test_operand_outside_counted_range_is_refused():
    ar = Arena(1 << 14, 12)
    x = ar.take(100, np.float64)
    outside = np.zeros(100)
    with pytest.raises(InvalidArgumentError, match="outside the counted range"):
        ck.plan("copy", outside, x, counters=ar.counters())
    # in "indexed" mode only the indexed operand must be inside
    idx = np.zeros(100, np.int64)
    assert ck.plan("gather", outside, x, idx, counters=ar.counters("indexed")) is not None


def test_plan_validation():
    a, b = np.zeros(10), np.zeros(11)
    with pytest.raises(InvalidArgumentError, match="elements"):
        ck.plan("copy", a, b)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ck.plan("copy", a, np.zeros(10, np.float32))
    with pytest.raises(InvalidArgumentError, match="take"):
        ck.plan("copy", np.zeros(10, np.int8), np.zeros(10, np.int8))
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        ck.plan("copy", np.zeros(20)[::2], a)
    with pytest.raises(InvalidArgumentError, match="overlap"):
        buf = np.zeros(20)
        ck.plan("copy", buf[1:11], buf[0:10])
    with pytest.raises(InvalidArgumentError, match="not an integer"):
        ck.plan("scale", np.zeros(4, np.int64), np.zeros(4, np.int64), a=0.5)
    with pytest.raises(InvalidArgumentError, match="accumulator"):
        ck.plan("sum", np.zeros(1), np.zeros(4, np.int64))
    with pytest.raises(InvalidArgumentError, match="in place"):
        g = np.zeros((4, 4))
        ck.plan("stencil5", g, g)
    with pytest.raises(InvalidArgumentError, match="unknown device op"):
        ck.plan("fft", a)
    assert ck.plan("copy", np.zeros(0), np.zeros(0)) is None


@pytest.mark.parametrize("kind,ms,want_rc,want_count", [
    (0, 400, 0, 64),       # slow, not stuck: 400 ms is 8 of the emulation's 50 ms polls
    (1, 0, -1, None),      # a thread returns before __syncthreads
    (2, 0, -1, None),      # lane 0 of each warp skips a collective
])
def test_emulation_tells_deadlock_from_slowness(emu, kind, ms, want_rc, want_count):
    """The harness's deadlock verdict is what makes a divergent collective fail a test; it
    must come promptly for a real deadlock and never for a block that is merely slow."""
    import time
    out = np.zeros(1, np.int32)
    fn = emu.emu_emu_selftest
    fn.argtypes = [ctypes.c_uint] * 4 + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    t = time.monotonic()
    rc = fn(1, 1, 64, 1, kind, ms, out.ctypes.data)
    assert rc == want_rc
    if want_count is not None:
        assert out[0] == want_count
    assert time.monotonic() - t < 30, "the verdict must not wait for a fixed long timeout"


def _pages(ar, arr, idx):
    """Bytes per page of one access to each ``arr[idx]``."""
    addr = arr.ctypes.data + np.asarray(idx, np.int64) * arr.dtype.itemsize
    return np.bincount((addr - ar.base) >> ar.shift, minlength=ar.npages) * arr.dtype.itemsize


@pytest.mark.parametrize("itype", [np.int64, np.int32])
@pytest.mark.parametrize("variant", ["counted", "plain"])
def test_an_index_out_of_range_in_the_kernel_is_skipped_and_counted(emu, itype, variant):
    """The launcher checks indices before the launch; one changed since (another thread's
    store) is never followed by the kernel: it skips the access, counts nothing for it, and
    bumps ``bad`` (gather, scatter, SpMV; also an indptr that points past the nonzeros)."""
    rng = np.random.default_rng(11)
    n, m = 3000, 5000
    ar = Arena(1 << 19, 10)
    x, y, idx = ar.take(m, np.float64), ar.take(n, np.float64), ar.take(n, itype)
    bad = np.zeros(1, np.uint32)
    _fill(rng, x)
    idx[:] = rng.integers(0, m, n)
    wrong = rng.choice(n, 40, replace=False)
    idx[wrong[:20]] = -1 - rng.integers(0, 10**6, 20)
    idx[wrong[20:]] = m + rng.integers(0, 10**6, 20)
    good = np.ones(n, bool)
    good[wrong] = False
    y[:] = 7.0

    def cnt():
        return ar.counters("indexed") if variant == "counted" else None
    c = cnt()
    run(emu, ck.plan("gather", y, x, idx, counters=c, max_blocks=3, bad=bad))
    assert bad[0] == 1                                 # a flag: it cannot wrap
    np.testing.assert_array_equal(y[good], x[idx[good]])
    assert (y[~good] == 7.0).all()
    if c is not None:
        np.testing.assert_array_equal(c.rd, _pages(ar, x, idx[good]))
    # scatter: unique in-range targets, the wrong ones skipped
    t = ar.take(m, np.float64)
    t[:] = -1.0
    idx[good] = rng.permutation(m)[: good.sum()]
    bad[:] = 0
    c = cnt()
    run(emu, ck.plan("scatter", t, idx, y, counters=c, max_blocks=3, bad=bad))
    assert bad[0] == 1
    want = np.full(m, -1.0)
    want[idx[good]] = y[good]
    np.testing.assert_array_equal(t, want)
    if c is not None:
        np.testing.assert_array_equal(c.wr, _pages(ar, t, idx[good]))
    # SpMV: a bad column index, and the last row's end past nnz
    ip, ind = _csr(rng, 200, 300, 0.05, itype)
    nnz = ind.size
    indptr, indices = ar.take(201, itype), ar.take(nnz, itype)
    data, xs, ys = ar.take(nnz, np.float64), ar.take(300, np.float64), ar.take(200, np.float64)
    indptr[:], indices[:] = ip, ind
    data[:], xs[:] = rng.standard_normal(nnz), rng.standard_normal(300)
    k_bad = int(ip[3])                                 # in the long row
    indices[k_bad] = 300
    indptr[200] = np.iinfo(itype).max                  # far past the nonzeros: clamped
    bad[:] = 0
    c = cnt()
    run(emu, ck.plan("spmv", ys, indptr, indices, data, xs, counters=c, max_blocks=3, bad=bad))
    assert bad[0] == 1
    ok = np.ones(nnz, bool)
    ok[k_bad] = False
    rows = np.repeat(np.arange(200), np.diff(ip))
    want = np.bincount(rows[ok], weights=data[ok] * xs[indices[ok]], minlength=200)
    np.testing.assert_allclose(ys, want, rtol=1e-12, atol=1e-12)
    if c is not None:
        np.testing.assert_array_equal(c.rd, _pages(ar, xs, indices[ok]))
        bad[:] = 0                                     # dense counts: clamped to the arrays
        cd = ar.counters("dense")
        run(emu, ck.plan("spmv", ys, indptr, indices, data, xs, counters=cd, bad=bad))
        assert bad[0] == 1 and cd.rd.sum() == indptr.nbytes + indices.nbytes + data.nbytes


def test_the_bad_counter_is_checked():
    ar = Arena(1 << 14, 12)
    x, y = ar.take(10, np.float64), ar.take(10, np.float64)
    idx = ar.take(10, np.int64)
    with pytest.raises(InvalidArgumentError, match="bad must be a uint32"):
        ck.plan("gather", y, x, idx, bad=np.zeros(1, np.int64))
