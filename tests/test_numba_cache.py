"""numba's on-disk cache of the kernels follows every file they inline (_numba/_cache.py)."""

import os
import shutil
import subprocess
import sys

import pytest

import adamfast

pytest.importorskip("numba")
if "numba" not in adamfast.available_backends():
    pytest.skip("the numba backend is not available", allow_module_level=True)

from adamfast._numba import _cache  # noqa: E402

PACKAGE = os.path.dirname(adamfast.__file__)


def _copy_sources(dst):
    for name in _cache.SOURCES:
        src = os.path.join(PACKAGE, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, os.path.join(dst, name))


def _adam_entry():
    # Adam's block entry, compiled (or loaded) as the pool runs it.
    import adamfast._numba as nb
    from adamfast._numba import adam

    return nb._cfunc(adam.adam_block)


def test_entries_carry_the_sources_digest():
    assert _cache.stamp_installed()
    locator = _adam_entry()._cache._impl.locator
    stamp = locator.get_source_stamp()
    assert stamp[1] == _cache.sources_digest()
    # numba's own choice of place, unchanged
    assert os.path.isdir(locator.get_cache_path())


def test_digest_follows_every_source_and_nothing_else(tmp_path):
    _copy_sources(tmp_path)
    base = _cache.sources_digest(str(tmp_path))
    assert base == _cache.sources_digest()
    (tmp_path / "optim.py").write_text("# not inlined by any kernel\n")
    assert _cache.sources_digest(str(tmp_path)) == base
    for rel in ("_numba/_driver.py", "algorithms/adam.py", "_engine.py"):
        path = tmp_path / rel
        old = path.read_text()
        path.write_text(old + "\n# edited\n")
        assert _cache.sources_digest(str(tmp_path)) != base, rel
        path.write_text(old)
    assert _cache.sources_digest(str(tmp_path)) == base


_PROBE = """
import numpy as np, adamfast
assert adamfast.__file__.startswith({root!r}), adamfast.__file__
p, g, m, v = (np.full(100, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
adamfast.adam_step(p, g, m, v, step=1, backend="numba")
import adamfast._numba as nb
from adamfast._numba import adam
print(nb._cfuncs[adam.adam_block].cache_hits)
"""


def test_an_edit_to_an_inlined_file_recompiles(tmp_path):
    # A copy of the package (with its compiled extensions): its first run
    # writes numba's cache, the second loads it; after an edit to the shared
    # driver, which numba's own stamp does not see, the cache is stale.
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "adamfast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("ADAMFAST_NUMBA_STAMP", None)

    def hits():
        out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(root))], env=env,
                             cwd=str(root), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    assert hits() == 0
    assert hits() == 1
    with open(root / "adamfast" / "_numba" / "_driver.py", "a") as f:
        f.write("\n# an edit to the shared driver\n")
    assert hits() == 0, "the entry loaded a cache written against the old driver"
    assert hits() == 1


def test_without_numba_internals_or_when_off_nothing_is_installed(monkeypatch):
    from numba.core import caching

    monkeypatch.setattr(_cache, "_installed", False)
    monkeypatch.setenv("ADAMFAST_NUMBA_STAMP", "0")
    assert _cache.install() is False
    monkeypatch.delenv("ADAMFAST_NUMBA_STAMP")
    monkeypatch.delattr(caching, "_CacheLocator")
    assert _cache.install() is False
    assert not _cache.stamp_installed()


def test_an_uncachable_entry_warns_as_numba_does():
    """numba warns, naming the source file, when an entry cannot be cached (lifted
    loops, dynamic globals); with the stamp in front of its locator that must stay a
    warning, not an AttributeError from the wrapper."""
    from numba.core import caching, errors

    impl = _adam_entry()._cache._impl
    assert type(impl.locator).__name__ == "SourcesStampLocator"

    class _Library:
        has_dynamic_globals = True

    class _Fndesc:
        qualname = "adam_block"

    class _Result:
        lifted = ()
        library = _Library()
        fndesc = _Fndesc()

    assert isinstance(impl, caching.CacheImpl)
    with pytest.warns(errors.NumbaWarning, match="Cannot cache"):
        assert impl.check_cachable(_Result()) is False


_FIRST_USE = """
import numpy as np, adamfast
import adamfast._numba as nb
p, g, m, v = (np.full(100, x, np.float32) for x in (1.0, 0.5, 0.0, 0.0))
adamfast.adam_step(p, g, m, v, step=1, backend="numba")
print(sorted(fn.__name__ for fn in nb._cfuncs))
"""


def test_a_first_step_compiles_only_its_kind(tmp_path):
    # Compile time: an Adam step must not wait for the loops of its module's
    # other kind (AMSGrad).
    from adamfast._numba import _pool

    if _pool.RUN_BLOCKS is None:
        pytest.skip("numba runs on its own pool here: no block entries")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _FIRST_USE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['adam_block']", out.stdout
