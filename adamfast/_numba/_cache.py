"""A source stamp for numba's on-disk cache that covers the code the kernels inline.

numba keys a cached entry on the source file that defines it, and nothing
else.  Every entry here inlines the shared driver (``_driver.py``), the
lanes, the slot constants of ``adamfast/algorithms`` and more, so a change
to any of those files (an upgrade of adamfast, or an edit) would leave the
entries running the old code: a wrong result, silently.  ``pip`` does not
remove numba's cache files when it replaces the package, so an upgrade
meets them.

:func:`install` puts a locator in front of numba's own for the files of
this package (adamfast._numba) only.  It keeps the location numba would
choose (``__pycache__`` beside the source, ``NUMBA_CACHE_DIR``, the
user-wide cache) and adds to the source stamp a digest of every file the
kernels depend on (:data:`SOURCES`).  numba then treats a cache written against other sources as stale and
compiles afresh, overwriting it.

This reaches into numba's caching internals: the class list
``_locator_classes`` of ``numba.core.caching.CacheImpl`` (``_CacheImpl`` in
older numba) and the ``_CacheLocator`` interface.  Where they are not
found, nothing is installed, numba's own stamp applies, and
``stamp_installed()`` says so; ``ADAMFAST_NUMBA_STAMP=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The directories and files, relative to the package, whose code the numba
# entries compile in: the kernels themselves, the specs (slot constants,
# state buffers, LANES and CHUNK) and the engine's tables.
SOURCES = ("_numba", "algorithms", "_engine.py")
_installed = False


def _files(root=_PACKAGE):
    out = []
    for name in SOURCES:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            out += sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))
        elif os.path.isfile(path):
            out.append(path)
    return out


def sources_digest(root=_PACKAGE):
    """SHA-256 over the names and contents of the files in :data:`SOURCES` under ``root``."""
    h = hashlib.sha256()
    for path in _files(root):
        h.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


_KERNELS = os.path.dirname(os.path.abspath(__file__))


def _ours(py_file):
    try:
        return os.path.commonpath([os.path.abspath(py_file), _KERNELS]) == _KERNELS
    except ValueError:  # another drive, on Windows
        return False


def install():
    """Put the stamping locator in front of numba's (once); return whether it is in place."""
    global _installed
    if _installed:
        return True
    if os.environ.get("ADAMFAST_NUMBA_STAMP", "").strip() == "0":
        return False
    try:
        from numba.core import caching

        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        locators = impl._locator_classes
        base = caching._CacheLocator
    except (ImportError, AttributeError):
        return False
    digest = sources_digest()

    class SourcesStampLocator(base):
        """numba's own locator for an adamfast file, with :func:`sources_digest` in its stamp."""

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            # numba reads some of its locators' attributes directly (``_py_file``,
            # in the warning that an entry cannot be cached); they are the inner one's.
            inner = self.__dict__.get("_inner")
            if inner is None:
                raise AttributeError(name)
            return getattr(inner, name)

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return (self._inner.get_source_stamp(), digest)

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _ours(py_file):
                return None
            for other in locators:
                if other is not cls:
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner)
            return None

    locators.insert(0, SourcesStampLocator)
    _installed = True
    return True


def stamp_installed():
    """Whether numba's cache entries of adamfast carry the sources digest."""
    return _installed
