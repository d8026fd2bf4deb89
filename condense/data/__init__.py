"""Offline image-classification data: parse a spec, load it once, iterate normalized batches.

In: a spec ``KIND:PATH`` (``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``) naming files already on disk.
Out: a ``DataBundle`` (name, sizes, classes, normalization, augmentation) whose ``loader()`` yields ``(x, y)``
batches, float32 NCHW normalized by the train split's per-channel mean/std and int64 labels, shuffled by
``seed + epoch`` and sharded by ``rank / world_size`` like torch's ``DistributedSampler``.
Never: downloads, prints, or does work at import time; leaves a half-written cache behind.

Small-image sets (MNIST, CIFAR) are held in memory as uint8 tensors; batches are gathered, augmented and
normalized with tensor ops (``_memory``). Image trees (a directory or a tar of ``train/<class>/*.jpg``) are
decoded once into uint8 arrays kept in a cache directory (``$CONDENSE_CACHE/data`` or ``~/.cache/condense/data``;
``_trees``, ``_cache``). ``imagefolder:`` trees (any size) are read lazily through torchvision's ``ImageFolder``
and a 2-worker DataLoader, at the input size asked for, else at the images' own size when they are small (the
first training image under 128 pixels a side), else at 224x224 (``_imagefolder``).

Augmentation (``augment=``, what ``loader(augment=True)`` applies; ``AUGMENTS``): ``none``; ``crop-flip``
(a random crop of the image zero-padded by an eighth of its side, 4 pixels at 32, and a horizontal flip);
``timm`` (timm's training transform: random resized crop, flip, colour jitter; ``imagefolder:`` only). The
default suits the data (``default_augment``): none for grey images (digits, letters: a flip changes their
meaning), timm's for photos of 128 pixels or more, crop-flip otherwise (CIFAR-like). Test batches are
never augmented.

Modules: ``_spec`` (the spec), ``_load`` (``load_data``), ``_loader`` (``DataBundle``, ``BatchLoader``,
sharding, the augmentation choice), ``_memory`` (in-memory sets), ``_cache`` (cache files), ``_fingerprint``
(``data_fingerprint``), and one per reader: ``_mnist``, ``_cifar``, ``_trees``, ``_imagefolder``.
"""

from ._cache import default_cache_dir
from ._fingerprint import data_fingerprint
from ._load import load_data
from ._loader import AUGMENTS, BatchLoader, DataBundle, default_augment
from ._loader import _shard_order  # noqa: F401 - private, read as condense.data._shard_order by tests/test_data.py
from ._spec import DataSpec, parse_data_spec

__all__ = [
    "DataSpec",
    "DataBundle",
    "BatchLoader",
    "parse_data_spec",
    "load_data",
    "default_cache_dir",
    "AUGMENTS",
    "default_augment",
    "data_fingerprint",
]
