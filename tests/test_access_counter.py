"""The access_counter policy's rules, on synthetic traces (replay: logical time, no kernels)."""
import numpy as np
import pytest

from ccadgpu.clock import load_profile
from ccadgpu.manager import Epoch, MigrationManager, SimPlacement
from ccadgpu.policies import make_policy
from ccadgpu.policies.access_counter import decayed_window
from ccadgpu.replay import replay
from ccadgpu.tunables import Tunables

from test_policies import PS, SWEEP, make_trace, sweeps


def run(epochs, npages, device_frames, profile, init=None, allocations=(None,), **params):
    """Step a manager over ``epochs`` (as in make_trace); returns it."""
    tr = make_trace(epochs, npages, device_frames, profile=profile, allocations=allocations)
    init = np.zeros(npages, np.int8) if init is None else init
    mgr = MigrationManager(SimPlacement(PS, [4 * npages, device_frames], init),
                           "access_counter", load_profile(profile), Tunables(), **params)
    for i, r in enumerate(tr):
        mgr.step(Epoch.from_record(r, i))
    return mgr


def moved_at(mgr, cause, src, dst):
    """Epoch indices at which pages moved for ``cause`` from ``src`` to ``dst``, with counts."""
    return {r.index: r.moved[(cause, src, dst)] for r in mgr.results
            if (cause, src, dst) in r.moved}


def test_payback_moves_a_page_as_soon_as_its_reuse_is_seen():
    # h100-pcie: a full-page sweep over PCIe costs ~30% of a move, so a page swept every epoch
    # pays back in ~4 epochs: it moves at the end of its second epoch, not after it has paid
    # its price in rent (the ski-rental rule waited four epochs)
    mgr = run([("device", sweeps(range(16)))] * 10, 16, 64, "h100-pcie")
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 16}
    assert all(r.remote_bytes == 0 for r in mgr.results[2:])


def test_reuse_moves_when_the_second_launch_starts():
    # the second launch over the same pages is the evidence of reuse, and its footprint is
    # known before its kernel runs: the pages move then, and that launch reads them locally,
    # with no fault taken
    ep = [("device", sweeps(range(16)))] * 4
    mgr = run(ep, 16, 64, "h100-pcie")
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 16}
    assert mgr.results[0].remote_bytes > 0
    assert all(r.remote_bytes == 0 and r.fault_s == 0 for r in mgr.results[1:])
    # without it the pages move at the end of that launch, which paid a second remote sweep
    late = run(ep, 16, 64, "h100-pcie", launch_promote=False)
    assert moved_at(late, "access_counter", 0, 1) == {1: 16}
    assert late.results[1].remote_bytes == mgr.results[0].remote_bytes
    assert mgr.summary()["modeled_s"] < late.summary()["modeled_s"]
    # the launch's burst is not known before it runs: the page's usual one stands for it, so
    # pages touched lightly before stay at the next launch, and move at a later one once
    # their usual burst pays
    light = run([("device", {p: 64 for p in range(16)})] + [("device", sweeps(range(16)))] * 3,
                16, 64, "h100-pcie")
    assert moved_at(light, "access_counter", 0, 1) == {2: 16}
    assert light.results[1].remote_bytes > 0 and light.results[2].remote_bytes == 0
    # the CPU's touch in between is judged with the launch: the pages stay on the host
    pp = run([("device", sweeps(range(16))), ("cpu", sweeps(range(16)))] * 4, 16, 64,
             "h100-pcie")
    assert pp.summary()["migrated_bytes"] == 0


def test_a_page_two_chunks_of_a_stream_share_is_no_evidence_of_reuse():
    # a stream in chunks that do not end on page boundaries: each boundary page is touched by
    # two epochs, one sector by the first and the rest by the next; no byte was touched twice
    half = 8
    chunk = [({p: SWEEP for p in range(0, half)} | {half: 1}),
             ({half: SWEEP - 1} | {p: SWEEP for p in range(half + 1, 16)})]
    rest = [("device", {p: SWEEP}) for p in range(16, 20)]       # the stream goes on
    mgr = run([("device", c) for c in chunk] + rest, 20, 64, "h100-pcie")
    assert mgr.summary()["migrated_bytes"] == 0
    # the same page swept twice moves (the payback rule, as above)
    chunk[0][half] = chunk[1][half] = SWEEP
    mgr = run([("device", c) for c in chunk] + rest, 20, 64, "h100-pcie")
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 1}


