"""The virtual range allocator: first fit, and phase-aligned fit for runs of pages that should
sit at their frames' offset within 2 MiB."""
from hypothesis import given, settings
from hypothesis import strategies as st

from ccadgpu.errors import CapacityError
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
