"""The one chunked driver of the numba backend, shared by every kind.

The numba version of ``kernels/_driver.pxi``.  Every kind module defines, per kind, an
element function ``elem_<kind>(i, p, g, s, k)`` (``s`` the tuple of the
kind's state buffers, exactly as many as its spec declares) and the entry
points that pass it to :func:`chunk`::

    def adam_block(ctx, c0, c1):
        blocks(elem_adam, ctx, c0, c1)

    (the entry adamfast's pool calls, which ``adamfast._numba`` compiles into
    a cfunc of BLOCK_SIGNATURE on the kind's first use: see "the block
    entries" below; and the
    fallback pair: ``adam_serial(p, g, s, ema, scalars, chunks)``, a loop of
    ``chunk(elem_adam, ...)`` over the chunk rows, and ``adam_parallel``, the
    same with parallel=True and prange)

The element function reaches :func:`chunk` as a compile-time constant (a
dispatcher type), so each entry is specialised for its kind and the element
body is inlined into the chunk loop, where LLVM vectorizes it.  The state
tuple's length is part of its type, so the per-chunk slicing (:func:`spans`)
and the block entries' views (:func:`_views`) are generated for that length
at compile time: ``elem_<kind>``'s name gives the kind, the registry its
number of state buffers.

The entries are written out at module level rather than made by a factory:
numba's on-disk cache finds a function by its module and qualified name, and
a closure built at run time misses it in every new process.  (The
generated helpers are overloads, compiled into the entry that uses them and
cached with it.)

numba alone would invalidate a cached entry only when the file that defines
it changes, not this one, which every entry inlines: ``_cache`` adds a digest
of all the kernels' sources to each entry's stamp.
"""

from __future__ import annotations

import llvmlite
import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..algorithms import NO_GRADS, NSTATE
from ..algorithms._spec import (CHUNK, EMA_D, EMA_OMD, L2, LANES, MAXSTATE, NSLOT,
                                PREFETCH_AHEAD, PREFETCH_BLOCK)

__all__ = ["CHUNK", "LANES", "MAXSTATE", "NSLOT"]  # the engine's constants, from _spec
# The serial cut-offs (on adamfast's pool and on numba's own) are in _pool.py.




def signatures(nstate):
    """The float32 and float64 signatures of a kind's serial entry (``nstate`` state buffers).

    Explicit signatures, so that they compile (or load from the cache) when
    the fallback loads a kind, never on a call, and precision changes are
    never silent: ``params, grads (read only), states (a tuple of nstate
    arrays), ema, scalars (float64, read only), chunks (intp, read only)``;
    ``ema`` has length 0 when there is no parameter EMA.  (The block entries
    have one C signature and branch on the dtype inside.)
    """
    sigs = []
    table = types.Array(types.float64, 2, "C", readonly=True)
    rows = types.Array(types.intp, 2, "C", readonly=True)
    for ft in (types.float32, types.float64):
        buf = types.Array(ft, 1, "C")
        ro = types.Array(ft, 1, "C", readonly=True)
        states = types.UniTuple(buf, nstate) if nstate else types.Tuple(())
        sigs.append(types.void(buf, ro, states, buf, table, rows))
    return sigs


def _generated(name, args, lines, env):
    # A small helper specialised at compile time (see the module docstring).
    text = f"def {name}({args}):\n" + "".join(f"    {line}\n" for line in lines)
    scope = dict(env)
    exec(text, scope)  # our own generated source, nothing from outside
    return scope[name]


def row(p, r):
    """The group's float64 row rounded to the buffer dtype, as a tuple of NSLOT scalars."""


@overload(row, inline="always")
def _row(p, r):
    # Once per chunk, into a tuple of scalars: the element functions index it
    # with constants, so in the loop every k[j] is a plain float32 (or
    # float64) register value.
    items = ", ".join(f"f(r[{j}])" for j in range(NSLOT))
    return _generated("row_impl", "p, r", ["f = p.dtype.type", f"return ({items},)"], {})


def spans(states, lo, hi):
    """The tuple of views ``s[lo:hi]`` of a tuple of state buffers."""


