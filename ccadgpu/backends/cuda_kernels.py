"""The device ops' CUDA sources and launch plans, without CuPy.

The CUDA C sources live in ``ccadgpu/kernels/cuda/`` (``dense.cu``: copy, scale, axpy, triad,
sum, dot; ``stencil.cu``: 5-point 2-D stencil with clamped edges; ``sparse.cu``: gather,
scatter, CSR SpMV; all counting through ``ccad_counters.cuh``).  They are the device versions of
the CPU stand-in's kernels (:mod:`ccadgpu.ops`) and compute the same results.  Every op has a
plain and an instrumented (``counted``) entry point with the same parameters; element types are
float32/float64 for every op and also int32/int64 for the streaming ops, gather and scatter;
indices are int32 or int64::

    ccad_<op>_<f32|f64|i32|i64>[_<i32|i64>]_<plain|counted>

This module turns a call such as ``plan_triad(a, b, c, s, counters)`` into a :class:`Launch`
(entry point name, grid, block, argument tuple) after checking the operands, so the same plan
runs on CuPy (:mod:`ccadgpu.backends.cuda`) or on anything else that can launch the sources.
Arrays are duck-typed (NumPy or CuPy: ``dtype``, ``shape``, ``flags.c_contiguous`` and an
``__array_interface__`` or ``__cuda_array_interface__``); nothing here imports CuPy.

Counters are one :class:`PageCounters` per launch: ``rd``/``wr`` arrays of uint64 bytes per page
of one contiguous range (``base``, ``npages``, ``page_size = 1 << shift``); every counted operand
must lie inside that range.  What is counted is the CPU stand-in's traffic model
(:mod:`ccadgpu.counters`): a dense operand's bytes once per launch, an indexed operand's
element size per access; ``mode`` picks ``"all"``, ``"dense"`` or ``"indexed"`` operands.  See
``ccad_counters.cuh`` for how.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["SOURCE_DIR", "HEADER", "MODULES", "OPS", "FLOAT_TYPES", "INT_TYPES", "INDEX_TYPES",
           "VALUE_TYPES", "COUNT_MODES", "BLOCK",
           "ITEMS", "PageCounters", "Launch", "kernel_name", "kernel_names", "source_files",
           "load_source", "array_address", "plan", "fit_grid"]

SOURCE_DIR = Path(__file__).resolve().parent.parent / "kernels" / "cuda"
HEADER = "ccad_counters.cuh"

# module (file stem) -> ops it defines, and whether the op takes an index type
MODULES: dict[str, tuple[str, ...]] = {
    "dense": ("copy", "scale", "axpy", "triad", "sum", "dot"),
    "stencil": ("stencil5",),
    "sparse": ("gather", "scatter", "spmv"),
}
OPS: dict[str, str] = {op: mod for mod, ops in MODULES.items() for op in ops}
INDEXED_OPS = frozenset(MODULES["sparse"])
FLOAT_TYPES: dict[np.dtype, str] = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
INT_TYPES: dict[np.dtype, str] = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
INDEX_TYPES: dict[np.dtype, str] = dict(INT_TYPES)
#: element types each op is built for
VALUE_TYPES: dict[str, dict[np.dtype, str]] = {
    op: ({**FLOAT_TYPES} if op in ("stencil5", "spmv") else {**FLOAT_TYPES, **INT_TYPES})
    for op in OPS}
#: which operands of each op are indexed (counted per access); the others are dense
INDEXED_OPERANDS: dict[str, frozenset[str]] = {
    "gather": frozenset({"x"}), "scatter": frozenset({"y"}), "spmv": frozenset({"x"})}
COUNT_DENSE, COUNT_INDEXED = 1, 2      # CCAD_COUNT_DENSE / CCAD_COUNT_INDEXED
COUNT_MODES = {"all": COUNT_DENSE | COUNT_INDEXED, "dense": COUNT_DENSE,
               "indexed": COUNT_INDEXED}

BLOCK = 256            # threads per block of the 1-D kernels (a multiple of 32)
ITEMS = 8              # CCAD_ITEMS in ccad_counters.cuh: elements per thread per tile
STENCIL_BLOCK = (32, 8, 1)
DEFAULT_MAX_BLOCKS = 4096


def kernel_name(op: str, dtype: Any, counted: bool, index_dtype: Any = None) -> str:
    """Entry point name, e.g. ``kernel_name("gather", "float64", True, "int64")`` ->
    ``"ccad_gather_f64_i64_counted"``."""
    if op not in OPS:
        raise InvalidArgumentError(f"unknown device op {op!r}; ops are {sorted(OPS)}")
    sfx = _value_sfx(dtype, op)
    parts = ["ccad", op, sfx]
    if op in INDEXED_OPS:
        parts.append(_index_sfx(index_dtype, op))
    parts.append("counted" if counted else "plain")
    return "_".join(parts)


def kernel_names(module: str | None = None) -> list[str]:
    """Every entry point the sources must define (of one module, or all)."""
    out = []
    for mod, ops in MODULES.items():
        if module is not None and mod != module:
            continue
        for op in ops:
            for dt in VALUE_TYPES[op]:
                idx: Iterable[Any] = INDEX_TYPES if op in INDEXED_OPS else (None,)
                for it in idx:
                    for counted in (False, True):
                        out.append(kernel_name(op, dt, counted, it))
    return out


def source_files() -> list[Path]:
    """The ``.cu`` files, one per module."""
    return [SOURCE_DIR / f"{m}.cu" for m in MODULES]


_INCLUDE = re.compile(r'^\s*#\s*include\s+"' + re.escape(HEADER) + r'"\s*$', re.M)


def load_source(module: str) -> str:
    """The text of ``<module>.cu`` with the counting header inlined, so that a compiler cache
    keyed on the text (CuPy's) sees header changes, and no include path is needed."""
    if module not in MODULES:
        raise InvalidArgumentError(f"unknown kernel module {module!r}; modules are "
                                   f"{sorted(MODULES)}")
    header = (SOURCE_DIR / HEADER).read_text()
    header = re.sub(r"^\s*#\s*pragma\s+once\s*$", "", header, flags=re.M)
    text = (SOURCE_DIR / f"{module}.cu").read_text()
    out, n = _INCLUDE.subn(lambda _m: header, text, count=1)
    if n != 1:
        raise RuntimeError(f"{module}.cu does not include {HEADER}")
    return out


# -- operands ----------------------------------------------------------------------------------

def array_address(a: Any) -> int:
    """Address of the first element of a NumPy or CuPy array (or anything with an array
    interface)."""
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:
        iface = getattr(a, "__array_interface__", None)
    if iface is None:
        raise InvalidArgumentError(f"expected an array, got {type(a).__name__}")
    return int(iface["data"][0])


def _value_sfx(dtype: Any, op: str) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidArgumentError(f"{op}: invalid dtype {dtype!r}") from exc
    types = VALUE_TYPES.get(op, FLOAT_TYPES)
    if dt not in types:
        names = ", ".join(str(t) for t in types)
        raise InvalidArgumentError(f"{op}: the device kernels take {names} arrays, got {dt}")
    return types[dt]


def _index_sfx(dtype: Any, what: str) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidArgumentError(f"{what}: invalid index dtype {dtype!r}") from exc
    if dt not in INDEX_TYPES:
        raise InvalidArgumentError(f"{what}: indices must be int32 or int64, got {dt}")
    return INDEX_TYPES[dt]


def _check_array(name: str, a: Any, ndim: int | None = 1) -> None:
    for attr in ("dtype", "shape", "flags", "nbytes"):
        if not hasattr(a, attr):
            raise InvalidArgumentError(f"{name} must be a NumPy or CuPy array, got "
                                       f"{type(a).__name__}")
    if ndim is not None and len(a.shape) != ndim:
        raise InvalidArgumentError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{name} must be C-contiguous (device ops take whole "
                                   "contiguous arrays; copy a strided view first)")
    addr = array_address(a)
    if a.dtype.itemsize and addr % a.dtype.itemsize:
        raise InvalidArgumentError(f"{name} is not aligned to its {a.dtype.itemsize}-byte "
                                   "elements")


def _same_dtype(op: str, **arrays: Any) -> np.dtype:
    dts = {k: np.dtype(v.dtype) for k, v in arrays.items()}
    first = next(iter(dts.values()))
    if any(d != first for d in dts.values()):
        desc = ", ".join(f"{k}={d}" for k, d in dts.items())
        raise InvalidArgumentError(f"{op}: operands must share one dtype, got {desc}")
    _value_sfx(first, op)
    return first


def _size(a: Any) -> int:
    return int(np.prod(a.shape, dtype=np.int64)) if len(a.shape) else 1


def _overlap(a: Any, b: Any) -> bool:
    a0, b0 = array_address(a), array_address(b)
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes and a.nbytes > 0 and b.nbytes > 0


def _no_partial_overlap(op: str, **arrays: Any) -> None:
    """Element-wise ops may run in place (the very same array twice) but not on shifted
    views of one buffer: threads would read elements that others already wrote."""
    items = list(arrays.items())
    for i, (na, a) in enumerate(items):
        for nb, b in items[i + 1:]:
            if _overlap(a, b) and (array_address(a) != array_address(b) or a.nbytes != b.nbytes):
                raise InvalidArgumentError(f"{op}: {na} and {nb} overlap partially (the very "
                                           "same array is allowed)")


# -- counters ----------------------------------------------------------------------------------

@dataclass
class PageCounters:
    """Per-page byte counters for one contiguous range: ``rd[p]`` / ``wr[p]`` are the bytes
    read / written in page ``p``, i.e. addresses ``[base + p * page_size, base + (p + 1) *
    page_size)``.  ``rd`` and ``wr`` are uint64 arrays the kernels can reach (CuPy device
    arrays on a GPU); kernels add to them, :meth:`clear` is the caller's.  ``mode``:
    ``"all"`` counts every operand, ``"dense"`` only the swept ones, ``"indexed"`` only the
    per-access ones (gather's source, scatter's destination, SpMV's x), e.g. when the host
    prices dense operands arithmetically."""
    rd: Any
    wr: Any
    base: int
    shift: int
    mode: str = "all"

    def __post_init__(self) -> None:
        for name in ("rd", "wr"):
            a = getattr(self, name)
            _check_array(f"counters.{name}", a)
            if np.dtype(a.dtype) != np.uint64:
                raise InvalidArgumentError(f"counters.{name} must be uint64, got {a.dtype}")
        if _size(self.rd) != _size(self.wr):
            raise InvalidArgumentError(f"counters.rd and counters.wr differ in length "
                                       f"({_size(self.rd)} vs {_size(self.wr)})")
        if not isinstance(self.shift, (int, np.integer)) or not 0 <= int(self.shift) <= 40:
            raise InvalidArgumentError(f"counters.shift must be an int in [0, 40] (page size "
                                       f"1 B .. 1 TiB), got {self.shift!r}")
        if not isinstance(self.base, (int, np.integer)) or int(self.base) < 0:
            raise InvalidArgumentError(f"counters.base must be a non-negative address, got "
                                       f"{self.base!r}")
        if self.mode not in COUNT_MODES:
            raise InvalidArgumentError(f"counters.mode must be one of {sorted(COUNT_MODES)}, "
                                       f"got {self.mode!r}")
        self.base, self.shift = int(self.base), int(self.shift)

    @property
    def npages(self) -> int:
        return _size(self.rd)

    @property
    def page_size(self) -> int:
        return 1 << self.shift

    @property
    def end(self) -> int:
        return self.base + (self.npages << self.shift)

    def covers(self, a: Any) -> bool:
        """Whether every byte of array ``a`` lies in the counted range."""
        lo = array_address(a)
        return self.base <= lo and lo + a.nbytes <= self.end

    @property
    def flags(self) -> int:
        return COUNT_MODES[self.mode]

    def counts(self, op: str, operand: str) -> bool:
        """Whether ``operand`` of ``op`` is counted in this mode."""
        indexed = operand in INDEXED_OPERANDS.get(op, ())
        return bool(self.flags & (COUNT_INDEXED if indexed else COUNT_DENSE))

    def args(self) -> tuple:
        return (self.rd, self.wr, np.uint64(self.base), np.uint64(self.npages),
                np.uint32(self.shift), np.uint32(self.flags))

    def clear(self) -> None:
        self.rd.fill(0)
        self.wr.fill(0)


_NO_COUNTERS = (np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0), np.uint32(0),
                np.uint32(0))


