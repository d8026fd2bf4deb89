"""find_runs: runs of repeated same-resolution blocks, found through the dataflow graph; changes nothing."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch import nn

from condense._count import count_module
from condense._errors import CondenseError
from condense.graph import FindResult, Run, find_runs, register_leaf_module, trace

SIZE = (3, 64, 64)


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def _runs(result: FindResult) -> list[tuple[str, int]]:
    return [(r.path, r.r) for r in result.runs]


@pytest.fixture(scope="module")
def resnet18():
    return _model("resnet18")


@pytest.fixture(scope="module")
def resnet18_found(resnet18):
    return find_runs(resnet18, SIZE)  # counted: per-block MACs and model totals


# --- timm models: exact runs --------------------------------------------------------------------------


def test_resnet18_runs(resnet18_found):
    f = resnet18_found
    assert _runs(f) == [("layer1", 2), ("layer2", 2), ("layer3", 2), ("layer4", 2)]
    run = f.run("layer2")
    assert run.blocks == ("layer2.0", "layer2.1")
    assert run.block_class == "BasicBlock" and run.kind == "repeat" and run.layout == "NCHW"
    assert run.input_shape == run.output_shape == (128, 8, 8)
    assert f.run("layer1").input_shape == (64, 16, 16)
    assert run.kernel_size == 3
    assert run.parent_class == "Sequential" and run.in_sequential


def test_resnet18_counts(resnet18, resnet18_found):
    f = resnet18_found
    ref_macs, ref_params = count_module(resnet18, torch.randn(1, *SIZE))
    assert f.total_macs == ref_macs and f.total_params == ref_params
    run = f.run("layer2")
    assert run.params == (
        sum(p.numel() for p in resnet18.layer2[0].parameters()),
        sum(p.numel() for p in resnet18.layer2[1].parameters()),
    )
    macs_rep, _ = count_module(resnet18.layer2[1], torch.randn(1, 128, 8, 8))
    assert run.macs[1] == macs_rep > 0
    assert run.macs[0] != run.macs[1]  # the anchor downsamples
    assert run.removed_macs(1) == run.macs[1] and run.removed_params(1) == run.params[1]
    assert run.removed_params(2) == 0
    assert sum(sum(r.macs) for r in f.runs) < f.total_macs
    assert "layer3: BasicBlock x2 (r=2)" in f.summary()


def test_resnet50_runs():
    f = find_runs(_model("resnet50"), SIZE, count=False)
    assert _runs(f) == [("layer1", 3), ("layer2", 4), ("layer3", 6), ("layer4", 3)]
    assert f.run("layer3").blocks[0] == "layer3.0"  # the downsampling anchor is part of the run
    assert f.run("layer1").input_shape == (256, 16, 16)
    assert all(r.macs == (None,) * r.r for r in f.runs)  # count=False
    assert f.total_macs is None


def test_efficientnet_b0_runs():
    f = find_runs(_model("efficientnet_b0"), SIZE, count=False)
    assert _runs(f) == [("blocks.1", 2), ("blocks.2", 2), ("blocks.3", 3), ("blocks.4", 3), ("blocks.5", 4)]
    assert [r.kernel_size for r in f.runs] == [3, 5, 3, 5, 5]  # the depthwise kernels
    assert f.run("blocks.5").input_shape == (192, 2, 2)
    assert {r.block_class for r in f.runs} == {"InvertedResidual"}


def test_mobilenetv2_runs():
    m = _model("mobilenetv2_100")
    f = find_runs(m, SIZE, count=False)
    expected = [(f"blocks.{i}", len(m.blocks[i])) for i in range(len(m.blocks)) if len(m.blocks[i]) > 1]
    assert _runs(f) == expected == [("blocks.1", 2), ("blocks.2", 3), ("blocks.3", 4), ("blocks.4", 3), ("blocks.5", 3)]


def test_convnext_runs_below_stage():
    f = find_runs(_model("convnext_atto"), SIZE, count=False)
    # the blocks of each stage, not (downsample, blocks) one level up
    assert _runs(f) == [("stages.0.blocks", 2), ("stages.1.blocks", 2), ("stages.2.blocks", 6), ("stages.3.blocks", 2)]
    assert all(r.kernel_size == 7 and r.layout == "NCHW" for r in f.runs)


def test_regnet_custom_stage():
    m = _model("regnetx_002")
    f = find_runs(m, SIZE, count=False)
    assert _runs(f) == [("s3", 4), ("s4", 7)]  # RegStage: children b1..bN, not a Sequential
    assert f.run("s3").blocks == ("s3.b1", "s3.b2", "s3.b3", "s3.b4")
    assert f.run("s3").parent_class == "RegStage"


def test_cspnet_runs():
    m = _model("cs3darknet_s")
    f = find_runs(m, SIZE, count=False)
    expected = [(f"stages.{i}.blocks", len(s.blocks)) for i, s in enumerate(m.stages) if len(s.blocks) > 1]
    assert expected and _runs(f) == expected


def test_dla_tree_runs():
    f = find_runs(_model("dla34"), SIZE, count=False)
    # tree1 (anchor, also read by the root) -> tree2 at each level-1 tree
    assert _runs(f) == [
        ("level2", 2),
        ("level3.tree1", 2),
        ("level3.tree2", 2),
        ("level4.tree1", 2),
        ("level4.tree2", 2),
        ("level5", 2),
    ]
    assert f.run("level3.tree1").blocks == ("level3.tree1.tree1", "level3.tree1.tree2")


def test_hrnet_branch_runs():
    f = find_runs(_model("hrnet_w18_small"), SIZE, count=False)
    paths = [p for p, _ in _runs(f)]
    assert len(paths) == 9 and all(r == 2 for _, r in _runs(f))
    assert "stage2.0.branches.0" in paths and "stage4.0.branches.3" in paths
    assert f.run("stage3.0.branches.1").input_shape == (32, 8, 8)


def test_swin_channels_last_runs():
    m = _model(
        "swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16, depths=(2, 4, 2), num_heads=(1, 2, 4)
    )
    f = find_runs(m, SIZE, count=False)
    assert _runs(f) == [("layers.0.blocks", 2), ("layers.1.blocks", 4), ("layers.2.blocks", 2)]
    assert all(r.layout == "NHWC" for r in f.runs)
    assert f.run("layers.1.blocks").input_shape == (32, 8, 8)  # reported channels-first
    assert f.run("layers.1.blocks").kernel_size is None


def test_densenet_growing_runs():
    f = find_runs(_model("densenet121", block_config=(3, 4), growth_rate=8), (3, 32, 32), count=False)
    assert _runs(f) == [("features.denseblock1", 3), ("features.denseblock2", 4)]
    run = f.run("features.denseblock1")
    assert run.kind == "dense" and run.growing
    assert run.input_shape == (16, 8, 8) and run.output_shape == (16 + 3 * 8, 8, 8)
    assert run.block_channels == (16, 24, 32) and run.channels_at(2) == 32


def test_rexnet_chain_growing_runs():
    f = find_runs(_model("rexnet_100"), (3, 64, 64), count=False)
    assert f.runs and all(r.kind == "growing" for r in f.runs)
    for run in f.runs:  # each block reads what the one before returned, widening as it goes
        assert run.block_channels[0] == run.input_shape[0] and list(run.block_channels) == sorted(run.block_channels)
        assert run.output_shape[0] > run.block_channels[-1]


def test_growing_off():
    m = _model("densenet121", block_config=(3, 4), growth_rate=8)
    assert find_runs(m, (3, 32, 32), count=False, growing=False).runs == ()


# --- user models ------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.proj = nn.Conv2d(cin, c, 1, stride) if stride != 1 or cin != c else None

    def forward(self, x):
        s = x if self.proj is None else self.proj(x)
        return torch.relu(self.bn(self.conv(x))) + s


class LoopStage(nn.Module):
    """Not a Sequential: a ModuleList looped over in forward."""

    def __init__(self, cin: int, c: int, n: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(cin, c, 2)] + [Block(c, c) for _ in range(n - 1)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.s1 = LoopStage(8, 16, 3)
        self.s2 = LoopStage(16, 32, 4)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.s2(self.s1(self.stem(x)))
        return self.head(x.mean((2, 3)))


def test_user_model_custom_stage():
    f = find_runs(UserNet(), (3, 32, 32), count=False)
    assert _runs(f) == [("s1.blocks", 3), ("s2.blocks", 4)]
    assert f.run("s2.blocks").blocks == ("s2.blocks.0", "s2.blocks.1", "s2.blocks.2", "s2.blocks.3")
    assert f.run("s2.blocks").input_shape == (32, 8, 8)
    assert f.run("s1.blocks").parent_class == "ModuleList" and not f.run("s1.blocks").in_sequential


class IteratedSeqNet(UserNet):
    """A plain nn.Sequential whose children the parent calls one by one (its forward never runs)."""

    def __init__(self):
        super().__init__()
        self.s1.blocks = nn.Sequential(*self.s1.blocks)


def test_iterated_sequential_is_not_in_sequential():
    f = find_runs(IteratedSeqNet(), (3, 32, 32), count=False)
    assert f.run("s1.blocks").parent_class == "Sequential" and not f.run("s1.blocks").in_sequential


def test_example_input_tensor():
    f1 = find_runs(UserNet(), torch.randn(2, 3, 32, 32), count=False)
    f2 = find_runs(UserNet(), (3, 32, 32), example_input=torch.randn(1, 3, 32, 32), count=False)
    assert _runs(f1) == _runs(f2) == [("s1.blocks", 3), ("s2.blocks", 4)]


class NoRepeats(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_no_repeats_is_empty():
    f = find_runs(NoRepeats(), (3, 16, 16), count=False)
    assert f.runs == () and len(f) == 0
    assert "no repeated" in f.summary()
    with pytest.raises(CondenseError, match="no run at 'x'"):
        f.run("x")


def test_parameterless_repeats_ignored():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.ReLU(), nn.ReLU(), nn.Identity())
    assert find_runs(m, (3, 8, 8), count=False).runs == ()


def test_sequential_of_leaf_convs():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    f = find_runs(m, (3, 8, 8), count=False)
    assert _runs(f) == [("", 3)] and f.runs[0].blocks == ("0", "1", "2")


class CNA(nn.Module):
    """conv-norm-act, as timm's ConvNormAct."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def test_anchor_must_match_the_repeat_structure():
    # a 1x1 expansion then a depthwise 3x3: same class, but not one stage of repeats
    m = nn.Sequential(CNA(3, 8, 3), CNA(8, 32, 1), CNA(32, 32, 3, groups=32), CNA(32, 8, 1))
    assert find_runs(m, (3, 8, 8), count=False).runs == ()
    # an activation where the repeat has none
    m = nn.Sequential(CNA(3, 8, 3), CNA(8, 16, 3), CNA(16, 16, 3, act=False))
    assert find_runs(m, (3, 8, 8), count=False).runs == ()
    # a channel-changing anchor with the same structure is fine
    m = nn.Sequential(CNA(3, 8, 3), CNA(8, 16, 3), CNA(16, 16, 3), CNA(16, 16, 3))
    f = find_runs(m, (3, 8, 8), count=False)
    assert _runs(f) == [("", 3)] and f.runs[0].blocks == ("1", "2", "3")  # anchor "1" changes channels
    assert find_runs(m, (3, 8, 8), count=False, growing=False).runs == f.runs


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.body = nn.Sequential(Gate(), Gate(), Gate())

    def forward(self, x):
        return self.body(self.stem(x))


