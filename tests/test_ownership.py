"""What a hostile or unlucky user tried (issue: never delete what the tool did not write, never an internal
error): output folders the tool does not own, damaged checkpoints, colliding flags, broken factories, a
second writer. Each case failed (deleted a file, exited 2, or said "saved" twice) before the fix."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import condense
from condense import CondenseError
from condense._write import MANIFEST, claim_folder, output_lock, read_manifest, write_directory
from condense.cli import main
from condense.data import load_data
from condense.train import TrainConfig, train

from conftest import small_net, tiny_mnist

NET = textwrap.dedent("""
    import torch.nn as nn
    import condense.zoo as z

    def net():
        return z.build("resnet_tiny")

    def raises():
        raise ValueError("boom")

    def needs(width):
        return z.build("resnet_tiny")
""")


@pytest.fixture()
def netfile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(NET)
    return tmp_path / "m.py"


def _condense(*args):
    return main(["m.py:net", "--input-size", "3x16x16", *args])


# --- 1. -o never deletes a user's files ------------------------------------------------------------------


def test_a_folder_with_a_fake_condensed_json_is_not_replaced(netfile, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "condensed.json").write_text("{}")
    (fake / "thesis.tex").write_text("precious")
    assert _condense("-o", "fake") == 1
    err = capsys.readouterr().err
    assert "is not a condensed model folder this tool wrote" in err and "unexpected" not in err
    assert (fake / "thesis.tex").read_text() == "precious" and (fake / "condensed.json").read_text() == "{}"


def test_files_a_user_added_to_a_condensed_folder_are_never_deleted(netfile, tmp_path, capsys):
    assert _condense("-o", "real") == 0
    manifest = read_manifest(tmp_path / "real")
    assert manifest["kind"] == "condensed-model"
    assert sorted(manifest["files"]) == ["condensed.json", "model.safetensors"]
    (tmp_path / "real" / "notes.txt").write_text("mine")
    (tmp_path / "real" / "sub").mkdir()
    (tmp_path / "real" / "sub" / "x").write_text("mine too")
    capsys.readouterr()
    assert _condense("-o", "real") == 1
    err = capsys.readouterr().err
    assert "which condense did not write" in err and ("notes.txt" in err or "sub/x" in err)
    assert (tmp_path / "real" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "real" / "sub" / "x").read_text() == "mine too"
    os.remove(tmp_path / "real" / "notes.txt")
    os.remove(tmp_path / "real" / "sub" / "x")
    os.rmdir(tmp_path / "real" / "sub")
    assert _condense("-o", "real") == 0  # its own folder, and only that, is replaced
    condense.load(tmp_path / "real", trust_code=True)


def test_a_folder_written_before_manifests_is_still_replaced(netfile, tmp_path):
    assert _condense("-o", "old") == 0
    os.remove(tmp_path / "old" / MANIFEST)  # as an earlier version wrote it
    assert _condense("-o", "old") == 0
    assert read_manifest(tmp_path / "old") is not None


def test_a_symlink_output_is_refused_and_nothing_is_left_behind(netfile, tmp_path, capsys):
    assert _condense("-o", "target") == 0
    os.symlink(tmp_path / "target", tmp_path / "link")
    capsys.readouterr()
    assert _condense("-o", "link") == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_default_output_names(netfile, tmp_path, capsys):
    assert main(["zoo:resnet_tiny", "--budget", "80%"]) == 0
    assert _condense() == 0
    assert sorted(p.name for p in (tmp_path / "condensed").iterdir()) == ["m-net", "resnet_tiny"]


def test_write_directory_refuses_foreign_files_and_keeps_them(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "a.txt").write_text("user")
    with pytest.raises(CondenseError, match="not a condensed model folder"):
        write_directory(out, lambda t: (t / "condensed.json").write_text("{}"))
    assert (out / "a.txt").read_text() == "user"
    write_directory(tmp_path / "e", lambda t: (t / "x").write_text("1"), kind="other")
    with pytest.raises(CondenseError, match="not a condensed model folder"):  # another kind of folder
        claim_folder(tmp_path / "e", "condensed-model")


# --- a second writer --------------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from condense._write import output_lock
    with output_lock(sys.argv[1]):
        print("HELD", flush=True)
        time.sleep(30)
""")


