"""Block dropping as a layer type: the removed blocks are deleted and nothing replaces them.

In: a channel count (and, as every layer type, an optional ``init_block``, which it ignores). Out:
``DropLayer``, the identity on (N, C, H, W), with no parameters, no buffers and an empty config
(``DropConfig``). Never: computes anything, holds weights, or takes options: K, ``init``, ``fill_K`` or a
layer option given with ``layer="drop"`` is a one-line error that says to leave it out.

``condense.fit(model, macs="50%", layer="drop")`` / ``condense MODEL --budget 50% --layer drop``: each
condensed run keeps ``blocks[:m]`` and loses ``blocks[m:]``; what read block r-1's output reads block m-1's.
It is a layer type (one name in ``LAYERS``) rather than a rewrite mode so that everything that handles a
layer handles it unchanged: the plan records ``layer="drop"`` and ``load`` rebuilds it, the cost model
counts it (0 MACs, 0 parameters), the search can choose it per run, and ``count``, ONNX and torch.export
see an identity. As a ``PDELayer`` it is a leaf when the rewrite traces the result, so its in-place check
and graph surgery are the ones every layer gets.

Growing runs (DenseNet, RexNet, DPN: each block widens the map) cannot simply lose blocks: the run's readers
expect the full width. The rewrite's ``GrowingTail`` wraps the drop layer as it wraps a PDE layer, so the
missing channels come from its 1x1 projection of the kept blocks' output (``condense.graph._grow``), the
smallest replacement that keeps the model's shapes: a "drop" in a growing run costs that projection.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor, nn

from .._errors import ConfigError
from ._base import LayerConfig, PDELayer

DROP = "drop"


@dataclasses.dataclass(frozen=True)
class DropConfig(LayerConfig):
    """The drop layer has no options: the config is empty, and any option given is an error."""

    name: ClassVar[str] = DROP

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DropConfig":
        if data:
            raise ConfigError(
                f"layer 'drop' takes no options, got {', '.join(sorted(map(str, data)))}",
                "drop deletes the removed blocks: leave out K and the layer options, or choose a "
                "PDE layer (e.g. layer='global')",
            )
        return cls()


class DropLayer(PDELayer):
    """The identity in place of a run's removed blocks: ``DropLayer(channels)(x) is x``."""

    config_cls: ClassVar[type[LayerConfig]] = DropConfig

    def __init__(self, channels: int, config: DropConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config)  # init_block: nothing to start from, the blocks are gone

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
