"""The advection-diffusion solver of the Global layer (Eq. 4, Du Fort-Frankel), eager and fused.

In: the initial guess H^0, the source f(I), velocity (u, v) and diffusion (Dx, Dy) as (N, C, H, W)
tensors (diffusion may be a float). Out: H^K. Never: learns anything, or keeps state between calls.

Scheme (x is the last axis W, y the one before it H; boundaries periodic by default)::

    L H^{k+1} = M H^{k-1} - 2 (u_x + v_y) dt H^k + 2 dt f
                + (-Ax + 2Bx) H[x+1] + (Ax + 2Bx) H[x-1] + (-Ay + 2By) H[y+1] + (Ay + 2By) H[y-1]

with L = 1 + 2Bx + 2By, M = 1 - 2Bx - 2By, Ax = u dt/dx, Ay = v dt/dy, Bx = Dx dt/dx^2, By = Dy dt/dy^2,
u_x = (u[x+1] - u[x-1]) / 2dx, v_y = (v[y+1] - v[y-1]) / 2dy, and H^{-1} = H^0.

The authors' loops (``train_mnist_illustrative_example.py``, ``global_layer.py``) run the same update
with their u along H (dim 2) and v along W (dim 3), and the neighbour terms the other way round (their
``(-Ax + 2Bx)`` multiplies ``roll(h, 1, dims=2)``, i.e. H[y-1]): theirs at (u, v) is this scheme at
(u, v) = (-v_theirs, -u_theirs), the same update for a learned, sign-free velocity. Fig. 2's net
(``zoo.Fig2Feature``, one field for both) is this solver at u = v = -g exactly (``test_zoo`` compares
with their loop). Both wrap around (``torch.roll``, ``boundary="periodic"``). The Fig. 2 loop does not
bound the velocity; their Global layer passes u, v and D through a ReLU (>= 0, unbounded above) and
starts from H^{-1} = its input, H^0 = the init block's output. ``GlobalLayer`` bounds |u| and |v|
(``bounded_advection_diffusion``, either sign) and starts from H^{-1} = H^0; this function bounds nothing.

The coefficients are computed once per call. The fused path (a C kernel run plane by plane in cache,
exposed as the custom op ``condense::advection_diffusion`` with its own backward) is used where it is
available (CPU, float32/float64); the eager PyTorch path is the fallback and the reference. ``impl="fused"``
where the kernel cannot run (another dtype or device, no compiler) is a ``ConfigError`` saying why.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils import _python_dispatch

from .._errors import ConfigError
from . import _native
from ._base import BOUNDARIES, neighbor, register_op_handle, solver_setup_context

Scalar = Union[float, int]
_BOUNDARY_CODE = {name: i for i, name in enumerate(BOUNDARIES)}  # periodic 0, replicate 1, zero 2


# ------------------------------------------------------------------------------------------ eager
def bound_velocity(u: Tensor, umax: float) -> Tensor:
    """``u / sqrt(1 + (u / umax)^2)``: |u| stays below ``umax`` (the Courant bound); the identity near 0."""
    return u * torch.rsqrt(torch.square(u * (1.0 / umax)) + 1.0)


def bound_diffusion(d: Tensor, dmax: float) -> Tensor:
    """``clamp(D, 0, dmax)``: negative diffusion is ill-posed, and a cap keeps coefficients finite."""
    return torch.clamp(d, 0.0, dmax)


def _eager(
    init: Tensor,
    source: Optional[Tensor],
    u: Optional[Tensor],
    v: Optional[Tensor],
    Dx: Union[Tensor, Scalar],
    Dy: Union[Tensor, Scalar],
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: str,
) -> Tensor:
    # Every elementwise op below is one counted MAC per element; ``eager_macs`` mirrors this exactly.
    var_d = isinstance(Dx, Tensor)
    if var_d:
        bx = Dx * (dt / dx**2)
        by = Dy * (dt / dy**2)
        iL = torch.reciprocal(torch.add(bx, by).mul(2.0).add(1.0))
        a0 = iL.mul(2.0).sub(1.0)  # M / L = (2 - L) / L
        tx, ty = bx.mul(2.0), by.mul(2.0)
    else:
        bx, by = float(Dx) * dt / dx**2, float(Dy) * dt / dy**2
        iL = 1.0 / (1.0 + 2 * bx + 2 * by)
        a0 = (1.0 - 2 * bx - 2 * by) * iL
        tx, ty = 2 * bx, 2 * by
    a1 = None
    if u is not None:
        ux = (neighbor(u, -1, 1, boundary) - neighbor(u, -1, -1, boundary)) * (0.5 / dx)
        vy = (neighbor(v, -2, 1, boundary) - neighbor(v, -2, -1, boundary)) * (0.5 / dy)
        div = ux + vy
        if var_d:
            a1 = div.mul(-2.0 * dt).mul(iL)
            axi, ayi = u.mul(dt / dx).mul(iL), v.mul(dt / dy).mul(iL)
            txi, tyi = tx.mul(iL), ty.mul(iL)
            cE, cW, cN, cS = txi - axi, txi + axi, tyi - ayi, tyi + ayi
        else:
            a1 = div.mul(-2.0 * dt * iL)
            axi, ayi = u.mul(dt / dx * iL), v.mul(dt / dy * iL)
            cE, cW, cN, cS = torch.rsub(axi, tx * iL), axi.add(tx * iL), torch.rsub(ayi, ty * iL), ayi.add(ty * iL)
    elif var_d:
        cE = cW = tx.mul(iL)
        cN = cS = ty.mul(iL)
    else:
        cE = cW = tx * iL
        cN = cS = ty * iL
    s = None
    if source is not None:
        s = source.mul(2.0 * dt).mul(iL) if var_d else source.mul(2.0 * dt * iL)

    h_prev = h = init
    for _ in range(K):
        nxt = h_prev * a0
        if s is not None:
            nxt = nxt + s
        if a1 is not None:
            nxt = torch.addcmul(nxt, a1, h)
        for coef, dim, off in ((cE, -1, 1), (cW, -1, -1), (cN, -2, 1), (cS, -2, -1)):
            nb = neighbor(h, dim, off, boundary)
            nxt = torch.addcmul(nxt, coef, nb) if isinstance(coef, Tensor) else torch.add(nxt, nb, alpha=coef)
        h_prev, h = h, nxt
    return h


def eager_macs(
    numel: int, K: int, *, source: bool, velocity: bool, variable_diffusion: bool, bounded_velocity: bool = False
) -> int:
    """MACs of the solver on ``numel`` elements, one per elementwise op per element (README convention).

    Equal, op for op, to what ``condense.count`` measures on the eager path; the fused op reports this.
    """
    per = 0
    if bounded_velocity and velocity:
        per += 10  # u * (1/umax), square, + 1, rsqrt, * u; and v likewise
    if variable_diffusion:
        per += 8  # bx, by, L (3), 1/L, a0 (2)
    if velocity:
        per += 5  # u_x (2), v_y (2), u_x + v_y
        per += 2 if variable_diffusion else 1  # a1
        per += 12 if variable_diffusion else 6  # cE, cW, cN, cS
    elif variable_diffusion:
        per += 4
    if source:
        per += 2 if variable_diffusion else 1
    per += K * (5 + int(source) + int(velocity))
    return per * numel


# ------------------------------------------------------------------------------------------ fused
# The kernels read and write any strided layout in place (contiguous NCHW, channels-last, views): outputs
# and gradients take the layout of ``init`` (``empty_like``), in the real and the fake (tracing)
# implementation alike. The ops are tagged ``flexible_layout``: torch.compile passes its channels-last
# maps (inductor keeps CPU convolutions channels-last) as they are, instead of converting every map to
# NCHW and back around each Global layer, forward and backward.
# torch.compile caches compiled graphs keyed on the forward graph; the backward is traced from
# ``_backward`` below, whose source is not part of that key. A change to what the backward op takes must
# therefore also change the forward op's schema (as ``source_is_init`` does), or a cached graph calls the
# backward op with its old arguments.


_LAYOUT = (torch.Tag.flexible_layout,)


def _field(t: Optional[Tensor]) -> _native.Field:
    if t is None or t.numel() == 0:
        return _native.Field(None, 0, 0, 0, 0)
    return _native.Field(t.data_ptr(), *t.stride())


def _scalars(init, K, dt, dx, dy, dx_const, dy_const, boundary, courant, dmax):
    N, C, H, W = init.shape
    return [N, C, H, W, K, dt, dx, dy, dx_const, dy_const, boundary, courant, dmax, torch.get_num_threads()]


def _library(dtype: torch.dtype):
    lib = _native.library(dtype)
    if lib is None:
        raise RuntimeError(_native.status(dtype))
    return lib


def _check_fused(t: Tensor) -> None:
    """``impl="fused"`` on tensors the kernel cannot take: say what is wrong, before the op runs."""
    if _kernel_ready(t.device.type, t.dtype):  # the common case, constant under torch.compile (no lock traced)
        return
    if t.device.type != "cpu" or not _native.supports(t.dtype):
        dtype = str(t.dtype).replace("torch.", "")
        raise ConfigError(
            f"impl='fused' cannot run {dtype} tensors on {t.device.type}: the fused C kernel "
            "takes float32 and float64 tensors on the CPU",
            "use impl='auto', which runs other dtypes and devices eagerly, or convert to float32",
        )
    raise ConfigError(f"impl='fused': {_native.status(t.dtype)}", "use impl='auto' to fall back to eager")


@torch.library.custom_op("condense::advection_diffusion", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _fused(
    init: Tensor,
    source: Optional[Tensor],
    u: Optional[Tensor],
    v: Optional[Tensor],
    Dx: Optional[Tensor],
    Dy: Optional[Tensor],
    dx_const: float,
    dy_const: float,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: int,
    courant: float,
    dmax: float,
    source_is_init: bool,
) -> Tensor:
    # source_is_init (source is init, the Global layer's default f(I) = I = H^0) only shapes the backward;
    # it is an argument so that compiled graphs (and torch.compile's caches) record it
    out = torch.empty_like(init)
    _library(init.dtype).ad_forward(
        *map(_field, (init, source, u, v, Dx, Dy, out)),
        *_scalars(init, K, dt, dx, dy, dx_const, dy_const, boundary, courant, dmax),
    )
    return out


@_fused.register_fake
def _(init, source, u, v, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax, source_is_init):
    return torch.empty_like(init)


@torch.library.custom_op("condense::advection_diffusion_backward", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _fused_backward(
    grad: Tensor,
    init: Tensor,
    source: Optional[Tensor],
    u: Optional[Tensor],
    v: Optional[Tensor],
    Dx: Optional[Tensor],
    Dy: Optional[Tensor],
    dx_const: float,
    dy_const: float,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: int,
    courant: float,
    dmax: float,
    needs: list[bool],
    source_is_init: bool,
) -> list[Tensor]:
    # source_is_init: source and init are one tensor; its whole gradient comes back as init's (the kernel
    # sums both into one output instead of writing two for autograd to add)
    ins = (init, source, u, v, Dx, Dy)
    outs = [torch.empty_like(init) if (t is not None and need) else None for t, need in zip(ins, needs)]
    fields = list(outs)
    if source_is_init and outs[0] is not None:
        fields[1], outs[1] = outs[0], None
    _library(init.dtype).ad_backward(
        *map(_field, (grad, *ins, *fields)), *_scalars(init, K, dt, dx, dy, dx_const, dy_const, boundary, courant, dmax)
    )
    return [o if o is not None else init.new_empty(0) for o in outs]


@_fused_backward.register_fake
def _(
    grad, init, source, u, v, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax, needs, source_is_init
):
    return [
        torch.empty_like(init)
        if (t is not None and n and not (i == 1 and source_is_init and needs[0]))
        else init.new_empty(0)
        for i, (t, n) in enumerate(zip((init, source, u, v, Dx, Dy), needs))
    ]


def _backward(ctx, grad):
    tensors = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:6]]
    merged = ctx.source_is_init and needs[0]
    grads = _fused_backward(grad, *tensors, *ctx.scalars, needs, merged)
    return (
        *(
            g if (t is not None and n and not (i == 1 and merged)) else None
            for i, (g, t, n) in enumerate(zip(grads, tensors, needs))
        ),
        *([None] * (len(ctx.scalars) + 1)),
    )


_fused.register_autograd(_backward, setup_context=solver_setup_context)


@register_op_handle("condense::advection_diffusion")
def _fused_macs(inputs, outputs) -> int:
    """fvcore handle: the fused op costs what the eager path would (``eager_macs``)."""
    shape = outputs[0].type().sizes()
    present = [inp.type().kind() != "NoneType" for inp in inputs[:6]]
    K = inputs[8].toIValue()
    courant = inputs[13].toIValue()
    numel = 1
    for n in shape:
        numel *= n
    return eager_macs(
        numel, K, source=present[1], velocity=present[2], variable_diffusion=present[4], bounded_velocity=courant > 0
    )


@torch.library.custom_op("condense::advection_diffusion_dwvel", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _fused_dwvel(
    init: Tensor,
    source: Optional[Tensor],
    wu: Tensor,
    bu: Tensor,
    wv: Tensor,
    bv: Tensor,
    Dx: Optional[Tensor],
    Dy: Optional[Tensor],
    dx_const: float,
    dy_const: float,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: int,
    courant: float,
    dmax: float,
) -> Tensor:
    """Inference only: the solver with u = dwconv(init, wu) + bu and v = dwconv(init, wv) + bv computed
    inside the kernel (weights (C, k, k), zero padding k // 2, as nn.Conv2d). No autograd."""
    return _dwvel_direct(
        init,
        source,
        _kernel_weights(init.dtype, wu, bu, wv, bv),
        int(wu.shape[-1]),
        Dx,
        Dy,
        dx_const,
        dy_const,
        K,
        dt,
        dx,
        dy,
        boundary,
        courant,
        dmax,
    )


@_fused_dwvel.register_fake
def _(init, source, wu, bu, wv, bv, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax):
    return torch.empty_like(init)


@register_op_handle("condense::advection_diffusion_dwvel")
def _fused_dwvel_macs(inputs, outputs) -> int:
    """fvcore handle: the two depthwise convolutions as fvcore counts a conv (k*k per output element,
    bias free) plus the solver as ``eager_macs`` counts it; equal to the unfused path."""
    shape = outputs[0].type().sizes()
    ks = inputs[2].type().sizes()[-1]
    present = [inputs[i].type().kind() != "NoneType" for i in (1, 6)]
    K, courant = inputs[10].toIValue(), inputs[15].toIValue()
    numel = 1
    for n in shape:
        numel *= n
    return 2 * ks * ks * numel + eager_macs(
        numel, K, source=present[0], velocity=True, variable_diffusion=present[1], bounded_velocity=courant > 0
    )


@torch.library.custom_op("condense::advection_diffusion_dwvel_bn", mutates_args=(), tags=_LAYOUT, device_types="cpu")
def _fused_dwvel_bn(
    init: Tensor,
    source: Optional[Tensor],
    cu: Tensor,
    gu: Tensor,
    betau: Tensor,
    mu: Tensor,
    varu: Tensor,
    cv: Tensor,
    gv: Tensor,
    betav: Tensor,
    mv: Tensor,
    varv: Tensor,
    eps_u: float,
    eps_v: float,
    Dx: Optional[Tensor],
    Dy: Optional[Tensor],
    dx_const: float,
    dy_const: float,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: int,
    courant: float,
    dmax: float,
) -> Tensor:
    """Inference only: ``_fused_dwvel`` with each velocity convolution's BatchNorm (running statistics) folded
    inside the kernel; conv weights (C, 1, k, k) or (C, k, k), bias free. The traced and compiled inference
    path: its graph holds this one op per layer, not the folding's small kernels."""
    w = _kernel_weights(init.dtype, cu, gu, betau, mu, varu, cv, gv, betav, mv, varv)
    out = torch.empty_like(init)
    N, C, H, W = init.shape
    _library(init.dtype).ad_forward_dwvel_bn(
        _field(init),
        _field(source),
        *(t.data_ptr() for t in w[:5]),
        float(eps_u),
        *(t.data_ptr() for t in w[5:]),
        float(eps_v),
        int(cu.shape[-1]),
        _field(Dx),
        _field(Dy),
        _field(out),
        N,
        C,
        H,
        W,
        K,
        dt,
        dx,
        dy,
        dx_const,
        dy_const,
        boundary,
        courant,
        dmax,
        torch.get_num_threads(),
    )
    return out


@_fused_dwvel_bn.register_fake
def _(
    init,
    source,
    cu,
    gu,
    betau,
    mu,
    varu,
    cv,
    gv,
    betav,
    mv,
    varv,
    eps_u,
    eps_v,
    Dx,
    Dy,
    dx_const,
    dy_const,
    K,
    dt,
    dx,
    dy,
    boundary,
    courant,
    dmax,
):
    return torch.empty_like(init)


@register_op_handle("condense::advection_diffusion_dwvel_bn")
def _fused_dwvel_bn_macs(inputs, outputs) -> int:
    """fvcore handle: ``_fused_dwvel_macs`` plus the two BatchNorm folds as the counter counts the eager fold
    (``fold_batchnorm``: 5 elementwise ops per channel and one per weight, C (k*k + 5) a convolution)."""
    shape = outputs[0].type().sizes()
    ks = inputs[2].type().sizes()[-1]
    present = [inputs[i].type().kind() != "NoneType" for i in (1, 14)]
    K, courant = inputs[18].toIValue(), inputs[23].toIValue()
    numel = 1
    for n in shape:
        numel *= n
    C = shape[1]
    return (
        2 * ks * ks * numel
        + 2 * C * (ks * ks + 5)
        + eager_macs(
            numel, K, source=present[0], velocity=True, variable_diffusion=present[1], bounded_velocity=courant > 0
        )
    )


def advection_diffusion_dwvel_bn(
    init: Tensor,
    source: Optional[Tensor],
    nets,
    Dx_raw: Union[Tensor, Scalar],
    Dy_raw: Union[Tensor, Scalar],
    *,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: str,
    courant: float,
    dmax: float,
) -> Tensor:
    """``advection_diffusion_dwvel`` from two (conv, BatchNorm) pairs, the norms folded in the kernel:
    ``nets`` = ((conv_u, norm_u), (conv_v, norm_v)), bias-free depthwise convs, norms in eval mode."""
    var_d = isinstance(Dx_raw, Tensor)
    (cu, nu), (cv, nv) = nets
    return _fused_dwvel_bn(
        init,
        source,
        cu.weight,
        nu.weight,
        nu.bias,
        nu.running_mean,
        nu.running_var,
        cv.weight,
        nv.weight,
        nv.bias,
        nv.running_mean,
        nv.running_var,
        float(nu.eps),
        float(nv.eps),
        Dx_raw if var_d else None,
        Dy_raw if var_d else None,
        0.0 if var_d else float(Dx_raw),
        0.0 if var_d else float(Dy_raw),
        int(K),
        float(dt),
        float(dx),
        float(dy),
        _BOUNDARY_CODE[boundary],
        float(courant),
        float(dmax),
    )


def direct_call_ok(t: Tensor) -> bool:
    """Whether the inference kernel may be called directly on ``t`` instead of through its custom op: a plain
    tensor (no subclass: fake, functional), nothing recording ops (``torch.jit.trace``, which ``condense.count``
    uses, ``torch.compile``/export, a dispatch mode) and not the legacy path. The op itself then only adds
    dispatch time (~10-15 us a call, as much as a whole 64x8x8 solve)."""
    return (
        type(t) is Tensor
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and _python_dispatch._get_current_dispatch_mode() is None
        and not _native.legacy()
    )


def _kernel_weights(dtype: torch.dtype, *ws: Tensor) -> tuple:
    """The weights as the kernel reads them: contiguous, in ``dtype`` (converted only where they are not)."""
    return tuple(t if t.dtype is dtype and t.is_contiguous() else t.detach().to(dtype).contiguous() for t in ws)


def _dwvel_direct(
    init: Tensor,
    source: Optional[Tensor],
    w: tuple,
    ks: int,
    Dx: Optional[Tensor],
    Dy: Optional[Tensor],
    dx_const: float,
    dy_const: float,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: int,
    courant: float,
    dmax: float,
) -> Tensor:
    """What ``_fused_dwvel`` computes, called directly (``direct_call_ok``); weights already (C, k*k)
    contiguous in init's dtype."""
    out = torch.empty_like(init)
    N, C, H, W = init.shape
    _library(init.dtype).ad_forward_dwvel(
        _field(init),
        _field(source),
        w[0].data_ptr(),
        w[1].data_ptr(),
        w[2].data_ptr(),
        w[3].data_ptr(),
        ks,
        _field(Dx),
        _field(Dy),
        _field(out),
        N,
        C,
        H,
        W,
        K,
        dt,
        dx,
        dy,
        dx_const,
        dy_const,
        boundary,
        courant,
        dmax,
        torch.get_num_threads(),
    )
    return out


def advection_diffusion_dwvel(
    init: Tensor,
    source: Optional[Tensor],
    wu: Tensor,
    bu: Tensor,
    wv: Tensor,
    bv: Tensor,
    Dx_raw: Union[Tensor, Scalar],
    Dy_raw: Union[Tensor, Scalar],
    *,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: str,
    courant: float,
    dmax: float,
) -> Tensor:
    """``bounded_advection_diffusion`` with the velocities given as depthwise convolutions of ``init``
    (``(C, k, k)`` weights and ``(C,)`` biases, a BatchNorm folded in), fused into one kernel call.
    Inference only (no gradient); needs the fused kernel (``fused_available``). Outside tracing and
    compiling (``direct_call_ok``) the kernel is called without the custom op's dispatch."""
    var_d = isinstance(Dx_raw, Tensor)
    if direct_call_ok(init):
        return _dwvel_direct(
            init,
            source,
            _kernel_weights(init.dtype, wu, bu, wv, bv),
            int(wu.shape[-1]),
            Dx_raw if var_d else None,
            Dy_raw if var_d else None,
            0.0 if var_d else float(Dx_raw),
            0.0 if var_d else float(Dy_raw),
            int(K),
            float(dt),
            float(dx),
            float(dy),
            _BOUNDARY_CODE[boundary],
            float(courant),
            float(dmax),
        )
    return _fused_dwvel(
        init,
        source,
        wu,
        bu,
        wv,
        bv,
        Dx_raw if var_d else None,
        Dy_raw if var_d else None,
        0.0 if var_d else float(Dx_raw),
        0.0 if var_d else float(Dy_raw),
        int(K),
        float(dt),
        float(dx),
        float(dy),
        _BOUNDARY_CODE[boundary],
        float(courant),
        float(dmax),
    )


def fused_available(t: Tensor) -> bool:
    """Whether the fused kernel can run on tensors like ``t`` (CPU, float32/float64, compiler present)."""
    return _kernel_ready(t.device.type, t.dtype)


@torch.compiler.assume_constant_result
def _kernel_ready(device_type: str, dtype: torch.dtype) -> bool:
    # torch.compile calls this once while tracing and keeps the answer: loading the library (a lock, ctypes)
    # would otherwise break the graph at every Global layer of a model compiled before its first eager call
    return device_type == "cpu" and dtype in (torch.float32, torch.float64) and _native.library(dtype) is not None


# ------------------------------------------------------------------------------------------ triton
IMPLS = ("auto", "fused", "triton", "eager")


def _choose(impl: str, init: Tensor, others: tuple) -> str:
    """The path ``impl`` runs: "auto" is the C kernel on the CPU (where it builds), Triton on CUDA (where
    triton imports), else eager; "fused" or "triton" on tensors that kernel cannot take is a ConfigError
    saying why. Only CPU tensors ever reach the C kernel."""
    tensors = [init, *(t for t in others if isinstance(t, Tensor))]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if impl == "auto":
        if on_cpu:
            return "fused" if fused_available(init) else "eager"
        from . import _triton  # imports triton: only where it may run

        return "triton" if _triton.triton_ready(init.device.type) and not _triton.unsupported(*tensors) else "eager"
    if impl == "fused":
        if not on_cpu:
            dev = next(t.device.type for t in tensors if t.device.type != "cpu")
            raise ConfigError(
                f"impl='fused' cannot run tensors on {dev}: the fused C kernel runs on CPU tensors",
                "use impl='triton' or 'auto' on CUDA",
            )
        _check_fused(init)
    elif impl == "triton":
        from . import _triton

        reason = _triton.unsupported(*tensors)
        if reason:
            raise ConfigError(
                f"impl='triton' cannot run here: {reason}",
                "use impl='auto': the C kernel on the CPU, else eager where Triton cannot run",
            )
    return impl


def _triton_op():
    from ._triton import triton_advection_diffusion

    return triton_advection_diffusion


# counted as the fused op (same schema), registered here so that counting needs no triton import
register_op_handle("condense::advection_diffusion_triton")(_fused_macs)


# ------------------------------------------------------------------------------------------ public
def advection_diffusion(
    init: Tensor,
    source: Optional[Tensor],
    u: Optional[Tensor],
    v: Optional[Tensor],
    Dx: Union[Tensor, Scalar],
    Dy: Union[Tensor, Scalar],
    *,
    K: int = 5,
    dt: float = 0.2,
    dx: float = 1.0,
    dy: float = 1.0,
    boundary: str = "periodic",
    impl: str = "auto",
) -> Tensor:
    """H^K of Eq. 4 from H^{-1} = H^0 = ``init`` with source ``source`` (= f(I)).

    All tensors are (N, C, H, W). ``source``, ``u`` and ``v`` may be None (zero); ``u`` and ``v`` go
    together. ``Dx`` and ``Dy`` are tensors or floats (constant diffusion). ``impl`` is ``"auto"``
    (fused C kernel on the CPU where available, Triton on CUDA, else eager), ``"fused"``, ``"triton"``
    (``condense.pde._triton``; CPU tensors only under ``TRITON_INTERPRET=1``) or ``"eager"``.
    """
    if (u is None) != (v is None):
        raise ValueError("u and v must both be tensors or both be None")
    if isinstance(Dx, Tensor) != isinstance(Dy, Tensor):
        raise ValueError("Dx and Dy must both be tensors or both be floats")
    if boundary not in _BOUNDARY_CODE:
        raise ValueError(f"boundary={boundary!r} is not one of {', '.join(BOUNDARIES)}")
    for name, t in (("source", source), ("u", u), ("v", v), ("Dx", Dx), ("Dy", Dy)):
        if isinstance(t, Tensor) and t.shape != init.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(init.shape)} like init")
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(map(repr, IMPLS))}")
    path = _choose(impl, init, (source, u, v, Dx, Dy))
    if path == "eager":
        return _eager(init, source, u, v, Dx, Dy, K, dt, dx, dy, boundary)
    var_d = isinstance(Dx, Tensor)
    op = _fused if path == "fused" else _triton_op()
    return op(
        init,
        source,
        u,
        v,
        Dx if var_d else None,
        Dy if var_d else None,
        0.0 if var_d else float(Dx),
        0.0 if var_d else float(Dy),
        int(K),
        float(dt),
        float(dx),
        float(dy),
        _BOUNDARY_CODE[boundary],
        0.0,
        0.0,
        source is init,
    )


