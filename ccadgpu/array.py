"""Managed arrays: NumPy arrays over a space's virtual range.

A :class:`ManagedArray` is an ``ndarray`` subclass whose memory is pages of a :class:`Space`.
``np.asarray(a)`` is a zero-copy view, and the address never changes while pages migrate
underneath.  The subclass exists for one reason: to see CPU-side work through the array
protocols (``__array_ufunc__``, ``__array_function__``, ``__setitem__``), so that mediated writes
wait for in-flight migrations and host traffic can be counted.  Results of computations are
plain ``ndarray``s: only memory the space owns is ever a ``ManagedArray``.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .counters import _is_basic_key, count_host

if TYPE_CHECKING:
    from .space import Allocation, Space


class _Buffer:
    """Owner of one allocation's virtual range; the ``base`` of every array over it.

    When the last array over it dies, its finalizer returns the range to the space."""

    __slots__ = ("__array_interface__", "alloc", "space", "__weakref__")

    def __init__(self, addr: int, nbytes: int, alloc: "Allocation", space: "Space"):
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1",
                                    "data": (addr, False), "version": 3}
        self.alloc = alloc
        self.space = space


def buffer_of(arr: Any) -> _Buffer | None:
    """The :class:`_Buffer` an array's memory belongs to, or None (walks the ``base`` chain)."""
    obj = arr
    for _ in range(64):
        if isinstance(obj, _Buffer):
            return obj
        obj = getattr(obj, "base", None)
        if obj is None:
            return None
        if isinstance(obj, memoryview):
            obj = obj.obj
    return None


def plain(x: Any) -> Any:
    """``x`` as a plain ndarray view if it is a ManagedArray; anything else unchanged."""
    return x.view(np.ndarray) if isinstance(x, ManagedArray) else x


def _plain_tree(x: Any) -> Any:
    if isinstance(x, ManagedArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain_tree(v) for v in x)
    return x


def rewrap(result: Any) -> Any:
    """Views into managed memory come back as ManagedArray; everything else as it is."""
    if isinstance(result, np.ndarray) and not isinstance(result, ManagedArray):
        if buffer_of(result) is not None:
            return result.view(ManagedArray)
        return result
    if isinstance(result, tuple):
        return tuple(rewrap(r) for r in result)
    if isinstance(result, list):
        return [rewrap(r) for r in result]
    return result


def _managed_in(x: Any, out: list) -> None:
    if isinstance(x, ManagedArray):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _managed_in(v, out)


# NumPy functions that write into their first argument.
_WRITES_ARG0 = {np.copyto, np.put, np.place, np.putmask, np.fill_diagonal, np.put_along_axis}


_WHOLE = object()


@contextlib.contextmanager
def _host_accesses(reads: list, writes: list, key: Any = _WHOLE) -> Iterator[None]:
    """A CPU-side operation on managed arrays: register the writers (they wait for in-flight
    migrations of their pages) and count the CPU traffic (:mod:`ccadgpu.counters`): ``reads``
    are read, ``writes`` written, an array in both read and written; with ``key``, only the
    elements ``writes[0][key]`` are (an indexed store)."""
    with contextlib.ExitStack() as stack:
        ops = []
        for i, a in enumerate(writes):
            buf = buffer_of(a)
            if buf is not None:
                stack.enter_context(buf.space._writing(a))
                mode = "rw" if any(a is r for r in reads) else "w"
                ops.append((a, mode, key if (i == 0 and key is not _WHOLE) else None))
        for a in reads:
            if not any(a is w for w in writes) and buffer_of(a) is not None:
                ops.append((a, "r", None))
        if ops:
            count_host(ops)
        yield


