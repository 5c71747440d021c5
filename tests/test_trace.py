"""The epoch trace: records, save/load round trip, limits, bad files."""
import json
import math

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E
from ccadgpu import ops
from ccadgpu.trace import Trace

P = 16 << 10


@pytest.fixture
def sp():
    with ccadgpu.Space(device_memory="4MiB", host_memory="32MiB", page_size=P,
                       profile="cxl-type2") as s:
        yield s


def workload(sp):
    rng = np.random.default_rng(3)
    x = sp.asarray(rng.random(20_000) + 1, name="x")
    y = sp.asarray(rng.random(20_000) + 1, placement="device", name="y")
    idx = sp.asarray(rng.integers(0, 20_000, 5_000), name="idx")
    out = sp.empty(5_000, name="out")
    ops.axpy(2.0, x, y)
    float(np.dot(x, y))                         # a host epoch
    ops.gather(out, y, idx)
    sp.move_pages(x, "device")
    ops.sum(x)
    x[::2] = 1.0
    return x, y, idx, out


def assert_same(a, b):
    assert (a.epoch, a.kernel, a.processor, a.notifications) == \
        (b.epoch, b.kernel, b.processor, b.notifications)
    for f in ("vpns", "counts", "sectors", "node", "alloc"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert getattr(a, f).dtype == getattr(b, f).dtype, f
    for f in ("wall_seconds", "modeled_seconds", "t_start"):
        x, y = getattr(a, f), getattr(b, f)
        assert (math.isnan(x) and math.isnan(y)) or x == y, f


def test_records_and_round_trip(sp, tmp_path):
    x, y, idx, out = workload(sp)
    path = tmp_path / "run.trace"
    sp.trace.save(path)                         # closes the last host epoch first
    recs = list(sp.trace)
    assert [(r.epoch, r.kernel) for r in recs] == [
        (0, "axpy"), (1, "host"), (2, "gather"), (3, "sum"), (4, "host")]
    assert all(r.modeled_seconds > 0 for r in recs)
    assert all(r.wall_seconds > 0 for r in recs if r.processor == "device")
    # the trace's counts add up to the counters' space-wide totals
    tot = np.sum([r.counts.sum(axis=0) for r in recs], axis=0)
    stats = sp.stats()
    for p, pn in enumerate(("cpu", "device")):
        for w, wn in enumerate(("read", "write")):
            for lc, ln in enumerate(("local", "remote")):
                assert tot[p, w, lc] == stats.get(f"access_bytes_{pn}_{wn}_{ln}", 0)
    # placement snapshots: x was on the host for axpy, on the device for sum
    _, lo, hi = sp._span_vpns(x)
    on = (recs[0].vpns >= lo) & (recs[0].vpns < hi)
    assert np.all(recs[0].node[on] == 0)
    on = (recs[3].vpns >= lo) & (recs[3].vpns < hi)
    assert on.sum() == hi - lo and np.all(recs[3].node[on] == 1)
    on0 = (recs[0].vpns >= lo) & (recs[0].vpns < hi)
    assert np.all(recs[0].alloc[on0] == sp.allocation_of(x).id)

    t = Trace.load(path)
    assert len(t) == len(recs) and t.page_size == P and t.profile_name == "cxl-type2"
    for a, b in zip(recs, t):
        assert_same(a, b)
    h = t.header
    assert h["format"] == "ccadgpu-trace" and h["version"] == 1
    assert [n["name"] for n in h["nodes"]] == ["host", "device"]
    assert h["nodes"][1]["capacity"] == 4 << 20
    assert h["profile"]["bandwidth_bytes_per_s"][1][1] == 820e9
    allocs = {a["name"]: a for a in h["allocations"]}
    assert set(allocs) == {"x", "y", "idx", "out"}
    assert allocs["x"]["vstart"] == sp.allocation_of(x).vstart
    assert allocs["y"]["shape"] == [20_000] and allocs["idx"]["dtype"] == "<i8"
    assert t.summary()["epochs"] == 5
    assert h["tunables"]["access_counter_granularity"] == 2 << 20


def test_empty_trace_round_trip(sp, tmp_path):
    p = sp.trace.save(tmp_path / "empty.npz")
    t = Trace.load(p)
    assert len(t) == 0 and t.header["page_size"] == P


def test_max_epochs_drops_oldest(sp, tmp_path):
    sp.tunables.trace_max_epochs = 3
    a = sp.asarray(np.arange(1.0, 1000.0))
    for _ in range(5):
        ops.sum(a)
    assert len(sp.trace) == 3 and sp.trace.dropped == 2
    assert [r.epoch for r in sp.trace] == [2, 3, 4]
    t = Trace.load(sp.trace.save(tmp_path / "t.npz"))
    assert t.dropped == 2 and [r.epoch for r in t] == [2, 3, 4]
    sp.trace.clear()
    assert len(sp.trace) == 0


def test_trace_off_still_counts(sp):
    sp.tunables.trace = False
    a = sp.asarray(np.arange(1.0, 1000.0))
    ops.sum(a)
    a + 1
    assert len(sp.trace) == 0 and sp.trace.flush() is None
    assert sp.counters.counts(a).sum() == 2 * a.nbytes


@pytest.mark.parametrize("damage", ["garbage", "no_header", "format", "version", "shapes"])
def test_bad_files(sp, tmp_path, damage):
    workload(sp)
    good = sp.trace.save(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    if damage == "garbage":
        bad.write_bytes(b"not a trace at all")
    else:
        with np.load(good) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays["header"].tobytes())
        if damage == "no_header":
            del arrays["header"]
        elif damage == "format":
            header["format"] = "something-else"
        elif damage == "version":
            header["version"] = 99
        elif damage == "shapes":
            arrays["node"] = arrays["node"][:-1]
        if "header" in arrays:
            arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez_compressed(bad, **arrays)
    with pytest.raises(E.TraceFormatError):
        Trace.load(bad)
    with pytest.raises(E.TraceFormatError):
        Trace.load(tmp_path / "missing.npz")


def test_a_synthetic_trace_replays_and_bad_input_names_the_argument():
    from ccadgpu.errors import InvalidArgumentError
    from ccadgpu.replay import replay
    sweep = (64 << 10) // 32
    ep = [("device", {0: 8 * sweep, 1: 8 * sweep})] * 6 + [("cpu", {2: sweep})]
    tr = Trace.synthetic(ep, 4, 8, "h100-pcie", allocations=(2, 2))
    assert len(tr) == 7 and tr.page_size == 64 << 10 and tr.profile_name == "h100-pcie"
    assert tr[0].sectors[:, 1, 0].tolist() == [8 * sweep] * 2 and tr[6].processor == "cpu"
    assert tr[6].alloc.tolist() == [1]
    st, od = replay(tr, "static"), replay(tr, "on_demand")
    assert od["migrated_bytes_by_direction"]["host_to_device"] >= 2 * (64 << 10)
    assert st["migrated_bytes"] == 0
    assert od["modeled_s"] < st["modeled_s"]          # reuse on PCIe: moving pays
    for bad, what in ((dict(epochs=[("gpu", {0: 1})]), "processor"),
                      (dict(epochs=[("cpu", {4: 1})]), "page 4"),
                      (dict(epochs=[("cpu", {0: 0})]), "sectors"),
                      (dict(allocations=(1, 2)), "allocations"),
                      (dict(allocations=()), "allocations"),
                      (dict(epochs=[("cpu", {1.5: 1})]), "must be an integer"),
                      (dict(epochs=[("cpu",)]), "pair"),
                      (dict(host_frames=3), "host_frames must be >= 4"),
                      (dict(page_size=1000), "multiple of 4096"),
                      (dict(device_frames=2.5), "device_frames")):
        args = dict(epochs=ep, npages=4, device_frames=8, allocations=None) | bad
        with pytest.raises(InvalidArgumentError, match=what):
            Trace.synthetic(**args)


def _edited(good, bad, edit):
    """Write ``good``'s trace to ``bad`` with its JSON header changed by ``edit(header)``."""
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    edit(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez_compressed(bad, **arrays)
    return bad


USER_DAMAGE = {
    "not a list": lambda h: h.update(user_events={}),
    "unknown op": lambda h: h["user_events"].append({"op": "teleport"}),
    "empty range": lambda h: h["user_events"].append({"op": "pin", "lo": 3, "hi": 3, "on": True}),
    "bad node": lambda h: h["user_events"].append({"op": "move", "runs": [[0, 1]], "node": 5}),
    "bad preferred": lambda h: h["user_events"].append(
        {"op": "hint", "lo": 0, "hi": 1, "preferred": 7, "accessed_by": None,
         "read_mostly": None}),
    "event past the list": lambda h: h["events"].append([0, 2, len(h["user_events"])]),
    "unknown kind": lambda h: h["events"].append([0, 3, 0]),
    "after_faults not a flag": lambda h: h["user_events"][0].update(after_faults="yes"),
    "tunables not a table": lambda h: h["user_events"].append({"op": "tunables", "values": 3}),
    "bad tunable value": lambda h: h["user_events"].append(
        {"op": "tunables", "values": {"cpu_access": "teleport"}}),
}


@pytest.mark.parametrize("damage", list(USER_DAMAGE))
def test_user_events_are_checked_on_load(sp, tmp_path, damage):
    """The user's placement actions (hints, pins, moves, offline) are events of the trace; a
    file whose user events a replay could not apply is refused, and a file from before they
    were recorded loads with none."""
    a = sp.asarray(np.arange(1.0, 3000.0))
    sp.advise(a, preferred_location="device")
    sp.pin(a)
    sp.unpin(a)
    sp.move_pages(a, "device")
    ops.sum(a)
    good = sp.trace.save(tmp_path / "good.npz")
    t = Trace.load(good)
    assert [u["op"] for u in t.user_events] == ["hint", "pin", "pin", "move"]
    assert [e[1] for e in t.events].count(2) == 4
    with pytest.raises(E.TraceFormatError, match="user_events|events"):
        Trace.load(_edited(good, tmp_path / "bad.npz", USER_DAMAGE[damage]))

    def older(h):
        h.pop("user_events")
        h["events"] = [e for e in h["events"] if e[1] != 2]
    assert Trace.load(_edited(good, tmp_path / "old.npz", older)).user_events == []


@pytest.mark.parametrize("flag", ["after_faults", "died_after_faults"])
def test_an_allocations_after_faults_flags_are_checked_on_load(sp, tmp_path, flag):
    ops.sum(sp.asarray(np.arange(1.0, 3000.0)))
    good = sp.trace.save(tmp_path / "good.npz")
    Trace.load(_edited(good, tmp_path / "ok.npz", lambda h: h["allocations"][0].update(
        {flag: True})))
    with pytest.raises(E.TraceFormatError, match=f"allocation 0: {flag}"):
        Trace.load(_edited(good, tmp_path / "bad.npz", lambda h: h["allocations"][0].update(
            {flag: "yes"})))
