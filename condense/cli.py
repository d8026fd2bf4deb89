"""The ``condense`` command: parse, call the public API, print. Domain errors exit 1 with one line.

condense MODEL [--budget 250M] [--params 2.5M] [-o DIR] ...   condense a model to a budget
condense find MODEL                                          list the runs of repeated blocks
condense count MODEL_OR_DIR                                  MACs and parameters
condense train MODEL_OR_DIR --data cifar10:PATH --epochs N   train or fine-tune (optionally distil)
condense recipe list | footprint | run FILE [--seeds 0,1,2]  the paper's experiments (recipes/*.yaml)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
import torch
import torch.nn as nn


from ._budget import format_count, format_ms, parse_input_size, parse_latency
from ._calibrate import CalibrateConfig, calibrate, feature_pairs, parse_lr
from ._choose import choose, short_split
from ._count import count
from ._device import describe_device, resolve_device
from ._errors import CondenseError, run_command
from ._export import export_onnx_main
from ._fit import fit
from ._help import HelpFormatter  # public here: search's commands use it too
from ._intlist import int_list_type, parse_int_list
from ._io import _legacy_model_dir, read_meta, save, write_model_dir
from ._latency import LatencySetting
from ._models import parse_model_spec
from ._recipes import MeasuredEntry, footprint, list_recipes, load_recipe, run_recipe, train_config
from ._resolve import is_model_dir, resolve_model
from ._write import check_output, claim_folder, output_lock
from .bench.models import bench_main
from .data import AUGMENTS, load_data, parse_data_spec
from .graph import find_runs
from .train import TrainConfig, _atomic_save, train

SUBCOMMANDS = ("find", "count", "train", "recipe")
EPILOG = """\
MODEL is timm:NAME (e.g. timm:efficientnet_b0) or path/to/file.py:factory (a function returning an
nn.Module). Budgets: 250M, 1.2G, 2.5e8, 800K, or 60% of the original. MACs count one per multiply-add
and include the PDE iterations (see the README).

examples:
  condense timm:efficientnet_b0 --budget 250M
  condense timm:resnet50 --budget 2G --params 15M -o out/resnet50-2g
  condense models.py:resnet32 --input-size 3x32x32 --budget 40% --layer global --K 3
  condense find timm:mobilenetv2_100
  condense timm:efficientnet_b0 --latency 12ms --compiled --threads 2
  condense count out/resnet50-2g

other commands (each has --help):
  condense find MODEL              list the runs of repeated blocks
  condense count MODEL_OR_DIR      MACs and parameters per module
  condense train MODEL_OR_DIR --data SPEC --epochs N [--teacher MODEL]   train / distil
  condense recipe list | footprint [FILE...] | run FILE [--seeds 0,1,2]  the paper's experiments
  condense search MODEL --data SPEC --budget B --trials N                Pareto search (Optuna)
  condense export STUDY_DIR --trial N                                    a searched plan as a model dir
  condense compare STUDY_DIR STUDY_DIR [--plot PNG]                      hypervolume of searches' fronts
  condense bench DIR_OR_MODEL [--against MODEL]                          time condensed vs original
  condense export-onnx DIR [-o FILE]                                     ONNX, checked under onnxruntime