class ManagedArray(np.ndarray):
    """An ndarray whose memory lives in a :class:`~ccadgpu.Space` (see module docs)."""

    @property
    def space(self) -> "Space":
        buf = buffer_of(self)
        if buf is None:
            raise AttributeError("array memory is not managed")
        return buf.space

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        outs = kwargs.get("out")
        if outs is not None and not isinstance(outs, tuple):
            outs = (outs,)
        reads: list = []
        writes: list = []
        _managed_in(inputs, reads)
        key: Any = _WHOLE
        if method == "at" and inputs and isinstance(inputs[0], ManagedArray):
            writes.append(inputs[0])      # ufunc.at(a, indices, ...) reads and writes a[indices]
            if len(inputs) > 1 and not isinstance(inputs[1], ManagedArray):
                key = inputs[1]
        if outs:
            _managed_in(outs, writes)
            kwargs["out"] = tuple(plain(o) for o in outs)
        with _host_accesses(reads, writes, key):
            result = getattr(ufunc, method)(*_plain_tree(inputs), **kwargs)
        if outs:
            if method == "at":
                return None
            return outs[0] if len(outs) == 1 else outs
        return rewrap(result)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        reads: list = []
        writes: list = []
        _managed_in(args, reads)
        _managed_in(list(kwargs.values()), reads)
        if func in _WRITES_ARG0 and args and isinstance(args[0], ManagedArray):
            writes.append(args[0])
        out = kwargs.get("out")
        if out is not None:
            _managed_in([out], writes)
        with _host_accesses(reads, writes):
            result = func(*_plain_tree(args), **{k: _plain_tree(v) for k, v in kwargs.items()})
        if out is not None and result is not None and isinstance(result, np.ndarray):
            return out if buffer_of(result) is not None else result
        return rewrap(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        reads: list = []
        _managed_in([value, key], reads)
        k = _plain_tree(key)
        with _host_accesses(reads, [self], k):
            np.ndarray.__setitem__(self.view(np.ndarray), k, plain(value))

    def __getitem__(self, key: Any) -> Any:
        # Basic indexing (views, single elements) is not counted: a view reads nothing, and
        # counting a single-element read would cost far more than the read.  Advanced indexing
        # copies the selected elements, a vectorised CPU read: counted, per page, and the copy
        # is a plain ndarray (its memory is not the space's).
        if _is_basic_key(key) or buffer_of(self) is None:
            return np.ndarray.__getitem__(self, key)
        reads: list = []
        _managed_in([key], reads)
        k = _plain_tree(key)
        ops = [(self, "r", k)] + [(r, "r", None) for r in reads]
        count_host(ops)
        return np.ndarray.__getitem__(self.view(np.ndarray), k)

    def fill(self, value: Any) -> None:
        with _host_accesses([], [self]):
            np.ndarray.fill(self.view(np.ndarray), value)

    # In-place methods write through the writer protocol too (they bypass __setitem__).
    def sort(self, *args: Any, **kwargs: Any) -> None:
        with _host_accesses([self], [self]):
            np.ndarray.sort(self.view(np.ndarray), *args, **kwargs)

    def partition(self, *args: Any, **kwargs: Any) -> None:
        with _host_accesses([self], [self]):
            np.ndarray.partition(self.view(np.ndarray), *args, **kwargs)

    def put(self, indices: Any, values: Any, mode: str = "raise") -> None:
        with _host_accesses([], [self]):
            np.ndarray.put(self.view(np.ndarray), indices, plain(values), mode)

    def copy(self, order: str = "C") -> np.ndarray:  # type: ignore[override]
        """A plain (unmanaged) copy: the copy's memory is not the space's."""
        with _host_accesses([self], []):
            return np.ndarray.copy(self.view(np.ndarray), order=order)

    def __reduce__(self) -> Any:
        # Pickling the address would be meaningless in another process: pickle the data.
        return self.copy().__reduce__()

    def __array_wrap__(self, obj: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if return_scalar and isinstance(obj, np.ndarray) and obj.ndim == 0:
            return obj[()]
        return rewrap(obj.view(np.ndarray) if isinstance(obj, ManagedArray) else obj)
