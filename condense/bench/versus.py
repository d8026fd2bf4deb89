"""Condense against the alternatives, on your trained model and data: ``python -m condense.bench.versus``.

    python -m condense.bench.versus MODEL --data SPEC --budget 50%,30% (--checkpoint FILE | --epochs N)
        [--arms global,drop,tp-l1,...] [--seeds 0,1,2] [--finetune-epochs 5] [--lr 0.01] [--kd]
        [--device cpu] [--threads 1] [-o DIR] [--quick]

In: a trained original (a model spec with ``--checkpoint``, a saved condensed/trained directory, or a spec
trained here first for ``--epochs``), data, MAC budgets and arms (``_versus_arms.ARMS``: condense with each
recovery option, block dropping, Torch-Pruning with L1 and group-norm importance, the condensed architecture
from scratch). Out: in ``DIR``: ``versus.json`` (every figure, written as it is measured), ``versus.csv``
(one row per budget and arm, and the original), ``versus.png`` (accuracy against latency relative to the
original, per batch size); one table printed. Never: gives an arm another fine-tuning than the others
(epochs, lr, schedule, batch, KD from the original or not: one ``TrainConfig``, ``condense.train``),
counts an arm with another counter than ``condense.macs_and_params``, times arms in separate runs (every
arm and the original are timed interleaved in one run), trains again what is done (a re-run continues
where it stopped; a run with other settings on the same folder is refused, naming what differs), or
writes into a folder condense did not write.

Every arm reaches the same MAC target, ``--budget`` of the original's MACs: condense and block dropping
with ``condense.fit`` (the largest plan within it), Torch-Pruning by bisecting one uniform ratio until our
count lands at the target (within 2%, under it where the channel steps allow; ``--tp-macs global`` aims at
the ``global`` arm's measured MACs instead). ``--width-multiple N`` keeps the channel counts of every arm
that prunes channels (Torch-Pruning's and condense's alike) at multiples of N (``condense._width.kept_channels``).
An arm that cannot reach a budget is shown as infeasible.
The compute each arm used is reported beside it: building (fit, the ratio search), calibration (epochs,
images, CPU seconds) and fine-tuning (CPU seconds of this process, all threads; per seed). An arm-seed whose
start (network and every weight, ``start_digest``) equals one already fine-tuned in the folder with the same
seed is not trained again: fine-tuning is deterministic under the seed, so it gets that result, marked
``same_start_as`` (and in the table's note). ``joint-choose`` often builds what ``drop-calibrate`` does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from .. import train as training
from .._budget import parse_budget
from .._calibrate import parse_lr
from .._count import macs_and_params
from .._device import describe_device, resolve_device
from .._errors import BudgetError, CondenseError, run_command
from .._help import HelpFormatter
from .._intlist import parse_int_list
from .._models import build_model, file_digest
from .._resolve import is_model_dir, resolve_model
from .._width import check_multiple
from .._write import atomic_write, check_output, claim_folder, os_error, output_lock
from ..data import load_data, parse_data_spec
from ..train import TrainConfig, evaluate
from . import _versus_latency as latency
from . import _versus_report as report
from ._versus_arms import (
    ARMS,
    DEFAULT_ARMS,
    ArmContext,
    CalibSetting,
    build,
    check_available,
    lacking,
    remember_choices,
)
from ._versus_state import CSV, KIND, OWN, PLOT, State

TP_MACS = ("budget", "global")
QUICK = {
    "limit_train": 256,
    "limit_test": 128,
    "finetune_epochs": 1,
    "epochs": 1,
    "batch_size": 32,
    "steps_per_epoch": 4,
    "calib_images": 64,
    "calib_epochs": 1,
    "repeats": 3,
    "warmup": 1,
    "seeds": "0",
}
DEFAULTS = {
    "finetune_epochs": 5,
    "batch_size": 128,
    "calib_images": 2048,
    "calib_epochs": 1,
    "repeats": 20,
    "warmup": 3,
    "seeds": "0,1,2",
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in str(text).split(",") if p.strip()))


@dataclasses.dataclass(frozen=True)
class VersusConfig:
    """One comparison. Strings are parsed and every field checked on creation (one-line errors)."""

    model: str
    data: str | None
    budgets: tuple[str, ...] = ("50%",)
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    output: str = "bench-versus"
    checkpoint: str | None = None
    epochs: int | None = None
    original_lr: float = 0.1
    finetune_epochs: int = 5
    lr: float = 0.01
    schedule: str = "cosine"
    batch_size: int = 128
    kd: bool = False
    steps_per_epoch: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    input_size: str | None = None
    calib: CalibSetting = CalibSetting()
    tp_macs: str = "budget"
    width_multiple: int = 1
    device: str = "auto"
    threads: int = 1
    batches: tuple[int, ...] = (1, 32)
    repeats: int = 20
    warmup: int = 3
    trust_code: bool = False
    quick: bool = False
    time_only: bool = False  # re-time every trained arm and report; build, record and train nothing new

    def __post_init__(self) -> None:
        if not self.data or not str(self.data).strip():
            raise CondenseError("no data: --data SPEC is required", "e.g. --data cifar10:PATH (read, never downloaded)")
        budgets = tuple(dict.fromkeys(b.strip() for b in self.budgets if b.strip()))
        if not budgets:
            raise CondenseError("no MAC budget given", "write e.g. --budget 50% or --budget 50%,30%")
        for b in budgets:
            parse_budget(b)
        object.__setattr__(self, "budgets", budgets)
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise CondenseError(
                f"unknown arm {unknown[0]!r}" if unknown else "no arms given", f"choose among {', '.join(ARMS)}"
            )
        object.__setattr__(self, "arms", tuple(a for a in ARMS if a in self.arms))  # the registry's order
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise CondenseError(f"bad seeds {self.seeds!r}", "write e.g. --seeds 0,1,2")
        if self.checkpoint and self.epochs:
            raise CondenseError(
                "--checkpoint and --epochs contradict each other",
                "give the trained weights (--checkpoint) or train the original here (--epochs)",
            )
        for name in ("epochs", "steps_per_epoch", "limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise CondenseError(f"--{name.replace('_', '-')} {v!r} must be an integer >= 1")
        for name in ("threads", "repeats", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CondenseError(f"--{name} {v!r} must be an integer >= 1")
        if not self.batches or any(b < 1 for b in self.batches):
            raise CondenseError(f"bad latency batch sizes {self.batches!r}", "write e.g. --batch-sizes 1,32")
        if self.tp_macs not in TP_MACS:
            raise CondenseError(f"--tp-macs {self.tp_macs!r} is not one of {', '.join(TP_MACS)}")
        check_multiple(self.width_multiple)
        if not self.original_lr > 0:
            raise CondenseError(f"--original-lr {self.original_lr!r} must be > 0")
        object.__setattr__(self, "device", str(resolve_device(self.device)))  # checked now, recorded resolved
        self.train_config(0)  # the fine-tuning settings, checked now

    def train_config(self, seed: int):
        """The one fine-tuning every arm gets (the seed varies the data order)."""
        return TrainConfig(
            epochs=self.finetune_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule=self.schedule,
            seed=seed,
            max_steps_per_epoch=self.steps_per_epoch,
        )

    def original_config(self):
        return TrainConfig(
            epochs=self.epochs or 1,
            batch_size=self.batch_size,
            lr=self.original_lr,
            seed=0,
            max_steps_per_epoch=self.steps_per_epoch,
        )

    def settings(self, bundle) -> dict[str, Any]:
        """What the results depend on (a change is refused on resume); budgets, arms and seeds may grow."""
        ft = self.train_config(0).to_dict()
        ft.pop("seed")
        return {
            "model": str(Path(self.model).resolve()) if is_model_dir(self.model) else self.model,
            "checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
            "checkpoint_sha256": file_digest(self.checkpoint) if self.checkpoint else None,
            "data": f"{bundle.spec.kind}:{bundle.spec.path.resolve()}" if bundle.spec is not None else self.data,
            "train_images": bundle.train_size,
            "test_images": bundle.test_size,
            "input_size": list(bundle.input_size),
            "original_epochs": self.epochs,
            "original_train": self.original_config().to_dict() if self.epochs else None,
            "finetune": ft,
            "kd": self.kd,
            "calibration": self.calib.settings(),
            "tp_macs": self.tp_macs,
            "device": self.device,
            # recorded when set, so folders made before the option still resume
            **({"width_multiple": self.width_multiple} if self.width_multiple > 1 else {}),
        }


# ------------------------------------------------------------------------------------------ the run
def _run_dir(state: State, budget: str, arm: str, seed: int) -> Path:
    """Where one arm-seed's fine-tuning writes (``runs/<budget>/<arm>/seed<N>``)."""
    return state.out / "runs" / _slug(budget) / arm / f"seed{seed}"


