"""The layers of both papers: the Global (advection-diffusion) layer and the reaction-diffusion family."""

from ._advection_diffusion import advection_diffusion, eager_macs, fused_available
from ._base import LayerConfig, PDELayer
from ._drop import DROP, DropConfig, DropLayer
from ._factory import LAYERS, create_layer, layer_class, layer_config, layer_has_option, layer_names
from ._global_layer import DIFFUSIONS, SOURCES, VELOCITIES, GlobalConfig, GlobalLayer
from ._native import status as native_status
from ._reaction_diffusion import (
    CirculantRD,
    CirculantRDConfig,
    ExplicitRD,
    ExplicitRDConfig,
    ImplicitRD,
    ImplicitRDConfig,
    LinearMix,
    LinearMixConfig,
)

__all__ = [
    "advection_diffusion",
    "eager_macs",
    "fused_available",
    "native_status",
    "PDELayer",
    "LayerConfig",
    "GlobalLayer",
    "GlobalConfig",
    "VELOCITIES",
    "DIFFUSIONS",
    "SOURCES",
    "LinearMix",
    "LinearMixConfig",
    "ExplicitRD",
    "ExplicitRDConfig",
    "ImplicitRD",
    "ImplicitRDConfig",
    "CirculantRD",
    "CirculantRDConfig",
    "DROP",
    "DropLayer",
    "DropConfig",
    "LAYERS",
    "create_layer",
    "layer_class",
    "layer_config",
    "layer_has_option",
    "layer_names",
]
