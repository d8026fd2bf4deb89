"""Training: schedules, distillation loss, checkpoints and exact resume, metrics, torchrun/gloo with 2 ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import condense
from condense import CondenseError
from condense.cli import main
from condense.data import load_data
from condense.train import TrainConfig, distillation_loss, lr_at, train


from conftest import small_net, tiny_mnist  # noqa: E402  (the DDP script imports them from here)

__all__ = ["small_net", "tiny_mnist"]


@pytest.fixture()
def data(tmp_path):
    return load_data(f"mnist:{tiny_mnist(tmp_path / 'mnist.npz')}")


def test_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 5) == pytest.approx(0.05) and lr_at(cfg, 10) < 1e-9
    step = TrainConfig(epochs=300, lr=0.1, schedule="step", milestones=(150, 225))
    assert [lr_at(step, e) for e in (0, 149.9, 150, 224, 225)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    warm = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2)
    assert lr_at(warm, 1) < 0.1 and lr_at(warm, 2) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=0),
        dict(lr=0),
        dict(schedule="poly"),
        dict(momentum=1.0),
        dict(milestones=(20,), epochs=10),
        dict(kd_alpha=2.0),
        dict(clip_grad_norm=0),
        dict(clip_grad_norm=-1.0),
        dict(clip_grad_norm=True),
        dict(decay_norm_and_bias=1),
    ],
)
def test_config_is_checked(bad):
    with pytest.raises(condense.ConfigError):
        TrainConfig(**bad)


def _one_step_length(data, **options) -> float:
    """Length of the first SGD step (plain SGD, no momentum or decay: lr x the gradient it applies)."""
    torch.manual_seed(0)
    net = small_net()
    before = [p.detach().clone() for p in net.parameters()]
    cfg = TrainConfig(
        epochs=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        augment=False,
        max_steps_per_epoch=1,
        **options,
    )
    train(net, data, cfg, progress=False)
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before))))


def test_gradient_clipping_bounds_the_step(data):
    free = _one_step_length(data)
    clipped = _one_step_length(data, clip_grad_norm=1e-3)
    assert free > 0.05  # the same step unclipped is long ...
    assert clipped == pytest.approx(1e-3, rel=1e-3)  # ... clipped, lr x the norm it is clipped to
    assert _one_step_length(data, clip_grad_norm=1e6) == pytest.approx(free, rel=1e-6)  # a loose bound: no-op


def test_weight_decay_on_norm_and_bias_is_an_option():
    from condense.train import _make_optimizer

    default = _make_optimizer(small_net(), TrainConfig())
    every = _make_optimizer(small_net(), TrainConfig(decay_norm_and_bias=True))
    assert [len(g["params"]) for g in default.param_groups] == [4, 6]  # conv/linear weights | biases, BN
    assert [len(g["params"]) for g in every.param_groups] == [10, 0]


def test_distillation_loss_matches_the_definition():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    T, a = 3.0, 0.7
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    want = a * kl + (1 - a) * nn.functional.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, a, T), want)
    # a student equal to its teacher has no distillation term
    assert distillation_loss(t, t, y, 1.0, T).abs() < 1e-6


def test_training_learns_and_writes_metrics(data, tmp_path):
    model = small_net()
    res = train(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.05), out_dir=tmp_path / "run", progress=False)
    assert res.metrics["test_acc"] > 0.6
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["macs"] > 0 and metrics["params"] == sum(p.numel() for p in model.parameters())
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_resume_continues_exactly(data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=3)
    torch.manual_seed(0)
    straight = small_net()
    train(straight, data, cfg, out_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    part = small_net()
    _interrupt_after_first_epoch(part, data, cfg, tmp_path / "c")
    torch.manual_seed(123)  # a different process state must not matter
    resumed = small_net()
    train(resumed, data, cfg, out_dir=tmp_path / "c", resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def _interrupt_after_first_epoch(model, data, cfg, out):
    """Run the 2-epoch config but stop (KeyboardInterrupt) right after the epoch-1 checkpoint is written."""
    import condense.train as tr

    original = tr._atomic_save

    def save_then_stop(obj, path):
        original(obj, path)
        raise KeyboardInterrupt

    tr._atomic_save = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(model, data, cfg, out_dir=out, progress=False)
    finally:
        tr._atomic_save = original
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1


def test_resume_refuses_other_options(data, tmp_path):
    train(small_net(), data, TrainConfig(epochs=1, batch_size=64), out_dir=tmp_path / "r", progress=False)
    with pytest.raises(condense.CondenseError, match="other training options"):
        train(
            small_net(), data, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path / "r", resume=True, progress=False
        )


def test_distillation_runs_and_uses_the_teacher(data, tmp_path):
    teacher = small_net()
    train(teacher, data, TrainConfig(epochs=2, batch_size=32, lr=0.05), progress=False)
    student = small_net()
    res = train(
        student, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, kd_alpha=0.9), teacher=teacher, progress=False
    )
    assert res.metrics["teacher"] == "Sequential" and res.metrics["test_acc"] > 0.3
    assert all(not p.requires_grad for p in teacher.parameters())


def test_cli_train_condensed_dir_with_teacher(tmp_path, capsys):
    src = tmp_path / "nets.py"
    src.write_text(
        "import torch.nn as nn\n"
        "def net(num_classes=10):\n"
        "    blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())\n"
        "              for _ in range(3)]\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    npz = tiny_mnist(tmp_path / "m.npz")
    assert main([f"{src}:net", "--input-size", "1x28x28", "-o", str(tmp_path / "small")]) == 0
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(tmp_path / "small"),
                "--data",
                f"mnist:{npz}",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--teacher",
                f"{src}:net",
                "-o",
                str(out),
                "--trust-code",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cpu"
    assert metrics["teacher_model"] == f"{src}:net"
    reloaded = condense.load(out / "model", trust_code=True)
    assert isinstance(reloaded, nn.Module)
    assert main(["train", str(tmp_path / "small"), "--data", "mnist:/nonexistent.npz", "--epochs", "1"]) == 1


DDP_SCRIPT = r"""
import json, os, sys, torch, torch.distributed as dist
from torch import nn
# the repository first (its search package, not the namespace tests/search), then the tests (conftest)
sys.path[:0] = [os.path.dirname(os.path.abspath(sys.argv[3])), sys.argv[3]]
from test_train import small_net
from condense.data import load_data
from condense.train import TrainConfig, train
torch.manual_seed(0)
model = small_net()
res = train(model, load_data("mnist:" + sys.argv[1]), TrainConfig(epochs=1, batch_size=16, lr=0.05),
            out_dir=sys.argv[2], progress=False)
w = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, w)
if dist.get_rank() == 0:
    print(json.dumps({"world": res.metrics["world_size"], "acc": res.metrics["test_acc"],
                      "images": res.metrics["test_images"], "same": all(torch.equal(g, w) for g in gathered)}))
dist.destroy_process_group()
"""


def test_torchrun_two_processes_gloo(tmp_path):
    npz = tiny_mnist(tmp_path / "m.npz")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(script),
            str(npz),
            str(tmp_path / "out"),
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [text for text in proc.stdout.splitlines() if text.startswith("{")][-1]
    result = json.loads(line)
    assert result["world"] == 2 and result["same"]  # DDP kept both replicas identical
    assert result["images"] == 128  # the test split, summed over the two ranks' shards
    assert (tmp_path / "out" / "last.pt").exists()


# --- trust: checkpoints load without unpickling code; runs are not overwritten by accident; seeds fix results


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_resume_never_unpickles_code_planted_in_last_pt(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, max_steps_per_epoch=1)
    train(
        small_net(),
        data,
        TrainConfig(epochs=1, batch_size=64, lr=0.05, max_steps_per_epoch=1),
        out_dir=out,
        progress=False,
    )
    good = torch.load(out / "last.pt", weights_only=True)  # the checkpoint itself is weights-only
    assert isinstance(good["rng"]["python"], torch.Tensor)
    torch.save({"model": _Payload()}, out / "last.pt")
    with pytest.raises(CondenseError, match="not a training checkpoint this version reads safely"):
        train(small_net(), data, config, out_dir=out, resume=True, progress=False)
    assert not (tmp_path / "PWNED").exists()


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, data):
    out = tmp_path / "run"
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, max_steps_per_epoch=1)
    train(small_net(), data, config, out_dir=out, progress=False)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(CondenseError, match=r"already holds a run .*--resume.*--overwrite"):
        train(small_net(), data, config, out_dir=out, progress=False)
    assert (out / "last.pt").read_bytes() == before
    train(small_net(), data, config, out_dir=out, progress=False, overwrite=True)


def test_cli_same_seed_same_result_from_a_model_spec(tmp_path):
    npz = tiny_mnist(tmp_path / "m.npz")
    states = []
    for run in ("a", "b"):
        torch.manual_seed(1234 if run == "a" else 99)  # whatever state the process is in
        assert (
            main(
                [
                    "train",
                    "zoo:mnist_resnet_small",
                    "--data",
                    f"mnist:{npz}",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "64",
                    "--max-steps",
                    "2",
                    "--seed",
                    "0",
                    "-o",
                    str(tmp_path / run),
                ]
            )
            == 0
        )
        states.append(torch.load(tmp_path / run / "model.pth", weights_only=True))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert (
        main(
            [
                "train",
                "zoo:mnist_resnet_small",
                "--data",
                f"mnist:{npz}",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--max-steps",
                "2",
                "--seed",
                "1",
                "-o",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    other = torch.load(tmp_path / "c" / "model.pth", weights_only=True)
    assert not all(torch.equal(states[0][k], other[k]) for k in other)


def _one_class_npz(path):
    x = np.zeros((64, 28, 28), np.uint8)
    y = np.zeros(64, np.int64)
    np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    return path


@pytest.mark.parametrize(
    "case,needle",
    [
        ("no-steps", "make no full batch of 64"),
        ("one-class", "training data .* has 1 class"),
        ("classes", "the model has 4 outputs but the data"),
    ],
)
def test_setups_that_cannot_train_are_errors_before_anything_is_written(tmp_path, data, case, needle):
    out = tmp_path / "run"
    model = small_net()
    if case == "no-steps":
        from condense.data import load_data

        data = load_data(f"mnist:{tiny_mnist(tmp_path / 'm.npz')}", limit_train=16)
    elif case == "one-class":
        from condense.data import load_data

        data = load_data(f"mnist:{_one_class_npz(tmp_path / 'one.npz')}")
    else:
        model[-1] = nn.Linear(8 * 28, 4)
    with pytest.raises(CondenseError, match=needle):
        train(model, data, TrainConfig(epochs=1, batch_size=64), out_dir=out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--milestones", "5,x", "--schedule", "step"], "--milestones '5,x' is not a list of integers >= 0"),
        (["--limit-train", "16", "--batch-size", "64"], "make no full batch"),
    ],
)
def test_cli_train_bad_input_is_one_line_exit_1(tmp_path, capsys, argv, needle):
    npz = tiny_mnist(tmp_path / "m.npz")
    out = tmp_path / "run"
    assert (
        main(["train", "zoo:mnist_resnet_small", "--data", f"mnist:{npz}", "--epochs", "6", "-o", str(out), *argv]) == 1
    )
    err = capsys.readouterr().err
    assert needle in err and "unexpected" not in err and not out.exists()


# --- the data at its own size, a choice of augmentation, threads, progress in a log ------------------------

LETTER_NET = """import torch.nn as nn
def net(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def _letters(root: Path) -> Path:
    """A 3-class tree of 28x28 grey PNGs, train/ and val/ (like a letters set)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in "abc":
            (root / split / c).mkdir(parents=True)
            for k in range(4):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(
                    root / split / c / f"{k}.png"
                )
    return root


@pytest.mark.parametrize(
    "flags,augment,size",
    [
        ([], "none", [3, 28, 28]),  # grey letters: their own size, no flips
        (["--augment", "crop-flip", "--input-size", "3x20x20"], "crop-flip", [3, 20, 20]),
        (["--no-augment"], "none", [3, 28, 28]),
    ],
)
def test_cli_train_imagefolder_at_the_models_size_with_the_chosen_augmentation(tmp_path, capsys, flags, augment, size):
    data_dir = _letters(tmp_path / "letters")
    (tmp_path / "nets.py").write_text(LETTER_NET)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"{tmp_path / 'nets.py'}:net",
                "--data",
                f"imagefolder:{data_dir}",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--threads",
                "1",
                "-o",
                str(out),
                *flags,
            ]
        )
        == 0
    )
    text = " ".join(capsys.readouterr().out.split())
    assert f"augmentation: {augment}" in text and "torch threads: 1" in text and "x".join(map(str, size)) in text
    assert "epoch 1/1: train loss" in text  # not a terminal: one plain line per epoch
    m = json.loads((out / "metrics.json").read_text())
    assert (m["data"], m["num_classes"], m["augment"], m["input_size"]) == ("letters", 3, augment, size)
    assert m["data_spec"] == f"imagefolder:{data_dir}"


def test_train_prints_one_plain_line_per_epoch_when_not_a_terminal(data, capsys):
    train(small_net(), data, TrainConfig(epochs=2, batch_size=64, lr=0.05, max_steps_per_epoch=1))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("test loss" in line and "img/s" in line for line in lines)
    train(small_net(), data, TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1), progress=False)
    assert capsys.readouterr().out == ""


def test_augment_option_is_checked_and_recorded(data):
    with pytest.raises(condense.ConfigError, match="augment='flip'"):
        TrainConfig(augment="flip")
    with pytest.raises(CondenseError, match="augment='timm' works on image files"):
        train(small_net(), data, TrainConfig(epochs=1, augment="timm"), progress=False)
    res = train(
        small_net(),
        data,
        TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1, augment="crop-flip"),
        progress=False,
    )
    assert res.metrics["augment"] == "crop-flip" and res.metrics["config"]["augment"] == "crop-flip"
    res = train(small_net(), data, TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1), progress=False)
    assert (res.metrics["augment"], res.metrics["data"], res.metrics["num_classes"]) == ("none", "mnist", 10)


def test_cli_train_reads_an_image_tree_with_the_models_channels_at_its_own_size(tmp_path, capsys):
    """26 classes of grey 28x28 PNGs: a 1-channel model trains at 1x28x28 (not 3x224x224) and the metrics
    name the data set and its class count."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 1)):
        for c in range(26):
            d = tmp_path / "letters" / split / chr(65 + c)
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 50, (28, 28)).astype(np.uint8)
                a[c, 2:26] = 255
                Image.fromarray(a, "L").save(d / f"{i}.png")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "zoo:mnist_resnet_small",
                "--data",
                f"imagefolder:{tmp_path / 'letters'}",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert (m["data"], m["num_classes"], m["input_size"], m["augment"]) == ("letters", 26, [1, 28, 28], "none")
    assert "at 1x28x28" in capsys.readouterr().out
