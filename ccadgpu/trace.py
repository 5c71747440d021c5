"""The access trace: one record per epoch, self-contained enough to replay without kernels.

An **epoch** is one device kernel launch, or the run of CPU accesses between two launches (a
``"host"`` epoch, closed when the next launch starts, or by :meth:`Trace.flush`).  Each
:class:`EpochRecord` holds the epoch's sparse per-page counts (the touched pages' vpns, bytes
``[cpu/device x read/write x local/remote]`` and 32-byte sectors ``[cpu/device x read/write]``),
the placement the local/remote split was made with, the pages' allocation ids, and the wall and
modeled seconds.  The trace header carries what a replay needs besides: page size, nodes and
their capacities, the machine profile (name and numbers), the counter settings, and every
allocation the records mention (id, first vpn, pages, bytes, shape, dtype, name).  A replay
under another placement re-splits local/remote from ``counts.sum(axis=-1)`` and the pages' new
nodes.

``space.trace`` records while the tunable ``trace`` is on (default) and access counting is on;
it keeps the last ``trace_max_epochs`` records (older ones are dropped and counted in
``dropped``).  :meth:`Trace.save` writes one ``.npz`` file (``np.savez_compressed``, no pickle):
a JSON header plus the records' arrays concatenated; :meth:`Trace.load` reads it back and checks
the format name and version.

The header also lists the space's allocations and frees, in order, as ``events``: ``[position,
kind, id]`` with kind 1 an allocation (its entry in ``allocations`` then has ``nodes``, the node
of each of its pages when it was made, as ``[node, count]`` runs) and 0 its pages going back
(a freed allocation whose pages an epoch touched goes back once the manager has stepped that
epoch); ``position`` is the number of the first epoch the manager stepped after the event.
One made once that epoch's faults ran ahead and before the manager stepped the rest of it
(from inside its launch or CPU operation, or after a CPU operation that faulted, its host
epoch still open) is marked in its allocation's entry (``"after_faults": true`` for the
allocation, ``"died_after_faults": true`` for its pages going back), and a replay makes it
after those faults, as it does the user's actions below.
With them a replay sees the pages exist, and where, when the live manager did
(:func:`ccadgpu.replay.replay`); traces without them (or missing epochs) are replayed from the
pages' first appearance.

The user's own placement actions are events too (kind 2, ``id`` an index into the header's
``user_events``), so that a replay sees them when the live manager did: a hint (``{"op":
"hint", "lo", "hi", "preferred", "accessed_by", "read_mostly"}``, each of the three ``null``
when left as it was), a pin (``{"op": "pin", "lo", "hi", "on"}``), pages the user moved
(``move_pages``, ``prefetch``) or an offline evacuated (``{"op": "move", "runs": [[lo, hi],
...], "node"}``: the pages that moved), read-mostly pages the user's prefetch duplicated on
the device (``{"op": "duplicate", "runs"}``), the device going offline or online (``{"op":
"device", "online"}``), and knobs the manager decides by set mid-run (``{"op": "tunables",
"values": {name: value}}``, ``manager.DECISION_KNOBS``; the header's ``tunables_at_start``
holds them all as the trace began, ``tunables`` as it was saved).  A write over read-mostly
pages is one too (``{"op": "collapse", "lo", "hi"}``): it drops their device duplicates,
which a replay under another policy may have made where the run made none.  One made while
a launch or CPU operation runs whose faults ran ahead (from its kernel, another thread), or
after it but before the manager stepped it, is marked ``"after_faults": true``: a replay
applies it between that epoch's faults and its accesses.
One made from a migrate listener lands between two epochs next to the step whose moves
called it (before that epoch when its faults ran ahead, after it otherwise): a replay
cannot split a step's moves, so the rest of that step may then differ, except for the
knobs, which the manager holds still through a step anyway.  One after a CPU operation made
inside the same kernel is placed against that operation's epoch.

A launch that fails once the manager's faults for it ran (its kernel raised, the device went
offline) leaves an *aborted* record (``EpochRecord.aborted``; the header's ``aborted`` lists
their positions): its counts are the accesses it declared, which those faults served; it
counts no bytes, and a replay steps only its faults.
"""
from __future__ import annotations

