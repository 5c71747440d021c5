"""The open host epoch's accumulator: merging as tallies come gives what one merge of them all
gives, and per-page allocation ranges; a long loop of CPU operations holds bounded memory."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ccadgpu
from ccadgpu import hostepoch
from ccadgpu.counters import CPU, DEVICE, Footprint, TallyBuilder, merge_tallies
from ccadgpu.hostepoch import HostAccesses


def _tally(vlo: int, nbytes: list[int], proc: int, rw: int, nodes: list[int]):
    b = TallyBuilder((0, 1))
    nb = np.asarray(nbytes, np.int64)
    b.add(proc, rw, Footprint(vlo, nb, -(-nb // 32)), np.asarray(nodes, np.int8))
    return b.build()


op = st.tuples(st.integers(0, 40), st.lists(st.integers(0, 5000), min_size=1, max_size=6),
               st.sampled_from([CPU, DEVICE]), st.integers(0, 1), st.integers(0, 1),
               st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(st.lists(op, min_size=1, max_size=3 * hostepoch.COMPACT + 5))
def test_merging_as_they_come_equals_one_merge(ops):
    acc = HostAccesses(ids=True)
    tallies, seen = [], {}
    for vlo, nb, proc, rw, node, aid in ops:
        t = _tally(vlo, nb, proc, rw, [node] * len(nb))
        ids = np.full(t.n, aid, np.int64)
        if t.n:
            tallies.append(t)
            for v in np.asarray(t.vpns).tolist():
                seen.setdefault(v, set()).add(aid)
        acc.add(t, ids)
    if not tallies:
        assert not acc
        return
    got, ids = acc.take()
    want = merge_tallies(tallies)
    assert not acc
    np.testing.assert_array_equal(got.vpns, want.vpns)
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.sectors, want.sectors)
    np.testing.assert_array_equal(got.node, want.node)
    np.testing.assert_array_equal(got.get_totals(), want.get_totals())
    np.testing.assert_allclose(got.sectors_by_node(2), want.sectors_by_node(2))
    expect = [next(iter(seen[v])) if len(seen[v]) == 1 else -2
              for v in np.asarray(got.vpns).tolist()]
    assert ids.tolist() == expect


def test_a_long_loop_of_scalar_writes_holds_bounded_memory():
    with ccadgpu.Space(device_memory="4MiB", page_size="64KiB", policy="static") as sp:
        a = sp.zeros(1 << 14)
        n = 5 * hostepoch.COMPACT + 7
        for i in range(n):
            a[(i * 97) % len(a)] = 1.0
        # the space's and the trace's pending tallies are merged as they come
        assert len(sp._host_tallies._pending) < hostepoch.COMPACT
        assert len(sp.trace._host._pending) < hostepoch.COMPACT
        rec = sp.trace.flush()
        assert rec is not None
        assert int(rec.counts[:, CPU, 1].sum()) == n * 8
        assert int(rec.counts[:, CPU, 0].sum()) == 0
        assert int(rec.counts.sum()) == n * 8
