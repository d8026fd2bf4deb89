"""Draw the search: accuracy vs MACs, every trained trial, the Pareto front, the original model, the budget.

In: the trial DataFrame of ``search._pareto.trials_frame`` (the data, computed elsewhere). Out: a PNG.
Never: touches pyplot's global state (a Figure with its own Agg canvas), or the data.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from condense import atomic_write

__all__ = ["plot_front", "plot_fronts"]


def plot_front(
    trials: pd.DataFrame,
    path: str | os.PathLike,
    *,
    reference: dict[str, Any] | None = None,
    title: str | None = None,
    dpi: int = 120,
    ylabel: str = "accuracy (search score)",
) -> Path:
    """Write accuracy vs MACs to ``path`` (PNG): trained trials (grey), the front (a staircase, labelled
    with trial numbers), the original model (a star; a dotted line if its accuracy is unknown) and the MAC
    budget (a dashed line). Needs matplotlib (``pip install condense[plot]``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reference = reference or {}
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    scale, unit = _unit(trials, reference)
    if not trials.empty and "status" in trials:
        trained = trials[(trials["status"] == "trained") & trials["accuracy"].notna()]
        others = trained[trained["on_front"] != True]  # noqa: E712
        ax.scatter(others["macs"] / scale, others["accuracy"], s=18, c="0.65", label="trial", zorder=2)
        front = trained[trained["on_front"] == True].sort_values("macs")  # noqa: E712
        if not front.empty:
            ax.step(front["macs"] / scale, front["accuracy"], where="post", c="tab:blue", lw=1, alpha=0.6, zorder=3)
            ax.scatter(front["macs"] / scale, front["accuracy"], s=34, c="tab:blue", label="Pareto front", zorder=4)
            for _, row in front.iterrows():
                ax.annotate(
                    str(int(row["trial"])),
                    (row["macs"] / scale, row["accuracy"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    if reference.get("macs"):
        x = reference["macs"] / scale
        acc = reference.get("accuracy")
        if acc is not None and not math.isnan(acc):
            ax.scatter([x], [acc], marker="*", s=160, c="tab:red", label="original model", zorder=5)
        else:
            ax.axvline(x, c="tab:red", ls=":", lw=1.2, label="original model (MACs)")
    if reference.get("macs_budget"):
        ax.axvline(reference["macs_budget"] / scale, c="0.3", ls="--", lw=1, label="MAC budget")
    return _finish(fig, ax, unit, title, path, dpi, ylabel)


def plot_fronts(
    studies: dict[str, pd.DataFrame],
    path: str | os.PathLike,
    *,
    reference: dict[str, Any] | None = None,
    title: str | None = None,
    dpi: int = 120,
    ylabel: str = "accuracy (search score)",
) -> Path:
    """Several searches of one model in one PNG: each study's trained trials (small, faint) and its front
    (a staircase), one colour per study, the original model marked. ``studies``: name -> trials frame."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reference = reference or {}
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    every = pd.concat(list(studies.values())) if studies else pd.DataFrame()
    scale, unit = _unit(every, reference)
    for i, (name, trials) in enumerate(studies.items()):
        colour = f"C{i}"
        trained = trials[(trials["status"] == "trained") & trials["accuracy"].notna()]
        ax.scatter(trained["macs"] / scale, trained["accuracy"], s=10, c=colour, alpha=0.3, zorder=2)
        front = trained[trained["on_front"] == True].sort_values("macs")  # noqa: E712
        if not front.empty:
            ax.step(front["macs"] / scale, front["accuracy"], where="post", c=colour, lw=1.2, zorder=3)
            ax.scatter(front["macs"] / scale, front["accuracy"], s=30, c=colour, label=f"{name} front", zorder=4)
    if reference.get("macs"):
        acc = reference.get("accuracy")
        if acc is not None and not math.isnan(acc):
            ax.scatter(
                [reference["macs"] / scale], [acc], marker="*", s=160, c="tab:red", label="original model", zorder=5
            )
        else:
            ax.axvline(reference["macs"] / scale, c="tab:red", ls=":", lw=1.2, label="original model (MACs)")
    return _finish(fig, ax, unit, title, path, dpi, ylabel)


def _finish(fig, ax, unit: str, title: str | None, path: str | os.PathLike, dpi: int, ylabel: str) -> Path:
    """Axes labels, grid, title and legend; then write the PNG atomically (a finished file or none)."""
    ax.set_xlabel(f"MACs ({unit})")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write(path, buffer.getvalue())


def _unit(trials: pd.DataFrame, reference: dict[str, Any]) -> tuple[float, str]:
    values = [reference.get("macs") or 0]
    if not trials.empty and "macs" in trials:
        values += [v for v in trials["macs"].dropna()]
    top = max(values) if values else 0
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= scale:
            return scale, unit
    return 1.0, ""


def plot_latency_fronts(
    members: pd.DataFrame,
    path: str | os.PathLike,
    *,
    batches,
    title: str | None = None,
    dpi: int = 120,
    ylabel: str = "accuracy",
) -> Path:
    """``condense compare --latency``: one panel per batch size, accuracy against latency / original's (timed
    in one run), each study's members and its front (a staircase), one colour per study."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batches = list(batches)
    fig = Figure(figsize=(5.2 * len(batches), 4.4))
    FigureCanvasAgg(fig)
    studies = [s for s in dict.fromkeys(members["study"]) if s != "original"]
    for k, b in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), k + 1)
        col = f"b{b}_ratio"
        for i, name in enumerate(studies):
            rows = members[members["study"] == name].dropna(subset=["accuracy"]).sort_values(col)
            if rows.empty:
                continue
            best, xs, ys = -1.0, [], []
            for _, r in rows.iterrows():  # the front: each member more accurate than every faster one
                if r["accuracy"] > best:
                    best = r["accuracy"]
                    xs.append(r[col])
                    ys.append(r["accuracy"])
            ax.scatter(rows[col], rows["accuracy"], s=12, c=f"C{i}", alpha=0.35, zorder=2)
            ax.step(xs, ys, where="post", c=f"C{i}", lw=1.2, zorder=3)
            ax.scatter(xs, ys, s=30, c=f"C{i}", label=name, zorder=4)
        ax.axvline(1.0, c="tab:red", ls=":", lw=1.2, label="original model")
        ax.set_xlabel(f"latency / original's (batch {b})")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write(path, buffer.getvalue())
