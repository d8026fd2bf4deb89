"""condense bench: runs on a tiny condensed model, writes the CSV, reports ratios.

No assertion compares timings (which model is faster is the benchmark's output, not a property to test on
a loaded machine): timed rows are checked for their structure (present, positive, consistent units); the
ratios asserted are those of MACs and parameters, which condense.count computes exactly."""

import csv
import json

import pytest
import torch

import condense
from condense import CondenseError, zoo
from condense.bench.models import CSV_COLUMNS, bench_main, run_bench

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    result = condense.fit(zoo.build("resnet_tiny"), input_size=SIZE)
    assert result.plan.choices
    out = tmp_path_factory.mktemp("bench") / "tiny"
    condense.save(result, out, spec="zoo:resnet_tiny")
    return out


def _row(result, task):
    """The one row of ``task`` (macs, params, latency, ...): never a timed row in place of a counted one."""
    rows = [r for r in result.rows if r["task"] == task]
    assert len(rows) == 1, [r["task"] for r in result.rows]
    return rows[0]


def _read(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_bench_writes_the_csv_with_positive_ratios(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    threads = torch.get_num_threads()
    code = bench_main(
        [
            str(tiny_dir),
            "--no-compile",
            "--repeats",
            "2",
            "--batch-sizes",
            "1,4",
            "--threads",
            "1",
            "--csv",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert torch.get_num_threads() == threads  # restored after the run
    text = capsys.readouterr().out
    assert "zoo:resnet_tiny" in text and "torch threads=1" in text and "speed-up" in text
    columns, rows = _read(out)
    assert tuple(columns) == CSV_COLUMNS
    assert [(r["task"], r["mode"], r["batch"]) for r in rows] == [
        ("macs", "", "1"),
        ("params", "", ""),
        ("latency", "eager", "1"),
        ("throughput", "eager", "4"),
        ("train", "eager", "4"),
    ]
    for r in rows:
        assert float(r["ratio"]) > 0 and float(r["original"]) > 0 and float(r["condensed"]) > 0
        if r["task"] not in ("macs", "params"):
            assert float(r["speedup"]) > 0 and float(r["original_ms"]) > 0 and r["repeats"] == "2"
            assert r["threads"] == "1" and r["note"] == ""
    macs = rows[0]
    assert int(macs["condensed"]) < int(macs["original"])  # the MAC ratio from condense.count
    assert float(macs["ratio"]) == pytest.approx(int(macs["condensed"]) / int(macs["original"]), rel=1e-5)
    thr = rows[3]  # throughput is images per second of the measured median time
    assert float(thr["original"]) == pytest.approx(4 / (float(thr["original_ms"]) / 1e3), rel=1e-4)


def test_a_failing_compile_is_reported_not_raised(tiny_dir, monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor is broken here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = run_bench(str(tiny_dir), batch_sizes=(2,), repeats=1, warmup=1, threads=1, train=False)
    compiled = [r for r in result.rows if r["mode"] == "compiled"]
    assert len(compiled) == 1
    row = compiled[0]
    assert row["original"] is None and row["condensed"] is None and row["ratio"] is None
    assert "inductor is broken here" in row["note"]
    eager = [r for r in result.rows if r["mode"] == "eager"][0]
    assert eager["ratio"] > 0


def test_a_model_spec_is_condensed_first_and_against_is_used(tiny_dir):
    result = run_bench(
        "zoo:resnet_tiny", input_size=SIZE, batch_sizes=(1,), repeats=1, warmup=1, threads=1, compile=False, train=False
    )
    assert result.original_label == "zoo:resnet_tiny"
    macs = _row(result, "macs")
    assert macs["condensed"] < macs["original"] and macs["ratio"] == macs["condensed"] / macs["original"]
    latency = _row(result, "latency")
    assert latency["original"] > 0 and latency["condensed"] > 0 and latency["unit"] == "ms"
    other = run_bench(
        str(tiny_dir),
        against="zoo:resnet_tiny_global",
        batch_sizes=(1,),
        repeats=1,
        warmup=1,
        threads=1,
        compile=False,
        train=False,
    )
    assert other.original_label == "zoo:resnet_tiny_global" and _row(other, "macs")["original"] > 0


def test_errors_are_one_line(tiny_dir, tmp_path, capsys):
    assert bench_main([str(tmp_path / "missing"), "--no-compile"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    python_built = tmp_path / "python_built"
    python_built.mkdir()
    meta = json.loads((tiny_dir / "condensed.json").read_text())
    meta["model"] = None
    (python_built / "condensed.json").write_text(json.dumps(meta))
    (python_built / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(CondenseError, match="--against"):
        run_bench(str(python_built), compile=False, train=False, repeats=1)
    # with --against the directory loads on that model
    result = run_bench(
        str(python_built),
        against="zoo:resnet_tiny",
        batch_sizes=(1,),
        repeats=1,
        warmup=1,
        threads=1,
        compile=False,
        train=False,
    )
    assert _row(result, "macs")["ratio"] < 1 and _row(result, "params")["ratio"] < 1


def test_pde_free_control_replaces_every_pde_layer_and_reports_ratios(tiny_dir, capsys):
    from condense.bench.pde_free import main, without_pde_layers
    from condense.pde import PDELayer

    model = condense.load(tiny_dir)
    n_pde = sum(isinstance(m, PDELayer) for m in model.modules())
    control, replaced = without_pde_layers(model)
    assert replaced == n_pde > 0
    assert not any(isinstance(m, PDELayer) for m in control.modules())
    assert sum(isinstance(m, PDELayer) for m in model.modules()) == n_pde  # the model itself is untouched
    x = torch.randn(2, *SIZE)
    assert control(x).shape == model(x).shape
    assert main([str(tiny_dir), "--eager", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert f"{n_pde} PDE layers replaced" in text and "identity control" in text and "MAC ratio" in text
    assert main(["timm:not_a_model_xyz", "--budget", "1M"]) == 1
