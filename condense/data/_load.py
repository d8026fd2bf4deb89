"""``load_data``: check a spec and its options, pick the reader, build the ``DataBundle``.

In: a spec (``_spec``), limits, an input size, an augmentation, a cache directory.
Out: a ``DataBundle``: for ``imagefolder:`` the lazy reader's (``_imagefolder``); for MNIST and CIFAR the
arrays of ``_mnist`` or ``_cifar`` as a ``_TensorSource`` (``_memory``), normalized by the whole train
split's per-channel statistics (``_cache``), limited to a fixed pseudo-random subset if asked, named by its
kind (or by the tree's own name for another image tree read as ``cifar10:``/``cifar100:``).
Never: downloads (a path that does not exist is a CondenseError), or checks the options after reading.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._budget import parse_input_size
from .._errors import CondenseError
from ._cache import _cached_stats, default_cache_dir
from ._cifar import _CIFAR10_NAMES, _load_cifar
from ._imagefolder import _load_imagefolder
from ._loader import DataBundle, _check_augment, _subset, default_augment
from ._memory import _Arrays, _TensorSource
from ._mnist import _load_mnist
from ._spec import DataSpec, parse_data_spec
from ._trees import _TAR_SUFFIXES


def _is_grey(x: np.ndarray) -> bool:
    """Whether uint8 NCHW images are grey: one channel, or three equal ones (in the first 256 images)."""
    if x.shape[1] == 1:
        return True
    head = x[:256]
    return x.shape[1] == 3 and bool((head[:, 0] == head[:, 1]).all() and (head[:, 1] == head[:, 2]).all())


def _tree_stem(path: Path) -> str:
    name = path.resolve().name
    for suffix in _TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _data_name(spec: DataSpec, classes: tuple[str, ...]) -> str:
    """The data set's name for records: the kind for MNIST and the real CIFAR sets, else (another image
    tree read as cifar10:/cifar100:) the tree's own name, e.g. ``letters`` for ``cifar10:letters.tar.gz``."""
    if (
        spec.kind == "mnist"
        or (spec.kind == "cifar10" and classes == _CIFAR10_NAMES)
        or (spec.kind == "cifar100" and len(classes) == 100)
    ):
        return spec.kind
    return _tree_stem(spec.path)


def _in_memory_bundle(
    spec: DataSpec,
    arrays: _Arrays,
    cache: Path,
    limits: tuple[int | None, int | None],
    input_size: tuple[int, int, int] | None,
    augment: str | None,
) -> DataBundle:
    native = tuple(int(d) for d in arrays.x_train.shape[1:])
    size = input_size or native
    kind = (
        default_augment(native[0], native[1:], _is_grey(arrays.x_train))
        if augment is None
        else _check_augment(augment, spec)
    )
    if size[0] != native[0] and native[0] != 1:
        raise CondenseError(
            f"{spec}: cannot make {size[0]}-channel inputs from {native[0]}-channel images",
            f"use input_size with {native[0]} channels",
        )
    mean, std = arrays.stats or _cached_stats(arrays, cache, spec)
    if size[0] != native[0]:  # grey images fed to a colour model: repeat the channel
        mean, std = mean * size[0], std * size[0]
    x, y = {}, {}
    for split, limit in zip(("train", "test"), limits):
        xs, ys = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        pick = _subset(len(ys), limit)
        if pick is not None:
            xs, ys = xs[pick], ys[pick]
        if not xs.flags.writeable:  # np.frombuffer over an idx file: torch wants its own memory
            xs = xs.copy()
        x[split] = torch.from_numpy(np.ascontiguousarray(xs))
        y[split] = torch.from_numpy(np.ascontiguousarray(ys, dtype=np.int64))
    src_mean, src_std = mean[: native[0]], std[: native[0]]
    source = _TensorSource(x, y, src_mean, src_std, size, crop_flip=kind == "crop-flip")
    return DataBundle(
        name=_data_name(spec, arrays.classes),
        num_classes=len(arrays.classes),
        input_size=size,
        mean=mean,
        std=std,
        classes=arrays.classes,
        train_size=source.size("train"),
        test_size=source.size("test"),
        spec=spec,
        augment=kind,
        _source=source,
    )


def load_data(
    spec: str | DataSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    input_size: tuple | str | None = None,
    augment: str | None = None,
) -> DataBundle:
    """Load a data set named by ``spec`` (see ``parse_data_spec``) from disk.

    ``limit_train`` / ``limit_test`` keep a fixed pseudo-random subset of that many images (normalization
    still comes from the whole train split). ``input_size`` (C, H, W) resizes small images on the fly (and
    repeats a grey channel for 3-channel models); for ``imagefolder`` it is the size images are read at
    (default: the images' own size when small, else 3x224x224). ``augment``: one of ``AUGMENTS``, applied
    by ``loader(augment=True)``; None picks the data's default (``default_augment``).
    """
    spec = parse_data_spec(spec)
    if not spec.path.exists():
        raise CondenseError(f"{spec}: {spec.path} does not exist", "check the path (it is read, never downloaded)")
    for name, value in (("limit_train", limit_train), ("limit_test", limit_test)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CondenseError(f"bad {name} {value!r}", "use a positive number of images, or None for all")
    size = parse_input_size(input_size) if input_size is not None else None
    if augment is not None:
        _check_augment(augment, spec)
    limits = (limit_train, limit_test)
    if spec.kind == "imagefolder":
        return _load_imagefolder(spec, limits, size, augment)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    arrays = _load_mnist(spec, cache) if spec.kind == "mnist" else _load_cifar(spec, cache)
    return _in_memory_bundle(spec, arrays, cache, limits, size, augment)
