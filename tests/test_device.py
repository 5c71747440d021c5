"""Device offline / online / reset (R1): evacuate everything, refuse rather than lose."""
import threading
import time

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E

PS = 64 << 10
F = PS // 8


def on_device(space, npages, seed=0, placement="device"):
    ref = np.random.default_rng(seed).standard_normal(npages * F)
    return space.asarray(ref, placement=placement), ref


def test_offline_evacuates_everything_and_online_restores(space):
    a, ref = on_device(space, 20)
    b, refb = on_device(space, 6, seed=1, placement="interleave")
    assert (space.placement(a) == 1).all() and space.placement(b).tolist() == [0, 1] * 3
    n = len(space.placement(a)) + 3     # a's pages (20, or 21 with its cache colour) + 3 of b
    assert space.device.state == "online"
    rep = space.device.offline()
    assert space.device.state == "offline"
    assert rep.pages == n and rep.bytes == n * PS and not rep.refused
    assert (space.placement(a) == 0).all() and (space.placement(b) == 0).all()
    assert space.nodes[1].used_frames == 0
    assert np.array_equal(a, ref) and np.array_equal(b, refb)
    assert space.stats()["pgmigrate_pages_cause_evacuation"] == n
    assert space.device.offline().pages == 0          # already offline: no-op
    space.device.online()
    assert space.device.state == "online"
    assert space.move_pages(a, "device").ok and np.array_equal(a, ref)


def test_offline_of_empty_device(space):
    space.zeros(10)
    rep = space.device.offline()
    assert rep.pages == 0 and space.device.state == "offline"


def test_nothing_new_lands_while_offline(space):
    a, _ = on_device(space, 2, placement="host")
    space.device.offline()
    with pytest.raises(E.DeviceOfflineError):
        space.empty(10, placement="device")
    assert (space.placement(space.empty(3 * F, placement="preferred:device")) == 0).all()
    assert (space.placement(space.empty(3 * F, placement="interleave")) == 0).all()
    r = space.move_pages(a, "device")
    assert r.errors() == {"ENODEV": 2}
    with pytest.raises(E.DeviceOfflineError):
        with space.device.running():
            pass
    space.device.online()
    with space.device.running():
        pass


def test_pinned_device_pages_refuse_before_anything_moves(space):
    a, ref = on_device(space, 8)
    w = space.asarray(np.ones(4 * F), placement="device", pinned=True, name="weights")
    before = space.placement(a).copy()
    with pytest.raises(E.OfflineRefusedError, match="pinned") as ei:
        space.device.offline()
    rep = ei.value.report
    assert rep.refused and len(rep.refused_pages) == 4
    assert rep.refused_arrays[0][1] == "weights" and rep.refused_arrays[0][4] == 4
    assert space.device.state == "online"
    assert (space.placement(a) == before).all() and np.array_equal(a, ref)
    assert (space.placement(w) == 1).all()


def test_pin_refused_while_offline(space):
    a, _ = on_device(space, 2)
    space.device.offline()
    space.pin(a)                       # its pages are on the host now: fine
    space.unpin(a)


def test_refuses_when_host_cannot_take_device_pages(space):
    space.tunables.emergency_device_alloc = True
    d, _ = on_device(space, 40)
    h = space.empty(250 * F)          # eats the evacuation reserve
    with pytest.raises(E.OfflineRefusedError, match="host has") as ei:
        space.device.offline()
    assert len(ei.value.report.refused_pages) == len(space.placement(d)) + \
        (space.placement(h) == 1).sum()
    assert space.device.state == "online" and (space.placement(d) == 1).all()


def test_verify_mismatch_keeps_device_copy(space):
    a, ref = on_device(space, 8)
    space.migrator.corrupt_page = 3
    with pytest.raises(E.OfflineRefusedError, match="verify") as ei:
        space.device.offline()
    assert len(ei.value.report.refused_pages) == 1
    assert space.device.state == "online"
    p = space.placement(a)
    assert (p == 1).sum() == 1 and np.array_equal(a, ref)   # the bad copy was never mapped
    assert space.stats()["pgmigrate_verify_fail"] == 1
    space.migrator.corrupt_page = None
    space.device.offline()
    assert (space.placement(a) == 0).all() and np.array_equal(a, ref)


