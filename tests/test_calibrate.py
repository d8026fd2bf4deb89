"""Calibration (distillation at condense time) and feature distillation in training, on a tiny CIFAR ResNet
(zoo:resnet_tiny at 3x32x32) and MNIST-format data the tests build (grey digits read as 3x32x32)."""

import copy
import json
import math

import pytest
import torch

from conftest import tiny_mnist

import condense
from condense import CondenseError, ConfigError
from condense._calibrate import FeatureTap, feature_pairs
from condense.cli import main
from condense.train import TrainConfig, train

SIZE = (3, 32, 32)
FAST = dict(images=256, epochs=2, lr=1e-2, batch_size=32, test_images=128)  # a few steps that move the model


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return tiny_mnist(tmp_path_factory.mktemp("data") / "m.npz")


@pytest.fixture(scope="module")
def bundle(npz):
    return condense.load_data(f"mnist:{npz}", input_size=SIZE)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return condense.resolve_model("zoo:resnet_tiny").model.eval()


def condensed(original):
    return condense.fit(original, macs="60%", input_size=SIZE)


def run_errors(student, teacher, pairs, bundle, n=128):
    """Each run's ||s - t||^2 / ||t||^2 on the first n test images, both models in eval mode (computed here,
    independently of calibrate's own record)."""
    student.eval(), teacher.eval()
    x = torch.cat([x for x, _ in bundle.loader("test", 64, shuffle=False, augment=False)])[:n]
    with (
        FeatureTap(student, [p.student for p in pairs], detach=True) as s,
        FeatureTap(teacher, [p.teacher for p in pairs], detach=True) as t,
        torch.no_grad(),
    ):
        student(x), teacher(x)
        return [
            float((s.out[p.student] - t.out[p.teacher]).pow(2).sum() / t.out[p.teacher].pow(2).sum()) for p in pairs
        ]


def bn_only(result, bundle):
    """The condensed model with nothing but its BatchNorm statistics re-estimated (what calibrate must beat)."""
    model = copy.deepcopy(result.model)
    condense.recalibrate_bn(model, condense.calibration_batches(bundle, 256, 32))
    return model


def test_calibration_lowers_every_runs_feature_error_below_bn_reestimation_alone(original, bundle):
    result = condensed(original)
    pairs = feature_pairs(result.found, result.plan)
    assert [p.run for p in pairs] == list(result.plan.choices)
    assert all(p.student == result.found.runs[i].blocks[result.plan.choices[p.run].m] for i, p in enumerate(pairs))
    before = run_errors(result.model, original, pairs, bundle)
    baseline = run_errors(bn_only(result, bundle), original, pairs, bundle)
    rec = condense.calibrate(result, original, bundle, progress=False, **FAST)
    after = run_errors(result.model, original, pairs, bundle)
    assert sum(after) < 0.8 * sum(baseline) and sum(after) < 0.8 * sum(before)
    assert all(a < b for a, b in zip(after, baseline))
    # the record says the same, measured on the same held-out images
    assert rec.runs == tuple(p.run for p in pairs) and rec.check_images == 128
    assert rec.feature_error_before == pytest.approx(before, rel=1e-4)
    assert rec.feature_error_after == pytest.approx(after, rel=1e-4)
    assert rec.images == 256 and rec.epochs == 2 and rec.steps == 16 and rec.seconds > 0
    assert rec.test_images == 128 and all(
        0 <= a <= 1 for a in (rec.accuracy_original, rec.accuracy_before, rec.accuracy_after)
    )
    assert "feature error" in rec.summary()


def test_calibration_is_reproducible_under_a_seed_and_leaves_the_original_alone(original, bundle):
    state = copy.deepcopy(original.state_dict())
    original.train()
    models = []
    for seed in (0, 0, 1):
        result = condensed(original)
        condense.calibrate(result, original, bundle, seed=seed, progress=False, **FAST)
        models.append(result.model.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert any(not torch.equal(models[0][k], models[2][k]) for k in models[0])
    assert original.training  # its mode is given back
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())
    assert all(not m._forward_hooks for m in original.modules())
    original.eval()


