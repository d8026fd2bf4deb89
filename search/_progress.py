"""The search's progress: trials counted by status, a rich progress bar, or plain lines in a log.

In: the study (all workers' trials), the number of trials asked for, a rich console (or none).
Out: ``_counts`` (evaluated, over budget, duplicate, failed, running, trained) and ``_Progress``: on a terminal
a bar (evaluated of total, front size, over budget, elapsed, remaining); otherwise one plain line per
evaluated trial.
Never: prints when ``enabled`` is False, or draws a bar into a log file (plain lines there).
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._objective import STATUS_DUPLICATE, STATUS_OVER, STATUS_TRAINED


def _counts(trials) -> dict[str, int]:
    """``done``: trials evaluated within the budgets (trained, or diverged in training); ``over``: plans
    over budget (counted, not trained); ``duplicate``: plans evaluated before; ``failed``, ``running``."""
    out = {"done": 0, "over": 0, "duplicate": 0, "failed": 0, "running": 0, "trained": 0}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            status = t.user_attrs.get("status")
            if status == STATUS_OVER:
                out["over"] += 1
            elif status == STATUS_DUPLICATE:
                out["duplicate"] += 1
            else:
                out["done"] += 1
            out["trained"] += status == STATUS_TRAINED
        elif t.state == TrialState.FAIL:
            out["failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
    return out


class _Progress:
    """The rich progress bar: trials done (all workers), front size, over budget, elapsed, remaining. When
    the output is not a terminal (a log file), one plain line per evaluated trial instead."""

    def __init__(self, total: int, enabled: bool, console=None):
        self.total, self.enabled = total, enabled
        self.t0 = time.perf_counter()
        self.done_at_start: int | None = None
        self.bar = None
        self.lines = None  # the console plain lines go to; the last count printed
        self.printed = -1
        if enabled and console is None:
            console = Console()
        if enabled and not console.is_terminal:
            self.lines, enabled = console, False
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("evaluated · front {task.fields[front]}"),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=console,
            )
            self.task = self.bar.add_task("search", total=total, front=0, extra="", eta="")

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def phase(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text)

    def update(self, study: optuna.Study) -> None:
        if not self.bar and not self.lines:
            return
        trials = study.get_trials(deepcopy=False)
        c = _counts(trials)
        if self.done_at_start is None:
            self.done_at_start = c["done"]
        front = len(study.best_trials)
        new = c["done"] - self.done_at_start
        elapsed = time.perf_counter() - self.t0
        left = max(self.total - c["done"], 0)
        eta = f"~{_hms(elapsed / new * left)} left" if new > 0 and left else ""
        extra = " · ".join(
            f"{n} {what}"
            for n, what in (
                (c["over"], "over budget (not trained)"),
                (c["duplicate"], "duplicate"),
                (c["failed"], "failed"),
                (c["running"], "running"),
            )
            if n
        )
        if self.lines is not None:
            if c["done"] != self.printed:
                self.printed = c["done"]
                self.lines.print(
                    f"search: {c['done']}/{self.total} evaluated, front {front}"
                    + "".join(f", {x}" for x in (extra.replace(" · ", ", "), eta) if x),
                    highlight=False,
                    soft_wrap=True,
                )
            return
        self.bar.update(self.task, completed=min(c["done"], self.total), front=front, extra=extra, eta=eta)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
