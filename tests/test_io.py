"""condense._io: directories that run no code when opened, atomic replacement under SIGKILL, checked metadata,
clear errors on a full disk or a read-only folder."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import condense
from condense import CondenseError
from condense._io import META, WEIGHTS, read_meta, recover_directory, write_directory
from condense.cli import main

FACTORY = textwrap.dedent("""
    import pathlib
    import torch.nn as nn
    pathlib.Path(__file__).with_name("RAN").write_text("the factory file was imported")

    def net(num_classes=10):
        blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for _ in range(4)]
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
""")


@pytest.fixture()
def file_dir(tmp_path):
    """A condensed-model directory whose model is a file.py:factory (the file marks RAN when imported)."""
    src = tmp_path / "nets.py"
    src.write_text(FACTORY)
    out = tmp_path / "small"
    assert main([f"{src}:net", "--input-size", "1x16x16", "--budget", "70%", "-o", str(out)]) == 0
    (tmp_path / "RAN").unlink()
    return out


def _ran(directory: Path) -> bool:
    return (directory.parent / "RAN").exists()


# --- 1. opening a directory runs no code from it ---------------------------------------------------------


def test_load_refuses_to_import_the_recorded_file_without_trust_code(file_dir):
    with pytest.raises(
        CondenseError,
        match=r"names model code in .*nets.py:net; loading it would run that file "
        r"\(if you trust it, pass trust_code=True \(--trust-code\)",
    ):
        condense.load(file_dir)
    assert not _ran(file_dir)
    model = condense.load(file_dir, trust_code=True)
    assert _ran(file_dir) and model(torch.randn(1, 1, 16, 16)).shape == (1, 10)


def test_load_with_the_model_passed_needs_no_trust(file_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nets_{id(file_dir)}", file_dir.parent / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)  # the caller imports its own model code
    (file_dir.parent / "RAN").unlink()
    model = condense.load(file_dir, model=nets.net)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    "argv",
    [
        ["count", "{d}"],
        ["export-onnx", "{d}", "-o", "{t}/m.onnx", "--no-check"],
        ["bench", "{d}", "--batch-sizes", "1", "--repeats", "1", "--no-compile", "--no-train"],
        ["train", "{d}", "--data", "mnist:/nonexistent.npz", "--epochs", "1"],
    ],
)
def test_every_command_refuses_the_recorded_file_without_trust_code(file_dir, tmp_path, argv, capsys):
    argv = [a.format(d=file_dir, t=tmp_path) for a in argv]
    if argv[0] == "train":  # data are read first: give real ones
        from conftest import tiny_mnist

        argv[3] = f"mnist:{tiny_mnist(tmp_path / 'm.npz')}"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "loading it would run that file" in err and "--trust-code" in err and "Traceback" not in err
    assert not _ran(file_dir)
    assert not (tmp_path / "m.onnx").exists()


def test_count_with_trust_code_runs_it(file_dir, capsys):
    assert main(["count", str(file_dir), "--trust-code", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 0 and _ran(file_dir)


def test_a_changed_model_file_is_named(file_dir):
    src = file_dir.parent / "nets.py"
    src.write_text(src.read_text() + "\n# edited\n")
    with pytest.raises(CondenseError, match=r"nets.py changed since .* was saved \(SHA-256 differs\)"):
        condense.load(file_dir, trust_code=True)
    assert not _ran(file_dir)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"kind": "python", "name": "x"}, "unknown kind 'python'"),
        ({"kind": "file", "path": "/tmp/evil.txt", "factory": "f"}, "a file spec needs a .py path"),
        ({"kind": "timm", "name": "resnet18", "code": "x"}, "unknown field"),
        ("timm:resnet18", "must be an object"),
    ],
)
def test_unknown_or_malformed_model_specs_are_errors(file_dir, spec, needle):
    meta = json.loads((file_dir / META).read_text())
    meta["model"] = spec
    (file_dir / META).write_text(json.dumps(meta))
    with pytest.raises(CondenseError, match=needle):
        condense.load(file_dir, trust_code=True)
    assert not _ran(file_dir)


# --- 10. malformed condensed.json and weights: one line naming the field or the keys -----------------------


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m.pop("plan"), r"missing field\(s\) plan"),
        (lambda m: m.__setitem__("plan", [1, 2]), "field 'plan' must be an object"),
        (lambda m: m["plan"].__setitem__(next(iter(m["plan"])), {"m": "two"}), "field 'plan'"),
        (lambda m: m.__setitem__("surprise", 1), r"unknown field\(s\) surprise"),
        (lambda m: m.__setitem__("model_kwargs", ["x"]), "field 'model_kwargs'"),
        (lambda m: m.__setitem__("input_size", [1, 16]), "field 'input_size'"),
        (lambda m: m.__setitem__("input_size", [3, 60000, 60000]), "too large"),
    ],
)
def test_malformed_metadata_is_a_one_line_error_naming_the_field(file_dir, edit, needle, capsys):
    meta = json.loads((file_dir / META).read_text())
    edit(meta)
    (file_dir / META).write_text(json.dumps(meta))
    with pytest.raises(CondenseError, match=needle):
        read_meta(file_dir)
    assert main(["count", str(file_dir), "--trust-code"]) == 1
    assert "condensed.json" in capsys.readouterr().err


def test_tampered_weight_shapes_list_the_keys_and_shapes(file_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(str(file_dir / WEIGHTS))
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(3, *state[key].shape[1:])
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(file_dir / WEIGHTS))
    with pytest.raises(CondenseError) as err:
        condense.load(file_dir, trust_code=True)
    text = str(err.value)
    assert "1 unexpected: extra.weight" in text and f"{key} (3, " in text and "\n" not in text


def test_nan_weights_are_refused_on_load_and_as_checkpoint(file_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(file_dir / WEIGHTS))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key][0, 0, 0, 0] = float("nan")
    save_file(state, str(file_dir / WEIGHTS))
    with pytest.raises(CondenseError, match=f"NaN or infinite weights \\({key}"):
        condense.load(file_dir, trust_code=True)
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["0.bias"][0] = float("inf")
    torch.save(bad, tmp_path / "w.pth")
    with pytest.raises(CondenseError, match="NaN or infinite weights"):
        condense.load_checkpoint(net, tmp_path / "w.pth")


def test_state_dict_versions_survive_save_and_load():
    class Versioned(nn.Module):
        _version = 2

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.seen = None

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
            self.seen = local_metadata.get("version")
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    import tempfile

    from condense._io import write_model_dir

    with tempfile.TemporaryDirectory() as d:
        meta = {
            "format": "condense/1",
            "model": None,
            "model_kwargs": {},
            "model_class": "Versioned",
            "input_size": [3, 8, 8],
            "plan": {},
            "counts": {},
            "runs": [],
        }
        write_model_dir(Path(d) / "v", Versioned(), meta)
        assert json.loads((Path(d) / "v" / META).read_text())["state_metadata"][""] == {"version": 2}
        again = Versioned()
        condense.load(Path(d) / "v", model=again)
        assert again.seen == 2


# --- 3. replacing a directory never loses the old one, even under SIGKILL ----------------------------------

KILL_SCRIPT = r"""
import os, sys, time
from pathlib import Path
import condense._io as io
point = sys.argv[2]
real_replace, calls = os.replace, []
def replace(a, b):
    calls.append((a, b))
    if point == "aside" and len(calls) == 1:
        real_replace(a, b); print("READY", flush=True); time.sleep(60)
    if point == "swapped" and len(calls) == 2:
        real_replace(a, b); print("READY", flush=True); time.sleep(60)
    return real_replace(a, b)