def test_a_second_writer_is_refused_while_the_first_writes(netfile, tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "busy")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        assert _condense("-o", "busy") == 1
        assert "is being written by another condense command" in capsys.readouterr().err
        assert not (tmp_path / "busy").exists()
    finally:
        proc.kill()
        proc.wait(30)
    assert _condense("-o", "busy") == 0  # the killed writer's lock does not outlive it
    assert not (tmp_path / ".busy.lock").exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with output_lock(tmp_path / "x"):
        with output_lock(tmp_path / "x"):
            assert (tmp_path / ".x.lock").exists()
        assert (tmp_path / ".x.lock").exists()
    assert not (tmp_path / ".x.lock").exists()


# --- 4. exit 1 with a hint, not exit 2 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--option", "K=5"], "K has its own flag"),
        (["--option", "K=2.5"], "K has its own flag"),
        (["--option", "init=block"], "init has its own flag"),
        (["--option", "velocity=zero", "--velocity", "dwconv"], "velocity has its own flag"),
        (["--option", "dt=0.1", "--option", "dt=0.2"], "given twice"),
        (["--input-size", ""], "bad input size ''"),
        (["--K", "101"], "integer from 1 to 100"),
    ],
)
def test_colliding_or_bad_flags_are_one_line_errors(netfile, capsys, args, expect):
    assert _condense("--dry-run", *args) == 1
    err = capsys.readouterr().err
    assert expect in err and "unexpected" not in err