def test_a_moving_working_set_of_reused_data_is_followed_after_one_epoch():
    # phase change: pages 0-7 are read for four epochs, then pages 8-15.  The first phase
    # needs two epochs of evidence; the second moves after its first epoch, since the data
    # has shown reuse and the previous working set was left
    phases = [("device", sweeps(range(8)))] * 4 + [("device", sweeps(range(8, 16)))] * 4
    mgr = run(phases, 16, 64, "h100-pcie")
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 8, 4: 8}
    # not when the new pages belong to another allocation (no reuse seen there yet) ...
    mgr = run(phases, 16, 64, "h100-pcie", allocations=(8, 8))
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 8, 5: 8}
    # ... nor when the old working set is still in use (an occasional sweep of cold data:
    # hot pages 0-3 every epoch, all 16 pages at epoch 3)
    hot = [("device", sweeps(range(4)))] * 3 + [("device", sweeps(range(16)))] + \
        [("device", sweeps(range(4)))] * 4
    mgr = run(hot, 16, 64, "h100-pcie")
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 4}


def test_epochs_without_a_known_allocation_and_huge_allocation_ids():
    """Pages of no allocation (-1: freed before the epoch closed; -2: several during a host
    epoch) teach nothing and break nothing, first epoch included; allocation ids in the
    millions cost no more state than small ones (a fixed, tagged table)."""
    prof = load_profile("h100-pcie")
    mgr = MigrationManager(SimPlacement(PS, [64, 64], np.zeros(16, np.int8)), "access_counter",
                           prof, Tunables())
    v = np.arange(8)
    sec = np.zeros((8, 2, 2), np.int64)
    sec[:, 1, 0] = SWEEP
    for e, ids in enumerate(([-1] * 8, [-2] * 8, [-1] * 4 + [7] * 4, [2_000_000] * 8,
                             [2_000_000 + 4096] * 8, [2_000_000] * 8)):
        ep = Epoch(e, e, "k", 1, v, sec, True)
        ep.alloc_ids = np.array(ids, np.int64)
        mgr.step(ep)
    pol = mgr.policy
    assert pol._tag.nbytes + pol._prev_e.nbytes + pol._prev_n.nbytes + pol._prev_r.nbytes \
        < 1 << 20
    # the two big ids share a slot: the later one took it over, then the first took it back
    assert pol._tag[2_000_000 % len(pol._tag)] == 2_000_000


def test_pages_that_cannot_pay_back_soon_stay_unless_their_rent_adds_up():
    # gh200: a sweep over NVLink-C2C is ~7% of a move (the per-page cost dominates): a page
    # swept once an epoch needs ~14 epochs to pay back, beyond the 8-epoch horizon, so it
    # stays where it is ...
    mgr = run([("device", sweeps(range(16)))] * 16, 16, 64, "gh200")
    assert mgr.summary()["migrated_bytes"] == 0
    # ... until the rent it has paid (decayed, half-life 64 epochs) reaches break_even (2)
    # times the move
    prof = load_profile("gh200")
    rent = SWEEP * 32 * (1 / prof.bandwidth[1, 0] - 1 / prof.bandwidth[1, 1])
    price = PS / prof.link[0, 1] + prof.per_page
    assert rent * 8 < price                                   # the payback rule never fires
    paid = rent * decayed_window(np.arange(1, 60), 64.0)      # after epochs 0, 1, 2, ...
    expect = int(np.argmax(paid >= 2 * price))
    mgr = run([("device", sweeps(range(16)))] * 60, 16, 64, "gh200")
    assert moved_at(mgr, "access_counter", 0, 1) == {expect: 16} and expect > 16
    # with the horizon long enough it would have paid back: it moves on its second epoch
    mgr = run([("device", sweeps(range(16)))] * 16, 16, 64, "gh200", payback_epochs=16)
    assert moved_at(mgr, "access_counter", 0, 1) == {1: 16}


