"""The fused per-epoch upkeep (ccadgpu.upkeep) and the parts form of a tally give exactly what
the plain NumPy passes they replace give: notifications, the manager's accounting of an epoch,
and every view of a tally (counts, sectors, nodes, remote sectors, what the counters add)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ccadgpu
from ccadgpu import ops
from ccadgpu.clock import load_profile
from ccadgpu.counters import CPU, DEVICE, READ, WRITE, Footprint, TallyBuilder
from ccadgpu.manager import Epoch, MigrationManager, SimPlacement
from ccadgpu.notify import NOTIFICATION_DTYPE, raise_notifications
from ccadgpu.policies.base import decay
from ccadgpu.tunables import Tunables


# -- references: the NumPy passes the fused loops replaced ---------------------------------------
def ref_notifications(acc, vpns, remote, rp, threshold, epoch):
    regions = vpns // rp
    starts = np.flatnonzero(np.concatenate(([True], regions[1:] != regions[:-1])))
    reg = regions[starts]
    found = []
    for p in range(acc.shape[0]):
        if not remote[p].any():
            continue
        sums = np.add.reduceat(remote[p], starts)
        nz = sums > 0
        rg = reg[nz]
        acc[p, rg] += sums[nz]
        hit = rg[acc[p, rg] >= threshold]
        rec = np.zeros(len(hit), NOTIFICATION_DTYPE)
        rec["epoch"], rec["processor"], rec["region"] = epoch, p, hit
        rec["vpn"], rec["npages"], rec["sectors"] = hit * rp, rp, acc[p, hit]
        acc[p, hit] = 0
        found.append(rec)
    return np.concatenate(found) if found else np.zeros(0, NOTIFICATION_DTYPE)


def ref_account(mgr, ep, node):
    """Steps (2) and (3) of the manager's step as NumPy passes, on copies of its state:
    (access seconds, touched bytes, remote bytes, heat, heat epoch, last touch, acc, notes)."""
    v, sec, e = ep.vpns, ep.sectors, mgr.ctx.epoch
    hv, he, lt, acc = (mgr.heat_val.copy(), mgr.heat_epoch.copy(), mgr.last_touch.copy(),
                       mgr._acc.copy())
    access = mgr.clock.epoch_seconds(sec, node, launch=ep.launch)
    by_proc = sec[:, :, 0] + sec[:, :, 1]
    remote = node[:, None] != np.array([0, 1])[None, :]
    hv[v] = hv[v] * decay(e - he[v], mgr.tunables.heat_halflife_epochs)[:, None] + by_proc
    he[v] = e
    t = lt[v]
    t[by_proc > 0] = e
    lt[v] = t
    rs = np.stack([np.where(remote[:, p], by_proc[:, p], 0) for p in range(2)])
    notes = ref_notifications(acc, v, rs, mgr._rp, mgr.tunables.access_counter_threshold, e)
    return (access, int(by_proc.sum()) * 32, int((by_proc * remote).sum()) * 32, hv, he, lt,
            acc, notes)


pages = st.lists(st.integers(0, 300), min_size=1, max_size=60, unique=True).map(sorted)


@settings(max_examples=150, deadline=None)
@given(v=pages, seed=st.integers(0, 2**31), rp=st.sampled_from([1, 2, 4, 32]),
       threshold=st.integers(1, 400))
def test_notifications_match_numpy(v, seed, rp, threshold):
    rng = np.random.default_rng(seed)
    v = np.array(v, np.int64)
    remote = rng.integers(0, 200, (2, len(v))) * (rng.random((2, len(v))) < 0.7)
    remote[rng.integers(0, 2)] *= rng.integers(0, 2)         # sometimes one processor has none
    acc = rng.integers(0, threshold, (2, 310 // rp + 1))
    a1, a2 = acc.copy(), acc.copy()
    got = raise_notifications(a1, v, remote, rp, threshold, 9)
    want = ref_notifications(a2, v, remote, rp, threshold, 9)
    assert got.tobytes() == want.tobytes() and np.array_equal(a1, a2)
    a3 = acc.copy()                                         # one array per processor, or None
    rows = [r if r.any() else None for r in remote]
    assert raise_notifications(a3, v, rows, rp, threshold, 9).tobytes() == want.tobytes()
    assert np.array_equal(a3, a2)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), rp=st.sampled_from([1, 4, 32]),
       threshold=st.integers(1, 300))
def test_manager_accounting_matches_numpy(seed, rp, threshold):
    rng = np.random.default_rng(seed)
    n = 400
    tun = Tunables()
    tun.access_counter_granularity = max(4096, rp * 4096)
    tun.access_counter_threshold = threshold
    node = rng.integers(-1, 2, n).astype(np.int8)
    mgr = MigrationManager(SimPlacement(4096, [n, n], node), "static", load_profile("gh200"),
                           tun)
    for epoch in range(6):          # history: heat decays, accumulators carry over
        v = np.flatnonzero(rng.random(n) < 0.4).astype(np.int64)
        sec = rng.integers(0, 50, (len(v), 2, 2)) * (rng.random((len(v), 2, 2)) < 0.5)
        ep = Epoch(epoch, epoch, "k", int(rng.integers(0, 2)), v, sec, bool(epoch % 2))
        mgr._ensure()
        want = ref_account(mgr, ep, mgr.placement.seen_by(ep.processor, v))
        res = mgr.step(ep)
        assert (res.access_s, res.touched_bytes, res.remote_bytes) == want[:3]
        for got, exp in zip((mgr.heat_val, mgr.heat_epoch, mgr.last_touch, mgr._acc), want[3:7]):
            assert np.array_equal(got, exp)
        assert res.notifications == len(want[7])


# -- the parts form of a tally ---------------------------------------------------------------
def _fp(vlo, nbytes, full):
    nbytes = np.asarray(nbytes, np.int64)
    return Footprint(vlo, nbytes, (nbytes + 31) // 32, full)


def _views(t, local=(0, 1)):
    table = np.zeros((400, 8), np.int64)
    t.add_bytes(table)
    return (t.vpns, t.node, t.counts, t.sectors, t.get_totals(), t.sectors_by_node(2),
            t.get_remote_sectors(local), np.stack([np.zeros(t.n, np.int64) if r is None else r
                                                   for r in t.remote_rows(local)]), table)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), nparts=st.integers(1, 5))
def test_parts_tally_equals_column_tally(seed, nparts):
    """Spans that overlap, touch or leave gaps; parts on one node or on both (one placement
    snapshot, as in a launch)."""
    rng = np.random.default_rng(seed)
    where = np.repeat(rng.integers(0, 2, 40), 10).astype(np.int8)     # runs of pages per node
    where[rng.random(400) < 0.05] ^= 1
    parts = []
    for _ in range(nparts):
        vlo, n = int(rng.integers(0, 300)), int(rng.integers(1, 40))
        parts.append((int(rng.integers(0, 2)), int(rng.integers(0, 2)), vlo,
                      rng.integers(1, 5000, n), where[vlo: vlo + n].copy()))
    for full, form in ((True, "parts"), (False, "columns")):
        b = TallyBuilder((0, 1), 2)
        for proc, rw, vlo, nb, nd in parts:
            b.add(proc, rw, _fp(vlo, nb, full), nd)
        t = b.build()
        assert (t.parts is not None) == (form == "parts")
        if full:
            views = _views(t)
        else:
            for a, c in zip(views, _views(t)):
                assert np.array_equal(a, c)


def test_dense_launch_record_keeps_no_page_arrays():
    """A triad's trace record holds its parts (footprints shared with every launch over the
    same arrays), and reads back exactly what was counted."""
    P = 64 << 10
    with ccadgpu.Space(device_memory=64 * P, host_memory=512 * P, page_size=P) as sp:
        a, b, c = (sp.asarray(np.random.default_rng(k).random(20 * P // 8)) for k in range(3))
        sp.advise(c, preferred_location="device")
        sp.prefetch(c, "device")
        sp.move_pages(b, "device", pages=[0, 3, 7])           # b on both nodes
        ops.triad(a, b, c, 2.0)
        ops.triad(a, b, c, 2.0)
        r1, r2 = sp.trace[-2], sp.trace[-1]
        t = r2._tally
        assert t.parts is not None and t._vpns is None and t._node is None
        assert isinstance(r2._alloc, list)
        assert all(p1[3].nbytes is p2[3].nbytes for p1, p2 in zip(r1._tally.parts, t.parts))
        for arr, rw, node in ((a, WRITE, sp.placement(a)), (b, READ, sp.placement(b)),
                              (c, READ, sp.placement(c))):
            _, lo, hi = sp._span_vpns(arr)
            on = (r2.vpns >= lo) & (r2.vpns < hi)
            assert np.array_equal(r2.node[on], node)
            assert (r2.alloc[on] == sp.allocation_of(arr).id).all()
            loc = np.where(node == 1, 0, 1)                  # local to the device: node 1
            got = r2.counts[on, DEVICE, rw]
            assert np.array_equal(got[np.arange(len(loc)), loc], got.sum(axis=1))
            assert not r2.counts[on, CPU].any()
        assert np.array_equal(np.diff(r2.vpns) > 0, np.ones(len(r2.vpns) - 1, bool))
        assert r2.nbytes == 3 * a.nbytes


def test_range_cache_arrays_are_read_only():
    P = 4096
    with ccadgpu.Space(device_memory="1MiB", host_memory="8MiB", page_size=P) as sp:
        x = sp.zeros(3 * P // 8 + 5)
        ops.scale(x, x, 2.0)
        fp = sp.trace[-1]._tally.parts[0][3]
        with pytest.raises(ValueError):
            fp.nbytes[0] = 1
