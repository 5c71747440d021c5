"""Run-length helpers: turn page/frame index arrays into contiguous runs.

Every syscall and every copy works on runs, never on single pages, so that a 256 MiB move of
contiguous frames costs one ``mmap`` call rather than thousands (``vm.max_map_count`` too).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def runs(*seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split parallel index sequences into runs where every sequence steps by exactly +1.

    Returns ``(starts, lengths)``: positions into the sequences.  Vectorised."""
    n = len(seqs[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    brk = np.zeros(n, dtype=bool)
    brk[0] = True
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        brk[1:] |= np.diff(s) != 1
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


def expand_runs(starts: Any, lengths: Any) -> np.ndarray:
    """The numbers of runs ``[starts[i], starts[i] + lengths[i])``, one after another (the
    inverse of :func:`runs`).  Vectorised."""
    lens = np.asarray(lengths, np.int64)
    first = np.asarray(starts, np.int64) - (np.cumsum(lens) - lens)
    return np.repeat(first, lens) + np.arange(int(lens.sum()), dtype=np.int64)


def run_phase(seq: np.ndarray, period: int) -> int:
    """``(seq[k] - k) % period`` at the start ``k`` of the longest run of ``seq`` (see
    :func:`runs`): the phase that a run of consecutive numbers paired with ``seq`` needs for its
    longest run to sit at the same offset modulo ``period`` as its partner."""
    if period <= 1 or len(seq) == 0:
        return 0
    at, lens = runs(seq)
    k = int(at[int(np.argmax(lens))])
    return int(seq[k] - k) % period


def bool_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of True in a boolean mask: ``(starts, lengths)``."""
    m = np.concatenate(([False], np.asarray(mask, bool), [False]))
    d = np.diff(m.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return starts, ends - starts


def node_steps(nodes: np.ndarray) -> np.ndarray:
    """A sequence that steps by exactly +1 while ``nodes`` stays the same and jumps where it
    changes, so that :func:`runs` also breaks runs at node changes."""
    nodes = np.asarray(nodes, np.int64)
    if len(nodes) == 0:
        return nodes
    change = np.concatenate(([0], np.cumsum(np.diff(nodes) != 0)))
    return np.arange(len(nodes), dtype=np.int64) + 2 * change


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (NumPy 2's hash-based unique is several times slower on the
    integer page lists the manager handles); returns the input itself when it is already
    strictly increasing."""
    a = np.asarray(a)
    if len(a) < 2:
        return a
    d = np.diff(a)
    if (d > 0).all():
        return a
    s = np.sort(a, kind="stable")
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def group_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort-based ``np.unique(keys, return_inverse=True, return_counts=True)`` for ints:
    returns (unique keys, inverse, counts)."""
    keys = np.asarray(keys)
    if len(keys) == 0:
        z = np.zeros(0, np.int64)
        return keys, z, z
    if len(keys) == 1 or (np.diff(keys) >= 0).all():
        order = None
        s = keys
    else:
        order = np.argsort(keys, kind="stable")
        s = keys[order]
    start = np.concatenate(([True], s[1:] != s[:-1]))
    uniq = s[start]
    grp = np.cumsum(start) - 1
    counts = np.bincount(grp)
    if order is None:
        inv = grp
    else:
        inv = np.empty(len(keys), np.int64)
        inv[order] = grp
    return uniq, inv, counts


def member(v: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.isin(v, values)`` by sorting ``values`` and binary search."""
    s = sorted_unique(values)
    if len(s) == 0:
        return np.zeros(len(v), bool)
    i = np.minimum(np.searchsorted(s, v), len(s) - 1)
    return s[i] == v
