"""Checkpoints of an optimizer in one ``.npz`` file, written atomically.

``save_checkpoint(path, opt)`` writes the optimizer's state (and, by
default, its parameters) to a temporary file in the same directory and then
moves it over ``path`` with ``os.replace``, so a save killed midway leaves
the previous checkpoint intact.  Arrays are stored as arrays and everything
else as one JSON document, so loading needs no pickle
(``np.load(path)`` works with ``allow_pickle=False``).  ``load_checkpoint``
checks everything before it changes anything, like ``load_state_dict``.

Learning-rate schedules from :mod:`adamfast.schedules` are stored by name
and arguments; any other callable ``lr`` cannot be saved (save its state
yourself and restore the callable after loading).
"""

from __future__ import annotations

import json
import os
import secrets

import numpy as np

from . import schedules
from .algorithms._spec import describe

__all__ = ["save_checkpoint", "load_checkpoint"]

_META = "__adamfast_meta__"
_PARAMS = "__flat_params__"


def _encode(value, where):
    if isinstance(value, schedules._Schedule):
        return {"__schedule__": type(value).__name__,
                "args": {k: _encode(getattr(value, k), where) for k in value.__slots__}}
    if callable(value):
        raise TypeError(f"{where} is a callable {describe(value)} that cannot be saved; only "
                        f"adamfast.schedules objects can")
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{where} holds {describe(value)}, which a checkpoint cannot store")


def _decode(value):
    if isinstance(value, dict):
        if "__schedule__" in value:
            cls = getattr(schedules, value["__schedule__"])
            args = {k: _decode(v) for k, v in value["args"].items()}
            obj = cls.__new__(cls)
            obj.__setstate__(args)
            return obj
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _create_temp(directory):
    """A new file in ``directory`` opened for writing, and its path.  Created with
    mode 0o666 so that the umask (and a default ACL) decide the final mode, as for
    any file the user writes; ``tempfile.mkstemp`` would force 0o600."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    for _ in range(100):
        tmp = os.path.join(directory, f".adamfast-{secrets.token_hex(8)}.npz.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name in {directory!r}")


def save_checkpoint(path, opt, params=True):
    """Write ``opt.state_dict()`` (and ``opt.flat_params`` unless ``params=False``)
    to ``path`` atomically, with the mode the umask gives new files.  Returns ``path``."""
    sd = opt.state_dict()
    arrays, meta = {}, {}
    for key, value in sd.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif key == "param_groups":
            meta[key] = [{k: _encode(v, f"param_groups[{i}][{k!r}]") for k, v in g.items()}
                         for i, g in enumerate(value)]
        else:
            meta[key] = _encode(value, key)
    if params:
        arrays[_PARAMS] = opt.flat_params
    arrays[_META] = np.array(json.dumps(meta))
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path, opt, params=True):
    """Restore what :func:`save_checkpoint` wrote into ``opt`` (params too, unless
    ``params=False`` or the file has none).  Everything is checked first."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        if _META not in f.files:
            raise ValueError(f"{path!r} is not an adamfast checkpoint (no {_META} entry)")
        meta = json.loads(str(f[_META]))
        sd = {k: _decode(v) for k, v in meta.items()}
        sd["param_groups"] = [{k: _decode(v) for k, v in g.items()} for g in meta["param_groups"]]
        for key in f.files:
            if key not in (_META, _PARAMS):
                sd[key] = f[key]
        flat = f[_PARAMS] if (params and _PARAMS in f.files) else None
    if flat is not None and (flat.dtype != opt.flat_params.dtype
                             or flat.shape != opt.flat_params.shape):
        raise ValueError(f"the checkpoint's params are {flat.dtype} {flat.shape}, this optimizer "
                         f"holds {opt.flat_params.dtype} {opt.flat_params.shape}")
    opt.load_state_dict(sd)  # checks everything before writing
    if flat is not None:
        np.copyto(opt.flat_params, flat)
    return opt