def test_a_page_used_once_never_moves():
    mgr = run([("device", sweeps(range(i * 4, i * 4 + 4), 8)) for i in range(8)], 32, 64,
              "h100-pcie")
    assert mgr.summary()["migrated_bytes"] == 0


def test_cpu_touch_brings_a_promoted_page_home_on_pcie_not_on_gh200():
    ep = [("device", sweeps(range(8)))] * 4 + [("cpu", sweeps(range(8)))]
    pcie = run(ep, 8, 64, "h100-pcie")
    assert moved_at(pcie, "access_counter", 0, 1) == {1: 8}
    # a CPU read of device memory over BAR1 (0.5 GB/s) would cost ~30 moves: the touch faults
    # and the page comes home before the CPU's accesses, which are then local
    assert moved_at(pcie, "fault", 1, 0) == {4: 8}
    assert pcie.results[4].remote_bytes == 0 and pcie.results[4].fault_s > 0
    # NVLink-C2C: the CPU reads HBM coherently at 297 GB/s; nothing moves back
    gh = run(ep, 8, 64, "gh200", payback_epochs=16)
    assert moved_at(gh, "access_counter", 0, 1) == {1: 8}
    assert moved_at(gh, "fault", 1, 0) == {} and gh.results[4].remote_bytes > 0
    off = run(ep, 8, 64, "h100-pcie", cpu_fault_return=False)
    assert moved_at(off, "fault", 1, 0) == {} and off.results[4].remote_bytes > 0


def test_a_burst_that_pays_for_its_move_alone_moves_when_the_next_launch_starts():
    # 40 sweeps a burst over PCIe: the previous burst alone saved far more than a move, so
    # the next launch over the page moves it before its accesses (priced local, no fault:
    # the launch's footprint is known), even where the reuse rules would not move it yet
    for params in ({}, {"min_epochs": 3}):
        mgr = run([("device", sweeps(range(4), 40))] * 3, 4, 64, "h100-pcie", **params)
        assert moved_at(mgr, "access_counter", 0, 1) == {1: 4}
        assert moved_at(mgr, "fault", 0, 1) == {}
        assert mgr.results[0].remote_bytes > 0 and mgr.results[1].remote_bytes == 0
        assert mgr.results[1].fault_s == 0
    # without the footprint known at launch, the touch faults it over (the fault is priced)
    mgr = run([("device", sweeps(range(4), 40))] * 3, 4, 64, "h100-pcie", launch_promote=False)
    assert moved_at(mgr, "fault", 0, 1) == {1: 4}
    assert mgr.results[0].remote_bytes > 0 and mgr.results[1].remote_bytes == 0
    assert mgr.results[1].fault_s == pytest.approx(load_profile("h100-pcie").fault)


def test_waits_to_see_the_cpu_run_before_moving_pages_it_may_share():
    a, b, c = range(0, 4), range(4, 8), range(8, 12)
    batch = [("cpu", {**sweeps(a), **sweeps(c)}), ("device", {**sweeps(a), **sweeps(b),
                                                               **sweeps(c)}),
             ("device", {**sweeps(b), **sweeps(c)})]
    ep = [("cpu", sweeps(a)), ("device", {**sweeps(a), **sweeps(b), **sweeps(c)}),
          ("device", {**sweeps(b), **sweeps(c)})] + batch * 3
    mgr = run(ep, 12, 64, "h100-pcie")
    # b and c were used by the device twice by epoch 2, but the CPU ran before that (epoch 0):
    # a wrong guess (a CPU touch of a device page: a round trip and a fault) costs more than
    # waiting for its next run; at epoch 3 it touched c but not b, and b moves right then,
    # without waiting for another notification
    assert moved_at(mgr, "access_counter", 0, 1) == {3: 4}
    node = mgr.placement.node
    assert (node[4:8] == 1).all() and (node[0:4] == 0).all() and (node[8:12] == 0).all()
    assert moved_at(mgr, "fault", 1, 0) == {}                  # nothing had to come back


