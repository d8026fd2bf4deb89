"""Compare the fronts of several searches of one model: hypervolume and mutual dominance (no plotting here).

In: study directories (their ``trials.csv`` and ``search.json``). Out: a DataFrame, one row per study.

The objectives are put on one scale before any figure is computed, so that a study's hypervolume does not
depend on the units: ``error = 1 - accuracy``, ``macs / macs_original`` and ``params / params_original``
(all minimised; the original model is the one in the studies' ``search.json``). The hypervolume is the
volume of that unit-ish box dominated by the study's feasible trials, with the reference point
``(1, 1, 1)`` = zero accuracy at the original model's cost; it is 0 for a study without a feasible trial
and grows towards 1 (a perfect model that costs nothing). ``covers[B]`` is the share of B's front points
weakly dominated by some point of this study's front (Zitzler's C-metric): 1.0 means this front is at
least as good as B's everywhere B has a point.

Studies whose objective is latency (``condense search --objective latency``) are compared in
``(error, latency_ms / latency_ms_original)`` with the reference point ``(1, 1)`` instead; the original's
latency is the one measured in the first study's ``search.json``. Studies of both kinds are not compared.

Re-timed fronts (``latency_fronts``, ``condense compare --latency 1,32``): latencies a search measured in
different runs, under different load, are not comparable across studies. So the members of every study's
front (its fine-tuned members with ``finished``) are loaded from their saved directories (never importing a
file without ``trust_code``) and timed with the original model interleaved in one run, at each batch size;
each study's front is then ``(error, latency / original's)`` per batch size, reference point ``(1, 1)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import condense
from condense import CondenseError
from condense._io import original_from_meta

from ._finish import FINISHED_CSV, _as_trials

__all__ = [
    "hypervolume",
    "pareto_points",
    "dominated_share",
    "compare_studies",
    "latency_fronts",
    "front_summary",
]

_OBJECTIVES = ("error", "macs_ratio", "params_ratio")


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of 2-D or 3-D points (every objective minimised) up to ``reference``.

    Points that do not strictly dominate the reference add nothing. 3-D: slices along the last objective,
    each the 2-D area of the points at or below it (O(n^2 log n), fine for search-sized fronts)."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 2:
        return _hv2_exact(pts, ref)
    if pts.shape[1] != 3:
        raise ValueError(f"hypervolume supports 2 or 3 objectives, got {pts.shape[1]}")
    pts = pts[np.argsort(pts[:, 2], kind="stable")]
    volume = 0.0
    for i in range(len(pts)):
        z_next = pts[i + 1, 2] if i + 1 < len(pts) else ref[2]
        if z_next > pts[i, 2]:
            volume += _hv2_exact(pts[: i + 1, :2], ref[:2]) * (z_next - pts[i, 2])
    return float(volume)


def _hv2_exact(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D points: sweep by x, each point adds the strip up to the next x."""
    pts = points[np.lexsort((points[:, 1], points[:, 0]))]
    area, best_y = 0.0, ref[1]
    for i in range(len(pts)):
        best_y = min(best_y, pts[i, 1])
        x_next = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        area += (x_next - pts[i, 0]) * (ref[1] - best_y)
    return float(area)


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` weakly dominates ``b`` (no worse everywhere; all objectives minimised)."""
    return bool(np.all(a <= b))


def pareto_points(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of ``points`` (minimised), duplicates kept once."""
    pts = np.unique(np.asarray(points, dtype=float), axis=0)
    keep = [
        i
        for i, p in enumerate(pts)
        if not any(j != i and _dominates(q, p) and np.any(q < p) for j, q in enumerate(pts))
    ]
    return pts[keep]


def dominated_share(front: np.ndarray, others: np.ndarray) -> float:
    """Share of ``others`` weakly dominated by some point of ``front`` (C-metric); nan if ``others`` is empty."""
    if len(others) == 0:
        return float("nan")
    if len(front) == 0:
        return 0.0
    return float(np.mean([any(_dominates(f, o) for f in front) for o in others]))


def _load(study_dir: Path, finished: bool = False) -> tuple[dict, pd.DataFrame]:
    """``search.json`` and ``trials.csv`` (``finished``: ``finished.csv``, shaped like trials.csv)."""
    config_path, trials_path = study_dir / "search.json", study_dir / ("trials.csv" if not finished else FINISHED_CSV)
    for p in (config_path, trials_path):
        if not p.is_file():
            hint = (
                "run the search again with --finish N (it resumes, then fine-tunes N front members)"
                if finished and p == trials_path
                else "pass a study directory written by condense search"
            )
            raise CondenseError(f"{study_dir} has no {p.name}", hint)
    try:
        config = json.loads(config_path.read_text())
        trials = pd.read_csv(trials_path)
    except (ValueError, OSError, RecursionError) as err:
        raise CondenseError(f"cannot read {study_dir}: {err}", "re-run the search to rewrite its files") from err
    return config, _as_trials(trials) if finished else trials


def _objective(config: dict) -> str:
    """``latency`` for a study whose objectives are accuracy and latency, else ``macs``."""
    names = config.get("objectives") or []
    return "latency" if "latency_ms" in names and "macs" not in names else "macs"


def _scaled_latency(trials: pd.DataFrame, ref: dict) -> np.ndarray:
    ok = trials[(trials["state"] == "COMPLETE") & (trials.get("feasible", True) == True)]  # noqa: E712
    ok = ok.dropna(subset=["accuracy", "latency_ms"]) if "latency_ms" in ok else ok.iloc[:0]
    return (
        np.column_stack([1.0 - ok["accuracy"].to_numpy(float), ok["latency_ms"].to_numpy(float) / ref["latency_ms"]])
        if len(ok)
        else np.zeros((0, 2))
    )


def _scaled(trials: pd.DataFrame, ref: dict) -> np.ndarray:
    ok = trials[(trials["state"] == "COMPLETE") & (trials.get("feasible", True) == True)]  # noqa: E712
    ok = ok.dropna(subset=["accuracy", "macs", "params"])
    return (
        np.column_stack(
            [
                1.0 - ok["accuracy"].to_numpy(float),
                ok["macs"].to_numpy(float) / ref["macs"],
                ok["params"].to_numpy(float) / ref["params"],
            ]
        )
        if len(ok)
        else np.zeros((0, 3))
    )


def compare_studies(dirs: Sequence[str | os.PathLike], *, finished: bool = False) -> pd.DataFrame:
    """One row per study: ``study``, ``sampler``, ``trials`` (complete and feasible), ``front`` (points),
    ``hypervolume``, ``best_accuracy`` and ``covers[NAME]`` for every other study (see the module docstring).
    The studies must be of one model (the original's MACs and parameters must agree). ``finished``: the
    fine-tuned front members of ``condense search --finish`` (``finished.csv``) instead of the search's scores."""
    if len(dirs) < 1:
        raise CondenseError("no study directory given", "pass one or more study directories")
    loaded = [(Path(d), *_load(Path(d), finished)) for d in dirs]
    refs = [(c.get("reference") or {}) for _, c, _ in loaded]
    ref = refs[0]
    if not ref.get("macs") or not ref.get("params"):
        raise CondenseError(
            f"{loaded[0][0]}/search.json has no original MAC/parameter counts",
            "re-run the search with this version of condense",
        )
    for (d, _, _), r in zip(loaded[1:], refs[1:]):
        if (r.get("macs"), r.get("params")) != (ref["macs"], ref["params"]):
            raise CondenseError(
                f"{d} searched another model ({r.get('macs')} MACs vs {ref['macs']})", "compare studies of one model"
            )
    kinds = {_objective(c) for _, c, _ in loaded}
    if len(kinds) > 1:
        raise CondenseError(
            "some studies trade accuracy against latency, others against MACs",
            "compare studies searched with the same --objective",
        )
    latency = kinds == {"latency"}
    if latency and not ref.get("latency_ms"):
        raise CondenseError(
            f"{loaded[0][0]}/search.json has no measured latency of the original",
            "re-run the search with this version of condense",
        )
    scale = _scaled_latency if latency else _scaled
    corner = (1.0, 1.0) if latency else (1.0, 1.0, 1.0)
    points = {d.name: scale(t, ref) for d, _, t in loaded}
    fronts = {name: pareto_points(p) if len(p) else p for name, p in points.items()}
    rows = []
    for d, config, _ in loaded:
        name = d.name
        row = {
            "study": name,
            "sampler": (config.get("config") or config).get("sampler"),
            "trials": len(points[name]),
            "front": len(fronts[name]),
            "hypervolume": hypervolume(points[name], corner),
            "objective": "latency" if latency else "macs",
            "best_accuracy": float(1.0 - points[name][:, 0].min()) if len(points[name]) else float("nan"),
        }
        for other in fronts:
            if other != name:
                row[f"covers[{other}]"] = dominated_share(fronts[name], fronts[other])
        rows.append(row)
    return pd.DataFrame(rows)


def _members(study_dir: Path, finished: bool) -> list[tuple[int, float, Path]]:
    """(trial, accuracy, model directory) of the front members of a study: its fine-tuned members
    (``finished``), else its trained trials on the front of its own objectives."""
    _, trials = _load(study_dir, finished)
    if not finished:
        trials = trials[(trials["status"] == "trained") & (trials["on_front"] == True)]  # noqa: E712
    out = []
    for _, row in trials.dropna(subset=["accuracy"]).iterrows():
        trial = int(row["trial"])
        directory = study_dir / ("finished" if finished else "trials") / str(trial) / ("model" if finished else "")
        if not (directory / "condensed.json").is_file():
            raise CondenseError(
                f"{study_dir}: trial {trial} has no saved model ({directory})",
                "re-run the search (it resumes) to write it",
            )
        out.append((trial, float(row["accuracy"]), directory))
    return out


def latency_fronts(
    dirs: Sequence[str | os.PathLike],
    *,
    finished: bool = False,
    batches: Sequence[int] = (1, 32),
    device: str = "cpu",
    threads: int | None = 1,
    repeats: int = 20,
    warmup: int = 3,
    trust_code: bool = False,
    progress=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-time the front members of every study with the original, interleaved in one run (module docstring).

    Returns ``(members, summary)``: ``members`` has one row per member (``study``, ``trial``, ``accuracy``,
    ``macs``, ``params``, ``b{B}_ms``, ``b{B}_ratio``) plus one for the original (``study`` = ``original``);
    ``summary`` one row per study and batch size (``study``, ``batch``, ``members``, ``front``,
    ``hypervolume`` in (error, latency ratio) up to (1, 1), ``best_accuracy``, ``covers[NAME]``)."""
    say = progress or (lambda _msg: None)
    compare_studies(dirs, finished=finished)  # one model, readable studies: the same checks, the same errors
    studies = {Path(d).name: _members(Path(d), finished) for d in dirs}
    if len(set(studies)) != len(dirs):
        raise CondenseError("two study directories have the same name", "give each study its own folder name")
    if not any(studies.values()):
        raise CondenseError("no study has a front member with a saved model", "run the searches first")
    models, rows = {}, []
    first = next(m for members in studies.values() for m in members)
    meta = condense.read_meta(first[2])
    size = tuple(int(v) for v in meta["input_size"])
    models["original"] = original_from_meta(meta, first[2], trust_code=trust_code)
    for name, members in studies.items():
        for trial, accuracy, directory in members:
            say(f"loading {name} trial {trial}")
            model = condense.load(directory, trust_code=trust_code)
            macs, n_params = condense.macs_and_params(model, size)
            models[f"{name}/{trial}"] = model
            rows.append({"study": name, "trial": trial, "accuracy": accuracy, "macs": macs, "params": n_params})
    macs0, params0 = condense.macs_and_params(models["original"], size)
    rows.append({"study": "original", "trial": None, "accuracy": float("nan"), "macs": macs0, "params": params0})
    timed = condense.measure_side_by_side(
        models,
        size,
        batches=batches,
        reference="original",
        device=device,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        progress=say,
    )
    for row in rows:
        key = "original" if row["study"] == "original" else f"{row['study']}/{row['trial']}"
        for b in batches:
            row[f"b{b}_ms"] = timed[key][str(b)]["ms"]
            row[f"b{b}_ratio"] = timed[key][str(b)]["ratio"]
    members = pd.DataFrame(rows)
    return members, front_summary(members, list(studies), batches)


def front_summary(members: pd.DataFrame, studies: Sequence[str], batches: Sequence[int]) -> pd.DataFrame:
    """One row per study and batch size from timed members (columns ``study``, ``accuracy``,
    ``b{B}_ratio``): ``members``, ``front`` (points), ``hypervolume`` in (error, latency ratio) up to (1, 1),
    ``best_accuracy`` and ``covers[NAME]`` for every other study."""
    summary = []
    for b in batches:
        points = {
            name: members[members["study"] == name][["accuracy", f"b{b}_ratio"]].to_numpy(float) for name in studies
        }
        points = {
            name: np.column_stack([1.0 - p[:, 0], p[:, 1]]) if len(p) else np.zeros((0, 2))
            for name, p in points.items()
        }
        fronts = {name: pareto_points(p) if len(p) else p for name, p in points.items()}
        for name in studies:
            row = {
                "study": name,
                "batch": int(b),
                "members": len(points[name]),
                "front": len(fronts[name]),
                "hypervolume": hypervolume(points[name], (1.0, 1.0)) if len(points[name]) else 0.0,
                "best_accuracy": float(1.0 - points[name][:, 0].min()) if len(points[name]) else float("nan"),
            }
            for other in studies:
                if other != name:
                    row[f"covers[{other}]"] = dominated_share(fronts[name], fronts[other])
            summary.append(row)
    return pd.DataFrame(summary)
