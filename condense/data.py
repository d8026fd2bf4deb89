"""Offline image-classification data: parse a spec, load it once, iterate normalized batches.

In: a spec ``KIND:PATH`` (``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``) naming files already on disk.
Out: a ``DataBundle`` (name, sizes, classes, normalization, augmentation) whose ``loader()`` yields ``(x, y)``
batches, float32 NCHW normalized by the train split's per-channel mean/std and int64 labels, shuffled by
``seed + epoch`` and sharded by ``rank / world_size`` like torch's ``DistributedSampler``.
Never: downloads, prints, or does work at import time; leaves a half-written cache behind.

Small-image sets (MNIST, CIFAR) are held in memory as uint8 tensors; batches are gathered, augmented and
normalized with tensor ops. Image trees (a directory or a tar of ``train/<class>/*.jpg``) are decoded once
into uint8 arrays kept in a cache directory (``$CONDENSE_CACHE/data`` or ``~/.cache/condense/data``).
``imagefolder:`` trees (any size) are read lazily through torchvision's ``ImageFolder`` and a 2-worker
DataLoader, at the input size asked for, else at the images' own size when they are small (the first
training image under 128 pixels a side), else at 224x224.

Augmentation (``augment=``, what ``loader(augment=True)`` applies; ``AUGMENTS``): ``none``; ``crop-flip``
(a random crop of the image zero-padded by an eighth of its side, 4 pixels at 32, and a horizontal flip);
``timm`` (timm's training transform: random resized crop, flip, colour jitter; ``imagefolder:`` only). The
default suits the data (``default_augment``): none for grey images (digits, letters: a flip changes their
meaning), timm's for photos of 128 pixels or more, crop-flip otherwise (CIFAR-like). Test batches are
never augmented.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._budget import parse_input_size
from ._errors import CondenseError

__all__ = ["DataSpec", "DataBundle", "BatchLoader", "parse_data_spec", "load_data", "default_cache_dir",
           "AUGMENTS", "default_augment", "data_fingerprint"]

_FORMS = "mnist:PATH, cifar10:PATH, cifar100:PATH or imagefolder:PATH"
_KINDS = ("mnist", "cifar10", "cifar100", "imagefolder")
_CACHE_VERSION = 1
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
AUGMENTS = ("none", "crop-flip", "timm")
_PHOTO_SIDE = 128  # images at least this large (both sides) are photos: timm's augmentation, timm's eval crop
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_FOLDER_WORKERS = 2
_MNIST_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


# ----------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DataSpec:
    """Where a data set is: ``kind`` is one of mnist, cifar10, cifar100, imagefolder; ``path`` a file or dir."""

    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_data_spec(text: str | DataSpec) -> DataSpec:
    """``"cifar10:data/cifar10-jpeg.tar.gz"`` -> ``DataSpec("cifar10", Path(...))``. Raises CondenseError."""
    if isinstance(text, DataSpec):
        return text
    if not isinstance(text, str):
        raise CondenseError(f"bad data spec {text!r}", f"write one of {_FORMS}")
    kind, sep, path = text.strip().partition(":")
    kind, path = kind.strip().lower(), path.strip()
    if not sep or kind not in _KINDS or not path:
        raise CondenseError(f"bad data spec {text!r}", f"write one of {_FORMS}")
    return DataSpec(kind, Path(path).expanduser())


def default_cache_dir() -> Path:
    """``$CONDENSE_CACHE/data``, or ``~/.cache/condense/data``."""
    root = os.environ.get("CONDENSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "condense")
    return Path(root) / "data"


# ------------------------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class DataBundle:
    """A loaded data set: what it is, how it is normalized, and ``loader()`` to iterate it."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    train_size: int
    test_size: int
    spec: DataSpec | None = None
    augment: str = "none"
    _source: Any = field(default=None, repr=False, compare=False)

    def with_augment(self, augment: str) -> DataBundle:
        """The same data with another augmentation (one of ``AUGMENTS``); the images are shared."""
        kind = _check_augment(augment, self.spec)
        if kind == self.augment:
            return self
        return replace(self, augment=kind, _source=self._source.with_augment(kind, self.spec))

    def loader(self, split: str, batch_size: int, *, shuffle: bool, augment: bool, seed: int = 0,
               epoch: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
               start_batch: int = 0) -> BatchLoader:
        """Batches of one split. ``seed + epoch`` fix the shuffle (and the augmentation), so a resumed run
        sees the same order; ``start_batch`` skips that many batches of the epoch (resuming mid-epoch)."""
        split = _check_split(split)
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("seed", seed, 0),
                                 ("epoch", epoch, 0), ("rank", rank, 0), ("start_batch", start_batch, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CondenseError(f"bad {name} {value!r} for the data loader", f"use an integer >= {low}")
        if rank >= world_size:
            raise CondenseError(f"rank {rank} is not below world_size {world_size}",
                                "ranks count from 0 to world_size - 1")
        return BatchLoader(self._source, split, batch_size, shuffle=bool(shuffle), augment=bool(augment),
                           seed=seed, epoch=epoch, drop_last=bool(drop_last), rank=rank, world_size=world_size,
                           start_batch=start_batch)


def _check_augment(augment: str, spec: DataSpec | None) -> str:
    if augment not in AUGMENTS:
        raise CondenseError(f"unknown augmentation {augment!r}", f"use one of {', '.join(AUGMENTS)}")
    if augment == "timm" and spec is not None and spec.kind != "imagefolder":
        raise CondenseError(f"{spec}: augment='timm' works on image files (imagefolder: data) only",
                            "use crop-flip or none for data held in memory")
    return augment


def default_augment(channels: int, size: tuple[int, int], grey: bool) -> str:
    """The augmentation that suits images of ``channels`` and ``size`` (H, W) as trained: none for grey
    images (digits, letters), timm's for photos of 128 pixels or more a side, crop-flip otherwise."""
    if channels == 1 or grey:
        return "none"
    return "timm" if min(size) >= _PHOTO_SIDE else "crop-flip"


def _crop_pad(side: int) -> int:
    """Zero padding of the random crop: an eighth of the side (CIFAR's 4 pixels at 32)."""
    return max(1, round(side / 8))


def _check_split(split: str) -> str:
    if split == "val":
        return "test"
    if split not in ("train", "test"):
        raise CondenseError(f"unknown split {split!r}", "use 'train' or 'test'")
    return split


def _shard_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """The sample order of one rank for one epoch: exactly what ``DistributedSampler`` yields."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world_size > 1 and n > 0:
        total = math.ceil(n / world_size) * world_size
        pad = total - n
        if pad:
            order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
        order = order[rank:total:world_size]
    return order


def _mixed_seed(*parts: int) -> int:
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class BatchLoader:
    """An iterable over ``(x, y)`` batches of one split, for one epoch and one rank. ``len()`` = batches."""

    def __init__(self, source: Any, split: str, batch_size: int, *, shuffle: bool, augment: bool, seed: int,
                 epoch: int, drop_last: bool, rank: int, world_size: int, start_batch: int = 0):
        self._source = source
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.augment, self.seed, self.epoch = shuffle, augment, seed, epoch
        self.drop_last, self.rank, self.world_size, self.start_batch = drop_last, rank, world_size, start_batch
        self.dataset_size = source.size(split)
        self.num_samples = math.ceil(self.dataset_size / world_size) if self.dataset_size else 0

    def indices(self) -> torch.Tensor:
        """The positions (0..dataset_size-1 in the split) this rank visits this epoch, in order."""
        return _shard_order(self.dataset_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                            rank=self.rank, world_size=self.world_size)

    def _epoch_batches(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return max(0, self._epoch_batches() - self.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._source.batches(self)

    def __repr__(self) -> str:
        return (f"BatchLoader({self.split}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, epoch={self.epoch}, "
                f"rank={self.rank}/{self.world_size})")


# ------------------------------------------------------------------------------ in-memory (MNIST, CIFAR)


@dataclass
class _Arrays:
    """A whole small-image data set as uint8 NCHW arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    key: str  # identifies the source files (path, size, mtime) for the stats cache
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None


class _TensorSource:
    """Batches built by tensor ops from uint8 tensors held in memory."""

    def __init__(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], mean: tuple[float, ...],
                 std: tuple[float, ...], out_size: tuple[int, int, int], crop_flip: bool):
        self.x, self.y, self.crop_flip = x, y, crop_flip
        self.mean, self.std = mean, std
        channels = next(iter(x.values())).shape[1]
        m = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * s), m / s
        self.out_size = out_size
        self.pad = _crop_pad(min(next(iter(x.values())).shape[-2:]))

    def with_augment(self, augment: str, spec: DataSpec | None) -> _TensorSource:
        return _TensorSource(self.x, self.y, self.mean, self.std, self.out_size, crop_flip=augment == "crop-flip")

    def size(self, split: str) -> int:
        return int(self.y[split].shape[0])

    def batches(self, ld: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = ld.indices()
        x_all, y_all = self.x[ld.split], self.y[ld.split]
        offsets = flips = None
        if ld.augment and self.crop_flip:
            g = torch.Generator()
            g.manual_seed(_mixed_seed(ld.seed, ld.epoch, ld.rank))
            offsets = torch.randint(0, 2 * self.pad + 1, (len(order), 2), generator=g)
            flips = torch.randint(0, 2, (len(order),), generator=g).bool()
        for b in range(ld.start_batch, ld._epoch_batches()):
            sl = slice(b * ld.batch_size, (b + 1) * ld.batch_size)
            ids = order[sl]
            xb = x_all[ids]
            if offsets is not None:
                xb = _crop_flip(xb, offsets[sl, 0], offsets[sl, 1], flips[sl], self.pad)
            yield self._finish(xb), y_all[ids]

    def _finish(self, xb: torch.Tensor) -> torch.Tensor:
        x = xb.to(torch.float32).mul_(self.scale).sub_(self.shift)
        c, h, w = self.out_size
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] != c:
            x = x.expand(-1, c, -1, -1).contiguous()
        return x


