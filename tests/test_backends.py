"""Backend selection, the CUDA probe, the NVML wrapper and the calibration profile writer,
all without a GPU: CuPy and pynvml are replaced by stand-ins (or blocked) per test."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

import ccadgpu
from ccadgpu import backends
from ccadgpu.backends import (BackendChoice, BackendUnavailableError, clear_probe_cache,
                              probe_cuda, select_backend)
from ccadgpu.backends import nvml
from ccadgpu.errors import CcadError, InvalidArgumentError

ROOT = Path(__file__).resolve().parent.parent


# -- stand-ins ----------------------------------------------------------------------------------

class FakeRuntimeError(RuntimeError):
    pass


def fake_cupy(count: int | Exception = 1, managed: int = 1, concurrent: int = 1,
              name: bytes = b"NVIDIA Fake H100", major: int = 9, hip: bool = False
              ) -> types.ModuleType:
    """A module that looks enough like CuPy for the probe; counts getDeviceCount calls."""
    calls = {"count": 0}

    def getDeviceCount() -> int:
        calls["count"] += 1
        if isinstance(count, Exception):
            raise count
        return count

    def deviceGetAttribute(attr: int, dev: int) -> int:
        return {83: managed, 89: concurrent}[attr]

    rt = types.SimpleNamespace(
        getDeviceCount=getDeviceCount, deviceGetAttribute=deviceGetAttribute,
        getDeviceProperties=lambda d: {"name": name, "major": major, "minor": 0,
                                       "totalGlobalMem": 80 << 30},
        runtimeGetVersion=lambda: 12040, driverGetVersion=lambda: 12080, is_hip=hip)
    mod = types.ModuleType("cupy")
    mod.__version__ = "13.9.9-fake"
    mod.cuda = types.SimpleNamespace(runtime=rt)
    mod._calls = calls
    return mod


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch: pytest.MonkeyPatch):
    """Every test starts with no cached probe and no CCADGPU_BACKEND; and ends the same way
    (so that a stand-in never leaks into another test's verdict)."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    clear_probe_cache()
    yield
    clear_probe_cache()


def no_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)      # "import cupy" raises ImportError


def with_cupy(monkeypatch: pytest.MonkeyPatch, **kw) -> types.ModuleType:
    mod = fake_cupy(**kw)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod


# -- selection ------------------------------------------------------------------------------------

def test_auto_without_cupy_is_cpu_with_reason(monkeypatch):
    no_cupy(monkeypatch)
    c = select_backend()
    assert isinstance(c, BackendChoice)
    assert c.name == "cpu" and c.requested == "auto" and c.source == "default"
    assert "CuPy not installed" in c.reason and "no usable GPU" in c.reason
    assert "cpu" in str(c) and c.reason in str(c)


def test_auto_with_usable_gpu_is_cuda(monkeypatch):
    with_cupy(monkeypatch)
    c = select_backend("auto")
    assert c.name == "cuda"
    assert "NVIDIA Fake H100" in c.reason and "13.9.9-fake" in c.reason
    assert c.probe is not None and c.probe.usable and c.probe.device_count == 1
    assert c.probe.compute_capability == "9.0" and c.probe.driver_version == 12080


@pytest.mark.parametrize("kw, reason", [
    ({"count": 0}, "no CUDA device visible"),
    ({"count": FakeRuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")},
     "no CUDA device visible"),
    ({"count": FakeRuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                "insufficient")}, "CUDA driver error: FakeRuntimeError: "
                                                  "cudaErrorInsufficientDriver"),
    ({"managed": 0}, "cannot allocate managed memory"),
    ({"concurrent": 0}, "concurrent managed access"),
    ({"major": 6}, "compute capability 6.0"),
    ({"hip": True}, "ROCm"),
])
def test_auto_falls_back_to_cpu_and_says_why(monkeypatch, kw, reason):
    with_cupy(monkeypatch, **kw)
    c = select_backend("auto")
    assert c.name == "cpu"
    assert reason in c.reason


def test_cupy_that_fails_to_import_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    pkg = tmp_path / "cupy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    c = select_backend()
    assert c.name == "cpu"
    assert "CuPy failed to import" in c.reason and "libcudart" in c.reason
    assert sys.modules.get("cupy") is None


def test_probe_is_cached_and_refreshable(monkeypatch):
    mod = with_cupy(monkeypatch)
    p1, p2 = probe_cuda(), probe_cuda()
    assert p1 is p2 and mod._calls["count"] == 1
    select_backend()
    assert mod._calls["count"] == 1
    probe_cuda(refresh=True)
    assert mod._calls["count"] == 2