"""


def _option_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key, value


def _common(p: argparse.ArgumentParser, input_size_help: str | None = None) -> None:
    p.add_argument(
        "--input-size",
        metavar="CxHxW",
        help=input_size_help
        or "input size, e.g. 3x224x224 (default: the timm model's pretrained config, else 3x224x224)",
    )
    p.add_argument("--checkpoint", metavar="FILE", help="local weights (.pth or .safetensors) for MODEL")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense",
        formatter_class=HelpFormatter,
        epilog=EPILOG,
        description="Condense a CNN: replace repeated same-resolution blocks by PDE-based Global layers "
        "to fit a MAC and/or parameter budget, and save a model that loads back.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="timm:NAME, zoo:NAME (the paper's CIFAR/MNIST models) or path/to/file.py:factory"
    )
    p.add_argument("--budget", "--macs", dest="macs", metavar="MACS", help="MAC budget, e.g. 250M or 60%%")
    p.add_argument("--params", metavar="PARAMS", help="parameter budget, e.g. 2.5M or 50%%")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size for the model (timm/zoo kwarg)")
    _common(p)
    t = p.add_argument_group("latency budget (measured on this machine)")
    t.add_argument(
        "--latency",
        metavar="TIME",
        help="forward-pass budget, e.g. 12ms or 60%% of the original's; met "
        "by measuring a few candidate plans (K stays fixed, default 5)",
    )
    t.add_argument("--latency-batch", type=int, default=1, metavar="N", help="batch size it is measured at (default 1)")
    t.add_argument("--compiled", action="store_true", help="measure torch.compile'd models (default eager)")
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads while measuring and calibrating (default: torch's current count)",
    )
    t.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="device the latency is measured on: auto (CUDA "
        "when available, else CPU), cpu, cuda, cuda:N, mps (default auto)",
    )
    g = p.add_argument_group("layer")
    g.add_argument(
        "--layer",
        default="global",
        help="layer type: global, linearmix, explicit_rd, implicit_rd, circulant_rd (default global), "
        "or drop: delete the removed blocks, nothing in their place (no K or layer options)",
    )
    g.add_argument("--K", type=int, default=None, help="PDE steps (default 5, lowered if the budget needs it)")
    g.add_argument(
        "--fill-K",
        action="store_true",
        dest="fill_K",
        help="raise K (up to 20) to spend MAC budget the blocks leave over (costs time, little accuracy)",
    )
    g.add_argument(
        "--init",
        choices=("input", "block"),
        default=None,
        help="initial guess: the kept blocks' output (input, the paper's; the default) or a copy of "
        "the first replaced block (block; the default with --preserve)",
    )
    g.add_argument(
        "--preserve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start each new layer as the identity on a copy of the first replaced block, so "
        "pretrained weights lose little before fine-tuning (default: on with --checkpoint, unless "
        "--calibrate, which recovers more from the plain layers and leaves room in the budget)",
    )
    g.add_argument("--velocity", help="Global layer velocity: dwconv, separable, constant, zero")
    g.add_argument("--diffusion", help="Global layer diffusion: constant, dwconv")
    g.add_argument("--source", help="Global layer source f: identity, none, residual")
    g.add_argument("--boundary", help="periodic, replicate or zero")
    g.add_argument(
        "--option",
        action="append",
        type=_option_value,
        default=[],
        metavar="KEY=VALUE",
        help="any other layer option, e.g. --option dt=0.1 (repeatable)",
    )
    w = p.add_argument_group("width (channel pruning with Torch-Pruning, before the depth plan)")
    w.add_argument(
        "--width",
        metavar="W",
        default=None,
        help="also remove channels: a share of every channel group (0.25), one per run "
        "(layer1=0.25,layer3=0.5), auto: one share of every channel group chosen with the depth "
        "plan: one block out of every run, channels for the rest, every budget met as measured; or channels: "
        "the least share that meets the budgets with every block kept (default: none)",
    )
    w.add_argument(
        "--width-importance",
        choices=("l1", "group"),
        default="l1",
        help="how channels are ranked from the weights: l1 magnitude (default) or group norm",
    )
    w.add_argument(
        "--width-multiple",
        type=int,
        default=1,
        metavar="N",
        help="keep every pruned channel group of more than N channels at a multiple of N (CPU convolutions run "
        "a count between two multiples as slowly as the next one; 16 suits AVX-512, 8 AVX2; default 1: as "
        "the share leaves them)",
    )
    c = p.add_argument_group("calibration (distil the condensed model from the original before saving)")
    c.add_argument(
        "--calibrate",
        metavar="DATA",
        help="train the condensed model to reproduce the original's run "
        "outputs and logits on DATA's training images (labels unused; e.g. cifar10:PATH), then "
        "re-estimate BatchNorm; test accuracies before/after go to condensed.json",
    )
    c.add_argument(
        "--choose",
        action="store_true",
        help="with --calibrate: choose depth and width on the data: depth only and depth + width "
        "(--width auto), each with --layer and with drop, each calibrated briefly (2048 images) and scored "
        "on held-out training images; the most accurate is kept, then calibrated in full",
    )
    c.add_argument("--calib-images", type=int, default=None, metavar="N", help="training images used (default 10000)")
    c.add_argument("--calib-epochs", type=int, default=None, metavar="E", help="passes over them (default 1)")
    c.add_argument(
        "--calib-lr",
        default=None,
        metavar="LR",
        help="Adam's rate: auto (default: short probes from 1e-3 up or down, each scored on held-out "
        "calibration images; the rate that suits one model can spoil another) or a number",
    )
    c.add_argument(
        "--calib-test",
        type=int,
        default=None,
        metavar="N",
        help="test images the accuracies are measured on (default all; 0: none)",
    )
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="DIR", help="where to save (default: condensed/<model name>)")
    o.add_argument("--dry-run", action="store_true", help="plan and count only; save nothing")
    o.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    return p


def _sub_parser(name: str) -> argparse.ArgumentParser:
    if name == "find":
        p = argparse.ArgumentParser(
            prog="condense find",
            description="List the runs of repeated same-resolution blocks (changes nothing).",
            formatter_class=HelpFormatter,
        )
        p.add_argument("model", metavar="MODEL")
        p.add_argument("--json", action="store_true", help="print the runs as JSON")
    elif name == "recipe":
        p = argparse.ArgumentParser(
            prog="condense recipe",
            description="The paper's experiments as recipes "
            "(recipes/*.yaml, shipped with the package): list them, measure their "
            "footprints, or run one. FILE is a recipe file or a recipe's name.",
            formatter_class=HelpFormatter,
        )
        sub = p.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="the recipes and the paper's figures", formatter_class=HelpFormatter)
        fp = sub.add_parser(
            "footprint", help="dry run: MACs and params, measured against the paper's", formatter_class=HelpFormatter
        )
        fp.add_argument("files", nargs="*", metavar="FILE", help="recipe files or names (default: all)")
        run = sub.add_parser(
            "run", help="train a recipe and print measured against reported figures", formatter_class=HelpFormatter
        )
        run.add_argument("file", metavar="FILE", help="a recipe file or name, e.g. mnist_fig2_cnn")
        run.add_argument(
            "--epochs", type=int, default=None, help="override the schedule's length (milestones scale along)"
        )
        run.add_argument(
            "--variant",
            choices=("condensed", "baseline"),
            default="condensed",
            help="train the model the plan makes, or the original",
        )
        run.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images")
        run.add_argument("--data", default=None, help="replace the recipe's data spec")
        run.add_argument(
            "-o",
            "--output",
            metavar="DIR",
            help="default runs/<recipe>-<variant>; with --seed or --seeds each seed's run goes in DIR/seed<S>",
        )
        seeds = run.add_mutually_exclusive_group()
        seeds.add_argument("--seed", type=_seed, default=None, metavar="S", help="random seed (default: the recipe's)")
        seeds.add_argument(
            "--seeds",
            type=int_list_type("--seeds", distinct=True),
            default=None,
            metavar="S1,S2,...",
            help="run these seeds in turn and print mean ± std (and a measured: block for the recipe)",
        )
        run.add_argument(
            "--skip-done",
            action="store_true",
            help="reuse a seed whose DIR/seed<S>/metrics.json was "
            "written with the same recipe, variant and training options, instead of training it again",
        )
        run.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads for training")
        run.add_argument(
            "--device",
            default="auto",
            metavar="DEV",
            help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps",
        )
        run.add_argument("--overwrite", action="store_true", help="start again in an output that holds a run")
        for q in (p, fp, run):
            q.add_argument("--debug", action="store_true", help="show tracebacks")
        return p
    elif name == "train":
        p = argparse.ArgumentParser(
            prog="condense train",
            description="Train a model or a condensed-model directory on local data, "
            "optionally distilling from the original (--teacher). Checkpoints every epoch; --resume continues.",
            formatter_class=HelpFormatter,
            epilog="data specs: mnist:PATH (.npz or idx dir), cifar10:PATH / cifar100:PATH (pickle batches, an "
            "ImageFolder tree or its .tar.gz), imagefolder:PATH. Multi-process: torchrun --nproc_per_node=N "
            "$(which condense) train ...",
        )
        p.add_argument("model", metavar="MODEL_OR_DIR")
        p.add_argument("--data", required=True, metavar="SPEC", help="the data set (see below)")
        p.add_argument("--epochs", type=int, required=True, help="epochs to train")
        p.add_argument("--batch-size", type=int, default=128, help="images per step")
        p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
        p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
        p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4, help="weight decay")
        p.add_argument("--optimizer", default="sgd", help="sgd or a timm optimizer name (adamw, rmsproptf, ...)")
        p.add_argument(
            "--schedule", choices=("cosine", "step", "constant"), default="cosine", help="learning-rate schedule"
        )
        p.add_argument("--milestones", default="", help="epochs for the step schedule, e.g. 150,225")
        p.add_argument("--gamma", type=float, default=0.1, help="learning-rate factor at each milestone")
        p.add_argument("--warmup-epochs", type=int, default=0, help="epochs of linear learning-rate warm-up")
        p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the loss")
        p.add_argument(
            "--amp",
            nargs="?",
            const="bf16",
            default=None,
            choices=("bf16", "fp16"),
            help="autocast: bf16 (also --amp alone) or fp16 (with a gradient scaler) (default: off)",
        )
        p.add_argument(
            "--device",
            default="auto",
            metavar="DEV",
            help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps",
        )
        p.add_argument("--channels-last", action="store_true", help="channels-last memory format for model and batches")
        p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
        p.add_argument(
            "--clip-grad",
            type=float,
            default=None,
            metavar="NORM",
            help="clip the gradients' total 2-norm to NORM before every step (default: no clipping)",
        )
        p.add_argument(
            "--decay-norm-and-bias",
            action="store_true",
            help="weight decay on norm weights and biases too (default: on conv/linear weights only)",
        )
        p.add_argument("--seed", type=int, default=0, help="random seed (initial weights, data order, augmentation)")
        p.add_argument(
            "--augment",
            choices=AUGMENTS,
            default=None,
            help="training augmentation: none; crop-flip (a random crop of the padded image and a "
            "horizontal flip, as for CIFAR); timm (timm's transform, imagefolder: data only). "
            "Default: the data's: none for grey images (digits, letters), timm for photos of "
            "128 pixels or more, else crop-flip",
        )
        p.add_argument(
            "--no-augment", dest="augment", action="store_const", const="none", help="the same as --augment none"
        )
        p.add_argument(
            "--threads",
            type=int,
            default=None,
            metavar="N",
            help="torch threads for training (default: torch's current count; one per core, fewer on a shared machine)",
        )
        p.add_argument("--teacher", metavar="MODEL_OR_DIR", help="distil from this model (e.g. the original)")
        p.add_argument("--teacher-checkpoint", metavar="FILE", help="local weights for --teacher")
        p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term")
        p.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature")
        p.add_argument(
            "--kd-features",
            type=float,
            nargs="?",
            const=1.0,
            default=None,
            metavar="WEIGHT",
            help="also match each condensed run's output to the teacher's (MODEL_OR_DIR a condensed "
            "directory, --teacher its original), weighted by WEIGHT (default 1)",
        )
        p.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images")
        p.add_argument("--limit-test", type=int, default=None, metavar="N", help="use N test images")
        p.add_argument("--max-steps", type=int, default=None, help="at most N steps per epoch")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        p.add_argument(
            "--overwrite", action="store_true", help="start again in an OUT that holds a run (its last.pt is replaced)"
        )
        _trust(p)
        p.add_argument("-o", "--output", metavar="DIR", help="output directory (default runs/<name>)")
    else:
        p = argparse.ArgumentParser(
            prog="condense count",
            description="MACs and parameters of a model or of a condensed-model directory.",
            formatter_class=HelpFormatter,
        )
        p.add_argument("model", metavar="MODEL_OR_DIR")
        p.add_argument("--depth", type=int, default=2, help="module depth of the per-module table")
        p.add_argument("--json", action="store_true", help="print the totals as JSON")
        _trust(p)
    _common(
        p,
        "input size the data is read at, e.g. 3x32x32 (default: the size a condensed directory was "
        "made for, else the data's own: MNIST and CIFAR as stored, imagefolder: small images at "
        "their size, photos at 224x224)"
        if name == "train"
        else None,
    )
    return p


def _trust(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let a directory whose model is a file.py:factory "
        "import that file (it runs; never done without this flag)",
    )


def _load_model(text: str, checkpoint: str | None, num_classes: int | None = None):
    if is_model_dir(text):
        raise CondenseError(
            f"{text!r} is a directory; this command takes a model spec",
            "write timm:NAME, zoo:NAME or path/to/file.py:factory",
        )
    # --num-classes: asked for explicitly, passed as given (a model keyword, not a class count to match)
    r = resolve_model(
        text, checkpoint=checkpoint, model_kwargs={"num_classes": num_classes} if num_classes is not None else None
    )
    return r.spec, r.model, r.input_size


def _preserve(args) -> bool:
    """--preserve as given, else on for a checkpoint without --calibrate (a preserved layer keeps a copy of
    a block, so it costs MACs; calibration distils the plain layers instead, and recovers more: see the
    README's measurements)."""
    if args.preserve is not None:
        return args.preserve
    return args.checkpoint is not None and getattr(args, "calibrate", None) is None


def _output_guard(args, inputs):
    """Before any work: the folder the main command will save to (``-o``, else ``condensed/<model>``) must
    not hold the input or the current folder, nor anything condense did not write; it is then locked until
    the command ends, so a second command writing it at the same time is refused."""
    if args.dry_run:
        return contextlib.nullcontext()
    if args.output is not None:
        target = Path(args.output)
    elif is_model_dir(args.model):
        return contextlib.nullcontext()  # _load_model says what is wrong
    else:
        target = Path("condensed") / parse_model_spec(args.model).slug
    check_output(target, inputs)
    claim_folder(target, "condensed-model", legacy=_legacy_model_dir)
    return output_lock(target)


def _size(args, default) -> tuple[int, int, int]:
    return parse_input_size(args.input_size) if args.input_size is not None else (default or (3, 224, 224))


_OWN_FLAGS = {
    "K": "--K",
    "init": "--init",
    "layer": "--layer",
    "preserve": "--preserve",
    "fill_K": "--fill-K",
    "seed": "--seed",
    "velocity": "--velocity",
    "diffusion": "--diffusion",
    "source": "--source",
    "boundary": "--boundary",
}


def _layer_options(args) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs plus the Global layer's own flags; a key given twice, or one that has
    its own flag, is an error (it would silently override, or collide with, the flag)."""
    options: dict[str, Any] = {}
    for key, value in args.option:
        if key in _OWN_FLAGS:
            raise CondenseError(
                f"--option {key}={value!r}: {key} has its own flag", f"write {_OWN_FLAGS[key]} {value} instead"
            )
        if key in options and options[key] != value:
            raise CondenseError(f"--option {key} is given twice ({options[key]!r} and {value!r})", "give it once")
        options[key] = value
    for name in ("velocity", "diffusion", "source", "boundary"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def _calibration_options(args) -> dict[str, Any] | None:
    """``condense.calibrate``'s options from --calibrate / --calib-*, checked (None without --calibrate)."""
    given = [f"--calib-{n}" for n in ("images", "epochs", "lr", "test") if getattr(args, f"calib_{n}") is not None]
    if args.calibrate is None:
        if given or args.choose:
            flag = given[0] if given else "--choose"
            raise CondenseError(f"{flag} needs --calibrate DATA", "add --calibrate cifar10:PATH (or drop it)")
        return None
    if args.choose and args.width is not None:
        raise CondenseError("--choose chooses the width itself", "drop --width (or --choose)")
    if args.choose and args.layer == "drop":
        raise CondenseError("--choose already tries drop beside the PDE layer", "drop --layer drop (or --choose)")
    if args.dry_run:
        raise CondenseError("--calibrate with --dry-run: a dry run saves nothing to calibrate", "drop one of them")
    for flag, value, low in (
        ("--calib-images", args.calib_images, 1),
        ("--calib-epochs", args.calib_epochs, 1),
        ("--calib-test", args.calib_test, 0),
    ):
        if value is not None and value < low:
            raise CondenseError(f"{flag} {value} must be >= {low}")
    spec = parse_data_spec(args.calibrate)  # a malformed spec or a missing path: before any work
    if not spec.path.exists():
        raise CondenseError(f"{spec}: {spec.path} does not exist", "check the path (it is read, never downloaded)")
    default = CalibrateConfig()
    return {
        "images": args.calib_images or default.images,
        "epochs": args.calib_epochs or default.epochs,
        "lr": default.lr if args.calib_lr is None else parse_lr(args.calib_lr),
        "test_images": args.calib_test,
    }


def _run_condense(args, console) -> int:
    t0 = time.perf_counter()
    if args.width_multiple > 1 and args.width is None and not args.choose:
        raise CondenseError("--width-multiple applies to pruned channels", "add --width (or --choose), or drop it")
    calib = _calibration_options(args)  # bad calibration options: an error before any work
    options = _layer_options(args)
    setting = None
    if args.latency is not None:
        parse_latency(args.latency)
        setting = LatencySetting(
            batch=args.latency_batch,
            mode="compiled" if args.compiled else "eager",
            threads=args.threads,
            device=args.device,
        )
    inputs = [args.checkpoint, args.model.rpartition(":")[0] if ".py:" in args.model else None]
    with _output_guard(args, inputs), console.status("building the model", spinner="dots") as status:
        spec, model, default = _load_model(args.model, args.checkpoint, args.num_classes)
        size = _size(args, default)
        bundle = None
        if calib is not None:  # an unreadable data spec: an error before the fit
            status.update(f"loading {args.calibrate}")
            bundle = load_data(
                args.calibrate, input_size=size, limit_train=calib["images"], limit_test=calib["test_images"] or None
            )
        plan_options = dict(
            layer=args.layer,
            init=args.init,
            K=args.K,
            fill_K=args.fill_K,
            preserve=_preserve(args),
            latency=args.latency,
            latency_setting=setting,
            width=args.width,
            width_importance=args.width_importance,
            width_multiple=args.width_multiple,
            **options,
        )
        target = dict(macs=args.macs, params=args.params, input_size=size, progress=lambda msg: status.update(msg))
        if bundle is not None and args.threads is not None:  # choosing and calibrating train on these threads
            torch.set_num_threads(args.threads)
        choice = None
        if args.choose:
            images, score_images = short_split(bundle.train_size)
            choice = choose(
                model,
                bundle,
                images=images,
                score_images=score_images,
                device=args.device,
                **target,
                **{k: v for k, v in plan_options.items() if k != "width"},
            )
            plan_options = dict(choice.options)
        result = fit(model, **target, **plan_options)
        calibration = None
        if bundle is not None and (result.plan.choices or result.width is not None):
            calibration = calibrate(
                result, model, bundle, **calib, device=args.device, progress=lambda msg: status.update(msg)
            )
        out = None
        if not args.dry_run and (result.plan.choices or result.width is not None):
            out = Path(args.output or Path("condensed") / spec.slug)
            status.update(f"saving to {out}")
            extra = {
                **({"latency": result.latency.to_dict()} if result.latency else {}),
                **({"calibration": calibration.to_dict()} if calibration else {}),
                **({"choice": choice.to_dict()} if choice else {}),
            }
            save(
                result,
                out,
                spec=spec,
                checkpoint=args.checkpoint,
                inputs=inputs,
                model_kwargs={"num_classes": args.num_classes} if args.num_classes else None,
                extra=extra or None,
            )
    elapsed = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(spec),
                    "input_size": list(size),
                    "message": result.message,
                    "macs_before": result.macs_before,
                    "macs_after": result.macs_after,
                    "params_before": result.params_before,
                    "params_after": result.params_after,
                    "macs_budget": result.macs_budget,
                    "params_budget": result.params_budget,
                    "latency": result.latency.to_dict() if result.latency else None,
                    "calibration": calibration.to_dict() if calibration else None,
                    "choice": choice.to_dict() if choice else None,
                    "width": {k: v for k, v in result.width.to_dict().items() if k != "history"}
                    if result.width
                    else None,
                    "plan": result.plan.to_dict(),
                    "output": str(out) if out else None,
                    "seconds": round(elapsed, 2),
                    "runs": [r.__dict__ | {"shape": list(r.shape)} for r in result.rows],
                },
                indent=2,
            )
        )
        return 0
    table = Table(title=f"{spec} at {'x'.join(map(str, size))}", title_justify="left")
    wide = result.width is not None
    for col in ("run", "block", "CxHxW", "blocks", *(["channels"] if wide else []), "new layer", "MACs", "params"):
        table.add_column(col, justify="right" if col in ("MACs", "params") else "left")
    for r in result.rows:
        blocks = f"{r.r} -> {r.m}" + (" + 1" if r.layer and r.layer != "drop" else "")
        table.add_row(
            r.path,
            r.block_class,
            "x".join(map(str, r.shape)),
            blocks,
            *([f"{r.channels[0]} -> {r.channels[1]}" if r.channels else "-"] if wide else []),
            (r.layer + (f" K={r.K}" if r.K is not None else "")) if r.layer else "-",
            f"{format_count(r.macs_before)} -> {format_count(r.macs_after)}",
            f"{format_count(r.params_before)} -> {format_count(r.params_after)}",
        )
    table.add_section()
    table.add_row(
        "[bold]total[/]",
        "",
        "",
        "",
        *([""] if wide else []),
        "",
        f"{format_count(result.macs_before)} -> [bold]{format_count(result.macs_after)}[/]",
        f"{format_count(result.params_before)} -> [bold]{format_count(result.params_after)}[/]",
    )
    table.add_row(
        "ratio", "", "", "", *([""] if wide else []), "", f"{result.mac_ratio:.2f}x", f"{result.param_ratio:.2f}x"
    )
    console.print(table)
    budgets = []
    if result.macs_budget is not None:
        budgets.append(f"MACs {format_count(result.macs_after)} <= {format_count(result.macs_budget)}")
    if result.params_budget is not None:
        budgets.append(f"params {format_count(result.params_after)} <= {format_count(result.params_budget)}")
    if result.latency is not None:
        lat = result.latency
        budgets.append(f"latency {format_ms(lat.after_ms)} <= {format_ms(lat.budget_ms)}")
        console.print(
            "latency candidates (MACs -> measured): "
            + ", ".join(f"{format_count(m)} -> {format_ms(t)}" for m, t in lat.candidates),
            highlight=False,
        )
        if lat.drop_candidates:
            console.print(
                "with layer 'drop' (MACs -> measured): "
                + ", ".join(f"{format_count(m)} -> {format_ms(t)}" for m, t in lat.drop_candidates),
                highlight=False,
            )
    console.print(result.message + (f"; budget met as measured: {', '.join(budgets)}" if budgets else ""))
    if choice is not None:
        console.print(choice.summary(), highlight=False)
    if calibration is not None:
        console.print(calibration.summary(), highlight=False)
    if out:
        trust = ", trust_code=True" if spec.kind == "file" else ""
        console.print(f"saved to [bold]{out}[/] (load with condense.load({str(out)!r}{trust})) in {elapsed:.1f}s")
    else:
        console.print(f"nothing saved ({'dry run' if args.dry_run else 'no change'}) in {elapsed:.1f}s")
    return 0