def _crop_flip(xb: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop of the zero-padded images at offsets (dy, dx), mirrored where ``flip``: one gather."""
    b, c, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h)
    cols_fwd = torch.arange(w)
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - cols_fwd, cols_fwd)
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 NCHW images in [0, 1], via histograms."""
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, x.shape[0], 2048):
        chunk = x[start:start + 2048]
        for c in range(x.shape[1]):
            counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    v = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * v).sum(axis=1) / total
    var = (counts * (v[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel: do not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _subset(n: int, limit: int | None) -> np.ndarray | None:
    """A fixed pseudo-random subset of ``limit`` of ``n`` positions, in their original order (class-balanced
    in expectation even for trees sorted by class)."""
    if limit is None or limit >= n:
        return None
    pick = np.random.default_rng(0).permutation(n)[:limit]
    return np.sort(pick)


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
    if spec.kind == "mnist" or (spec.kind == "cifar10" and classes == _CIFAR10_NAMES) or \
            (spec.kind == "cifar100" and len(classes) == 100):
        return spec.kind
    return _tree_stem(spec.path)


def _in_memory_bundle(spec: DataSpec, arrays: _Arrays, cache: Path, limits: tuple[int | None, int | None],
                      input_size: tuple[int, int, int] | None, augment: str | None) -> DataBundle:
    native = tuple(int(d) for d in arrays.x_train.shape[1:])
    size = input_size or native
    kind = default_augment(native[0], native[1:], _is_grey(arrays.x_train)) if augment is None else \
        _check_augment(augment, spec)
    if size[0] != native[0] and native[0] != 1:
        raise CondenseError(f"{spec}: cannot make {size[0]}-channel inputs from {native[0]}-channel images",
                            f"use input_size with {native[0]} channels")
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
    src_mean, src_std = mean[:native[0]], std[:native[0]]
    source = _TensorSource(x, y, src_mean, src_std, size, crop_flip=kind == "crop-flip")
    return DataBundle(name=_data_name(spec, arrays.classes), num_classes=len(arrays.classes), input_size=size,
                      mean=mean, std=std, classes=arrays.classes, train_size=source.size("train"),
                      test_size=source.size("test"), spec=spec, augment=kind, _source=source)


def _check_arrays(spec: DataSpec, arrays: _Arrays) -> _Arrays:
    n_cls = len(arrays.classes)
    for split in ("train", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise CondenseError(f"{spec}: {split} images are {x.dtype} {tuple(x.shape)}, expected uint8 images",
                                "store pixels as uint8 0..255")
        if y.ndim != 1 or len(y) != len(x):
            raise CondenseError(f"{spec}: {len(x)} {split} images but {y.size} labels", "the files do not match")
        if len(y) == 0:
            raise CondenseError(f"{spec}: the {split} split is empty", "check the path points at the full data set")
        if y.min() < 0 or y.max() >= n_cls:
            raise CondenseError(f"{spec}: {split} labels range over {int(y.min())}..{int(y.max())}, "
                                f"expected 0..{n_cls - 1}", "the label file is corrupt or of another data set")
    if arrays.x_train.shape[1:] != arrays.x_test.shape[1:]:
        raise CondenseError(f"{spec}: train images are {tuple(arrays.x_train.shape[1:])} but test images "
                            f"{tuple(arrays.x_test.shape[1:])}", "both splits must have one image size")
    return arrays


# ------------------------------------------------------------------------------------------ cache files


def data_fingerprint(spec: str | DataSpec) -> str:
    """A cheap fingerprint of a data set's content, the same wherever the files sit: for a file its size and
    the SHA-256 of its first and last MiB; for a folder every file's relative path and size. Raises a
    CondenseError for a path that does not exist."""
    spec = parse_data_spec(spec)
    path = spec.path
    digest = hashlib.sha256(spec.kind.encode())
    try:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    digest.update(f"{os.path.relpath(full, path)}:{os.path.getsize(full)}\n".encode())
        else:
            size = path.stat().st_size
            digest.update(str(size).encode())
            with open(path, "rb") as f:
                digest.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(size - (1 << 20))
                    digest.update(f.read(1 << 20))
    except OSError as err:
        raise CondenseError(f"cannot read the data {spec} ({err.strerror or err})",
                            "check the path in the data spec") from None
    return digest.hexdigest()[:16]


def _content_key(spec: DataSpec, path: Path) -> str:
    """A hash of what the source is: its resolved path, size and mtime (every file's, for a directory)."""
    path = path.resolve()
    parts = [f"v{_CACHE_VERSION}", spec.kind, str(path)]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                parts.append(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns}")
    else:
        st = path.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_file(cache: Path, spec: DataSpec, key: str, suffix: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.path.name)[:48] or "data"
    return cache / f"{spec.kind}-{stem}-{key}{suffix}"


@contextlib.contextmanager
def _atomic_write(path: Path) -> Iterator[Any]:
    """A binary file handle whose content appears at ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cached_stats(arrays: _Arrays, cache: Path, spec: DataSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = _cache_file(cache, spec, arrays.key, ".stats.json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        got = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in got["mean"]), tuple(float(v) for v in got["std"])
        if len(mean) == len(std) == arrays.x_train.shape[1]:
            return mean, std
    mean, std = _channel_stats(arrays.x_train)
    try:
        with _atomic_write(path) as fh:
            fh.write(json.dumps({"source": str(spec), "mean": mean, "std": std}).encode())
    except OSError as err:
        warnings.warn(f"could not cache data statistics in {cache}: {err}", stacklevel=3)
    return mean, std


# ------------------------------------------------------------------------------------------------ MNIST


_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """An idx file (LeCun's format: magic 0x00 0x00 TYPE NDIM, big-endian uint32 dims, then the data)."""
    hint = "the file is not an MNIST idx file or is damaged; re-extract the original idx files"
    expect = 0x0800 | ndim
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        magic = int.from_bytes(data[:4].ljust(4, b"\0"), "big")
        raise CondenseError(f"{name}: bad idx magic number 0x{magic:08x} (expected 0x{expect:08x})", hint)
    if data[2] != 0x08 or data[3] != ndim:
        magic = int.from_bytes(data[:4], "big")
        raise CondenseError(f"{name}: idx magic 0x{magic:08x} is not {'images' if ndim == 3 else 'labels'} "
                            f"(expected 0x{expect:08x})", hint)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CondenseError(f"{name}: idx file truncated in its header", hint)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    want = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != want:
        raise CondenseError(f"{name}: idx header says {'x'.join(map(str, dims))} = {want} bytes of data but the "
                            f"file holds {len(data) - header}", hint)
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
            raise CondenseError(f"mnist:{root}: missing {', '.join(missing)} in {d}",
                                "put all four idx files (optionally .gz) in one directory")
    return None


def _load_mnist(spec: DataSpec, cache: Path) -> _Arrays:
    path = spec.path
    classes = tuple(str(i) for i in range(10))
    if path.is_dir():
        files = _find_idx_files(path)
        if files is None:
            raise CondenseError(f"{spec}: no MNIST idx files in {path}",
                                "point at mnist.npz or at a directory holding train-images-idx3-ubyte, "
                                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or .gz)")
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
                raise CondenseError(f"{spec}: the npz has no {', '.join(missing)} (it has {', '.join(z.files)})",
                                    "save it with keys x_train, y_train, x_test, y_test")
            out = []
            for k in ("x_train", "y_train", "x_test", "y_test"):
                a = z[k]
                if k.startswith("x"):
                    if a.ndim == 3:
                        a = a[:, None]
                    elif a.ndim == 4 and a.shape[-1] in (1, 3):
                        a = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
                    else:
                        raise CondenseError(f"{spec}: {k} has shape {a.shape}, expected N x H x W or N x H x W x C",
                                            "store images as uint8 NHW or NHWC")
                elif np.issubdtype(a.dtype, np.integer):
                    a = a.astype(np.int64).reshape(-1)
                else:
                    raise CondenseError(f"{spec}: {k} is {a.dtype}, expected integer labels", "store labels as int")
                out.append(a)
            return tuple(out)
    except CondenseError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile.BadZipFile, OSError, ValueError: a damaged file
        raise CondenseError(f"{spec}: cannot read the npz ({_reason(err)})", "the file is damaged; copy it again") \
            from None


# ------------------------------------------------------------------------------------- CIFAR (pickles)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and nothing that could run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 reads old pickles without warning
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure means a damaged or foreign file
        raise CondenseError(f"{name}: not a readable CIFAR batch ({_reason(err)})",
                            "the file is damaged or not from cifar-10-batches-py / cifar-100-python") from None
    if not isinstance(obj, dict):
        raise CondenseError(f"{name}: not a CIFAR batch (a {type(obj).__name__}, not a dict)",
                            "point at cifar-10-batches-py or cifar-100-python")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(batch: dict[str, Any], label_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise CondenseError(f"{name}: the batch has no 'data' / '{label_key}' entries",
                            "the file is not a CIFAR batch of this kind")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CondenseError(f"{name}: 'data' is {data.dtype} {data.shape} with {len(labels)} labels, expected "
                            "uint8 N x 3072 and N labels", "the file is damaged")
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
                raise CondenseError(f"{spec}: {where} has no {name}",
                                    f"the batches are {', '.join(train_names + test_names)}; copy them all")
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


# ----------------------------------------------------------------------------------- image trees (CIFAR)


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One image file's bytes -> uint8 H x W x 3 RGB (PIL)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise CondenseError(f"{name}: cannot decode the image ({_reason(err)})",
                            "the file is damaged; remove it or copy the data set again") from None


def _tree_entries(spec: DataSpec, names: list[str],
                  where: str) -> tuple[tuple[str, ...], dict[str, list[tuple[int, str]]]]:
    """Sort image paths ``[PREFIX/]split/class/file`` into classes (sorted, like ImageFolder) and splits."""
    found: dict[str, dict[str, list[str]]] = {}
    prefixes = set()
    for name in names:
        p = PurePosixPath(name[2:] if name.startswith("./") else name)
        if (p.suffix.lower() not in _IMAGE_EXTS or len(p.parts) < 3 or p.name.startswith("._")
                or "__MACOSX" in p.parts):
            continue
        split = p.parts[-3]
        if split not in ("train", "test", "val"):
            continue
        prefixes.add(p.parts[:-3])
        found.setdefault(split, {}).setdefault(p.parts[-2], []).append(name)
    test_split = "test" if "test" in found else "val"
    if "train" not in found or test_split not in found or len(prefixes) != 1:
        raise CondenseError(f"{spec}: {where} is not an image tree with train/ and test/ (one folder per class)",
                            "expected train/<class>/*.jpg and test/<class>/*.jpg (or the CIFAR python batches)")
    classes = tuple(sorted(found["train"]))
    test_classes = tuple(sorted(found[test_split]))
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        detail = "; ".join(x for x in (f"only in train: {', '.join(only_train)}" if only_train else "",
                                      f"only in {test_split}: {', '.join(only_test)}" if only_test else "") if x)
        raise CondenseError(f"{spec}: class folders differ between train/ and {test_split}/ ({detail})",
                            "give both splits the same class folders")
    entries = {}
    for split, key in (("train", "train"), ("test", test_split)):
        entries[split] = [(ci, n) for ci, c in enumerate(classes) for n in sorted(found[key][c])]
    return classes, entries


def _decode_tree(spec: DataSpec, entries: dict[str, list[tuple[int, str]]],
                 reader: Callable[[Callable[[str, bytes], None]], None]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode every image of a tree into preallocated uint8 NCHW arrays, with a progress bar.

    ``reader(visit)`` calls ``visit(name, data)`` once per image file, in whatever order is cheap to read."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    slot = {name: (split, i) for split in entries for i, (_, name) in enumerate(entries[split])}
    labels = {s: np.array([c for c, _ in entries[s]], dtype=np.int64) for s in entries}
    out: dict[str, np.ndarray] = {}
    seen = [0]
    total = len(slot)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    with progress:
        task = progress.add_task(f"decoding {spec.path.name} (once; cached)", total=total)

        def visit(name: str, data: bytes) -> None:
            where = slot.get(name)
            if where is None:
                return
            img = _decode_image(data, f"{spec.path}:{name}")
            split, i = where
            if not out:
                h, w = img.shape[:2]
                for s in entries:
                    out[s] = np.empty((len(entries[s]), 3, h, w), dtype=np.uint8)
            arr = out[split]
            if img.shape[:2] != arr.shape[2:]:
                raise CondenseError(f"{spec}: {name} is {img.shape[1]}x{img.shape[0]} but the others are "
                                    f"{arr.shape[3]}x{arr.shape[2]}",
                                    "a cifar tree needs one image size; use imagefolder:PATH for mixed sizes")
            arr[i] = img.transpose(2, 0, 1)
            seen[0] += 1
            if seen[0] % 500 == 0 or seen[0] == total:
                progress.update(task, completed=seen[0])

        reader(visit)
    if seen[0] != total:
        raise CondenseError(f"{spec}: read {seen[0]} of {total} images", "the archive is damaged; copy it again")
    return {s: (out[s], labels[s]) for s in entries}


def _tree_arrays(spec: DataSpec, cache: Path, list_names: Callable[[], list[str]],
                 reader: Callable[[Callable[[str, bytes], None]], None], where: str) -> _Arrays:
    """A decoded image tree from the cache, or decoded now and cached."""
    key = _content_key(spec, spec.path)
    path = _cache_file(cache, spec, key, ".npz")
    got = _read_tree_cache(path)
    if got is not None:
        return got
    classes, entries = _tree_entries(spec, list_names(), where)
    decoded = _decode_tree(spec, entries, reader)
    arrays = _Arrays(decoded["train"][0], decoded["train"][1], decoded["test"][0], decoded["test"][1], classes, key)
    _check_arrays(spec, arrays)
    arrays.stats = _channel_stats(arrays.x_train)
    try:
        with _atomic_write(path) as fh:
            np.savez(fh, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test,
                     classes=np.array(classes), mean=np.array(arrays.stats[0]), std=np.array(arrays.stats[1]),
                     key=np.array(key), source=np.array(str(spec)))
    except OSError as err:
        warnings.warn(f"could not cache the decoded images in {cache} ({err}); they will be decoded again",
                      stacklevel=3)
    return arrays


def _read_tree_cache(path: Path) -> _Arrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return _Arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                           tuple(str(c) for c in z["classes"]), str(z["key"]),
                           (tuple(float(v) for v in z["mean"]), tuple(float(v) for v in z["std"])))
    except Exception as err:  # noqa: BLE001 - a damaged cache is decoded again
        warnings.warn(f"ignoring the damaged data cache {path} ({_reason(err)})", stacklevel=4)
        return None


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def _open_tar(spec: DataSpec) -> Any:
    import tarfile

    try:
        return tarfile.open(spec.path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CondenseError(f"{spec}: not a readable tar archive ({_reason(err)})",
                            "the archive is damaged or not a tar; copy it again") from None


def _tar_errors(spec: DataSpec) -> contextlib.AbstractContextManager:
    import tarfile

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise CondenseError(f"{spec}: the tar archive is damaged ({_reason(err)})", "copy it again") from None

    return guard()


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
            raise CondenseError(f"{spec}: {path} holds neither the CIFAR python batches nor train/ and test/ folders",
                                f"point at {sub} (or its parent), or at an image tree train/<class>/, "
                                "test/<class>/ (a directory or .tar.gz)")

        def names() -> list[str]:
            return [f"{split}/{c.name}/{f.name}" for split in split_dirs for c in sorted((path / split).iterdir())
                    if c.is_dir() for f in c.iterdir() if f.is_file()]

        def reader(visit: Callable[[str, bytes], None]) -> None:
            for name in names():
                if name.lower().endswith(_IMAGE_EXTS):
                    visit(name, (path / name).read_bytes())

        return _tree_arrays(spec, cache, names, reader, str(path))
    if _is_tar(path):
        return _load_cifar_tar(spec, cache)
    raise CondenseError(f"{spec}: not a directory or a tar archive",
                        "point at the CIFAR python batches, an image tree, or a .tar.gz/.tgz/.tar of either")


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


# ------------------------------------------------------------------------------ imagefolder (ImageNet-style)


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, base: Any, indices: np.ndarray | None, transform: Any, mode: str = "RGB"):
        self.base, self.indices, self.transform, self.mode = base, indices, transform, mode

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i]) if self.indices is not None else i
        path, target = self.base.samples[j]
        image = self.base.loader(path)
        return self.transform(image if image.mode == self.mode else image.convert(self.mode)), target


def _folder_transforms(size: tuple[int, int, int], augment: str, mean: tuple[float, ...],
                       std: tuple[float, ...]) -> dict[bool, Any]:
    """{augment: transform} for PIL images: the test transform (timm's resize and centre crop for photos
    of 128 pixels or more, else a plain resize to H x W) and the training one (``augment``)."""
    from timm.data import create_transform
    from torchvision import transforms as T

    hw = size[1:]
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    photo = min(hw) >= _PHOTO_SIDE
    test = create_transform(size, is_training=False, mean=mean, std=std) if photo else \
        T.Compose([T.Resize(hw), *finish])
    if augment == "timm":
        train = create_transform(size, is_training=True, mean=mean, std=std)
    elif augment == "crop-flip":
        train = T.Compose([T.Resize(hw), T.RandomCrop(hw, padding=_crop_pad(min(hw))), T.RandomHorizontalFlip(),
                           *finish])
    else:
        train = test
    return {True: train, False: test}


class _FolderSource:
    """Lazily read image files through a torch DataLoader with torchvision/timm transforms."""

    def __init__(self, data: dict[str, _FolderDataset], transforms: dict[bool, Any], size: tuple[int, int, int],
                 mean: tuple[float, ...], std: tuple[float, ...]):
        self.data, self.transforms = data, transforms
        self.size_, self.mean, self.std = size, mean, std

    def with_augment(self, augment: str, spec: DataSpec | None) -> _FolderSource:
        return _FolderSource(self.data, _folder_transforms(self.size_, augment, self.mean, self.std), self.size_,
                             self.mean, self.std)

    def size(self, split: str) -> int:
        return len(self.data[split])

    def batches(self, ld: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        base = self.data[ld.split]
        ds = _FolderDataset(base.base, base.indices, self.transforms[ld.augment], base.mode)
        order = ld.indices()[ld.start_batch * ld.batch_size:].tolist()
        g = torch.Generator()
        g.manual_seed(_mixed_seed(ld.seed, ld.epoch, ld.rank))
        workers = _FOLDER_WORKERS if len(order) > ld.batch_size else 0
        dl = torch.utils.data.DataLoader(ds, batch_size=ld.batch_size, sampler=order, num_workers=workers,
                                         drop_last=ld.drop_last, generator=g)
        for x, y in dl:
            yield x, y.to(torch.int64)


def _class_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir())


def _first_image(spec: DataSpec, base: Any) -> tuple[tuple[int, int], bool]:
    """(H, W) of the first training image and whether it is grey: what the tree's images are like."""
    from PIL import Image

    path = base.samples[0][0]
    try:
        with Image.open(path) as im:
            w, h = im.size
            grey = im.mode in _GREY_MODES
            if not grey and im.mode in ("RGB", "RGBA", "P"):
                rgb = np.asarray(im.convert("RGB"))
                grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise CondenseError(f"{spec}: cannot decode {path} ({_reason(err)})",
                            "the file is damaged; remove it or copy the data set again") from None
    return (h, w), grey


def _load_imagefolder(spec: DataSpec, limits: tuple[int | None, int | None],
                      input_size: tuple[int, int, int] | None, augment: str | None) -> DataBundle:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.datasets import ImageFolder

    root = spec.path
    if not root.is_dir():
        raise CondenseError(f"{spec}: not a directory", "extract the archive and point at the folder holding "
                                                       "train/ and val/")
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise CondenseError(f"{spec}: expected train/ and val/ (or test/) subdirectories",
                            "lay the images out as train/<class>/*.jpg and val/<class>/*.jpg")
    train_cls, test_cls = _class_dirs(root / "train"), _class_dirs(test_dir)
    if train_cls != test_cls:
        diff = sorted(set(train_cls) ^ set(test_cls))
        raise CondenseError(f"{spec}: class folders differ between train/ and {test_dir.name}/ "
                            f"({len(diff)} not in both, e.g. {', '.join(diff[:3])})",
                            "give both splits the same class folders")
    if input_size is not None and input_size[0] not in (1, 3):
        raise CondenseError(f"{spec}: imagefolder data gives 1- or 3-channel inputs, not {input_size[0]}",
                            "use an input size like 3x224x224 (or 1x28x28 for grey images)")
    bases = {}
    for split, d in (("train", root / "train"), ("test", test_dir)):
        try:
            bases[split] = ImageFolder(str(d))
        except (FileNotFoundError, OSError) as err:
            raise CondenseError(f"{spec}: {_reason(err)}", "every class folder needs at least one image") from None
    first, grey = _first_image(spec, bases["train"])
    size = input_size or ((3, *first) if max(first) < _PHOTO_SIDE else (3, 224, 224))
    kind = default_augment(size[0], size[1:], grey) if augment is None else _check_augment(augment, spec)
    mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    if size[0] == 1:  # grey: the luma of ImageNet's statistics
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    data = {s: _FolderDataset(bases[s], _subset(len(bases[s].samples), lim), None, "L" if size[0] == 1 else "RGB")
            for s, lim in zip(("train", "test"), limits)}
    source = _FolderSource(data, _folder_transforms(size, kind, mean, std), size, mean, std)
    return DataBundle(name=root.resolve().name, num_classes=len(train_cls), input_size=size, mean=mean, std=std,
                      classes=tuple(bases["train"].classes), train_size=source.size("train"),
                      test_size=source.size("test"), spec=spec, augment=kind, _source=source)


# ---------------------------------------------------------------------------------------------- loading


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_data(spec: str | DataSpec, *, cache_dir: str | os.PathLike | None = None, limit_train: int | None = None,
              limit_test: int | None = None, input_size: tuple | str | None = None,
              augment: str | None = None) -> DataBundle:
    """Load a data set named by ``spec`` (see ``parse_data_spec``) from disk.

    ``limit_train`` / ``limit_test`` keep a fixed pseudo-random subset of that many images (normalization
    still comes from the whole train split). ``input_size`` (C, H, W) resizes small images on the fly (and
    repeats a grey channel for 3-channel models); for ``imagefolder`` it is the size images are read at
    (default: the images' own size when small, else 3x224x224). ``augment``: one of ``AUGMENTS``, applied
    by ``loader(augment=True)``; None picks the data's default (see the module docstring).
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