def test_probe_never_raises(monkeypatch):
    mod = with_cupy(monkeypatch)
    mod.cuda = None                                  # no runtime at all
    p = probe_cuda(refresh=True)
    assert not p.usable and "no CUDA runtime" in p.reason

    def boom(*a):
        raise FakeRuntimeError("cudaErrorUnknown")

    mod = with_cupy(monkeypatch)
    mod.cuda.runtime.getDeviceProperties = boom      # informative only: still usable
    assert probe_cuda(refresh=True).usable
    mod.cuda.runtime.deviceGetAttribute = boom
    p = probe_cuda(refresh=True)
    assert not p.usable and "CUDA driver error" in p.reason


def test_env_overrides_auto(monkeypatch):
    with_cupy(monkeypatch)
    monkeypatch.setenv(backends.ENV_VAR, "cpu")
    c = select_backend()
    assert c.name == "cpu" and c.source == "env" and "CCADGPU_BACKEND=cpu" in c.reason
    monkeypatch.setenv(backends.ENV_VAR, " CUDA ")
    c = select_backend()
    assert c.name == "cuda" and c.source == "env"


def test_env_does_not_override_an_explicit_argument(monkeypatch):
    no_cupy(monkeypatch)
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert select_backend("cpu").name == "cpu"
    with pytest.raises(BackendUnavailableError, match="CCADGPU_BACKEND=cuda"):
        select_backend("auto")


def test_empty_env_is_ignored(monkeypatch):
    no_cupy(monkeypatch)
    monkeypatch.setenv(backends.ENV_VAR, "")
    assert select_backend().name == "cpu"


def test_explicit_cuda_unavailable_explains_and_how_to_install(monkeypatch):
    no_cupy(monkeypatch)
    with pytest.raises(BackendUnavailableError) as ei:
        select_backend("cuda")
    msg = str(ei.value)
    assert "CuPy not installed" in msg
    assert "pip install -e '.[cuda12]'" in msg and "'.[cuda13]'" in msg
    assert isinstance(ei.value, InvalidArgumentError) and isinstance(ei.value, CcadError)


def test_explicit_cuda_with_usable_gpu(monkeypatch):
    with_cupy(monkeypatch)
    c = select_backend("cuda")
    assert c.name == "cuda" and c.source == "argument"


@pytest.mark.parametrize("bad", ["gpu", "", "rocm", 3, None])
def test_unknown_backend_names_raise(monkeypatch, bad):
    no_cupy(monkeypatch)
    with pytest.raises(InvalidArgumentError):
        select_backend(bad)


def test_unknown_env_value_raises(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "tpu")
    with pytest.raises(InvalidArgumentError, match="CCADGPU_BACKEND"):
        select_backend()


def test_explicit_cpu_never_probes(monkeypatch):
    mod = with_cupy(monkeypatch)
    select_backend("cpu")
    assert mod._calls["count"] == 0


def test_cuda_backend_without_gpu_raises_clearly(monkeypatch):
    from ccadgpu.backends.cuda import CudaBackend
    no_cupy(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="pip install"):
        CudaBackend()


# -- imports stay light ------------------------------------------------------------------------------

