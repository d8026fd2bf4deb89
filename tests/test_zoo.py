"""condense.zoo: the paper's models that timm lacks - they build, run, count near the paper's figures, and
find_runs finds their repeated blocks; ``zoo:NAME`` model specs.

Tolerances. The paper's figures are rounded to two or three digits and were counted with thop (its
footnote 2), not fvcore. For the original models the measured count must be within 5% of the paper's
(measured: 0.02-4% off). For condensed models 12%: besides rounding, thop counts no MACs for the Global
layer's elementwise update, which condense counts (7 MACs per element and step plus the setup), and
several small models are inferred from the figures (see condense/zoo.py). Measured (this machine):

    model                       params    (paper)     MACs          (paper)
    resnet32                    466,906   (460K)      69,759,616    (70M)
      default condense          80,506    (162K *)    14,859,968    (15M)
    resnet32_global_base, m=1   158,714   (162K)      16,108,224    (15M)
    resnet56                    855,770   (850K)      126,841,472   (127M)
    wrn_40_4                    8,949,210 (9.0M)      1,301,383,680 (1.30G)
      m=1, init=block           2,758,746 (2.8M)      402,422,528   (425M)
    densenet_bc_100_12          769,162   (769K)      296,504,796   (297M)
    mnist_resnet_small          32,538    (33.3K)     5,694,784     (5.7M)
      default condense          9,530     (9.94K)     1,871,776     (1.7M)

* the paper's Resnet-Global has a fourth stage that ResNet-32 lacks (see resnet32_global_base).
"""

from __future__ import annotations

import pytest
import torch

import condense
from condense import CondenseError, zoo
from condense._models import ModelSpec, parse_model_spec

BASE_TOL = 0.05
CONDENSED_TOL = 0.12

# name -> (paper params, paper MACs); None where the paper gives no figure for the uncondensed model
PAPER = {
    "resnet20": (270e3, 41e6),
    "resnet32": (460e3, 70e6),
    "resnet56": (850e3, 127e6),
    "wrn_40_4": (9.0e6, 1.30e9),
    "densenet_bc_100_12": (769e3, 297e6),
    "resnet_tiny": (13e3, 3.42e6),
    "wrn_tiny": (22e3, 9.8e6),
    "mnist_resnet": (600e3, 30e6),
    "mnist_resnet_small": (33.3e3, 5.7e6),
    "mnist_cnn_net": (524, None),
    "mnist_residual_net": (524, None),
    "mnist_pde_net": (524, None),
    "mnist_pde_net_image": (524, None),
}

# name -> expected runs (path, r, kind)
RUNS = {
    "resnet20": [("layer1", 3, "repeat"), ("layer2", 3, "repeat"), ("layer3", 3, "repeat")],
    "resnet32": [("layer1", 5, "repeat"), ("layer2", 5, "repeat"), ("layer3", 5, "repeat")],
    "resnet56": [("layer1", 9, "repeat"), ("layer2", 9, "repeat"), ("layer3", 9, "repeat")],
    "resnet_cifar": [("layer1", 5, "repeat"), ("layer2", 5, "repeat"), ("layer3", 5, "repeat")],
    "wrn_40_4": [("layer1", 6, "repeat"), ("layer2", 6, "repeat"), ("layer3", 6, "repeat")],
    "wrn_40_7": [("layer1", 6, "repeat"), ("layer2", 6, "repeat"), ("layer3", 6, "repeat")],
    "wide_resnet": [("layer1", 6, "repeat"), ("layer2", 6, "repeat"), ("layer3", 6, "repeat")],
    "densenet_bc_100_12": [
        ("denseblock1.layers", 16, "dense"),
        ("denseblock2.layers", 16, "dense"),
        ("denseblock3.layers", 16, "dense"),
    ],
    "densenet_bc": [
        ("denseblock1.layers", 16, "dense"),
        ("denseblock2.layers", 16, "dense"),
        ("denseblock3.layers", 16, "dense"),
    ],
    "resnet_tiny": [("layer1", 3, "repeat"), ("layer2", 3, "repeat"), ("layer3", 3, "repeat"), ("layer4", 3, "repeat")],
    "resnet_tiny_global": [("layer1", 3, "repeat"), ("layer2", 3, "repeat"), ("layer3", 3, "repeat")],
    "wrn_tiny": [("layer1", 6, "repeat"), ("layer2", 6, "repeat"), ("layer3", 6, "repeat")],
    "wrn_tiny_global": [("layer1", 6, "repeat"), ("layer2", 6, "repeat"), ("layer3", 6, "repeat")],
    "resnet32_global_base": [("layer1", 5, "repeat"), ("layer2", 5, "repeat"), ("layer3", 5, "repeat")],
    "resnet56_global_base": [
        ("layer1", 9, "repeat"),
        ("layer2", 9, "repeat"),
        ("layer3", 9, "repeat"),
        ("layer4", 2, "repeat"),
    ],
    "resnet56_x2_global_base": [
        ("layer1", 9, "repeat"),
        ("layer2", 9, "repeat"),
        ("layer3", 9, "repeat"),
        ("layer4", 2, "repeat"),
    ],
    "mnist_resnet": [("blocks", 6, "repeat")],
    "mnist_resnet_small": [("blocks", 6, "repeat")],
    "mnist_cnn_net": [],
    "mnist_residual_net": [],
    "mnist_pde_net": [],
    "mnist_pde_net_image": [],
}


