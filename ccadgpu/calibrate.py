"""``ccadgpu calibrate``: measure this GPU's links and memories and write a machine profile.

The profiles in ``ccadgpu/profiles/*.toml`` price traffic with published figures; this module
measures the same quantities on the machine at hand, through the ``cuda`` backend, so that
modeled and measured time can be compared (and the model fitted to the card):

=====================================  ==========================================================
profile key                            measurement
=====================================  ==========================================================
``migration.host_to_device_gbps``      ``cudaMemPrefetchAsync`` of managed pages CPU -> GPU
``migration.device_to_host_gbps``      the same, GPU -> CPU
``migration.per_page_us``              one prefetch call over many pages, less their bytes at the
                                       measured bandwidth, per page
``bandwidth_gbps.device.device``       the plain ``sum`` kernel over GPU-resident managed pages
``bandwidth_gbps.device.host``         the same over CPU-resident pages the GPU reads remotely
                                       (preferred location CPU + accessed-by GPU: no migration)
``bandwidth_gbps.cpu.host``            ``numpy.sum`` over CPU-resident managed pages (1 thread)
``bandwidth_gbps.cpu.device``          the same over GPU-resident pages (accessed-by CPU; on a
                                       PCIe card the driver migrates them back as they are read)
``kernel.launch_us``                   back-to-back launches of a tiny kernel, CUDA events
=====================================  ==========================================================

Also measured, for reference: a pinned ``cudaMemcpyAsync`` of the same bytes each way (the
"memcpy" a migration is judged against) and a read of CPU-resident pages with no advice (fault-
driven migration, the default unified-memory behaviour).  Latencies and ``fault_us`` are not
measured: they are copied from a base profile (``--base``, default chosen from the GPU's
name) and marked as such.  The profile also carries a ``[calibration]`` table with the raw
numbers, the GPU, the driver and the date; the profile loader ignores it.

The GPU memory used is at most ``min(2 GiB, 25 % of free)``: half managed, half a device
buffer for the pinned-copy baseline.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import CcadError, InvalidArgumentError
from .units import format_bytes, parse_size

__all__ = ["measure", "profile_text", "write_profile", "model_seconds", "calibrate_cli",
           "build_parser", "memory_cap", "PROFILE_DIR"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
GB = 1e9
MAX_BYTES = 2 << 30


def memory_cap(free: int) -> int:
    """The most GPU memory a calibration (or the GPU check) may use: min(2 GiB, 25 % free)."""
    return int(min(MAX_BYTES, free // 4))


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GB if seconds > 0 else float("nan")


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def measure(size: int | str = "256MiB", repeat: int = 5, device: int = 0,
            log: Callable[[str], None] | None = None, backend: Any = None) -> dict[str, Any]:
    """Run every measurement once per ``repeat`` (medians) on ``size`` bytes of managed
    memory (capped by :func:`memory_cap`, halved for the pinned-copy baseline's device
    buffer).  Returns a flat dict of floats (GB/s, microseconds) plus identification.

    Raises :class:`~ccadgpu.backends.BackendUnavailableError` without a usable GPU."""
    from .backends import cuda as cb
    from .backends import cuda_kernels as ck
    from .backends import nvml

    say = log or (lambda _m: None)
    own = backend is None
    b = cb.CudaBackend(device) if own else backend
    cp = b.cp
    try:
        free, total = b.mem_info()
        want = parse_size(size, "size")
        nbytes = min(want, memory_cap(free) // 2)
        nbytes -= nbytes % (2 << 20)           # whole 2 MiB chunks (UVM's migration unit)
        if nbytes < (2 << 20):
            raise InvalidArgumentError(f"too little GPU memory free to calibrate "
                                       f"({format_bytes(free)} free)")
        if nbytes < want:
            say(f"size capped to {format_bytes(nbytes)} (at most min(2 GiB, 25% of the "
                f"{format_bytes(free)} free), half of it managed)")
        n = nbytes // 8
        res: dict[str, Any] = {"gpu": b.name, "device": b.device,
                               "compute_capability": b.compute_capability,
                               "gpu_memory_total": total, "bytes": nbytes, "repeat": repeat,
                               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                   timespec="seconds")}
        try:
            res["cupy_version"] = cp.__version__
            res["cuda_driver_version"] = int(cp.cuda.runtime.driverGetVersion())
            res["cuda_runtime_version"] = int(cp.cuda.runtime.runtimeGetVersion())
            bus = cp.cuda.runtime.deviceGetPCIBusId(b.device)
        except Exception:  # noqa: BLE001 - identification only
            bus = None
        info = nvml.gpu_info(pci_bus_id=bus) if bus else nvml.gpu_info(b.device)
        if info:
            res.update({f"nvml_{k}": v for k, v in info.items()
                        if k in ("name", "driver_version", "pcie_link_gen", "pcie_link_width",
                                 "pcie_link_gen_max", "pcie_link_width_max")})

        region = b.allocate(nbytes)
        host = region.host_view(np.float64, n)
        dev = region.device_view(np.float64, n)
        host[:] = 1.0                                    # first touch: pages on the CPU
        t = lambda fn, setup=None: _timed(b, fn, setup, repeat)  # noqa: E731

        to_cpu = lambda: b.prefetch(region.ptr, nbytes, cb.CPU)          # noqa: E731
        to_gpu = lambda: b.prefetch(region.ptr, nbytes, b.device)        # noqa: E731
        res["h2d_prefetch_gbps"] = _gbps(nbytes, t(to_gpu, setup=to_cpu))
        res["d2h_prefetch_gbps"] = _gbps(nbytes, t(to_cpu, setup=to_gpu))
        say(f"prefetch H2D {res['h2d_prefetch_gbps']:.1f} GB/s, "
            f"D2H {res['d2h_prefetch_gbps']:.1f} GB/s")

        # the baseline: a pinned cudaMemcpyAsync of the same bytes, each way
        with b._dev, b.stream:
            dbuf = cp.empty(nbytes, cp.uint8)
        pinned = cp.cuda.alloc_pinned_memory(nbytes)
        pin = np.frombuffer(pinned, np.uint8, nbytes)
        pin[:] = 1
        rt = cp.cuda.runtime
        sptr = b.stream.ptr
        h2d = getattr(rt, "memcpyHostToDevice", 1)       # cudaMemcpyKind
        d2h = getattr(rt, "memcpyDeviceToHost", 2)
        res["pinned_h2d_gbps"] = _gbps(nbytes, t(lambda: rt.memcpyAsync(
            dbuf.data.ptr, pin.ctypes.data, nbytes, h2d, sptr)))
        res["pinned_d2h_gbps"] = _gbps(nbytes, t(lambda: rt.memcpyAsync(
            pin.ctypes.data, dbuf.data.ptr, nbytes, d2h, sptr)))
        say(f"pinned copy H2D {res['pinned_h2d_gbps']:.1f} GB/s, "
            f"D2H {res['pinned_d2h_gbps']:.1f} GB/s")
        b.synchronize()
        del dbuf, pin, pinned
        # give the copy buffers back to the GPU now (CuPy's pools would keep them cached)
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()

        # kernel reads: the plain sum kernel, device-resident vs host-resident pages
        k = b.kernels
        res["compile_s"] = k.compile_all()
        with b._dev, b.stream:
            out = cp.zeros(1, cp.float64)
        plan = ck.plan("sum", out, dev, max_blocks=k.max_blocks)
        read = lambda: k.launch(plan)                                    # noqa: E731

        def settle_gpu() -> None:
            to_gpu()
            b.synchronize()

        res["device_read_local_gbps"] = _gbps(nbytes, t(read, setup=settle_gpu))
        b.advise(region.ptr, nbytes, "preferred_location", cb.CPU)
        b.advise(region.ptr, nbytes, "accessed_by", b.device)
        to_cpu()
        b.synchronize()
        res["device_read_remote_gbps"] = _gbps(nbytes, t(read))
        b.advise(region.ptr, nbytes, "unset_accessed_by", b.device)
        b.advise(region.ptr, nbytes, "unset_preferred_location", cb.CPU)
        res["device_read_fault_gbps"] = _gbps(nbytes, t(read, setup=lambda: (to_cpu(),
                                                                              b.synchronize())))
        say(f"kernel read: device-resident {res['device_read_local_gbps']:.1f} GB/s, "
            f"host-resident (remote) {res['device_read_remote_gbps']:.1f} GB/s, "
            f"host-resident (fault-migrated) {res['device_read_fault_gbps']:.1f} GB/s")

        # CPU reads (wall clock: the CPU is not on the stream)
        def cpu_read(setup: Callable[[], None]) -> float:
            ts = []
            for _ in range(max(1, repeat)):
                setup()
                b.synchronize()
                t0 = time.perf_counter()
                float(np.add.reduce(host))
                ts.append(time.perf_counter() - t0)
            return _median(ts)

        res["cpu_read_host_gbps"] = _gbps(nbytes, cpu_read(to_cpu))
        b.advise(region.ptr, nbytes, "accessed_by", cb.CPU)
        res["cpu_read_device_gbps"] = _gbps(nbytes, cpu_read(to_gpu))
        b.advise(region.ptr, nbytes, "unset_accessed_by", cb.CPU)
        say(f"CPU read: host-resident {res['cpu_read_host_gbps']:.1f} GB/s, "
            f"device-resident {res['cpu_read_device_gbps']:.1f} GB/s")

        # launch overhead: back-to-back tiny launches, GPU timeline
        tiny = ck.plan("sum", out, dev[:256], max_blocks=1)
        nl = 200

        def launches() -> None:
            for _ in range(nl):
                k.launch(tiny)

        res["launch_us"] = _median(b.time_with_events(launches, repeat, 1)) / nl * 1e6

        # per-page cost: many one-page prefetches vs one prefetch of the same bytes
        page = 64 << 10
        npg = min(512, nbytes // page)
        span = npg * page

        def one_call() -> None:
            b.prefetch(region.ptr, span, b.device)

        def per_page() -> None:
            for p in range(npg):
                b.prefetch(region.ptr + p * page, page, b.device)

        park = lambda: (b.prefetch(region.ptr, span, cb.CPU), b.synchronize())  # noqa: E731
        t_one = t(one_call, setup=park)
        t_many = t(per_page, setup=park)
        # A cuda space moves each run of contiguous pages with one call, so what a page costs
        # beyond its bytes is the part of one call over many pages that the bandwidth does not
        # explain; one call per page costs far more (per_call_us), which the first version of
        # this calibration wrote as the per-page cost (its model of a 1 GiB move was 1.75x the
        # measured time, H200, 2026-11-26).
        res["per_call_us"] = max(0.0, (t_many - t_one) / npg * 1e6)
        res["per_page_us"] = max(0.0, (t_one - span / (res["h2d_prefetch_gbps"] * 1e9))
                                 / npg * 1e6)
        res["per_page_size"] = page
        say(f"launch {res['launch_us']:.2f} us, per-page prefetch overhead "
            f"{res['per_page_us']:.2f} us ({format_bytes(page)} pages; "
            f"{res['per_call_us']:.2f} us per prefetch call)")
        b.free(region)
        return res
    finally:
        if own:
            b.close()


def _timed(b: Any, fn: Callable[[], Any], setup: Callable[[], Any] | None, repeat: int
           ) -> float:
    """Median seconds of ``fn`` on the backend's stream (CUDA events), ``setup`` untimed and
    completed before each run."""
    ts = []
    for _ in range(max(1, repeat)):
        if setup is not None:
            setup()
        b.synchronize()
        ts.extend(b.time_with_events(fn, 1, 0))
    return _median(ts)


# -- profiles ------------------------------------------------------------------------------------

def base_profile_name(gpu_name: str) -> str:
    """The shipped profile closest to a GPU (for the numbers calibration does not measure)."""
    g = (gpu_name or "").upper()
    if "GH200" in g or "GRACE" in g:
        return "gh200"
    return "h100-pcie"


def _load_doc(name_or_path: str) -> dict[str, Any]:
    p = Path(name_or_path)
    if not p.suffix:
        p = PROFILE_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        avail = ", ".join(sorted(x.stem for x in PROFILE_DIR.glob("*.toml")))
        raise InvalidArgumentError(f"base profile {name_or_path!r} not found (built-in: "
                                   f"{avail}, or a path to a .toml file)")
    with open(p, "rb") as f:
        return tomllib.load(f)


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise InvalidArgumentError(f"not a finite number: {v!r}")
    return f"{float(v):.6g}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _num(float(v)) if np.isfinite(v) else '"nan"'
    return json.dumps(str(v))                     # a TOML basic string is a JSON string


def profile_text(meas: Mapping[str, Any], name: str = "calibrated",
                 base: str | Mapping[str, Any] | None = None) -> str:
    """A profile TOML (the format of ``ccadgpu/profiles/*.toml``) from :func:`measure`'s
    results; latencies and ``fault_us`` come from ``base`` (a profile name, path or parsed
    document; default by GPU name).  Raises :class:`InvalidArgumentError` for a measurement
    that is missing or not a positive finite number."""
    need = ("h2d_prefetch_gbps", "d2h_prefetch_gbps", "device_read_local_gbps",
            "device_read_remote_gbps", "cpu_read_host_gbps", "cpu_read_device_gbps",
            "launch_us", "per_page_us")
    for key in need:
        v = meas.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or \
                v < 0 or (v == 0 and key.endswith("gbps")):
            raise InvalidArgumentError(f"measurement {key!r} is missing or invalid: {v!r}")
    if isinstance(base, Mapping):
        doc = dict(base)
        base_name = str(doc.get("name", "base"))
    else:
        base_name = base or base_profile_name(str(meas.get("gpu", "")))
        doc = _load_doc(base_name)
        base_name = str(doc.get("name", base_name))
    lat = doc.get("latency_ns", {})
    mig = doc.get("migration", {})
    gpu = str(meas.get("gpu", "unknown GPU"))
    when = str(meas.get("date", ""))
    cap = meas.get("gpu_memory_total")
    capacity = f"{int(cap)}" if isinstance(cap, (int, np.integer)) and cap > 0 else \
        json.dumps(str(doc.get("device", {}).get("capacity", "0")))
    lines = [
        f"# Measured by `ccadgpu calibrate` on {gpu} ({when}): {format_bytes(meas.get('bytes', 0))}",
        "# of managed memory, medians.  GB/s = 1e9 bytes/s, latencies ns.  Latencies and fault_us",
        f"# are not measured: they are {base_name!r}'s.  [calibration] holds the raw numbers.",
        f"name = {json.dumps(name)}",
        f"description = {json.dumps(f'{gpu}, calibrated by ccadgpu ({when})')}",
        "",
        "[device]",
        "# the card's memory (the emulated device's capacity is the space's own setting)",
        f"capacity = {capacity}",
        "",
        "[bandwidth_gbps.cpu]",
        "# numpy.sum over CPU-resident managed pages, one thread",
        f"host = {_num(meas['cpu_read_host_gbps'])}",
        "# numpy.sum over GPU-resident pages with accessed-by CPU (on PCIe: migrated back on read)",
        f"device = {_num(meas['cpu_read_device_gbps'])}",
        "",
        "[bandwidth_gbps.device]",
        "# plain sum kernel over CPU-resident pages, preferred location CPU + accessed-by GPU",
        f"host = {_num(meas['device_read_remote_gbps'])}",
        "# plain sum kernel over GPU-resident managed pages",
        f"device = {_num(meas['device_read_local_gbps'])}",
        "",
        f"[latency_ns.cpu]  # from {base_name} (not measured)",
        f"host = {_num(lat.get('cpu', {}).get('host', 100))}",
        f"device = {_num(lat.get('cpu', {}).get('device', 1000))}",
        "",
        f"[latency_ns.device]  # from {base_name} (not measured)",
        f"host = {_num(lat.get('device', {}).get('host', 1500))}",
        f"device = {_num(lat.get('device', {}).get('device', 500))}",
        "",
        "[migration]",
        "# cudaMemPrefetchAsync of managed pages, each way",
        f"host_to_device_gbps = {_num(meas['h2d_prefetch_gbps'])}",
        f"device_to_host_gbps = {_num(meas['d2h_prefetch_gbps'])}",
        f"# per {format_bytes(meas.get('per_page_size', 65536))} page moved within one prefetch "
        "call, beyond its bytes at the bandwidth above"
        + (f" (one call per page would cost {_num(meas['per_call_us'])} us more a page)"
           if "per_call_us" in meas else ""),
        f"per_page_us = {_num(meas['per_page_us'])}",
        f"fault_us = {_num(mig.get('fault_us', 30.0))}  # from {base_name} (not measured)",
        "",
        "[kernel]",
        "# back-to-back launches of a tiny kernel (CUDA events)",
        f"launch_us = {_num(meas['launch_us'])}",
        "",
        "[calibration]",
    ]
    for key in sorted(meas):
        v = meas[key]
        if v is None or isinstance(v, (dict, list, tuple)):
            continue
        lines.append(f"{key} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def write_profile(meas: Mapping[str, Any], path: str | Path, name: str = "calibrated",
                  base: str | Mapping[str, Any] | None = None) -> Path:
    """Write :func:`profile_text` to ``path`` (checked with the profile loader when it is
    importable) and return the path."""
    text = profile_text(meas, name, base)
    doc = tomllib.loads(text)          # our own output must parse
    try:
        from .clock import parse_profile
    except ImportError:                 # the loader is optional here
        parse_profile = None
    if parse_profile is not None:
        parse_profile(doc, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def model_seconds(doc: Mapping[str, Any], kind: str, nbytes: int, *, processor: str = "device",
                  node: str = "device", pages: int = 0, direction: str = "host_to_device"
                  ) -> float:
    """Modeled seconds, with the formulas of :mod:`ccadgpu.clock`, from a profile document:

    * ``kind="kernel"``: ``launch + latency[processor][node] + nbytes / bandwidth[...]``;
    * ``kind="migration"``: ``nbytes / link[direction] + pages * per_page``."""
    if kind == "kernel":
        bw = float(doc["bandwidth_gbps"][processor][node]) * GB
        lat = float(doc["latency_ns"][processor][node]) * 1e-9
        launch = float(doc.get("kernel", {}).get("launch_us", 0.0)) * 1e-6
        return launch + lat + nbytes / bw
    if kind == "migration":
        link = float(doc["migration"][f"{direction}_gbps"]) * GB
        return nbytes / link + pages * float(doc["migration"].get("per_page_us", 0.0)) * 1e-6
    raise InvalidArgumentError(f"kind must be 'kernel' or 'migration', got {kind!r}")


# -- command line -----------------------------------------------------------------------------------

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``calibrate`` options (added to ``parser``, e.g. a CLI subparser, or a new one)."""
    ap = parser or argparse.ArgumentParser(
        prog="ccadgpu calibrate", description="Measure this GPU's migration and memory "
        "bandwidths and write a machine profile (needs the cuda backend).")
    ap.add_argument("--size", default="256MiB",
                    help="managed bytes to move (capped at min(2 GiB, 25%% of free GPU memory)/2)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (medians)")
    ap.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    ap.add_argument("--name", default="calibrated", help="the profile's name")
    ap.add_argument("--base", default=None,
                    help="profile that supplies the unmeasured numbers (latencies, fault_us); "
                    "default: gh200 for Grace Hopper, else h100-pcie")
    ap.add_argument("-o", "--output", default=None,
                    help="profile file to write (default: <name>.toml in the current directory)")
    ap.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    return ap


def calibrate_cli(args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point of ``ccadgpu calibrate``: ``args`` is an argv list or a parsed namespace
    (from :func:`build_parser`).  Returns the exit status: 0, or 2 with a message on stderr
    when there is no usable GPU or an argument is bad."""
    ns = args if isinstance(args, argparse.Namespace) else build_parser().parse_args(
        list(args) if args is not None else None)
    if ns.repeat < 1:
        print("ccadgpu calibrate: error: --repeat must be >= 1", file=sys.stderr)
        return 2
    from .backends import select_backend
    try:
        select_backend("cuda")
        meas = measure(ns.size, ns.repeat, ns.device, log=lambda m: print(m, flush=True))
        out = Path(ns.output) if ns.output else Path(f"{ns.name}.toml")
        write_profile(meas, out, ns.name, ns.base)
    except CcadError as exc:
        print(f"ccadgpu calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (use it as Space(profile={str(out)!r}))")
    if ns.json:
        print(json.dumps(meas, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(calibrate_cli())
