"""sysctl-like knobs (R4).  ``space.tunables.NAME = value``; unknown names and bad values
raise, and leave every knob as it was."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InvalidTunableError, UnknownTunableError


@dataclass(frozen=True)
class Knob:
    name: str
    type: type
    default: Any
    doc: str
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""


KNOBS: dict[str, Knob] = {}


def register(knob: Knob) -> Knob:
    """Declare a tunable.  Later subsystems (counters, policies) register their own."""
    KNOBS[knob.name] = knob
    return knob


register(Knob("emergency_device_alloc", bool, False,
              "Let ordinary (host) allocations spill onto the device when the host node is "
              "full.  Off by default: then the host can always take every device page back "
              "(R1b), which is what makes device offline safe."))
register(Knob("migration_enabled", bool, True,
              "Global switch (R5).  False: no page moves except device evacuation; "
              "move_pages reports -EPERM for every page.  Set while the migration manager "
              "steps (from a migrate listener), it stops the manager's moves from its next "
              "step on."))
register(Knob("evacuate_verify", bool, True,
              "Device offline checks every evacuated page against its device copy before the "
              "device frame is released (a mismatch keeps the device copy and fails)."))
register(Knob("cache_colouring", bool, True,
              "Start each new allocation's data 16 bytes into a cache line and at a different "
              "offset inside its first page (steps of 4160 bytes), as NumPy's large arrays "
              "start, so that arrays swept together do not compete for the same cache sets "
              "(measured on the CPU stand-in: triad on managed arrays 1.31x -> 0.98x of plain "
              "NumPy, bench_kernels.py in the README).  A small array is coloured only within "
              "the room left in its last page; one of 16 pages or more may span one page more "
              "where that page fits beside the others.  "
              "Applies to allocations made while it is on; no effect on the cuda backend."))
register(Knob("hugetlb", bool, True,
              "Back each node's arena with hugetlb 2 MiB pages (MFD_HUGETLB) when page_size is "
              "a multiple of 2 MiB and the OS's pool (vm.nr_hugepages) can reserve the node's "
              "whole capacity; else, or when False, 4 KiB memfd pages.  Read when a Space is "
              "created (space.node_info() says what each node got and why)."))
register(Knob("thp_collapse", bool, True,
              "On memfd arenas, fault in each whole 2 MiB-aligned chunk of fresh frames as one "
              "transparent huge page (MADV_COLLAPSE, Linux 6.1+, which shmem THP's sysfs "
              "setting does not govern) instead of 512 base pages, so that pages mapped at "
              "matching 2 MiB-aligned addresses get 2 MiB TLB entries as NumPy's arrays do.  "
              "Read when a Space is created (space.node_info() says what each node got)."))
register(Knob("allow_pinned_on_device", bool, True,
              "Allow explicit placement='device' with pinned=True and pin() of device pages. "
              "Such pages block device offline until unpinned."))


class Tunables:
    """Attribute-style access to the registered knobs of one space."""

    def __init__(self, **overrides: Any) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_values", {k: v.default for k, v in KNOBS.items()})
        object.__setattr__(self, "_gen", 0)
        object.__setattr__(self, "_listeners", [])
        self.set(**overrides)

    @staticmethod
    def _knob(name: str) -> Knob:
        if name not in KNOBS:
            raise UnknownTunableError(
                f"unknown tunable {name!r}; known: {', '.join(sorted(KNOBS))}")
        return KNOBS[name]

    @classmethod
    def _validate(cls, name: str, value: Any) -> Any:
        knob = cls._knob(name)
        if knob.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, knob.type) or (knob.type is int and isinstance(value, bool)):
            raise InvalidTunableError(f"tunable {name!r} takes {knob.type.__name__}, "
                                      f"got {type(value).__name__} {value!r}")
        if not knob.check(value):
            raise InvalidTunableError(f"tunable {name!r}: {value!r} is out of range "
                                      f"({knob.rule or 'see its doc'})")
        return value

    @classmethod
    def parse(cls, text: str) -> tuple[str, Any]:
        """``"NAME=VALUE"`` (a command line's) as ``(name, value)``, the value converted to
        the knob's type (booleans: ``true``/``false``, ``1``/``0``, ``on``/``off``) and
        validated; raises :class:`~ccadgpu.errors.InvalidTunableError` (or
        :class:`~ccadgpu.errors.UnknownTunableError`) naming what is wrong."""
        if not isinstance(text, str):
            raise InvalidTunableError(f"expected a NAME=VALUE string for a tunable, got {text!r}")
        name, eq, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not eq or not name:
            raise InvalidTunableError(f"expected NAME=VALUE for a tunable, got {text!r}")
        knob = cls._knob(name)
        try:
            if knob.type is bool:
                low = raw.lower()
                if low not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
                    raise ValueError(raw)
                value: Any = low in ("true", "1", "on", "yes")
            else:
                value = knob.type(raw)
        except ValueError:
            raise InvalidTunableError(f"tunable {name!r} takes {knob.type.__name__}, "
                                      f"got {raw!r}") from None
        return name, cls._validate(name, value)

    def set(self, **values: Any) -> None:
        """Set several knobs at once: all are validated before any changes."""
        checked = {k: self._validate(k, v) for k, v in values.items()}
        with self._lock:
            self._values.update(checked)
            object.__setattr__(self, "_gen", self._gen + 1)
        for fn in list(self._listeners):
            fn(checked)

    def listen(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(values)`` after every :meth:`set`, with the knobs it set (its space's
        trace records the ones the manager reads)."""
        self._listeners.append(fn)

    @property
    def gen(self) -> int:
        """Bumped by every :meth:`set` (answers that depend on the knobs go stale)."""
        return self._gen

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:                             # the hot path: every counted operation reads several
            return self._values[name]
        except KeyError:
            pass
        self._knob(name)
        return self._values.get(name, KNOBS[name].default)

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(**{name: value})

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(**{name: value})

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {k: self._values.get(k, KNOBS[k].default) for k in sorted(KNOBS)}

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, doc) for every knob, for ``ccadgpu info``."""
        vals = self.as_dict()
        return [(k, vals[k], KNOBS[k].doc) for k in sorted(KNOBS)]

    def __repr__(self) -> str:
        return f"Tunables({self.as_dict()})"
