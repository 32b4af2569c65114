"""timm's optimizer modules for the parity tests, loaded from their files.

timm's package ``__init__`` imports torchvision, and timm is not a test
dependency, so a module of ``timm/optim`` is loaded on its own:
``load("lamb")`` returns ``timm/optim/lamb.py`` as a module.  Its relative
imports (``._helpers``, ``._types``) resolve inside a stand-in package whose
path is that ``optim`` directory, so ``timm/optim/__init__.py`` never runs.
The directory comes from an installed timm, else from a timm wheel in
``/tmp/timm`` or ``/opt/pypi/files`` (``pip download timm --no-deps -d
/tmp/timm``), extracted to a temporary directory; else the test is skipped.
"""

from __future__ import annotations

import atexit
import glob
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
import zipfile

import pytest

_PACKAGE = "_adamfast_tests_timm_optim"
_WHEELS = ("/tmp/timm/timm-*.whl", "/opt/pypi/files/timm-*.whl")
_found = []  # the optim directory, once found


def _optim_dir():
    if _found:
        return _found[0]
    try:
        spec = importlib.util.find_spec("timm")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "optim")
        if os.path.isdir(path):
            _found.append(path)
            return path
    for pattern in _WHEELS:
        for wheel in sorted(glob.glob(pattern), reverse=True):  # the newest name first
            out = tempfile.mkdtemp(prefix="adamfast-timm-")
            atexit.register(shutil.rmtree, out, True)
            with zipfile.ZipFile(wheel) as z:
                members = [m for m in z.namelist() if m.startswith("timm/optim/")]
                if not members:
                    continue
                z.extractall(out, members)
            _found.append(os.path.join(out, "timm", "optim"))
            return _found[0]
    return None


def load(module_name):
    """timm's ``timm/optim/<module_name>.py`` as a module, or pytest.skip."""
    pytest.importorskip("torch")
    path = _optim_dir()
    if path is None or not os.path.exists(os.path.join(path, module_name + ".py")):
        pytest.skip(f"timm's optim/{module_name}.py not found (no timm installed, no wheel in "
                    f"{' or '.join(_WHEELS)}: pip download timm --no-deps -d /tmp/timm)")
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [path]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.{module_name}")
