import math
import warnings

import pytest
import timm
import torch
from torch import nn

import condense.pde
from condense._count import count, count_module, macs_and_params, unsupported_ops_in_pde_layers
from condense.pde._base import PDELayer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis


def fvcore_total(model, x):
    model.eval()
    with torch.no_grad():
        return (
            FlopCountAnalysis(model, x)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
            .tracer_warnings("none")
            .total()
        )


def nlogn(n):
    return n * math.log2(n)


# --- toy layers --------------------------------------------------------------------------------------


def _steps(h, k):
    for _ in range(k):
        h = h + 0.1 * (torch.roll(h, 1, -1) - h)  # sub, mul, add: 3 MACs per element
    return h


class StepsPDE(PDELayer):
    def __init__(self, channels=4, k=1):
        super().__init__(channels)
        self.k = k
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x):
        return _steps(self.conv(x), self.k)


class StepsPlain(nn.Module):
    def __init__(self, channels=4, k=1):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x):
        return _steps(self.conv(x), self.k)


class FFTPDE(PDELayer):
    """y = irfft2(rfft2(x) * w) with a real spectral multiplier w."""

    def __init__(self, channels, height, width, shape_from_input=False):
        super().__init__(channels)
        self.shape_from_input = shape_from_input
        self.register_buffer("w", torch.rand(height, width // 2 + 1))

    def forward(self, x):
        s = x.shape[-2:] if self.shape_from_input else (x.shape[-2], x.shape[-1])
        return torch.fft.irfft2(torch.fft.rfft2(x) * self.w, s=s)


class Net(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.stem = nn.Conv2d(3, layer.channels, 3, padding=1)
        self.pde = layer
        self.head = nn.Conv2d(layer.channels, 2, 1)

    def forward(self, x):
        return self.head(self.pde(self.stem(x)))


# --- plain models: exactly fvcore -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size",
    [
        ("resnet18", 64),
        ("efficientnet_b0", 64),
        ("mobilenetv3_small_100", 64),
    ],
)
def test_plain_timm_models_match_fvcore(name, size):
    model = timm.create_model(name, pretrained=False)
    df = count(model, (3, size, size))
    assert df.attrs["macs"] == fvcore_total(model, torch.randn(1, 3, size, size))
    assert df.attrs["params"] == sum(p.numel() for p in model.parameters())
    assert df.loc["", "macs"] == df.attrs["macs"]
    assert df.loc["", "params"] == df.attrs["params"]
    assert df.attrs["input_size"] == (3, size, size)
    assert not df["pde"].any()


def test_resnet18_per_module_rows_add_up():
    model = timm.create_model("resnet18", pretrained=False)
    df = count(model, (3, 64, 64))
    assert list(df.columns[:4]) == ["type", "depth", "macs", "params"]
    assert df.index[0] == ""
    assert df.loc["", "type"] == "ResNet" and df.loc["", "depth"] == 0
    assert df.loc["layer1.0.conv1", "type"] == "Conv2d" and df.loc["layer1.0.conv1", "depth"] == 3
    assert df["macs"].dtype.kind == "i" and df["params"].dtype.kind == "i"
    # resnet18 does all its counted work in leaves, so every parent is the sum of its children
    names = list(df.index)
    for parent in names:
        children = [n for n in names if n and (n.rsplit(".", 1)[0] if "." in n else "") == parent]
        if children:
            assert df.loc[parent, "macs"] == df.loc[children, "macs"].sum(), parent
    # the convs of a block sum to the block (the BN and residual add cost little / nothing)
    convs = [n for n in names if n.startswith("layer2.1.") and df.loc[n, "type"] == "Conv2d"]
    bns = [n for n in names if n.startswith("layer2.1.") and df.loc[n, "type"] == "BatchNorm2d"]
    assert df.loc[convs + bns, "macs"].sum() == df.loc["layer2.1", "macs"]
    # a block counted on its own (count_module) agrees with its row
    x = torch.randn(1, 64, 16, 16)
    assert count_module(model.layer1[0], x) == (df.loc["layer1.0", "macs"], df.loc["layer1.0", "params"])
    assert macs_and_params(model, (3, 64, 64)) == (df.attrs["macs"], df.attrs["params"])


def test_conv_submodules_sum_to_parent():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 4, 1)
    )
    df = count(model, (3, 10, 10))
    assert df.loc["0", "macs"] == 3 * 8 * 9 * 100
    assert df.loc["2", "macs"] == 4 * 8 * 9 * 100
    assert df.loc["3", "macs"] == 8 * 4 * 100
    assert df.loc[["0", "1", "2", "3"], "macs"].sum() == df.loc["", "macs"] == df.attrs["macs"]
    assert df.loc["1", "macs"] == 0 and df.loc["1", "params"] == 0


