"""The migration manager and its policies, on synthetic traces (replay: no kernels needed)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccadgpu.clock import load_profile
from ccadgpu.errors import InvalidArgumentError
from ccadgpu.manager import Epoch, MigrationManager, SimPlacement
from ccadgpu.policies import Move, Policy, available_policies, make_policy, register_policy
from ccadgpu.replay import replay
from ccadgpu.trace import Trace
from ccadgpu.tunables import Tunables

PS = 64 << 10
SWEEP = PS // 32          # sectors of one full pass over a page


def make_trace(epochs, npages, device_frames, profile="gh200", host_frames=None,
               allocations=(None,)):
    """epochs: list of (processor, {vpn: sectors}) with processor 'cpu' or 'device';
    ``allocations``: page counts of consecutive allocations (default: one of all pages)."""
    sizes = None if allocations == (None,) else allocations
    return Trace.synthetic(epochs, npages, device_frames, profile, PS, host_frames, sizes)


def sweeps(pages, n=1):
    return {int(p): n * SWEEP for p in pages}


def test_registry_and_errors():
    assert {"static", "first_touch", "on_demand", "access_counter", "autonuma",
            "oracle"} <= set(available_policies())
    with pytest.raises(InvalidArgumentError, match="available"):
        make_policy("lru2")
    with pytest.raises(InvalidArgumentError):
        make_policy("access_counter", hysteresis=0.5)
    with pytest.raises(InvalidArgumentError):
        make_policy("access_counter", colour="red")
    with pytest.raises(InvalidArgumentError, match="schedule"):
        make_policy("oracle")


@pytest.mark.parametrize("policy", ["static", "first_touch", "on_demand", "access_counter",
                                    "autonuma", "oracle"])
def test_every_policy_replays(policy):
    tr = make_trace([("device", sweeps(range(8), 4))] * 6 + [("cpu", sweeps(range(4)))], 16, 8)
    r = replay(tr, policy)
    assert r["epochs"] == 7 and r["modeled_s"] > 0 and 0 <= r["remote_fraction"] <= 1


def test_static_never_moves():
    tr = make_trace([("device", sweeps(range(8), 8)), ("cpu", sweeps(range(8), 8))] * 5, 8, 8)
    r = replay(tr, "static")
    assert r["migrated_bytes"] == 0 and r["remote_fraction"] > 0


def test_stream_once_is_never_migrated_by_access_counter():
    tr = make_trace([("device", sweeps(range(i * 4, i * 4 + 4))) for i in range(8)], 32, 64)
    assert replay(tr, "access_counter")["migrated_bytes"] == 0
    assert replay(tr, "on_demand")["migrated_bytes"] == 32 * PS


def test_reuse_is_migrated_and_pays_off():
    tr = make_trace([("device", sweeps(range(16), 4))] * 40, 16, 64, profile="h100-pcie")
    ac = replay(tr, "access_counter")
    st = replay(tr, "static")
    assert ac["migrated_bytes_by_cause"]["access_counter"] == 16 * PS
    assert ac["modeled_s"] < st["modeled_s"]


def test_thrash_detection_on_pingpong():
    # Each phase alone justifies a move (heavy use: on cxl-type2 a device burst of 5 sweeps
    # saves more than one move, ~3.2 sweeps, but less than the round trip, ~6.4), so a counter
    # policy without thrash control would move the pages every epoch, as fault-driven migration
    # does.
    # Without fault-return the CPU's counters bring the pages home (with fault-return the
    # policy foresees the trip home once it has seen one, and the pages go over and back
    # once: below).
    ep = [("device", sweeps(range(8), 5)), ("cpu", sweeps(range(8), 40))] * 20
    tr = make_trace(ep, 8, 8, profile="cxl-type2")
    kw = dict(hysteresis=1.0, min_epochs=1, cpu_fault_return=False)
    ac = replay(tr, "access_counter", **kw)
    od = replay(tr, "on_demand")
    assert ac["thrashing_pages"] == 8
    # two moves, caught; after the 16-epoch back-off one more pair, caught again with a
    # 32-epoch back-off: moves grow with the log of the run, not with its length
    assert ac["migrated_bytes"] <= 4 * 8 * PS
    assert od["migrated_bytes"] >= 39 * 8 * PS                 # fault-driven ping-pong
    loose = replay(tr, "access_counter", thrash_moves=1000, **kw)
    assert loose["migrated_bytes"] > 10 * 8 * PS               # what the back-off prevented
    foresees = replay(tr, "access_counter", hysteresis=1.0, min_epochs=1)
    assert foresees["migrated_bytes"] <= 2 * 8 * PS


def test_ping_pong_that_pays_its_round_trip_is_not_held_back():
    # krylov's search direction: each device burst (20 sweeps) saves more than the page's way
    # over and back (~6.4 sweeps on cxl-type2), so moving it on every device touch pays, as
    # fault-driven migration does, and the thrash back-off must not hold it on the host
    ep = [("device", sweeps(range(8), 20)), ("cpu", sweeps(range(8), 40))] * 20
    tr = make_trace(ep, 8, 8, profile="cxl-type2")
    ac, st, od = (replay(tr, p) for p in ("access_counter", "static", "on_demand"))
    # over and back in every round after the first: over when the SpMV launch starts, back
    # when the CPU's touch faults (the summary still counts the pages as ping-ponging: moved
    # three times within the thrash window)
    by_cause = ac["migrated_bytes_by_cause"]
    assert by_cause.get("access_counter", 0) >= 18 * 8 * PS
    assert by_cause.get("fault", 0) >= 18 * 8 * PS
    assert ac["modeled_s"] < 0.75 * st["modeled_s"]
    assert ac["modeled_s"] <= 1.05 * od["modeled_s"]


def test_backoff_ends_once_the_ping_pong_stops():
    ep = [("device", sweeps(range(8), 5)), ("cpu", sweeps(range(8), 40))] * 3
    ep += [("device", sweeps(range(8), 5))] * 60           # then only the device uses them
    tr = make_trace(ep, 8, 8, profile="cxl-type2")
    prof = load_profile("cxl-type2")
    for fault_return in (False, True):
        # (with fault-return the policy foresees the trip home after the first: the pages
        # must still move once the CPU is overdue)
        mgr = MigrationManager(SimPlacement(PS, [32, 8], np.zeros(8, np.int8)),
                               "access_counter", prof, Tunables(), hysteresis=1.0, min_epochs=1,
                               cpu_fault_return=fault_return)
        for i, r in enumerate(tr):
            mgr.step(Epoch.from_record(r, i))
        assert fault_return or len(mgr.thrashing) == 8
        assert (mgr.placement.node[:8] == 1).all()           # not stuck on the host


def test_capacity_cut_keeps_the_hottest():
    # 10 pages, room for 2: pages 8 and 9 are much hotter and must be the ones promoted
    touched = {p: SWEEP * (8 if p >= 8 else 1) for p in range(10)}
    tr = make_trace([("device", touched)] * 6, 10, 2, profile="h100-pcie")
    prof = load_profile("h100-pcie")
    mgr = MigrationManager(SimPlacement(PS, [40, 2], np.zeros(10, np.int8)), "access_counter",
                           prof, Tunables())
    for i, r in enumerate(tr):
        mgr.step(Epoch.from_record(r, i))
    assert sorted(np.flatnonzero(mgr.placement.node == 1).tolist()) == [8, 9]


def test_rate_limit_holds_in_every_window():
    # huge sector counts make every epoch last seconds of modeled time
    big = 2_000_000
    ep = [("device", {p: big for p in range(i * 8, i * 8 + 64)}) for i in range(40)]
    tr = make_trace(ep, 400, 400, profile="h100-pcie")
    prof = load_profile("h100-pcie")
    init = np.zeros(400, np.int8)
    mgr = MigrationManager(SimPlacement(PS, [1600, 400], init), "access_counter", prof,
                           Tunables(), rate_limit_mbps=1.0)
    for i, r in enumerate(tr):
        mgr.step(Epoch.from_record(r, i))
    t = np.cumsum([0.0] + [r.total_s for r in mgr.results])
    promoted = np.array([sum(n for (c, s, d), n in r.moved.items() if d == 1)
                         for r in mgr.results])
    assert promoted.sum() > 0
    limit = int(1e6 // PS)
    for w in range(int(t[-1]) + 1):
        in_w = promoted[(t[:-1] >= w) & (t[:-1] < w + 1)].sum()
        assert in_w <= 2 * limit          # a window may straddle two of the policy's windows


def test_eviction_evicts_the_coldest_first():
    prof = load_profile("h100-pcie")
    init = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.int8)      # device holds 4 of 4 frames
    mgr = MigrationManager(SimPlacement(PS, [16, 4], init), "on_demand", prof, Tunables())
    e = 0
    for p in (3, 1, 0, 2):                       # touch order: page 3 oldest ... page 2 newest
        sec = np.zeros((1, 2, 2), np.int64)
        sec[0, 1, 0] = SWEEP
        mgr.step(Epoch(e, e, "k", 1, np.array([p]), sec, True))
        e += 1
    sec = np.zeros((2, 2, 2), np.int64)
    sec[:, 1, 0] = SWEEP
    mgr.step(Epoch(e, e, "k", 1, np.array([4, 5]), sec, True))   # needs two frames
    node = mgr.placement.node
    assert node[4] == 1 and node[5] == 1
    assert node[3] == 0 and node[1] == 0 and node[0] == 1 and node[2] == 1   # LRU went first
    assert mgr.results[-1].moved[("eviction", 1, 0)] == 2


def test_cpu_access_modes():
    ep = [("device", sweeps(range(4), 8))] * 3 + [("cpu", sweeps(range(4)))]
    tr = make_trace(ep, 4, 8, profile="h100-pcie")
    coherent = replay(tr, "first_touch")
    hmm = replay(tr, "first_touch", tunables={"cpu_access": "migrate_on_cpu_fault"})
    assert coherent["migrated_bytes_by_direction"].get("device_to_host", 0) == 0
    assert hmm["migrated_bytes_by_direction"]["device_to_host"] == 4 * PS
    with pytest.raises(InvalidArgumentError):
        replay(tr, "static", tunables={"cpu_access": "sometimes"})


def test_oracle_plans_for_cpu_faults_bringing_pages_home():
    """Under migrate_on_cpu_fault the CPU cannot use a device page where it is: a schedule that
    leaves pages on the device across CPU epochs (the coherent optimum on gh200) would be
    faulted home and back every round."""
    tr = make_trace([("device", sweeps(range(4), 8)), ("cpu", sweeps(range(4), 8))] * 6, 4, 8)
    hmm = {"cpu_access": "migrate_on_cpu_fault"}
    coherent = replay(tr, "oracle")
    assert coherent["migrated_bytes"] > 0       # on gh200 the device copy pays when coherent
    o, static = replay(tr, "oracle", tunables=hmm), replay(tr, "static", tunables=hmm)
    assert o["migrated_bytes_by_cause"].get("fault", 0) == 0
    assert o["modeled_s"] <= static["modeled_s"] * (1 + 1e-9)
    assert o["lower_bound_s"] <= o["modeled_s"] * (1 + 1e-9)


@pytest.mark.parametrize("k", [4, 8, 16])
def test_access_counter_prices_cpu_touches_as_trips_home_under_migrate_on_cpu_fault(k):
    """On gh200 the CPU reads device memory cheaply, so a coherent space leaves the SpMV's
    vector on the device; under migrate_on_cpu_fault every CPU touch brings it home, and moving
    it back for a burst that does not pay the round trip must not happen (1.21-1.65x static
    before the policy knew the mode)."""
    tr = make_trace([("device", sweeps(range(32), k)), ("cpu", sweeps(range(32)))] * 8,
                    32, 64)
    hmm = {"cpu_access": "migrate_on_cpu_fault"}
    static = replay(tr, "static", tunables=hmm)["modeled_s"]
    assert replay(tr, "access_counter", tunables=hmm)["modeled_s"] <= 1.05 * static
    assert replay(tr, "access_counter")["modeled_s"] < 0.99 * replay(tr, "static")["modeled_s"]


def test_migration_switch_stops_every_policy():
    tr = make_trace([("device", sweeps(range(8), 8))] * 10, 8, 8)
    for pol in ("on_demand", "access_counter", "first_touch"):
        r = replay(tr, pol, tunables={"migration_enabled": False})
        assert r["migrated_bytes"] == 0


def test_custom_policy_in_a_few_lines():
    @register_policy
    class EveryOther(Policy):
        """Promote whatever the device touched, on even epochs."""
        name = "every_other_test"

        def epoch_end(self, ctx, ep, notes):
            if ctx.epoch % 2:
                return []
            v = ep.vpns[ep.touched_by(1)]
            return [Move(v[ctx.node[v] == 0], 1, "access_counter")]

    tr = make_trace([("device", sweeps(range(4)))] * 3, 4, 8)
    r = replay(tr, "every_other_test")
    assert r["migrated_bytes"] == 4 * PS and r["policy"] == "every_other_test"


epoch_strategy = st.lists(
    st.tuples(st.sampled_from(["cpu", "device"]),
              st.dictionaries(st.integers(0, 11), st.integers(1, 20 * SWEEP), min_size=1,
                              max_size=12)),
    min_size=1, max_size=14)


@settings(max_examples=40, deadline=None)
@given(epochs=epoch_strategy, dev=st.integers(1, 12),
       profile=st.sampled_from(["gh200", "h100-pcie", "cxl-type2"]),
       cpu_access=st.sampled_from(["coherent", "migrate_on_cpu_fault"]))
def test_oracle_bounds_every_policy(epochs, dev, profile, cpu_access):
    """The lower bound is below every policy; without capacity pressure the oracle is the
    optimum, so no policy beats it either.  Under migrate_on_cpu_fault too: the oracle must
    plan for the CPU faulting device pages home (it moves them first, and never faults)."""
    tr = make_trace(epochs, 12, dev, profile=profile)
    tun = {"cpu_access": cpu_access}
    o = replay(tr, "oracle", tunables=tun)
    assert o["migrated_bytes_by_cause"].get("fault", 0) == 0
    eps = 1e-12 + 1e-9 * o["modeled_s"]
    # the schedule is optimal for traffic and migrations; an epoch that it splits over both
    # nodes may pay one more per-node latency than a policy that keeps them on one
    lat = load_profile(profile).latency.max() * len(epochs)
    for pol in ("static", "first_touch", "on_demand", "access_counter", "autonuma"):
        r = replay(tr, pol, tunables=tun)
        assert o["lower_bound_s"] <= r["modeled_s"] + eps
        if dev >= 12:
            assert o["modeled_s"] <= r["modeled_s"] + lat + eps, pol
    assert o["lower_bound_s"] <= o["modeled_s"] + eps


def test_the_schedule_under_user_moves_and_refusals_is_the_brute_force_optimum():
    """Per page, the oracle's dynamic programme with the user's free moves before an epoch
    and the manager's refusals of the policy's moves finds the cheapest of all 2**E
    placements (checked exhaustively on small random cases); so does the bound's, without the
    refusals and with the user's moves to the device optional."""
    import itertools

    from ccadgpu.policies.oracle import UserConstraints, _dp
    rng = np.random.default_rng(7)
    for _ in range(300):
        E, U = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        ch, cd = rng.integers(0, 6, (E, U)).astype(float), rng.integers(0, 6, (E, U)) * 1.0
        init = rng.random(U) < 0.5
        up, down = float(rng.integers(0, 4)), float(rng.integers(0, 4))
        u = UserConstraints(rng.integers(-1, 2, (E, U)).astype(np.int8), np.zeros(E, bool),
                            rng.random((E, U)) < 0.3, rng.random((E, U)) < 0.3,
                            np.full((E, U), -1, np.int8))

        def cost(seq, i, vetoes=True, sure_up=None):
            sure_up = vetoes if sure_up is None else sure_up
            total, cur = 0.0, bool(init[i])
            for e, on in enumerate(seq):
                if u.forced[e, i] == 0 or u.forced[e, i] == 1 and (sure_up or on):
                    cur = bool(u.forced[e, i])     # (for the bound, a move up may not fit)
                if on and not cur:
                    total += np.inf if vetoes and u.no_up[e, i] else up
                elif cur and not on:
                    total += np.inf if vetoes and u.no_down[e, i] else down
                total += cd[e, i] if on else ch[e, i]
                cur = on
            return total
        on, best = _dp(ch, cd, init, up, down, u)
        for i in range(U):
            brute = min(cost(seq, i) for seq in itertools.product((False, True), repeat=E))
            assert best[i] == brute and cost(on[:, i], i) == brute
        relaxed = _dp(ch, cd, init, up, down, u, vetoes=False)[1]
        for i in range(U):
            assert relaxed[i] == min(cost(seq, i, False) for seq in
                                     itertools.product((False, True), repeat=E))
        assert (relaxed <= best).all()
        on, unsure = _dp(ch, cd, init, up, down, u, sure_up=False)  # a full device may
        for i in range(U):                                           # turn moves up away
            assert unsure[i] == cost(on[:, i], i, True, False) == min(
                cost(seq, i, True, False) for seq in itertools.product((False, True), repeat=E))
        assert (relaxed <= unsure).all() and (unsure <= best).all()


