"""rewrite: keep m blocks of a run, put one layer in place of the rest; never touch the input model."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from condense._errors import CondenseError, ConfigError
from condense.graph import (
    ChannelsLastAdapter,
    CondensedGraphModule,
    GrowingTail,
    RewriteResult,
    RunChoice,
    Skip,
    find_runs,
    rewrite,
)
from condense.pde._base import PDELayer

SIZE = (3, 64, 64)


class StandIn(PDELayer):
    """A real, cheap layer: depthwise conv residual (plus the init block when given)."""

    def __init__(self, channels: int, init_block: nn.Module | None = None, kernel_size: int = 3):
        super().__init__(channels)
        self.dw = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.init_block = init_block
        self.kernel_size = kernel_size

    def forward(self, x):
        h = self.init_block(x) if self.init_block is not None else x
        return h + self.dw(x)


class Factory:
    """layer_factory with create_layer's signature; remembers its calls."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, name, channels, init_block=None, kernel_size=3, **options):
        self.calls.append(
            dict(name=name, channels=channels, init_block=init_block, kernel_size=kernel_size, options=options)
        )
        return StandIn(channels, init_block, kernel_size)


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def _snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def resnet18():
    return _model("resnet18")


@pytest.fixture(scope="module")
def resnet18_found(resnet18):
    return find_runs(resnet18, SIZE, count=False)


# --- timm ResNet: Sequential stages -------------------------------------------------------------------


def test_resnet18_m1_replaces_second_block(resnet18, resnet18_found):
    before = _snapshot(resnet18)
    fac = Factory()
    res = rewrite(resnet18, resnet18_found, {p: RunChoice(m=1) for p in resnet18_found.paths}, layer_factory=fac)
    assert isinstance(res, RewriteResult)
    new = res.module
    assert new is not resnet18 and type(new) is type(resnet18)
    # the input model is untouched
    assert _same_state(before, _snapshot(resnet18)) and len(resnet18.layer1) == 2
    assert type(resnet18.layer1[1]).__name__ == "BasicBlock"
    for i in range(1, 5):
        stage = getattr(new, f"layer{i}")
        assert len(stage) == 2 and type(stage[0]).__name__ == "BasicBlock" and isinstance(stage[1], StandIn)
        # kept blocks keep their weights (equal, not shared)
        kept, orig = stage[0].state_dict(), getattr(resnet18, f"layer{i}")[0].state_dict()
        assert _same_state(kept, orig)
        assert stage[0].conv1.weight is not getattr(resnet18, f"layer{i}")[0].conv1.weight
    # the factory was called per run with the run's channels, kernel and a faithful copy of block m
    assert [c["channels"] for c in fac.calls] == [64, 128, 256, 512]
    assert all(c["kernel_size"] == 3 and c["name"] == "global" for c in fac.calls)
    init = fac.calls[1]["init_block"]
    assert init is not resnet18.layer2[1] and _same_state(init.state_dict(), resnet18.layer2[1].state_dict())
    # records
    rec = {r.path: r for r in res.records}
    assert rec["layer3"].removed == ("layer3.1",) and rec["layer3"].kept == ("layer3.0",)
    assert rec["layer3"].inserted == "layer3.1" and rec["layer3"].layer_type == "StandIn"
    assert rec["layer3"].method == "sequential" and (rec["layer3"].r, rec["layer3"].m) == (2, 1)
    assert rec["layer3"].params_removed == _nparams(resnet18.layer3[1])
    # forward + backward, same output shape
    x = torch.randn(2, *SIZE)
    new.train()
    out = new(x)
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert new.layer2[1].dw.weight.grad is not None and new.layer2[0].conv1.weight.grad is not None


