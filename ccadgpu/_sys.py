"""Thin ctypes layer over the Linux memory syscalls the stand-in needs.

Python's :mod:`mmap` cannot place a mapping at a chosen address (``MAP_FIXED``), which is
the whole trick of the CPU stand-in: a page changes node by mapping another file offset
over the same virtual address.  Everything here raises :class:`OSError` with ``errno``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MADV_DONTNEED = 4
MADV_REMOVE = 9
MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23
MADV_COLLAPSE = 25
_MAP_FAILED = ctypes.c_void_p(-1).value

OS_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "memfd_create")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.c_long]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mprotect = _libc.mprotect
_mprotect.restype = ctypes.c_int
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mmap(addr: int | None, length: int, prot: int, flags: int, fd: int = -1,
         offset: int = 0) -> int:
    """mmap(2); returns the mapped address."""
    res = _mmap(addr, length, prot, flags, fd, offset)
    if res is None or res == _MAP_FAILED:
        raise _fail(f"mmap(len={length}, off={offset})")
    return int(res)


def reserve(size: int, align: int = 0) -> int:
    """A ``PROT_NONE`` reservation of ``size`` bytes starting at a multiple of ``align`` (if not
    0): reserve ``align`` bytes more, then unmap the unaligned head and the tail."""
    flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
    if not align:
        return mmap(None, size, PROT_NONE, flags)
    raw = mmap(None, size + align, PROT_NONE, flags)
    base = -(-raw // align) * align
    if base > raw:
        munmap(raw, base - raw)
    if raw + align > base:
        munmap(base + size, raw + align - base)
    return base


def map_fixed_shared(addr: int, length: int, fd: int, offset: int) -> None:
    """Map ``length`` bytes of ``fd`` at ``offset`` exactly at ``addr`` (replacing what was there)."""
    res = _mmap(addr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, offset)
    if res is None or res == _MAP_FAILED:
        raise _fail(f"mmap(MAP_FIXED, len={length}, off={offset})")


def map_fixed_anon(addr: int, length: int, prot: int = PROT_READ | PROT_WRITE) -> None:
    """Replace ``[addr, addr+length)`` with private anonymous memory (zero pages on touch)."""
    res = _mmap(addr, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
    if res is None or res == _MAP_FAILED:
        raise _fail(f"mmap(MAP_FIXED|MAP_ANONYMOUS, len={length})")


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise _fail("munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    if _mprotect(addr, length, prot) != 0:
        raise _fail("mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        raise _fail(f"madvise({advice})")


def max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except OSError:
        return 65530


def current_map_count() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0