# --- PDE layers: elementwise work ---------------------------------------------------------------------


def test_steps_are_affine_in_k_inside_pde_layers():
    c, h, w = 4, 6, 5
    n = c * h * w
    x = torch.randn(1, c, h, w)
    conv = c * c * h * w
    counts = [count_module(StepsPDE(c, k), x)[0] for k in range(0, 5)]
    assert counts == [conv + 3 * n * k for k in range(0, 5)]
    plain = [count_module(StepsPlain(c, k), x)[0] for k in range(0, 5)]
    assert plain == [conv] * 5  # the same ops outside a PDE layer count 0 (as fvcore)
    assert plain[3] == fvcore_total(StepsPlain(c, 3), x)


def test_pde_layer_inside_a_model():
    c, h, w = 4, 8, 8
    net = Net(StepsPDE(c, 3))
    df = count(net, (3, h, w))
    stem, head = 3 * c * 9 * h * w, c * 2 * h * w
    pde = c * c * h * w + 3 * 3 * c * h * w
    assert df.loc["stem", "macs"] == stem and df.loc["head", "macs"] == head
    assert df.loc["pde", "macs"] == pde
    assert df.attrs["macs"] == stem + pde + head
    assert df.loc["pde", "pde"] and not df.loc["pde.conv", "pde"]
    assert unsupported_ops_in_pde_layers(net, (3, h, w)) == {"pde": {}}


def test_batch_size_scales_macs():
    net = Net(StepsPDE(4, 2))
    one = count(net, (3, 8, 8)).attrs["macs"]
    assert count(net, (3, 8, 8), batch_size=3).attrs["macs"] == 3 * one
    assert count(net, inputs=(torch.zeros(2, 3, 8, 8),)).attrs["macs"] == 2 * one


class Inner(nn.Module):
    def forward(self, x):
        return x * x - 1.0  # 2 per element, counted because it runs inside a PDE layer


class Nested(PDELayer):
    def __init__(self, channels):
        super().__init__(channels)
        self.inner = Inner()

    def forward(self, x):
        return self.inner(x) / 3.0 + torch.neg(x).reciprocal()  # div, neg, reciprocal, add: 4


def test_children_of_pde_layers_are_counted():
    x = torch.randn(1, 2, 4, 4)
    n = x.numel()
    assert count_module(Nested(2), x)[0] == 6 * n
    df = count(nn.Sequential(nn.Identity(), Nested(2)), inputs=x)
    assert df.loc["1.inner", "macs"] == 2 * n
    assert df.loc["1", "macs"] == 6 * n
    assert count_module(Inner(), x)[0] == 0


class ManyOps(PDELayer):
    def forward(self, x):
        y = torch.addcmul(x, x, x, value=0.5)  # 1
        y = 1 - y  # 1 (rsub)
        y = y.mul_(2.0).add_(1.0).sub_(x).div_(4.0)  # 4 (in place)
        y = y.pow(2) + y.abs().sqrt()  # pow, abs, sqrt, add: 4
        y = torch.sigmoid(y) * torch.tanh(y) + torch.relu(y)  # activations 0; mul, add: 2
        y = torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate")[..., 1:-1, 1:-1]  # 0
        y = torch.cat([y, torch.roll(y, 1, -2)], 1).narrow(1, 0, x.shape[1])  # 0
        return y + y.mean((-2, -1), keepdim=True)  # mean: 1 per input; add: 1


def test_elementwise_convention():
    x = torch.randn(2, 3, 5, 4)
    n = x.numel()
    assert count_module(ManyOps(3), x)[0] == (1 + 1 + 4 + 4 + 2 + 1 + 1) * n
    assert unsupported_ops_in_pde_layers(ManyOps(3), inputs=x) == {"": {}}


