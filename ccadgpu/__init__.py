"""ccadgpu: emulate a cache-coherent accelerator device (CCAD).

One virtual address space over a host node and a device node; pages migrate between them
under a page table, access counters and user hints.  ``import ccadgpu`` stays light: Numba,
CuPy and matplotlib load on first use.
"""
from __future__ import annotations

from . import errors
from . import interop  # noqa: F401 - registers its tunables before any Space exists
from .array import ManagedArray
from .clock import Profile, available_profiles, load_profile
from .migrate import MigrationReport
from .policies import Move, Policy, available_policies, register_policy
from .replay import replay
from .space import Allocation, Space
from .trace import EpochRecord, Trace
from .units import format_bytes, parse_size

__version__ = "0.1.0"

__all__ = ["Space", "ManagedArray", "MigrationReport", "Allocation", "errors", "parse_size",
           "format_bytes", "__version__", "Profile", "available_profiles", "load_profile",
           "Trace", "EpochRecord", "ops", "Policy", "Move", "register_policy",
           "available_policies", "replay"]


def __getattr__(name: str) -> object:
    # ``ccadgpu.ops`` loads on first use (its kernels bring Numba in on their first call);
    # ``ccadgpu.scipy`` too (it imports SciPy).
    if name in ("ops", "scipy"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ccadgpu' has no attribute {name!r}")
