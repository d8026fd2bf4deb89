"""``python -m condense.bench.versus``: condense against block dropping and Torch-Pruning, end to end with
``--quick`` on a tiny CIFAR-10 written here; every arm's MACs by the one counter; resume trains nothing; a
changed setting is refused; bad input is one line."""

import contextlib
import csv
import io
import json
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import condense
from condense.bench import _versus_arms as arms
from condense.bench import _versus_latency, _versus_prune, _versus_report
from condense.bench import versus

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def tiny_cifar(d: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """CIFAR-10 python pickles with a learnable signal (class k brightens row band k)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 80, (n, 3, 32, 32), dtype=np.uint8)
        for i, k in enumerate(y):
            x[i, :, 3 * k : 3 * k + 3, :] = 255
        return x, y

    d.mkdir(parents=True)
    x, y = make(n_train)
    for i, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        batch = {b"labels": [int(v) for v in y[idx]], b"data": x[idx].reshape(len(idx), 3072)}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    xt, yt = make(n_test)
    (d / "test_batch").write_bytes(
        pickle.dumps({b"labels": [int(v) for v in yt], b"data": xt.reshape(-1, 3072)}, protocol=2)
    )
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}, protocol=2))
    return d


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = versus.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run (the original trained here for one epoch) at 50% of resnet20's MACs."""
    root = tmp_path_factory.mktemp("versus")
    data = tiny_cifar(root / "cifar")
    argv = ["zoo:resnet20", "--data", f"cifar10:{data}", "--quick", "--budget", "50%", "-o", str(root / "out")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONDENSE_CACHE", str(root / "cache"))
        rc, out, err = run(argv)
        yield {"root": root, "argv": argv, "rc": rc, "out": out, "err": err, "dir": root / "out", "data": data}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_quick_end_to_end_table_csv_plot(quick):
    assert quick["rc"] == 0, quick["err"]
    out, d = quick["out"], quick["dir"]
    names = versus.default_arms()
    assert {"global", "global-calibrate", "drop", "tp-l1", "tp-group", "scratch"} <= set(names)
    for name in names + ("original",):
        assert name in out
    with open(d / "versus.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == _versus_report.columns((1, 32))
    rows = _csv(d / "versus.csv")
    assert [r["arm"] for r in rows] == ["original", *names]
    assert (d / "versus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((d / "versus.json").read_text())
    ok = [r for r in rows[1:] if r["status"] == "ok"]
    assert {r["arm"] for r in ok} >= {"global", "drop", "tp-l1", "tp-group", "scratch"}
    for r in rows[1:]:
        rec = state["budgets"]["50%"]["arms"][r["arm"]]
        if r["status"] != "ok":  # an arm that cannot reach the target says why and has no figures
            assert r["status"] == "infeasible" and rec["reason"] and r["acc_mean"] == ""
            continue
        assert r["seeds_done"] == "1" and 0 <= float(r["acc_mean"]) <= 1 and 0 <= float(r["zero_shot_mean"]) <= 1
        assert float(r["latency_b1_ms"]) > 0 and float(r["latency_b32_ms"]) > 0 and float(r["finetune_cpu_s"]) > 0
        seed = rec["seeds"]["0"]
        assert seed["done"] and seed["finetune_epochs"] == 1
        if r["arm"].endswith("-calibrate"):  # calibration's compute is reported beside the arm
            assert float(r["calib_epochs"]) == 1 and float(r["calib_images"]) > 0 and float(r["calib_cpu_s"]) > 0
            # a width plan is calibrated on the logits alone: no run maps to compare
            assert bool(seed["feature_error_after"]) == (not r["arm"].startswith("joint"))
            # the rate was picked per arm (the default): the probes and the picked rate are kept
            probes = dict(seed["calib_lr_probes"])
            assert seed["calib_lr"] in probes and len(probes) >= 2  # 1e-3 and 3e-3 at least
            assert probes[seed["calib_lr"]] == min(v for v in probes.values() if v is not None)
    assert state["settings"]["calibration"] == {"images": 64, "epochs": 1, "lr": "auto"}
    # the ratio to the original comes from the same interleaved run as the figures
    lat = state["latency"]["ms"]
    for b in ("1", "32"):
        assert lat["original"][b]["ratio"] == 1.0
        for r in ok:
            m = lat[f"50%/{r['arm']}"][b]
            assert m["ratio"] == pytest.approx(m["ms"] / lat["original"][b]["ms"])


def test_every_arm_reaches_the_mac_target_by_the_one_counter(quick):
    d = quick["dir"]
    rows = {r["arm"]: r for r in _csv(d / "versus.csv")}
    macs0 = int(rows["original"]["macs"])
    original = condense.build_model("zoo:resnet20")
    assert condense.macs_and_params(original, (3, 32, 32))[0] == macs0
    target = 0.5 * macs0
    for name, r in rows.items():
        if name == "original" or r["status"] != "ok":
            continue
        assert float(r["macs_target"]) == pytest.approx(target)
        # condense.train counted the fine-tuned model itself (metrics.json), with condense.macs_and_params
        metrics = json.loads((d / "runs" / "50pct" / name / "seed0" / "metrics.json").read_text())
        assert metrics["macs"] == int(r["macs"]) and metrics["params"] == int(r["params"])
        if name.startswith("tp-"):  # a uniform ratio lands within 2% of the target
            assert abs(int(r["macs"]) / target - 1) <= 0.02, (name, r["macs"], target)
        else:  # condense's plans stay within it
            assert int(r["macs"]) <= target
    # the pruned model of the table is Torch-Pruning's at the recorded ratio (the classifier kept whole)
    state = json.loads((d / "versus.json").read_text())
    trained = condense.build_model("zoo:resnet20")
    trained.load_state_dict(torch.load(d / "original" / "last.pt", weights_only=True)["model"])
    rec = state["budgets"]["50%"]["arms"]["tp-l1"]
    pruned = _versus_prune.prune_once(trained, (3, 32, 32), rec["build"]["pruning_ratio"], "l1")
    assert condense.macs_and_params(pruned, (3, 32, 32)) == (rec["macs"], rec["params"])
    assert pruned.fc.out_features == 10


def test_resume_trains_nothing_and_reports_the_same(quick, monkeypatch):
    d = quick["dir"]
    before = json.loads((d / "versus.json").read_text())
    for target, name in (
        (condense.train, "train"),
        (condense, "calibrate"),
        (_versus_latency, "measure"),
        (_versus_prune, "prune_to_macs"),
        (condense._fit, "fit"),
    ):
        monkeypatch.setattr(target, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called on resume"))
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    rc, out, err = run(quick["argv"])
    assert rc == 0, err
    after = json.loads((d / "versus.json").read_text())
    assert after["budgets"] == before["budgets"] and after["latency"] == before["latency"]
    assert "global" in out and "tp-l1" in out


def test_a_changed_setting_is_refused_naming_it(quick, monkeypatch):
    d = quick["dir"]
    before = (d / "versus.json").read_bytes()
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    rc, _out, err = run(quick["argv"] + ["--lr", "0.05", "--kd"])
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "other settings" in lines[0]
    assert "finetune.lr: 0.01 -> 0.05" in lines[0] and "kd: False -> True" in lines[0]
    assert (d / "versus.json").read_bytes() == before


def count_training(monkeypatch, quick) -> list[int]:
    """The seeds ``condense.train.train`` is called with from now on (it still trains); the quick run's cache."""
    calls: list[int] = []
    real = condense.train.train

    def counting(model, data, config, **kw):
        calls.append(config.seed)
        return real(model, data, config, **kw)

    monkeypatch.setattr(condense.train, "train", counting)
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    return calls


def test_more_seeds_train_only_the_new_ones(quick, monkeypatch, tmp_path):
    copy_dir = tmp_path / "out"
    shutil.copytree(quick["dir"], copy_dir)
    calls = count_training(monkeypatch, quick)
    argv = quick["argv"][:-1] + [str(copy_dir), "--seeds", "0,1", "--arms", "drop,tp-l1"]
    rc, out, err = run(argv)
    assert rc == 0, err
    assert calls == [1, 1]  # seed 0 of both arms was done
    rows = {r["arm"]: r for r in _csv(copy_dir / "versus.csv")}
    assert set(rows) == {"original", "drop", "tp-l1"} and rows["drop"]["seeds_done"] == "2"


def test_arms_that_start_from_the_same_weights_share_one_fine_tune_and_it_is_what_training_gives(
    quick, monkeypatch, tmp_path
):
    """At 70% of ResNet-20 ``joint-drop`` needs no channels pruned: it builds ``drop``'s network from the same
    weights. The second is not trained again; training it anyway gives the same figures."""
    calls = count_training(monkeypatch, quick)
    results = {}
    for sharing in (True, False):
        copy_dir = tmp_path / f"out-{sharing}"
        shutil.copytree(quick["dir"], copy_dir)
        calls.clear()
        if not sharing:
            monkeypatch.setattr(versus, "_same_start", lambda *a, **k: None)
        rc, out, err = run(quick["argv"][:-1] + [str(copy_dir), "--budget", "70%", "--arms", "drop,joint-drop"])
        assert rc == 0, err
        seeds = json.loads((copy_dir / "versus.json").read_text())["budgets"]["70%"]["arms"]
        first, second = seeds["drop"]["seeds"]["0"], seeds["joint-drop"]["seeds"]["0"]
        assert first["start_digest"] == second["start_digest"]  # the same network and weights
        results[sharing] = (first, second, list(calls))
        if sharing:
            assert calls == [0] and second["same_start_as"] == "70%/drop" and "same_start_as" not in first
            assert {k: second[k] for k in versus.SHARED} == {k: first[k] for k in versus.SHARED}
            assert (copy_dir / "runs" / "70pct" / "joint-drop" / "seed0" / "metrics.json").is_file()
            rows = {r["arm"]: r for r in _csv(copy_dir / "versus.csv")}
            assert "fine-tuned result of 70%/drop" in rows["joint-drop"]["note"]
    shared_first, shared_second, _ = results[True]
    trained_first, trained_second, trained_calls = results[False]
    assert trained_calls == [0, 0] and "same_start_as" not in trained_second
    assert trained_second["test_acc"] == trained_first["test_acc"] == shared_second["test_acc"]


def test_original_ft_is_a_reference_run_only_when_named(quick, monkeypatch, tmp_path):
    """``original-ft`` fine-tunes the original itself the same way: not a default arm, the original's own
    counts, and its start is the original's weights (the same test accuracy before fine-tuning)."""
    assert "original-ft" not in versus.default_arms() and "original-ft" not in versus.VersusConfig("m", "d").arms
    copy_dir = tmp_path / "out"
    shutil.copytree(quick["dir"], copy_dir)
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    rc, out, err = run(quick["argv"][:-1] + [str(copy_dir), "--arms", "original-ft,drop"])
    assert rc == 0, err
    rows = {r["arm"]: r for r in _csv(copy_dir / "versus.csv")}
    assert set(rows) == {"original", "original-ft", "drop"}
    assert (rows["original-ft"]["macs"], rows["original-ft"]["params"]) == (
        rows["original"]["macs"],
        rows["original"]["params"],
    )
    state = json.loads((copy_dir / "versus.json").read_text())
    seed = state["budgets"]["50%"]["arms"]["original-ft"]["seeds"]["0"]
    assert seed["done"] and seed["zero_shot_acc"] == pytest.approx(state["original"]["test_acc"])


def test_joint_choose_runs_condense_choose_once_per_budget(quick, monkeypatch, tmp_path):
    """``joint-choose`` calls ``condense.choose`` once per budget (not per seed), rebuilds the winner for each
    seed, calibrates it like the other calibrated arms, and says what it chose."""
    copy_dir = tmp_path / "out"
    shutil.copytree(quick["dir"], copy_dir)
    state = json.loads((copy_dir / "versus.json").read_text())
    state["budgets"]["50%"]["arms"].pop("joint-choose", None)  # a default arm: made again here, counted
    (copy_dir / "versus.json").write_text(json.dumps(state))
    calls = []
    real = condense.choose

    def counting(*a, **k):
        calls.append(k["macs"])
        return real(*a, **k)

    monkeypatch.setattr(condense, "choose", counting)
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    rc, out, err = run(quick["argv"][:-1] + [str(copy_dir), "--arms", "joint-choose", "--seeds", "0,1"])
    assert rc == 0, err
    assert len(calls) == 1
    rec = json.loads((copy_dir / "versus.json").read_text())["budgets"]["50%"]["arms"]["joint-choose"]
    assert rec["status"] == "ok" and "chose " in rec["build"]["plan"]
    assert rec["macs"] <= 0.5 * json.loads((copy_dir / "versus.json").read_text())["original"]["macs"]
    for seed in ("0", "1"):
        assert rec["seeds"][seed]["done"] and rec["seeds"][seed]["calib_images"] > 0
    # the choice is recorded with the arm; re-timing the folder takes it from there instead of choosing again
    assert rec["build"]["choice"]["chosen"] in rec["build"]["plan"]
    rc, out, err = run(quick["argv"][:-1] + [str(copy_dir), "--arms", "joint-choose", "--time-only"])
    assert rc == 0, err
    assert len(calls) == 1


def test_time_only_re_times_every_trained_arm_and_trains_nothing(quick, monkeypatch, tmp_path):
    copy_dir = tmp_path / "out"
    shutil.copytree(quick["dir"], copy_dir)
    before = json.loads((copy_dir / "versus.json").read_text())
    arms_50 = before["budgets"]["50%"]["arms"]
    ok = [a for a, r in arms_50.items() if r["status"] == "ok"]
    untrained, unbuilt = ok.pop(), ok.pop()
    arms_50[untrained]["seeds"] = {}  # built and recorded, never trained: not in the table, so not timed
    del arms_50[unbuilt]  # not in the folder: --time-only neither builds nor records it
    (copy_dir / "versus.json").write_text(json.dumps(before))
    timed = []
    real = _versus_latency.measure

    def counting(models, *a, **k):
        timed.append(sorted(models))
        return real(models, *a, **k)

    monkeypatch.setattr(_versus_latency, "measure", counting)
    monkeypatch.setattr(condense.train, "train", lambda *a, **k: pytest.fail("trained with --time-only"))
    monkeypatch.setenv("CONDENSE_CACHE", str(quick["root"] / "cache"))
    argv = quick["argv"][:-1] + [str(copy_dir), "--time-only", "--seeds", "0,1"]  # seed 1 was never trained
    rc, out, err = run(argv)
    assert rc == 0, err
    after = json.loads((copy_dir / "versus.json").read_text())
    assert timed == [sorted(["original", *(f"50%/{a}" for a in ok)])]  # one interleaved run, every trained arm
    assert after["budgets"] == before["budgets"]  # nothing built, trained or added
    assert set(after["latency"]["ms"]) == {"original", *(f"50%/{a}" for a in ok)}
    assert "not trained yet" in out + err
    assert f"no trained seed are not timed: 50%/{untrained}" in " ".join((out + err).split())


def test_the_calibration_rate_is_a_setting_and_older_folders_resume_at_their_rate():
    from condense.bench._versus_state import differences

    assert arms.CalibSetting().settings() == {"images": 2048, "epochs": 1, "lr": "auto"}
    assert arms.CalibSetting(lr=1e-3).settings()["lr"] == 1e-3
    # a folder made before the rate was a setting calibrated at 3e-3 and has no "lr": that rate matches it
    older = {"calibration": {"images": 2048, "epochs": 1}}
    assert arms.CalibSetting(lr=3e-3).settings() == older["calibration"]
    assert differences(older, {"calibration": arms.CalibSetting().settings()}) == ["calibration.lr: None -> 'auto'"]
    for bad in (0, -1.0, "fast", True):
        with pytest.raises(condense.CondenseError, match="lr"):
            arms.CalibSetting(lr=bad)


def _bad_cases(data):
    spec = f"cifar10:{data}"
    return [
        (["zoo:no_such_net", "--data", spec], "unknown zoo model"),
        (["zoo:resnet20", "--data", spec, "--budget", "half"], "bad budget"),
        (["zoo:resnet20", "--data", spec, "--budget", "150%"], "bad budget"),
        (["zoo:resnet20", "--data", spec, "--seeds", ""], "--seeds '' is not a list of distinct integers >= 0"),
        (["zoo:resnet20", "--data", spec, "--seeds", "0,x"], "--seeds '0,x' is not a list of distinct integers"),
        (["zoo:resnet20", "--data", spec, "--seeds", "1,1"], "--seeds '1,1' is not a list of distinct integers"),
        (["zoo:resnet20", "--data", spec, "--batch-sizes", "0,32"], "--batch-sizes '0,32' is not a list of"),
        (["zoo:resnet20"], "--data SPEC is required"),
        (["zoo:resnet20", "--data", f"cifar10:{data}-missing"], "does not exist"),
        (["zoo:resnet20", "--data", spec, "--arms", "global,magic"], "unknown arm 'magic'"),
        (["zoo:resnet20", "--data", spec, "--calib-lr", "fast"], "--calib-lr 'fast' must be 'auto' or a number"),
        (["zoo:resnet20", "--data", spec, "--checkpoint", str(data / "batches.meta"), "--epochs", "2"], "contradict"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(quick, tmp_path):
    for args, text in _bad_cases(quick["data"]):
        out = tmp_path / "never"
        rc, _out, err = run(args + ["--quick", "-o", str(out)])
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], (args, err)
        assert not out.exists()
    # a folder condense did not write is never written into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    rc, _out, err = run(["zoo:resnet20", "--data", f"cifar10:{quick['data']}", "--quick", "-o", str(mine)])
    assert rc == 1 and "not a versus folder" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_without_torch_pruning_the_hint_says_how_to_install(quick, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning now raises ImportError
    with pytest.raises(condense.CondenseError, match=r'pip install "condense\[versus\]"'):
        _versus_prune.torch_pruning()
    rc, _out, err = run(
        [
            "zoo:resnet20",
            "--data",
            f"cifar10:{quick['data']}",
            "--quick",
            "--arms",
            "tp-group",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and len(err.strip().splitlines()) == 1 and 'pip install "condense[versus]"' in err


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_prune_to_macs_lands_at_the_target_and_leaves_the_original(fraction):
    torch.manual_seed(0)
    model = condense.build_model("zoo:resnet20")
    size = (3, 32, 32)
    macs0, params0 = condense.macs_and_params(model, size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    p = _versus_prune.prune_to_macs(model, size, fraction * macs0, "group")
    assert (p.macs, p.params) == condense.macs_and_params(p.model, size)
    # whole channels: the nearest step of one uniform ratio; no other ratio tried lands closer
    steps = {
        condense.macs_and_params(_versus_prune.prune_once(model, size, r, "group"), size)[0]
        for r in np.linspace(0.05, 0.85, 33)
    }
    closest = min(abs(m - fraction * macs0) for m in steps)
    assert abs(p.macs - fraction * macs0) <= max(closest, 0.02 * fraction * macs0) + 1
    assert 0 < p.ratio < 1 and p.model.fc.out_features == 10
    assert condense.macs_and_params(model, size) == (macs0, params0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_prune_to_macs_below_its_reach_is_a_budget_error():
    model = condense.build_model("zoo:resnet20")
    macs0 = condense.macs_and_params(model, (3, 32, 32))[0]
    with pytest.raises(condense.BudgetError, match="over the target") as err:  # the table says "infeasible"
        _versus_prune.prune_to_macs(model, (3, 32, 32), 0.05 * macs0, "group", multiple=16)
    assert err.value.hint == "raise the budget"


def test_config_is_checked_on_creation(quick):
    spec = f"cifar10:{quick['data']}"
    with pytest.raises(condense.CondenseError, match="tp-macs"):
        versus.VersusConfig("zoo:resnet20", spec, tp_macs="closest")
    with pytest.raises(condense.CondenseError, match="no MAC budget"):
        versus.VersusConfig("zoo:resnet20", spec, budgets=(" ",))
    with pytest.raises(condense.ConfigError, match="lr"):
        versus.VersusConfig("zoo:resnet20", spec, lr=0.0)
    cfg = versus.VersusConfig("zoo:resnet20", spec, arms=("scratch", "global"), budgets=("50%", "50%", "30%"))
    assert cfg.arms == ("global", "scratch") and cfg.budgets == ("50%", "30%") and cfg.device in ("cpu", "cuda")
    assert arms.ARMS["tp-l1"].needs == "torch_pruning"


def test_a_width_multiple_reaches_torch_pruning_and_condense_arms_alike(quick):
    torch.manual_seed(0)
    model = condense.build_model("zoo:resnet20").eval()
    size = (3, 32, 32)
    macs0 = condense.macs_and_params(model, size)[0]

    def counts(net):
        return {m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 16}

    p = _versus_prune.prune_to_macs(model, size, 0.4 * macs0, "group", multiple=16)
    assert counts(p.model) and all(c % 16 == 0 for c in counts(p.model))
    assert (p.macs, p.params) == condense.macs_and_params(p.model, size)
    plain = _versus_prune.prune_once(model, size, p.ratio, "group")
    assert any(c % 16 for c in counts(plain))  # the same ratio without it leaves counts between multiples
    ctx = arms.ArmContext(original=model, input_size=size, bundle=None, fresh=lambda s: model, width_multiple=16)
    start = arms.ARMS["joint-drop"].architecture(ctx, 0.4 * macs0, 0)
    assert start.fit.width.multiple == 16 and all(c % 16 == 0 for c in counts(start.model))
    tp = arms.ARMS["tp-group"].architecture(ctx, 0.4 * macs0, 0)
    assert tp.record["width_multiple"] == 16
    spec = f"cifar10:{quick['data']}"
    with pytest.raises(condense.CondenseError, match="width-multiple"):
        versus.VersusConfig("zoo:resnet20", spec, width_multiple=0)
    bundle = SimpleNamespace(spec=None, train_size=10, test_size=10, input_size=size)
    assert "width_multiple" not in versus.VersusConfig("zoo:resnet20", spec).settings(bundle)  # old folders resume
    assert versus.VersusConfig("zoo:resnet20", spec, width_multiple=16).settings(bundle)["width_multiple"] == 16


def test_arms_that_build_the_same_network_are_timed_once_and_share_it(monkeypatch):
    torch.manual_seed(0)
    model = condense.build_model("zoo:resnet20").eval()
    size = (3, 32, 32)

    def fit(seed, **kw):
        return condense.fit(model, macs="50%", input_size=size, seed=seed, **kw).model

    same_a, same_b = fit(0, layer="drop"), fit(1, layer="drop")  # other weights, the same network
    same_b.train()
    with torch.no_grad():
        for p in same_b.parameters():
            p.add_(1.0)
    models = {
        _versus_latency.ORIGINAL: model,
        "drop": same_a,
        "drop-again": same_b,
        "global": fit(0),
        "global-K3": fit(0, K=3),  # one setting apart: another network
        "width": fit(0, layer="drop", width=0.25),
    }
    assert _versus_latency.shared(models) == {
        "original": "original",
        "drop": "drop",
        "drop-again": "drop",
        "global": "global",
        "global-K3": "global-K3",
        "width": "width",
    }
    timed = []

    def fake(ms, input_size, **kw):
        timed.append(list(ms))
        return {name: {"1": {"ms": float(i + 1), "ratio": float(i + 1)}} for i, name in enumerate(ms)}

    monkeypatch.setattr(_versus_latency, "measure_side_by_side", fake)
    out = _versus_latency.measure(models, size, batches=(1,), device="cpu", threads=1, repeats=1, warmup=0)
    assert timed == [["original", "drop", "global", "global-K3", "width"]]  # the repeat is not timed again
    assert out["drop-again"] == out["drop"] and out["drop-again"] is not out["drop"]
    assert len({v["1"]["ms"] for v in out.values()}) == 5
