"""``condense compare VERSUS_DIR``: a versus folder's depth, width and joint arms as three fronts (mean accuracy
over seeds against the folder's one latency run), with hypervolumes and dominance; bad folders are one line.
The versus records are written here with known figures, so every number can be checked by hand."""

import json
from pathlib import Path

import pytest

from condense import CondenseError
from condense.bench._versus_arms import ARMS, AXES, Arm
from search._cli import compare_main
from search._compare import hypervolume
from search._versus_fronts import is_versus_dir, versus_fronts

# budget -> arm -> (accuracies per seed, b1 ratio, b32 ratio)
ARMS_RUN = {
    "50%": {
        "drop-calibrate": ([0.60, 0.62], 0.50, 0.52),
        "tp-group": ([0.70], 0.75, 0.78),
        "joint-drop-calibrate": ([0.71, 0.73], 0.60, 0.62),
        "original-ft": ([0.80], 1.0, 1.0),
    },
    "30%": {
        "drop-calibrate": ([0.55], 0.35, 0.33),
        "tp-group": ([0.66], 0.58, 0.66),
        "joint-drop-calibrate": ([0.69], 0.48, 0.50),
    },
}


def write_versus(d: Path, runs=ARMS_RUN, timed=True) -> Path:
    d.mkdir(parents=True)
    budgets, ms = {}, {"original": {"1": {"ms": 2.0, "ratio": 1.0}, "32": {"ms": 30.0, "ratio": 1.0}}}
    for budget, arms in runs.items():
        recs = {}
        for arm, (accs, r1, r32) in arms.items():
            seeds = {str(i): {"done": True, "test_acc": a, "zero_shot_acc": 0.1} for i, a in enumerate(accs)}
            recs[arm] = {"status": "ok", "macs": 1000, "params": 100, "target_macs": 1000.0, "seeds": seeds}
            ms[f"{budget}/{arm}"] = {"1": {"ms": 2.0 * r1, "ratio": r1}, "32": {"ms": 30.0 * r32, "ratio": r32}}
        budgets[budget] = {"target_macs": 1000.0, "arms": recs}
    recs = budgets["30%"]["arms"]
    recs["global-calibrate"] = {"status": "infeasible", "reason": "too small", "hint": "", "seeds": {}}
    recs["drop-calibrate"]["seeds"]["1"] = {"done": False}  # a seed still training is left out
    data = {
        "format": "condense-versus/1",
        "settings": {},
        "original": {"label": "net", "macs": 2000, "params": 200, "test_acc": 0.78},
        "budgets": budgets,
        "latency": {"setting": {"batches": [1, 32]}, "ms": ms} if timed else None,
    }
    (d / "versus.json").write_text(json.dumps(data))
    return d


def test_members_are_mean_accuracies_grouped_by_axis(tmp_path):
    d = write_versus(tmp_path / "v")
    assert is_versus_dir(d) and not is_versus_dir(tmp_path)
    members, summary, batches = versus_fronts(d)
    assert batches == (1, 32)
    rows = {(r["budget"], r["arm"]): r for _, r in members.iterrows()}
    assert set(rows) == {("", "original")} | {(b, a) for b in ARMS_RUN for a in ARMS_RUN[b] if a != "original-ft"}
    r = rows[("50%", "joint-drop-calibrate")]
    assert (r["study"], r["seeds"], r["b1_ratio"], r["b32_ratio"]) == ("joint", 2, 0.60, 0.62)
    assert r["accuracy"] == pytest.approx(0.72) and r["accuracy_std"] == pytest.approx(0.01414, abs=1e-4)
    assert rows[("30%", "drop-calibrate")]["seeds"] == 1  # the unfinished seed 1 is not averaged in
    assert rows[("50%", "tp-group")]["study"] == "width" and rows[("50%", "drop-calibrate")]["study"] == "depth"
    assert list(summary["study"].unique()) == ["depth", "width", "joint"]