import collections
import json
import math
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import CcadError, TraceFormatError
from .hostepoch import HostAccesses
from .runs import node_steps, runs
from .tunables import KNOBS, Knob, Tunables, register

if TYPE_CHECKING:
    from .counters import Tally
    from .space import Space

FORMAT = "ccadgpu-trace"
VERSION = 1

register(Knob("trace", bool, True,
              "Record an epoch per kernel launch (and per run of host accesses) in space.trace."))
register(Knob("trace_max_epochs", int, 10000,
              "Epoch records space.trace keeps; older ones are dropped (and counted).",
              lambda v: v >= 1, ">= 1"))


def _from_tally(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._tally, name), doc=doc)


class EpochRecord:
    """One epoch's sparse per-page counts (see the module docs).

    ``counts[i, proc, rw, loc]`` are bytes for page ``vpns[i]`` (proc: 0 cpu, 1 device; rw: 0
    read, 1 write; loc: 0 local, 1 remote, relative to ``node[i]``); ``sectors[i, proc, rw]`` are
    32-byte sectors; ``alloc[i]`` the page's allocation id.  ``wall_seconds`` is NaN for host
    epochs (CPU work between launches is not timed).  A record may hold the launch's
    :class:`~ccadgpu.counters.Tally` (pass it as ``counts``; ``vpns`` and ``node`` are then
    the tally's, and ``alloc`` may be its compact :meth:`~ccadgpu.counters.Tally.alloc_ids`):
    the arrays are then built when read, and a record of a dense launch keeps no per-page
    array at all.  ``aborted``: a launch that failed once its faults ran; its counts are the
    accesses it declared, which its faults served, and it made none the counters saw."""

    def __init__(self, epoch: int, kernel: str, processor: str, vpns: np.ndarray | None,
                 counts: "np.ndarray | Tally", sectors: np.ndarray | None,
                 node: np.ndarray | None, alloc: "np.ndarray | list[int]", wall_seconds: float,
                 modeled_seconds: float, t_start: float = 0.0, notifications: int = 0,
                 aborted: bool = False):
        from .counters import Tally
        self.epoch = epoch
        self.kernel = kernel
        self.processor = processor
        self._tally = counts if isinstance(counts, Tally) else Tally(vpns, node, counts, sectors)
        self._alloc = alloc
        self.wall_seconds = wall_seconds
        self.modeled_seconds = modeled_seconds
        self.t_start = t_start
        self.notifications = notifications
        self.aborted = bool(aborted)

    vpns = _from_tally("vpns", "``int64[n]`` the touched pages (sorted).")
    node = _from_tally("node", "``int8[n]`` where each page was (the local/remote split).")
    counts = _from_tally("counts", "``int64[n, proc, rw, loc]`` bytes.")
    sectors = _from_tally("sectors", "``int64[n, proc, rw]`` 32-byte sectors.")

    @property
    def alloc(self) -> np.ndarray:
        """``int32[n]`` each page's allocation id."""
        return self._tally.expand_alloc(self._alloc)

    @property
    def nbytes(self) -> int:
        """Total bytes counted in this epoch (none when it was aborted)."""
        return 0 if self.aborted else self._tally.nbytes

    def bytes_by(self) -> dict[str, int]:
        """Totals by ``"<proc>_<read|write>_<local|remote>"``."""
        from .counters import LOC_NAMES, PROC_NAMES, RW_NAMES
        c = self._tally.get_totals()
        return {f"{PROC_NAMES[p]}_{RW_NAMES[r]}_{LOC_NAMES[lc]}": int(c[p, r, lc])
                for p in range(2) for r in range(2) for lc in range(2)}

    def __repr__(self) -> str:
        wall = "-" if math.isnan(self.wall_seconds) else f"{self.wall_seconds:.3g}s"
        return (f"EpochRecord(epoch={self.epoch}, kernel={self.kernel!r}, pages={self._tally.n}, "
                f"bytes={self.nbytes}, wall={wall}, modeled={self.modeled_seconds:.3g}s"
                f"{', aborted' if self.aborted else ''})")


