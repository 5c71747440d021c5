"""hugetlb arenas: used when page_size is a multiple of 2 MiB and the OS's pool can reserve a
node's whole capacity, else a clean fallback to 4 KiB memfd pages that says why."""
import os

import numpy as np
import pytest

import ccadgpu
from ccadgpu import nodes as nodes_mod

MiB = 1 << 20


def _exercise(sp):
    """Allocation, migration both ways, device offline, free and reuse, with data checks."""
    ref = np.random.default_rng(3).standard_normal(3 * MiB // 8 + 5)
    a = sp.asarray(ref)
    assert sp.move_pages(a, "device").ok and np.array_equal(a, ref)
    b = sp.asarray(ref[::-1], placement="device")
    sp.device.offline()
    assert (sp.placement(a) == 0).all() and (sp.placement(b) == 0).all()
    assert np.array_equal(a, ref) and np.array_equal(b, ref[::-1])
    sp.device.online()
    sp.free(b)
    c = sp.asarray(ref * 2, placement="device")      # reuses freed frames
    assert np.array_equal(c, ref * 2) and np.array_equal(a, ref)


def test_fallback_says_why_and_works():
    pool = nodes_mod.hugetlb_pool()
    with ccadgpu.Space(device_memory="8MiB", host_memory="32MiB", page_size="2MiB") as sp:
        assert sp.va.base % (2 * MiB) == 0                 # hugetlb-mappable addresses
        for n in sp.nodes:
            info = n.info()
            assert info.backing == n.backing
            if n.huge:
                assert info.backing.startswith("hugetlb")
            else:
                assert pool["available"] < n.capacity // (2 * MiB)
                assert "hugetlb pool too small" in info.backing or "no hugetlb" in info.backing
        _exercise(sp)
    with ccadgpu.Space(device_memory="8MiB", host_memory="32MiB", page_size="2MiB",
                       hugetlb=False) as sp:
        assert all(not n.huge and "not asked for" in n.backing for n in sp.nodes)
    with ccadgpu.Space(device_memory="8MiB", host_memory="32MiB", page_size="64KiB") as sp:
        assert all(not n.huge and "not a multiple of 2 MiB" in n.backing for n in sp.nodes)


def test_no_hugetlb_memfd_falls_back(monkeypatch):
    real = os.memfd_create

    def memfd_create(name, flags=os.MFD_CLOEXEC):
        if flags & os.MFD_HUGETLB:
            raise OSError(22, "Invalid argument")
        return real(name, flags)
    monkeypatch.setattr(os, "memfd_create", memfd_create)
    with ccadgpu.Space(device_memory="8MiB", host_memory="32MiB", page_size="2MiB") as sp:
        assert all(not n.huge and "no hugetlb memfd" in n.backing for n in sp.nodes)
        _exercise(sp)


def test_hugetlb_arenas_when_the_pool_has_room():
    need = (32 + 8) // 2
    if nodes_mod.hugetlb_pool()["available"] < need:
        pytest.skip(f"hugetlb pool has fewer than {need} free 2 MiB pages (vm.nr_hugepages)")
    before = nodes_mod.hugetlb_pool()["available"]
    with ccadgpu.Space(device_memory="8MiB", host_memory="32MiB", page_size="2MiB") as sp:
        assert all(n.huge and n.backing.startswith("hugetlb") for n in sp.nodes)
        assert nodes_mod.hugetlb_pool()["available"] == before - need   # reserved up front
        _exercise(sp)
        from ccadgpu import ops
        x = sp.asarray(np.arange(1.0, 1 + MiB))
        idx = sp.asarray(np.random.default_rng(0).integers(0, x.size, 1000))
        out = sp.empty(1000)
        ops.gather(out, x, idx)
        assert np.array_equal(out, np.asarray(x)[np.asarray(idx)])
    assert nodes_mod.hugetlb_pool()["available"] == before               # all given back


def _pmd_mapped_kib(addr):
    """ShmemPmdMapped (kB) of the mapping that holds ``addr``."""
    with open("/proc/self/smaps") as f:
        blocks = f.read().split("\n")
    inside, total = False, 0
    for line in blocks:
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("ShmemPmdMapped:"):
            total += int(line.split()[1])
    return total


def test_fresh_chunks_become_transparent_huge_pages():
    """With 64 KiB pages, an allocation's whole 2 MiB chunks of fresh host frames are
    collapsed into huge pages (MADV_COLLAPSE) and mapped by PMDs; data stays right through
    migration, offline and reuse."""
    ref = np.random.default_rng(4).standard_normal(8 * MiB // 8)
    with ccadgpu.Space(device_memory="16MiB", host_memory="64MiB") as sp:
        host = sp.nodes[0]
        assert sp.va.base % (2 * MiB) == 0 and host.base % (2 * MiB) == 0
        small = sp.asarray(ref[:10000])      # two pages: what follows is not 2 MiB-aligned
        a = sp.asarray(ref)
        assert np.array_equal(a, ref)
        if host.collapsed_chunks == 0:
            pytest.skip(f"the kernel collapsed no chunk here ({host.backing})")
        assert "collapsed into transparent huge pages" in host.info().backing
        addr = a.__array_interface__["data"][0]
        # the allocation's pages sit at their frames' offsets within 2 MiB: 3 whole chunks
        # (of the 4 and a bit it spans) are mapped by PMDs, on the host and, after a move, on
        # the device (whose arena was collapsed when it was created), and back
        for where in ("host", "device", "host"):
            assert sp.move_pages(a, where).ok and np.array_equal(a, ref)
            assert _pmd_mapped_kib(addr) >= 3 * 2048, where
        assert np.array_equal(small, ref[:10000])
        _exercise(sp)
        assert np.array_equal(a, ref)
    # pages larger than 2 MiB: each page is a chunk of two huge pages
    with ccadgpu.Space(device_memory="16MiB", host_memory="64MiB", page_size="4MiB",
                       hugetlb=False) as sp:
        a = sp.asarray(ref)
        assert sp.nodes[0].collapsed_chunks >= 2 and sp.nodes[1].collapsed_chunks == 4
        assert _pmd_mapped_kib(a.__array_interface__["data"][0]) >= 2 * 4096
        _exercise(sp)
        assert np.array_equal(a, ref)
    with ccadgpu.Space(device_memory="16MiB", host_memory="64MiB", thp_collapse=False) as sp:
        a = sp.asarray(ref)
        assert sp.nodes[0].collapsed_chunks == 0 and "collapsed" not in sp.nodes[0].backing
        assert _pmd_mapped_kib(a.__array_interface__["data"][0]) == 0
        assert np.array_equal(a, ref)


def test_a_failed_collapse_gives_base_pages_and_backs_off(monkeypatch):
    """A kernel that will not collapse (no free huge page) leaves base pages, right data, and
    is not asked again for the next COLLAPSE_BACKOFF chunks."""
    from ccadgpu import _sys
    real, calls = _sys.madvise, []

    def madvise(addr, length, advice):
        if advice == _sys.MADV_COLLAPSE and length:
            calls.append(length)
            raise OSError(11, "Resource temporarily unavailable")
        return real(addr, length, advice)
    monkeypatch.setattr(_sys, "madvise", madvise)
    ref = np.random.default_rng(5).standard_normal(8 * MiB // 8)
    with ccadgpu.Space(device_memory="16MiB", host_memory="64MiB") as sp:
        host = sp.nodes[0]
        if not host._chunk:
            pytest.skip(host.backing)
        n_dev = len(calls)                     # the device arena's prefault tried once
        a = sp.asarray(ref)
        b = sp.asarray(ref[::-1])
        assert np.array_equal(a, ref) and np.array_equal(b, ref[::-1])
        assert host.collapsed_chunks == 0 and len(calls) == n_dev + 1
        assert 0 < host._backoff <= nodes_mod.COLLAPSE_BACKOFF
        _exercise(sp)
