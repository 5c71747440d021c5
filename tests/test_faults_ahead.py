"""Faults before the accesses they serve (tunable ``faults_ahead``, on by default).

A live space runs the manager's step (1) of an epoch before its accesses where it knows them
first: a launch whose declared accesses give its pages, and a CPU operation over device pages
that the manager would fault home (which then becomes a host epoch of its own).  So the
accesses see the pages where the faults put them (the space clock and the launch's counts
agree with the manager's model), and a replay of the trace still reproduces the live run.
"""
import os

import numpy as np
import pytest

import ccadgpu
from ccadgpu import ops
from ccadgpu.errors import DeviceOfflineError, FreedArrayError, TraceFormatError
from ccadgpu.manager import CPU
from ccadgpu.policies import make_policy
from ccadgpu.replay import replay
from ccadgpu.workloads import WORKLOADS
from indexed_race import assert_race_contained

PS = 64 << 10
F = PS // 8


def remote(rec):
    return sum(v for k, v in rec.bytes_by().items() if k.endswith("_remote"))


def space(policy="on_demand", profile="h100-pcie", **kw):
    return ccadgpu.Space(device_memory=64 * PS, page_size=PS, profile=profile, policy=policy,
                         **kw)


@pytest.mark.parametrize("ahead", [True, False])
def test_a_launch_faults_its_host_pages_over_before_its_kernel_runs(ahead):
    with space(faults_ahead=ahead) as sp:
        x = sp.asarray(np.arange(8 * F, dtype=np.float64))
        y = sp.zeros(8 * F)
        ops.scale(y, x, 2.0)
        r = sp.device.last_launch
        assert np.array_equal(np.asarray(y), 2.0 * np.arange(8 * F))
        assert (sp.placement(x) == 1).all() and (sp.placement(y) == 1).all()
        if ahead:                     # the kernel ran on device pages
            assert r.bytes_remote == 0 and r.bytes_local == r.nbytes
        else:                         # it ran where the pages were, they moved afterwards
            assert r.bytes_remote == r.nbytes
        res = sp.manager.results[-1]
        assert res.moved == {("fault", 0, 1): 16} and res.remote_bytes == 0


def test_the_space_clock_comes_down_to_the_managers_model(tmp_path):
    """The manager prices faults before the accesses they serve; with faults_ahead the live
    accesses happen that way too, so the space clock no longer charges the CPU's reads of
    device pages over BAR1 (0.5 GB/s).  Either way a replay of the trace reproduces the live
    manager (with faults_ahead the CPU operations that fault are epochs of their own, so a
    fault of two arrays in one region is two faults, not one)."""
    out = {}
    for ahead in (True, False):
        with space(faults_ahead=ahead) as sp:
            x = sp.asarray(np.ones(8 * F))
            y = sp.zeros(8 * F)
            for _ in range(3):
                ops.scale(y, x, 2.0)
                x[...] = np.asarray(y).sum()           # the CPU writes x: device pages
                float(y.sum())                         # and reads y: device pages
            sp.sync()
            s = sp.manager.summary()
            path = sp.trace.save(os.path.join(tmp_path, f"{ahead}.npz"))
            out[ahead] = (s, sp.clock.by_kind["host"])
        r = replay(ccadgpu.Trace.load(path), "on_demand")
        assert r["modeled_s"] == pytest.approx(s["modeled_s"], rel=1e-12)
        assert r["migrated_bytes_by_cause"] == s["migrated_bytes_by_cause"]
    (s1, host1), (s0, host0) = out[True], out[False]
    assert s1["migrated_bytes_by_cause"] == s0["migrated_bytes_by_cause"]
    assert host1 < host0 / 20


def test_a_cpu_operation_that_faults_is_an_epoch_of_its_own():
    with space() as sp:
        h = sp.asarray(np.ones(4 * F))
        d = sp.asarray(np.ones(4 * F), placement="device")
        n0 = len(sp.trace)
        float(h.sum())                    # host pages only: opens a host epoch
        float(d.sum())                    # device pages: that epoch ends, d comes home first
        float(h.sum())                    # the next operation starts another epoch
        sp.sync()
        recs = list(sp.trace)[n0:]
        assert [r.kernel for r in recs] == ["host"] * 3
        assert all(remote(r) == 0 for r in recs)
        assert (sp.placement(d) == 0).all()
        assert sp.manager.results[-2].moved == {("fault", 1, 0): 4}


