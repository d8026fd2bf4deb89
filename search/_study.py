"""Run a budget search: the study (storage, sampler, resume, retries), the progress bar, the outputs.

In: a model (spec or nn.Module), data, budgets and proxy-training options (``SearchConfig``).
Out: ``SearchResult`` (the study, every trial and the Pareto front as DataFrames, the files written).
Files, in the output directory (``STUDY_DIR``):

    study.journal        the Optuna study (default storage; ``storage=`` a database URL instead)
    search.json          the configuration, the storage and study name, the original model's figures
    trials/<N>/          trial N's trained condensed model (``condense.load`` reads it)
    trials.csv           every trial: plan, figures, state
    front.csv            the Pareto front (``study.best_trials``: feasible trials only), by MACs
    front.png            accuracy vs MACs, the front and the original model marked
    finished/<N>/, finished.csv, finished.png   with ``finish=``: fine-tuned front members (``search._finish``)

Never: writes into a folder that is not a search's (a non-empty folder without ``search.json`` or a
journal is refused; files a user adds to a search folder are kept), nor into another study's folder (a
search folder belongs to one study: another model, study name or seed is refused, naming what differs).
Never loses a finished trial. Each trial is written to the storage when it ends; re-running the same
search resumes the study (same study name, ``load_if_exists``), and ``trials`` counts the study's
evaluated trials (within the budgets), so a resumed search runs only the rest. A trial that died mid-way
is marked failed and retried with the same parameters (up to ``max_retry`` times): with a database, by Optuna's
heartbeat (``heartbeat_interval``/``grace_period``) and ``RetryHeartbeatStaleTrialCallback``; with the
journal file, which has no heartbeat, by this module: each running trial records its host and process
and beats every ``heartbeat_interval`` seconds, and a RUNNING trial whose process is gone (same host) or
whose beat is older than ``grace_period`` is failed and re-enqueued when a worker starts or finishes a
trial. Ctrl-C (or SIGTERM) during a trial marks it failed and re-enqueues it at once.

Repeatable: the sampler (NSGA-II, or TPE) draws trial N's parameters from a random stream seeded by
(``seed``, N), so the same seed gives the same parameters, and resumed or parallel workers do not repeat
each other's draws.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
import torch
from torch import nn

from condense import (CondenseError, ConfigError, atomic_write_json, claim_folder, find_runs, macs_and_params,
                      read_json)
from condense import LatencySetting, Plan, format_count, parse_budget, parse_input_size

from ._objective import (OBJECTIVE_KINDS, STATUS_DUPLICATE, STATUS_OVER, STATUS_TRAINED, Objective, build_trial,
                         measure_latency, objective_directions, objective_names)
from ._space import SearchSpace, build_space

__all__ = ["SearchConfig", "SearchResult", "run_search", "open_study", "load_config", "recover_stale_trials"]

JOURNAL = "study.journal"
CONFIG = "search.json"
TRIALS = "trials"
SAMPLERS = ("nsgaii", "tpe", "random")
_WORKER_KEY = "condense:worker"
_BEAT_KEY = "condense:heartbeat"
_CONFIG_KEY = "condense:config"
_REFERENCE_KEY = "condense:reference"
_MAX_FAILURES = 10  # consecutive failed trials of one worker that stop it
_OVER_FACTOR = 10   # a search also stops after 10 x trials plans over budget or duplicate (space exhausted)
# the options that define what a trial measures: a study resumed with others would mix incomparable trials
_IDENTITY = ("model", "checkpoint", "data", "limit_train", "limit_test", "input_size", "macs", "params",
             "epochs_per_trial", "steps_per_epoch", "batch_size", "lr", "distill", "teacher", "teacher_checkpoint",
             "latency", "latency_batch", "latency_compiled", "sampler", "population", "layers", "K")


SEARCH_KIND = "search"
# what a search writes into its folder (a folder's manifest lists these; anything else in it is the user's)
SEARCH_FILES = (CONFIG, JOURNAL, JOURNAL + ".lock", TRIALS + "/", "trials.csv", "front.csv", "front.png",
                "finished/", "finished.csv", "finished.png", "supernet/", "export/")


def _legacy_search(folder: Path) -> set[str] | None:
    """A search folder written before manifests: it holds ``search.json`` or a journal."""
    return set(SEARCH_FILES) if (folder / CONFIG).is_file() or (folder / JOURNAL).is_file() else None


def claim_search_folder(config: "SearchConfig") -> None:
    """Before anything is built: the output must be empty, new, or this study's search folder. A folder
    that is not a search's is refused; so is another study's (its ``search.json`` names another study, or
    its journal holds other studies), naming what differs."""
    from condense._write import check_output, foreign_files

    out = check_output(config.output)
    if not out.exists():
        return
    if not out.is_dir():
        raise CondenseError(f"output {str(out)!r} is a file", "choose a new -o DIR")
    if not any(out.iterdir()):
        return
    if foreign_files(out, SEARCH_KIND, _legacy_search) is None:
        claim_folder(out, SEARCH_KIND, legacy=_legacy_search)  # raises, naming the problem
    if (out / CONFIG).is_file():
        meta = load_config(out)
        theirs = meta.get("study_name")
        if theirs != config.name:
            model = meta["config"].get("model")
            raise CondenseError(f"{str(out)!r} holds the study {theirs!r} (model {model}), not {config.name!r}",
                                "choose another -o DIR for this search (a search folder holds one study)")
    if config.storage is None and (out / JOURNAL).is_file():
        names = [s for s in optuna.get_all_study_names(_journal_storage(out / JOURNAL)) if s != config.name]
        if names:
            raise CondenseError(f"{str(out)!r} holds the study {names[0]!r}, not {config.name!r}",
                                "choose another -o DIR for this search (a search folder holds one study)")


def world_size() -> int:
    """Processes of this run (``torchrun`` sets WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _spec_identity(spec: str) -> str:
    """A model spec as a study's identity holds it: ``file.py:factory`` by file name only."""
    path, _, factory = spec.rpartition(":")
    return f"{Path(path).name}:{factory}" if path.endswith(".py") else spec


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; ``run_search`` builds it from its keywords (same names)."""

    model: str | None                      # timm:NAME, zoo:NAME or file.py:factory (None: an nn.Module given)
    data: str                              # cifar10:PATH, mnist:PATH, ...
    output: str = "searches/run"
    macs: str | None = None                # MAC budget: 250M, 60%, ...
    params: str | None = None              # parameter budget
    trials: int = 40                       # plans to evaluate within the budgets (over-budget ones are extra)
    epochs_per_trial: int = 1
    steps_per_epoch: int | None = None     # cap on the steps of each epoch (None: the whole split)
    batch_size: int = 128
    lr: float = 0.05
    limit_train: int | None = None
    limit_test: int | None = None
    input_size: tuple[int, int, int] | None = None   # resize the data to this (default: the data's size)
    checkpoint: str | None = None          # local weights for the original model
    distill: bool = False                  # distil each trial from the original model
    teacher: str | None = None             # ... or from this model (a spec; implies distillation)
    teacher_checkpoint: str | None = None  # local weights for the teacher
    latency: bool = False                  # also minimise measured latency on this machine
    latency_batch: int = 1                 # ... at this batch size
    latency_compiled: bool = False         # ... of the torch.compile'd model (default eager)
    device: str = "auto"                   # where trials train and latency is measured (auto: CUDA if any)
    sampler: str = "nsgaii"
    population: int = 10                   # NSGA-II population size
    seed: int = 0
    layers: tuple[str, ...] | None = None  # layer types to search (default: all)
    K: tuple[int, int] | None = None       # K range (default 1..20)
    widths: tuple[float, ...] | None = None  # shares of a run's channels width[PATH] may remove (default: no width)
    width_importance: str = "l1"           # how trials with width rank channels: l1 or group
    depth: bool = True                     # False: width alone (needs widths), every run keeps its blocks
    objective: str = "macs"                # macs: (accuracy, MACs, params[, latency]); latency: (accuracy, latency)
    storage: str | None = None             # database URL (default: STUDY_DIR/study.journal)
    study_name: str | None = None
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 3
    reference: bool = True                 # proxy-train the original model once, for the plot and table
    enqueue_fit: bool = True               # first trial: condense.fit's plan for the budget
    max_proposals: int | None = None       # stop after this many over-budget/duplicate plans (None: 10 x trials)

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
        if self.widths is not None:
            ws = tuple(self.widths)
            if not ws or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1 for w in ws):
                bad("widths", "must be shares of channels to remove in [0, 1), e.g. 0.25,0.5")
            object.__setattr__(self, "widths", tuple(sorted({float(w) for w in ws})))
        if not isinstance(self.depth, bool):
            bad("depth", "must be True or False")
        if not self.depth and not self.widths:
            raise ConfigError("a search without depth (--no-depth) has nothing to choose",
                              "add --widths, e.g. --widths 0.25,0.5, or drop --no-depth")

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
        if sep:
            from condense.data import data_fingerprint

            out["data_fingerprint"] = data_fingerprint(self.data)
            out["data_path"] = str(Path(path).expanduser().resolve())
        return out

    @property
    def name(self) -> str:
        return self.study_name or "condense-" + _model_name(self.model)


@dataclasses.dataclass
class SearchResult:
    study: optuna.Study
    space: SearchSpace
    trials: Any            # pandas DataFrame: every trial
    front: Any             # pandas DataFrame: the Pareto front
    reference: dict[str, Any]
    output: Path
    files: dict[str, Path]
    interrupted: bool = False
    finished: Any = None   # FinishResult of --finish (fine-tuned front members), or None


def _model_name(model: str | None) -> str:
    if not model:
        return "model"
    if model.startswith(("timm:", "zoo:")):
        return model.split(":", 1)[1]
    path, _, factory = model.rpartition(":")
    return f"{Path(path).stem}-{factory}" if path.endswith(".py") else model.replace("/", "-")


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


# --- samplers: one random stream per (seed, trial number) ------------------------------------------------

class _PerTrialSeed:
    """Mixin: reseed the sampler's random streams from (seed, trial number) before each trial."""

    _condense_seed: int

    def before_trial(self, study, trial):  # type: ignore[override]
        # Optuna has no public way to seed a sampler per trial (``reseed_rng`` draws a fresh random seed):
        # this relies on its samplers keeping a ``_LazyRandomState`` as ``_rng`` (and NSGA-II/TPE a random
        # sampler as ``_random_sampler``), pinned in pyproject.toml (optuna < 6) and checked by
        # tests/test_search.py; if a version moves them, this fails loudly instead of silently unseeding.
        s = _seed_of(self._condense_seed, trial.number)
        for holder in (self, getattr(self, "_random_sampler", None)):
            if holder is None:
                continue
            lazy = getattr(holder, "_rng", None)
            if lazy is None or not hasattr(lazy, "rng"):
                raise ConfigError(f"optuna {optuna.__version__}: {type(holder).__name__} keeps no _rng.rng, which "
                                  "per-trial seeding needs", "install optuna 5 (pip install 'optuna>=5,<6')")
            lazy.rng.seed(s)
            s = _seed_of(s, 1)
        super().before_trial(study, trial)


class CondenseNSGAIISampler(_PerTrialSeed, NSGAIISampler):
    """NSGA-II whose draws for trial N depend only on (seed, N) and the finished trials it sees."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


class CondenseTPESampler(_PerTrialSeed, TPESampler):
    """TPE whose draws for trial N depend only on (seed, N) and the finished trials it sees."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


class CondenseRandomSampler(_PerTrialSeed, RandomSampler):
    """Uniform random search (the baseline a multi-objective sampler has to beat), draws seeded per trial."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._condense_seed = seed


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "tpe":
        return CondenseTPESampler(seed=config.seed)
    if config.sampler == "random":
        return CondenseRandomSampler(seed=config.seed)
    return CondenseNSGAIISampler(seed=config.seed, population_size=config.population)


# --- storage and study -----------------------------------------------------------------------------------

def _is_journal(storage) -> bool:
    return isinstance(storage, optuna.storages.JournalStorage)


def repair_journal(path: str | os.PathLike) -> int:
    """Cut a torn last record (a write cut short by a full disk or a kill) off a journal file, keeping every
    complete record, so that appending to it again cannot make the study unreadable. Holds the journal's
    own lock while it checks. Returns the number of bytes removed (0 for a sound journal). A damaged record
    that is not the last one is an error: nothing is cut."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    while not lock.acquire():
        time.sleep(0.05)
    try:
        data = path.read_bytes()
        good = 0  # end of the last complete, readable record
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            last = number == len(lines) - 1
            if last and not line:
                break
            try:
                json.loads(line)
                ok = not last  # a last piece without its newline was cut short, even if it parses
            except ValueError:
                ok = False
            if not ok:
                if not last:
                    raise CondenseError(f"{path}: record {number + 1} is damaged and is not the last one",
                                        "the journal was edited or corrupted: restore it from a copy")
                break
            good += len(line) + 1
        cut = len(data) - good
        if cut:
            from condense import os_error

            try:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                raise os_error(err, path) from None
        return cut
    finally:
        lock.release()


def _journal_storage(path: Path):
    cut = repair_journal(path)
    if cut:
        warnings.warn(f"{path}: removed a torn last record ({cut} bytes; every complete record kept)", stacklevel=3)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_storage(config: SearchConfig, output: Path):
    """The journal file in ``output`` (default; a torn last record is repaired first) or an RDB storage
    with heartbeats for a database URL."""
    if config.storage is None:
        from condense import os_error
        from condense._write import read_manifest, write_manifest

        try:
            output.mkdir(parents=True, exist_ok=True)
            if read_manifest(output) is None:
                write_manifest(output, SEARCH_KIND, SEARCH_FILES)
        except OSError as err:
            raise os_error(err, output) from None
        return _journal_storage(output / JOURNAL)
    url = config.storage
    if url.endswith((".journal", ".log")) and "://" not in url:
        return _journal_storage(Path(url))
    url = database_url(url)
    for attempt in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=config.heartbeat_interval,
                    grace_period=config.grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry))
            except ImportError as err:
                raise CondenseError(f"cannot open storage {_safe_url(url)}: {err}",
                                    "install the database driver, e.g. pip install psycopg2-binary") from None
            except Exception as err:  # sqlalchemy errors: one line
                import sqlalchemy.exc

                # workers that start together on an empty database race to create the tables: try again
                if isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) and attempt < 5:
                    time.sleep(0.2 + 0.3 * attempt + random.random() * 0.3)
                    continue
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CondenseError(f"cannot open storage {_safe_url(url)}: {first[:160]}",
                                    "is the database server running and the URL right?") from None
    raise AssertionError("unreachable")