def test_eviction_takes_the_coldest_pages_the_clock_hand_finds():
    prof = load_profile("h100-pcie")
    n = 10_000
    init = np.ones(n + 8, np.int8)
    init[n:] = 0                                  # 8 host pages; the device is full
    mgr = MigrationManager(SimPlacement(PS, [4 * n, n], init), "access_counter", prof,
                           Tunables())
    mgr._ensure()
    mgr.heat_val[:n] = 100.0                      # warm device pages ...
    mgr.heat_val[[10, 11]] = 1.0                  # ... two cold ones near the start ...
    mgr.heat_val[[9000, 9001]] = 0.5              # ... and two colder far away
    mgr.heat_val[n:, 1] = 1e6                     # the hot newcomers
    pol = mgr.policy
    incoming = np.arange(n, n + 2)
    # need 2: the hand examines max(4096, 8 * 2) pages from vpn 0, so it takes 10 and 11, the
    # coldest it has seen, not the colder pages further on (work grows with the promotion)
    assert sorted(pol.victims(mgr.ctx, 2, incoming).tolist()) == [10, 11]
    assert pol._hand == 4096
    # a need so large that the window covers every page is one full pass: coldest first
    v = pol.victims(mgr.ctx, 2000, incoming).tolist()
    assert len(v) == 2000 and set(v[:2]) == {9000, 9001} and set(v[2:4]) == {10, 11}
    assert not set(v) & set(range(n, n + 8))                      # never a host page


def test_fused_rule_matches_the_documented_rule():
    """The fused candidate loop against the same rules written with NumPy arrays."""
    rng = np.random.default_rng(3)
    prof = load_profile("h100-pcie")
    n = 20_000
    init = rng.integers(0, 2, n).astype(np.int8)
    mgr = MigrationManager(SimPlacement(PS, [4 * n, 4 * n], init), "access_counter", prof,
                           Tunables())
    mgr._ensure()
    pol, ctx = mgr.policy, mgr.ctx
    ctx.epoch = 50
    pol._touches[:] = rng.integers(0, 4, (n, 2))
    pol._acc[:] = rng.exponential(3000, (n, 2)) * (rng.random((n, 2)) < 0.7)
    pol._acc_at[:] = rng.integers(30, 51, n)
    pol._since[:] = rng.integers(0, 50, n)
    pol._burst[:] = rng.exponential(2000, (n, 2))
    pol._until[:] = rng.integers(0, 60, n)
    pol._peak[:] = rng.exponential(2000, (n, 2))
    pol._total[:] = pol._peak * rng.uniform(1.0, 3.0, (n, 2))
    pol._fast[:] = rng.random((n, 2)) < 0.3
    pol._cohort[:] = rng.integers(0, 33, (n, 2))      # the fault shares of the CPU's costs
    pol._cohort[:, 1] = np.maximum(pol._cohort[:, 1], 1)  # (the CPU's: 0 until seen)
    pol._vol[:] = np.where(rng.random(n) < 0.5, rng.exponential(8000, n), 0.0)
    pol._vsince[:] = rng.exponential(6000, n)         # the device's use between CPU visits
    m = pol.min_epochs         # the state observe keeps: the evidence, or fast and touched
    pol._ready[:] = ((pol._touches >= m) & (pol._total >= (m - 0.5) * pol._peak)) | \
        (pol._fast & (pol._touches >= 1))
    mgr.last_move[:] = rng.integers(-5, 10, n)
    pol._moved[:] = np.where(rng.random(n) < 0.9, mgr.last_move, -1)
    pages = np.arange(n)
    for proc, at_launch in ((0, False), (1, False), (1, True)):
        got, rate = pol._evaluate(ctx, pages, proc, at_launch=at_launch)
        frm = 0 if proc == 1 else 1
        value, want_rate = pol.net_value(ctx, pages, proc)
        price = (1.0 if proc == 1 else pol.hysteresis) * pol._price[1 - frm]
        need = np.where(pol._fast[:, proc], 1, pol.min_epochs)
        ready = (pol._touches[:, proc] >= need) & \
            ((need == 1) | (pol._total[:, proc] >= (need - 0.5) * pol._peak[:, proc]))
        if at_launch:      # pages it makes ready: one more touching epoch, the usual burst
            b = pol._burst[:, proc]
            ready = ~ready & (b > 0) & (pol._touches[:, proc] + 1 >= pol.min_epochs) & \
                (pol._total[:, proc] + b >= (pol.min_epochs - 0.5) *
                 np.maximum(pol._peak[:, proc], b))
            # ... and its rent in the rate (the launch would pay it), not in the rent paid
            want_rate = (value + b * pol._gain[1]) / \
                decayed_window(ctx.epoch - pol._since + 1, 64.0)
        ok = (ctx.node == frm) & ready & \
            (mgr.last_move == pol._moved) & (pol._until <= ctx.epoch) & (want_rate > 0) & \
            ((value >= pol.break_even * price) | (want_rate * pol.payback_epochs >= price))
        if proc == 1:      # a page the CPU takes home must pay that before the CPU is due
            home = pol._price[0] + prof.fault / pol._cpu_cohort(pages)
            cpu_b = pol._burst[:, 0]
            due = (pol._vol > 0) & (pol._vsince < 2 * pol._vol) & \
                (home < np.where(cpu_b > 0, cpu_b, pol._sweep) * pol._gain[0])
            ok &= ~due | (pol._dev_ahead(pages) * pol._gain[1] > price + home)
        assert ok.sum() > 5 and (~ok).sum() > 5
        assert got.tolist() == pages[ok].tolist()
        assert np.allclose(rate, want_rate[ok], rtol=1e-12)