def test_remote_reads_stay_remote_and_join_the_open_epoch():
    """Over NVLink-C2C access_counter lets the CPU read device pages remotely: nothing faults,
    nothing moves, and the operations stay one host epoch."""
    with space("access_counter", "gh200") as sp:
        h = sp.asarray(np.ones(4 * F))
        d = sp.asarray(np.ones(4 * F), placement="device")
        n0 = len(sp.trace)
        float(h.sum())
        float(d.sum())
        float(h.sum())
        sp.sync()
        recs = list(sp.trace)[n0:]
        assert len(recs) == 1 and remote(recs[0]) == 4 * PS
        assert (sp.placement(d) == 1).all()


@pytest.mark.parametrize("mode", ["r", "w"])
def test_host_access_and_migrate_on_cpu_fault(mode):
    with space("static", cpu_access="migrate_on_cpu_fault") as sp:
        d = sp.asarray(np.arange(4 * F, dtype=np.float64), placement="device")
        with sp.host_access(d, mode) as v:
            assert (sp.placement(d) == 0).all()       # home before the CPU touches it
            if mode == "w":
                v[:] = 7.0
        sp.sync()
        assert np.asarray(d)[0] == (7.0 if mode == "w" else 0.0)
        assert remote(sp.trace[-1]) == 0
        assert sp.manager.results[-1].moved == {("fault", 1, 0): 4}


def test_a_write_faults_its_pages_home_and_is_not_lost():
    """The writer of a CPU store registers after its faults: the move is not refused as busy,
    and the stored values are there afterwards."""
    with space() as sp:
        d = sp.asarray(np.zeros(4 * F), placement="device")
        d[...] = 3.0
        d[::7] = 5.0
        sp.sync()
        assert (sp.placement(d) == 0).all()
        ref = np.full(4 * F, 3.0)
        ref[::7] = 5.0
        assert np.array_equal(np.asarray(d), ref)
        assert sp.stats().get("pgmigrate_busy", 0) == 0


def test_bad_input_moves_nothing():
    with space() as sp:
        x = sp.asarray(np.ones(4 * F))
        y = sp.zeros(4 * F)
        with pytest.raises(ccadgpu.errors.CcadError):
            ops.scale(y, x[: F], 2.0)                  # shape mismatch: refused up front
        sp.device.offline()
        with pytest.raises(DeviceOfflineError):
            ops.scale(y, x, 2.0)
        sp.device.online()
        assert (sp.placement(x) == 0).all() and (sp.placement(y) == 0).all()
        z = sp.asarray(np.ones(4 * F), placement="device")
        sp.free(z)
        with pytest.raises(FreedArrayError):
            with sp.host_access(z, "r"):
                pass
        assert sp.nodes[1].used_frames == 0


@pytest.mark.parametrize("policy", ["on_demand", "access_counter", "autonuma", "first_touch"])
def test_would_fault_says_what_fault_does_and_changes_nothing(tmp_path, policy):
    """A policy's would_fault answers, for a CPU epoch, whether its fault() moves pages; asked
    right before fault() in a replay of a run with CPU work on device pages, it agrees every
    time (and asking does not change what the replay decides)."""
    with space("static", "h100-pcie") as sp:
        wl = WORKLOADS["krylov"]
        assert wl.run(sp, 2 << 20, np.random.default_rng(0))
        sp.sync()
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
    asked = []

    base = type(make_policy(policy))

    class Asking(base):
        def fault(self, ctx, ep):
            if ep.processor == CPU:
                would = self.would_fault(ctx, ep)
                moves = base.fault(self, ctx, ep)
                asked.append((would, any(len(m.vpns) for m in moves)))
                return moves
            return base.fault(self, ctx, ep)

    trace = ccadgpu.Trace.load(path)
    a = replay(trace, Asking())
    b = replay(trace, policy)
    assert asked and all(w == m for w, m in asked)
    assert a["modeled_s"] == pytest.approx(b["modeled_s"], rel=1e-12)
    if policy in ("on_demand", "access_counter"):
        assert any(m for _, m in asked)               # the run had CPU faults to predict


