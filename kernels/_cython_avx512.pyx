"""Cython/OpenMP Adam kernels for adamfast: the AVX-512 build.

The same source as ``adamfast._cython`` (``_family.pxi``), compiled with
-mavx512f and 512-bit vectors preferred (and still -ffp-contract=off, so no
FMA contraction): results are bit for bit those of the baseline build.
Importing it on a CPU without AVX-512F may crash with SIGILL, so import it
only through ``adamfast._dispatch.cython_module()``, which checks the CPU
first.
"""

cdef extern from *:
    """
    /* setup.py only builds this module with -mavx512f; refuse any other
       build, which would silently be a second AVX2 or baseline module. */
    #if !defined(__AVX512F__)
    #  error "adamfast._cython_avx512 must be compiled with -mavx512f"
    #endif
    """

VARIANT = "avx512"

include "_family.pxi"
