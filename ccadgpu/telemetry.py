"""vmstat-style event counters (R4).

Counter names follow ``/proc/vmstat`` where Linux has one (``pgmigrate_success``,
``pgmigrate_fail``); the rest are spelled the same way.  Per-direction and per-cause byte
counters are created on first use, e.g. ``pgmigrate_bytes_host_to_device`` or
``pgmigrate_pages_cause_api``.
"""
from __future__ import annotations

import threading
from collections import Counter

#: Why a page moved.  Every migration carries one.
CAUSES = ("api", "fault", "access_counter", "prefetch", "eviction", "hint", "evacuation")


class VmStat:
    """Thread-safe monotonically increasing counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._c[k] += v

    def add_named(self, deltas: dict[str, float]) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._c[k] += v

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._c)

    def __getitem__(self, key: str) -> float:
        with self._lock:
            return self._c.get(key, 0)


def record_migration(stat: VmStat, src_name: str, dst_name: str, cause: str, pages: int,
                     failed: int, nbytes: int, seconds: float) -> None:
    """Account one batch of page moves from ``src_name`` to ``dst_name``."""
    stat.add_named({
        "pgmigrate_success": pages,
        "pgmigrate_fail": failed,
        "pgmigrate_bytes": nbytes,
        f"pgmigrate_bytes_{src_name}_to_{dst_name}": nbytes,
        f"pgmigrate_pages_{src_name}_to_{dst_name}": pages,
        f"pgmigrate_pages_cause_{cause}": pages,
        f"pgmigrate_bytes_cause_{cause}": nbytes,
        "migrate_seconds": seconds,
    })
