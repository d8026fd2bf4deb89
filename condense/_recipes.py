"""Recipes: the paper's experiments as readable YAML files (``recipes/*.yaml``), loaded and checked.

In: a recipe file. Out: a frozen ``Recipe``; ``footprint`` (a dry run: build, condense per the plan, count
MACs and parameters, next to the paper's figures); ``run_recipe`` (training, through ``condense.train``).
Never: trains anything in ``footprint``, or downloads data or weights.

A recipe file::

    title: ResNet-32 -> Resnet-Global (m=1) on CIFAR-10
    model:
      spec: zoo:resnet32          # timm:NAME, zoo:NAME or path/to/file.py:factory
      num_classes: 10
      input_size: [3, 32, 32]     # or "3x32x32"
      kwargs: {}                  # more factory arguments (optional)
    plan: default                 # default (m=1, K=5) | none (train the model as is) | a mapping:
    #   {m: 2 or {layer1: 2, ...}, K: 5, layer: global, init: input|block, options: {...}}
    #   or a budget {macs: 250M, params: 2.5M, K: ..., layer: ..., init: ..., options: {...}}
    data: cifar10:../shared/data/cifar10-jpeg.tar.gz   # relative paths: against the repo root
    train:
      optimizer: sgd              # or a timm optimizer name (rmsproptf, adamw, ...)
      lr: 0.1
      momentum: 0.9
      weight_decay: 1.0e-4
      batch_size: 128
      epochs: 300
      schedule: step              # step | cosine | constant
      milestones: [150, 225]      # or decay_every: 2.4 (a step every 2.4 epochs)
      gamma: 0.1
      clip_grad_norm: 5.0         # optional; also nesterov, warmup_epochs, label_smoothing, augment, seed,
                                  # decay_norm_and_bias (weight decay on norm weights and biases too)
    distill: {teacher: baseline, checkpoint: PATH, alpha: 0.5, temperature: 4}   # optional
    paper:
      source: Table 1, Table 3
      baseline: {accuracy: 92.49, params: 460K, macs: 70M}
      condensed: {accuracy: 91.93, params: 162K, macs: 15M}
    notes: free text (assumptions, known gaps)
    measured:                     # optional: what our own runs gave (shown by ``condense recipe list``)
      command: condense recipe run recipes/x.yaml --seeds 0,1,2 --threads 1
      variant: condensed          # or baseline
      epochs: 300
      seeds: [0, 1, 2]
      accuracy: [91.2, 91.5, 91.0]   # final test top-1 in percent, one per seed
      wall_minutes: 30            # per seed (optional)
      notes: free text (optional)

Every key is checked, and every training setting is applied: a key ``condense.train`` has no option for is
rejected (there is no bag of "recorded, not applied" settings; write those in ``notes``). An unknown key or
a bad value is a one-line ``CondenseError`` naming the file and the key. The repo root is the directory
that contains ``recipes/`` (for a file elsewhere: its directory; for the recipes installed with the
package, which has no repository: the current directory).

The recipes ship with the package (``condense/recipes/``, copied from the repository's ``recipes/`` when
a wheel is built), so ``condense recipe list|footprint|run`` work from any folder after ``pip install``;
in a source checkout ``recipes/`` itself is read. A recipe may be named without its path and ``.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import yaml

from . import zoo
from ._budget import Budget, parse_budget, parse_input_size
from ._count import macs_and_params
from ._device import resolve_device
from ._errors import CondenseError
from ._fit import _check_drop, fit
from ._models import build_model, load_checkpoint, parse_model_spec
from ._write import atomic_write_json
from .data import load_data
from .graph import RunChoice, find_runs, rewrite
from .pde import create_layer, layer_names
from .train import TrainConfig, run_folder, train

__all__ = [
    "Recipe",
    "ModelEntry",
    "PlanEntry",
    "TrainEntry",
    "DistillEntry",
    "Figures",
    "PaperEntry",
    "MeasuredEntry",
    "load_recipe",
    "list_recipes",
    "footprint",
    "footprint_table",
    "run_recipe",
    "recipes_dir",
    "build_models",
    "train_config",
    "TRAIN_KEYS",
]

DATA_KINDS = ("mnist", "cifar10", "cifar100", "imagefolder")
SCHEDULES = ("step", "cosine", "constant")
INITS = ("input", "block")


def recipes_dir() -> Path:
    """The recipes: the repository's ``recipes/`` in a source checkout (the files to edit), else the copy
    installed with the package (``condense/recipes``, made from ``recipes/`` when the wheel is built)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "recipes"
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return package / "recipes"


