# Inline helpers shared by the element functions (included before them).
#
# Every element function has the signature
#     _e_<kind>(i, p, g, s, k)
# and updates element i in place: p params, g grads (read only), s the
# driver's local table of state pointers (s[0][i]: the kind's state buffers
# in spec order, as many as its spec declares), k the group's scalar row
# already rounded to the buffer dtype and held in a local array by the
# driver -- gcc vectorizes these loops only when the scalars come from such
# a local copy, not through a pointer into the table.  k is read with the
# slot names of _kinds.pxi (GS, PS, L2, then <MODULE>_<NAME>, e.g. ADAM_B1).
#
# Each function is the compiled version of ``update_<kind>`` in
# adamfast/algorithms/<module>.py: the same operations in the same order, in
# the buffer dtype (the build has -ffp-contract=off and no fast-math), so
# every result agrees with the reference bit for bit.  Selects on a scalar
# flag (``a if k[X] != 0 else b``) compute both sides and pick one, as the
# reference does; gcc if-converts or unswitches them, so the loops stay
# branch-free and vectorized.

cdef inline floating _sqrt(floating x) noexcept nogil:
    # sqrt() on a float would round-trip through double; sqrtf keeps float32
    # arithmetic in float32 like NumPy, and vectorizes as sqrtps.
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _nanmax(floating a, floating b) noexcept nogil:
    # np.maximum: a NaN on either side wins.  "|" not "or": a short-circuit
    # branch stops gcc vectorizing the loop.
    cdef bint keep = (a != a) | (a >= b)
    return a if keep else b


cdef inline floating _sign(floating c) noexcept nogil:
    # np.sign: 1, -1, 0 for either zero, NaN for NaN.
    return 1 if c > 0 else (-1 if c < 0 else (0 if c == 0 else c))