@pytest.mark.parametrize(
    "factory,expect", [("raises", "raised ValueError: boom"), ("needs", "cannot be called without arguments")]
)
def test_a_broken_factory_is_a_one_line_error(netfile, capsys, factory, expect):
    assert main([f"m.py:{factory}", "--input-size", "3x16x16", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert expect in err and "unexpected" not in err


# --- training: a damaged last.pt, a foreign folder, a full stop before the first epoch ----------------------


@pytest.fixture()
def data(tmp_path):
    return load_data(f"mnist:{tiny_mnist(tmp_path / 'mnist.npz')}")


CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05)


def _tamper(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _other_shape(s):
    s["model"]["0.weight"] = torch.zeros(3, 1, 3, 3)


def _string_epoch(s):
    s["epoch"] = "1"


def _huge_epoch(s):
    s["epoch"] = 10**18


def _no_groups(s):
    s["optimizer"]["param_groups"] = []


def _bad_rng(s):
    s["rng"]["python"] = torch.tensor([1, 2, 3])


def _no_test_acc(s):
    s["history"] = [{"epoch": 1}]


@pytest.mark.parametrize(
    "edit,expect",
    [
        (_other_shape, "of other shapes"),
        (_string_epoch, "epoch '1'"),
        (_huge_epoch, "epoch 1000000000000000000"),
        (_no_groups, "no parameter groups"),
        (_bad_rng, "random states"),
        (_no_test_acc, "history"),
    ],
)
def test_a_tampered_checkpoint_is_named_as_damaged(data, tmp_path, edit, expect):
    out = tmp_path / "run"
    train(small_net(), data, TrainConfig(epochs=1, batch_size=64, lr=0.05), out_dir=out, progress=False)
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"] = CFG.to_dict()  # resumable under the 2-epoch config
    torch.save(state, out / "last.pt")
    _tamper(out / "last.pt", edit)
    with pytest.raises(CondenseError, match=expect):
        train(small_net(), data, CFG, out_dir=out, resume=True, progress=False)


def test_train_refuses_a_folder_that_is_not_a_run_and_keeps_user_files_in_one(data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("mine")
    with pytest.raises(CondenseError, match="not a training run folder"):
        train(small_net(), data, TrainConfig(epochs=1, batch_size=64), out_dir=other, progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["metrics.csv"]
    run = tmp_path / "run"
    train(small_net(), data, TrainConfig(epochs=1, batch_size=64), out_dir=run, progress=False)
    (run / "notes.txt").write_text("mine")
    train(small_net(), data, TrainConfig(epochs=1, batch_size=64), out_dir=run, overwrite=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine" and read_manifest(run)["kind"] == "training-run"


def test_a_run_that_fails_before_writing_leaves_no_folder(data, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(CondenseError):
        train(small_net(), data, TrainConfig(epochs=1, batch_size=10_000), out_dir=out, progress=False)
    assert not out.exists()


# --- files the tool reads back: absurd content is a one-line error, not an allocation or a RecursionError ---


def test_absurd_num_classes_is_refused_before_allocating(netfile, tmp_path, capsys):
    assert main(["zoo:resnet_tiny", "--num-classes", str(10**9), "--dry-run"]) == 1
    assert "num_classes=1000000000 is not a class count" in capsys.readouterr().err
    assert _condense("-o", "d") == 0
    meta = json.loads((tmp_path / "d" / "condensed.json").read_text())
    meta["model"] = {"kind": "zoo", "name": "resnet_tiny", "path": "", "factory": ""}
    meta["model_kwargs"] = {"num_classes": 10**9}
    (tmp_path / "d" / "condensed.json").write_text(json.dumps(meta))
    with pytest.raises(CondenseError, match="not a class count"):
        condense.load(tmp_path / "d")


def test_a_deeply_nested_condensed_json_is_a_one_line_error(netfile, tmp_path, capsys):
    assert _condense("-o", "d") == 0
    (tmp_path / "d" / "condensed.json").write_text("[" * 200_000 + "]" * 200_000)
    capsys.readouterr()
    assert main(["count", "d"]) == 1
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "unexpected" not in err
    assert _condense("-o", "d") == 0  # its manifest lists the file: the tool's own, replaced whole
    condense.load(tmp_path / "d", trust_code=True)


# --- a full disk: one line that says so, and nothing left behind -----------------------------------------------


def test_export_onnx_on_a_full_disk_says_so(netfile, tmp_path, capsys):
    from test_io import _tmpfs

    assert _condense("-o", "d") == 0
    with _tmpfs(tmp_path / "fs", "16k") as fs:
        capsys.readouterr()
        assert main(["export-onnx", "d", "--trust-code", "-o", str(fs / "m.onnx")]) == 1
        err = capsys.readouterr().err
        assert "no space left on" in err and "ONNX mapping" not in err and "unexpected" not in err
        assert list(fs.iterdir()) == []


def test_train_on_a_full_disk_leaves_no_empty_folder(netfile, tmp_path, capsys):
    from test_io import _tmpfs

    npz = tiny_mnist(tmp_path / "mnist.npz")
    with _tmpfs(tmp_path / "fs", "8k") as fs:
        (fs / "filler").write_bytes(b"x" * 7000)
        assert (
            main(
                [
                    "train",
                    "zoo:resnet_tiny",
                    "--data",
                    f"mnist:{npz}",
                    "--epochs",
                    "1",
                    "--limit-train",
                    "128",
                    "--limit-test",
                    "64",
                    "--batch-size",
                    "64",
                    "--threads",
                    "1",
                    "-o",
                    str(fs / "run"),
                ]
            )
            == 1
        )
        err = capsys.readouterr().err
        assert "no space left on" in err and "unexpected" not in err
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]


# --- single-file outputs replace only their own kind of file ----------------------------------------------------


def test_export_onnx_and_bench_csv_never_overwrite_a_user_file(netfile, tmp_path, capsys):
    assert _condense("-o", "d") == 0
    (tmp_path / "notes.onnx").write_text("my notes")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    capsys.readouterr()
    assert main(["export-onnx", "d", "--trust-code", "-o", "notes.onnx"]) == 1
    assert "exists and is not an ONNX model condense wrote" in capsys.readouterr().err
    assert main(["bench", "d", "--trust-code", "--csv", "table.csv", "--repeats", "1"]) == 1
    assert "exists and is not a bench CSV condense wrote" in capsys.readouterr().err
    assert (tmp_path / "notes.onnx").read_text() == "my notes" and (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    assert main(["export-onnx", "d", "--trust-code", "-o", "m.onnx"]) == 0
    assert main(["export-onnx", "d", "--trust-code", "-o", "m.onnx"]) == 0  # its own file: replaced


def test_a_failed_command_leaves_no_empty_default_folder(netfile, tmp_path, capsys):
    assert main(["zoo:resnet_tiny", "--budget", "1K"]) == 1  # infeasible: nothing saved
    assert not (tmp_path / "condensed").exists()
    assert main(["m.py:net", "--input-size", "3x16x16", "-o", "a/b/c", "--budget", "1K"]) == 1
    assert not (tmp_path / "a").exists()
