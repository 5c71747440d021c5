"""A Space on the cuda backend: the same page table, policies, ops and evacuation as the CPU
stand-in, with the driver doing the moves.

Every test runs twice where it can:

* ``emu``: on :class:`cuda_emu.harness.EmuBackend` (any machine with a C++ compiler, CI
  included): the real :class:`~ccadgpu.backends.gpu_space.GpuMemory` wiring and the real CUDA
  kernel sources (compiled against the CPU emulation), with every advise/prefetch the space
  asks for recorded, so the tests check *what* is asked of the driver;
* ``gpu`` (marked ``gpu``): on a real :class:`~ccadgpu.backends.cuda.CudaBackend`, skipped with
  the probe's reason where no GPU is usable (``CCADGPU_REQUIRE_GPU=1`` makes that a failure).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import ccadgpu
from ccadgpu import ops
from ccadgpu.backends import probe_cuda
from ccadgpu.errors import CapacityError, InvalidArgumentError, MigrationError
from cuda_emu.harness import CXX, EmuBackend, build
from indexed_race import assert_race_contained

MiB = 1 << 20
PAGE = 64 << 10
HOST, DEVICE = 0, 1


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory):
    if CXX is None:
        pytest.skip("no host C++ compiler: cannot build the CUDA kernel emulation")
    return build(tmp_path_factory.mktemp("emu"))


@pytest.fixture(scope="module")
def gpu_backend():
    probe = probe_cuda()
    if not probe.usable:
        if os.environ.get("CCADGPU_REQUIRE_GPU") == "1":
            pytest.fail(f"CCADGPU_REQUIRE_GPU=1 but no usable GPU: {probe.reason}")
        pytest.skip(f"no usable GPU: {probe.reason}")
    from ccadgpu.backends.cuda import CudaBackend
    b = CudaBackend(0, budget=2 << 30)
    yield b
    b.close()


@pytest.fixture(params=["emu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    if request.param == "emu":
        return EmuBackend(request.getfixturevalue("emu_lib"))
    return request.getfixturevalue("gpu_backend")


def make_space(backend, **kw):
    kw.setdefault("device_memory", "8MiB")
    kw.setdefault("host_memory", "48MiB")
    kw.setdefault("page_size", PAGE)
    return ccadgpu.Space(backend=backend, **kw)


def last_prefetch(backend, sp, arr) -> int | None:
    """Where the driver was last asked to put all of ``arr``'s pages (-1 CPU, 0 GPU)."""
    alloc, first, n = sp._resolve(arr)
    lo = sp.va.addr(alloc.vstart + first)
    if isinstance(backend, EmuBackend):
        return backend.placement_of(lo - sp.gpu.region.ptr, n * sp.page_size)
    from ccadgpu.backends.cuda import RangeAttribute
    return backend.range_attribute(lo, n * sp.page_size, RangeAttribute.LAST_PREFETCH_LOCATION)


# -- memory and moves ---------------------------------------------------------------------------

def test_arrays_live_in_one_managed_range_and_move_both_ways(backend):
    with make_space(backend) as sp:
        assert sp.backend == "cuda" and sp.gpu is not None
        src = np.random.default_rng(1).standard_normal(300_000)
        a = sp.asarray(src)
        lo = sp.gpu.region.ptr
        assert lo <= a.ctypes.data < lo + sp.gpu.region.nbytes     # zero copy, one range
        assert (sp.placement(a) == HOST).all() and last_prefetch(backend, sp, a) == -1
        r = sp.move_pages(a, "device")
        assert r.ok and r.pages_moved == len(sp.placement(a))
        assert (sp.placement(a) == DEVICE).all() and last_prefetch(backend, sp, a) == 0
        np.testing.assert_array_equal(np.asarray(a), src)
        assert sp.stats()["nr_pages_device"] == r.pages_moved
        r = sp.move_pages(a, "host", pages=[0, 1])
        assert r.ok and (sp.placement(a)[:2] == HOST).all()
        assert (sp.placement(a)[2:] == DEVICE).all()
        np.testing.assert_array_equal(np.asarray(a), src)


def test_device_placement_at_allocation_moves_filled_pages_once(backend):
    with make_space(backend) as sp:
        z = sp.zeros(100_000, placement="device")
        assert (sp.placement(z) == DEVICE).all() and last_prefetch(backend, sp, z) == 0
        assert not np.asarray(z).any()
        if isinstance(backend, EmuBackend):
            # the CPU wrote the zeros into host memory first; then one prefetch per node run
            pf = [c for c in backend.calls if c[0] == "prefetch" and c[3] == 0]
            assert len(pf) == 1 and pf[0][2] == len(sp.placement(z)) * PAGE


