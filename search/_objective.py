"""One trial: plan -> condensed model -> count -> (budget check) -> short proxy training -> figures + weights.

In: an Optuna trial, the search space, the original model and its runs, the data, the proxy-training
config, the budgets. Out: the objective values (accuracy, MACs, params[, latency ms]; with the ``latency``
objective, accuracy and latency ms only: MACs and parameters are still counted, recorded and constrained)
and, for a trained trial, ``TRIALS_DIR/<number>/`` written with condense's save format (``condense.load`` reads it).
Never: trains a plan that breaks a budget (it is counted first; the constraint is recorded with
``trial.set_constraint`` and the trial returns accuracy 0, so it never enters the constrained front), or
a plan the study has already evaluated (the sampler may propose it again, or parameters that do not act,
such as ``velocity`` of an RD layer, may differ): that trial is pruned as a ``duplicate`` of the first.
A trial with width (``width[PATH]`` > 0) prunes the original's channels with Torch-Pruning first
(``condense._width``), then applies the plan to the pruned model; its directory records the pruning.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from torch import nn

from condense import (
    CondenseError,
    LatencySetting,
    Plan,
    PlanCosts,
    find_runs,
    macs_and_params,
    rewrite,
    write_condensed,
)
from condense import measure_latency as _measure
from condense._width import WidthSpec, prune
from condense.train import TrainConfig, train

__all__ = [
    "Objective",
    "OBJECTIVES",
    "OBJECTIVE_KINDS",
    "objective_names",
    "measure_latency",
    "build_plan",
    "build_trial",
]

# name, direction; latency is appended when measured
OBJECTIVES: tuple[tuple[str, str], ...] = (("accuracy", "maximize"), ("macs", "minimize"), ("params", "minimize"))
LATENCY = ("latency_ms", "minimize")
OBJECTIVE_KINDS = ("macs", "latency")  # what a search trades accuracy against: MACs and params, or measured latency
STATUS_TRAINED, STATUS_OVER, STATUS_DIVERGED, STATUS_DUPLICATE = "trained", "over budget", "diverged", "duplicate"
# a plan whose estimate exceeds a budget by more than this (relative) is rejected without being counted; the
# estimate (blocks and layers counted one by one) is within about 1% of the measured count
SCREEN_MARGIN = 0.05


def _plan_key(plan: Any) -> str:
    return json.dumps(plan, sort_keys=True, default=str)


def _same_plan(trial: optuna.Trial, plan: Plan, width: dict[str, float] | None = None) -> int | None:
    """The number of a finished trial of the study with this very plan (and width), if any (None otherwise)."""
    key = _plan_key([plan.to_dict(), width or {}])
    for t in trial.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ):
        if (
            t.user_attrs.get("status") != STATUS_DUPLICATE
            and "plan" in t.user_attrs
            and _plan_key([t.user_attrs["plan"], t.user_attrs.get("width") or {}]) == key
        ):
            return t.number
    return None


def _objectives(latency: bool, objective: str) -> list[tuple[str, str]]:
    if objective not in OBJECTIVE_KINDS:
        raise CondenseError(f"unknown search objective {objective!r}", f"use one of {', '.join(OBJECTIVE_KINDS)}")
    if objective == "latency":
        return [OBJECTIVES[0], LATENCY]
    return list(OBJECTIVES) + ([LATENCY] if latency else [])


def objective_names(latency: bool, objective: str = "macs") -> list[str]:
    """The study's objectives: accuracy, MACs, params (and latency_ms when measured); with ``objective``
    ``latency``: accuracy and latency_ms."""
    return [n for n, _ in _objectives(latency, objective)]


def objective_directions(latency: bool, objective: str = "macs") -> list[str]:
    return [d for _, d in _objectives(latency, objective)]


measure_latency = _measure  # one measurer: the search's latency objective is the latency budget's


def build_plan(model: nn.Module, found, plan: Plan, seed: int) -> nn.Module:
    """The condensed model of ``plan`` as a search trial builds it (a fresh copy of ``model`` if the plan changes
    nothing). The new layers' initial weights depend only on (``seed``, the plan), so a plan (or its retry)
    always starts from the same weights, and training (seeded) repeats its accuracy."""
    return build_trial(model, found, plan, seed)[0]


def build_trial(
    model: nn.Module,
    found,
    plan: Plan,
    seed: int,
    width: dict[str, float] | None = None,
    input_size=None,
    importance: str = "l1",
    multiple: int = 1,
):
    """``build_plan`` with a width: the original pruned first (run path -> share of channels removed,
    ``condense._width.prune``, importance from its weights), then ``plan`` applied to the pruned model.
    Returns the model and the pruning's ``WidthFit`` record (None without width)."""
    record = None
    if width:
        model, record = prune(model, input_size, WidthSpec(width, importance, multiple), found.runs)
        found = find_runs(model, input_size, count=False)
    if not plan.choices:
        return (model if record is not None else copy.deepcopy(model)), record
    key = json.dumps([seed, plan.to_dict(), *([width] if width else [])], sort_keys=True, default=str).encode()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % 2**63)
        return rewrite(model, found, plan.choices).module, record