class ComplexOps(PDELayer):
    def forward(self, x):
        z = torch.fft.fft2(x)
        a = z * z  # complex * complex: 4
        b = z * 2.0  # complex * real number: 2
        c = z * x  # complex * real tensor: 2
        d = a + b - c  # complex add, sub: 2 + 2
        return torch.fft.ifft2(d).real


def test_complex_elementwise_and_fft():
    c, h, w = 2, 4, 8
    x = torch.randn(1, c, h, w)
    n = x.numel()
    assert count_module(ComplexOps(c), x)[0] == (4 + 2 + 2 + 2 + 2) * n + 2 * round(c * nlogn(h * w))
    assert unsupported_ops_in_pde_layers(ComplexOps(c), inputs=x) == {"": {}}


# --- PDE layers: FFTs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_from_input", [False, True])
@pytest.mark.parametrize("h, w", [(8, 8), (6, 7)])
def test_rfft2_layer_counts_n_log_n(h, w, shape_from_input):
    c = 3
    x = torch.randn(1, c, h, w)
    layer = FFTPDE(c, h, w, shape_from_input)
    bins = c * h * (w // 2 + 1)
    expected = 2 * round(c * nlogn(h * w)) + 2 * bins  # forward + inverse; complex * real: 2 MACs
    assert count_module(layer, x)[0] == expected
    assert unsupported_ops_in_pde_layers(layer, inputs=x) == {"": {}}
    assert count(Net(layer), (3, h, w)).loc["pde", "macs"] == expected


def _fft_case(fn):
    class One(PDELayer):
        def forward(self, x):
            y = fn(x)
            return y.real if y.is_complex() else y

    return One(2)


@pytest.mark.parametrize(
    "fn, n, transforms",
    [
        (lambda x: torch.fft.rfft(x), 8, 2 * 4 * 6),
        (lambda x: torch.fft.fft(x, dim=2), 6, 2 * 4 * 8),
        (lambda x: torch.fft.rfft(x, n=16), 16, 2 * 4 * 6),
        (lambda x: torch.fft.irfft(torch.fft.rfft(x)) - x, None, None),
        (lambda x: torch.fft.fft2(x), 6 * 8, 2 * 4),
        (lambda x: torch.fft.ifft2(x, s=(5, 6)), 30, 2 * 4),
        (lambda x: torch.fft.rfftn(x), 2 * 4 * 6 * 8, 1),
        (lambda x: torch.fft.fftn(x, dim=(1, 3)), 4 * 8, 2 * 6),
        (lambda x: torch.fft.rfftn(x, dim=(-2, -1)), 6 * 8, 2 * 4),
        (lambda x: torch.fft.ihfft2(x), 6 * 8, 2 * 4),
    ],
)
def test_fft_variants(fn, n, transforms):
    x = torch.randn(2, 4, 6, 8)
    layer = _fft_case(fn)
    macs = count_module(layer, x)[0]
    if n is None:  # rfft + irfft over 8 points, then a subtraction
        assert macs == 2 * round(2 * 4 * 6 * nlogn(8)) + x.numel()
    else:
        assert macs == round(transforms * nlogn(n))
    assert unsupported_ops_in_pde_layers(layer, inputs=x) == {"": {}}


def test_fft_outside_pde_layers_counts_zero():
    class Plain(nn.Module):
        def forward(self, x):
            return torch.fft.irfft2(torch.fft.rfft2(x) * 2.0, s=x.shape[-2:])

    x = torch.randn(1, 2, 8, 8)
    assert count_module(Plain(), x)[0] == 0


# --- sharing, state, registry ---------------------------------------------------------------------------


def test_module_used_twice_and_shared_parameters():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.alias = self.conv  # the same module under a second name

        def forward(self, x):
            return self.alias(self.conv(x))

    model = Twice()
    df = count(model, (4, 5, 5))
    one = 4 * 4 * 9 * 25
    assert df.attrs["macs"] == 2 * one
    assert df.loc["conv", "macs"] == 2 * one
    assert "alias" not in df.index
    assert df.attrs["params"] == 4 * 4 * 9 + 4

    pde = StepsPDE(4, 2)
    shared = nn.Sequential(pde, pde)
    single = count_module(pde, torch.randn(1, 4, 5, 5))[0]
    assert count(shared, (4, 5, 5)).attrs["macs"] == 2 * single


def test_counting_does_not_mutate_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), StepsPDE(4, 1), nn.Dropout(0.5))
    model.train()
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    count(model, (3, 8, 8))
    count_module(model, x)
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_registered_custom_op_handles_are_used():
    from condense.pde import _base

    @torch.library.custom_op("condense_test::triple", mutates_args=())
    def triple(x: torch.Tensor) -> torch.Tensor:
        return x * 3

    @triple.register_fake
    def _(x):
        return torch.empty_like(x)

    class Custom(PDELayer):
        def forward(self, x):
            return triple(x)

    x = torch.randn(1, 2, 3, 3)
    assert unsupported_ops_in_pde_layers(Custom(2), inputs=x) == {"": {"condense_test::triple": 1}}
    _base.register_op_handle("condense_test::triple")(lambda inputs, outputs: 5)
    try:
        assert count_module(Custom(2), x)[0] == 5
        assert unsupported_ops_in_pde_layers(Custom(2), inputs=x) == {"": {}}
    finally:
        _base._OP_HANDLES.pop("condense_test::triple", None)


