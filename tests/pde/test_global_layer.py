"""The Global layer: Eq. 4 against a per-pixel reference, fused == eager, gradients, stability, config."""

import dataclasses
import itertools
import os
import warnings

import pytest
import torch
from torch import nn

from condense import ConfigError, GlobalConfig, GlobalLayer, advection_diffusion, count
from condense.pde import eager_macs, fused_available, native_status
from condense.pde._advection_diffusion import bounded_advection_diffusion

BOUNDARIES = ("periodic", "replicate", "zero")


def reference_eq4(init, source, u, v, Dx, Dy, K, dt, dx, dy, boundary):
    """Eq. 4 written pixel by pixel with Python loops (independent of the library's vectorised code)."""
    N, C, H, W = init.shape

    def get(a, n, c, y, x):
        if boundary == "periodic":
            return a[n, c, y % H, x % W]
        if boundary == "replicate":
            return a[n, c, min(max(y, 0), H - 1), min(max(x, 0), W - 1)]
        return a[n, c, y, x] if (0 <= y < H and 0 <= x < W) else 0.0

    def val(t, n, c, y, x):
        return float(t) if not torch.is_tensor(t) else float(t[n, c, y, x])

    prev = init.clone()
    cur = init.clone()
    for _ in range(K):
        nxt = torch.zeros_like(init)
        for n, c, y, x in itertools.product(range(N), range(C), range(H), range(W)):
            uu = 0.0 if u is None else val(u, n, c, y, x)
            vv = 0.0 if v is None else val(v, n, c, y, x)
            ux = 0.0 if u is None else (get(u, n, c, y, x + 1) - get(u, n, c, y, x - 1)) / (2 * dx)
            vy = 0.0 if v is None else (get(v, n, c, y + 1, x) - get(v, n, c, y - 1, x)) / (2 * dy)
            Ax, Ay = uu * dt / dx, vv * dt / dy
            Bx, By = val(Dx, n, c, y, x) * dt / dx**2, val(Dy, n, c, y, x) * dt / dy**2
            L, M = 1 + 2 * Bx + 2 * By, 1 - 2 * Bx - 2 * By
            f = 0.0 if source is None else val(source, n, c, y, x)
            rhs = (
                M * prev[n, c, y, x]
                - 2 * (ux + vy) * dt * cur[n, c, y, x]
                + 2 * dt * f
                + (-Ax + 2 * Bx) * get(cur, n, c, y, x + 1)
                + (Ax + 2 * Bx) * get(cur, n, c, y, x - 1)
                + (-Ay + 2 * By) * get(cur, n, c, y + 1, x)
                + (Ay + 2 * By) * get(cur, n, c, y - 1, x)
            )
            nxt[n, c, y, x] = rhs / L
        prev, cur = cur, nxt
    return cur


def fields(shape, *, source=True, velocity=True, var_d=True, dtype=torch.float64):
    x = torch.randn(shape, dtype=dtype)
    f = torch.randn(shape, dtype=dtype) if source else None
    u = 0.8 * torch.randn(shape, dtype=dtype) if velocity else None
    v = 0.8 * torch.randn(shape, dtype=dtype) if velocity else None
    Dx = torch.rand(shape, dtype=dtype) * 2 if var_d else 1.0
    Dy = torch.rand(shape, dtype=dtype) * 2 if var_d else 0.5
    return x, f, u, v, Dx, Dy


FUSED = fused_available(torch.zeros(1)) and fused_available(torch.zeros(1, dtype=torch.float64))
IMPLS = ["eager"] + (["fused"] if FUSED else [])
# Where there is no C compiler (or CONDENSE_NO_NATIVE is set) the kernel's tests skip; CI sets
# CONDENSE_REQUIRE_NATIVE=1, under which a missing kernel fails test_fused_kernel_is_available.
needs_kernel = pytest.mark.skipif(not FUSED, reason=f"{native_status()} (the eager path is tested)")


def test_fused_kernel_is_available():
    if os.environ.get("CONDENSE_REQUIRE_NATIVE"):
        assert FUSED, f"CONDENSE_REQUIRE_NATIVE is set but {native_status()}"
    elif not FUSED:
        pytest.skip(f"{native_status()} (set CONDENSE_REQUIRE_NATIVE=1 to make this a failure)")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_solver_matches_pixel_loop_reference(impl, boundary):
    x, f, u, v, Dx, Dy = fields((1, 2, 4, 5))
    got = advection_diffusion(x, f, u, v, Dx, Dy, K=3, dt=0.15, dx=1.3, dy=0.7, boundary=boundary, impl=impl)
    want = reference_eq4(x, f, u, v, Dx, Dy, 3, 0.15, 1.3, 0.7, boundary)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_solver_constant_diffusion_no_velocity_matches_reference(impl):
    x, f, u, v, Dx, Dy = fields((2, 1, 3, 4), velocity=False, var_d=False)
    got = advection_diffusion(x, f, None, None, 1.0, 0.5, K=4, impl=impl)
    torch.testing.assert_close(got, reference_eq4(x, f, None, None, 1.0, 0.5, 4, 0.2, 1.0, 1.0, "periodic"))


def test_axes_x_is_width_y_is_height():
    # A velocity along x only moves mass along the last axis: rows stay independent.
    x = torch.zeros(1, 1, 4, 8, dtype=torch.float64)
    x[0, 0, 1, 3] = 1.0
    u = torch.full_like(x, 1.0)
    out = advection_diffusion(x, None, u, torch.zeros_like(x), 0.0, 0.0, K=3, impl="eager")
    assert out[0, 0, 1].abs().sum() > 0.5
    assert out[0, 0, [0, 2, 3]].abs().max() < 1e-12


