"""What ``condense.bench.versus`` shows: one table, a CSV and an accuracy-vs-latency plot, from its record.

In: the ``versus.json`` record (``_versus_state``), the budgets, arms and seeds of this run. Out: one row per
budget and arm (and one for the original): MACs and parameters (``condense.macs_and_params``), accuracy
mean ± std over the seeds done, zero-shot accuracy, latency per batch size and its ratio to the original
(measured together), and the compute each arm used (building, calibration, fine-tuning). Never: computes a
figure (everything comes from the record), or hides an arm that could not be built (its row says why).
"""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from .._budget import format_count

BASE_COLUMNS = (
    "budget",
    "arm",
    "method",
    "status",
    "macs",
    "macs_ratio",
    "macs_target",
    "macs_vs_target",
    "params",
    "params_ratio",
    "seeds_done",
    "acc_mean",
    "acc_std",
    "accs",
    "zero_shot_mean",
)
COMPUTE_COLUMNS = (
    "build_cpu_s",
    "calib_epochs",
    "calib_images",
    "calib_cpu_s",
    "finetune_epochs",
    "finetune_cpu_s",
    "finetune_s",
    "note",
)


def columns(batches: Sequence[int]) -> tuple[str, ...]:
    lat = tuple(c for b in batches for c in (f"latency_b{b}_ms", f"latency_b{b}_ratio"))
    return BASE_COLUMNS + lat + COMPUTE_COLUMNS


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def rows(
    state: dict[str, Any],
    budgets: Sequence[str],
    arms: Sequence[str],
    seeds: Sequence[int],
    batches: Sequence[int],
    methods: dict[str, str],
) -> list[dict[str, Any]]:
    """The table's rows, the original first (see ``columns``)."""
    orig = state["original"]
    lat = (state.get("latency") or {}).get("ms", {})

    def latency(key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for b in batches:
            m = lat.get(key, {}).get(str(b))
            out[f"latency_b{b}_ms"] = m["ms"] if m else None
            out[f"latency_b{b}_ratio"] = m["ratio"] if m else None
        return out

    trained = orig.get("trained") or {}
    table = [
        {
            "budget": "",
            "arm": "original",
            "method": orig["label"],
            "status": "ok",
            "macs": orig["macs"],
            "macs_ratio": 1.0,
            "params": orig["params"],
            "params_ratio": 1.0,
            "seeds_done": "",
            "acc_mean": orig["test_acc"],
            "finetune_epochs": trained.get("epochs"),
            "finetune_cpu_s": trained.get("cpu_s"),
            "note": f"trained here ({trained['epochs']} epochs)" if trained else "given weights",
            **latency("original"),
        }
    ]
    for budget in budgets:
        brec = state["budgets"].get(budget, {})
        for arm in arms:
            rec = brec.get("arms", {}).get(arm)
            row: dict[str, Any] = {
                "budget": budget,
                "arm": arm,
                "method": methods.get(arm, arm),
                "macs_target": brec.get("target_macs"),
            }
            if rec is None:
                table.append({**row, "status": "not run"})
                continue
            row["status"] = rec["status"]
            if rec["status"] != "ok":
                table.append({**row, "note": rec.get("reason", "")})
                continue
            finished = [(s, r) for s in seeds if (r := rec.get("seeds", {}).get(str(s))) and r.get("done")]
            done = [r for _, r in finished]
            shared = [  # an arm-seed that started from another's weights has that one's fine-tuned result
                f"seed {s}: the fine-tuned result of {r['same_start_as']} (the same start)"
                for s, r in finished
                if r.get("same_start_as")
            ]
            accs = [d["test_acc"] for d in done]
            mean, std = _mean_std(accs)
            zs = _mean_std([d["zero_shot_acc"] for d in done if d.get("zero_shot_acc") is not None])[0]

            def avg(key: str, done: list[dict[str, Any]] = done) -> float | None:
                vals = [d[key] for d in done if d.get(key) is not None]
                return statistics.fmean(vals) if vals else None

            target = brec.get("target_macs")
            row.update(
                {
                    "macs": rec["macs"],
                    "macs_ratio": rec["macs"] / orig["macs"],
                    "params": rec["params"],
                    "macs_vs_target": rec["macs"] / target - 1 if target else None,
                    "params_ratio": rec["params"] / orig["params"],
                    "seeds_done": len(done),
                    "acc_mean": mean,
                    "acc_std": std,
                    "accs": " ".join(f"{a:.4f}" for a in accs),
                    "zero_shot_mean": zs,
                    "build_cpu_s": avg("build_cpu_s"),
                    "calib_epochs": avg("calib_epochs"),
                    "calib_images": avg("calib_images"),
                    "calib_cpu_s": avg("calib_cpu_s"),
                    "finetune_epochs": avg("finetune_epochs"),
                    "finetune_cpu_s": avg("finetune_cpu_s"),
                    "finetune_s": avg("finetune_s"),
                    "note": "; ".join(filter(None, [rec.get("note", ""), *shared])),
                    **latency(f"{budget}/{arm}"),
                }
            )
            table.append(row)
    return table


def csv_text(table: list[dict[str, Any]], batches: Sequence[int]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns(batches)), extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow(
            {
                k: ("" if row.get(k) is None else round(row[k], 6) if isinstance(row.get(k), float) else row[k])
                for k in columns(batches)
            }
        )
    return buf.getvalue()


def _acc(row: dict[str, Any]) -> str:
    if row.get("acc_mean") is None:
        return "-"
    if row["arm"] == "original":
        return f"{100 * row['acc_mean']:.2f}%"
    return f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}% ({row['seeds_done']})"