def test_untraceable_model_names_module():
    with pytest.raises(CondenseError) as info:
        find_runs(GatedNet(), (3, 8, 8), count=False)
    msg = str(info.value)
    assert "body.0" in msg and "Gate" in msg and "register_leaf_module" in msg
    assert "\n" not in msg


def test_register_leaf_module_makes_it_traceable():
    class LeafGate(Gate):
        pass

    net = GatedNet()
    net.body = nn.Sequential(LeafGate(), LeafGate(), LeafGate())
    assert register_leaf_module(LeafGate) is LeafGate
    f = find_runs(net, (3, 8, 8), count=False)
    assert _runs(f) == [("body", 3)]
    with pytest.raises(CondenseError):
        register_leaf_module(42)


def test_bad_input_size():
    with pytest.raises(CondenseError, match="does not run on an input"):
        find_runs(NoRepeats(), (5, 16, 16), count=False)
    with pytest.raises(CondenseError, match="not \\(C, H, W\\)"):
        find_runs(NoRepeats(), (16, 16), count=False)


# --- find changes nothing ---------------------------------------------------------------------------


def test_find_changes_nothing():
    m = _model("resnet18").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    params = [id(p) for p in m.parameters()]
    x = torch.randn(2, *SIZE)
    m.eval()
    with torch.no_grad():
        y0 = m(x)
    m.train()
    find_runs(m, SIZE)
    assert m.training and all(mod.training for mod in m.modules())
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in m.parameters()] == params
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), y0)


def test_trace_records_shapes_and_module_stack():
    m = _model("resnet18")
    gm = trace(m, torch.randn(1, *SIZE))
    assert gm is not m and isinstance(gm, torch.fx.GraphModule)
    nodes = {n.name: n for n in gm.graph.nodes}
    conv = nodes["layer1_1_conv1"]
    assert tuple(conv.meta["tensor_meta"].shape) == (1, 64, 16, 16)
    assert [v[0] for v in conv.meta["nn_module_stack"].values()] == ["layer1", "layer1.1", "layer1.1.conv1"]


def test_records_are_frozen(resnet18_found):
    run = resnet18_found.runs[0]
    assert isinstance(run, Run)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.path = "x"  # type: ignore[misc]
    with pytest.raises(CondenseError):
        run.removed(0)
    assert run.removed(1) == ("layer1.1",)
