"""Reaction-diffusion layers: operators against dense matrices built by hand, plus the layer contract."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from condense._errors import ConfigError
from condense.pde._reaction_diffusion import (
    CirculantRD,
    CirculantRDConfig,
    ExplicitRD,
    ExplicitRDConfig,
    ImplicitRD,
    ImplicitRDConfig,
    LinearMix,
    LinearMixConfig,
    circulant_normal_op,
    circulant_op,
    circulant_op_transpose,
    depthwise_op,
    depthwise_op_transpose,
    implicit_depthwise_solve,
    linear_mix_op,
    linear_mix_op_transpose,
    pointwise_op,
    pointwise_op_transpose,
)

C, H, W = 2, 5, 6
N = C * H * W
D = torch.float64
LAYERS = [
    (LinearMix, LinearMixConfig),
    (ExplicitRD, ExplicitRDConfig),
    (ImplicitRD, ImplicitRDConfig),
    (CirculantRD, CirculantRDConfig),
]
LAYER_IDS = [cfg.name for _, cfg in LAYERS]


# --- dense references ----------------------------------------------------------------------------------
def dense(op, c=C, h=H, w=W) -> torch.Tensor:
    """Matrix of a linear operator on (c, h, w) images: column i is op(e_i)."""
    n = c * h * w
    basis = torch.eye(n, dtype=D).reshape(n, c, h, w)
    return op(basis).reshape(n, n).T


def idx(c: int, i: int, j: int) -> int:
    return (c * H + i) * W + j


def stencil_block(s: torch.Tensor, boundary: str) -> torch.Tensor:
    """(H*W, H*W) matrix of the correlation ``(C y)[i, j] = sum_ab s[a, b] y[i+a-p, j+b-p]``, built with loops."""
    k = s.shape[-1]
    p = k // 2
    out = torch.zeros(H * W, H * W, dtype=D)
    for i in range(H):
        for j in range(W):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - p, j + b - p
                    if boundary == "periodic":
                        ii, jj = ii % H, jj % W
                    elif not (0 <= ii < H and 0 <= jj < W):
                        continue
                    out[i * W + j, ii * W + jj] += s[a, b]
    return out


def dense_dw_ref(weight: torch.Tensor, boundary: str) -> torch.Tensor:
    """Eq. 5: block diagonal, one stencil block per channel."""
    return torch.block_diag(*[stencil_block(weight[c, 0], boundary) for c in range(weight.shape[0])])


def dense_circ_ref(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 12: block (i, j) is C(theta^((j - i) mod c)), circulant (periodic) blocks."""
    c = weight.shape[0]
    blocks = [stencil_block(weight[d], "periodic") for d in range(c)]
    return torch.cat([torch.cat([blocks[(j - i) % c] for j in range(c)], 1) for i in range(c)], 0)