def test_batchnorm_is_reestimated_on_the_calibration_images(original, bundle):
    from condense._calibrate import CalibrateConfig, _train_batches

    result = condensed(original)
    rec = condense.calibrate(result, original, bundle, progress=False, **FAST)
    fresh = copy.deepcopy(result.model)
    condense.recalibrate_bn(fresh, _train_batches(bundle, rec.images, rec.config.batch_size, rec.config.seed, 0))
    bns = [(n, m) for n, m in result.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    again = dict(fresh.named_modules())
    assert bns and all(
        torch.allclose(m.running_var, again[n].running_var)
        and torch.allclose(m.running_mean, again[n].running_mean, atol=1e-6)
        for n, m in bns
    )
    assert not result.model.training and all(not m._forward_hooks for m in result.model.modules())
    assert isinstance(rec.config, CalibrateConfig) and rec.config.train == "all"


def test_train_new_moves_only_the_new_layers(original, bundle):
    result = condensed(original)
    pairs = feature_pairs(result.found, result.plan)
    start = copy.deepcopy(result.model.state_dict())
    condense.calibrate(result, original, bundle, train="new", progress=False, **FAST)
    new = tuple(p.student + "." for p in pairs)
    changed = {
        k
        for k, v in result.model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, start[k]) and "running_" not in k
    }
    assert changed and all(k.startswith(new) for k in changed)
    assert all(p.requires_grad for p in result.model.parameters())  # the frozen part is given back trainable


def test_saved_calibration_record_loads_back_and_is_validated(original, bundle, tmp_path):
    result = condensed(original)
    rec = condense.calibrate(result, original, bundle, progress=False, **FAST)
    out = condense.save(result, tmp_path / "c", spec="zoo:resnet_tiny", extra={"calibration": rec.to_dict()})
    meta = condense.read_meta(out)
    assert meta["calibration"] == json.loads(json.dumps(rec.to_dict()))
    loaded = condense.load(out)
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in loaded.state_dict().items())
    path = out / "condensed.json"
    bad = json.loads(path.read_text())
    bad["calibration"]["accuracy_after"] = 7
    path.write_text(json.dumps(bad))
    with pytest.raises(CondenseError, match="calibration"):
        condense.read_meta(out)


def test_the_picked_rate_and_its_probes_are_recorded_and_validated(original, bundle, tmp_path):
    from condense._calibrate import check_record

    result = condensed(original)
    rec = condense.calibrate(result, original, bundle, images=128, batch_size=32, test_images=0, progress=False)
    record = json.loads(json.dumps(rec.to_dict()))
    assert record["config"]["lr"] == "auto" and record["lr"] == rec.lr
    assert [p["lr"] for p in record["lr_probes"]] == [r for r, _ in rec.lr_probes]
    assert (record["probe_images"], record["probe_held_out"]) == (96, 32) and check_record(record) is None
    out = condense.save(result, tmp_path / "c", spec="zoo:resnet_tiny", extra={"calibration": record})
    assert condense.read_meta(out)["calibration"] == record
    older = {k: v for k, v in record.items() if k not in ("lr", "lr_probes", "probe_images", "probe_held_out")}
    assert check_record(older) is None  # records written before the rate was recorded still load
    for key, value, needle in (
        ("lr", 0, "'lr'"),
        ("lr_probes", [{"lr": "x"}], "lr_probes"),
        ("probe_images", 0, "probe_images"),
    ):
        assert needle in check_record({**record, key: value})


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"images": 0}, "images"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"lr": 1e-3, "probe_images": 64}, "probe_images"),
        ({"probe_images": 0}, "probe_images"),
        ({"train": "some"}, "train"),
        ({"test_images": -1}, "test_images"),
    ],
)
def test_bad_options_are_config_errors(original, bundle, kwargs, needle):
    result = condensed(original)
    with pytest.raises(ConfigError, match=needle):
        condense.calibrate(result, original, bundle, progress=False, **kwargs)


