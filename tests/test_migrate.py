"""move_pages: per-page status, partial success, failures leave data intact, locking."""
import errno
import threading
import time

import numpy as np
import pytest

from ccadgpu import errors as E

PS = 64 << 10
F = PS // 8   # float64 per page


def filled(space, npages, placement="host", seed=0):
    ref = np.random.default_rng(seed).standard_normal(npages * F)
    return space.asarray(ref, placement=placement), ref


def test_move_all_and_back(space):
    a, ref = filled(space, 16)
    n = len(space.placement(a))             # 16, or 17 with the array's cache colour
    addr = a.__array_interface__["data"][0]
    r = space.move_pages(a, "device")
    assert r.ok and r.pages_moved == n and r.bytes_moved == n * PS and r.gbps > 0
    assert (space.placement(a) == 1).all()
    assert a.__array_interface__["data"][0] == addr and np.array_equal(a, ref)
    # the data really is in the device arena's frames, from the array's offset in its page
    vstart = space.allocation_of(a).vstart
    off = addr - space.va.addr(vstart)
    f = space.pt.frame[vstart]
    assert np.array_equal(space.nodes[1].frame_bytes(f)[off:].view(np.float64),
                          ref[:(PS - off) // 8])
    r = space.move_pages(a, 0)
    assert r.ok and np.array_equal(a, ref) and (space.placement(a) == 0).all()


def test_already_there_is_success_without_copy(space):
    a, _ = filled(space, 4)
    r = space.move_pages(a, "host")
    assert r.ok and r.pages_moved == 0 and r.status.tolist() == [0] * 4


def test_subset_and_view_relative_pages(space):
    a, ref = filled(space, 8)
    v = a[2 * F: 6 * F]                    # spans pages 2..5
    assert len(space.placement(v)) == 4
    r = space.move_pages(v, "device", pages=[1, 3])
    assert r.status.tolist() == [1, 1]
    assert space.placement(a).tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    assert np.array_equal(a, ref)
    r = space.move_pages(a, "device", pages=np.array([True] * 8))
    assert r.ok


def test_partial_success_enomem(space):
    a, ref = filled(space, 80)               # device has 64 frames
    n = len(space.placement(a))             # 80, or 81 with the array's cache colour
    r = space.move_pages(a, "device")
    assert not r.ok and r.pages_moved == 64 and r.errors() == {"ENOMEM": n - 64}
    assert (r.status[:64] == 1).all() and (r.status[64:] == -errno.ENOMEM).all()
    assert np.array_equal(a, ref)
    st = space.stats()
    assert st["pgmigrate_success"] == 64 and st["pgmigrate_fail"] == n - 64
    assert st["nr_pages_device"] == 64


def test_pinned_pages_ebusy(space):
    a, ref = filled(space, 4)
    space.pin(a[F: 2 * F])
    r = space.move_pages(a, "device")
    assert r.status.tolist() == [1, -errno.EBUSY, 1, 1]
    space.unpin(a)
    assert space.move_pages(a, "device").ok and np.array_equal(a, ref)


def test_migration_disabled_eperm(space):
    a, _ = filled(space, 3)
    space.tunables.migration_enabled = False
    r = space.move_pages(a, "device")
    assert r.errors() == {"EPERM": 3} and (space.placement(a) == 0).all()


@pytest.mark.parametrize("pages,node,exc", [
    ([0, 9], 1, E.InvalidArgumentError),
    ([-1], 1, E.InvalidArgumentError),
    ([1, 1], 1, E.InvalidArgumentError),
    ([[0]], 1, E.InvalidArgumentError),
    ([0.5], 1, E.InvalidArgumentError),
    (None, 5, E.UnknownNodeError),
    (None, "gpu", E.UnknownNodeError),
    ([True, False], 1, E.InvalidArgumentError),
])
def test_bad_arguments_change_nothing(space, pages, node, exc):
    a, ref = filled(space, 4)
    before = space.stats()
    with pytest.raises(exc):
        space.move_pages(a, node, pages=pages)
    assert space.stats() == before and (space.placement(a) == 0).all()


def test_copy_failure_leaves_everything_in_place(space):
    a, ref = filled(space, 8)
    space.move_pages(a, "device", pages=[0, 1])
    calls = []

    def hook(stage, k):
        calls.append(stage)
        if stage == "copy":
            raise RuntimeError("injected copy fault")

    space.migrator.fault_hook = hook
    free_dev = space.nodes[1].free_frames
    with pytest.raises(E.MigrationError, match="injected"):
        space.move_pages(a, "device")
    assert space.placement(a).tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert space.nodes[1].free_frames == free_dev
    assert not (space.pt.flags & 2).any()          # nothing left MIGRATING
    assert np.array_equal(a, ref)
    space.migrator.fault_hook = None
    assert space.move_pages(a, "device").ok and np.array_equal(a, ref)


def test_remap_failure_part_way_is_all_or_nothing_per_page(space):
    a, ref = filled(space, 8, placement="interleave")   # many runs

    def hook(stage, k):
        if stage == "remap" and k == 2:
            raise OSError(errno.ENOMEM, "injected mmap failure")

    space.migrator.fault_hook = hook
    with pytest.raises(E.MigrationError):
        space.move_pages(a, "device")
    p = space.placement(a)
    assert set(p.tolist()) <= {0, 1} and (p == 1).sum() > 4   # some moved, some stayed
    assert np.array_equal(a, ref)
    used = space.nodes[1].used_frames
    assert used == (p == 1).sum()
    space.migrator.fault_hook = None
    assert space.move_pages(a, "device").ok and np.array_equal(a, ref)


def test_map_count_budget_refuses_before_moving(space, monkeypatch):
    from ccadgpu.vaspace import MAP_BUDGET
    a, ref = filled(space, 16)
    monkeypatch.setattr(MAP_BUDGET, "_limit", MAP_BUDGET.used + 3)
    with pytest.raises(E.MapCountError, match="max_map_count"):
        space.move_pages(a, "device", pages=np.arange(0, 16, 2))
    assert (space.placement(a) == 0).all() and space.nodes[1].used_frames == 0
    assert np.array_equal(a, ref)


def test_stats_directions_and_causes(space):
    a, _ = filled(space, 4)
    space.move_pages(a, "device")
    space.move_pages(a, "host", pages=[0])
    s = space.stats()
    assert s["pgmigrate_bytes_host_to_device"] == 4 * PS
    assert s["pgmigrate_bytes_device_to_host"] == PS
    assert s["pgmigrate_pages_cause_api"] == 5
    assert s["nr_pages_device"] == 3


def test_mediated_writer_waits_for_migration(space):
    """A write through the array protocol issued during the copy lands after it, on the new
    frame, and is not lost."""
    a, ref = filled(space, 32)
    started = threading.Event()

    def slow_hook(stage, k):
        if stage == "copy":
            started.set()
            time.sleep(0.2)

    space.migrator.fault_hook = slow_hook
    t = threading.Thread(target=space.move_pages, args=(a, "device"))
    t.start()
    started.wait(5)
    readers_saw = float(np.asarray(a)[5])       # readers proceed during the copy
    a[5] = 42.0                                 # the writer waits for the migration ...
    on_device_when_written = int(space.placement(a)[0])
    t.join()
    assert readers_saw == ref[5]
    assert on_device_when_written == 1          # ... so the page had moved when it returned
    assert a[5] == 42.0 and (space.placement(a) == 1).all()


def test_migration_skips_pages_under_a_write(space):
    a, _ = filled(space, 4)
    with space.host_access(a[:F], "w"):
        r = space.move_pages(a, "device")
    assert r.status.tolist() == [-errno.EBUSY, 1, 1, 1]
    with pytest.raises(E.InvalidArgumentError):
        with space.host_access(a, "x"):
            pass


def test_concurrent_migrations_never_corrupt(space):
    a, ref = filled(space, 48)
    errs = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(30):
                pages = rng.choice(48, 8, replace=False)
                space.move_pages(a, int(rng.integers(0, 2)), pages=pages)
        except Exception as exc:   # noqa: BLE001
            errs.append(exc)

    ts = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errs and np.array_equal(a, ref)
    assert space.nodes[1].used_frames == (space.placement(a) == 1).sum()


def test_scattered_frames_still_correct(space):
    # fragment the device, then move an array into the holes
    holes = [space.empty(F, placement="device") for _ in range(10)]
    for h in holes[::2]:
        space.free(h)
    a, ref = filled(space, 20)
    assert space.move_pages(a, "device").ok and np.array_equal(a, ref)
    assert space.move_pages(a, "host").ok and np.array_equal(a, ref)


def test_a_waiting_writer_wakes_after_the_page_table_grew():
    """A store waiting for a migration of its page must see the flag cleared even when an
    allocation meanwhile replaced the page table's arrays (it once re-read the old ones and
    waited for ever)."""
    import threading
    import time

    import ccadgpu
    sp = ccadgpu.Space(device_memory="8MiB", host_memory="256MiB", page_size="16KiB")
    y = sp.zeros(4096)
    state: dict = {}

    def writer():
        y[0] = 5.0

    def hook(stage, k):
        if stage == "copy" and "t" not in state:
            state["t"] = threading.Thread(target=writer, daemon=True)
            state["t"].start()
            time.sleep(0.3)                    # the writer waits on MIGRATING by now
            old = sp.pt.flags
            state["big"] = sp.zeros(3_000_000)       # the page table grows
            state["replaced"] = sp.pt.flags is not old

    sp.migrator.fault_hook = hook
    try:
        assert sp.move_pages(y, "device").ok
    finally:
        sp.migrator.fault_hook = None
    state["t"].join(10)
    assert state["replaced"]
    assert not state["t"].is_alive(), "the writer never woke"
    assert float(np.asarray(y)[0]) == 5.0
    sp.close()