def test_quiet(caplog):
    class Odd(PDELayer):
        def forward(self, x):
            return torch.cumsum(x, -1)  # unsupported: reported, not logged

    with caplog.at_level("WARNING"):
        df = count(Net(Odd(4)), (3, 6, 6))
    assert df.attrs["unsupported_ops"] == {"aten::cumsum": 1}
    assert df.loc["pde", "unsupported"] == 1
    assert not caplog.records
    assert unsupported_ops_in_pde_layers(Net(Odd(4)), (3, 6, 6)) == {"pde": {"aten::cumsum": 1}}


# --- the real layers (condense.pde) ----------------------------------------------------------------------

REAL_LAYERS = [
    ("global", {}),
    ("global", {"impl": "eager", "diffusion": "dwconv", "boundary": "replicate"}),
    ("global", {"impl": "eager", "velocity": "constant", "source": "residual", "boundary": "zero"}),
    ("linearmix", {"K": 2}),
    ("explicit_rd", {"K": 2}),
    ("implicit_rd", {"K": 2}),
    ("circulant_rd", {"K": 2}),
]


@pytest.mark.parametrize("name, options", REAL_LAYERS)
def test_no_op_in_the_pde_layers_is_left_unsupported(name, options):
    pde = condense.pde
    if name not in pde.layer_names():
        pytest.skip(f"layer {name} not available")
    net = Net(pde.create_layer(name, 4, **options))
    unsupported = unsupported_ops_in_pde_layers(net, (3, 12, 10), batch_size=2)
    assert unsupported == {"pde": {}}
    df = count(net, (3, 12, 10), batch_size=2)
    conv_only = count(Net(StepsPDE(4, 0)), (3, 12, 10), batch_size=2)
    assert df.loc["pde", "macs"] > 0
    assert df.loc["stem", "macs"] == conv_only.loc["stem", "macs"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"velocity": "zero", "boundary": "replicate"},
        {"diffusion": "dwconv", "source": "none", "boundary": "zero"},
        {"velocity": "separable", "source": "residual"},
    ],
)
def test_global_layer_fused_counts_like_eager(options):
    pde = condense.pde
    x = torch.randn(2, 4, 9, 7)
    if not pde.fused_available(x):
        pytest.skip("fused kernel unavailable")
    torch.manual_seed(0)
    eager = pde.create_layer("global", 4, impl="eager", **options)
    fused = pde.create_layer("global", 4, impl="fused", **options)
    assert count_module(eager, x) == count_module(fused, x)


def test_global_layer_steps_are_affine_in_k():
    pde = condense.pde
    x = torch.randn(1, 4, 8, 8)
    counts = [count_module(pde.create_layer("global", 4, K=k, impl="eager"), x)[0] for k in range(1, 5)]
    slopes = {b - a for a, b in zip(counts, counts[1:])}
    assert len(slopes) == 1
    slope = slopes.pop()
    assert slope > 0 and slope % x.numel() == 0
    assert slope == pde.eager_macs(x.numel(), 2, source=True, velocity=True, variable_diffusion=False) - pde.eager_macs(
        x.numel(), 1, source=True, velocity=True, variable_diffusion=False
    )
