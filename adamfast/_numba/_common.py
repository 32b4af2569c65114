"""Inline helpers shared by the element functions (the numba version of ``kernels/algorithms/_common.pxi``).

Every element function has the signature ``elem_<kind>(i, p, g, s, k)`` and
updates element i in place: p params, g grads (read only), s the tuple of
the kind's state buffers in spec order (``s[0][i]``: exactly as many as the
spec declares), k the group's scalar row already rounded to the buffer dtype,
read with the algorithm module's slot constants (``k[B1]``).

Each one is the numba version of ``update_<kind>`` in
adamfast/algorithms/<module>.py: the same operations in the same order, in
the buffer dtype (no fastmath, and numba never contracts a*b + c into an FMA
without it), so every result agrees with the reference bit for bit.  Literal
constants are made with ``p.dtype.type`` because a bare ``1`` next to a
float32 promotes the expression to float64.  Selects on a scalar flag
(``a if k[X] != 0 else b``) compute both sides into locals first, as the
reference does: a ternary whose arms hold the arithmetic would put it behind
a branch, which LLVM must prove safe to speculate before it can vectorize.
"""

from __future__ import annotations

from numba import njit

from ..algorithms._spec import GS, L2, PS


@njit(inline="always")
def grads_params(i, p, g, k):
    # The prologue of every kind with an L2 slot (_spec's scalar contract):
    # GS the gradient multiplier, PS the decoupled-decay scale, L2 the L2
    # coefficient.  _driver.walk runs the loop in two copies, one known to have
    # k[L2] == 0, where LLVM drops the term.
    gi = g[i] * k[GS]
    pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    return gi, pi


@njit(inline="always")
def nanmax(a, b):
    # np.maximum: a NaN on either side wins.  "|" not "or": a short-circuit
    # is a branch in the loop body.
    keep = (a != a) | (a >= b)
    return a if keep else b


@njit(inline="always")
def sign(c, p):
    # np.sign: 1, -1, 0 for either zero, NaN for NaN, in the dtype of p.
    f = p.dtype.type
    return f(1) if c > 0 else (f(-1) if c < 0 else (f(0) if c == 0 else c))
