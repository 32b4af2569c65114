"""Row wrappers that run a call with one global setting changed, then restore it.

The rooflines and some rows run on a threading other than the user's choice
(the extension's parallel path, the pool's policy, numba's thread count);
every other row must still run with the setting the user chose.
"""

from __future__ import annotations


def _with_setting(read, write, value, call):
    """``call`` run with a global setting at ``value`` (``read()``/``write(v)``),
    set only if it differs and restored afterwards even when ``call`` raises:
    every other row must run with the setting the user chose."""
    def run(*args):
        previous = read()
        if previous == value:
            return call(*args)
        write(value)
        try:
            return call(*args)
        finally:
            write(previous)

    return run


def on_threading(module, mode, call):
    """``call`` run with the cython extension's parallel path set to ``mode``."""
    return _with_setting(module.threading_mode, module._set_threading, mode, call)


def on_pool_policy(module, policy, call):
    """``call`` run with the pool's choice for large calls forced to ``policy``
    ("pool": adamfast's own threads only; see kernels/af_pool.h)."""
    return _with_setting(lambda: module._pool_policy()[0], module._set_pool_policy, policy,
                         call)


def on_numba_threads(threads, call):
    """``call`` run with numba's thread count at ``threads`` (a per-thread setting)."""
    import numba

    return _with_setting(numba.get_num_threads, numba.set_num_threads, threads, call)