def database_url(url: str) -> str:
    """``postgresql://...`` with the driver that is installed: SQLAlchemy 2.1 means psycopg (3) by default,
    this project's driver is psycopg2-binary, so the URL names ``postgresql+psycopg2`` when only it is there."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def open_study(config: SearchConfig, output: str | os.PathLike | None = None) -> optuna.Study:
    """Create the study, or load it if it exists (same storage and study name)."""
    out = Path(output if output is not None else config.output)
    storage = make_storage(config, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        directions = objective_directions(config.latency, config.objective)
        study = optuna.create_study(storage=storage, study_name=config.name, load_if_exists=True,
                                    directions=directions, sampler=make_sampler(config))
    if len(study.directions) != len(directions):
        raise CondenseError(f"study {config.name!r} has {len(study.directions)} objectives, this search "
                            f"{len(directions)}",
                            "use the same --latency and --objective settings, or another --study-name / output "
                            "directory")
    return study


def load_config(output: str | os.PathLike) -> dict[str, Any]:
    """``STUDY_DIR/search.json`` as written by a search."""
    path = Path(output) / CONFIG
    if not path.is_file():
        raise CondenseError(f"{str(output)!r} is not a search directory (no {CONFIG})",
                            "pass the output directory of `condense search`")
    config = read_json(path, "re-run the search into a new output directory")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise CondenseError(f"{path} is not a search's configuration", "re-run the search into a new output directory")
    return config


def study_from_dir(output: str | os.PathLike, storage: str | None = None,
                   study_name: str | None = None) -> tuple[optuna.Study, dict[str, Any]]:
    """The study of a search directory (its journal, or the database named in search.json / ``storage``)."""
    meta = load_config(output)
    url = storage or meta["config"].get("storage")
    if url is None:
        journal = Path(output) / JOURNAL
        if not journal.is_file():
            raise CondenseError(f"{journal} does not exist", "was the search run with --storage? pass it")
        st = _journal_storage(journal)
    else:
        cfg = SearchConfig(**{**_config_kwargs(meta["config"]), "storage": url})
        st = make_storage(cfg, Path(output))
    name = study_name or meta["study_name"]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise CondenseError(f"no study {name!r} in the storage", "pass --study-name") from None
    return study, meta


def _config_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    out = {k: v for k, v in d.items() if k in fields}
    for key in ("input_size", "layers", "K", "widths"):
        if out.get(key) is not None:
            out[key] = tuple(out[key])
    return out


# --- stale and interrupted trials ------------------------------------------------------------------------

def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # zombie / dead
        return None
    return fields[19]  # starttime (field 22 of stat; fields here start at field 3)


def _alive(pid: int, start: str | None) -> bool:
    if Path("/proc").is_dir():
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_info() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def _is_stale(trial, grace: float, now: float) -> bool:
    worker = trial.system_attrs.get(_WORKER_KEY)
    if worker and worker.get("host") == socket.gethostname() and not _alive(int(worker["pid"]), worker.get("start")):
        return True
    beat = trial.system_attrs.get(_BEAT_KEY)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) > grace


def recover_stale_trials(study: optuna.Study, grace_period: float, max_retry: int | None = 3) -> list[int]:
    """Journal storage: fail RUNNING trials whose worker is gone and re-enqueue their parameters.

    A trial is stale when its process is gone (same host) or its heartbeat is older than ``grace_period``
    seconds. Only one worker can fail a trial (the storage refuses a second state change), so each stale
    trial is retried once. Returns the numbers of the trials failed here. (RDB storages: Optuna does this.)
    """
    if not _is_journal(study._storage):
        return []
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(t, grace_period, now):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it (and retries it)
        _retry(study, t._trial_id, max_retry)
        failed.append(t.number)
    return failed


def _retry(study: optuna.Study, trial_id: int, max_retry: int | None) -> None:
    """Queue a failed trial again (same parameters), as Optuna's RetryHeartbeatStaleTrialCallback does, but
    without the dead worker's record, its constraints and user attributes (the retry measures them anew)."""
    frozen = copy.deepcopy(study._storage.get_trial(trial_id))
    frozen.system_attrs = {k: v for k, v in frozen.system_attrs.items()
                           if k not in (_WORKER_KEY, _BEAT_KEY) and not k.startswith("constraints:")}
    frozen.user_attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, frozen)