def _run_find(args, console) -> int:
    spec, model, default = _load_model(args.model, args.checkpoint)
    with console.status("tracing"):
        found = find_runs(model, _size(args, default))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": r.path,
                        "blocks": list(r.blocks),
                        "block_class": r.block_class,
                        "r": r.r,
                        "shape": list(r.input_shape),
                        "kind": r.kind,
                        "macs": list(r.macs),
                        "params": list(r.params),
                    }
                    for r in found.runs
                ],
                indent=2,
            )
        )
    else:
        console.print(found.summary())
    return 0


def _run_count(args, console) -> int:
    r = resolve_model(args.model, checkpoint=args.checkpoint, trust_code=args.trust_code)
    model, default, label = r.model, r.input_size, (r.label if r.is_directory else str(r.spec))
    size = _size(args, default)
    with console.status("counting"):
        df = count(model, size)
    if args.json:
        print(
            json.dumps(
                {"model": label, "input_size": list(size), "macs": df.attrs["macs"], "params": df.attrs["params"]}
            )
        )
        return 0
    table = Table(
        "module", "type", "MACs", "params", title=f"{label} at {'x'.join(map(str, size))}", title_justify="left"
    )
    for name, row in df[df.depth <= args.depth].iterrows():
        table.add_row(name or "(total)", row.type, format_count(row.macs), format_count(row.params))
    console.print(table)
    console.print(f"total: {format_count(df.attrs['macs'])} MACs, {format_count(df.attrs['params'])} params")
    return 0


