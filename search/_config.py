"""A search's configuration: ``SearchConfig``, its identity, the names of a search folder's files, ``search.json``.

In: ``run_search``'s keywords (``SearchConfig``'s fields), or ``search.json`` as a search wrote it.
Out: a checked, frozen ``SearchConfig`` (``to_dict``, ``identity``: the options that must match to resume or
share a study; ``name``: the study name); ``load_config(DIR)``: ``STUDY_DIR/search.json``; the file names
of a search folder (``JOURNAL``, ``CONFIG``, ``TRIALS``, ``SEARCH_FILES``).
Never: accepts an option out of range (a ConfigError names the option and why); lets a study resume with
options that change what a trial measures (``_IDENTITY``: another model, data, budget, training, sampler
or seed is another study); ties a study to where its files sit (the model file, checkpoints and data count
by file name, the data also by its content fingerprint; the data's absolute path only for a study in a local
folder), so workers on other hosts may keep them elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from condense import CondenseError, ConfigError, read_json
from condense import parse_budget, parse_input_size
from condense.data import data_fingerprint

from ._objective import OBJECTIVE_KINDS

JOURNAL = "study.journal"
CONFIG = "search.json"
TRIALS = "trials"
SAMPLERS = ("nsgaii", "tpe", "random")
# the options that define what a trial measures: a study resumed with others would mix incomparable trials
_IDENTITY = (
    "model",
    "checkpoint",
    "data",
    "limit_train",
    "limit_test",
    "input_size",
    "macs",
    "params",
    "epochs_per_trial",
    "steps_per_epoch",
    "batch_size",
    "lr",
    "distill",
    "teacher",
    "teacher_checkpoint",
    "latency",
    "latency_batch",
    "latency_compiled",
    "sampler",
    "population",
    "layers",
    "K",
)
SEARCH_KIND = "search"
# what a search writes into its folder (a folder's manifest lists these; anything else in it is the user's)
SEARCH_FILES = (
    CONFIG,
    JOURNAL,
    JOURNAL + ".lock",
    TRIALS + "/",
    "trials.csv",
    "front.csv",
    "front.png",
    "finished/",
    "finished.csv",
    "finished.png",
    "supernet/",
    "export/",
)


def _spec_identity(spec: str) -> str:
    """A model spec as a study's identity holds it: ``file.py:factory`` by file name only."""
    path, _, factory = spec.rpartition(":")
    return f"{Path(path).name}:{factory}" if path.endswith(".py") else spec


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; ``run_search`` builds it from its keywords (same names)."""

    model: str | None  # timm:NAME, zoo:NAME or file.py:factory (None: an nn.Module given)
    data: str  # cifar10:PATH, mnist:PATH, ...
    output: str = "searches/run"
    macs: str | None = None  # MAC budget: 250M, 60%, ...
    params: str | None = None  # parameter budget
    trials: int = 40  # plans to evaluate within the budgets (over-budget ones are extra)
    epochs_per_trial: int = 1
    steps_per_epoch: int | None = None  # cap on the steps of each epoch (None: the whole split)
    batch_size: int = 128
    lr: float = 0.05
    limit_train: int | None = None
    limit_test: int | None = None
    input_size: tuple[int, int, int] | None = None  # resize the data to this (default: the data's size)
    checkpoint: str | None = None  # local weights for the original model
    distill: bool = False  # distil each trial from the original model
    teacher: str | None = None  # ... or from this model (a spec; implies distillation)
    teacher_checkpoint: str | None = None  # local weights for the teacher
    latency: bool = False  # also minimise measured latency on this machine
    latency_batch: int = 1  # ... at this batch size
    latency_compiled: bool = False  # ... of the torch.compile'd model (default eager)
    device: str = "auto"  # where trials train and latency is measured (auto: CUDA if any)
    sampler: str = "nsgaii"
    population: int = 10  # NSGA-II population size
    seed: int = 0
    layers: tuple[str, ...] | None = None  # layer types to search (default: all)
    K: tuple[int, int] | None = None  # K range (default 1..20)
    widths: tuple[float, ...] | None = None  # shares of a run's channels width[PATH] may remove (default: no width)
    width_importance: str = "l1"  # how trials with width rank channels: l1 or group
    width_multiple: int = 1  # pruned channel groups of more than N channels kept at multiples of N
    depth: bool = True  # False: width alone (needs widths), every run keeps its blocks
    objective: str = "macs"  # macs: (accuracy, MACs, params[, latency]); latency: (accuracy, latency)
    storage: str | None = None  # database URL (default: STUDY_DIR/study.journal)
    study_name: str | None = None
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 3
    reference: bool = True  # proxy-train the original model once, for the plot and table
    enqueue_fit: bool = True  # first trial: condense.fit's plan for the budget
    max_proposals: int | None = None  # stop after this many over-budget/duplicate plans (None: 10 x trials)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ConfigError(f"search option {field}={getattr(self, field)!r}: {why}")

        for field in ("trials", "epochs_per_trial", "batch_size", "heartbeat_interval", "grace_period"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(field, "must be an integer >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("steps_per_epoch", "must be >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.sampler not in SAMPLERS:
            bad("sampler", f"must be one of {', '.join(SAMPLERS)}")
        if isinstance(self.latency_batch, bool) or not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            bad("latency_batch", "must be an integer >= 1")
        if self.max_proposals is not None and (isinstance(self.max_proposals, bool) or self.max_proposals < 1):
            bad("max_proposals", "must be an integer >= 1")
        if self.population < 2:
            bad("population", "must be >= 2")
        if self.max_retry < 0:
            bad("max_retry", "must be >= 0")
        if self.grace_period <= self.heartbeat_interval:
            bad("grace_period", "must be longer than heartbeat_interval")
        for field in ("macs", "params"):
            if getattr(self, field) is not None:
                parse_budget(getattr(self, field))
        if self.teacher_checkpoint is not None and self.teacher is None:
            bad("teacher_checkpoint", "needs a teacher model (--teacher SPEC)")
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(parse_input_size(self.input_size)))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.K is not None:
            object.__setattr__(self, "K", (int(self.K[0]), int(self.K[1])))
        if self.objective not in OBJECTIVE_KINDS:
            bad("objective", f"must be one of {', '.join(OBJECTIVE_KINDS)}")
        if self.objective == "latency":
            object.__setattr__(self, "latency", True)  # the objective is measured latency
        if self.width_importance not in ("l1", "group"):
            bad("width_importance", "must be l1 or group")
        if isinstance(self.width_multiple, bool) or not isinstance(self.width_multiple, int) or self.width_multiple < 1:
            bad("width_multiple", "must be a whole number >= 1 (e.g. 16)")
        if self.width_multiple > 1 and self.widths is None:
            bad("width_multiple", "applies to pruned channels: add widths (--widths)")
        if self.widths is not None:
            ws = tuple(self.widths)
            if not ws or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1 for w in ws):
                bad("widths", "must be shares of channels to remove in [0, 1), e.g. 0.25,0.5")
            object.__setattr__(self, "widths", tuple(sorted({float(w) for w in ws})))
        if not isinstance(self.depth, bool):
            bad("depth", "must be True or False")
        if not self.depth and not self.widths:
            raise ConfigError(
                "a search without depth (--no-depth) has nothing to choose",
                "add --widths, e.g. --widths 0.25,0.5, or drop --no-depth",
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("input_size", "layers", "K", "widths"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    def identity(self) -> dict[str, Any]:
        """The options that must match to resume (or share) a study. Paths count by file name only, so
        workers on other hosts may keep the data, the model file and the checkpoint elsewhere."""
        d = self.to_dict()
        out = {k: d[k] for k in _IDENTITY}
        if out["model"]:
            out["model"] = _spec_identity(out["model"])
        kind, sep, path = out["data"].partition(":")
        if sep:
            out["data"] = f"{kind}:{Path(path).name}"
        if out["checkpoint"]:
            out["checkpoint"] = Path(out["checkpoint"]).name
        if out["teacher"]:  # a study stored before these options reads None for them: it still resumes
            out["teacher"] = _spec_identity(out["teacher"])
        if out["teacher_checkpoint"]:
            out["teacher_checkpoint"] = Path(out["teacher_checkpoint"]).name
        out["seed"] = self.seed
        for key in ("widths", "width_importance", "objective"):  # added later: compared when a study stored them
            out[key] = d[key]
        if not self.depth:  # added later, and only when off: a study stored without it searched depth
            out["depth"] = False
        if self.width_multiple > 1:  # added later, and only when set
            out["width_multiple"] = self.width_multiple
        if sep:
            out["data_fingerprint"] = data_fingerprint(self.data)
            out["data_path"] = str(Path(path).expanduser().resolve())
        return out

    @property
    def name(self) -> str:
        return self.study_name or "condense-" + _model_name(self.model)


def _model_name(model: str | None) -> str:
    if not model:
        return "model"
    if model.startswith(("timm:", "zoo:")):
        return model.split(":", 1)[1]
    path, _, factory = model.rpartition(":")
    return f"{Path(path).stem}-{factory}" if path.endswith(".py") else model.replace("/", "-")


def load_config(output: str | os.PathLike) -> dict[str, Any]:
    """``STUDY_DIR/search.json`` as written by a search."""
    path = Path(output) / CONFIG
    if not path.is_file():
        raise CondenseError(
            f"{str(output)!r} is not a search directory (no {CONFIG})", "pass the output directory of `condense search`"
        )
    config = read_json(path, "re-run the search into a new output directory")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise CondenseError(f"{path} is not a search's configuration", "re-run the search into a new output directory")
    return config


def _config_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    out = {k: v for k, v in d.items() if k in fields}
    for key in ("input_size", "layers", "K", "widths"):
        if out.get(key) is not None:
            out[key] = tuple(out[key])
    return out