def _close(measured: float, paper: float, tol: float) -> bool:
    return abs(measured - paper) <= tol * paper


def test_every_zoo_model_has_expectations():
    assert sorted(RUNS) == zoo.names()
    assert condense.macs_and_params(zoo.resnet32(), (3, 32, 32)) == (69_759_616, 466_906)  # pinned


ALIASES = {  # general builders: same models as the named ones, checked without tracing them again
    "resnet_cifar": "resnet32",
    "wide_resnet": "wrn_40_4",
    "densenet_bc": "densenet_bc_100_12",
}


@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in ALIASES])
def test_builds_runs_forward_and_finds_its_runs(name):
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    size = zoo.input_size(name)
    with torch.no_grad():
        out = model(torch.randn(1, *size))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    found = condense.find_runs(model, size, count=False)
    assert [(r.path, r.r, r.kind) for r in found.runs] == RUNS[name]
    if name in PAPER:
        params_p, macs_p = PAPER[name]
        macs, params = condense.macs_and_params(model, size)  # condense.count's totals
        assert _close(params, params_p, 0 if params_p == 524 else BASE_TOL), (params, params_p)
        if macs_p is not None:
            assert _close(macs, macs_p, BASE_TOL), (macs, macs_p)


@pytest.mark.parametrize("alias, name", ALIASES.items())
def test_general_builders_default_to_the_named_models(alias, name):
    a, b = zoo.build(alias, num_classes=7), zoo.build(name, num_classes=7)
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]


def test_num_classes_reaches_the_head():
    for name in zoo.names():
        if name == "wrn_40_7":  # 27M parameters: slow to initialise, same code as wrn_40_4
            continue
        model = zoo.build(name, num_classes=7)
        assert model.fc.out_features == 7


def test_cifar100_heads_match_the_papers_cifar100_counts():
    # option-B shortcuts: 473K / 861K as in Table 3's CIFAR-100 columns (option A would give 470K / 859K)
    assert condense.macs_and_params(zoo.resnet32(100), (3, 32, 32))[1] == pytest.approx(473e3, rel=0.005)
    assert condense.macs_and_params(zoo.resnet56(100), (3, 32, 32))[1] == pytest.approx(861e3, rel=0.005)
    a = condense.macs_and_params(zoo.resnet32(shortcut="A"), (3, 32, 32))[1]
    assert a == pytest.approx(464e3, rel=0.005)  # He et al.'s 0.46M