def _run_train(args, console) -> int:
    milestones = parse_int_list(args.milestones or "", "--milestones", example="150,225", empty_ok=True)
    device = resolve_device(args.device)  # a device that is not here: an error before anything is read or written
    if args.threads is not None:
        if args.threads < 1:
            raise CondenseError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        milestones=milestones,
        gamma=args.gamma,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        amp=args.amp,
        seed=args.seed,
        channels_last=args.channels_last,
        compile=args.compile,
        clip_grad_norm=args.clip_grad,
        decay_norm_and_bias=args.decay_norm_and_bias,
        augment=args.augment or True,
        kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature,
        max_steps_per_epoch=args.max_steps,
        kd_features=args.kd_features or 0.0,
    )
    if config.kd_features and not args.teacher:
        raise CondenseError("--kd-features needs --teacher (the original the directory was condensed from)")
    with console.status("loading data"):
        bundle = load_data(
            args.data,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
            input_size=_train_input_size(args),
            augment=args.augment,
        )
    torch.manual_seed(args.seed)  # a model built here starts from the seed's weights: one seed, one result
    student = resolve_model(
        args.model, checkpoint=args.checkpoint, num_classes=bundle.num_classes, trust_code=args.trust_code
    )
    model, name, meta = student.model, Path(student.label).name, student.meta
    channels = (student.input_size or (None,))[0] or _input_channels(model)
    if args.input_size is None and channels and bundle.input_size[0] != channels:
        # the model takes other channels than the data's default (grey letters for a colour net, or the
        # other way round): read the data as the model takes it
        with console.status("loading data"):
            bundle = load_data(
                args.data,
                limit_train=args.limit_train,
                limit_test=args.limit_test,
                input_size=(channels, *bundle.input_size[1:]),
                augment=args.augment,
            )
    teacher = None
    if args.teacher:
        teacher = resolve_model(
            args.teacher, checkpoint=args.teacher_checkpoint, num_classes=bundle.num_classes, trust_code=args.trust_code
        ).model
    features = _feature_pairs(meta, teacher, bundle) if config.kd_features else None
    out = check_output(
        args.output or Path("runs") / name, [args.model, args.checkpoint, args.teacher, args.teacher_checkpoint]
    )
    console.print(
        f"training on {bundle.name} ({bundle.num_classes} classes, {bundle.train_size} training images) at "
        f"{'x'.join(map(str, bundle.input_size))}; augmentation: {bundle.augment}"
        f"{' (the data default)' if args.augment is None else ''}; torch threads: {torch.get_num_threads()}"
        f"{'' if args.threads else ' (torch default)'}; device: {describe_device(device)}"
        f"{'; amp ' + config.amp if config.amp else ''}",
        highlight=False,
    )
    result = train(
        model,
        bundle,
        config,
        out_dir=out,
        teacher=teacher,
        resume=args.resume,
        device=device,
        overwrite=args.overwrite,
        extra_metrics={"model": args.model, "teacher_model": args.teacher},
        features=features,
    )
    if meta is not None:  # a condensed model stays a loadable directory, now with trained weights
        write_model_dir(out / "model", model, {**meta, "trained": {"data": bundle.name, "epochs": config.epochs}})
    else:
        _atomic_save(model.state_dict(), out / "model.pth")
    m = result.metrics
    console.print(
        f"test accuracy {m['test_acc']:.4f} (best {m['best_test_acc']:.4f}) after {m['epochs']} epochs; "
        f"{format_count(m['macs'])} MACs, {format_count(m['params'])} params; "
        f"metrics in {out / 'metrics.json'}"
    )
    return 0


