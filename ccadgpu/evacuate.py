"""Device evacuation (R1a): move every device page to the host, verified, losing nothing.

Mechanism only: :class:`~ccadgpu.device.Device` owns the state machine (online, draining,
offline) and calls :func:`evacuate` once the device is fenced.
"""
from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import pagetable as ptf
from .errors import FreedArrayError, OfflineRefusedError

if TYPE_CHECKING:
    from .space import Space

HOST = 0


@dataclass
class EvacuationReport:
    """What a device offline did, or why it was refused."""
    pages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    fence_seconds: float = 0.0
    refused: bool = False
    reason: str = ""
    #: virtual page numbers responsible for a refusal (pinned, or not verified)
    refused_pages: list[int] = field(default_factory=list)
    #: the arrays those pages belong to: (allocation id, name, shape, dtype, page count)
    refused_arrays: list[tuple] = field(default_factory=list)
    retries: int = 0

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __repr__(self) -> str:
        if self.refused:
            return (f"EvacuationReport(refused: {self.reason}; pages={self.refused_pages[:8]}"
                    f"{'...' if len(self.refused_pages) > 8 else ''}, arrays="
                    f"{self.refused_arrays})")
        return (f"EvacuationReport(pages={self.pages}, bytes={self.bytes}, "
                f"{self.seconds * 1e3:.2f} ms, {self.gbps:.2f} GB/s, retries={self.retries})")


def describe_pages(space: "Space", vpns: np.ndarray) -> list[tuple]:
    """(allocation id, name, shape, dtype, pages) for the allocations owning ``vpns``."""
    out = []
    ids, counts = np.unique(space.pt.alloc[vpns], return_counts=True)
    for aid, c in zip(ids.tolist(), counts.tolist()):
        a = space._allocs.get(aid)
        if a is not None:
            out.append((aid, a.name, a.shape, str(a.dtype), c))
    return out


def precheck(space: "Space", device_node: int) -> EvacuationReport | None:
    """Under the space lock: a refusal report if evacuation cannot succeed, else None."""
    hw = space.va.high_water
    on_dev = space.pt.node[:hw] == device_node
    pinned = np.flatnonzero(on_dev & ((space.pt.flags[:hw] & ptf.PINNED) != 0))
    if len(pinned):
        return EvacuationReport(refused=True, reason=f"{len(pinned)} pinned pages on the device "
                                "(unpin them, or move them to the host first)",
                                refused_pages=pinned.tolist(),
                                refused_arrays=describe_pages(space, pinned))
    # read-mostly duplicates are copies: they are dropped, not evacuated
    need = space.nodes[device_node].used_frames - int(np.count_nonzero(space.pt.dup[:hw] >= 0))
    room = space.nodes[HOST].free_frames
    if need > room:
        vp = np.flatnonzero(on_dev)
        return EvacuationReport(refused=True, reason=f"the host has {room} free frames, the "
                                f"device holds {need} pages (emergency allocation used the "
                                "evacuation reserve)", refused_pages=vp.tolist(),
                                refused_arrays=describe_pages(space, vp))
    return None


def evacuate(space: "Space", device_node: int, deadline: float | None,
             verify: bool) -> EvacuationReport:
    """Move every page off ``device_node``.  Pages that are busy (in flight, under a write)
    are retried until they are free or ``deadline`` (perf_counter time) passes.  Raises
    OfflineRefusedError when it cannot finish; pages already moved stay moved."""
    rep = EvacuationReport()
    t0 = time.perf_counter()
    cond = space._cond
    while True:
        with cond:
            space._reap_locked()
            hw = space.va.high_water
            vp = np.flatnonzero(space.pt.node[:hw] == device_node)
            owners = space.pt.alloc[vp]
        if len(vp) == 0:
            break
        busy = 0
        order = np.argsort(owners, kind="stable")
        vp, owners = vp[order], owners[order]
        bounds = np.flatnonzero(np.diff(owners)) + 1
        for grp in np.split(np.arange(len(vp)), bounds):
            alloc = space._allocs.get(int(owners[grp[0]]))
            if alloc is not None and alloc.freed and not alloc.released:
                with cond:               # freed, waiting for the manager: dead pages, dropped
                    space._release_retired(lambda a: a is alloc)
                continue
            if alloc is None or alloc.freed:
                continue
            try:
                r = space.migrator.move(alloc, vp[grp] - alloc.vstart, HOST,
                                        cause="evacuation", verify=verify, user=True)
            except FreedArrayError:
                continue                      # freed meanwhile: nothing left to save
            rep.pages += r.pages_moved
            rep.bytes += r.bytes_moved
            bad = vp[grp][r.status == -errno.EIO]
            if len(bad):
                rep.refused, rep.refused_pages = True, bad.tolist()
                rep.reason = (f"{len(bad)} pages did not verify after copying; their device "
                              "copies are kept")
                rep.refused_arrays = describe_pages(space, bad)
                raise OfflineRefusedError(f"device offline failed: {rep.reason}", rep)
            nomem = vp[grp][r.status == -errno.ENOMEM]
            if len(nomem):
                rep.refused, rep.refused_pages = True, nomem.tolist()
                rep.reason = "the host ran out of frames during evacuation"
                rep.refused_arrays = describe_pages(space, nomem)
                raise OfflineRefusedError(f"device offline failed: {rep.reason}", rep)
            busy += int(np.count_nonzero(r.status == -errno.EBUSY))
        if busy:
            rep.retries += 1
            with cond:
                if deadline is not None and time.perf_counter() >= deadline:
                    rep.refused, rep.reason = True, f"timed out with {busy} pages still busy"
                    raise OfflineRefusedError(f"device offline: {rep.reason}", rep)
                cond.wait(0.005)   # a writer or another migration still holds them
    rep.seconds = time.perf_counter() - t0
    return rep