class _Heartbeat:
    """For the journal storage: record the worker of a trial and beat every ``interval`` seconds."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"condense-heartbeat-{trial.number}")

    def _beat(self) -> bool:
        try:
            self.trial.storage.set_trial_system_attr(self.trial._trial_id, _BEAT_KEY, time.time())
            return True
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if not self._beat():
                return

    def __enter__(self):
        self.trial.storage.set_trial_system_attr(self.trial._trial_id, _WORKER_KEY, _worker_info())
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the trial under way is failed and retried."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --- the search ------------------------------------------------------------------------------------------

def _build_original(config: SearchConfig, model: nn.Module | None, num_classes: int):
    """(model, spec, model_kwargs): the original model with the data's classes (and local weights). A model
    built here starts from the study seed's weights, so every worker and every resumed run trains the same
    plan from the same weights."""
    from condense import resolve_model

    if model is not None:
        net = copy.deepcopy(model)
        if config.checkpoint:
            from condense import load_checkpoint

            load_checkpoint(net, config.checkpoint)
        return net, None, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        r = resolve_model(config.model, checkpoint=config.checkpoint, num_classes=num_classes)
    if r.is_directory:
        raise CondenseError(f"{config.model!r} is a condensed-model directory; search starts from a model spec",
                            "pass the original model, e.g. timm:NAME or zoo:NAME")
    return r.model, r.spec, r.model_kwargs


def _check_reachable(original: nn.Module, size, space: SearchSpace, config: SearchConfig) -> None:
    """A budget no plan of the space can meet is an error with the smallest reachable figure, before the
    study exists: the smallest plan of each layer type (every run at m = 1, the lowest K), measured."""
    from condense import BudgetError, fit

    errors = []
    if not space.depth:  # width alone: the most channels every run may lose, no block removed
        _check_reachable_width(original, size, space, config)
        return
    for layer in space.layers:
        for width in (None, *([max(space.widths)] if space.widths else [])):  # the most channels a trial removes
            try:
                fit(original, macs=config.macs, params=config.params, input_size=size, layer=layer,
                    K=space.K[0] if layer != "drop" else None, width=width)  # drop has no K
                return
            except BudgetError as err:
                errors.append(err)
    first = errors[0]
    raise BudgetError(f"no plan in the search space meets the budget: {first.message}"
                      + (f" with {space.layers[0]}" if len(space.layers) > 1 else ""),
                      "raise the budget (--budget/--params), or widen the space (--layers, --K)")


def _check_reachable_width(original: nn.Module, size, space: SearchSpace, config: SearchConfig) -> None:
    from condense import BudgetError

    widest = {run.path: max(space.widths) for run in space.runs}
    pruned, _ = build_trial(original, find_runs(original, size), Plan({}), config.seed, widest, size,
                            config.width_importance)
    have_all, totals = macs_and_params(pruned, size), macs_and_params(original, size)
    for i, (name, budget) in enumerate((("MAC", config.macs), ("parameter", config.params))):
        have = have_all[i]
        if budget is not None and have > parse_budget(budget).resolve(totals[i]):
            raise BudgetError(f"no plan in the search space meets the {name} budget {budget}: with "
                              f"{max(space.widths):g} of every run's channels removed the model has {have:,}",
                              "raise the budget, or allow larger shares (--widths)")


def _train_config(config: SearchConfig):
    from condense.train import TrainConfig

    return TrainConfig(epochs=config.epochs_per_trial, batch_size=config.batch_size, lr=config.lr,
                       seed=config.seed, max_steps_per_epoch=config.steps_per_epoch)


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
            from rich.console import Console

            console = Console()
        if enabled and not console.is_terminal:
            self.lines, enabled = console, False
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("evaluated · front {task.fields[front]}"),
                                TextColumn("{task.fields[extra]}"),
                                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console)
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
        extra = " · ".join(f"{n} {what}" for n, what in ((c["over"], "over budget (not trained)"),
                                                          (c["duplicate"], "duplicate"), (c["failed"], "failed"),
                                                          (c["running"], "running")) if n)
        if self.lines is not None:
            if c["done"] != self.printed:
                self.printed = c["done"]
                self.lines.print(f"search: {c['done']}/{self.total} evaluated, front {front}"
                                 + "".join(f", {x}" for x in (extra.replace(" · ", ", "), eta) if x),
                                 highlight=False, soft_wrap=True)
            return
        self.bar.update(self.task, completed=min(c["done"], self.total), front=front, extra=extra, eta=eta)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _latency_setting(config: SearchConfig) -> LatencySetting:
    return LatencySetting(batch=config.latency_batch, mode="compiled" if config.latency_compiled else "eager",
                          min_time=0.5, device=config.device)


def _reference(objective: Objective, config: SearchConfig) -> dict[str, Any]:
    """The original model's figures (and its accuracy after the same proxy training, if asked; its latency
    whenever latency is measured: ``condense compare`` scales a latency front by it)."""
    from . import _objective

    ref: dict[str, Any] = {"macs": objective.macs_before, "params": objective.params_before, "accuracy": None}
    model = copy.deepcopy(objective.model)
    if config.reference:
        res = _objective.train(model, objective.data, objective.train_config, teacher=objective.teacher,
                               progress=False)
        ref["accuracy"] = float(res.metrics["test_acc"])
    if config.latency:
        ref["latency_ms"] = measure_latency(model, objective.input_size, objective.latency_setting)
    return ref


def _enqueue_fit(study: optuna.Study, space: SearchSpace, model: nn.Module, config: SearchConfig,
                 input_size) -> None:
    """Give the search a feasible start: condense.fit's plan for the budget, as the first trial."""
    from condense import fit

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


