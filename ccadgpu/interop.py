"""Scientific-library interop: NumPy results that stay in the space, ``register``, DLPack.

**Results stay managed.**  A ufunc, reduction, ``np.*`` function, fancy index or copying method
(``copy``, ``astype``, ``flatten``, ``take``, ...) applied to a managed array returns a managed
array of the same space when its result is new memory: the result is allocated like any
ordinary allocation (on the host, R1b; from there the space's policy places it) and the CPU's
write of it is counted as CPU traffic.  Elementwise ufuncs write straight into the new
allocation (their output dtype and shape are resolved first, without computing anything);
other operations compute into NumPy memory and are copied in (one extra memcpy).  Results that
are views of an operand stay views.  Exceptions, each deliberate:

* scalars stay scalars, and results smaller than ``tunables.managed_results_min_bytes``
  (default 4096 bytes, one OS page) stay plain ``ndarray``\\ s: a managed allocation spends at
  least one page frame and one memory mapping, which for a handful of numbers costs more than
  the operation;
* dtypes that cannot live in device memory (Python objects) stay plain;
* when the host node is full the result is a plain ``ndarray`` (counted in
  ``stats()["results_unmanaged_host_full"]``) rather than an error: the application's memory is
  not the emulated device's to refuse;
* ``tunables.managed_results = False`` turns all of this off (results are plain ``ndarray``\\ s,
  as before).

**register.**  :func:`register` (``space.register(arr)``) brings an array allocated anywhere
under management.  See its docstring for exactly what is copied.

**DLPack.**  ``ManagedArray.__dlpack__`` exports memory whose pages are all on the host as CPU
memory (``kDLCPU``), zero-copy, like ``np.asarray``: the consumer's accesses are not counted.
Pages on the device are refused with :class:`~ccadgpu.errors.DLPackExportError` (the stand-in
has no DLPack device for its emulated device memory, and calling device memory CPU memory would
hide the placement from the consumer); ``copy=True`` exports a counted host copy instead.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .array import ManagedArray, buffer_of
from .counters import count_host
from .errors import (CapacityError, DLPackExportError, ForeignArrayError,
                     InvalidArgumentError)
from .tunables import Knob, register as _register_knob

if TYPE_CHECKING:
    from .space import Space

HOST = 0

_register_knob(Knob("managed_results", bool, True,
                    "Results of NumPy operations on managed arrays (ufuncs, reductions, np.* "
                    "functions, fancy indexing, copies) are allocated in the same space (on the "
                    "host, then placed by the policy).  False: they are plain ndarrays."))
_register_knob(Knob("managed_results_min_bytes", int, 4096,
                    "Results smaller than this stay plain ndarrays (a managed allocation takes "
                    "at least one page frame and one mapping).  0: every non-empty result.",
                    lambda v: v >= 0, ">= 0"))

_SCALARS = (int, float, complex, bool, np.generic)


# ------------------------------------------------------------------------------------------
# results that stay managed
# ------------------------------------------------------------------------------------------
def result_space(arrays: list) -> "Space | None":
    """The space results of an operation on ``arrays`` (managed operands, in argument order)
    go to: the first operand's, if it is open and its ``managed_results`` knob is on."""
    for a in arrays:
        buf = buffer_of(a)
        if buf is not None:
            sp = buf.space
            if sp.closed or buf.alloc.freed or not sp.tunables.managed_results:
                return None
            return sp
    return None


def _wanted(sp: "Space", shape: tuple, dtype: np.dtype) -> bool:
    n = int(np.prod(shape, dtype=np.int64))
    return n > 0 and n * dtype.itemsize >= max(1, sp.tunables.managed_results_min_bytes) \
        and not dtype.hasobject


def allocate_result(sp: "Space", shape: tuple, dtype: np.dtype, fortran: bool = False,
                    name: str = "result") -> ManagedArray | None:
    """A new host allocation for a result, or None where the result should stay plain (too
    small, an object dtype, the host full)."""
    dtype = np.dtype(dtype)
    if not _wanted(sp, shape, dtype):
        return None
    try:
        if fortran and len(shape) > 1:
            return sp.empty(shape[::-1], dtype, placement="host", name=name).T
        return sp.empty(shape, dtype, placement="host", name=name)
    except CapacityError:
        sp.vmstat.add(results_unmanaged_host_full=1)
        return None
    except InvalidArgumentError:
        return None


def _fortran(arrays: list, shape: tuple, order: Any) -> bool:
    """Whether NumPy would lay the result out in Fortran order (order 'K'/'A': when every
    full-shape operand is Fortran- and not C-contiguous)."""
    if order in ("F", "f"):
        return True
    if order not in (None, "K", "k", "A", "a") or len(shape) < 2:
        return False
    full = [a for a in arrays if isinstance(a, np.ndarray) and a.shape == shape]
    return bool(full) and all(a.flags.f_contiguous and not a.flags.c_contiguous for a in full)


