"""condense._resolve: one resolver for "a model spec or a saved directory -> a model"."""

import pytest
import torch

import condense
from condense._resolve import build_for_classes, is_model_dir, resolve_model


def test_a_spec_is_built_with_num_classes_only_when_it_differs(tmp_path):
    same = resolve_model("zoo:resnet20", num_classes=10)
    assert same.model_kwargs == {} and same.label == "resnet20" and not same.is_directory
    assert same.input_size == (3, 32, 32)
    other = resolve_model("zoo:resnet20", num_classes=7)
    assert other.model_kwargs == {"num_classes": 7} and other.model.fc.out_features == 7


def test_a_file_factory_without_num_classes_gets_a_clear_error(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10))\n"
    )
    spec = condense.parse_model_spec(f"{tmp_path / 'net.py'}:net")
    model, kwargs = build_for_classes(spec, 10)
    assert kwargs == {} and model[1].out_features == 10
    with pytest.raises(condense.CondenseError, match="takes no num_classes"):
        build_for_classes(spec, 3)
    resolved = resolve_model(f"{tmp_path / 'net.py'}:net")
    assert resolved.label == "net-net" and resolved.spec.path == str((tmp_path / "net.py").resolve())


def test_a_checkpoint_is_loaded_into_a_spec_and_refused_for_a_directory(tmp_path):
    model = condense.build_model("zoo:resnet20")
    for p in model.parameters():
        torch.nn.init.normal_(p)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    resolved = resolve_model("zoo:resnet20", checkpoint=str(weights))
    torch.testing.assert_close(resolved.model.conv1.weight, model.conv1.weight)

    result = condense.fit(model, macs="70%", input_size=(3, 32, 32))
    saved = tmp_path / "condensed"
    condense.save(result, saved, spec="zoo:resnet20")
    assert is_model_dir(saved) and not is_model_dir("zoo:resnet20") and not is_model_dir(tmp_path / "m.py")
    loaded = resolve_model(saved)
    assert loaded.is_directory and loaded.meta["format"].startswith("condense/") and loaded.label == str(saved)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), result.model.eval()(x))
    with pytest.raises(condense.CondenseError, match="drop --checkpoint"):
        resolve_model(saved, checkpoint=str(weights))


def test_a_damaged_directory_is_one_line(tmp_path):
    model = condense.build_model("zoo:resnet20")
    saved = tmp_path / "condensed"
    condense.save(condense.fit(model, macs="70%", input_size=(3, 32, 32)), saved, spec="zoo:resnet20")
    weights = next(p for p in saved.iterdir() if p.suffix in (".safetensors", ".pth", ".pt"))
    weights.write_bytes(b"not weights")
    with pytest.raises(condense.CondenseError) as info:
        resolve_model(saved)
    assert "\n" not in str(info.value)