def _feature_pairs(meta, teacher, bundle):
    """--kd-features: the condensed runs' (teacher module, student module) pairs, from the directory's plan
    and the runs traced on the teacher."""
    if meta is None:
        raise CondenseError(
            "--kd-features needs a condensed directory as MODEL_OR_DIR (its plan names the runs)",
            "condense the model first: condense MODEL -o DIR, then condense train DIR ...",
        )
    size = tuple(meta.get("input_size") or bundle.input_size)
    pairs = feature_pairs(find_runs(teacher, size, count=False), meta["plan"])
    if not pairs:
        raise CondenseError("--kd-features: the directory's plan condenses no run", "drop --kd-features")
    return pairs


def _input_channels(model) -> int | None:
    """The channels the model's first convolution takes (None if it has none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else None


def _train_input_size(args) -> tuple[int, int, int] | None:
    """--input-size, else the size a condensed directory was made for, else None (the data's own size)."""
    if args.input_size is not None:
        return parse_input_size(args.input_size)
    if is_model_dir(args.model):
        size = read_meta(args.model).get("input_size")
        return tuple(size) if size else None
    return None


def _pct(x) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _cnt(x) -> str:
    return "-" if x is None else format_count(x)


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer >= 0)")
    return int(text)


def _run_recipe(args, console) -> int:
    if args.action == "list":
        table = Table(
            "recipe",
            "model",
            "data",
            "plan",
            "paper acc",
            "measured acc",
            "paper params",
            "paper MACs",
            title="recipes (paper figures: condensed model, else baseline; measured: our runs, "
            "mean ± std of the final test accuracy)",
            title_justify="left",
        )
        for r in list_recipes():
            fig = r.paper.condensed or r.paper.baseline
            meas = r.measured.describe() if r.measured else "-"
            if r.measured and r.plan.kind != "none" and r.measured.variant == "baseline":
                meas += " baseline"
            table.add_row(
                r.name,
                r.model.spec,
                r.dataset,
                r.plan.describe(),
                _pct(fig.accuracy if fig else None),
                meas,
                _cnt(fig.params if fig else None),
                _cnt(fig.macs if fig else None),
            )
        console.print(table)
        return 0
    if args.action == "footprint":
        recipes = [load_recipe(f) for f in args.files] if args.files else list_recipes()
        table = Table(
            "recipe",
            "params",
            "paper",
            "MACs",
            "paper",
            "condensed params",
            "paper",
            "condensed MACs",
            "paper",
            title="footprints (dry run, measured vs paper)",
            title_justify="left",
        )
        with console.status("building and counting") as status:
            for r in recipes:
                status.update(f"counting {r.name}")
                f = footprint(r)
                table.add_row(
                    r.name,
                    _cnt(f["params"]),
                    _cnt(f["paper_params"]),
                    _cnt(f["macs"]),
                    _cnt(f["paper_macs"]),
                    _cnt(f["params_condensed"] if r.plan.kind != "none" else None),
                    _cnt(f["paper_params_condensed"]),
                    _cnt(f["macs_condensed"] if r.plan.kind != "none" else None),
                    _cnt(f["paper_macs_condensed"]),
                )
        console.print(table)
        return 0
    return _run_recipe_seeds(args, console, load_recipe(args.file))