def ufunc_outputs(managed: list, ufunc: np.ufunc, inputs: tuple,
                  kwargs: dict) -> tuple | None:
    """New managed output arrays for ``ufunc(*inputs, **kwargs)`` (an elementwise call without
    ``out``), or None to let NumPy allocate (then :func:`finish` copies the result in).  The
    output dtypes come from calling the ufunc on empty stand-ins of the operands (NEP 50 makes
    them independent of values), so a bad call allocates nothing and NumPy raises its own error
    on the real call."""
    if ufunc.signature is not None:
        return None
    sp = result_space(managed)
    if sp is None:
        return None
    shapes, probes = [], []
    for x in inputs:
        if isinstance(x, np.ndarray):
            shapes.append(x.shape)
            probes.append(np.empty(0, x.dtype))
        elif isinstance(x, _SCALARS):
            shapes.append(())
            probes.append(x)
        else:                       # lists and other array-likes: NumPy converts them
            return None
    try:
        shape = np.broadcast_shapes(*shapes)
        kw = {k: v for k, v in kwargs.items() if k not in ("out", "where")}
        with np.errstate(all="ignore"):
            probe = ufunc(*probes, **kw)
    except Exception:  # noqa: BLE001 - the real call raises NumPy's own error
        return None
    probe = probe if isinstance(probe, tuple) else (probe,)
    if shape == () or not all(isinstance(p, np.ndarray) for p in probe):
        return None
    fortran = _fortran(list(inputs), shape, kwargs.get("order"))
    outs = []
    for p in probe:
        o = allocate_result(sp, shape, p.dtype, fortran, name=ufunc.__name__)
        if o is None:
            return None
        outs.append(o)
    return tuple(outs)


