"""Finish a search: fine-tune members of its Pareto front and report their final accuracies beside the scores.

In: a search's result (its front and the ``trials/<N>/`` models: proxy-trained weights, or the supernet's),
the data and the original model the search prepared, and ``FinishConfig`` (how many members, epochs, lr).
Out: ``FinishResult``, and in ``STUDY_DIR``: ``finished/<N>/`` (``condense.train``'s ``last.pt`` and
``metrics.json``, and ``model/``: the fine-tuned condensed-model directory ``condense.load`` reads),
``finished.csv`` (one row per member: the search's score, the final accuracy, MACs, parameters, the plan)
and ``finished.png`` (the finished members' front). ``condense compare --finished`` reads ``finished.csv``.
Never: fine-tunes a trial that is not on the front or has no saved model, or trains a member again that was
finished with the same options (a re-run resumes an interrupted member from its ``last.pt``, and refuses one
fine-tuned with other options instead of mixing them).

Which members: the front sorted by MACs; with more members than ``top``, ``top`` of them evenly spread over
that order, the cheapest and the most accurate always among them (a front is a trade-off, so finishing only
its most accurate end says nothing about the rest of it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from rich.table import Table
from torch import nn

from condense import CondenseError, ConfigError, format_count
from condense import load, read_meta, write_model_dir
from condense.train import TrainConfig, train

from ._pareto import write_csv
from ._plot import plot_front

__all__ = ["FinishConfig", "FinishResult", "finish_front", "pick_members", "kendall_tau", "FINISHED", "FINISHED_CSV"]

FINISHED = "finished"
FINISHED_CSV = "finished.csv"
_PLAN_COLUMNS = ("layer", "K", "init", "velocity", "diffusion", "source")


@dataclasses.dataclass(frozen=True)
class FinishConfig:
    """``top`` front members fine-tuned for ``epochs`` epochs each at learning rate ``lr`` (None: the
    search's), with the search's batch size, seed, data and distillation (``--distill``), cosine schedule."""

    top: int
    epochs: int = 10
    lr: float | None = None

    def __post_init__(self) -> None:
        for field in ("top", "epochs"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"finish option {field}={value!r}: must be an integer >= 1", "e.g. --finish 3 --finish-epochs 10"
                )
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ConfigError(f"finish option lr={self.lr!r}: must be a number > 0")

    def train_config(self, batch_size: int, lr: float, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=batch_size, lr=self.lr if self.lr is not None else lr, seed=seed
        )


@dataclasses.dataclass
class FinishResult:
    """``table``: one row per finished member (``trial``, ``score``: the search's accuracy, ``accuracy``: after
    fine-tuning, ``best_accuracy``, ``macs``, ``params`` (counted on the fine-tuned model), the plan,
    ``train_seconds`` (of the last fine-tuning run of that member), ``model_dir``), by
    MACs. ``tau``: Kendall's tau between the scores and the final accuracies (nan below 3 members)."""

    table: pd.DataFrame
    tau: float
    files: dict[str, Path]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count as neither concordant nor
    discordant); nan when fewer than 2 pairs can be ranked."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} and {len(b)} values")
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x = (a[i] > a[j]) - (a[i] < a[j])
            y = (b[i] > b[j]) - (b[i] < b[j])
            if x == 0 and y == 0:
                continue
            if x == 0:
                ties_a += 1
            elif y == 0:
                ties_b += 1
            elif x == y:
                conc += 1
            else:
                disc += 1
    den = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / den if den else float("nan")


def pick_members(front: pd.DataFrame, top: int) -> list[int]:
    """Trial numbers of ``top`` members of ``front`` (see the module docstring), by MACs."""
    rows = front.dropna(subset=["accuracy"]).sort_values(["macs", "accuracy"], ascending=[True, False])
    trials = [int(t) for t in rows["trial"]]
    if len(trials) <= top:
        return trials
    if top == 1:
        return [int(rows.loc[rows["accuracy"].idxmax(), "trial"])]
    picked = {trials[round(i * (len(trials) - 1) / (top - 1))] for i in range(top)}
    best = int(rows.loc[rows["accuracy"].idxmax(), "trial"])
    if best not in picked:  # replace the pick nearest to it in MAC order
        nearest = min(picked - {trials[0]}, key=lambda t: abs(trials.index(t) - trials.index(best)))
        picked = (picked - {nearest}) | {best}
    return [t for t in trials if t in picked]