def run_search(model: str | nn.Module, data: str, *, output: str | os.PathLike | None = None,
               progress: bool = True, console=None, on_trial: Callable[[optuna.Study, Any], None] | None = None,
               finish: Any = None, **options: Any) -> SearchResult:
    """Search plans for ``model`` (a spec like ``timm:resnet18`` or an ``nn.Module``) on ``data``.

    Keywords are ``SearchConfig``'s fields: ``macs``/``params`` (budgets, hard constraints), ``trials``
    (plans the study should have evaluated within the budgets; over-budget plans are counted and recorded
    but not trained, and plans seen before are pruned as duplicates: neither counts, and the search stops
    after 10 x ``trials`` of them), ``epochs_per_trial``, ``steps_per_epoch``, ``batch_size``,
    ``lr``, ``limit_train``/``limit_test``, ``input_size``, ``checkpoint``, ``distill``, ``latency``,
    ``sampler`` (nsgaii or tpe), ``population``, ``seed``, ``layers``, ``K`` ((lo, hi)), ``widths`` (shares
    of a run's channels a trial may remove with Torch-Pruning, per run; ``width_importance`` l1 or group),
    ``objective`` (``macs``: accuracy, MACs, params; ``latency``: accuracy and measured latency), ``storage`` (a
    database URL; default: a journal file in ``output``), ``study_name``, ``heartbeat_interval``,
    ``grace_period``, ``max_retry``, ``reference``, ``enqueue_fit``. Re-running with the same output (or
    storage and study name) resumes the study. ``finish`` (a ``FinishConfig``): afterwards, fine-tune that
    many front members and report their final accuracies (``search._finish``; ``SearchResult.finished``).
    Returns a ``SearchResult``; writes the files listed in the module docstring.
    """
    if world_size() > 1:
        raise CondenseError("the per-trial search does not run under torchrun",
                            "start several workers that share one --storage, or use --strategy supernet")
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
    from condense import resolve_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        r = resolve_model(config.teacher, checkpoint=config.teacher_checkpoint, num_classes=num_classes)
    return r.model.eval()


