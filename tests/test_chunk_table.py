"""The engine's chunk table (adamfast._engine.chunk_table), the one every front end hands
the kernels: each range split into CHUNK-element chunks from its own start, tagged with
its group's row, and adamfast.torch's tables made by it."""

import numpy as np
import pytest

from adamfast import _engine
from adamfast.algorithms._spec import CHUNK

# (lo, hi) ranges, and the group row of each: empty ranges, ranges of exactly CHUNK,
# one element past it, ranges that do not start at a multiple of CHUNK, several
# ranges sharing a row and rows out of order (adamfast.torch's per-step classes).
LAYOUTS = [
    ([], []),
    ([(0, 0)], [0]),
    ([(0, 5)], [0]),
    ([(0, CHUNK), (CHUNK, 3 * CHUNK + 1)], [1, 0]),
    ([(0, 7), (7, 40007), (40007, 40008), (40008, 90000)], [0, 1, 0, 2]),
    ([(10, 10), (10, 100003)], [3, 0]),
]


def _check(table, bounds, groups):
    assert table.dtype == np.intp and table.ndim == 2 and table.shape[1] == 3
    assert not table.flags.writeable  # shared between steps: nobody may change it
    at = 0
    for (lo, hi), g in zip(bounds, groups):
        mine = table[at: at + -(-(hi - lo) // CHUNK)]
        at += len(mine)
        assert (mine[:, 0] == g).all()
        # Consecutive chunks from the range's own start, CHUNK long but the last.
        assert [int(c) for c in mine[:, 1]] == list(range(lo, hi, CHUNK))
        assert (mine[:-1, 2] == mine[1:, 1]).all()
        sizes = mine[:, 2] - mine[:, 1]
        assert (sizes[:-1] == CHUNK).all() and (sizes > 0).all() and (sizes <= CHUNK).all()
        assert len(mine) == 0 or mine[-1, 2] == hi
    assert at == len(table)


@pytest.mark.parametrize("bounds, groups", LAYOUTS)
def test_chunks_split_each_range_from_its_start(bounds, groups):
    _check(_engine.chunk_table(bounds, groups), bounds, groups)
    # Without rows, range i is group i.
    _check(_engine.chunk_table(bounds), bounds, range(len(bounds)))


def test_groups_must_match_the_ranges():
    with pytest.raises(ValueError):
        _engine.chunk_table([(0, 5), (5, 9)], [0])


def test_torch_tables_come_from_the_engine():
    """adamfast.torch's tables (all params stepping; some params without a grad) are the
    engine's: a group's params, contiguous in the flat buffers, make one range."""
    torch = pytest.importorskip("torch")
    import adamfast.torch as aft

    seen = []
    real = _engine.chunk_table

    def spy(bounds, groups=None):
        table = real(bounds, groups)
        seen.append((list(bounds), None if groups is None else list(groups), table))
        return table

    sizes = [(3,), (40000,), (17, 5), (CHUNK,), (1,), (20000, 2)]
    params = [torch.zeros(s, requires_grad=True) for s in sizes]
    from adamfast.torch import _step

    # The slabs' layout calls _engine.chunk_table through the module (adamfast._core_flat);
    # the per-step classes import it by name.
    mp = pytest.MonkeyPatch()
    for module in (_engine, _step):
        mp.setattr(module, "chunk_table", spy)
    try:
        opt = aft.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
        for t in range(3):
            for j, p in enumerate(params):
                p.grad = None if t == 1 and j == 1 else torch.ones_like(p)
            opt.step()
    finally:
        mp.undo()
    slab = opt._slabs[0]
    rows, table = slab.full
    assert any(t is table for _, _, t in seen)
    n0 = 3 + 40000
    n = sum(p.numel() for p in params)
    _check(table, [(0, n0), (n0, n)], [0, 1])
    # Step 2, without param 1's grad: params 0 and 2.. in two rows, param 1 left out.
    # Step 3: param 1 one step behind the rest of its group, so a row of its own.
    partial = [(b, g) for b, g, _ in seen if b and b[0] == (0, 3)]
    assert partial == [([(0, 3), (n0, n)], [0, 1]), ([(0, 3), (3, n0), (n0, n)], [0, 1, 2])]
