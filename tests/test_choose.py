"""``condense.choose`` and ``condense MODEL --calibrate DATA --choose``: every candidate plan is built, calibrated
briefly and scored on training images the calibration never saw; the most accurate wins and rebuilds; bad input
is one line. On zoo:resnet_tiny at 3x32x32 and MNIST-format data the tests build."""

import hashlib
import json

import pytest
import torch

from conftest import tiny_mnist

import condense
from condense import BudgetError, CondenseError, ConfigError
from condense._calibrate import LR_GRID, _train_batches
from condense._choose import (
    DEFAULT_CANDIDATES,
    ChooseConfig,
    candidate_options,
    check_record,
    held_out_accuracy,
    short_split,
)
from condense.cli import main

SIZE = (3, 32, 32)
SHORT = dict(images=96, score_images=64)
ALL = (*DEFAULT_CANDIDATES, "width")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return tiny_mnist(tmp_path_factory.mktemp("data") / "m.npz", n_train=256)


@pytest.fixture(scope="module")
def bundle(npz):
    return condense.load_data(f"mnist:{npz}", input_size=SIZE)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return condense.resolve_model("zoo:resnet_tiny").model.eval()


@pytest.fixture(scope="module")
def choice(original, bundle):
    return condense.choose(original, bundle, macs="60%", input_size=SIZE, candidates=ALL, **SHORT)


def _digest(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x]


def test_short_split_leaves_held_out_images():
    assert short_split(10000) == (2048, 1000)
    assert short_split(3000) == (2000, 1000)
    assert short_split(256) == (170, 86)
    for n in (2, 3, 50, 3047, 3049):
        images, score = short_split(n)
        assert images >= 1 and score >= 1 and images + score <= n


def test_candidate_options_drop_the_pde_options_for_drop_and_add_width_for_joint():
    given = {"macs": "50%", "input_size": SIZE, "seed": 3, "layer": "global", "K": 2, "init": "block", "dt": 0.1}
    assert candidate_options("depth", given) == {**given, "layer": "global"}
    assert candidate_options("joint", given) == {**given, "layer": "global", "width": "auto"}
    drop = candidate_options("depth-drop", given)
    assert drop == {"macs": "50%", "input_size": SIZE, "seed": 3, "layer": "drop"}
    assert candidate_options("joint-drop", given) == {**drop, "width": "auto"}
    assert candidate_options("depth", {"macs": 1.0})["layer"] == "global"  # the default layer
    assert candidate_options("width", given) == {**given, "layer": "global", "width": "channels"}


def test_every_candidate_is_tried_and_the_most_accurate_wins(choice, original, bundle):
    names = [t.name for t in choice.tried]
    assert names == list(ALL)
    ok = [t for t in choice.tried if t.status == "ok"]
    assert ok and all(0 <= t.score <= 1 and t.macs <= 0.6 * choice.result.macs_before for t in ok)
    assert all(t.calib_lr in LR_GRID for t in ok)  # each candidate's picked calibration rate, recorded
    assert all(t.calib_lr is None for t in choice.tried if t.status != "ok")
    best = max(ok, key=lambda t: (t.score, -t.macs))
    assert choice.name == best.name
    # the winner's model scores what its record says, measured again here
    again = held_out_accuracy(choice.result.model, bundle, skip=96, count=64, seed=0, device=torch.device("cpu"))
    assert again == pytest.approx(best.score)
    # its options rebuild the same plan with fit
    rebuilt = condense.fit(original, macs="60%", input_size=SIZE, **choice.options)
    assert rebuilt.plan == choice.result.plan and rebuilt.macs_after == best.macs
    assert ("width" in choice.options) == (choice.name.startswith("joint") or choice.name == "width")
    assert choice.options["layer"] == ("drop" if choice.name.endswith("drop") else "global")
    width = next(t for t in choice.tried if t.name == "width")  # channels only: every block kept
    assert width.status == "ok" and "every block kept" in width.plan
    assert choice.name in choice.summary() and "held-out training images" in choice.summary()