def prepare(config: SearchConfig, model, spec_text) -> Prepared:
    """Everything that can be checked, checked before the study (and the output folder) is created: the
    device, the data, the model, the budgets (reachable by some plan of the space)."""
    from condense import resolve_device
    from condense.data import load_data

    resolve_device(config.device)
    claim_search_folder(config)
    bundle = load_data(config.data, limit_train=config.limit_train, limit_test=config.limit_test,
                       input_size=config.input_size)
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
    if macs_b is not None or params_b is not None:
        _check_reachable(original, size, space, config)
    return Prepared(bundle, original, spec, model_kwargs, size, found, macs0, params0, macs_b, params_b, space,
                    teacher)


def _run(config: SearchConfig, model, spec_text, out: Path, progress: bool, console, on_trial,
         finish=None) -> SearchResult:
    p = prepare(config, model, spec_text)
    bundle, original, spec, model_kwargs, size, found = p.bundle, p.original, p.spec, p.model_kwargs, p.size, p.found
    macs0, params0, macs_b, params_b, space = p.macs0, p.params0, p.macs_b, p.params_b, p.space
    study = open_study(config, out)
    _check_same_search(study, config, None)
    _check_same_search(study, config, space)
    (out / TRIALS).mkdir(parents=True, exist_ok=True)

    teacher = p.teacher
    objective = Objective(space=space, model=original, found=found, data=bundle, train_config=_train_config(config),
                          trials_dir=out / TRIALS, macs_before=macs0, params_before=params0, macs_budget=macs_b,
                          params_budget=params_b, teacher=teacher, latency=config.latency,
                          latency_setting=_latency_setting(config), spec=spec,
                          model_kwargs=model_kwargs, checkpoint=config.checkpoint, study_name=config.name,
                          seed=config.seed, device=config.device, objective=config.objective,
                          width_importance=config.width_importance)
    journal = _is_journal(study._storage)
    recover_stale_trials(study, config.grace_period, config.max_retry)
    if not study.get_trials(deepcopy=False) and config.enqueue_fit and space.depth and \
            (macs_b is not None or params_b is not None):
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


