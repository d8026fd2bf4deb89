"""A loaded data set and its batches: ``DataBundle``, ``BatchLoader``, sharding, the augmentation choice.

In: a source (in memory, ``_memory``, or image files, ``_imagefolder``) that yields a split's batches for a
``BatchLoader``; the split, batch size, shuffle, seed, epoch, rank and world size asked for.
Out: ``(x, y)`` batches of one split for one epoch and one rank, shuffled by ``seed + epoch`` and sharded by
``rank / world_size`` exactly like torch's ``DistributedSampler`` (``_shard_order``); ``start_batch`` skips
batches already seen (resuming mid-epoch). ``default_augment``: the augmentation that suits the data.
Never: augments a batch unless ``loader(augment=True)`` asks for it (trainers ask for training batches
only: test batches are never augmented), or accepts a batch size, world size, rank, seed, epoch or start
batch that is not an integer in range (a CondenseError names it).

Augmentation (``augment=``, what ``loader(augment=True)`` applies; ``AUGMENTS``): ``none``; ``crop-flip``
(a random crop of the image zero-padded by an eighth of its side, 4 pixels at 32, and a horizontal flip);
``timm`` (timm's training transform: random resized crop, flip, colour jitter; ``imagefolder:`` only). The
default suits the data (``default_augment``): none for grey images (digits, letters: a flip changes their
meaning), timm's for photos of 128 pixels or more, crop-flip otherwise (CIFAR-like).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np
import torch

from .._errors import CondenseError
from ._spec import DataSpec

AUGMENTS = ("none", "crop-flip", "timm")
_PHOTO_SIDE = 128  # images at least this large (both sides) are photos: timm's augmentation, timm's eval crop


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

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> BatchLoader:
        """Batches of one split. ``seed + epoch`` fix the shuffle (and the augmentation), so a resumed run
        sees the same order; ``start_batch`` skips that many batches of the epoch (resuming mid-epoch)."""
        split = _check_split(split)
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("seed", seed, 0),
            ("epoch", epoch, 0),
            ("rank", rank, 0),
            ("start_batch", start_batch, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CondenseError(f"bad {name} {value!r} for the data loader", f"use an integer >= {low}")
        if rank >= world_size:
            raise CondenseError(
                f"rank {rank} is not below world_size {world_size}", "ranks count from 0 to world_size - 1"
            )
        return BatchLoader(
            self._source,
            split,
            batch_size,
            shuffle=bool(shuffle),
            augment=bool(augment),
            seed=seed,
            epoch=epoch,
            drop_last=bool(drop_last),
            rank=rank,
            world_size=world_size,
            start_batch=start_batch,
        )


def _check_augment(augment: str, spec: DataSpec | None) -> str:
    if augment not in AUGMENTS:
        raise CondenseError(f"unknown augmentation {augment!r}", f"use one of {', '.join(AUGMENTS)}")
    if augment == "timm" and spec is not None and spec.kind != "imagefolder":
        raise CondenseError(
            f"{spec}: augment='timm' works on image files (imagefolder: data) only",
            "use crop-flip or none for data held in memory",
        )
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

    def __init__(
        self,
        source: Any,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int,
        epoch: int,
        drop_last: bool,
        rank: int,
        world_size: int,
        start_batch: int = 0,
    ):
        self._source = source
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.augment, self.seed, self.epoch = shuffle, augment, seed, epoch
        self.drop_last, self.rank, self.world_size, self.start_batch = drop_last, rank, world_size, start_batch
        self.dataset_size = source.size(split)
        self.num_samples = math.ceil(self.dataset_size / world_size) if self.dataset_size else 0

    def indices(self) -> torch.Tensor:
        """The positions (0..dataset_size-1 in the split) this rank visits this epoch, in order."""
        return _shard_order(
            self.dataset_size,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _epoch_batches(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return max(0, self._epoch_batches() - self.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._source.batches(self)

    def __repr__(self) -> str:
        return (
            f"BatchLoader({self.split}, batch_size={self.batch_size}, batches={len(self)}, "
            f"shuffle={self.shuffle}, augment={self.augment}, epoch={self.epoch}, "
            f"rank={self.rank}/{self.world_size})"
        )


def _subset(n: int, limit: int | None) -> np.ndarray | None:
    """A fixed pseudo-random subset of ``limit`` of ``n`` positions, in their original order (class-balanced
    in expectation even for trees sorted by class)."""
    if limit is None or limit >= n:
        return None
    pick = np.random.default_rng(0).permutation(n)[:limit]
    return np.sort(pick)