io.os.replace = replace
def fill(tmp):
    (tmp / "condensed.json").write_text('{"format": "condense/1", "v": "new"}')
    (tmp / "model.safetensors").write_bytes(b"n" * 100000)
    if point == "filling":
        print("READY", flush=True); time.sleep(60)
io.write_directory(sys.argv[1], fill)
"""


@pytest.mark.parametrize("point,expect", [("filling", "old"), ("aside", "old"), ("swapped", "new")])
def test_sigkill_during_a_replacement_keeps_a_whole_directory(tmp_path, point, expect):
    out = tmp_path / "model"
    out.mkdir()
    (out / META).write_text('{"format": "condense/1", "v": "old"}')  # a directory written before manifests
    (out / WEIGHTS).write_bytes(b"o" * 100000)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), point], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    recover_directory(out)  # what the next command does first
    assert json.loads((out / META).read_text())["v"] == expect
    assert (out / WEIGHTS).read_bytes() == expect[0].encode() * 100000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary siblings left


def test_reading_a_directory_killed_mid_swap_puts_the_old_one_back(tmp_path, file_dir):
    aside = file_dir.with_name(f".{file_dir.name}.old-abcd1234")
    os.replace(file_dir, aside)  # the state a kill between the two renames leaves
    assert read_meta(file_dir)["format"] == "condense/1"
    assert file_dir.is_dir() and not aside.exists()


def test_output_containing_the_current_folder_or_an_input_is_refused(tmp_path, monkeypatch, capsys, file_dir):
    monkeypatch.chdir(file_dir)
    assert main(["timm:resnet18", "--input-size", "3x32x32", "-o", "."]) == 1
    assert "contains the current folder" in capsys.readouterr().err
    assert (file_dir / META).exists()
    monkeypatch.chdir(tmp_path)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1))
    torch.save(net.state_dict(), file_dir / "w.pth")
    assert main([f"{tmp_path / 'nets.py'}:net", "--checkpoint", str(file_dir / "w.pth"), "-o", str(file_dir)]) == 1
    assert "contains the input" in capsys.readouterr().err
    assert (file_dir / "w.pth").exists() and (file_dir / META).exists()


def test_written_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_directory(tmp_path / "d", lambda t: (t / META).write_text("x"))
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777, (out / META).stat().st_mode & 0o777) == (0o755, 0o644)


# --- 6. a full disk and a read-only folder: one line, exit 1, nothing lost ---------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *options: str):
    path.mkdir()
    opts = ",".join((f"size={size}",) + options)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk test needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_is_no_space_left_and_keeps_the_old_directory(tmp_path, capsys):
    with _tmpfs(tmp_path / "fs", "600k") as fs:
        args = ["timm:resnet18", "--input-size", "3x32x32", "--num-classes", "10", "--budget", "90%"]
        out = fs / "r18"
        out.mkdir()
        (out / META).write_text('{"format": "condense/1", "v": "the old model"}')
        (fs / "filler").write_bytes(b"x" * 300_000)
        assert main(args + ["-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert "no space left on" in err and "Traceback" not in err and "unexpected" not in err
        assert json.loads((out / META).read_text())["v"] == "the old model"
        assert sorted(p.name for p in fs.iterdir()) == ["filler", "r18"]


def test_read_only_folder_is_cannot_write(tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        assert main(["timm:resnet18", "--input-size", "3x32x32", "-o", str(ro / "out")]) == 1
        err = capsys.readouterr().err
        assert "cannot write" in err and "read-only" in err and "unexpected" not in err


def test_train_on_a_full_disk_is_no_space_left(tmp_path, capsys):
    from conftest import tiny_mnist

    npz = tiny_mnist(tmp_path / "m.npz")
    with _tmpfs(tmp_path / "fs", "64k") as fs:
        (fs / "filler").write_bytes(b"x" * 60_000)
        code = main(
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
                "1",
                "-o",
                str(fs / "run"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 1 and "no space left on" in err, err
        assert not (fs / "run" / ".last.pt.tmp").exists()


def test_sigkill_of_a_cli_run_leaves_no_half_directory(tmp_path, file_dir):
    """A real `condense` process killed at many moments: the output is always the old or the new model."""
    old_weights = (file_dir / WEIGHTS).read_bytes()
    src = file_dir.parent / "nets.py"
    cmd = [
        sys.executable,
        "-m",
        "condense.cli",
        f"{src}:net",
        "--input-size",
        "1x16x16",
        "--budget",
        "60%",
        "-o",
        str(file_dir),
    ]
    states = set()
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        recover_directory(file_dir)
        meta = read_meta(file_dir)
        weights = (file_dir / WEIGHTS).read_bytes()
        states.add("old" if weights == old_weights else "new")
        condense.load(file_dir, trust_code=True)  # whole either way
        assert meta["counts"]["macs_after"] > 0
        assert not [p for p in file_dir.parent.iterdir() if p.name.startswith(".small.")]


# --- round trips of torchvision models (state-dict versions kept: mnasnet's loader needs its version) -------


@pytest.mark.parametrize("name", ["mnasnet1_0", "mobilenet_v2", "resnet18", "shufflenet_v2_x0_5"])
def test_torchvision_models_round_trip(tmp_path, name):
    src = tmp_path / "tv.py"
    src.write_text(
        f"import torchvision\ndef net(num_classes=10):\n"
        f"    return torchvision.models.{name}(weights=None, num_classes=num_classes)\n"
    )
    out = tmp_path / name
    assert main([f"{src}:net", "--input-size", "3x64x64", "--budget", "80%", "-o", str(out)]) == 0
    again = condense.load(out, trust_code=True)
    from safetensors.torch import load_file

    saved = load_file(str(out / WEIGHTS))
    assert all(torch.equal(saved[k], v) for k, v in again.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(again(x)).all()
