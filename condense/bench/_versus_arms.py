"""The arms of ``condense.bench.versus``: each way of making a trained model cheaper, built to one MAC target.

In: an ``ArmContext`` (the trained original, its input size, the data, how to build it with random weights,
the calibration setting), a MAC target and a seed. Out: a ``Start`` - the arm's model before fine-tuning and
a record of what building it did and cost (CPU seconds, calibration epochs and images, the pruning ratio).
Never: changes the original, trains with labels (fine-tuning is the caller's, the same for every arm), or
reports a count it did not measure: the caller counts every arm with ``condense.macs_and_params``.

``ARMS`` is the registry; an arm is one small entry here (``architecture`` builds the model, ``recover``
optionally moves its weights before fine-tuning):

========================  ======================================================================================
``global``                ``condense.fit(original, macs=target)``: Global layers, the paper's initialisation
``global-preserve``       the same with ``preserve=True`` (each layer starts as the identity on a copy of the
                          first removed block; needs the MACs of that copy)
``global-calibrate``      ``global``, then ``condense.calibrate`` (distilled from the original on unlabelled
                          training images: per-run outputs and logits)
``drop``                  ``condense.fit(original, macs=target, layer="drop")``: the removed blocks deleted
``drop-calibrate``        ``drop``, then ``condense.calibrate``
``tp-l1``                 Torch-Pruning, L1 magnitude importance, one uniform ratio (``_versus_prune``)
``tp-group``              Torch-Pruning, group-norm importance (``GroupMagnitudeImportance(p=2)``)
``scratch``               ``global``'s architecture from random weights (the original's spec rebuilt)
``joint``                 ``condense.fit(original, macs=target, width="auto")``: depth and width together (channels
                          pruned with Torch-Pruning per run, then Global layers)
``joint-calibrate``       ``joint``, then ``condense.calibrate`` (on the logits alone: the pruned runs' outputs are
                          narrower than the original's)
``joint-drop``            the same with ``layer="drop"`` (channels pruned, removed blocks deleted)
``joint-drop-calibrate``  ``joint-drop``, then ``condense.calibrate`` (on the logits)
``joint-choose``          ``condense.choose``: depth only or depth + width, Global layers or drop, whichever is
                          most accurate on held-out training images after a short calibration (chosen once
                          per budget), then rebuilt per seed and calibrated like the others
``choose-all``            the same with channels alone (``--width channels``) among the candidates (run only
                          when named)
``original-ft``           a reference, not a method and not run unless named: the original itself, fine-tuned the
                          same way (how much the extra epochs alone give; an original that gains much was not
                          trained to convergence, and every arm's accuracy then holds that gain too)
========================  ======================================================================================

A build that cannot reach the target (``BudgetError``, e.g. ``preserve`` on a small net) makes the arm
``infeasible`` at that budget; the caller records it and goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Callable

import torch
from torch import nn

import condense

from .. import _fit as fitting  # fitting.fit, _versus_prune.prune_to_macs: looked up when called (tests patch them)
from .._calibrate import LR_AUTO, CalibrateConfig
from .._choose import CANDIDATES, DEFAULT_CANDIDATES, short_split
from .._errors import CondenseError
from . import _versus_prune

LEGACY_LR = 3e-3  # the rate the *-calibrate arms used before it was a setting


@dataclasses.dataclass(frozen=True)
class CalibSetting:
    """How the ``*-calibrate`` arms calibrate: ``images`` training images, ``epochs`` passes over them, at
    ``lr`` (``"auto"``: picked per arm by ``condense.calibrate``'s probes). Folders made before the rate was
    a setting calibrated at 3e-3 (``LEGACY_LR``): that rate is left out of the settings, so they resume with
    ``--calib-lr 3e-3``."""

    images: int = 2048
    epochs: int = 1
    lr: float | str = LR_AUTO

    def __post_init__(self) -> None:
        for name in ("images", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CondenseError(f"calibration {name}={v!r} must be an integer >= 1")
        CalibrateConfig(lr=self.lr)  # the rate checked as calibrate checks it

    def settings(self) -> dict[str, Any]:
        """The folder's "calibration" setting."""
        rate = {} if self.lr == LEGACY_LR else {"lr": self.lr}
        return {"images": self.images, "epochs": self.epochs, **rate}


@dataclasses.dataclass
class ArmContext:
    """What every arm is built from. ``fresh(seed)``: the original's architecture with random weights.
    ``cache`` holds seed-independent builds (a pruned model) for the run."""

    original: nn.Module
    input_size: tuple[int, int, int]
    bundle: Any
    fresh: Callable[[int], nn.Module]
    calib: CalibSetting = dataclasses.field(default_factory=CalibSetting)
    device: str = "cpu"
    say: Callable[[str], None] = lambda _m: None
    cache: dict[Any, Any] = dataclasses.field(default_factory=dict)
    width_multiple: int = 1  # channel counts of every arm that prunes channels (condense._width.kept_channels)


@dataclasses.dataclass
class Start:
    """An arm's model before fine-tuning; ``fit`` is the ``FitResult`` for condense arms (calibration needs
    it); ``record``: what was done and what it cost."""

    model: nn.Module
    record: dict[str, Any]
    fit: Any = None


CHOOSING = ("joint-choose", "choose-all")  # the arms that run condense.choose (their choice is recorded)
AXES = ("depth", "width", "joint", "reference")  # what an arm cuts; the fronts of `condense compare` group by it


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: ``architecture(ctx, target, seed)`` builds the model (cheap); ``recover(ctx, start, seed)``
    moves its weights before fine-tuning (None: nothing). ``needs``: what must be installed or present."""

    name: str
    what: str
    architecture: Callable[[ArmContext, float, int], Start]
    recover: Callable[[ArmContext, Start, int], None] | None = None
    needs: str | None = None
    default: bool = True  # run when no --arms are given
    axis: str = "depth"  # what it cuts: depth, width, joint (both), or reference (nothing; the fronts skip it)

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"arm {self.name!r}: axis {self.axis!r} is not one of {', '.join(AXES)}")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _fit(source: Callable[[ArmContext, int], nn.Module], **options: Any) -> Callable[[ArmContext, float, int], Start]:
    def build(ctx: ArmContext, target: float, seed: int) -> Start:
        extra = {"width_multiple": ctx.width_multiple} if "width" in options else {}
        res, cpu, wall = _timed(
            lambda: fitting.fit(
                source(ctx, seed), macs=float(target), input_size=ctx.input_size, seed=seed, **options, **extra
            )
        )
        if not res.plan.choices and res.width is None:
            raise CondenseError(f"condense left the model unchanged ({res.message})", "nothing to compare")
        return Start(res.model, {"build_cpu_s": round(cpu, 2), "build_s": round(wall, 2), "plan": res.message}, res)

    return build


def _trained(ctx: ArmContext, _seed: int) -> nn.Module:
    return ctx.original


def _random(ctx: ArmContext, seed: int) -> nn.Module:
    return ctx.fresh(seed)


def _original(ctx: ArmContext, _target: float, _seed: int) -> Start:
    """The original itself (a copy), whatever the target: the ``original-ft`` reference."""
    return Start(copy.deepcopy(ctx.original), {"build_cpu_s": 0.0, "build_s": 0.0, "plan": "the original, unchanged"})


def _chosen(arm: str, candidates: tuple[str, ...]) -> Callable[[ArmContext, float, int], Start]:
    """``condense.choose`` among ``candidates`` at the target (once per target, with seed 0, on the run's training
    images: a short calibration of each candidate, scored on held-out training images), then the winner rebuilt
    with ``seed``. The choice is recorded with the arm (``build.choice``) and taken from there when the run
    resumes or re-times (``remember_choices``), so it is made once per folder."""
    return lambda ctx, target, seed: _choose_and_build(ctx, target, seed, arm, candidates)


def _choose_and_build(ctx: ArmContext, target: float, seed: int, arm: str, candidates: tuple[str, ...]) -> Start:
    key = (arm, float(target))
    if key not in ctx.cache:
        images, score_images = short_split(ctx.bundle.train_size)
        choice, cpu, wall = _timed(
            lambda: condense.choose(
                ctx.original,
                ctx.bundle,
                macs=float(target),
                input_size=ctx.input_size,
                candidates=candidates,
                images=images,
                score_images=score_images,
                seed=0,
                device=ctx.device,
                progress=ctx.say,
                **({"width_multiple": ctx.width_multiple} if ctx.width_multiple > 1 else {}),
            )
        )
        # the recorded (JSON) options, here and on resume alike: versus gives choose no latency setting
        ctx.cache[key] = {**choice.to_dict(), "summary": choice.summary(), "cpu": cpu, "wall": wall}
    made = ctx.cache[key]
    res = fitting.fit(ctx.original, macs=float(target), input_size=ctx.input_size, **{**made["options"], "seed": seed})
    record = {
        "build_cpu_s": round(made["cpu"], 2),
        "build_s": round(made["wall"], 2),
        "plan": f"{res.message}; {made['summary']}",
        "choice": {k: v for k, v in made.items() if k not in ("cpu", "wall")},
    }
    return Start(res.model, record, res)


def remember_choices(ctx: ArmContext, budgets: dict[str, Any]) -> None:
    """Put the choices a folder's ``joint-choose`` and ``choose-all`` records hold (``build.choice``) into
    ``ctx.cache``, so a resumed or re-timed run rebuilds the same plan without choosing again."""
    for brec in budgets.values():
        for arm in CHOOSING:
            rec = brec.get("arms", {}).get(arm) or {}
            build = rec.get("build") or {}
            made = build.get("choice")
            if rec.get("status") == "ok" and isinstance(made, dict) and isinstance(made.get("options"), dict):
                ctx.cache[(arm, float(rec["target_macs"]))] = {
                    **made,
                    "cpu": build.get("build_cpu_s", 0.0),
                    "wall": build.get("build_s", 0.0),
                }


def _calibrate(ctx: ArmContext, start: Start, seed: int) -> None:
    """``condense.calibrate`` on the condensed model, from the original, on the run's training images."""
    cal, cpu, wall = _timed(
        lambda: condense.calibrate(
            start.fit,
            ctx.original,
            ctx.bundle,
            images=ctx.calib.images,
            epochs=ctx.calib.epochs,
            lr=ctx.calib.lr,
            seed=seed,
            test_images=0,
            device=ctx.device,
            progress=ctx.say,
        )
    )
    start.model = start.fit.model
    start.record.update(
        {
            "calib_epochs": cal.epochs,
            "calib_images": cal.images,
            "calib_steps": cal.steps,
            "calib_lr": cal.lr,
            **({"calib_lr_probes": [[r, _finite(v)] for r, v in cal.lr_probes]} if cal.lr_probes else {}),
            "calib_s": round(cal.seconds, 2),
            "calib_cpu_s": round(cpu, 2),
            "feature_error_before": [round(v, 5) for v in cal.feature_error_before],
            "feature_error_after": [round(v, 5) for v in cal.feature_error_after],
        }
    )


def _finite(value: float) -> float | None:
    return round(value, 5) if math.isfinite(value) else None


def _pruned(criterion: str) -> Callable[[ArmContext, float, int], Start]:
    def build(ctx: ArmContext, target: float, _seed: int) -> Start:
        multiple = ctx.width_multiple
        key = ("tp", criterion, float(target), multiple)
        if key not in ctx.cache:  # pruning is deterministic: once per target, copied for every seed
            pruned, cpu, wall = _timed(
                lambda: _versus_prune.prune_to_macs(ctx.original, ctx.input_size, target, criterion, multiple=multiple)
            )
            extra = {"width_multiple": multiple} if multiple > 1 else {}
            ctx.cache[key] = (
                pruned,
                {**pruned.record(), **extra, "build_cpu_s": round(cpu, 2), "build_s": round(wall, 2)},
            )
        pruned, record = ctx.cache[key]
        return Start(copy.deepcopy(pruned.model), dict(record))

    return build


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("global", "condense, Global layers (paper's init)", _fit(_trained)),
        Arm("global-preserve", "condense, Global layers, preserve", _fit(_trained, preserve=True)),
        Arm("global-calibrate", "condense, Global layers + calibrate", _fit(_trained), _calibrate, needs="calibrate"),
        Arm("drop", "block dropping", _fit(_trained, layer="drop"), needs="drop"),
        Arm(
            "drop-calibrate",
            "block dropping + calibrate",
            _fit(_trained, layer="drop"),
            _calibrate,
            needs="drop+calibrate",
        ),
        Arm("tp-l1", "Torch-Pruning, L1 magnitude", _pruned("l1"), needs="torch_pruning", axis="width"),
        Arm("tp-group", "Torch-Pruning, group norm", _pruned("group"), needs="torch_pruning", axis="width"),
        Arm("scratch", "Global architecture, random init", _fit(_random)),
        Arm(
            "joint",
            "depth + width (--width auto), Global layers",
            _fit(_trained, width="auto"),
            needs="torch_pruning",
            axis="joint",
        ),
        Arm(
            "joint-calibrate",
            "depth + width (--width auto), Global layers + calibrate",
            _fit(_trained, width="auto"),
            _calibrate,
            needs="calibrate+torch_pruning",
            axis="joint",
        ),
        Arm(
            "joint-drop",
            "depth + width (--width auto), drop",
            _fit(_trained, width="auto", layer="drop"),
            needs="drop+torch_pruning",
            axis="joint",
        ),
        Arm(
            "joint-drop-calibrate",
            "depth + width (--width auto), drop + calibrate",
            _fit(_trained, width="auto", layer="drop"),
            _calibrate,
            needs="calibrate+drop+torch_pruning",
            axis="joint",
        ),
        Arm(
            "joint-choose",
            "depth or depth + width, Global layers or drop, chosen on data (condense.choose) + calibrate",
            _chosen("joint-choose", DEFAULT_CANDIDATES),
            _calibrate,
            needs="calibrate+drop+torch_pruning+choose",
            axis="joint",
        ),
        Arm(
            "choose-all",
            "joint-choose with channels alone (--width channels) among the candidates",
            _chosen("choose-all", tuple(CANDIDATES)),
            _calibrate,
            needs="calibrate+drop+torch_pruning+choose",
            default=False,
            axis="joint",
        ),
        Arm(
            "original-ft",
            "the original, fine-tuned the same way (reference)",
            _original,
            default=False,
            axis="reference",
        ),
    )
}
DEFAULT_ARMS = tuple(name for name, arm in ARMS.items() if arm.default)  # what runs when no --arms are given


