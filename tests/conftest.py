import os

import pytest

import ccadgpu

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".numba_cache"))


@pytest.fixture
def space():
    with ccadgpu.Space(device_memory="4MiB", host_memory="16MiB", page_size="64KiB") as sp:
        yield sp