def test_capacity_is_the_emulated_devices_not_the_cards(backend):
    with make_space(backend, device_memory="1MiB") as sp:
        a = sp.zeros(4 * MiB // 8)
        r = sp.move_pages(a, "device")
        assert r.pages_moved == MiB // PAGE and r.errors() == {"ENOMEM": 64 - 16}
        assert sp.stats()["nr_free_pages_device"] == 0


def test_bad_arguments_leave_nothing_behind(backend):
    with pytest.raises(InvalidArgumentError, match="64 KiB"):
        ccadgpu.Space(backend=backend, page_size="4KiB", device_memory="1MiB",
                      host_memory="4MiB")
    with pytest.raises(CapacityError, match="budget"):
        ccadgpu.Space(backend=backend, device_memory=1 << 40)
    assert not getattr(backend, "closed", False)      # a given backend is the caller's
    with make_space(backend) as sp:
        a = sp.zeros(1000)
        with pytest.raises(InvalidArgumentError, match="out of range"):
            ops.gather(sp.zeros(3), a, sp.asarray(np.array([0, 5, 1000])))
        assert sp.counters.totals()["device_read_local"] == 0


# -- kernels and counters: the same data and the same counts as the CPU stand-in -----------------

def _pair(backend):
    """The same arrays, pages and placements on a cuda space and on a CPU space (whose
    allocations are then page-aligned too: the cuda backend does not colour them)."""
    spaces = [make_space(backend), ccadgpu.Space(device_memory="8MiB", host_memory="48MiB",
                                                 page_size=PAGE, backend="cpu",
                                                 cache_colouring=False)]
    rng = np.random.default_rng(7)
    n = 200_003
    data = {"x": rng.standard_normal(n), "y": rng.standard_normal(n),
            "z": np.zeros(n), "idx": rng.integers(0, n, n // 3),
            "g": np.zeros(n // 3), "grid": rng.standard_normal((300, 500)),
            "gout": np.zeros((300, 500))}
    out = []
    for sp in spaces:
        arrs = {k: sp.asarray(v, placement="device" if k in ("y", "grid") else "host")
                for k, v in data.items()}
        sp.move_pages(arrs["x"], "device", pages=np.arange(0, 10))    # mixed placement
        out.append((sp, arrs))
    return out


def test_every_op_matches_the_cpu_stand_in_in_data_and_counters(backend):
    (g, ga), (c, ca) = _pair(backend)
    try:
        rng = np.random.default_rng(11)
        nrows, per = 1000, 8
        csr = (np.arange(0, nrows * per + 1, per), rng.integers(0, ga["x"].size, nrows * per),
               rng.standard_normal(nrows * per))
        for sp, a in ((g, ga), (c, ca)):
            ops.copy(a["z"], a["x"])
            ops.scale(a["z"], a["y"], 3.0)
            ops.axpy(0.5, a["x"], a["z"])
            ops.triad(a["z"], a["x"], a["y"], 2.0)
            a["s"] = ops.sum(a["x"])
            a["d"] = ops.dot(a["x"], a["y"])
            ops.stencil5(a["gout"], a["grid"], 0.5, 0.125)
            ops.gather(a["g"], a["x"], a["idx"])
            ops.scatter(a["z"], a["idx"], a["g"])
            a["ip"], a["ix"], a["dv"] = (sp.asarray(v, placement="device") for v in csr)
            a["yv"] = sp.zeros(nrows)
            ops.spmv_csr(a["yv"], a["ip"], a["ix"], a["dv"], a["x"])
        for k in ("z", "g", "gout", "yv"):
            np.testing.assert_allclose(np.asarray(ga[k]), np.asarray(ca[k]), rtol=1e-13,
                                       err_msg=k)
        np.testing.assert_array_equal(np.asarray(ga["g"]), np.asarray(ca["g"]))
        assert ga["s"] == pytest.approx(ca["s"], rel=1e-12)
        assert ga["d"] == pytest.approx(ca["d"], rel=1e-12)
        for k in ("x", "y", "z", "idx", "g", "grid", "gout", "ip", "ix", "dv", "yv"):
            np.testing.assert_array_equal(g.counters.counts(ga[k]), c.counters.counts(ca[k]),
                                          err_msg=f"counters of {k}")
        assert g.counters.totals()["device_read_remote"] > 0      # host pages read remotely
        if isinstance(backend, EmuBackend):
            names = backend.kernels.launches
            assert any("gather" in n and n.endswith("_counted") for n in names)
            assert any("triad" in n and n.endswith("_plain") for n in names)
    finally:
        g.close()
        c.close()


def test_user_kernels_get_the_device_view(backend):
    with make_space(backend) as sp:
        x = sp.asarray(np.arange(1000.0), placement="device")
        y = sp.zeros(1000, placement="device")
        seen = []

        def kernel(out, inp):
            seen.append(type(out).__module__.split(".")[0])
            out[...] = 2 * inp
        r = sp.device.launch(kernel, y, x, reads=[x], writes=[y])
        np.testing.assert_array_equal(np.asarray(y), 2 * np.arange(1000.0))
        assert seen == ["numpy" if isinstance(backend, EmuBackend) else "cupy"]
        assert r.bytes_local == 2 * 8000 and r.bytes_remote == 0


# -- the manager, hints and evacuation, unchanged -----------------------------------------------

def test_access_counter_policy_promotes_a_hot_gather_source(backend):
    with make_space(backend, policy="access_counter", profile="h100-pcie") as sp:
        src = sp.asarray(np.arange(128 * 1024.0))           # 1 MiB, host
        idx = sp.asarray(np.random.default_rng(3).integers(0, src.size, 40_000),
                         placement="device")
        out = sp.zeros(idx.size, placement="device")
        for _ in range(4):
            ops.gather(out, src, idx)
        sp.sync()
        assert (sp.placement(src) == DEVICE).mean() > 0.5
        assert last_prefetch(backend, sp, src[:8192]) in (0, -2)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(src)[np.asarray(idx)])
        st = sp.stats()
        assert st["pgmigrate_pages_cause_access_counter"] == (sp.placement(src) == DEVICE).sum()
        assert st["access_counter_notifications"] > 0


def test_read_mostly_duplicates_collapse_on_write(backend):
    with make_space(backend) as sp:
        a = sp.asarray(np.arange(50_000.0))
        sp.advise(a, read_mostly=True)
        sp.prefetch(a, "device")
        assert sp.hints(a)["duplicated"].all() and (sp.placement(a) == HOST).all()
        a[10] = -1.0                                          # a host write collapses them
        assert not sp.hints(a)["duplicated"].any()
        assert a[10] == -1.0 and ops.sum(a) == np.arange(50_000.0).sum() - 11.0
        if isinstance(backend, EmuBackend):
            kinds = {c[0] for c in backend.calls}
            assert {"advise:read_mostly", "advise:unset_read_mostly"} <= kinds


def test_offline_and_reset_evacuate_verified_and_keep_every_byte(backend):
    with make_space(backend) as sp:
        rng = np.random.default_rng(5)
        want = [rng.standard_normal(n) for n in (70_000, 130_000, 9)]
        arrs = [sp.asarray(w, placement=p) for w, p in zip(want, ("device", "host", "device"))]
        assert sp.tunables.evacuate_verify
        rep = sp.device.offline()
        assert rep.pages == len(sp.placement(arrs[0])) + len(sp.placement(arrs[2]))
        assert sp.stats()["nr_pages_device"] == 0
        for a, w in zip(arrs, want):
            assert (sp.placement(a) == HOST).all() and last_prefetch(backend, sp, a) == -1
            np.testing.assert_array_equal(np.asarray(a), w)
        sp.device.online()
        sp.move_pages(arrs[1], "device")
        rep = sp.device.reset()
        assert rep.pages == len(sp.placement(arrs[1])) and sp.device.state == "online"
        for a, w in zip(arrs, want):
            np.testing.assert_array_equal(np.asarray(a), w)
        if isinstance(backend, EmuBackend):
            assert backend.scratch_releases == 1


def test_verified_move_refuses_pages_that_read_differently(emu_lib):
    b = EmuBackend(emu_lib)
    with make_space(b) as sp:
        a = sp.asarray(np.arange(20_000.0), placement="device")
        real = b.page_sums
        b.page_sums = lambda *args: real(*args) + np.uint64(1)     # the GPU saw other bytes
        with pytest.raises(MigrationError, match="read differently"):
            sp.migrator.move(sp.allocation_of(a), np.arange(2), HOST, cause="evacuation",
                             verify=True)
        assert (sp.placement(a) == DEVICE).all()                   # the page table kept them
        b.page_sums = real
        np.testing.assert_array_equal(np.asarray(a), np.arange(20_000.0))


def test_a_backend_that_is_not_one_is_refused():
    with pytest.raises(InvalidArgumentError, match="CudaBackend"):
        ccadgpu.Space(device_memory="1MiB", host_memory="4MiB", backend=5)


def test_auto_falls_back_to_cpu_with_a_reason(monkeypatch):
    monkeypatch.delenv("CCADGPU_BACKEND", raising=False)
    with ccadgpu.Space(device_memory="1MiB", host_memory="4MiB") as sp:
        usable = probe_cuda().usable
        assert sp.backend == ("cuda" if usable else "cpu")
        assert sp.backend_reason


@pytest.mark.parametrize("op", ["gather", "scatter", "spmv"])
def test_an_index_changed_after_its_check_is_never_followed(backend, op, monkeypatch):
    """The cuda kernels test each index again in their work loop: one stored out of range
    after the check (as another thread could) is skipped, so nothing outside the arrays is
    touched (the neighbouring array keeps its value), and the op says the index changed."""
    from ccadgpu import ops as ops_mod
    with make_space(backend) as sp:
        table, victim = sp.zeros(1024), sp.zeros(1024)
        k = (victim.__array_interface__["data"][0] - table.__array_interface__["data"][0]) // 8
        assert k > 0                                   # table.flat[k] would be victim[0]
        idx = sp.asarray(np.zeros(4, np.int64))
        vals, y = sp.asarray(np.full(4, 99.0)), sp.zeros(4)
        indptr = sp.asarray(np.arange(5, dtype=np.int64))
        orig = ops_mod._precheck_indices

        def racing(*a, **kw):
            orig(*a, **kw)
            np.asarray(idx)[0] = k                     # another thread's store, meanwhile
        monkeypatch.setattr(ops_mod, "_precheck_indices", racing)
        assert_race_contained(op, table, victim, idx, vals, y, indptr)
