"""The access-counter unit: exact per-page counts, local/remote split, notifications, host side."""
import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E
from ccadgpu import ops
from ccadgpu.counters import CPU, DEVICE, LOCAL, READ, REMOTE, WRITE

P = 4096


@pytest.fixture
def sp():
    with ccadgpu.Space(device_memory="4MiB", host_memory="32MiB", page_size=P) as s:
        yield s


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def span(sp, arr):
    """(first vpn, page count, byte address of the first page) of the pages arr spans."""
    _, lo, hi = sp._span_vpns(arr)
    return lo, hi - lo, sp.va.addr(lo)


def brute_dense(sp, arr):
    """Bytes per spanned page, element by element (independent of the library's arithmetic)."""
    _, n, base = span(sp, arr)
    a = arr.view(np.ndarray)
    offs = np.zeros(a.shape, np.int64) + (a.__array_interface__["data"][0] - base)
    for d, g in enumerate(np.indices(a.shape)):
        offs += g * a.strides[d]
    return np.bincount(offs.reshape(-1) // P, minlength=n).astype(np.int64) * a.itemsize


def brute_indexed(sp, arr, idx, per=1):
    _, n, base = span(sp, arr)
    off0 = arr.__array_interface__["data"][0] - base
    return np.bincount((off0 + np.asarray(idx).reshape(-1) * arr.itemsize) // P,
                       minlength=n).astype(np.int64) * arr.itemsize * per


def embed(sp, whole, view):
    """brute_dense(view) placed at its pages among the pages ``whole`` spans."""
    _, first, last = sp._span_vpns(whole)
    lo, n, _ = span(sp, view)
    out = np.zeros(last - first, np.int64)
    out[lo - first: lo - first + n] = brute_dense(sp, view)
    return out


def counts(sp, arr):
    return sp.counters.counts(arr)


# -- dense kernels: closed form -----------------------------------------------------------------------
def test_copy_counts_are_exact(sp, rng):
    a = sp.asarray(rng.random(10_000) + 1)
    b = sp.zeros(10_000)
    v, w = a[333:9_000], b[17:17 + 8_667]           # views starting and ending mid-page
    ops.copy(w, v)
    ca, cb = counts(sp, a), counts(sp, b)
    _, first_a, _ = sp._span_vpns(a)
    lo, n, _ = span(sp, v)
    exp = np.zeros(len(ca), np.int64)
    exp[lo - first_a: lo - first_a + n] = brute_dense(sp, v)
    assert np.array_equal(ca[:, DEVICE, READ, REMOTE], exp)     # arrays live on the host
    assert ca.sum() == v.nbytes
    lo, n, _ = span(sp, w)
    _, first_b, _ = sp._span_vpns(b)
    exp = np.zeros(len(cb), np.int64)
    exp[lo - first_b: lo - first_b + n] = brute_dense(sp, w)
    assert np.array_equal(cb[:, DEVICE, WRITE, REMOTE], exp)
    assert cb.sum() == w.nbytes
    r = sp.device.last_launch
    assert r.bytes_read == r.bytes_written == v.nbytes and r.bytes_remote == 2 * v.nbytes
    rec = sp.trace[-1]
    assert rec.kernel == "copy" and rec.nbytes == 2 * v.nbytes
    assert np.all(np.diff(rec.vpns) > 0)


def test_streaming_and_stencil_counts(sp, rng):
    x = sp.asarray(rng.random(5_000) + 1, placement="device")
    y = sp.asarray(rng.random(5_000) + 1, placement="device")
    ops.axpy(2.0, x, y)
    cy, cx = counts(sp, y), counts(sp, x)
    assert np.array_equal(cy[:, DEVICE, READ, LOCAL], brute_dense(sp, y))
    assert np.array_equal(cy[:, DEVICE, WRITE, LOCAL], brute_dense(sp, y))
    assert np.array_equal(cx[:, DEVICE, READ, LOCAL], brute_dense(sp, x))
    assert cx[:, :, :, REMOTE].sum() == 0 and cx[:, CPU].sum() == 0
    inp = sp.asarray(rng.random((50, 70)) + 1)
    out = sp.empty((50, 70))
    ops.stencil5(out, inp)
    assert np.array_equal(counts(sp, inp)[:, DEVICE, READ, REMOTE], brute_dense(sp, inp))
    assert np.array_equal(counts(sp, out)[:, DEVICE, WRITE, REMOTE], brute_dense(sp, out))
    s = sp.asarray(rng.random(3_000) + 1)
    ops.dot(s, s)                     # the same array twice: one sweep of its bytes
    assert counts(sp, s)[:, DEVICE, READ, REMOTE].sum() == s.nbytes


# -- indexed kernels: np.bincount ------------------------------------------------------------------------
def test_gather_counts_equal_bincount(sp, rng):
    src = sp.asarray(rng.random(20_000) + 1)
    idx_np = rng.integers(0, 20_000, 7_777)
    idx = sp.asarray(idx_np)
    out = sp.empty(7_777)
    idx2, out2 = sp.asarray(idx_np[:7_000] % 10), sp.empty(7_000)
    ops.gather(out2, src[5:], idx2)             # a view of src: indices from its own start
    ops.gather(out, src, idx)
    cs = counts(sp, src)
    exp = brute_indexed(sp, src, idx_np)
    exp_view = np.zeros_like(exp)
    exp_view[:1] = 7_000 * 8                       # src[5:15] all lie in page 0
    assert np.array_equal(cs[:, DEVICE, READ, REMOTE], exp + exp_view)
    assert np.array_equal(counts(sp, idx)[:, DEVICE, READ, REMOTE], brute_dense(sp, idx))
    assert np.array_equal(counts(sp, idx2)[:, DEVICE, READ, REMOTE], brute_dense(sp, idx2))
    assert cs[:, DEVICE, WRITE].sum() == 0
    rec = sp.trace[-1]
    per_sector = rec.sectors[np.isin(rec.vpns, np.arange(*sp._span_vpns(src)[1:])), DEVICE, READ]
    assert per_sector.sum() == 7_777                 # one 32-byte sector per 8-byte access


def test_scatter_and_spmv_counts(sp, rng):
    dst = sp.asarray(rng.random(30_000) + 1)
    idx_np = rng.permutation(30_000)[:4_000]
    idx, src = sp.asarray(idx_np), sp.asarray(rng.random(4_000) + 1)
    ops.scatter(dst, idx, src)
    assert np.array_equal(counts(sp, dst)[:, DEVICE, WRITE, REMOTE],
                          brute_indexed(sp, dst, idx_np))
    assert counts(sp, dst)[:, DEVICE, READ].sum() == 0
    nrows, ncols = 500, 9_000
    cnt = rng.integers(1, 9, nrows)
    indptr = sp.asarray(np.concatenate(([0], np.cumsum(cnt))))
    ind_np = rng.integers(0, ncols, int(cnt.sum()))
    indices = sp.asarray(ind_np)
    data = sp.asarray(rng.random(int(cnt.sum())) + 1)
    x = sp.asarray(rng.random(ncols) + 1)
    y = sp.empty(nrows)
    ops.spmv_csr(y, indptr, indices, data, x)
    assert np.array_equal(counts(sp, x)[:, DEVICE, READ, REMOTE], brute_indexed(sp, x, ind_np))
    for a in (indptr, indices, data):
        assert np.array_equal(counts(sp, a)[:, DEVICE, READ, REMOTE], brute_dense(sp, a))
    assert np.array_equal(counts(sp, y)[:, DEVICE, WRITE, REMOTE], brute_dense(sp, y))


# -- local / remote ---------------------------------------------------------------------------------------------
def test_local_remote_split_follows_migrations(sp, rng):
    n = 12 * P // 8
    src = sp.asarray(rng.random(n) + 1)
    dst = sp.zeros(n, placement="device")
    even = np.arange(0, 12, 2)
    assert sp.move_pages(src, "device", pages=even).ok
    ops.copy(dst, src)
    c = counts(sp, src)
    on_dev = sp.placement(src) == 1
    assert np.array_equal(on_dev, np.isin(np.arange(12), even))
    assert np.all(c[on_dev, DEVICE, READ, LOCAL] == P) and np.all(c[on_dev, DEVICE, READ, REMOTE] == 0)
    assert np.all(c[~on_dev, DEVICE, READ, REMOTE] == P) and np.all(c[~on_dev, DEVICE, READ, LOCAL] == 0)
    assert np.all(counts(sp, dst)[:, DEVICE, WRITE, LOCAL] == P)
    float(np.sum(src))                                  # CPU read through __array_function__
    c = counts(sp, src)
    assert np.all(c[on_dev, CPU, READ, REMOTE] == P) and np.all(c[~on_dev, CPU, READ, LOCAL] == P)
    # clear-on-migrate: the pages that move lose their counts, the others keep them
    r = sp.move_pages(src, "host")
    assert r.pages_moved == len(even)
    c2 = counts(sp, src)
    assert c2[on_dev].sum() == 0 and np.array_equal(c2[~on_dev], c[~on_dev])
    tot = sp.stats()
    assert tot["access_bytes_device_read_local"] == len(even) * P
    assert tot["access_bytes_device_write_local"] == dst.nbytes
    assert tot["access_bytes_cpu_read_remote"] == len(even) * P


# -- notifications --------------------------------------------------------------------------------------------------
def test_notifications_threshold_granularity_and_reset(sp, rng):
    sp.tunables.set(access_counter_granularity=2 * P, access_counter_threshold=100)
    assert sp.counters.pages_per_region == 2
    x = sp.asarray(rng.random(5 * P // 8 + 100) + 1)          # 5 pages and a bit
    ops.sum(x)
    notes = sp.counters.drain()
    lo, n, _ = span(sp, x)
    per_page = -(-brute_dense(sp, x) // 32)                   # sectors per page
    regions = (lo + np.arange(n)) // 2
    exp = {int(r): int(per_page[regions == r].sum()) for r in np.unique(regions)}
    exp = {r: s for r, s in exp.items() if s >= 100}
    assert {int(r): int(s) for r, s in zip(notes["region"], notes["sectors"])} == exp
    assert np.all(notes["processor"] == DEVICE) and np.all(notes["npages"] == 2)
    assert np.all(notes["vpn"] == notes["region"] * 2)
    assert np.all(notes["epoch"] == sp.device.last_launch.epoch)
    assert sp.device.last_launch.notifications == len(notes)
    acc = sp.counters.region_sectors("device")
    assert acc[list(exp)].sum() == 0                          # reset when notified
    # local accesses never notify
    assert sp.move_pages(x, "device").ok
    ops.sum(x)
    assert len(sp.counters.drain()) == 0


def test_threshold_accumulates_and_migration_clears(sp, rng):
    sp.tunables.set(access_counter_granularity=4 * P, access_counter_threshold=1100)
    x = sp.asarray(rng.random(4 * P // 8) + 1)                 # exactly one region if aligned
    lo, n, _ = span(sp, x)
    regs = np.unique((lo + np.arange(n)) // 4)
    for k in range(1, 3):
        ops.sum(x)                                            # 512 sectors per sweep
        assert sp.counters.pending == 0
        assert sp.counters.region_sectors()[regs].sum() == 512 * k
    sp.move_pages(x, "device", pages=[0])                     # clears its region
    assert sp.counters.region_sectors()[regs[0]] == 0
    sp.move_pages(x, "host", pages=[0])
    ops.sum(x)
    ops.sum(x)
    assert sp.counters.pending == 0
    ops.sum(x)                                                # 1536 >= 1100
    assert sp.counters.pending == 1 and sp.counters.drain()["sectors"][0] == 1536


def test_batched_delivery_and_overflow(sp, rng):
    sp.tunables.set(access_counter_granularity=P, access_counter_threshold=1,
                    access_counter_batch=3)
    got = []
    sp.counters.subscribe(got.append)
    x = sp.asarray(rng.random(5 * P // 8) + 1)                # 5 pages -> 5 notifications
    ops.sum(x)
    assert [len(b) for b in got] == [3] and sp.counters.pending == 2
    assert sp.counters.flush() == 2
    assert [len(b) for b in got] == [3, 2] and sp.counters.pending == 0
    sp.counters.unsubscribe(got.append)
    sp.tunables.access_counter_buffer = 2
    ops.sum(x)
    assert sp.counters.pending == 2
    assert sp.stats()["access_counter_notifications_dropped"] == 3
    assert len(sp.counters.drain(1)) == 1 and len(sp.counters.drain()) == 1
    with pytest.raises(E.InvalidArgumentError):
        sp.counters.subscribe(42)


def test_cpu_notifications_for_device_pages(sp, rng):
    sp.tunables.set(access_counter_granularity=P, access_counter_threshold=10)
    x = sp.asarray(rng.random(2 * P // 8) + 1, placement="device")
    x * 2.0                                                    # remote CPU read of both pages
    notes = sp.counters.drain()
    assert len(notes) == 2 and np.all(notes["processor"] == CPU)
    assert np.all(notes["sectors"] == P // 32)


@pytest.mark.parametrize("knob,value", [("access_counter_granularity", 3000),
                                        ("access_counter_granularity", 2048),
                                        ("access_counter_threshold", 0),
                                        ("access_counter_batch", 0),
                                        ("access_counter_buffer", -1),
                                        ("access_counters", 1)])
def test_bad_counter_tunables(sp, knob, value):
    before = sp.tunables.as_dict()
    with pytest.raises(E.InvalidTunableError):
        setattr(sp.tunables, knob, value)
    assert sp.tunables.as_dict() == before


def test_granularity_below_page_is_one_page():
    with ccadgpu.Space(device_memory="1MiB", host_memory="8MiB", page_size="64KiB",
                       access_counter_granularity=4096) as s:
        assert s.counters.pages_per_region == 1


# -- host side ---------------------------------------------------------------------------------------------------
def test_host_accesses_are_counted(sp, rng):
    a = sp.asarray(rng.random(6_000) + 1)
    b = sp.asarray(rng.random(6_000) + 1)
    c = sp.zeros(6_000)
    # each array's own bytes per page (cache colouring starts each at its own offset)
    wa, wb, wc = (brute_dense(sp, x) for x in (a, b, c))

    def cpu(arr, rw):
        return counts(sp, arr)[:, CPU, rw, LOCAL]

    a + 1.0
    assert np.array_equal(cpu(a, READ), wa) and cpu(a, WRITE).sum() == 0
    np.add(a, b, out=c)
    assert np.array_equal(cpu(b, READ), wb) and np.array_equal(cpu(c, WRITE), wc)
    assert np.array_equal(cpu(a, READ), 2 * wa)
    c += 1.0                                                  # read and written
    assert np.array_equal(cpu(c, READ), wc) and np.array_equal(cpu(c, WRITE), 2 * wc)
    sp.counters.clear()
    a[::3] = 5.0                                              # strided store
    assert np.array_equal(cpu(a, WRITE), brute_dense(sp, a.view(np.ndarray)[::3]))
    sp.counters.clear()
    idx = rng.integers(0, 6_000, 500)
    a[idx] = 1.5                                              # fancy store: per element
    assert np.array_equal(cpu(a, WRITE), brute_indexed(sp, a, idx))
    sp.counters.clear()
    got = a[idx]                                              # fancy read
    assert type(got) is np.ndarray and np.array_equal(cpu(a, READ), brute_indexed(sp, a, idx))
    sp.counters.clear()
    np.add.at(a, idx, 1.0)                                    # ufunc.at: read + write a[idx]
    assert np.array_equal(cpu(a, READ), brute_indexed(sp, a, idx))
    assert np.array_equal(cpu(a, WRITE), brute_indexed(sp, a, idx))
    sp.counters.clear()
    mask = np.asarray(b) > 1.5
    b[mask] = 0.5                                             # boolean mask store
    assert np.array_equal(cpu(b, WRITE), brute_indexed(sp, b, np.flatnonzero(mask)))
    sp.counters.clear()
    a[5]                                                      # single-element reads: not counted
    a[7] = 2.0                                                # single-element stores: counted
    assert cpu(a, READ).sum() == 0 and cpu(a, WRITE).sum() == 8
    sp.counters.clear()
    np.copyto(c, b)
    assert np.array_equal(cpu(c, WRITE), wc) and np.array_equal(cpu(b, READ), wb)
    sp.counters.clear()
    with sp.host_access(a[100:2_000], "rw") as v:
        v += 1                                                # plain view: counted once, above
    assert np.array_equal(cpu(a, READ), embed(sp, a, a[100:2_000]))
    assert np.array_equal(cpu(a, WRITE), cpu(a, READ))
    with pytest.raises(E.InvalidArgumentError):
        with sp.host_access(a, "x"):
            pass
    np.asarray(a).sum()                                       # raw view: invisible (documented)
    assert counts(sp, a)[:, CPU].sum() == 2 * cpu(a, READ).sum()


def test_host_epochs_in_trace(sp, rng):
    x = sp.asarray(rng.random(1_000) + 1)
    float(np.sum(x))
    ops.sum(x)
    x * 3.0
    rec = sp.trace.flush()
    kinds = [(r.epoch, r.kernel, r.processor) for r in sp.trace]
    assert kinds == [(0, "host", "cpu"), (1, "sum", "device"), (2, "host", "cpu")]
    assert rec is sp.trace[-1] and np.isnan(rec.wall_seconds) and rec.modeled_seconds > 0
    assert rec.counts[:, CPU, READ, LOCAL].sum() == x.nbytes


def test_counting_off(sp, rng):
    sp.tunables.access_counters = False
    x = sp.asarray(rng.random(1_000) + 1)
    y = sp.empty(1_000)
    ops.copy(y, x)
    r = sp.device.last_launch
    assert np.isnan(r.modeled_seconds) and r.epoch == -1 and r.record is None
    x + 1
    assert counts(sp, x).sum() == 0 and counts(sp, y).sum() == 0 and len(sp.trace) == 0
    sp.free(x)
    with pytest.raises(E.FreedArrayError):
        x + 1                                                # still validated


def test_free_clears_counts(sp, rng):
    x = sp.asarray(rng.random(3_000) + 1)
    _, lo, hi = sp._span_vpns(x)
    ops.sum(x)
    assert sp.counters.bytes[lo:hi].sum() > 0
    sp.free(x)
    assert sp.counters.bytes[lo:hi].sum() == 0


def test_strided_and_2d_views(sp, rng):
    b = sp.asarray(rng.random(20_000) + 1)
    for view in (b[::3], b[7::-5], b[::-1], b[5::1000], b[::700], b[19_000:3:-513]):
        sp.counters.clear()
        with sp.host_access(view, "r"):
            pass
        assert np.array_equal(counts(sp, b)[:, CPU, READ, LOCAL], embed(sp, b, view))
        assert counts(sp, b).sum() == view.nbytes
    a = sp.asarray(rng.random((60, 90)) + 1)
    for view in (a[:, 3:40], a[::7, ::2], a[::-1], a.T[5:9], a[::-2, 80:]):
        sp.counters.clear()
        with sp.host_access(view, "r"):
            pass
        assert np.array_equal(counts(sp, a)[:, CPU, READ, LOCAL], embed(sp, a, view))


def test_one_element_footprint_matches_the_view_it_stands_for():
    """key_footprint's integer-key path (from the element's address) gives the footprint of
    the 0-d view the general path resolves, for any layout, index sign and dtype; keys it
    does not take (bools, short tuples, out of range) go the general way."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ccadgpu.counters import _element_offset, dense_footprint, key_footprint

    sp = ccadgpu.Space(page_size="4KiB", device_memory="1MiB")
    base = sp.zeros((37, 53), dtype=np.float64)
    rec = sp.zeros(900, dtype=[("a", "u1"), ("b", "f8"), ("c", "u4")])   # 13-byte items
    views = [base, base.T, base[::-3, 5:], base[3:, ::-2], rec, rec[7::5]]

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def check(data):
        a = views[data.draw(st.integers(0, len(views) - 1))]
        key = tuple(data.draw(st.integers(-s - 2, s + 1)) for s in a.shape)
        if data.draw(st.booleans()) and len(key) == 1:
            key = key[0]
        items = key if isinstance(key, tuple) else (key,)
        if any(not -s <= k < s for k, s in zip(items, a.shape)):
            assert _element_offset(a, key) is None
            with pytest.raises(IndexError):
                key_footprint(sp, a, key)
            return
        got = key_footprint(sp, a, key)
        want = dense_footprint(sp, a.view(np.ndarray)[items + (Ellipsis,)])
        assert _element_offset(a, key) is not None
        assert got.vlo == want.vlo and got.is_full() == want.is_full()
        assert got.nbytes.tolist() == want.nbytes.tolist()
        assert got.sectors.tolist() == want.sectors.tolist()

    check()
    # every element of rec that straddles a page boundary (rare for hypothesis to draw)
    start = rec.__array_interface__["data"][0] % 4096
    cross = [i for i in range(len(rec))
             if (start + 13 * i) // 4096 != (start + 13 * i + 12) // 4096]
    assert cross
    for i in cross:
        got = key_footprint(sp, rec, i)
        want = dense_footprint(sp, rec.view(np.ndarray)[i, ...])
        assert (got.vlo, got.nbytes.tolist()) == (want.vlo, want.nbytes.tolist())
        assert len(got.nbytes) == 2
    assert _element_offset(base, (True, 1)) is None and _element_offset(base, 3) is None
    sp.close()


def test_resolve_spans_the_bytes_byte_bounds_gives():
    """Space._resolve takes contiguous arrays' extent from the data pointer and nbytes: the
    same pages as NumPy's byte_bounds, for every kind of view."""
    sp = ccadgpu.Space(page_size="4KiB", device_memory="1MiB")
    a = sp.zeros((40, 300))
    views = [a, a[3], a[:, 7], a[5:9], a[::-1], a[:, ::3], a.T, a[2:3, 4:5], a[7, 9:9],
             a.reshape(-1)[1001:5003], a[:1].reshape(300, 1), a[0, 0:1], a[4:4]]
    base = sp.va.addr(sp.allocation_of(a).vstart)
    for v in views:
        _, first, n = sp._resolve(v)
        if v.size:
            lo, hi = np.lib.array_utils.byte_bounds(v)
        else:
            lo = hi = v.__array_interface__["data"][0]
        lo, hi = lo - base, hi - base
        want = lo // 4096, max(lo // 4096 + 1, -(-hi // 4096)) - lo // 4096
        assert (first, n) == want, v.shape
    sp.close()


def test_a_zero_size_element_on_a_page_boundary_has_a_one_page_footprint():
    sp = ccadgpu.Space(page_size="4KiB", device_memory="1MiB")
    a = sp.zeros(2048, [("e", []), ("a", "f8")])
    e = np.ndarray.__getitem__(a, "e")
    for i in range(0, 2048, 97):
        e[i] = ()                              # stored (nothing), counted on one page
    from ccadgpu.counters import dense_footprint, key_footprint
    start = a.__array_interface__["data"][0] % 4096
    i = next(j for j in range(2048) if (start + 8 * j) % 4096 == 0)
    got, want = key_footprint(sp, e, i), dense_footprint(sp, e.view(np.ndarray)[i, ...])
    assert (got.vlo, got.nbytes.tolist()) == (want.vlo, want.nbytes.tolist())
    sp.close()