def _lat(row: dict[str, Any], b: int) -> str:
    ms, ratio = row.get(f"latency_b{b}_ms"), row.get(f"latency_b{b}_ratio")
    return "-" if ms is None else f"{ms:.2f} ms ({ratio:.2f})"


def _compute(row: dict[str, Any]) -> str:
    parts = []
    if row.get("build_cpu_s") is not None:
        parts.append(f"build {row['build_cpu_s']:.0f}s")
    if row.get("calib_epochs"):
        parts.append(f"calib {row['calib_epochs']:.0f} ep/{row['calib_images']:.0f} img {row['calib_cpu_s']:.0f}s")
    if row.get("finetune_cpu_s") is not None:
        parts.append(f"train {row['finetune_epochs']:.0f} ep {row['finetune_cpu_s']:.0f}s")
    return ", ".join(parts) or "-"


def print_table(console, table: list[dict[str, Any]], batches: Sequence[int], title: str, footer: str) -> None:
    t = Table(title=escape(title), title_justify="left")
    for col in (
        "budget",
        "arm",
        "MACs (of original)",
        "params",
        "accuracy (seeds)",
        "zero-shot",
        *[f"latency b{b} (x orig.)" for b in batches],
        "compute (CPU s per seed)",
        "note",
    ):
        t.add_column(
            col,
            justify="left" if col in ("budget", "arm", "note") else "right",
            overflow="fold" if col == "note" else "ellipsis",
        )
    last = None
    for row in table:
        if last is not None and row["budget"] != last:
            t.add_section()
        last = row["budget"]
        macs = "-" if row.get("macs") is None else f"{format_count(row['macs'])} ({row['macs_ratio']:.2f})"
        params = "-" if row.get("params") is None else format_count(row["params"])
        zs = "-" if row.get("zero_shot_mean") is None else f"{100 * row['zero_shot_mean']:.2f}%"
        note = escape(row.get("note") or "")
        if row["status"] not in ("ok",):
            note = f"[yellow]{row['status']}[/]{': ' + note if note else ''}"
        t.add_row(
            row["budget"],
            row["arm"],
            macs,
            params,
            _acc(row),
            zs,
            *[_lat(row, b) for b in batches],
            _compute(row),
            note,
        )
    console.print(t)
    console.print(escape(footer), highlight=False)


def plot_png(table: list[dict[str, Any]], batches: Sequence[int], title: str) -> bytes:
    """Accuracy (mean ± std) against latency relative to the original, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in table if r["budget"]})
    arms = sorted({r["arm"] for r in table if r["arm"] != "original"})
    markers = "osD^v<>pXh*"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    families = ["global", "drop", "tp", "scratch", "joint"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for row in table:
            x, y = row.get(f"latency_b{b}_ratio"), row.get("acc_mean")
            if x is None or y is None:
                continue
            if row["arm"] == "original":
                ax.plot([x], [100 * y], marker="*", markersize=14, color="black", linestyle="none", label="original")
                continue
            i, j = budgets.index(row["budget"]), arms.index(row["arm"])
            family = families.index(row["arm"].split("-")[0]) if row["arm"].split("-")[0] in families else j
            # a colour per method family (condense, block dropping, Torch-Pruning, scratch, depth + width), a
            # marker per arm; the second and later budgets hollow
            ax.errorbar(
                [x],
                [100 * y],
                yerr=[100 * (row.get("acc_std") or 0.0)],
                marker=markers[j % len(markers)],
                color=colors[family % len(colors)],
                linestyle="none",
                capsize=3,
                markersize=7,
                markerfacecolor=None if i == 0 else "none",
                label=f"{row['arm']} @ {row['budget']}",
            )
        ax.set_xlabel(f"latency / original's, batch {b} (lower is faster)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
        fig.subplots_adjust(right=0.78)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