def test_decisions_are_deterministic():
    tr = make_trace([("device", {p: SWEEP * (1 + p % 5) for p in range(40)}),
                     ("cpu", sweeps(range(0, 40, 3)))] * 12, 40, 24, profile="h100-pcie")
    a = replay(tr, "access_counter")
    b = replay(tr, "access_counter")
    for k in ("modeled_s", "migrated_bytes", "migrated_bytes_by_cause", "thrashing_pages"):
        assert a[k] == b[k]


def test_parameters_are_checked():
    for bad in ({"payback_epochs": -1}, {"break_even": 0}, {"min_epochs": 0},
                {"hysteresis": 0.5}):
        with pytest.raises(Exception):
            make_policy("access_counter", **bad)


def test_decayed_window_weighs_a_steady_rate():
    w = decayed_window(np.array([1, 2, 10]), 64.0)
    assert w[0] == 1.0 and 1.9 < w[1] < 2.0 and 9.0 < w[2] < 10.0


def test_a_launch_never_evicts_pages_of_its_own_footprint():
    # pages 0-15 sit on the full device, cold since one early sweep; a launch that reads them
    # again together with host pages 16-31 must not evict them to make room for 16-31 (their
    # heat does not count this launch yet: it is about to read them)
    init = np.zeros(48, np.int8)
    init[:16] = 1
    a, b = range(16), range(16, 32)
    ep = [("device", sweeps(a))] + [("device", {40: 1})] * 19 + [("device", sweeps(b))] + \
        [("device", sweeps(a) | sweeps(b))] * 6
    mgr = run(ep, 48, 16, "h100-pcie", init=init, allocations=(16, 16, 16))
    assert moved_at(mgr, "eviction", 1, 0) == {}
    assert (mgr.placement.node[:16] == 1).all()


