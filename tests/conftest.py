import os

import pytest

import ccadgpu

# Space(backend="auto") would take a GPU where there is one; the suite is about the CPU
# stand-in unless a test asks for cuda (test_cuda_backend, test_space_cuda)
os.environ.setdefault("CCADGPU_BACKEND", "cpu")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".numba_cache"))


@pytest.fixture
def space():
    with ccadgpu.Space(device_memory="4MiB", host_memory="16MiB", page_size="64KiB") as sp:
        yield sp
