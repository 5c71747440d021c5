"""Run workloads under policies and profiles and collect one result row per run (the engine
behind ``ccadgpu bench`` and ``ccadgpu demo``).

A row (JSON schema ``ccadgpu-bench/1``, one object per run):

=============================  =================================================================
``workload, policy, profile``  what ran
``size, page_size, seed``      working-set bytes, page bytes, RNG seed
``repeat``                     which repetition (0-based)
``verified``                   every result equalled its NumPy reference
``wall_s``                     wall seconds of the whole run on this machine
``modeled_s``                  modeled seconds on the profile (kernels + host work + migrations)
``throughput_gbps``            bytes the workload touched / modeled seconds (GB/s, 1e9)
``touched_bytes``              bytes the workload touched (32-byte sectors x 32)
``access_s, migrate_s,
fault_s``                      modeled seconds by kind
``migrated_bytes``             bytes migrated, all directions and causes
``migrated_bytes_by_direction`` e.g. ``{"host_to_device": ...}``
``migrated_bytes_by_cause``    e.g. ``{"access_counter": ..., "eviction": ...}``
``migration_gbps_modeled``     migrated bytes / modeled migration seconds
``migration_gbps_wall``        migrated bytes / wall seconds the real migrations took here
``remote_fraction``            share of touched bytes that crossed to the other node
``thrashing_pages``            pages caught ping-ponging (moved again within the thrash window)
``epoch_p50_s, epoch_p99_s``   modeled time per epoch (launch or host run), median and p99
``device_peak_pages``          most pages on the device after any epoch
``epochs, notifications``      epochs stepped, access-counter notifications raised
``decision_s, manager_s``      wall seconds in policy decisions / the whole manager step
``lower_bound_s``              (oracle rows) no policy can beat this under the model
=============================  =================================================================
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .policies import make_policy
from .units import parse_size
from .workloads import get_workload

SCHEMA = "ccadgpu-bench/1"


@dataclass
class Run:
    """One run's row and, if asked for, its placement history (``[epoch, page]`` node ids of
    the workload's pages, for heatmaps)."""
    row: dict[str, Any]
    history: np.ndarray | None = None
    trace: Any = field(default=None, repr=False)


def run_workload(workload: str, policy: str = "static", profile: str = "gh200",
                 size: "int | str" = "64MiB", seed: int = 0, page_size: "int | str" = "64KiB",
                 history: bool = False, keep_trace: bool = False, repeat: int = 0,
                 backend: Any = "cpu", tunables: dict[str, Any] | None = None,
                 **policy_params: Any) -> Run:
    """Run ``workload`` live on a fresh space under ``policy`` (the space's ``tunables``
    overridden by the dict's).  ``policy="oracle"`` first records the workload under
    ``static``, plans the offline schedule from that trace, then runs again following it."""
    from .space import Space
    wl = get_workload(workload)
    nbytes = parse_size(size, "size")
    ps = parse_size(page_size, "page_size")
    if nbytes < ps:
        from .errors import InvalidArgumentError
        raise InvalidArgumentError(f"size {size!r} is smaller than one page ({ps} bytes)")
    extra: dict[str, Any] = {}
    pol: Any = policy
    if policy == "oracle":
        # the schedule is planned from the whole recording: whatever the runs' tunables, it
        # counts and traces every epoch
        rec_tunables = {**(tunables or {}), "access_counters": True, "trace": True,
                        "trace_max_epochs": 1 << 30}
        rec = run_workload(workload, "static", profile, nbytes, seed, ps, keep_trace=True,
                           backend=backend, tunables=rec_tunables)
        from .clock import load_profile
        from .replay import oracle_schedule
        frames = int(rec.trace.header["nodes"][1]["frames"])
        # (under the recorded cpu_access: the live space has the recording's tunables)
        sched = oracle_schedule(rec.trace, load_profile(profile), frames)
        pol = make_policy("oracle", schedule=sched)
        extra["lower_bound_s"] = sched.lower_bound
    with Space(device_memory=wl.device_bytes(nbytes, ps), page_size=ps, profile=profile,
               policy=pol, policy_params=policy_params or None, backend=backend,
               **(tunables or {})) as sp:
        sp.manager.record_history = history
        t0 = time.perf_counter()
        ok = wl.run(sp, nbytes, np.random.default_rng(seed))
        sp.sync()
        wall = time.perf_counter() - t0
        row = sp.manager.summary()
        row.update(extra)
        row.update({"workload": workload, "policy": policy, "profile": profile,
                    "size": nbytes, "page_size": ps, "seed": seed, "repeat": repeat,
                    "verified": bool(ok), "wall_s": wall, "backend": sp.backend})
        hist = sp.manager.history_array() if history else None
        tr = None
        if keep_trace:
            import os
            import tempfile
            from .trace import Trace
            with tempfile.TemporaryDirectory() as d:
                p = os.path.join(d, "t.npz")
                sp.trace.save(p)
                tr = Trace.load(p)
    return Run(row, hist, tr)