def test_resnet18_params_drop_with_input_init(resnet18, resnet18_found):
    res = rewrite(
        resnet18, resnet18_found, {"layer3": RunChoice(m=1, init="input"), "layer4": 1}, layer_factory=Factory()
    )
    assert _nparams(res.module) < _nparams(resnet18)
    assert res.module.layer3[1].init_block is None
    assert isinstance(res.module.layer4[1].init_block, nn.Module)  # int m -> init="block"
    keys = set(res.module.state_dict())
    assert "layer3.1.dw.weight" in keys and not any(k.startswith("layer3.1.conv1") for k in keys)
    assert keys >= {k for k in resnet18.state_dict() if not k.startswith(("layer3.1.", "layer4.1."))}


def test_m_equals_r_leaves_run_unchanged(resnet18, resnet18_found):
    res = rewrite(resnet18, resnet18_found, {"layer1": RunChoice(m=2), "layer2": 2}, layer_factory=Factory())
    assert all(r.method == "unchanged" and r.inserted is None for r in res.records)
    assert _same_state(_snapshot(resnet18), _snapshot(res.module))
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        assert torch.equal(resnet18.eval()(x), res.module.eval()(x))


def test_resnet50_stage_condensed():
    m = _model("resnet50")
    f = find_runs(m, SIZE, count=False)
    res = rewrite(m, f, {"layer3": RunChoice(m=2, init="input", options={"K": 3})}, layer_factory=(fac := Factory()))
    assert len(res.module.layer3) == 3 and isinstance(res.module.layer3[2], StandIn)
    assert fac.calls[0]["options"] == {"K": 3} and fac.calls[0]["channels"] == 1024
    assert res.records[2].removed == ("layer3.2", "layer3.3", "layer3.4", "layer3.5")
    assert _nparams(res.module) == _nparams(m) - sum(f.run("layer3").params[2:]) + _nparams(res.module.layer3[2])
    with torch.no_grad():
        assert res.module.eval()(torch.randn(1, *SIZE)).shape == (1, 1000)


def test_efficientnet_all_runs():
    m = _model("efficientnet_b0")
    f = find_runs(m, SIZE, count=False)
    fac = Factory()
    res = rewrite(m, f, {p: 1 for p in f.paths}, layer_factory=fac)
    assert [c["kernel_size"] for c in fac.calls] == [3, 5, 3, 5, 5]
    assert [len(res.module.blocks[i]) for i in range(7)] == [1, 2, 2, 2, 2, 2, 1]
    assert _nparams(res.module) < _nparams(m)
    x = torch.randn(2, *SIZE)
    res.module.train()
    res.module(x).sum().backward()


def test_rewrite_is_deterministic_and_reloadable(resnet18, resnet18_found):
    """What load does: rebuild the original, rewrite with the same plan, load_state_dict."""
    plan = {"layer2": RunChoice(m=1), "layer4": RunChoice(m=1, init="input")}
    a = rewrite(resnet18, resnet18_found, plan, layer_factory=Factory()).module
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01)
    state = a.state_dict()
    fresh = _model("resnet18")
    b = rewrite(fresh, find_runs(fresh, SIZE, count=False), plan, layer_factory=Factory()).module
    assert list(b.state_dict()) == list(state)
    b.load_state_dict(state)
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b.eval()(x))


def test_default_factory_builds_global_layer(resnet18, resnet18_found):
    res = rewrite(resnet18, resnet18_found, {"layer4": RunChoice(m=1, options={"K": 2})})
    layer = res.module.layer4[1]
    assert isinstance(layer, PDELayer) and type(layer).__name__ == res.records[3].layer_type
    with torch.no_grad():
        assert res.module.eval()(torch.randn(1, *SIZE)).shape == (1, 1000)


