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
    on_dev = int((sp.placement(a) == 1).sum())
    print("on device:", on_dev, "of", len(sp.placement(a)), "pages")
    assert on_dev > 0 and np.allclose(a, np.asarray(b) + 0.5 * np.asarray(c))
    s = sp.manager.summary()
    print(f"modeled {s['modeled_s'] * 1e3:.3f} ms, migrated {s['migrated_bytes'] >> 20} MiB")
    trace = sp.trace

# the same recorded accesses, scored under every policy without running a kernel
scores = {}
for pol in ("static", "on_demand", "access_counter", "two_touch", "oracle"):
    scores[pol] = ccadgpu.replay(trace, pol)["modeled_s"]
    print(f"{pol:15s} {scores[pol] * 1e3:8.3f} ms modeled")
assert scores["oracle"] <= min(scores.values()) * (1 + 1e-9)   # the yardstick is never beaten
print("ok")
