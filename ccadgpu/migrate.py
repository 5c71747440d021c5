"""The migration mechanism: move pages between nodes.  No policy lives here.

A move is, for each batch of pages, under the space's condition lock:

1. *isolate*: pick the movable pages (not pinned, not already in flight, not already there),
   take frames on the target node, charge the mapping budget, flag the pages ``MIGRATING``
   (mediated writers now wait), and wait for writers already inside the pages to leave;
2. *copy* frames node-to-node through the nodes' direct maps, one ``memcpy`` per run of
   contiguous source and target frames, with the lock released (readers proceed);
3. *remap* each run of pages onto its new frames with one ``mmap(MAP_FIXED)``;
4. *commit* the page table, free the old frames, clear ``MIGRATING``, wake writers.

A failure in 2 leaves every page where it was; a failure in 3 leaves each page either fully
moved or where it was.  The report says which, page by page, in ``move_pages(2)`` style.
"""
from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import pagetable as ptf
from .errors import MigrationError
from .runs import node_steps, runs
from .telemetry import CAUSES, record_migration
from .vaspace import MAP_BUDGET, count_breaks

if TYPE_CHECKING:
    from .space import Allocation, Space

HOST = 0


@dataclass
class MigrationReport:
    """Outcome of one :meth:`Space.move_pages` call.

    ``status[i]`` is the node now holding page ``i`` of the request, or a negative errno:
    ``-EBUSY`` pinned or already in flight, ``-ENOMEM`` no frame on the target,
    ``-EPERM`` migration disabled, ``-ENODEV`` target offline, ``-EIO`` copy failed or did
    not verify (the page stays where it was, data intact).
    ``modeled_seconds`` is what the move would take on the space's machine profile
    (:mod:`ccadgpu.clock`); ``seconds`` is the wall time here.
    """
    target: int
    status: np.ndarray
    pages_moved: int = 0
    bytes_moved: int = 0
    seconds: float = 0.0
    cause: str = "api"
    copy_seconds: float = 0.0
    remap_seconds: float = 0.0
    modeled_seconds: float = 0.0

    @property
    def requested(self) -> int:
        return int(len(self.status))

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(self.status < 0))

    @property
    def ok(self) -> bool:
        """True only if every requested page is now on the target."""
        return bool(np.all(self.status == self.target))

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def errors(self) -> dict[str, int]:
        """Failed pages per errno name, e.g. ``{'EBUSY': 3}``."""
        neg = self.status[self.status < 0]
        vals, counts = np.unique(-neg, return_counts=True)
        return {errno.errorcode.get(int(v), str(int(v))): int(c) for v, c in zip(vals, counts)}

    def __repr__(self) -> str:
        return (f"MigrationReport(target={self.target}, requested={self.requested}, "
                f"moved={self.pages_moved}, failed={self.failed} {self.errors() or ''}, "
                f"bytes={self.bytes_moved}, {self.seconds * 1e3:.2f} ms, {self.gbps:.2f} GB/s)")


@dataclass
class _Batch:
    vpns: np.ndarray          # virtual pages to move
    pos: np.ndarray           # their positions in the report
    src_nodes: np.ndarray
    src_frames: np.ndarray
    dst_frames: np.ndarray
    vma_charge: int = 0
    extra: dict = field(default_factory=dict)


def repoint(sp: "Space", mv: np.ndarray, src_nodes: np.ndarray, src_frames: np.ndarray,
            dst_frames: np.ndarray, target: int, drop_host: bool = False) -> None:
    """The page-table half of a move (space lock held): pages ``mv`` now live in
    ``dst_frames`` on ``target``; their old frames go back to their nodes (``drop_host``: host
    frames also hand their memory back, for contents nobody will read), and a device duplicate
    of a page now on the device is dropped.  The caller tells the migrate listeners
    (:func:`notify`) once the move is complete."""
    pt = sp.pt
    pt.node[mv] = target
    pt.gen += 1
    pt.frame[mv] = dst_frames
    for n in np.unique(src_nodes).tolist():
        sp.nodes[n].give(src_frames[src_nodes == n], release=drop_host and n == HOST)
    if target != HOST and len(mv):
        d = pt.dup[mv]              # the page itself is on the device now: no duplicate
        if (d >= 0).any():
            sp.nodes[target].give(d[d >= 0])
            pt.dup[mv] = -1


