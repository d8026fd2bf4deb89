"""The supernet strategy of the search: train one weight-sharing supernet, then score plans instead of training them.

In: the same model, data, budgets and study options as the per-trial search (``SearchConfig``), plus
``SupernetOptions`` (supernet epochs, random plans per step, BatchNorm calibration images).
Out: ``SearchResult`` as ``run_search`` gives it, and in ``STUDY_DIR``: ``supernet/last.pt`` (the trained
supernet, ``condense.train``'s checkpoint format, resumed when the command is run again) and
``supernet/metrics.json``, ``trials/<N>/`` (the plan's standalone model with the supernet's weights and its
own BatchNorm statistics: what ``condense export STUDY_DIR --trial N`` copies), ``trials.csv``,
``front.csv``, ``front.png``, ``study.journal``, ``search.json`` as for the per-trial search.
Width (``--widths``) is per-trial only: the supernet shares weights across depths and layer types, not across
channel widths, so a supernet search with widths is an error.
Never: trains a plan (a trial takes seconds: extract, count, re-estimate BatchNorm, evaluate), scores a
plan that breaks a budget (counted first, as in the per-trial search), or resumes a study started by the
other strategy or with other supernet options.

The supernet itself (the network, its trainer, ``score_plan``) is ``condense``'s (``condense._supernet``),
used here through public ``condense`` names; ``supernet`` builds it over this search's space (condense takes
the space as an argument and does not import the search). The duplicate check and the budget screen are
the per-trial objective's (``Objective.prune_duplicate``, ``Objective.screen_budget``).

A trial is recorded with status ``trained`` (it has weights: the supernet's) and ``strategy`` ``supernet``,
so the front, the plot, ``condense compare`` and ``condense export`` treat it as any evaluated trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
import torch.distributed as dist
from torch import nn

from condense import CondenseError, ConfigError, resolve_device
from condense import (
    FindResult,
    SandwichConfig,
    Supernet,
    calibration_batches,
    find_runs,
    recalibrate_bn,
    score_plan,
    train_supernet,
)
from condense import supernet as _condense_supernet
from condense.train import TrainConfig, evaluate, join_process_group

from . import _study
from ._objective import STATUS_TRAINED, Objective, measure_latency
from ._space import build_space
from ._study import SearchConfig, SearchResult

__all__ = ["supernet", "SupernetOptions", "SupernetObjective", "run_supernet_search", "SUPERNET_DIR"]

SUPERNET_DIR = "supernet"
_SUPERNET_KEY = "condense:supernet"


def supernet(
    model: nn.Module,
    *,
    input_size: Sequence[int],
    space: Any = None,
    found: FindResult | None = None,
    layers: Sequence[str] | None = None,
    K: Sequence[int] | None = None,
) -> Supernet:
    """The supernet of ``model`` over ``space`` (default: the search's space for its runs, ``build_space``,
    narrowed by ``layers``/``K``): ``condense.supernet`` with the space built here. ``found``:
    ``find_runs(model, input_size)`` if already made."""
    size = tuple(int(v) for v in input_size)
    found = found if found is not None else find_runs(model, size)
    if space is None:
        space = build_space(found, layers=layers, K=K)
    elif layers is not None or K is not None:
        raise ConfigError("give either space= or layers=/K=", "narrow the space when you build it")
    return _condense_supernet(model, input_size=size, space=space, found=found)


@dataclasses.dataclass(frozen=True)
class SupernetOptions:
    """The supernet strategy's own options: ``epochs`` of sandwich training, ``random_plans`` per step
    (besides the largest and the smallest), ``calib_images`` for each plan's BatchNorm statistics."""

    epochs: int = 5
    random_plans: int = 2
    calib_images: int = 256
    calib_batch: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"supernet option epochs={self.epochs!r}: must be an integer >= 1")
        self.sandwich()  # checks the others

    def sandwich(self) -> SandwichConfig:
        return SandwichConfig(
            random_plans=self.random_plans, calib_images=self.calib_images, calib_batch=self.calib_batch
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SupernetObjective(Objective):
    """The objective of a supernet study: plan -> standalone model with inherited weights -> count ->
    (budget check) -> BatchNorm re-estimated on ``calib`` -> accuracy on the held-out split."""

    supernet: Supernet | None = None
    calib: list = dataclasses.field(default_factory=list)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        params = self.space.suggest(trial)
        plan = self.space.plan(params)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("strategy", "supernet")
        self.prune_duplicate(trial, plan)
        screened = self.screen_budget(trial, plan)
        if screened is not None:
            return screened
        self._say(trial, "extracting and counting")
        t0 = time.perf_counter()
        model = self.supernet.extract(plan)
        macs, n_params, over = self.count_and_constrain(trial, model)
        if over:
            return self._values(0.0, macs, n_params, math.inf)
        self._say(trial, "scoring with the supernet's weights")
        recalibrate_bn(model, self.calib)
        accuracy = float(evaluate(model, self.data)["test_acc"])
        seconds = time.perf_counter() - t0
        model = model.cpu().eval()
        latency = self.measure(model) if self.latency else math.inf
        directory = self.save_trial(trial, model, plan, macs, n_params, accuracy, latency, seconds)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("score_seconds", round(seconds, 3))
        trial.set_user_attr("trial_dir", str(directory))
        if self.latency:
            trial.set_user_attr("latency_ms", latency)
        trial.set_user_attr("status", STATUS_TRAINED)
        return self._values(accuracy, macs, n_params, latency)

    def measure(self, model: nn.Module) -> float:
        return measure_latency(model, self.input_size, self.latency_setting)


def _agree(failure: BaseException | None) -> None:
    """Under torchrun: rank 0's ``failure`` (or None) reaches every rank; rank 0 re-raises it, the others raise
    a one-line error saying why rank 0 stopped (instead of waiting for it in the first collective)."""
    box = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise CondenseError(f"rank 0 stopped before training: {box[0]}", "see rank 0's message")


def _check_strategy(study: optuna.Study, options: SupernetOptions) -> None:
    mine = options.to_dict()
    stored = study.user_attrs.get(_SUPERNET_KEY)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise CondenseError(
                f"study {study.study_name!r} was started by the per-trial search",
                "use another output directory / --study-name for --strategy supernet",
            )
        study.set_user_attr(_SUPERNET_KEY, mine)
    elif stored != mine:
        diff = ", ".join(f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in mine.items() if stored.get(k) != v)
        raise CondenseError(
            f"study {study.study_name!r} was started with other supernet options ({diff})",
            "resume with the same options, or use another output directory",
        )


def supernet_train_config(config: SearchConfig, options: SupernetOptions) -> TrainConfig:
    """The supernet's training: the search's batch size, lr, seed and steps per epoch, ``options.epochs``
    epochs, cosine schedule, each plan's gradient clipped to norm 5 (the explicit RD stencils are kept
    stable by ``Supernet.stabilize_``; a drawn path that still blows up, e.g. a Global layer with a learned
    velocity at large K, is skipped by ``SandwichConfig.skip_loss``)."""
    return TrainConfig(
        epochs=options.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        max_steps_per_epoch=config.steps_per_epoch,
        clip_grad_norm=5.0,
    )


def run_supernet_search(
    model: str | nn.Module,
    data: str,
    *,
    output=None,
    supernet: SupernetOptions | None = None,
    progress: bool = True,
    console=None,
    on_trial: Callable | None = None,
    finish: Any = None,
    **options: Any,
) -> SearchResult | None:
    """``run_search`` with the supernet strategy: keywords are ``SearchConfig``'s (``epochs_per_trial`` is
    not used) plus ``supernet`` (``SupernetOptions``) and ``finish`` (``FinishConfig``: fine-tune that many front
    members afterwards, from the supernet's weights). Re-running with the same output resumes the
    supernet's training (if unfinished) and then the study.

    Under ``torchrun --nproc_per_node=N`` the supernet trains on N processes (``train_supernet``); rank 0
    then scores the plans alone and returns the result, the other ranks return None after training."""
    spec_text = model if isinstance(model, str) else None
    out = Path(output) if output is not None else Path("searches") / _study._model_name(spec_text)
    config = SearchConfig(model=spec_text, data=str(data), output=str(out), **options)
    if config.widths:
        raise ConfigError(
            "width is searched per trial only: the supernet shares weights across depths and layer "
            "types, not across channel widths",
            "leave out --widths, or use --strategy trials",
        )
    sn_options = supernet or SupernetOptions()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(config, sn_options, model, spec_text, out, progress, console, on_trial, finish)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(
    config: SearchConfig,
    sn_options: SupernetOptions,
    model,
    spec_text,
    out: Path,
    progress: bool,
    console,
    on_trial,
    finish=None,
) -> SearchResult:
    device = resolve_device(config.device)
    if finish is not None and _study.world_size() > 1:
        raise CondenseError(
            "--finish does not run under torchrun (the supernet's training does)",
            "train and score under torchrun, then run the same command with --finish without it",
        )
    p = _study.prepare(config, model, spec_text)
    bundle, original, spec, model_kwargs, size, found = p.bundle, p.original, p.spec, p.model_kwargs, p.size, p.found
    macs0, params0, macs_b, params_b, space = p.macs0, p.params0, p.macs_b, p.params_b, p.space
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the candidate layers' initial weights depend on the seed only
        net = Supernet(original, found, space)
    rank, _, distributed = join_process_group(device)
    study, failure = None, None
    if rank == 0:  # the study and its checks: one process; the others learn whether to go on
        try:
            study = _study.open_study(config, out)
            _check_strategy(study, sn_options)
            _study._check_same_search(study, config, None)
            _study._check_same_search(study, config, space)
            (out / _study.TRIALS).mkdir(parents=True, exist_ok=True)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = err
    if distributed:
        _agree(failure)
    elif failure is not None:
        raise failure

    teacher = p.teacher
    train_cfg = supernet_train_config(config, sn_options)
    sn_dir = out / SUPERNET_DIR
    if console is not None and rank == 0:
        console.print(
            f"training the supernet ({sn_options.epochs} epoch(s), sandwich: largest + smallest + "
            f"{sn_options.random_plans} random plan(s) per step) in {sn_dir}",
            highlight=False,
        )
    t0 = time.perf_counter()
    result = train_supernet(
        net,
        bundle,
        train_cfg,
        sn_options.sandwich(),
        out_dir=sn_dir,
        teacher=teacher,
        resume=(sn_dir / "last.pt").exists(),
        progress=console is not None,
        device=device,
    )
    train_seconds = time.perf_counter() - t0
    if rank != 0:
        return None  # under torchrun, rank 0 alone scores the plans (in seconds each) and writes the study
    net.eval()
    calib = calibration_batches(bundle, sn_options.calib_images, sn_options.calib_batch, config.seed)

    objective = SupernetObjective(
        space=space,
        model=original,
        found=found,
        data=bundle,
        train_config=train_cfg,
        trials_dir=out / _study.TRIALS,
        macs_before=macs0,
        params_before=params0,
        macs_budget=macs_b,
        params_budget=params_b,
        teacher=teacher,
        latency=config.latency,
        latency_setting=_study._latency_setting(config),
        spec=spec,
        model_kwargs=model_kwargs,
        checkpoint=config.checkpoint,
        study_name=config.name,
        seed=config.seed,
        device=config.device,
        supernet=net,
        calib=calib,
        objective=config.objective,
    )
    journal = _study._is_journal(study._storage)
    _study.recover_stale_trials(study, config.grace_period, config.max_retry)
    if not study.get_trials(deepcopy=False) and config.enqueue_fit and (macs_b is not None or params_b is not None):
        _study._enqueue_fit(study, space, original, config, size)
    reference = study.user_attrs.get(_study._REFERENCE_KEY)
    bar = _study._Progress(config.trials, progress, console)
    interrupted = False
    with bar, _study._sigterm_as_interrupt():
        try:
            if reference is None:
                bar.phase("reference (the original, scored in the supernet)")
                acc = score_plan(net, net.largest_plan(), bundle, calib, device=device) if config.reference else None
                reference = {
                    "macs": macs0,
                    "params": params0,
                    "accuracy": acc,
                    "macs_budget": macs_b,
                    "params_budget": params_b,
                    "strategy": "supernet",
                    "supernet": {
                        **sn_options.to_dict(),
                        **net.memory(),
                        "train_seconds": round(train_seconds, 3),
                        "final": {
                            k: v
                            for k, v in result.metrics.items()
                            if k in ("largest_acc", "smallest_acc", "train_loss")
                        },
                    },
                }
                study.set_user_attr(_study._REFERENCE_KEY, json.loads(json.dumps(reference, default=str)))
            _study._write_config(out, config, study, space, reference)
            objective.phase = bar.phase
            bar.update(study)
            _study._optimize(study, objective, config, journal, bar, on_trial)
        except KeyboardInterrupt:
            interrupted = True
    res = _study._finish(study, space, reference or {}, out, interrupted)
    if interrupted:
        raise _study._Interrupted(res)
    return _study.finish_members(res, finish, p, config, teacher, console, progress)