def _slug(budget: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", budget.replace("%", "pct"))


def _load_original(cfg: VersusConfig, bundle):
    """The resolved original (a spec with its checkpoint, a directory, or a spec to train: random weights)."""
    if is_model_dir(cfg.model) and cfg.epochs:
        raise CondenseError(
            f"{cfg.model} is a saved model with its weights; --epochs trains a spec from random weights",
            "drop --epochs, or pass a model spec",
        )
    if not is_model_dir(cfg.model) and not cfg.checkpoint and not cfg.epochs:
        raise CondenseError(
            f"{cfg.model} has no trained weights here",
            "pass --checkpoint FILE (its trained weights) or --epochs N (train it here first)",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return resolve_model(
            cfg.model, checkpoint=cfg.checkpoint, num_classes=bundle.num_classes, trust_code=cfg.trust_code
        )


def _fresh(resolved, bundle) -> Callable[[int], nn.Module]:
    """The original's architecture with random weights for a seed: rebuilt from its spec, or (a directory)
    a copy with every module's parameters reset."""

    def make(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if resolved.spec is not None and not resolved.is_directory:
                return build_model(resolved.spec, **resolved.model_kwargs)
            model = copy.deepcopy(resolved.model)
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            return model

    return make


def _accuracy(model: nn.Module, bundle, device: str) -> float:
    """Test accuracy of ``model`` on ``device`` (the model is back on the CPU after)."""
    try:
        return evaluate(model.to(device), bundle)["test_acc"]
    finally:
        model.cpu()


def _original(cfg: VersusConfig, resolved, bundle, state: State, say) -> nn.Module:
    """The trained original: as given, or trained here for ``--epochs`` (resumable; once done, reloaded)."""
    model = resolved.model
    rec = state.data.get("original") or {}
    if cfg.epochs:
        run_dir = state.out / "original"
        ckpt = run_dir / "last.pt"
        if rec.get("trained") and ckpt.exists():
            model.load_state_dict(training.load_checkpoint_state(ckpt)["model"])
        else:
            say(f"training the original {resolved.label} for {cfg.epochs} epoch(s)")
            c0 = time.process_time()
            res = training.train(
                model,
                bundle,
                cfg.original_config(),
                out_dir=run_dir,
                resume=ckpt.exists(),
                progress=True,
                device=cfg.device,
            )
            rec = {
                "trained": {
                    "epochs": cfg.epochs,
                    "cpu_s": round(time.process_time() - c0, 1),
                    "test_acc": res.metrics["test_acc"],
                }
            }
    model.cpu().eval()
    if "test_acc" not in rec:
        macs, params = macs_and_params(model, bundle.input_size)
        say("measuring the original's test accuracy")
        acc = _accuracy(model, bundle, cfg.device)
        rec = {**rec, "label": resolved.label, "macs": macs, "params": params, "test_acc": acc}
        state.data["original"] = rec
        state.save()
    return model


def _build_arms(cfg: VersusConfig, ctx: ArmContext, state: State, macs0: int, say) -> dict[str, nn.Module]:
    """Count every arm at every budget (seed 0, before recovery) and record it; returns the models built
    (keyed ``budget/arm``) for the latency run."""
    built: dict[str, nn.Module] = {}
    for budget in cfg.budgets:
        target = parse_budget(budget).resolve(macs0)
        brec = state.data["budgets"].setdefault(budget, {"target_macs": target, "arms": {}})
        for name in cfg.arms:
            if name in brec["arms"]:
                continue
            aim, note = target, ""
            if name.startswith("tp-") and cfg.tp_macs == "global":
                g = brec["arms"].get("global")
                if g and g["status"] == "ok":
                    aim, note = g["macs"], "aimed at the global arm's MACs"
                else:
                    note = "no global arm at this budget: aimed at the budget"
            say(f"building {name} at {budget} ({aim / 1e6:.2f}M MACs)")
            try:
                start = build(ARMS[name], ctx, aim, 0, recover=False)
            except CondenseError as err:  # BudgetError: the arm cannot reach this target
                brec["arms"][name] = {
                    "status": "infeasible" if isinstance(err, BudgetError) else "failed",
                    "reason": err.message,
                    "hint": err.hint,
                    "seeds": {},
                }
                say(f"{name} at {budget}: {brec['arms'][name]['status']}: {err.message}")
                continue
            macs, params = macs_and_params(start.model, ctx.input_size)
            brec["arms"][name] = {
                "status": "ok",
                "macs": macs,
                "params": params,
                "target_macs": aim,
                "note": note,
                "build": start.record,
                "seeds": {},
            }
            built[f"{budget}/{name}"] = start.model
            state.save()
    state.save()
    return built


def _latency(cfg: VersusConfig, ctx: ArmContext, state: State, built: dict[str, nn.Module], macs0: int, say) -> None:
    """Time the original and every built arm interleaved, once per setting (re-measured when an arm was added
    or the setting changed, or always with ``--time-only``, which times the arms with a trained seed)."""
    setting = latency.setting(cfg.device, cfg.threads, cfg.batches, cfg.repeats, cfg.warmup)
    keys = [f"{b}/{a}" for b in cfg.budgets for a in cfg.arms if (state.arm(b, a) or {}).get("status") == "ok"]
    if cfg.time_only:  # only arms with a trained seed: the table and `condense compare` show no others
        untrained = [k for k in keys if not any(r.get("done") for r in state.arm(*k.split("/", 1))["seeds"].values())]
        if untrained:
            say(f"--time-only: {len(untrained)} arm(s) with no trained seed are not timed: {', '.join(untrained)}")
        keys = [k for k in keys if k not in untrained]
    old = state.data.get("latency") or {}
    if not cfg.time_only and old.get("setting") == setting and all(k in old.get("ms", {}) for k in keys):
        return
    models: dict[str, nn.Module] = {latency.ORIGINAL: ctx.original}
    for key in keys:
        if key not in built:
            budget, name = key.split("/", 1)
            aim = (
                state.arm(budget, name)["target_macs"]
                if state.arm(budget, name)
                else parse_budget(budget).resolve(macs0)
            )
            built[key] = build(ARMS[name], ctx, aim, 0, recover=False).model
        models[key] = built[key]
    first = latency.shared(models)
    same = {k: v for k, v in first.items() if k != v}
    say(
        f"timing {len(models) - len(same)} models interleaved at batch {', '.join(map(str, cfg.batches))} "
        f"({cfg.repeats} rounds, {cfg.threads} thread(s))"
        + (f"; {len(same)} arm(s) built the same network as another and share its figures" if same else "")
    )
    ms = latency.measure(
        models,
        ctx.input_size,
        batches=cfg.batches,
        device=cfg.device,
        threads=cfg.threads,
        repeats=cfg.repeats,
        warmup=cfg.warmup,
        same=first,
    )
    state.data["latency"] = {"setting": setting, "ms": ms, **({"same_network": same} if same else {})}
    state.save()


def _train_arm(
    cfg: VersusConfig,
    ctx: ArmContext,
    state: State,
    teacher: nn.Module | None,
    bundle,
    budget: str,
    name: str,
    seed: int,
    say,
) -> None:
    """Build (with recovery), measure zero-shot accuracy, fine-tune and record one arm for one seed."""
    arm = state.arm(budget, name)
    seeds = arm["seeds"]
    rec = seeds.get(str(seed))
    run_dir = _run_dir(state, budget, name, seed)
    resume = rec is not None and (run_dir / "last.pt").exists()
    if resume:
        start = build(ARMS[name], ctx, arm["target_macs"], seed, recover=False)  # the weights come from last.pt
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a start this record does not know of: ours (under runs/), begun again
        start = build(ARMS[name], ctx, arm["target_macs"], seed, recover=True)
        say(f"{budget} {name} seed {seed}: zero-shot accuracy")
        zero = _accuracy(start.model, bundle, cfg.device)
        macs, params = macs_and_params(start.model, ctx.input_size)
        digest = latency.start_digest(start.model)
        rec = {
            "done": False,
            **start.record,
            "zero_shot_acc": zero,
            "macs": macs,
            "params": params,
            "start_digest": digest,
        }
        seeds[str(seed)] = rec
        source = _same_start(state, digest, seed, (budget, name))
        if source is not None:  # the same weights, the same seed, the same fine-tuning: the same result
            _share_finetune(state, rec, run_dir, source, seed, say, f"{budget} {name} seed {seed}")
            return
        state.save()
    say(f"{budget} {name} seed {seed}: fine-tuning {cfg.finetune_epochs} epoch(s)" + (" (resumed)" if resume else ""))
    c0 = time.process_time()
    res = training.train(
        start.model,
        bundle,
        cfg.train_config(seed),
        out_dir=run_dir,
        teacher=teacher,
        resume=resume,
        progress=True,
        device=cfg.device,
    )
    rec.update(
        {
            "done": True,
            "test_acc": res.metrics["test_acc"],
            "best_test_acc": res.metrics["best_test_acc"],
            "finetune_epochs": cfg.finetune_epochs,
            "finetune_cpu_s": round(time.process_time() - c0, 2),
            "finetune_s": round(sum(h["epoch_seconds"] for h in res.history), 2),
            "resumed": resume,
        }
    )
    state.save()


SHARED = ("test_acc", "best_test_acc", "finetune_epochs", "finetune_cpu_s", "finetune_s")


def _same_start(state: State, digest: str, seed: int, this: tuple[str, str]) -> tuple[str, str] | None:
    """The (budget, arm) of a finished seed ``seed`` in this folder whose fine-tuning started from the same
    network and weights (``start_digest``), or None."""
    for budget, brec in state.data["budgets"].items():
        for name, arec in brec.get("arms", {}).items():
            rec = arec.get("seeds", {}).get(str(seed)) or {}
            trained = rec.get("done") and not rec.get("same_start_as")  # point at the arm-seed that was trained
            if trained and (budget, name) != this and rec.get("start_digest") == digest:
                return budget, name
    return None


def _share_finetune(
    state: State, rec: dict[str, Any], run_dir: Path, source: tuple[str, str], seed: int, say, what: str
) -> None:
    """Record ``source``'s fine-tuned result for an arm-seed that starts from the same weights: fine-tuning is
    deterministic under the seed (one machine, one thread count), so training it again would repeat it.
    Its ``metrics.json`` is copied beside; ``same_start_as`` says where the figures come from."""
    budget, name = source
    src = state.data["budgets"][budget]["arms"][name]["seeds"][str(seed)]
    rec.update({k: src[k] for k in SHARED if k in src})
    rec.update({"done": True, "resumed": False, "same_start_as": f"{budget}/{name}"})
    metrics = _run_dir(state, budget, name, seed) / "metrics.json"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if metrics.is_file():
            atomic_write(run_dir / "metrics.json", metrics.read_text())
    except OSError as err:
        raise os_error(err, run_dir) from None
    say(f"{what}: starts from the same weights as {budget} {name}: its fine-tuned result is shared")
    state.save()


def run(cfg: VersusConfig, console) -> dict[str, Any]:
    """The comparison (see the module docstring); returns the record (``versus.json``'s content)."""
    for name in cfg.arms:
        check_available(ARMS[name])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CondenseError(
            "the plot needs matplotlib, which is not installed", 'install it with: pip install "condense[versus]"'
        ) from None
    spec = parse_data_spec(cfg.data)
    out = check_output(cfg.output, [cfg.checkpoint, spec.path, cfg.model if Path(cfg.model).exists() else None])

    def say(msg: str) -> None:
        console.print(f"[dim]versus:[/] {escape(msg)}", highlight=False)

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with output_lock(out):
            claim_folder(out, KIND, own=OWN, what="versus")
            bundle = load_data(spec, limit_train=cfg.limit_train, limit_test=cfg.limit_test, input_size=cfg.input_size)
            resolved = _load_original(cfg, bundle)
            state = State.open(out, cfg.settings(bundle))
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise os_error(err, out) from None
            state.save()
            original = _original(cfg, resolved, bundle, state, say)
            size = tuple(bundle.input_size)
            macs0 = macs_and_params(original, size)[0]
            ctx = ArmContext(
                original=original,
                input_size=size,
                bundle=bundle,
                fresh=_fresh(resolved, bundle),
                calib=cfg.calib,
                device=cfg.device,
                say=say,
                width_multiple=cfg.width_multiple,
            )
            remember_choices(ctx, state.data["budgets"])
            built = {} if cfg.time_only else _build_arms(cfg, ctx, state, macs0, say)  # --time-only adds no arm
            _latency(cfg, ctx, state, built, macs0, say)
            built.clear()
            teacher = copy.deepcopy(original) if cfg.kd else None  # train() freezes its teacher: never the original
            todo = [
                (b, a, s)
                for s in cfg.seeds
                for b in cfg.budgets
                for a in cfg.arms
                if (state.arm(b, a) or {}).get("status") == "ok" and not (state.seed(b, a, s) or {}).get("done")
            ]
            if cfg.time_only:  # timed above; what is not trained yet stays so
                if todo:
                    say(f"--time-only: {len(todo)} arm-seed(s) not trained yet are left out of the table")
                todo = []
            for i, (budget, name, seed) in enumerate(todo, 1):
                say(f"[{i}/{len(todo)}] {budget} {name} seed {seed}")
                _train_arm(cfg, ctx, state, teacher, bundle, budget, name, seed, say)
            _report(cfg, state, bundle, console)
            return state.data
    finally:
        torch.set_num_threads(threads)


def _report(cfg: VersusConfig, state: State, bundle, console) -> None:
    methods = {name: ARMS[name].what for name in ARMS}
    table = report.rows(state.data, cfg.budgets, cfg.arms, cfg.seeds, cfg.batches, methods)
    orig = state.data["original"]
    title = (
        f"{orig['label']} on {bundle.name} ({bundle.train_size} train / {bundle.test_size} test images): "
        f"condense vs block dropping vs Torch-Pruning" + (" [--quick]" if cfg.quick else "")
    )
    lat = (state.data.get("latency") or {}).get("setting", {})
    footer = (
        f"accuracy: test top-1 after the same fine-tuning for every arm ({cfg.finetune_epochs} epoch(s), lr "
        f"{cfg.lr}, {cfg.schedule}, batch {cfg.batch_size}, {'KD from the original' if cfg.kd else 'no KD'}), "
        f"mean ± std over seeds; zero-shot: before fine-tuning. MACs (of the original's) and params: "
        f"condense.macs_and_params. Latency: eager forward, medians of {lat.get('repeats')} interleaved rounds, "
        f"{lat.get('threads')} thread(s), {describe_device(resolve_device(cfg.device))}; (x) = ratio to the "
        f"original in the same run. Compute: CPU seconds of this process per seed (all threads)."
    )
    report.print_table(console, table, cfg.batches, title, footer)
    atomic_write(state.out / CSV, report.csv_text(table, cfg.batches))
    atomic_write(state.out / PLOT, report.plot_png(table, cfg.batches, title))
    state.save()
    console.print(f"written: {state.out / CSV}, {state.out / PLOT}, {state.out / 'versus.json'}", highlight=False)


# ------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m condense.bench.versus",
        formatter_class=HelpFormatter,
        description="Condense against block dropping and Torch-Pruning at the same MAC target, with the same "
        "fine-tuning for every arm: accuracy (mean ± std over seeds), MACs and parameters (one "
        "counter), latency at batch 1 and 32 (all arms timed interleaved in one run), the compute "
        "each arm used. Writes versus.json (resumable), versus.csv and versus.png into -o DIR.",
        epilog="arms:\n" + "".join(f"  {a.name:18s} {a.what}\n" for a in ARMS.values()) + "\nexamples:\n"
        "  python -m condense.bench.versus zoo:resnet20 --data cifar10:../shared/data/cifar10-jpeg.tar.gz \\\n"
        "      --checkpoint r20.pth --budget 50%,30% --seeds 0,1,2 --limit-train 10000 --limit-test 2000 "
        "-o runs/versus-r20\n"
        "  python -m condense.bench.versus zoo:resnet20 --data cifar10:PATH --epochs 10 --budget 50% --kd\n"
        "  python -m condense.bench.versus zoo:resnet20 --data cifar10:PATH --quick -o /tmp/v   # seconds\n"
        "Several budgets (--budget 50%,30%) run in one folder and one latency run; running again with more "
        "budgets, arms or seeds adds only those.",
    )
    p.add_argument("model", metavar="MODEL", help="timm:NAME, zoo:NAME, file.py:factory, or a saved model directory")
    p.add_argument("--data", metavar="SPEC", help="cifar10:PATH, cifar100:PATH, mnist:PATH, imagefolder:PATH")
    p.add_argument(
        "--budget",
        default="50%",
        metavar="B[,B]",
        help="MAC target(s): a percentage of the original's MACs or a count (250M); comma-separated "
        "budgets run in one go",
    )
    p.add_argument("--arms", default=None, metavar="A,A", help="which arms (see below; default: all of them)")
    p.add_argument("--seeds", default=None, metavar="S,S", help="seeds per arm (default 0,1,2; --quick: 0)")
    p.add_argument("--checkpoint", metavar="FILE", help="the original's trained weights (.pth or .safetensors)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="train the original here first for N epochs (instead of --checkpoint)",
    )
    p.add_argument("--original-lr", type=float, default=0.1, help="learning rate of --epochs")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        metavar="E",
        help="fine-tuning epochs of every arm (default 5; --quick: 1)",
    )
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate of every arm")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "step", "constant"), help="lr schedule")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 128; --quick: 32)")
    p.add_argument("--kd", action="store_true", help="every arm distils from the original while fine-tuning")
    p.add_argument("--steps-per-epoch", type=int, default=None, metavar="N", help="at most N steps per epoch")
    p.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="use N test images")
    p.add_argument("--input-size", metavar="CxHxW", default=None, help="read the data at this size")
    p.add_argument(
        "--calib-images",
        type=int,
        default=None,
        metavar="N",
        help="images the *-calibrate arms calibrate on (default 2048; --quick: 64)",
    )
    p.add_argument("--calib-epochs", type=int, default=None, metavar="E", help="calibration epochs (default 1)")
    p.add_argument(
        "--calib-lr",
        default="auto",
        metavar="LR",
        help="the *-calibrate arms' rate: auto (default: picked per arm by short probes on held-out "
        "calibration images) or a number; folders made before this option calibrated at 3e-3",
    )
    p.add_argument(
        "--tp-macs",
        default="budget",
        choices=TP_MACS,
        help="what Torch-Pruning aims at: the budget, or the global arm's measured MACs",
    )
    p.add_argument(
        "--width-multiple",
        type=int,
        default=1,
        metavar="N",
        help="channel counts of every arm that prunes channels kept at multiples of N (default 1: as pruned)",
    )
    p.add_argument("--device", default="auto", metavar="DEV", help="where arms train and are timed: auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads (training and latency)")
    p.add_argument("--batch-sizes", default="1,32", metavar="B,B", help="latency batch sizes")
    p.add_argument("--repeats", type=int, default=None, help="interleaved latency rounds (default 20; --quick: 3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 256/128 images, 1 epoch of 4 steps, seed 0, 3 latency rounds (CI)",
    )
    p.add_argument(
        "--time-only",
        action="store_true",
        help="time every arm with a trained seed again (interleaved, e.g. on a quiet machine) and report; "
        "build, record and train nothing new",
    )
    p.add_argument("-o", "--output", default="bench-versus", metavar="DIR", help="the output folder")
    p.add_argument("--trust-code", action="store_true", help="let a directory's file.py model be imported")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def default_arms() -> tuple[str, ...]:
    """Every arm this version of condense can build (Torch-Pruning's are checked when run: a missing package
    is an error with the install hint), references (``original-ft``) only when named."""
    return tuple(name for name in DEFAULT_ARMS if lacking(ARMS[name]) is None)


