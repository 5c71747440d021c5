"""ccadgpu: emulate a cache-coherent accelerator device (CCAD).

One virtual address space over a host node and a device node; pages migrate between them
under a page table, access counters and user hints.  ``import ccadgpu`` stays light: Numba,
CuPy and matplotlib load on first use.
"""
from __future__ import annotations

from . import errors
from .array import ManagedArray
from .migrate import MigrationReport
from .space import Allocation, Space
from .units import format_bytes, parse_size

__version__ = "0.1.0"

__all__ = ["Space", "ManagedArray", "MigrationReport", "Allocation", "errors", "parse_size",
           "format_bytes", "__version__"]
