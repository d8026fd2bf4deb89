"""Width in a plan (``fit(width=...)``, ``--width``): channels pruned by Torch-Pruning before the depth plan,
budgets met as measured, ``--width auto``, save/load without pickles, ONNX, importance from the weights, and
bad input, on the CIFAR ResNet-20 (3x32x32) and ResNet-tiny."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import condense
from condense import CondenseError, zoo
from condense._width import AUTO_MAX_SHARE, REST, WidthSpec, kept_channels, least_cut_share, prune
from condense.cli import main

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return zoo.resnet20().eval()


@pytest.fixture(scope="module")
def widened(original):
    return condense.fit(original, macs="40%", input_size=SIZE, width=0.25)


@pytest.fixture(scope="module")
def saved(widened, tmp_path_factory):
    out = tmp_path_factory.mktemp("width") / "r20"
    condense.save(widened, out, spec="zoo:resnet20")
    return out


def _channels(model, path):
    return model.get_submodule(path).out_channels


def test_a_width_plan_meets_its_budget_as_measured_and_keeps_more_blocks(original, widened):
    assert widened.macs_budget == pytest.approx(0.4 * widened.macs_before)
    assert condense.macs_and_params(widened.model, SIZE) == (widened.macs_after, widened.params_after)
    assert widened.macs_after <= widened.macs_budget
    assert (widened.macs_before, widened.params_before) == condense.macs_and_params(original, SIZE)
    # every run lost a quarter of its channels (Torch-Pruning keeps floor(C * 0.75)), residual stream included
    for row, width in zip(widened.rows, (16, 32, 64)):
        assert row.width == 0.25 and row.channels == (width, width * 3 // 4)
    assert _channels(widened.model, "conv1") == 12 and _channels(widened.model, "layer3.0.conv1") == 48
    assert widened.model.fc.out_features == 10  # the classifier's outputs are never pruned
    # pruning freed MACs, so the depth plan for the same budget keeps more blocks than without width
    depth_only = condense.fit(original, macs="40%", input_size=SIZE)
    assert sum(r.m for r in widened.rows) > sum(r.m for r in depth_only.rows)
    assert widened.width.ratios == {"*": 0.25} and widened.width.history
    # a parameter budget, too
    res = condense.fit(original, params="40%", input_size=SIZE, width=0.25, layer="drop")
    assert res.params_after <= res.params_budget == pytest.approx(0.4 * res.params_before)
    assert condense.macs_and_params(res.model, SIZE)[1] == res.params_after


def test_per_run_widths_prune_only_the_runs_named(original):
    res = condense.fit(original, input_size=SIZE, width={"layer3": 0.5})  # no budget: the paper's plan after
    assert [r.channels for r in res.rows] == [(16, 16), (32, 32), (64, 32)]
    assert _channels(res.model, "conv1") == 16 and _channels(res.model, "layer3.0.conv1") == 32
    assert _channels(res.model, "layer2.0.conv1") == 32
    assert {c.m for c in res.plan.choices.values()} == {1}
    same = condense.fit(original, input_size=SIZE, width="layer3=0.5")  # the command line's form
    assert [r.channels for r in same.rows] == [r.channels for r in res.rows]


def test_channels_are_ranked_by_the_trained_weights(original):
    net = zoo.resnet20().eval()
    net.load_state_dict(original.state_dict())
    conv1, bn1, conv2 = net.layer3[1].conv1, net.layer3[1].bn1, net.layer3[1].conv2
    weak = torch.arange(16) * 4  # 16 of 64 channels made nearly zero: an L1 ranking removes exactly these
    with torch.no_grad():
        conv1.weight[weak] *= 1e-4
        bn1.weight[weak] *= 1e-4
        bn1.bias[weak] *= 1e-4
        conv2.weight[:, weak] *= 1e-4
    keep = torch.tensor([i for i in range(64) if i % 4])
    for name in ("l1", "group"):
        runs = condense.find_runs(net, SIZE).runs
        pruned, record = prune(net, SIZE, WidthSpec({"layer3": 0.25}, name), runs)
        assert record.importance == name
        block = pruned.layer3[1]  # the channels of conv1 -> bn1 -> conv2 kept are exactly the strong ones
        torch.testing.assert_close(block.bn1.weight, bn1.weight[keep], rtol=0, atol=0)
        torch.testing.assert_close(block.bn1.running_mean, bn1.running_mean[keep], rtol=0, atol=0)
        assert block.conv1.out_channels == block.conv2.in_channels == 48
    assert conv1.out_channels == 64  # the model given is not changed


def test_save_load_round_trip_without_pickles(widened, saved, monkeypatch):
    meta = json.loads((saved / "condensed.json").read_text())
    assert meta["width"]["ratios"] == {"*": 0.25} and meta["width"]["importance"] == "l1"
    assert meta["width"]["channels"]["layer3"] == [64, 48] and meta["width"]["history"]
    assert sorted(p.name for p in saved.iterdir() if not p.name.startswith(".")) == [
        "condensed.json",
        "model.safetensors",
    ]

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = condense.load(saved)
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), widened.model.eval()(x), rtol=0, atol=0)
    assert condense.macs_and_params(loaded, SIZE) == (widened.macs_after, widened.params_after)


def _edited(saved, tmp_path, edit):
    import shutil

    out = tmp_path / "edited"
    shutil.copytree(saved, out)
    meta = json.loads((out / "condensed.json").read_text())
    edit(meta["width"])
    (out / "condensed.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: w["history"][0].__setitem__(0, "layer9.conv"), "does not have"),
        (lambda w: w["history"][0].__setitem__(2, [10_000]), "does not fit"),
        (lambda w: w.__setitem__("ratios", {"*": 1.5}), "field 'width'"),
        (lambda w: w.__setitem__("history", "all"), "field 'width'"),
    ],
)
def test_a_damaged_width_record_is_a_one_line_error(saved, tmp_path, edit, message):
    out = _edited(saved, tmp_path, edit)
    with pytest.raises(CondenseError, match=message) as err:
        condense.load(out)
    assert "\n" not in str(err.value)


def test_a_width_plan_exports_to_onnx(saved, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from condense._export import export_onnx

    report = export_onnx(saved, tmp_path / "w.onnx")
    assert report.checked and report.max_abs_diff <= 1e-4 and report.reference_max_abs > 0


@pytest.mark.parametrize("budget, fraction", [(dict(macs="40%"), 0.4), (dict(params="30%"), 0.3)])
def test_width_auto_meets_the_budget_with_depth_and_width_together(original, budget, fraction):
    res = condense.fit(original, input_size=SIZE, width="auto", **budget)
    macs, params = condense.macs_and_params(res.model, SIZE)
    assert (macs, params) == (res.macs_after, res.params_after)
    assert macs <= (res.macs_budget or float("inf")) and params <= (res.params_budget or float("inf"))
    # one share of every channel group (Torch-Pruning's uniform pruning), and blocks removed too
    assert set(res.width.ratios) == {REST} and 0 < res.width.ratios[REST] <= AUTO_MAX_SHARE
    assert sum(r.m for r in res.rows) < sum(r.r for r in res.rows)
    tried = res.width.auto
    # depth takes the least cut, at most one block out of every run, and width the rest: the first state is
    # the share that meets the budget with one block out of every run, (1 - s)^2 (1 - cut / total) = fraction
    assert all(r.r - r.m <= 1 for r in res.rows)
    found = condense.find_runs(original, SIZE)
    figure = "macs" if "macs" in budget else "params"
    total = found.total_macs if figure == "macs" else found.total_params
    cut = sum(getattr(run, figure)[-1] for run in found.runs)
    assert tried[0]["ratios"][REST] == pytest.approx(1 - (fraction / (1 - cut / total)) ** 0.5, abs=1e-6)
    feasible = [t for t in tried if t["feasible"]]
    assert feasible and res.width.ratios[REST] in {t["ratios"][REST] for t in feasible}
    # the share kept is the lowest tried that met the budgets with the same blocks: no feasible state with
    # fewer channels removed keeps the same blocks (rebuilt and checked)
    kept = tuple(r.m for r in res.rows)
    for t in feasible:
        if t["ratios"][REST] < res.width.ratios[REST]:
            other = condense.fit(original, input_size=SIZE, width=t["ratios"][REST], **budget)
            assert tuple(r.m for r in other.rows) != kept


def test_width_auto_below_every_reachable_plan_is_a_budget_error(original):
    with pytest.raises(condense.BudgetError, match="also with 0.75 of every channel group removed"):
        condense.fit(original, input_size=SIZE, width="auto", macs="1%")


@pytest.mark.parametrize("budget", [dict(macs="50%"), dict(params="30%")])
def test_width_channels_meets_the_budget_with_every_block_kept(original, budget):
    res = condense.fit(original, input_size=SIZE, width="channels", **budget)
    macs, params = condense.macs_and_params(res.model, SIZE)
    assert (macs, params) == (res.macs_after, res.params_after)
    assert macs <= (res.macs_budget or float("inf")) and params <= (res.params_budget or float("inf"))
    assert all(r.m == r.r for r in res.rows) and not res.plan.choices and "every block kept" in res.message
    share = res.width.ratios[REST]
    assert 0 < share <= AUTO_MAX_SHARE
    # the least share that meets it: one step less (by the last bisection) misses the budget
    less = condense.fit(original, input_size=SIZE, width=share - 1 / 64, **budget)
    assert any(r.m < r.r for r in less.rows)


def test_width_channels_that_cannot_meet_the_budget_is_a_budget_error(original):
    with pytest.raises(condense.BudgetError, match="channels alone do not meet the budget"):
        condense.fit(original, input_size=SIZE, width="channels", macs="5%")


HARD = '''
import torch
from torch import nn


class HardCoded(nn.Module):
    """A run of three conv blocks, and a head that reshapes to a hard-coded channel count."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                      for _ in range(3)])
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(x.reshape(x.shape[0], 8 * 8 * 8))


