"""``adamfast.reference``: another importable name of the numpy backend.

The module is :mod:`adamfast._numpy_backend`; this name resolves to that very
module object, so attributes, monkeypatching and identity checks agree.
"""
import sys

from . import _numpy_backend

sys.modules[__name__] = _numpy_backend