@pytest.mark.parametrize(
    "name, plan, inserted",
    [
        ("regnetx_002", {"s3": 1, "s4": 3}, ("s3.b2", "s4.b4")),  # RegStage: children b1..bN
        ("dla34", {"level3.tree1": 1, "level5": 1}, ("level3.tree1.tree2", "level5.tree2")),  # anchor has 2 inputs
    ],
)
def test_timm_custom_stages_in_place(name, plan, inserted):
    m = _model(name)
    f = find_runs(m, SIZE, count=False)
    res = rewrite(m, f, {p: RunChoice(m=v, init="input") for p, v in plan.items()}, layer_factory=Factory())
    changed = [r for r in res.records if r.method != "unchanged"]
    assert [r.method for r in changed] == ["inplace", "inplace"]
    assert tuple(r.inserted for r in changed) == inserted
    assert all(isinstance(res.module.get_submodule(p), StandIn) for p in inserted)
    assert _nparams(res.module) < _nparams(m)
    x = torch.randn(2, *SIZE)
    res.module.train()
    assert res.module(x).shape == (2, 1000)
    res.module(x).sum().backward()


# --- plan errors -------------------------------------------------------------------------------------


def test_plan_errors(resnet18, resnet18_found):
    with pytest.raises(CondenseError, match="unknown run"):
        rewrite(resnet18, resnet18_found, {"layer9": 1}, layer_factory=Factory())
    with pytest.raises(ConfigError, match="more than its r=2"):
        rewrite(resnet18, resnet18_found, {"layer1": 3}, layer_factory=Factory())
    with pytest.raises(ConfigError):
        RunChoice(m=0)
    with pytest.raises(ConfigError):
        RunChoice(m=1, init="zeros")  # type: ignore[arg-type]
    with pytest.raises(CondenseError, match="does not have"):
        rewrite(nn.Sequential(nn.Conv2d(3, 3, 1)), resnet18_found, {"layer1": 1}, layer_factory=Factory())
    choice = RunChoice(m=2, layer="global", options={"K": 4}, init="input")
    assert RunChoice.from_dict(choice.to_dict()) == choice


def _tail_outputs(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        mod.register_forward_hook(lambda _m, _a, out, name=name: seen.setdefault(name, out))
        for name, mod in module.named_modules()
        if isinstance(mod, GrowingTail)
    ]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return seen


