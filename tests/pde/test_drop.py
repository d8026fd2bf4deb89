"""Block dropping as a layer type (``layer="drop"``): fit to budgets, save/load, count, ONNX and
torch.export, the search space and the supernet, bad input, and the CLI, on the CIFAR ResNet-20."""

import copy
import json

import pytest
import torch
from torch import nn

import condense
from condense import CondenseError, DropLayer, PlanCosts, find_runs, rewrite, zoo
from condense.cli import main
from condense.graph._grow import GrowingTail

SIZE = (3, 32, 32)
ATOL = 1e-4


def _run_blocks(result, path):
    """The children of run ``path``'s parent (a Sequential in the CIFAR ResNet) in the condensed model."""
    return list(result.model.get_submodule(path).children())


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return zoo.resnet20().eval()


@pytest.fixture(scope="module")
def dropped(original):
    return condense.fit(original, macs="50%", input_size=SIZE, layer="drop")


@pytest.fixture(scope="module")
def saved(dropped, tmp_path_factory):
    out = tmp_path_factory.mktemp("drop") / "r20"
    condense.save(dropped, out, spec="zoo:resnet20")
    return out


def test_fit_to_a_mac_budget_deletes_the_blocks_and_meets_it_as_measured(original, dropped):
    assert dropped.plan.choices and dropped.macs_after <= dropped.macs_budget
    assert condense.macs_and_params(dropped.model, SIZE) == (dropped.macs_after, dropped.params_after)
    runs = {r.path: r for r in dropped.found.runs}
    for path, choice in dropped.plan.choices.items():
        assert (choice.layer, dict(choice.options), choice.init) == ("drop", {}, "input")
        children = _run_blocks(dropped, path)
        blocks, rest = children[: choice.m], children[choice.m :]
        assert [type(b).__name__ for b in blocks] == [runs[path].block_class] * choice.m
        assert len(rest) == 1 and isinstance(rest[0], DropLayer) and not list(rest[0].parameters())
    # each run is its m kept blocks (the original's weights) and nothing else: the original with the blocks cut
    cut = copy.deepcopy(original)
    for path, choice in dropped.plan.choices.items():
        setattr(cut, path, nn.Sequential(*list(cut.get_submodule(path).children())[: choice.m]))
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(dropped.model.eval()(x), cut(x), rtol=0, atol=0)
    # the planner knows a drop costs nothing: its estimate is the kept blocks alone, and it is exact
    estimate = PlanCosts(original, dropped.found).estimate(
        (dropped.macs_before, dropped.params_before), dropped.plan.choices
    )
    assert estimate == (dropped.macs_after, dropped.params_after)
    for row in dropped.rows:
        assert row.macs_after == sum(runs[row.path].macs[: row.m]) and row.K is None
        assert row.params_after == sum(runs[row.path].params[: row.m])


@pytest.mark.parametrize("budget", [dict(params="40%"), dict(macs="60%", params="50%")])
def test_parameter_budgets_are_met_as_measured(original, budget):
    res = condense.fit(original, input_size=SIZE, layer="drop", **budget)
    assert res.plan.choices and all(c.layer == "drop" for c in res.plan.choices.values())
    assert condense.macs_and_params(res.model, SIZE) == (res.macs_after, res.params_after)
    assert res.params_after <= res.params_budget
    assert res.macs_budget is None or res.macs_after <= res.macs_budget


def test_a_latency_budget_is_met_as_measured(original):
    res = condense.fit(original, input_size=SIZE, layer="drop", latency="75%")
    assert res.plan.choices and all(c.layer == "drop" for c in res.plan.choices.values())
    assert res.latency is not None and res.latency.after_ms <= res.latency.budget_ms


def test_save_records_drop_and_load_rebuilds_it_with_equal_outputs(dropped, saved):
    meta = json.loads((saved / "condensed.json").read_text())
    assert {c["layer"] for c in meta["plan"].values()} == {"drop"}
    assert all(c["options"] == {} for c in meta["plan"].values())
    assert not [p.name for p in saved.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin")]  # no pickles
    again = condense.load(saved).eval()
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), dropped.model.eval()(x), rtol=0, atol=0)
    assert sum(isinstance(m, DropLayer) for m in again.modules()) == len(dropped.plan.choices)


def test_count_shows_zero_macs_and_params_for_the_dropped_blocks(dropped, saved):
    df = condense.count(condense.load(saved), SIZE)
    runs = {r.path: r for r in dropped.found.runs}
    for path, choice in dropped.plan.choices.items():
        inserted = runs[path].blocks[choice.m]
        assert df.loc[inserted, "type"] == "DropLayer"
        assert df.loc[inserted, "macs"] == 0 and df.loc[inserted, "params"] == 0
        assert df.loc[path, "macs"] == sum(runs[path].macs[: choice.m])
    assert df.attrs["macs"] == dropped.macs_after


def test_onnx_and_torch_export_match_and_carry_no_dropped_convolution(dropped, saved, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from condense._export import export_onnx, export_program

    path = tmp_path / "drop.onnx"
    report = export_onnx(saved, path)
    assert report.checked and report.max_abs_diff <= ATOL and report.global_layers == 0
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert convs == sum(isinstance(m, nn.Conv2d) for m in dropped.model.modules())
    program = export_program(saved)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), condense.load(saved).eval()(x), rtol=ATOL, atol=ATOL)


