"""The CIFAR reader: the python batches (cifar-10-batches-py, cifar-100-python) or an image tree, in a folder or a tar.

In: ``cifar10:PATH`` or ``cifar100:PATH``: the batches' folder (or its parent), the original
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, or an image tree (``_trees``) as a folder or a tar.
Out: ``_Arrays`` (uint8 N x 3 x 32 x 32 for the batches; CIFAR-100's fine labels; class names from the
batches' meta file), checked by ``_check_arrays``.
Never: unpickles anything but dicts, lists and numpy arrays (``_ArrayUnpickler`` refuses any other class,
so a batch file cannot run code); extracts an archive to disk.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from .._errors import CondenseError
from ._cache import _cache_file, _content_key
from ._memory import _Arrays, _check_arrays
from ._spec import DataSpec, _reason
from ._trees import _IMAGE_EXTS, _is_tar, _open_tar, _read_tree_cache, _tar_errors, _tree_arrays

_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and nothing that could run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 reads old pickles without warning
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure means a damaged or foreign file
        raise CondenseError(
            f"{name}: not a readable CIFAR batch ({_reason(err)})",
            "the file is damaged or not from cifar-10-batches-py / cifar-100-python",
        ) from None
    if not isinstance(obj, dict):
        raise CondenseError(
            f"{name}: not a CIFAR batch (a {type(obj).__name__}, not a dict)",
            "point at cifar-10-batches-py or cifar-100-python",
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(batch: dict[str, Any], label_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise CondenseError(
            f"{name}: the batch has no 'data' / '{label_key}' entries", "the file is not a CIFAR batch of this kind"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CondenseError(
            f"{name}: 'data' is {data.dtype} {data.shape} with {len(labels)} labels, expected "
            "uint8 N x 3072 and N labels",
            "the file is damaged",
        )
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta: dict[str, Any] | None, key: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    if meta is None or key not in meta:
        return fallback
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])


def _cifar_from_pickles(spec: DataSpec, read: Callable[[str], bytes | None], where: str) -> _Arrays:
    """CIFAR from its python batches; ``read(name)`` returns a batch file's bytes or None when absent."""
    if spec.kind == "cifar10":
        train_names, test_names, meta_name = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"
        label_key, names_key, fallback = "labels", "label_names", _CIFAR10_NAMES
    else:
        train_names, test_names, meta_name = ["train"], ["test"], "meta"
        label_key, names_key, fallback = "fine_labels", "fine_label_names", tuple(str(i) for i in range(100))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for split, names in (("train", train_names), ("test", test_names)):
        for name in names:
            data = read(name)
            if data is None:
                raise CondenseError(
                    f"{spec}: {where} has no {name}",
                    f"the batches are {', '.join(train_names + test_names)}; copy them all",
                )
            parts[split].append(_batch_arrays(_unpickle(data, f"{where}/{name}"), label_key, f"{where}/{name}"))
    meta_bytes = read(meta_name)
    meta = _unpickle(meta_bytes, f"{where}/{meta_name}") if meta_bytes is not None else None
    classes = _names(meta, names_key, fallback)
    x = {s: np.concatenate([p[0] for p in parts[s]]) for s in parts}
    y = {s: np.concatenate([p[1] for p in parts[s]]) for s in parts}
    return _Arrays(x["train"], y["train"], x["test"], y["test"], classes, key="")


def _pickle_dir(spec: DataSpec) -> Path | None:
    marker = "data_batch_1" if spec.kind == "cifar10" else "train"
    sub = "cifar-10-batches-py" if spec.kind == "cifar10" else "cifar-100-python"
    for d in (spec.path, spec.path / sub):
        if (d / marker).is_file() and (spec.kind == "cifar10" or (d / "test").is_file()):
            return d
    return None


def _load_cifar(spec: DataSpec, cache: Path) -> _Arrays:
    path = spec.path
    if path.is_dir():
        d = _pickle_dir(spec)
        if d is not None:

            def read(name: str) -> bytes | None:
                f = d / name
                return f.read_bytes() if f.is_file() else None

            arrays = _cifar_from_pickles(spec, read, str(d))
            arrays.key = _content_key(spec, d)
            return _check_arrays(spec, arrays)
        split_dirs = [s for s in ("train", "test", "val") if (path / s).is_dir()]
        if "train" not in split_dirs or len(split_dirs) < 2:
            sub = "cifar-10-batches-py" if spec.kind == "cifar10" else "cifar-100-python"
            raise CondenseError(
                f"{spec}: {path} holds neither the CIFAR python batches nor train/ and test/ folders",
                f"point at {sub} (or its parent), or at an image tree train/<class>/, "
                "test/<class>/ (a directory or .tar.gz)",
            )

        def names() -> list[str]:
            return [
                f"{split}/{c.name}/{f.name}"
                for split in split_dirs
                for c in sorted((path / split).iterdir())
                if c.is_dir()
                for f in c.iterdir()
                if f.is_file()
            ]

        def reader(visit: Callable[[str, bytes], None]) -> None:
            for name in names():
                if name.lower().endswith(_IMAGE_EXTS):
                    visit(name, (path / name).read_bytes())

        return _tree_arrays(spec, cache, names, reader, str(path))
    if _is_tar(path):
        return _load_cifar_tar(spec, cache)
    raise CondenseError(
        f"{spec}: not a directory or a tar archive",
        "point at the CIFAR python batches, an image tree, or a .tar.gz/.tgz/.tar of either",
    )


def _load_cifar_tar(spec: DataSpec, cache: Path) -> _Arrays:
    key = _content_key(spec, spec.path)
    if _cache_file(cache, spec, key, ".npz").is_file():
        got = _read_tree_cache(_cache_file(cache, spec, key, ".npz"))
        if got is not None:
            return got
    with _open_tar(spec) as tf, _tar_errors(spec):
        members = [m for m in tf.getmembers() if m.isfile()]
        by_base: dict[str, Any] = {}
        for m in members:
            by_base.setdefault(PurePosixPath(m.name).name, m)
        marker = "data_batch_1" if spec.kind == "cifar10" else "train"
        if marker in by_base and not PurePosixPath(by_base[marker].name).suffix:
            # the original cifar-10-python.tar.gz / cifar-100-python.tar.gz: read the batches from the archive
            parent = PurePosixPath(by_base[marker].name).parent

            def read(name: str) -> bytes | None:
                m = next((m for m in members if PurePosixPath(m.name) == parent / name), None)
                return tf.extractfile(m).read() if m is not None else None

            arrays = _cifar_from_pickles(spec, read, f"{spec.path}:{parent}")
            arrays.key = key
            return _check_arrays(spec, arrays)

        def names() -> list[str]:
            return [m.name for m in members]

        def reader(visit: Callable[[str, bytes], None]) -> None:
            for m in members:  # archive order: a compressed tar is read front to back once
                if m.name.lower().endswith(_IMAGE_EXTS):
                    visit(m.name, tf.extractfile(m).read())

        return _tree_arrays(spec, cache, names, reader, str(spec.path))
