"""The roofline of a step that sweeps memory more than once (Lamb).

The one-pass rooflines (``roofline{N}``, see ``_rows.roofline_impls``) read
params, grads and N state buffers and write params and the N states: seven
streams at once in Adam's case.  A step of several passes moves other
mixes: Lamb's norm pass reads one stream, its moments pass reads four and
writes two, its apply pass reads three and writes one.  The memory system does
not stream every mix at one rate (a lone read stream per core runs well below
a seven-stream mix), so the ceiling of such a step is its own passes with
trivial arithmetic, timed here as ``roofline-passes``: the spec's
:meth:`passes`, each one parallel loop in numba ``prange`` on the workload's
roofline buffers.  These kernels are plain loops of their own, outside the
engine and its threading, so the ceiling does not run through the code it
judges.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._numba._driver import prefetch_l2
from ..algorithms._spec import PREFETCH_AHEAD
from ._timing import Impl

NAME = "roofline-passes"


# A lone read stream per core keeps too few misses in flight for the hardware
# prefetchers alone.  The engine's norm pass asks for each line
# PREFETCH_AHEAD bytes ahead, into L2, so this ceiling does too, or the pass it judges
# would beat it: blocks of _BLOCK elements, each asking for the lines _AHEAD
# elements on (PREFETCH_AHEAD in float32, twice it in float64; every 8
# elements: each line of float64, each line of float32 twice).  Constants,
# and indices from 0 into a slice, as the engine's loops: an element size
# read from the array, or a signed offset added to each index, kept LLVM
# from vectorizing (twice the time).
_BLOCK = 256
_AHEAD = PREFETCH_AHEAD // 4


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _norm(g):
    nblocks = g.size // _BLOCK
    acc = 0.0
    for b in prange(nblocks):
        o = b * _BLOCK
        for j in range(0, _BLOCK, 8):
            prefetch_l2(g, o + _AHEAD + j)
        x = g[o:o + _BLOCK]
        part = 0.0
        for j in range(_BLOCK):
            part += x[j]
        acc += part
    for i in range(nblocks * _BLOCK, g.size):
        acc += g[i]
    return acc


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _moments(p, g, s):
    for i in prange(p.size):
        x = p[i] + g[i]
        for j in range(len(s)):
            s[j][i] = s[j][i] + x


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _apply(p, s):
    for i in prange(p.size):
        x = p[i]
        for j in range(len(s)):
            x += s[j][i]
        p[i] = x


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _one_pass(p, g, s):
    for i in prange(p.size):
        x = g[i]
        for j in range(len(s)):
            s[j][i] = s[j][i] + x
        p[i] = p[i] + x


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _one_pass_no_state(p, g):
    for i in prange(p.size):
        p[i] = p[i] + g[i]


def one_pass(p, g, states):
    """The one-pass roofline's step (``roofline-prange``): read params, grads and
    the states, write params and the states, trivial arithmetic, in numba
    ``prange``.  A plain loop of its own, like the passes above, so that this
    ceiling runs through neither engine's driver."""
    if states:
        _one_pass(p, g, states)
    else:
        _one_pass_no_state(p, g)


# Pass name -> (kernel, arguments from (params, grads, states)); the traffic of
# each is the spec's Pass of that name (checked in the tests).
_KERNELS = {
    "norm": (_norm, lambda p, g, s: (g,)),
    "moments": (_moments, lambda p, g, s: (p, g, s)),
    "apply": (_apply, lambda p, g, s: (p, s)),
}


def passes_roofline_impls(wl, cfg, setup, notes) -> list[Impl]:
    """The ``roofline-passes`` row of a step of several passes (the caller,
    ``_run.passes_roofline_impls``, asks only for those)."""
    passes = setup.passes
    missing = [ps.name for ps in passes if ps.name not in _KERNELS]
    if missing:
        notes.add(f"{NAME} skipped: no bandwidth-only kernel for pass(es) {missing}")
        return []
    import numba

    from ._settings import on_numba_threads

    bufs = wl.roofline_buffers
    p, g, states = bufs[0], bufs[1], tuple(bufs[2:])
    calls = [(kernel, args(p, g, states)) for kernel, args in
             (_KERNELS[ps.name] for ps in passes)]

    def step(t):
        for kernel, args in calls:
            kernel(*args)

    threads = min(cfg.threads, numba.config.NUMBA_NUM_THREADS)
    itemsize = np.dtype(cfg.dtype).itemsize
    notes.add(f"{NAME}: the step's own passes ({setup.describe_passes(itemsize)}), trivial "
              f"arithmetic in numba prange on {threads} thread(s); a {setup.name} step is "
              f"judged against it")
    return [Impl(NAME, on_numba_threads(threads, step), "roofline", backend="numba",
                 bytes_per_param=setup.bytes_per_param(itemsize))]