def test_copy_fault_part_way_then_retry(space):
    big = ccadgpu.Space(device_memory="96MiB", host_memory="256MiB", page_size=PS)
    try:
        a, ref = on_device(big, 1500)       # > 32 MiB: several verified-copy chunks
        def hook(stage, k):
            if stage == "copy" and k == 1:
                raise RuntimeError("injected failure in chunk 1")
        big.migrator.fault_hook = hook
        with pytest.raises(E.MigrationError, match="injected"):
            big.device.offline()
        assert big.device.state == "online"
        assert np.array_equal(a, ref)
        p = big.placement(a)
        assert big.nodes[1].used_frames == (p == 1).sum()
        assert big.nodes[0].used_frames == (p == 0).sum()
        big.migrator.fault_hook = None
        big.device.offline()
        assert (big.placement(a) == 0).all() and np.array_equal(a, ref)
    finally:
        big.close()


def test_reset_poisons_device_memory_and_calls_back(space):
    a, ref = on_device(space, 4)
    frame = int(space.pt.frame[space.allocation_of(a).vstart])
    seen = []
    space.device.on_reset(seen.append)
    rep = space.device.reset()
    assert space.device.state == "online" and space.device.resets == 1
    assert seen == [rep] and rep.pages == 4
    assert np.array_equal(a, ref) and (space.placement(a) == 0).all()
    old = space.nodes[1].frame_bytes(frame).view(np.uint32)
    assert (old == 0xDEADBEEF).all()
    with pytest.raises(TypeError):
        space.device.on_reset(42)


def test_reset_callback_error_is_a_warning(space):
    space.device.on_reset(lambda r: 1 / 0)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        space.device.reset()
    assert space.device.state == "online"


def test_offline_fences_running_work_and_times_out(space):
    a, ref = on_device(space, 4)
    inside, release = threading.Event(), threading.Event()

    def kernel():
        with space.device.running():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=kernel)
    t.start()
    inside.wait(5)
    with pytest.raises(E.OfflineRefusedError, match="timed out"):
        space.device.offline(timeout=0.05)
    assert space.device.state == "online" and (space.placement(a) == 1).all()
    threading.Timer(0.05, release.set).start()
    rep = space.device.offline(timeout=5)          # waits for the launch to leave
    t.join()
    assert rep.fence_seconds > 0 and (space.placement(a) == 0).all()
    with pytest.raises(ValueError):
        space.device.offline(timeout=-1)


def test_offline_waits_for_pages_under_a_write(space):
    a, ref = on_device(space, 4)
    entered = threading.Event()

    def writer():
        with space.host_access(a[:F], "w") as v:
            entered.set()
            time.sleep(0.1)
            v[0] = 7.0

    t = threading.Thread(target=writer)
    t.start()
    entered.wait(5)
    rep = space.device.offline(timeout=5)
    t.join()
    ref[0] = 7.0
    assert rep.retries >= 1 and np.array_equal(a, ref)
    assert (space.placement(a) == 0).all()