def lacking(arm: Arm) -> str | None:
    """The part of condense ``arm`` needs that this version lacks (None: it has them all)."""
    for need in (arm.needs or "").split("+"):
        if need == "calibrate" and not callable(getattr(condense, "calibrate", None)):
            return "condense.calibrate"
        if need == "drop" and "drop" not in condense.layer_names():
            return "the 'drop' layer"
        if need == "choose" and not callable(getattr(condense, "choose", None)):
            return "condense.choose"
    return None


def check_available(arm: Arm) -> None:
    """A one-line error when ``arm`` cannot run here: a part of condense it needs is missing, or the optional
    torch-pruning package (with the install hint)."""
    what = lacking(arm)
    if what is not None:
        raise CondenseError(
            f"arm {arm.name!r} needs {what}, which this version of condense lacks", "leave it out of --arms"
        )
    if "torch_pruning" in (arm.needs or ""):
        _versus_prune.torch_pruning()


def build(arm: Arm, ctx: ArmContext, target: float, seed: int, *, recover: bool) -> Start:
    """``arm``'s model at ``target`` MACs for ``seed``; with ``recover``, its recovery (calibration) done.
    A build without recovery is kept (``ctx.cache``) for the next build of the same arm, target and seed, so
    counting an arm and then training it builds it once."""
    key = ("start", arm.name, float(target), seed)
    with torch.random.fork_rng(devices=[]):
        if key in ctx.cache:  # built already in this run (to count it): a copy (model and fit stay one object)
            start = copy.deepcopy(ctx.cache.pop(key))
        else:
            torch.manual_seed(seed)
            start = arm.architecture(ctx, target, seed)
        if recover and arm.recover is not None:
            torch.manual_seed(seed)
            arm.recover(ctx, start, seed)
        elif not recover:
            ctx.cache[key] = copy.deepcopy(start)
    start.model.cpu().eval()
    return start