def _counter_args(op: str, counters: PageCounters | None, **operands: Any) -> tuple:
    if counters is None:
        return _NO_COUNTERS
    if not isinstance(counters, PageCounters):
        raise InvalidArgumentError(f"{op}: counters must be a PageCounters or None, got "
                                   f"{type(counters).__name__}")
    for name, a in operands.items():
        if a.nbytes and counters.counts(op, name) and not counters.covers(a):
            lo = array_address(a)
            raise InvalidArgumentError(
                f"{op}: operand {name} [{lo:#x}, {lo + a.nbytes:#x}) lies outside the counted "
                f"range [{counters.base:#x}, {counters.end:#x}); counters cover one managed "
                "range and every operand must live in it")
    return counters.args()


# -- launch plans ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``module`` (source file stem), entry ``name``, ``grid`` and
    ``block`` (3-tuples) and ``args`` (arrays and NumPy scalars, in parameter order)."""
    module: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple


def fit_grid(grid: tuple[int, int, int], resident: int) -> tuple[int, int, int]:
    """``grid`` cut to at most ``resident`` blocks (what the GPU holds at once), the last
    dimensions first.  Every kernel here strides over its work by the grid's size, so any grid
    computes the same; one that is larger than a wave runs a second, mostly idle one.  The
    counted kernels need more registers than the plain ones (6 resident blocks of 256 threads
    per SM instead of 8 on an H100), so a grid of 8 per SM cost counted SpMV 1.11x its plain
    kernel where one wave costs 1.02x (benchmarks/gpu_variants.py)."""
    gx, gy, gz = (max(1, int(g)) for g in grid)
    cap = max(1, int(resident))
    gz = max(1, min(gz, cap // (gx * gy))) if gx * gy <= cap else 1
    gy = max(1, min(gy, cap // gx)) if gx <= cap else 1
    return (min(gx, cap), gy, gz)


def _dense_grid(n: int, max_blocks: int) -> tuple[int, int, int]:
    tiles = -(-n // (BLOCK * ITEMS))
    return (max(1, min(tiles, max_blocks)), 1, 1)


def _scalar(dt: np.dtype, v: Any, name: str) -> Any:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise InvalidArgumentError(f"{name} must be a real number, got {v!r}")
    if dt.kind == "i" and not float(v).is_integer():
        raise InvalidArgumentError(f"{name} = {v!r} is not an integer, and the arrays are {dt}")
    return dt.type(v)


def plan(op: str, *arrays: Any, counters: PageCounters | None = None,
         max_blocks: int = DEFAULT_MAX_BLOCKS, **scalars: Any) -> Launch | None:
    """The launch for ``op`` (None when there is nothing to do, e.g. zero elements).

    Operands, outputs first, as the entry points take them:

    ========  ==========================================  ================
    op        arrays                                      scalars
    ========  ==========================================  ================
    copy      y, x                                        -
    scale     y, x                (y = a * x)             a
    axpy      y, x                (y = a * x + y)         a
    triad     a, b, c             (a = b + s * c)         s
    sum       out, x              (out[0] += sum(x))      -
    dot       out, x, y           (out[0] += x . y)       -
    stencil5  out, inp  (2-D, clamped edges)              center, neighbor
    gather    y, x, idx           (y = x[idx])            bad
    scatter   y, idx, x           (y[idx] = x)            bad
    spmv      y, indptr, indices, data, x                 bad
    ========  ==========================================  ================

    ``out`` of sum/dot is a 1-element accumulator the caller zeroes: float64 for float
    inputs, int64 for integer inputs.  Scalars are cast to the arrays' dtype.  The stencil
    computes ``out = center * inp + neighbor * (up + down + left + right)``, an index past an
    edge reading the edge element (as :func:`ccadgpu.ops.stencil5`).  Index values are not
    checked here (that needs a pass over the data; :class:`~ccadgpu.backends.cuda.CudaKernels`
    does it); the kernels skip one out of range all the same, and flag it in ``bad`` (an
    optional 1-element uint32 array the caller zeroes)."""
    if op not in OPS:
        raise InvalidArgumentError(f"unknown device op {op!r}; ops are {sorted(OPS)}")
    if not isinstance(max_blocks, int) or max_blocks < 1:
        raise InvalidArgumentError(f"max_blocks must be a positive int, got {max_blocks!r}")
    fn = _PLANNERS[op]
    try:
        return fn(*arrays, counters=counters, max_blocks=max_blocks, **scalars)
    except TypeError as exc:
        raise InvalidArgumentError(f"{op}: {exc}") from exc


def _plan_copy(y: Any, x: Any, *, counters: PageCounters | None, max_blocks: int) -> Launch | None:
    _check_array("y", y, None)
    _check_array("x", x, None)
    dt = _same_dtype("copy", y=y, x=x)
    n = _size(x)
    if _size(y) != n:
        raise InvalidArgumentError(f"copy: y has {_size(y)} elements, x has {n}")
    _no_partial_overlap("copy", y=y, x=x)
    cnt = _counter_args("copy", counters, y=y, x=x)
    if n == 0:
        return None
    return Launch("dense", kernel_name("copy", dt, counters is not None), _dense_grid(n, max_blocks),
                  (BLOCK, 1, 1), (y, x, np.int64(n), *cnt))


def _plan_scale_like(op: str):
    def planner(y: Any, x: Any, *, a: Any, counters: PageCounters | None,
                max_blocks: int) -> Launch | None:
        _check_array("y", y, None)
        _check_array("x", x, None)
        dt = _same_dtype(op, y=y, x=x)
        n = _size(x)
        if _size(y) != n:
            raise InvalidArgumentError(f"{op}: y has {_size(y)} elements, x has {n}")
        _no_partial_overlap(op, y=y, x=x)
        cnt = _counter_args(op, counters, y=y, x=x)
        if n == 0:
            return None
        return Launch("dense", kernel_name(op, dt, counters is not None),
                      _dense_grid(n, max_blocks), (BLOCK, 1, 1),
                      (y, x, _scalar(dt, a, "a"), np.int64(n), *cnt))
    return planner


def _plan_triad(a: Any, b: Any, c: Any, *, s: Any, counters: PageCounters | None,
                max_blocks: int) -> Launch | None:
    for name, arr in (("a", a), ("b", b), ("c", c)):
        _check_array(name, arr, None)
    dt = _same_dtype("triad", a=a, b=b, c=c)
    n = _size(a)
    if _size(b) != n or _size(c) != n:
        raise InvalidArgumentError(f"triad: a, b, c must have the same length, got "
                                   f"{n}, {_size(b)}, {_size(c)}")
    _no_partial_overlap("triad", a=a, b=b, c=c)
    cnt = _counter_args("triad", counters, a=a, b=b, c=c)
    if n == 0:
        return None
    return Launch("dense", kernel_name("triad", dt, counters is not None),
                  _dense_grid(n, max_blocks), (BLOCK, 1, 1),
                  (a, b, c, _scalar(dt, s, "s"), np.int64(n), *cnt))


def _acc_dtype(dt: np.dtype) -> np.dtype:
    """The accumulator (and ``out``) dtype of sum/dot: float64 for floats, int64 for ints."""
    return np.dtype(np.int64) if dt.kind == "i" else np.dtype(np.float64)


def _check_out(op: str, out: Any, dt: np.dtype) -> None:
    _check_array("out", out, None)
    want = _acc_dtype(dt)
    if np.dtype(out.dtype) != want or _size(out) < 1:
        raise InvalidArgumentError(f"{op}: out must be a {want} array of at least one element "
                                   f"(the accumulator for {dt} input), got {out.dtype} of "
                                   f"shape {tuple(out.shape)}")


def _plan_sum(out: Any, x: Any, *, counters: PageCounters | None,
              max_blocks: int) -> Launch | None:
    _check_array("x", x, None)
    dt = _same_dtype("sum", x=x)
    _check_out("sum", out, dt)
    n = _size(x)
    cnt = _counter_args("sum", counters, x=x)
    if n == 0:
        return None
    return Launch("dense", kernel_name("sum", dt, counters is not None),
                  _dense_grid(n, max_blocks), (BLOCK, 1, 1), (out, x, np.int64(n), *cnt))


def _plan_dot(out: Any, x: Any, y: Any, *, counters: PageCounters | None,
              max_blocks: int) -> Launch | None:
    _check_array("x", x, None)
    _check_array("y", y, None)
    dt = _same_dtype("dot", x=x, y=y)
    _check_out("dot", out, dt)
    n = _size(x)
    if _size(y) != n:
        raise InvalidArgumentError(f"dot: x has {n} elements, y has {_size(y)}")
    cnt = _counter_args("dot", counters, x=x, y=y)
    if n == 0:
        return None
    return Launch("dense", kernel_name("dot", dt, counters is not None),
                  _dense_grid(n, max_blocks), (BLOCK, 1, 1), (out, x, y, np.int64(n), *cnt))


def _plan_stencil5(out: Any, inp: Any, *, center: Any = 0.5, neighbor: Any = 0.125,
                   counters: PageCounters | None, max_blocks: int) -> Launch | None:
    _check_array("out", out, 2)
    _check_array("inp", inp, 2)
    dt = _same_dtype("stencil5", out=out, inp=inp)
    if tuple(out.shape) != tuple(inp.shape):
        raise InvalidArgumentError(f"stencil5: out {tuple(out.shape)} and inp "
                                   f"{tuple(inp.shape)} differ in shape")
    if _overlap(out, inp):
        raise InvalidArgumentError("stencil5: out and inp overlap; the stencil reads "
                                   "neighbours, so it cannot run in place")
    ny, nx = (int(s) for s in inp.shape)
    cnt = _counter_args("stencil5", counters, out=out, inp=inp)
    if nx == 0 or ny == 0:
        return None
    bx, by, _ = STENCIL_BLOCK
    gx = max(1, min(-(-nx // bx), 1024))
    gy = max(1, min(-(-ny // by), max(1, max_blocks // gx), 65535))
    return Launch("stencil", kernel_name("stencil5", dt, counters is not None), (gx, gy, 1),
                  STENCIL_BLOCK, (out, inp, np.int64(nx), np.int64(ny),
                                  _scalar(dt, center, "center"),
                                  _scalar(dt, neighbor, "neighbor"), *cnt))


def _bad_arg(op: str, bad: Any) -> Any:
    """The kernels' ``bad`` argument: a uint32 array whose first element the kernel sets to 1
    when it found an index out of range and skipped it (the launcher checked them first: they
    changed meanwhile), or None (a null pointer: only skipped)."""
    if bad is None:
        return np.uint64(0)
    _check_array("bad", bad)
    if np.dtype(bad.dtype) != np.uint32 or _size(bad) < 1:
        raise InvalidArgumentError(f"{op}: bad must be a uint32 array of at least one element, "
                                   f"got {bad.dtype} of shape {tuple(bad.shape)}")
    return bad


def _plan_indexed(op: str, y: Any, x: Any, idx: Any, *, counters: PageCounters | None,
                  max_blocks: int, bad: Any = None) -> Launch | None:
    """gather (``y = x[idx]``, kernel arguments ``y, x, idx``) and scatter (``y[idx] = x``,
    arguments ``y, idx, x``): ``idx`` and the dense operand have one size."""
    named = ((("y", y), ("x", x), ("idx", idx)) if op == "gather" else
             (("y", y), ("idx", idx), ("x", x)))
    for name, arr in named:
        _check_array(name, arr)
    dt = _same_dtype(op, y=y, x=x)
    n = _size(idx)
    dname, dense = ("y", y) if op == "gather" else ("x", x)
    if _size(dense) != n:
        raise InvalidArgumentError(f"{op}: {dname} has {_size(dense)} elements, idx has {n}")
    if _overlap(y, x):
        raise InvalidArgumentError(f"{op}: y and x overlap")
    cnt = _counter_args(op, counters, **dict(named))
    flag = _bad_arg(op, bad)
    if n == 0:
        return None
    nsrc = _size(x) if op == "gather" else _size(y)
    return Launch("sparse", kernel_name(op, dt, counters is not None, idx.dtype),
                  _dense_grid(n, max_blocks), (BLOCK, 1, 1),
                  (*(a for _, a in named), np.int64(n), np.int64(nsrc), flag, *cnt))


def _plan_gather(y: Any, x: Any, idx: Any, **kw: Any) -> Launch | None:
    return _plan_indexed("gather", y, x, idx, **kw)


def _plan_scatter(y: Any, idx: Any, x: Any, **kw: Any) -> Launch | None:
    return _plan_indexed("scatter", y, x, idx, **kw)


def _plan_spmv(y: Any, indptr: Any, indices: Any, data: Any, x: Any, *,
               counters: PageCounters | None, max_blocks: int, bad: Any = None
               ) -> Launch | None:
    for name, arr in (("y", y), ("indptr", indptr), ("indices", indices), ("data", data),
                      ("x", x)):
        _check_array(name, arr)
    dt = _same_dtype("spmv", y=y, data=data, x=x)
    if np.dtype(indptr.dtype) != np.dtype(indices.dtype):
        raise InvalidArgumentError(f"spmv: indptr ({indptr.dtype}) and indices "
                                   f"({indices.dtype}) must share one index dtype")
    nrows = _size(y)
    if _size(indptr) != nrows + 1:
        raise InvalidArgumentError(f"spmv: indptr must have len(y) + 1 = {nrows + 1} "
                                   f"entries, got {_size(indptr)}")
    if _size(indices) != _size(data):
        raise InvalidArgumentError(f"spmv: indices ({_size(indices)}) and data "
                                   f"({_size(data)}) differ in length")
    if _overlap(y, x):
        raise InvalidArgumentError("spmv: y and x overlap")
    cnt = _counter_args("spmv", counters, y=y, indptr=indptr, indices=indices, data=data, x=x)
    flag = _bad_arg("spmv", bad)
    if nrows == 0:
        return None
    warps_per_block = BLOCK // 32
    grid = max(1, min(-(-nrows // warps_per_block), max_blocks))
    return Launch("sparse", kernel_name("spmv", dt, counters is not None, indptr.dtype),
                  (grid, 1, 1), (BLOCK, 1, 1),
                  (y, indptr, indices, data, x, np.int64(nrows), np.int64(_size(indices)),
                   np.int64(_size(x)), flag, *cnt))


_PLANNERS = {
    "copy": _plan_copy,
    "scale": _plan_scale_like("scale"),
    "axpy": _plan_scale_like("axpy"),
    "triad": _plan_triad,
    "sum": _plan_sum,
    "dot": _plan_dot,
    "stencil5": _plan_stencil5,
    "gather": _plan_gather,
    "scatter": _plan_scatter,
    "spmv": _plan_spmv,
}