def test_k0_returns_init_and_zero_operator_is_identity():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    for impl in IMPLS:
        torch.testing.assert_close(advection_diffusion(x, None, None, None, 0.0, 0.0, K=0, impl=impl), x)
        # no velocity, no diffusion, no source: H^{k+1} = H^{k-1}, so H^K = H^0
        torch.testing.assert_close(advection_diffusion(x, None, None, None, 0.0, 0.0, K=7, impl=impl), x)


def test_constant_input_is_a_steady_state_of_pure_diffusion():
    x = torch.full((1, 2, 6, 6), 3.0, dtype=torch.float64)
    for impl in IMPLS:
        out = advection_diffusion(x, None, None, None, 2.0, 2.0, K=10, impl=impl)
        torch.testing.assert_close(out, x)


@needs_kernel
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("source,velocity,var_d", list(itertools.product([False, True], repeat=3)))
def test_fused_equals_eager(boundary, source, velocity, var_d):
    args = fields((2, 3, 6, 7), source=source, velocity=velocity, var_d=var_d, dtype=torch.float32)
    a = advection_diffusion(*args, K=5, boundary=boundary, impl="eager")
    b = advection_diffusion(*args, K=5, boundary=boundary, impl="fused")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a = bounded_advection_diffusion(
        *args, K=4, dt=0.2, dx=1.0, dy=1.0, boundary=boundary, courant=0.5, dmax=1.5, impl="eager"
    )
    b = bounded_advection_diffusion(
        *args, K=4, dt=0.2, dx=1.0, dy=1.0, boundary=boundary, courant=0.5, dmax=1.5, impl="fused"
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_velocity_bound_matches_eager_for_every_magnitude(dtype):
    """The kernel's vectorised bound (a refined reciprocal square root) against the exact expression, for
    velocities from 0 to 1e15 umax, outputs and velocity gradients (whose bound derivative comes from the
    bounded value); and outputs beyond where (u / umax)^2 overflows (u / inf = 0 on both paths)."""
    torch.manual_seed(0)
    shape = (1, 16, 9, 8)
    big = 1e30 if dtype == torch.float32 else 1e200
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for scales in ([0.0, 1e-6, 0.1, 1.0, 3.0, 30.0, 1e4, 1e15], [0.0, 1.0, 1e15, big]):
        mags = torch.tensor(scales, dtype=dtype)[torch.randint(0, len(scales), shape)]
        u = (torch.randn(shape, dtype=dtype).sign() * mags).requires_grad_()
        v = (torch.randn(shape, dtype=dtype) * mags.flip(-1)).requires_grad_()
        x = torch.randn(shape, dtype=dtype)
        outs, grads = [], []
        for impl in ("eager", "fused"):
            y = bounded_advection_diffusion(
                x, x, u, v, 1.0, 1.0, K=3, dt=0.2, dx=1.0, dy=1.0, boundary="periodic", courant=0.5, dmax=1.5, impl=impl
            )
            outs.append(y)
            grads.append(torch.autograd.grad(y.square().sum(), (u, v)))
        assert torch.isfinite(outs[1]).all()
        torch.testing.assert_close(outs[1], outs[0], **tol)
        if big not in scales:  # at overflow the fused backward sees b = 0 as u = 0 (see the notes)
            for g_fused, g_eager in zip(grads[1], grads[0]):
                torch.testing.assert_close(g_fused, g_eager, **tol)


def test_fused_accepts_strided_views():
    uv = torch.randn(2, 6, 5, 5)
    x = torch.randn(2, 3, 5, 5)
    u, v = uv[:, 0::2], uv[:, 1::2]
    a = advection_diffusion(x, x, u, v, 1.0, 1.0, impl="eager")
    b = advection_diffusion(x, x, u, v, 1.0, 1.0, impl="fused" if len(IMPLS) > 1 else "eager")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("bounded", [False, True])
def test_gradcheck(impl, boundary, bounded):
    x, f, u, v, Dx, Dy = fields((1, 2, 4, 5))
    ins = [t.requires_grad_() for t in (x, f, u, v, Dx, Dy)]

    def fn(*t):
        if bounded:
            return bounded_advection_diffusion(
                *t, K=3, dt=0.2, dx=1.0, dy=1.0, boundary=boundary, courant=0.5, dmax=1.5, impl=impl
            )
        return advection_diffusion(*t, K=3, boundary=boundary, impl=impl)

    assert torch.autograd.gradcheck(fn, ins)


@needs_kernel
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (1, 2, 1, 5), (1, 1, 4, 1), (1, 1, 2, 2), (2, 1, 3, 2)])
def test_fused_matches_eager_and_gradcheck_on_degenerate_planes(boundary, shape):
    # the fused kernel keeps planes with a one-element halo; planes one or two elements wide or tall are
    # where a halo fill (forward) or fold (adjoint) would go wrong
    x, f, u, v, Dx, Dy = fields(shape)
    ins = [t.requires_grad_() for t in (x, f, u, v, Dx, Dy)]

    def fn(impl):
        return lambda *t: bounded_advection_diffusion(
            *t, K=3, dt=0.2, dx=1.0, dy=1.0, boundary=boundary, courant=0.5, dmax=1.5, impl=impl
        )

    torch.testing.assert_close(fn("fused")(*ins), fn("eager")(*ins))
    assert torch.autograd.gradcheck(fn("fused"), ins)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_partial_inputs(impl):
    x, f, u, v, _, _ = fields((1, 2, 3, 4))
    x.requires_grad_()
    u.requires_grad_()  # v, f do not need grads; constant diffusion
    assert torch.autograd.gradcheck(lambda a, b: advection_diffusion(a, f, b, v, 1.0, 0.3, K=4, impl=impl), (x, u))