def test_hypervolume_and_dominance_by_hand(tmp_path):
    _, summary, _ = versus_fronts(write_versus(tmp_path / "v"))
    s = {(r["study"], r["batch"]): r for _, r in summary.iterrows()}
    joint = s[("joint", 1)]
    assert joint["hypervolume"] == pytest.approx(hypervolume([(1 - 0.72, 0.60), (1 - 0.69, 0.48)], (1, 1)))
    assert joint["best_accuracy"] == pytest.approx(0.72)
    # joint (0.48, 0.69), (0.60, 0.72) against width (0.58, 0.66), (0.75, 0.70): both width points dominated
    assert joint["covers[width]"] == 1.0
    # depth (0.35, 0.55) is faster than every joint point: not dominated; (0.50, 0.61) is, by (0.48, 0.69)
    assert joint["covers[depth]"] == 0.5
    assert s[("depth", 1)]["covers[joint]"] == 0.0 and s[("width", 32)]["covers[joint]"] == 0.0


def test_arms_filter_and_bad_folders_are_errors(tmp_path):
    d = write_versus(tmp_path / "v")
    members, summary, _ = versus_fronts(d, arms=["tp-group", "joint-drop-calibrate"])
    assert set(members["study"]) == {"original", "width", "joint"} and set(summary["study"]) == {"width", "joint"}
    with pytest.raises(CondenseError, match="no arm 'nope'"):
        versus_fronts(d, arms=["nope"])
    with pytest.raises(CondenseError, match="no depth, width or joint arm"):
        versus_fronts(d, arms=["original-ft"])
    with pytest.raises(CondenseError, match="no latency run"):
        versus_fronts(write_versus(tmp_path / "untimed", timed=False))
    partial = write_versus(tmp_path / "partial")
    data = json.loads((partial / "versus.json").read_text())
    del data["latency"]["ms"]["30%/tp-group"]
    (partial / "versus.json").write_text(json.dumps(data))
    with pytest.raises(CondenseError, match="no latency from its last timing run for 30%/tp-group"):
        versus_fronts(partial)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "versus.json").write_text("{not json")
    with pytest.raises(CondenseError, match="not readable"):
        versus_fronts(tmp_path / "junk")


def test_every_arm_has_an_axis():
    assert {a.axis for a in ARMS.values()} <= set(AXES)
    assert ARMS["tp-l1"].axis == "width" and ARMS["joint-choose"].axis == "joint"
    assert ARMS["choose-all"].axis == "joint" and not ARMS["choose-all"].default  # run only when named
    assert ARMS["global-calibrate"].axis == "depth" and ARMS["original-ft"].axis == "reference"
    with pytest.raises(ValueError, match="axis"):
        Arm("x", "x", lambda *a: None, axis="diagonal")


def test_cli_prints_tables_and_writes_csv_members_and_plot(tmp_path, capsys):
    d = write_versus(tmp_path / "v")
    out = tmp_path / "o"
    out.mkdir()
    argv = [str(d), "--csv", str(out / "f.csv"), "--members", str(out / "m.csv"), "--plot", str(out / "f.png")]
    assert compare_main(argv) == 0
    printed = capsys.readouterr().out
    assert "fronts: depth, width and joint plans" in printed and "joint-drop-calib" in printed
    header = printed.split("fronts: depth, width and joint plans")[1].splitlines()[2]
    assert "axis" in header and "study" not in header
    assert (out / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "f.csv").read_text().splitlines()[0].startswith("study,batch")
    assert (out / "m.csv").read_text().splitlines()[0].startswith("study,arm")


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--latency", "1"], "--latency and --finished do not apply"),
        (["OTHER"], "compared on its own"),
        (["--arms", "nope"], "no arm 'nope'"),
    ],
)
def test_cli_bad_input_is_one_line(extra, needle, tmp_path, capsys):
    d = write_versus(tmp_path / "v")
    extra = [str(tmp_path) if a == "OTHER" else a for a in extra]
    assert compare_main([str(d), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
