"""The Global layer's solver (Eq. 4, Du Fort-Frankel) as Triton kernels, forward and its own backward.

In: the tensors and scalars of ``advection_diffusion`` (init, optional source, optional u/v, Dx/Dy as
tensors or floats, K, dt, dx, dy, boundary, and the bounds ``courant``/``dmax`` of
``bounded_advection_diffusion``) on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``
set before triton is imported: how CI and reviewers run it). Out: H^K, and in the backward the gradients
of init, source, u, v, Dx and Dy. Never: runs on a tensor it cannot take (``unsupported`` says why, and
``advection_diffusion`` turns that into a ``ConfigError`` or, for ``impl="auto"``, the eager path),
differentiates through K steps of elementwise ops, or keeps state between calls.

What runs where (float32 arithmetic for float16/bfloat16/float32 tensors, float64 for float64):

* ``H * W <= PLANE_MAX`` (every plane of EfficientNet-B0's and ResNet-50's late stages, 64x64 and below):
  one program per (n, c) plane holds the whole plane (padded to a power of two) and runs all K steps in
  registers; the current state goes through a per-plane scratch slot (on a GPU it stays in L1/L2) only
  so that each cell can read its four neighbours. The forward reads its inputs once and writes H^K once.
  The backward recomputes the K states into the scratch (it keeps them: the adjoint runs backwards in
  time), runs the adjoint recurrence with the seven coefficient gradients accumulated in registers, and
  maps them onto init, source, u, v, Dx and Dy in the same program.
* larger planes: one launch per step over blocks of ``STEP_BLOCK`` cells (the coefficients recomputed
  from the inputs each step), the states kept in a (K, N*C, H*W) buffer, and the same adjoint as one or
  two launches per step plus two to finish.

The adjoint of ``h^{k+1} = a0 h^{k-1} + s + a1 h^k + sum_d c_d S_d h^k`` (S_d the boundary-aware shift
towards E, W, N, S; ``H^{-1} = H^0``) is ``mu^k = a1 mu^{k+1} + sum_d S_d^T (c_d mu^{k+1}) + a0 mu^{k+2}``
from ``mu^K`` = the output's gradient; init gets ``mu^0 + a0 mu^1``, and the coefficients get
``sum_k mu^{k+1} h^{k-1}``, ``sum_k mu^{k+1} h^k``, ``sum_k mu^{k+1} S_d h^k`` and ``sum_k mu^{k+1}``.
S_d^T is the opposite shift for periodic and zero boundaries; for ``replicate`` a cell whose neighbour
would leave the plane is its own neighbour, so S_d^T also adds the cell's own value there.

Scalars reach the kernels as float32 (hi, lo) pairs (Triton passes Python floats as float32), so that
float64 runs keep double precision. Inputs are made contiguous (NCHW) first: a channels-last map is
copied. Not supported (``advection_diffusion`` falls back to eager for ``impl="auto"``, and raises
``ConfigError`` for ``impl="triton"``): tensors on devices other than CUDA (or the CPU under the
interpreter), dtypes other than float16/bfloat16/float32/float64 (float16/bfloat16 on CUDA only), and
tensors on different devices. The ``_dwvel`` inference variant has no Triton kernel (on CUDA the
velocity convolutions run as cuDNN depthwise convolutions before the solver).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ._base import solver_setup_context


try:  # triton is optional: without it (or without CUDA and the interpreter) impl="triton" is a ConfigError
    import triton
    import triton.language as tl

    _IMPORT_ERROR = ""
except Exception as err:  # pragma: no cover - depends on the installation
    triton = tl = None
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"

PLANE_MAX = 4096  # planes of at most this many cells run all K steps in one program (tests lower it)
STEP_BLOCK = 1024  # cells per program of the per-step kernels
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTERP_DTYPES = (torch.float32, torch.float64)


def interpreted() -> bool:
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET=1``): kernels then take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(*tensors: Optional[Tensor]) -> str:
    """Why the Triton kernels cannot take these tensors ("" when they can)."""
    if triton is None:
        return f"triton does not import ({_IMPORT_ERROR})"
    ts = [t for t in tensors if isinstance(t, Tensor)]
    dev = ts[0].device
    if any(t.device != dev for t in ts):
        return "the tensors are on different devices"
    dtype = str(ts[0].dtype).replace("torch.", "")
    if dev.type == "cuda":
        if ts[0].dtype not in _CUDA_DTYPES:
            return f"the Triton kernel takes float16, bfloat16, float32 and float64 tensors, not {dtype}"
        return ""
    if dev.type == "cpu":
        if not interpreted():
            return (
                "the Triton kernel runs on CUDA tensors, or on CPU tensors only under Triton's interpreter "
                "(TRITON_INTERPRET=1 set before triton is imported)"
            )
        if ts[0].dtype not in _INTERP_DTYPES:
            return f"under Triton's interpreter the kernel takes float32 and float64 tensors, not {dtype}"
        return ""
    return f"the Triton kernel runs on CUDA tensors, not on {dev.type}"


@torch.compiler.assume_constant_result
def triton_ready(device_type: str) -> bool:
    """Whether ``impl="auto"`` should pick Triton for tensors on ``device_type``: CUDA with triton importable."""
    return device_type == "cuda" and triton is not None and torch.cuda.is_available()


def _split(x: float) -> tuple[float, float]:
    """``x`` as float32 (hi, lo) with hi + lo == x to about 48 bits (Triton passes floats as float32)."""
    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi))


# ------------------------------------------------------------------------------------------ kernels
if triton is not None:

    @triton.jit
    def _nb(ptr, y, x, H, W, DY: tl.constexpr, DX: tl.constexpr, BND: tl.constexpr, mask):
        """(S_d a)(y, x) = a(y + DY, x + DX) under the boundary rule (0 periodic, 1 replicate, 2 zero)."""
        yy = y + DY
        xx = x + DX
        m = mask
        if BND == 0:
            yy = tl.where(yy < 0, yy + H, tl.where(yy >= H, yy - H, yy))
            xx = tl.where(xx < 0, xx + W, tl.where(xx >= W, xx - W, xx))
        elif BND == 1:
            yy = tl.minimum(tl.maximum(yy, 0), H - 1)
            xx = tl.minimum(tl.maximum(xx, 0), W - 1)
        else:
            m = mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        return tl.load(ptr + yy * W + xx, mask=m, other=0.0)

    @triton.jit
    def _nbT(ptr, y, x, H, W, DY: tl.constexpr, DX: tl.constexpr, BND: tl.constexpr, mask):
        """(S_d^T a)(y, x): the transpose of ``_nb``'s shift by (DY, DX)."""
        if BND == 0:
            val = _nb(ptr, y, x, H, W, -DY, -DX, 0, mask)
        else:
            val = _nb(ptr, y, x, H, W, -DY, -DX, 2, mask)
            if BND == 1:  # cells whose neighbour leaves the plane are clamped onto themselves
                yy = y + DY
                xx = x + DX
                out = (yy < 0) | (yy >= H) | (xx < 0) | (xx >= W)
                val += tl.load(ptr + y * W + x, mask=mask & out, other=0.0)
        return val

    @triton.jit
    def _pair(hi, lo, CT: tl.constexpr):
        return tl.cast(hi, CT) + tl.cast(lo, CT)

    @triton.jit
    def _bound(u, inv_umax, BOUND_V: tl.constexpr):
        """u / sqrt(1 + (u / umax)^2), as ``bound_velocity``; u itself without the bound."""
        if BOUND_V:
            uu = u * inv_umax
            u = u * (1.0 / tl.sqrt(uu * uu + 1.0))
        return u

    @triton.jit
    def _bound_grad(u, inv_umax):
        """d bound(u) / du = (1 + (u / umax)^2)^(-3/2)."""
        uu = u * inv_umax
        r = 1.0 / tl.sqrt(uu * uu + 1.0)
        return r * r * r

    @triton.jit
    def _scalars(
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        CT: tl.constexpr,
    ):
        """(dt, dx, dy, bx or Dx const, by or Dy const, 1/umax_x, 1/umax_y, dmax) in the compute type."""
        dt = _pair(dt_hi, dt_lo, CT)
        dx = _pair(dx_hi, dx_lo, CT)
        dy = _pair(dy_hi, dy_lo, CT)
        cr = _pair(cr_hi, cr_lo, CT)
        cr = tl.where(cr > 0, cr, 1.0)
        return (
            dt,
            dx,
            dy,
            _pair(bx_hi, bx_lo, CT),
            _pair(by_hi, by_lo, CT),
            dt / (cr * dx),
            dt / (cr * dy),
            _pair(dm_hi, dm_lo, CT),
        )

    @triton.jit
    def _diag(
        u_p,
        v_p,
        dx_p,
        dy_p,
        idx,
        mask,
        dt,
        dx,
        dy,
        bxc,
        byc,
        ium_x,
        ium_y,
        dmax,
        CT: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
    ):
        """iL = 1/L, a0 = M/L and the neighbour coefficients cE, cW, cN, cS at cells ``idx``, plus the
        (bounded) u, v and tx = 2 Bx, ty = 2 By they are made of."""
        if VAR_D:
            Dx = tl.load(dx_p + idx, mask=mask, other=0.0).to(CT)
            Dy = tl.load(dy_p + idx, mask=mask, other=0.0).to(CT)
            if CLAMP_D:
                Dx = tl.minimum(tl.maximum(Dx, 0.0), dmax)
                Dy = tl.minimum(tl.maximum(Dy, 0.0), dmax)
            bx = Dx * (dt / (dx * dx))
            by = Dy * (dt / (dy * dy))
        else:
            bx = bxc
            by = byc
        iL = 1.0 / ((bx + by) * 2.0 + 1.0)
        a0 = iL * 2.0 - 1.0
        tx = bx * 2.0
        ty = by * 2.0
        if HAS_VEL:
            u = _bound(tl.load(u_p + idx, mask=mask, other=0.0).to(CT), ium_x, BOUND_V)
            v = _bound(tl.load(v_p + idx, mask=mask, other=0.0).to(CT), ium_y, BOUND_V)
            ax = u * (dt / dx)
            ay = v * (dt / dy)
            cE = (tx - ax) * iL
            cW = (tx + ax) * iL
            cN = (ty - ay) * iL
            cS = (ty + ay) * iL
        else:
            u = tx * 0.0
            v = u
            cE = tx * iL
            cW = cE
            cN = ty * iL
            cS = cN
        return iL, a0, cE, cW, cN, cS, u, v, tx, ty

    @triton.jit
    def _div(
        u_p, v_p, y, x, H, W, mask, dt, dx, dy, ium_x, ium_y, CT: tl.constexpr, BND: tl.constexpr, BOUND_V: tl.constexpr
    ):
        """u_x + v_y of the bounded velocity (central differences under the boundary rule)."""
        uE = _bound(_nb(u_p, y, x, H, W, 0, 1, BND, mask).to(CT), ium_x, BOUND_V)
        uW = _bound(_nb(u_p, y, x, H, W, 0, -1, BND, mask).to(CT), ium_x, BOUND_V)
        vN = _bound(_nb(v_p, y, x, H, W, 1, 0, BND, mask).to(CT), ium_y, BOUND_V)
        vS = _bound(_nb(v_p, y, x, H, W, -1, 0, BND, mask).to(CT), ium_y, BOUND_V)
        return (uE - uW) * (0.5 / dx) + (vN - vS) * (0.5 / dy)

    @triton.jit
    def _coefs(
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        idx,
        y,
        x,
        H,
        W,
        mask,
        dt,
        dx,
        dy,
        bxc,
        byc,
        ium_x,
        ium_y,
        dmax,
        CT: tl.constexpr,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
    ):
        """Every coefficient of the update at cells ``idx``: a0, a1 (0 without velocity), cE..cS, s (0
        without source)."""
        iL, a0, cE, cW, cN, cS, u, v, tx, ty = _diag(
            u_p,
            v_p,
            dx_p,
            dy_p,
            idx,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
        )
        a1 = iL * 0.0
        if HAS_VEL:
            a1 = _div(u_p, v_p, y, x, H, W, mask, dt, dx, dy, ium_x, ium_y, CT, BND, BOUND_V) * (-2.0 * dt) * iL
        s = iL * 0.0
        if HAS_SRC:
            s = tl.load(src_p + idx, mask=mask, other=0.0).to(CT) * (2.0 * dt) * iL
        return a0, a1, cE, cW, cN, cS, s

    @triton.jit
    def _update(hp, h, hE, hW, hN, hS, a0, a1, cE, cW, cN, cS, s, HAS_SRC: tl.constexpr, HAS_VEL: tl.constexpr):
        nxt = hp * a0
        if HAS_SRC:
            nxt += s
        if HAS_VEL:
            nxt += a1 * h
        return nxt + cE * hE + cW * hW + cN * hN + cS * hS

    @triton.jit
    def _chain(
        gs,
        ga0,
        ga1,
        gE,
        gW,
        gN,
        gS,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        idx,
        y,
        x,
        H,
        W,
        mask,
        dt,
        dx,
        dy,
        bxc,
        byc,
        ium_x,
        ium_y,
        dmax,
        CT: tl.constexpr,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
    ):
        """Coefficient gradients -> (g_source, g_u and g_v without the divergence term and before the
        bound, g_div, g_Dx, g_Dy); g_u, g_v then get hdx (S_E^T - S_W^T) g_div (hdy likewise) and the
        bound's derivative."""
        iL, a0, cE, cW, cN, cS, u, v, tx, ty = _diag(
            u_p,
            v_p,
            dx_p,
            dy_p,
            idx,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
        )
        g_src = gs * (2.0 * dt) * iL
        giL = ga0 * 2.0
        if HAS_SRC:
            giL += gs * (2.0 * dt) * tl.load(src_p + idx, mask=mask, other=0.0).to(CT)
        gdiv = iL * 0.0
        gu = iL * 0.0
        gv = iL * 0.0
        if HAS_VEL:
            div = _div(u_p, v_p, y, x, H, W, mask, dt, dx, dy, ium_x, ium_y, CT, BND, BOUND_V)
            gdiv = ga1 * (-2.0 * dt) * iL
            giL += ga1 * (-2.0 * dt) * div
            ax = u * (dt / dx)
            ay = v * (dt / dy)
            giL += gE * (tx - ax) + gW * (tx + ax) + gN * (ty - ay) + gS * (ty + ay)
            gu = (gW - gE) * iL * (dt / dx)
            gv = (gS - gN) * iL * (dt / dy)
        else:
            giL += (gE + gW) * tx + (gN + gS) * ty
        gDx = iL * 0.0
        gDy = iL * 0.0
        if VAR_D:
            g_L = -(iL * iL) * giL  # d/dL of 1/L
            gDx = ((gE + gW) * iL * 2.0 + g_L * 2.0) * (dt / (dx * dx))
            gDy = ((gN + gS) * iL * 2.0 + g_L * 2.0) * (dt / (dy * dy))
            if CLAMP_D:
                Dx = tl.load(dx_p + idx, mask=mask, other=0.0).to(CT)
                Dy = tl.load(dy_p + idx, mask=mask, other=0.0).to(CT)
                gDx = tl.where((Dx >= 0.0) & (Dx <= dmax), gDx, 0.0)
                gDy = tl.where((Dy >= 0.0) & (Dy <= dmax), gDy, 0.0)
        return g_src, gu, gv, gdiv, gDx, gDy

    @triton.jit
    def _finish_uv(
        gu,
        gv,
        gdiv_p,
        u_p,
        v_p,
        idx,
        y,
        x,
        H,
        W,
        mask,
        dx,
        dy,
        ium_x,
        ium_y,
        CT: tl.constexpr,
        BND: tl.constexpr,
        BOUND_V: tl.constexpr,
    ):
        gu += (_nbT(gdiv_p, y, x, H, W, 0, 1, BND, mask) - _nbT(gdiv_p, y, x, H, W, 0, -1, BND, mask)) * (0.5 / dx)
        gv += (_nbT(gdiv_p, y, x, H, W, 1, 0, BND, mask) - _nbT(gdiv_p, y, x, H, W, -1, 0, BND, mask)) * (0.5 / dy)
        if BOUND_V:
            gu *= _bound_grad(tl.load(u_p + idx, mask=mask, other=0.0).to(CT), ium_x)
            gv *= _bound_grad(tl.load(v_p + idx, mask=mask, other=0.0).to(CT), ium_y)
        return gu, gv

    # ---------------------------------------------------------------------------- whole plane per program
    @triton.jit
    def _fwd_plane(
        init_p,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        out_p,
        st_p,
        H,
        W,
        K,
        SLOTS,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        SAVE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """H^K of one (n, c) plane, all K steps in this program. ``st_p``: SLOTS slots per plane; with SAVE
        the states h^0..h^{K-1} stay in the first K (for the backward, which then needs no H^K), else slot 0
        is the scratch of every step."""
        CT: tl.constexpr = st_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        a0, a1, cE, cW, cN, cS, s = _coefs(
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_SRC,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        h = tl.load(init_p + base + offs, mask=mask, other=0.0).to(CT)
        hp = h
        st = st_p + pid * SLOTS * HW
        for k in range(K):
            slot = st
            if SAVE:
                slot = st + k * HW
            tl.store(slot + offs, h, mask=mask)
            tl.debug_barrier()
            nxt = _update(
                hp,
                h,
                _nb(slot, y, x, H, W, 0, 1, BND, mask),
                _nb(slot, y, x, H, W, 0, -1, BND, mask),
                _nb(slot, y, x, H, W, 1, 0, BND, mask),
                _nb(slot, y, x, H, W, -1, 0, BND, mask),
                a0,
                a1,
                cE,
                cW,
                cN,
                cS,
                s,
                HAS_SRC,
                HAS_VEL,
            )
            tl.debug_barrier()
            hp = h
            h = nxt
        if not SAVE:
            tl.store(out_p + base + offs, h.to(out_p.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_plane(
        grad_p,
        init_p,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        st_p,
        gi_p,
        gsrc_p,
        gu_p,
        gv_p,
        gdx_p,
        gdy_p,
        H,
        W,
        K,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        NEED_INIT: tl.constexpr,
        NEED_SRC: tl.constexpr,
        MERGE_SRC: tl.constexpr,
        NEED_VEL: tl.constexpr,
        NEED_D: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """All gradients of one plane. ``st_p``: K + 4 slots per plane, h^0..h^{K-1} written by the forward
        recomputation (``_fwd_plane`` with SAVE, run first) and four for c_d mu."""
        CT: tl.constexpr = st_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        a0, a1, cE, cW, cN, cS, s = _coefs(
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_SRC,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        st = st_p + pid * (K + 4) * HW
        wE = st + K * HW
        wW = wE + HW
        wN = wW + HW
        wS = wN + HW
        p = tl.load(grad_p + base + offs, mask=mask, other=0.0).to(CT)  # mu^{k+1}
        q = p * 0.0  # mu^{k+2}
        gs = q
        ga0 = q
        ga1 = q
        gE = q
        gW = q
        gN = q
        gS = q
        for i in range(K):
            k = K - 1 - i
            slot = st + k * HW
            hk = tl.load(slot + offs, mask=mask, other=0.0)
            hm = tl.load(st + tl.maximum(k - 1, 0) * HW + offs, mask=mask, other=0.0)
            gs += p
            ga0 += p * hm
            ga1 += p * hk
            gE += p * _nb(slot, y, x, H, W, 0, 1, BND, mask)
            gW += p * _nb(slot, y, x, H, W, 0, -1, BND, mask)
            gN += p * _nb(slot, y, x, H, W, 1, 0, BND, mask)
            gS += p * _nb(slot, y, x, H, W, -1, 0, BND, mask)
            tl.store(wE + offs, cE * p, mask=mask)
            tl.store(wW + offs, cW * p, mask=mask)
            tl.store(wN + offs, cN * p, mask=mask)
            tl.store(wS + offs, cS * p, mask=mask)
            tl.debug_barrier()
            m = (
                q * a0
                + _nbT(wE, y, x, H, W, 0, 1, BND, mask)
                + _nbT(wW, y, x, H, W, 0, -1, BND, mask)
                + _nbT(wN, y, x, H, W, 1, 0, BND, mask)
                + _nbT(wS, y, x, H, W, -1, 0, BND, mask)
            )
            if HAS_VEL:
                m += a1 * p
            tl.debug_barrier()
            q = p
            p = m
        # p = mu^0, q = mu^1; H^{-1} = H^0 adds mu^{-1} = a0 mu^1
        g_src, gu, gv, gdiv, gDx, gDy = _chain(
            gs,
            ga0,
            ga1,
            gE,
            gW,
            gN,
            gS,
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_SRC,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        if NEED_INIT:
            gi = p + a0 * q
            if MERGE_SRC:
                gi += g_src
            tl.store(gi_p + base + offs, gi.to(gi_p.dtype.element_ty), mask=mask)
        if NEED_SRC:
            tl.store(gsrc_p + base + offs, g_src.to(gsrc_p.dtype.element_ty), mask=mask)
        if NEED_VEL:
            tl.store(wE + offs, gdiv, mask=mask)
            tl.debug_barrier()
            gu, gv = _finish_uv(
                gu, gv, wE, u_p + base, v_p + base, offs, y, x, H, W, mask, dx, dy, ium_x, ium_y, CT, BND, BOUND_V
            )
            tl.store(gu_p + base + offs, gu.to(gu_p.dtype.element_ty), mask=mask)
            tl.store(gv_p + base + offs, gv.to(gv_p.dtype.element_ty), mask=mask)
        if NEED_D:
            tl.store(gdx_p + base + offs, gDx.to(gdx_p.dtype.element_ty), mask=mask)
            tl.store(gdy_p + base + offs, gDy.to(gdy_p.dtype.element_ty), mask=mask)

    # ---------------------------------------------------------------------------- one launch per step
    @triton.jit
    def _fwd_step(
        hp_p,
        h_p,
        out_p,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        H,
        W,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """out = h^{k+1} from hp = h^{k-1} and h = h^k (planes of the compute type), one block of cells."""
        CT: tl.constexpr = h_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        a0, a1, cE, cW, cN, cS, s = _coefs(
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_SRC,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        hb = h_p + base
        nxt = _update(
            tl.load(hp_p + base + offs, mask=mask, other=0.0),
            tl.load(hb + offs, mask=mask, other=0.0),
            _nb(hb, y, x, H, W, 0, 1, BND, mask),
            _nb(hb, y, x, H, W, 0, -1, BND, mask),
            _nb(hb, y, x, H, W, 1, 0, BND, mask),
            _nb(hb, y, x, H, W, -1, 0, BND, mask),
            a0,
            a1,
            cE,
            cW,
            cN,
            cS,
            s,
            HAS_SRC,
            HAS_VEL,
        )
        tl.store(out_p + base + offs, nxt.to(out_p.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_step_acc(
        p_p,
        hk_p,
        hm_p,
        w_p,
        acc_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        H,
        W,
        NC,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One adjoint step, first half: accumulate the seven coefficient gradients with p = mu^{k+1},
        h^k and h^{k-1}, and write w_d = c_d p (four (N*C, H*W) planes) for the second half."""
        CT: tl.constexpr = p_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        iL, a0, cE, cW, cN, cS, u, v, tx, ty = _diag(
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
        )
        p = tl.load(p_p + base + offs, mask=mask, other=0.0)
        hb = hk_p + base
        plane = NC * HW
        acc = acc_p + base + offs
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p, mask=mask)
        acc += plane
        tl.store(
            acc, tl.load(acc, mask=mask, other=0.0) + p * tl.load(hm_p + base + offs, mask=mask, other=0.0), mask=mask
        )
        acc += plane
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p * tl.load(hb + offs, mask=mask, other=0.0), mask=mask)
        acc += plane
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p * _nb(hb, y, x, H, W, 0, 1, BND, mask), mask=mask)
        acc += plane
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p * _nb(hb, y, x, H, W, 0, -1, BND, mask), mask=mask)
        acc += plane
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p * _nb(hb, y, x, H, W, 1, 0, BND, mask), mask=mask)
        acc += plane
        tl.store(acc, tl.load(acc, mask=mask, other=0.0) + p * _nb(hb, y, x, H, W, -1, 0, BND, mask), mask=mask)
        w = w_p + base + offs
        tl.store(w, cE * p, mask=mask)
        tl.store(w + plane, cW * p, mask=mask)
        tl.store(w + 2 * plane, cN * p, mask=mask)
        tl.store(w + 3 * plane, cS * p, mask=mask)

    @triton.jit
    def _bwd_step_mu(
        p_p,
        q_p,
        w_p,
        out_p,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        H,
        W,
        NC,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One adjoint step, second half: mu^k = a1 p + a0 q + sum_d S_d^T w_d."""
        CT: tl.constexpr = p_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        a0, a1, cE, cW, cN, cS, s = _coefs(
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            False,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        plane = NC * HW
        w = w_p + base
        m = (
            tl.load(q_p + base + offs, mask=mask, other=0.0) * a0
            + _nbT(w, y, x, H, W, 0, 1, BND, mask)
            + _nbT(w + plane, y, x, H, W, 0, -1, BND, mask)
            + _nbT(w + 2 * plane, y, x, H, W, 1, 0, BND, mask)
            + _nbT(w + 3 * plane, y, x, H, W, -1, 0, BND, mask)
        )
        if HAS_VEL:
            m += a1 * tl.load(p_p + base + offs, mask=mask, other=0.0)
        tl.store(out_p + base + offs, m, mask=mask)

    @triton.jit
    def _bwd_step_chain(
        acc_p,
        p0_p,
        p1_p,
        gdiv_p,
        gu_tmp,
        gv_tmp,
        gi_p,
        gsrc_p,
        gdx_p,
        gdy_p,
        src_p,
        u_p,
        v_p,
        dx_p,
        dy_p,
        H,
        W,
        NC,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        HAS_SRC: tl.constexpr,
        HAS_VEL: tl.constexpr,
        VAR_D: tl.constexpr,
        BOUND_V: tl.constexpr,
        CLAMP_D: tl.constexpr,
        BND: tl.constexpr,
        NEED_INIT: tl.constexpr,
        NEED_SRC: tl.constexpr,
        MERGE_SRC: tl.constexpr,
        NEED_VEL: tl.constexpr,
        NEED_D: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """The accumulated coefficient gradients -> init, source, Dx, Dy gradients; g_div and the partial
        u, v gradients for ``_bwd_step_uv``."""
        CT: tl.constexpr = acc_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        plane = NC * HW
        acc = acc_p + base + offs
        gs = tl.load(acc, mask=mask, other=0.0)
        ga0 = tl.load(acc + plane, mask=mask, other=0.0)
        ga1 = tl.load(acc + 2 * plane, mask=mask, other=0.0)
        gE = tl.load(acc + 3 * plane, mask=mask, other=0.0)
        gW = tl.load(acc + 4 * plane, mask=mask, other=0.0)
        gN = tl.load(acc + 5 * plane, mask=mask, other=0.0)
        gS = tl.load(acc + 6 * plane, mask=mask, other=0.0)
        g_src, gu, gv, gdiv, gDx, gDy = _chain(
            gs,
            ga0,
            ga1,
            gE,
            gW,
            gN,
            gS,
            src_p + base,
            u_p + base,
            v_p + base,
            dx_p + base,
            dy_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dt,
            dx,
            dy,
            bxc,
            byc,
            ium_x,
            ium_y,
            dmax,
            CT,
            HAS_SRC,
            HAS_VEL,
            VAR_D,
            BOUND_V,
            CLAMP_D,
            BND,
        )
        if NEED_INIT:
            iL, a0, cE, cW, cN, cS, u, v, tx, ty = _diag(
                u_p + base,
                v_p + base,
                dx_p + base,
                dy_p + base,
                offs,
                mask,
                dt,
                dx,
                dy,
                bxc,
                byc,
                ium_x,
                ium_y,
                dmax,
                CT,
                HAS_VEL,
                VAR_D,
                BOUND_V,
                CLAMP_D,
            )
            gi = tl.load(p0_p + base + offs, mask=mask, other=0.0) + a0 * tl.load(
                p1_p + base + offs, mask=mask, other=0.0
            )
            if MERGE_SRC:
                gi += g_src
            tl.store(gi_p + base + offs, gi.to(gi_p.dtype.element_ty), mask=mask)
        if NEED_SRC:
            tl.store(gsrc_p + base + offs, g_src.to(gsrc_p.dtype.element_ty), mask=mask)
        if NEED_VEL:
            tl.store(gdiv_p + base + offs, gdiv, mask=mask)
            tl.store(gu_tmp + base + offs, gu, mask=mask)
            tl.store(gv_tmp + base + offs, gv, mask=mask)
        if NEED_D:
            tl.store(gdx_p + base + offs, gDx.to(gdx_p.dtype.element_ty), mask=mask)
            tl.store(gdy_p + base + offs, gDy.to(gdy_p.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_step_uv(
        gdiv_p,
        gu_tmp,
        gv_tmp,
        gu_p,
        gv_p,
        u_p,
        v_p,
        H,
        W,
        dt_hi,
        dt_lo,
        dx_hi,
        dx_lo,
        dy_hi,
        dy_lo,
        bx_hi,
        bx_lo,
        by_hi,
        by_lo,
        cr_hi,
        cr_lo,
        dm_hi,
        dm_lo,
        BOUND_V: tl.constexpr,
        BND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """g_u, g_v = (partial + the divergence's transpose applied to g_div) * the bound's derivative."""
        CT: tl.constexpr = gdiv_p.dtype.element_ty
        pid = tl.program_id(0).to(tl.int64)
        HW = H * W
        base = pid * HW
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs % W
        dt, dx, dy, bxc, byc, ium_x, ium_y, dmax = _scalars(
            dt_hi, dt_lo, dx_hi, dx_lo, dy_hi, dy_lo, bx_hi, bx_lo, by_hi, by_lo, cr_hi, cr_lo, dm_hi, dm_lo, CT
        )
        gu, gv = _finish_uv(
            tl.load(gu_tmp + base + offs, mask=mask, other=0.0),
            tl.load(gv_tmp + base + offs, mask=mask, other=0.0),
            gdiv_p + base,
            u_p + base,
            v_p + base,
            offs,
            y,
            x,
            H,
            W,
            mask,
            dx,
            dy,
            ium_x,
            ium_y,
            CT,
            BND,
            BOUND_V,
        )
        tl.store(gu_p + base + offs, gu.to(gu_p.dtype.element_ty), mask=mask)
        tl.store(gv_p + base + offs, gv.to(gv_p.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------ launchers
def _wrap(kernel):
    """The kernel as torch.compile sees it (``wrap_triton``: kept in the graph), or as is."""
    wrap = getattr(torch.library, "wrap_triton", None)
    return wrap(kernel) if wrap is not None else kernel


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _num_warps(block: int) -> int:
    return max(4, min(16, block // 256))


def _contig(t: Optional[Tensor], like: Tensor) -> Tensor:
    """``t`` as a contiguous tensor, or ``like`` as a never-read placeholder when absent."""
    return like if t is None else t.contiguous()


def _scalar_args(dx_const, dy_const, dt, dx, dy, courant, dmax):
    bx = dx_const * dt / dx**2
    by = dy_const * dt / dy**2
    out = []
    for value in (dt, dx, dy, bx, by, courant, dmax):
        out.extend(_split(float(value)))
    return out


def _flags(source, u, Dx, courant, dmax, boundary):
    var_d = Dx is not None
    return dict(
        HAS_SRC=source is not None,
        HAS_VEL=u is not None,
        VAR_D=var_d,
        BOUND_V=u is not None and courant > 0,
        CLAMP_D=var_d and dmax > 0,
        BND=int(boundary),
    )


def forward(
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
) -> Tensor:
    """H^K (see the module docstring for which kernel runs)."""
    N, C, H, W = init.shape
    x0 = init.contiguous()
    out = torch.empty_like(x0)
    if out.numel() == 0:
        return out
    ins = [_contig(t, x0) for t in (source, u, v, Dx, Dy)]
    sc = _scalar_args(dx_const, dy_const, dt, dx, dy, courant, dmax)
    flags = _flags(source, u, Dx, courant, dmax, boundary)
    ct = _compute_dtype(init.dtype)
    HW, NC = H * W, N * C
    if HW <= PLANE_MAX:
        block = triton.next_power_of_2(HW)
        scratch = torch.empty((NC, HW), dtype=ct, device=init.device)
        _wrap(_fwd_plane)[(NC,)](
            x0, *ins, out, scratch, H, W, K, 1, *sc, **flags, SAVE=False, BLOCK=block, num_warps=_num_warps(block)
        )
        return out
    states = _step_states(x0, ins, sc, flags, K, keep=False)
    out.view(NC, HW).copy_(states[K % 3])
    return out


def _step_states(x0: Tensor, ins: list, sc: list, flags: dict, K: int, keep: bool) -> Tensor:
    """h^0..h^K with one launch per step: (K + 1, N*C, H*W) when ``keep``, else 3 rotating slots
    (h^k in slot k % 3)."""
    N, C, H, W = x0.shape
    HW, NC = H * W, N * C
    ct = _compute_dtype(x0.dtype)
    states = torch.empty((K + 1 if keep else 3, NC, HW), dtype=ct, device=x0.device)
    states[0].copy_(x0.reshape(NC, HW))
    n = states.shape[0]
    grid = (NC, triton.cdiv(HW, STEP_BLOCK))
    for k in range(K):
        hp = states[max(k - 1, 0) % n]
        _wrap(_fwd_step)[grid](
            hp, states[k % n], states[(k + 1) % n], *ins, H, W, *sc, **flags, BLOCK=STEP_BLOCK, num_warps=4
        )
    return states


def backward(
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
) -> list[Optional[Tensor]]:
    """Gradients of (init, source, u, v, Dx, Dy), None where not needed (or absent). With
    ``source_is_init`` source's gradient is added into init's and comes back as None."""
    N, C, H, W = init.shape
    present = [t is not None for t in (init, source, u, v, Dx, Dy)]
    need = [bool(n) and p for n, p in zip(needs, present)]
    merge = bool(source_is_init) and need[0] and present[1]
    need_init, need_src = need[0], need[1] and not merge
    need_vel, need_d = need[2] or need[3], need[4] or need[5]
    x0 = init.contiguous()
    g = grad.contiguous()
    ins = [_contig(t, x0) for t in (source, u, v, Dx, Dy)]
    outs = [
        torch.empty_like(t) if ok else x0.new_empty(1)
        for t, ok in zip((x0, *ins), (need_init, need_src, need_vel, need_vel, need_d, need_d))
    ]
    need[1] = need_src
    if x0.numel() == 0 or not (need_init or need_src or need_vel or need_d):
        return [o if ok else None for o, ok in zip(outs, need)]
    sc = _scalar_args(dx_const, dy_const, dt, dx, dy, courant, dmax)
    flags = _flags(source, u, Dx, courant, dmax, boundary)
    wants = dict(NEED_INIT=need_init, NEED_SRC=need_src, MERGE_SRC=merge, NEED_VEL=need_vel, NEED_D=need_d)
    ct = _compute_dtype(init.dtype)
    HW, NC = H * W, N * C
    if HW <= PLANE_MAX:
        block = triton.next_power_of_2(HW)
        st = torch.empty((NC, K + 4, HW), dtype=ct, device=init.device)
        warps = _num_warps(block)
        if K > 0:
            _wrap(_fwd_plane)[(NC,)](
                x0, *ins, x0, st, H, W, K, K + 4, *sc, **flags, SAVE=True, BLOCK=block, num_warps=warps
            )
        _wrap(_bwd_plane)[(NC,)](g, x0, *ins, st, *outs, H, W, K, *sc, **flags, **wants, BLOCK=block, num_warps=warps)
    else:
        _backward_steps(g, x0, ins, outs, sc, flags, wants, K)
    return [o if ok else None for o, ok in zip(outs, need)]


def _backward_steps(g: Tensor, x0: Tensor, ins: list, outs: list, sc: list, flags: dict, wants: dict, K: int) -> None:
    N, C, H, W = x0.shape
    HW, NC = H * W, N * C
    ct = _compute_dtype(x0.dtype)
    states = _step_states(x0, ins, sc, flags, max(K - 1, 0), keep=True)  # h^0..h^{K-1}
    grid = (NC, triton.cdiv(HW, STEP_BLOCK))
    fl = {k: v for k, v in flags.items() if k != "HAS_SRC"}
    mu = torch.zeros((3, NC, HW), dtype=ct, device=x0.device)  # mu^k in slot k % 3
    mu[K % 3].copy_(g.reshape(NC, HW))
    acc = torch.zeros((7, NC, HW), dtype=ct, device=x0.device)
    w = torch.empty((4, NC, HW), dtype=ct, device=x0.device)
    for k in range(K - 1, -1, -1):
        p, q, out = mu[(k + 1) % 3], mu[(k + 2) % 3], mu[k % 3]
        _wrap(_bwd_step_acc)[grid](
            p, states[k], states[max(k - 1, 0)], w, acc, *ins[1:], H, W, NC, *sc, **fl, BLOCK=STEP_BLOCK, num_warps=4
        )
        _wrap(_bwd_step_mu)[grid](p, q, w, out, *ins, H, W, NC, *sc, **fl, BLOCK=STEP_BLOCK, num_warps=4)
    gdiv, gu_tmp, gv_tmp = w[0], w[1], w[2]
    _wrap(_bwd_step_chain)[grid](
        acc,
        mu[0],
        mu[1],
        gdiv,
        gu_tmp,
        gv_tmp,
        outs[0],
        outs[1],
        outs[4],
        outs[5],
        *ins,
        H,
        W,
        NC,
        *sc,
        **flags,
        **wants,
        BLOCK=STEP_BLOCK,
        num_warps=4,
    )
    if wants["NEED_VEL"]:
        _wrap(_bwd_step_uv)[grid](
            gdiv,
            gu_tmp,
            gv_tmp,
            outs[2],
            outs[3],
            ins[1],
            ins[2],
            H,
            W,
            *sc,
            BOUND_V=flags["BOUND_V"],
            BND=flags["BND"],
            BLOCK=STEP_BLOCK,
            num_warps=4,
        )


# ------------------------------------------------------------------------------------------ custom ops
# On CUDA, ``triton_op``: torch.compile sees the kernels (``wrap_triton``) and keeps them in its graph
# without a break; its fake (tracing) implementation is the function itself. Under the interpreter
# ``wrap_triton`` cannot trace the interpreted kernels, so the same functions become opaque custom ops with
# fake implementations (torch.compile still keeps them in one graph; that is what the CPU tests compile).
# The schema is the fused C op's, so the counting handle reads the arguments at the same positions.
def _register(name: str, fake):
    def deco(fn):
        triton_op = getattr(torch.library, "triton_op", None)
        if triton is not None and triton_op is not None and not interpreted():
            return triton_op(name, mutates_args=())(fn)
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fake)
        return op

    return deco


def _fake_forward(
    init, source, u, v, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax, source_is_init
):
    return torch.empty_like(init, memory_format=torch.contiguous_format)


def _fake_backward(
    grad, init, source, u, v, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax, needs, source_is_init
):
    ins = (init, source, u, v, Dx, Dy)
    present = [t is not None for t in ins]
    need = [bool(n) and p for n, p in zip(needs, present)]
    if bool(source_is_init) and need[0] and present[1]:
        need[1] = False
    vel, dif = need[2] or need[3], need[4] or need[5]
    made = [need[0], need[1], vel and need[2], vel and need[3], dif and need[4], dif and need[5]]
    return [
        torch.empty_like(t, memory_format=torch.contiguous_format) if m else init.new_empty(0)
        for t, m in zip(ins, made)
    ]


@_register("condense::advection_diffusion_triton", _fake_forward)
def triton_advection_diffusion(
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
    # source_is_init (the Global layer's default f(I) = I = H^0) only shapes the backward (one gradient)
    return forward(init, source, u, v, Dx, Dy, dx_const, dy_const, K, dt, dx, dy, boundary, courant, dmax)


@_register("condense::advection_diffusion_triton_backward", _fake_backward)
def _backward_op(
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
    grads = backward(
        grad,
        init,
        source,
        u,
        v,
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
        needs,
        source_is_init,
    )
    return [g if g is not None else init.new_empty(0) for g in grads]


def _autograd(ctx, grad):
    tensors = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:6]]
    merged = bool(ctx.source_is_init) and needs[0] and tensors[1] is not None
    grads = _backward_op(grad, *tensors, *ctx.scalars, needs, merged)
    return (
        *(
            g if (t is not None and n and not (i == 1 and merged)) else None
            for i, (g, t, n) in enumerate(zip(grads, tensors, needs))
        ),
        *([None] * (len(ctx.scalars) + 1)),
    )


triton_advection_diffusion.register_autograd(_autograd, setup_context=solver_setup_context)  # the C op's context