def test_moves_of_one_launch_share_the_free_frames():
    # one free frame: page 16's burst pays for its move at the launch, page 17 is made ready
    # by it; the second must not take the frame the first was promised (the manager then
    # evicted page 16 again to make room, and the next launch pulled it back)
    init = np.zeros(20, np.int8)
    init[:16] = 1
    a = range(16)
    ep = [("device", {16: 40 * SWEEP})] + [("device", sweeps(a))] * 18 + \
        [("device", sweeps(a) | {17: 4 * SWEEP})] + \
        [("device", sweeps(a) | {16: 40 * SWEEP, 17: 4 * SWEEP})] * 3
    mgr = run(ep, 20, 17, "h100-pcie", init=init, allocations=(16, 1, 1, 2))
    assert moved_at(mgr, "access_counter", 0, 1)[20] == 1
    assert sum(moved_at(mgr, "access_counter", 0, 1).values()) == 2     # 16, later 17
    assert mgr.placement.node[16] == 1


def test_no_eviction_while_the_device_takes_no_pages():
    class Closed(SimPlacement):          # a device going offline: it accepts no page
        def accepts(self, node):
            return node == 0
    init = np.zeros(48, np.int8)
    init[:16] = 1
    ep = [("device", sweeps(range(16)))] + [("device", {40: 1})] * 19 + \
        [("device", sweeps(range(16, 32)))] * 4
    tr = make_trace(ep, 48, 16, profile="h100-pcie", allocations=(16, 16, 16))
    for cls, evicts in ((SimPlacement, True), (Closed, False)):
        mgr = MigrationManager(cls(PS, [4 * 48, 16], init), "access_counter",
                               load_profile("h100-pcie"), Tunables(), min_epochs=1)
        for i, r in enumerate(tr):
            mgr.step(Epoch.from_record(r, i))
        assert bool(mgr.summary()["migrated_bytes_by_cause"].get("eviction")) == evicts


def test_a_lone_page_pays_a_whole_fault_for_its_ping_pong():
    # the device reads a page 20 sweeps' worth per launch and the CPU writes it in between
    # (a solver's staging vector).  A full region of such pages shares each fault home
    # (the manager prices one per faulting region): over and back every round pays.  A
    # lone page pays the whole fault each time it comes home, more than its burst saves: it
    # is held on the host after its first round trips, as plain thrashing
    full = run([("device", sweeps(range(32), 20)), ("cpu", sweeps(range(32)))] * 12, 32, 64,
               "h100-pcie")
    assert full.summary()["migrated_bytes"] >= 2 * 10 * 32 * PS
    lone = run([("device", {0: 20 * SWEEP}), ("cpu", {0: SWEEP})] * 12, 32, 64, "h100-pcie",
               allocations=(1, 31))
    st = replay(make_trace([("device", {0: 20 * SWEEP}), ("cpu", {0: SWEEP})] * 12, 32, 64,
                           profile="h100-pcie", allocations=(1, 31)), "static")
    assert lone.summary()["migrated_bytes"] <= 4 * PS
    assert lone.summary()["modeled_s"] < 1.2 * st["modeled_s"]


def test_the_fault_share_counts_the_pages_that_fault_together():
    # the device reads page 0 alone (20 sweeps' worth) and the CPU sweeps all 32 pages of its
    # region in between: the CPU's touches of the 31 host pages fault nothing, so page 0
    # comes home with a whole fault of its own each time, and ping-pong does not pay
    ep = [("device", {0: 20 * SWEEP}), ("cpu", sweeps(range(32)))] * 12
    tr = make_trace(ep, 32, 64, profile="h100-pcie")
    ac, st = replay(tr, "access_counter"), replay(tr, "static")
    assert ac["migrated_bytes"] <= 4 * PS
    assert ac["modeled_s"] < 1.2 * st["modeled_s"]


def _hot_pages_between_cpu_sweeps(launches, burst, cycles=12):
    """The device reads pages 0-2 of a 32-page region ``burst`` sweeps' worth per launch,
    ``launches`` launches in a row; then the CPU sweeps the whole region; ``cycles`` times."""
    ep = []
    for _ in range(cycles):
        ep += [("device", sweeps(range(3), burst))] * launches
        ep.append(("cpu", sweeps(range(32))))
    tr = make_trace(ep, 32, 64, profile="h100-pcie")
    return {p: replay(tr, p) for p in ("static", "on_demand", "access_counter")}


