"""The imagefolder reader: ImageNet-style trees of any size, read lazily from disk at every epoch.

In: ``imagefolder:PATH``, a folder holding ``train/<class>/*.jpg`` and ``val/<class>/`` (or ``test/``), with
the same class folders; the input size asked for, limits, and an augmentation.
Out: a ``DataBundle`` whose batches are read through torchvision's ``ImageFolder`` and a 2-worker DataLoader
with torchvision/timm transforms, at the input size asked for, else at the images' own size when they are
small (the first training image under 128 pixels a side), else at 224x224; normalized by ImageNet's
statistics (their luma for 1-channel inputs). The test transform is timm's resize and centre crop for photos
of 128 pixels or more, else a plain resize.
Never: decodes the whole tree up front or caches it (only the first training image is opened, to size it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .._errors import CondenseError
from ._loader import (
    _PHOTO_SIDE,
    BatchLoader,
    DataBundle,
    _check_augment,
    _crop_pad,
    _mixed_seed,
    _subset,
    default_augment,
)
from ._spec import DataSpec, _reason

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_FOLDER_WORKERS = 2


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


def _folder_transforms(
    size: tuple[int, int, int], augment: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[bool, Any]:
    """{augment: transform} for PIL images: the test transform (timm's resize and centre crop for photos
    of 128 pixels or more, else a plain resize to H x W) and the training one (``augment``)."""
    from timm.data import create_transform  # heavy (timm, torchvision): loaded for an image folder only
    from torchvision import transforms as T

    hw = size[1:]
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    photo = min(hw) >= _PHOTO_SIDE
    test = (
        create_transform(size, is_training=False, mean=mean, std=std) if photo else T.Compose([T.Resize(hw), *finish])
    )
    if augment == "timm":
        train = create_transform(size, is_training=True, mean=mean, std=std)
    elif augment == "crop-flip":
        train = T.Compose(
            [T.Resize(hw), T.RandomCrop(hw, padding=_crop_pad(min(hw))), T.RandomHorizontalFlip(), *finish]
        )
    else:
        train = test
    return {True: train, False: test}


class _FolderSource:
    """Lazily read image files through a torch DataLoader with torchvision/timm transforms."""

    def __init__(
        self,
        data: dict[str, _FolderDataset],
        transforms: dict[bool, Any],
        size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        self.data, self.transforms = data, transforms
        self.size_, self.mean, self.std = size, mean, std

    def with_augment(self, augment: str, spec: DataSpec | None) -> _FolderSource:
        return _FolderSource(
            self.data, _folder_transforms(self.size_, augment, self.mean, self.std), self.size_, self.mean, self.std
        )

    def size(self, split: str) -> int:
        return len(self.data[split])

    def batches(self, ld: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        base = self.data[ld.split]
        ds = _FolderDataset(base.base, base.indices, self.transforms[ld.augment], base.mode)
        order = ld.indices()[ld.start_batch * ld.batch_size :].tolist()
        g = torch.Generator()
        g.manual_seed(_mixed_seed(ld.seed, ld.epoch, ld.rank))
        workers = _FOLDER_WORKERS if len(order) > ld.batch_size else 0
        dl = torch.utils.data.DataLoader(
            ds, batch_size=ld.batch_size, sampler=order, num_workers=workers, drop_last=ld.drop_last, generator=g
        )
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
        raise CondenseError(
            f"{spec}: cannot decode {path} ({_reason(err)})",
            "the file is damaged; remove it or copy the data set again",
        ) from None
    return (h, w), grey


def _load_imagefolder(
    spec: DataSpec, limits: tuple[int | None, int | None], input_size: tuple[int, int, int] | None, augment: str | None
) -> DataBundle:
    from torchvision.datasets import ImageFolder

    root = spec.path
    if not root.is_dir():
        raise CondenseError(
            f"{spec}: not a directory", "extract the archive and point at the folder holding train/ and val/"
        )
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise CondenseError(
            f"{spec}: expected train/ and val/ (or test/) subdirectories",
            "lay the images out as train/<class>/*.jpg and val/<class>/*.jpg",
        )
    train_cls, test_cls = _class_dirs(root / "train"), _class_dirs(test_dir)
    if train_cls != test_cls:
        diff = sorted(set(train_cls) ^ set(test_cls))
        raise CondenseError(
            f"{spec}: class folders differ between train/ and {test_dir.name}/ "
            f"({len(diff)} not in both, e.g. {', '.join(diff[:3])})",
            "give both splits the same class folders",
        )
    if input_size is not None and input_size[0] not in (1, 3):
        raise CondenseError(
            f"{spec}: imagefolder data gives 1- or 3-channel inputs, not {input_size[0]}",
            "use an input size like 3x224x224 (or 1x28x28 for grey images)",
        )
    bases = {}
    for split, d in (("train", root / "train"), ("test", test_dir)):
        try:
            bases[split] = ImageFolder(str(d))
        except (FileNotFoundError, OSError) as err:
            raise CondenseError(f"{spec}: {_reason(err)}", "every class folder needs at least one image") from None
    first, grey = _first_image(spec, bases["train"])
    size = input_size or ((3, *first) if max(first) < _PHOTO_SIDE else (3, 224, 224))
    kind = default_augment(size[0], size[1:], grey) if augment is None else _check_augment(augment, spec)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # heavy (see _folder_transforms)

    mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    if size[0] == 1:  # grey: the luma of ImageNet's statistics
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    data = {
        s: _FolderDataset(bases[s], _subset(len(bases[s].samples), lim), None, "L" if size[0] == 1 else "RGB")
        for s, lim in zip(("train", "test"), limits)
    }
    source = _FolderSource(data, _folder_transforms(size, kind, mean, std), size, mean, std)
    return DataBundle(
        name=root.resolve().name,
        num_classes=len(train_cls),
        input_size=size,
        mean=mean,
        std=std,
        classes=tuple(bases["train"].classes),
        train_size=source.size("train"),
        test_size=source.size("test"),
        spec=spec,
        augment=kind,
        _source=source,
    )