def _done(directory: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a member already fine-tuned with ``config`` (None if not finished)."""
    metrics_path, model_dir = directory / "metrics.json", directory / "model"
    if not (metrics_path.is_file() and (model_dir / "condensed.json").is_file()):
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if metrics.get("config") != config.to_dict():
        raise CondenseError(
            f"{directory} was fine-tuned with other options (epochs, lr, batch size or seed)",
            f"give the same --finish-epochs/--finish-lr, or remove {directory.parent} to start over",
        )
    return metrics


def finish_front(
    front: pd.DataFrame,
    study_dir: str | Path,
    original: nn.Module,
    data,
    config: FinishConfig,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    teacher: nn.Module | None = None,
    device: Any = "auto",
    reference: dict[str, Any] | None = None,
    console=None,
    progress: bool = True,
) -> FinishResult:
    """Fine-tune ``config.top`` members of ``front`` (a ``front_frame``) from their saved models in
    ``study_dir/trials/<N>/`` and write the files named in the module docstring. ``original``: the search's
    uncondensed model (the saved directories are rebuilt on it, so no file is imported from them).
    ``reference``: the search's figures of the original (its MACs and the budget are marked in the plot)."""
    root = Path(study_dir)
    train_cfg = config.train_config(batch_size, lr, seed)
    members = pick_members(front, config.top)
    if not members:
        raise CondenseError(
            "the search has no trained front member to finish", "run more trials, or loosen the budgets"
        )
    by_trial = {int(r["trial"]): r for _, r in front.iterrows()}
    rows = []
    for i, number in enumerate(members, start=1):
        row = by_trial[number]
        source = root / "trials" / str(number)
        if not (source / "condensed.json").is_file():
            raise CondenseError(
                f"front member {number} has no saved model in {source}",
                "finish on the host that ran the trial, or re-run the search there",
            )
        target = root / FINISHED / str(number)
        metrics = _done(target, train_cfg)
        t0 = time.perf_counter()
        if metrics is None:
            meta = read_meta(source)
            model = load(source, model=copy.deepcopy(original))
            if console is not None:
                console.print(
                    f"finishing trial {number} ({i}/{len(members)}): {train_cfg.epochs} epoch(s) from the "
                    f"search's weights (score {row['accuracy']:.4f})",
                    highlight=False,
                )
            result = train(
                model,
                data,
                train_cfg,
                out_dir=target,
                teacher=teacher,
                resume=(target / "last.pt").exists(),
                progress=progress and console is not None,
                device=device,
                extra_metrics={"finished_trial": number, "search_score": row["accuracy"]},
            )
            trained = {"data": data.name, "epochs": train_cfg.epochs, "from": f"search trial {number}"}
            write_model_dir(target / "model", model.cpu().eval(), {**meta, "trained": trained})
            metrics = result.metrics
        record = {
            "trial": number,
            "score": float(row["accuracy"]),
            "accuracy": float(metrics["test_acc"]),
            "best_accuracy": float(metrics.get("best_test_acc", metrics["test_acc"])),
            "macs": int(metrics.get("macs", row["macs"])),
            "params": int(metrics.get("params", row["params"])),
        }
        if "latency_ms" in row and pd.notna(row.get("latency_ms")):
            record["latency_ms"] = float(row["latency_ms"])
        record.update({k: row[k] for k in _PLAN_COLUMNS if k in row})
        record.update({k: row[k] for k in row.index if str(k).startswith(("m[", "drop["))})
        seconds = float(metrics.get("train_seconds_this_run", time.perf_counter() - t0))
        record.update(
            {
                "epochs": train_cfg.epochs,
                "lr": train_cfg.lr,
                "train_seconds": round(seconds, 1),
                "model_dir": str(target / "model"),
            }
        )
        rows.append(record)
    table = pd.DataFrame(rows).sort_values("macs").reset_index(drop=True)
    table["on_front"] = _on_front(table)
    tau = kendall_tau(list(table["score"]), list(table["accuracy"])) if len(table) >= 3 else float("nan")
    files = {"finished": write_csv(table, root / FINISHED_CSV)}
    try:
        files["finished plot"] = plot_front(
            table.assign(status="trained"),
            root / "finished.png",
            reference={k: v for k, v in (reference or {}).items() if k != "accuracy"},
            title=f"finished front members ({train_cfg.epochs} epochs each)",
            ylabel="accuracy (fine-tuned)",
        )
    except ImportError:
        pass
    return FinishResult(table=table, tau=tau, files=files)


def _on_front(table: pd.DataFrame) -> list[bool]:
    """Which rows no other row dominates (accuracy up, MACs and parameters down)."""
    pts = list(zip(-table["accuracy"], table["macs"], table["params"]))
    return [not any(all(q[k] <= p[k] for k in range(3)) and q != p for q in pts) for p in pts]


def finish_table(result: FinishResult, title: str = "finished front members"):
    """A rich Table of ``result`` (what ``condense search --finish`` prints)."""
    t = Table(
        "trial",
        "MACs",
        "params",
        "plan",
        "search score",
        "final accuracy",
        "best",
        "seconds",
        title=title,
        title_justify="left",
    )
    for _, r in result.table.iterrows():
        plan = " ".join(str(r[k]) for k in ("layer", "K") if k in r and pd.notna(r[k])) or "original"
        t.add_row(
            str(r["trial"]),
            format_count(r["macs"]),
            format_count(r["params"]),
            plan,
            f"{r['score']:.4f}",
            f"{r['accuracy']:.4f}",
            f"{r['best_accuracy']:.4f}",
            f"{r['train_seconds']:.0f}",
        )
    return t


def _as_trials(table: pd.DataFrame) -> pd.DataFrame:
    """``finished.csv`` in the shape of ``trials.csv`` (for ``condense compare --finished``)."""
    return table.assign(state="COMPLETE", feasible=True, status="trained")