def config_from_args(args: argparse.Namespace) -> VersusConfig:
    """The ``VersusConfig`` of parsed arguments: ``--quick`` (else the full defaults) fills what was not given."""
    base = QUICK if args.quick else DEFAULTS

    def pick(name: str, given: Any) -> Any:
        return given if given is not None else base.get(name)

    epochs = args.epochs
    if args.quick and epochs is None and not args.checkpoint:
        epochs = None if is_model_dir(args.model) else QUICK["epochs"]
    return VersusConfig(
        model=args.model,
        data=args.data,
        budgets=tuple(str(args.budget).split(",")),
        arms=_names(args.arms) if args.arms is not None else default_arms(),
        seeds=parse_int_list(pick("seeds", args.seeds), "--seeds", distinct=True),
        output=args.output,
        checkpoint=args.checkpoint,
        epochs=epochs,
        original_lr=args.original_lr,
        finetune_epochs=pick("finetune_epochs", args.finetune_epochs),
        lr=args.lr,
        schedule=args.schedule,
        batch_size=pick("batch_size", args.batch_size),
        kd=args.kd,
        steps_per_epoch=pick("steps_per_epoch", args.steps_per_epoch),
        limit_train=pick("limit_train", args.limit_train),
        limit_test=pick("limit_test", args.limit_test),
        input_size=args.input_size,
        calib=CalibSetting(
            pick("calib_images", args.calib_images), pick("calib_epochs", args.calib_epochs), parse_lr(args.calib_lr)
        ),
        tp_macs=args.tp_macs,
        width_multiple=args.width_multiple,
        device=args.device,
        threads=args.threads,
        batches=parse_int_list(args.batch_sizes, "--batch-sizes", low=1, distinct=True, example="1,32"),
        repeats=pick("repeats", args.repeats),
        warmup=base["warmup"],
        trust_code=args.trust_code,
        quick=args.quick,
        time_only=args.time_only,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m condense.bench.versus ...``: exit 0, 1 (a one-line error) or 2 (unexpected)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(width=None if sys.stdout.isatty() else 160)

    def body() -> int:
        run(config_from_args(args), console)
        return 0

    return run_command(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