def finish_members(result: SearchResult, finish, p: Prepared, config: SearchConfig, teacher, console,
                   progress: bool) -> SearchResult:
    """``--finish``: fine-tune ``finish.top`` front members (``search._finish``) into ``result.finished``; an
    interrupt keeps the members already finished (the same command resumes) and reports the front."""
    if finish is None:
        return result
    from ._finish import finish_front

    try:
        with _sigterm_as_interrupt():
            result.finished = finish_front(result.front, result.output, p.original, p.bundle, finish,
                                           batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                                           teacher=teacher, device=config.device, reference=result.reference,
                                           console=console,
                                           progress=progress or console is not None)
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
    later = ("seed", "data_fingerprint", "widths", "width_importance", "objective", "depth") + \
        (("data_path",) if config.storage is None else ())
    diff = [k for k in _IDENTITY + tuple(k for k in later if k in old or (k == "depth" and k in new))
            if json.dumps(old.get(k)) != json.dumps(new.get(k))]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        raise CondenseError(f"study {config.name!r} was started with other options ({shown})",
                            "resume with the same options, or use another output directory / --study-name")
    if space is not None and stored.get("space") != mine["space"]:
        raise CondenseError(f"study {config.name!r} has another search space", "use another --study-name")


def _write_config(out: Path, config: SearchConfig, study: optuna.Study, space: SearchSpace,
                  reference: dict[str, Any]) -> None:
    d = config.to_dict()
    meta = {"format": "condense-search/1", "study_name": study.study_name, "config": d,
            "objectives": objective_names(config.latency, config.objective), "reference": reference,
            "space": space.to_dict()}
    atomic_write_json(out / CONFIG, meta)


