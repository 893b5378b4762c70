"""Pickles read safely: an unpickler that builds only what a dataset batch holds.

CIFAR's "python version" files are pickles, and unpickling runs whatever a file asks for.
`restricted_load` builds dicts, lists, strings, bytes, numbers and numpy arrays, and
refuses any other global before any of it runs (pickle's `find_class` is the one door).
"""

from __future__ import annotations

import io
import pickle

import numpy as np

def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, 'latin1').
    return text.encode(encoding)


# The only globals a CIFAR batch refers to: numpy's array reconstruction (written as
# numpy.core.* by Python 2 and numpy 1, numpy._core.* by numpy 2) and Python 3's bytes.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class UnsafePickle(Exception):
    """A pickle asked to build something no dataset batch contains."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes, numbers and numpy arrays; refuses any other
    global, so a crafted pickle cannot run code."""

    def find_class(self, module: str, name: str):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise UnsafePickle(f"refused to load {module}.{name}: not part of a dataset batch")
        return factory()


def restricted_load(data: bytes):
    """Unpickle `data` (Python 2 or 3 pickles; byte strings stay bytes)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