def test_the_bound_with_read_mostly_duplicates_is_the_brute_force_optimum():
    """The bound's recurrence with a third state, a read-mostly duplicate (made from the host
    for a move up, from the device for a move down and up, gone for free), finds the cheapest
    of all 3**E sequences under the user's moves (a move home keeps a duplicate or not; a move
    up may not happen; a birth on the device may land on the host; the user's prefetch may
    duplicate a host page for free); with no duplicate possible it is the two-state bound,
    and never above it."""
    import itertools

    from ccadgpu.policies.oracle import UserConstraints, _dp, _dp_dup
    rng = np.random.default_rng(11)
    H, D, X = 0, 1, 2
    for _ in range(300):
        E, U = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        ch, cd = rng.integers(0, 6, (E, U)) * 1.0, rng.integers(0, 6, (E, U)) * 1.0
        cx = np.where(rng.random((E, U)) < 0.6, rng.integers(0, 4, (E, U)) * 1.0, np.inf)
        init = rng.random(U) < 0.5
        up, down = float(rng.integers(0, 4)), float(rng.integers(0, 4))
        forced = rng.integers(-1, 2, (E, U)).astype(np.int8)
        born = (rng.random((E, U)) < 0.3) & (forced == 1)
        duped = rng.random((E, U)) < 0.2
        u = UserConstraints(forced, np.zeros(E, bool), np.zeros((E, U), bool),
                            np.zeros((E, U), bool), np.full((E, U), -1, np.int8), None, born,
                            None, duped)
        move = {(H, D): up, (D, H): down, (H, X): up, (X, H): 0.0, (X, D): up,
                (D, X): down + up}

        def cost(seq, i, cx=cx):
            total, cur = 0.0, D if init[i] else H
            for e, s in enumerate(seq):
                f = forced[e, i]
                can = {cur}
                if f == 0:
                    can = {H} | ({X} if cur == X else set())
                elif f == 1:
                    can |= {D}
                    if born[e, i] and cur == D:
                        can |= {H}
                if duped[e, i] and H in can:      # the user's own duplicate, free
                    can |= {X}
                total += min(0.0 if m == s else move[m, s] for m in can)
                total += (ch, cd, cx)[s][e, i]
                cur = s
            return total
        got = _dp_dup(ch, cd, cx, init, up, down, u)
        for i in range(U):
            assert got[i] == min(cost(q, i) for q in itertools.product((H, D, X), repeat=E))
        two = _dp(ch, cd, init, up, down, u, vetoes=False)[1]
        assert (got <= two).all()
        none = np.full((E, U), np.inf)
        assert np.array_equal(_dp_dup(ch, cd, none, init, up, down, u), two)


