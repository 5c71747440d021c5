"""Allocation placement: which node each new page starts on (Linux mempolicy vocabulary).

* ``"host"`` (default): ordinary allocation, which avoids device memory (R1b).  Spills to the
  device only when the host is full *and* ``tunables.emergency_device_alloc`` is on.
* ``"device"`` / a node name or id: bind (``MPOL_BIND``): all pages there or
  :class:`~ccadgpu.errors.CapacityError`.
* ``"preferred:device"`` (``MPOL_PREFERRED``): as many pages there as fit, the rest on the host.
* ``"interleave"`` (``MPOL_INTERLEAVE``): pages round-robin over the online nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CapacityError, UnknownPlacementError

KINDS = ("default", "bind", "preferred", "interleave")


@dataclass(frozen=True)
class Placement:
    kind: str
    node: int | None = None


def parse(placement: object, node_ids: dict[str, int], n_nodes: int) -> Placement:
    """Parse a placement argument; raise UnknownPlacementError naming the valid forms."""
    valid = ("'host', 'device', 'preferred:<node>', 'interleave', or a node id/name "
             f"({', '.join(node_ids)})")
    if isinstance(placement, (int, np.integer)) and not isinstance(placement, bool):
        if 0 <= int(placement) < n_nodes:
            return Placement("default" if int(placement) == 0 else "bind", int(placement))
        raise UnknownPlacementError(f"placement {placement!r}: no such node; use {valid}")
    if not isinstance(placement, str):
        raise UnknownPlacementError(f"placement must be a string or node id, got "
                                    f"{type(placement).__name__}; use {valid}")
    p = placement.strip().lower()
    if p in ("host", "default"):
        return Placement("default", 0)
    if p == "interleave":
        return Placement("interleave")
    if p.startswith("preferred:"):
        name = p.split(":", 1)[1]
        if name in node_ids:
            return Placement("preferred", node_ids[name])
        raise UnknownPlacementError(f"placement {placement!r}: unknown node {name!r}; use {valid}")
    if p in node_ids:
        return Placement("bind", node_ids[p])
    raise UnknownPlacementError(f"unknown placement {placement!r}; use {valid}")


def plan(pl: Placement, npages: int, free: np.ndarray, usable: np.ndarray, host_reserve: int,
         emergency: bool, pinned: bool, names: list[str]) -> np.ndarray:
    """Node of each of ``npages`` new pages.

    ``free[n]`` free frames per node; ``usable[n]`` whether node n may take implicit pages
    (online); ``host_reserve`` frames the host must keep free so that every device page can be
    evacuated (0 when emergency allocation is on).  Raises CapacityError, changing nothing."""
    out = np.zeros(npages, np.int8)
    host_room = max(int(free[0]) - host_reserve, 0)

    def _spill(n_host: int) -> np.ndarray:
        # host first; the rest only onto devices when emergency use is allowed
        if n_host >= npages:
            return out
        if not emergency or pinned:
            raise CapacityError(
                f"host node is full: {npages} pages needed, {host_room} available "
                f"(after keeping {host_reserve} frames to evacuate the device). Free memory, "
                "use placement='preferred:device', or set tunables.emergency_device_alloc")
        left = npages - n_host
        pos = n_host
        for n in range(1, len(free)):
            if usable[n] and free[n] > 0 and left:
                k = min(left, int(free[n]))
                out[pos:pos + k] = n
                pos += k
                left -= k
        if left:
            raise CapacityError(f"out of memory: {npages} pages needed, every node full")
        return out

    if pl.kind == "default":
        return _spill(min(npages, host_room))
    if pl.kind == "bind":
        n = pl.node
        if n == 0:
            return _spill(min(npages, host_room))
        if not usable[n]:
            raise CapacityError(f"node {names[n]!r} is not online")
        need_reserve = 0 if emergency else max(0, npages - host_room)
        if free[n] < npages or need_reserve:
            why = (f"{int(free[n])} free" if free[n] < npages else
                   f"the host could not take them back on evacuation ({host_room} host frames "
                   "spare)")
            raise CapacityError(f"placement={names[n]!r}: {npages} pages needed, {why}")
        out[:] = n
        return out
    if pl.kind == "preferred":
        n = pl.node
        if n == 0 or pinned or not usable[n]:
            return _spill(min(npages, host_room))
        k = min(npages, int(free[n]), npages if emergency else host_room)
        out[:k] = n
        rest = npages - k
        if rest > host_room - (0 if emergency else k):
            raise CapacityError(f"placement='preferred:{names[n]}': {npages} pages needed, "
                                f"{k} fit on {names[n]} and {max(host_room - k, 0)} on the host")
        return out
    # interleave over usable nodes, skipping ones that fill up
    nodes = [n for n in range(len(free)) if usable[n] and (n == 0 or not pinned)]
    room = {n: (host_room if n == 0 else int(free[n])) for n in nodes}
    share = np.arange(npages) % len(nodes)
    counts = {n: int(np.count_nonzero(share == i)) for i, n in enumerate(nodes)}
    # if a node cannot take its share, hand the surplus to the others
    surplus = sum(max(0, counts[n] - room[n]) for n in nodes)
    for n in nodes:
        counts[n] = min(counts[n], room[n])
    for n in nodes:
        extra = min(surplus, room[n] - counts[n])
        counts[n] += extra
        surplus -= extra
    if surplus:
        raise CapacityError(f"placement='interleave': {npages} pages needed, not enough room")
    dev_pages = sum(c for n, c in counts.items() if n != 0)
    if not emergency and counts.get(0, 0) + dev_pages > host_room:
        raise CapacityError("placement='interleave': the host could not take the device "
                            "pages back on evacuation")
    # round-robin while every node still has quota, then over the nodes that still do
    parts = []
    quota = dict(counts)
    active = [n for n in nodes if quota[n] > 0]
    while active:
        m = min(quota[n] for n in active)
        parts.append(np.tile(np.asarray(active, np.int8), m))
        for n in active:
            quota[n] -= m
        active = [n for n in active if quota[n] > 0]
    out[:] = np.concatenate(parts) if parts else out
    return out
