"""The search's figures as data: every trial, and the Pareto front, as pandas DataFrames (no plotting here).

In: a study and its search space. Out: DataFrames, CSV files, a rich Table. Never: changes the study.

Columns of ``trials_frame`` (one row per trial, by number): ``trial``, ``state`` (COMPLETE, FAIL, ...),
``status`` (trained, over budget, duplicate, diverged, failed, interrupted, running), ``accuracy``, ``macs``,
``params`` (and ``latency_ms`` when measured), ``feasible`` (every budget met), ``violation_macs`` /
``violation_params`` (relative excess over the budget; <= 0 is feasible), ``estimated`` (the counts of a plan
rejected far over budget by its block-and-layer estimate, not measured), ``on_front``, the effective plan
(``layer``, ``K``, ``init``, ``velocity``, ``diffusion``, ``source``, ``m[PATH]`` per run: blocks kept, r
when the run is left alone), ``train_seconds``, ``retry_of`` (the trial a retry repeats), ``duplicate_of``,
``trial_dir`` and ``plan`` (the condense plan as JSON); with width in the space, ``width[PATH]`` per run (the share
of its channels removed). ``front_frame`` has the same columns, for the front only, sorted by MACs (by latency
for a study whose objective is latency).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.markup import escape
from rich.table import Table

from condense import atomic_write_csv, claim_file, csv_starts_with, format_count

__all__ = ["trials_frame", "front_frame", "write_csv", "front_table"]

_FIGURES = ("accuracy", "macs", "params", "latency_ms")


def _status(t) -> str:
    status = t.user_attrs.get("status")
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.state == TrialState.FAIL:
        return status if status in ("failed",) else "interrupted"
    return status or t.state.name.lower()


def trials_frame(study: optuna.Study, space) -> pd.DataFrame:
    """Every trial of ``study`` with its plan and figures (see the module docstring)."""
    names = study.metric_names or ["accuracy", "macs", "params", "latency_ms"][: len(study.directions)]
    front = {t.number for t in study.best_trials}
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name, "status": _status(t)}
        values = t.values if t.values is not None else [None] * len(names)
        for name, value in zip(names, values):
            row[name] = value
        for name in ("macs", "params"):  # counted before the budget check, also for unfinished trials
            if row.get(name) is None and name in t.user_attrs:
                row[name] = t.user_attrs[name]
        if row.get("latency_ms") is not None and math.isinf(row["latency_ms"]):
            row["latency_ms"] = None
        cons = t.constraints
        row["feasible"] = all(v <= 0 for v in cons.values()) if t.state == TrialState.COMPLETE else None
        for key in ("macs", "params"):
            if key in cons:
                row[f"violation_{key}"] = cons[key]
        row["on_front"] = t.number in front
        if len(t.params) == len(space.params):
            row.update(space.effective(t.params))
        row["estimated"] = bool(t.user_attrs.get("estimated", False))  # counts by estimate (rejected far over)
        row["train_seconds"] = t.user_attrs.get("train_seconds")
        row["retry_of"] = t.system_attrs.get("failed_trial")
        row["duplicate_of"] = t.user_attrs.get("duplicate_of")
        row["trial_dir"] = t.user_attrs.get("trial_dir")
        row["plan"] = json.dumps(t.user_attrs["plan"], sort_keys=True) if "plan" in t.user_attrs else None
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    columns = [
        "trial",
        "state",
        "status",
        *[n for n in names],
        "macs",
        "params",
        "feasible",
        "violation_macs",
        "violation_params",
        "on_front",
        "layer",
        "K",
        "init",
        "velocity",
        "diffusion",
        "source",
        *[space.m_name(r) for r in space.runs],
        *[space.drop_name(r) for r in space.runs if getattr(space, "drop_per_run", False)],
        *[space.width_name(r) for r in space.runs if getattr(space, "widths", ())],
        "estimated",
        "train_seconds",
        "retry_of",
        "duplicate_of",
        "trial_dir",
        "plan",
        "error",
    ]
    df = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    df = df.dropna(axis=1, how="all") if not df.empty else df
    for keep in ("trial", "state", "status", *names, "macs", "params", "on_front"):
        if keep not in df.columns:
            df[keep] = pd.Series(dtype=object)
    for col in ("macs", "params", "K", "retry_of", "duplicate_of", *[space.m_name(r) for r in space.runs]):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    return df.set_index("trial", drop=False).rename_axis(None)


def front_frame(study: optuna.Study, space, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """The Pareto front (``study.best_trials``: complete, feasible, non-dominated), sorted by MACs."""
    df = trials if trials is not None else trials_frame(study, space)
    if df.empty:
        return df
    front = df[df["on_front"] == True]  # noqa: E712 - a pandas mask
    names = study.metric_names or []
    by = "latency_ms" if "macs" not in names and "latency_ms" in front else "macs"
    return front.sort_values([by, "accuracy"], ascending=[True, False])


def write_csv(df: pd.DataFrame, path: str | os.PathLike, *, claim: Sequence[str] | None = None) -> Path:
    """Write ``df`` atomically (a finished file or none). ``claim``: a user-named file (``--csv FILE``) that
    may only replace a CSV whose header begins with these columns (``condense.claim_file``)."""
    if claim is not None:
        path = claim_file(path, "comparison CSV", csv_starts_with(claim))
    return atomic_write_csv(path, df)


def front_table(front: pd.DataFrame, reference: dict[str, Any] | None = None, title: str | None = None):
    """A rich Table of the front (and the original model first, when known)."""
    ms = [c for c in front.columns if c.startswith("m[")]
    drops = any(str(c).startswith("drop[") for c in front.columns)  # a dropped run's m is shown as e.g. 2d
    widths = [c for c in front.columns if str(c).startswith("width[")]
    table = Table(title=title, title_justify="left")
    for col in (
        "trial",
        "accuracy",
        "MACs",
        "params",
        *(["latency"] if "latency_ms" in front else []),
        "layer",
        "K",
        "init",
        "kept" + (" (d: dropped)" if drops else "") + ": " + " ".join(c[2:-1] for c in ms),
        *(["width removed: " + " ".join(c[6:-1] for c in widths)] if widths else []),
    ):
        table.add_column(
            escape(col), justify="right" if col in ("trial", "accuracy", "MACs", "params", "latency", "K") else "left"
        )
    lat = "latency_ms" in front
    if reference:
        acc = reference.get("accuracy")
        table.add_row(
            "original",
            "-" if acc is None else f"{acc:.4f}",
            format_count(reference["macs"]),
            format_count(reference["params"]),
            *([f"{reference['latency_ms']:.2f} ms" if reference.get("latency_ms") else "-"] if lat else []),
            "-",
            "-",
            "-",
            "all",
            *(["-"] if widths else []),
            style="dim",
        )
        table.add_section()
    for _, row in front.iterrows():
        kept = " ".join(
            str(_int(row[c])) + ("d" if _num(row.get("drop" + c[1:])) and bool(row.get("drop" + c[1:])) else "")
            for c in ms
        )
        table.add_row(
            str(row["trial"]),
            f"{row['accuracy']:.4f}",
            format_count(row["macs"]),
            format_count(row["params"]),
            *([f"{row['latency_ms']:.2f} ms" if _num(row.get("latency_ms")) else "-"] if lat else []),
            str(row.get("layer") or "-"),
            str(_int(row.get("K")) or "-"),
            str(row.get("init") or "-"),
            kept,
            *([" ".join(f"{float(row[c]):g}" if _num(row.get(c)) else "-" for c in widths)] if widths else []),
        )
    return table


def _num(x) -> bool:
    return x is not None and not bool(pd.isna(x))


def _int(x):
    return int(x) if _num(x) else ""
