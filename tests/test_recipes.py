"""Recipes: every file in recipes/ loads and validates; footprints (a dry run, nothing trained) land near the
paper's figures; bad recipe files are one-line CondenseErrors naming the file and the key.

Tolerances as in test_zoo.py: 5% for the original models (the paper's figures are rounded and counted with
thop), 12% for condensed models (thop counts nothing for the Global layer's elementwise update; several
small models are inferred). Known gaps are listed in GAPS and checked only for direction.
"""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from condense import CondenseError
from condense._recipes import (Recipe, footprint, footprint_table, list_recipes, load_recipe, recipes_dir,
                               run_recipe)

RECIPES = sorted(recipes_dir().glob("*.yaml"))
BASE_TOL = 0.05
CONDENSED_TOL = 0.12

# recipe -> why its condensed model does not land near the paper's figure (checked: smaller than the original)
GAPS = {
    "cifar10_resnet32": "the paper's Resnet-Global has a 4th stage ResNet-32 lacks (see *_global_4stage)",
    "cifar100_resnet32": "as cifar10_resnet32",
    "cifar10_resnet56": "the paper's m=2 Resnet-Global has a 4th stage ResNet-56 lacks",
    "cifar100_resnet56": "as cifar10_resnet56",
    "mnist_resnet": "the paper replaces all 6 blocks (m=0); condense keeps m >= 1",
    "cifar10_densenet_bc": "the paper's Densenet-Global is another network (8 dense layers + a Global layer after "
                           "the first two transitions); condense replaces the last 8 layers of each block",
    "cifar100_densenet_bc": "as cifar10_densenet_bc",
    "imagenet_mobilenetv2": "the paper's Global variants are not specified beyond 'one Global layer per resolution'",
    "imagenet_mobilenetv3": "as imagenet_mobilenetv2",
    "imagenet_efficientnet_b0": "as imagenet_mobilenetv2",
}


def _close(measured, paper, tol):
    return abs(measured - paper) <= tol * paper


def test_the_papers_experiments_are_all_there():
    names = {p.stem for p in RECIPES}
    for needed in ("mnist_resnet", "mnist_resnet_small", "mnist_fig2_cnn", "mnist_fig2_residual", "mnist_fig2_pde",
                   "cifar10_resnet32", "cifar100_resnet32", "cifar10_resnet56", "cifar10_densenet_bc",
                   "cifar10_wrn_40_4", "cifar10_resnet_tiny", "cifar10_resnet_tiny_global", "cifar10_wrn_tiny",
                   "cifar10_wrn_tiny_global", "cifar100_resnet_global_same_budget",
                   "cifar100_wrn_global_same_budget", "imagenet_mobilenetv2", "imagenet_mobilenetv3",
                   "imagenet_efficientnet_b0"):
        assert needed in names
    assert [r.name for r in list_recipes()] == [p.stem for p in RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_validates(path):
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.name == path.stem and r.title
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.title = "x"  # type: ignore[misc]
    assert r.model.spec.split(":")[0] in ("zoo", "timm")
    assert r.dataset in ("mnist", "cifar10", "cifar100", "imagefolder")
    assert r.paper.source and (r.paper.baseline or r.paper.condensed)
    assert r.notes
    c, h, w = r.model.input_size
    assert (c, h, w) == {"mnist": (1, 28, 28), "imagefolder": (3, 224, 224)}.get(r.dataset, (3, 32, 32))
    assert r.model.num_classes == {"mnist": 10, "cifar10": 10, "cifar100": 100, "imagefolder": 1000}[r.dataset]
    assert all(0 < m <= r.train.epochs for m in r.train.milestones)
    if r.dataset in ("mnist", "cifar10"):  # shipped with the project: ../shared/data from the repo root
        assert Path(r.data_spec.partition(":")[2]).is_file(), r.data_spec
    if r.dataset.startswith("cifar"):
        assert (r.train.epochs, r.train.milestones, r.train.lr, r.train.optimizer) == (300, (150, 225), 0.1, "sgd")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_footprint_is_measured_next_to_the_papers_figures(path):
    fp = footprint(path)
    r = load_recipe(path)
    assert fp["params"] > 0 and fp["macs"] > 0
    if r.plan.kind == "none":
        assert fp["params_condensed"] is None and fp["macs_condensed"] is None
    else:
        assert fp["params_condensed"] < fp["params"] and fp["macs_condensed"] < fp["macs"]
    base, cond = r.paper.baseline, r.paper.condensed
    if base is not None:
        assert _close(fp["params"], base.params, BASE_TOL if base.params > 524 else 0), fp
        if base.macs is not None:
            assert _close(fp["macs"], base.macs, BASE_TOL), fp
    if cond is not None and r.plan.kind != "none" and r.name not in GAPS:
        assert _close(fp["params_condensed"], cond.params, CONDENSED_TOL), fp
        assert _close(fp["macs_condensed"], cond.macs, CONDENSED_TOL), fp


def test_footprint_table_is_a_dataframe_indexed_by_recipe():
    df = footprint_table([recipes_dir() / "mnist_fig2_cnn.yaml", recipes_dir() / "mnist_fig2_pde.yaml"])
    assert list(df.index) == ["mnist_fig2_cnn", "mnist_fig2_pde"]
    assert {"params", "macs", "paper_params", "paper_acc", "params_condensed", "macs_condensed"} <= set(df.columns)
    assert df.loc["mnist_fig2_pde", "params"] == 524 and df.loc["mnist_fig2_pde", "paper_acc"] == 95.03


def test_relative_data_paths_resolve_against_the_directory_that_contains_recipes(tmp_path):
    src = (recipes_dir() / "mnist_fig2_cnn.yaml").read_text()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "x.yaml").write_text(src)
    r = load_recipe(tmp_path / "recipes" / "x.yaml")
    assert r.root == tmp_path
    assert r.data_spec == f"mnist:{(tmp_path / '../shared/data/mnist.npz').resolve()}"


