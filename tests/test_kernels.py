"""Device kernels (ccadgpu.ops and space.device.launch) against NumPy, on random data."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E
from ccadgpu import ops
from ccadgpu.launch import Indexed

N = 30_011          # not a multiple of anything: arrays end mid-page


@pytest.fixture
def sp():
    with ccadgpu.Space(device_memory="8MiB", host_memory="64MiB", page_size="16KiB") as s:
        yield s


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def managed(sp, a, placement="host"):
    return sp.asarray(a, placement=placement)


def rand(rng, n=N):
    return rng.standard_normal(n) + 3.0       # never zeros


# -- streaming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["host", "device"])
def test_copy_exact(sp, rng, placement):
    for src_np in (rand(rng), rng.integers(-2**62, 2**62, N, dtype=np.int64)):
        src = managed(sp, src_np, placement)
        dst = managed(sp, np.full(N, 7, src_np.dtype))
        assert ops.copy(dst, src) is dst
        assert np.array_equal(np.asarray(dst), src_np)


def test_scale_axpy_triad(sp, rng):
    x_np, y_np, z_np = rand(rng), rand(rng), rand(rng)
    x, y, z = managed(sp, x_np), managed(sp, y_np, "device"), managed(sp, z_np)
    out = sp.empty(N)
    ops.scale(out, x, 2.5)
    np.testing.assert_allclose(np.asarray(out), 2.5 * x_np, rtol=1e-15)
    ops.axpy(-1.25, x, y)
    np.testing.assert_allclose(np.asarray(y), -1.25 * x_np + y_np, rtol=1e-14)
    ops.triad(out, x, z, 3.0)
    np.testing.assert_allclose(np.asarray(out), x_np + 3.0 * z_np, rtol=1e-14)
    ops.scale(x, x, 0.5)                      # in place: the very same array is allowed
    np.testing.assert_allclose(np.asarray(x), 0.5 * x_np, rtol=1e-15)


def test_multidimensional_streaming(sp, rng):
    a_np = rng.standard_normal((37, 41)) + 1
    a, b = managed(sp, a_np), sp.empty((37, 41))
    ops.copy(b, a)
    assert np.array_equal(np.asarray(b), a_np)


# -- reductions -------------------------------------------------------------------------------------
def test_sum_dot(sp, rng):
    x_np, y_np = rand(rng), rand(rng)
    x, y = managed(sp, x_np), managed(sp, y_np, "device")
    s = ops.sum(x)
    assert isinstance(s, np.float64)
    assert s == pytest.approx(x_np.sum(), rel=1e-12)
    assert ops.dot(x, y) == pytest.approx(np.dot(x_np, y_np), rel=1e-12)
    i_np = rng.integers(-10**12, 10**12, N, dtype=np.int64)
    i = managed(sp, i_np)
    assert ops.sum(i) == i_np.sum()                     # exact for integers
    assert isinstance(ops.sum(i), np.int64)


# -- stencil ------------------------------------------------------------------------------------------
def stencil_ref(inp, cc, cn):
    p = np.pad(inp, 1, mode="edge")
    return cc * inp + cn * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])


@pytest.mark.parametrize("shape", [(67, 129), (1, 9), (9, 1), (1, 1)])
def test_stencil5(sp, rng, shape):
    inp_np = rng.random(shape) + 0.5
    inp, out = managed(sp, inp_np), sp.empty(shape)
    ops.stencil5(out, inp, 0.6, 0.1)
    np.testing.assert_allclose(np.asarray(out), stencil_ref(inp_np, 0.6, 0.1), rtol=1e-14)


# -- indexed ---------------------------------------------------------------------------------------------
def test_gather(sp, rng):
    src_np = rand(rng)
    idx_np = rng.integers(0, N, 12_345)               # duplicates included
    src, idx = managed(sp, src_np, "device"), managed(sp, idx_np)
    out = sp.empty(12_345)
    ops.gather(out, src, idx)
    assert np.array_equal(np.asarray(out), src_np[idx_np])


def test_scatter(sp, rng):
    dst_np = rand(rng)
    idx_np = rng.permutation(N)[:9_999]
    src_np = rand(rng, 9_999)
    dst, idx, src = managed(sp, dst_np), managed(sp, idx_np), managed(sp, src_np)
    ops.scatter(dst, idx, src)
    ref = dst_np.copy()
    ref[idx_np] = src_np
    assert np.array_equal(np.asarray(dst), ref)


def random_csr(rng, nrows, ncols, max_per_row=12):
    counts = rng.integers(0, max_per_row, nrows)
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    indices = rng.integers(0, ncols, indptr[-1]).astype(np.int64)
    data = rng.standard_normal(indptr[-1]) + 2.0
    return indptr, indices, data


def test_spmv_csr(sp, rng):
    nrows, ncols = 3_001, 4_093
    indptr, indices, data = random_csr(rng, nrows, ncols)
    x_np = rand(rng, ncols)
    dense = np.zeros((nrows, ncols))
    np.add.at(dense, (np.repeat(np.arange(nrows), np.diff(indptr)), indices), data)
    y = sp.empty(nrows)
    ops.spmv_csr(y, managed(sp, indptr), managed(sp, indices), managed(sp, data, "device"),
                 managed(sp, x_np))
    np.testing.assert_allclose(np.asarray(y), dense @ x_np, rtol=1e-12, atol=1e-12)


# -- the launch path -------------------------------------------------------------------------------------
def test_user_kernel_launch(sp, rng):
    import numba

    @numba.njit(nogil=True)
    def add_gathered(y, a, x, idx):
        for i in range(y.size):
            y[i] += a * x[idx[i]]

    x_np, y_np = rand(rng), rand(rng, 5000)
    idx_np = rng.integers(0, N, 5000)
    x, y, idx = managed(sp, x_np), managed(sp, y_np), managed(sp, idx_np)
    r = sp.device.launch(add_gathered, y, 2.0, x, idx,
                         reads=[y, idx, Indexed(x, idx)], writes=[y])
    np.testing.assert_allclose(np.asarray(y), y_np + 2.0 * x_np[idx_np], rtol=1e-14)
    assert r.kernel == "add_gathered" and r.wall_seconds > 0 and r.modeled_seconds > 0
    assert r.bytes_read == y.nbytes + idx.nbytes + 5000 * 8
    assert r.bytes_written == y.nbytes
    assert sp.device.last_launch is r and sp.trace[-1].kernel == "add_gathered"


def test_launch_refuses_undeclared_and_foreign(sp, rng):
    x = managed(sp, rand(rng))
    y = sp.empty(N)
    with pytest.raises(E.InvalidArgumentError, match="not declared"):
        sp.device.launch(lambda a, b: None, y, x, writes=[y])
    with pytest.raises(E.ForeignArrayError):
        sp.device.launch(lambda a: None, y, writes=[np.zeros(3)])
    with pytest.raises(E.InvalidArgumentError):
        sp.device.launch("not callable", y, writes=[y])
    with pytest.raises(E.InvalidArgumentError, match="out of range"):
        sp.device.launch(lambda *a: None, x, y, reads=[Indexed(x, np.array([0, N]))], writes=[y])


# -- bad input leaves everything unchanged ---------------------------------------------------------------------
def test_bad_input(sp, rng):
    x_np = rand(rng)
    x, y = managed(sp, x_np), managed(sp, x_np + 1)
    before = np.asarray(y).copy()
    launches = sp.stats().get("kernel_launches", 0)
    with ccadgpu.Space(device_memory="1MiB", host_memory="4MiB", page_size="16KiB") as other:
        z = other.asarray(x_np)
        with pytest.raises(E.ForeignArrayError):
            ops.copy(y, z)
    with pytest.raises(E.ForeignArrayError):
        ops.copy(y, x_np)                                   # plain NumPy
    with pytest.raises(E.InvalidArgumentError, match="dtype"):
        ops.copy(y, managed(sp, x_np.astype(np.float32)))
    with pytest.raises(E.InvalidArgumentError, match="shape"):
        ops.copy(y, managed(sp, rand(rng, 10)))
    with pytest.raises(E.InvalidArgumentError, match="C-contiguous"):
        ops.copy(y[::2], x[::2])
    with pytest.raises(E.InvalidArgumentError, match="overlaps"):
        ops.copy(y[1:], y[:-1])
    with pytest.raises(E.InvalidArgumentError, match="alpha"):
        ops.scale(y, x, "2")
    ints = managed(sp, np.arange(1, 11))
    with pytest.raises(E.InvalidArgumentError, match="not an integer"):
        ops.scale(ints, ints, 0.5)
    with pytest.raises(E.InvalidArgumentError, match="dtype"):
        ops.copy(managed(sp, np.ones(4, bool)), managed(sp, np.ones(4, bool)))
    out = sp.empty(3)
    with pytest.raises(E.InvalidArgumentError, match="out of range"):
        ops.gather(out, x, managed(sp, np.array([0, N, 1])))
    with pytest.raises(E.InvalidArgumentError, match="out of range"):
        ops.scatter(y, managed(sp, np.array([-1, 2, 3])), managed(sp, np.ones(3)))
    with pytest.raises(E.InvalidArgumentError, match="signed integer"):
        ops.gather(out, x, managed(sp, np.array([0.0, 1.0, 2.0])))
    with pytest.raises(E.InvalidArgumentError, match="indptr"):
        ops.spmv_csr(sp.empty(2), managed(sp, np.array([0, 2, 1])), managed(sp, np.array([0])),
                     managed(sp, np.ones(1)), x)
    with pytest.raises(E.InvalidArgumentError, match="2-D"):
        ops.stencil5(sp.empty(5), managed(sp, np.ones(5)))
    assert np.array_equal(np.asarray(y), before)
    assert sp.stats().get("kernel_launches", 0) == launches
    sp.free(x)
    with pytest.raises(E.FreedArrayError):
        ops.sum(x)


def _state(sp, *arrays):
    """What a refused launch must leave as it was: data, page table, counters, trace, stats."""
    return ([np.asarray(a).copy() for a in arrays], sp.pt.node.copy(), sp.pt.dup.copy(),
            sp.counters.totals(), len(sp.trace), sp.stats())


def _same_state(a, b):
    (da, *ra), (db, *rb) = a, b
    assert all(np.array_equal(x, y) for x, y in zip(da, db))
    assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])
    assert ra[2:] == rb[2:]


@pytest.mark.parametrize("counting", [True, False])
@pytest.mark.parametrize("itype", [np.int64, np.int32])
def test_indexed_kernels_check_indices_before_any_store(sp, rng, counting, itype):
    """The indexed kernels check their indices themselves (no separate pass before the
    launch): a bad one anywhere, even the very last, raises naming the range, with nothing
    written, counted or traced."""
    sp.tunables.access_counters = counting
    src, out = managed(sp, rand(rng)), managed(sp, rand(rng, 5_000))
    x, y = managed(sp, rand(rng)), managed(sp, rand(rng, 500))
    good = rng.integers(0, N, 5_000).astype(itype)
    indptr, indices, data = random_csr(rng, 500, N)
    bads = []
    for bad_at, bad in ((4_999, N), (0, -1), (2_500, N + 7)):
        idx_np = good.copy()
        idx_np[bad_at] = bad
        bads.append((bad, idx_np, managed(sp, idx_np)))
    before = _state(sp, src, out)
    for bad, idx_np, idx in bads:
        with pytest.raises(E.InvalidArgumentError, match=rf"ops.gather: idx out of range: "
                           rf"values {idx_np.min()}\.\.{idx_np.max()} \(1 outside, e.g. {bad}\), "
                           rf"valid 0\.\.{N - 1}; nothing was written"):
            ops.gather(out, src, idx)
        _same_state(before, _state(sp, src, out))
        with pytest.raises(E.InvalidArgumentError, match="ops.scatter: idx out of range"):
            ops.scatter(src, idx, out)
        _same_state(before, _state(sp, src, out))
    ix = indices.astype(itype)
    ix[-1] = N
    args = (managed(sp, indptr), managed(sp, ix), managed(sp, data), x)
    before = _state(sp, y)
    with pytest.raises(E.InvalidArgumentError, match=rf"indices out of range.*valid 0\.\.{N - 1}"):
        ops.spmv_csr(y, *args)
    _same_state(before, _state(sp, y))
    dip = indptr.copy()
    dip[250] = indptr[-1]                          # decreases in the middle
    assert dip[250] > dip[251]
    bad_ptrs = [managed(sp, ip) for ip in (indptr[::-1].copy(), indptr + 1, dip,
                                           np.concatenate(([0], indptr[1:] - 1)))]
    good_ix, dd = managed(sp, indices), managed(sp, data)
    before = _state(sp, y)
    for ip in bad_ptrs:
        with pytest.raises(E.InvalidArgumentError, match="indptr"):
            ops.spmv_csr(y, ip, good_ix, dd, x)
        _same_state(before, _state(sp, y))
    # and the same arrays with valid indices run
    ops.gather(out, src, managed(sp, good))
    assert np.array_equal(np.asarray(out), np.asarray(src)[good])


def test_bad_index_keeps_read_mostly_duplicates(sp, rng):
    """Writing drops read-mostly duplicates before a kernel runs, so when the written array has
    some, the indices are checked before the launch: a bad one still changes nothing."""
    dst, src = managed(sp, rand(rng)), managed(sp, rand(rng, 100))
    sp.advise(dst, read_mostly=True)
    sp.prefetch(dst, "device")
    assert (sp.pt.dup[sp._span_vpns(dst)[1]:sp._span_vpns(dst)[2]] >= 0).all()
    idx = managed(sp, np.append(np.arange(99), N))
    before = _state(sp, dst)
    with pytest.raises(E.InvalidArgumentError, match="ops.scatter: idx out of range"):
        ops.scatter(dst, idx, src)
    _same_state(before, _state(sp, dst))
    ops.scatter(dst, managed(sp, np.arange(100)), src)       # a good one collapses them
    assert np.array_equal(np.asarray(dst)[:100], np.asarray(src))
    assert (sp.pt.dup[sp._span_vpns(dst)[1]:sp._span_vpns(dst)[2]] < 0).all()


def test_launch_refused_while_device_offline(sp, rng):
    x, y = managed(sp, rand(rng)), managed(sp, rand(rng))
    before = np.asarray(y).copy()
    sp.device.offline()
    try:
        with pytest.raises(E.DeviceOfflineError):
            ops.copy(y, x)
        with pytest.raises(E.DeviceOfflineError):
            sp.device.launch(lambda: None)
    finally:
        sp.device.online()
    assert np.array_equal(np.asarray(y), before)
    ops.copy(y, x)
    assert np.array_equal(np.asarray(y), np.asarray(x))


def test_compile_cache_is_used(sp, rng, tmp_path):
    x = managed(sp, rand(rng))
    ops.sum(x)                     # compiled (or loaded) in this process, so the cache is warm
    code = textwrap.dedent("""
        import numpy as np, ccadgpu
        from ccadgpu.kernels import cpu
        with ccadgpu.Space(device_memory="1MiB", host_memory="4MiB", page_size="16KiB") as sp:
            ccadgpu.ops.sum(sp.asarray(np.arange(1.0, 100.0)))
        st = cpu.sum_float.stats
        print(sum(st.cache_hits.values()), sum(st.cache_misses.values()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120, check=True)
    hits, misses = map(int, out.stdout.split())
    assert hits == 1 and misses == 0, out.stdout + out.stderr


def test_import_does_not_load_numba():
    code = "import sys, ccadgpu, ccadgpu.ops; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_launch_writes_fence_migrations(sp, rng):
    """A launch is a writer for what it writes: migrations skip those pages (-EBUSY) while it
    runs, and pages it only reads may move under it (readers proceed)."""
    import errno
    x = managed(sp, rand(rng))
    y = managed(sp, rand(rng))
    seen = {}

    def kernel(yv, xv):
        seen["y"] = sp.move_pages(y, "device")
        seen["x"] = sp.move_pages(x, "device")
        yv[:] = xv

    sp.device.launch(kernel, y, x, reads=[x], writes=[y])
    assert np.all(seen["y"].status == -errno.EBUSY)
    assert seen["x"].ok
    assert np.array_equal(np.asarray(y), np.asarray(x))
    assert sp.move_pages(y, "device").ok                  # the writer has left


def test_launch_waits_for_inflight_migration(sp, rng):
    import threading
    x = managed(sp, rand(rng))
    y = managed(sp, rand(rng))
    ref = np.asarray(x).copy()
    ops.copy(y, x)                                        # compiled before the race
    state = {}

    def launch():
        ops.scale(y, x, 2.0)
        state["done_while_migrating"] = state.get("migrating", False)

    def hook(stage, k):
        if stage == "copy" and k == 0 and "t" not in state:
            state["migrating"] = True
            state["t"] = threading.Thread(target=launch)
            state["t"].start()
            state["t"].join(0.3)                          # it must be blocked on the writer fence
            state["alive_during_copy"] = state["t"].is_alive()
            state["migrating"] = False

    sp.migrator.fault_hook = hook
    try:
        r = sp.move_pages(y, "device")
    finally:
        sp.migrator.fault_hook = None
    state["t"].join(30)
    assert r.ok and state["alive_during_copy"] and not state["done_while_migrating"]
    assert np.array_equal(np.asarray(y), 2.0 * ref)      # the write landed after the move
    assert (sp.placement(y) == 1).all()
