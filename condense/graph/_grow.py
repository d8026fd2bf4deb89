"""The replacement for the tail of a *growing* run: one PDE layer plus a 1x1 channel projection.

A growing run keeps the resolution but widens the map block by block: RexNet / DPN blocks each return
more channels than they read (``kind="growing"``), DenseNet layers each add ``g`` channels that the
parent concatenates (``kind="dense"``). Keeping ``m`` blocks leaves a map of ``c_in = block_channels[m]``
channels where the original had ``c_out``; ``GrowingTail`` makes up the difference:

    h = layer(x)                  # the PDE layer at c_in channels (K steps, as for a repeat run)
    new = BN(conv1x1(h))          # c_out - c_in new channels
    chain:  return cat([h, new])  # what the removed blocks returned
    dense:  return new            # the parent appends it to the features it concatenates

So the kept channels pass through the PDE (as a repeat run's map does) and the new ones are a cheap
linear read-out of the evolved map, the way DenseNet's transition layers read the block. The projection
has the usual conv/BN initialisation, not a zero one: in DenseNet every reader of the block starts with
BN-ReLU, and a channel that is exactly zero meets ReLU at 0, where its gradient is 0, so a zero-initialised
projection would never learn. ``preserve`` therefore cannot be exact for growing runs.

Costs: the layer's MACs at ``c_in`` channels plus ``c_in * (c_out - c_in)`` MACs per pixel for the
projection (the BN folds into it in eval mode), and ``c_in * (c_out - c_in) + 2 (c_out - c_in)``
parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..pde._base import ConvNormAct

Growth = Literal["growing", "dense"]


class GrowingTail(nn.Module):
    """``layer`` at ``in_channels`` followed by a 1x1 projection to ``new_channels`` more channels.

    ``growth="dense"`` takes a tensor or a list of tensors (DenseNet passes the feature list), concatenates
    them and returns only the new channels; ``"growing"`` returns the evolved map with the new channels
    appended.
    """

    def __init__(self, layer: nn.Module, in_channels: int, new_channels: int, growth: Growth = "growing"):
        super().__init__()
        if growth not in ("growing", "dense"):
            raise ValueError(f"growth={growth!r} is not 'growing' or 'dense'")
        if in_channels < 1 or new_channels < 1:
            raise ValueError(f"a growing tail needs in_channels, new_channels >= 1, got {in_channels}, {new_channels}")
        self.growth = growth
        self.in_channels = in_channels
        self.new_channels = new_channels
        self.layer = layer
        self.project = ConvNormAct(in_channels, new_channels, 1, norm="batch", act="identity")

    def forward(self, x):
        if isinstance(x, (list, tuple)):
            x = torch.cat(list(x), 1)
        h = self.layer(x)
        new = self.project(h)
        return new if self.growth == "dense" else torch.cat([h, new], 1)

    def extra_repr(self) -> str:
        return f"{self.growth}, {self.in_channels} -> +{self.new_channels} channels"