def test_solver_rejects_bad_arguments():
    x = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match="u and v"):
        advection_diffusion(x, None, x, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        advection_diffusion(x, torch.zeros(1, 1, 3, 4), None, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="boundary"):
        advection_diffusion(x, None, None, None, 1.0, 1.0, boundary="mirror")


# ------------------------------------------------------------------------------------------- layer
LAYER_OPTIONS = dict(
    velocity=["dwconv", "separable", "constant", "zero"],
    diffusion=["constant", "dwconv"],
    source=["identity", "none", "residual"],
    boundary=list(BOUNDARIES),
)


def _configs():
    keys = list(LAYER_OPTIONS)
    for values in itertools.product(*LAYER_OPTIONS.values()):
        yield dict(zip(keys, values))


class ShapeKeepingBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


@pytest.mark.parametrize("opts", list(_configs()), ids=lambda o: "-".join(o.values()))
def test_layer_every_option_runs_forward_backward_and_eager_matches_fused(opts):
    torch.manual_seed(1)
    layer = GlobalLayer(3, GlobalConfig(K=3, kernel_size=3, **opts))
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in layer.named_parameters()}
    for name, g in grads.items():
        if opts["velocity"] == "constant" and name == "velocity_const":
            assert g is not None
    if len(IMPLS) > 1:
        layer.eval()
        eager = GlobalLayer(3, GlobalConfig(K=3, kernel_size=3, impl="eager", **opts)).eval()
        eager.load_state_dict(layer.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(eager(x), layer(x), rtol=1e-4, atol=1e-5)


def test_layer_gradcheck_double():
    layer = GlobalLayer(2, GlobalConfig(K=2, diffusion="dwconv", norm="none")).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_init_block_is_the_initial_guess():
    block = ShapeKeepingBlock(3)
    layer = GlobalLayer(3, GlobalConfig(K=0, init="block", source="none"), init_block=block)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(layer(x), block(x))
    with pytest.raises(ConfigError, match="init_block"):
        GlobalLayer(3, GlobalConfig(init="block"))
    with pytest.raises(ConfigError, match="init='input'"):
        GlobalLayer(3, GlobalConfig(), init_block=block)


def test_residual_and_output_norm_act():
    layer = GlobalLayer(4, GlobalConfig(residual=True, out_norm="batch", out_act="relu"))
    out = layer(torch.randn(2, 4, 5, 5))
    assert (out >= 0).all()
    assert isinstance(layer.out_norm, nn.BatchNorm2d)


@pytest.mark.parametrize(
    "opts",
    [
        dict(diffusion_value=0.0, source="none"),
        dict(diffusion="dwconv"),
        dict(diffusion="dwconv", velocity="separable", source="residual"),
    ],
)
def test_zero_init_starts_as_the_identity_on_the_initial_guess(opts):
    block = ShapeKeepingBlock(2)
    layer = GlobalLayer(2, GlobalConfig(zero_init=True, init="block", **opts), init_block=block).eval()
    x = torch.randn(1, 2, 6, 6)
    # u = v = 0, D = 0, gated f = 0: the update is H^{k+1} = H^{k-1}, so the output is H^0 = block(x)
    torch.testing.assert_close(layer(x), block(x))
    # ... and it trains away from there: every field gets a gradient
    layer.train()
    layer(x).square().mean().backward()
    assert layer.velocity is None or all(p.grad is not None for p in layer.velocity.parameters())
    if layer.source_gate is not None:
        assert layer.source_gate.grad.abs().sum() > 0


def test_kernel_size_follows_the_replaced_block():
    layer = GlobalLayer(8, GlobalConfig(kernel_size=5))
    assert layer.velocity[0][0].kernel_size == (5, 5)


@pytest.mark.parametrize(
    "bad",
    [
        dict(K=-1),
        dict(K=1.5),
        dict(K=101),
        dict(dt=0.0),
        dict(dx=-1.0),
        dict(kernel_size=4),
        dict(kernel_size=0),
        dict(velocity="random"),
        dict(diffusion="learned"),
        dict(source="mlp"),
        dict(init="zeros"),
        dict(boundary="mirror"),
        dict(norm="layer"),
        dict(act="mish2"),
        dict(max_courant=0.0),
        dict(max_courant=2.0),
        dict(diffusion_value=-1.0),
        dict(residual="yes"),
        dict(impl="cuda"),
    ],
)
def test_config_is_checked_on_creation(bad):
    with pytest.raises(ConfigError) as err:
        GlobalConfig(**bad)
    assert list(bad)[0] in str(err.value)


def test_config_is_frozen_and_round_trips():
    cfg = GlobalConfig(K=7, velocity="separable", boundary="zero")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.K = 3
    assert GlobalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown option"):
        GlobalConfig.from_dict({"K": 3, "steps": 2})


def test_stays_finite_for_random_weights_and_inputs():
    """Property test: 2,000 random layers, weights and inputs (scales 1e-3 .. 1e6); no NaN or Inf."""
    gen = torch.Generator().manual_seed(1234)
    choices = {k: v for k, v in LAYER_OPTIONS.items()}
    bad = []
    for trial in range(2000):
        pick = {k: v[int(torch.randint(len(v), (1,), generator=gen))] for k, v in choices.items()}
        K = int(torch.randint(1, 21, (1,), generator=gen))
        C = int(torch.randint(1, 4, (1,), generator=gen))
        H, W = (int(t) for t in torch.randint(2, 9, (2,), generator=gen))
        cfg = GlobalConfig(
            K=K,
            norm="none",
            dt=float(torch.empty(1).uniform_(0.05, 1.0, generator=gen)),
            diffusion_value=float(torch.empty(1).uniform_(0, 50, generator=gen)),
            **pick,
        )
        layer = GlobalLayer(C, cfg)
        w_scale = 10 ** float(torch.empty(1).uniform_(-2, 4, generator=gen))
        x_scale = 10 ** float(torch.empty(1).uniform_(-3, 6, generator=gen))
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * w_scale)
            x = torch.randn(2, C, H, W, generator=gen) * x_scale
            out = layer(x)
        if not torch.isfinite(out).all():
            bad.append((trial, pick, K, w_scale, x_scale))
    assert not bad, f"{len(bad)} non-finite outputs, e.g. {bad[:3]}"