@pytest.mark.parametrize(
    "name, options, paper",
    [
        ("resnet32_global_base", {}, (162e3, 15e6)),  # Tables 1/3 Resnet-Global (m=1, K=5)
        ("wrn_40_4", {"init": "block"}, (2.8e6, 425e6)),  # Table 3 Wide-Resnet-Global (m=1)
        ("mnist_resnet_small", {}, (9.94e3, 1.7e6)),  # Table 2 budget Resnet-Global
    ],
)
def test_default_condense_lands_near_the_papers_global_model(name, options, paper):
    res = condense.fit(zoo.build(name), input_size=zoo.input_size(name), **options)
    assert res.rows and all(row.m == 1 and row.K == 5 for row in res.rows)
    assert _close(res.params_after, paper[0], CONDENSED_TOL), (res.params_after, paper[0])
    assert _close(res.macs_after, paper[1], CONDENSED_TOL), (res.macs_after, paper[1])


def test_resnet32_default_condense_matches_the_papers_macs_not_its_params():
    # Known gap: the paper's Resnet-Global carries a 4th stage (~78K params, ~1.2M MACs) that ResNet-32 lacks.
    res = condense.fit(zoo.resnet32(), input_size=(3, 32, 32))
    assert [(r.path, r.r, r.m) for r in res.rows] == [("layer1", 5, 1), ("layer2", 5, 1), ("layer3", 5, 1)]
    assert _close(res.macs_after, 15e6, CONDENSED_TOL)
    assert 75e3 < res.params_after < 90e3  # measured 80,506 vs the paper's 162K
    assert res.macs_before / res.macs_after > 4.5  # the paper: 4.7x fewer MACs


def test_fig2_nets_have_524_parameters_and_one_feature_map():
    for name in ("mnist_cnn_net", "mnist_residual_net", "mnist_pde_net", "mnist_pde_net_image"):
        model = zoo.build(name).eval()
        assert sum(p.numel() for p in model.parameters()) == 524
        feat = model.feature(torch.randn(1, 1, 28, 28))
        assert feat.shape == (1, 1, 28, 28)
    assert isinstance(zoo.mnist_pde_net_image().feature, condense.GlobalLayer)


# --- Fig. 2 as the authors' train_mnist_illustrative_example.py builds it ----------------------------------
# Their ConvBlock(1, 1): f (conv3x3, no bias), g (conv3x3, no bias), bn_out, bn_f1, bn_g - 24 parameters in
# all three nets; NetworkMNIST adds fc = Linear(49, 10): 524. Ours, module for module (their name -> ours):
FIG2_LAYERS = [  # (our parameter, shape, their module)
    ("feature.bn_f.weight", (1,), "bn_f1"),
    ("feature.bn_f.bias", (1,), "bn_f1"),
    ("feature.conv_f.weight", (1, 1, 3, 3), "f"),
    ("feature.bn_g.weight", (1,), "bn_g"),
    ("feature.bn_g.bias", (1,), "bn_g"),
    ("feature.conv_g.weight", (1, 1, 3, 3), "g"),
    ("feature.bn_out.weight", (1,), "bn_out"),
    ("feature.bn_out.bias", (1,), "bn_out"),
    ("fc.weight", (10, 49), "fc"),
    ("fc.bias", (10,), "fc"),
]


def _authors_forward(m, x, kind, K=5):
    """Their ConvBlock.forward and NetworkMNIST.forward, transcribed with our module names (logits, not
    log-softmax): H along dim 2 carries u (= g), W along dim 3 carries v (= g); torch.roll boundaries."""
    from torch.nn import functional as F

    feat = m.feature
    f = feat.conv_f(F.relu(feat.bn_f(x)))
    if kind == "cnn":
        h = feat.conv_g(F.relu(feat.bn_g(f)))
    elif kind == "residual":
        h = F.relu(feat.bn_out(f + feat.conv_g(F.relu(feat.bn_g(f)))))
    else:
        g = feat.conv_g(F.relu(feat.bn_g(f)))
        dt, B = 0.2, 0.2  # dx = dy = 1, Dx = Dy = 1
        ux = 0.5 * (torch.roll(g, 1, dims=2) - torch.roll(g, -1, dims=2))
        vy = 0.5 * (torch.roll(g, 1, dims=3) - torch.roll(g, -1, dims=3))
        A, E, D = g * dt, (ux + vy) * dt, 1.0 / (1 + 4 * B)
        h_old, h = f, f
        for _ in range(K):
            h, h_old = (
                D
                * (
                    (1 - 4 * B) * h_old
                    - 2 * E * h
                    + (-A + 2 * B) * torch.roll(h, 1, dims=2)
                    + (A + 2 * B) * torch.roll(h, -1, dims=2)
                    + (-A + 2 * B) * torch.roll(h, 1, dims=3)
                    + (A + 2 * B) * torch.roll(h, -1, dims=3)
                    + 2 * dt * f
                ),
                h,
            )
        h = F.relu(feat.bn_out(h))
    return m.fc(torch.flatten(F.avg_pool2d(F.relu(h), 4), 1))


