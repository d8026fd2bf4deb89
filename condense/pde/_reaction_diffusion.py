"""Reaction-diffusion layers (LinearMix, explicit / implicit / circulant RD): (N, C, H, W) in, the same shape
out; never changes channels or resolution.

The four layers of "Low-cost parameterizations of deep convolutional neural networks" (Sec. 3.1-3.2.3,
Eq. 5-12). Each runs ``K`` steps of size ``h`` starting from ``y_0 = init_block(x)`` (or ``x``):

* LinearMix (Eq. 7 inside the ResNet step of Eq. 1/3), with ``K_lm(a, b) = K_dw(a) + M(b)``:
  ``operators=2`` (default): ``y <- y + h * K_lm(th2)^T act(norm(K_lm(th1) y + bias))``
  ``operators=1``:           ``y <- y + h * act(norm(K_lm(th1) y + bias))``
* ExplicitRD (Eq. 9):  ``y <- y + h * (-K_dw^T K_dw y + act(norm(M y + bias)))``
* ImplicitRD (Eq. 11): ``y <- (I + h K_dw^T K_dw)^{-1} (y + h * act(norm(M y + bias)))``, periodic K_dw,
  the inverse applied with 2D real FFTs.
* CirculantRD (Eq. 12 in Eq. 9): ``y <- y + h * (-K_circ^T K_circ y + act(norm(M y + bias)))``, K_circ applied
  with 3D real FFTs over (C, H, W).

``bias`` exists only when ``norm == "none"`` (BatchNorm would cancel it). Conventions of the linear operators
(the pure functions below; the modules only call them):

* ``K_dw`` is a depthwise cross-correlation (what ``conv2d(groups=C)`` computes) with a per-channel
  ``k x k`` stencil, centre ``p = k // 2``: ``(K_dw y)[c, i, j] = sum_ab w[c, 0, a, b] y[c, i+a-p, j+b-p]``.
  Out-of-range pixels are 0 (``boundary="zero"``, 'same' zero padding) or wrap around (``"periodic"``).
  ``K_dw^T`` is the same correlation with the spatially flipped stencil and the same boundary rule, which is
  the exact matrix transpose for both boundaries.
* ``M`` is a 1x1 convolution, ``(M y)[c] = sum_d m[c, d] y[d]`` (``M(theta) kron I`` of Eq. 6).
* ``K_circ`` (Eq. 12) has block (row channel i, column channel j) ``C(w[(j - i) mod C])``, where ``C(s)`` is the
  periodic correlation with stencil ``s`` as above: ``(K_circ y)[i] = sum_j C(w[(j-i) mod C]) y[j]``.
  It is a 3D periodic correlation, so ``K_circ y = F3^{-1}(conj(F3 e) . F3 y)`` and
  ``K_circ^T y = F3^{-1}(F3 e . F3 y)`` with ``e`` the stencils embedded in a (C, H, W) array.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import ConfigError
from ._base import LayerConfig, PDELayer, act_names, check_choice, check_range, make_act, make_norm, norm_names

__all__ = [
    "LinearMix",
    "LinearMixConfig",
    "ExplicitRD",
    "ExplicitRDConfig",
    "ImplicitRD",
    "ImplicitRDConfig",
    "CirculantRD",
    "CirculantRDConfig",
    "DW_BOUNDARIES",
    "depthwise_op",
    "depthwise_op_transpose",
    "pointwise_op",
    "pointwise_op_transpose",
    "linear_mix_op",
    "linear_mix_op_transpose",
    "periodic_embed",
    "depthwise_symbol",
    "implicit_depthwise_solve",
    "circulant_op",
    "circulant_op_transpose",
    "circulant_normal_op",
]

#: Boundaries for which the transpose of K_dw is again a cheap convolution (the explicit layers' choices).
DW_BOUNDARIES: tuple[str, ...] = ("zero", "periodic")

#: Mean eigenvalue of K^T K at initialisation (E|F(stencil)|^2): small enough that h * K^T K is a mild,
#: stable diffusion for h <= 1, but not zero (at zero the gradient of the quadratic term vanishes).
_DIFFUSION_INIT = 0.1


# --- pure operators ------------------------------------------------------------------------------------
def _periodic_pad(y: torch.Tensor, p: int) -> torch.Tensor:
    """Wrap-around padding by ``p`` on both spatial sides; works for any ``p`` (also ``p > H``)."""
    if p == 0:
        return y
    h, w = y.shape[-2], y.shape[-1]
    rows = torch.arange(-p, h + p, device=y.device) % h
    cols = torch.arange(-p, w + p, device=y.device) % w
    return y.index_select(-2, rows).index_select(-1, cols)


def depthwise_op(y: torch.Tensor, weight: torch.Tensor, boundary: str = "zero") -> torch.Tensor:
    """``K_dw y`` (Eq. 5): per-channel k x k correlation, 'same' size. ``weight`` is (C, 1, k, k), k odd."""
    check_choice("boundary", boundary, DW_BOUNDARIES)
    p = weight.shape[-1] // 2
    if boundary == "zero":
        return F.conv2d(y, weight, padding=p, groups=weight.shape[0])
    return F.conv2d(_periodic_pad(y, p), weight, groups=weight.shape[0])


def depthwise_op_transpose(y: torch.Tensor, weight: torch.Tensor, boundary: str = "zero") -> torch.Tensor:
    """``K_dw^T y``: the exact transpose of :func:`depthwise_op` (same boundary, flipped stencil)."""
    return depthwise_op(y, weight.flip((-2, -1)), boundary)


def pointwise_op(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``M y (+ bias)`` (Eq. 6): 1x1 convolution, ``weight`` is (C_out, C_in, 1, 1)."""
    return F.conv2d(y, weight, bias)


