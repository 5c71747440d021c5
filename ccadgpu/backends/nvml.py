"""A small NVML wrapper (``pynvml`` from the ``nvidia-ml-py`` package), for reports only.

Everything here degrades instead of failing: :func:`gpu_info` returns ``None`` when pynvml is
missing or NVML cannot start (no driver, a container without the library), and each field is
``None`` when the GPU or driver does not support that query (PCIe counters on vGPU, utilisation
on some data-centre parts in MIG mode, ...).  Nothing in this module raises.

NVML numbers devices in its own order (all GPUs, ignoring ``CUDA_VISIBLE_DEVICES``); pass
``pci_bus_id`` (as ``cupy.cuda.runtime.deviceGetPCIBusId(dev)`` gives it) to be sure to describe
the GPU that CUDA calls ``dev``.

This module only reads: it never changes clocks, power limits, MIG or any other setting.
"""
from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any, Callable

__all__ = ["gpu_info", "pcie_throughput", "PcieSampler", "available"]


def _pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except Exception:  # noqa: BLE001 - ImportError, or a broken install
        return None


def available() -> bool:
    """Whether pynvml imports and NVML initialises."""
    nv = _pynvml()
    if nv is None:
        return False
    try:
        nv.nvmlInit()
    except Exception:  # noqa: BLE001
        return False
    _shutdown(nv)
    return True


def _shutdown(nv: ModuleType) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:  # noqa: BLE001
        pass


def _q(fn: Callable[[], Any]) -> Any:
    """The value of one NVML query, or None if it is unsupported or fails."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends
        return None


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):          # older pynvml returns bytes
        return v.decode(errors="replace")
    return str(v)


def _handle(nv: ModuleType, index: int, pci_bus_id: str | None) -> Any:
    if pci_bus_id:
        bus = pci_bus_id.encode() if not isinstance(pci_bus_id, bytes) else pci_bus_id
        try:
            return nv.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:  # noqa: BLE001 - some versions want str
            return nv.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
    return nv.nvmlDeviceGetHandleByIndex(index)


def gpu_info(index: int = 0, pci_bus_id: str | None = None) -> dict[str, Any] | None:
    """One GPU's identity, memory, PCIe and utilisation, or None if NVML is unavailable.

    Keys (each None when unsupported): ``name``, ``uuid``, ``pci_bus_id``, ``driver_version``
    (str), ``cuda_driver_version`` (int, e.g. 12040), ``memory_total``, ``memory_free``,
    ``memory_used`` (bytes), ``pcie_tx_kbps``, ``pcie_rx_kbps`` (KB/s over NVML's 20 ms
    window; tx = GPU to host), ``pcie_link_gen``, ``pcie_link_width`` (current),
    ``pcie_link_gen_max``, ``pcie_link_width_max``, ``utilization_gpu``,
    ``utilization_memory`` (percent), ``temperature_c``."""
    nv = _pynvml()
    if nv is None:
        return None
    try:
        nv.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / library
        return None
    try:
        try:
            h = _handle(nv, index, pci_bus_id)
        except Exception:  # noqa: BLE001 - no such device
            return None
        mem = _q(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        util = _q(lambda: nv.nvmlDeviceGetUtilizationRates(h))
        pci = _q(lambda: nv.nvmlDeviceGetPciInfo(h))
        tx_id = getattr(nv, "NVML_PCIE_UTIL_TX_BYTES", 0)
        rx_id = getattr(nv, "NVML_PCIE_UTIL_RX_BYTES", 1)
        temp_id = getattr(nv, "NVML_TEMPERATURE_GPU", 0)
        info: dict[str, Any] = {
            "index": index,
            "name": _text(_q(lambda: nv.nvmlDeviceGetName(h))),
            "uuid": _text(_q(lambda: nv.nvmlDeviceGetUUID(h))),
            "pci_bus_id": _text(getattr(pci, "busId", None)) if pci is not None else None,
            "driver_version": _text(_q(nv.nvmlSystemGetDriverVersion)),
            "cuda_driver_version": _q(lambda: int(nv.nvmlSystemGetCudaDriverVersion())),
            "memory_total": _q(lambda: int(mem.total)) if mem is not None else None,
            "memory_free": _q(lambda: int(mem.free)) if mem is not None else None,
            "memory_used": _q(lambda: int(mem.used)) if mem is not None else None,
            "pcie_tx_kbps": _q(lambda: int(nv.nvmlDeviceGetPcieThroughput(h, tx_id))),
            "pcie_rx_kbps": _q(lambda: int(nv.nvmlDeviceGetPcieThroughput(h, rx_id))),
            "pcie_link_gen": _q(lambda: int(nv.nvmlDeviceGetCurrPcieLinkGeneration(h))),
            "pcie_link_width": _q(lambda: int(nv.nvmlDeviceGetCurrPcieLinkWidth(h))),
            "pcie_link_gen_max": _q(lambda: int(nv.nvmlDeviceGetMaxPcieLinkGeneration(h))),
            "pcie_link_width_max": _q(lambda: int(nv.nvmlDeviceGetMaxPcieLinkWidth(h))),
            "utilization_gpu": _q(lambda: int(util.gpu)) if util is not None else None,
            "utilization_memory": _q(lambda: int(util.memory)) if util is not None else None,
            "temperature_c": _q(lambda: int(nv.nvmlDeviceGetTemperature(h, temp_id))),
        }
        return info
    except Exception:  # noqa: BLE001 - never raise from a report helper
        return None
    finally:
        _shutdown(nv)


def pcie_throughput(index: int = 0, pci_bus_id: str | None = None
                    ) -> tuple[int | None, int | None] | None:
    """(tx, rx) PCIe KB/s over NVML's last 20 ms, or None if NVML is unavailable."""
    info = gpu_info(index, pci_bus_id)
    if info is None:
        return None
    return info["pcie_tx_kbps"], info["pcie_rx_kbps"]


