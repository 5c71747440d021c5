"""The cuda backend on a real GPU: managed memory, placement, kernels, counters, reset.

Skipped (with the probe's reason) where no usable GPU is present; with
``CCADGPU_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh``) a missing GPU is an error
instead, so a lent GPU machine cannot pass by skipping everything.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from ccadgpu.backends import probe_cuda, select_backend

_PROBE = probe_cuda()
if not _PROBE.usable:
    if os.environ.get("CCADGPU_REQUIRE_GPU") == "1":
        pytest.fail(f"CCADGPU_REQUIRE_GPU=1 but the cuda backend cannot run: {_PROBE.reason}",
                    pytrace=False)
    pytest.skip(f"no usable GPU for the cuda backend: {_PROBE.reason}", allow_module_level=True)

import cupy as cp  # noqa: E402

from ccadgpu.backends import cuda_kernels as ck  # noqa: E402
from ccadgpu.backends.cuda import (CPU, Advice, CudaBackend, ManagedRegion,  # noqa: E402
                                   RangeAttribute)
from ccadgpu.backends.cuda_reference import expected_counts, expected_result  # noqa: E402
from ccadgpu.errors import CapacityError, InvalidArgumentError  # noqa: E402

pytestmark = pytest.mark.gpu
MiB = 1 << 20
NO_LOCATION = -2


@pytest.fixture(scope="module")
def b():
    be = CudaBackend(0, budget=1 << 30)
    yield be
    be.close()


class Arena:
    """Operands carved from one managed region at element-aligned, page-unaligned offsets
    (so they straddle page boundaries); counters cover the whole region."""

    def __init__(self, b: CudaBackend, nbytes: int, page: int):
        self.b, self.page = b, page
        self.region: ManagedRegion = b.allocate(nbytes)
        self.cursor = 0

    def take(self, shape, dtype):
        dt = np.dtype(dtype)
        n = int(np.prod(shape))
        start = -(-(self.cursor + 24) // 8) * 8
        assert start + n * dt.itemsize <= self.region.nbytes, "arena too small"
        self.cursor = start + n * dt.itemsize
        return self.region.host_view(dt, shape, start)

    def counters(self, mode: str = "all"):
        return self.b.new_counters(self.region.ptr, self.region.nbytes, self.page, mode)

    def close(self):
        self.b.free(self.region)


@pytest.fixture
def arena(b, request):
    ar = Arena(b, 64 * MiB, getattr(request, "param", 64 << 10))
    yield ar
    ar.close()


def _fill(rng, a):
    if a.dtype.kind == "i":
        a[...] = rng.integers(-1000, 1000, a.shape)
    else:
        a[...] = rng.standard_normal(a.shape)


# -- selection and memory -----------------------------------------------------------------------

def test_auto_selects_cuda(monkeypatch):
    monkeypatch.delenv("CCADGPU_BACKEND", raising=False)
    c = select_backend("auto")
    assert c.name == "cuda", c.reason


def test_managed_allocation_is_zero_copy(b):
    r = b.allocate(16 * MiB)
    try:
        h = r.host_view(np.float64)
        d = r.device_view(np.float64)
        assert h.ctypes.data == d.data.ptr == r.ptr
        h[:] = np.arange(h.size)
        with b.stream:
            assert float(d.sum()) == float(h.size * (h.size - 1) / 2)
            d *= 2                                          # the GPU writes ...
        b.synchronize()
        assert h[12345] == 2 * 12345                        # ... the CPU sees it, same address
        h2 = r.host_view(np.int32, (4, 8), offset=4096)
        assert np.shares_memory(h2, r.host_view())
        with pytest.raises(InvalidArgumentError):
            r.host_view(np.float64, r.nbytes)              # does not fit
    finally:
        b.free(r)
    assert r.freed and b.allocated == 0
    assert h[12345] == 2 * 12345                            # views keep the memory alive
    b.free(r)                                               # idempotent
    with pytest.raises(InvalidArgumentError, match="freed"):
        r.host_view()


def test_allocation_respects_budget_and_free_memory(b):
    small = CudaBackend(0, budget=32 * MiB)
    try:
        with pytest.raises(CapacityError, match="budget"):
            small.allocate(64 * MiB)
        assert small.allocated == 0 and small.regions() == []
        r = small.allocate(16 * MiB)
        with pytest.raises(CapacityError):
            small.allocate(32 * MiB)
        small.free(r)
        for bad in (0, -1, 1.5, "1MiB", True):
            with pytest.raises(InvalidArgumentError):
                small.allocate(bad)
    finally:
        small.close()
    free, total = b.mem_info()
    assert b.budget <= free + b.allocated and 0 < free <= total
    with pytest.raises(CapacityError):
        b.allocate(total * 2)                               # never past the card


def test_prefetch_both_ways_preserves_data_and_is_recorded(b):
    nbytes = 32 * MiB
    r = b.allocate(nbytes)
    try:
        h = r.host_view(np.uint64)
        h[:] = np.arange(h.size, dtype=np.uint64) * 2654435761
        ref = h.copy()
        b.prefetch(r.ptr, nbytes, b.device)
        b.synchronize()
        assert b.range_attribute(r.ptr, nbytes, RangeAttribute.LAST_PREFETCH_LOCATION) == b.device
        with b.stream:
            assert int(r.device_view(np.uint64).sum()) == int(ref.sum())
        b.prefetch(r.ptr, nbytes, "cpu")
        b.synchronize()
        assert b.range_attribute(r.ptr, nbytes, RangeAttribute.LAST_PREFETCH_LOCATION) == CPU
        np.testing.assert_array_equal(h, ref)
        # half and half: placement per 2 MiB page
        b.prefetch(r.ptr, nbytes // 2, b.device)
        b.synchronize()
        pl = b.placement(r.ptr, nbytes, 2 * MiB)
        assert (pl[: len(pl) // 2] == b.device).all() and (pl[len(pl) // 2:] == CPU).all()
        np.testing.assert_array_equal(h, ref)
    finally:
        b.free(r)


def test_advise(b):
    n = 8 * MiB
    r = b.allocate(n)
    try:
        ra = b.range_attribute
        b.advise(r.ptr, n, "preferred_location", b.device)
        assert ra(r.ptr, n, RangeAttribute.PREFERRED_LOCATION) == b.device
        b.advise(r.ptr, n, Advice.SET_PREFERRED_LOCATION, "cpu")
        assert ra(r.ptr, n, RangeAttribute.PREFERRED_LOCATION) == CPU
        b.advise(r.ptr, n, "unset_preferred_location", "cpu")
        assert ra(r.ptr, n, RangeAttribute.PREFERRED_LOCATION) == NO_LOCATION
        b.advise(r.ptr, n, "accessed_by", CPU)
        b.advise(r.ptr, n, "accessed_by", b.device)
        assert set(b.accessed_by(r.ptr, n)) == {CPU, b.device}
        b.advise(r.ptr, n, "unset_accessed_by", CPU)
        assert b.accessed_by(r.ptr, n) == [b.device]
        b.advise(r.ptr, n, "read_mostly", b.device)
        assert ra(r.ptr, n, RangeAttribute.READ_MOSTLY) == 1
        b.advise(r.ptr, n, Advice.UNSET_READ_MOSTLY, b.device)
        assert ra(r.ptr, n, RangeAttribute.READ_MOSTLY) == 0
        with pytest.raises(InvalidArgumentError):
            b.advise(r.ptr, n, "sticky", b.device)
        with pytest.raises(InvalidArgumentError):
            b.advise(r.ptr, n, "read_mostly", "tpu")
        with pytest.raises(InvalidArgumentError):
            b.prefetch(r.ptr, 0, b.device)
    finally:
        b.free(r)


# -- kernels -------------------------------------------------------------------------------------

STREAMING = [("copy", {}), ("scale", {"a": 3}), ("axpy", {"a": -2}), ("triad", {"s": 3})]


def _run(b, op, arrays, counters, **sc):
    k = b.kernels
    if op == "copy":
        return k.copy(*arrays, counters=counters)
    if op == "scale":
        return k.scale(*arrays, sc["a"], counters=counters)
    if op == "axpy":
        return k.axpy(*arrays, sc["a"], counters=counters)
    if op == "triad":
        return k.triad(*arrays, sc["s"], counters=counters)
    if op == "stencil5":
        return k.stencil5(*arrays, sc["center"], sc["neighbor"], counters=counters)
    if op == "gather":
        return k.gather(*arrays, counters=counters)
    if op == "scatter":
        return k.scatter(*arrays, counters=counters)
    if op == "spmv":
        return k.spmv(*arrays, counters=counters)
    raise AssertionError(op)


def _check(b, ar, op, arrays, sc, rtol, mode="all"):
    want = expected_result(op, *[a.copy() for a in arrays], **sc)
    cnt = ar.counters(mode)
    _run(b, op, arrays, cnt, **sc)
    b.synchronize()
    out = arrays[0]
    if out.dtype.kind == "i":
        np.testing.assert_array_equal(out, want)
    else:
        np.testing.assert_allclose(out, want, rtol=rtol)
    rd, wr = b.read_counters(cnt)
    ref_rd, ref_wr = expected_counts(op, *arrays, base=cnt.base, shift=cnt.shift,
                                     npages=cnt.npages, mode=mode)
    np.testing.assert_array_equal(rd, ref_rd, err_msg=f"{op}: bytes read per page")
    np.testing.assert_array_equal(wr, ref_wr, err_msg=f"{op}: bytes written per page")


@pytest.mark.parametrize("arena", [4096, 64 << 10], indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32])
def test_streaming_ops_match_numpy_and_counts(b, arena, dtype):
    rng = np.random.default_rng(1)
    n = 1_000_003
    x, y, z = (arena.take(n, dtype) for _ in range(3))
    for a in (x, y, z):
        _fill(rng, a)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for op, sc in STREAMING:
        arrays = (z, x, y) if op == "triad" else (z, x)
        _check(b, arena, op, arrays, sc, rtol)
    k = b.kernels
    if np.dtype(dtype).kind == "i":
        assert k.sum(x) == int(x.astype(np.int64).sum())
        assert k.dot(x, y) == int(np.dot(x.astype(np.int64), y.astype(np.int64)))
    else:
        assert k.sum(x) == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-9, abs=1e-6)
        assert k.dot(x, y) == pytest.approx(float(np.dot(x.astype(np.float64),
                                                         y.astype(np.float64))), rel=1e-9)
    cnt = arena.counters()
    k.dot(x, y, counters=cnt)
    rd, wr = b.read_counters(cnt)
    assert rd.sum() == x.nbytes + y.nbytes and wr.sum() == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1000, 1003), (1, 77), (3, 3), (257, 1)])
def test_stencil_matches_numpy_and_counts(b, arena, dtype, shape):
    rng = np.random.default_rng(2)
    inp, out = arena.take(shape, dtype), arena.take(shape, dtype)
    _fill(rng, inp)
    _check(b, arena, "stencil5", (out, inp), {"center": 0.5, "neighbor": 0.125},
           1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("arena", [4096, 64 << 10], indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32])
@pytest.mark.parametrize("itype", [np.int64, np.int32])
def test_gather_scatter_match_numpy_and_counts(b, arena, dtype, itype):
    rng = np.random.default_rng(3)
    n, m = 500_000, 700_000
    x, y = arena.take(m, dtype), arena.take(n, dtype)
    idx = arena.take(n, itype)
    _fill(rng, x)
    idx[:] = rng.integers(0, m, n)
    _check(b, arena, "gather", (y, x, idx), {}, 0)
    t = arena.take(m, dtype)
    t[:] = -1
    idx[:] = rng.permutation(m)[:n]                      # unique targets: a defined result
    _check(b, arena, "scatter", (t, idx, y), {}, 0)
    # a clustered pattern: many lanes of a warp on one page (warp aggregation)
    idx[:] = (np.arange(n) // 97) % m
    _check(b, arena, "gather", (y, x, idx), {}, 0)


@pytest.mark.parametrize("itype", [np.int64, np.int32])
def test_spmv_matches_numpy_and_counts(b, arena, itype):
    rng = np.random.default_rng(4)
    nrows, ncols = 20_000, 30_000
    lengths = rng.integers(0, 40, nrows)
    lengths[::50] = 0                                   # empty rows
    lengths[7] = 3000                                   # one long row
    ip = np.concatenate([[0], np.cumsum(lengths)]).astype(itype)
    nnz = int(ip[-1])
    indptr, indices = arena.take(nrows + 1, itype), arena.take(nnz, itype)
    data, x, y = arena.take(nnz, np.float64), arena.take(ncols, np.float64), \
        arena.take(nrows, np.float64)
    indptr[:] = ip
    indices[:] = rng.integers(0, ncols, nnz)
    _fill(rng, data)
    _fill(rng, x)
    _check(b, arena, "spmv", (y, indptr, indices, data, x), {}, 1e-10)


def test_count_modes(b, arena):
    rng = np.random.default_rng(5)
    x, y, idx = arena.take(300_000, np.float64), arena.take(100_000, np.float64), \
        arena.take(100_000, np.int64)
    _fill(rng, x)
    idx[:] = rng.integers(0, x.size, idx.size)
    for mode in ("all", "dense", "indexed"):
        _check(b, arena, "gather", (y, x, idx), {}, 0, mode=mode)


def test_plain_and_counted_agree_and_counts_ignore_placement(b, arena):
    rng = np.random.default_rng(6)
    x, y1, y2 = (arena.take(400_000, np.float64) for _ in range(3))
    idx = arena.take(400_000, np.int64)
    _fill(rng, x)
    idx[:] = rng.integers(0, x.size, idx.size)
    k = b.kernels
    k.gather(y1, x, idx)                                # plain
    c_dev = arena.counters()
    b.prefetch(arena.region.ptr, arena.cursor, b.device)
    k.gather(y2, x, idx, counters=c_dev)                # counted, pages on the GPU
    b.synchronize()
    np.testing.assert_array_equal(y1, y2)
    # the same launch with x resident on the host (read remotely): same counts
    xp = x.__array_interface__["data"][0]
    b.advise(xp, x.nbytes, "preferred_location", CPU)
    b.advise(xp, x.nbytes, "accessed_by", b.device)
    b.prefetch(xp, x.nbytes, CPU)
    c_host = arena.counters()
    k.gather(y2, x, idx, counters=c_host)
    b.advise(xp, x.nbytes, "unset_accessed_by", b.device)
    b.advise(xp, x.nbytes, "unset_preferred_location", CPU)
    for a, c in zip(b.read_counters(c_dev), b.read_counters(c_host)):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(y1, y2)


def test_bad_operands_raise_before_launch(b, arena):
    x, y = arena.take(1000, np.float64), arena.take(1000, np.float64)
    idx = arena.take(1000, np.int64)
    idx[:] = 5
    idx[17] = 1000                                      # out of range
    y[:] = 7
    with pytest.raises(InvalidArgumentError, match="out of range"):
        b.kernels.gather(y, x, idx)
    b.synchronize()
    assert (y == 7).all()                               # nothing ran
    with pytest.raises(InvalidArgumentError, match="managed"):
        b.kernels.copy(y, np.zeros(1000))               # plain host memory: unreachable
    with pytest.raises(InvalidArgumentError, match="outside the counted range"):
        b.kernels.copy(y, cp.zeros(1000), counters=arena.counters())
    with pytest.raises(InvalidArgumentError, match="indptr"):
        ip = arena.take(3, np.int64)
        ip[:] = [0, 5, 2]
        b.kernels.spmv(arena.take(2, np.float64), ip, idx[:2], x[:2], x)


def test_instrumented_kernels_compile_and_time(b):
    secs = b.kernels.compile_all()
    assert secs >= 0
    for mod in ck.MODULES:
        for name in ck.kernel_names(mod):
            assert b.kernels.function(mod, name) is not None
    r = b.allocate(64 * MiB)
    try:
        x = r.device_view(np.float64)
        b.prefetch(r.ptr, r.nbytes, b.device)
        ts = b.time_with_events(lambda: b.kernels.scale(x, x, 1.0), repeat=3, warmup=1)
        assert len(ts) == 3 and all(t > 0 for t in ts)
    finally:
        b.free(r)


# -- reset --------------------------------------------------------------------------------------

def test_reset_is_the_emulated_devices_not_the_cards(b, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the physical GPU must never be reset")
    monkeypatch.setattr(cp.cuda.runtime, "deviceReset", forbidden, raising=False)
    sentinel = cp.arange(1 << 20, dtype=cp.float64)     # CuPy memory outside the backend
    _, total_before = b.mem_info()
    r = b.allocate(32 * MiB)
    try:
        h = r.host_view(np.float64)
        h[:] = np.arange(h.size) * 0.5
        ref = h.copy()
        b.advise(r.ptr, r.nbytes, "preferred_location", b.device)
        b.advise(r.ptr, r.nbytes, "accessed_by", b.device)
        b.prefetch(r.ptr, r.nbytes, b.device)
        old_stream = b.stream
        rep = b.reset()
        assert rep.regions >= 1 and rep.bytes_evacuated >= r.nbytes and b.resets >= 1
        assert b.range_attribute(r.ptr, r.nbytes, RangeAttribute.LAST_PREFETCH_LOCATION) == CPU
        assert b.range_attribute(r.ptr, r.nbytes,
                                 RangeAttribute.PREFERRED_LOCATION) == NO_LOCATION
        assert b.device not in b.accessed_by(r.ptr, r.nbytes)
        np.testing.assert_array_equal(h, ref)           # every byte came back
        assert b.stream is not old_stream
        b.kernels.scale(h, h, 2.0)                      # the device works again
        b.synchronize()
        np.testing.assert_array_equal(h, 2 * ref)
        assert int(sentinel[-1]) == (1 << 20) - 1       # the card's other memory is untouched
        assert b.mem_info()[1] == total_before
    finally:
        b.free(r)


# -- NVML and calibration -------------------------------------------------------------------------

def test_nvml_on_a_gpu_machine():
    from ccadgpu.backends import nvml
    info = nvml.gpu_info(pci_bus_id=cp.cuda.runtime.deviceGetPCIBusId(0))
    if info is None:
        pytest.skip("nvidia-ml-py not installed or NVML unavailable")
    assert info["name"] and info["memory_total"] and info["memory_total"] > 0


def test_calibrate_small(b, tmp_path):
    from ccadgpu import calibrate
    meas = calibrate.measure(size=16 * MiB, repeat=1, backend=b)
    for key in ("h2d_prefetch_gbps", "d2h_prefetch_gbps", "pinned_h2d_gbps",
                "device_read_local_gbps", "device_read_remote_gbps", "cpu_read_host_gbps",
                "launch_us"):
        assert np.isfinite(meas[key]) and meas[key] > 0, key
    assert meas["device_read_local_gbps"] > meas["device_read_remote_gbps"]
    out = calibrate.write_profile(meas, tmp_path / "cal.toml", "cal")
    from ccadgpu.clock import load_profile
    assert load_profile(str(out)).name == "cal"