# --- the records ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """The model: ``spec`` (``timm:NAME``, ``zoo:NAME`` or ``file.py:factory``), classes, input size and
    further factory keywords."""

    spec: str
    num_classes: int
    input_size: tuple[int, int, int]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """How to condense. ``kind``: ``none`` (the model as is), ``default`` (m=1 everywhere, K=5 - the paper's),
    ``explicit`` (``m`` for every run or per run path, optionally ``K``/``layer``/``init``/``options``) or
    ``budget`` (``macs`` and/or ``params``; ``condense.fit`` chooses m and K)."""

    kind: str = "default"
    m: int | Mapping[str, int] | None = None
    K: int | None = None
    layer: str = "global"
    init: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    macs: str | None = None
    params: str | None = None

    def describe(self) -> str:
        if self.kind == "none":
            return "none (not condensed)"
        parts = []
        if self.kind == "budget":
            parts += [f"macs<={self.macs}"] if self.macs else []
            parts += [f"params<={self.params}"] if self.params else []
        elif self.kind == "explicit" and self.m is not None:
            parts.append(
                f"m={self.m}"
                if isinstance(self.m, int)
                else "m={" + ", ".join(f"{k}: {v}" for k, v in self.m.items()) + "}"
            )
        else:
            parts.append("m=1")
        parts.append(f"K={self.K if self.K is not None else 5}")
        if self.layer != "global":
            parts.append(f"layer={self.layer}")
        if self.init:
            parts.append(f"init={self.init}")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class TrainEntry:
    """The schedule: every field goes to ``condense.train.TrainConfig`` (``train_config``; ``TRAIN_KEYS``
    says which file key sets which option). Settings it has no option for are rejected when loading."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 128
    epochs: int = 300
    schedule: str = "step"
    milestones: tuple[int, ...] = (150, 225)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    clip_grad_norm: float | None = None
    decay_norm_and_bias: bool = False


@dataclasses.dataclass(frozen=True)
class DistillEntry:
    """Knowledge distillation: ``teacher`` is ``baseline`` (the uncondensed model of this recipe) or a model
    spec; ``checkpoint`` its trained weights (a local file)."""

    teacher: str = "baseline"
    checkpoint: str | None = None
    alpha: float = 0.5
    temperature: float = 4.0


@dataclasses.dataclass(frozen=True)
class Figures:
    """Figures reported in the paper: top-1 accuracy in percent, parameters and MACs as counts."""

    accuracy: float | None = None
    params: float | None = None
    macs: float | None = None


@dataclasses.dataclass(frozen=True)
class PaperEntry:
    source: str = ""
    baseline: Figures | None = None
    condensed: Figures | None = None


@dataclasses.dataclass(frozen=True)
class MeasuredEntry:
    """Our own measurement of the recipe: final test top-1 (percent) per seed, from ``command``."""

    command: str
    epochs: int
    seeds: tuple[int, ...]
    accuracy: tuple[float, ...]
    variant: str = "condensed"
    wall_minutes: float | None = None
    notes: str = ""

    @property
    def mean(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for one seed."""
        n = len(self.accuracy)
        return 0.0 if n < 2 else math.sqrt(sum((a - self.mean) ** 2 for a in self.accuracy) / (n - 1))

    def describe(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}% ({len(self.seeds)} seeds, {self.epochs} ep)"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One experiment of the paper, as loaded from ``path`` (see the module docstring for the file)."""

    name: str
    path: Path
    title: str
    model: ModelEntry
    plan: PlanEntry
    data: str
    train: TrainEntry
    paper: PaperEntry
    distill: DistillEntry | None = None
    notes: str = ""
    measured: MeasuredEntry | None = None

    @property
    def root(self) -> Path:
        """The repo root: the directory that contains ``recipes/`` (else the file's directory); for the
        recipes installed with the package (no repository): the current directory."""
        if self.path.resolve().parent == Path(__file__).resolve().parent / "recipes":
            return Path.cwd()
        for parent in self.path.resolve().parents:
            if parent.name == "recipes":
                return parent.parent
        return self.path.resolve().parent

    @property
    def dataset(self) -> str:
        return self.data.partition(":")[0]

    @property
    def data_spec(self) -> str:
        """The data spec with its path made absolute (relative paths resolve against the repo root)."""
        kind, _, path = self.data.partition(":")
        p = Path(os.path.expanduser(path))
        return f"{kind}:{p if p.is_absolute() else (self.root / p).resolve()}"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.model.input_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


# --- loading and checking ------------------------------------------------------------------------------


class _Checker:
    """Reads one mapping of a recipe file; every error names the file and the dotted key."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, key: str, problem: str, hint: str | None = None) -> CondenseError:
        where = f"{self.file.name}: {key}: " if key else f"{self.file.name}: "
        return CondenseError(where + problem, hint)

    def mapping(self, value: Any, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, got {_show(value)}")
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                close = difflib.get_close_matches(str(k), list(allowed), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.fail(_join(key, str(k)), "unknown key", hint)
        for k in required:
            if k not in value:
                raise self.fail(_join(key, k), "missing", f"required keys: {', '.join(required)}")
        return dict(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {_show(value)}")
        return value.strip()

    def integer(self, value: Any, key: str, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise self.fail(key, f"must be an integer {rng}, got {_show(value)}")
        return value

    def number(self, value: Any, key: str, lo: float, hi: float | None = None, *, open_lo: bool = False) -> float:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and (value > lo if open_lo else value >= lo)
            and (hi is None or value <= hi)
        )
        if not ok:
            rng = (
                f"in {'(' if open_lo else '['}{lo:g}, {hi:g}]"
                if hi is not None
                else f"{'>' if open_lo else '>='} {lo:g}"
            )
            raise self.fail(key, f"must be a number {rng}, got {_show(value)}")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_show(value)}")
        return value

    def choice(self, value: Any, key: str, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self.fail(key, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def count(self, value: Any, key: str) -> float:
        try:
            b = parse_budget(value)
        except CondenseError as err:
            raise self.fail(key, f"{_show(value)} is not a count", "write e.g. 460K, 70M, 1.3G") from err
        if b.relative:
            raise self.fail(key, f"{_show(value)} is a percentage, not a count", "write e.g. 460K, 70M, 1.3G")
        return b.value


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TOP = ("title", "model", "plan", "data", "train", "distill", "paper", "notes", "measured")
_MODEL = ("spec", "num_classes", "input_size", "kwargs")
_PLAN = ("m", "K", "layer", "init", "options", "macs", "params")
_TRAIN = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "batch_size",
    "epochs",
    "schedule",
    "milestones",
    "decay_every",
    "gamma",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "seed",
    "clip_grad_norm",
    "decay_norm_and_bias",
)
# file key under train: -> the TrainConfig option it sets (run_recipe applies every one; test_recipes checks)
TRAIN_KEYS: dict[str, str] = {k: k for k in _TRAIN if k != "decay_every"} | {"decay_every": "milestones"}
_MEASURED = ("command", "variant", "epochs", "seeds", "accuracy", "wall_minutes", "notes")
_DISTILL = ("teacher", "checkpoint", "alpha", "temperature")
_PAPER = ("source", "baseline", "condensed")
_FIGURES = ("accuracy", "params", "macs")


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check one recipe file (``yaml.safe_load``); a one-line CondenseError on any problem."""
    file = Path(path)
    named = recipes_dir() / f"{file.name}.yaml"
    if not file.is_file() and file.suffix == "" and len(file.parts) == 1 and named.is_file():
        file = named  # a recipe's name, e.g. mnist_fig2_cnn
    if not file.is_file():
        raise CondenseError(f"recipe {str(path)!r} does not exist", f"recipes are in {recipes_dir()}")
    c = _Checker(file)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise CondenseError(
            f"{file.name}: not valid YAML{where} ({problem})", "check the indentation and quoting"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise CondenseError(f"{file.name}: cannot read ({err})") from err
    top = c.mapping(raw if raw is not None else {}, "", _TOP, required=("model", "data", "train"))
    model = _model(c, top["model"])
    plan = _plan(c, top.get("plan", "default"))
    data = _data(c, top["data"])
    train = _train(c, top["train"])
    distill = None if top.get("distill") is None else _distill(c, top["distill"])
    paper = _paper(c, top.get("paper") or {})
    measured = None if top.get("measured") is None else _measured(c, top["measured"])
    title = c.string(top["title"], "title") if "title" in top else file.stem
    notes = top.get("notes") or ""
    if not isinstance(notes, str):
        raise c.fail("notes", f"must be text, got {_show(notes)}")
    if distill is not None and plan.kind == "none" and distill.teacher == "baseline":
        raise c.fail(
            "distill.teacher",
            "'baseline' needs a plan that condenses the model",
            "name a teacher model spec, or set a plan",
        )
    return Recipe(
        name=file.stem,
        path=file,
        title=title,
        model=model,
        plan=plan,
        data=data,
        train=train,
        paper=paper,
        distill=distill,
        notes=" ".join(notes.split()),
        measured=measured,
    )


def _model(c: _Checker, raw: Any) -> ModelEntry:
    d = c.mapping(raw, "model", _MODEL, required=("spec",))
    spec = c.string(d["spec"], "model.spec")
    try:
        parsed = parse_model_spec(spec)
    except CondenseError as err:
        raise c.fail("model.spec", err.message, err.hint) from err
    if parsed.kind == "zoo":
        if parsed.name not in zoo.MODELS:
            close = difflib.get_close_matches(parsed.name, zoo.names(), n=3)
            raise c.fail(
                "model.spec",
                f"unknown zoo model {parsed.name!r}",
                f"did you mean {', '.join(close)}?" if close else f"zoo models: {', '.join(zoo.names())}",
            )
    num_classes = c.integer(d.get("num_classes", 1000 if parsed.kind == "timm" else 10), "model.num_classes", 2)
    size_raw = d.get("input_size")
    if size_raw is None:
        if parsed.kind == "zoo":
            size = zoo.input_size(parsed.name)
        elif parsed.kind == "timm":
            size = (3, 224, 224)
        else:
            raise c.fail("model.input_size", "missing", "give the input size, e.g. [3, 32, 32]")
    else:
        try:
            if isinstance(size_raw, (list, tuple)):
                if len(size_raw) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size_raw):
                    raise CondenseError("not three integers")
                size_raw = "x".join(str(s) for s in size_raw)
            elif not isinstance(size_raw, str) or len(size_raw.lower().split("x")) != 3:
                raise CondenseError("not CxHxW")
            size = tuple(parse_input_size(size_raw))
        except CondenseError as err:
            raise c.fail(
                "model.input_size", f"{_show(d.get('input_size'))} is not C x H x W", "write [3, 32, 32] or 3x32x32"
            ) from err
    kwargs = d.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise c.fail("model.kwargs", f"must be a mapping of keyword arguments, got {_show(kwargs)}")
    if "num_classes" in kwargs:
        raise c.fail("model.kwargs.num_classes", "set model.num_classes instead")
    return ModelEntry(spec=str(parsed), num_classes=num_classes, input_size=size, kwargs=dict(kwargs))


def _plan(c: _Checker, raw: Any) -> PlanEntry:
    if raw is None or raw == "none":
        return PlanEntry(kind="none")
    if raw == "default":
        return PlanEntry(kind="default")
    if isinstance(raw, str):
        raise c.fail("plan", f"{raw!r} is not a plan", "write default, none, or a mapping (m, K, layer, ...)")
    d = c.mapping(raw, "plan", _PLAN)
    layer = c.choice(d.get("layer", "global"), "plan.layer", layer_names())
    K = c.integer(d["K"], "plan.K", 1, 100) if d.get("K") is not None else None
    init = c.choice(d["init"], "plan.init", INITS) if d.get("init") is not None else None
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise c.fail("plan.options", f"must be a mapping of layer options, got {_show(options)}")
    if "K" in options:
        raise c.fail("plan.options.K", "set plan.K instead")
    try:  # the options must build a layer (as condense.fit checks them)
        create_layer(layer, 4, **{k: v for k, v in options.items() if k != "kernel_size"})
    except (CondenseError, TypeError, ValueError) as err:
        raise c.fail("plan.options", str(err).splitlines()[0] if str(err) else type(err).__name__) from err
    macs = params = None
    if d.get("macs") is not None:
        macs = str(d["macs"])
        _check_budget(c, d["macs"], "plan.macs")
    if d.get("params") is not None:
        params = str(d["params"])
        _check_budget(c, d["params"], "plan.params")
    m = d.get("m")
    if m is not None:
        if macs or params:
            raise c.fail(
                "plan.m", "a budget (macs/params) and a fixed m cannot be combined", "give either m or a budget"
            )
        if isinstance(m, Mapping):
            m = {c.string(k, "plan.m"): c.integer(v, f"plan.m.{k}", 1) for k, v in m.items()}
            if not m:
                raise c.fail("plan.m", "is empty", "give m for at least one run, or a single integer")
        else:
            m = c.integer(m, "plan.m", 1)
    kind = "budget" if (macs or params) else ("explicit" if m is not None else "default")
    return PlanEntry(kind=kind, m=m, K=K, layer=layer, init=init, options=dict(options), macs=macs, params=params)


def _check_budget(c: _Checker, value: Any, key: str) -> Budget:
    try:
        return parse_budget(value)
    except CondenseError as err:
        raise c.fail(key, err.message, "write e.g. 250M, 2.5M or 60%") from err


def _data(c: _Checker, raw: Any) -> str:
    text = c.string(raw, "data")
    kind, sep, path = text.partition(":")
    if not sep or kind.strip().lower() not in DATA_KINDS or not path.strip():
        raise c.fail(
            "data", f"{text!r} is not a data spec", f"write KIND:PATH with KIND one of {', '.join(DATA_KINDS)}"
        )
    return f"{kind.strip().lower()}:{path.strip()}"


def _train(c: _Checker, raw: Any) -> TrainEntry:
    if isinstance(raw, Mapping) and "extra" in raw:
        raise c.fail(
            "train.extra",
            "condense.train applies no extra settings",
            "use a train option (clip_grad_norm, ...) or model.kwargs, or describe it in notes",
        )
    d = c.mapping(raw, "train", _TRAIN)
    epochs = c.integer(d.get("epochs", 300), "train.epochs", 1)
    schedule = c.choice(d.get("schedule", "step"), "train.schedule", SCHEDULES)
    if "milestones" in d and "decay_every" in d:
        raise c.fail("train.decay_every", "give either milestones or decay_every, not both")
    if "decay_every" in d:
        every = c.number(d["decay_every"], "train.decay_every", 0.0, float(epochs), open_lo=True)
        if every < 1:
            raise c.fail("train.decay_every", f"{every:g} is below one epoch")
        milestones = tuple(sorted({round(every * i) for i in range(1, int(epochs / every) + 1)} - {0}))
    else:
        ms = d.get("milestones", [150, 225] if schedule == "step" else [])
        if not isinstance(ms, (list, tuple)):
            raise c.fail("train.milestones", f"must be a list of epochs, got {_show(ms)}")
        milestones = tuple(c.integer(v, "train.milestones", 1, epochs) for v in ms)
        if list(milestones) != sorted(set(milestones)):
            raise c.fail("train.milestones", f"{list(milestones)} must be increasing")
    if schedule == "step" and not milestones:
        raise c.fail("train.milestones", "a step schedule needs milestones (or decay_every)")
    optimizer = c.string(d.get("optimizer", "sgd"), "train.optimizer").lower()
    clip = d.get("clip_grad_norm")
    warmup = c.integer(d.get("warmup_epochs", 0), "train.warmup_epochs", 0, epochs - 1)
    return TrainEntry(
        optimizer=optimizer,
        lr=c.number(d.get("lr", 0.1), "train.lr", 0.0, 10.0, open_lo=True),
        momentum=c.number(d.get("momentum", 0.9), "train.momentum", 0.0, 0.999999),
        nesterov=c.boolean(d.get("nesterov", False), "train.nesterov"),
        weight_decay=c.number(d.get("weight_decay", 1e-4), "train.weight_decay", 0.0, 1.0),
        batch_size=c.integer(d.get("batch_size", 128), "train.batch_size", 1),
        epochs=epochs,
        schedule=schedule,
        milestones=milestones,
        gamma=c.number(d.get("gamma", 0.1), "train.gamma", 0.0, 1.0, open_lo=True),
        warmup_epochs=warmup,
        label_smoothing=c.number(d.get("label_smoothing", 0.0), "train.label_smoothing", 0.0, 0.999),
        augment=c.boolean(d.get("augment", True), "train.augment"),
        seed=c.integer(d.get("seed", 0), "train.seed", 0),
        clip_grad_norm=None if clip is None else c.number(clip, "train.clip_grad_norm", 0.0, 1e6, open_lo=True),
        decay_norm_and_bias=c.boolean(d.get("decay_norm_and_bias", False), "train.decay_norm_and_bias"),
    )


def _measured(c: _Checker, raw: Any) -> MeasuredEntry:
    d = c.mapping(raw, "measured", _MEASURED, required=("command", "epochs", "seeds", "accuracy"))
    seeds, acc = d["seeds"], d["accuracy"]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise c.fail("measured.seeds", f"must be a non-empty list of seeds, got {_show(seeds)}")
    if not isinstance(acc, (list, tuple)) or len(acc) != len(seeds):
        raise c.fail("measured.accuracy", f"must be a list of {len(seeds)} accuracies (one per seed), got {_show(acc)}")
    notes = d.get("notes") or ""
    if not isinstance(notes, str):
        raise c.fail("measured.notes", f"must be text, got {_show(notes)}")
    wall = d.get("wall_minutes")
    return MeasuredEntry(
        command=c.string(d["command"], "measured.command"),
        epochs=c.integer(d["epochs"], "measured.epochs", 1),
        seeds=tuple(c.integer(s, "measured.seeds", 0) for s in seeds),
        accuracy=tuple(c.number(a, "measured.accuracy", 0.0, 100.0) for a in acc),
        variant=c.choice(d.get("variant", "condensed"), "measured.variant", ("condensed", "baseline")),
        wall_minutes=None if wall is None else c.number(wall, "measured.wall_minutes", 0.0),
        notes=" ".join(notes.split()),
    )


def _distill(c: _Checker, raw: Any) -> DistillEntry:
    d = c.mapping(raw, "distill", _DISTILL)
    teacher = c.string(d.get("teacher", "baseline"), "distill.teacher")
    if teacher != "baseline":
        try:
            parse_model_spec(teacher)
        except CondenseError as err:
            raise c.fail("distill.teacher", err.message, "write baseline or a model spec") from err
    ckpt = d.get("checkpoint")
    if ckpt is not None:
        ckpt = c.string(ckpt, "distill.checkpoint")
    return DistillEntry(
        teacher=teacher,
        checkpoint=ckpt,
        alpha=c.number(d.get("alpha", 0.5), "distill.alpha", 0.0, 1.0),
        temperature=c.number(d.get("temperature", 4.0), "distill.temperature", 0.0, 100.0, open_lo=True),
    )


def _paper(c: _Checker, raw: Any) -> PaperEntry:
    d = c.mapping(raw, "paper", _PAPER)
    source = c.string(d["source"], "paper.source") if d.get("source") is not None else ""
    figs = {}
    for which in ("baseline", "condensed"):
        if d.get(which) is None:
            figs[which] = None
            continue
        f = c.mapping(d[which], f"paper.{which}", _FIGURES)
        acc = f.get("accuracy")
        figs[which] = Figures(
            accuracy=None if acc is None else c.number(acc, f"paper.{which}.accuracy", 0.0, 100.0),
            params=None if f.get("params") is None else c.count(f["params"], f"paper.{which}.params"),
            macs=None if f.get("macs") is None else c.count(f["macs"], f"paper.{which}.macs"),
        )
    return PaperEntry(source=source, **figs)


def list_recipes(directory: str | os.PathLike | None = None) -> list[Recipe]:
    """Every ``*.yaml``/``*.yml`` recipe in ``directory`` (default: the repo's ``recipes/``), by name."""
    folder = Path(directory) if directory is not None else recipes_dir()
    if not folder.is_dir():
        raise CondenseError(f"recipe directory {str(folder)!r} does not exist")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")], key=lambda p: p.name)
    return [load_recipe(f) for f in files]


def _as_recipe(recipe: Recipe | str | os.PathLike) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    path = Path(recipe)
    if not path.exists() and path.suffix == "" and (recipes_dir() / f"{path.name}.yaml").exists():
        path = recipes_dir() / f"{path.name}.yaml"  # a bare recipe name
    return load_recipe(path)


# --- the dry run -----------------------------------------------------------------------------------


def build_models(recipe: Recipe | str | os.PathLike):
    """``(original, condensed, info)``: the recipe's model (random weights), the model its plan makes
    (``None`` for ``plan: none``) and a dict with the measured counts, the run table and a message."""
    r = _as_recipe(recipe)
    size = r.model.input_size
    original = build_model(r.model.spec, num_classes=r.model.num_classes, **dict(r.model.kwargs))
    plan = r.plan
    if plan.kind == "none":
        macs0, params0 = macs_and_params(original, size)
        return (
            original,
            None,
            {
                "macs_before": macs0,
                "params_before": params0,
                "macs_after": None,
                "params_after": None,
                "runs": "",
                "message": "not condensed (plan: none)",
            },
        )
    opts = dict(plan.options)
    if plan.kind in ("default", "budget"):
        res = fit(
            original,
            macs=plan.macs,
            params=plan.params,
            input_size=size,
            layer=plan.layer,
            init=plan.init,
            K=plan.K,
            **opts,
        )
        runs = ", ".join(f"{row.path}: {row.r}->{row.m}" for row in res.rows)
        return (
            original,
            res.model,
            {
                "macs_before": res.macs_before,
                "params_before": res.params_before,
                "macs_after": res.macs_after,
                "params_after": res.params_after,
                "runs": runs,
                "message": res.message,
            },
        )
    found = find_runs(original, size)
    repeats = {run.path: run for run in found.runs}
    if isinstance(plan.m, Mapping):
        unknown = [p for p in plan.m if p not in repeats]
        if unknown:
            raise CondenseError(
                f"{r.path.name}: plan.m: no run at {unknown[0]!r}",
                f"runs of {r.model.spec}: {', '.join(repeats) or 'none'}",
            )
        ms = dict(plan.m)
    else:
        ms = {p: int(plan.m) for p in repeats}
    K = plan.K if plan.K is not None else 5
    init = plan.init or "input"
    if plan.layer == "drop":  # no steps, options or initial guess: as condense.fit checks them
        _check_drop(plan.K, False, plan.init, opts)
        opts, init = {}, "input"
    else:
        opts["K"] = K
    choices = {
        p: RunChoice(m=m, layer=plan.layer, options=dict(opts), init=init) for p, m in ms.items() if m < repeats[p].r
    }
    new = rewrite(original, found, choices).module if choices else original
    macs0 = found.total_macs
    params0 = found.total_params
    if macs0 is None:
        macs0, params0 = macs_and_params(original, size)
    macs1, params1 = macs_and_params(new, size)
    runs = ", ".join(f"{p}: {repeats[p].r}->{min(ms.get(p, repeats[p].r), repeats[p].r)}" for p in repeats)
    msg = f"condensed {len(choices)} of {len(repeats)} run(s), K={K}" if choices else "no run changed"
    return (
        original,
        new,
        {
            "macs_before": macs0,
            "params_before": params0,
            "macs_after": macs1,
            "params_after": params1,
            "runs": runs,
            "message": msg,
        },
    )


def footprint(recipe: Recipe | str | os.PathLike) -> dict[str, Any]:
    """A dry run: build the model, condense it per the plan and count both (``condense.count``'s convention),
    next to the paper's figures. Nothing is trained; no data is read.

    Keys: ``name``, ``model``, ``data``, ``input_size``, ``plan``, ``runs`` (``path: r->m``), ``params``,
    ``macs``, ``params_condensed``, ``macs_condensed`` (None without a plan), ``paper_params``,
    ``paper_macs``, ``paper_acc``, ``paper_params_condensed``, ``paper_macs_condensed``,
    ``paper_acc_condensed`` (None where the paper gives none), ``message``.
    """
    r = _as_recipe(recipe)
    _, _, info = build_models(r)
    base = r.paper.baseline or Figures()
    cond = r.paper.condensed or Figures()
    return {
        "name": r.name,
        "model": r.model.spec,
        "data": r.dataset,
        "input_size": "x".join(map(str, r.model.input_size)),
        "plan": r.plan.describe(),
        "runs": info["runs"],
        "params": info["params_before"],
        "macs": info["macs_before"],
        "params_condensed": info["params_after"],
        "macs_condensed": info["macs_after"],
        "paper_params": base.params,
        "paper_macs": base.macs,
        "paper_acc": base.accuracy,
        "paper_params_condensed": cond.params,
        "paper_macs_condensed": cond.macs,
        "paper_acc_condensed": cond.accuracy,
        "message": info["message"],
    }


def footprint_table(recipes: Iterable[Recipe | str | os.PathLike] | None = None):
    """``footprint`` of every recipe (default: all of ``recipes/``) as a pandas DataFrame indexed by name."""
    items = list_recipes() if recipes is None else list(recipes)
    rows = [footprint(r) for r in items]
    cols = [
        "name",
        "model",
        "data",
        "input_size",
        "plan",
        "runs",
        "params",
        "paper_params",
        "macs",
        "paper_macs",
        "paper_acc",
        "params_condensed",
        "paper_params_condensed",
        "macs_condensed",
        "paper_macs_condensed",
        "paper_acc_condensed",
        "message",
    ]
    import pandas as pd  # heavy: loaded when a table is asked for, not at `import condense`

    return pd.DataFrame(rows, columns=cols).set_index("name")


# --- training ------------------------------------------------------------------------------------------


def _scaled_milestones(milestones: Sequence[int], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """Milestones at the same fractions of a shorter (or longer) run."""
    if new_epochs == epochs:
        return tuple(milestones)
    scaled = sorted({max(1, round(m * new_epochs / epochs)) for m in milestones})
    return tuple(m for m in scaled if m < new_epochs)


def train_config(recipe: Recipe | str | os.PathLike, *, epochs: int | None = None, seed: int | None = None):
    """The ``condense.train.TrainConfig`` of the recipe: every ``train:`` setting (``TRAIN_KEYS``) and the
    distillation weights. ``epochs`` shortens (or lengthens) the run, milestones scaled to the same
    fractions; ``seed`` replaces the recipe's seed."""
    r = _as_recipe(recipe)
    t = r.train
    n_epochs = t.epochs if epochs is None else int(epochs)
    if n_epochs < 1:
        raise CondenseError(f"epochs={epochs!r} must be >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise CondenseError(f"seed={seed!r} must be an integer >= 0")
    milestones = _scaled_milestones(t.milestones, t.epochs, n_epochs)
    schedule = t.schedule if (t.schedule != "step" or milestones) else "constant"
    return TrainConfig(
        epochs=n_epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
        optimizer=t.optimizer,
        schedule=schedule,
        milestones=milestones,
        gamma=t.gamma,
        warmup_epochs=min(t.warmup_epochs, n_epochs - 1),
        label_smoothing=t.label_smoothing,
        seed=t.seed if seed is None else seed,
        augment=t.augment,
        clip_grad_norm=t.clip_grad_norm,
        decay_norm_and_bias=t.decay_norm_and_bias,
        **({"kd_alpha": r.distill.alpha, "kd_temperature": r.distill.temperature} if r.distill else {}),
    )


def run_recipe(
    recipe: Recipe | str | os.PathLike,
    *,
    epochs: int | None = None,
    out_dir: str | os.PathLike,
    limit_train: int | None = None,
    variant: str = "condensed",
    data: str | None = None,
    progress: bool = True,
    seed: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
):
    """Train the recipe's model with its schedule through ``condense.train`` and return the result.

    ``variant``: ``condensed`` (the model the plan makes; the model as is for ``plan: none``) or
    ``baseline`` (the uncondensed model). ``epochs`` shortens (or lengthens) the run, milestones scaled
    to the same fractions; ``limit_train`` keeps that many training images; ``data`` replaces the
    recipe's data spec (e.g. where your ImageNet is); ``seed`` replaces the recipe's seed. Writes into
    ``out_dir`` what ``condense.train`` writes, plus ``recipe.json`` (the recipe, the measured footprint
    and the seed); ``metrics.json`` records the seed and the recipe's name too. ``device``: where to train
    (``auto``: CUDA when available). ``overwrite``: start again in an ``out_dir`` that holds a run.
    The models are built from the seed, so one seed gives one result on one machine and thread count.
    """

    r = _as_recipe(recipe)
    if variant not in ("condensed", "baseline"):
        raise CondenseError(f"variant={variant!r} is not 'condensed' or 'baseline'")
    config = train_config(r, epochs=epochs, seed=seed)
    device = resolve_device(device)  # a missing device: an error before anything is built or written
    if data is None and not Path(r.data_spec.partition(":")[2]).exists():
        raise CondenseError(
            f"{r.name}: its data {r.data_spec} does not exist (read, never downloaded)",
            "pass --data KIND:PATH (data= in Python) where your copy is",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initial weights follow the seed: one seed, one result
        original, condensed, info = build_models(r)
    model = original if (variant == "baseline" or condensed is None) else condensed
    teacher = None
    if r.distill is not None:
        if r.distill.teacher == "baseline":
            teacher = build_model(r.model.spec, num_classes=r.model.num_classes, **dict(r.model.kwargs))
        else:
            teacher = build_model(r.distill.teacher, num_classes=r.model.num_classes)
        if r.distill.checkpoint is None:
            raise CondenseError(
                f"{r.path.name}: distill.checkpoint: missing",
                "distillation needs the trained teacher's weights (a local .pth/.safetensors)",
            )
        ckpt = Path(os.path.expanduser(r.distill.checkpoint))
        load_checkpoint(teacher, ckpt if ckpt.is_absolute() else r.root / ckpt)
    out = Path(out_dir)
    fp = {
        "params": info["params_before"],
        "macs": info["macs_before"],
        "params_condensed": info["params_after"],
        "macs_condensed": info["macs_after"],
        "runs": info["runs"],
        "variant": variant,
    }
    bundle = load_data(data or r.data_spec, limit_train=limit_train, input_size=r.model.input_size)
    if (out / "last.pt").exists() and not overwrite:
        raise CondenseError(f"{out} already holds a run (last.pt)", "pass --overwrite, or choose another -o DIR")
    with run_folder(out):  # refused if it holds anything but a run; locked; removed again if nothing was written
        atomic_write_json(
            out / "recipe.json",
            {"recipe": r.to_dict(), "footprint": fp, "seed": config.seed, "train": config.to_dict()},
        )
        return train(
            model,
            bundle,
            config,
            out_dir=out,
            teacher=teacher,
            progress=progress,
            device=device,
            overwrite=overwrite,
            extra_metrics={"recipe": r.name, "variant": variant, "seed": config.seed},
        )
