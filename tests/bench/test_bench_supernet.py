"""``python -m condense.bench.supernet``: the rank-fidelity benchmark runs end to end on tiny data, its
ground truth is the real training path, and a second run continues from rank.json without training again."""

import json

import pytest
import torch

import condense
from condense.bench import supernet as bench
from conftest import tiny_mnist
from search import build_plan


def test_rank_benchmark_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    tiny_mnist(tmp_path / "m.npz", n_train=96, n_test=32)
    argv = [
        "zoo:resnet_tiny",
        "--data",
        f"mnist:{tmp_path / 'm.npz'}",
        "--input-size",
        "3x16x16",
        "--budget",
        "90%",
        "--plans",
        "3",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--supernet-epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
        "-o",
        str(tmp_path / "rb"),
    ]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "Kendall tau over 3 plans" in out and "supernet (1 epochs)" in out
    state = json.loads((tmp_path / "rb" / "rank.json").read_text())
    plans, results = state["plans"], state["results"]
    assert len(plans) == 3 and all(set(results[p["label"]]) >= {"seed0", "seed1", "proxy", "supernet"} for p in plans)
    s = state["summary"]
    assert s["random_tau_sd"] == pytest.approx(bench.random_tau_sd(3)) and -1 <= s["supernet"]["tau_mean"] <= 1
    # the ground truth is what condense.train gives for that plan and seed
    bundle = condense.load_data(f"mnist:{tmp_path / 'm.npz'}", input_size="3x16x16")
    torch.manual_seed(0)
    original = condense.build_model("zoo:resnet_tiny", num_classes=10)
    found = condense.find_runs(original, (3, 16, 16))
    plan = condense.Plan.from_dict(plans[0]["plan"])
    model = build_plan(original, found, plan, 1)
    acc = condense.train.train(
        model,
        bundle,
        condense.TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=1, max_steps_per_epoch=2),
        progress=False,
        device="cpu",
    ).metrics["test_acc"]
    assert results[plans[0]["label"]]["seed1"] == pytest.approx(acc)
    # every plan fits the budget as measured
    macs0 = condense.macs_and_params(original, (3, 16, 16))[0]
    for p in plans:
        m = build_plan(original, found, condense.Plan.from_dict(p["plan"]), 0)
        assert condense.macs_and_params(m, (3, 16, 16))[0] <= 0.9 * macs0
    # run again: nothing is trained, the same figures come back
    monkeypatch.setattr(condense.train, "train", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(condense, "train_supernet", lambda *a, **k: pytest.fail("supernet trained again"))
    assert bench.main(argv) == 0
    again = json.loads((tmp_path / "rb" / "rank.json").read_text())
    assert again["results"] == results
    # other options on the same folder are refused (one line, exit 1)
    assert bench.main(argv[:-2] + ["--seeds", "3", "-o", str(tmp_path / "rb")]) == 1
    assert "other options" in capsys.readouterr().err
