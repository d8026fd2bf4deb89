"""ONNX and torch.export of condensed models: standard ops only, parity with PyTorch under onnxruntime.

Tolerance: every output element within 1e-4 abs + 1e-4 rel of PyTorch (measured: about 1e-6 on logits).
"""

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

import condense
from condense import CondenseError, GlobalConfig, GlobalLayer, ImplicitRD
from condense._export import export_onnx, export_onnx_main, export_program

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = (3, 32, 32)
ATOL = 1e-4


def _ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _domains_and_ops(path):
    proto = onnx.load(str(path))
    return {n.domain for n in proto.graph.node}, {n.op_type for n in proto.graph.node}


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    result = condense.fit(model, input_size=SIZE)  # the paper's default plan: 4 Global layers
    out = tmp_path_factory.mktemp("export") / "r18"
    condense.save(result, out, spec="timm:resnet18", model_kwargs={"num_classes": 10})
    return out


def test_condensed_resnet18_exports_to_standard_onnx_and_matches(resnet_dir, tmp_path):
    path = tmp_path / "r18.onnx"
    report = export_onnx(resnet_dir, path)
    assert path.is_file() and report.path == path
    assert [p.name for p in tmp_path.iterdir()] == ["r18.onnx"]  # no temporary file left behind
    assert report.exporter == "torchscript" and report.global_layers == 4
    assert report.checked and report.max_abs_diff <= ATOL and report.reference_max_abs > 0
    domains, ops = _domains_and_ops(path)
    assert domains <= {"", "ai.onnx"}  # no custom-domain op, no condense::advection_diffusion
    assert not any("advection" in op.lower() for op in ops)
    assert {"Slice", "Concat"} <= ops  # the periodic roll
    # independent check on another input and batch size (the batch axis is dynamic)
    model = condense.load(resnet_dir)
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        ref = model(x).numpy()
    got = _ort_run(path, x)
    assert got.shape == ref.shape == (3, 10)
    assert np.abs(got - ref).max() <= ATOL + ATOL * np.abs(ref).max()
    # the caller's model keeps the fused path (export works on a copy)
    assert all(m.config.impl == "auto" for m in model.modules() if isinstance(m, GlobalLayer))


OPTION_CASES = [
    dict(),  # velocity dwconv, diffusion constant, boundary periodic (the paper's)
    dict(velocity="zero", diffusion="dwconv", boundary="replicate"),
    dict(velocity="dwconv", diffusion="dwconv", boundary="zero"),
    dict(velocity="zero", diffusion="constant", boundary="zero", source="none"),
    dict(velocity="constant", boundary="replicate", impl="fused"),
    dict(velocity="separable", source="residual", boundary="periodic", residual=True, out_norm="batch"),
    dict(diffusion="dwconv", zero_init=True, init="block", K=3),
]


def _option_model(options):
    cfg = GlobalConfig(**options)
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) if cfg.init == "block" else None
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        GlobalLayer(8, cfg, block),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    with torch.no_grad():  # nonzero everything (velocity constants, zero-init gates), non-trivial BN statistics
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("options", OPTION_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_global_option_exports_and_matches(options, tmp_path):
    model = _option_model(options)
    path = tmp_path / "m.onnx"
    report = export_onnx(model, path, input_size=(3, 12, 16))
    assert report.exporter == "torchscript" and report.global_layers == 1
    assert report.max_abs_diff <= ATOL
    domains, ops = _domains_and_ops(path)
    assert domains <= {"", "ai.onnx"}
    x = torch.randn(2, 3, 12, 16)
    with torch.no_grad():
        ref = model(x).numpy()  # the model as the user runs it (fused kernel where available)
    assert np.abs(_ort_run(path, x) - ref).max() <= ATOL + ATOL * np.abs(ref).max()


def test_torch_export_eager_and_with_the_custom_op(resnet_dir):
    model = condense.load(resnet_dir)
    x = torch.randn(3, *SIZE)  # another batch size than the example: the batch axis is dynamic
    with torch.no_grad():
        ref = model(x)
    for impl, has_op in (("eager", False), ("keep", True)):
        program = export_program(resnet_dir, impl=impl)
        assert isinstance(program, torch.export.ExportedProgram)
        targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        assert any("condense.advection_diffusion" in t for t in targets) == has_op
        with torch.no_grad():
            assert (program.module()(x) - ref).abs().max() <= ATOL


def test_untranslatable_op_is_named_in_one_line_and_nothing_is_left(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ImplicitRD(4)).eval()
    path = tmp_path / "rd.onnx"
    with pytest.raises(CondenseError, match=r"at operator aten::fft_r?fft") as info:
        export_onnx(model, path, input_size=(3, 8, 8), exporter="torchscript")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_auto_falls_back_to_the_dynamo_exporter_for_ffts(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ImplicitRD(4)).eval()
    report = export_onnx(model, tmp_path / "rd.onnx", input_size=(3, 8, 8), opset=18)
    assert report.exporter == "dynamo" and "fft" in (report.fallback_reason or "")
    assert report.max_abs_diff <= ATOL
    assert _domains_and_ops(tmp_path / "rd.onnx")[0] <= {"", "ai.onnx"}


def test_missing_or_corrupt_directory_is_a_one_line_error(resnet_dir, tmp_path, capsys):
    with pytest.raises(CondenseError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "x.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "condensed.json").write_text("{not json")
    with pytest.raises(CondenseError, match="not readable JSON"):
        export_onnx(broken, tmp_path / "x.onnx")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "condensed.json").write_text((resnet_dir / "condensed.json").read_text())
    (damaged / "model.safetensors").write_bytes((resnet_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CondenseError, match="not readable"):
        export_program(damaged)
    meta = json.loads((resnet_dir / "condensed.json").read_text())
    del meta["plan"]
    (damaged / "condensed.json").write_text(json.dumps(meta))
    with pytest.raises(CondenseError, match=r"missing field\(s\) plan"):
        export_onnx(damaged, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    capsys.readouterr()
    assert export_onnx_main([str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1


def test_cli_prints_the_parity_figure(resnet_dir, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert export_onnx_main([str(resnet_dir), "-o", str(out), "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "max |diff|" in text and "OK" in text and "TorchScript" in text
