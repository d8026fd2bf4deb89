"""Two depthwise convolutions of one map in one fused pass, with a fused backward (the training path).

In: x (N, C, H, W), any layout (contiguous, channels-last, views), and two depthwise weights (C, 1, k, k),
odd k, no bias. Out: the two maps of ``conv2d(x, w, padding=k // 2, groups=C)``, in x's layout. Never:
handles stride, dilation or a bias (the caller adds a bias, or uses nn.Conv2d).

The Global layer computes its velocity (u, v), and a learned diffusion (Dx, Dy), as depthwise 3x3 (or
k x k) convolutions of the same map. PyTorch's CPU depthwise backward is slow (NCHW 8 x 256 x 56 x 56:
~78 ms for one conv forward + backward on 2 threads; mkldnn's channels-last backward under torch.compile
~45 ms); the C kernel does both convolutions block by block in cache (NCHW planes, or channels-last
blocks of channel lanes), and both backward products in one pass (``csrc/advection_diffusion.c``:
``dw_pair_*``). The ops take any layout (``Tag.flexible_layout``), so torch.compile passes its
channels-last maps without converting them. Used in training only (``condense.count`` counts in eval
mode, where each conv has its BatchNorm folded in).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._advection_diffusion import _LAYOUT, _field, _library, fused_available


def _weights(w: Tensor, dtype: torch.dtype) -> Tensor:
    return w.detach().to(dtype).reshape(w.shape[0], -1).contiguous()


@torch.library.custom_op("condense::dwconv_pair", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _dw_pair(x: Tensor, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    N, C, H, W = x.shape
    o1, o2 = torch.empty_like(x), torch.empty_like(x)
    a, b = _weights(w1, x.dtype), _weights(w2, x.dtype)
    _library(x.dtype).dw_pair_forward(
        _field(x),
        a.data_ptr(),
        b.data_ptr(),
        int(w1.shape[-1]),
        _field(o1),
        _field(o2),
        N,
        C,
        H,
        W,
        torch.get_num_threads(),
    )
    return o1, o2


@_dw_pair.register_fake
def _(x, w1, w2):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("condense::dwconv_pair_backward", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _dw_pair_backward(
    g1: Tensor, g2: Tensor, x: Tensor, w1: Tensor, w2: Tensor, needs: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    N, C, H, W = x.shape
    k = int(w1.shape[-1])
    gx = torch.empty_like(x) if needs[0] else None
    gw = [torch.empty(N, C, k * k, dtype=x.dtype) if need else None for need in needs[1:]]
    a, b = _weights(w1, x.dtype), _weights(w2, x.dtype)
    _library(x.dtype).dw_pair_backward(
        _field(x),
        a.data_ptr(),
        b.data_ptr(),
        k,
        _field(g1),
        _field(g2),
        _field(gx),
        *(t.data_ptr() if t is not None else None for t in gw),
        N,
        C,
        H,
        W,
        torch.get_num_threads(),
    )
    # per-plane weight gradients summed over the batch, in the weights' dtype
    gw = [t.sum(0).view(C, 1, k, k).to(w.dtype) if t is not None else w.new_empty(0) for t, w in zip(gw, (w1, w2))]
    return (gx if gx is not None else x.new_empty(0)), gw[0], gw[1]


@_dw_pair_backward.register_fake
def _(g1, g2, x, w1, w2, needs):
    return (
        torch.empty_like(x) if needs[0] else x.new_empty(0),
        torch.empty_like(w1) if needs[1] else w1.new_empty(0),
        torch.empty_like(w2) if needs[2] else w2.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, g1, g2):
    x, w1, w2 = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad]
    if g1 is None:
        g1 = torch.zeros_like(x)
    if g2 is None:
        g2 = torch.zeros_like(x)
    gx, gw1, gw2 = _dw_pair_backward(g1, g2, x, w1, w2, needs)
    return tuple(g if need else None for g, need in zip((gx, gw1, gw2), needs))


_dw_pair.register_autograd(_backward, setup_context=_setup_context)


def fusable_pair(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    """Whether two convs are depthwise, 'same'-padded, stride 1, bias-free and alike: what the op computes."""

    def ok(c: nn.Conv2d) -> bool:
        k = c.kernel_size[0]
        return (
            c.groups == c.in_channels == c.out_channels
            and c.kernel_size == (k, k)
            and k % 2 == 1
            and c.stride == (1, 1)
            and c.dilation == (1, 1)
            and c.padding == (k // 2, k // 2)
            and c.bias is None
            and c.padding_mode == "zeros"
        )

    return ok(a) and ok(b) and a.weight.shape == b.weight.shape


def dwconv_pair(x: Tensor, a: nn.Conv2d, b: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """``(a(x), b(x))`` for two depthwise convs (see ``fusable_pair``), fused where the C kernel is
    available (float32/float64 on CPU), else by the convs themselves."""
    if not (fused_available(x) and x.dtype == a.weight.dtype == b.weight.dtype):
        return a(x), b(x)
    return _dw_pair(x, a.weight, b.weight)
