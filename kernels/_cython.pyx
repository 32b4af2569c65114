"""Cython/OpenMP kernels for adamfast: the portable (baseline) build.

Compiled for the target's baseline instruction set (SSE2 on x86-64), so it
runs on any CPU of the architecture.  ``adamfast._cython_avx2`` and
``adamfast._cython_avx512`` are the same source compiled with -mavx2 and
-mavx512f; ``adamfast._dispatch.cython_module()`` picks among them at run
time.  The kernels themselves are in ``_family.pxi``.
"""

VARIANT = "baseline"

include "_family.pxi"
