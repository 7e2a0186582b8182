"""Reading and writing FLAME model files in the official pickle layout, without chumpy.

The official FLAME 2020 ``generic_model.pkl`` and FLAME 2023 ``flame2023.pkl`` are Python-2 pickles of
a dict. Some arrays (``v_template``, ``shapedirs``, ``posedirs``, ``weights``, ``J``) are pickled
chumpy ``Ch`` objects whose state dict holds the array under ``'x'``; ``J_regressor`` is a scipy
sparse CSC matrix pickled under its old module path ``scipy.sparse.csc``. chumpy does not import on
current numpy, so the reader maps chumpy classes onto a small stand-in and keeps only ``x``. The
reader accepts only the classes such a file needs (numpy arrays, scipy sparse matrices, chumpy
objects): any other class in the file is refused, because unpickling runs code.

The writer produces the same object types (``chumpy.ch.Ch`` objects, ``scipy.sparse.csc.csc_matrix``,
protocol 2), so the reader is tested on what the official files contain.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import scipy.sparse

from ..errors import GftError
from ..atomic import atomic_write

#: Keys every FLAME model file has.
REQUIRED_KEYS = ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
#: shapedirs[..., :SHAPE_BLOCK] are identity components, the rest expression (300 + 100 in FLAME 2020/2023).
SHAPE_BLOCK = 300
#: Keys stored as chumpy objects in the official files.
CHUMPY_KEYS = ("v_template", "shapedirs", "posedirs", "weights", "J")

_WHERE_TO_GET = "FLAME is licensed: register at https://flame.is.tue.mpg.de and download FLAME 2020 or FLAME 2023"


class FlameFileError(GftError, ValueError):
    """A file that is not a usable FLAME model; the message names the file and the problem."""


class ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: unpickles its state dict; the array is ``state['x']``."""

    def __init__(self, x: np.ndarray | None = None):
        if x is not None:
            self.__dict__.update(
                x=np.asarray(x), _dirty_vars=set(), _itr=None, _depends_on_deps={}, _make_dense=False, _make_sparse=False
            )

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


