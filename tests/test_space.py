"""Space construction, allocation, placement strings, zero-copy views, errors."""
import errno
import gc

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E

PS = 64 << 10


def test_sizes_and_nodes(space):
    assert space.page_size == PS
    assert [n.name for n in space.nodes] == ["host", "device"]
    assert space.nodes[1].frames == 64 and space.nodes[0].frames == 256
    assert space.distance[0, 0] == 10 and space.distance[0, 1] == 20
    assert space.node_id("device") == 1 and space.node_id(0) == 0


@pytest.mark.parametrize("kw,exc", [
    ({"page_size": "3KiB"}, E.InvalidArgumentError),
    ({"page_size": 0}, E.InvalidArgumentError),
    ({"page_size": "lots"}, E.InvalidArgumentError),
    ({"device_memory": -1}, E.InvalidArgumentError),
    ({"device_memory": "12 parsecs"}, E.InvalidArgumentError),
    ({"backend": "tpu"}, E.InvalidArgumentError),
    ({"host_memory": "1KiB"}, E.InvalidArgumentError),
    ({"no_such_knob": 1}, E.UnknownTunableError),
])
def test_bad_construction(kw, exc):
    with pytest.raises(exc):
        ccadgpu.Space(**kw)


def test_parse_size():
    assert ccadgpu.parse_size("64KiB") == 65536
    assert ccadgpu.parse_size("2 MiB") == 2 << 20
    assert ccadgpu.parse_size("1.5GiB") == 3 << 29
    assert ccadgpu.parse_size("100MB") == 100_000_000
    assert ccadgpu.parse_size(4096) == 4096
    for bad in ("-1", "1.3B", "x", True, 2.0):
        with pytest.raises(E.InvalidArgumentError):
            ccadgpu.parse_size(bad)


def test_close_is_idempotent_and_final():
    sp = ccadgpu.Space(device_memory="1MiB", host_memory="4MiB")
    a = sp.zeros(100)
    sp.close()
    sp.close()
    assert sp.closed
    with pytest.raises(E.SpaceClosedError):
        sp.empty(10)
    with pytest.raises(E.SpaceClosedError):
        sp.placement(a)
    assert float(np.asarray(a).sum()) == 0.0   # stale views read zeros, never crash
    del a
    gc.collect()


def test_empty_zeros_asarray_roundtrip(space):
    z = space.zeros((3, 5), np.int32)
    assert isinstance(z, ccadgpu.ManagedArray) and z.shape == (3, 5) and z.dtype == np.int32
    assert not z.any()
    src = np.random.default_rng(1).standard_normal((100, 7))
    a = space.asarray(src)
    assert np.array_equal(a, src)
    assert space.asarray(a) is a
    e = space.empty(0)
    assert e.size == 0 and space.placement(e).shape == (1,)


def test_zero_copy_and_views(space):
    a = space.asarray(np.arange(100000, dtype=np.float64))
    v = np.asarray(a)
    assert type(v) is np.ndarray and np.shares_memory(v, a)
    assert v.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    s = a[1000:2000]
    assert isinstance(s, ccadgpu.ManagedArray)
    r = a + 1                                   # results stay in the space (interop)
    assert isinstance(r, ccadgpu.ManagedArray) and r.space is space
    assert not np.shares_memory(r, a)
    c = a.copy()
    assert isinstance(c, ccadgpu.ManagedArray) and not np.shares_memory(c, a)
    space.tunables.managed_results = False
    assert type(a + 1) is np.ndarray and type(a.copy()) is np.ndarray
    assert isinstance(a.reshape(100, 1000), ccadgpu.ManagedArray)
    assert isinstance(np.reshape(a, (1000, 100)), ccadgpu.ManagedArray)
    assert type(np.sum(a)) is np.float64 or np.ndim(np.sum(a)) == 0