@overload(spans, inline="always")
def _spans(states, lo, hi):
    # Views walked from 0, as params' and grads' in chunk().
    items = "".join(f"states[{j}][lo:hi], " for j in range(len(states)))
    return _generated("spans_impl", "states, lo, hi", [f"return ({items})"], {})


# The vector loop starts at a cache line of params (kernels/_driver.pxi's
# _line_start says why).
LINE = 64


@njit(inline="always")
def line_start(p, lo, hi):
    """The first index in [lo, hi] whose element of ``p`` starts a cache line."""
    off = (p.ctypes.data + lo * p.itemsize) % LINE
    return min(lo + (LINE - off) % LINE // p.itemsize, hi)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the function this is inlined into with the widest vectors
    the CPU has (its "prefer-vector-width" attribute, 512).

    LLVM's tuning for Intel's AVX-512 server cores prefers 256-bit vectors, so
    numba gave them half a cache line per access where the cython build
    (-mprefer-vector-width=512) uses whole lines: Adam at 16M float32, cold, 1
    thread, on an Intel Xeon (family 6 model 207) ran at 80-82% of the
    roofline against cython's 84%, and at 84-85% with this.  Where the CPU has
    no 512-bit vectors the attribute changes nothing, and the width never
    changes a result: element-wise updates, and reductions whose order the
    code spells out.
    """
    def codegen(context, builder, signature, args):
        # llvmlite's FunctionAttributes only takes LLVM's keyword attributes; a
        # string attribute goes in as its IR text, which it prints as is.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


# llvm.prefetch's name carries its pointer type: opaque in the LLVM of current
# llvmlite, typed (i8*) in older ones.
_PREFETCH = ("llvm.prefetch.p0" if llvm_version_info >= (17,)
             or getattr(llvmlite, "opaque_pointers_enabled", False) else "llvm.prefetch.p0i8")


def _prefetch_intrinsic(locality, doc):
    @intrinsic
    def fetch(typingctx, arr, i):
        if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                _PREFETCH)
            # a read, of a data (not instruction) line
            builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p),
                              i32(0), i32(locality), i32(1)])
            return context.get_dummy_value()

        return types.none(arr, i), codegen

    fetch.__doc__ = doc
    return fetch


prefetch = _prefetch_intrinsic(3, """Ask for the cache line of ``arr[i]`` to be read soon, into
    every cache level (LLVM's prefetch: no value changes, and an index past the end
    does not fault).""")
prefetch_l2 = _prefetch_intrinsic(1, """As :func:`prefetch`, into L2 only (prefetcht2): for a
    pass that reads one stream, whose misses the L1's few fill buffers would cap
    (_spec.PREFETCH_AHEAD).""")


def _typical(elem, k):
    """Whether row ``k`` has the flag values most steps of ``elem``'s kind have."""


@overload(_typical, inline="always")
def _typical_impl(elem, k):
    # No L2 term (grads_params), and the flags the element function declares in
    # its ``typical`` attribute: ((slot, whether nonzero), ...).
    flags = ((L2, False),) + getattr(elem.dispatcher.py_func, "typical", ())
    # "&", not "and": no short-circuit, so no phi for numba's inliner to trip on.
    test = " & ".join(f"(k[{slot}] {'!=' if nonzero else '=='} 0)" for slot, nonzero in flags)
    return _generated("typical_impl", "elem, k", [f"return {test}"], {})


def ahead(elem, p, g, s, i):
    """Ask for the lines PREFETCH_AHEAD bytes past block ``i`` (PREFETCH_BLOCK
    elements) of params, grads (unless ``elem``'s kind is in NO_GRADS) and
    every state buffer."""


@overload(ahead)
def _ahead_impl(elem, p, g, s, i):
    # The numba version of kernels/_driver.pxi's AF_AHEAD_BLOCK: one request per line
    # of each stream the pass reads, generated for the dtype and the number
    # of state buffers.  A loop in a function of its own (LLVM inlines it),
    # not statements inlined by numba, which types every statement of each
    # inlined copy: Adam's first step with an empty cache compiled in 6.3 s
    # that way, 4.0 s this way (3.3 s without the blocks).
    name = elem.dispatcher.py_func.__name__
    reads_g = not (name.startswith("elem_") and name[len("elem_"):] in NO_GRADS)
    size = p.dtype.bitwidth // 8
    first = PREFETCH_AHEAD // size
    lines = [f"for e in range(i + {first}, i + {first + PREFETCH_BLOCK}, {LINE // size}):"]
    lines += ["    prefetch(g, e)"] if reads_g else []
    lines += ["    prefetch(p, e)"]
    lines += [f"    prefetch(s[{j}], e)" for j in range(len(s))]
    return _generated("ahead_impl", "elem, p, g, s, i", lines, {"prefetch": prefetch})


@njit
def ahead_one(x, i):
    """:func:`ahead` for one more stream (the parameter EMA)."""
    for off in range(0, PREFETCH_BLOCK * x.itemsize, LINE):
        prefetch(x, i + (PREFETCH_AHEAD + off) // x.itemsize)


@njit(inline="always")
def _blocks(elem, p, g, s, k, n):
    # walk's loop without the EMA: each block after its requests (ahead), on
    # slices of its own from 0, for the reason walk gives.
    for b in range(0, n, PREFETCH_BLOCK):
        ahead(elem, p, g, s, b)
        e = min(b + PREFETCH_BLOCK, n)
        pb = p[b:e]
        gb = g[b:e]
        sb = spans(s, b, e)
        for i in range(e - b):
            elem(i, pb, gb, sb, k)


@njit(inline="always")
def walk(elem, p, g, s, ema, k, lo, hi):
    """Elements [lo, hi) with the row ``k``, and the parameter EMA if ``ema`` is not empty.

    Block by block of PREFETCH_BLOCK elements, each after a request for the
    lines its streams will need PREFETCH_AHEAD bytes on (:func:`ahead`): with
    the square roots and divisions in flight, the out-of-order core alone
    keeps too few misses outstanding to saturate memory (_spec).
    """
    prefer_wide_vectors()
    # Slices walked from 0: indexing the full arrays with a signed loop
    # counter makes numba emit wraparound handling that stops LLVM from
    # vectorizing.
    p_ = p[lo:hi]
    g_ = g[lo:hi]
    s_ = spans(s, lo, hi)
    n = hi - lo
    if ema.size == 0:
        # Two copies of the loop, one for the typical row (see _typical): LLVM
        # leaves a select on a flag slot in the loop, as a compare and branch
        # per vector with both sides computed, but folds it away in the copy
        # where the test before the loop fixed the flag (Adam in cache, 1
        # thread, Intel Xeon: 5-10% less time per element).
        if _typical(elem, k):
            _blocks(elem, p_, g_, s_, k, n)
        else:
            _blocks(elem, p_, g_, s_, k, n)
    else:
        # The parameter EMA: one more stream of the same pass, for every kind
        # (the numba version of kernels/_driver.pxi's _span).
        e_ = ema[lo:hi]
        for b in range(0, n, PREFETCH_BLOCK):
            ahead(elem, p_, g_, s_, b)
            ahead_one(e_, b)
            e = min(b + PREFETCH_BLOCK, n)
            pb = p_[b:e]
            gb = g_[b:e]
            sb = spans(s_, b, e)
            eb = e_[b:e]
            for i in range(e - b):
                elem(i, pb, gb, sb, k)
                eb[i] = k[EMA_D] * eb[i] + k[EMA_OMD] * pb[i]


@njit(inline="always")
def head(elem, p, g, s, ema, k, lo, hi):
    """Elements [lo, hi) before the first cache line, fewer than a vector's worth.

    One plain loop: the elements are those :func:`walk` computes, but walk's
    three vectorized loop copies, compiled a second time for a few elements,
    cost a quarter of each block entry's compile time (Adam's two kinds: 8.4 s
    against 6.1 s with an empty cache, Intel Xeon) and bought no speed.
    """
    for i in range(lo, hi):
        elem(i, p, g, s, k)
        if ema.size != 0:
            ema[i] = k[EMA_D] * ema[i] + k[EMA_OMD] * p[i]


@njit(inline="always")
def chunk(elem, p, g, s, ema, scalars, chunks, c):
    """Chunk row ``c`` = (group, lo, hi): elements [lo, hi) with ``scalars[group]``.

    family_kernel has checked every row against the buffers and the table.
    """
    lo = chunks[c, 1]
    hi = chunks[c, 2]
    k = row(p, scalars[chunks[c, 0]])
    mid = line_start(p, lo, hi)
    head(elem, p, g, s, ema, k, lo, mid)
    walk(elem, p, g, s, ema, k, mid, hi)


# --- the block entries: numba's update on adamfast's thread pool ------------------------
#
# The parallel path does not use numba's own pool (prange): its OpenMP or
# workqueue team ends each call with a barrier that waits for every thread
# to arrive, and on a busy machine that wait is a whole time slice.  Each
# kind also has a C-callable "block" entry, ``void(ctx, c0, c1)``, that
# updates chunk rows [c0, c1); adamfast's C pool (kernels/af_pool.c, in the
# cython extension; the arrangement is described in _pool.py) calls it from
# the caller's thread and its workers.
# ``ctx`` points at intp words: the addresses of the CTX_* arrays, then the
# kind's state buffers' (CTX_STATES, as many as the kind has), then the
# call's sizes (CTX_N and on, counted from the words after the states).
# Every state buffer has params' length (family_kernel checked it).  Block
# entries are nopython code without Python objects or exceptions, so they run
# without the GIL on any thread.

BLOCK_SIGNATURE = types.void(types.voidptr, types.intp, types.intp)
CTX_P, CTX_G, CTX_EMA, CTX_SCALARS, CTX_CHUNKS, CTX_STATES = range(6)
CTX_N, CTX_NEMA, CTX_GROUPS, CTX_ROWS, CTX_F64 = range(5)  # after the states
CTX_SIZE = CTX_STATES + MAXSTATE + 5


@intrinsic
def _address(typingctx, addr):
    # An integer address as a void pointer, for carray.
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(addr), codegen


def _views(elem, h, dt):
    """(params, grads, states, ema, scalars, chunks) of the call in ``h``, as arrays."""


@overload(_views, inline="always")
def _views_impl(elem, h, dt):
    nstate = NSTATE[elem.dispatcher.py_func.__name__[len("elem_"):]]
    sizes = CTX_STATES + nstate
    states = "".join(f"carray(_address(h[{CTX_STATES + j}]), (n,), dt), " for j in range(nstate))
    lines = [f"n = h[{sizes + CTX_N}]",
             f"p = carray(_address(h[{CTX_P}]), (n,), dt)",
             f"g = carray(_address(h[{CTX_G}]), (n,), dt)",
             f"ema = carray(_address(h[{CTX_EMA}]), (h[{sizes + CTX_NEMA}],), dt)",
             f"scalars = carray(_address(h[{CTX_SCALARS}]), (h[{sizes + CTX_GROUPS}], {NSLOT}), "
             f"np.float64)",
             f"chunks = carray(_address(h[{CTX_CHUNKS}]), (h[{sizes + CTX_ROWS}], 3), np.intp)",
             f"return p, g, ({states}), ema, scalars, chunks"]
    return _generated("views_impl", "elem, h, dt", lines,
                      {"carray": carray, "_address": _address, "np": np})


def _is_f64(elem, h):
    """Whether the call in ``h`` is on float64 buffers."""


@overload(_is_f64, inline="always")
def _is_f64_impl(elem, h):
    word = CTX_STATES + NSTATE[elem.dispatcher.py_func.__name__[len("elem_"):]] + CTX_F64
    return _generated("is_f64_impl", "elem, h", [f"return h[{word}] != 0"], {})


@njit(inline="always")
def _typed_blocks(elem, h, c0, c1, dt):
    p, g, s, ema, scalars, chunks = _views(elem, h, dt)
    for c in range(c0, c1):
        chunk(elem, p, g, s, ema, scalars, chunks, c)


@njit(inline="always")
def blocks(elem, ctx, c0, c1):
    """The body of every block entry: chunk rows [c0, c1) of the call in ``ctx``.

    family_kernel has checked the buffers and every chunk row, as for the
    serial entry, before it builds ``ctx``.
    """
    h = carray(ctx, (CTX_SIZE,), np.intp)
    if _is_f64(elem, h):
        _typed_blocks(elem, h, c0, c1, np.float64)
    else:
        _typed_blocks(elem, h, c0, c1, np.float32)
