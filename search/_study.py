"""Run a budget search: prepare it, run the study (resume, retries, stopping), the progress bar, the outputs.

In: a model (spec or nn.Module), data, budgets and proxy-training options (``SearchConfig``, ``_config``).
Out: ``SearchResult`` (the study, every trial and the Pareto front as DataFrames, the files written).
Files, in the output directory (``STUDY_DIR``):

    study.journal        the Optuna study (default storage; ``storage=`` a database URL instead)
    search.json          the configuration, the storage and study name, the original model's figures
    trials/<N>/          trial N's trained condensed model (``condense.load`` reads it)
    trials.csv           every trial: plan, figures, state
    front.csv            the Pareto front (``study.best_trials``: feasible trials only), by MACs
    front.png            accuracy vs MACs, the front and the original model marked
    finished/<N>/, finished.csv, finished.png   with ``finish=``: fine-tuned front members (``search._finish``)

Never: writes into a folder that is not a search's or another study's (``_storage``); resumes a study started
with other options or another space (``_check_same_search``, naming what differs). Never loses a finished
trial. Each trial is written to the storage when it ends; re-running the same search resumes the study (same
study name, ``load_if_exists``), and ``trials`` counts the study's evaluated trials (within the budgets), so
a resumed search runs only the rest. A trial that died mid-way is failed and retried with the same
parameters (``_workers``); Ctrl-C (or SIGTERM) during a trial marks it failed and re-enqueues it at once.
The search stops after ``trials`` evaluated trials, after 10 x ``trials`` (``max_proposals``) plans over budget
or duplicate, or after 10 failed trials in a row. Samplers are seeded per trial number (``_samplers``).

Split by concern: ``_config`` (``SearchConfig``, ``search.json``), ``_samplers``, ``_storage`` (folder,
journal, database, ``open_study``), ``_workers`` (heartbeats, stale trials, signals), ``_progress`` (the bar).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
import torch
from torch import nn

from condense import (
    BudgetError,
    CondenseError,
    atomic_write_json,
    find_runs,
    fit,
    load_checkpoint,
    macs_and_params,
    resolve_device,
    resolve_model,
)
from condense import LatencySetting, Plan, format_count, parse_budget
from condense.data import load_data
from condense.train import TrainConfig

from . import _objective
from ._config import _IDENTITY, CONFIG, TRIALS, SearchConfig, _model_name
from ._finish import finish_front
from ._objective import Objective, build_trial, measure_latency, objective_names
from ._pareto import front_frame, trials_frame, write_csv
from ._plot import plot_front
from ._progress import _counts, _Progress
from ._space import SearchSpace, build_space
from ._storage import _is_journal, claim_search_folder, open_study
from ._workers import _Heartbeat, _retry, _sigterm_as_interrupt, recover_stale_trials

# tests (tests/test_search*.py, tests/test_supernet.py) import these from search._study; none is patched there
from ._samplers import make_sampler  # noqa: F401
from ._storage import make_storage, repair_journal, study_from_dir  # noqa: F401

__all__ = ["SearchResult", "run_search"]

_CONFIG_KEY = "condense:config"
_REFERENCE_KEY = "condense:reference"
_MAX_FAILURES = 10  # consecutive failed trials of one worker that stop it
_OVER_FACTOR = 10  # a search also stops after 10 x trials plans over budget or duplicate (space exhausted)


def world_size() -> int:
    """Processes of this run (``torchrun`` sets WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclasses.dataclass
class SearchResult:
    study: optuna.Study
    space: SearchSpace
    trials: Any  # pandas DataFrame: every trial
    front: Any  # pandas DataFrame: the Pareto front
    reference: dict[str, Any]
    output: Path
    files: dict[str, Path]
    interrupted: bool = False
    finished: Any = None  # FinishResult of --finish (fine-tuned front members), or None


def _build_original(config: SearchConfig, model: nn.Module | None, num_classes: int):
    """(model, spec, model_kwargs): the original model with the data's classes (and local weights). A model
    built here starts from the study seed's weights, so every worker and every resumed run trains the same
    plan from the same weights."""
    if model is not None:
        net = copy.deepcopy(model)
        if config.checkpoint:
            load_checkpoint(net, config.checkpoint)
        return net, None, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        r = resolve_model(config.model, checkpoint=config.checkpoint, num_classes=num_classes)
    if r.is_directory:
        raise CondenseError(
            f"{config.model!r} is a condensed-model directory; search starts from a model spec",
            "pass the original model, e.g. timm:NAME or zoo:NAME",
        )
    return r.model, r.spec, r.model_kwargs


def _check_reachable(original: nn.Module, size, space: SearchSpace, config: SearchConfig) -> None:
    """A budget no plan of the space can meet is an error with the smallest reachable figure, before the
    study exists: the smallest plan of each layer type (every run at m = 1, the lowest K), measured."""
    errors = []
    for layer in space.layers:
        for width in (None, *([max(space.widths)] if space.widths else [])):  # the most channels a trial removes
            try:
                fit(
                    original,
                    macs=config.macs,
                    params=config.params,
                    input_size=size,
                    layer=layer,
                    K=space.K[0] if layer != "drop" else None,
                    width=width,
                )  # drop has no K
                return
            except BudgetError as err:
                errors.append(err)
    first = errors[0]
    raise BudgetError(
        f"no plan in the search space meets the budget: {first.message}"
        + (f" with {space.layers[0]}" if len(space.layers) > 1 else ""),
        "raise the budget (--budget/--params), or widen the space (--layers, --K)",
    )


def _check_reachable_width(
    original: nn.Module,
    found,
    size,
    space: SearchSpace,
    config: SearchConfig,
    budgets: tuple[float | None, float | None],
) -> None:
    """A width-alone space: the budgets (resolved: MACs, parameters) must hold with the largest share of
    ``space.widths`` removed from every run, measured; else the error names the figure."""
    widest = {run.path: max(space.widths) for run in space.runs}
    pruned, _ = build_trial(
        original, found, Plan({}), config.seed, widest, size, config.width_importance, config.width_multiple
    )
    measured = macs_and_params(pruned, size)
    for have, resolved, (name, budget) in zip(measured, budgets, (("MAC", config.macs), ("parameter", config.params))):
        if resolved is not None and have > resolved:
            raise BudgetError(
                f"no plan in the search space meets the {name} budget {budget}: with "
                f"{max(space.widths):g} of every run's channels removed the model has {have:,}",
                "raise the budget, or allow larger shares (--widths)",
            )


def _train_config(config: SearchConfig):
    return TrainConfig(
        epochs=config.epochs_per_trial,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        max_steps_per_epoch=config.steps_per_epoch,
    )


def _latency_setting(config: SearchConfig) -> LatencySetting:
    return LatencySetting(
        batch=config.latency_batch,
        mode="compiled" if config.latency_compiled else "eager",
        min_time=0.5,
        device=config.device,
    )


def _reference(objective: Objective, config: SearchConfig) -> dict[str, Any]:
    """The original model's figures (and its accuracy after the same proxy training, if asked; its latency
    whenever latency is measured: ``condense compare`` scales a latency front by it)."""
    ref: dict[str, Any] = {"macs": objective.macs_before, "params": objective.params_before, "accuracy": None}
    model = copy.deepcopy(objective.model)
    if config.reference:
        res = _objective.train(model, objective.data, objective.train_config, teacher=objective.teacher, progress=False)
        ref["accuracy"] = float(res.metrics["test_acc"])
    if config.latency:
        ref["latency_ms"] = measure_latency(model, objective.input_size, objective.latency_setting)
    return ref


def _enqueue_fit(study: optuna.Study, space: SearchSpace, model: nn.Module, config: SearchConfig, input_size) -> None:
    """Give the search a feasible start: condense.fit's plan for the budget, as the first trial."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit(model, macs=config.macs, params=config.params, input_size=input_size)
    except CondenseError:
        return
    ms = {row.path: row.m for row in res.rows}
    Ks = [c.options.get("K", 5) for c in res.plan.choices.values()]
    try:
        params = space.params_of_plan(ms, K=Ks[0] if Ks else 5)
    except CondenseError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(params, skip_if_exists=True)


def run_search(
    model: str | nn.Module,
    data: str,
    *,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    console=None,
    on_trial: Callable[[optuna.Study, Any], None] | None = None,
    finish: Any = None,
    **options: Any,
) -> SearchResult:
    """Search plans for ``model`` (a spec like ``timm:resnet18`` or an ``nn.Module``) on ``data``.

    Keywords are ``SearchConfig``'s fields: ``macs``/``params`` (budgets, hard constraints), ``trials``
    (plans the study should have evaluated within the budgets; over-budget plans are counted and recorded
    but not trained, and plans seen before are pruned as duplicates: neither counts, and the search stops
    after 10 x ``trials`` of them), ``epochs_per_trial``, ``steps_per_epoch``, ``batch_size``,
    ``lr``, ``limit_train``/``limit_test``, ``input_size``, ``checkpoint``, ``distill``, ``latency``,
    ``sampler`` (nsgaii or tpe), ``population``, ``seed``, ``layers``, ``K`` ((lo, hi)), ``widths`` (shares
    of a run's channels a trial may remove with Torch-Pruning, per run; ``width_importance`` l1 or group;
    ``width_multiple`` N keeps pruned groups of more than N channels at multiples of N),
    ``objective`` (``macs``: accuracy, MACs, params; ``latency``: accuracy and measured latency), ``storage`` (a
    database URL; default: a journal file in ``output``), ``study_name``, ``heartbeat_interval``,
    ``grace_period``, ``max_retry``, ``reference``, ``enqueue_fit``. Re-running with the same output (or
    storage and study name) resumes the study. ``finish`` (a ``FinishConfig``): afterwards, fine-tune that
    many front members and report their final accuracies (``search._finish``; ``SearchResult.finished``).
    Returns a ``SearchResult``; writes the files listed in the module docstring.
    """
    if world_size() > 1:
        raise CondenseError(
            "the per-trial search does not run under torchrun",
            "start several workers that share one --storage, or use --strategy supernet",
        )
    spec_text = model if isinstance(model, str) else None
    out = Path(output) if output is not None else Path("searches") / _model_name(spec_text)
    config = SearchConfig(model=spec_text, data=str(data), output=str(out), **options)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it; restored at the end
    try:
        return _run(config, model, spec_text, out, progress, console, on_trial, finish)
    finally:
        optuna.logging.set_verbosity(verbosity)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What every search strategy starts from: the data, the original model, its runs, counts, budgets and
    the search space."""

    bundle: Any
    original: nn.Module
    spec: Any
    model_kwargs: dict[str, Any]
    size: tuple[int, ...]
    found: Any
    macs0: int
    params0: int
    macs_b: float | None
    params_b: float | None
    space: SearchSpace
    teacher: nn.Module | None = None


def make_teacher(config: SearchConfig, original: nn.Module, num_classes: int) -> nn.Module | None:
    """The model trials (and the supernet's plans) are distilled from: ``--teacher`` (with its checkpoint and
    the data's classes, built under the study seed), else the original with ``--distill``, else None."""
    if config.teacher is None:
        return copy.deepcopy(original).eval() if config.distill else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        r = resolve_model(config.teacher, checkpoint=config.teacher_checkpoint, num_classes=num_classes)
    return r.model.eval()


def prepare(config: SearchConfig, model, spec_text) -> Prepared:
    """Everything that can be checked, checked before the study (and the output folder) is created: the
    device, the data, the model, the budgets (reachable by some plan of the space)."""
    resolve_device(config.device)
    claim_search_folder(config)
    bundle = load_data(
        config.data, limit_train=config.limit_train, limit_test=config.limit_test, input_size=config.input_size
    )
    original, spec, model_kwargs = _build_original(config, None if spec_text else model, bundle.num_classes)
    teacher = make_teacher(config, original, bundle.num_classes)
    size = tuple(bundle.input_size)
    found = find_runs(original, size)
    macs0, params0 = found.total_macs, found.total_params
    if macs0 is None:
        macs0, params0 = macs_and_params(original, size)
    macs_b = parse_budget(config.macs).resolve(macs0) if config.macs is not None else None
    params_b = parse_budget(config.params).resolve(params0) if config.params is not None else None
    space = build_space(found, layers=config.layers, K=config.K, widths=config.widths, depth=config.depth)
    if (macs_b is not None or params_b is not None) and space.depth:
        _check_reachable(original, size, space, config)
    elif macs_b is not None or params_b is not None:  # width alone: the most channels every run may lose
        _check_reachable_width(original, found, size, space, config, (macs_b, params_b))
    return Prepared(bundle, original, spec, model_kwargs, size, found, macs0, params0, macs_b, params_b, space, teacher)


def _run(
    config: SearchConfig, model, spec_text, out: Path, progress: bool, console, on_trial, finish=None
) -> SearchResult:
    p = prepare(config, model, spec_text)
    bundle, original, spec, model_kwargs, size, found = p.bundle, p.original, p.spec, p.model_kwargs, p.size, p.found
    macs0, params0, macs_b, params_b, space = p.macs0, p.params0, p.macs_b, p.params_b, p.space
    study = open_study(config, out)
    _check_same_search(study, config, None)
    _check_same_search(study, config, space)
    (out / TRIALS).mkdir(parents=True, exist_ok=True)

    teacher = p.teacher
    objective = Objective(
        space=space,
        model=original,
        found=found,
        data=bundle,
        train_config=_train_config(config),
        trials_dir=out / TRIALS,
        macs_before=macs0,
        params_before=params0,
        macs_budget=macs_b,
        params_budget=params_b,
        teacher=teacher,
        latency=config.latency,
        latency_setting=_latency_setting(config),
        spec=spec,
        model_kwargs=model_kwargs,
        checkpoint=config.checkpoint,
        study_name=config.name,
        seed=config.seed,
        device=config.device,
        objective=config.objective,
        width_importance=config.width_importance,
        width_multiple=config.width_multiple,
    )
    journal = _is_journal(study._storage)
    recover_stale_trials(study, config.grace_period, config.max_retry)
    if (
        not study.get_trials(deepcopy=False)
        and config.enqueue_fit
        and space.depth
        and (macs_b is not None or params_b is not None)
    ):
        _enqueue_fit(study, space, original, config, size)

    reference = study.user_attrs.get(_REFERENCE_KEY)
    bar = _Progress(config.trials, progress, console)
    interrupted = False
    with bar, _sigterm_as_interrupt():
        try:
            if reference is None:
                bar.phase("training the original model (reference)" if config.reference else "reference")
                reference = {**_reference(objective, config), "macs_budget": macs_b, "params_budget": params_b}
                study.set_user_attr(_REFERENCE_KEY, reference)
            _write_config(out, config, study, space, reference)
            objective.phase = bar.phase
            bar.update(study)
            _optimize(study, objective, config, journal, bar, on_trial)
        except KeyboardInterrupt:
            interrupted = True
    result = _finish(study, space, reference or {}, out, interrupted)
    if interrupted:
        raise _Interrupted(result)
    return finish_members(result, finish, p, config, teacher, console, progress)


def finish_members(
    result: SearchResult, finish, p: Prepared, config: SearchConfig, teacher, console, progress: bool
) -> SearchResult:
    """``--finish``: fine-tune ``finish.top`` front members (``search._finish``) into ``result.finished``; an
    interrupt keeps the members already finished (the same command resumes) and reports the front."""
    if finish is None:
        return result
    try:
        with _sigterm_as_interrupt():
            result.finished = finish_front(
                result.front,
                result.output,
                p.original,
                p.bundle,
                finish,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=config.seed,
                teacher=teacher,
                device=config.device,
                reference=result.reference,
                console=console,
                progress=progress or console is not None,
            )
    except KeyboardInterrupt:
        result.interrupted = True
        raise _Interrupted(result) from None
    result.files.update(result.finished.files)
    return result


class _Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt carrying what was finished (its outputs are written)."""

    def __init__(self, result: SearchResult):
        super().__init__("search interrupted")
        self.result = result


def _check_same_search(study: optuna.Study, config: SearchConfig, space: SearchSpace | None) -> None:
    """A resumed (or shared) study must have been started with the same options and space; a new one
    records them (one attribute, written once: workers that start together see all of it or none)."""
    mine = json.loads(json.dumps({"options": config.identity(), "space": space.to_dict() if space else None}))
    stored = study.user_attrs.get(_CONFIG_KEY)
    if stored is None:
        if space is None:
            return
        study.set_user_attr(_CONFIG_KEY, mine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objective_names(config.latency, config.objective))
        return
    old, new = stored.get("options", {}), mine["options"]
    # seed and the data's content and absolute path were added later: a study stored without them resumes;
    # the path counts only for a study in a local folder (workers sharing a database keep data anywhere)
    later = ("seed", "data_fingerprint", "widths", "width_importance", "objective", "depth", "width_multiple") + (
        ("data_path",) if config.storage is None else ()
    )
    diff = [
        k
        for k in _IDENTITY + tuple(k for k in later if k in old or (k in ("depth", "width_multiple") and k in new))
        if json.dumps(old.get(k)) != json.dumps(new.get(k))
    ]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        raise CondenseError(
            f"study {config.name!r} was started with other options ({shown})",
            "resume with the same options, or use another output directory / --study-name",
        )
    if space is not None and stored.get("space") != mine["space"]:
        raise CondenseError(f"study {config.name!r} has another search space", "use another --study-name")


def _write_config(
    out: Path, config: SearchConfig, study: optuna.Study, space: SearchSpace, reference: dict[str, Any]
) -> None:
    d = config.to_dict()
    meta = {
        "format": "condense-search/1",
        "study_name": study.study_name,
        "config": d,
        "objectives": objective_names(config.latency, config.objective),
        "reference": reference,
        "space": space.to_dict(),
    }
    atomic_write_json(out / CONFIG, meta)


def _optimize(
    study: optuna.Study, objective: Objective, config: SearchConfig, journal: bool, bar: _Progress, on_trial
) -> None:
    def enough() -> bool:
        c = _counts(study.get_trials(deepcopy=False))
        cap = config.max_proposals if config.max_proposals is not None else _OVER_FACTOR * config.trials
        return c["done"] >= config.trials or c["over"] + c["duplicate"] >= cap

    failures: list[Any] = [0, ""]  # consecutive failed trials of this worker, the last error

    def wrapped(trial: optuna.Trial):
        beat = _Heartbeat(trial, config.heartbeat_interval) if journal else contextlib.nullcontext()
        with beat:
            try:
                return objective(trial)
            except CondenseError as err:  # this plan cannot be built or counted: recorded, not retried
                trial.set_user_attr("status", "failed")
                trial.set_user_attr("error", str(err))
                raise
            except KeyboardInterrupt:
                # the trial is failed by Optuna; queue it again so that a resumed search runs it
                _retry(study, trial._trial_id, config.max_retry)
                raise

    def after(study: optuna.Study, trial) -> None:
        failures[0] = failures[0] + 1 if trial.state == TrialState.FAIL else 0
        failures[1] = trial.user_attrs.get("error", failures[1])
        if failures[0] >= _MAX_FAILURES:
            study.stop()
        recover_stale_trials(study, config.grace_period, config.max_retry)
        bar.phase("search")
        bar.update(study)
        if on_trial is not None:
            on_trial(study, trial)
        if enough():
            study.stop()

    if enough():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(wrapped, callbacks=[after], catch=(CondenseError,), gc_after_trial=False)
    if failures[0] >= _MAX_FAILURES:
        raise CondenseError(
            f"{_MAX_FAILURES} trials in a row failed; the last: {failures[1] or 'see trials.csv'}",
            "narrow the space (--layers, --K) or check the model",
        )


def _finish(
    study: optuna.Study, space: SearchSpace, reference: dict[str, Any], out: Path, interrupted: bool
) -> SearchResult:
    trials = trials_frame(study, space)
    front = front_frame(study, space, trials)
    files = {"trials": write_csv(trials, out / "trials.csv"), "front": write_csv(front, out / "front.csv")}
    try:
        files["plot"] = plot_front(
            trials, out / "front.png", reference=reference, title=f"{study.study_name}: accuracy vs MACs"
        )
    except ImportError:
        pass  # matplotlib is optional (pip install condense[plot])
    return SearchResult(
        study=study,
        space=space,
        trials=trials,
        front=front,
        reference=reference,
        output=out,
        files=files,
        interrupted=interrupted,
    )


def format_reference(reference: dict[str, Any]) -> str:
    acc = reference.get("accuracy")
    return (
        f"original: {format_count(reference.get('macs', 0))} MACs, {format_count(reference.get('params', 0))} "
        f"params" + (f", proxy accuracy {acc:.4f}" if acc is not None and not math.isnan(acc) else "")
    )
