"""Device kernels.

``ccadgpu.kernels.cpu``: the CPU stand-in's kernels, compiled with Numba (``parallel=True``,
``nogil=True``, ``cache=True``: compiled once per signature, then loaded from Numba's cache).
Importing this package does not import Numba; importing ``ccadgpu.kernels.cpu`` does.  Users
call the kernels through :mod:`ccadgpu.ops`, which validates, fences, counts and traces.
"""
