"""The Global layer (Sec. 3.2 of "Condensing CNNs with PDEs"): K steps of advection-diffusion on a map.

In: a feature map I of shape (N, C, H, W), optionally an initial-guess block. Out: a map of the same
shape. Never: changes the shape, or leaves its stability bounds (every output is finite for finite
input and any weights, see ``GlobalConfig``).

    H^0 = init_block(I) (or I);  (u, v), (Dx, Dy) = depthwise convs of H^0;  f = f(I)
    O = H^K of the Du Fort-Frankel update (``advection_diffusion``)  [+ I]  -> norm -> act
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._errors import ConfigError
from ._advection_diffusion import (
    _dwvel_direct,
    advection_diffusion_dwvel,
    advection_diffusion_dwvel_bn,
    bounded_advection_diffusion,
    direct_call_ok,
    fused_available,
)
from ._native import loaded as _native_lib
from ._dwconv import dwconv_pair, fusable_pair
from ._base import (
    BOUNDARIES,
    ConvNormAct,
    LayerConfig,
    PDELayer,
    act_names,
    check_choice,
    check_range,
    make_act,
    make_norm,
    norm_names,
)

VELOCITIES = ("dwconv", "separable", "constant", "zero")
DIFFUSIONS = ("constant", "dwconv")
SOURCES = ("identity", "none", "residual")
INITS = ("input", "block")
IMPLS = ("auto", "fused", "triton", "eager")


@dataclasses.dataclass(frozen=True)
class GlobalConfig(LayerConfig):
    """Options of the Global layer; the defaults are the paper's (K=5, dt=0.2, dx=dy=1).

    velocity: ``dwconv`` (depthwise conv + norm, the paper's), ``separable`` (depthwise + pointwise),
      ``constant`` (one learned (u, v) per channel) or ``zero`` (pure diffusion).
    diffusion: ``constant`` (``diffusion_value`` everywhere, default 1 as in the paper's low-budget
      models) or ``dwconv`` (depthwise conv + norm; its activation is the clamp to [0, max_diffusion]).
    source: f(I) = ``identity`` (I, the paper's), ``none`` (0) or ``residual`` (a residual block, Table 8).
    init: H^0 = ``input`` (I) or ``block`` (a given block, as the paper's first block of the stage).
    Stability: velocities pass through u / sqrt(1 + (u / umax)^2) with umax = max_courant * dx / dt, so
    |u| dt/dx < max_courant (likewise v); learned diffusion is clamped to [0, max_diffusion]
    (Du Fort-Frankel is unconditionally stable for D >= 0). With these bounds the K-step update is a
    linear map with bounded coefficients, so the output is finite for finite input and any weights.
    zero_init: start as the identity on H^0: the velocity (and learned diffusion) fields start at zero
      and a learned per-channel gate on the source starts at zero. With ``diffusion="dwconv"`` (or
      ``diffusion_value=0``) the layer then returns exactly H^0 before training, so a pretrained model
      condensed with ``init="block"`` keeps the replaced block's output at first.
    """

    name: ClassVar[str] = "global"

    K: int = 5
    dt: float = 0.2
    dx: float = 1.0
    dy: float = 1.0
    kernel_size: int = 3
    velocity: str = "dwconv"
    diffusion: str = "constant"
    diffusion_value: float = 1.0
    source: str = "identity"
    init: str = "input"
    boundary: str = "periodic"
    norm: str = "batch"
    act: str = "relu"
    residual: bool = False
    out_norm: str = "none"
    out_act: str = "identity"
    max_courant: float = 0.5
    max_diffusion: float = 10.0
    zero_init: bool = False
    impl: str = "auto"

    def validate(self) -> None:
        check_range("K", self.K, 0, 100, integer=True)
        for field in ("dt", "dx", "dy"):
            check_range(field, getattr(self, field), 1e-6, 1e3)
        check_range("kernel_size", self.kernel_size, 1, 15, integer=True)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={self.kernel_size} must be odd")
        check_choice("velocity", self.velocity, VELOCITIES)
        check_choice("diffusion", self.diffusion, DIFFUSIONS)
        check_range("diffusion_value", self.diffusion_value, 0.0, 1e3)
        check_choice("source", self.source, SOURCES)
        check_choice("init", self.init, INITS)
        check_choice("boundary", self.boundary, BOUNDARIES)
        check_choice("norm", self.norm, norm_names())
        check_choice("act", self.act, act_names())
        check_choice("out_norm", self.out_norm, norm_names())
        check_choice("out_act", self.out_act, act_names())
        check_range("max_courant", self.max_courant, 1e-3, 1.0)
        check_range("max_diffusion", self.max_diffusion, 1e-3, 1e3)
        check_choice("impl", self.impl, IMPLS)
        for field in ("residual", "zero_init"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field} must be true or false, got {getattr(self, field)!r}")


class ResidualSource(nn.Module):
    """f(I) as a residual block: I + BN(conv(act(BN(conv(I))))) (the paper's Table 8 ablation)."""

    def __init__(self, channels: int, kernel_size: int, norm: str, act: str):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, kernel_size, norm=norm, act=act),
            ConvNormAct(channels, channels, kernel_size, norm=norm, act="identity"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class GlobalLayer(PDELayer):
    """The Global feature layer: ``GlobalLayer(channels, GlobalConfig(...), init_block=None)``."""

    config_cls = GlobalConfig

    def __init__(self, channels: int, config: GlobalConfig | None = None, init_block: nn.Module | None = None):
        super().__init__(channels, config)
        cfg: GlobalConfig = self.config
        if cfg.init == "block" and init_block is None:
            raise ConfigError("init='block' needs an init_block", "pass the block whose output starts the PDE")
        if cfg.init == "input" and init_block is not None:
            raise ConfigError("an init_block was given but init='input'", "set init='block' to use it")
        C, k = channels, cfg.kernel_size
        self.init_block = init_block
        self.velocity = self._velocity_net(C, k, cfg)
        self.velocity_const = nn.Parameter(torch.zeros(2, C)) if cfg.velocity == "constant" else None
        self.diffusion = (
            nn.ModuleList([ConvNormAct(C, C, k, groups=C, norm=cfg.norm, act="identity") for _ in "xy"])
            if cfg.diffusion == "dwconv"
            else None
        )
        self.source = ResidualSource(C, k, cfg.norm, cfg.act) if cfg.source == "residual" else None
        self.source_gate = nn.Parameter(torch.zeros(C)) if cfg.zero_init and cfg.source != "none" else None
        self.out_norm = make_norm(cfg.out_norm, C)
        self.out_act = make_act(cfg.out_act)
        if cfg.zero_init:
            for field in (self.velocity, self.diffusion):
                for net in [] if field is None else field if isinstance(field, nn.ModuleList) else [field]:
                    last = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))]
                    nn.init.zeros_(last[-1].weight)  # the module that produces the field starts at 0

    @staticmethod
    def _velocity_net(C: int, k: int, cfg: GlobalConfig) -> nn.Module | None:
        if cfg.velocity == "dwconv":  # u and v: two depthwise convs (a channel multiplier of 2 is slow on CPU)
            return nn.ModuleList([ConvNormAct(C, C, k, groups=C, norm=cfg.norm, act="identity") for _ in "uv"])
        if cfg.velocity == "separable":  # channels [0, C) are u, [C, 2C) are v
            return nn.Sequential(
                ConvNormAct(C, C, k, groups=C, norm=cfg.norm, act=cfg.act),
                ConvNormAct(C, 2 * C, 1, norm=cfg.norm, act="identity"),
            )
        return None

    def _fields(self, h0: Tensor):
        cfg: GlobalConfig = self.config
        u = v = None
        if cfg.velocity == "dwconv":
            u, v = self._pair(h0, self.velocity)
        elif cfg.velocity == "separable":
            uv = self.velocity(h0)
            u, v = uv[:, : self.channels], uv[:, self.channels :]
        elif cfg.velocity == "constant":
            u, v = (c.view(1, -1, 1, 1).expand_as(h0) for c in self.velocity_const)
        Dx, Dy = self._diffusion(h0)
        return u, v, Dx, Dy

    def _diffusion(self, h0: Tensor):
        if self.diffusion is not None:
            return self._pair(h0, self.diffusion)
        return self.config.diffusion_value, self.config.diffusion_value

    def _pair(self, h0: Tensor, nets: nn.ModuleList) -> tuple[Tensor, Tensor]:
        """Two ConvNormAct fields of h0. In training their depthwise convs run as one fused op (forward
        and backward, any layout, eager or compiled; PyTorch's CPU depthwise backward is the slow part of
        training this layer). In eval each ConvNormAct folds its BatchNorm into its conv instead."""
        a, b = nets
        if self.training and self.config.impl != "eager" and fusable_pair(a[0], b[0]):
            ra, rb = dwconv_pair(h0, a[0], b[0])
            return a[2](a[1](ra)), b[2](b[1](rb))
        return a(h0), b(h0)

    def _fused_velocity(self, h0: Tensor):
        """((wu, bu), (wv, bv)) when the velocity convolutions can run inside the kernel: inference (eval
        mode, no autograd), ``velocity="dwconv"`` with a foldable norm, the fused kernel available, and
        ``impl`` not "eager"; else None."""
        cfg: GlobalConfig = self.config
        if (
            self.training
            or torch.is_grad_enabled()
            or cfg.velocity != "dwconv"
            or cfg.impl in ("eager", "triton")
            or not fused_available(h0)
        ):
            return None
        if not direct_call_ok(h0):  # traced (counted, compiled): the folding is part of the graph
            if self._bn_foldable_in_kernel():
                return "bn"  # one op that folds the norms itself (advection_diffusion_dwvel_bn)
            folded = [net.folded() for net in self.velocity]
            return None if any(f is None for f in folded) else folded
        return self._velocity_cache(h0.dtype)

    def _bn_foldable_in_kernel(self) -> bool:
        """Both velocity nets are bias-free depthwise convs + affine BatchNorms with running statistics + no
        activation, in eval mode: the kernel can fold the norms (``advection_diffusion_dwvel_bn``)."""
        for net in self.velocity:
            conv, norm, act = net[0], net[1], net[2]
            if (
                net.training
                or conv.bias is not None
                or not isinstance(act, nn.Identity)
                or not isinstance(norm, nn.BatchNorm2d)
                or not norm.track_running_stats
                or not norm.affine
                or norm.running_mean is None
            ):
                return False
        return True

    def _velocity_cache(self, dtype: torch.dtype):
        """The folded velocity weights as the kernel takes them ((C, k, k) and (C,), contiguous, in ``dtype``),
        kept until a weight, a statistic or a train/eval flag changes: one key of versions and data pointers
        per call (~2 us) instead of two ``folded()`` calls (~20 us, a third of a small layer's time). The
        tensors are read from the modules' own parameter and buffer dicts (``nn.Module.__getattr__`` costs
        ~1 us an attribute)."""
        nets = self._modules["velocity"]
        plan = self.__dict__.get("_velocity_parts")
        if plan is None or plan[0] is not nets or plan[1] != [id(m) for net in nets for m in net]:
            mods = [m for net in nets for m in (net[0], net[1])]
            plan = (
                nets,
                [id(m) for net in nets for m in net],
                list(nets),
                [
                    (d, name)
                    for m in mods
                    for d in (m._parameters, m._buffers)
                    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                    if name in d
                ],
                [getattr(net[1], "eps", None) for net in nets],
            )
            self.__dict__["_velocity_parts"] = plan
        key = [dtype, *(net.training for net in plan[2]), *plan[4]]
        try:
            for d, name in plan[3]:
                t = d[name]
                key.append(None if t is None else (t._version, t.data_ptr()))
        except (RuntimeError, KeyError):  # inference tensors (built under inference_mode) have no version
            key = None
        cached = self.__dict__.get("_velocity_folded")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        folded = [net.folded() for net in nets]
        ready = (
            None
            if any(f is None for f in folded)
            else [(w.detach().squeeze(1).to(dtype).contiguous(), b.detach().to(dtype).contiguous()) for w, b in folded]
        )
        if key is not None:
            self.__dict__["_velocity_folded"] = (key, ready)
        return ready

    def _direct_scalars(self):
        """The kernel's scalar arguments when this configuration can run ``_infer_direct`` (velocity
        ``dwconv``, constant diffusion, source ``identity`` or ``none``, input as initial state), else None;
        kept with the config it was made from."""
        cfg: GlobalConfig = self.config
        cached = self.__dict__.get("_direct")
        if cached is not None and cached[0] is cfg:
            return cached[1]
        ok = (
            cfg.velocity == "dwconv"
            and cfg.diffusion == "constant"
            and cfg.source in ("identity", "none")
            and cfg.init == "input"
            and cfg.impl in ("auto", "fused")
        )
        scalars = (
            (
                cfg.source == "identity",
                cfg.kernel_size,
                float(cfg.diffusion_value),
                int(cfg.K),
                float(cfg.dt),
                float(cfg.dx),
                float(cfg.dy),
                BOUNDARIES.index(cfg.boundary),
                float(cfg.max_courant),
                float(cfg.max_diffusion),
            )
            if ok
            else None
        )
        self.__dict__["_direct"] = (cfg, scalars)
        return scalars

    def _infer_direct(self, x: Tensor) -> Tensor | None:
        """Inference (eval, no autograd) of the common configuration in one direct kernel call, or None where
        it does not apply (then ``forward`` runs as usual). The same kernel as ``advection_diffusion_dwvel``,
        without the module and custom-op overhead (~40 us a call on this CPU against ~10-60 us of solving at
        the CIFAR ResNet shapes). Never used while tracing or compiling (``direct_call_ok``): counted and
        compiled graphs keep the custom op, so counts are unchanged."""
        if not direct_call_ok(x):
            return None
        sc = self._direct_scalars()
        if (
            sc is None
            or self._modules.get("init_block") is not None
            or self._parameters.get("source_gate") is not None
            or not x.is_cpu
            or x.dim() != 4
            or _native_lib(x.dtype) is None
        ):
            return None
        w = self._velocity_cache(x.dtype)
        if w is None:
            return None
        identity, ks, d, K, dt, dx, dy, boundary, courant, dmax = sc
        (wu, bu), (wv, bv) = w
        out = _dwvel_direct(
            x, x if identity else None, (wu, bu, wv, bv), ks, None, None, d, d, K, dt, dx, dy, boundary, courant, dmax
        )
        if self.config.residual:
            out = out + x
        norm, act = self._modules["out_norm"], self._modules["out_act"]
        if type(norm) is not nn.Identity:
            out = norm(out)
        return out if type(act) is nn.Identity else act(out)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling()):
            out = self._infer_direct(x)
            if out is not None:
                return out
        cfg: GlobalConfig = self.config
        h0 = x if self.init_block is None else self.init_block(x)
        if h0.shape != x.shape:
            raise RuntimeError(
                f"GlobalLayer: init_block maps {tuple(x.shape)} to {tuple(h0.shape)}; "
                "the initial guess must keep the input's shape"
            )
        f = x if cfg.source == "identity" else (None if cfg.source == "none" else self.source(x))
        if self.source_gate is not None:
            f = f * self.source_gate.view(1, -1, 1, 1)
        fused = self._fused_velocity(h0)
        if fused is not None:  # inference: the velocity convolutions run inside the kernel
            Dx, Dy = self._diffusion(h0)
            kw = dict(
                K=cfg.K,
                dt=cfg.dt,
                dx=cfg.dx,
                dy=cfg.dy,
                boundary=cfg.boundary,
                courant=cfg.max_courant,
                dmax=cfg.max_diffusion,
            )
            if fused == "bn":
                out = advection_diffusion_dwvel_bn(h0, f, [(net[0], net[1]) for net in self.velocity], Dx, Dy, **kw)
            else:
                (wu, bu), (wv, bv) = fused
                if wu.dim() == 4:
                    wu, wv = wu.squeeze(1), wv.squeeze(1)
                out = advection_diffusion_dwvel(h0, f, wu, bu, wv, bv, Dx, Dy, **kw)
            if cfg.residual:
                out = out + x
            return self.out_act(self.out_norm(out))
        u, v, Dx, Dy = self._fields(h0)
        out = bounded_advection_diffusion(
            h0,
            f,
            u,
            v,
            Dx,
            Dy,
            K=cfg.K,
            dt=cfg.dt,
            dx=cfg.dx,
            dy=cfg.dy,
            boundary=cfg.boundary,
            courant=cfg.max_courant,
            dmax=cfg.max_diffusion,
            impl=cfg.impl,
        )
        if cfg.residual:
            out = out + x
        return self.out_act(self.out_norm(out))