def test_dense_run_rewrite():
    m = _model("densenet121", block_config=(3, 4), growth_rate=8).eval()
    f = find_runs(m, (3, 32, 32), count=False)
    factory = Factory()
    res = rewrite(m, f, {"features.denseblock1": 1, "features.denseblock2": 2}, layer_factory=factory)
    new = res.module
    # the layers work at the width block m reads; growing blocks are never an initial guess
    assert [c["channels"] for c in factory.calls] == [16 + 8, f.run("features.denseblock2").block_channels[2]]
    assert all(c["init_block"] is None for c in factory.calls)
    block1 = new.get_submodule("features.denseblock1")
    assert list(block1._modules) == ["denselayer1", "denselayer2"]  # the third layer is dropped
    tail = block1.denselayer2
    assert isinstance(tail, GrowingTail) and tail.in_channels == 24 and tail.new_channels == 16
    assert [r.method for r in res.records] == ["sequential", "sequential"]
    assert res.records[0].layer_type == "StandIn" and res.records[0].removed == (
        "features.denseblock1.denselayer2",
        "features.denseblock1.denselayer3",
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert new.eval()(x).shape == m(x).shape
    # each tail returns only the new channels (the block concatenates them), and they learn: a zero start
    # would meet the next BN-ReLU at 0, where no gradient flows
    outs = _tail_outputs(new, x)
    assert [tuple(o.shape) for o in outs.values()] == [(2, 16, 8, 8), (2, 16, 4, 4)]
    new.train()
    new(x).square().mean().backward()
    for t in (tail, new.get_submodule("features.denseblock2.denselayer3")):
        assert t.project[0].weight.grad.abs().sum() > 0 and t.project[1].weight.grad.abs().sum() > 0
    assert _nparams(new) < _nparams(m)
    assert rewrite(m, f, {"features.denseblock1": 3}, layer_factory=factory).records[0].method == "unchanged"


def test_chain_growing_run_rewrite():
    m = _model("rexnet_100").eval()
    f = find_runs(m, SIZE, count=False)
    run = f.runs[0]
    res = rewrite(m, f, {run.path: 2}, layer_factory=Factory())
    tail = res.module.get_submodule(run.blocks[2])
    assert isinstance(tail, GrowingTail) and tail.growth == "growing"
    assert tail.in_channels == run.block_channels[2]
    assert tail.in_channels + tail.new_channels == run.output_shape[0]
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert res.module.eval()(x).shape == m(x).shape
    res.module.train()
    res.module(x).square().mean().backward()


class _CallsByName(nn.Module):
    """A dense stage that calls its layers by name, not by looping: dropping layers breaks it."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = (_DenseLayer(8 + 4 * i) for i in range(3))

    def forward(self, x):
        a = self.l1([x])
        b = self.l2([x, a])
        c = self.l3([x, a, b])
        return torch.cat([x, a, b, c], 1)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4, 3, padding=1)

    def forward(self, feats):
        return self.conv(torch.cat(feats, 1))


def test_dense_run_whose_parent_does_not_loop_is_an_error():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _CallsByName(), nn.Conv2d(20, 2, 1)).eval()
    f = find_runs(m, (3, 8, 8), count=False)
    (run,) = f.runs
    assert run.kind == "dense" and run.r == 3
    with pytest.raises(CondenseError, match="cannot rewrite dense run '1'"):
        rewrite(m, f, {run.path: 1}, layer_factory=Factory())


# --- custom stages: in-place edit, graph fallback -----------------------------------------------------


class Block(nn.Module):
    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.proj = nn.Conv2d(cin, c, 1, stride) if stride != 1 or cin != c else None

    def forward(self, x, scale: float = 1.0):
        s = x if self.proj is None else self.proj(x)
        return torch.relu(self.bn(self.conv(x))) * scale + s


class LoopStage(nn.Module):
    def __init__(self, cin: int, c: int, n: int, extra_arg: bool):
        super().__init__()
        self.blocks = nn.ModuleList([Block(cin, c, 2)] + [Block(c, c) for _ in range(n - 1)])
        self.extra_arg = extra_arg

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x, 0.5) if self.extra_arg else blk(x)  # a PDE layer cannot take the 0.5
        return x


class UserNet(nn.Module):
    def __init__(self, extra_arg: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.s1 = LoopStage(8, 16, 3, extra_arg)
        self.s2 = LoopStage(16, 32, 4, extra_arg)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.s2(self.s1(self.stem(x)))
        return self.head(self.drop(x.mean((2, 3))))


PLAN = {"s1.blocks": RunChoice(m=1, init="input"), "s2.blocks": RunChoice(m=2, init="input")}
REMOVED = ("s1.blocks.1.", "s1.blocks.2.", "s2.blocks.2.", "s2.blocks.3.")


def _check_user_rewrite(net: UserNet, res: RewriteResult) -> None:
    new = res.module
    keys = set(new.state_dict())
    assert keys == {k for k in net.state_dict() if not k.startswith(REMOVED)} | {
        "s1.blocks.1.dw.weight",
        "s1.blocks.1.dw.bias",
        "s2.blocks.2.dw.weight",
        "s2.blocks.2.dw.bias",
    }
    for k, v in net.state_dict().items():
        if not k.startswith(REMOVED):
            assert torch.equal(new.state_dict()[k], v)
    assert _nparams(new) < _nparams(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert new.eval()(x).shape == (2, 5)
    new.train()
    new(x).sum().backward()
    assert new.get_submodule("s2.blocks.2").dw.weight.grad is not None


def test_custom_stage_inplace():
    torch.manual_seed(0)
    net = UserNet()
    before = _snapshot(net)
    res = rewrite(net, find_runs(net, (3, 32, 32), count=False), PLAN, layer_factory=Factory())
    assert [r.method for r in res.records] == ["inplace", "inplace"]
    new = res.module
    assert type(new) is UserNet
    assert isinstance(new.s1.blocks[1], StandIn) and isinstance(new.s1.blocks[2], Skip)
    assert isinstance(new.s2.blocks[1], Block) and isinstance(new.s2.blocks[2], StandIn)
    _check_user_rewrite(net, res)
    assert _same_state(before, _snapshot(net)) and isinstance(net.s1.blocks[1], Block)
    # a rewritten model can be searched again: s2 still has two blocks
    assert find_runs(new, (3, 32, 32), count=False).paths == ("s2.blocks",)


def test_iterated_sequential_edited_in_place():
    torch.manual_seed(0)
    net = UserNet()
    net.s1.blocks = nn.Sequential(*net.s1.blocks)  # iterated by LoopStage.forward, never called
    res = rewrite(net, find_runs(net, (3, 32, 32), count=False), PLAN, layer_factory=Factory())
    assert [r.method for r in res.records] == ["inplace", "inplace"]
    assert len(res.module.s1.blocks) == 3 and isinstance(res.module.s1.blocks[2], Skip)
    _check_user_rewrite(net, res)


def test_custom_stage_graph_fallback():
    torch.manual_seed(0)
    net = UserNet(extra_arg=True)
    res = rewrite(net, find_runs(net, (3, 32, 32), count=False), PLAN, layer_factory=Factory())
    assert [r.method for r in res.records] == ["graph", "graph"]
    new = res.module
    assert isinstance(new, CondensedGraphModule)
    _check_user_rewrite(net, res)
    # train and eval graphs switch with the mode (dropout is a leaf, but drop-path-like code is baked in)
    new.eval()
    assert new.graph is new.eval_graph
    new.train()
    assert new.graph is new.train_graph
    # deep copies (e.g. by find_runs or an optimizer wrapper) work and compute the same
    twin = copy.deepcopy(new).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(twin(x), new.eval()(x))
    twin.train()
    assert twin.graph is twin.train_graph


# --- channels-last, alternating blocks (Swin) ---------------------------------------------------------


def test_swin_rewrite_stays_correct():
    m = _model(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=4,
        embed_dim=16,
        depths=(2, 4, 2),
        num_heads=(1, 2, 4),
        drop_path_rate=0.2,
    )
    before = _snapshot(m)
    f = find_runs(m, SIZE, count=False)
    fac = Factory()
    res = rewrite(m, f, {"layers.1.blocks": RunChoice(m=2), "layers.2.blocks": RunChoice(m=1)}, layer_factory=fac)
    new = res.module
    assert _same_state(before, _snapshot(m))
    stage = new.layers[1].blocks
    assert len(stage) == 3 and isinstance(stage[2], ChannelsLastAdapter) and isinstance(stage[2].layer, StandIn)
    # kept blocks untouched: shifted / unshifted windows, drop-path rates, weights, masks
    for i in range(2):
        kept, orig = stage[i], m.layers[1].blocks[i]
        assert kept.shift_size == orig.shift_size and kept.drop_path1.drop_prob == orig.drop_path1.drop_prob
        assert _same_state(kept.state_dict(), orig.state_dict())
    assert stage[0].shift_size != stage[1].shift_size
    # the init block is a faithful copy of the first replaced block (unshifted blocks.2), fed channels-first
    init = fac.calls[0]["init_block"]
    assert fac.calls[0]["channels"] == 32 and fac.calls[0]["kernel_size"] == 3  # no conv: layer default
    orig2 = m.layers[1].blocks[2]
    assert init.block is not orig2 and init.block.shift_size == orig2.shift_size
    assert init.block.drop_path1.drop_prob == orig2.drop_path1.drop_prob
    assert _same_state(init.block.state_dict(), orig2.state_dict())
    with torch.no_grad():
        z = torch.randn(1, 32, 8, 8)
        assert torch.equal(init.eval()(z), orig2.eval()(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert new.eval()(x).shape == m.eval()(x).shape == (2, 1000)
    new.train()
    new(x).sum().backward()
