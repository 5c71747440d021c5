"""Unmodified NumPy on managed arrays (issue 8): same results as plain arrays, results stay in
the space, CPU traffic counted, register/unregister round trips, DLPack where honest."""
from __future__ import annotations

import copy
import gc
import pickle

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E
from ccadgpu.array import ManagedArray, buffer_of

N = 6000          # 48 KB of float64: above managed_results_min_bytes, below one 64 KiB page


@pytest.fixture
def sp():
    with ccadgpu.Space(device_memory="8MiB", host_memory="64MiB", page_size="64KiB") as s:
        yield s


def _pair(sp, shape=(N,), dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal(shape) * 10).astype(dtype)
    return sp.asarray(ref), ref


def _same(got, want):
    """Equal values, shapes, dtypes; any array result is either plain or really managed."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    if isinstance(got, ManagedArray):
        assert buffer_of(got) is not None, "a ManagedArray that is not in any space"
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)
    else:
        assert np.ndim(got) == 0 and type(got) is type(want), (type(got), type(want))
        np.testing.assert_equal(got, want)


OPS = {
    "add_scalar": lambda a, b: a + 1.5,
    "radd": lambda a, b: 2 - a,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (np.abs(b) + 1),
    "pow": lambda a, b: np.abs(a) ** 0.5,
    "compare": lambda a, b: a > b,
    "where": lambda a, b: np.where(a > 0, a, b),
    "sqrt": lambda a, b: np.sqrt(np.abs(a)),
    "exp_clip": lambda a, b: np.exp(np.clip(a, -5, 5)),
    "divmod": lambda a, b: np.divmod(a, 3.0),
    "modf": lambda a, b: np.modf(a),
    "astype_f32": lambda a, b: a.astype(np.float32),
    "astype_i": lambda a, b: a.astype(np.int64),
    "sum": lambda a, b: a.sum(),
    "np_sum": lambda a, b: np.sum(a),
    "mean_std": lambda a, b: (a.mean(), a.std()),
    "minmax": lambda a, b: (a.min(), np.max(a), a.argmax(), np.argmin(a)),
    "dot": lambda a, b: np.dot(a, b),
    "vdot_method": lambda a, b: a.dot(b),
    "matmul_vec": lambda a, b: a @ b,
    "norm": lambda a, b: np.linalg.norm(a),
    "cumsum": lambda a, b: np.cumsum(a),
    "cumsum_method": lambda a, b: a.cumsum(),
    "sort": lambda a, b: np.sort(a),
    "argsort": lambda a, b: a.argsort(kind="stable"),
    "unique": lambda a, b: np.unique(np.round(a)),
    "concat": lambda a, b: np.concatenate([a, b]),
    "stack": lambda a, b: np.stack([a, b]),
    "fancy": lambda a, b: a[np.arange(0, N, 3)],
    "mask": lambda a, b: a[a > 0],
    "take": lambda a, b: a.take(np.arange(N - 1, -1, -2)),
    "repeat": lambda a, b: a.repeat(2),
    "copy": lambda a, b: a.copy(),
    "np_copy": lambda a, b: np.copy(a),
    "flatten": lambda a, b: a.reshape(100, 60).T.flatten(),
    "ravel_copy": lambda a, b: a.reshape(100, 60).T.ravel(),
    "round": lambda a, b: a.round(2),
    "byteswap": lambda a, b: a.byteswap(),
    "nonzero": lambda a, b: np.nonzero(a > 5),
    "diff": lambda a, b: np.diff(a),
    "outer_small": lambda a, b: np.multiply.outer(a[:40], b[:40]),
    "reduce_axis": lambda a, b: a.reshape(60, 100).sum(axis=1),
    "reduce_axis0_big": lambda a, b: a.reshape(2, 3000).max(axis=0),
    "histogram": lambda a, b: np.histogram(a, bins=10),
    "percentile": lambda a, b: np.percentile(a, [5, 50, 95]),
    "interp": lambda a, b: np.interp(a, np.sort(b), np.arange(N, dtype=float)),
    "searchsorted": lambda a, b: np.sort(a).searchsorted(b),
    "compress": lambda a, b: a.compress(a > 1),
    "zeros_like": lambda a, b: np.zeros_like(a),
    "full_like": lambda a, b: np.full_like(a, 7.0),
    "linalg_solve": lambda a, b: np.linalg.solve(
        a[:900].reshape(30, 30) + 100 * np.eye(30), b[:30]),
    "eigh": lambda a, b: np.linalg.eigh((a[:1600].reshape(40, 40) + a[:1600].reshape(40, 40).T)
                                        )[0],
    "fft_abs": lambda a, b: np.abs(np.fft.rfft(a)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_numpy_ops_match_plain_arrays(sp, name):
    a, ra = _pair(sp, seed=1)
    b, rb = _pair(sp, seed=2)
    got = OPS[name](a, b)
    want = OPS[name](ra, rb)
    _same(got, want)
    np.testing.assert_array_equal(np.asarray(a), ra)      # operands untouched
    np.testing.assert_array_equal(np.asarray(b), rb)


def test_namedtuple_results_keep_their_fields(sp):
    a, ra = _pair(sp, (40, 40))
    s = a + a.T
    got = np.linalg.eigh(s)
    assert hasattr(got, "eigenvalues") and hasattr(got, "eigenvectors")
    np.testing.assert_allclose(np.asarray(got.eigenvalues), np.linalg.eigvalsh(ra + ra.T))


def test_in_place_and_out_arguments(sp):
    a, ra = _pair(sp)
    b, rb = _pair(sp, seed=3)
    a += b
    ra += rb
    np.multiply(a, 2.0, out=b)
    np.testing.assert_array_equal(np.asarray(a), ra)
    np.testing.assert_array_equal(np.asarray(b), ra * 2.0)
    out = np.empty(N)
    r = np.add(a, 1.0, out=out)          # a plain out stays the caller's plain array
    assert r is out and type(r) is np.ndarray
    a[::2] = 0.0
    ra[::2] = 0.0
    a[a > 5] = 5.0
    ra[ra > 5] = 5.0
    np.testing.assert_array_equal(np.asarray(a), ra)


def test_results_stay_managed_in_the_same_space(sp):
    a, _ = _pair(sp)
    b, _ = _pair(sp, seed=4)
    for r in (a + b, np.sqrt(np.abs(a)), a.copy(), np.concatenate([a, b]), a[a > -100],
              np.empty_like(a), np.sort(a), a.astype(np.float32), np.cumsum(a)):
        assert isinstance(r, ManagedArray) and r.space is sp
        assert not np.shares_memory(r, a)
        assert (sp.placement(r) == 0).all()           # ordinary allocation: on the host
    v = a[10:20]                                      # a view stays a (managed) view
    assert isinstance(v, ManagedArray) and np.shares_memory(v, a)
    assert isinstance(a.reshape(60, 100), ManagedArray)
    assert np.shares_memory(a.reshape(60, 100), a)
    assert type(a.sum()) is np.float64                # scalars stay scalars
    assert type(a[:10] + 1) is np.ndarray              # 80 bytes: below the threshold
    f = sp.register(np.asfortranarray(np.ones((100, 60))))
    assert (f * 2).flags.f_contiguous == (np.asfortranarray(np.ones((100, 60))) * 2
                                          ).flags.f_contiguous


def test_result_threshold_and_switch(sp):
    a, _ = _pair(sp)
    sp.tunables.managed_results_min_bytes = 0
    assert isinstance(a[:10] + 1, ManagedArray)
    sp.tunables.managed_results_min_bytes = 1 << 20
    assert type(a + 1) is np.ndarray
    sp.tunables.managed_results_min_bytes = 4096
    sp.tunables.managed_results = False
    assert type(a + 1) is np.ndarray and type(a.copy()) is np.ndarray
    with pytest.raises(E.InvalidTunableError):
        sp.tunables.managed_results_min_bytes = -1
    assert sp.tunables.managed_results_min_bytes == 4096


def test_results_are_freed_with_their_last_reference(sp):
    a, _ = _pair(sp)
    n0 = sp.stats()["nr_allocations"]
    for _ in range(50):
        r = a * 2.0
        r = r + 1.0
    del r
    gc.collect()
    assert sp.stats()["nr_allocations"] == n0


def test_host_full_results_fall_back_to_plain(sp):
    with ccadgpu.Space(device_memory="1MiB", host_memory="1MiB", page_size="64KiB") as s:
        a = s.asarray(np.ones(60000))                 # 480 KB of the 1 MiB host
        keep = s.empty(60000)                         # noqa: F841 - holds the rest
        r = a + 1.0
        assert type(r) is np.ndarray and (r == 2.0).all()
        assert s.stats()["results_unmanaged_host_full"] >= 1


def test_cpu_traffic_of_results_is_counted(sp):
    a, _ = _pair(sp)
    sp.sync()
    before = sp.stats()
    r = a * 3.0
    sp.sync()
    after = sp.stats()
    def delta(k):
        return after.get(k, 0) - before.get(k, 0)
    assert delta("access_bytes_cpu_read_local") >= a.nbytes
    assert delta("access_bytes_cpu_write_local") >= r.nbytes
    c = sp.counters.counts(r)                        # the result's own pages were written
    assert c[:, 0, 1].sum() >= r.nbytes


def test_bad_ufunc_calls_raise_numpys_error_and_allocate_nothing(sp):
    a, _ = _pair(sp)
    n0 = sp.stats()["nr_allocations"]
    with pytest.raises(ValueError):
        a + np.ones(7)                               # shapes do not broadcast
    with pytest.raises(TypeError):
        np.add(a, "x")
    with pytest.raises(Exception):
        np.add(a, 1.0, dtype=np.int32, casting="safe")
    gc.collect()
    assert sp.stats()["nr_allocations"] == n0


def test_asarray_is_zero_copy_and_device_pages_are_coherent(sp):
    a, ra = _pair(sp)
    v = np.asarray(a)
    assert type(v) is np.ndarray and v.__array_interface__["data"] == \
        a.__array_interface__["data"]
    sp.move_pages(a, "device")
    assert v.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    np.testing.assert_array_equal(v, ra)
    r = a * 2.0                                      # CPU work on device pages: remote, counted
    np.testing.assert_array_equal(np.asarray(r), ra * 2.0)


def test_pickle_and_copy_module(sp):
    a, ra = _pair(sp)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a)), ra)
    for c in (copy.copy(a), copy.deepcopy(a)):
        assert isinstance(c, ManagedArray) and not np.shares_memory(c, a)
        np.testing.assert_array_equal(np.asarray(c), ra)


# -- register / unregister ------------------------------------------------------------------
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.complex128, np.bool_])
def test_register_round_trips(sp, order, dtype):
    src = np.asarray(np.arange(3 * 1000).reshape(3, 1000) % 7, dtype=dtype, order=order)
    keep = src.copy(order="K")
    m = sp.register(src, name="mine")
    assert isinstance(m, ManagedArray) and m.space is sp
    assert m.shape == src.shape and m.dtype == src.dtype
    assert m.flags.c_contiguous == src.flags.c_contiguous
    assert m.flags.f_contiguous == src.flags.f_contiguous
    assert not np.shares_memory(m, src)
    np.testing.assert_array_equal(np.asarray(m), src)
    assert sp.allocation_of(m).name == "mine" and (sp.placement(m) == 0).all()
    m[0, 0] = 1                                      # no link either way
    np.testing.assert_array_equal(src, keep)
    back = sp.unregister(m)
    assert type(back) is np.ndarray and back.dtype == src.dtype
    assert back.flags.f_contiguous == src.flags.f_contiguous
    assert back[0, 0] == 1 and np.array_equal(back[1:], src[1:])
    with pytest.raises(E.FreedArrayError):
        sp.placement(m)


def test_register_views_memmaps_and_idempotence(sp, tmp_path):
    base = np.arange(10000, dtype=np.float64)
    view = base[::3]                                 # only the view's elements are copied
    m = sp.register(view)
    assert m.nbytes == view.nbytes and m.flags.c_contiguous
    np.testing.assert_array_equal(np.asarray(m), view)
    assert sp.register(m) is m                       # already managed here: as it is
    mm = np.memmap(tmp_path / "d.bin", dtype=np.int32, mode="w+", shape=(5000,))
    mm[:] = np.arange(5000)
    r = sp.register(mm, placement="device")
    assert (sp.placement(r) == 1).all() and type(r) is ManagedArray
    np.testing.assert_array_equal(np.asarray(r), np.arange(5000))
    with ccadgpu.Space(device_memory="1MiB") as other:   # another space's array is copied
        o = other.register(m)
        assert o.space is other and not np.shares_memory(o, m)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix
@pytest.mark.parametrize("make", [
    lambda: [1, 2, 3],
    lambda: np.matrix([[1.0, 2.0]]),
    lambda: np.ma.masked_array([1.0, 2.0], mask=[0, 1]),
    lambda: np.array([object(), 1]),
])
def test_register_refuses_with_nothing_allocated(sp, make):
    n0 = sp.stats()["nr_allocations"]
    with pytest.raises(E.InvalidArgumentError):
        sp.register(make())
    assert sp.stats()["nr_allocations"] == n0


def test_register_capacity_error_changes_nothing(sp):
    before = sp.stats()
    with pytest.raises(E.CapacityError):
        sp.register(np.ones(2 << 20), placement="device")   # 16 MiB into an 8 MiB device
    after = sp.stats()
    assert after["nr_allocations"] == before["nr_allocations"]
    assert after["nr_free_pages_device"] == before["nr_free_pages_device"]


def test_unregister_writes_back_and_refuses_bad_input(sp):
    src = np.arange(5000, dtype=np.float64)
    m = sp.register(src)
    m *= 2
    with pytest.raises(E.InvalidArgumentError, match="whole allocation"):
        sp.unregister(m[10:])
    with pytest.raises(E.InvalidArgumentError, match="shape"):
        sp.unregister(m, out=np.empty(10))
    with pytest.raises(E.InvalidArgumentError, match="cast"):
        sp.unregister(m, out=np.empty(5000, np.int32))
    ro = np.empty(5000)
    ro.flags.writeable = False
    with pytest.raises(E.InvalidArgumentError, match="read-only"):
        sp.unregister(m, out=ro)
    with pytest.raises(E.ForeignArrayError):
        sp.unregister(src)
    assert sp.placement(m).size                      # still allocated after every refusal
    r = sp.unregister(m, out=src)                    # write the results back
    assert r is src and np.array_equal(src, 2 * np.arange(5000))


# -- DLPack --------------------------------------------------------------------------------------
def test_dlpack_exports_host_data_zero_copy(sp):
    a, ra = _pair(sp)
    assert a.__dlpack_device__() == (1, 0)           # kDLCPU
    d = np.from_dlpack(a)
    assert type(d) is np.ndarray and np.shares_memory(d, np.asarray(a))
    np.testing.assert_array_equal(d, ra)


def test_dlpack_refuses_device_pages_and_copies_on_request(sp):
    a, ra = _pair(sp)
    sp.move_pages(a, "device")
    with pytest.raises(E.DLPackExportError, match="device"):
        np.from_dlpack(a)
    with pytest.raises(BufferError):                # the protocol's own error type
        a.__dlpack_device__()
    c = np.from_dlpack(a, copy=True)
    assert not np.shares_memory(c, np.asarray(a))
    np.testing.assert_array_equal(c, ra)
    sp.prefetch(a, "host")
    assert np.shares_memory(np.from_dlpack(a), np.asarray(a))


def test_ccadgpu_scipy_without_scipy_says_how_to_install():
    import subprocess
    import sys
    code = ("import sys\n"
            "sys.modules['scipy'] = None\n"          # as if SciPy were not installed
            "try:\n"
            "    import ccadgpu.scipy\n"
            "except ImportError as exc:\n"
            "    assert \"pip install 'ccadgpu[scipy]'\" in str(exc), exc\n"
            "else:\n"
            "    raise SystemExit('imported without SciPy')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_host_warm_pool_keeps_frames_consistent():
    from ccadgpu.nodes import Node
    node = Node(0, "host", "host", 64 << 20, 64 << 10, prefault=False)   # cap: 8 MiB = 128
    try:
        rng = np.random.default_rng(5)
        held: list[np.ndarray] = []
        for _ in range(200):
            if held and rng.random() < 0.5:
                node.give(held.pop(int(rng.integers(len(held)))), release=True)
            else:
                held.append(node.take(int(rng.integers(1, 40)), partial=True))
            free_warm = int(np.count_nonzero(node._free & node._populated))
            assert node._nwarm == free_warm <= node._warm_cap
            taken = np.concatenate(held) if held else np.zeros(0, np.int64)
            assert len(np.unique(taken)) == len(taken) == node.used_frames
            assert not node._free[taken].any() and node._populated[taken].all()
    finally:
        node.close()