class PcieSampler:
    """Samples PCIe TX/RX (KB/s) in a background thread while a measurement runs::

        with PcieSampler(pci_bus_id=bus) as s:
            run_transfer()
        s.peak_rx_kbps, s.mean_rx_kbps     # None where NVML could not say

    Costs one NVML query per ``interval`` seconds (each covers 20 ms of traffic); harmless
    and empty when NVML is missing."""

    def __init__(self, index: int = 0, pci_bus_id: str | None = None, interval: float = 0.02):
        self.index = index
        self.pci_bus_id = pci_bus_id
        self.interval = interval
        self.tx: list[int] = []
        self.rx: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        nv = _pynvml()
        if nv is None:
            return
        try:
            nv.nvmlInit()
        except Exception:  # noqa: BLE001
            return
        try:
            h = _handle(nv, self.index, self.pci_bus_id)
            tx_id = getattr(nv, "NVML_PCIE_UTIL_TX_BYTES", 0)
            rx_id = getattr(nv, "NVML_PCIE_UTIL_RX_BYTES", 1)
            while not self._stop.is_set():
                tx = _q(lambda: int(nv.nvmlDeviceGetPcieThroughput(h, tx_id)))
                rx = _q(lambda: int(nv.nvmlDeviceGetPcieThroughput(h, rx_id)))
                if tx is None and rx is None:
                    return              # unsupported: stop asking
                if tx is not None:
                    self.tx.append(tx)
                if rx is not None:
                    self.rx.append(rx)
                self._stop.wait(self.interval)
        except Exception:  # noqa: BLE001
            return
        finally:
            _shutdown(nv)

    def __enter__(self) -> "PcieSampler":
        self._thread = threading.Thread(target=self._run, name="ccadgpu-pcie", daemon=True)
        self._thread.start()
        time.sleep(0)      # let it start before the measurement does
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    @staticmethod
    def _peak(v: list[int]) -> int | None:
        return max(v) if v else None

    @staticmethod
    def _mean(v: list[int]) -> float | None:
        return sum(v) / len(v) if v else None

    @property
    def peak_tx_kbps(self) -> int | None:
        return self._peak(self.tx)

    @property
    def peak_rx_kbps(self) -> int | None:
        return self._peak(self.rx)

    @property
    def mean_tx_kbps(self) -> float | None:
        return self._mean(self.tx)

    @property
    def mean_rx_kbps(self) -> float | None:
        return self._mean(self.rx)
