"""BatchNorm statistics: re-estimated on a fixed set of training images.

In: a model and batches of images (``calibration_batches`` draws a seeded, unaugmented subset of a data
bundle's training split). Out: the model's BatchNorm running statistics re-estimated on them, the model in
eval mode. Never: changes a weight, computes a gradient, or keeps a BatchNorm's momentum changed.
Used by the supernet (the statistics of a selected path) and by calibration (after distillation).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ._errors import CondenseError


def calibration_batches(bundle, images: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """A fixed subset of ``images`` training images (seeded order, no augmentation), in batches."""
    out, n = [], 0
    for x, _ in bundle.loader("train", batch_size, shuffle=True, augment=False, seed=seed, epoch=0):
        take = min(len(x), images - n)
        out.append(x[:take])
        n += take
        if n >= images:
            break
    if not out:
        raise CondenseError(f"the training data {bundle.name!r} has no images for the BatchNorm statistics")
    return out


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None) -> None:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``batches`` (reset, then a cumulative
    average over the batches in train mode, no gradients); ``model`` is left in eval mode. For a supernet,
    the statistics belong to the selected path: select the plan first."""
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else "cpu"
    model.train()
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.eval()