def bounded_advection_diffusion(
    init: Tensor,
    source: Optional[Tensor],
    u_raw: Optional[Tensor],
    v_raw: Optional[Tensor],
    Dx_raw: Union[Tensor, Scalar],
    Dy_raw: Union[Tensor, Scalar],
    *,
    K: int,
    dt: float,
    dx: float,
    dy: float,
    boundary: str,
    courant: float,
    dmax: float,
    impl: str = "auto",
) -> Tensor:
    """The solver on bounded fields: u -> u / sqrt(1 + (u / umax)^2) with umax = courant dx / dt (v likewise),
    and tensor D -> clamp(D, 0, dmax). The fused path applies the bounds inside the kernel."""
    var_d = isinstance(Dx_raw, Tensor)
    path = _choose(impl, init, (source, u_raw, v_raw, Dx_raw, Dy_raw))
    if path == "eager":
        u = v = None
        if u_raw is not None:
            u, v = bound_velocity(u_raw, courant * dx / dt), bound_velocity(v_raw, courant * dy / dt)
        Dx, Dy = (bound_diffusion(Dx_raw, dmax), bound_diffusion(Dy_raw, dmax)) if var_d else (Dx_raw, Dy_raw)
        return _eager(init, source, u, v, Dx, Dy, K, dt, dx, dy, boundary)
    op = _fused if path == "fused" else _triton_op()
    return op(
        init,
        source,
        u_raw,
        v_raw,
        Dx_raw if var_d else None,
        Dy_raw if var_d else None,
        0.0 if var_d else float(Dx_raw),
        0.0 if var_d else float(Dy_raw),
        int(K),
        float(dt),
        float(dx),
        float(dy),
        _BOUNDARY_CODE[boundary],
        float(courant),
        float(dmax),
        source is init,
    )