def pointwise_op_transpose(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``M^T y``: 1x1 convolution with the transposed channel matrix."""
    return F.conv2d(y, weight.transpose(0, 1))


def linear_mix_op(
    y: torch.Tensor,
    dw_weight: torch.Tensor,
    pw_weight: torch.Tensor,
    boundary: str = "zero",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``K_lm y (+ bias) = K_dw y + M y (+ bias)`` (Eq. 7)."""
    return depthwise_op(y, dw_weight, boundary) + pointwise_op(y, pw_weight, bias)


def linear_mix_op_transpose(
    y: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, boundary: str = "zero"
) -> torch.Tensor:
    """``K_lm^T y = K_dw^T y + M^T y``."""
    return depthwise_op_transpose(y, dw_weight, boundary) + pointwise_op_transpose(y, pw_weight)


def periodic_embed(stencil: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Stencils (..., k, k) as periodic correlation kernels (..., H, W): ``e[(a-p) % H, (b-p) % W] += s[a, b]``.

    With this ``e``, ``C(s) y = sum_q e[q] y[. + q]`` (indices mod (H, W)); taps that wrap onto the same
    pixel (k > H or k > W) are summed, exactly as the periodic correlation does.
    """
    k_h, k_w = stencil.shape[-2], stencil.shape[-1]
    n_h, n_w = -(-k_h // height), -(-k_w // width)
    e = F.pad(stencil, (0, n_w * width - k_w, 0, n_h * height - k_h))
    e = e.reshape(*stencil.shape[:-2], n_h, height, n_w, width).sum(dim=(-4, -2))
    return torch.roll(e, shifts=(-(k_h // 2), -(k_w // 2)), dims=(-2, -1))


def _fft_dtype(y: torch.Tensor) -> torch.dtype:
    # CPU FFTs have no half precision; compute in at least float32 and cast back.
    return torch.promote_types(y.dtype, torch.float32)


def depthwise_symbol(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``rfft2`` of the periodic K_dw stencils: (C, H, W//2+1) complex; ``|.|^2`` = eigenvalues of K^T K."""
    return torch.fft.rfft2(periodic_embed(weight[:, 0], height, width))


def implicit_depthwise_solve(y: torch.Tensor, weight: torch.Tensor, h: float) -> torch.Tensor:
    """``(I + h K_dw^T K_dw)^{-1} y`` for the periodic K_dw, via 2D FFTs (Sec. 3.2.2).

    ``= F2^{-1}((h |F2(C e1)|^2 + 1)^{-1} . F2 y)``; ``weight`` is (C, 1, k, k), ``h >= 0``.
    """
    dtype = _fft_dtype(y)
    height, width = y.shape[-2], y.shape[-1]
    sym = depthwise_symbol(weight.to(dtype), height, width)
    denom = (sym.real * sym.real + sym.imag * sym.imag) * h + 1.0
    out = torch.fft.irfft2(torch.fft.rfft2(y.to(dtype)) / denom, s=(height, width))
    return out.to(y.dtype)


def _circulant_symbol(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return torch.fft.rfftn(periodic_embed(weight, height, width), dim=(-3, -2, -1))


def _circulant_apply(y: torch.Tensor, weight: torch.Tensor, mode: str) -> torch.Tensor:
    if not torch.jit.is_tracing() and weight.shape[0] != y.shape[-3]:
        raise ValueError(
            f"circulant stencils {tuple(weight.shape)} need {weight.shape[0]} channels, got input {tuple(y.shape)}"
        )
    dtype = _fft_dtype(y)
    c, height, width = y.shape[-3:]
    sym = _circulant_symbol(weight.to(dtype), height, width)
    if mode == "normal":
        mult = sym.real * sym.real + sym.imag * sym.imag
    else:
        mult = sym.conj() if mode == "forward" else sym
    out = torch.fft.irfftn(
        torch.fft.rfftn(y.to(dtype), dim=(-3, -2, -1)) * mult, s=(c, height, width), dim=(-3, -2, -1)
    )
    return out.to(y.dtype)


def circulant_op(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``K_circ y`` (Eq. 12) through 3D FFTs over (C, H, W); ``weight`` is (C, k, k): one stencil per offset."""
    return _circulant_apply(y, weight, "forward")


def circulant_op_transpose(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``K_circ^T y``: the exact transpose of :func:`circulant_op`."""
    return _circulant_apply(y, weight, "transpose")


def circulant_normal_op(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``K_circ^T K_circ y`` with one forward and one inverse 3D FFT (multiplier ``|F3 e|^2``)."""
    return _circulant_apply(y, weight, "normal")


# --- configs -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _StepConfig(LayerConfig):
    """Options shared by the four layers.

    K: steps (1..50). h: step size (> 0, <= 100); 1.0 = one ResNet block per step. kernel_size: odd stencil
    size (1..15). act / norm: of the reaction (``make_act`` / ``make_norm`` names). share_weights: one set of
    operator weights for all K steps (True) or one per step (the paper's theta_j). share_norm: one norm for
    all steps; False (default) keeps a norm per step even with shared weights, since BatchNorm running
    statistics differ from step to step (costs 2C parameters per step).
    """

    K: int = 1
    h: float = 1.0
    kernel_size: int = 3
    act: str = "relu"
    norm: str = "batch"
    share_weights: bool = True
    share_norm: bool = False

    def validate(self) -> None:
        check_range("K", self.K, 1, 50, integer=True)
        check_range("h", self.h, 0, 100)
        if self.h <= 0:
            raise ConfigError(f"h={self.h!r} must be > 0", "the step size of the time discretisation")
        check_range("kernel_size", self.kernel_size, 1, 15, integer=True)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={self.kernel_size!r} must be odd", "use 1, 3, 5, ... 15")
        check_choice("act", self.act, act_names())
        check_choice("norm", self.norm, norm_names())
        for field in ("share_weights", "share_norm"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field} must be true or false, got {getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class LinearMixConfig(_StepConfig):
    """LinearMix options; ``operators``: 2 = ``K_lm^T act(norm(K_lm y))`` (Eq. 3), 1 = ``act(norm(K_lm y))``."""

    name: ClassVar[str] = "linearmix"
    boundary: str = "zero"
    operators: int = 2

    def validate(self) -> None:
        super().validate()
        check_choice("boundary", self.boundary, DW_BOUNDARIES)
        check_range("operators", self.operators, 1, 2, integer=True)


@dataclasses.dataclass(frozen=True)
class ExplicitRDConfig(_StepConfig):
    """Explicit RD options; ``boundary`` of K_dw: ``zero`` ('same' zero padding) or ``periodic``."""

    name: ClassVar[str] = "explicit_rd"
    boundary: str = "zero"

    def validate(self) -> None:
        super().validate()
        check_choice("boundary", self.boundary, DW_BOUNDARIES)


@dataclasses.dataclass(frozen=True)
class ImplicitRDConfig(_StepConfig):
    """Implicit RD options (K_dw is always periodic: the FFT solve needs it)."""

    name: ClassVar[str] = "implicit_rd"


@dataclasses.dataclass(frozen=True)
class CirculantRDConfig(_StepConfig):
    """Circulant RD options (K_circ is always periodic in H, W and C)."""

    name: ClassVar[str] = "circulant_rd"


# --- layers --------------------------------------------------------------------------------------------
class _StepLayer(PDELayer):
    """K steps ``y <- step(y, j)`` from ``y_0 = init_block(x)`` (or ``x``); weights stacked as (S, ...), S = 1 or K."""

    config_cls: ClassVar[type[LayerConfig]] = _StepConfig

    def __init__(self, channels: int, config: LayerConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config)
        if init_block is not None and not isinstance(init_block, nn.Module):
            raise ConfigError(f"init_block must be an nn.Module, got {type(init_block).__name__}")
        self.init_block = init_block
        cfg = self.config
        self._n_weights = 1 if cfg.share_weights else cfg.K
        n_norms = 1 if cfg.share_norm else cfg.K
        self.norms = nn.ModuleList(make_norm(cfg.norm, channels) for _ in range(n_norms))
        self.act = make_act(cfg.act)

    # helpers for subclasses
    def _stack(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(self._n_weights, *shape))

    def _pointwise_params(self) -> None:
        c = self.channels
        self.reaction = self._stack(c, c, 1, 1)
        self.reaction_bias = self._stack(c) if self.config.norm == "none" else None
        bound = 1.0 / math.sqrt(c)  # nn.Conv2d's default (kaiming_uniform, a=sqrt(5)) for a 1x1 conv
        nn.init.uniform_(self.reaction, -bound, bound)
        if self.reaction_bias is not None:
            nn.init.uniform_(self.reaction_bias, -bound, bound)

    def _w(self, j: int) -> int:
        return 0 if self._n_weights == 1 else j

    def _reaction(self, y: torch.Tensor, j: int) -> torch.Tensor:
        """``act(norm(M y + bias))`` of step j."""
        i = self._w(j)
        bias = None if self.reaction_bias is None else self.reaction_bias[i]
        norm = self.norms[0 if len(self.norms) == 1 else j]
        return self.act(norm(pointwise_op(y, self.reaction[i], bias)))

    def _step(self, y: torch.Tensor, j: int) -> torch.Tensor:  # overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.channels):
            raise ValueError(f"{type(self).__name__} expects (N, {self.channels}, H, W), got {tuple(x.shape)}")
        y = x if self.init_block is None else self.init_block(x)
        for j in range(self.config.K):
            y = self._step(y, j)
        return y


class LinearMix(_StepLayer):
    """Eq. 7 in a ResNet step: ``y + h K_lm(th2)^T act(norm(K_lm(th1) y))`` (or one operator, see config)."""

    config_cls = LinearMixConfig

    def __init__(self, channels: int, config: LinearMixConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config, init_block)
        c, k, n_ops = self.channels, self.config.kernel_size, self.config.operators
        self.dw = self._stack(n_ops, c, 1, k, k)
        self.pw = self._stack(n_ops, c, c, 1, 1)
        self.bias = self._stack(c) if self.config.norm == "none" else None
        # nn.Conv2d defaults: uniform(+-1/sqrt(fan_in)) with fan_in = k*k (depthwise) and C (1x1).
        nn.init.uniform_(self.dw, -1.0 / k, 1.0 / k)
        nn.init.uniform_(self.pw, -1.0 / math.sqrt(c), 1.0 / math.sqrt(c))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(c), 1.0 / math.sqrt(c))

    def _step(self, y: torch.Tensor, j: int) -> torch.Tensor:
        cfg, i = self.config, self._w(j)
        dw, pw = self.dw[i], self.pw[i]
        bias = None if self.bias is None else self.bias[i]
        norm = self.norms[0 if len(self.norms) == 1 else j]
        z = self.act(norm(linear_mix_op(y, dw[0], pw[0], cfg.boundary, bias)))
        if cfg.operators == 2:
            z = linear_mix_op_transpose(z, dw[1], pw[1], cfg.boundary)
        return y + cfg.h * z


class ExplicitRD(_StepLayer):
    """Eq. 9: ``y + h (-K_dw^T K_dw y + act(norm(M y)))`` with K_dw zero-padded or periodic."""

    config_cls = ExplicitRDConfig

    def __init__(self, channels: int, config: ExplicitRDConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config, init_block)
        k = self.config.kernel_size
        self.diffusion = self._stack(self.channels, 1, k, k)
        nn.init.normal_(self.diffusion, 0.0, math.sqrt(_DIFFUSION_INIT) / k)
        self._pointwise_params()

    def _step(self, y: torch.Tensor, j: int) -> torch.Tensor:
        w, b = self.diffusion[self._w(j)], self.config.boundary
        diff = depthwise_op_transpose(depthwise_op(y, w, b), w, b)
        return y + self.config.h * (self._reaction(y, j) - diff)


class ImplicitRD(_StepLayer):
    """Eq. 11: ``(I + h K_dw^T K_dw)^{-1} (y + h act(norm(M y)))``, periodic K_dw, FFT solve."""

    config_cls = ImplicitRDConfig

    def __init__(self, channels: int, config: ImplicitRDConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config, init_block)
        k = self.config.kernel_size
        self.diffusion = self._stack(self.channels, 1, k, k)
        nn.init.normal_(self.diffusion, 0.0, math.sqrt(_DIFFUSION_INIT) / k)
        self._pointwise_params()

    def _step(self, y: torch.Tensor, j: int) -> torch.Tensor:
        h = self.config.h
        return implicit_depthwise_solve(y + h * self._reaction(y, j), self.diffusion[self._w(j)], h)


class CirculantRD(_StepLayer):
    """Eq. 12 in Eq. 9: ``y + h (-K_circ^T K_circ y + act(norm(M y)))``; C stencils of k x k (m^2 c weights)."""

    config_cls = CirculantRDConfig

    def __init__(self, channels: int, config: CirculantRDConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config, init_block)
        k = self.config.kernel_size
        self.diffusion = self._stack(self.channels, k, k)
        # K_circ sums C stencils per output channel: scale so E|F3 e|^2 matches the depthwise layers.
        nn.init.normal_(self.diffusion, 0.0, math.sqrt(_DIFFUSION_INIT / self.channels) / k)
        self._pointwise_params()

    def _step(self, y: torch.Tensor, j: int) -> torch.Tensor:
        diff = circulant_normal_op(y, self.diffusion[self._w(j)])
        return y + self.config.h * (self._reaction(y, j) - diff)