def test_the_users_and_the_hints_moves_take_only_the_room_the_schedule_leaves():
    """The planner's guide to which moves find room: before an epoch the user's moves come
    first, then the manager's step, whose moves home (the schedule's, less those it refuses)
    come before its moves to preferred locations; a move to the device takes pages in order
    while there is room, the rest stay."""
    from ccadgpu.policies.oracle import UserConstraints, _realised
    E, U = 2, 5
    forced = np.full((E, U), -1, np.int8)
    hinted = np.full((E, U), -1, np.int8)
    forced[1, [0, 2, 3]] = 1           # the user moves pages 0, 2, 3 up before epoch 1
    forced[1, 4] = 0                   # and page 4 home, which makes room first
    hinted[1, 1] = 1                   # then the manager moves page 1 to its preferred node
    no_down = np.zeros((E, U), bool)
    u = UserConstraints(forced, np.zeros(E, bool), np.zeros((E, U), bool), no_down, hinted)
    on = np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool)      # the device: 2 frames
    f, h = _realised(on, u, np.zeros(U, bool), cap=2)
    # pages 0 and 2 find room, 3 not; the schedule sends them home: room for the hint's
    assert f[1].tolist() == [1, -1, 1, -1, 0] and h[1].tolist() == [-1, 1, -1, -1, -1]
    no_down[1, [0, 2]] = True          # the manager refuses to send them home: no room
    f, h = _realised(on, u, np.zeros(U, bool), cap=2)
    assert f[1].tolist() == [1, -1, 1, -1, 0] and h[1].tolist() == [-1, -1, -1, -1, -1]
    f, h = _realised(on, u, np.zeros(U, bool), cap=4)
    assert f[1].tolist() == [1, -1, 1, 1, 0] and h[1].tolist() == [-1, 1, -1, -1, -1]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_coldest_is_the_lexsort_prefix(data):
    """policies.base.coldest gives exactly lexsort's first k, ties on both keys included."""
    from ccadgpu.policies.base import coldest
    n = data.draw(st.integers(0, 60))
    few = st.integers(0, 3)          # few distinct values: ties across the cut are the point
    primary = np.array(data.draw(st.lists(st.one_of(few, st.floats(0, 4), st.just(np.nan)),
                                          min_size=n, max_size=n)), float)
    sec = st.one_of(few, st.just(np.nan)) if data.draw(st.booleans()) else few
    secondary = np.array(data.draw(st.lists(sec, min_size=n, max_size=n)), float)
    k = data.draw(st.integers(-1, n + 2))
    want = np.lexsort((secondary, primary))[:max(k, 0)]
    assert coldest(primary, secondary, k).tolist() == want.tolist()


def test_eviction_among_equally_cold_pages_is_least_recently_touched():
    """Untouched device pages all have heat 0: the default victims (autonuma's) and
    on_demand's must still take the least recently touched of them, not whichever ones a
    partition kept."""
    from ccadgpu.tunables import Tunables
    n = 1000
    init = np.ones(n, np.int8)
    for name in ("autonuma", "on_demand"):
        mgr = MigrationManager(SimPlacement(PS, [4 * n, n], init), name,
                               load_profile("h100-pcie"), Tunables())
        mgr._ensure()
        mgr.last_touch[:, 0] = np.random.default_rng(1).permutation(n)
        v = mgr.policy.victims(mgr.ctx, 10, np.zeros(0, np.int64))
        assert mgr.last_touch[v, 0].tolist() == list(range(10)), name