def dense_pw_ref(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 6: M(theta) kron I."""
    return torch.kron(weight[:, :, 0, 0], torch.eye(H * W, dtype=D))


def gradcheck(fn, inputs) -> bool:
    """float64 gradcheck; fast mode (random projections of the Jacobian) keeps the file quick."""
    return torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- operators -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 7, 13])
@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_depthwise_op_and_transpose_match_dense(k, boundary):
    w = torch.randn(C, 1, k, k, dtype=D, generator=gen(k))
    kdw = dense(lambda y: depthwise_op(y, w, boundary))
    torch.testing.assert_close(kdw, dense_dw_ref(w, boundary))
    kdw_t = dense(lambda y: depthwise_op_transpose(y, w, boundary))
    torch.testing.assert_close(kdw_t, kdw.T)
    if k > 1:  # a genuine stencil is not symmetric: the transpose must differ from the operator
        assert not torch.allclose(kdw_t, kdw)


@pytest.mark.parametrize("k", [3, 7, 13])
@pytest.mark.parametrize("h", [0.05, 0.7, 3.0])
def test_implicit_solve_matches_dense_solve(k, h):
    w = torch.randn(C, 1, k, k, dtype=D, generator=gen(k))
    kdw = dense(lambda y: depthwise_op(y, w, "periodic"))
    y = torch.randn(3, C, H, W, dtype=D, generator=gen(1))
    expected = torch.linalg.solve(torch.eye(N, dtype=D) + h * kdw.T @ kdw, y.reshape(3, N).T).T
    torch.testing.assert_close(implicit_depthwise_solve(y, w, h).reshape(3, N), expected)
    # the inverse's spectral radius is below 1 (Sec. 3.2.2)
    assert implicit_depthwise_solve(y, w, h).norm() < y.norm()


@pytest.mark.parametrize("k", [1, 3, 7])
def test_circulant_ops_match_dense_block_circulant(k):
    w = torch.randn(C, k, k, dtype=D, generator=gen(k))
    ref = dense_circ_ref(w)
    kc = dense(lambda y: circulant_op(y, w))
    torch.testing.assert_close(kc, ref)
    torch.testing.assert_close(dense(lambda y: circulant_op_transpose(y, w)), ref.T)
    torch.testing.assert_close(dense(lambda y: circulant_normal_op(y, w)), ref.T @ ref)
    y = torch.randn(2, C, H, W, dtype=D, generator=gen(3))
    torch.testing.assert_close(circulant_op(y, w).reshape(2, N), y.reshape(2, N) @ ref.T)


def test_circulant_three_channels_couples_by_offset():
    c = 3
    w = torch.randn(c, 3, 3, dtype=D, generator=gen(5))
    blocks = [stencil_block(w[d], "periodic") for d in range(c)]
    kc = dense(lambda y: circulant_op(y, w), c=c)
    hw = H * W
    for i in range(c):
        for j in range(c):
            torch.testing.assert_close(kc[i * hw : (i + 1) * hw, j * hw : (j + 1) * hw], blocks[(j - i) % c])


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_linear_mix_operator_is_depthwise_plus_pointwise(boundary):
    dw = torch.randn(C, 1, 3, 3, dtype=D, generator=gen(0))
    pw = torch.randn(C, C, 1, 1, dtype=D, generator=gen(1))
    klm = dense(lambda y: linear_mix_op(y, dw, pw, boundary))
    torch.testing.assert_close(dense(lambda y: pointwise_op(y, pw)), dense_pw_ref(pw))
    torch.testing.assert_close(dense(lambda y: pointwise_op_transpose(y, pw)), dense_pw_ref(pw).T)
    torch.testing.assert_close(klm, dense_dw_ref(dw, boundary) + dense_pw_ref(pw))
    torch.testing.assert_close(dense(lambda y: linear_mix_op_transpose(y, dw, pw, boundary)), klm.T)


def test_operator_gradients_wrt_weights():
    y = torch.randn(1, C, 4, 5, dtype=D, generator=gen(0), requires_grad=True)
    w_dw = (0.3 * torch.randn(C, 1, 3, 3, dtype=D, generator=gen(1))).requires_grad_()
    w_c = (0.3 * torch.randn(C, 3, 3, dtype=D, generator=gen(2))).requires_grad_()
    assert gradcheck(lambda a, b: implicit_depthwise_solve(a, b, 0.8), (y, w_dw))
    assert gradcheck(circulant_op, (y, w_c))
    assert gradcheck(circulant_normal_op, (y, w_c))
    assert gradcheck(lambda a, b: depthwise_op_transpose(a, b, "periodic"), (y, w_dw))


def test_fft_ops_keep_low_precision_dtype():
    y = torch.randn(1, C, H, W).to(torch.bfloat16)
    assert implicit_depthwise_solve(y, torch.randn(C, 1, 3, 3), 0.5).dtype == torch.bfloat16
    assert circulant_normal_op(y, torch.randn(C, 3, 3)).dtype == torch.bfloat16


# --- one step of each layer equals the dense equation --------------------------------------------------
def _one_step_layer(layer_cls, cfg_cls, **kw):
    torch.manual_seed(0)
    layer = layer_cls(C, cfg_cls(act="identity", norm="none", h=0.6, **kw)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.4)
    x = torch.randn(1, C, H, W, dtype=D, generator=gen(9))
    return layer, x, x.reshape(N)


@pytest.mark.parametrize("operators", [1, 2])
@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_linearmix_step_equation(operators, boundary):
    layer, x, v = _one_step_layer(LinearMix, LinearMixConfig, operators=operators, boundary=boundary)
    dw, pw, b = layer.dw[0], layer.pw[0], layer.bias[0].repeat_interleave(H * W)
    k1 = dense_dw_ref(dw[0], boundary) + dense_pw_ref(pw[0])
    z = k1 @ v + b
    if operators == 2:
        k2 = dense_dw_ref(dw[1], boundary) + dense_pw_ref(pw[1])
        z = k2.T @ z
    torch.testing.assert_close(layer(x).reshape(N), v + 0.6 * z)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_explicit_rd_step_equation(boundary):
    layer, x, v = _one_step_layer(ExplicitRD, ExplicitRDConfig, boundary=boundary)
    kdw = dense_dw_ref(layer.diffusion[0], boundary)
    react = dense_pw_ref(layer.reaction[0]) @ v + layer.reaction_bias[0].repeat_interleave(H * W)
    torch.testing.assert_close(layer(x).reshape(N), v + 0.6 * (-kdw.T @ kdw @ v + react))


def test_implicit_rd_step_equation():
    layer, x, v = _one_step_layer(ImplicitRD, ImplicitRDConfig)
    kdw = dense_dw_ref(layer.diffusion[0], "periodic")
    react = dense_pw_ref(layer.reaction[0]) @ v + layer.reaction_bias[0].repeat_interleave(H * W)
    expected = torch.linalg.solve(torch.eye(N, dtype=D) + 0.6 * kdw.T @ kdw, v + 0.6 * react)
    torch.testing.assert_close(layer(x).reshape(N), expected)


def test_circulant_rd_step_equation():
    layer, x, v = _one_step_layer(CirculantRD, CirculantRDConfig)
    kc = dense_circ_ref(layer.diffusion[0])
    react = dense_pw_ref(layer.reaction[0]) @ v + layer.reaction_bias[0].repeat_interleave(H * W)
    torch.testing.assert_close(layer(x).reshape(N), v + 0.6 * (-kc.T @ kc @ v + react))


def test_circulant_rd_parameter_count_is_m2c_plus_reaction():
    c, k = 8, 5
    layer = CirculantRD(c, CirculantRDConfig(kernel_size=k, K=3, share_weights=False))
    assert layer.diffusion.numel() == 3 * k * k * c
    assert layer.reaction.numel() == 3 * c * c


# --- layer contract ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_shape_preserved_and_default_config(layer_cls, cfg_cls):
    layer = layer_cls(6)
    assert isinstance(layer.config, cfg_cls) and layer.init_block is None
    for shape in [(2, 6, 7, 9), (2, 6, 1, 1), (3, 6, 4, 16)]:
        assert layer(torch.randn(shape)).shape == shape
    with pytest.raises(ValueError):
        layer(torch.randn(2, 5, 7, 9))


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("share", [True, False])
def test_gradcheck_multistep(layer_cls, cfg_cls, share):
    torch.manual_seed(0)
    layer = layer_cls(C, cfg_cls(K=3, h=0.3, norm="none", act="tanh", share_weights=share)).double()
    x = torch.randn(2, C, 4, 5, dtype=D, requires_grad=True)
    assert gradcheck(layer, (x,))


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_gradcheck_batchnorm_train_mode_with_init_block(layer_cls, cfg_cls):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.Tanh())
    layer = layer_cls(C, cfg_cls(K=2, h=0.5, act="silu"), init_block=block).double().train()
    x = torch.randn(3, C, 4, 5, dtype=D, requires_grad=True)
    assert gradcheck(layer, (x,))


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_init_block_is_the_starting_point(layer_cls, cfg_cls):
    torch.manual_seed(0)
    cfg = cfg_cls(K=2)
    block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    with_block = layer_cls(6, cfg, init_block=block).eval()
    without = layer_cls(6, cfg).eval()
    assert with_block.init_block is block
    state = {k: v for k, v in with_block.state_dict().items() if not k.startswith("init_block.")}
    without.load_state_dict(state)
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(with_block(x), without(block(x)))
    assert not torch.allclose(with_block(x), without(x))
    assert any(n.startswith("init_block.") for n, _ in with_block.named_parameters())


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_unshared_weights_are_per_step(layer_cls, cfg_cls):
    torch.manual_seed(0)
    shared = layer_cls(4, cfg_cls(K=3, norm="none")).double()
    unshared = layer_cls(4, cfg_cls(K=3, norm="none", share_weights=False)).double()
    n_shared = sum(p.numel() for p in shared.parameters())
    n_unshared = sum(p.numel() for p in unshared.parameters())
    assert n_unshared == 3 * n_shared
    with torch.no_grad():  # copy the shared weights into every step: same function
        for (_, p_s), (_, p_u) in zip(shared.named_parameters(), unshared.named_parameters()):
            p_u.copy_(p_s.expand_as(p_u))
    x = torch.randn(2, 4, 6, 6, dtype=D)
    torch.testing.assert_close(unshared(x), shared(x))
    with torch.no_grad():  # changing the last step's weights changes the output
        for p in unshared.parameters():
            p[-1].add_(0.5)
    assert not torch.allclose(unshared(x), shared(x))


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_norms_per_step_unless_shared(layer_cls, cfg_cls):
    assert len(layer_cls(4, cfg_cls(K=4)).norms) == 4
    assert len(layer_cls(4, cfg_cls(K=4, share_norm=True)).norms) == 1


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_finite_on_large_inputs(layer_cls, cfg_cls):
    torch.manual_seed(0)
    for mode in ("train", "eval"):
        layer = layer_cls(8, cfg_cls(K=6))
        getattr(layer, mode)()
        x = 1e4 * torch.randn(4, 8, 16, 16)
        y = layer(x)
        assert torch.isfinite(y).all()
        y.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
def test_initial_diffusion_is_stable(layer_cls, cfg_cls):
    """At init, the explicit diffusion h K^T K has spectral radius well below 2 (the stability limit)."""
    torch.manual_seed(0)
    layer = layer_cls(16, cfg_cls(kernel_size=5, norm="none"))
    if isinstance(layer, LinearMix):
        return
    w = layer.diffusion[0].detach().double()
    if isinstance(layer, CirculantRD):
        ev = torch.fft.fftn(nn.functional.pad(w, (0, 11, 0, 11)), dim=(-3, -2, -1)).abs() ** 2
    else:
        ev = torch.fft.fft2(nn.functional.pad(w[:, 0], (0, 11, 0, 11))).abs() ** 2
    assert 1e-3 < ev.mean() < 0.5 and layer.config.h * ev.max() < 2.0


@pytest.mark.parametrize("layer_cls,cfg_cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_trace_matches_eager(layer_cls, cfg_cls):
    layer = layer_cls(4, cfg_cls(K=2)).eval()
    x = torch.randn(2, 4, 8, 8)
    traced = torch.jit.trace(layer, (x,))
    torch.testing.assert_close(traced(x), layer(x))
    if layer_cls in (ImplicitRD, CirculantRD):
        assert "fft" in str(traced.inlined_graph)


# --- config --------------------------------------------------------------------------------------------
BAD = [
    ("K", 0),
    ("K", 51),
    ("K", 1.5),
    ("K", True),
    ("h", 0.0),
    ("h", -0.1),
    ("h", math.nan),
    ("h", "1"),
    ("kernel_size", 4),
    ("kernel_size", 17),
    ("kernel_size", 0),
    ("act", "nope"),
    ("norm", "layer"),
    ("share_weights", "yes"),
    ("share_norm", 1),
]


@pytest.mark.parametrize("cfg_cls", [c for _, c in LAYERS], ids=LAYER_IDS)
@pytest.mark.parametrize("field,value", BAD)
def test_config_validation(cfg_cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cfg_cls(**{field: value})


@pytest.mark.parametrize(
    "cfg_cls,field,value",
    [
        (LinearMixConfig, "boundary", "replicate"),
        (LinearMixConfig, "operators", 3),
        (ExplicitRDConfig, "boundary", "reflect"),
    ],
)
def test_config_validation_specific(cfg_cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cfg_cls(**{field: value})


@pytest.mark.parametrize("cfg_cls", [c for _, c in LAYERS], ids=LAYER_IDS)
def test_config_round_trip(cfg_cls):
    cfg = cfg_cls(K=4, h=0.25, kernel_size=5, act="silu", norm="none", share_weights=False, share_norm=True)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert cfg_cls.from_dict(data) == cfg
    assert cfg_cls.from_dict(cfg_cls().to_dict()) == cfg_cls()
    with pytest.raises(ConfigError, match="unknown"):
        cfg_cls.from_dict({**data, "bogus": 1})
    assert cfg.replace(K=2).K == 2
    with pytest.raises(dataclasses_frozen_error()):
        cfg.K = 3


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_config_names_and_wrong_config_type():
    assert [c.name for _, c in LAYERS] == ["linearmix", "explicit_rd", "implicit_rd", "circulant_rd"]
    with pytest.raises(ConfigError):
        ExplicitRD(4, ImplicitRDConfig())
    with pytest.raises(ConfigError):
        ImplicitRD(0)
