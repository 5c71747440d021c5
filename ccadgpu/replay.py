"""Replay a recorded trace under any policy, without running a kernel or copying a byte.

One recorded run (on the CPU stand-in, or later a GPU) can be scored under every policy and
profile on a laptop::

    tr = ccadgpu.Trace.load("run.npz")
    for pol in ("static", "on_demand", "access_counter", "oracle"):
        print(pol, replay(tr, pol, profile="h100-pcie")["modeled_s"])

The replay starts from the placement the trace recorded at each page's first appearance (record
under ``static`` to replay from the allocation placement), prices epochs and migrations with
the profile, and applies the same manager as a live space (:mod:`ccadgpu.manager`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .clock import Profile, load_profile
from .errors import InvalidArgumentError
from .manager import Epoch, MigrationManager, SimPlacement
from .policies import Policy, make_policy, plan_oracle
from .trace import Trace
from .tunables import Tunables
from .units import parse_size


def trace_epochs(trace: Trace) -> list[Epoch]:
    """The trace's records as manager epochs."""
    return [Epoch.from_record(r, i) for i, r in enumerate(trace)]


def initial_placement(trace: Trace, epochs: Sequence[Epoch]) -> np.ndarray:
    """Node of every page of the trace's allocations before the first epoch: where the trace
    first saw it, else where its allocation was (host)."""
    allocs = list(trace.allocations.values())
    hi = max([a["vstart"] + a["npages"] for a in allocs] +
             [int(r.vpns.max()) + 1 for r in trace if len(r.vpns)] + [0])
    node = np.full(hi, -1, np.int8)
    for a in allocs:
        node[a["vstart"]: a["vstart"] + a["npages"]] = 0
    seen = np.zeros(hi, bool)
    for r in trace:
        v = np.asarray(r.vpns, np.int64)
        new = ~seen[v]
        node[v[new]] = np.asarray(r.node)[new]
        seen[v] = True
    return node


def replay(trace: Trace, policy: "str | Policy", profile: "str | Profile | None" = None,
           device_memory: "int | str | None" = None, tunables: dict[str, Any] | None = None,
           **policy_params: Any) -> dict[str, Any]:
    """Score ``policy`` on ``trace``: returns the manager's summary (modeled seconds,
    throughput, bytes migrated by cause and direction, remote fraction, p50/p99 epoch time...).

    ``profile`` defaults to the one recorded; ``device_memory`` to the recorded device
    capacity.  ``policy="oracle"`` plans the offline schedule from this very trace; its
    ``lower_bound_s`` (no policy can beat it under the model) is added to the summary."""
    if not isinstance(trace, Trace):
        raise InvalidArgumentError(f"replay needs a ccadgpu Trace, got {type(trace).__name__}")
    prof = load_profile(profile) if profile is not None else _recorded_profile(trace)
    ps = trace.page_size
    nodes = trace.header["nodes"]
    dev_frames = (parse_size(device_memory, "device_memory") // ps if device_memory is not None
                  else int(nodes[1]["frames"]))
    epochs = trace_epochs(trace)
    init = initial_placement(trace, epochs)
    host_frames = max(int(nodes[0]["frames"]), int(np.count_nonzero(init >= 0)))
    if int(np.count_nonzero(init == 1)) > dev_frames:   # a smaller device: start those on host
        over = np.flatnonzero(init == 1)[dev_frames:]
        init[over] = 0
    tun = Tunables(**(tunables or {}))
    extra: dict[str, Any] = {}
    if policy == "oracle":
        vp = np.flatnonzero(init >= 0)
        sched = plan_oracle(epochs, prof, ps, dev_frames, init[vp], vp, tun.cpu_access)
        pol: "str | Policy" = make_policy("oracle", schedule=sched)
        extra = {"lower_bound_s": sched.lower_bound, "oracle_planned_s": sched.planned_cost}
    else:
        pol = make_policy(policy, **policy_params)
    mgr = MigrationManager(SimPlacement(ps, [host_frames, dev_frames], init), pol, prof, tun)
    for ep in epochs:
        mgr.step(ep)
    out = mgr.summary()
    out.update(extra)
    out["profile"] = prof.name
    return out


def _recorded_profile(trace: Trace) -> Profile:
    name = trace.profile_name
    try:
        return load_profile(name)
    except InvalidArgumentError:
        raw = trace.header["profile"]
        raise InvalidArgumentError(f"trace profile {name!r} is not installed here; pass "
                                   f"profile=... ({raw.get('description', '')})") from None
