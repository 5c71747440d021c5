"""Machine profiles and the modeled clock.

On the CPU stand-in the wall time of a kernel says how fast *this* CPU is, not how a coherent
device would behave.  The **modeled time** says the latter: it prices the bytes each processor
moved to and from each node with the bandwidths and latencies of a real machine, a **profile**.

Profiles are TOML files, ``ccadgpu/profiles/<name>.toml`` (``gh200``, ``h100-pcie``,
``capi-power8``, ``cxl-type2``), each number with its public source in a comment.  Add your own:
put ``<name>.toml`` in a directory named by ``$CCADGPU_PROFILE_PATH`` (``os.pathsep``-separated),
or pass a path, ``Space(profile="/path/to/mine.toml")``.  The format::

    name = "mine"
    description = "..."
    [device]
    capacity = "96GB"                       # the real device's memory (informational)
    [bandwidth_gbps.cpu]                    # GB/s (1e9 B/s) for processor x node
    host = 486
    device = 297
    [bandwidth_gbps.device]
    host = 375
    device = 3400
    [latency_ns.cpu]                        # ns, same shape
    host = 120
    device = 800
    [latency_ns.device]
    host = 900
    device = 500
    [migration]
    host_to_device_gbps = 375
    device_to_host_gbps = 297
    per_page_us = 2.0                       # fixed cost per migrated page
    fault_us = 30.0                         # optional: one fault round trip (policies use it)
    [kernel]
    launch_us = 5.0                         # optional: per-launch overhead

**The model.**  For one epoch (a kernel launch, or a run of host accesses) of processor ``p``::

    t = launch_us (launches only)
        + sum over nodes n touched:  latency[p][n] + traffic[p][n] / bandwidth[p][n]

where ``traffic`` is 32 bytes per counted *sector* (see :mod:`ccadgpu.counters`): dense sweeps
move their bytes, an indexed access of an 8-byte element still moves a 32-byte sector.  The paths
to different nodes are summed, not overlapped: a conservative, monotone model in which every
remote byte costs time.  A migration of ``k`` pages of ``P`` bytes from ``src`` to ``dst`` costs
``k * P / link[src->dst] + k * per_page_us``.
"""
from __future__ import annotations

import os
import threading
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ProfileError, UnknownProfileError
from .units import parse_size

#: Processors, in the order of the counters' first axis.
PROCESSORS = ("cpu", "device")
#: Node names a profile describes, in node-id order (host = 0, device = 1).
NODE_NAMES = ("host", "device")
#: Bytes per counted sector (the access-counter unit, and the modeled traffic granule).
SECTOR = 32

_ENV = "CCADGPU_PROFILE_PATH"


