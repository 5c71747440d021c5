"""The copy engine for verified page moves (device evacuation).

A verified move must prove that each target frame holds exactly its source frame's bytes
before the source frame is released.  Hashing both frames afterwards would read them again
from memory (three passes instead of two); instead one Numba kernel copies each page in
4 KiB blocks and, while both blocks are still in L1, compares the target block word by word
with the source block (an exact check, stricter than comparing hashes).  Pages run in parallel
over the cores.  Measured in ``benchmarks/bench_evacuate.py``.
"""
from __future__ import annotations

import numpy as np

_kernel = None
BLOCK_WORDS = 512    # 4 KiB: source and target blocks stay in L1 between copy and check


def _build():
    from numba import njit, prange

    @njit(parallel=True, nogil=True, cache=True)
    def copy_check(dst, src, dst_off, src_off, wpp, corrupt):  # pragma: no cover - jitted
        n = dst_off.shape[0]
        ok = np.empty(n, np.bool_)
        for p in prange(n):
            diff = np.uint64(0)
            for blk in range(0, wpp, 512):
                d = dst[dst_off[p] + blk: dst_off[p] + min(wpp, blk + 512)]
                s = src[src_off[p] + blk: src_off[p] + min(wpp, blk + 512)]
                for i in range(d.shape[0]):
                    d[i] = s[i]
                if p == corrupt and blk == 0:
                    d[0] ^= np.uint64(1)          # fault injection: one flipped bit
                acc = np.uint64(0)
                for i in range(d.shape[0]):
                    acc |= d[i] ^ s[i]
                diff |= acc
            ok[p] = diff == 0
        return ok

    return copy_check


def copy_verify(dst_arena: np.ndarray, src_arena: np.ndarray, dst_frames: np.ndarray,
                src_frames: np.ndarray, page_size: int, corrupt: int = -1) -> np.ndarray:
    """Copy frames ``src_frames`` of byte arena ``src_arena`` onto ``dst_frames`` of
    ``dst_arena``; return, per page, whether the target equals the source afterwards.

    ``corrupt`` (a test hook) flips one bit of that page's target after copying it."""
    global _kernel
    if _kernel is None:
        _kernel = _build()
    if page_size % 8:
        raise ValueError("page size must be a multiple of 8 bytes")
    wpp = page_size // 8
    return _kernel(dst_arena.view(np.uint64), src_arena.view(np.uint64),
                   np.asarray(dst_frames, np.int64) * wpp,
                   np.asarray(src_frames, np.int64) * wpp, wpp, int(corrupt))