def notify(sp: "Space", mv: np.ndarray, src_nodes: np.ndarray, target: int) -> None:
    """Tell the migrate listeners that pages ``mv`` moved from ``src_nodes`` to ``target``
    (space lock held; after the move is complete, so that a listener sees a consistent space
    and one that raises leaves no page half-moved)."""
    if len(mv) and sp.migrate_listeners:
        me = threading.get_ident()
        sp._listening.add(me)            # see Space._free_locked: it cannot wait for a move
        try:
            for fn in sp.migrate_listeners:
                fn(mv, src_nodes, target)
        finally:
            sp._listening.discard(me)


class Migrator:
    """Executes page moves for one space.  ``fault_hook`` is a test hook called as
    ``hook(stage, batch_index)`` with stage ``'copy'`` or ``'remap'`` before each run; raising
    from it simulates a failure there."""

    def __init__(self, space: "Space"):
        self.space = space
        self.fault_hook: Callable[[str, int], None] | None = None
        #: test hook: flip a bit in the copy of this page (index in the batch) when verifying
        self.corrupt_page: int | None = None

    # -- step 1 -------------------------------------------------------------------------------
    def _isolate(self, alloc: "Allocation", vpns: np.ndarray, target: int,
                 status: np.ndarray, cause: str, enabled: bool) -> _Batch | None:
        sp = self.space
        pt = sp.pt
        node = pt.node[vpns]
        flags = pt.flags[vpns]
        status[:] = node
        todo = node != target
        if not todo.any():
            return None
        if not enabled and cause != "evacuation":
            status[todo] = -errno.EPERM
            return None
        if not sp._node_accepts(target, cause):
            status[todo] = -errno.ENODEV
            return None
        # Pinned, already in flight, or inside a mediated write right now: busy, as
        # migrate_pages() fails pages with extra references.  Writers wait for migrations,
        # never the reverse, so a migration cannot deadlock with a writer.
        busy = todo & (((flags & (ptf.PINNED | ptf.MIGRATING)) != 0) | sp._writer_mask(vpns))
        status[busy] = -errno.EBUSY
        todo &= ~busy
        pos = np.flatnonzero(todo)
        if len(pos) == 0:
            return None
        phase, period = sp._huge_phase(vpns[pos])
        frames = sp.nodes[target].take(len(pos), partial=True, phase=phase, period=period)
        if len(frames) < len(pos):
            status[pos[len(frames):]] = -errno.ENOMEM
            pos = pos[: len(frames)]
            if len(pos) == 0:
                return None
        mv = vpns[pos]
        # charge the mapping budget for the layout we are about to create
        lo, hi = alloc.vstart, alloc.vstart + alloc.npages
        new_node = pt.node[lo:hi].copy()
        new_frame = pt.frame[lo:hi].copy()
        new_node[mv - lo] = target
        new_frame[mv - lo] = frames
        # the cuda backend maps nothing itself: no mapping budget to charge
        charge = count_breaks(new_node, new_frame) - alloc.vmas if sp.gpu is None else 0
        try:
            MAP_BUDGET.charge(max(charge, 0), f"moving {len(mv)} pages")
        except Exception:
            sp.nodes[target].give(frames)
            raise
        batch = _Batch(mv, pos, pt.node[mv].astype(np.int64), pt.frame[mv].copy(), frames,
                       max(charge, 0))
        pt.flags[mv] |= ptf.MIGRATING
        return batch

    # -- steps 2 and 3 ---------------------------------------------------------------------------
    def _copy(self, b: _Batch, target: int, verify: bool) -> np.ndarray:
        """Copy every page's frame to its new frame.  Returns a per-page mask of pages whose
        copy is good (all of them unless ``verify`` found a mismatch)."""
        nodes = self.space.nodes
        dst = nodes[target]
        ok = np.ones(len(b.vpns), bool)
        if verify:
            from .copyengine import copy_verify
            chunk = max(1, (32 << 20) // self.space.page_size)
            for k, lo in enumerate(range(0, len(b.vpns), chunk)):
                if self.fault_hook is not None:
                    self.fault_hook("copy", k)
                sl = slice(lo, lo + chunk)
                for n in np.unique(b.src_nodes[sl]).tolist():
                    idx = np.flatnonzero(b.src_nodes[sl] == n) + lo
                    corrupt = -1
                    if self.corrupt_page is not None and lo <= self.corrupt_page < lo + chunk:
                        hits = np.flatnonzero(idx == self.corrupt_page)
                        corrupt = int(hits[0]) if len(hits) else -1
                    ok[idx] = copy_verify(dst.view, nodes[n].view, b.dst_frames[idx],
                                          b.src_frames[idx], self.space.page_size, corrupt)
            return ok
        order = np.lexsort((b.src_frames, b.src_nodes))
        sn, sf, df = b.src_nodes[order], b.src_frames[order], b.dst_frames[order]
        starts, lens = runs(sf, df, node_steps(sn))
        for k, (s, n) in enumerate(zip(starts.tolist(), lens.tolist())):
            if self.fault_hook is not None:
                self.fault_hook("copy", k)
            src = nodes[int(sn[s])]
            np.copyto(dst.frame_bytes(int(df[s]), n), src.frame_bytes(int(sf[s]), n))
        return ok

    def _remap(self, b: _Batch, target: int, ok: np.ndarray) -> np.ndarray:
        """Map the ``ok`` pages onto their new frames run by run.  Returns a mask of pages
        remapped; on error, puts the failed run back onto its old frames and re-raises."""
        sp = self.space
        fds = [n.fd for n in sp.nodes]
        sel = np.flatnonzero(ok)
        order = sel[np.argsort(b.vpns[sel], kind="stable")]
        v, f = b.vpns[order], b.dst_frames[order]
        starts, lens = runs(v, f)
        mask = np.zeros(len(b.vpns), bool)
        for k, (s, n) in enumerate(zip(starts.tolist(), lens.tolist())):
            try:
                if self.fault_hook is not None:
                    self.fault_hook("remap", k)
                sp.va.map_pages(v[s:s + n], f[s:s + n], fds, np.full(n, target))
            except BaseException as exc:
                rest = order[s:]
                try:  # MAP_FIXED may have unmapped the old pages before failing
                    sp.va.map_pages(b.vpns[rest], b.src_frames[rest], fds, b.src_nodes[rest])
                except OSError as exc2:
                    raise MigrationError(
                        f"remap failed and pages {b.vpns[rest][:8].tolist()}... could not be "
                        f"restored ({exc2}); their data is kept in the old frames") from exc
                raise _PartialRemap(mask) from exc
            mask[order[s:s + n]] = True
        return mask

    # -- the whole move ------------------------------------------------------------------------------
    def move(self, alloc: "Allocation", rel_pages: np.ndarray, target: int,
             cause: str = "api", verify: bool = False, user: bool = False,
             enabled: bool | None = None) -> MigrationReport:
        """Move pages ``rel_pages`` (relative to the allocation) to node ``target``.
        ``verify`` checks every copy before the old frame is released; a page whose copy does
        not match stays where it was, reported ``-EIO``.  ``user`` says the user asked for the
        move (``move_pages``, ``prefetch``, an offline's evacuation), not the manager: the trace
        records the pages moved, for a replay to move them too (the manager's own moves a
        replay makes itself).  ``enabled``: the migration switch as the caller decided by
        (the manager's, held through its step: :class:`~ccadgpu.manager.HeldKnobs`); by
        default the space's tunable as it is now."""
        if cause not in CAUSES:
            raise ValueError(f"unknown migration cause {cause!r}; known: {CAUSES}")
        sp = self.space
        t0 = time.perf_counter()
        vpns = alloc.vstart + rel_pages.astype(np.int64)
        status = np.zeros(len(vpns), np.int64)
        with sp._cond:
            sp._check_alloc(alloc)
            if enabled is None:
                enabled = bool(sp.tunables.migration_enabled)
            batch = self._isolate(alloc, vpns, target, status, cause, enabled)
            onto_device = batch is not None and target != 0
            if onto_device:
                sp.device._inflight_in += 1     # device offline fences on this
        report = MigrationReport(target=target, status=status, cause=cause)
        if batch is None:
            report.seconds = time.perf_counter() - t0
            self._account(report, None, None, target)
            return report
        moved = np.zeros(len(batch.vpns), bool)
        err: BaseException | None = None
        try:
            t1 = time.perf_counter()
            if sp.gpu is not None:
                # the driver copies and remaps in one: advise + prefetch per run of pages
                moved = sp.gpu.move(batch.vpns, target, verify, self.fault_hook)
                report.copy_seconds = time.perf_counter() - t1
            else:
                ok = self._copy(batch, target, verify)
                t2 = time.perf_counter()
                report.copy_seconds = t2 - t1
                if not ok.all():
                    sp.vmstat.add(pgmigrate_verify_fail=int(np.count_nonzero(~ok)))
                moved = self._remap(batch, target, ok)
                report.remap_seconds = time.perf_counter() - t2
        except _PartialRemap as exc:
            moved = exc.mask
            err = exc.__cause__
        except BaseException as exc:  # noqa: BLE001 - re-raised below after cleanup
            err = exc
        with sp._cond:
            self._commit(alloc, batch, moved, target, status, user)
            status[batch.pos[~moved]] = -errno.EIO
            if onto_device:
                sp.device._inflight_in -= 1
            sp._cond.notify_all()
        report.seconds = time.perf_counter() - t0
        report.pages_moved = int(moved.sum())
        report.bytes_moved = report.pages_moved * sp.page_size
        report.modeled_seconds = sp.clock.migration(batch.src_nodes[moved], target, sp.page_size,
                                                    report.seconds)
        self._account(report, batch, moved, target)
        if err is not None:
            if isinstance(err, MigrationError):
                raise err
            raise MigrationError(
                f"migration of {len(batch.vpns)} pages to node {target} failed after "
                f"{report.pages_moved} moved: {err!r}; the other pages stay where they were, "
                f"data intact") from err
        return report

    def _commit(self, alloc: "Allocation", b: _Batch, moved: np.ndarray, target: int,
                status: np.ndarray, user: bool) -> None:
        sp = self.space
        pt = sp.pt
        repoint(sp, b.vpns[moved], b.src_nodes[moved], b.src_frames[moved],
                b.dst_frames[moved], target)
        pt.flags[b.vpns] &= ~ptf.MIGRATING
        status[b.pos[moved]] = target
        sp.nodes[target].give(b.dst_frames[~moved])
        if sp.gpu is None:
            lo, hi = alloc.vstart, alloc.vstart + alloc.npages
            vmas = count_breaks(pt.node[lo:hi], pt.frame[lo:hi])
            MAP_BUDGET.charge(vmas - alloc.vmas - b.vma_charge, "migration commit")
            alloc.vmas = vmas
        if user:
            sp.trace._moved(b.vpns[moved], target)
        notify(sp, b.vpns[moved], b.src_nodes[moved], target)

    def _account(self, r: MigrationReport, b: _Batch | None, moved: np.ndarray | None,
                 target: int) -> None:
        sp = self.space
        tname = sp.nodes[target].name
        if b is None or r.pages_moved == 0:
            if r.failed:
                sp.vmstat.add(pgmigrate_fail=r.failed)
            return
        srcs, counts = np.unique(b.src_nodes[moved], return_counts=True)
        for s, c in zip(srcs.tolist(), counts.tolist()):
            record_migration(sp.vmstat, sp.nodes[s].name, tname, r.cause, c, 0,
                             c * sp.page_size, r.seconds * c / max(r.pages_moved, 1))
        if r.failed:
            sp.vmstat.add(pgmigrate_fail=r.failed)


class _PartialRemap(Exception):
    def __init__(self, mask: np.ndarray):
        super().__init__("partial remap")
        self.mask = mask