@pytest.mark.parametrize("profile", ["h100-pcie", "gh200"])
@pytest.mark.parametrize("policy", ["static", "on_demand", "access_counter"])
def test_the_space_clock_is_the_managers_model_when_every_fault_runs_ahead(policy, profile):
    """CPU work and dense launches only, no user moves: every fault runs before its access,
    so the space clock (accesses where their pages were, migrations, faults) and the
    manager's model are the same sum.  (Not autonuma's: the hint faults of CPU work on pages
    that stay put are charged by the manager only.)"""
    with space(policy, profile) as sp:
        a, b, c = sp.zeros(8 * F), sp.zeros(8 * F), sp.zeros(8 * F)
        rng = np.random.default_rng(0)
        for _ in range(4):
            a[...] = rng.standard_normal(8 * F)      # the CPU produces
            ops.scale(b, a, 2.0)                     # the device transforms
            ops.copy(c, b)
            ops.axpy(1.0, a, c)
            assert np.allclose(np.asarray(c), 3.0 * np.asarray(a))   # the CPU consumes
        sp.sync()
        s = sp.manager.summary()
        assert sp.clock.elapsed == pytest.approx(s["modeled_s"], rel=1e-9)
        if policy == "on_demand" or profile == "h100-pcie" and policy != "static":
            assert s["migrated_bytes_by_cause"]     # something moved, ahead


def test_a_remembered_no_goes_stale_when_anything_changes():
    """The space remembers that the manager would not fault a CPU operation's device pages
    (a loop of remote reads asks once); a hint, a move or a step must make it ask again."""
    with space("access_counter", "gh200") as sp:
        d = sp.asarray(np.ones(4 * F), placement="device")
        float(d.sum())
        float(d.sum())                                 # remembered: read remotely
        assert (sp.placement(d) == 1).all() and sp._no_faults
        sp.advise(d, preferred_location="host")        # now its CPU touch brings it home
        float(d.sum())
        assert (sp.placement(d) == 0).all()
        sp.advise(d, preferred_location=None)
        sp.move_pages(d, "device")                     # a user's move, no step since
        stamp = sp._no_faults_at
        float(d.sum())
        assert sp._no_faults_at != stamp               # asked again


def test_unpinning_makes_a_remembered_no_stale():
    """Pinned device pages are never faulted home (the CPU reads them remotely, and that is
    remembered); once unpinned, the next CPU read faults them home first."""
    with space() as sp:
        d = sp.asarray(np.ones(4 * F), placement="device")
        sp.pin(d)
        float(d.sum())
        assert (sp.placement(d) == 1).all() and sp._no_faults
        sp.unpin(d)
        seen = []
        with sp.host_access(d) as v:                   # counted (and faulted) on entry
            seen.append(sp.placement(d).copy())
            float(v.sum())
        assert (seen[0] == 0).all()                    # home before the CPU touched them
        sp.sync()
        assert remote(sp.trace[-1]) == 0


def _csr(n, nnz_per_row, ncols, rng):
    indptr = np.arange(n + 1, dtype=np.int64) * nnz_per_row
    indices = rng.integers(0, ncols, n * nnz_per_row).astype(np.int64)
    return indptr, indices, rng.standard_normal(n * nnz_per_row)


