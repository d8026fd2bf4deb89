"""The MNIST reader: LeCun's idx files (a folder, optionally gzipped) or an ``mnist.npz``.

In: ``mnist:PATH``, a directory holding the four idx files (also under ``raw/`` or ``MNIST/raw/``), or a
``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (images N x H x W or N x H x W x C).
Out: ``_Arrays`` (uint8 NCHW images, int64 labels, classes ``0``..``9``), checked by ``_check_arrays``.
Never: unpickles (``np.load(allow_pickle=False)``), or reads a damaged or foreign file without a
CondenseError saying which file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .._errors import CondenseError
from ._cache import _content_key
from ._memory import _Arrays, _check_arrays
from ._spec import DataSpec, _reason

_MNIST_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """An idx file (LeCun's format: magic 0x00 0x00 TYPE NDIM, big-endian uint32 dims, then the data)."""
    hint = "the file is not an MNIST idx file or is damaged; re-extract the original idx files"
    expect = 0x0800 | ndim
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        magic = int.from_bytes(data[:4].ljust(4, b"\0"), "big")
        raise CondenseError(f"{name}: bad idx magic number 0x{magic:08x} (expected 0x{expect:08x})", hint)
    if data[2] != 0x08 or data[3] != ndim:
        magic = int.from_bytes(data[:4], "big")
        raise CondenseError(
            f"{name}: idx magic 0x{magic:08x} is not {'images' if ndim == 3 else 'labels'} (expected 0x{expect:08x})",
            hint,
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CondenseError(f"{name}: idx file truncated in its header", hint)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    want = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != want:
        raise CondenseError(
            f"{name}: idx header says {'x'.join(map(str, dims))} = {want} bytes of data but the "
            f"file holds {len(data) - header}",
            hint,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise CondenseError(f"{path}: cannot read ({_reason(err)})", "the file is damaged; re-extract it") from None


def _find_idx_files(root: Path) -> dict[str, Path] | None:
    for d in (root, root / "raw", root / "MNIST" / "raw"):
        found = {}
        for key, names in _MNIST_FILES.items():
            for name in names:
                for cand in (d / name, d / f"{name}.gz"):
                    if cand.is_file():
                        found.setdefault(key, cand)
        if len(found) == len(_MNIST_FILES):
            return found
        if found:
            missing = [names[0] for key, names in _MNIST_FILES.items() if key not in found]
            raise CondenseError(
                f"mnist:{root}: missing {', '.join(missing)} in {d}",
                "put all four idx files (optionally .gz) in one directory",
            )
    return None


def _load_mnist(spec: DataSpec, cache: Path) -> _Arrays:
    path = spec.path
    classes = tuple(str(i) for i in range(10))
    if path.is_dir():
        files = _find_idx_files(path)
        if files is None:
            raise CondenseError(
                f"{spec}: no MNIST idx files in {path}",
                "point at mnist.npz or at a directory holding train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or .gz)",
            )
        arr = {k: _parse_idx(_read_maybe_gz(p), str(p), 3 if k.startswith("x") else 1) for k, p in files.items()}
        x_train, x_test = arr["x_train"][:, None], arr["x_test"][:, None]
        y_train, y_test = arr["y_train"].astype(np.int64), arr["y_test"].astype(np.int64)
    elif path.suffix == ".npz":
        x_train, y_train, x_test, y_test = _read_npz(spec)
    else:
        raise CondenseError(f"{spec}: not a .npz file or a directory", "point at mnist.npz or at the idx directory")
    key = _content_key(spec, path)
    return _check_arrays(spec, _Arrays(x_train, y_train, x_test, y_test, classes, key))


def _read_npz(spec: DataSpec) -> tuple[np.ndarray, ...]:
    try:
        with np.load(spec.path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise CondenseError(
                    f"{spec}: the npz has no {', '.join(missing)} (it has {', '.join(z.files)})",
                    "save it with keys x_train, y_train, x_test, y_test",
                )
            out = []
            for k in ("x_train", "y_train", "x_test", "y_test"):
                a = z[k]
                if k.startswith("x"):
                    if a.ndim == 3:
                        a = a[:, None]
                    elif a.ndim == 4 and a.shape[-1] in (1, 3):
                        a = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
                    else:
                        raise CondenseError(
                            f"{spec}: {k} has shape {a.shape}, expected N x H x W or N x H x W x C",
                            "store images as uint8 NHW or NHWC",
                        )
                elif np.issubdtype(a.dtype, np.integer):
                    a = a.astype(np.int64).reshape(-1)
                else:
                    raise CondenseError(f"{spec}: {k} is {a.dtype}, expected integer labels", "store labels as int")
                out.append(a)
            return tuple(out)
    except CondenseError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile.BadZipFile, OSError, ValueError: a damaged file
        raise CondenseError(
            f"{spec}: cannot read the npz ({_reason(err)})", "the file is damaged; copy it again"
        ) from None
