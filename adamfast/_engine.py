"""The generic middle of every step: chunk tables, scalar tables, one kernel call.

Chunks are the unit of work handed to a thread: ``CHUNK`` elements
(:mod:`adamfast.algorithms._spec`, the one source of the engine's constants).  Each
parameter group is split into its own chunks from its first element, so no
chunk straddles a group and one kernel call serves every group.  The split
depends only on the group boundaries, never on the thread count.
"""

from __future__ import annotations

import numpy as np

from .algorithms._spec import CHUNK, NSLOT

__all__ = ["CHUNK", "chunk_table", "single_chunks", "scalar_table"]

_single = {}


def chunk_table(bounds):
    """The ``(group, lo, hi)`` rows for groups covering ``bounds`` = [(lo, hi), ...]."""
    rows = []
    for group, (lo, hi) in enumerate(bounds):
        for start in range(lo, hi, CHUNK):
            rows.append((group, start, min(start + CHUNK, hi)))
    table = np.array(rows, dtype=np.intp).reshape(-1, 3)
    table.setflags(write=False)
    return table


def single_chunks(n):
    """The chunk table of one group of ``n`` elements (cached: it is per call)."""
    table = _single.get(n)
    if table is None:
        if len(_single) > 256:
            _single.clear()
        table = _single[n] = chunk_table([(0, n)])
    return table


def scalar_table(rows):
    """Stack per-group rows (tuples of <= NSLOT floats) into the float64 table."""
    table = np.zeros((len(rows), NSLOT))
    for g, row in enumerate(rows):
        table[g, :len(row)] = row
    return table