def test_a_growing_run_keeps_its_projection_only():
    torch.manual_seed(0)
    model = zoo.densenet_bc(depth=22).eval()  # 3 dense blocks of 3 bottleneck layers
    res = condense.fit(model, macs="75%", input_size=SIZE, layer="drop")
    assert res.plan.choices and res.macs_after <= res.macs_budget
    assert condense.macs_and_params(res.model, SIZE) == (res.macs_after, res.params_after)
    tails = [m for m in res.model.modules() if isinstance(m, GrowingTail)]
    assert len(tails) == len(res.plan.choices)
    for tail in tails:  # the drop layer in place of the PDE layer: only the 1x1 projection has weights
        assert isinstance(tail.layer, DropLayer)
        assert sum(p.numel() for p in tail.parameters()) == sum(p.numel() for p in tail.project.parameters())
    with torch.no_grad():
        assert res.model(torch.randn(2, *SIZE)).shape == (2, 10)


def test_the_search_space_chooses_drop_per_run_and_its_plans_build(original, capsys):
    from search import search_main
    from search._space import build_space

    found = find_runs(original, SIZE)
    space = build_space(found)
    assert "drop" in space.layers and "drop" not in space.params[0].distribution.choices
    names = {p.name for p in space.params}
    assert {f"drop[{r.path}]" for r in found.runs} <= names
    params = space.params_of_plan({r.path: 1 for r in found.runs}, layer="global", K=2)
    params[f"drop[{found.runs[0].path}]"] = True
    plan = space.plan(params)
    layers = {path: c.layer for path, c in plan.choices.items()}
    assert layers == {r.path: "drop" if i == 0 else "global" for i, r in enumerate(found.runs)}
    assert plan.choices[found.runs[0].path].options == {}
    eff = space.effective(params)
    assert eff["layer"] == "global" and eff[f"drop[{found.runs[0].path}]"] is True
    model = rewrite(original, found, plan.choices).module.eval()
    assert isinstance(model.get_submodule(found.runs[0].blocks[1]), DropLayer)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, *SIZE))).all()
    # every run dropped: K and the layer options do not apply
    all_drop = space.params_of_plan({r.path: 1 for r in found.runs}, layer="drop")
    assert {c.layer for c in space.plan(all_drop).choices.values()} == {"drop"}
    assert space.effective(all_drop)["K"] is None
    only = build_space(found, layers=["drop"])
    assert not any(p.name.startswith("drop[") for p in only.params)
    assert {
        c.layer for c in only.plan(only.params_of_plan({found.runs[1].path: 2}, layer="drop")).choices.values()
    } == {"drop"}

    assert search_main(["zoo:resnet20", "--show-space"]) == 0
    shown = capsys.readouterr().out
    assert "drop" in shown and f"drop[{found.runs[0].path}]" in shown


def test_the_supernet_runs_and_extracts_drop_paths(original):
    import search

    net = search.supernet(original, input_size=SIZE, layers=["global", "drop"], K=(1, 2))
    found = find_runs(original, SIZE)
    params = net.space.params_of_plan({r.path: 1 for r in found.runs}, layer="global", K=2)
    params[f"drop[{found.runs[1].path}]"] = True
    plan = net.space.plan(params)
    net.select(plan).eval()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        path_out = net(x)
        alone = net.extract(plan).eval()
        torch.testing.assert_close(alone(x), path_out, rtol=ATOL, atol=ATOL)
    assert isinstance(alone.get_submodule(found.runs[1].blocks[1]), DropLayer)
    assert not isinstance(alone.get_submodule(found.runs[0].blocks[1]), DropLayer)


@pytest.mark.parametrize(
    "options,needle",
    [
        (dict(K=3), "got K"),
        (dict(fill_K=True), "fill_K"),
        (dict(init="block"), "init"),
        (dict(velocity="zero"), "velocity"),
    ],
)
def test_options_given_with_drop_are_a_one_line_error(original, options, needle):
    with pytest.raises(CondenseError, match="takes no options") as info:
        condense.fit(original, macs="50%", input_size=SIZE, layer="drop", **options)
    assert needle in str(info.value) and "\n" not in str(info.value) and info.value.hint
    with pytest.raises(CondenseError, match="takes no options"):
        condense.create_layer("drop", 8, K=3)


def test_cli_drops_saves_and_counts(original, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    weights = tmp_path / "r20.pth"  # with a checkpoint, preserve is on by default: nothing to preserve for drop
    torch.save(original.state_dict(), weights)
    assert (
        main(["zoo:resnet20", "--budget", "50%", "--layer", "drop", "--checkpoint", str(weights), "-o", str(out)]) == 0
    )
    meta = json.loads((out / "condensed.json").read_text())
    assert meta["counts"]["macs_after"] <= 0.5 * meta["counts"]["macs_before"]
    assert {c["layer"] for c in meta["plan"].values()} == {"drop"}
    capsys.readouterr()
    assert main(["count", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "DropLayer" in shown
    x = torch.randn(2, *SIZE)
    with torch.no_grad():  # the kept blocks carry the checkpoint's weights
        cut = copy.deepcopy(original)
        for path, choice in meta["plan"].items():
            setattr(cut, path, nn.Sequential(*list(cut.get_submodule(path).children())[: choice["m"]]))
        torch.testing.assert_close(condense.load(out).eval()(x), cut(x), rtol=0, atol=0)
    monkeypatch.chdir(tmp_path)
    assert main(["zoo:resnet20", "--budget", "50%", "--layer", "drop", "--K", "3", "-o", "bad"]) == 1
    err = capsys.readouterr().err.strip()
    assert "takes no options" in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()