def test_choose_is_reproducible_and_leaves_the_original_alone(choice, original, bundle):
    before = {k: v.clone() for k, v in original.state_dict().items()}
    again = condense.choose(original, bundle, macs="60%", input_size=SIZE, candidates=ALL, **SHORT)
    assert [(t.name, t.score, t.macs) for t in again.tried] == [(t.name, t.score, t.macs) for t in choice.tried]
    for k, v in original.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_scoring_images_were_never_calibrated_on(bundle):
    """The held-out images are the ones after calibrate's first ``images`` of the same seeded shuffle."""
    seen = torch.cat(list(_train_batches(bundle, 96, 64, 0, 0)))
    scored = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            scored.append(x.clone())
            return torch.zeros(len(x), 10)

    held_out_accuracy(Recorder(), bundle, skip=96, count=64, seed=0, device=torch.device("cpu"))
    scored = torch.cat(scored)
    assert len(seen) == 96 and len(scored) == 64
    assert not set(_digest(seen)) & set(_digest(scored))


def test_the_record_round_trips_through_the_checker(choice):
    rec = json.loads(json.dumps(choice.to_dict()))
    assert check_record(rec) is None and rec["chosen"] == choice.name
    assert [t["name"] for t in rec["tried"]] == list(ALL)
    for broken, needle in (
        ({**rec, "chosen": 3}, "'chosen'"),
        ({**rec, "images": -1}, "'images'"),
        ({**rec, "tried": [{"name": "depth", "score": 1.5}]}, "'score'"),
        ("nope", "object"),
    ):
        assert needle in check_record(broken)


def test_bad_input_is_a_one_line_error(original, bundle):
    with pytest.raises(CondenseError, match="decides the width"):
        condense.choose(original, bundle, macs="60%", input_size=SIZE, width=0.25, **SHORT)
    with pytest.raises(CondenseError, match="already tries drop"):
        condense.choose(original, bundle, macs="60%", input_size=SIZE, layer="drop", **SHORT)
    with pytest.raises(CondenseError, match="training images"):
        condense.choose(original, bundle, macs="60%", input_size=SIZE, images=200, score_images=100)
    with pytest.raises(BudgetError, match="no candidate plan meets the budget"):
        condense.choose(original, bundle, macs="1%", input_size=SIZE, **SHORT)
    for kwargs in (dict(candidates=("depth", "magic")), dict(candidates=()), dict(images=0), dict(score_images=0)):
        with pytest.raises(ConfigError):
            ChooseConfig(**kwargs)


def test_cli_choose_saves_the_choice_and_loads_back(npz, tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["zoo:resnet_tiny", "--input-size", "3x32x32", "--budget", "60%", "--calibrate", f"mnist:{npz}"]
    assert (
        main(argv + ["--calib-images", "200", "--calib-test", "32", "--choose", "--threads", "1", "-o", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    meta = condense.read_meta(out)
    rec = meta["choice"]
    assert f"chose {rec['chosen']}" in printed and (rec["images"], rec["score_images"]) == short_split(200)
    assert meta["calibration"]["images"] == 200  # the winner is then calibrated in full
    assert [t["name"] for t in rec["tried"]] == list(DEFAULT_CANDIDATES)  # channels alone only when named
    assert ("width" in meta) == rec["chosen"].startswith("joint")
    model = condense.load(out)
    x = torch.randn(2, *SIZE)
    assert model(x).shape == (2, 10)
    # a corrupted record is refused on load, naming the field
    path = out / condense.META
    data = json.loads(path.read_text())
    data["choice"]["tried"] = "x"
    path.write_text(json.dumps(data))
    with pytest.raises(CondenseError, match="field 'choice'"):
        condense.read_meta(out)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--choose"], "--choose needs --calibrate"),
        (["--calibrate", "DATA", "--choose", "--width", "0.25"], "chooses the width itself"),
        (["--calibrate", "DATA", "--choose", "--layer", "drop"], "already tries drop"),
    ],
)
def test_cli_bad_choose_input_is_one_line_exit_1_no_files(argv, needle, npz, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [f"mnist:{npz}" if a == "DATA" else a for a in argv]
    assert main(["zoo:resnet_tiny", "--input-size", "3x32x32", "--budget", "60%"] + argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
