"""Hypothesis state machine: allocate / write / read / move / pin / unpin / free against a
plain-NumPy reference model; contents, placement and frame accounting checked every step."""
import errno

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import ccadgpu
from ccadgpu import errors as E

PS = 16 << 10


class SpaceMachine(RuleBasedStateMachine):
    arrays = Bundle("arrays")
    PS = PS
    DEVICE_PAGES, HOST_PAGES = 12, 48

    def __init__(self):
        super().__init__()
        self.sp = ccadgpu.Space(device_memory=self.DEVICE_PAGES * self.PS,
                                host_memory=self.HOST_PAGES * self.PS, page_size=self.PS)
        self.model = {}      # id -> (array, reference, pinned pages mask)
        self.next = 0

    def teardown(self):
        self.sp.close()

    @rule(target=arrays, npages=st.integers(1, 6),
          placement=st.sampled_from(["host", "device", "preferred:device", "interleave"]),
          seed=st.integers(0, 1000))
    def allocate(self, npages, placement, seed):
        ref = np.random.default_rng(seed).standard_normal(npages * (self.PS // 8) - seed % 7)
        try:
            a = self.sp.asarray(ref, placement=placement)
        except E.CapacityError:
            return ccadgpu_none()
        except E.DeviceOfflineError:
            assert placement == "device" and self.sp.device.state == "offline"
            return ccadgpu_none()
        if self.sp.device.state == "offline":
            assert (self.sp.placement(a) == 0).all()
        k = self.next
        self.next += 1
        self.model[k] = (a, ref.copy(), np.zeros(len(self.sp.placement(a)), bool))
        return k

    @rule(k=arrays, seed=st.integers(0, 1000))
    def write(self, k, seed):
        if k not in self.model:
            return
        a, ref, _ = self.model[k]
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, a.size, 5)
        vals = rng.standard_normal(5)
        a[idx] = vals
        ref[idx] = vals

    @rule(k=arrays)
    def read(self, k):
        if k in self.model:
            a, ref, _ = self.model[k]
            assert np.array_equal(a, ref)

    @rule(k=arrays, node=st.integers(0, 1), data=st.data())
    def move(self, k, node, data):
        if k not in self.model:
            return
        a, ref, pinned = self.model[k]
        n = len(pinned)
        pages = data.draw(st.one_of(st.none(), st.lists(st.integers(0, n - 1), unique=True)))
        before = self.sp.placement(a)
        r = self.sp.move_pages(a, node, pages=pages)
        sel = np.arange(n) if pages is None else np.asarray(pages, int)
        after = self.sp.placement(a)
        for i, s in zip(sel, r.status):
            if s >= 0:
                assert s == node == after[i]
            else:
                assert after[i] == before[i]           # a failed page did not move
                if node == 1 and self.sp.device.state == "offline":
                    assert s == -errno.ENODEV
                elif pinned[i]:
                    assert s == -errno.EBUSY
                else:
                    assert s == -errno.ENOMEM
        assert (after[pinned] == before[pinned]).all()

    @rule(k=arrays, lo=st.integers(0, 5), ln=st.integers(1, 3), on=st.booleans())
    def pin(self, k, lo, ln, on):
        if k not in self.model:
            return
        a, ref, pinned = self.model[k]
        n = len(pinned)
        lo = min(lo, n - 1)
        hi = min(n, lo + ln)
        view = a[lo * (self.PS // 8): min(hi * (self.PS // 8), a.size)]
        if view.size == 0:
            return
        if on and self.sp.device.state != "online" and (self.sp.placement(view) == 1).any():
            raise AssertionError("device pages while the device is offline")
        (self.sp.pin if on else self.sp.unpin)(view)
        vlo, vhi = lo, lo + len(self.sp.placement(view))
        pinned[vlo:vhi] = on

    @rule(reset=st.booleans())
    def offline(self, reset):
        pinned_on_dev = any(((self.sp.placement(a) == 1) & p).any()
                            for a, _, p in self.model.values())
        try:
            rep = self.sp.device.reset() if reset else self.sp.device.offline()
        except E.OfflineRefusedError as exc:
            assert pinned_on_dev and exc.report.refused_pages
            assert self.sp.device.state == "online"
            return
        assert not pinned_on_dev
        assert self.sp.device.state == ("online" if reset else "offline")
        assert rep.pages * self.PS == rep.bytes
        for a, ref, _ in self.model.values():
            assert (self.sp.placement(a) == 0).all() and np.array_equal(a, ref)

    @rule()
    def online(self):
        self.sp.device.online()
        assert self.sp.device.state == "online"

    @rule(k=consumes(arrays))
    def free(self, k):
        if k in self.model:
            a, _, _ = self.model.pop(k)
            self.sp.free(a)
            try:
                self.sp.placement(a)
                raise AssertionError("freed array still resolves")
            except E.FreedArrayError:
                pass

    @invariant()
    def frames_match_page_table(self):
        used = {0: 0, 1: 0}
        for a, ref, pinned in self.model.values():
            p = self.sp.placement(a)
            for n in (0, 1):
                used[n] += int((p == n).sum())
            assert (self.sp.pinned(a) == pinned).all()
        assert self.sp.nodes[0].used_frames == used[0]
        assert self.sp.nodes[1].used_frames == used[1]
        # the evacuation reserve: the host can always take the device's pages back
        assert self.sp.nodes[0].free_frames >= self.sp.nodes[1].used_frames


    @invariant()
    def each_frame_backs_one_page(self):
        for n, node in enumerate(self.sp.nodes):
            fr = [self.sp.pt.frame[al.vstart: al.vstart + al.npages][
                self.sp.pt.node[al.vstart: al.vstart + al.npages] == n]
                for al in (self.sp._resolve(a)[0] for a, _, _ in self.model.values())]
            fr = np.concatenate(fr) if fr else np.zeros(0, np.int64)
            assert len(np.unique(fr)) == len(fr), "a frame backs two pages"
            assert not node._free[fr].any(), "a mapped frame is marked free"
            assert node._nfree == int(node._free.sum())
            assert node._nwarm == int((node._free & node._populated).sum())


class HugeChunkMachine(SpaceMachine):
    """64 KiB pages and allocations of 20-90 pages: the paths where runs of 32 pages (2 MiB)
    are collapsed into huge pages and placed at their frames' offset within 2 MiB."""
    PS = 64 << 10
    DEVICE_PAGES, HOST_PAGES = 96, 320

    @rule(target=SpaceMachine.arrays, npages=st.integers(20, 90),
          placement=st.sampled_from(["host", "device", "interleave"]),
          seed=st.integers(0, 1000))
    def allocate_big(self, npages, placement, seed):
        return self.allocate(npages, placement, seed)


def ccadgpu_none():
    from hypothesis.stateful import multiple
    return multiple()


SpaceMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestSpaceMachine = SpaceMachine.TestCase


HugeChunkMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25,
                                              deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestHugeChunkMachine = HugeChunkMachine.TestCase