def test_ping_pong_pays_when_the_device_uses_the_page_for_a_run_of_launches():
    # on PCIe each CPU sweep faults the three device pages home, a fault shared by three:
    # one launch's burst (10 sweeps) does not pay the round trip, eight launches' do.  The
    # thrash back-off held them on the host, weighing one burst (1.96x on_demand)
    r = _hot_pages_between_cpu_sweeps(8, 10)
    ac = r["access_counter"]
    assert ac["modeled_s"] < 1.05 * min(r["static"]["modeled_s"], r["on_demand"]["modeled_s"])
    assert ac["migrated_bytes_by_direction"]["host_to_device"] >= 3 * 10 * PS
    # ... and a page the device reads once between the CPU's sweeps stays on the host
    r = _hot_pages_between_cpu_sweeps(1, 3)
    assert r["access_counter"]["modeled_s"] <= 1.02 * r["static"]["modeled_s"]


def test_the_way_home_is_priced_with_the_pages_that_fault_together():
    # one launch of 10 sweeps saves more than the moves over and back, not more than the
    # fault home too (a third of a fault: three pages come home together).  The rules that
    # price a CPU touch spread that fault over the region's 32 pages: the pages kept going
    # over and back (1.15x static)
    r = _hot_pages_between_cpu_sweeps(1, 10)
    assert r["access_counter"]["modeled_s"] <= 1.02 * r["static"]["modeled_s"]


def test_the_first_cpu_touch_of_promoted_pages_faults_them_home_together():
    # the device reads a whole region 10 sweeps' worth per launch, the CPU a quarter of each
    # page in between (h100-pcie: it faults device pages home).  At the CPU's first touch of
    # the promoted region nothing has taught the policy which pages come home together, but
    # the touch itself says so: all 32, one fault between them (priced at a whole fault
    # each, the CPU read the region over BAR1 for an epoch: 1.44x on_demand)
    ep = [("device", sweeps(range(32), 10)), ("cpu", {p: SWEEP // 4 for p in range(32)})] * 4
    mgr = run(ep, 32, 64, "h100-pcie")
    back = moved_at(mgr, "fault", 1, 0)
    first = min(i for i, n in moved_at(mgr, "access_counter", 0, 1).items())
    assert back.get(first + 1) == 32
    tr = make_trace(ep, 32, 64, profile="h100-pcie")
    best = min(replay(tr, p)["modeled_s"] for p in ("static", "on_demand"))
    assert mgr.summary()["modeled_s"] < best


def test_runs_of_varying_length_are_judged_by_their_average():
    # runs of 15 launches and of 1 alternate between the CPU's sweeps: moving the three pages
    # for every run pays on average; an estimate that follows the last run closely moves
    # them before each short run and holds them before each long one (1.04x static)
    ep = []
    for n in [15, 1] * 6:
        ep += [("device", sweeps(range(3), 3))] * n
        ep.append(("cpu", sweeps(range(32))))
    tr = make_trace(ep, 32, 64, profile="h100-pcie")
    r = {p: replay(tr, p)["modeled_s"] for p in ("static", "on_demand", "access_counter")}
    assert r["access_counter"] < 0.9 * min(r["static"], r["on_demand"])


def test_eviction_among_equally_cold_pages_takes_the_least_recently_touched():
    """Equal heat is the usual case (pages of one sweep): the cut must follow last touch."""
    prof = load_profile("h100-pcie")
    n = 1000
    init = np.ones(n + 4, np.int8)
    init[n:] = 0
    mgr = MigrationManager(SimPlacement(PS, [4 * n, n], init), "access_counter", prof,
                           Tunables())
    mgr._ensure()
    mgr.heat_val[:n] = 1.0                         # every device page equally warm
    mgr.heat_val[n:, 1] = 1e6
    rng = np.random.default_rng(5)
    mgr.last_touch[:n, 1] = rng.permutation(n)
    v = mgr.policy.victims(mgr.ctx, 3, np.arange(n, n + 2))
    assert mgr.last_touch[v, 1].tolist() == [0, 1, 2]
