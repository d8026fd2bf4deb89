"""Comparing searches: exact hypervolume, dominance share, the random-search baseline and `condense compare`."""

import json

import numpy as np
import pandas as pd
import pytest

import condense
from search import compare_main, compare_studies, hypervolume
from search._compare import dominated_share, pareto_points
from search._study import SearchConfig, make_sampler


def _monte_carlo_hv(points, ref, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    lo = np.min(points, axis=0)
    samples = lo + rng.random((n, len(ref))) * (np.asarray(ref) - lo)
    covered = np.zeros(n, bool)
    for p in points:
        covered |= np.all(samples >= p, axis=1)
    return covered.mean() * np.prod(np.asarray(ref) - lo)


def test_hypervolume_of_boxes_and_staircases():
    assert hypervolume([[0.5, 0.5, 0.5]], (1, 1, 1)) == pytest.approx(0.125)
    assert hypervolume([[0.0, 0.0, 0.0]], (1, 1, 1)) == pytest.approx(1.0)
    assert hypervolume([[1.0, 0.0, 0.0], [2, 2, 2]], (1, 1, 1)) == 0.0  # not strictly inside: nothing
    # two boxes, overlap subtracted: 0.5*1*1 + 1*0.5*1 - 0.5*0.5*1
    assert hypervolume([[0.5, 0, 0], [0, 0.5, 0]], (1, 1, 1)) == pytest.approx(0.75)
    # 2-D staircase
    assert hypervolume([[0.2, 0.8], [0.5, 0.4], [0.9, 0.1]], (1, 1)) == pytest.approx(0.8 * 0.2 + 0.5 * 0.4 + 0.1 * 0.3)
    # a dominated point and duplicates change nothing
    pts = [[0.2, 0.6, 0.3], [0.5, 0.2, 0.4], [0.3, 0.3, 0.7]]
    base = hypervolume(pts, (1, 1, 1))
    assert hypervolume(pts + [[0.6, 0.7, 0.8], pts[0]], (1, 1, 1)) == pytest.approx(base)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_matches_monte_carlo(seed):
    pts = np.random.default_rng(seed).random((12, 3)) * 0.9
    assert hypervolume(pts, (1, 1, 1)) == pytest.approx(_monte_carlo_hv(pts, (1, 1, 1)), abs=4e-3)


def test_pareto_points_and_dominated_share():
    pts = np.array([[0.1, 0.9, 0.5], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3], [0.2, 0.2, 0.2]])
    assert sorted(map(tuple, pareto_points(pts))) == [(0.1, 0.9, 0.5), (0.2, 0.2, 0.2)]
    a, b = np.array([[0.1, 0.1, 0.1]]), np.array([[0.2, 0.2, 0.2], [0.05, 0.5, 0.5]])
    assert dominated_share(a, b) == 0.5 and dominated_share(b, a) == 0.0


def test_random_sampler_is_seeded_per_trial():
    import optuna

    def draws(seed):
        study = optuna.create_study(
            sampler=make_sampler(SearchConfig(model="x", data="y", sampler="random", seed=seed))
        )
        return [study.ask().suggest_int("k", 1, 1000) for _ in range(6)]

    assert draws(3) == draws(3) != draws(4)
    with pytest.raises(condense.ConfigError, match="sampler"):
        SearchConfig(model="x", data="y", sampler="grid")


def _study_dir(path, sampler, points, ref=(1000, 100)):
    """A study directory as condense search writes it: search.json + trials.csv."""
    path.mkdir()
    (path / "search.json").write_text(
        json.dumps({"config": {"sampler": sampler}, "reference": {"macs": ref[0], "params": ref[1]}})
    )
    rows = [
        dict(trial=i, state="COMPLETE", status="trained", accuracy=a, macs=m, params=p, feasible=True, on_front=True)
        for i, (a, m, p) in enumerate(points)
    ]
    rows.append(
        dict(
            trial=len(rows),
            state="COMPLETE",
            status="over budget",
            accuracy=0.0,
            macs=900,
            params=90,
            feasible=False,
            on_front=False,
        )
    )
    pd.DataFrame(rows).to_csv(path / "trials.csv", index=False)
    return path


def test_compare_studies_and_command(tmp_path, capsys):
    good = _study_dir(tmp_path / "nsga", "nsgaii", [(0.8, 500, 50), (0.7, 300, 40)])
    bad = _study_dir(tmp_path / "rand", "random", [(0.6, 600, 60), (0.75, 700, 50)])
    df = compare_studies([good, bad]).set_index("study")
    # scaled: error, MACs/1000, params/100 -> boxes (0.2, 0.5, 0.5), (0.3, 0.3, 0.4); over-budget trials ignored
    want = hypervolume([[0.2, 0.5, 0.5], [0.3, 0.3, 0.4]], (1, 1, 1))
    assert df.loc["nsga", "hypervolume"] == pytest.approx(want)
    assert df.loc["nsga", "hypervolume"] > df.loc["rand", "hypervolume"]
    assert df.loc["nsga", "covers[rand]"] == 1.0 and df.loc["rand", "covers[nsga]"] == 0.0
    assert df.loc["nsga", "trials"] == 2 and df.loc["rand", "sampler"] == "random"
    png, csv = tmp_path / "f.png", tmp_path / "c.csv"
    assert compare_main([str(good), str(bad), "--plot", str(png), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "hypervolume" in out and "100%" in out
    assert png.read_bytes()[:4] == b"\x89PNG" and len(pd.read_csv(csv)) == 2
    assert compare_main([str(good), str(bad), "--csv", str(csv)]) == 0  # its own table: replaced
    mine = tmp_path / "grades.csv"
    mine.write_text("name,grade\nada,1\n")
    assert compare_main([str(good), str(bad), "--csv", str(mine)]) == 1  # a user's CSV: refused, kept
    assert mine.read_text() == "name,grade\nada,1\n" and "condense wrote" in capsys.readouterr().err
    other = _study_dir(tmp_path / "other", "nsgaii", [(0.8, 5, 5)], ref=(10, 10))
    assert compare_main([str(good), str(other)]) == 1  # another model
    assert compare_main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "another model" in err and "no search.json" in err and "Traceback" not in err