@pytest.mark.parametrize(
    "name, kind", [("mnist_cnn_net", "cnn"), ("mnist_residual_net", "residual"), ("mnist_pde_net", "pde")]
)
def test_fig2_nets_are_the_authors_layer_by_layer(name, kind):
    torch.manual_seed(0)
    model = zoo.build(name).double()
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [(n, s) for n, s, _ in FIG2_LAYERS]
    assert sum(p.numel() for p in model.parameters()) == 524
    assert [type(m).__name__ for m in model.feature.children()] == ["BatchNorm2d", "Conv2d"] * 2 + ["BatchNorm2d"]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert isinstance(model.pool, torch.nn.AvgPool2d) and model.pool.kernel_size == 4
    with torch.no_grad():  # random affine BN parameters, so that every module matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            torch.testing.assert_close(model(x), _authors_forward(model, x, kind), rtol=1e-10, atol=1e-10)
    model.train()
    model(x).sum().backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == ({"feature.bn_out.weight", "feature.bn_out.bias"} if kind == "cnn" else set())


def test_fig2_pde_net_bounded_velocity_is_an_option():
    torch.manual_seed(0)
    free, bounded = zoo.mnist_pde_net(), zoo.mnist_pde_net(max_courant=0.5)
    bounded.load_state_dict(free.state_dict())
    with torch.no_grad():
        free.feature.conv_g.weight.mul_(50)  # a fast velocity: |u| dt/dx well above 0.5
        bounded.feature.conv_g.weight.mul_(50)
        x = torch.randn(2, 1, 28, 28)
        assert not torch.allclose(free(x), bounded(x))
    with pytest.raises(CondenseError, match="max_courant"):
        zoo.mnist_pde_net(max_courant=2.0)
    with pytest.raises(CondenseError, match="kind"):
        zoo.Fig2Feature("ode")


def test_zoo_model_spec_round_trip_and_build_model():
    spec = parse_model_spec("zoo:resnet32")
    assert spec == ModelSpec("zoo", name="resnet32") and str(spec) == "zoo:resnet32"
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    model = condense.build_model("zoo:wrn_tiny", num_classes=100)
    assert model.fc.out_features == 100
    from condense._models import default_input_size

    assert default_input_size(model) == (3, 32, 32)  # so the CLI needs no --input-size
    assert default_input_size(condense.build_model("zoo:mnist_resnet")) == (1, 28, 28)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("zoo:resnet33", "did you mean resnet32"),
        ("zoo:wrn40_4", "did you mean wrn_40_4"),
        ("zoo:", "unknown zoo model"),
    ],
)
def test_unknown_zoo_name_is_a_one_line_error_with_close_matches(spec, needle):
    with pytest.raises(CondenseError) as err:
        condense.build_model(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_factory_argument_is_a_condense_error():
    with pytest.raises(CondenseError, match="unexpected keyword argument 'depthh'"):
        condense.build_model("zoo:resnet_cifar", depthh=20)
    with pytest.raises(CondenseError, match="6m \\+ 2"):
        zoo.resnet_cifar(33)


def test_saved_zoo_model_loads_back_from_its_spec(tmp_path):
    res = condense.fit(zoo.resnet_tiny(), input_size=(3, 32, 32))
    condense.save(res, tmp_path / "tiny", spec="zoo:resnet_tiny")
    again = condense.load(tmp_path / "tiny")
    x = torch.randn(2, 3, 32, 32)
    res.model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(res.model(x), again(x), atol=1e-5)
