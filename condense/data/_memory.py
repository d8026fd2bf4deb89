"""Small-image data sets held in memory: uint8 arrays, their checks and statistics, and batches by tensor ops.

In: a whole data set as uint8 NCHW arrays (``_Arrays``: MNIST and CIFAR, from any reader but imagefolder).
Out: ``_check_arrays`` (a CondenseError naming what does not fit), ``_channel_stats`` (exact per-channel mean
and std), and ``_TensorSource``: batches gathered from uint8 tensors, crop-flip augmented in one gather,
normalized, resized on the fly to the input size asked for (a grey channel repeated for 3-channel models).
Never: copies the data set per batch or per augmentation (``with_augment`` shares the tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .._errors import CondenseError
from ._loader import BatchLoader, _crop_pad, _mixed_seed
from ._spec import DataSpec


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

    def __init__(
        self,
        x: dict[str, torch.Tensor],
        y: dict[str, torch.Tensor],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        out_size: tuple[int, int, int],
        crop_flip: bool,
    ):
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
    return padded[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 NCHW images in [0, 1], via histograms."""
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, x.shape[0], 2048):
        chunk = x[start : start + 2048]
        for c in range(x.shape[1]):
            counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    v = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * v).sum(axis=1) / total
    var = (counts * (v[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel: do not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _check_arrays(spec: DataSpec, arrays: _Arrays) -> _Arrays:
    n_cls = len(arrays.classes)
    for split in ("train", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise CondenseError(
                f"{spec}: {split} images are {x.dtype} {tuple(x.shape)}, expected uint8 images",
                "store pixels as uint8 0..255",
            )
        if y.ndim != 1 or len(y) != len(x):
            raise CondenseError(f"{spec}: {len(x)} {split} images but {y.size} labels", "the files do not match")
        if len(y) == 0:
            raise CondenseError(f"{spec}: the {split} split is empty", "check the path points at the full data set")
        if y.min() < 0 or y.max() >= n_cls:
            raise CondenseError(
                f"{spec}: {split} labels range over {int(y.min())}..{int(y.max())}, expected 0..{n_cls - 1}",
                "the label file is corrupt or of another data set",
            )
    if arrays.x_train.shape[1:] != arrays.x_test.shape[1:]:
        raise CondenseError(
            f"{spec}: train images are {tuple(arrays.x_train.shape[1:])} but test images "
            f"{tuple(arrays.x_test.shape[1:])}",
            "both splits must have one image size",
        )
    return arrays