def hard():
    return HardCoded()
'''


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width", "1.5"], "width 1.5 is not a share of channels to remove in [0, 1)"),
        (["--width", "-1"], "width -1.0 is not a share of channels to remove in [0, 1)"),
        (["--width", "half"], "width 'half' is not a share"),
        (["--width", "layer9=0.5"], "width names 'layer9', which is not a run"),
        (["--width", "auto"], "--width auto chooses the widths for a budget, and none is given"),
        (["--width", "0.25", "--width-multiple", "0"], "width multiple 0 is not a whole number >= 1"),
        (["--budget", "50%", "--width-multiple", "16"], "--width-multiple applies to pruned channels"),
    ],
)
def test_bad_widths_are_one_line_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["zoo:resnet_tiny", *argv, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_width_on_a_model_torch_pruning_cannot_prune_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "hard.py").write_text(HARD)
    spec = f"{tmp_path / 'hard.py'}:hard"
    out = tmp_path / "out"
    assert main([spec, "--input-size", "3x8x8", "--width", "0.5", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "Torch-Pruning could not prune HardCoded" in err and "without --width" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    assert main([spec, "--input-size", "3x8x8", "--dry-run"]) == 0  # depth alone works on it


def test_cli_width_plan_saves_and_loads(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert (
        main(
            [
                "zoo:resnet_tiny",
                "--budget",
                "60%",
                "--width",
                "0.25",
                "--width-importance",
                "group",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["width"]["importance"] == "group" and printed["macs_after"] <= printed["macs_budget"]
    assert all(r["channels"][1] < r["channels"][0] for r in printed["runs"])
    model = condense.load(out)
    assert condense.macs_and_params(model, SIZE)[0] == printed["macs_after"]


def test_a_width_of_zero_is_no_pruning(original):
    res = condense.fit(original, macs="50%", input_size=SIZE, width=0)
    assert res.width is None and _channels(res.model, "conv1") == 16
    assert isinstance(res.model.fc, nn.Linear)


def test_a_frozen_model_is_pruned_too(original):
    frozen = copy.deepcopy(original)
    for p in frozen.parameters():
        p.requires_grad_(False)  # as train() leaves a teacher
    res = condense.fit(frozen, macs="50%", input_size=SIZE, width=0.25)
    assert res.width is not None and _channels(res.model, "conv1") < 16


def test_least_cut_share_leaves_width_out_when_one_block_a_run_meets_the_budget():
    runs = [SimpleNamespace(blocks=("a", "b", "c"), macs=(10, 10, 10)), SimpleNamespace(blocks=("d",), macs=(40,))]
    # one block out of the first run (the single-block run cannot lose one): 90 of 100 MACs left
    assert least_cut_share(runs, 100, 0.95) == 0.0
    assert least_cut_share(runs, 100, 0.9) == 0.0
    assert least_cut_share(runs, 100, 0.4) == pytest.approx(1 - (0.4 / 0.9) ** 0.5)
    # figures unknown (a model fvcore cannot count per block): the cut split evenly, (1 - s)^2 = sqrt(fraction)
    unknown = [SimpleNamespace(blocks=("a", "b"), macs=(None, None))]
    assert least_cut_share(unknown, 100, 0.4) == pytest.approx(1 - 0.4**0.25)


# --- channel counts in multiples (--width-multiple) -----------------------------------------------------------


@pytest.mark.parametrize(
    "channels, share, multiple, kept",
    [
        (64, 0.3, 1, 44),  # Torch-Pruning's own count: int(64 * 0.7)
        (64, 0.3, 16, 48),  # 44.8 -> the nearest multiple of 16
        (64, 0.13, 16, 48),  # 55.7 -> 48
        (64, 0.1, 16, 64),  # 57.6 -> 64: every channel stays
        (64, 0.9, 16, 16),  # never under one multiple
        (32, 0.3, 16, 16),  # 22.4 -> 16
        (16, 0.3, 16, 11),  # a group of no more than the multiple: as without it
        (64, 0.0, 16, 64),
    ],
)
def test_kept_channels_rounds_to_the_nearest_multiple(channels, share, multiple, kept):
    assert kept_channels(channels, share, multiple) == kept


def test_a_width_multiple_keeps_every_pruned_group_at_multiples(original, tmp_path):
    res = condense.fit(original, macs="40%", input_size=SIZE, width=0.3, width_multiple=16, layer="drop")
    # layer1 (16 channels) keeps what the share leaves; the wider runs keep multiples of 16
    assert dict(res.width.channels) == {"layer1": (16, 11), "layer2": (32, 16), "layer3": (64, 48)}
    for name, m in res.model.named_modules():
        if isinstance(m, nn.Conv2d) and m.out_channels > 16:
            assert m.out_channels % 16 == 0, (name, m.out_channels)
    plain = condense.fit(original, macs="40%", input_size=SIZE, width=0.3, layer="drop")
    assert dict(plain.width.channels)["layer2"] == (32, 22)  # without it: Torch-Pruning's count
    assert res.macs_after <= res.macs_budget
    assert condense.macs_and_params(res.model, SIZE) == (res.macs_after, res.params_after)
    assert res.width.multiple == 16 and "multiples of 16" in res.message
    # recorded, and rebuilt from the record without pickles
    out = tmp_path / "m16"
    condense.save(res, out, spec="zoo:resnet20")
    meta = json.loads((out / "condensed.json").read_text())
    assert meta["width"]["multiple"] == 16 and meta["width"]["channels"]["layer2"] == [32, 16]
    loaded = condense.load(out)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), res.model.eval()(x), rtol=0, atol=0)
    assert "multiple" not in plain.width.to_dict()  # records without it read as before


@pytest.mark.parametrize("width", ["auto", "channels"])
def test_width_auto_and_channels_meet_the_budget_in_multiples(original, width):
    res = condense.fit(original, macs="30%", input_size=SIZE, width=width, width_multiple=16, layer="drop")
    assert res.macs_after <= res.macs_budget == pytest.approx(0.3 * res.macs_before)
    assert condense.macs_and_params(res.model, SIZE)[0] == res.macs_after
    for path, (before, after) in res.width.channels.items():
        assert after <= before and (before <= 16 or after % 16 == 0), (path, before, after)
    if width == "channels":
        assert all(r.m == r.r for r in res.rows)


@pytest.mark.parametrize("multiple", [0, -16, 1.5, True, "16"])
def test_a_bad_width_multiple_is_a_config_error(original, multiple):
    with pytest.raises(CondenseError, match="width multiple") as err:
        condense.fit(original, macs="50%", input_size=SIZE, width=0.25, width_multiple=multiple)
    assert "\n" not in str(err.value)


def test_a_damaged_width_multiple_is_a_one_line_error(saved, tmp_path):
    out = _edited(saved, tmp_path, lambda w: w.__setitem__("multiple", 0))
    with pytest.raises(CondenseError, match="field 'width'") as err:
        condense.load(out)
    assert "\n" not in str(err.value)