def test_importing_ccadgpu_never_imports_cupy(tmp_path):
    """With an importable (stand-in) CuPy on the path, importing the package, the backends,
    the CUDA backend module, the calibration module and selecting the cpu backend must not
    import it (nor pynvml)."""
    for name in ("cupy", "pynvml"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("IMPORTED = True\n")
    code = textwrap.dedent("""
        import sys
        import ccadgpu, ccadgpu.backends, ccadgpu.backends.cuda, ccadgpu.backends.nvml
        import ccadgpu.backends.cuda_kernels, ccadgpu.backends.cuda_reference, ccadgpu.calibrate
        from ccadgpu.backends import select_backend
        assert select_backend("cpu").name == "cpu"
        bad = [m for m in ("cupy", "pynvml") if m in sys.modules]
        assert not bad, bad
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop(backends.ENV_VAR, None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# -- NVML --------------------------------------------------------------------------------------------

class NVMLError(Exception):
    pass


def fake_pynvml(init_fails: bool = False, unsupported: tuple[str, ...] = ()) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    state = {"init": 0, "shutdown": 0}

    def maybe(name, value):
        def f(*a):
            if name in unsupported:
                raise NVMLError(f"{name}: Not Supported")
            return value(*a) if callable(value) else value
        return f

    def init():
        if init_fails:
            raise NVMLError("Driver Not Loaded")
        state["init"] += 1

    m.nvmlInit = init
    m.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    m.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    m.nvmlDeviceGetHandleByPciBusId = lambda b: ("h", b)
    m.nvmlDeviceGetName = maybe("name", b"Fake GPU")
    m.nvmlDeviceGetUUID = maybe("uuid", "GPU-1234")
    m.nvmlDeviceGetPciInfo = maybe("pci", types.SimpleNamespace(busId=b"00000000:01:00.0"))
    m.nvmlSystemGetDriverVersion = maybe("driver", "580.1")
    m.nvmlSystemGetCudaDriverVersion = maybe("cudadriver", 13000)
    m.nvmlDeviceGetMemoryInfo = maybe("mem", types.SimpleNamespace(total=80, free=60, used=20))
    m.NVML_PCIE_UTIL_TX_BYTES, m.NVML_PCIE_UTIL_RX_BYTES, m.NVML_TEMPERATURE_GPU = 0, 1, 0
    m.nvmlDeviceGetPcieThroughput = maybe("pcie", lambda h, c: 1000 + c)
    m.nvmlDeviceGetCurrPcieLinkGeneration = maybe("gen", 5)
    m.nvmlDeviceGetCurrPcieLinkWidth = maybe("width", 16)
    m.nvmlDeviceGetMaxPcieLinkGeneration = maybe("gen", 5)
    m.nvmlDeviceGetMaxPcieLinkWidth = maybe("width", 16)
    m.nvmlDeviceGetUtilizationRates = maybe("util", types.SimpleNamespace(gpu=7, memory=3))
    m.nvmlDeviceGetTemperature = maybe("temp", 40)
    m._state = state
    return m


def test_nvml_missing_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml.gpu_info() is None
    assert nvml.pcie_throughput() is None
    assert nvml.available() is False
    with nvml.PcieSampler(interval=0.001) as s:
        pass
    assert s.peak_rx_kbps is None and s.mean_tx_kbps is None


def test_nvml_init_failure_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_fails=True))
    assert nvml.gpu_info() is None and nvml.available() is False


def test_nvml_fields(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    info = nvml.gpu_info(0)
    assert info["name"] == "Fake GPU" and info["uuid"] == "GPU-1234"
    assert info["pci_bus_id"] == "00000000:01:00.0" and info["driver_version"] == "580.1"
    assert (info["memory_total"], info["memory_free"], info["memory_used"]) == (80, 60, 20)
    assert (info["pcie_tx_kbps"], info["pcie_rx_kbps"]) == (1000, 1001)
    assert info["utilization_gpu"] == 7 and info["pcie_link_width"] == 16
    assert fake._state["init"] == fake._state["shutdown"] == 1      # always shut down
    assert nvml.gpu_info(pci_bus_id="00000000:01:00.0")["name"] == "Fake GPU"


def test_nvml_unsupported_queries_are_none_not_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml",
                        fake_pynvml(unsupported=("pcie", "util", "mem", "temp", "name")))
    info = nvml.gpu_info()
    assert info is not None
    for k in ("pcie_tx_kbps", "pcie_rx_kbps", "utilization_gpu", "utilization_memory",
              "memory_total", "temperature_c", "name"):
        assert info[k] is None, k
    assert info["driver_version"] == "580.1"


def test_nvml_sampler_collects(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    import time
    with nvml.PcieSampler(interval=0.001) as s:
        time.sleep(0.05)
    assert s.peak_rx_kbps == 1001 and s.mean_tx_kbps == 1000


# -- calibration: profile text and the model (no GPU needed) ------------------------------------------

MEAS = {"gpu": "NVIDIA H100 PCIe", "date": "2026-11-26T00:00:00+00:00", "bytes": 256 << 20,
        "gpu_memory_total": 85520809984, "h2d_prefetch_gbps": 24.5,
        "d2h_prefetch_gbps": 25.1, "pinned_h2d_gbps": 25.9, "pinned_d2h_gbps": 26.3,
        "device_read_local_gbps": 1830.0, "device_read_remote_gbps": 22.0,
        "device_read_fault_gbps": 9.5, "cpu_read_host_gbps": 11.0,
        "cpu_read_device_gbps": 3.2, "launch_us": 2.5, "per_page_us": 1.7,
        "per_page_size": 65536, "nvml_name": 'Odd "name"', "nested": {"skip": 1}}


def test_profile_text_is_a_valid_profile(tmp_path):
    from ccadgpu import calibrate
    text = calibrate.profile_text(MEAS, "mybox")
    doc = tomllib.loads(text)
    assert doc["name"] == "mybox"
    assert doc["bandwidth_gbps"]["device"]["device"] == 1830
    assert doc["bandwidth_gbps"]["device"]["host"] == 22
    assert doc["bandwidth_gbps"]["cpu"] == {"host": 11, "device": 3.2}
    assert doc["migration"]["host_to_device_gbps"] == 24.5
    assert doc["migration"]["per_page_us"] == 1.7
    assert doc["kernel"]["launch_us"] == 2.5
    base = tomllib.loads((ROOT / "ccadgpu/profiles/h100-pcie.toml").read_text())
    assert doc["latency_ns"] == base["latency_ns"]                 # not measured: the base's
    assert doc["migration"]["fault_us"] == base["migration"]["fault_us"]
    assert doc["calibration"]["nvml_name"] == 'Odd "name"' and "nested" not in doc["calibration"]
    out = calibrate.write_profile(MEAS, tmp_path / "p" / "mybox.toml", "mybox")
    assert out.read_text() == text
    try:
        from ccadgpu.clock import load_profile
    except ImportError:
        return
    prof = load_profile(str(out))
    assert prof.name == "mybox"
    assert prof.bandwidth[1, 1] == pytest.approx(1830e9)
    assert prof.link[0, 1] == pytest.approx(24.5e9)


def test_profile_base_follows_the_gpu():
    from ccadgpu import calibrate
    assert calibrate.base_profile_name("NVIDIA GH200 480GB") == "gh200"
    assert calibrate.base_profile_name("NVIDIA H100 80GB HBM3") == "h100-pcie"
    doc = tomllib.loads(calibrate.profile_text({**MEAS, "gpu": "NVIDIA GH200"}, "x"))
    gh = tomllib.loads((ROOT / "ccadgpu/profiles/gh200.toml").read_text())
    assert doc["latency_ns"] == gh["latency_ns"]


@pytest.mark.parametrize("key, value", [("h2d_prefetch_gbps", float("nan")),
                                        ("device_read_local_gbps", 0.0),
                                        ("launch_us", -1.0), ("per_page_us", None)])
def test_profile_refuses_bad_measurements(key, value):
    from ccadgpu import calibrate
    with pytest.raises(InvalidArgumentError, match=key):
        calibrate.profile_text({**MEAS, key: value})
    with pytest.raises(InvalidArgumentError, match="not found"):
        calibrate.profile_text(MEAS, base="no-such-profile")


def test_model_seconds():
    from ccadgpu import calibrate
    doc = tomllib.loads(calibrate.profile_text(MEAS, "m"))
    lat = doc["latency_ns"]["device"]["device"] * 1e-9
    assert calibrate.model_seconds(doc, "kernel", 1830 * 10**9) == pytest.approx(
        2.5e-6 + lat + 1.0)
    assert calibrate.model_seconds(doc, "migration", 245_000_000, pages=10) == pytest.approx(
        0.01 + 10 * 1.7e-6)
    assert calibrate.model_seconds(doc, "migration", 251_000_000,
                                   direction="device_to_host") == pytest.approx(0.01)
    with pytest.raises(InvalidArgumentError):
        calibrate.model_seconds(doc, "fault", 1)


def test_memory_cap():
    from ccadgpu.calibrate import memory_cap
    assert memory_cap(80 << 30) == 2 << 30
    assert memory_cap(4 << 30) == 1 << 30


def test_calibrate_cli_without_gpu_fails_clearly(monkeypatch, capsys, tmp_path):
    from ccadgpu.calibrate import calibrate_cli
    no_cupy(monkeypatch)
    rc = calibrate_cli(["--output", str(tmp_path / "x.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and "CuPy not installed" in err and "pip install" in err
    assert not (tmp_path / "x.toml").exists()
    assert calibrate_cli(["--repeat", "0"]) == 2


def test_public_api_is_reexported():
    assert backends.select_backend is select_backend
    assert set(backends.BACKENDS) == {"cpu", "cuda"}
    assert ccadgpu.errors.CcadError is CcadError
    assert np.dtype(np.uint64).itemsize == 8