def test_auto_rate_walks_the_grid_picks_by_held_out_loss_and_runs_that_rate_in_full(original, bundle):
    from condense._calibrate import LR_GRID, LR_START, pick_lr

    result, again = condensed(original), condensed(original)
    said = []
    rec = condense.calibrate(result, original, bundle, images=256, batch_size=32, test_images=0, progress=said.append)
    rates, losses = zip(*rec.lr_probes)
    assert rec.config.lr == "auto" and rec.lr == pick_lr(rec.lr_probes) and rec.lr in rates
    assert rates[:2] == (LR_START, LR_GRID[LR_GRID.index(LR_START) - 1])  # from 1e-3, then its higher neighbour
    walk = rates[2:]
    if walk:  # each step goes on the way the better first probe points, and the last one ends the walk
        step = 1 if losses[1] < losses[0] else -1
        chain = ([rates[1]] if step == 1 else [rates[0]]) + list(walk)
        assert all(LR_GRID.index(b) == LR_GRID.index(a) - step for a, b in zip(chain, chain[1:]))
        last = rates[-1]
        assert LR_GRID.index(last) in (0, len(LR_GRID) - 1) or losses[-1] >= losses[rates.index(chain[-2])]
    assert (rec.probe_images, rec.probe_held_out) == (192, 64)
    assert sum(m.startswith("rate probe") for m in said) == len(rates) and f"picked lr {rec.lr:g}" in said
    # the full run is what a run at the picked rate makes: same weights
    fixed = condense.calibrate(
        again, original, bundle, images=256, batch_size=32, test_images=0, lr=rec.lr, progress=False
    )
    assert fixed.lr_probes == () and fixed.lr == rec.lr
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in result.model.state_dict().items())
    assert "picked from" in rec.summary() and "picked from" not in fixed.summary()


def test_the_picked_rate_has_the_lowest_held_out_loss_and_the_grid_stops_at_3e_3():
    from condense._calibrate import LR_GRID, LR_START, pick_lr

    assert LR_GRID == (3e-3, 1e-3, 3e-4, 1e-4) and LR_START in LR_GRID  # 1e-2 fine-tuned worse where picked
    assert pick_lr(((1e-3, 1.4), (3e-3, 1.25))) == 3e-3
    assert pick_lr(((1e-3, 0.369), (3e-3, 0.918), (3e-4, 0.2431), (1e-4, 0.2487))) == 3e-4
    assert pick_lr(((1e-3, math.inf), (3e-3, 2.0))) == 3e-3  # a diverged probe is never picked
    with pytest.raises(CondenseError, match="diverged at every rate"):
        pick_lr(((1e-3, math.inf), (3e-3, math.inf)))


def test_rate_probes_never_train_on_the_images_they_are_scored_on(bundle):
    from condense._calibrate import _train_batches, held_out_batches, probe_sizes

    assert probe_sizes(10000) == (2500, 512) and probe_sizes(2048) == (512, 512) and probe_sizes(64) == (48, 16)
    assert probe_sizes(256, probe_images=1000) == (192, 64)  # never into the held-out images
    images = 200
    probe, held = probe_sizes(images)
    trained = torch.cat(list(_train_batches(bundle, probe, 32, 0, 0)))
    scored = torch.cat([x for x, _ in held_out_batches(bundle, images - held, held, 128, 0)])
    everything = torch.cat(list(_train_batches(bundle, images, 32, 0, 0)))
    assert len(trained) == probe and len(scored) == held and probe + held <= images
    assert torch.equal(scored, everything[images - held :])  # the last calibration images of the same order
    flat_t, flat_s = trained.flatten(1), scored.flatten(1)
    assert not any(bool((flat_t == row).all(1).any()) for row in flat_s)


def test_auto_rate_needs_a_few_images(original, bundle):
    with pytest.raises(CondenseError, match="too few") as err:
        condense.calibrate(condensed(original), original, bundle, images=3, progress=False)
    assert "--calib-lr" in err.value.hint


def test_nothing_to_calibrate_and_a_wrong_original_are_errors(original, bundle):
    unchanged = condense.fit(original, macs="100%", input_size=SIZE)
    with pytest.raises(CondenseError, match="nothing to calibrate"):
        condense.calibrate(unchanged, original, bundle, progress=False)
    other = condense.resolve_model("zoo:resnet20").model
    with pytest.raises(CondenseError, match="original"):
        condense.calibrate(condensed(original), other, bundle, progress=False, images=32)
    at_16 = condense.load_data(bundle.spec, input_size=(3, 16, 16))
    with pytest.raises(CondenseError, match="read at 3x16x16"):
        condense.calibrate(condensed(original), original, at_16, progress=False)


def test_progress_messages_go_to_a_function(original, bundle):
    said = []
    condense.calibrate(condensed(original), original, bundle, progress=said.append, **FAST)
    assert any("step 16/16" in m for m in said) and said[-1] == "re-estimating BatchNorm statistics"