def test_unbounded_velocity_would_blow_up_so_the_bound_matters():
    # The same strong advection without the Courant bound diverges; with it the output stays moderate.
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    u = torch.full_like(x, 50.0) * torch.sign(torch.randn_like(x))
    free = advection_diffusion(x, None, u, u, 0.0, 0.0, K=20, impl="eager")
    bounded = bounded_advection_diffusion(
        x, None, u, u, 0.0, 0.0, K=20, dt=0.2, dx=1.0, dy=1.0, boundary="periodic", courant=0.5, dmax=10.0, impl="eager"
    )
    assert free.abs().max() > 1e6 * bounded.abs().max()


# ------------------------------------------------------------------------------------------- counting
def test_macs_grow_linearly_with_K():
    counts = [count(GlobalLayer(8, GlobalConfig(K=K)), input_size=(8, 16, 16)).attrs["macs"] for K in range(1, 6)]
    steps = {b - a for a, b in zip(counts, counts[1:])}
    assert len(steps) == 1
    # per step: a0*H^{k-1}, + s, a1*H^k and four neighbours: 7 MACs per element (README convention)
    assert steps.pop() == 7 * 8 * 16 * 16


@needs_kernel
@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(diffusion="dwconv"),
        dict(velocity="zero", source="none"),
        dict(velocity="constant", diffusion="dwconv", source="residual"),
    ],
)
def test_fused_and_eager_count_the_same_and_match_eager_macs(opts):
    x_size = (4, 8, 9)
    fused = count(GlobalLayer(4, GlobalConfig(K=3, **opts)), input_size=x_size)
    eager = count(GlobalLayer(4, GlobalConfig(K=3, impl="eager", **opts)), input_size=x_size)
    assert fused.attrs["macs"] == eager.attrs["macs"]
    lo = count(GlobalLayer(4, GlobalConfig(K=0, **opts)), input_size=x_size).attrs["macs"]
    vel = opts.get("velocity", "dwconv") != "zero"
    src = opts.get("source", "identity") != "none"
    var_d = opts.get("diffusion") == "dwconv"
    per_step = eager_macs(4 * 8 * 9, 1, source=src, velocity=vel, variable_diffusion=var_d) - eager_macs(
        4 * 8 * 9, 0, source=src, velocity=vel, variable_diffusion=var_d
    )
    assert fused.attrs["macs"] - lo == 3 * per_step


# --- inference: the velocity convolutions inside the kernel --------------------------------------------


def _trained_bn(layer: GlobalLayer, shape) -> GlobalLayer:
    """Give the BatchNorms non-trivial statistics and affine weights, then switch to eval."""
    layer.train()
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for _ in range(3):
            layer(3 * torch.randn(*shape, dtype=next(layer.parameters()).dtype))
    return layer.eval()


