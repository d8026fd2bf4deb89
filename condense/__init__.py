"""condense: make CNNs smaller and faster by replacing repeated blocks with PDE-based Global layers.

Public API (everything else is private)::

    condense(model, macs="40M", input_size=(3, 32, 32))   the condensed nn.Module (default plan without budget)
    fit(model, macs=..., params=...)    the plan, the rewritten model and measured counts (FitResult)
    fit(model, latency="12ms", latency_setting=LatencySetting(batch=1, mode="compiled"))   a measured budget
    measure_latency(model, input_size, setting)   median ms of one forward pass on this machine
    measure_side_by_side(models, size, batches=, reference=)   several models timed interleaved, with ratios
    save(result, DIR, spec=...), load(DIR)   a condensed model on disk (plan JSON + safetensors); load never
                                        imports a file.py model unless trust_code=True or the model is passed
    resolve_model("timm:NAME" | DIR)    one resolver: a model spec or a saved directory -> Resolved(model, ...)
    resolve_device("auto")              one resolver for devices (auto, cpu, cuda, cuda:N, mps)
    PlanCosts(model, found)             the cost model fit and the search share (estimates, never reported)
    write_condensed, write_model_dir, write_directory, read_meta   the directory format, written atomically
    atomic_write, atomic_write_json, atomic_write_csv, read_json, claim_folder, claim_file, output_lock
                                        every file the tool writes, one way: atomic, flushed, owned (a
                                        folder's manifest, a file's own columns), one writer at a time
    find_runs(model, input_size)        the runs of repeated same-resolution blocks (changes nothing)
    build_space(found), SearchSpace     the plan space the search and the supernet range over (declared once)
    supernet(model, input_size=..., space=...)   every plan of a search space (built by the caller:
                                        search.build_space, or search.supernet for both) in one weight-sharing
                                        module: select(plan), extract(plan); train_supernet (sandwich rule)
    load_data("cifar10:PATH"); condense.train.train(model, data, TrainConfig(...), teacher=...)   recover accuracy
    calibrate(result, original, "cifar10:PATH")   distil a FitResult's model from its original (run outputs and
                                        logits, labels unused), BatchNorm re-estimated -> Calibration record
    choose(original, "cifar10:PATH", macs="30%", input_size=...)   depth only or depth + width, Global layers
                                        or drop: each candidate calibrated briefly, the most accurate on
                                        held-out training images wins -> Choice(name, options, tried)

    count(model, input_size)            MACs and parameters, total and per module (pandas DataFrame)
    parse_budget("250M"), format_count  budget strings, one parser
    GlobalLayer, GlobalConfig           the advection-diffusion layer (Kag & Saligrama)
    LinearMix, ExplicitRD, ImplicitRD, CirculantRD   the reaction-diffusion layers
    create_layer(name, channels, ...)   any of them by name
    advection_diffusion(...)            the pure solver behind the Global layer
"""

from ._budget import Budget, format_count, format_ms, parse_budget, parse_input_size, parse_latency
from ._count import count, count_module, macs_and_params
from ._errors import BudgetError, CondenseError, ConfigError, report as report_error
from ._fit import FitResult, LatencyFit, Plan, condense, fit
from ._latency import LatencySetting, measure_latency, measure_side_by_side
from ._costs import PlanCosts
from ._device import resolve_device
from ._write import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    claim_file,
    claim_folder,
    csv_starts_with,
    output_lock,
    read_json,
)
from ._io import META, load, os_error, read_meta, save, write_condensed, write_directory, write_model_dir
from ._models import build_model, default_input_size, load_checkpoint, parse_model_spec
from ._resolve import Resolved, resolve_model
from .data import DataBundle, DataSpec, load_data, parse_data_spec
from .train import TrainConfig, TrainResult
from .graph import FindResult, Run, RunChoice, find_runs, register_leaf_module, rewrite
from ._calibrate import CalibrateConfig, Calibration, FeaturePair, calibrate, feature_pairs
from ._choose import Choice, ChooseConfig, choose
from ._space import GLOBAL_ONLY, INITS, K_RANGE, Param, RunSpace, SearchSpace, build_space
from ._supernet import (
    SandwichConfig,
    Supernet,
    calibration_batches,
    load_supernet_weights,
    recalibrate_bn,
    score_plan,
    supernet,
    train_supernet,
)
from .pde import (
    CirculantRD,
    CirculantRDConfig,
    DropLayer,
    ExplicitRD,
    ExplicitRDConfig,
    GlobalConfig,
    GlobalLayer,
    ImplicitRD,
    ImplicitRDConfig,
    LinearMix,
    LinearMixConfig,
    PDELayer,
    advection_diffusion,
    create_layer,
    layer_names,
)

__version__ = "0.1.0"

__all__ = [
    "condense",
    "fit",
    "FitResult",
    "LatencyFit",
    "LatencySetting",
    "measure_latency",
    "measure_side_by_side",
    "Plan",
    "save",
    "load",
    "build_model",
    "load_checkpoint",
    "resolve_model",
    "Resolved",
    "parse_model_spec",
    "default_input_size",
    "resolve_device",
    "PlanCosts",
    "write_condensed",
    "write_model_dir",
    "write_directory",
    "read_meta",
    "os_error",
    "META",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_csv",
    "read_json",
    "claim_folder",
    "claim_file",
    "csv_starts_with",
    "output_lock",
    "load_data",
    "parse_data_spec",
    "DataBundle",
    "DataSpec",
    "TrainConfig",
    "TrainResult",
    "find_runs",
    "FindResult",
    "Run",
    "RunChoice",
    "rewrite",
    "register_leaf_module",
    "calibrate",
    "choose",
    "Choice",
    "ChooseConfig",
    "Calibration",
    "CalibrateConfig",
    "feature_pairs",
    "FeaturePair",
    "supernet",
    "Supernet",
    "SandwichConfig",
    "train_supernet",
    "recalibrate_bn",
    "calibration_batches",
    "score_plan",
    "load_supernet_weights",
    "SearchSpace",
    "RunSpace",
    "Param",
    "build_space",
    "K_RANGE",
    "INITS",
    "GLOBAL_ONLY",
    "count",
    "count_module",
    "macs_and_params",
    "Budget",
    "parse_budget",
    "parse_latency",
    "format_count",
    "format_ms",
    "parse_input_size",
    "CondenseError",
    "ConfigError",
    "BudgetError",
    "report_error",
    "PDELayer",
    "GlobalLayer",
    "GlobalConfig",
    "LinearMix",
    "LinearMixConfig",
    "ExplicitRD",
    "ExplicitRDConfig",
    "ImplicitRD",
    "ImplicitRDConfig",
    "CirculantRD",
    "CirculantRDConfig",
    "DropLayer",
    "advection_diffusion",
    "create_layer",
    "layer_names",
]
