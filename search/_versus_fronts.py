"""Fronts of a ``condense.bench.versus`` folder: depth, width and joint plans over its budgets.

In: a versus output folder (``versus.json``) whose arms ran at several MAC budgets. Out: ``(members, summary)``
in the shape of ``latency_fronts``: ``members`` has one row per budget and arm that finished at least one seed
(``study`` = the arm's axis: ``depth``, ``width`` or ``joint``; ``arm``, ``budget``, ``seeds``, ``accuracy``
= the mean fine-tuned test accuracy over its seeds, ``accuracy_std``, ``macs``, ``params``, ``b{B}_ms``,
``b{B}_ratio``) plus one for the original; ``summary`` one row per axis and batch size (``front_summary``).

Why a versus folder makes fronts: every arm there had the same data, fine-tuning, seeds and counter, and
every arm and the original were timed interleaved in one run (``versus.json``'s ``latency`` holds one run;
running versus again re-times all of the arms it is given). An axis's front is then the best accuracy at
each latency over all of its arms and budgets. Never: mixes folders (one folder, one timing run), or
places an arm without a latency figure from that run (an error says which and how to time it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from condense import CondenseError
from condense.bench._versus_arms import ARMS
from condense.bench._versus_report import rows as versus_rows
from condense.bench._versus_state import FORMAT, STATE

from ._compare import front_summary

__all__ = ["versus_fronts", "is_versus_dir"]


def is_versus_dir(path: str | os.PathLike) -> bool:
    """True for a folder ``condense.bench.versus`` wrote (it holds ``versus.json``)."""
    return (Path(path) / STATE).is_file()


def _read(directory: Path) -> dict:
    path = directory / STATE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CondenseError(
            f"{path} is not readable ({type(err).__name__})", "point at a versus output folder"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CondenseError(
            f"{path} is not a {FORMAT} record", "point at a folder python -m condense.bench.versus wrote"
        )
    if not data.get("original"):
        raise CondenseError(f"{directory}: versus has not measured the original yet", "run versus on it first")
    return data


def versus_fronts(
    directory: str | os.PathLike, *, arms: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, tuple[int, ...]]:
    """``(members, summary, batches)`` of the folder (module docstring). ``arms``: only these arms (default:
    every arm the folder ran whose axis is depth, width or joint)."""
    directory = Path(directory)
    data = _read(directory)
    ran = list(dict.fromkeys(a for b in data["budgets"].values() for a in b.get("arms", {})))
    unknown = [a for a in (arms or ()) if a not in ran]
    if unknown:
        raise CondenseError(
            f"{directory} has no arm {', '.join(map(repr, unknown))}", f"its arms: {', '.join(ran) or 'none'}"
        )
    chosen = [a for a in (arms or ran) if a in ARMS and ARMS[a].axis != "reference"]
    if not chosen:
        raise CondenseError(f"{directory} has no depth, width or joint arm", "run versus with such arms first")
    latency = data.get("latency") or {}
    batches = tuple(int(b) for b in (latency.get("setting") or {}).get("batches", ()))
    if not batches:
        raise CondenseError(f"{directory} has no latency run", "run versus again (add --time-only to only time)")
    seeds = sorted({int(s) for b in data["budgets"].values() for a in b["arms"].values() for s in a.get("seeds", {})})
    table = versus_rows(data, list(data["budgets"]), chosen, seeds, batches, {})
    out, missing = [], []
    for row in table:
        if row["arm"] == "original":
            member = {"study": "original", "arm": "original", "budget": "", "seeds": 0, "accuracy": row["acc_mean"]}
        elif row["status"] == "ok" and row.get("seeds_done"):
            member = {
                "study": ARMS[row["arm"]].axis,
                "arm": row["arm"],
                "budget": row["budget"],
                "seeds": row["seeds_done"],
                "accuracy": row["acc_mean"],
                "accuracy_std": row["acc_std"],
            }
        else:
            continue
        member.update({"macs": row["macs"], "params": row["params"]})
        for b in batches:
            member[f"b{b}_ms"], member[f"b{b}_ratio"] = row[f"latency_b{b}_ms"], row[f"latency_b{b}_ratio"]
        if any(member[f"b{b}_ratio"] is None for b in batches):
            missing.append(f"{row['budget']}/{row['arm']}" if row["budget"] else "the original")
        out.append(member)
    if missing:
        raise CondenseError(
            f"{directory}: no latency from its last timing run for {', '.join(missing[:4])}"
            + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""),
            "time every arm in one run: python -m condense.bench.versus ... --budget ALL,BUDGETS --arms ALL,ARMS "
            "--time-only",
        )
    members = pd.DataFrame(out)
    studies = [axis for axis in ("depth", "width", "joint") if (members["study"] == axis).any()]
    return members, front_summary(members, studies, batches), batches
