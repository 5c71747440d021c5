"""Replay a recorded trace under any policy, without running a kernel or copying a byte.

One recorded run (on the CPU stand-in, or later a GPU) can be scored under every policy and
profile on a laptop::

    tr = ccadgpu.Trace.load("run.npz")
    for pol in ("static", "on_demand", "access_counter", "oracle"):
        print(pol, replay(tr, pol, profile="h100-pcie")["modeled_s"])

The replay applies the same manager as a live space (:mod:`ccadgpu.manager`) and prices epochs
and migrations with the profile.  A trace that holds every epoch of its space with the space's
allocation events (:mod:`ccadgpu.trace`) is replayed against the pages as the live manager saw
them: each allocation's pages appear where they were allocated, before the epoch the live
manager stepped next, and go away (their history forgotten) when the live space released them;
the epochs the live manager never stepped (launches that touched no page) are skipped.
The user's own placement actions are replayed where the live manager saw them too (hints,
pins, ``move_pages`` and ``prefetch`` moves, an offline's evacuation and the device offline
meanwhile: :mod:`ccadgpu.trace`); the manager's moves of read-mostly pages to the device
make duplicates there, as live, which the trace's writes collapse.  Replaying such a trace
under the policy it ran live reproduces the live modeled time
(``tests/test_live_replay.py``), except for what the trace does not hold: the mechanism's
refusals (pages busy under a write, a mapping budget spent).  Other traces (older ones, a cleared or
truncated trace) start each page where the trace first saw it (record under ``static`` to
replay from the allocation placement) and keep every page allocated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from . import pagetable as ptf
from .clock import Profile, load_profile
from .errors import InvalidArgumentError
from .manager import DECISION_KNOBS, DEV, DEVICE, Epoch, MigrationManager, SimPlacement
from .policies import OracleSchedule, Policy, UserConstraints, make_policy, plan_oracle
from .trace import Trace
from .tunables import KNOBS, Tunables
from .units import parse_size


def trace_epochs(trace: Trace) -> list[Epoch]:
    """The trace's records as manager epochs: those that touched pages (a launch that touched
    none is never handed to the live manager)."""
    return [Epoch.from_record(r, i) for i, r in enumerate(r for r in trace if len(r.vpns))]


def complete(trace: Trace) -> bool:
    """Whether ``trace`` holds every epoch of its space and the space's allocation events (a
    replay then sees the pages as the live manager did)."""
    if trace.dropped or not any(kind == 1 for _, kind, _ in trace.events):
        return False
    return [r.epoch for r in trace] == list(range(len(trace)))


def _pages_of(a: dict[str, Any]) -> np.ndarray:
    """Node of each page of allocation ``a`` when it was made."""
    return np.repeat(np.array([n for n, _ in a["nodes"]], np.int8),
                     np.array([k for _, k in a["nodes"]], np.int64))


def _extent(trace: Trace) -> int:
    allocs = list(trace.allocations.values())
    return max([a["vstart"] + a["npages"] for a in allocs] +
               [int(r.vpns.max()) + 1 for r in trace if len(r.vpns)] + [0])


def _first_seen(trace: Trace) -> np.ndarray:
    """Node of every page of the trace's allocations: where the trace first saw it, else where
    its allocation was (host)."""
    allocs = list(trace.allocations.values())
    node = np.full(_extent(trace), -1, np.int8)
    for a in allocs:
        node[a["vstart"]: a["vstart"] + a["npages"]] = 0
    seen = np.zeros(len(node), bool)
    for r in trace:
        v = np.asarray(r.vpns, np.int64)
        new = ~seen[v]
        node[v[new]] = np.asarray(r.node)[new]
        seen[v] = True
    return node


def _born(trace: Trace) -> list[dict[str, Any]]:
    """The allocations with an allocation event, in the order they were made."""
    return [trace.allocations[i] for _, kind, i in trace.events
            if kind == 1 and "nodes" in trace.allocations.get(i, {})]


def initial_placement(trace: Trace, epochs: Sequence[Epoch]) -> np.ndarray:
    """Node of every page of the trace's allocations before the first epoch: where it was
    allocated (the first allocation over it) in a :func:`complete` trace, else where the trace
    first saw it, else where its allocation was (host)."""
    node = _first_seen(trace)
    if complete(trace):
        done = np.zeros(len(node), bool)
        for a in _born(trace):
            lo, hi = a["vstart"], a["vstart"] + a["npages"]
            new = ~done[lo:hi]
            node[lo:hi][new] = _pages_of(a)[new]
            done[lo:hi] = True
    return node


def user_constraints(trace: Trace, epochs: Sequence[Epoch], vpns: np.ndarray
                     ) -> UserConstraints | None:
    """What the trace's ``user_events`` impose on an oracle schedule over pages ``vpns``
    (sorted), epoch by epoch, as a replay applies them (an event recorded at position ``p``
    comes before the first epoch numbered ``p`` or later), and what the allocations do: a
    page allocated again is born where its new allocation puts it, for free, and a freed one
    loses its pin and hints; None when there is none of these."""
    if not complete(trace):
        return None                # (a replay applies them only to a complete trace)
    E, U = len(epochs), len(vpns)
    forced = np.full((E, U), -1, np.int8)
    no_up, no_down = np.zeros((E, U), bool), np.zeros((E, U), bool)
    offline = np.zeros(E, bool)
    hinted = np.full((E, U), -1, np.int8)
    pins = np.zeros((E, U), bool)
    pref, acc = np.full(U, -1, np.int64), np.zeros(U, np.int64)
    pinned = np.zeros(U, bool)
    rm, mostly, duped = np.zeros(U, bool), np.zeros((E, U), bool), np.zeros((E, U), bool)
    numbers = np.array([ep.epoch for ep in epochs], np.int64)
    born, births = np.zeros(U, bool), np.zeros((E, U), bool)

    def event(kind: int, i: int) -> dict[str, Any] | None:
        if kind == 2:
            return trace.user_events[i]
        a = trace.allocations.get(i)
        if a is None or kind == 1 and "nodes" not in a:
            return None
        span = {"lo": a["vstart"], "hi": a["vstart"] + a["npages"],
                "after_faults": _after_faults(trace, kind, i)}
        return {"op": "free", **span} if kind == 0 else {"op": "born", **span,
                                                         "nodes": _pages_of(a)}
    mine = [(p, ev) for p, kind, i in trace.events if (ev := event(kind, i)) is not None]
    at = np.searchsorted(numbers, [p for p, _ in mine])
    # one made between an epoch's faults and its accesses comes after the policy's moves
    todo = [(int(e), ev, bool(ev.get("after_faults")) and e < E and p == numbers[e])
            for e, (p, ev) in zip(at, mine)]
    state = {"online": True, "evacuate": False, "again": False}

    def apply(ev: dict[str, Any], e: int, late: bool) -> None:
        op = ev["op"]
        if op in ("tunables", "collapse"):
            return
        if op == "duplicate":               # free for every policy, as the user's moves
            for lo, hi in ev["runs"] if e < E else ():
                i, j = np.searchsorted(vpns, [lo, hi])
                duped[e, i:j] = True
            return
        if op in ("born", "free"):
            i, j = np.searchsorted(vpns, [ev["lo"], ev["hi"]])
            if op == "free":           # (as the page table's clear)
                pinned[i:j], pref[i:j], acc[i:j], rm[i:j] = False, -1, 0, False
                return
            # born where the allocation puts it: a page allocated again, or one that an
            # earlier event (an offline's evacuation of every page) moved; otherwise a first
            # birth is the start
            if e < E:
                new = born[i:j] | (forced[: e + 1, i:j] >= 0).any(axis=0)
                forced[e, i:j][new] = ev["nodes"][vpns[i:j][new] - ev["lo"]]
                births[e, i:j][new] = forced[e, i:j][new] == 1
                state["again"] |= bool(new.any())
            born[i:j] = True
            return
        if op == "device":
            state["online"] = bool(ev["online"])
            if not ev["online"]:           # every device page comes home (_EventPlacement)
                if late:                   # once the epoch's work has left
                    state["evacuate"] = True
                else:
                    forced[e] = 0          # the host
            return
        for lo, hi in (ev["runs"] if op == "move" else [(ev["lo"], ev["hi"])]):
            i, j = np.searchsorted(vpns, [lo, hi])
            if op == "move":
                forced[e, i:j] = ev["node"]
                if late:                     # where the user put it for the whole epoch
                    no_up[e, i:j] = no_down[e, i:j] = True
            elif op == "pin":
                pinned[i:j] = ev["on"]
            else:
                if ev.get("preferred") is not None:
                    pref[i:j] = ev["preferred"]
                if ev.get("accessed_by") is not None:
                    acc[i:j] = ev["accessed_by"]
                if ev.get("read_mostly") is not None:
                    rm[i:j] = ev["read_mostly"]
                    if late and e < E:      # (the epoch's own moves may duplicate them)
                        mostly[e, i:j] |= rm[i:j]
    k = 0
    for e in range(E):
        if state["evacuate"]:
            forced[e], state["evacuate"] = 0, False
        late = []
        while k < len(todo) and todo[k][0] == e:
            _, ev, after = todo[k]
            k += 1
            late.append(ev) if after else apply(ev, e, False)
        offline[e] = not state["online"]
        pins[e] = pinned
        mostly[e] |= rm
        # the manager's say over a policy's move (MigrationManager._filter)
        no_up[e] = pinned | (pref == 0) | ((acc & 2) != 0) | offline[e]
        no_down[e] = pinned | (pref == 1) | ((acc & 1) != 0)
        ep = epochs[e]
        node = int(ep.processor == DEV)    # (MigrationManager._fault_phase)
        i = np.searchsorted(vpns, ep.vpns[ep.touched_by(ep.processor)])
        hinted[e, i[(pref[i] == node) & ~pinned[i]]] = node      # (a pinned page stays)
        for ev in late:
            apply(ev, e, True)
    if not trace.user_events and not state["again"]:
        return None
    births &= forced == 1              # (unless a later event moved it)
    return UserConstraints(forced, offline, no_up, no_down, hinted, pins, births,
                           mostly if mostly.any() else None, duped if duped.any() else None)


def _fit_device(node: np.ndarray, frames: int) -> np.ndarray:
    """``node`` with the device pages beyond its ``frames`` on the host (a smaller device than
    the one recorded), in place."""
    if int(np.count_nonzero(node == 1)) > frames:
        node[np.flatnonzero(node == 1)[frames:]] = 0
    return node


def oracle_schedule(trace: Trace, profile: Profile, device_frames: int,
                    cpu_access: str | None = None,
                    tunables: dict[str, Any] | None = None) -> OracleSchedule:
    """The oracle's schedule for ``trace`` (:func:`ccadgpu.policies.plan_oracle`), its pages
    starting where :func:`initial_placement` says, under the user's actions in it;
    ``cpu_access`` and ``tunables`` hold knobs for the whole plan (as for :func:`replay`);
    by default the recorded knobs rule, changed where the run changed them.

    Under the user's actions the planner weighs several schedules; each is scored by
    replaying it (``tunables`` as for :func:`replay`), so that what decides is what the
    manager would do with it, and the placement the user's actions alone make (``static``'s)
    is one of them."""
    knobs = dict(tunables or {})
    if cpu_access is not None:
        knobs["cpu_access"] = cpu_access
    epochs = trace_epochs(trace)
    cpu = knob_timeline(trace, epochs, "cpu_access", knobs)
    cpu_access = cpu[0] if cpu else knobs.get("cpu_access", recorded_cpu_access(trace))
    # a CPU touch brings a device page home where that mode rules, but not while migration
    # is off (the manager refuses the move)
    # (a change made once an epoch's faults ran rules that epoch's faults only if it and
    # the value before it both say so: a sure trip home)
    faults_home = np.ones(len(epochs), bool)
    for late in (False, True):
        faults_home &= np.array([c == "migrate_on_cpu_fault" and m for c, m in zip(
            knob_timeline(trace, epochs, "cpu_access", knobs, late),
            knob_timeline(trace, epochs, "migration_enabled", knobs, late))], bool)
    first = initial_placement(trace, epochs)
    init = _fit_device(first.copy(), device_frames)
    vp = np.flatnonzero(init >= 0)
    # allocated on the device: in a replay it is there only if the device has room then
    either = first[vp] == DEVICE
    # an aborted launch's faults are all it cost: it plans as an epoch of no accesses
    plan = [dataclasses.replace(e, sectors=np.zeros_like(e.sectors), launch=False)
            if e.aborted else e for e in epochs]
    user = user_constraints(trace, epochs, vp)
    score = others = None
    if user is not None:
        def score(on: np.ndarray) -> float:
            s = OracleSchedule(vp, on, 0.0, 0.0, 0.0)
            return float(_replay(trace, make_policy("oracle", schedule=s), profile,
                                 device_frames, knobs)["modeled_s"])
        where = _Placements(vp, len(epochs))
        _replay(trace, where, profile, device_frames, knobs)
        others = [where.on]
    return plan_oracle(plan, profile, trace.page_size, device_frames, init[vp], vp, cpu_access,
                       user, score=score, candidates=others, either=either,
                       faults_home=faults_home)


class _Placements(Policy):
    """``static``, noting which of pages ``vpns`` are on the device as each epoch starts."""
    name = "static"
    evicts = False

    def __init__(self, vpns: np.ndarray, epochs: int) -> None:
        self.vpns = vpns
        self.on = np.zeros((epochs, len(vpns)), bool)

    def fault(self, ctx: Any, ep: Epoch) -> list:
        if ctx.epoch < len(self.on):
            self.on[ctx.epoch] = ctx.node[self.vpns] == DEVICE
        return []


def _run_pages(runs: list[list[int]]) -> np.ndarray:
    """The pages of ``[[lo, hi], ...]`` runs (a user event's)."""
    return np.concatenate([np.arange(lo, hi) for lo, hi in runs])


class _EventPlacement(SimPlacement):
    """A simulated placement whose pages come and go with the trace's allocation events, and
    that takes the user's placement actions (hints, pins, moves, the device offline)."""

    online = True
    evacuating = False         # an offline made while an epoch ran: evacuate after it

    def accepts(self, node: int) -> bool:
        return node == 0 or self.online

    def place(self, lo: int, nodes: np.ndarray) -> None:
        nodes = np.asarray(nodes, np.int8).copy()
        for n in range(1, len(self.frames)):      # a smaller device than recorded: the rest
            on = np.flatnonzero(nodes == n)          # starts on the host
            room = max(0, self.free_frames(n))
            nodes[on[room:]] = 0
        self._set(lo, nodes)
        self.frames[0] = max(self.frames[0], self.used[0])

    def remove(self, lo: int, hi: int) -> None:
        self.collapse(lo, hi)
        self._set(lo, np.full(hi - lo, -1, np.int8))
        self._flags[lo:hi], self._pref[lo:hi], self._acc[lo:hi] = 0, -1, 0   # as pt.clear

    def user(self, ev: dict[str, Any]) -> None:
        """Apply one of the trace's ``user_events``."""
        op = ev["op"]
        if op == "hint":
            lo, hi = ev["lo"], ev["hi"]
            if ev.get("preferred") is not None:
                self._pref[lo:hi] = ev["preferred"]
            if ev.get("accessed_by") is not None:
                self._acc[lo:hi] = ev["accessed_by"]
            if ev.get("read_mostly") is not None:
                ptf.set_flag(self._flags, lo, hi, ptf.READ_MOSTLY, ev["read_mostly"])
                if not ev["read_mostly"]:
                    self.collapse(lo, hi)
        elif op == "collapse":
            self.collapse(ev["lo"], ev["hi"])
        elif op == "duplicate":
            self.duplicate(_run_pages(ev["runs"]))
        elif op == "pin":
            ptf.set_flag(self._flags, ev["lo"], ev["hi"], ptf.PINNED, ev["on"])
        elif op == "move":
            v = _run_pages(ev["runs"])
            v = v[(self._node[v] >= 0) & (self._node[v] != ev["node"])]
            self.move(v, int(ev["node"]), "api")      # as many as fit (a smaller device)
        else:
            self.online = bool(ev["online"])
            if not self.online:    # evacuated: every page on the device, whichever policy
                if ev.get("after_faults"):     # put it there; once the running work left
                    self.evacuating = True
                else:
                    self._evacuate()

    def next_epoch(self) -> None:
        """Before the next epoch's events: an evacuation that waited for the last one."""
        if self.evacuating:
            self.evacuating = False
            self._evacuate()

    def _evacuate(self) -> None:
        self.collapse(0, len(self._node))
        self.move(np.flatnonzero(self._node == 1), 0, "api")

    def _set(self, lo: int, nodes: np.ndarray) -> None:
        """Pages from ``lo`` on are now on ``nodes`` (-1: gone); frame counts follow."""
        span = self._node[lo: lo + len(nodes)]
        for sign, nn in ((-1, span), (1, nodes)):
            for n, c in enumerate(np.bincount(nn[nn >= 0], minlength=len(self.used)).tolist()):
                self.used[n] += sign * c
        span[:] = nodes


def replay(trace: Trace, policy: "str | Policy", profile: "str | Profile | None" = None,
           device_memory: "int | str | None" = None, tunables: dict[str, Any] | None = None,
           **policy_params: Any) -> dict[str, Any]:
    """Score ``policy`` on ``trace``: returns the manager's summary (modeled seconds,
    throughput, bytes migrated by cause and direction, remote fraction, p50/p99 epoch time...).

    ``profile`` defaults to the one recorded; ``device_memory`` to the recorded device
    capacity; the knobs the manager decides by (``cpu_access``, ``migration_enabled``,
    the counters' threshold and granularity, the heat half-life, the thrash window:
    :func:`recorded_tunables`) to their recorded values, changed where the run changed them;
    ``tunables`` sets knobs for the whole replay.
    ``policy="oracle"`` plans the offline schedule from this very trace; its
    ``lower_bound_s`` (no policy can beat it under the model) is added to the summary."""
    if not isinstance(trace, Trace):
        raise InvalidArgumentError(f"replay needs a ccadgpu Trace, got {type(trace).__name__}")
    prof = load_profile(profile) if profile is not None else _recorded_profile(trace)
    dev_frames = (parse_size(device_memory, "device_memory") // trace.page_size
                  if device_memory is not None else int(trace.header["nodes"][1]["frames"]))
    Tunables(**{**recorded_tunables(trace), **(tunables or {})})   # bad ones raise here
    extra: dict[str, Any] = {}
    if policy == "oracle":
        sched = oracle_schedule(trace, prof, dev_frames, tunables=tunables)
        pol: "str | Policy" = make_policy("oracle", schedule=sched)
        extra = {"lower_bound_s": sched.lower_bound, "oracle_planned_s": sched.planned_cost}
    else:
        pol = make_policy(policy, **policy_params)
    out = _replay(trace, pol, prof, dev_frames, tunables)
    out.update(extra)
    out["profile"] = prof.name
    return out


def _replay(trace: Trace, pol: Policy, prof: Profile, dev_frames: int,
            tunables: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`replay`'s run of the manager under ``pol`` (its summary)."""
    ps = trace.page_size
    nodes = trace.header["nodes"]
    epochs = trace_epochs(trace)
    start = initial_placement(trace, epochs)
    events = complete(trace)
    if events:              # the allocations' pages appear with their allocation events
        for a in _born(trace):
            start[a["vstart"]: a["vstart"] + a["npages"]] = -1
    host_frames = max(int(nodes[0]["frames"]), int(np.count_nonzero(start >= 0)))
    _fit_device(start, dev_frames)
    tun = Tunables(**{**recorded_tunables(trace), **(tunables or {})})
    sim = _EventPlacement(ps, [host_frames, dev_frames], start)
    mgr = MigrationManager(sim, pol, prof, tun)
    # (the knobs do not depend on the pages: an incomplete trace takes their changes too)
    todo = [e for e in trace.events if e[1] == 2 or e[2] in trace.allocations] if events else \
        [e for e in trace.events if e[1] == 2 and trace.user_events[e[2]]["op"] == "tunables"]

    def user(ev: dict[str, Any]) -> None:
        if ev["op"] == "tunables":         # the ones asked for rule throughout
            tun.set(**{n: v for n, v in ev["values"].items()
                       if n in DECISION_KNOBS and n not in (tunables or {})})
        else:
            sim.user(ev)
    def apply(kind: int, aid: int) -> None:
        if kind == 2:
            user(trace.user_events[aid])
            return
        a = trace.allocations[aid]
        if kind == 1:
            sim.place(a["vstart"], _pages_of(a))
        else:
            sim.remove(a["vstart"], a["vstart"] + a["npages"])
            mgr.forget(a["vstart"], a["vstart"] + a["npages"])
    k = 0
    for ep in epochs:
        sim.next_epoch()
        later = []          # made while the epoch's faults had run and its accesses not yet
        while k < len(todo) and todo[k][0] <= ep.epoch:     # what the live manager saw
            pos, kind, aid = todo[k]
            if pos == ep.epoch and _after_faults(trace, kind, aid):
                later.append((kind, aid))
            else:
                apply(kind, aid)
            k += 1
        if later:
            ep.ahead = mgr.fault_ahead(ep)
            for kind, aid in later:
                apply(kind, aid)
        mgr.step(ep)
    return mgr.summary()


def _after_faults(trace: Trace, kind: int, aid: int) -> bool:
    """Whether event ``(kind, aid)`` of ``trace.events`` came between its epoch's faults and
    the rest of that epoch's step (:mod:`ccadgpu.trace`)."""
    if kind == 2:
        return bool(trace.user_events[aid].get("after_faults"))
    return bool(trace.allocations[aid].get("died_after_faults" if kind == 0 else
                                           "after_faults"))


def recorded_tunables(trace: Trace) -> dict[str, Any]:
    """The knobs the manager decides by (``manager.DECISION_KNOBS``) as the recorded run
    started: a replay's defaults.  Their changes during the run are in its user events.
    (A trace from before knobs were recorded gives its ``cpu_access`` only: its header holds
    the knobs as they were saved, not as they ruled.)"""
    h = trace.header
    if "tunables_at_start" not in h:
        return {"cpu_access": h.get("tunables", {}).get("cpu_access", "coherent")}
    return {k: v for k, v in h["tunables_at_start"].items() if k in DECISION_KNOBS}


def knob_timeline(trace: Trace, epochs: Sequence[Epoch], name: str,
                  tunables: dict[str, Any] | None = None, late: bool = False) -> list[Any]:
    """Knob ``name``'s value in each of ``epochs`` as a replay sets it: the recorded start,
    the run's changes where it made them, or ``tunables``' value throughout.  ``late``: as
    the epoch's faults saw it (a change made once they ran counts from the next epoch)."""
    if name in (tunables or {}):
        return [tunables[name]] * len(epochs)
    cur = {**{k: v.default for k, v in KNOBS.items()}, **recorded_tunables(trace)}[name]
    changes = [(p, trace.user_events[i]["values"][name],
                bool(trace.user_events[i].get("after_faults")))
               for p, kind, i in trace.events
               if kind == 2 and trace.user_events[i]["op"] == "tunables"
               and name in trace.user_events[i]["values"]]
    out, k = [], 0
    for ep in epochs:
        while k < len(changes) and (changes[k][0] < ep.epoch or changes[k][0] == ep.epoch
                                    and not (late and changes[k][2])):
            cur = changes[k][1]
            k += 1
        out.append(cur)
    return out


def recorded_cpu_access(trace: Trace) -> str:
    """How the recorded space's CPU reached device pages (tunable ``cpu_access``; a cuda
    space migrates them home) when the run started: part of the recorded machine, so a
    replay's default."""
    return str(recorded_tunables(trace).get("cpu_access", "coherent"))


def _recorded_profile(trace: Trace) -> Profile:
    name = trace.profile_name
    try:
        return load_profile(name)
    except InvalidArgumentError:
        raw = trace.header["profile"]
        raise InvalidArgumentError(f"trace profile {name!r} is not installed here; pass "
                                   f"profile=... ({raw.get('description', '')})") from None