@needs_kernel
@pytest.mark.parametrize(
    "opts,shape",
    [
        (dict(K=5), (2, 6, 9, 7)),
        (dict(K=3, kernel_size=5, boundary="zero"), (1, 5, 6, 11)),
        (dict(K=4, diffusion="dwconv", boundary="replicate", source="none"), (2, 4, 8, 8)),
        (dict(K=2, kernel_size=7, residual=True), (1, 3, 1, 9)),  # a single row: padding everywhere
        (dict(K=1, kernel_size=3, norm="none"), (1, 3, 5, 1)),
    ],
)
def test_inference_path_fuses_the_velocity_convolutions_exactly(opts, shape, monkeypatch):
    import condense.pde._advection_diffusion as ad
    import condense.pde._global_layer as gl

    torch.manual_seed(0)
    layer = _trained_bn(GlobalLayer(shape[1], GlobalConfig(**opts)).double(), shape)
    x = torch.randn(*shape, dtype=torch.float64)
    calls = []
    real, direct = ad.advection_diffusion_dwvel, ad._dwvel_direct
    monkeypatch.setattr(gl, "advection_diffusion_dwvel", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(gl, "_dwvel_direct", lambda *a, **k: calls.append(1) or direct(*a, **k))
    with torch.no_grad():
        fused = layer(x)
    assert calls == [1]  # one kernel call: the direct one (common configurations) or the op's
    separate = layer(x)  # autograd on: the convolutions run as modules, then the solver
    assert len(calls) == 1
    torch.testing.assert_close(fused, separate.detach(), rtol=1e-12, atol=1e-12)
    # counted the same, whichever path runs (count traces under no_grad, so it sees the fused op)
    eager = GlobalLayer(shape[1], GlobalConfig(**{**opts, "impl": "eager"}))
    assert count(layer, shape[1:]).attrs["macs"] == count(eager, shape[1:]).attrs["macs"]


@needs_kernel
@pytest.mark.parametrize(
    "opts,shape", [(dict(K=5), (2, 16, 8, 8)), (dict(K=3, kernel_size=5, boundary="zero"), (1, 5, 6, 11))]
)
def test_traced_inference_folds_the_norms_in_one_op(opts, shape):
    """Traced (counted, compiled) inference holds one op per layer that folds the velocity BatchNorms itself
    (``advection_diffusion_dwvel_bn``): the same values as the direct call, and counted as the eager path
    (the eager fold's elementwise ops included)."""
    layer = _trained_bn(GlobalLayer(shape[1], GlobalConfig(**opts)).double(), shape)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        direct = layer(x)
        traced = torch.jit.trace(layer, (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "condense::advection_diffusion_dwvel_bn" in graph and "batch_norm" not in graph
    with torch.no_grad():
        torch.testing.assert_close(traced(x), direct, rtol=1e-12, atol=1e-12)
    eager = GlobalLayer(shape[1], GlobalConfig(**{**opts, "impl": "eager"}))
    assert count(layer, shape[1:]).attrs["macs"] == count(eager, shape[1:]).attrs["macs"]


def test_inference_path_is_not_used_when_training_or_with_autograd(monkeypatch):
    import condense.pde._global_layer as gl

    monkeypatch.setattr(gl, "advection_diffusion_dwvel", lambda *a, **k: pytest.fail("fused inference path used"))
    monkeypatch.setattr(gl, "_dwvel_direct", lambda *a, **k: pytest.fail("direct inference path used"))
    layer = GlobalLayer(4, GlobalConfig(K=2))
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    layer.train()(x).sum().backward()
    with torch.no_grad():
        layer.train()(x)  # training mode: batch statistics, not foldable
    layer.eval()(x).sum().backward()  # eval but autograd on
    with torch.no_grad():
        GlobalLayer(4, GlobalConfig(K=2, impl="eager")).eval()(x)
        GlobalLayer(4, GlobalConfig(K=2, velocity="separable")).eval()(x)


@pytest.mark.parametrize("grad", [False, True])
def test_compiles_without_graph_breaks_even_before_the_first_eager_call(grad, monkeypatch):
    """torch.compile must see the Global layer as one graph (custom ops inside), also when the kernel
    library was not loaded yet in this process (loading it takes a lock, which dynamo cannot trace)."""
    import torch._dynamo

    from condense.pde import _native

    monkeypatch.setattr(_native, "_LIBS", {})  # as in a fresh process
    torch._dynamo.reset()
    layer = GlobalLayer(4, GlobalConfig(K=2)).train(grad)
    x = torch.randn(1, 4, 6, 6)
    with torch.set_grad_enabled(grad):
        report = torch._dynamo.explain(layer)(x)
    assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons


# --- training: the velocity / diffusion depthwise convolutions as one fused op ------------------------


@needs_kernel
@pytest.mark.parametrize("k,shape", [(3, (2, 3, 6, 5)), (5, (1, 2, 1, 7)), (7, (1, 2, 4, 3)), (1, (2, 2, 3, 3))])
def test_dwconv_pair_equals_conv2d_forward_and_backward(k, shape):
    from condense.pde._dwconv import dwconv_pair, fusable_pair

    torch.manual_seed(0)
    a, b = (nn.Conv2d(shape[1], shape[1], k, padding=k // 2, groups=shape[1], bias=False).double() for _ in "ab")
    assert fusable_pair(a, b)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ra, rb = dwconv_pair(x, a, b)
    torch.testing.assert_close(ra, a(x))
    torch.testing.assert_close(rb, b(x))
    # gradients of a loss that weights the two outputs differently, against nn.Conv2d's
    gy = torch.randn(shape, dtype=torch.float64)
    grads = torch.autograd.grad((ra * gy).sum() + (rb * gy.flip(-1)).sum(), (x, a.weight, b.weight))
    want = torch.autograd.grad((a(x) * gy).sum() + (b(x) * gy.flip(-1)).sum(), (x, a.weight, b.weight))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradcheck(
        lambda t, wa, wb: torch.cat(torch.ops.condense.dwconv_pair(t, wa, wb)), (x, a.weight, b.weight)
    )
    # a strided view (every other channel) is read as it is
    wide = torch.randn(shape[0], 2 * shape[1], *shape[2:], dtype=torch.float64)
    torch.testing.assert_close(dwconv_pair(wide[:, ::2], a, b)[0], a(wide[:, ::2]))


@needs_kernel
@pytest.mark.parametrize("k,shape", [(3, (2, 20, 6, 5)), (5, (1, 3, 7, 4)), (3, (1, 9, 100, 90))])
def test_dwconv_pair_on_channels_last_maps(k, shape):
    """Channels-last maps in blocks of channel lanes (a partial last block; fewer channels than a full
    block; planes too large for lanes, read one channel at a time), outputs in the input's layout."""
    from condense.pde._dwconv import dwconv_pair

    torch.manual_seed(0)
    a, b = (nn.Conv2d(shape[1], shape[1], k, padding=k // 2, groups=shape[1], bias=False).double() for _ in "ab")
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    ra, rb = dwconv_pair(x, a, b)
    assert ra.is_contiguous(memory_format=torch.channels_last) and rb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ra, a(x))
    torch.testing.assert_close(rb, b(x))
    gy = torch.randn(shape, dtype=torch.float64)  # NCHW incoming gradient: mixed layouts
    grads = torch.autograd.grad((ra * gy).sum() + (rb * gy.flip(-1)).sum(), (x, a.weight, b.weight))
    want = torch.autograd.grad((a(x) * gy).sum() + (b(x) * gy.flip(-1)).sum(), (x, a.weight, b.weight))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)
    if x.numel() < 1000:
        assert torch.autograd.gradcheck(
            lambda t, wa, wb: torch.cat(torch.ops.condense.dwconv_pair(t, wa, wb)), (x, a.weight, b.weight)
        )


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "k,shape",
    [
        (3, (2, 40, 6, 5)),  # a channel tail (40 = 2 x 16 + 8 floats, 5 x 8 doubles)
        (5, (3, 16, 3, 2)),  # a map narrower than the kernel: every pixel is an edge; 3 samples on 2 threads
        (7, (1, 24, 9, 8)),
        (1, (2, 32, 4, 4)),
        (3, (1, 64, 1, 11)),  # a single row
    ],
)
def test_dwconv_pair_all_channels_last_is_computed_in_place(k, shape, dtype):
    """Maps, incoming gradients and outputs all channels-last (as in compiled training): the pair is computed
    pixel-major in one sweep, against nn.Conv2d in float64."""
    from condense.pde._dwconv import dwconv_pair

    torch.manual_seed(0)
    a, b = (nn.Conv2d(shape[1], shape[1], k, padding=k // 2, groups=shape[1], bias=False).to(dtype) for _ in "ab")
    cl = torch.channels_last
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=cl).requires_grad_()
    g1, g2 = (torch.randn(shape, dtype=dtype).contiguous(memory_format=cl) for _ in "12")
    ra, rb = dwconv_pair(x, a, b)
    gx, gwa, gwb = torch.autograd.grad((ra, rb), (x, a.weight, b.weight), (g1, g2))
    assert gx.is_contiguous(memory_format=cl)
    x64 = x.detach().double().requires_grad_()
    a64, b64 = a.double(), b.double()
    wa, wb = a64(x64), b64(x64)
    want = torch.autograd.grad((wa, wb), (x64, a64.weight, b64.weight), (g1.double(), g2.double()))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, ref in zip((ra, rb, gx, gwa, gwb), (wa, wb, *want)):
        torch.testing.assert_close(got.double(), ref.detach(), **tol)


def test_fusable_pair_rejects_what_the_op_does_not_compute():
    from condense.pde._dwconv import fusable_pair

    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    assert not fusable_pair(dw, nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=True))
    assert not fusable_pair(dw, nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False))
    assert not fusable_pair(dw, nn.Conv2d(4, 4, 3, padding=1, stride=2, groups=4, bias=False))
    assert not fusable_pair(dw, nn.Conv2d(4, 4, 5, padding=2, groups=4, bias=False))


@needs_kernel
@pytest.mark.parametrize("opts", [dict(), dict(diffusion="dwconv", boundary="zero", kernel_size=5)])
def test_training_path_equals_eager_in_output_and_gradients(opts):
    torch.manual_seed(2)
    fused = GlobalLayer(4, GlobalConfig(K=3, **opts)).double().train()
    eager = GlobalLayer(4, GlobalConfig(K=3, impl="eager", **opts)).double().train()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    outs = []
    for layer in (fused, eager):
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.square().mean().backward()
        outs.append((out, xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for name, g in outs[1][2].items():
        torch.testing.assert_close(outs[0][2][name], g, msg=name)


# --- layouts: the kernels read and write channels-last and strided maps in place ------------------------


@needs_kernel
# lanes with a partial block; one lane; staged groups of 16 channels (planes too large for 16 lanes), the
# last group partial; whole samples staged block-major (several samples per thread, no partial block)
@pytest.mark.parametrize("shape", [(8, 18, 5, 6), (1, 3, 70, 66), (2, 40, 64, 62), (8, 32, 10, 12)])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_channels_last_maps_are_solved_in_place_and_match(shape, boundary):
    x, f, u, v, Dx, Dy = fields(shape, dtype=torch.float32)
    # the source stays NCHW: inputs of mixed layouts are read each by its own strides
    cl = [t if t is f else t.contiguous(memory_format=torch.channels_last) for t in (x, f, u, v, Dx, Dy)]
    kw = dict(K=3, dt=0.2, dx=1.0, dy=1.0, boundary=boundary, courant=0.5, dmax=1.5)
    want = bounded_advection_diffusion(x, f, u, v, Dx, Dy, impl="eager", **kw)
    got = bounded_advection_diffusion(*cl, impl="fused", **kw)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # gradients, with the incoming gradient in yet another layout (NCHW), against the eager path
    ins = [t.clone().requires_grad_() for t in cl]
    ref = [t.clone().requires_grad_() for t in (x, f, u, v, Dx, Dy)]
    gy = torch.randn(shape)
    bounded_advection_diffusion(*ins, impl="fused", **kw).backward(gy)
    bounded_advection_diffusion(*ref, impl="eager", **kw).backward(gy)
    for a, b in zip(ins, ref):
        assert a.grad.is_contiguous(memory_format=torch.channels_last) or a.grad.is_contiguous()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_inference_keeps_folded_weights_until_a_weight_or_statistic_changes():
    """Kept between calls, refolded after any change: in place, of the storage, or by a train-mode forward
    (which moves the running statistics without bumping their version counters, only
    ``num_batches_tracked``'s)."""
    from condense.pde._base import fold_batchnorm

    shape = (2, 8, 6, 7)
    layer = _trained_bn(GlobalLayer(8, GlobalConfig(K=3)).double(), shape)
    x = torch.randn(*shape, dtype=torch.float64)
    net = layer.velocity[0]
    with torch.no_grad():
        before = layer(x)
        assert net.folded()[0] is net.folded()[0]  # kept between calls
        net[1].running_var.mul_(3.0)  # an in-place change of a statistic (load_state_dict does the same)
        changed = layer(x)
        torch.testing.assert_close(net.folded()[0], fold_batchnorm(net[0], net[1])[0])
        net[0].weight.add_(0.5)
        changed_w = layer(x)
        layer.train()(3 * torch.randn(*shape, dtype=torch.float64))  # moves the statistics, versions unbumped
        moved = layer.eval()(x)
    assert not torch.allclose(before, changed) and not torch.allclose(changed, changed_w)
    assert not torch.allclose(changed_w, moved)
    with torch.enable_grad():  # with autograd nothing is kept: the reference for the kept path
        torch.testing.assert_close(layer(x).detach(), moved)
    layer.float()  # new storage and dtype: refolded
    with torch.no_grad():
        got = layer(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, moved.float(), rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
# lanes / planes; staged groups; whole samples staged
@pytest.mark.parametrize("shape", [(2, 20, 5, 6), (1, 40, 70, 66), (8, 32, 9, 7)])
@pytest.mark.parametrize("var_d,K", [(False, 3), (True, 3), (False, 0)])
def test_source_that_is_the_initial_state_is_read_once_and_gets_one_summed_gradient(layout, shape, var_d, K):
    # the Global layer's default f(I) = I = H^0: one tensor passed twice; the kernel reads it once and
    # writes init's gradient as the sum of both (source gets none from the op, autograd adds nothing)
    x, _, u, v, Dx, Dy = fields(shape, var_d=var_d, dtype=torch.float32)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    kw = dict(K=K, dt=0.2, dx=1.0, dy=1.0, boundary="periodic", courant=0.5, dmax=1.5)
    gy = torch.randn(shape)
    grads = {}
    for impl in ("eager", "fused"):
        h = x.clone(memory_format=fmt).requires_grad_()
        uu, vv = (t.clone(memory_format=fmt).requires_grad_() for t in (u, v))
        out = bounded_advection_diffusion(h, h, uu, vv, Dx, Dy, impl=impl, **kw)
        out.backward(gy)
        # with K = 0 the eager path leaves the velocities out of the graph (no gradient); the kernel gives 0
        grads[impl] = (out.detach(), *(t.grad if t.grad is not None else torch.zeros_like(t) for t in (h, uu, vv)))
    for got, want in zip(grads["fused"], grads["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the same values as with a separate copy of the source (both gradients summed by hand)
    h, f = x.clone().requires_grad_(), x.clone().requires_grad_()
    bounded_advection_diffusion(h, f, u, v, Dx, Dy, impl="fused", **kw).backward(gy)
    torch.testing.assert_close(grads["fused"][1], h.grad + f.grad, rtol=1e-4, atol=1e-5)


@needs_kernel
# lanes; staged groups of 8 doubles; whole samples staged
@pytest.mark.parametrize("shape", [(2, 20, 6, 7), (1, 20, 96, 90), (8, 16, 6, 7)])
def test_inference_path_on_channels_last_maps(shape):
    layer = _trained_bn(GlobalLayer(shape[1], GlobalConfig(K=4, kernel_size=5)).double(), shape)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        want = layer(x)
        got = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want)


@needs_kernel
# small NCHW planes are solved in channel lanes (16 floats / 8 doubles, narrower to split a batch-1 map): full
# blocks, a partial block of 1 lane (17, 33 channels), rows shorter than a vector (8x8, 5x7, 3x3)
@pytest.mark.parametrize(
    "shape", [(1, 16, 32, 32), (2, 17, 8, 8), (3, 33, 5, 7), (1, 64, 8, 8), (2, 32, 16, 16), (1, 24, 3, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_nchw_planes_in_lanes_match_eager_in_inference_and_training(shape, dtype):
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for boundary in BOUNDARIES:
        torch.manual_seed(0)
        fused = _trained_bn(GlobalLayer(shape[1], GlobalConfig(K=4, boundary=boundary)).to(dtype), shape)
        eager = GlobalLayer(shape[1], GlobalConfig(K=4, boundary=boundary, impl="eager")).to(dtype).eval()
        eager.load_state_dict(fused.state_dict())
        x = 2 * torch.randn(*shape, dtype=dtype)
        with torch.no_grad():  # the direct inference call (velocity convolutions inside the kernel)
            torch.testing.assert_close(fused(x), eager(x), **tol)
        grads = []
        for layer in (fused.train(), eager.train()):  # the training path: forward and backward kernels
            xi = x.clone().requires_grad_()
            out = layer(xi)
            out.square().mean().backward()
            grads.append((out.detach(), xi.grad, [p.grad for p in layer.parameters()]))
        torch.testing.assert_close(grads[0][0], grads[1][0], **tol)
        torch.testing.assert_close(grads[0][1], grads[1][1], **tol)
        for a, b in zip(grads[0][2], grads[1][2]):
            torch.testing.assert_close(a, b, **tol)


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 16, 32, 32), (4, 64, 8, 8), (2, 20, 9, 7)])
def test_legacy_inference_path_still_runs_and_agrees(shape):
    """``legacy_path`` (kept for side-by-side benchmarks) runs the pre-issue-25 inference: the custom op,
    NCHW planes one at a time, the generic coefficient passes. Same values up to rounding."""
    import condense.pde._global_layer as gl
    from condense.pde._native import legacy, legacy_path

    layer = _trained_bn(GlobalLayer(shape[1], GlobalConfig(K=5)), shape)
    x = torch.randn(*shape)
    with torch.no_grad():
        new = layer(x)
        with legacy_path():
            assert legacy()
            direct = gl._dwvel_direct
            gl._dwvel_direct = lambda *a, **k: pytest.fail("the direct call ran on the legacy path")
            try:
                old = layer(x)
            finally:
                gl._dwvel_direct = direct
        assert not legacy()
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_kernel_cache_prunes_stale_builds_only(tmp_path):
    import os
    import time

    from condense.pde import _native

    old = time.time() - (_native.STALE_DAYS + 1) * 86400
    stale, recent, other = (
        tmp_path / n for n in ("advection_diffusion_float_aaaa.so", "advection_diffusion_double_bbbb.so", "notes.txt")
    )
    for f in (stale, recent, other):
        f.write_bytes(b"x")
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    new = tmp_path / "advection_diffusion_float_cccc.so"
    _native._prune(new)
    assert not stale.exists() and recent.exists() and other.exists()


def test_kernel_build_key_covers_compiler_version_cpu_flags_and_source(tmp_path, monkeypatch):
    from condense.pde import _native

    monkeypatch.setattr(_native, "_run_text", lambda cmd: "cc 1.0")
    monkeypatch.setattr(_native, "_cpu_tag", lambda: "model name: X\nflags: sse avx2")
    base = _native.build_key("float", "/usr/bin/cc")
    assert base == _native.build_key("float", "/usr/bin/cc")
    assert base != _native.build_key("double", "/usr/bin/cc")
    assert base != _native.build_key("float", "/opt/bin/cc")  # another compiler at another path
    monkeypatch.setattr(_native, "_run_text", lambda cmd: "cc 2.0")  # the same path, upgraded
    assert base != _native.build_key("float", "/usr/bin/cc")
    monkeypatch.setattr(_native, "_run_text", lambda cmd: "cc 1.0")
    monkeypatch.setattr(_native, "_cpu_tag", lambda: "model name: X\nflags: sse avx2 avx512f")  # same name
    assert base != _native.build_key("float", "/usr/bin/cc")
    monkeypatch.setattr(_native, "_cpu_tag", lambda: "model name: X\nflags: sse avx2")
    src = tmp_path / "k.c"
    src.write_bytes(_native._SRC.read_bytes() + b"\n")
    monkeypatch.setattr(_native, "_SRC", src)
    assert base != _native.build_key("float", "/usr/bin/cc")


def test_cpu_tag_has_the_whole_flags_line():
    from condense.pde import _native

    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith(("flags", "Features"))), None)
    except OSError:
        flags = None
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags line here")
    assert " ".join(flags.partition(":")[2].split()) in _native._cpu_tag()


def _fake_compiler(tmp_path, body: str):
    """An executable 'compiler': a Python script running ``body`` with ``args`` (its arguments)."""
    import sys
    import textwrap

    cc = tmp_path / "fakecc"
    cc.write_text(f"#!{sys.executable}\nimport os, sys, time\nargs = sys.argv[1:]\n{textwrap.dedent(body)}\n")
    cc.chmod(0o755)
    return cc


def test_a_missing_kernel_is_warned_once_with_the_reason(tmp_path, monkeypatch):
    from condense.pde import _native

    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONDENSE_NO_NATIVE", raising=False)
    monkeypatch.setenv("CC", str(_fake_compiler(tmp_path, 'sys.exit("fakecc: error: broken")')))
    monkeypatch.setattr(_native, "_LIBS", {})
    monkeypatch.setattr(_native, "_WARNED", [])
    with pytest.warns(RuntimeWarning, match=r"fused C kernel is unavailable \(compiling .* failed: fakecc: error"):
        assert _native.library(torch.float32) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.library(torch.float64) is None  # no second warning
    assert "fakecc: error: broken" in _native.status(torch.float64)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(_native, "_LIBS", {})
    assert _native.library(torch.float32) is None and "is not an executable" in _native.status()


def test_the_compiler_call_has_a_timeout(tmp_path, monkeypatch):
    from condense.pde import _native

    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(_fake_compiler(tmp_path, 'if "--version" not in args: time.sleep(5)')))
    monkeypatch.setattr(_native, "COMPILE_TIMEOUT_S", 0.2)
    with pytest.raises(RuntimeError, match="took over 0.2 s"):
        _native._compile("float")


@pytest.mark.slow
def test_the_kernel_builds_without_openmp(tmp_path, monkeypatch):
    """A compiler that rejects -fopenmp (Apple clang) still gets a working kernel, from the plain flag sets."""
    import shutil

    from condense.pde import _native

    real_cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if real_cc is None or os.environ.get("CONDENSE_NO_NATIVE"):
        pytest.skip("no C compiler here" if real_cc is None else "CONDENSE_NO_NATIVE is set")
    cc = _fake_compiler(
        tmp_path,
        f"""
        if "-fopenmp" in args:
            sys.exit("clang: error: unsupported option '-fopenmp'")
        os.execv({real_cc!r}, [{real_cc!r}, *args])""",
    )
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(_native, "_LIBS", {})
    lib = _native.library(torch.float64)
    assert lib is not None, _native.status(torch.float64)
    x, f, u, v, Dx, Dy = fields((1, 2, 5, 6))
    want = advection_diffusion(x, f, u, v, Dx, Dy, K=3, impl="eager")
    monkeypatch.setattr(_native, "_LIBS", {torch.float64: lib})
    torch.testing.assert_close(advection_diffusion(x, f, u, v, Dx, Dy, K=3, impl="fused"), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_with_another_dtype_says_what_is_wrong(dtype):
    x = torch.randn(1, 2, 4, 4).to(dtype)
    with pytest.raises(
        ConfigError, match=f"impl='fused' cannot run {str(dtype)[6:]} tensors on cpu.*float32 and float64"
    ):
        advection_diffusion(x, x, None, None, 1.0, 1.0, impl="fused")
    layer = GlobalLayer(2, GlobalConfig(K=2, impl="fused")).to(dtype)
    with pytest.raises(ConfigError, match=str(dtype)[6:]):
        layer(x)
    assert advection_diffusion(x, x, None, None, 1.0, 1.0, impl="auto").dtype == dtype  # auto: eager
