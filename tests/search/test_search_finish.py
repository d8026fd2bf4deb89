"""``condense search --finish N``: which front members are fine-tuned, Kendall's tau, the files written, resume,
refusal of other options, and ``condense compare --finished``.

Runs ``zoo:resnet_tiny`` at 3x16x16 on a tiny MNIST-format npz, a few steps per trial.
"""

import itertools
import json
import math

import pandas as pd
import pytest
import torch

import condense
from conftest import tiny_mnist
from search import FinishConfig, compare_main, kendall_tau, search_main
from search._finish import pick_members


def _brute_tau(a, b):
    """tau-b from its definition: (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b))."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    conc = sum(1 for i, j in pairs if (a[i] - a[j]) * (b[i] - b[j]) > 0)
    disc = sum(1 for i, j in pairs if (a[i] - a[j]) * (b[i] - b[j]) < 0)
    n0 = len(pairs)
    ta = sum(1 for i, j in pairs if a[i] == a[j])
    tb = sum(1 for i, j in pairs if b[i] == b[j])
    return (conc - disc) / math.sqrt((n0 - ta) * (n0 - tb))


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 4, (7,), generator=gen).tolist()
        b = torch.randint(0, 4, (7,), generator=gen).tolist()
        if len(set(a)) > 1 and len(set(b)) > 1:
            assert kendall_tau(a, b) == pytest.approx(_brute_tau(a, b))
    assert math.isnan(kendall_tau([1, 1], [2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


def test_pick_members_spreads_over_macs_and_keeps_the_most_accurate():
    front = pd.DataFrame(
        {"trial": range(10), "macs": [10 * (i + 1) for i in range(10)], "accuracy": [0.1 + 0.05 * i for i in range(10)]}
    )
    assert pick_members(front, 20) == list(range(10))
    assert pick_members(front, 3) == [0, 4, 9]  # both ends and the middle (round(4.5) == 4)
    assert pick_members(front, 1) == [9]  # one member: the most accurate
    # the most accurate member in the middle replaces the nearest spread pick
    front.loc[6, "accuracy"] = 0.99
    picked = pick_members(front, 3)
    assert 6 in picked and 0 in picked and len(picked) == 3


def test_finish_config_is_checked():
    with pytest.raises(condense.ConfigError, match="top"):
        FinishConfig(top=0)
    with pytest.raises(condense.ConfigError, match="lr"):
        FinishConfig(top=1, lr=-1.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("finish")
    tiny_mnist(d / "mnist.npz", n_train=128, n_test=64)
    argv = [
        "zoo:resnet_tiny",
        "--data",
        f"mnist:{d / 'mnist.npz'}",
        "--input-size",
        "3x16x16",
        "--epochs-per-trial",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
        "--limit-test",
        "32",
        "--trials",
        "6",
        "--population",
        "4",
        "--budget",
        "80%",
        "--no-progress",
        "-o",
        str(d / "st"),
        "--finish",
        "2",
        "--finish-epochs",
        "2",
    ]
    assert search_main(argv) == 0
    return d, argv


def test_finish_fine_tunes_front_members_and_writes_loadable_models(study, capsys):
    d, _ = study
    out = d / "st"
    table = pd.read_csv(out / "finished.csv")
    front = pd.read_csv(out / "front.csv")
    assert 1 <= len(table) <= 2 and set(table["trial"]) <= set(front["trial"])
    assert list(table["trial"]) == pick_members(front, 2)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for _, row in table.iterrows():
        n = int(row["trial"])
        assert row["score"] == pytest.approx(float(front.loc[front["trial"] == n, "accuracy"].iloc[0]))
        finished = condense.load(out / "finished" / str(n) / "model")
        searched = condense.load(out / "trials" / str(n))
        with torch.no_grad():
            assert not torch.equal(finished(x), searched(x))  # fine-tuned: other weights
        macs, params = condense.macs_and_params(finished, (3, 16, 16))
        assert (int(row["macs"]), int(row["params"])) == (macs, params)  # counted on the saved model
        metrics = json.loads((out / "finished" / str(n) / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and row["accuracy"] == pytest.approx(metrics["test_acc"])
        assert metrics["finished_trial"] == n
        meta = json.loads((out / "finished" / str(n) / "model" / "condensed.json").read_text())
        assert meta["trained"]["epochs"] == 2
    assert (out / "finished.png").is_file()


def test_finish_resumes_without_training_again_and_refuses_other_options(study, capsys):
    d, argv = study
    out = d / "st"
    before = {p: p.stat().st_mtime_ns for p in (out / "finished").glob("*/metrics.json")}
    assert search_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "finished").glob("*/metrics.json")} == before
    capsys.readouterr()
    assert search_main(argv[:-1] + ["3"]) == 1
    err = capsys.readouterr().err
    assert "fine-tuned with other options" in err and "--finish-epochs" in err and "Traceback" not in err


def test_compare_finished(study, tmp_path, capsys):
    d, _ = study
    assert compare_main([str(d / "st"), "--finished", "--csv", str(tmp_path / "c.csv")]) == 0
    row = pd.read_csv(tmp_path / "c.csv").iloc[0]
    table = pd.read_csv(d / "st" / "finished.csv")
    assert row["best_accuracy"] == pytest.approx(table["accuracy"].max())
    # a study without finished members: a one-line error that says how to get them
    other = tmp_path / "plain"
    other.mkdir()
    for name in ("search.json", "trials.csv"):
        (other / name).write_text((d / "st" / name).read_text())
    capsys.readouterr()
    assert compare_main([str(other), "--finished"]) == 1
    assert "--finish N" in capsys.readouterr().err


def test_an_interrupted_finish_keeps_finished_members_and_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the second member fine-tunes: exit 130, the front is reported, the first member's files are
    complete; the same command then fine-tunes only the second one."""
    import search._finish as finish_module

    tiny_mnist(tmp_path / "mnist.npz", n_train=128, n_test=64)
    argv = [
        "zoo:resnet_tiny",
        "--data",
        f"mnist:{tmp_path / 'mnist.npz'}",
        "--input-size",
        "3x16x16",
        "--epochs-per-trial",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
        "--limit-test",
        "32",
        "--trials",
        "6",
        "--population",
        "4",
        "--budget",
        "80%",
        "--no-progress",
        "-o",
        str(tmp_path / "st"),
        "--finish",
        "2",
        "--finish-epochs",
        "1",
    ]
    real, calls = finish_module.train, []

    def interrupted_second(model, data, config, **kw):
        calls.append(kw["out_dir"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, data, config, **kw)

    monkeypatch.setattr(finish_module, "train", interrupted_second)
    assert search_main(argv) == 130
    out = capsys.readouterr().out
    assert "Pareto front of" in out and "interrupted" in out
    members = pick_members(pd.read_csv(tmp_path / "st" / "front.csv"), 2)
    assert len(members) == 2  # the seeded search's front has at least two members, so both are finished
    first = tmp_path / "st" / "finished" / str(members[0])
    assert (first / "model" / "condensed.json").is_file() and not (tmp_path / "st" / "finished.csv").exists()
    mtime = (first / "metrics.json").stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(finish_module, "train", lambda *a, **kw: (calls.append(kw["out_dir"]), real(*a, **kw))[1])
    assert search_main(argv) == 0
    assert calls == [tmp_path / "st" / "finished" / str(members[1])]  # only the unfinished member trained
    assert (first / "metrics.json").stat().st_mtime_ns == mtime
    assert list(pd.read_csv(tmp_path / "st" / "finished.csv")["trial"]) == members


def test_bad_teacher_or_plot_path_leaves_nothing_behind(tmp_path, capsys):
    tiny_mnist(tmp_path / "mnist.npz", n_train=64, n_test=32)
    base = [
        "zoo:resnet_tiny",
        "--data",
        f"mnist:{tmp_path / 'mnist.npz'}",
        "--input-size",
        "3x16x16",
        "--trials",
        "1",
        "--no-progress",
        "-o",
        str(tmp_path / "st"),
    ]
    assert search_main(base + ["--teacher", "zoo:no_such_model"]) == 1
    assert search_main(base + ["--teacher", "zoo:resnet_tiny", "--teacher-checkpoint", str(tmp_path / "no.pt")]) == 1
    assert not (tmp_path / "st").exists()
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err
    assert compare_main([str(tmp_path), "--plot", str(tmp_path / "missing" / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err
