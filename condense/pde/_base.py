"""Shared pieces of every PDE layer: the layer base class, config base, conv/norm/act builders, shifts.

In: channel counts, option names. Out: small nn.Modules and pure tensor helpers. Never: any PDE math
(that lives with each layer) or any global state beyond the name tables below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.fx
from torch import nn

from .._errors import ConfigError

Boundary = Literal["periodic", "replicate", "zero"]
BOUNDARIES: tuple[str, ...] = get_args(Boundary)

_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
_NORMS = ("batch", "none")


def check_choice(field: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    """Raise a ConfigError naming ``field`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_range(
    field: str, value: float, lo: float | None = None, hi: float | None = None, integer: bool = False
) -> None:
    """Raise a ConfigError naming ``field`` when ``value`` is outside [lo, hi] or of the wrong type."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{field}={value!r} is outside {rng}")


def act_names() -> tuple[str, ...]:
    return tuple(_ACTS)


def make_act(name: str) -> nn.Module:
    """Activation module by name (one table: relu, relu6, silu, gelu, hardswish, tanh, sigmoid, identity)."""
    check_choice("act", name, tuple(_ACTS))
    return _ACTS[name]()


def make_norm(name: str, channels: int) -> nn.Module:
    """Normalisation by name: ``batch`` (BatchNorm2d) or ``none``."""
    check_choice("norm", name, _NORMS)
    return nn.BatchNorm2d(channels) if name == "batch" else nn.Identity()


def norm_names() -> tuple[str, ...]:
    return _NORMS


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Base of every layer config: frozen, checked on creation, JSON round trip via to_dict/from_dict."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown option(s) for layer {cls.name!r}: {', '.join(unknown)}",
                f"valid options: {', '.join(sorted(known))}",
            )
        return cls(**data)

    def replace(self, **changes: Any):
        return self.from_dict({**self.to_dict(), **changes})


class PDELayer(nn.Module):
    """Base class of every layer of both papers: maps (N, C, H, W) to (N, C, H, W).

    Every subclass sets ``config_cls`` and is built as ``Layer(channels, config, init_block=None)``.
    The rewrite engine treats every PDELayer as a leaf module when tracing, and the counter
    (``condense.count``) attributes elementwise and FFT work inside it (see the README on MACs).
    """

    config_cls: ClassVar[type[LayerConfig]] = LayerConfig

    def __init__(self, channels: int, config: LayerConfig | None = None):
        super().__init__()
        check_range("channels", channels, 1, integer=True)
        config = self.config_cls() if config is None else config
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.channels = channels
        self.config = config

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
        return f"channels={self.channels}, {opts}"


_fx_symbolic_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None) or (lambda: False)


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution equal to ``norm(conv(x))`` with the norm's running statistics."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


class ConvNormAct(nn.Sequential):
    """Conv2d (optionally depthwise / grouped) + norm + activation, 'same' padding, stride 1.

    In eval mode a BatchNorm is folded into the convolution on the fly (one pass over the map instead of
    two); the result equals conv -> norm up to rounding. Without autograd (inference) the folded weights
    are kept until a weight, statistic or their storage changes, instead of being refolded every call (a
    train-mode forward updates the running statistics without bumping their version counters, but it
    bumps ``num_batches_tracked``'s, so that is part of the key).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, act = self[0], self[1], self[2]
        if self.training or not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats:
            return act(norm(conv(x)))
        weight, bias = self._fold(conv, norm)
        return act(torch.nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))

    def _fold(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling() or _fx_symbolic_tracing()
        if torch.is_grad_enabled() or tracing:  # traced graphs (and counts) keep the folding ops
            return fold_batchnorm(conv, norm)
        parts = (
            conv.weight,
            conv.bias,
            norm.weight,
            norm.bias,
            norm.running_mean,
            norm.running_var,
            norm.num_batches_tracked,
        )
        key = (
            norm.eps,
            *((id(t), t._version, t.data_ptr(), t.dtype, t.device) if t is not None else None for t in parts),
        )
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            cached = (key, fold_batchnorm(conv, norm))
            self.__dict__["_folded_cache"] = cached
        return cached[1]

    def folded(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Eval mode, no activation: the (weight, bias) of one conv equal to conv -> norm (the same ops as
        ``forward``); None when that is not one conv (training, an activation, another norm)."""
        conv, norm, act = self[0], self[1], self[2]
        if self.training or not isinstance(act, nn.Identity):
            return None
        if isinstance(norm, nn.Identity):
            bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
            return conv.weight, bias
        if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats:
            return None
        return self._fold(conv, norm)

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        *,
        groups: int = 1,
        norm: str = "batch",
        act: str = "relu",
        bias: bool | None = None,
    ):
        bias = (norm == "none") if bias is None else bias
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias),
            make_norm(norm, out_ch),
            make_act(act),
        )


def neighbor(x: torch.Tensor, dim: int, offset: int, boundary: str) -> torch.Tensor:
    """``y[..., i, ...] = x[..., i + offset, ...]`` along ``dim`` with the given boundary rule.

    periodic wraps around (the paper's ``roll``), replicate repeats the edge value, zero pads with zeros.
    """
    if boundary == "periodic":
        return torch.roll(x, shifts=-offset, dims=dim)
    n = x.shape[dim]
    if offset > 0:
        body = x.narrow(dim, offset, n - offset)
        edge = (
            x.narrow(dim, n - 1, 1).expand_as(x.narrow(dim, 0, offset))
            if boundary == "replicate"
            else x.new_zeros(x.narrow(dim, 0, offset).shape)
        )
        return torch.cat([body, edge], dim)
    off = -offset
    body = x.narrow(dim, 0, n - off)
    edge = (
        x.narrow(dim, 0, 1).expand_as(x.narrow(dim, 0, off))
        if boundary == "replicate"
        else x.new_zeros(x.narrow(dim, 0, off).shape)
    )
    return torch.cat([edge, body], dim)


# --- counting hooks -------------------------------------------------------------------------------
# A layer whose work happens in a custom op registers an fvcore-style handle for that op here, next to
# the op itself (as timm marks no-trace modules next to the layer). ``condense.count`` merges them.
_OP_HANDLES: dict[str, Any] = {}


def solver_setup_context(ctx, inputs, output):
    """The autograd context of the advection-diffusion solver ops (the C op and the Triton op take the same
    inputs): the six tensors saved for backward, the nine scalars, and whether the source is the init."""
    ctx.save_for_backward(*inputs[:6])
    ctx.scalars = inputs[6:15]
    ctx.source_is_init = inputs[15]


def register_op_handle(kind: str):
    """Decorator: ``handle(inputs, outputs) -> MACs`` for the TorchScript op ``kind`` (e.g. ``ns::op``)."""

    def deco(fn):
        _OP_HANDLES[kind] = fn
        return fn

    return deco


def op_handles() -> dict[str, Any]:
    """The handles registered by PDE layers for their custom ops (import condense.pde first)."""
    return dict(_OP_HANDLES)
