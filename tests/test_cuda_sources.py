"""The CUDA sources compile, and define exactly the entry points the Python side launches.

Runs wherever ``nvcc`` is on PATH (no GPU needed), so a syntax or type error in
``ccadgpu/kernels/cuda`` fails CI even on a machine without a GPU.  What is compiled is the text
the cuda backend hands to NVRTC (:func:`ccadgpu.backends.cuda_kernels.load_source`: the
counting header inlined), all modules in one nvcc call, through ptxas (``--cubin``), with
warnings as errors; the PTX kept from the same call lists the ``.entry`` points.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess

import pytest
from hypothesis import given, strategies as st

from ccadgpu.backends import cuda_kernels as ck

NVCC = shutil.which("nvcc")
PREFERRED_ARCHS = ("sm_90", "sm_80", "sm_86", "sm_89", "sm_75")


def _arch() -> str:
    """A real architecture this nvcc supports (sm_70 is gone in CUDA 13): the newest of the
    data-centre ones we target."""
    r = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    have = set(re.findall(r"compute_(\d+)", r.stdout))
    for a in PREFERRED_ARCHS:
        if a[3:] in have:
            return a
    return "sm_80"


def test_sources_include_only_the_counting_header():
    """NVRTC (CuPy) has no system headers: the sources may include nothing else, and the
    text handed to it includes nothing at all."""
    for path in ck.source_files():
        incs = re.findall(r'^\s*#\s*include\s+(\S+)', path.read_text(), re.M)
        assert incs == [f'"{ck.HEADER}"'], (path.name, incs)
    assert not re.search(r"^\s*#\s*include", (ck.SOURCE_DIR / ck.HEADER).read_text(), re.M)
    for mod in ck.MODULES:
        src = ck.load_source(mod)
        assert "#include" not in src and "#pragma once" not in src
        assert "ccad_hist_add" in src            # the header really is inlined


def test_kernel_names_are_unique_and_well_formed():
    names = ck.kernel_names()
    assert len(names) == len(set(names)) == 92
    assert all(re.fullmatch(r"ccad_[a-z0-9]+_(f32|f64|i32|i64)(_i32|_i64)?_(plain|counted)", n)
               for n in names)
    assert ck.kernel_name("spmv", "float32", True, "int32") == "ccad_spmv_f32_i32_counted"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: the CUDA sources are compiled only "
                    "where the CUDA toolkit is installed (install it, or put nvcc on PATH, to "
                    "run this check)")
def test_nvcc_compiles_every_source(tmp_path):
    srcs = []
    for mod in ck.MODULES:
        p = tmp_path / f"{mod}.cu"
        p.write_text(ck.load_source(mod))
        srcs.append(str(p))
    arch = _arch()
    cmd = [NVCC, "--cubin", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings",
           "-keep", "-keep-dir", str(tmp_path), "-odir", str(tmp_path), *srcs]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-6000:]}"
    for mod in ck.MODULES:
        assert (tmp_path / f"{mod}.cubin").stat().st_size > 0
        ptx = (tmp_path / f"{mod}.ptx").read_text()
        entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
        want = set(ck.kernel_names(mod))
        assert entries == want, (f"{mod}.cu: missing {sorted(want - entries)}, "
                                 f"unexpected {sorted(entries - want)}")


@given(st.tuples(*[st.integers(1, 5000)] * 3), st.integers(1, 3000))
def test_fit_grid_cuts_a_grid_to_one_wave(grid, resident):
    got = ck.fit_grid(grid, resident)
    assert all(1 <= g <= o for g, o in zip(got, grid))
    assert got[0] * got[1] * got[2] <= max(resident, 1)
    if grid[0] * grid[1] * grid[2] <= resident:
        assert got == grid
    elif grid[0] <= resident:
        assert got[0] == grid[0]          # rows of a 2-D launch stay whole


def test_launch_cuts_the_grid_to_resident_blocks():
    from ccadgpu.backends.cuda import CudaKernels

    class Fn:
        def __init__(self):
            self.calls = []

        def __call__(self, grid, block, args):
            self.calls.append(grid)

    class B:
        sm_count, _dev, stream = 4, contextlib.nullcontext(), contextlib.nullcontext()
        cp = None

    k = CudaKernels.__new__(CudaKernels)
    k.b, k.cp, k._resident = B(), None, {}
    fn = Fn()
    k._functions = {"dense:f": fn}
    k.launch(ck.Launch("dense", "f", (1000, 1, 1), (256, 1, 1), ()))
    assert fn.calls == [(32, 1, 1)]       # no occupancy calculator: 8 blocks per SM
