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


def _tally(vlo: int, nbytes: list[int], proc: int, rws: list[int], nodes: list[int]):
    b = TallyBuilder((0, 1))
    nb = np.asarray(nbytes, np.int64)
    for rw in rws:
        b.add(proc, rw, Footprint(vlo, nb, -(-nb // 32)), np.asarray(nodes, np.int8))
    return b.build()


op = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.integers(0, 40), st.lists(st.integers(0, 5000), min_size=n, max_size=n),
    st.sampled_from([CPU, DEVICE]), st.sampled_from([[0], [1], [0, 1]]),
    st.lists(st.integers(0, 1), min_size=n, max_size=n), st.integers(0, 3)))


def _by_page(tallies):
    """Per vpn: summed bytes and sectors and the last node, from each tally's own matrices."""
    out: dict[int, list] = {}
    for t in tallies:
        for v, c, s, nd in zip(np.asarray(t.vpns).tolist(), t.counts, t.sectors, t.node):
            e = out.setdefault(v, [np.zeros((2, 2, 2), np.int64), np.zeros((2, 2), np.int64),
                                   -1])
            e[0] += c
            e[1] += s
            e[2] = int(nd)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(op, min_size=1, max_size=3 * hostepoch.COMPACT + 5))
def test_merging_as_they_come_sums_every_tally(ops):
    acc = HostAccesses(ids=True)
    tallies, seen = [], {}
    for vlo, nb, proc, rws, nodes, aid in ops:
        t = _tally(vlo, nb, proc, rws, nodes)
        # as Tally.alloc_ids gives them: one per part in the parts form, else one per row
        ids = [aid] * len(t.parts) if t.parts is not None else np.full(t.n, aid, np.int64)
        if t.n:
            tallies.append(t)
            for v in np.asarray(t.vpns).tolist():
                seen.setdefault(v, set()).add(aid)
        acc.add(t, ids)
    if not tallies:
        assert not acc
        return
    got, ids = acc.take()
    assert not acc
    want = _by_page(tallies)
    assert np.asarray(got.vpns).tolist() == sorted(want)
    for i, v in enumerate(np.asarray(got.vpns).tolist()):
        np.testing.assert_array_equal(got.counts[i], want[v][0])
        np.testing.assert_array_equal(got.sectors[i], want[v][1])
        assert int(got.node[i]) == want[v][2]
    np.testing.assert_array_equal(got.get_totals(),
                                  sum(t.counts.sum(axis=0) for t in tallies))
    np.testing.assert_allclose(got.sectors_by_node(2),
                               sum(t.sectors_by_node(2) for t in tallies))
    np.testing.assert_array_equal(merge_tallies(tallies).counts, got.counts)
    expect = [next(iter(seen[v])) if len(seen[v]) == 1 else -2
              for v in np.asarray(got.vpns).tolist()]
    assert ids.tolist() == expect


def test_a_long_loop_of_scalar_writes_holds_bounded_memory():
    with ccadgpu.Space(device_memory="4MiB", page_size="64KiB", policy="static") as sp:
        a = sp.zeros(1 << 14)
        n = 5 * hostepoch.COMPACT + 7
        for i in range(n):
            a[(i * 97) % len(a)] = 1.0
        # the pending tallies are merged as they come; the trace records the same epoch
        assert len(sp._host_tallies._pending) < hostepoch.COMPACT
        assert sp.trace._host is None
        rec = sp.trace.flush()
        assert rec is not None
        assert int(rec.counts[:, CPU, 1].sum()) == n * 8
        assert int(rec.counts[:, CPU, 0].sum()) == 0
        assert int(rec.counts.sum()) == n * 8


def test_a_trace_begun_within_a_host_epoch_records_the_operations_since():
    with ccadgpu.Space(device_memory="4MiB", page_size="64KiB", policy="static",
                       trace=False) as sp:
        a = sp.zeros(1 << 14)
        a[:100] = 1.0
        sp.tunables.trace = True
        a[200:300] = 2.0
        a[300:310] = 2.0
        rec = sp.trace.flush()
        assert int(rec.counts.sum()) == 110 * 8
        a[:5] = 1.0
        sp.trace.clear()             # cleared within an epoch: the same
        a[:7] = 1.0
        assert int(sp.trace.flush().counts.sum()) == 7 * 8
        assert sp.trace.flush() is None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 100), st.integers(1, 70000), st.sampled_from([CPU, DEVICE]),
       st.integers(0, 1), st.integers(-1, 2))
def test_a_one_page_tally_is_the_parts_form_one(vlo, nbytes, proc, rw, node):
    b = TallyBuilder((0, 1), 2)
    nb = np.asarray([nbytes], np.int64)
    b.add(proc, rw, Footprint(vlo, nb, -(-nb // 32), True), np.asarray([node], np.int8))
    fast, slow = b.build(), b._build_parts()
    assert fast.parts is not None and fast.n == slow.n == 1
    np.testing.assert_array_equal(fast.vpns, slow.vpns)
    np.testing.assert_array_equal(fast.node, slow.node)
    np.testing.assert_array_equal(fast.counts, slow.counts)
    np.testing.assert_array_equal(fast.sectors, slow.sectors)
    np.testing.assert_array_equal(fast.get_totals(), slow.get_totals())
    np.testing.assert_array_equal(fast.sectors_by_node(2), slow.sectors_by_node(2))
    np.testing.assert_array_equal(fast.get_remote_sectors((0, 1)),
                                  slow.get_remote_sectors((0, 1)))


def test_the_byte_range_cache_is_bounded_by_entries_too():
    from ccadgpu.counters import _RangeCache
    c = _RangeCache(max_pages=1 << 20, max_entries=16)
    for off in range(0, 8 * 100, 8):                  # scalar stores at 100 offsets
        nb, sec = c.get(65536, 1, off, 8)
        assert nb.tolist() == [8] and sec.tolist() == [1]
    assert len(c._d) == 16 and c._pages == 16
    nb, _ = c.get(4096, 2, 100, 8000)
    assert nb.tolist() == [3996, 4004]