@dataclass(frozen=True)
class Profile:
    """One machine: per processor x node bandwidth (bytes/s) and latency (s), migration link
    bandwidth per direction (bytes/s), per-page migration and fault costs (s), launch overhead
    (s), and the real device's capacity (bytes, informational)."""
    name: str
    description: str
    bandwidth: np.ndarray          # [processor, node] bytes/s
    latency: np.ndarray            # [processor, node] seconds
    link: np.ndarray               # [src node, dst node] bytes/s (diagonal unused)
    per_page: float                # seconds per migrated page
    fault: float                   # seconds per fault round trip
    launch: float                  # seconds per kernel launch
    device_capacity: int           # bytes
    source: str = ""               # file it came from
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (what a trace header stores)."""
        return {
            "name": self.name, "description": self.description,
            "bandwidth_bytes_per_s": self.bandwidth.tolist(),
            "latency_s": self.latency.tolist(), "link_bytes_per_s": self.link.tolist(),
            "per_page_s": self.per_page, "fault_s": self.fault, "launch_s": self.launch,
            "device_capacity": self.device_capacity, "processors": list(PROCESSORS),
            "nodes": list(NODE_NAMES),
        }


def _dirs() -> list[Path]:
    out = [Path(p) for p in os.environ.get(_ENV, "").split(os.pathsep) if p]
    out.append(Path(str(resources.files("ccadgpu") / "profiles")))
    return out


def available_profiles() -> list[str]:
    """Names of every profile found: built-in ones and those in ``$CCADGPU_PROFILE_PATH``."""
    names = set()
    for d in _dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def _num(tbl: Mapping[str, Any], key: str, where: str, positive: bool = True,
         required: bool = True, default: float = 0.0) -> float:
    if key not in tbl:
        if required:
            raise ProfileError(f"{where}: missing {key!r}")
        return default
    v = tbl[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ProfileError(f"{where}.{key}: expected a number, got {v!r}")
    if v < 0 or (positive and v == 0):
        raise ProfileError(f"{where}.{key}: must be {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    t = doc.get(key)
    if not isinstance(t, dict):
        raise ProfileError(f"{where}: missing table [{key}]")
    return t


def parse_profile(doc: Mapping[str, Any], source: str = "<dict>") -> Profile:
    """Validate a profile document (a parsed TOML table).  Raises :class:`ProfileError`."""
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{source}: missing 'name' (a non-empty string)")
    bw = np.zeros((len(PROCESSORS), len(NODE_NAMES)))
    lat = np.zeros_like(bw)
    bwt = _table(doc, "bandwidth_gbps", source)
    latt = _table(doc, "latency_ns", source)
    for i, p in enumerate(PROCESSORS):
        b = _table(bwt, p, f"{source}: bandwidth_gbps")
        lt = _table(latt, p, f"{source}: latency_ns")
        for j, n in enumerate(NODE_NAMES):
            bw[i, j] = _num(b, n, f"{source}: bandwidth_gbps.{p}") * 1e9
            lat[i, j] = _num(lt, n, f"{source}: latency_ns.{p}", positive=False) * 1e-9
    mig = _table(doc, "migration", source)
    link = np.zeros((len(NODE_NAMES), len(NODE_NAMES)))
    link[0, 1] = _num(mig, "host_to_device_gbps", f"{source}: migration") * 1e9
    link[1, 0] = _num(mig, "device_to_host_gbps", f"{source}: migration") * 1e9
    per_page = _num(mig, "per_page_us", f"{source}: migration", positive=False) * 1e-6
    fault = _num(mig, "fault_us", f"{source}: migration", positive=False, required=False) * 1e-6
    kern = doc.get("kernel", {})
    if not isinstance(kern, dict):
        raise ProfileError(f"{source}: [kernel] must be a table")
    launch = _num(kern, "launch_us", f"{source}: kernel", positive=False, required=False) * 1e-6
    dev = _table(doc, "device", source)
    if "capacity" not in dev:
        raise ProfileError(f"{source}: device: missing 'capacity'")
    try:
        cap = parse_size(dev["capacity"], f"{source}: device.capacity")
    except Exception as exc:
        raise ProfileError(str(exc)) from exc
    return Profile(name, str(doc.get("description", "")), bw, lat, link, per_page, fault,
                   launch, cap, source, dict(doc))


_CACHE: dict[tuple[str, int], Profile] = {}
_CACHE_LOCK = threading.Lock()


def load_profile(spec: "str | os.PathLike[str] | Profile") -> Profile:
    """A profile by name (``"gh200"``), by path to a ``.toml`` file, or returned as is.

    Raises :class:`~ccadgpu.errors.UnknownProfileError` (listing the valid names) or
    :class:`~ccadgpu.errors.ProfileError` (a malformed file)."""
    if isinstance(spec, Profile):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise UnknownProfileError(f"profile must be a name, a path or a Profile, got "
                                  f"{type(spec).__name__}; available: "
                                  f"{', '.join(available_profiles())}")
    s = os.fspath(spec)
    path: Path | None = None
    if s.endswith(".toml") or os.sep in s:
        path = Path(s)
        if not path.is_file():
            raise UnknownProfileError(f"profile file {s!r} does not exist")
    else:
        for d in _dirs():
            cand = d / f"{s}.toml"
            if cand.is_file():
                path = cand
                break
        if path is None:
            raise UnknownProfileError(f"unknown profile {s!r}; available: "
                                      f"{', '.join(available_profiles())} (or a path to a .toml "
                                      f"file; more directories via ${_ENV})")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    prof = parse_profile(doc, str(path))
    with _CACHE_LOCK:
        _CACHE[key] = prof
    return prof


class Clock:
    """The modeled clock of one space: prices epochs and migrations with a :class:`Profile`
    and accumulates modeled (and wall) seconds.

    ``elapsed`` is the modeled time of everything priced so far; ``by_kind`` splits it into
    ``"kernel"``, ``"host"``, ``"migration"`` and ``"fault"`` (the profile's fault cost per
    faulting region, for faults that ran before the accesses they served: tunable
    ``faults_ahead``)."""

    def __init__(self, profile: Profile, nnodes: int = 2):
        self.profile = profile
        self._lock = threading.Lock()
        self.elapsed = 0.0
        self.wall = 0.0
        self.by_kind: dict[str, float] = {"kernel": 0.0, "host": 0.0, "migration": 0.0,
                                          "fault": 0.0}
        self._nnodes = nnodes
        self._bw = profile.bandwidth.tolist()
        self._lat = profile.latency.tolist()

    # -- pricing (pure) -----------------------------------------------------------------------
    def access_seconds(self, proc: int, sectors_by_node: "np.ndarray | list[float]",
                       launch: bool) -> float:
        """Modeled seconds for processor ``proc`` moving ``sectors_by_node[n]`` 32-byte sectors
        to/from node ``n`` (see the module docs for the formula)."""
        p = self.profile
        bw, lat = self._bw[proc], self._lat[proc]     # plain floats: epochs are often tiny
        t = 0.0
        rows = sectors_by_node if isinstance(sectors_by_node, list) else \
            np.asarray(sectors_by_node, dtype=np.float64).tolist()
        for n, v in enumerate(rows):
            if v > 0:
                if n >= len(bw):
                    raise ProfileError(f"profile {p.name!r} describes {len(bw)} nodes; "
                                       f"traffic reached node {n}")
                t += lat[n] + v * SECTOR / bw[n]
        return t + (p.launch if launch else 0.0)

    def epoch_seconds(self, sectors: np.ndarray, node: np.ndarray, launch: bool) -> float:
        """Modeled seconds of one epoch from per-page ``sectors[page, processor, rw]`` and the
        pages' ``node``: each processor's traffic is priced per node and the processors'
        times add up (an epoch normally has one processor)."""
        if len(node) == 0:
            return self.profile.launch if launch else 0.0
        node = np.asarray(node).astype(np.int64)
        ok = node >= 0
        by_node = np.zeros((sectors.shape[1], max(self._nnodes, int(node.max()) + 1)))
        for proc in range(sectors.shape[1]):
            per_page = sectors[:, proc, 0] + sectors[:, proc, 1]
            if per_page.any():
                by_node[proc] = np.bincount(node[ok], weights=per_page[ok],
                                            minlength=by_node.shape[1])
        return self.tally_seconds(by_node, launch)

    def tally_seconds(self, sectors_by_node: np.ndarray, launch: bool) -> float:
        """Modeled seconds from ``sectors_by_node[processor, node]`` (32-byte sectors)."""
        t = 0.0
        # plain lists: a CPU operation prices a 2 x 2 table, where NumPy calls cost the most
        for proc, row in enumerate(np.asarray(sectors_by_node, np.float64).tolist()):
            if any(row):
                t += self.access_seconds(proc, row, launch=False)
        return t + (self.profile.launch if launch else 0.0)

    def migration_seconds(self, src_nodes: np.ndarray, target: int, page_size: int) -> float:
        """Modeled seconds to move pages (one per entry of ``src_nodes``) onto ``target``."""
        p = self.profile
        src = np.asarray(src_nodes, dtype=np.int64)
        if len(src) == 0:
            return 0.0
        counts = np.bincount(src, minlength=p.link.shape[0])
        t = len(src) * p.per_page
        for s in np.flatnonzero(counts).tolist():
            if s == target:
                continue
            if s >= p.link.shape[0] or target >= p.link.shape[1]:
                raise ProfileError(f"profile {p.name!r} has no link {s}->{target}")
            t += counts[s] * page_size / p.link[s, target]
        return float(t)

    # -- the clock ----------------------------------------------------------------------------
    def advance(self, kind: str, modeled: float, wall: float = 0.0) -> None:
        """Add an event's modeled (and wall) seconds to the clock."""
        with self._lock:
            self.elapsed += modeled
            if np.isfinite(wall):
                self.wall += wall
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + modeled

    def migration(self, src_nodes: np.ndarray, target: int, page_size: int,
                  wall: float = 0.0) -> float:
        """Price a completed migration, advance the clock, and return its modeled seconds."""
        t = self.migration_seconds(src_nodes, target, page_size)
        self.advance("migration", t, wall)
        return t

    def __repr__(self) -> str:
        return (f"<Clock profile={self.profile.name!r} modeled={self.elapsed:.6g}s "
                f"wall={self.wall:.6g}s>")
