"""Layer types by name: one table, one factory. In: a name and options. Out: a PDELayer. Never: guesses."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._errors import ConfigError
from ._base import LayerConfig, PDELayer
from ._drop import DROP, DropLayer
from ._global_layer import GlobalLayer
from ._reaction_diffusion import CirculantRD, ExplicitRD, ImplicitRD, LinearMix

LAYERS: dict[str, type[PDELayer]] = {
    "global": GlobalLayer,
    "linearmix": LinearMix,
    "explicit_rd": ExplicitRD,
    "implicit_rd": ImplicitRD,
    "circulant_rd": CirculantRD,
    DROP: DropLayer,  # no layer at all: the removed blocks are deleted (block dropping)
}


def layer_names() -> tuple[str, ...]:
    return tuple(LAYERS)


def layer_class(name: str) -> type[PDELayer]:
    if name not in LAYERS:
        raise ConfigError(f"unknown layer type {name!r}", f"choose one of {', '.join(LAYERS)}")
    return LAYERS[name]


def layer_has_option(name: str, option: str) -> bool:
    """Whether layer type ``name`` has the option ``option`` (e.g. ``K``: the drop layer has none)."""
    return option in layer_class(name).config_cls.__dataclass_fields__


def layer_config(name: str, **options: Any) -> LayerConfig:
    """The checked config of layer type ``name`` from keyword options (unknown options are an error)."""
    return layer_class(name).config_cls.from_dict(options)


def create_layer(name: str, channels: int, init_block: nn.Module | None = None, **options: Any) -> PDELayer:
    """``create_layer("global", 24, K=5, kernel_size=3)``: a layer of type ``name`` for ``channels``.

    With an ``init_block`` and a layer that has an ``init`` option, ``init`` defaults to ``"block"``.
    """
    cls = layer_class(name)
    if init_block is not None and "init" in {f for f in cls.config_cls.__dataclass_fields__}:
        options.setdefault("init", "block")
    return cls(channels, layer_config(name, **options), init_block=init_block)