def _optimize(study: optuna.Study, objective: Objective, config: SearchConfig, journal: bool, bar: _Progress,
              on_trial) -> None:
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
        raise CondenseError(f"{_MAX_FAILURES} trials in a row failed; the last: {failures[1] or 'see trials.csv'}",
                            "narrow the space (--layers, --K) or check the model")


def _finish(study: optuna.Study, space: SearchSpace, reference: dict[str, Any], out: Path,
            interrupted: bool) -> SearchResult:
    from ._pareto import front_frame, trials_frame, write_csv
    from ._plot import plot_front

    trials = trials_frame(study, space)
    front = front_frame(study, space, trials)
    files = {"trials": write_csv(trials, out / "trials.csv"), "front": write_csv(front, out / "front.csv")}
    try:
        files["plot"] = plot_front(trials, out / "front.png", reference=reference,
                                   title=f"{study.study_name}: accuracy vs MACs")
    except ImportError:
        pass  # matplotlib is optional (pip install condense[plot])
    return SearchResult(study=study, space=space, trials=trials, front=front, reference=reference, output=out,
                        files=files, interrupted=interrupted)


def format_reference(reference: dict[str, Any]) -> str:
    acc = reference.get("accuracy")
    return (f"original: {format_count(reference.get('macs', 0))} MACs, {format_count(reference.get('params', 0))} "
            f"params" + (f", proxy accuracy {acc:.4f}" if acc is not None and not math.isnan(acc) else ""))
