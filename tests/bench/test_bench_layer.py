"""``python -m condense.bench.layer --models``: the arms it times are the plans it names (timing itself is
not asserted: the figures are printed, never checked against a number)."""

import csv

import torch

from condense import macs_and_params
from condense.bench import layer
from condense.pde import GlobalLayer


def _Ks(model):
    return sorted({m.config.K for m in model.modules() if isinstance(m, GlobalLayer)})


def test_model_arms_are_the_same_plan_at_each_K_and_with_the_layers_dropped():
    arms = layer.model_arms("zoo:resnet20", "50%", (3, 32, 32), Ks=(1, 3))
    assert set(arms) == {"original", "condensed", "drop", "K=1", "K=3"}
    assert _Ks(arms["condensed"]) == [5] and _Ks(arms["K=1"]) == [1] and _Ks(arms["K=3"]) == [3]
    assert _Ks(arms["drop"]) == [] and not any(m.training for a in arms.values() for m in a.modules())
    macs = {k: macs_and_params(m, (3, 32, 32))[0] for k, m in arms.items()}
    assert macs["drop"] < macs["K=1"] < macs["K=3"] < macs["condensed"] < macs["original"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the same kept blocks: K changes only what the layers do
        assert all(arms[k](x).shape == (2, 10) for k in arms)


def test_cli_models_with_Ks_writes_every_arm_and_gap(tmp_path):
    out = tmp_path / "rows.csv"
    argv = ["--models", "--only", "zoo:resnet20", "--eager-only", "--batches", "1", "--repeats", "1"]
    assert layer.main([*argv, "--model-Ks", "1", "--threads", "1", "--csv", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["mode"], r["batch"]) for r in rows] == [("zoo:resnet20 @50%", "eager", "1")]
    r = rows[0]
    for key in ("condensed", "drop", "K=1"):
        assert float(r[key]) > 0
    gap = (float(r["K=1_ms"]) - float(r["drop_ms"])) / float(r["original_ms"])
    assert abs(float(r["K=1 - drop"]) - gap) < 1e-9