def test_run_recipe_trains_through_condense_train(tmp_path):
    with pytest.warns(UserWarning, match="not applied by condense.train: grad_clip_norm=5.0"):
        res = run_recipe(recipes_dir() / "mnist_fig2_cnn.yaml", epochs=1, out_dir=tmp_path, limit_train=256,
                         progress=False)
    assert 0 <= res.metrics["test_acc"] <= 1 and res.metrics["params"] == 524
    assert (tmp_path / "recipe.json").is_file()


# --- invalid files --------------------------------------------------------------------------------------

GOOD = """
title: t
model: {spec: zoo:resnet_tiny, num_classes: 10, input_size: [3, 32, 32]}
plan: default
data: cifar10:../shared/data/cifar10-jpeg.tar.gz
train: {lr: 0.1, epochs: 300, milestones: [150, 225]}
paper: {source: Table 3, baseline: {accuracy: 80.76, params: 13K, macs: 3.42M}}
"""


def _write(tmp_path, text, name="bad.yaml"):
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def test_the_minimal_good_file_loads(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD, "good.yaml"))
    assert r.paper.baseline.params == 13e3 and r.train.schedule == "step" and r.plan.kind == "default"


@pytest.mark.parametrize("change, needle", [
    (("title: t", "title: t\ncolour: red"), "colour: unknown key"),
    (("lr: 0.1", "lr: 0.1, lr_decay: cos"), "train.lr_decay: unknown key"),
    (("lr: 0.1", "lr: -1"), "train.lr: must be a number"),
    (("epochs: 300", "epochs: 100"), "train.milestones: must be an integer in [1, 100]"),
    (("plan: default", "plan: fancy"), "plan: 'fancy' is not a plan"),
    (("plan: default", "plan: {m: 2, macs: 3M}"), "plan.m: a budget"),
    (("plan: default", "plan: {m: 0}"), "plan.m: must be an integer >= 1"),
    (("plan: default", "plan: {K: 5, options: {velocity: warp}}"), "plan.options: velocity='warp'"),
    (("plan: default", "plan: {layer: magic}"), "plan.layer: 'magic' is not one of"),
    (("plan: default", "plan: {macs: lots}"), "plan.macs: bad budget"),
    (("zoo:resnet_tiny", "zoo:resnet_tinyy"), "did you mean resnet_tiny"),
    (("zoo:resnet_tiny", "resnet.py"), "model.spec:"),
    (("input_size: [3, 32, 32]", "input_size: [3, 32]"), "model.input_size:"),
    (("num_classes: 10", "num_classes: ten"), "model.num_classes: must be an integer"),
    (("data: cifar10:", "data: svhn:"), "data: 'svhn:"),
    (("params: 13K", "params: 13Q"), "paper.baseline.params: '13Q' is not a count"),
    (("params: 13K", "params: 50%"), "paper.baseline.params: '50%' is a percentage"),
    (("accuracy: 80.76", "accuracy: 180"), "paper.baseline.accuracy: must be a number in [0, 100]"),
    (("train: {", "train: {bogus: 1, "), "train.bogus: unknown key"),
    (("model: {", "model: {1: 3, "), "model.1: unknown key"),
    (("title: t", "title: t\ndistill: {teacher: baseline, alpha: 2}"), "distill.alpha: must be a number"),
])
def test_bad_values_and_unknown_keys_are_one_line_errors_naming_file_and_key(tmp_path, change, needle):
    old, new = change
    assert old in GOOD
    f = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(CondenseError) as err:
        load_recipe(f)
    text = str(err.value)
    assert "\n" not in text and text.startswith("bad.yaml: ") and needle in text, text


@pytest.mark.parametrize("text, needle", [
    ("model: [unclosed\n", "not valid YAML at line"),
    ("- a\n- b\n", "must be a mapping"),
    ("title: t\n", "model: missing"),
    ("", "model: missing"),
])
def test_broken_files_are_one_line_errors(tmp_path, text, needle):
    with pytest.raises(CondenseError) as err:
        load_recipe(_write(tmp_path, text))
    assert "\n" not in str(err.value) and needle in str(err.value), str(err.value)


def test_missing_file_and_unknown_run_path(tmp_path):
    with pytest.raises(CondenseError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    f = _write(tmp_path, GOOD.replace("plan: default", "plan: {m: {layer9: 1}}"))
    with pytest.raises(CondenseError, match=r"bad.yaml: plan.m: no run at 'layer9' \(runs of zoo:resnet_tiny: layer1"):
        footprint(f)