def _alloc_meta(a: Any) -> dict[str, Any]:
    return {"id": int(a.id), "vstart": int(a.vstart), "npages": int(a.npages),
            "nbytes": int(a.nbytes), "shape": [int(s) for s in a.shape], "dtype": a.dtype.str,
            "name": a.name, "placement": a.placement}


def _check_header(h: dict[str, Any], path: Any) -> None:
    """The header fields a replay relies on, with their types and ranges."""
    def bad(what: str) -> TraceFormatError:
        return TraceFormatError(f"{path}: trace header: {what}")
    ps = h.get("page_size")
    if not isinstance(ps, int) or isinstance(ps, bool) or ps <= 0:
        raise bad(f"page_size must be a positive integer, got {ps!r}")
    nodes = h.get("nodes")
    if not isinstance(nodes, list) or len(nodes) < 2 or not all(
            isinstance(n, dict) and isinstance(n.get("frames"), int) and n["frames"] >= 0
            for n in nodes):
        raise bad("nodes must list at least host and device, each with integer frames >= 0")
    for key in ("kernels", "processors_by_epoch"):
        v = h.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad(f"{key} must be a list of strings")
    if not isinstance(h.get("profile"), dict) or not isinstance(h["profile"].get("name"), str):
        raise bad("profile must be a table with a name")
    allocs = h.get("allocations", [])
    if not isinstance(allocs, list) or not all(
            isinstance(a, dict) and all(isinstance(a.get(k), int) and a[k] >= 0
                                        for k in ("id", "vstart", "npages")) for a in allocs):
        raise bad("allocations must be tables with integer id, vstart, npages >= 0")
    for a in allocs:
        nr = a.get("nodes")              # [node, count] runs
        if nr is not None and not (
                isinstance(nr, list) and all(
                    isinstance(r, list) and len(r) == 2 and
                    all(isinstance(x, int) and x >= 0 for x in r) for r in nr)
                and sum(r[1] for r in nr) == a["npages"]):
            raise bad(f"allocation {a['id']}: nodes must be [node, count] runs covering its "
                      "pages")
        for flag in ("after_faults", "died_after_faults"):
            if a.get(flag) not in (None, True, False):
                raise bad(f"allocation {a['id']}: {flag} must be true or false")
    ids = {a["id"] for a in allocs}
    user = h.get("user_events", [])
    if not isinstance(user, list) or not all(_user_event_ok(u, len(nodes)) for u in user):
        raise bad("user_events must be hint, pin, move, device or tunables tables")
    events = h.get("events", [])
    if not isinstance(events, list) or not all(
            isinstance(e, list) and len(e) == 3 and all(type(x) is int for x in e)
            and (e[1] in (0, 1) and e[2] in ids or e[1] == 2 and 0 <= e[2] < len(user))
            for e in events):
        raise bad("events must be [position, 0 or 1, allocation id] of listed allocations or "
                  "[position, 2, index] of user_events")


def _knob_ok(name: Any, value: Any) -> bool:
    """A knob's recorded value: valid for it when this version knows the knob."""
    if not isinstance(name, str) or not isinstance(value, (bool, int, float, str)):
        return False
    try:
        if name in KNOBS:
            Tunables._validate(name, value)
    except CcadError:
        return False
    return True


def _user_event_ok(u: Any, nnodes: int) -> bool:
    def whole(x: Any, hi: int | None = None) -> bool:
        return type(x) is int and x >= 0 and (hi is None or x < hi)

    def span(lo: Any, hi: Any) -> bool:
        return whole(lo) and whole(hi) and lo < hi
    if not isinstance(u, dict) or u.get("after_faults") not in (None, True, False):
        return False
    op = u.get("op")
    if op == "hint":
        return span(u.get("lo"), u.get("hi")) and (
            u.get("preferred") is None or type(u["preferred"]) is int and
            -1 <= u["preferred"] < nnodes) and (
            u.get("accessed_by") is None or whole(u["accessed_by"], 1 << nnodes)) and \
            u.get("read_mostly") in (None, True, False)
    if op == "pin":
        return span(u.get("lo"), u.get("hi")) and u.get("on") in (True, False)
    if op == "collapse":
        return span(u.get("lo"), u.get("hi"))
    if op in ("move", "duplicate"):
        r = u.get("runs")
        return (op == "duplicate" or whole(u.get("node"), nnodes)) and isinstance(r, list) \
            and all(isinstance(x, list) and len(x) == 2 and span(*x) for x in r)
    if op == "tunables":
        v = u.get("values")
        return isinstance(v, dict) and all(_knob_ok(k, x) for k, x in v.items())
    return op == "device" and u.get("online") in (True, False)


