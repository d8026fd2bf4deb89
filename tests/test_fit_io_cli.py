"""fit / condense / save / load / the CLI, end to end on small inputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from conftest import ConvStage

import condense
from condense import BudgetError, CondenseError
from condense.cli import main

SMALL = (3, 64, 64)


@pytest.fixture(scope="module")
def resnet18():
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


def test_default_plan_is_the_papers(resnet18):
    res = condense.fit(resnet18, input_size=SMALL)
    assert [r.m for r in res.rows] == [1, 1, 1, 1]
    assert {c.options["K"] for c in res.plan.choices.values()} == {5}
    assert res.macs_after < res.macs_before and res.params_after < res.params_before
    measured = condense.count(res.model, SMALL).attrs
    assert (measured["macs"], measured["params"]) == (res.macs_after, res.params_after)


@pytest.mark.parametrize("budget", ["110M", "75%"])
def test_mac_budget_is_met_as_measured_and_used(resnet18, budget):
    res = condense.fit(resnet18, macs=budget, input_size=SMALL)
    limit = condense.parse_budget(budget).resolve(res.macs_before)
    assert res.macs_after <= limit
    assert condense.count(res.model, SMALL).attrs["macs"] == res.macs_after
    # using the budget: no single block could be given back without breaking it
    smallest = condense.fit(resnet18, macs="1G", K=1, input_size=SMALL)  # within budget: unchanged
    assert "already within budget" in smallest.message


def test_k_stays_at_five_unless_asked_to_fill_the_budget(resnet18):
    # resnet18 @64x64 is ~149M MACs; at 120M the blocks leave budget over that only more PDE steps could use
    plain = condense.fit(resnet18, macs="120M", input_size=SMALL)
    filled = condense.fit(resnet18, macs="120M", input_size=SMALL, fill_K=True)
    assert {c.options["K"] for c in plain.plan.choices.values()} == {5}
    K = {c.options["K"] for c in filled.plan.choices.values()}
    assert len(K) == 1 and 5 < K.pop() <= 20
    assert plain.macs_after < filled.macs_after <= 120e6
    assert condense.count(filled.model, SMALL).attrs["macs"] == filled.macs_after
    assert [r.m for r in plain.rows] == [r.m for r in filled.rows]


def test_param_budget_and_both(resnet18):
    res = condense.fit(resnet18, params="6M", input_size=SMALL)
    assert res.params_after <= 6e6
    both = condense.fit(resnet18, macs="120M", params="9M", input_size=SMALL)
    assert both.macs_after <= 120e6 and both.params_after <= 9e6


def test_infeasible_budget_states_the_smallest_reachable_figure(resnet18):
    with pytest.raises(BudgetError, match=r"smallest reachable \d"):
        condense.fit(resnet18, macs="1M", input_size=SMALL)


def test_no_repeats_is_reported_not_an_error_without_a_budget_it_breaks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    res = condense.fit(model, input_size=(3, 16, 16))
    assert "no repeated" in res.message and not res.plan.choices
    res = condense.fit(model, macs="1G", input_size=(3, 16, 16))
    assert "no repeated" in res.message and not res.plan.choices and res.macs_budget == 1e9


def test_no_repeats_and_a_budget_it_breaks_is_an_error_with_the_reachable_figure():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    macs, _ = condense.fit(model, input_size=(3, 16, 16)).macs_after, None
    with pytest.raises(condense.BudgetError, match=r"MAC budget 1.00K is below the smallest reachable .*no repeated"):
        condense.fit(model, macs="1K", input_size=(3, 16, 16))
    with pytest.raises(condense.BudgetError, match="parameter budget"):
        condense.fit(model, params="10%", input_size=(3, 16, 16))
    assert macs > 1000


def test_fit_does_not_touch_the_input(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    condense.fit(resnet18, macs="60%", input_size=SMALL)
    assert all(torch.equal(v, resnet18.state_dict()[k]) for k, v in before.items())


Stage = ConvStage


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stage = Stage(16, 5)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def test_user_model_python_api_and_load_with_factory(tmp_path):
    model = UserNet()
    small = condense.condense(model, input_size=(3, 32, 32))
    assert condense.count(small, (3, 32, 32)).attrs["macs"] < condense.count(model, (3, 32, 32)).attrs["macs"]
    res = condense.fit(model, macs="40%", input_size=(3, 32, 32))
    out = condense.save(res, tmp_path / "user")
    with pytest.raises(CondenseError, match="pass it"):
        condense.load(out)
    loaded = condense.load(out, model=UserNet)
    x = torch.randn(2, 3, 32, 32)
    res.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), res.model(x))


def _write_factory(tmp_path: Path) -> Path:
    src = tmp_path / "nets.py"
    src.write_text(
        "import torch.nn as nn\n"
        "def net():\n"
        "    layers = [nn.Conv2d(3, 8, 3, padding=1)]\n"
        "    for _ in range(4):\n"
        "        layers += [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())]\n"
        "    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n"
    )
    return src


def test_cli_saves_a_directory_that_loads_back_in_a_fresh_process(tmp_path):
    src = _write_factory(tmp_path)
    out = tmp_path / "out"
    assert main([f"{src}:net", "--input-size", "3x16x16", "--budget", "60%", "-o", str(out)]) == 0
    meta = json.loads((out / "condensed.json").read_text())
    assert meta["counts"]["macs_after"] <= 0.6 * meta["counts"]["macs_before"]
    x = torch.randn(1, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import torch, condense, sys; m = condense.load(sys.argv[1], trust_code=True); x = torch.load(sys.argv[2]);"
        "torch.save(m(x), sys.argv[3]); print(condense.count(m, (3, 16, 16)).attrs['macs'])"
    )
    elsewhere = tmp_path / "elsewhere"  # the file's path is recorded absolute: loads from any folder
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        cwd=elsewhere,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) == meta["counts"]["macs_after"]
    here = condense.load(out, trust_code=True)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), here(x))


def test_cli_json_and_dry_run(tmp_path, capsys):
    src = _write_factory(tmp_path)
    assert (
        main(
            [
                f"{src}:net",
                "--input-size",
                "3x16x16",
                "--params",
                "80%",
                "--dry-run",
                "--json",
                "-o",
                str(tmp_path / "never"),
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["params_after"] <= 0.8 * data["params_before"] and data["output"] is None
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["timm:not_a_model_xyz", "--budget", "1G"], "unknown timm model"),
        (["timm:resnet18", "--budget", "12Q"], "bad budget"),
        (["timm:resnet18", "--budget", "1K", "--input-size", "3x32x32"], "smallest reachable"),
        (["timm:resnet18", "--input-size", "3x"], "bad input size"),
        (["timm:resnet18", "--checkpoint", "/nonexistent.pth"], "does not exist"),
        (["timm:resnet18", "--layer", "fancy"], "unknown layer type"),
        (["timm:resnet18", "--velocity", "warp"], "velocity"),
    ],
)
def test_cli_bad_input_is_one_line_exit_1_no_files(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["timm:resnet18", "--checkpoint", str(bad), "--input-size", "3x32x32", "-o", str(tmp_path / "o")]) == 1
    assert "not readable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_checkpoint_is_loaded_and_saved_weights_follow(tmp_path):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=10)
    condense.load_checkpoint(fresh, tmp_path / "w.safetensors")
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)
    with pytest.raises(
        CondenseError, match=r"do not fit ResNet \(2 of other shapes: fc.weight \(10, 512\) vs \(1000, 512\)"
    ):
        condense.load_checkpoint(timm.create_model("resnet18", pretrained=False), tmp_path / "w.safetensors")


def test_untraceable_model_names_the_module():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)

    with pytest.raises(CondenseError) as err:
        condense.fit(nn.Sequential(Branchy(), Branchy()), input_size=(3, 8, 8))
    assert "\n" not in str(err.value)


def test_preserve_keeps_the_pretrained_function_of_the_kept_path(resnet18):
    """With preserve, each run computes blocks[:m] then a copy of block m: the output changes only by the
    blocks after it, and with m = r - 1 (nothing dropped after the copy) it is exactly the original."""
    from condense.graph import find_runs

    found = find_runs(resnet18, SMALL, count=False)
    res = condense.fit(resnet18, input_size=SMALL, preserve=True)  # resnet18: r = 2, so m = 1 = r - 1
    assert all(c.init == "block" and c.options["zero_init"] for c in res.plan.choices.values())
    assert len(found.runs) == 4
    x = torch.randn(2, *SMALL)
    resnet18.eval()
    res.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), resnet18(x), rtol=1e-4, atol=1e-4)
    plain = condense.fit(resnet18, input_size=SMALL)
    plain.model.eval()
    with torch.no_grad():
        assert (plain.model(x) - resnet18(x)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--budget", "-5M"], "bad budget '-5M': must be positive"),
        (["--budget", "1e400"], "bad budget '1e400': not a finite number"),
        (["--params", "-1"], "bad budget '-1': must be positive"),
    ],
)
def test_budget_errors_are_one_line_exit_1_and_write_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    assert main(["timm:resnet18", "--input-size", "3x32x32", "-o", str(out)] + argv) == 1
    err = capsys.readouterr().err
    assert needle in err and "usage:" not in err and not out.exists()


def test_a_budget_the_model_cannot_meet_is_an_error_not_a_claim(tmp_path, capsys):
    src = tmp_path / "flat.py"
    src.write_text(
        "import torch.nn as nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), "
        "nn.Conv2d(8, 16, 3, stride=2))\n"
    )
    out = tmp_path / "out"
    assert main([f"{src}:net", "--input-size", "3x16x16", "--budget", "10%", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "below the smallest reachable" in captured.err and "budget met" not in captured.out
    assert not out.exists()


def test_preserve_infeasibility_names_no_preserve(tmp_path, capsys):
    src = _write_factory(tmp_path)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nets_{id(tmp_path)}", src)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    torch.save(nets.net().state_dict(), tmp_path / "w.pth")
    argv = [f"{src}:net", "--input-size", "3x16x16", "--budget", "50%", "--dry-run"]
    assert main(argv + ["--checkpoint", str(tmp_path / "w.pth")]) == 1
    assert "--no-preserve" in capsys.readouterr().err
    assert main(argv + ["--checkpoint", str(tmp_path / "w.pth"), "--no-preserve"]) == 0


def test_every_help_shows_the_defaults():
    """Each option of every command whose default means something says it in --help."""
    import argparse

    from condense._export import _parser as onnx_parser
    from condense._help import HelpFormatter
    from condense.bench.models import _parser as bench_parser
    from condense.cli import _main_parser, _sub_parser
    from search._cli import compare_parser, export_parser, search_parser

    parsers = [
        _main_parser(),
        *(_sub_parser(n) for n in ("find", "count", "train", "recipe")),
        search_parser(),
        export_parser(),
        compare_parser(),
        bench_parser(),
        onnx_parser(),
    ]
    parsers += [
        a.choices[n] for a in parsers[4]._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices
    ]  # recipe list / footprint / run
    checked = 0
    for parser in parsers:
        assert parser.formatter_class is HelpFormatter, parser.prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            quiet = action.default in (None, False, "", [], (), argparse.SUPPRESS)
            if not action.option_strings or quiet or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
            assert "default" in formatter._get_help_string(action).lower(), (parser.prog, action.option_strings)
            checked += 1
    assert checked >= 30
    text = " ".join(_sub_parser("train").format_help().split())
    assert "images per step (default: 128)" in text and "--no-augment the same as --augment none" in text


def test_zero_pde_steps_is_an_error(capsys):
    assert main(["timm:resnet18", "--input-size", "3x32x32", "--K", "0", "--dry-run"]) == 1
    assert "K=0: the number of PDE steps must be an integer from 1 to 100" in capsys.readouterr().err