_ALLOWED_GLOBALS = {
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"),
    ("__builtin__", "object"), ("builtins", "object"), ("__builtin__", "set"), ("builtins", "set"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol 2 bytes written by Python 3
}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class _FlameUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return ChumpyArray
        if module.startswith("scipy.sparse") and name in ("csc_matrix", "csr_matrix", "coo_matrix"):
            return getattr(scipy.sparse, name)
        if (module, name) in _ALLOWED_GLOBALS or (module in _NUMPY_MODULES and name in ("_reconstruct", "scalar")):
            return super().find_class(module, name)
        raise FlameFileError(
            f"{self._path}: not a FLAME model file (it contains a {module}.{name} object, which a FLAME pickle never has)"
        )


def read_flame_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an official-layout FLAME pickle into plain numpy arrays.

    Returns:
        dict with at least REQUIRED_KEYS: f (F,3) int64, v_template (V,3), shapedirs (V,3,K),
        posedirs (V,3,(J-1)*9), J_regressor (J,V) dense, kintree_table (2,J) int64, weights (V,J),
        all float arrays as float64.
    Raises:
        FileNotFoundError: no file at ``path`` (the message says where to get FLAME).
        FlameFileError: the file is not a FLAME model, or a key is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME model file not found. {_WHERE_TO_GET}, and pass flame:PATH or set GFT_FLAME")
    try:
        with open(path, "rb") as fh:
            raw = _FlameUnpickler(fh, path).load()
    except FlameFileError:
        raise
    except Exception as exc:  # truncated or non-pickle data
        raise FlameFileError(f"{path}: cannot be read as a FLAME pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise FlameFileError(f"{path}: not a FLAME model (expected a pickled dict, found {type(raw).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise FlameFileError(f"{path}: not a complete FLAME model, missing key(s) {missing}")
    arrays = {k: _to_numpy(v, path, k) for k, v in raw.items() if k in REQUIRED_KEYS or k == "J"}
    arrays["f"] = arrays["f"].astype(np.int64)
    arrays["kintree_table"] = arrays["kintree_table"].astype(np.int64)
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        arrays[k] = arrays[k].astype(np.float64)
    validate_flame_arrays(arrays, path)
    return arrays


def _to_numpy(value, path: Path, key: str) -> np.ndarray:
    if isinstance(value, ChumpyArray):
        if "x" not in value.__dict__:
            raise FlameFileError(f"{path}: key '{key}' is a chumpy expression without a stored value 'x'")
        value = value.__dict__["x"]
    if scipy.sparse.issparse(value):
        return np.asarray(value.toarray())
    if isinstance(value, np.ndarray):
        return value
    raise FlameFileError(f"{path}: key '{key}' holds a {type(value).__name__}, expected an array")


def validate_flame_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Check the shapes of a FLAME array dict against each other; raise FlameFileError naming the key."""
    v = arrays["v_template"]
    if v.ndim != 2 or v.shape[1] != 3:
        raise FlameFileError(f"{path}: 'v_template' must be (V, 3), got {v.shape}")
    n_v = v.shape[0]
    kt = arrays["kintree_table"]
    if kt.ndim != 2 or kt.shape[0] != 2:
        raise FlameFileError(f"{path}: 'kintree_table' must be (2, J), got {kt.shape}")
    n_j = kt.shape[1]
    expect = {
        "f": (None, 3),
        "shapedirs": (n_v, 3, None),
        "posedirs": (n_v, 3, (n_j - 1) * 9),
        "J_regressor": (n_j, n_v),
        "weights": (n_v, n_j),
    }
    for key, shape in expect.items():
        got = arrays[key].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = tuple("*" if s is None else s for s in shape)
            raise FlameFileError(f"{path}: '{key}' must have shape {want}, got {got}")
    f = arrays["f"]
    if f.size and (f.min() < 0 or f.max() >= n_v):
        raise FlameFileError(f"{path}: 'f' indexes vertices outside 0..{n_v - 1}")
    parents = kt[0, 1:]
    if np.any(parents >= np.arange(1, n_j)):
        raise FlameFileError(f"{path}: 'kintree_table' parents must precede their children")


def write_flame_pickle(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an official-layout FLAME pickle (protocol 2, chumpy objects, sparse CSC regressor).

    The file is written to a temporary name and renamed, so a killed write leaves no partial file.
    """
    path = Path(path)
    validate_flame_arrays(arrays, path)
    payload: dict[str, object] = {"bs_style": "lbs", "bs_type": "lrotmin"}
    for key, value in arrays.items():
        if key in CHUMPY_KEYS:
            payload[key] = ChumpyArray(np.asarray(value, dtype=np.float64))
        elif key == "J_regressor":
            payload[key] = scipy.sparse.csc_matrix(np.asarray(value, dtype=np.float64))
        elif key == "f":
            payload[key] = np.asarray(value, dtype=np.uint32)
        else:
            payload[key] = np.asarray(value)
    data = pickle.dumps(payload, protocol=2)
    data = _rename_globals(
        data,
        {
            (ChumpyArray.__module__, ChumpyArray.__qualname__): ("chumpy.ch", "Ch"),
            (scipy.sparse.csc_matrix.__module__, "csc_matrix"): ("scipy.sparse.csc", "csc_matrix"),
        },
    )
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def _rename_globals(data: bytes, renames: dict[tuple[str, str], tuple[str, str]]) -> bytes:
    """Rewrite the GLOBAL opcodes of a protocol-2 pickle so classes carry the official files' names."""
    out = io.BytesIO()
    last = 0
    for op, arg, pos in pickletools.genops(data):
        if op.name != "GLOBAL":
            continue
        module, name = arg.split(" ", 1)
        if (module, name) in renames:
            new_module, new_name = renames[(module, name)]
            end = pos + 1 + len(module) + 1 + len(name) + 1
            out.write(data[last:pos])
            out.write(b"c" + new_module.encode() + b"\n" + new_name.encode() + b"\n")
            last = end
    out.write(data[last:])
    return out.getvalue()