def _owners(obj: Any, acc: set, depth: int = 0) -> set:
    """ids of the objects that own the memory of every array in ``obj`` (lists, tuples and
    dicts walked): a result owned by one of them is a view of an argument, not new memory."""
    if isinstance(obj, np.ndarray):
        acc.add(id(_owner(obj)))
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            _owners(v, acc, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            _owners(v, acc, depth + 1)
    return acc


def _owner(a: np.ndarray) -> Any:
    obj: Any = a
    for _ in range(64):
        base = getattr(obj, "base", None)
        if base is None:
            return obj
        obj = base
    return obj


def finish(result: Any, managed: list, args: Any) -> Any:
    """The value an operation on managed arrays returns: views into managed memory come back
    as :class:`ManagedArray`; new arrays (not views of an argument) are copied into the space of
    the first managed operand (see the module docs for the exceptions); anything else as it is.
    Tuples (named ones too) and lists are walked."""
    if isinstance(result, np.ndarray):
        if buffer_of(result) is not None:
            return result if isinstance(result, ManagedArray) else result.view(ManagedArray)
        sp = result_space(managed)
        if sp is None or id(_owner(result)) in _owners(args, set()):
            return result
        return adopt(sp, result)
    if isinstance(result, tuple):
        items = [finish(r, managed, args) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if isinstance(result, list):
        return [finish(r, managed, args) for r in result]
    return result


def adopt(sp: "Space", result: np.ndarray) -> np.ndarray:
    """``result`` (new NumPy memory) copied into a new allocation of ``sp``, same shape, dtype
    and order, its write counted as CPU traffic; ``result`` itself where it should stay plain."""
    fortran = result.flags.f_contiguous and not result.flags.c_contiguous
    m = allocate_result(sp, result.shape, result.dtype, fortran)
    if m is None:
        return result
    np.copyto(m.view(np.ndarray), result, casting="no")
    count_host([(m, "w", None)])
    return m


# ------------------------------------------------------------------------------------------
# register / unregister
# ------------------------------------------------------------------------------------------
def register(sp: "Space", array: Any, placement: str | int = "host", pinned: bool = False,
             name: str | None = None) -> ManagedArray:
    """Bring ``array``, a NumPy array allocated anywhere, under management (R6b).

    **Copied**, once, at memcpy speed: the bytes of ``array``'s elements (``array.nbytes``,
    not the rest of a buffer it is a view of), into a new allocation of ``sp`` placed by
    ``placement`` (default the host: ordinary allocation avoids the device); with it its
    shape, dtype and memory order (C or Fortran; any other strides become C order).
    **Not copied, not shared**: ``array`` itself stays where it was, owned by whoever allocated
    it, untouched and unwatched; no link is kept, so later writes through ``array`` are not
    seen by the managed array and vice versa (use :func:`unregister` with ``out=array`` to
    write the managed data back).  Its base object, ``writeable`` flag and subclass are not
    carried over (a ``np.memmap`` gives its data, not its file).  The copy-in is not counted as
    CPU traffic (as for ``space.asarray``).

    Why a copy: on the CPU stand-in a node's memory is a ``memfd`` arena, and memory the process
    already has (``malloc``, another mapping) cannot become frames of it in place.  An array
    that is already managed by ``sp`` is returned as it is (nothing copied).

    Raises :class:`~ccadgpu.errors.InvalidArgumentError` for anything that is not an ``ndarray``
    (use ``space.asarray`` to convert lists), for ``np.matrix`` and masked arrays (their
    semantics would be lost), and for object dtypes; ``CapacityError`` if the placement has no
    room.  Nothing is allocated when it raises."""
    if isinstance(array, ManagedArray) and buffer_of(array) is not None \
            and buffer_of(array).space is sp:
        sp._resolve(array)          # freed / closed raise
        return array
    if not isinstance(array, np.ndarray):
        raise InvalidArgumentError(f"register takes a NumPy array, got {type(array).__name__}; "
                                   "use space.asarray to convert other objects")
    if isinstance(array, (np.matrix, np.ma.MaskedArray)):
        raise InvalidArgumentError(f"register: {type(array).__name__} is not supported (its "
                                   "semantics would be lost); register its .data (and mask) "
                                   "as plain arrays")
    src = array.view(np.ndarray)
    fortran = src.ndim > 1 and src.flags.f_contiguous and not src.flags.c_contiguous
    if fortran:
        m = sp.empty(src.shape[::-1], src.dtype, placement, pinned, name).T
    else:
        m = sp.empty(src.shape, src.dtype, placement, pinned, name)
    np.copyto(m.view(np.ndarray), src, casting="no")
    return m


def unregister(sp: "Space", arr: Any, out: np.ndarray | None = None) -> np.ndarray:
    """Give ``arr`` (an array :func:`register` or ``space.empty``/``asarray`` returned: the
    whole allocation) back as plain NumPy memory and free its allocation.

    The data is copied (a counted CPU read of ``arr``) into ``out`` if given (same shape;
    NumPy's ``same_kind`` casting; e.g. the array that was registered, to write results back)
    or into a new ``ndarray`` of the same shape, dtype and memory order.  Views of the
    allocation that are still alive read zeros afterwards, as after ``space.free``.
    Raises (with nothing copied or freed) for a foreign or freed array, a view of part of an
    allocation, or an ``out`` of another shape, read-only or overlapping ``arr``."""
    alloc, first, n = sp._resolve(arr)
    if first != 0 or n != alloc.npages or arr.nbytes != alloc.nbytes:
        raise InvalidArgumentError(
            f"unregister takes a whole allocation (shape {alloc.shape}, {alloc.dtype}); got a "
            f"view of shape {arr.shape}, {arr.dtype}")
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise InvalidArgumentError(f"unregister: out must be a NumPy array, got "
                                       f"{type(out).__name__}")
        if out.shape != arr.shape:
            raise InvalidArgumentError(f"unregister: out has shape {out.shape}, expected "
                                       f"{arr.shape}")
        if not out.flags.writeable:
            raise InvalidArgumentError("unregister: out is read-only")
        if not np.can_cast(arr.dtype, out.dtype, "same_kind"):
            raise InvalidArgumentError(f"unregister: cannot cast {arr.dtype} to {out.dtype} "
                                       "(same_kind)")
        if np.may_share_memory(out, arr):
            raise InvalidArgumentError("unregister: out overlaps the array being unregistered")
    with sp.host_access(arr, "r") as src:
        if out is None:
            fortran = src.ndim > 1 and src.flags.f_contiguous and not src.flags.c_contiguous
            out = np.empty(src.shape, src.dtype, order="F" if fortran else "C")
        np.copyto(out, src, casting="same_kind")    # a managed out counts its write
    sp.free(arr)
    return out


# ------------------------------------------------------------------------------------------
# DLPack
# ------------------------------------------------------------------------------------------
def dlpack_check(arr: ManagedArray) -> None:
    """Raise :class:`~ccadgpu.errors.DLPackExportError` unless every page ``arr`` spans is on
    the host (the only memory the stand-in can honestly export as ``kDLCPU``)."""
    buf = buffer_of(arr)
    if buf is None:
        return
    sp = buf.space
    try:
        _, lo, hi = sp._span_vpns(arr)
    except ForeignArrayError:
        return
    with sp._cond:
        nodes = sp.pt.node[lo:hi]
        off = int(np.count_nonzero(nodes != HOST))
    if off:
        raise DLPackExportError(
            f"DLPack export refused: {off} of {hi - lo} pages of this array are on the device "
            "node, which is not CPU memory; move them first (space.prefetch(a, 'host') or "
            "space.move_pages(a, 'host'), then space.pin(a) to keep them there while the "
            "consumer holds the data), or pass copy=True for a host copy")
