"""A restricted unpickler for dataset ground-truth files: plain containers and numpy arrays, nothing else."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, InvalidArgumentError, RefusedGlobalError

try:  # numpy >= 2 moved the pickling helpers to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# The only globals a pickle may name: what numpy arrays, dtypes and scalars need to be rebuilt,
# and the codecs helper Python 3 uses to pickle bytes at protocol 2. No callable here runs code.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar
for _module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "ndarray")] = np.ndarray
    _ALLOWED[(_module, "dtype")] = np.dtype
_ALLOWED[("_codecs", "encode")] = __import__("codecs").encode
_ALLOWED[("collections", "OrderedDict")] = __import__("collections").OrderedDict
for _name in ("set", "frozenset", "complex", "bytearray"):
    _ALLOWED[("builtins", _name)] = getattr(__import__("builtins"), _name)
    _ALLOWED[("__builtin__", _name)] = getattr(__import__("builtins"), _name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(f"global {module}.{name} is not allowed") from None


def load_pickle(path: str | os.PathLike[str], *, encoding: str = "bytes") -> Any:
    """Load a data pickle (CIFAR batches, revisited Oxford/Paris ground truth) without running code.

    Args:
        path: the pickle file.
        encoding: how Python 2 ``str`` objects load ("bytes" keeps them as bytes, as CIFAR needs).

    Returns:
        The unpickled plain containers and arrays; dict keys that are bytes are decoded to str.

    Raises:
        InputNotFoundError: the file does not exist.
        InvalidArgumentError: the pickle names a class or function other than numpy's array
            helpers (it could run code), or is not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"pickle {path} does not exist")
    try:
        data = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding=encoding).load()
    except RefusedGlobalError as error:
        raise InvalidArgumentError(f"refusing to read {path}: {error} (only plain containers and numpy arrays are "
                                   "read, never code); is it really the dataset's file?") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise InvalidArgumentError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None
    return _decode_keys(data)


def _decode_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k.decode("latin-1") if isinstance(k, bytes) else k): _decode_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_keys(v) for v in value]
    return value
