"""Cython/OpenMP Adam kernels for adamfast: the AVX2 build.

The same source as ``adamfast._cython`` (``_family.pxi``), compiled with
-mavx2 (and still -ffp-contract=off, so no FMA contraction): results are bit
for bit those of the baseline build.  Importing it on a CPU without AVX2 may
crash with SIGILL, so import it only through
``adamfast._dispatch.cython_module()``, which checks the CPU first.
"""

cdef extern from *:
    """
    /* setup.py only builds this module with -mavx2; refuse any other build,
       which would silently be a second baseline module. */
    #if !defined(__AVX2__)
    #  error "adamfast._cython_avx2 must be compiled with -mavx2"
    #endif
    """

VARIANT = "avx2"

include "_family.pxi"
