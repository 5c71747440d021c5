"""Device->host page moves on a GPU, every way CUDA offers, against the pinned copy of the
same bytes (the baseline), measured in the same run.

Moves of a device-resident managed range to the host: ``cudaMemPrefetchAsync`` in one call, in
chunks, in chunks over several streams; ``cuMemDiscardAndPrefetchBatchAsync`` alone (the range
is remapped to the host and its contents dropped: the driver's remap cost with no byte copied);
and a staged move (copy to device scratch at HBM speed, discard-and-prefetch, then GPU stores
over the link into the host pages).  After every move a kernel read of the range shows where
the pages are (remote speed: on the host) and sampled words of every page are checked against
what the device wrote.  Run on a lent GPU machine::

    python benchmarks/gpu_d2h.py [--size 1GiB] [--repeat 5] [--chunk 2MiB,32MiB,128MiB]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import table  # noqa: E402

from ccadgpu.units import format_bytes, parse_size  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk", default="2MiB,32MiB,128MiB")
    args = ap.parse_args(argv)
    from ccadgpu.backends import cuda as cb
    import cupy as cp

    b = cb.CudaBackend(0)
    nbytes = parse_size(args.size, "--size")
    chunks = [parse_size(c, "--chunk") for c in args.chunk.split(",")]
    n = nbytes // 8
    region = b.allocate(nbytes)
    host = region.host_view(np.uint64, n)
    dev = region.device_view(np.uint64, n)
    b.advise(region.ptr, nbytes, "preferred_location", "cpu")
    b.advise(region.ptr, nbytes, "accessed_by", b.device)
    host[:] = 0
    with b._dev, b.stream:
        scratch = cp.empty(max(chunks) // 8, cp.uint64)
        dbuf = cp.empty(n, cp.uint64)
    fill = cp.ElementwiseKernel("uint64 s", "uint64 y",
                                "y = (unsigned long long)i * 2654435761ull + s", "ccad_d2h_fill")
    copyk = cp.ElementwiseKernel("uint64 x", "uint64 y", "y = x", "ccad_d2h_copy")
    drv = cb._drv()
    rt = cp.cuda.runtime
    sptr = b.stream.ptr
    has_discard = drv.can_discard

    def on_device(seed: int) -> None:
        b.prefetch(region.ptr, nbytes, b.device)
        with b._dev, b.stream:
            fill(np.uint64(seed), dev)
        b.synchronize()

    def pieces(chunk: int) -> list[tuple[int, int]]:
        return [(region.ptr + off, min(chunk, nbytes - off)) for off in range(0, nbytes, chunk)]

    def prefetch(chunk: int, nstreams: int = 1):
        def run() -> None:
            if nstreams == 1:
                for p, c in pieces(chunk):
                    b.prefetch(p, c, cb.CPU)
                return
            streams = [cp.cuda.Stream(non_blocking=True) for _ in range(nstreams)]
            b.synchronize()
            for k, (p, c) in enumerate(pieces(chunk)):
                b.prefetch(p, c, cb.CPU, stream=streams[k % nstreams])
            for st in streams:
                st.synchronize()
        return run

    def discard_only(chunk: int):
        def run() -> None:
            for p, c in pieces(chunk):
                drv.discard_prefetch_batch([(p, c)], cb.CPU, sptr)
        return run

    def staged(chunk: int):
        def run() -> None:
            with b._dev, b.stream:
                for p, c in pieces(chunk):
                    off = p - region.ptr
                    src = dev[off // 8:(off + c) // 8]
                    tmp = scratch[:c // 8]
                    copyk(src, tmp)
                    drv.discard_prefetch_batch([(p, c)], cb.CPU, sptr)
                    copyk(tmp, src)         # GPU stores over the link into host pages
        return run

    def read_gbps() -> float:
        with b._dev, b.stream:
            b.synchronize()
            t = time.perf_counter()
            dev.sum()
            b.synchronize()
        return nbytes / (time.perf_counter() - t) / 1e9

    idx = np.linspace(0, n - 1, 1 << 16).astype(np.int64)

    def data_ok(seed: int) -> bool:
        want = idx.astype(np.uint64) * np.uint64(2654435761) + np.uint64(seed)
        return bool(np.array_equal(host[idx], want))

    strategies = [("prefetch, one call", prefetch(nbytes), True)]
    for c in chunks:
        strategies.append((f"prefetch, {format_bytes(c)} calls", prefetch(c), True))
    strategies.append((f"prefetch, {format_bytes(chunks[-1])} calls on 4 streams",
                       prefetch(chunks[-1], 4), True))
    if has_discard:
        strategies.append(("discard+prefetch, no data, one call (remap cost)",
                           discard_only(nbytes), False))
        strategies.append((f"discard+prefetch, no data, {format_bytes(chunks[-1])} calls",
                           discard_only(chunks[-1]), False))
        strategies.append((f"staged via device scratch, {format_bytes(chunks[-1])} chunks",
                           staged(chunks[-1]), True))
    else:
        print("the driver exports no cuMemDiscardAndPrefetchBatchAsync: staged moves skipped")

    pin = cp.cuda.alloc_pinned_memory(nbytes)
    pinned = lambda: rt.memcpyAsync(pin.ptr, dbuf.data.ptr, nbytes, 2, sptr)  # noqa: E731
    rows, seed = [], 1
    base: list[float] = []
    for _ in range(args.repeat):
        b.synchronize()
        t = time.perf_counter()
        pinned()
        b.synchronize()
        base.append(time.perf_counter() - t)
    t_pin = statistics.median(base)
    rows.append(["pinned cudaMemcpyAsync D2H", f"{nbytes / t_pin / 1e9:.1f} GB/s", "1.00", "", ""])
    for name, fn, keeps_data in strategies:
        times, ok, where = [], True, []
        for r in range(args.repeat + 1):
            seed += 1
            on_device(seed)
            t = time.perf_counter()
            fn()
            b.synchronize()
            dt = time.perf_counter() - t
            if r:                                   # the first round is a warm-up
                times.append(dt)
            where.append(read_gbps())
            if keeps_data:
                ok &= data_ok(seed)
        tm = statistics.median(times)
        rows.append([name, f"{nbytes / tm / 1e9:.1f} GB/s", f"{t_pin / tm:.2f}",
                     f"{statistics.median(where):.0f} GB/s",
                     ("ok" if ok else "WRONG") if keeps_data else "-"])
    print(f"GPU: {b.name}; {format_bytes(nbytes)} device-resident managed range -> host, "
          f"median of {args.repeat}")
    print(table(["move", "bandwidth", "vs pinned", "kernel read after (remote ~ host)",
                 "data"], rows))
    del pin
    b.free(region)
    b.close()
    return 0 if all(r[4] in ("", "-", "ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