@pytest.mark.parametrize("placement,expect", [
    ("host", {0}), ("device", {1}), ("preferred:device", {1}), ("interleave", {0, 1}),
    (1, {1}), ("DEVICE", {1}),
])
def test_placements(space, placement, expect):
    a = space.empty(8 * PS // 8, placement=placement)
    assert set(space.placement(a).tolist()) == expect


def test_interleave_alternates(space):
    a = space.empty(6 * PS // 8, placement="interleave")
    assert space.placement(a).tolist() == [0, 1, 0, 1, 0, 1]


def test_preferred_spills_to_host(space):
    a = space.empty(100 * PS // 8, placement="preferred:device")
    p = space.placement(a)                   # 100 pages, or 101 with the array's cache colour
    assert (p == 1).sum() == 64 and (p == 0).sum() == len(p) - 64 and p[:64].all()


def test_device_bind_capacity_error_changes_nothing(space):
    before = space.stats()
    with pytest.raises(E.CapacityError, match="device"):
        space.empty(65 * PS // 8, placement="device")
    after = space.stats()
    assert after["nr_free_pages_device"] == before["nr_free_pages_device"]
    assert after["nr_allocations"] == before["nr_allocations"]


def test_host_exhaustion_and_evacuation_reserve(space):
    # 256 host frames; the device pages must stay evacuable, so the host keeps that many free
    d = space.empty(32 * PS // 8, placement="device")
    reserve = len(space.placement(d))        # 32, or 33 with d's cache colour
    assert space.nodes[1].used_frames == reserve
    with pytest.raises(E.CapacityError, match="host node is full"):
        space.empty((256 - reserve + 1) * PS // 8)
    a = space.empty((256 - reserve) * PS // 8)   # fills the host exactly: no colour page
    assert (space.placement(a) == 0).all() and len(space.placement(a)) == 256 - reserve
    assert space.nodes[0].free_frames == reserve
    del d


def test_emergency_device_alloc(space):
    keep = space.empty(250 * PS // 8)
    with pytest.raises(E.CapacityError):
        space.empty(10 * PS // 8)
    space.tunables.emergency_device_alloc = True
    room = 256 - len(space.placement(keep))  # 6, or 5 when keep took a page for its colour
    assert space.nodes[0].free_frames == room
    b = space.empty(10 * PS // 8)
    p = space.placement(b)
    assert (p == 0).sum() == room and (p == 1).sum() == 10 - room
    with pytest.raises(E.CapacityError):
        space.empty(10 * PS // 8, pinned=True)   # pinned never lands on the device implicitly


def test_pinned_never_implicitly_on_device(space):
    a = space.empty(4 * PS // 8, placement="preferred:device", pinned=True)
    assert (space.placement(a) == 0).all() and space.pinned(a).all()
    b = space.empty(4 * PS // 8, placement="interleave", pinned=True)
    assert (space.placement(b) == 0).all()


@pytest.mark.parametrize("args,exc", [
    (((4,), "O"), E.InvalidArgumentError),
    (((4,), "nope"), E.InvalidArgumentError),
    (((-1,), "f8"), E.InvalidArgumentError),
    ((("a",), "f8"), E.InvalidArgumentError),
])
def test_bad_alloc_args(space, args, exc):
    with pytest.raises(exc):
        space.empty(*args)


def test_unknown_placement(space):
    with pytest.raises(E.UnknownPlacementError, match="interleave"):
        space.empty(10, placement="gpu")
    with pytest.raises(E.UnknownPlacementError):
        space.empty(10, placement="preferred:mars")
    with pytest.raises(E.UnknownPlacementError):
        space.empty(10, placement=7)


def test_foreign_and_freed_arrays(space):
    with pytest.raises(E.ForeignArrayError):
        space.placement(np.zeros(10))
    with pytest.raises(E.ForeignArrayError):
        space.move_pages([1, 2, 3], "device")
    with ccadgpu.Space(device_memory="1MiB", host_memory="4MiB") as other:
        b = other.zeros(10)
        with pytest.raises(E.ForeignArrayError, match="another space"):
            space.move_pages(b, "device")
    a = space.zeros(1000)
    v = a[10:]
    space.free(a)
    for fn in (lambda: space.placement(v), lambda: space.move_pages(a, 1),
               lambda: space.pin(a), lambda: space.free(a)):
        with pytest.raises(E.FreedArrayError):
            fn()
    assert float(np.asarray(v).sum()) == 0.0


def test_free_returns_frames_and_gc_releases(space):
    n0 = space.nodes[0].free_frames
    a = space.empty(10 * PS // 8)
    assert space.nodes[0].free_frames == n0 - 10
    space.free(a)
    assert space.nodes[0].free_frames == n0
    b = space.empty(10 * PS // 8)
    del b
    gc.collect()
    space.stats()
    assert space.nodes[0].free_frames == n0
    assert space.stats()["nr_allocations"] == 0


def test_tunables(space):
    assert space.tunables.migration_enabled is True
    with pytest.raises(E.UnknownTunableError):
        space.tunables.warp_speed = 9
    with pytest.raises(E.UnknownTunableError):
        _ = space.tunables.warp_speed
    with pytest.raises(E.InvalidTunableError):
        space.tunables.migration_enabled = "yes"
    with pytest.raises(E.InvalidTunableError):
        space.tunables.set(migration_enabled=False, emergency_device_alloc=3)
    assert space.tunables.migration_enabled is True    # nothing changed
    assert "migration_enabled" in space.tunables.as_dict()


def test_numba_kernel_on_managed_array(space):
    numba = pytest.importorskip("numba")

    @numba.njit(cache=True)
    def double(x):
        for i in range(x.size):
            x[i] *= 2
        return x.sum()

    a = space.asarray(np.arange(10000, dtype=np.float64), placement="interleave")
    s = double(a)
    assert s == 2 * np.arange(10000).sum()
    space.move_pages(a, "device")
    assert double(a) == 4 * np.arange(10000).sum()


def test_errno_report_helpers(space):
    a = space.zeros(4 * PS // 8)
    space.pin(a[: PS // 8])
    r = space.move_pages(a, "device")
    assert r.status.tolist() == [-errno.EBUSY, 1, 1, 1]
    assert not r.ok and r.failed == 1 and r.errors() == {"EBUSY": 1}
    assert "moved=3" in repr(r)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("CCADGPU_BACKEND", raising=False)
    with ccadgpu.Space(device_memory="1MiB", host_memory="4MiB", backend="auto") as sp:
        assert sp.backend == "cpu" and sp.backend_reason.startswith("auto:")
    with pytest.raises(E.InvalidArgumentError, match="cuda"):
        ccadgpu.Space(device_memory="1MiB", host_memory="4MiB", backend="cuda")


def test_unsupported_platform(monkeypatch):
    from ccadgpu import _sys
    monkeypatch.setattr(_sys, "SUPPORTED", False)
    with pytest.raises(E.UnsupportedPlatformError, match="Linux"):
        ccadgpu.Space()


def test_cache_colouring_staggers_starts_and_keeps_everything_else():
    """On by default: arrays start 16 bytes into a cache line, at offsets that differ from one
    allocation to the next; small arrays only within the room in their last page; an array
    that fills its pages exactly takes one page more only from 16 pages up, and only where
    that page fits beside the others; the data, moves and addresses are as without it."""
    def span(sp, a):
        off = a.__array_interface__["data"][0] - sp.va.addr(sp.allocation_of(a).vstart)
        return off, -(-(off + a.nbytes) // PS)

    with ccadgpu.Space(device_memory="2MiB", host_memory="16MiB", page_size="64KiB") as sp:
        assert sp.tunables.cache_colouring
        big = [sp.asarray(np.arange(16 * PS // 8, dtype=np.float64) + i) for i in range(3)]
        offs = [span(sp, a)[0] for a in big]
        assert len(set(offs)) == 3 and all(o % 64 == 16 for o in offs)
        assert [len(sp.placement(a)) for a in big] == [span(sp, a)[1] for a in big] == [17] * 3
        exact = sp.empty(4 * PS // 8)                      # < 16 pages, no room: aligned
        assert span(sp, exact) == (0, 4) and len(sp.placement(exact)) == 4
        room = sp.empty((4 * PS - 1024) // 8)              # coloured within its last page
        off, n = span(sp, room)
        assert n == 4 and 16 <= off <= 1024 and off % 64 == 16
        dev = sp.empty(32 * PS // 8, placement="device")   # fills the device: stays aligned
        assert span(sp, dev) == (0, 32) and (sp.placement(dev) == 1).all()
        assert sp.move_pages(big[1], "device").ok is False   # the device is full
        sp.free(dev)
        assert sp.move_pages(big[1], "device").ok
        for i, a in enumerate(big):
            assert np.array_equal(a, np.arange(16 * PS // 8) + i)
    with ccadgpu.Space(device_memory="4MiB", host_memory="16MiB", page_size="64KiB",
                       cache_colouring=False) as sp:
        arrs = [sp.asarray(np.arange(16 * PS // 8, dtype=np.float64)) for _ in range(2)]
        assert [span(sp, a) for a in arrs] == [(0, 16)] * 2