"""Managed arrays: NumPy arrays over a space's virtual range.

A :class:`ManagedArray` is an ``ndarray`` subclass whose memory is pages of a :class:`Space`.
``np.asarray(a)`` is a zero-copy view, and the address never changes while pages migrate
underneath.  The subclass exists to see CPU-side work through the array protocols
(``__array_ufunc__``, ``__array_function__``, ``__setitem__``, copying methods), so that
mediated writes wait for in-flight migrations, host traffic is counted, and results of
computations stay in the space (:mod:`ccadgpu.interop`: new memory of at least
``tunables.managed_results_min_bytes`` is allocated in the operand's space; scalars and small
results are plain).  Only memory a space owns is ever a ``ManagedArray`` returned by the library.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .counters import _is_basic_key, count_host, host_operation

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
        items = [rewrap(r) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if isinstance(result, list):
        return [rewrap(r) for r in result]
    return result


def _interop() -> Any:
    # imported on first use: interop imports this module
    from . import interop
    return interop


def _managed_in(x: Any, out: list) -> None:
    if isinstance(x, ManagedArray):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _managed_in(v, out)


# NumPy functions that write into their first argument.
_WRITES_ARG0 = {np.copyto, np.put, np.place, np.putmask, np.fill_diagonal, np.put_along_axis}


_WHOLE = object()


class _host_accesses:
    """A CPU-side operation on managed arrays: its faults first, then register the writers
    (they wait for in-flight migrations of their pages), and count the CPU traffic once the
    operation has completed (:class:`ccadgpu.counters.host_operation`): ``reads`` are read,
    ``writes`` written, an array in both read and written; with ``key``, only the elements
    ``writes[0][key]`` are (an indexed store).  A class, not a generator: every small CPU
    operation on a managed array goes through it."""

    __slots__ = ("_op", "_writes", "_held")

    def __init__(self, reads: list, writes: list, key: Any = _WHOLE):
        ops = []
        mine = []
        for i, a in enumerate(writes):
            if buffer_of(a) is not None:
                mine.append(a)
                mode = "rw" if any(a is r for r in reads) else "w"
                ops.append((a, mode, key if (i == 0 and key is not _WHOLE) else None))
        for a in reads:
            if not any(a is w for w in writes) and buffer_of(a) is not None:
                ops.append((a, "r", None))
        # faults first: the pages come home before the writers hold them in place
        self._op = host_operation(ops)
        self._writes = mine
        self._held: list = []

    def __enter__(self) -> None:
        try:
            for a in self._writes:
                sp = buffer_of(a).space
                self._held.append((sp, sp._begin_write(a)))
        except BaseException:
            self._release()
            self._op.abort()
            raise

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        try:
            if et is None:
                self._op.count()          # counted once it has completed, writers held
        except BaseException:
            self._release()
            self._op.abort()
            raise
        self._release()
        if et is not None:
            self._op.abort()
        return False

    def _release(self) -> None:
        while self._held:
            sp, entry = self._held.pop()
            sp._end_write(entry)


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
        if not outs and method == "__call__":
            # results stay in the space: an elementwise call writes straight into new managed
            # outputs (None when the result should be plain, see ccadgpu.interop)
            outs = _interop().ufunc_outputs(reads, ufunc, inputs, kwargs)
        if outs:
            _managed_in(outs, writes)
            kwargs["out"] = tuple(plain(o) for o in outs)
        else:
            kwargs.pop("out", None)
        with _host_accesses(reads, writes, key):
            result = getattr(ufunc, method)(*_plain_tree(inputs), **kwargs)
        if outs:
            if method == "at":
                return None
            return outs[0] if len(outs) == 1 else outs
        return _interop().finish(result, reads, inputs)

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
        if func is np.empty_like and not writes:
            # nothing to compute or copy: allocate the result in the space directly
            made = _empty_like(reads, args, kwargs)
            if made is not None:
                return made
        with _host_accesses(reads, writes):
            result = func(*_plain_tree(args), **{k: _plain_tree(v) for k, v in kwargs.items()})
        if out is not None and result is not None and isinstance(result, np.ndarray):
            return out if buffer_of(result) is not None else result
        return _interop().finish(result, reads, (args, kwargs))

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
        # stays in the space (ccadgpu.interop) unless it is small.
        if _is_basic_key(key) or buffer_of(self) is None:
            return np.ndarray.__getitem__(self, key)
        reads: list = []
        _managed_in([key], reads)
        k = _plain_tree(key)
        with host_operation([(self, "r", k)] + [(r, "r", None) for r in reads]) as count:
            res = np.ndarray.__getitem__(self.view(np.ndarray), k)
            count()
        return _interop().finish(res, [self], None)

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

    # Methods that make new memory without passing through __array_function__: their results
    # stay in the space too (views come back as views, uncounted).
    def copy(self, order: str = "C") -> np.ndarray:  # type: ignore[override]
        """A copy, in the same space (a plain ndarray if small; see :mod:`ccadgpu.interop`)."""
        return self._fresh(np.ndarray.copy, order=order)

    def astype(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self._fresh(np.ndarray.astype, *args, **kwargs)

    def flatten(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self._fresh(np.ndarray.flatten, *args, **kwargs)

    def ravel(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self._fresh(np.ndarray.ravel, *args, **kwargs)

    def reshape(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self._fresh(np.ndarray.reshape, *args, **kwargs)

    def byteswap(self, inplace: bool = False) -> np.ndarray:  # type: ignore[override]
        if inplace and buffer_of(self) is not None:
            with _host_accesses([self], [self]):
                np.ndarray.byteswap(self.view(np.ndarray), True)
            return self
        return self._fresh(np.ndarray.byteswap, inplace)

    def __copy__(self) -> np.ndarray:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> np.ndarray:
        return self.copy()

    def _fresh(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        if buffer_of(self) is None:
            return method(self, *args, **kwargs)
        res = method(self.view(np.ndarray), *args, **kwargs)
        if isinstance(res, np.ndarray) and buffer_of(res) is not None:
            return res.view(ManagedArray)            # a view: nothing was read
        count_host([(self, "r", None)])
        return _interop().finish(res, [self], None)

    def __reduce__(self) -> Any:
        # Pickling the address would be meaningless in another process: pickle the data.
        with _host_accesses([self], []):
            return np.ndarray.copy(self.view(np.ndarray)).__reduce__()

    # DLPack: host-resident data is exported as CPU memory, zero-copy; device pages are refused
    # (ccadgpu.interop.dlpack_check says why and what to do), unless a copy is asked for.
    def __dlpack_device__(self) -> tuple[int, int]:
        _interop().dlpack_check(self)
        return np.ndarray.__dlpack_device__(self.view(np.ndarray))

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: bool | None = None) -> Any:
        kw = {k: v for k, v in (("max_version", max_version), ("dl_device", dl_device),
                                ("copy", copy)) if v is not None}
        if copy:
            with _host_accesses([self], []):
                snap = np.ndarray.copy(self.view(np.ndarray))
            return snap.__dlpack__(stream=stream, **kw)
        _interop().dlpack_check(self)
        return np.ndarray.__dlpack__(self.view(np.ndarray), stream=stream, **kw)

    def __array_wrap__(self, obj: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if return_scalar and isinstance(obj, np.ndarray) and obj.ndim == 0:
            return obj[()]
        return rewrap(obj.view(np.ndarray) if isinstance(obj, ManagedArray) else obj)


def _empty_like(managed: list, args: tuple, kwargs: dict) -> Any:
    """``np.empty_like`` of a managed prototype, allocated in its space (no copy needed: the
    contents are undefined anyway); None to let NumPy do it."""
    proto = args[0] if args else kwargs.get("prototype")
    if not isinstance(proto, np.ndarray) or kwargs.get("subok") is False:
        return None
    try:
        shape = kwargs.get("shape", args[3] if len(args) > 3 else None)
        dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
        order = kwargs.get("order", args[2] if len(args) > 2 else "K")
        shp = proto.shape if shape is None else \
            ((int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape))
        dt = proto.dtype if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        return None
    sp = _interop().result_space(managed)
    if sp is None:
        return None
    fortran = order in ("F", "f") or (order in ("K", "k", "A", "a") and shp == proto.shape
                                      and proto.ndim > 1 and proto.flags.f_contiguous
                                      and not proto.flags.c_contiguous)
    return _interop().allocate_result(sp, shp, dt, fortran, name="empty_like")


def _via_function(fn: Any, name: str, swap: bool = False) -> Any:
    def method(self: ManagedArray, *args: Any, **kwargs: Any) -> Any:
        if swap:                       # ndarray.compress(condition, ...) vs np.compress(condition, a)
            return fn(args[0], self, *args[1:], **kwargs)
        return fn(self, *args, **kwargs)
    method.__name__ = name
    method.__qualname__ = f"ManagedArray.{name}"
    method.__doc__ = (f"``np.{fn.__name__}`` of this array: counted, and a new result stays in "
                      "the space (see :mod:`ccadgpu.interop`).")
    return method


# ndarray methods implemented in C that would otherwise make new, unmanaged memory typed as
# ManagedArray: route them through the NumPy function, which dispatches __array_function__.
for _name, _fn in (("take", np.take), ("repeat", np.repeat), ("choose", np.choose),
                   ("searchsorted", np.searchsorted), ("nonzero", np.nonzero), ("dot", np.dot),
                   ("argsort", np.argsort), ("argpartition", np.argpartition),
                   ("round", np.round), ("trace", np.trace), ("argmax", np.argmax),
                   ("argmin", np.argmin)):
    setattr(ManagedArray, _name, _via_function(_fn, _name))
setattr(ManagedArray, "compress", _via_function(np.compress, "compress", swap=True))
