"""The virtual range and frame allocators: first fit, and phase-aligned fits for runs of pages
that should sit at their frames' offset within 2 MiB (huge pages map as such)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ccadgpu.errors import CapacityError
from ccadgpu.runs import bool_runs
from ccadgpu.vaspace import VASpace

PS = 64 << 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 80), st.integers(0, 31),
                          st.sampled_from([1, 32])), min_size=1, max_size=40))
def test_allocations_never_overlap_and_keep_their_phase(ops):
    va = VASpace(512, PS)
    live: dict[int, int] = {}
    try:
        for alloc, n, phase, period in ops:
            if alloc or not live:
                # an aligned fit exists if some free extent holds n pages from that phase
                free = [(s, ln) for s, ln in zip(va._free_starts, va._free_lens)]
                fits = any(s + (phase - s) % period + n <= s + ln for s, ln in free)
                try:
                    start = va.allocate(n, phase, period)
                except CapacityError:
                    assert all(ln < n for _, ln in free)
                    continue
                assert 0 <= start and start + n <= va.npages
                if fits:
                    assert start % period == phase % period
                for s, m in live.items():
                    assert start + n <= s or s + m <= start          # no overlap
                live[start] = n
            else:
                s = sorted(live)[n % len(live)]
                va.release(s, live.pop(s))
            # free extents: sorted, disjoint, coalesced, and exactly what is not live
            ext = list(zip(va._free_starts, va._free_lens))
            assert all(a + la < b for (a, la), (b, _) in zip(ext, ext[1:]))
            assert sum(ln for _, ln in ext) + sum(live.values()) == va.npages
    finally:
        va.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4095), max_size=300), st.integers(32, 600), st.integers(0, 31))
def test_frames_for_a_run_of_pages_start_at_its_phase(taken, n, phase):
    """Node.take(n, phase=, period=32): the first free run of n frames starting at ``phase``
    modulo 32 when there is one, else frames as usual; never a taken frame."""
    from ccadgpu.nodes import Node
    node = Node(1, "device", "device", 4096 * PS, PS, prefault=False, backed=False)
    held = node.take(len(set(taken)), partial=True) if taken else None
    if held is not None:       # free some again, to leave holes of every size
        node.give(held[np.isin(held, np.array(sorted(set(taken))), invert=True)])
    free_before = node._free.copy()
    got = node.take(n, partial=True, phase=phase, period=32)
    assert len(got) == min(n, int(free_before.sum()))
    assert free_before[got].all() and not node._free[got].any()
    starts, lens = bool_runs(free_before)
    first = starts + (phase - starts) % 32
    fits = np.flatnonzero(first + n <= starts + lens)
    if len(fits):
        assert got[0] == first[fits[0]] and (np.diff(got) == 1).all()


@given(st.lists(st.integers(0, 1000), max_size=30))
@settings(max_examples=100, deadline=None)
def test_expand_runs_inverts_runs(seq):
    from ccadgpu.runs import expand_runs, runs
    v = np.asarray(seq, np.int64)
    at, lens = runs(v)
    np.testing.assert_array_equal(expand_runs(v[at] if len(v) else at, lens), v)
    assert expand_runs([3, 9], [0, 2]).tolist() == [9, 10]
