"""Device kernels for users: ``ccadgpu.ops.<name>(...)`` on managed arrays of one space.

Each call is one launch on that space's device (see :mod:`ccadgpu.launch`): it is refused while
the device is not online, it waits for in-flight migrations of the pages it writes, and it is
counted (per page, local/remote), priced on the space's machine profile (modeled seconds) and
traced.  ``space.device.last_launch`` is the :class:`~ccadgpu.launch.LaunchResult` of the latest
launch.  Kernels run on the CPU stand-in with Numba (parallel, compiled once and cached), or on a cuda
space as instrumented CUDA kernels (:mod:`ccadgpu.backends.cuda`) over the same addresses.

* ``copy(dst, src)``: ``dst[...] = src``
* ``scale(dst, src, alpha)``: ``dst[...] = alpha * src``
* ``axpy(alpha, x, y)``: ``y[...] = alpha * x + y``
* ``triad(a, b, c, alpha)``: ``a[...] = b + alpha * c`` (STREAM triad)
* ``sum(x)``: ``x.sum()``;  ``dot(x, y)``: ``(x * y).sum()``
* ``stencil5(out, inp, center, neighbor)``: 2-D 5-point stencil, clamped edges (hotspot-like)
* ``gather(out, src, idx)``: ``out[...] = src.flat[idx]``
* ``scatter(dst, idx, src)``: ``dst.flat[idx] = src`` (duplicate indices: one of them wins)
* ``spmv_csr(y, indptr, indices, data, x)``: ``y[...] = A @ x``, ``A`` in CSR form

Arrays must be C-contiguous managed arrays of the same space, of one numeric dtype per kernel
(signed integers or floats; index arrays signed integers).  Streaming kernels take any shape
(elementwise); an output may be the very same array as an input but must not partly overlap it.
Integer kernels and ``copy`` are exact; float reductions accumulate in float64 (so they agree
with NumPy's to rounding, not bit for bit).  Bad input raises with nothing changed: arguments are
checked before the launch; index values (and a CSR ``indptr``) are checked before any store --
on the stand-in by the pass that builds the launch's page histogram (before its faults run) or,
uncounted, by the kernel's own first pass; on a GPU by a check kernel -- so the launch raises
``InvalidArgumentError`` naming the bad range with nothing written, counted or traced.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .array import buffer_of
from .counters import READ, WRITE, _span, kernel_page_params
from .errors import ForeignArrayError, InvalidArgumentError, index_changed
from .launch import Access, execute

__all__ = ["copy", "scale", "axpy", "triad", "sum", "dot", "stencil5", "gather", "scatter",
           "spmv_csr"]

_K: Any = None


def _kernels() -> Any:
    """The Numba kernels (imported, and Numba with them, on first use)."""
    global _K
    if _K is None:
        from .kernels import cpu
        _K = cpu
    return _K


def _nthreads() -> int:
    import numba
    return int(numba.get_num_threads())


# -- validation ---------------------------------------------------------------------------------
def _space_of(op: str, **arrays: Any) -> Any:
    sp = None
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise InvalidArgumentError(f"ops.{op}: {name} must be an array, got "
                                       f"{type(a).__name__}")
        buf = buffer_of(a)
        if buf is None:
            raise ForeignArrayError(f"ops.{op}: {name} (shape {a.shape}, {a.dtype}) is not a "
                                    "managed array; device kernels run on a space's memory "
                                    "(space.asarray / space.empty)")
        if sp is None:
            sp = buf.space
        elif buf.space is not sp:
            raise ForeignArrayError(f"ops.{op}: {name} belongs to another space than "
                                    f"{next(iter(arrays))}")
        sp._resolve(a)     # freed / closed raise here
        if not a.flags.c_contiguous:
            raise InvalidArgumentError(f"ops.{op}: {name} must be C-contiguous (got strides "
                                       f"{a.strides}); use a contiguous array or "
                                       "space.device.launch with your own kernel")
    return sp


def _numeric(op: str, name: str, a: np.ndarray, kinds: str = "if") -> None:
    if a.dtype.kind not in kinds or a.dtype.itemsize > 8:
        want = {"if": "a signed integer or float", "i": "a signed integer",
                "f": "a float"}.get(kinds, kinds)
        raise InvalidArgumentError(f"ops.{op}: {name} has dtype {a.dtype}; expected {want} "
                                   "dtype")


def _same(op: str, what: str, **arrays: np.ndarray) -> None:
    items = list(arrays.items())
    n0, a0 = items[0]
    for n, a in items[1:]:
        if what == "dtype" and a.dtype != a0.dtype:
            raise InvalidArgumentError(f"ops.{op}: {n} has dtype {a.dtype}, {n0} has {a0.dtype}; "
                                       "they must match")
        if what == "shape" and a.shape != a0.shape:
            raise InvalidArgumentError(f"ops.{op}: {n} has shape {a.shape}, {n0} has {a0.shape}; "
                                       "they must match")


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def _no_overlap(op: str, out_name: str, out: np.ndarray, allow_same: bool,
                **inputs: np.ndarray) -> None:
    for n, a in inputs.items():
        # plain views: NumPy functions on managed arrays would count as CPU reads
        if np.may_share_memory(out.view(np.ndarray), a.view(np.ndarray)) and \
                not (allow_same and _identical(out, a)):
            raise InvalidArgumentError(f"ops.{op}: {out_name} overlaps {n}"
                                       + (" (only the very same array is allowed)"
                                          if allow_same else ""))


def _scalar(op: str, alpha: Any, dtype: np.dtype) -> Any:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.number)):
        raise InvalidArgumentError(f"ops.{op}: alpha must be a real number, got {alpha!r}")
    if dtype.kind == "i":
        if not float(alpha).is_integer():
            raise InvalidArgumentError(f"ops.{op}: alpha {alpha!r} is not an integer, and the "
                                       f"arrays are {dtype}")
        return dtype.type(int(alpha))
    if isinstance(alpha, (complex, np.complexfloating)):
        raise InvalidArgumentError(f"ops.{op}: alpha must be real, got {alpha!r}")
    return dtype.type(alpha)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.view(np.ndarray).reshape(-1)


def _shift(page: int) -> int:
    """log2(page) for a power-of-two page size, else -1 (the kernels then divide)."""
    return page.bit_length() - 1 if page & (page - 1) == 0 else -1


def _on_gpu(sp: Any, op: str, *args: Any, **kw: Any) -> Any:
    """Run ``op`` of the space's CUDA kernels on ``args`` (views of the space's memory) and
    wait for it: a launch is synchronous, as on the stand-in."""
    res = getattr(sp.gpu.kernels, op)(*args, **kw)
    sp.gpu.b.synchronize()
    return res


def _gpu_indexed(sp: Any, op: str, args: tuple, arr: np.ndarray, written: bool,
                 counting: bool) -> list:
    """Run an indexed op on the GPU; when ``counting``, its in-kernel per-page counters over
    the pages ``arr`` spans give the histogram (element accesses per page) of that operand."""
    if not counting:
        _on_gpu(sp, op, *args, check=False)
        return []
    vlo, n = _span(sp, arr)
    cnt = sp.gpu.new_counters(sp.va.addr(vlo), n * sp.page_size)
    _on_gpu(sp, op, *args, counters=cnt, check=False)
    rd, wr = sp.gpu.read_counters(cnt)
    return [((wr if written else rd) // arr.itemsize).astype(np.int64)]


def _drops_duplicates(sp: Any, written: np.ndarray) -> bool:
    """Whether a launch writing ``written`` changes state before its kernel runs: registering
    as a writer drops the read-mostly device duplicates of those pages."""
    _, lo, hi = sp._span_vpns(written)
    with sp._cond:
        return bool((sp.pt.dup[lo:hi] >= 0).any())


def _index_error(op: str, name: str, idx: np.ndarray, n: int) -> InvalidArgumentError:
    """The error of an index outside ``[0, n)`` (found by a check, before any store)."""
    v = _flat(idx)
    bad = v[(v < 0) | (v >= n)]
    if not bad.size:                  # it was there when checked
        return index_changed(op, name)
    return InvalidArgumentError(f"ops.{op}: {name} out of range: values {v.min()}..{v.max()} "
                                f"({bad.size} outside, e.g. {bad[0]}), valid 0..{n - 1}; "
                                "nothing was written")


def _status_error(op: str, status: int, name: str, idx: np.ndarray,
                  n: int) -> InvalidArgumentError:
    """The error of a nonzero status of a stand-in indexed kernel or check
    (:mod:`ccadgpu.kernels.cpu`): 1 a CSR indptr that does not cover ``idx`` (the indices), 2
    an index outside ``[0, n)``, both found before any store; 3 either met by the work loop
    (changed since they were checked)."""
    if status == 1:
        return InvalidArgumentError(f"ops.{op}: indptr must start at 0, never decrease and end "
                                    f"at nnz = {idx.size}; nothing was written")
    if status == 2:
        return _index_error(op, name, idx, n)
    return index_changed(op, name if op != "spmv_csr" else f"{name} or indptr")


class _Ahead:
    """A stand-in indexed launch's page histogram of ``table`` for one access per ``idx``, built
    before its kernel (:attr:`ccadgpu.launch.Access.ahead`).  Its pass checks the indices (after
    ``pre``, the rest of the structure's check), so that the kernel may skip its own check
    (``checked``: set, too, by a check that ran before the launch)."""

    def __init__(self, sp: Any, op: str, name: str, table: np.ndarray, idx: np.ndarray,
                 pre: Any = None):
        self.sp, self.op, self.name, self.table, self.idx, self.pre = sp, op, name, table, idx, pre
        self.checked = False

    def __call__(self) -> np.ndarray:
        if not self.checked and self.pre is not None:
            self.pre()
        off0, isz, page, npages = kernel_page_params(self.sp, self.table)
        h, ok = _kernels().page_histogram(self.idx, self.table.size, off0, isz, page,
                                          _shift(page), npages, _nthreads())
        if not ok:
            raise _index_error(self.op, self.name, self.idx, self.table.size)
        self.checked = True
        return h.sum(axis=0)


def _precheck_indices(sp: Any, op: str, name: str, idx: np.ndarray, n: int,
                      written: np.ndarray) -> None:
    """Index checks that run before the launch.  On a cuda space always, on the GPU (reading
    ``idx`` here would pull its pages over).  On the stand-in a counted launch's histogram pass
    checks before anything changes, and an uncounted kernel checks in a first pass that
    returns before any store, so this checks only for an uncounted launch that would change
    state before its kernel runs (:func:`_drops_duplicates`)."""
    if sp.gpu is not None:
        if idx.size:
            k = sp.gpu.kernels
            k._check_index(f"ops.{op}", k.b.as_device_array(_flat(idx)), n, name)
    elif not sp.counters.enabled and _drops_duplicates(sp, written) and \
            not _kernels().indices_ok(_flat(idx), n, _nthreads()):
        raise _index_error(op, name, idx, n)


def _run_indexed(sp: Any, op: str, args: tuple, table: np.ndarray, idx: np.ndarray,
                 result: np.ndarray, dense: list) -> np.ndarray:
    """Launch gather or scatter (``args`` in the kernel's order) on checked operands.  The
    indexed operand ``table`` (gather's source, scatter's destination) is counted per page: on
    the stand-in by a histogram of ``idx`` built before the kernel, on a GPU by the kernel's
    own counters; ``dense`` are the other operands' accesses."""
    written = op == "scatter"
    flat = tuple(_flat(a) for a in args)
    ahead = _Ahead(sp, op, "idx", table, _flat(idx).view(np.ndarray))

    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            return result, _gpu_indexed(sp, op, flat, table, written, counting)
        status = getattr(_kernels(), op)(*flat, not ahead.checked, _nthreads())
        if status:
            raise _status_error(op, status, "idx", idx, table.size)
        return result, []
    acc = dense + [Access(table, WRITE if written else READ, "kernel",
                          ahead=ahead if sp.gpu is None else None)]
    return execute(sp, op, run, acc).value


def _dense(*pairs: tuple[np.ndarray, int]) -> list[Access]:
    """Dense accesses, each distinct (array, rw) once."""
    out: list[Access] = []
    for a, rw in pairs:
        if not any(x.rw == rw and x.kind == "dense" and _identical(x.array, a) for x in out):
            out.append(Access(a, rw))
    return out


# -- streaming ----------------------------------------------------------------------------------------
def _run_streaming(sp: Any, op: str, result: np.ndarray, gpu_args: tuple, cpu_args: tuple,
                   acc: list) -> np.ndarray:
    """Launch a streaming op on checked operands: the CUDA kernel on a cuda space, the Numba
    one (whose argument order may differ: ``cpu_args``) on the stand-in.  Dense operands are
    counted by :func:`execute`, so neither kernel counts."""
    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            _on_gpu(sp, op, *gpu_args)
        else:
            getattr(_kernels(), op)(*cpu_args)
        return result, []
    return execute(sp, op, run, acc).value


def copy(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``dst[...] = src`` on the device.  Returns ``dst``."""
    sp = _space_of("copy", dst=dst, src=src)
    _numeric("copy", "dst", dst)
    _same("copy", "dtype", dst=dst, src=src)
    _same("copy", "shape", dst=dst, src=src)
    _no_overlap("copy", "dst", dst, True, src=src)
    d, s = _flat(dst), _flat(src)
    return _run_streaming(sp, "copy", dst, (d, s), (d, s), _dense((src, READ), (dst, WRITE)))


def scale(dst: np.ndarray, src: np.ndarray, alpha: float) -> np.ndarray:
    """``dst[...] = alpha * src`` on the device.  Returns ``dst``."""
    sp = _space_of("scale", dst=dst, src=src)
    _numeric("scale", "dst", dst)
    _same("scale", "dtype", dst=dst, src=src)
    _same("scale", "shape", dst=dst, src=src)
    _no_overlap("scale", "dst", dst, True, src=src)
    a = _scalar("scale", alpha, dst.dtype)
    d, s = _flat(dst), _flat(src)
    return _run_streaming(sp, "scale", dst, (d, s, a), (d, s, a),
                          _dense((src, READ), (dst, WRITE)))


def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y[...] = alpha * x + y`` on the device (BLAS argument order).  Returns ``y``."""
    sp = _space_of("axpy", x=x, y=y)
    _numeric("axpy", "y", y)
    _same("axpy", "dtype", y=y, x=x)
    _same("axpy", "shape", y=y, x=x)
    _no_overlap("axpy", "y", y, True, x=x)
    a = _scalar("axpy", alpha, y.dtype)
    yy, xx = _flat(y), _flat(x)
    return _run_streaming(sp, "axpy", y, (yy, xx, a), (yy, a, xx),
                          _dense((x, READ), (y, READ), (y, WRITE)))


def triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float) -> np.ndarray:
    """``a[...] = b + alpha * c`` on the device (STREAM triad).  Returns ``a``."""
    sp = _space_of("triad", a=a, b=b, c=c)
    _numeric("triad", "a", a)
    _same("triad", "dtype", a=a, b=b, c=c)
    _same("triad", "shape", a=a, b=b, c=c)
    _no_overlap("triad", "a", a, True, b=b, c=c)
    s = _scalar("triad", alpha, a.dtype)
    aa, bb, cc = _flat(a), _flat(b), _flat(c)
    return _run_streaming(sp, "triad", a, (aa, bb, cc, s), (aa, bb, cc, s),
                          _dense((b, READ), (c, READ), (a, WRITE)))


# -- reductions -------------------------------------------------------------------------------------------
def sum(x: np.ndarray) -> Any:  # noqa: A001 - mirrors np.sum
    """Sum of every element of ``x`` on the device: a NumPy scalar (float64 accumulation for
    floats, returned in ``x``'s dtype; int64 for integers)."""
    sp = _space_of("sum", x=x)
    _numeric("sum", "x", x)
    K = _kernels()
    xx = _flat(x)
    fn = K.sum_float if x.dtype.kind == "f" else K.sum_int
    out_t = x.dtype.type if x.dtype.kind == "f" else np.int64

    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            return out_t(_on_gpu(sp, "sum", xx)), []
        return out_t(fn(xx)), []
    return execute(sp, "sum", run, _dense((x, READ))).value


def dot(x: np.ndarray, y: np.ndarray) -> Any:
    """``(x * y).sum()`` on the device (same shapes and dtype), as :func:`sum` returns it."""
    sp = _space_of("dot", x=x, y=y)
    _numeric("dot", "x", x)
    _same("dot", "dtype", x=x, y=y)
    _same("dot", "shape", x=x, y=y)
    K = _kernels()
    xx, yy = _flat(x), _flat(y)
    fn = K.dot_float if x.dtype.kind == "f" else K.dot_int
    out_t = x.dtype.type if x.dtype.kind == "f" else np.int64

    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            return out_t(_on_gpu(sp, "dot", xx, yy)), []
        return out_t(fn(xx, yy)), []
    return execute(sp, "dot", run, _dense((x, READ), (y, READ))).value


# -- stencil ------------------------------------------------------------------------------------------------
def stencil5(out: np.ndarray, inp: np.ndarray, center: float = 0.5,
             neighbor: float = 0.125) -> np.ndarray:
    """2-D 5-point stencil with clamped edges (a hotspot-like diffusion step)::

        out[i, j] = center * inp[i, j] + neighbor * (inp[i-1, j] + inp[i+1, j]
                                                     + inp[i, j-1] + inp[i, j+1])

    where an index past an edge reads the edge element.  ``out`` and ``inp``: same 2-D shape
    (non-empty) and float dtype, not overlapping.  Returns ``out``."""
    sp = _space_of("stencil5", out=out, inp=inp)
    _numeric("stencil5", "out", out, "f")
    _same("stencil5", "dtype", out=out, inp=inp)
    _same("stencil5", "shape", out=out, inp=inp)
    if out.ndim != 2 or out.size == 0:
        raise InvalidArgumentError(f"ops.stencil5: needs non-empty 2-D arrays, got shape "
                                   f"{out.shape}")
    _no_overlap("stencil5", "out", out, False, inp=inp)
    cc = _scalar("stencil5", center, out.dtype)
    cn = _scalar("stencil5", neighbor, out.dtype)
    K = _kernels()
    o, i = out.view(np.ndarray), inp.view(np.ndarray)

    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            _on_gpu(sp, "stencil5", o, i, cc, cn)
        else:
            K.stencil5(o, i, cc, cn)
        return out, []
    return execute(sp, "stencil5", run, _dense((inp, READ), (out, WRITE))).value


# -- indexed --------------------------------------------------------------------------------------------------
def gather(out: np.ndarray, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``out[...] = src.flat[idx]`` on the device (``out`` and ``idx`` of one shape; indices
    into the flattened ``src``, ``0 <= idx < src.size``).  The ``src`` accesses are counted per
    page by a histogram of ``idx`` (see :func:`_run_indexed`).  Returns ``out``."""
    sp = _space_of("gather", out=out, src=src, idx=idx)
    _numeric("gather", "out", out)
    _numeric("gather", "idx", idx, "i")
    _same("gather", "dtype", out=out, src=src)
    _same("gather", "shape", out=out, idx=idx)
    _no_overlap("gather", "out", out, False, src=src, idx=idx)
    _precheck_indices(sp, "gather", "idx", idx, src.size, out)
    return _run_indexed(sp, "gather", (out, src, idx), src, idx, out,
                        _dense((idx, READ), (out, WRITE)))


def scatter(dst: np.ndarray, idx: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``dst.flat[idx] = src`` on the device (``idx`` and ``src`` of one shape, indices into the
    flattened ``dst``).  With duplicate indices one of the values lands, unspecified which (as
    on a GPU); NumPy keeps the last.  The ``dst`` accesses are counted per page by a histogram of
    ``idx`` (see :func:`_run_indexed`).  Returns ``dst``."""
    sp = _space_of("scatter", dst=dst, idx=idx, src=src)
    _numeric("scatter", "dst", dst)
    _numeric("scatter", "idx", idx, "i")
    _same("scatter", "dtype", dst=dst, src=src)
    _same("scatter", "shape", idx=idx, src=src)
    _no_overlap("scatter", "dst", dst, False, src=src, idx=idx)
    _precheck_indices(sp, "scatter", "idx", idx, dst.size, dst)
    return _run_indexed(sp, "scatter", (dst, idx, src), dst, idx, dst,
                        _dense((idx, READ), (src, READ)))


def spmv_csr(y: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
             x: np.ndarray) -> np.ndarray:
    """``y[...] = A @ x`` on the device, ``A`` (``len(y)`` x ``len(x)``) in CSR form: row ``r``'s
    nonzeros are ``data[indptr[r]:indptr[r+1]]`` in columns ``indices[...]`` (SciPy's layout).
    ``y``, ``data``, ``x``: 1-D, one float dtype; ``indptr``, ``indices``: 1-D signed integers.
    The ``x`` accesses (one per nonzero) are counted per page by a histogram of ``indices``
    (built before the kernel on the stand-in, by the kernel's counters on a GPU).  Returns
    ``y``."""
    sp = _space_of("spmv_csr", y=y, indptr=indptr, indices=indices, data=data, x=x)
    for n, a in (("y", y), ("indptr", indptr), ("indices", indices), ("data", data), ("x", x)):
        if a.ndim != 1:
            raise InvalidArgumentError(f"ops.spmv_csr: {n} must be 1-D, got shape {a.shape}")
    _numeric("spmv_csr", "y", y, "f")
    _numeric("spmv_csr", "indptr", indptr, "i")
    _numeric("spmv_csr", "indices", indices, "i")
    _same("spmv_csr", "dtype", y=y, data=data, x=x)
    if len(indptr) != len(y) + 1:
        raise InvalidArgumentError(f"ops.spmv_csr: indptr has {len(indptr)} entries, expected "
                                   f"len(y) + 1 = {len(y) + 1}")
    if len(indices) != len(data):
        raise InvalidArgumentError(f"ops.spmv_csr: indices ({len(indices)}) and data "
                                   f"({len(data)}) differ in length")
    ip = indptr.view(np.ndarray)
    _no_overlap("spmv_csr", "y", y, False, indptr=indptr, indices=indices, data=data, x=x)
    K = _kernels()
    yy, ii, dd, xx = (a.view(np.ndarray) for a in (y, indices, data, x))
    nch = _nthreads()

    def pre() -> None:               # the histogram's pass then checks the indices
        if not K.indptr_ok(ip, len(ii), nch):
            raise _status_error("spmv_csr", 1, "indices", ii, len(xx))
    ahead = _Ahead(sp, "spmv_csr", "indices", x, ii, pre)
    if sp.gpu is not None:          # checked on the GPU, without pulling indptr's pages over
        k = sp.gpu.kernels
        k.check_csr(k.b.as_device_array(ip), len(indices))
        _precheck_indices(sp, "spmv_csr", "indices", indices, len(x), y)
    elif not sp.counters.enabled and _drops_duplicates(sp, y):
        # (counted: ahead() checks before anything changes; else the kernel, before any store)
        status = K.csr_status(ip, ii, len(xx), nch)
        if status:
            raise _status_error("spmv_csr", status, "indices", ii, len(xx))
        ahead.checked = True

    def run(counting: bool) -> tuple[Any, list]:
        if sp.gpu is not None:
            return y, _gpu_indexed(sp, "spmv", (yy, ip, ii, dd, xx), x, False, counting)
        status = K.spmv_csr(yy, ip, ii, dd, xx, not ahead.checked, nch)
        if status:
            raise _status_error("spmv_csr", status, "indices", ii, len(xx))
        return y, []
    acc = _dense((indptr, READ), (indices, READ), (data, READ), (y, WRITE)) + \
        [Access(x, READ, "kernel", ahead=ahead if sp.gpu is None else None)]
    return execute(sp, "spmv_csr", run, acc).value

