"""A placement policy in ~30 lines: promote pages the device touched in two epochs running,
demote pages the CPU touched more than the device.  Run live and in replay, next to the
built-in ones.

    python examples/custom_policy.py
"""
import numpy as np

import ccadgpu
from ccadgpu import ops
from ccadgpu.policies import Move, Policy, register_policy


@register_policy
class TwoTouch(Policy):
    """Promote on the second consecutive device epoch; demote what the CPU uses more."""
    name = "two_touch"

    def setup(self, ctx):
        self.prev = np.zeros(0, np.int64)          # pages the device touched last epoch

    def epoch_end(self, ctx, ep, notes):
        dev = ep.vpns[ep.touched_by(1)]
        again = np.intersect1d(dev, self.prev)     # touched in two device epochs running
        if ep.processor == 1:
            self.prev = dev
        h = ctx.heat(ep.vpns)                      # decayed sectors [page, cpu/device]
        cpu_heavy = ep.vpns[(h[:, 0] > h[:, 1]) & (ctx.node[ep.vpns] == 1)]
        return [Move(again[ctx.node[again] == 0], 1, "access_counter"),
                Move(cpu_heavy, 0, "access_counter")]


with ccadgpu.Space(device_memory="64MiB", profile="h100-pcie", policy="two_touch") as sp:
    n = 1 << 20
    a, b, c = sp.zeros(n), sp.asarray(np.random.rand(n)), sp.asarray(np.random.rand(n))
    for _ in range(10):
        ops.triad(a, b, c, 0.5)
    sp.sync()
    print("on device:", int((sp.placement(a) == 1).sum()), "of", len(sp.placement(a)), "pages")
    s = sp.manager.summary()
    print(f"modeled {s['modeled_s'] * 1e3:.3f} ms, migrated {s['migrated_bytes'] >> 20} MiB")
    trace = sp.trace

# the same recorded accesses, scored under every policy without running a kernel
for pol in ("static", "on_demand", "access_counter", "two_touch", "oracle"):
    r = ccadgpu.replay(trace, pol)
    print(f"{pol:15s} {r['modeled_s'] * 1e3:8.3f} ms modeled")