class Trace:
    """A sequence of :class:`EpochRecord` with a header (see the module docs).

    ``space.trace`` is attached to its space and records; :meth:`load` returns a detached one.
    Iterate it, index it, ``len()`` it."""

    def __init__(self, header: dict[str, Any], records: list[EpochRecord] | None = None,
                 maxlen: int | None = None):
        self.header = header
        self.records: collections.deque[EpochRecord] = collections.deque(records or [],
                                                                         maxlen=maxlen)
        self.dropped = int(header.get("dropped", 0))
        self.allocations: dict[int, dict[str, Any]] = {
            int(a["id"]): a for a in header.get("allocations", [])}
        self._space: "Space | None" = None
        self._t0 = time.perf_counter()
        # the open host epoch: operations recorded, and their tallies where the trace began
        # recording after the epoch opened (else the record is the space's whole epoch)
        self._host_n = 0
        self._host: HostAccesses | None = None
        self._host_modeled = 0.0
        self._host_t = math.nan
        #: ``[position, kind, id]``: allocations (kind 1), their pages going back (kind 0) and
        #: the user's placement actions (kind 2, ``id`` indexes :attr:`user_events`), in
        #: order (see the module docs)
        self.events: list[list[int]] = [[int(x) for x in e] for e in header.get("events", [])]
        self.user_events: list[dict[str, Any]] = [dict(u) for u in
                                                  header.get("user_events", [])]

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def for_space(cls, space: "Space") -> "Trace":
        from . import __version__
        header = {
            "format": FORMAT, "version": VERSION, "ccadgpu": __version__,
            "created": time.time(), "page_size": space.page_size,
            "nodes": [{"id": n.id, "name": n.name, "kind": n.kind, "capacity": n.capacity,
                       "frames": n.frames} for n in space.nodes],
            "distance": space.distance.tolist(),
            "processors": ["cpu", "device"], "local_node": [0, space.device.id],
            "profile": space.profile.as_dict(),
            "rw": ["read", "write"], "loc": ["local", "remote"], "sector_bytes": 32,
            "tunables": space.tunables.as_dict(),
        }
        # (the save writes the knobs as they are then; their changes are user events)
        header["tunables_at_start"] = dict(header["tunables"])
        t = cls(header, maxlen=space.tunables.trace_max_epochs)
        t._space = space
        return t

    @classmethod
    def synthetic(cls, epochs: "list[tuple[str, dict[int, int]]]", npages: int,
                  device_frames: int, profile: str = "gh200", page_size: int = 64 << 10,
                  host_frames: int | None = None,
                  allocations: "list[int] | tuple[int, ...] | None" = None) -> "Trace":
        """A hand-made trace, to try a policy on an access pattern without running kernels
        (:func:`ccadgpu.replay.replay` it).  ``epochs``: ``(processor, {vpn: sectors})`` in
        order, processor ``"cpu"`` or ``"device"``, sectors read (32 bytes each; a full pass
        over a page is ``page_size // 32``); ``npages`` pages in ``allocations`` (page counts
        of consecutive allocations, default one of all pages), all on the host at the start;
        the host holds ``host_frames`` (default ``4 * npages``, at least ``npages``), the
        device ``device_frames``; ``profile``: a profile name or path.

        Raises :class:`~ccadgpu.errors.InvalidArgumentError` naming the bad argument."""
        import operator

        from .clock import load_profile
        from .errors import InvalidArgumentError

        def bad(what: str) -> InvalidArgumentError:
            return InvalidArgumentError(f"synthetic trace: {what}")

        def whole(x: Any, what: str, low: int) -> int:
            try:
                v = operator.index(x)
            except TypeError:
                raise bad(f"{what} must be an integer, got {x!r}") from None
            if v < low:
                raise bad(f"{what} must be >= {low}, got {v}")
            return v
        npages = whole(npages, "npages", 1)
        device_frames = whole(device_frames, "device_frames", 0)
        page_size = whole(page_size, "page_size", 1)
        if page_size % 4096:
            raise bad(f"page_size must be a multiple of 4096, got {page_size}")
        host_frames = npages * 4 if host_frames is None else \
            whole(host_frames, "host_frames", npages)       # every page starts on the host
        sizes = [npages] if allocations is None else \
            [whole(n, "an allocation's page count", 1) for n in allocations]
        if not sizes or sum(sizes) != npages:
            raise bad(f"the allocations ({list(sizes)}) must be page counts summing to npages "
                      f"({npages})")
        for i, item in enumerate(epochs):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and
                    isinstance(item[1], dict)):
                raise bad(f"epoch {i} must be a (processor, {{page: sectors}}) pair, "
                          f"got {item!r}")
            proc, touched = item
            if proc not in ("cpu", "device"):
                raise bad(f"epoch {i}'s processor must be 'cpu' or 'device', got {proc!r}")
            for v, n in touched.items():
                whole(v, f"epoch {i}'s page {v!r}", 0)
                if v >= npages:
                    raise bad(f"epoch {i} touches page {v}: pages are 0..{npages - 1}")
                whole(n, f"epoch {i}'s sectors of page {v}", 1)
        prof = load_profile(profile)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        alloc_of = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        header = {"format": FORMAT, "version": VERSION, "page_size": int(page_size),
                  "nodes": [{"id": 0, "name": "host", "frames": host_frames},
                            {"id": 1, "name": "device", "frames": device_frames}],
                  "profile": prof.as_dict(),
                  "allocations": [{"id": k, "vstart": int(v0), "npages": int(n),
                                   "nbytes": int(n) * page_size,
                                   "shape": [int(n) * page_size // 8],
                                   "dtype": "<f8", "name": f"x{k}", "placement": "host"}
                                  for k, (v0, n) in enumerate(zip(starts, sizes))]}
        recs = []
        for i, (proc, touched) in enumerate(epochs):
            v = np.array(sorted(touched), np.int64)
            p = 0 if proc == "cpu" else 1
            sec = np.zeros((len(v), 2, 2), np.int64)
            sec[:, p, 0] = [touched[k] for k in v]
            cnt = np.zeros((len(v), 2, 2, 2), np.int64)
            cnt[:, p, 0, 0] = sec[:, p, 0] * 32
            recs.append(EpochRecord(i, "host" if p == 0 else "k", proc, v, cnt, sec,
                                    np.zeros(len(v), np.int8), alloc_of[v], 0.0, 0.0))
        return cls(header, recs)

    # -- recording (space lock held) -----------------------------------------------------------------
    def _recording(self) -> bool:
        sp = self._space
        return sp is not None and bool(sp.tunables.trace) and bool(sp.tunables.access_counters)

    def _position(self) -> int:
        """Number of the next epoch the manager will step (space lock held)."""
        sp = self._space
        assert sp is not None
        return int(sp._mq[0].epoch) if sp._mq else int(sp.counters.epoch)

    def _born(self, alloc: Any, nodes: np.ndarray) -> None:
        """A new allocation, its pages on ``nodes`` (space lock held)."""
        if not self._recording():
            return
        meta = _alloc_meta(alloc)
        nodes = np.asarray(nodes, np.int64)
        starts, lens = runs(node_steps(nodes))
        meta["nodes"] = [[int(n), int(k)] for n, k in zip(nodes[starts].tolist(), lens.tolist())]
        pos = self._position()
        if self._late(pos):
            meta["after_faults"] = True
        self.allocations[int(alloc.id)] = meta
        self.events.append([pos, 1, int(alloc.id)])

    def _late(self, pos: int, knobs: bool = False) -> bool:
        """Whether an event recorded now at position ``pos`` falls between that epoch's faults,
        which ran ahead, and the manager's step of the rest of it: made while its launch or CPU
        operation ran, or after it but before the manager stepped it (the open host epoch of a
        CPU operation that faulted, a queued epoch).  Not from a migrate listener of those
        faults: a replay makes it before them, which the policy's later moves of the step see,
        as they did live; but ``knobs`` set there rule from the manager's next call only
        (:class:`~ccadgpu.manager.HeldKnobs`), so they come after them.  Space lock held."""
        sp = self._space
        assert sp is not None
        mine = sp._mowner == threading.get_ident()
        if sp._window == pos and (knobs or not mine):
            return True
        if mine:
            return False
        if sp._mq:
            return sp._mq[0].epoch == pos and sp._mq[0].ahead is not None
        return sp._host_ahead is not None and sp.counters._host_open

    def _user(self, event: dict[str, Any], once: bool = False) -> None:
        """One of the user's placement actions (space lock held; see the module docs);
        ``once``: not again if it is the last event, at the same place."""
        if self._recording():
            pos = self._position()
            if self._late(pos, event["op"] == "tunables"):
                event = {**event, "after_faults": True}
            if once and self.events and self.events[-1][:2] == [pos, 2] and \
                    self.user_events[self.events[-1][2]] == event:
                return
            self.user_events.append(event)
            self.events.append([pos, 2, len(self.user_events) - 1])

    def _moved(self, vpns: np.ndarray, node: int | None) -> None:
        """The user (or an offline) moved pages ``vpns`` to ``node``; None: the user's
        prefetch duplicated them (read-mostly) on the device."""
        if len(vpns) and self._recording():
            v = np.unique(np.asarray(vpns, np.int64))
            brk = np.flatnonzero(np.diff(v) != 1) + 1
            lo = v[np.concatenate(([0], brk))]
            hi = v[np.concatenate((brk - 1, [len(v) - 1]))] + 1
            ev: dict[str, Any] = {"op": "move" if node is not None else "duplicate",
                                  "runs": [[int(a), int(b)] for a, b in zip(lo, hi)]}
            if node is not None:
                ev["node"] = int(node)
            self._user(ev)

    def _written(self, lo: int, hi: int) -> None:
        """A write over pages ``[lo, hi)``, some of them read-mostly (the writer checked, with
        the rest of their flags), is about to start: their device duplicates go
        (``{"op": "collapse"}``), under whatever policy a replay runs, which may have made
        duplicates the run did not (space lock held)."""
        if not self._recording():
            return
        # (a loop of writes: nothing can have duplicated them since the first)
        self._user({"op": "collapse", "lo": int(lo), "hi": int(hi)}, once=True)

    def _died(self, alloc: Any) -> None:
        """A freed allocation's pages went back to their nodes (space lock held)."""
        if self._recording() and int(alloc.id) in self.allocations:
            pos = self._position()
            if self._late(pos):
                self.allocations[int(alloc.id)]["died_after_faults"] = True
            self.events.append([pos, 0, int(alloc.id)])

    def _add_host(self, t: "Tally", modeled: float, before: int) -> None:
        """A CPU operation's tally was counted; ``before``: how many the open host epoch had
        (space lock held).  A trace recording since the epoch's first operation records the
        epoch the space hands the manager (one merge serves both); one that began (or was
        cleared) later keeps the tallies since."""
        if not self._recording():
            return
        if not self._host_n:
            self._host_t = time.perf_counter() - self._t0
            if before:
                self._host = HostAccesses()
        if self._host is not None:
            self._host.add(t)
        self._host_n += 1
        self._host_modeled += modeled

    def _close_host(self, epoch: int, whole: "Tally | None") -> EpochRecord | None:
        """Record the host epoch that closed, ``whole`` its tally as the manager got it."""
        if not self._host_n:
            return None
        t = self._host.take()[0] if self._host is not None else whole
        self._host_n, self._host, modeled, self._host_modeled = 0, None, self._host_modeled, 0.0
        if t is None or not t.n:
            return None
        rec = self._record(epoch, "host", "cpu", t, math.nan, modeled, self._host_t, 0)
        self._append(rec)
        return rec

    def _record(self, epoch: int, kernel: str, processor: str, t: "Tally", wall: float,
                modeled: float, t_start: float | None = None, notifications: int = 0,
                alloc: "np.ndarray | list[int] | None" = None,
                aborted: bool = False) -> EpochRecord:
        """``alloc``: ``t.alloc_ids`` now, if the caller has them (kept, read only)."""
        sp = self._space
        assert sp is not None
        if alloc is None:
            alloc = t.alloc_ids(sp.pt.alloc) if t.n else np.zeros(0, np.int32)
        if t_start is None:
            t_start = time.perf_counter() - self._t0 - (wall if math.isfinite(wall) else 0.0)
        return EpochRecord(epoch, kernel, processor, None, t, None, None, alloc, wall,
                           modeled, t_start, notifications, aborted)

    def _append(self, rec: EpochRecord) -> None:
        sp = self._space
        if sp is not None:
            mx = sp.tunables.trace_max_epochs
            if self.records.maxlen != mx:
                self.records = collections.deque(self.records, maxlen=mx)
            a = rec._alloc                    # runs along the sorted vpns (or one per part)
            if isinstance(a, list):
                seen = set(a)
            else:
                starts = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1]))) if len(a) \
                    else np.zeros(0, np.int64)
                seen = set(a[starts].tolist())
            for aid in seen:
                if aid >= 0 and aid not in self.allocations and aid in sp._allocs:
                    self.allocations[aid] = _alloc_meta(sp._allocs[aid])
        if self.records.maxlen is not None and len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append(rec)

    def flush(self) -> EpochRecord | None:
        """Close the open host epoch (CPU accesses since the last launch) into a record."""
        sp = self._space
        if sp is None:
            return None
        with sp._cond:
            return sp.counters._close_host_epoch()

    def clear(self) -> None:
        """Forget every record (the header and allocation table stay)."""
        sp = self._space
        if sp is not None:
            with sp._cond:
                self.records.clear()
                self._host_n, self._host = 0, None
                self._host_modeled = 0.0
                self.dropped = 0
        else:
            self.records.clear()

    # -- access ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(list(self.records))

    def __getitem__(self, i: int) -> EpochRecord:
        return list(self.records)[i] if isinstance(i, slice) else self.records[i]

    @property
    def page_size(self) -> int:
        return int(self.header["page_size"])

    @property
    def profile_name(self) -> str:
        return str(self.header["profile"]["name"])

    def summary(self) -> dict[str, float]:
        """Epochs, bytes, wall and modeled seconds over the records kept."""
        recs = list(self.records)
        return {"epochs": len(recs), "dropped": self.dropped,
                "bytes": sum(r.nbytes for r in recs),
                "wall_seconds": float(np.nansum([r.wall_seconds for r in recs])),
                "modeled_seconds": float(sum(r.modeled_seconds for r in recs
                                             if math.isfinite(r.modeled_seconds)))}

    def __repr__(self) -> str:
        return (f"<Trace {len(self.records)} epochs (+{self.dropped} dropped), page_size="
                f"{self.header.get('page_size')}, profile={self.header['profile']['name']!r}>")

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the trace to ``path`` (one compressed ``.npz``; written atomically).  An
        attached trace first closes its open host epoch.  Returns the path."""
        header = dict(self.header)
        if self._space is not None:
            self.flush()
            with self._space._cond:
                recs = list(self.records)
                allocs = dict(self.allocations)
                dropped = self.dropped
                events = [list(e) for e in self.events]
                user = [dict(u) for u in self.user_events]
            header["tunables"] = self._space.tunables.as_dict()   # counter settings among them
        else:
            recs, allocs, dropped = list(self.records), dict(self.allocations), self.dropped
            events = [list(e) for e in self.events]
            user = [dict(u) for u in self.user_events]
        header.update({
            "allocations": [allocs[k] for k in sorted(allocs)], "dropped": dropped,
            "events": events, "user_events": user,
            "epochs": len(recs), "kernels": [r.kernel for r in recs],
            "processors_by_epoch": [r.processor for r in recs],
            "aborted": [i for i, r in enumerate(recs) if r.aborted],
            "saved": time.time()})
        offs = np.zeros(len(recs) + 1, np.int64)
        offs[1:] = np.cumsum([len(r.vpns) for r in recs])

        def cat(name: str, dtype: Any, tail: tuple) -> np.ndarray:
            parts = [np.asarray(getattr(r, name), dtype).reshape((-1,) + tail) for r in recs]
            return np.concatenate(parts) if parts else np.zeros((0,) + tail, dtype)

        arrays = {
            "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
            "epoch": np.array([r.epoch for r in recs], np.int64),
            "wall_seconds": np.array([r.wall_seconds for r in recs], np.float64),
            "modeled_seconds": np.array([r.modeled_seconds for r in recs], np.float64),
            "t_start": np.array([r.t_start for r in recs], np.float64),
            "notifications": np.array([r.notifications for r in recs], np.int64),
            "offsets": offs,
            "vpn": cat("vpns", np.int64, ()),
            "counts": cat("counts", np.int64, (2, 2, 2)),
            "sectors": cat("sectors", np.int64, (2, 2)),
            "node": cat("node", np.int8, ()),
            "alloc": cat("alloc", np.int32, ()),
        }
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".npz", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Trace":
        """Read a trace written by :meth:`save`.  Raises :class:`TraceFormatError` for anything
        that is not a readable ccadgpu trace of a supported version."""
        try:
            z = np.load(os.fspath(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"{path}: not a ccadgpu trace ({exc})") from exc
        with z:
            try:
                header = json.loads(z["header"].tobytes().decode())
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                raise TraceFormatError(f"{path}: no readable trace header ({exc})") from exc
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise TraceFormatError(f"{path}: not a ccadgpu trace (format "
                                       f"{header.get('format') if isinstance(header, dict) else None!r})")
            if header.get("version") != VERSION:
                raise TraceFormatError(f"{path}: trace version {header.get('version')!r}; this "
                                       f"ccadgpu reads version {VERSION}")
            try:
                a = {k: z[k] for k in ("epoch", "wall_seconds", "modeled_seconds", "t_start",
                                       "notifications", "offsets", "vpn", "counts", "sectors",
                                       "node", "alloc")}
            except KeyError as exc:
                raise TraceFormatError(f"{path}: missing array {exc}") from exc
        E = len(a["epoch"])
        N = len(a["vpn"])
        kernels = header.get("kernels", [])
        procs = header.get("processors_by_epoch", [])
        aborted = header.get("aborted", [])          # absent from older files: none
        _check_header(header, path)
        if N and int(a["vpn"].min()) < 0:
            raise TraceFormatError(f"{path}: negative page numbers (corrupt file?)")
        offs = a["offsets"]
        if (len(offs) != E + 1 or offs[0] != 0 or offs[-1] != N or (np.diff(offs) < 0).any()
                or len(kernels) != E or len(procs) != E
                or a["counts"].shape != (N, 2, 2, 2) or a["sectors"].shape != (N, 2, 2)
                or len(a["node"]) != N or len(a["alloc"]) != N
                or any(len(a[k]) != E for k in ("wall_seconds", "modeled_seconds", "t_start",
                                                 "notifications"))
                or not isinstance(aborted, list)
                or not all(type(i) is int and 0 <= i < E for i in aborted)):
            raise TraceFormatError(f"{path}: inconsistent trace arrays (corrupt file?)")
        aborted = set(aborted)
        recs = []
        for i in range(E):
            s = slice(int(offs[i]), int(offs[i + 1]))
            recs.append(EpochRecord(int(a["epoch"][i]), str(kernels[i]), str(procs[i]),
                                    a["vpn"][s], a["counts"][s], a["sectors"][s], a["node"][s],
                                    a["alloc"][s], float(a["wall_seconds"][i]),
                                    float(a["modeled_seconds"][i]), float(a["t_start"][i]),
                                    int(a["notifications"][i]), i in aborted))
        return cls(header, recs)