@pytest.mark.parametrize("op", ["gather", "scatter", "spmv_csr"])
@pytest.mark.parametrize("ahead", [True, False])
def test_an_indexed_launch_faults_its_pages_before_its_kernel(op, ahead):
    """The indexed operand's pages are known before the kernel only from a histogram built
    ahead: with it, every page the launch touches is on the device when the kernel runs; the
    counts are the same either way, and equal NumPy's."""
    rng = np.random.default_rng(1)
    with space(faults_ahead=ahead) as sp:
        n = 8 * F
        table = sp.asarray(rng.standard_normal(n))
        idx = sp.asarray(rng.integers(0, n, n // 2))
        if op == "gather":
            out = sp.zeros(n // 2)
            ops.gather(out, table, idx)
            ref = np.asarray(table)[np.asarray(idx)]
            assert np.array_equal(np.asarray(out), ref)
        elif op == "scatter":
            src = sp.asarray(rng.standard_normal(n // 2))
            ref = np.asarray(table).copy()
            ref[np.asarray(idx)] = np.asarray(src)
            ops.scatter(table, idx, src)
            ii = np.asarray(idx)
            # duplicate indices: one of the values lands
            assert np.isin(np.asarray(table)[ii], np.asarray(src)).all()
            untouched = np.setdiff1d(np.arange(n), ii)
            assert np.array_equal(np.asarray(table)[untouched], ref[untouched])
        else:
            ip, ind, dat = _csr(F, 4, n, rng)
            indptr, indices, data = sp.asarray(ip), sp.asarray(ind), sp.asarray(dat)
            y = sp.zeros(F)
            ops.spmv_csr(y, indptr, indices, data, table)
            ref = np.add.reduceat(dat * np.asarray(table)[ind], ip[:-1])
            assert np.allclose(np.asarray(y), ref)
            idx = indices
        r = sp.device.last_launch
        if ahead:
            assert r.bytes_remote == 0 and r.bytes_local == r.nbytes
        else:
            assert r.bytes_remote > 0
        pages = np.bincount(np.asarray(idx) * 8 // PS, minlength=8)
        rec = r.record
        v0 = sp._span_vpns(table)[1]
        got = dict(zip(rec.vpns.tolist(), rec.sectors.reshape(len(rec.vpns), -1).sum(1)))
        # one 32-byte sector per element access of the table
        assert [got.get(v0 + p, 0) for p in range(8)] == pages.tolist()


@pytest.mark.parametrize("op", ["gather", "scatter", "spmv_csr"])
def test_a_bad_index_found_ahead_changes_nothing(op):
    """The histogram built ahead checks the indices: an index out of range is refused before
    any fault, move or store."""
    with space() as sp:
        n = 4 * F
        table = sp.asarray(np.arange(n, dtype=np.float64))
        bad = np.arange(n // 2)
        bad[-1] = n                                    # one past the end
        idx = sp.asarray(bad)
        other = sp.zeros(n // 2)
        before = sp.pt.node.copy(), len(sp.trace), sp.clock.elapsed
        with pytest.raises(ccadgpu.errors.InvalidArgumentError, match="out of range"):
            if op == "gather":
                ops.gather(other, table, idx)
            elif op == "scatter":
                ops.scatter(table, idx, other)
            else:
                ops.spmv_csr(other, sp.asarray(np.arange(n // 2 + 1)), idx,
                             sp.asarray(np.ones(n // 2)), table)
        if op == "spmv_csr":
            with pytest.raises(ccadgpu.errors.InvalidArgumentError, match="indptr"):
                ops.spmv_csr(other, sp.asarray(np.arange(n // 2 + 1)[::-1].copy()),
                             sp.asarray(np.arange(n // 2)), sp.asarray(np.ones(n // 2)), table)
        sp.sync()
        assert np.array_equal(sp.pt.node[:len(before[0])], before[0])
        assert len(sp.trace) == before[1] and sp.clock.elapsed == before[2]
        assert np.array_equal(np.asarray(table), np.arange(n, dtype=np.float64))
        assert not np.asarray(other).any()


def test_the_page_histogram_kernel_is_numpys():
    """page_histogram against np.bincount: odd offsets, page sizes that are not powers of two,
    and an index out of range (reported, not counted)."""
    from ccadgpu.kernels import cpu as K
    rng = np.random.default_rng(3)
    for page, isz, off0 in ((4096, 8, 0), (4096, 4, 100), (3000, 8, 16), (65536, 2, 65534)):
        n = 50_000
        npages = (off0 + n * isz + page - 1) // page
        idx = rng.integers(0, n, 30_001).astype(np.int32)
        shift = page.bit_length() - 1 if page & (page - 1) == 0 else -1
        h, ok = K.page_histogram(idx, n, off0, isz, page, shift, npages, 3)
        ref = np.bincount((off0 + idx.astype(np.int64) * isz) // page, minlength=npages)
        assert ok and np.array_equal(h.sum(axis=0), ref)
        idx[7] = -1
        assert not K.page_histogram(idx, n, off0, isz, page, shift, npages, 3)[1]


def test_a_tunable_set_makes_a_remembered_no_stale():
    with space("access_counter", "gh200") as sp:
        d = sp.asarray(np.ones(4 * F), placement="device")
        float(d.sum())
        float(d.sum())                                 # read remotely, remembered
        assert (sp.placement(d) == 1).all() and sp._no_faults
        sp.tunables.cpu_access = "migrate_on_cpu_fault"
        float(d.sum())                                 # must come home before this read
        assert (sp.placement(d) == 0).all()
        sp.sync()
        assert remote(sp.trace[-1]) == 0               # read after the move


def test_faults_ahead_see_a_free_that_came_before_them(tmp_path):
    """A range freed and reused before a launch: the manager forgets the old pages before it
    runs the launch's faults (first_touch must see the new array's first touch), as the
    replay of the trace does."""
    import gc
    with space("first_touch") as sp:
        x, z = sp.zeros(4 * F), sp.zeros(4 * F)
        ops.scale(z, x, 2.0)                           # the device touches x first
        sp.sync()
        vx = sp.allocation_of(x).vstart
        sp.free(x)
        del x
        gc.collect()
        y = sp.zeros(4 * F)
        assert sp.allocation_of(y).vstart == vx        # the same pages, a new array
        ops.scale(z, y, 2.0)
        sp.sync()
        assert (sp.placement(y) == 1).all()
        s = sp.manager.summary()
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
    r = replay(ccadgpu.Trace.load(path), "first_touch")
    assert r["modeled_s"] == pytest.approx(s["modeled_s"], rel=1e-12)
    assert r["migrated_bytes_by_cause"] == s["migrated_bytes_by_cause"]


def test_faults_of_an_operation_that_then_fails_do_not_land_on_the_next_one(monkeypatch):
    """The faults that ran for a CPU operation go with its count: if it raises in between,
    the next, unrelated, operation is not charged with them."""
    from ccadgpu.manager import MigrationManager
    with space() as sp:
        d = sp.asarray(np.ones(4 * F), placement="device")
        h = sp.asarray(np.ones(4 * F))
        sp.sync()
        orig = MigrationManager.fault_ahead

        def free_meanwhile(self, ep):                  # as another thread might
            r = orig(self, ep)
            sp.free(d)
            return r
        monkeypatch.setattr(MigrationManager, "fault_ahead", free_meanwhile)
        with pytest.raises(FreedArrayError):
            d[...] = 2.0
        monkeypatch.setattr(MigrationManager, "fault_ahead", orig)
        assert not sp._host_alone and sp._host_ahead is None
        float(h.sum())
        sp.sync()
        r = sp.manager.results[-1]
        assert r.kernel == "host" and r.moved == {} and r.fault_s == 0


@pytest.mark.parametrize("why", ["pinned", "migration_enabled", "preferred_device"])
def test_pages_that_cannot_move_do_not_split_host_epochs(why):
    """would_fault knows the manager's own vetoes: CPU reads of device pages that may not move
    stay one host epoch (a loop of them asks once) instead of an epoch per operation."""
    with space() as sp:
        d = sp.asarray(np.ones(4 * F), placement="device", pinned=why == "pinned")
        if why == "migration_enabled":
            sp.tunables.migration_enabled = False
        elif why == "preferred_device":
            sp.advise(d, preferred_location="device")
        sp.sync()
        n0 = len(sp.trace)
        for _ in range(5):
            float(d.sum())
        sp.sync()
        assert len(sp.trace) - n0 == 1 and (sp.placement(d) == 1).all()
        assert len(sp._no_faults) == 1


def _boom(y, x):
    raise RuntimeError("kernel failed")


@pytest.mark.parametrize("policy", ["on_demand", "access_counter", "first_touch"])
def test_a_launch_that_fails_after_its_faults_is_an_aborted_epoch(tmp_path, policy):
    """Its faults ran (the pages moved for real): the manager prices them, the trace records
    an aborted epoch, and a replay makes the same moves; nothing is counted for it."""
    with space(policy) as sp:
        x = sp.asarray(np.ones(8 * F))
        y = sp.zeros(8 * F)
        ops.scale(y, x, 2.0)
        before = sp.counters.totals()
        launches = sp.vmstat["kernel_launches"]
        with pytest.raises(RuntimeError, match="kernel failed"):
            sp.device.launch(_boom, y, x, reads=[x], writes=[y])
        assert sp.vmstat["kernel_launches"] == launches
        assert sp.vmstat["kernel_aborts"] == 1
        assert [r.aborted for r in sp.trace] == [False, True]
        assert sp.counters.totals() == before
        ops.scale(y, x, 3.0)
        assert np.array_equal(np.asarray(y), np.full(8 * F, 3.0))
        sp.sync()
        s = sp.manager.summary()
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
        live_moves = [r.moved for r in sp.manager.results]
    t = ccadgpu.Trace.load(path)
    assert [r.aborted for r in t] == [r.aborted for r in sp.trace]
    r = replay(t, policy)
    assert r["modeled_s"] == pytest.approx(s["modeled_s"], rel=1e-12)
    assert r["migrated_bytes_by_cause"] == s["migrated_bytes_by_cause"]
    assert len(live_moves) == r["epochs"]


def test_the_aborted_launchs_faults_are_priced_and_traced(tmp_path):
    """on_demand faults every host page of the launch over: the aborted epoch carries those
    moves and their fault time, and no access time or bytes."""
    with space() as sp:
        x = sp.asarray(np.ones(8 * F))
        y = sp.zeros(8 * F)
        with pytest.raises(RuntimeError):
            sp.device.launch(_boom, y, x, reads=[x], writes=[y], name="boom")
        assert (sp.placement(x) == 1).all() and (sp.placement(y) == 1).all()
        sp.sync()
        res = sp.manager.results[-1]
        assert res.kernel == "boom" and res.moved == {("fault", 0, 1): 16}
        assert res.fault_s > 0 and res.access_s == 0 and res.touched_bytes == 0
        rec = sp.trace[-1]
        assert rec.aborted and rec.nbytes == 0 and rec.modeled_seconds == 0
        assert "aborted" in repr(rec)
        assert sp.clock.by_kind["fault"] == pytest.approx(res.fault_s)
        assert sp.clock.by_kind.get("kernel", 0.0) == 0.0
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
    for pol in ("on_demand", "oracle"):
        r = replay(ccadgpu.Trace.load(path), pol)
        assert r["epochs"] == 1 and r["touched_bytes"] == 0
        if pol == "oracle":                          # nothing to access: nothing to move
            assert r["modeled_s"] == 0 and r["lower_bound_s"] == 0
        else:
            assert r["modeled_s"] == pytest.approx(res.total_s, rel=1e-12)


def test_an_offline_between_the_faults_and_the_kernel_aborts_the_launch(monkeypatch):
    """The device going offline after a launch's faults ran: DeviceOfflineError, and the
    moves the faults made are still the manager's (priced, then evacuated)."""
    with space() as sp:
        x = sp.asarray(np.ones(8 * F))
        y = sp.zeros(8 * F)
        orig = sp._faults_ahead

        def offline_meanwhile(ep):                    # as another thread might
            r = orig(ep)
            sp.device.offline()
            return r
        monkeypatch.setattr(sp, "_faults_ahead", offline_meanwhile)
        with pytest.raises(DeviceOfflineError):
            ops.scale(y, x, 2.0)
        monkeypatch.setattr(sp, "_faults_ahead", orig)
        assert (sp.placement(x) == 0).all()            # evacuated, no byte lost
        assert np.array_equal(np.asarray(x), np.ones(8 * F))
        sp.sync()
        assert sp.trace[-1].aborted
        assert any(r.moved.get(("fault", 0, 1)) == 16 for r in sp.manager.results)


def test_older_traces_without_aborted_records_still_load(tmp_path):
    """The header's 'aborted' list is new: a file without it loads with none aborted, and a
    bad list is a format error."""
    import json
    with space() as sp:
        x = sp.asarray(np.ones(4 * F))
        ops.scale(x, x, 2.0)
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
    z = dict(np.load(path))
    h = json.loads(z["header"].tobytes().decode())
    for bad, ok in ((None, True), ([7], False), (["0"], False), ([True], False)):
        if bad is None:
            h.pop("aborted")
        else:
            h["aborted"] = bad
        z["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
        p2 = os.path.join(tmp_path, "t2.npz")
        np.savez_compressed(p2, **z)
        if ok:
            assert not any(r.aborted for r in ccadgpu.Trace.load(p2))
        else:
            with pytest.raises(TraceFormatError):
                ccadgpu.Trace.load(p2)


@pytest.mark.parametrize("op", ["gather", "scatter", "spmv_csr"])
def test_an_index_changed_after_its_check_is_never_followed(op, monkeypatch):
    """The histogram pass checks the indices before the launch's faults and writer
    registration; an index stored out of range meanwhile (as another thread could) is met by
    the kernel's work loop, skipped (no access outside the arrays: the neighbouring array is
    untouched) and reported."""
    import contextlib
    from ccadgpu.space import Space
    with space() as sp:
        table = sp.zeros(F)
        victim = sp.zeros(F)
        k = (victim.__array_interface__["data"][0] - table.__array_interface__["data"][0]) // 8
        assert k > 0                                   # table.flat[k] would be victim[0]
        idx = sp.asarray(np.zeros(4, np.int64))
        vals = sp.asarray(np.full(4, 99.0))
        y = sp.zeros(4)
        indptr = sp.asarray(np.arange(5, dtype=np.int64))
        orig = Space._writing

        @contextlib.contextmanager
        def racing(self, a):
            np.asarray(idx)[0] = k                     # another thread's store, meanwhile
            with orig(self, a):
                yield
        monkeypatch.setattr(Space, "_writing", racing)
        assert_race_contained(op, table, victim, idx, vals, y, indptr)


def test_a_cpu_operation_numpy_refuses_counts_nothing(tmp_path):
    """Bad input to a CPU operation (a shape NumPy cannot broadcast) raises with nothing
    counted or traced; where its faults ran first (device pages it would have written), they
    are an aborted host epoch: the pages are home, the moves priced, and a replay agrees."""
    with space() as sp:
        h = sp.asarray(np.ones(4 * F))
        sp.sync()
        n, totals, clock = len(sp.trace), sp.counters.totals(), sp.clock.elapsed
        with pytest.raises(ValueError):
            h[...] = np.ones(3)
        with pytest.raises(ValueError):
            h + np.ones(3)
        sp.sync()
        assert len(sp.trace) == n and sp.counters.totals() == totals
        assert sp.clock.elapsed == clock
        d = sp.asarray(np.ones(4 * F), placement="device")
        sp.sync()
        with pytest.raises(ValueError):
            d[...] = np.ones(3)                        # faults home first, then refused
        assert (sp.placement(d) == 0).all()
        assert np.array_equal(np.asarray(d), np.ones(4 * F))
        assert sp.counters.totals() == totals and sp.vmstat["host_aborts"] == 1
        float(h.sum())
        sp.sync()
        rec = [r for r in sp.trace if r.aborted]
        assert len(rec) == 1 and rec[0].processor == "cpu" and rec[0].nbytes == 0
        res = [r for r in sp.manager.results if r.moved]
        assert res[0].moved == {("fault", 1, 0): 4} and res[0].access_s == 0
        s = sp.manager.summary()
        path = sp.trace.save(os.path.join(tmp_path, "t.npz"))
    r = replay(ccadgpu.Trace.load(path), "on_demand")
    assert r["modeled_s"] == pytest.approx(s["modeled_s"], rel=1e-12)
    assert r["migrated_bytes_by_cause"] == s["migrated_bytes_by_cause"]


@pytest.mark.parametrize("what", ["pin", "offline"])
def test_a_refused_pin_or_offline_steps_nothing(what):
    """A pin or an offline that is refused changes nothing: not even the epoch whose faults
    ran ahead (a CPU read that faulted device pages home) is stepped or ended by it."""
    with space(cpu_access="migrate_on_cpu_fault", allow_pinned_on_device=False) as sp:
        a = sp.asarray(np.arange(8.0 * F), placement="device")
        d = sp.asarray(np.arange(8.0 * F), placement="device")
        if what == "offline":
            sp.tunables.allow_pinned_on_device = True
            sp.pin(d)
        float(a.sum())                              # its faults ran ahead: not yet stepped
        before = (sp.counters.epoch, len(sp.trace), sp.manager.ctx.epoch, sp.clock.elapsed)
        err = ccadgpu.errors.PinnedError if what == "pin" else \
            ccadgpu.errors.OfflineRefusedError
        with pytest.raises(err):
            sp.pin(d) if what == "pin" else sp.device.offline()
        assert (sp.counters.epoch, len(sp.trace), sp.manager.ctx.epoch,
                sp.clock.elapsed) == before
        assert [u["op"] for u in sp.trace.user_events] == ([] if what == "pin" else ["pin"])
        assert (sp.placement(d) == 1).all() and sp.device.state == "online"


# -- live == replay under any sequence of operations, failing ones among them ------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ACTIONS = st.lists(st.tuples(
    st.sampled_from(["scale", "gather", "bad_gather", "boom", "cpu_read", "cpu_write",
                     "bad_cpu_write", "fancy_read", "free", "sync", "pin", "unpin",
                     "prefer", "accessed_by", "move", "prefetch", "offline", "kernel_move",
                     "knobs", "again", "read_mostly"]),
    st.integers(0, 2), st.integers(0, 10**6)), min_size=1, max_size=14)


@settings(max_examples=int(os.environ.get("CCAD_EXAMPLES", 30)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["on_demand", "access_counter", "first_touch", "autonuma"]),
       profile=st.sampled_from(["h100-pcie", "gh200"]),
       cpu_access=st.sampled_from(["coherent", "migrate_on_cpu_fault"]), actions=ACTIONS)
def test_a_replay_reproduces_any_run_with_failures(tmp_path_factory, policy, profile,
                                                   cpu_access, actions):
    """Launches, CPU operations, failing ones of both (bad indices, a kernel that raises, a
    store NumPy refuses), frees, and the user's hints (read-mostly ones among them), pins,
    moves, offlines and knobs in any order:
    the data equal a NumPy reference, a replay of the trace makes the live manager's moves
    and times, and the oracle's lower bound is below them."""
    from ccadgpu.errors import InvalidArgumentError
    with space(policy, profile, cpu_access=cpu_access) as sp:
        ref = [np.arange(4 * F, dtype=np.float64) + i for i in range(3)]
        arrs = [sp.asarray(r, placement=("host", "device", "host")[i])
                for i, r in enumerate(ref)]
        idx_np = (np.arange(4 * F) * 7919) % (4 * F)
        idx = sp.asarray(idx_np)
        live = [True, True, True]
        for act, k, seed in actions:
            j = (k + 1) % 3
            launches = ("scale", "gather", "bad_gather", "boom", "kernel_move")
            if act == "again" and not live[k]:     # a freed array's slot allocated again
                sp.sync()
                try:
                    arrs[k] = sp.asarray(ref[k], placement=("host", "device")[seed % 2])
                    live[k] = True
                except (ccadgpu.errors.CapacityError, DeviceOfflineError):
                    pass
                continue
            if not live[k] or (act in launches and not live[j]):
                continue
            a, b = arrs[k], arrs[j]
            if act in launches and sp.device.state != "online":
                with pytest.raises(DeviceOfflineError):
                    ops.scale(a, b, 0.5)
                continue
            if act == "scale":
                ops.scale(a, b, 0.5)
                ref[k] = 0.5 * ref[j]
            elif act == "gather":
                ops.gather(a, b, idx)
                ref[k] = ref[j][idx_np]
            elif act == "bad_gather":
                bad = sp.asarray(np.full(4 * F, 8 * F, np.int64))
                with pytest.raises(InvalidArgumentError):
                    ops.gather(a, b, bad)
                sp.free(bad)
            elif act == "boom":
                with pytest.raises(RuntimeError):
                    sp.device.launch(_boom, a, b, reads=[b], writes=[a])
            elif act == "kernel_move":          # a user move between its faults and accesses
                def moving(y_, x_, pages=[p for p in range(4) if seed >> p & 1]):
                    sp.move_pages(b, seed % 2, pages=pages)
                    y_[:] = x_ * 0.5
                sp.device.launch(moving, a, b, reads=[b], writes=[a])
                ref[k] = 0.5 * ref[j]
            elif act == "cpu_read":
                assert float(a.sum()) == pytest.approx(float(ref[k].sum()))
            elif act == "cpu_write":
                a[seed % a.size] = float(seed)
                ref[k][seed % a.size] = float(seed)
            elif act == "bad_cpu_write":
                with pytest.raises(ValueError):
                    a[...] = np.ones(3)
            elif act == "fancy_read":
                sel = np.asarray(a[idx_np[:64]])
                assert np.array_equal(sel, ref[k][idx_np[:64]])
            elif act == "free":
                sp.free(a)
                live[k] = False
            elif act == "pin":
                if (sp.placement(a) == 0).all():
                    sp.pin(a)
            elif act == "unpin":
                sp.unpin(a)
            elif act == "prefer":
                sp.advise(a, preferred_location=(None, "host", "device")[seed % 3])
            elif act == "accessed_by":
                sp.advise(a, accessed_by=((), "host", "device")[seed % 3])
            elif act == "read_mostly":          # the manager's moves to the device duplicate
                sp.advise(a, read_mostly=bool(seed % 3))
            elif act == "move":
                sp.move_pages(a, seed % 2, pages=[p for p in range(4) if seed >> p & 1])
            elif act == "prefetch":
                sp.prefetch(a, seed % 2)
            elif act == "knobs":                  # the manager's knobs, set mid-run
                sp.tunables.set(migration_enabled=bool(seed % 3),
                                heat_halflife_epochs=float(1 + seed % 4))
            elif act == "offline":
                try:
                    sp.device.offline()
                except ccadgpu.errors.OfflineRefusedError:
                    pass                                   # pinned pages on the device
                if seed % 2:
                    sp.device.online()
            else:
                sp.sync()
        for i in range(3):
            if live[i]:
                assert np.array_equal(np.asarray(arrs[i]), ref[i])
        sp.sync()
        s = sp.manager.summary()
        path = sp.trace.save(os.path.join(tmp_path_factory.mktemp("t"), "t.npz"))
    t = ccadgpu.Trace.load(path)
    r = replay(t, policy, tunables={"cpu_access": cpu_access})
    assert r["migrated_bytes_by_cause"] == s["migrated_bytes_by_cause"]
    assert r["modeled_s"] == pytest.approx(s["modeled_s"], rel=1e-9)
    # the oracle plans under the same user actions: its bound is below the live run
    o = replay(t, "oracle", tunables={"cpu_access": cpu_access})
    assert o["lower_bound_s"] <= s["modeled_s"] * (1 + 1e-9) + 1e-15
    # and on a smaller device than recorded, below every policy (the user's moves may not fit)
    small = {"device_memory": 16 * PS, "tunables": {"cpu_access": cpu_access}}
    bound = replay(t, "oracle", **small)["lower_bound_s"]
    for pol in ("static", policy):
        assert bound <= replay(t, pol, **small)["modeled_s"] * (1 + 1e-9) + 1e-15, pol