def _run_recipe_seeds(args, console, r) -> int:
    """``condense recipe run``: one run (the recipe's seed, or --seed) or several (--seeds), then a table."""
    if args.threads is not None:
        if args.threads < 1:
            raise CondenseError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    seeds = list(args.seeds) if args.seeds else ([args.seed] if args.seed is not None else None)
    base = Path(args.output or Path("runs") / f"{r.name}-{args.variant}")
    runs = []  # (seed, metrics, out dir, reused)
    for seed in seeds or [None]:
        out = base if seed is None else base / f"seed{seed}"
        done = out / "metrics.json"
        if args.skip_done and seed is not None and done.is_file():
            m = json.loads(done.read_text())
            if (m.get("recipe"), m.get("variant"), m.get("config")) == (
                r.name,
                args.variant,
                train_config(r, epochs=args.epochs, seed=seed).to_dict(),
            ):
                console.print(f"seed {seed}: reusing {done}")
                runs.append((seed, m, out, True))
                continue
        if seeds:
            console.print(f"seed {seed} ({len(runs) + 1} of {len(seeds)}) -> {out}")
        m = run_recipe(
            r,
            epochs=args.epochs,
            out_dir=out,
            limit_train=args.limit_train,
            variant=args.variant,
            data=args.data,
            seed=seed,
            device=args.device,
            overwrite=args.overwrite,
        ).metrics
        runs.append((m["seed"], m, out, False))
    # plan: none trains the model as is: its figures are the paper's baseline ones
    fig = (r.paper.condensed if args.variant == "condensed" and r.plan.kind != "none" else r.paper.baseline) or None
    m = runs[-1][1]
    title = f"{r.name} ({args.variant}), {m['epochs']} epoch(s) of the paper's {r.train.epochs}"
    if len(runs) == 1:
        table = Table("", "measured", "paper", title=f"{title}, seed {m['seed']}", title_justify="left")
        table.add_row("test accuracy", _pct(100 * m["test_acc"]), _pct(fig.accuracy if fig else None))
        table.add_row("params", _cnt(m["params"]), _cnt(fig.params if fig else None))
        table.add_row("MACs", _cnt(m["macs"]), _cnt(fig.macs if fig else None))
        console.print(table)
        console.print(f"metrics in {runs[0][2] / 'metrics.json'}")
        return 0
    command = f"condense recipe run {args.file} --seeds {','.join(str(s) for s, *_ in runs)}" + "".join(
        f" {flag} {value}"
        for flag, value in (
            ("--epochs", args.epochs),
            ("--variant", args.variant),
            ("--limit-train", args.limit_train),
            ("--threads", args.threads),
        )
        if value is not None and not (flag == "--variant" and value == "condensed")
    )
    minutes = [mm["train_seconds_this_run"] / 60 for _, mm, _, reused in runs if "train_seconds_this_run" in mm]
    measured = MeasuredEntry(
        command=command,
        epochs=m["epochs"],
        seeds=tuple(s for s, *_ in runs),
        accuracy=tuple(round(100 * mm["test_acc"], 2) for _, mm, _, _ in runs),
        variant=args.variant,
        wall_minutes=round(sum(minutes) / len(minutes), 1) if minutes else None,
    )
    table = Table("seed", "test accuracy", "best epoch's", "minutes", title=title, title_justify="left")
    for (seed, mm, _, reused), acc in zip(runs, measured.accuracy):
        wall = mm.get("train_seconds_this_run")
        table.add_row(
            str(seed),
            _pct(acc),
            _pct(100 * mm["best_test_acc"]),
            ("-" if wall is None else f"{wall / 60:.1f}") + (" (reused)" if reused else ""),
        )
    table.add_row("mean ± std", f"{measured.mean:.2f} ± {measured.std:.2f}%", "", "")
    table.add_row("paper", _pct(fig.accuracy if fig else None), "", "")
    console.print(table)
    summary = dataclasses.asdict(measured) | {
        "mean": measured.mean,
        "std": measured.std,
        "recipe": r.name,
        "runs": [str(out) for *_, out, _ in runs],
    }
    (base / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"summary in {base / 'summary.json'}; for the recipe file:")
    console.print(
        "measured:\n"
        + "".join(
            f"  {k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}\n"
            for k, v in dataclasses.asdict(measured).items()
            if v not in (None, "")
        ),
        markup=False,
        highlight=False,
    )
    return 0


_VALUE_OPTIONS = ("--budget", "--macs", "--params", "--latency", "--width")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--budget -5M`` -> ``--budget=-5M``, so a negative budget reaches the budget parser (and its error)
    instead of argparse's usage message."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if (
            argv[i] in _VALUE_OPTIONS
            and i + 1 < len(argv)
            and argv[i + 1][:1] == "-"
            and argv[i + 1][1:2] in "0123456789."
        ):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    if argv and argv[0] == "export-onnx":
        return export_onnx_main(argv[1:])
    if argv and argv[0] in ("search", "export", "compare"):  # the Optuna search: the top-level search package
        # search is a package above condense (it imports condense): reached when its command runs, never at import
        from search import compare_main, export_main, search_main

        return {"search": search_main, "export": export_main, "compare": compare_main}[argv[0]](argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        args = _sub_parser(argv[0]).parse_args(argv[1:])
        runner = {"find": _run_find, "count": _run_count, "train": _run_train, "recipe": _run_recipe}[argv[0]]
    else:
        args = _main_parser().parse_args(argv)
        runner = _run_condense
    console = Console(stderr=bool(getattr(args, "json", False)), width=None if sys.stdout.isatty() else 120)
    return run_command(lambda: runner(args, console), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
