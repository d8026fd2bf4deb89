"""condense._device: one device option everywhere a model runs; a missing device is a one-line error."""

import json

import pytest
import torch

from condense import CondenseError, LatencySetting
from condense._device import available_devices, describe_device, resolve_device
from condense.cli import main
from condense.train import TrainConfig, train
from conftest import small_net, tiny_mnist

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device(None) == resolve_device("auto")
    assert "cpu" in available_devices() and describe_device(torch.device("cpu")).startswith("cpu (")


@pytest.mark.parametrize(
    "name,needle", [("gpu", "bad device 'gpu'"), ("cuda:x", "bad device|not available"), ("cuda:99", "not available")]
)
def test_bad_or_missing_devices_name_what_is_available(name, needle):
    with pytest.raises(CondenseError, match=needle) as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        [
            "train",
            "zoo:mnist_resnet_small",
            "--data",
            "mnist:{npz}",
            "--epochs",
            "1",
            "--device",
            "cuda",
            "-o",
            "{out}",
        ],
        ["bench", "zoo:resnet_tiny", "--input-size", "3x32x32", "--device", "cuda", "--no-compile"],
        [
            "search",
            "zoo:mnist_resnet_small",
            "--data",
            "mnist:{npz}",
            "--budget",
            "50%",
            "--trials",
            "2",
            "--device",
            "cuda",
            "-o",
            "{out}",
        ],
        ["zoo:resnet_tiny", "--input-size", "3x32x32", "--latency", "80%", "--device", "cuda", "-o", "{out}"],
    ],
)
def test_every_command_refuses_a_missing_device_in_one_line_writing_nothing(tmp_path, capsys, argv):
    npz = tiny_mnist(tmp_path / "m.npz")
    out = tmp_path / "out"
    assert main([a.format(npz=npz, out=out) for a in argv]) == 1
    err = capsys.readouterr().err
    assert "device 'cuda' is not available here (available: cpu" in err and "Traceback" not in err
    assert not out.exists()


def test_latency_setting_checks_and_records_its_device():
    setting = LatencySetting(device="cpu")
    assert setting.to_dict()["device"] == "cpu" and "cpu" in setting.describe()
    if NO_CUDA:
        with pytest.raises(CondenseError, match="not available"):
            LatencySetting(device="cuda")


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_training_records_the_device_and_runs_each_autocast(tmp_path, amp):
    data = __import__("condense.data", fromlist=["x"]).load_data(f"mnist:{tiny_mnist(tmp_path / 'm.npz')}")
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, max_steps_per_epoch=2, amp=amp, channels_last=True)
    res = train(small_net(), data, config, out_dir=tmp_path / "run", progress=False, device="cpu")
    assert res.metrics["device"] == "cpu" and res.metrics["config"]["amp"] == amp
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())  # loads on any device
    assert bool(ckpt["scaler"]) == (amp == "fp16")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["device_name"].startswith("cpu")


def test_amp_accepts_the_old_boolean_and_rejects_unknown_types():
    assert TrainConfig(amp=True).amp == "bf16" and TrainConfig(amp=False).amp is None
    with pytest.raises(CondenseError, match="amp"):
        TrainConfig(amp="fp8")