def test_stress_resets_under_load():
    """Threads launch device work, write from the host and migrate while the device is reset
    over and over; at the end every array equals its reference and only documented
    exceptions were seen."""
    sp = ccadgpu.Space(device_memory="2MiB", host_memory="32MiB", page_size="16KiB")
    n_workers, npg = 3, 24
    fpp = (16 << 10) // 8
    arrays = [sp.asarray(np.zeros(npg * fpp), placement="preferred:device")
              for _ in range(n_workers)]
    refs = [np.zeros(npg * fpp) for _ in range(n_workers)]
    stop = threading.Event()
    unexpected: list[BaseException] = []
    counts = {"launch": 0, "offline_refused": 0, "write": 0, "move": 0}
    lock = threading.Lock()

    def worker(w):
        rng = np.random.default_rng(w)
        a, ref = arrays[w], refs[w]
        while not stop.is_set():
            op = rng.integers(0, 3)
            idx = rng.integers(0, a.size, 16)
            try:
                if op == 0:                  # a "device kernel": fenced, writes its pages
                    with sp.device.running(), sp.host_access(a, "w") as v:
                        v[idx] += 1.0
                        ref[idx] += 1.0
                    key = "launch"
                elif op == 1:                # a host write through the array protocol
                    a[idx] = idx.astype(float)
                    ref[idx] = idx.astype(float)
                    key = "write"
                else:
                    pages = rng.choice(npg, 6, replace=False)
                    sp.move_pages(a, int(rng.integers(0, 2)), pages=pages)
                    key = "move"
                with lock:
                    counts[key] += 1
            except E.DeviceOfflineError:
                pass                          # documented: launches refused while offline
            except BaseException as exc:      # noqa: BLE001
                unexpected.append(exc)
                return

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(n_workers)]
    [t.start() for t in ts]
    resets = 0
    try:
        for _ in range(25):
            try:
                sp.device.reset(timeout=10)
                resets += 1
            except E.OfflineRefusedError:
                counts["offline_refused"] += 1
            time.sleep(0.002)
    finally:
        stop.set()
        [t.join(20) for t in ts]
    assert not any(t.is_alive() for t in ts), "deadlock"
    assert not unexpected, unexpected
    assert resets >= 20
    for a, ref in zip(arrays, refs):
        assert np.array_equal(a, ref)
    assert counts["launch"] > 0 and counts["write"] > 0 and counts["move"] > 0
    p = np.concatenate([sp.placement(a) for a in arrays])
    assert sp.nodes[1].used_frames == (p == 1).sum()
    sp.close()


def test_an_offline_that_would_wait_for_itself_is_refused(space):
    """An offline from inside this thread's own launch (its kernel), or from a counters
    subscriber during this thread's write to device pages, would wait for that work to leave:
    it is refused at once (it hung, or timed out with a bound), the device stays online and
    no byte is lost."""
    a, ref = on_device(space, 4)
    b = space.zeros(4 * F)
    seen = []

    def kernel(x, y):
        try:
            space.device.offline(timeout=30)
        except E.OfflineRefusedError as exc:
            seen.append(str(exc))
        y[:] = x
    space.device.launch(kernel, a, b, reads=[a], writes=[b])
    assert "inside a launch" in seen[0] and space.device.state == "online"
    assert np.array_equal(np.asarray(b), ref)

    def sub(batch):
        if len(seen) == 1:
            try:
                space.device.offline(timeout=30)
            except E.OfflineRefusedError as exc:
                seen.append(str(exc))
    space.tunables.access_counter_batch = 1
    space.counters.subscribe(sub)
    space.tunables.cpu_access = "coherent"
    space.move_pages(a, "device")
    a[...] = 2.0                                # a CPU write to device pages
    assert len(seen) == 2 and "own write" in seen[1], seen
    assert space.device.state == "online" and (np.asarray(a) == 2.0).all()
    space.device.offline()                      # from outside: fine
    assert (space.placement(a) == 0).all() and (np.asarray(a) == 2.0).all()


def test_an_offline_from_a_migrate_listener_is_refused(space):
    """A migrate listener runs inside the migration that called it, which an offline would
    wait for (it hung): refused at once, and the migration completes."""
    a, ref = on_device(space, 4, placement="host")
    seen = []

    def listener(vpns, src, target):
        if not seen:
            try:
                space.device.offline(timeout=30)
            except E.OfflineRefusedError as exc:
                seen.append(str(exc))
    space.migrate_listeners.append(listener)
    space.move_pages(a, "device")
    assert "migrate listener" in seen[0] and space.device.state == "online"
    assert (space.placement(a) == 1).all() and np.array_equal(a, ref)


def test_a_launch_from_inside_a_kernel_is_refused(space):
    """Launches do not nest: one made from a running kernel raises at once (it deadlocked
    under Numba's workqueue layer), and the outer launch completes."""
    from ccadgpu import ops
    a, ref = on_device(space, 2)
    b, c = space.zeros(2 * F), space.zeros(2 * F)
    seen = []

    def kernel(x, y):
        try:
            ops.scale(c, x, 2.0)
        except E.InvalidArgumentError as exc:
            seen.append(str(exc))
        y[:] = x
    space.device.launch(kernel, a, b, reads=[a], writes=[b])
    assert "do not nest" in seen[0] and np.array_equal(np.asarray(b), ref)
    assert not np.asarray(c).any()