@dataclasses.dataclass
class Objective:
    """The objective of a study (``study.optimize(Objective(...))``); see the module docstring."""

    space: Any  # SearchSpace
    model: nn.Module  # the original model (never modified)
    found: Any  # condense.FindResult of ``model``
    data: Any  # condense.DataBundle
    train_config: TrainConfig
    trials_dir: Path
    macs_before: int
    params_before: int
    macs_budget: float | None = None
    params_budget: float | None = None
    teacher: nn.Module | None = None
    latency: bool = False
    latency_setting: LatencySetting | None = None  # batch, eager/compiled, threads (default batch 1 eager)
    spec: Any = None  # ModelSpec (or None for a model built in Python)
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    study_name: str = ""
    seed: int = 0
    device: str = "auto"  # where trials train (latency: ``latency_setting.device``)
    phase: Callable[[str], None] | None = None
    screen: bool = True  # reject plans far over budget by estimate (see ``estimate``)
    objective: str = "macs"  # macs: (accuracy, MACs, params[, latency]); latency: (accuracy, latency)
    width_importance: str = "l1"  # how a trial with width ranks channels (l1 or group)
    width_multiple: int = 1  # its channel counts in multiples of it (condense._width.kept_channels)
    _costs: PlanCosts | None = dataclasses.field(default=None, repr=False)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data.input_size)

    def _say(self, trial, what: str) -> None:
        if self.phase is not None:
            self.phase(f"trial {trial.number}: {what}")

    def build(self, plan: Plan) -> nn.Module:
        """The condensed model of ``plan`` (``build_plan`` with the study's seed)."""
        return build_plan(self.model, self.found, plan, self.seed)

    def build_trial(self, plan: Plan, width: dict[str, float] | None = None):
        """``build`` with a width (run path -> share of channels removed): the model and its width record."""
        if not width:
            return self.build(plan), None
        return build_trial(
            self.model, self.found, plan, self.seed, width, self.input_size, self.width_importance, self.width_multiple
        )

    def estimate(self, plan: Plan) -> tuple[int, int] | None:
        """MACs and parameters of ``plan``'s model from counts already made (``condense.PlanCosts``, the
        cost model ``fit`` uses): the original's totals minus the replaced blocks plus each new layer,
        counted alone once per (run, choice). None when a count is missing. Used only to reject plans far
        over budget without building and counting them; a plan near or within budget is always measured."""
        if self._costs is None:
            self._costs = PlanCosts(self.model, self.found)
        return self._costs.estimate((self.macs_before, self.params_before), plan.choices)

    def constraints(self, macs: int, params: int) -> dict[str, float]:
        """Budget constraints as Optuna wants them: <= 0 is feasible (relative excess over the budget)."""
        out = {}
        if self.macs_budget is not None:
            out["macs"] = macs / self.macs_budget - 1.0
        if self.params_budget is not None:
            out["params"] = params / self.params_budget - 1.0
        return out

    def prune_duplicate(self, trial: optuna.Trial, plan: Plan, width: dict[str, float] | None = None) -> None:
        """Prune ``trial`` as a ``duplicate`` when the study has evaluated this very plan (and width) already
        (parameters that do not act can differ): nothing new to learn. Both strategies' objectives call it."""
        same = _same_plan(trial, plan, width)
        if same is not None:
            trial.set_user_attr("status", STATUS_DUPLICATE)
            trial.set_user_attr("duplicate_of", same)
            raise optuna.TrialPruned(f"the plan of trial {same}")

    def screen_budget(
        self, trial: optuna.Trial, plan: Plan, width: dict[str, float] | None = None
    ) -> tuple[float, ...] | None:
        """The budget screen, one for both strategies' objectives: a plan whose estimate (``estimate``)
        exceeds a budget by more than ``SCREEN_MARGIN`` is recorded on ``trial`` as over budget (its
        estimated MACs and parameters, ``estimated``, the constraints) and never built, trained or scored:
        returns the trial's objective values then, None otherwise (and with ``screen`` off, or a width: the
        estimate knows no width)."""
        guess = self.estimate(plan) if self.screen and not width else None
        if guess is None or not any(v > SCREEN_MARGIN for v in self.constraints(*guess).values()):
            return None
        trial.set_user_attr("macs", guess[0])
        trial.set_user_attr("params", guess[1])
        trial.set_user_attr("estimated", True)
        for key, value in self.constraints(*guess).items():
            trial.set_constraint(key, value)
        trial.set_user_attr("status", STATUS_OVER)
        return self._values(0.0, guess[0], guess[1], math.inf)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        params = self.space.suggest(trial)
        plan = self.space.plan(params)
        width = self.space.width_of(params)
        trial.set_user_attr("plan", plan.to_dict())
        if width:
            trial.set_user_attr("width", width)
        self.prune_duplicate(trial, plan, width)
        screened = self.screen_budget(trial, plan, width)
        if screened is not None:
            return screened
        self._say(trial, "building and counting" if not width else "pruning, building and counting")
        model, record = self.build_trial(plan, width)
        macs, n_params, over = self.count_and_constrain(trial, model)
        if over:
            return self._values(0.0, macs, n_params, math.inf)
        self._say(trial, f"training ({self.train_config.epochs} epoch(s))")
        t0 = time.perf_counter()
        try:
            result = train(
                model, self.data, self.train_config, teacher=self.teacher, progress=False, device=self.device
            )
            model = model.cpu()  # saved and counted from the CPU; recorded with the device it trained on
            trial.set_user_attr("device", str(result.metrics.get("device")))
        except CondenseError as err:  # the loss became NaN/Inf: this configuration diverges
            trial.set_user_attr("status", STATUS_DIVERGED)
            trial.set_user_attr("error", str(err))
            raise optuna.TrialPruned(f"training diverged: {err}") from None
        seconds = time.perf_counter() - t0
        accuracy = float(result.metrics["test_acc"])
        latency = measure_latency(model, self.input_size, self.latency_setting) if self.latency else math.inf
        self._say(trial, "saving")
        directory = self.save_trial(trial, model, plan, macs, n_params, accuracy, latency, seconds, width=record)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("train_seconds", round(seconds, 3))
        trial.set_user_attr("trial_dir", str(directory))
        if self.latency:
            trial.set_user_attr("latency_ms", latency)
        trial.set_user_attr("status", STATUS_TRAINED)
        return self._values(accuracy, macs, n_params, latency)

    def count_and_constrain(self, trial, model: nn.Module) -> tuple[int, int, bool]:
        """Count ``model`` (on the CPU), record its MACs, parameters and budget constraints on ``trial``;
        returns (MACs, params, over budget), marking the trial over budget when it is."""
        counted = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
        macs, n_params = macs_and_params(counted, self.input_size)
        trial.set_user_attr("macs", int(macs))
        trial.set_user_attr("params", int(n_params))
        violations = self.constraints(macs, n_params)
        for key, value in violations.items():
            trial.set_constraint(key, value)
        over = any(v > 0 for v in violations.values())
        if over:
            trial.set_user_attr("status", STATUS_OVER)
        return int(macs), int(n_params), over

    def _values(self, accuracy: float, macs: int, params: int, latency: float) -> tuple[float, ...]:
        if self.objective == "latency":  # MACs and params are recorded (user attributes) and constrained only
            return float(accuracy), float(latency)
        values = (float(accuracy), float(macs), float(params))
        return values + ((float(latency),) if self.latency else ())

    def save_trial(
        self,
        trial,
        model: nn.Module,
        plan: Plan,
        macs: int,
        params: int,
        accuracy: float,
        latency: float,
        seconds: float,
        width=None,
    ) -> Path:
        """Write the trained model of ``trial`` to ``trials_dir/<number>`` (condense's save format)."""
        runs = []
        for run in self.space.runs:
            choice = plan.choices.get(run.path)
            runs.append(
                dict(
                    path=run.path,
                    block_class=run.block_class,
                    r=run.r,
                    m=choice.m if choice else run.r,
                    layer=choice.layer if choice else None,
                    K=int(choice.options["K"]) if choice and "K" in choice.options else None,
                )
            )
        counts = {
            "macs_before": self.macs_before,
            "macs_after": int(macs),
            "params_before": self.params_before,
            "params_after": int(params),
            "macs_budget": self.macs_budget,
            "params_budget": self.params_budget,
        }
        info = {
            "study": self.study_name,
            "trial": trial.number,
            "accuracy": accuracy,
            "data": self.data.name,
            "params": {k: v for k, v in trial.params.items()},
            "train": self.train_config.to_dict(),
            "train_seconds": round(seconds, 3),
            "distilled": self.teacher is not None,
        }
        if self.latency:
            info["latency_ms"] = latency
        directory = self.trials_dir / str(trial.number)
        write_condensed(
            directory,
            model.eval(),
            plan,
            model_class=self.found.model_class,
            input_size=self.input_size,
            counts=counts,
            runs=runs,
            spec=self.spec,
            model_kwargs=self.model_kwargs or None,
            checkpoint=self.checkpoint,
            extra={
                "search": json.loads(json.dumps(info, default=str)),
                **({"width": width.to_dict()} if width else {}),
            },
        )
        return directory