# --- the command line ----------------------------------------------------------------------------------------


def test_cli_calibrates_records_and_saves(npz, tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        main(
            [
                "zoo:resnet_tiny",
                "--input-size",
                "3x32x32",
                "--budget",
                "60%",
                "--calibrate",
                f"mnist:{npz}",
                "--calib-images",
                "64",
                "--calib-epochs",
                "2",
                "--calib-lr",
                "1e-2",
                "--calib-test",
                "64",
                "--threads",
                "1",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "calibrated on 64 mnist images x 2 epoch(s)" in printed and "test accuracy" in printed
    rec = condense.read_meta(out)["calibration"]
    assert (rec["images"], rec["epochs"], rec["test_images"], rec["steps"]) == (64, 2, 64, 2 * 1)
    assert rec["lr"] == rec["config"]["lr"] == 0.01 and "lr_probes" not in rec  # a rate given: no probes
    assert [r["path"] for r in rec["runs"]] == list(condense.read_meta(out)["plan"])
    assert any(r["feature_error_after"] != r["feature_error_before"] for r in rec["runs"])  # 2 steps were taken
    assert rec["accuracy_original"] is not None and rec["accuracy_after"] is not None
    condense.load(out)


def test_cli_json_has_the_calibration(npz, tmp_path, capsys):
    assert (
        main(
            [
                "zoo:resnet_tiny",
                "--input-size",
                "3x32x32",
                "--budget",
                "60%",
                "--calibrate",
                f"mnist:{npz}",
                "--calib-images",
                "32",
                "--calib-test",
                "0",
                "--json",
                "-o",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["calibration"]["images"] == 32 and data["calibration"]["accuracy_after"] is None
    assert data["calibration"]["config"]["lr"] == "auto" and data["calibration"]["lr_probes"]  # the default


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--calibrate", "DATA", "--calib-images", "0"], "--calib-images 0 must be >= 1"),
        (["--calibrate", "DATA", "--calib-epochs", "-1"], "--calib-epochs -1 must be >= 1"),
        (["--calib-images", "10"], "--calib-images needs --calibrate"),
        (["--calibrate", "mnist:/nonexistent.npz"], "does not exist"),
        (["--calibrate", "somewhere"], "bad data spec"),
        (["--calibrate", "DATA", "--dry-run"], "--dry-run"),
        (["--calibrate", "DATA", "--calib-lr", "fast"], "--calib-lr 'fast' must be 'auto' or a number > 0"),
        (["--calibrate", "DATA", "--calib-lr", "0"], "must be 'auto' or a number > 0"),
        (["--calib-lr", "1e-3"], "--calib-lr needs --calibrate"),
    ],
)
def test_cli_bad_calibration_input_is_one_line_exit_1_no_files(argv, needle, npz, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [f"mnist:{npz}" if a == "DATA" else a for a in argv]
    assert main(["zoo:resnet_tiny", "--input-size", "3x32x32", "--budget", "60%"] + argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- feature distillation in training ------------------------------------------------------------------------


def test_kd_features_adds_the_feature_loss_and_trains_the_runs_towards_the_teacher(original, bundle):
    pairs = feature_pairs(condensed(original).found, condensed(original).plan)
    one_step = {}
    for weight in (0.0, 1.0):  # the very first step: same weights, same batch; only the loss differs
        res = train(
            condensed(original).model,
            bundle,
            TrainConfig(epochs=1, batch_size=32, lr=0.05, kd_features=weight, max_steps_per_epoch=1),
            teacher=original,
            features=pairs if weight else None,
            progress=False,
            device="cpu",
        )
        one_step[weight] = res.history[0]
    f = one_step[1.0]["train_feature_loss"]
    assert f > 0 and one_step[1.0]["train_loss"] == pytest.approx(one_step[0.0]["train_loss"] + f, rel=1e-5)
    assert "train_feature_loss" not in one_step[0.0]

    errors, models = {}, {}
    for weight in (0.0, 1.0):
        model = condensed(original).model
        res = train(
            model,
            bundle,
            TrainConfig(epochs=3, batch_size=32, lr=0.05, kd_features=weight),
            teacher=original,
            features=pairs if weight else None,
            progress=False,
            device="cpu",
        )
        errors[weight], models[weight] = sum(run_errors(model, original, pairs, bundle)), res
    assert errors[1.0] < errors[0.0]  # equal if the feature term gave no gradient
    m = models[1.0].metrics
    assert m["config"]["kd_features"] == 1.0 and m["kd_feature_runs"] == [p.run for p in pairs]
    assert "kd_features" not in models[0.0].metrics["config"]  # off: the config reads as before the option
    losses = [h["train_feature_loss"] for h in models[1.0].history]
    assert losses[-1] < losses[0]
    assert all(not mod._forward_hooks for mod in original.modules())


def test_kd_features_needs_a_teacher_and_pairs(original, bundle):
    with pytest.raises(ConfigError, match="kd_features"):
        TrainConfig(kd_features=-1)
    with pytest.raises(ConfigError, match="needs a teacher"):
        train(condensed(original).model, bundle, TrainConfig(epochs=1, kd_features=1.0), progress=False)


def test_cli_train_kd_features_end_to_end(npz, tmp_path, capsys):
    src = tmp_path / "c"
    assert main(["zoo:resnet_tiny", "--input-size", "3x32x32", "--budget", "60%", "-o", str(src)]) == 0
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(src),
                "--data",
                f"mnist:{npz}",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--max-steps",
                "3",
                "--teacher",
                "zoo:resnet_tiny",
                "--kd-features",
                "-o",
                str(out),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["kd_features"] == 1.0 and m["kd_feature_runs"] == list(condense.read_meta(src)["plan"])
    assert m["train_feature_loss"] > 0
    capsys.readouterr()
    assert (
        main(["train", str(src), "--data", f"mnist:{npz}", "--epochs", "1", "--kd-features", "-o", str(tmp_path / "x")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "needs --teacher" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
    assert (
        main(
            [
                "train",
                "zoo:resnet_tiny",
                "--data",
                f"mnist:{npz}",
                "--epochs",
                "1",
                "--input-size",
                "3x32x32",
                "--teacher",
                "zoo:resnet_tiny",
                "--kd-features",
                "-o",
                str(tmp_path / "y"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "needs a condensed directory" in err and not (tmp_path / "y").exists()


def test_preserve_defaults_on_with_a_checkpoint_unless_calibrating():
    from argparse import Namespace

    from condense.cli import _preserve

    assert _preserve(Namespace(preserve=None, checkpoint="w.pth", calibrate=None)) is True
    assert _preserve(Namespace(preserve=None, checkpoint="w.pth", calibrate="cifar10:x")) is False
    assert _preserve(Namespace(preserve=True, checkpoint="w.pth", calibrate="cifar10:x")) is True
    assert _preserve(Namespace(preserve=None, checkpoint=None, calibrate=None)) is False


def _logit_gap(student, teacher, bundle, n=128):
    """Mean KL(teacher || student) of the logits on the first ``n`` test images."""
    student.eval()
    teacher.eval()
    total, seen = 0.0, 0
    with torch.no_grad():
        for x, _ in bundle.loader("test", 64, shuffle=False, augment=False):
            t, s = teacher(x).log_softmax(1), student(x).log_softmax(1)
            total += float((t.exp() * (t - s)).sum())
            seen += len(x)
            if seen >= n:
                break
    return total / seen


def test_a_width_plan_is_calibrated_on_the_logits_alone(bundle):
    torch.manual_seed(0)
    original = condense.resolve_model("zoo:resnet_tiny").model.eval()
    res = condense.fit(original, macs="60%", input_size=SIZE, width=0.25)
    assert res.width is not None
    gap_before = _logit_gap(res.model, original, bundle)
    cal = condense.calibrate(res, original, bundle, progress=False, **FAST)
    assert cal.runs == () and cal.feature_error_before == () and cal.feature_error_after == ()
    assert "logits only" in cal.summary()
    assert _logit_gap(res.model, original, bundle) < 0.5 * gap_before  # distilled towards the original
    for kwargs in (dict(train="new"), dict(logit_weight=0.0)):
        with pytest.raises(CondenseError, match="only the logits are matched"):
            condense.calibrate(
                condense.fit(original, macs="60%", input_size=SIZE, width=0.25),
                original,
                bundle,
                progress=False,
                **{**FAST, **kwargs},
            )
