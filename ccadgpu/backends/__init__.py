"""Backends: where the emulated device's memory and kernels live.

* ``cpu``: the CPU stand-in (memfd arenas remapped in place, Numba kernels); works everywhere.
* ``cuda``: a real GPU through CuPy managed memory (:mod:`ccadgpu.backends.cuda`).

:func:`select_backend` decides which one a :class:`~ccadgpu.Space` gets and says why::

    >>> from ccadgpu.backends import select_backend
    >>> choice = select_backend("auto")
    >>> choice.name in ("cpu", "cuda") and bool(choice.reason)
    True

``"auto"`` (the default) picks ``cuda`` when CuPy imports and a GPU is usable, else ``cpu``; the
environment variable ``CCADGPU_BACKEND`` (``auto``, ``cpu`` or ``cuda``) overrides ``"auto"``.
Asking for ``cuda`` explicitly where it cannot work raises :class:`BackendUnavailableError`,
whose message says why and how to install the GPU extra.

Importing this package (or ``ccadgpu``) never imports CuPy: the probe imports it on first use,
never raises, and caches its answer (:func:`clear_probe_cache` forgets it).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["BackendChoice", "BackendUnavailableError", "CudaProbe", "ENV_VAR", "BACKENDS",
           "select_backend", "probe_cuda", "clear_probe_cache", "INSTALL_HINT"]

ENV_VAR = "CCADGPU_BACKEND"
BACKENDS = ("cpu", "cuda")
INSTALL_HINT = ("install the GPU extra matching your CUDA driver: pip install -e '.[cuda12]' "
                "(CUDA 12.x) or pip install -e '.[cuda13]' (CUDA 13.x); it brings CuPy and "
                "nvidia-ml-py")

# cudaDeviceAttr values (driver_types.h); stable across CUDA 11-13.
_ATTR_MANAGED_MEMORY = 83
_ATTR_CONCURRENT_MANAGED_ACCESS = 89


class BackendUnavailableError(InvalidArgumentError):
    """The backend that was asked for explicitly cannot run here (the message says why and how
    to fix it).  A subclass of InvalidArgumentError, so that a bad ``backend=`` argument and an
    impossible one are caught alike, and nothing is changed."""


@dataclass(frozen=True)
class CudaProbe:
    """What the CUDA probe found.  ``usable`` is the verdict, ``reason`` says why in one line;
    the other fields are filled as far as the probe got (None where it did not)."""
    usable: bool
    reason: str
    cupy_version: str | None = None
    device_count: int | None = None
    device_name: str | None = None
    compute_capability: str | None = None
    runtime_version: int | None = None
    driver_version: int | None = None
    total_memory: int | None = None


@dataclass(frozen=True)
class BackendChoice:
    """The backend picked by :func:`select_backend` and why.

    ``name`` is ``"cpu"`` or ``"cuda"``; ``reason`` is a sentence for ``ccadgpu info``;
    ``requested`` is what was asked (after the environment override); ``source`` says where
    the request came from: ``"argument"``, ``"env"`` (``CCADGPU_BACKEND``) or ``"default"``."""
    name: str
    reason: str
    requested: str = "auto"
    source: str = "default"
    probe: CudaProbe | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


_probe_lock = threading.Lock()
_probe_cache: CudaProbe | None = None


def clear_probe_cache() -> None:
    """Forget the cached CUDA probe (tests; or after installing CuPy in a running process)."""
    global _probe_cache
    with _probe_lock:
        _probe_cache = None


def probe_cuda(refresh: bool = False) -> CudaProbe:
    """Can the ``cuda`` backend run here?  Imports CuPy lazily, asks the runtime for a device
    with managed memory that the CPU may access concurrently, and never raises.  The answer is
    cached for the life of the process (``refresh=True`` asks again).

    It creates no CUDA context and allocates nothing: device count and attributes are queries
    the runtime answers without one."""
    global _probe_cache
    with _probe_lock:
        if _probe_cache is None or refresh:
            try:
                _probe_cache = _probe_cuda_uncached()
            except BaseException as exc:  # noqa: BLE001 - the probe must never take the caller down
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                _probe_cache = CudaProbe(False, f"CUDA probe failed: {_one_line(exc)}")
        return _probe_cache


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _probe_cuda_uncached() -> CudaProbe:
    # A module already in sys.modules (possibly a test double, or None to mean "blocked") is
    # used as is; otherwise look before importing, so "not installed" is told apart from
    # "installed but broken".
    if "cupy" in sys.modules:
        if sys.modules["cupy"] is None:       # import deliberately blocked
            return CudaProbe(False, "CuPy not installed")
    elif importlib.util.find_spec("cupy") is None:
        return CudaProbe(False, "CuPy not installed")
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        return CudaProbe(False, f"CuPy failed to import ({_one_line(exc)})")
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA library that fails to load
        return CudaProbe(False, f"CuPy failed to import ({_one_line(exc)})")
    version = str(getattr(cupy, "__version__", "unknown"))
    try:
        rt = cupy.cuda.runtime
    except Exception as exc:  # noqa: BLE001
        return CudaProbe(False, f"CuPy has no CUDA runtime ({_one_line(exc)})", cupy_version=version)
    if getattr(rt, "is_hip", False):
        return CudaProbe(False, "CuPy is built for ROCm/HIP; the cuda backend needs CUDA",
                         cupy_version=version)
    try:
        count = int(rt.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and friends
        text = _one_line(exc)
        if "NoDevice" in text or "no CUDA-capable device" in text:
            return CudaProbe(False, "no CUDA device visible", cupy_version=version, device_count=0)
        return CudaProbe(False, f"CUDA driver error: {text}", cupy_version=version)
    if count <= 0:
        return CudaProbe(False, "no CUDA device visible", cupy_version=version, device_count=0)
    info: dict[str, Any] = {"cupy_version": version, "device_count": count}
    try:
        info["runtime_version"] = int(rt.runtimeGetVersion())
        info["driver_version"] = int(rt.driverGetVersion())
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        props = rt.getDeviceProperties(0)
        name = props.get("name", b"")
        info["device_name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props.get('major')}.{props.get('minor')}"
        info["total_memory"] = int(props.get("totalGlobalMem", 0)) or None
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        managed = int(rt.deviceGetAttribute(_ATTR_MANAGED_MEMORY, 0))
        concurrent = int(rt.deviceGetAttribute(_ATTR_CONCURRENT_MANAGED_ACCESS, 0))
    except Exception as exc:  # noqa: BLE001
        return CudaProbe(False, f"CUDA driver error: {_one_line(exc)}", **info)
    if not managed:
        return CudaProbe(False, "the GPU cannot allocate managed memory on this system", **info)
    if not concurrent:
        # Without it (Windows, WSL, pre-Pascal GPUs) a CPU touch of managed memory while a
        # kernel runs is a segfault, and prefetch/advise do nothing: no coherent emulation.
        return CudaProbe(False, "the GPU lacks concurrent managed access (CPU and GPU cannot "
                         "share managed memory safely here, e.g. WSL or Windows)", **info)
    cc = info.get("compute_capability")
    if cc is not None:
        try:
            if int(str(cc).split(".")[0]) < 7:
                return CudaProbe(False, f"compute capability {cc} < 7.0 (the instrumented "
                                 "kernels need __match_any_sync)", **info)
        except ValueError:
            pass
    name = info.get("device_name") or "GPU 0"
    return CudaProbe(True, f"CuPy {version}, {name}", **info)


def _normalise(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, one of 'auto', 'cpu', 'cuda'; "
                                   f"got {value!r}")
    v = value.strip().lower()
    if v not in ("auto", *BACKENDS):
        raise InvalidArgumentError(f"unknown backend {value!r} ({what}); use 'auto', 'cpu' or "
                                   "'cuda'")
    return v


def select_backend(requested: str = "auto") -> BackendChoice:
    """Pick the backend for ``requested`` (``"auto"``, ``"cpu"`` or ``"cuda"``).

    ``"auto"`` defers to ``CCADGPU_BACKEND`` when it is set (and not empty), then to the probe:
    ``cuda`` when usable, else ``cpu`` with the probe's reason.  An explicit ``"cuda"`` (from
    the argument or the environment) that cannot run raises
    :class:`BackendUnavailableError`; an unknown name raises
    :class:`~ccadgpu.errors.InvalidArgumentError`."""
    req = _normalise(requested, "backend")
    source = "argument" if req != "auto" else "default"
    if req == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            req = _normalise(env, f"environment variable {ENV_VAR}")
            source = "env"
    if req == "cpu":
        why = "CPU stand-in; selected by " + ("CCADGPU_BACKEND=cpu" if source == "env"
                                               else "backend='cpu'")
        return BackendChoice("cpu", why, "cpu", source)
    probe = probe_cuda()
    if req == "cuda":
        if not probe.usable:
            origin = f"{ENV_VAR}=cuda" if source == "env" else "backend='cuda'"
            raise BackendUnavailableError(
                f"{origin} was requested but the cuda backend cannot run here: {probe.reason}. "
                f"To use a GPU, {INSTALL_HINT}; or use backend='cpu' (or 'auto').")
        by = f"{ENV_VAR}=cuda" if source == "env" else "backend='cuda'"
        return BackendChoice("cuda", f"{probe.reason}; selected by {by}", "cuda", source, probe)
    if probe.usable:
        return BackendChoice("cuda", f"auto: GPU usable ({probe.reason})", "auto", source, probe)
    return BackendChoice("cpu", f"auto: no usable GPU ({probe.reason})", "auto", source, probe)
