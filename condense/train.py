"""Training and distillation of (condensed) models: SGD or timm optimizers, schedules, checkpoints.

In: a model, data (a spec like ``cifar10:PATH`` or a ``DataBundle``), a ``TrainConfig``, optionally a
teacher. Out: a ``TrainResult`` (final metrics, per-epoch history), and in ``out_dir``: ``last.pt`` (a
checkpoint every epoch, written atomically), ``metrics.json``. Never: downloads anything, or changes the
model's architecture.

Resuming (``resume=True``) restores the model, optimizer, epoch, history and random states from
``last.pt`` and continues with the next epoch; the data order of an epoch depends only on (seed, epoch),
so an interrupted run resumed from its last checkpoint gives the same weights as an uninterrupted one.

Multi-process training: launched with ``torchrun --nproc_per_node=N``, ``train`` joins the process group
(gloo on CPU, nccl on CUDA), wraps the model in DistributedDataParallel and shards every epoch's data by
rank; rank 0 alone writes files and shows progress, and test accuracy is summed over all ranks.

The run setup (``prepare_run`` -> ``RunSetup``: data, device, process group, output folder, the checkpoint
to resume, seeds; then the loop's shared parts: batches, schedule, autocast, optimizer, ``last.pt``) is
the one ``train`` and ``condense.train_supernet`` both use.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ._calibrate import FeatureTap, feature_loss
from ._count import macs_and_params
from ._device import device_record, resolve_device
from ._errors import ConfigError, CondenseError
from ._models import check_finite, fit_state
from ._write import (
    MANIFEST,
    atomic_torch_save,
    atomic_write,
    claim_folder,
    foreign_files,
    os_error,
    output_lock,
    write_manifest,
)
from .data import AUGMENTS, load_data

SCHEDULES = ("cosine", "step", "constant")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. ``milestones`` are epochs (step schedule, lr *= gamma at each). ``optimizer`` is
    ``sgd`` (momentum, optional Nesterov) or any timm optimizer name (e.g. ``adamw``, ``rmsproptf``).
    With a teacher, the loss is ``kd_alpha * T^2 * KL(teacher/T || student/T) + (1 - kd_alpha) * CE``.
    ``clip_grad_norm``: the gradients' total 2-norm is clipped to it before every step (None: no clipping).
    ``decay_norm_and_bias``: weight decay also on 1-d parameters (norm weights, biases; default: not).
    ``augment``: True (the data's default augmentation, ``DataBundle.augment``), False (none) or one of
    ``condense.data.AUGMENTS`` (``none``, ``crop-flip``, ``timm``). ``kd_features``: with a teacher and the
    condensed runs' feature pairs (``train(features=...)``, ``condense.calibrate``'s), adds this weight times
    the per-run feature loss (each run's output matched to the teacher's, ``condense._calibrate``); 0: off."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    optimizer: str = "sgd"
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    amp: bool | str | None = False
    seed: int = 0
    augment: bool | str = True
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    kd_features: float = 0.0
    max_steps_per_epoch: int | None = None
    clip_grad_norm: float | None = None
    decay_norm_and_bias: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        def bad(field, why):
            raise ConfigError(f"train option {field}={getattr(self, field)!r}: {why}")

        amp = self.amp
        amp = ("bf16" if amp else None) if isinstance(amp, bool) or amp is None else str(amp).lower()
        if amp not in AMP_DTYPES and amp is not None:
            bad("amp", f"must be one of {', '.join(AMP_DTYPES)} (or off)")
        object.__setattr__(self, "amp", amp)

        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "must be an integer >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad("batch_size", "must be an integer >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if any(m < 1 or m > self.epochs for m in self.milestones):
            bad("milestones", f"must be epochs in [1, {self.epochs}]")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.kd_alpha <= 1:
            bad("kd_alpha", "must be in [0, 1]")
        if not self.kd_temperature > 0:
            bad("kd_temperature", "must be > 0")
        if (
            isinstance(self.kd_features, bool)
            or not isinstance(self.kd_features, (int, float))
            or not 0 <= self.kd_features < math.inf
        ):
            bad("kd_features", "must be a number >= 0 (0: off)")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.warmup_epochs:
            bad("warmup_epochs", "must be in [0, epochs)")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            bad("max_steps_per_epoch", "must be >= 1")
        if not isinstance(self.augment, bool) and self.augment not in AUGMENTS:
            bad("augment", f"must be true (the data's default), false, or one of {', '.join(AUGMENTS)}")
        if self.clip_grad_norm is not None and (
            isinstance(self.clip_grad_norm, bool)
            or not isinstance(self.clip_grad_norm, (int, float))
            or not 0 < self.clip_grad_norm < math.inf
        ):
            bad("clip_grad_norm", "must be a number > 0 (or None: no clipping)")
        if not isinstance(self.decay_norm_and_bias, bool):
            bad("decay_norm_and_bias", "must be true or false")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        if not self.kd_features:  # absent when off: checkpoints written before the option still resume
            del d["kd_features"]
        return d


@dataclasses.dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module


def lr_at(config: TrainConfig, epoch: float) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine / step / constant."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return config.lr * (epoch + 1e-3) / config.warmup_epochs
    if config.schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1e-9)
        return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, (epoch - config.warmup_epochs) / span)))
    if config.schedule == "step":
        return config.lr * config.gamma ** sum(1 for m in config.milestones if epoch >= m)
    return config.lr


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""
    kd = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    ce = F.cross_entropy(student, target, label_smoothing=label_smoothing)
    return alpha * kd + (1 - alpha) * ce


def _make_optimizer(model: nn.Module, config: TrainConfig):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not config.decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    try:
        from timm.optim import create_optimizer_v2  # heavy: loaded when first needed

        return create_optimizer_v2(
            model,
            opt=config.optimizer,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            filter_bias_and_bn=not config.decay_norm_and_bias,
        )
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}", "use sgd or a timm optimizer name") from err


def join_process_group(device: torch.device):
    """(rank, world_size, is_distributed); joins the process group under torchrun: NCCL for CUDA devices
    (one process per GPU, ``LOCAL_RANK`` picks it), gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _to(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on ``device``: pinned and copied without blocking for CUDA; channels-last 4-d maps if asked."""
    if x.device != device:
        if device.type == "cuda" and not x.is_pinned():
            x = x.pin_memory()
        x = x.to(device, non_blocking=device.type == "cuda")
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, amp: str | None):
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp or "bf16"), enabled=amp is not None)


def _rng_state() -> dict[str, Any]:
    """The random states as tensors (so a checkpoint loads with ``weights_only=True``), CUDA's where used."""
    version, words, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(state) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # a run resumed on another machine keeps CPU order only
    py = [int(v) for v in state["python"].tolist()]
    gauss = state["python_gauss"].tolist()
    random.setstate((py[0], tuple(py[1:]), gauss[0] if gauss else None))


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` through the one file writer (``condense._write``): a kill leaves the old file."""
    atomic_torch_save(obj, path)


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (a checkpoint that loads on any device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` through the one file writer (``condense._write``): a kill leaves the old file."""
    atomic_write(path, text)


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    """A training checkpoint (``last.pt``), unpickled with ``weights_only=True``: tensors, numbers, strings
    and containers only, so a file planted in a run folder cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CondenseError(
            f"{path} is not a training checkpoint this version reads safely ({first})",
            "start again with --overwrite (or a new -o DIR)",
        ) from None
    need = ("model", "optimizer", "epoch", "history", "rng", "config")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise CondenseError(f"{path} is not a condense training checkpoint", "start again with --overwrite")
    return state


def _damaged(path, what: str) -> CondenseError:
    what = str(what).strip().splitlines()[0][:160] if str(what).strip() else "unreadable"
    return CondenseError(
        f"{path} is a damaged training checkpoint ({what})", "start again with --overwrite (or a new -o DIR)"
    )


def check_checkpoint(state: dict[str, Any], path, config: TrainConfig) -> None:
    """The fields of a ``last.pt`` that resuming reads, checked before anything is loaded: ``epoch`` an
    integer within the run's epochs, a history of that many epochs with their accuracies, weights as
    tensors, an optimizer state with parameter groups, and random states of the right kinds."""
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= config.epochs:
        raise _damaged(path, f"epoch {epoch!r} is not an integer from 0 to {config.epochs}")
    history = state["history"]
    if (
        not isinstance(history, list)
        or len(history) != epoch
        or not all(
            isinstance(h, dict)
            and isinstance(h.get("test_acc"), (int, float))
            and not isinstance(h.get("test_acc"), bool)
            for h in history
        )
    ):
        raise _damaged(path, f"its history is not {epoch} epoch record(s) with a test accuracy")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise _damaged(path, "its weights are not a dict of tensors")
    opt = state["optimizer"]
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("param_groups"), list)
        or not opt["param_groups"]
        or not isinstance(opt.get("state"), dict)
    ):
        raise _damaged(path, "its optimizer state has no parameter groups")
    rng = state["rng"]
    if not isinstance(rng, dict) or not all(
        isinstance(rng.get(k), torch.Tensor) for k in ("torch", "python", "python_gauss")
    ):
        raise _damaged(path, "its random states are malformed")
    py = rng["python"]
    if (
        py.dtype != torch.int64
        or py.ndim != 1
        or py.numel() != 626
        or rng["torch"].dtype != torch.uint8
        or rng["python_gauss"].numel() > 1
    ):
        raise _damaged(path, "its random states are malformed")


def _outputs_of(model: nn.Module, bundle) -> int:
    """The number of outputs ``model`` gives for one test image (its class count)."""
    x, _ = next(iter(bundle.loader("test", 1, shuffle=False, augment=False)))
    was = model.training
    model.eval()
    param = next(iter(model.parameters()), None)
    with torch.no_grad():
        out = model(x.to(param.device) if param is not None else x)
    model.train(was)
    if out.ndim != 2:
        raise CondenseError(
            f"{type(model).__name__} gives outputs of shape {tuple(out.shape)}, not (batch, classes)",
            "train a classifier",
        )
    return int(out.shape[1])


def _classes_present(bundle) -> int | None:
    """How many distinct labels the training split holds (None where the source cannot say cheaply)."""
    source = bundle._source
    y = getattr(source, "y", None)
    if isinstance(y, dict) and "train" in y:
        return int(torch.as_tensor(y["train"]).unique().numel())
    split = (getattr(source, "data", None) or {}).get("train")
    targets = getattr(getattr(split, "base", None), "targets", None)
    indices = getattr(split, "indices", None)
    if targets is not None and indices is not None:
        return len({int(targets[i]) for i in indices})
    return None


def check_trainable(model: nn.Module, bundle, config: "TrainConfig", world_size: int = 1) -> int:
    """Checks before anything is written: the data has two classes or more, the model has an output for
    each, and an epoch has at least one step. Returns the steps per epoch (per process)."""
    present = _classes_present(bundle)
    if bundle.num_classes < 2 or (present is not None and present < 2):
        n = present if present is not None else bundle.num_classes
        raise CondenseError(
            f"the training data {bundle.name!r} has {n} class(es): nothing to learn",
            "give a data set with two classes or more",
        )
    outputs = _outputs_of(model, bundle)
    if outputs < bundle.num_classes:
        raise CondenseError(
            f"the model has {outputs} outputs but the data {bundle.name!r} has {bundle.num_classes} classes",
            "build the model with num_classes equal to the data's (--num-classes)",
        )
    per_rank = bundle.train_size // world_size
    steps = per_rank // config.batch_size
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    if steps < 1:
        raise CondenseError(
            f"{bundle.train_size} training image(s) make no full batch of {config.batch_size}"
            + (f" per process ({world_size} processes)" if world_size > 1 else ""),
            "lower --batch-size or raise --limit-train",
        )
    return steps


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    batch_size: int = 256,
    *,
    rank: int = 0,
    world_size: int = 1,
    amp: bool | str | None = False,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Test loss and top-1 accuracy of ``model`` on the test split (summed over ranks when distributed),
    on ``device`` (default: where the model's parameters are)."""
    was_training = model.training
    model.eval()
    param = next(iter(model.parameters()), None)
    if device is None:
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    amp = {True: "bf16", False: None}.get(amp, amp) if isinstance(amp, bool) else amp
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    loader = data.loader("test", batch_size, shuffle=False, augment=False, rank=rank, world_size=world_size)
    with torch.no_grad():
        for x, y in loader:
            x, y = _to(x, device, channels_last), _to(y, device)
            with _autocast(device, amp):
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
    loss_sum, correct = float(loss_sum), int(correct)  # one device sync per evaluation, not per batch
    if world_size > 1:
        t = torch.tensor(
            [loss_sum, correct, seen], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu"
        )
        dist.all_reduce(t)
        loss_sum, correct, seen = float(t[0]), int(t[1]), int(t[2])
    model.train(was_training)
    return {"test_loss": loss_sum / max(seen, 1), "test_acc": correct / max(seen, 1), "test_images": seen}


def with_augmentation(bundle, config: TrainConfig):
    """``(bundle, kind)``: the data as ``config`` trains on it and the augmentation its training batches
    get (``config.augment``: True keeps the data's default, False is none, a name picks that one)."""
    if config.augment is False:
        return bundle, "none"
    if config.augment is True:
        return bundle, bundle.augment
    return bundle.with_augment(config.augment), config.augment


def _plain_progress(progress: bool) -> bool:
    """Progress as one plain line per epoch: asked for, but the output is not a terminal (a log file)."""
    return progress and not sys.stdout.isatty()


def _epoch_line(record: dict[str, Any], epochs: int, lr: float) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}"
        f" | test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f} | "
        f"{record['images_per_s']:.0f} img/s, {record['epoch_seconds']:.1f} s, lr {lr:.4g}"
    )


RUN_KIND = "training-run"
RUN_FILES = ("last.pt", "metrics.json", "model.pth", "model/", "recipe.json")  # what train, `condense train`
# and `condense recipe run` write


def _legacy_run(folder: Path) -> set[str] | None:
    """A run folder written before manifests: it holds a checkpoint or metrics."""
    return set(RUN_FILES) if (folder / "last.pt").is_file() or (folder / "metrics.json").is_file() else None


@contextlib.contextmanager
def run_folder(out: str | os.PathLike):
    """The output folder of a training run, for the length of the run (``train`` and ``condense train``):
    refused if it holds anything but a run (files a user added to a run folder are kept, never touched),
    locked against a second writer, marked with the manifest of what a run writes, and removed again if the
    run fails before it wrote anything into a folder it created."""
    folder = Path(out)
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 alone writes
        yield folder
        return
    with output_lock(folder):
        if folder.is_dir() and any(folder.iterdir()) and foreign_files(folder, RUN_KIND, _legacy_run) is None:
            claim_folder(folder, RUN_KIND, legacy=_legacy_run, what="training run")  # names the problem
        elif not folder.is_dir():
            claim_folder(folder, RUN_KIND)  # a file or a link: refused
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_manifest(folder, RUN_KIND, RUN_FILES)
        except (OSError, CondenseError) as err:
            if created:
                _remove_if_unused(folder)
            raise (err if isinstance(err, CondenseError) else os_error(err, folder)) from None
        try:
            yield folder
        except BaseException:
            if created:
                _remove_if_unused(folder)
            raise


def _remove_if_unused(folder: Path) -> None:
    """Remove a run folder this process created if it holds nothing but the manifest (and a recipe's
    description, written before the run)."""
    try:
        if all(p.name in (MANIFEST, "recipe.json") for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass


def _owns_output(fn):
    """``train``'s output folder is held by ``run_folder`` for the whole call."""

    @functools.wraps(fn)
    def wrapper(*args, out_dir=None, **kwargs):
        if out_dir is None:
            return fn(*args, out_dir=None, **kwargs)
        with run_folder(out_dir):
            return fn(*args, out_dir=out_dir, **kwargs)

    return wrapper


@dataclasses.dataclass
class RunSetup:
    """A training run once ``prepare_run`` has set it up: the one run setup ``train`` and
    ``condense.train_supernet`` share. Its fields are what the loop trains with; its methods are the parts of
    a loop both use: the epoch's batches, the learning-rate schedule, batches on the device, autocast, the
    optimizer and gradient scaler, the teacher, restoring a resumed run and writing ``last.pt`` and
    ``metrics.json`` (rank 0 alone writes)."""

    config: TrainConfig
    bundle: Any  # the DataBundle, with the augmentation training batches get
    augment: str  # that augmentation (``with_augmentation``)
    device: torch.device
    rank: int
    world: int  # processes (1 without torchrun)
    distributed: bool
    out: Path | None  # the output folder (None: nothing is written)
    identity: Any  # the checkpoint's ``config``: a resumed run's must equal it
    resumed: dict[str, Any] | None  # the checkpoint to resume from, checked (None: a new run)

    @property
    def checkpoint(self) -> Path | None:
        """``last.pt`` in the output folder (None without one)."""
        return self.out / "last.pt" if self.out is not None else None

    def loader(self, epoch: int):
        """The training batches of ``epoch`` (this rank's shard; the order depends on (seed, epoch) only)."""
        c = self.config
        return self.bundle.loader(
            "train",
            c.batch_size,
            shuffle=True,
            augment=self.augment != "none",
            seed=c.seed,
            epoch=epoch,
            drop_last=True,
            rank=self.rank,
            world_size=self.world,
        )

    def steps(self, loader) -> int:
        """Steps of an epoch: the loader's, at most ``config.max_steps_per_epoch``."""
        n = self.config.max_steps_per_epoch
        return len(loader) if n is None else min(len(loader), n)

    def set_lr(self, optimizer, epoch: float) -> float:
        """Set the learning rate of (fractional) ``epoch`` (``lr_at``) on every group; returns it."""
        lr = lr_at(self.config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device (pinned and copied without blocking for CUDA; channels-last if asked)."""
        return _to(x, self.device, self.config.channels_last), _to(y, self.device)

    def autocast(self):
        """Autocast on the device's type with ``config.amp`` (off without it)."""
        return _autocast(self.device, self.config.amp)

    def optimizer(self, model: nn.Module):
        """``(optimizer, scaler)``: the optimizer of ``model``'s trainable parameters (``config.optimizer``,
        weight decay as configured) and the gradient scaler (enabled for fp16 autocast)."""
        optimizer = _make_optimizer(model, self.config)
        return optimizer, torch.amp.GradScaler(self.device.type, enabled=self.config.amp == "fp16")

    def teacher(self, teacher: nn.Module, memory_format: torch.memory_format = torch.preserve_format) -> nn.Module:
        """``teacher`` in eval mode on the device, its parameters frozen."""
        teacher.eval()
        teacher.to(device=self.device, memory_format=memory_format)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def restore(self, optimizer, scaler) -> tuple[list[dict[str, Any]], int]:
        """A resumed run's optimizer, scaler and random states (its weights are the caller's to load);
        returns its history and the epochs done (``[], 0`` for a new run)."""
        state = self.resumed
        if state is None:
            return [], 0
        try:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as err:
            raise _damaged(self.checkpoint, f"its optimizer or random state does not load: {err}") from None
        return list(state["history"]), int(state["epoch"])

    def save(
        self, model: nn.Module, optimizer, scaler, epoch: int, history: list[dict[str, Any]], **extra: Any
    ) -> None:
        """Write ``last.pt`` (rank 0, with an output folder): CPU tensors, numbers and strings only, so it
        loads with ``weights_only=True`` on any device; ``extra`` keys are added after the common ones."""
        if self.checkpoint is None or self.rank != 0:
            return
        _atomic_save(
            {
                "model": _cpu(model.state_dict()),
                "optimizer": _cpu(optimizer.state_dict()),
                "epoch": epoch,
                "history": history,
                "rng": _rng_state(),
                "config": self.identity,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "device": str(self.device),
                **extra,
            },
            self.checkpoint,
        )

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` (rank 0, with an output folder)."""
        if self.out is not None and self.rank == 0:
            write_text_atomic(self.out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")


def prepare_run(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = "auto",
    identity: Any = None,
    kind: str = "",
    check: Callable[[dict[str, Any], Path, int], None] | None = None,
) -> RunSetup:
    """The run setup ``train`` and ``condense.train_supernet`` share: everything before the first step, and
    every refusal before anything is written. The data (a spec is loaded; ``config.augment`` applied), the
    device (``resolve_device``) and the process group under torchrun (``join_process_group``),
    ``check_trainable(model, ...)``; the output folder (a file, a folder holding ``last.pt`` without
    ``resume`` or ``overwrite``, and both flags are refused); with ``resume`` the checkpoint (it must exist,
    load with ``weights_only=True`` and have been written with ``identity``, default ``config.to_dict()``;
    ``check(state, path, world_size)`` adds the caller's checks). Then the folder is made (rank 0) and the
    torch and Python seeds are set to ``config.seed``. ``kind`` names the run in the refusals (``supernet``:
    "already holds a supernet run", "other supernet or training options")."""
    config = config or TrainConfig()
    bundle = load_data(data) if isinstance(data, str) else data
    bundle, augment = with_augmentation(bundle, config)
    device = resolve_device(device)
    rank, world, distributed = join_process_group(device)
    out = Path(out_dir) if out_dir is not None else None
    check_trainable(model, bundle, config, world)
    if out is not None and out.exists() and not out.is_dir():
        raise CondenseError(f"output {str(out)!r} is a file", "choose a folder for -o")
    ckpt = out / "last.pt" if out is not None else None
    if ckpt is not None and ckpt.exists() and not resume and not overwrite:
        raise CondenseError(
            f"{out} already holds a {kind + ' ' if kind else ''}run (last.pt)",
            "continue it with --resume, start again with --overwrite, or choose another -o DIR",
        )
    if resume and overwrite:
        raise CondenseError("--resume and --overwrite contradict each other", "give one of them")
    identity = config.to_dict() if identity is None else identity
    resumed = None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise CondenseError(
                f"nothing to resume: {ckpt or 'no output directory'} does not exist",
                "run without --resume first, with the same -o DIR",
            )
        resumed = load_checkpoint_state(ckpt)
        if resumed.get("config") != identity:
            raise CondenseError(
                f"{ckpt} was written with other {kind + ' or ' if kind else ''}training options",
                "resume with the same options, or start a new -o DIR",
            )
        if check is not None:
            check(resumed, ckpt, world)
    if out is not None and rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, out) from None
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    return RunSetup(
        config=config,
        bundle=bundle,
        augment=augment,
        device=device,
        rank=rank,
        world=world,
        distributed=distributed,
        out=out,
        identity=identity,
        resumed=resumed,
    )


@_owns_output
def train(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    teacher: nn.Module | None = None,
    resume: bool = False,
    progress: bool = True,
    extra_metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = "auto",
    features: Any = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` (a spec string or a DataBundle) and return the result.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; the
    model (and teacher) are moved there, batches are copied there (pinned, without blocking on CUDA),
    autocast runs on its type (``config.amp``: ``bf16`` or ``fp16``, the latter with a gradient scaler).
    Checkpoints hold CPU tensors, so a run resumes on another device.

    ``out_dir`` holding a checkpoint is continued with ``resume=True``, started again with ``overwrite=True``,
    and refused otherwise. Bad setups (one class, more classes than outputs, no full batch, an unreadable
    or unsafe checkpoint) are one-line errors raised before anything is written.

    ``features``: the condensed runs' feature pairs (``condense._calibrate.feature_pairs(find_runs(teacher),
    plan)``), needed with ``config.kd_features``: each run's output is matched to the teacher's."""
    config = config or TrainConfig()
    if config.kd_features and (teacher is None or not features):
        raise ConfigError(
            "feature distillation (kd_features) needs a teacher and the condensed runs' feature pairs",
            "pass teacher= and features= (condense train DIR --teacher ORIGINAL --kd-features)",
        )

    def check(state: dict[str, Any], path: Path, _world: int) -> None:
        check_checkpoint(state, path, config)
        check_finite(state["model"], path)

    setup = prepare_run(
        model, data, config, out_dir=out_dir, resume=resume, overwrite=overwrite, device=device, check=check
    )
    bundle, augment, device, rank, world = setup.bundle, setup.augment, setup.device, setup.rank, setup.world
    fmt = torch.channels_last if config.channels_last else torch.preserve_format
    model.to(device=device, memory_format=fmt)
    net: nn.Module = model
    if setup.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    optimizer, scaler = setup.optimizer(model)
    if teacher is not None:
        setup.teacher(teacher, fmt)
    if setup.resumed is not None:
        fit_state(
            model,
            setup.resumed["model"],
            setup.checkpoint,
            hint="the checkpoint is of another model: start "
            "again with --overwrite, or resume the model it was written for",
        )
    history, start_epoch = setup.restore(optimizer, scaler)
    steps_per_epoch = None
    t_start = time.perf_counter()
    images_total = 0
    bar = None
    lines = rank == 0 and _plain_progress(progress)  # not a terminal: a rich bar would show nothing until the end
    if progress and rank == 0 and not lines:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        bar.start()
    taps = None
    try:
        if config.kd_features:  # hooks on both models, removed below whatever happens
            taps = (
                FeatureTap(model, [f.student for f in features], detach=False, what="the model"),
                FeatureTap(teacher, [f.teacher for f in features], detach=True, what="the teacher"),
            )
        for epoch in range(start_epoch, config.epochs):
            loader = setup.loader(epoch)
            steps_per_epoch = setup.steps(loader)
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, stats="") if bar else None
            net.train()
            loss_acc = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync a step
            correct_acc = torch.zeros((), dtype=torch.int64, device=device)
            feature_acc = torch.zeros((), dtype=torch.float64, device=device)
            seen, t0 = 0, time.perf_counter()
            every = 1 if device.type == "cpu" else 20  # read the device's figures (a sync) this often
            for step, (x, y) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                lr = setup.set_lr(optimizer, epoch + step / steps_per_epoch)
                x, y = setup.batch(x, y)
                with setup.autocast():
                    logits = net(x)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(x)
                        loss = distillation_loss(
                            logits.float(),
                            t_logits.float(),
                            y,
                            config.kd_alpha,
                            config.kd_temperature,
                            config.label_smoothing,
                        )
                    else:
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                    if taps is not None:  # each condensed run's output matched to the teacher's
                        f_loss, _ = feature_loss(features, taps[0].out, taps[1].out)
                        loss = loss + config.kd_features * f_loss
                        feature_acc += f_loss.detach().double() * len(y)
                        taps[0].out, taps[1].out = {}, {}
                if step % every == 0 and not torch.isfinite(loss):
                    raise CondenseError(
                        f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}",
                        "lower the learning rate (--lr)",
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                loss_acc += loss.detach().double() * len(y)
                correct_acc += (logits.argmax(1) == y).sum()
                seen += len(y)
                if bar and (step % every == 0 or step + 1 == steps_per_epoch):
                    rate = seen * world / max(time.perf_counter() - t0, 1e-9)
                    stats = f"loss {float(loss_acc) / seen:.3f} acc {int(correct_acc) / seen:.3f} {rate:.0f} img/s"
                    bar.update(task, completed=step + 1, stats=f"{stats} lr {lr:.4f}")
            loss_sum, correct = float(loss_acc), int(correct_acc)
            if not math.isfinite(loss_sum):
                raise CondenseError(
                    f"the loss became {loss_sum} in epoch {epoch + 1}", "lower the learning rate (--lr)"
                )
            images_total += seen * world
            epoch_time = time.perf_counter() - t0
            ev = evaluate(
                model,
                bundle,
                rank=rank,
                world_size=world,
                amp=config.amp,
                device=device,
                channels_last=config.channels_last,
            )
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "images_per_s": seen * world / max(epoch_time, 1e-9),
                "epoch_seconds": epoch_time,
                **ev,
            }
            if taps is not None:
                record["train_feature_loss"] = float(feature_acc) / max(seen, 1)
            history.append(record)
            if bar:
                bar.update(
                    task,
                    stats=f"loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} | "
                    f"test acc {ev['test_acc']:.4f}",
                )
            if lines:
                print(_epoch_line(record, config.epochs, lr_at(config, epoch)), flush=True)
            setup.save(model, optimizer, scaler, epoch + 1, history)
    finally:
        if bar:
            bar.stop()
        for tap in taps or ():
            tap.close()
    metrics = dict(history[-1]) if history else {}
    metrics.update(
        {
            "best_test_acc": max((h["test_acc"] for h in history), default=None),
            "epochs": config.epochs,
            "world_size": world,
            "config": config.to_dict(),
            "data": bundle.name,
            "num_classes": bundle.num_classes,
            "data_spec": str(bundle.spec) if bundle.spec is not None else None,
            "augment": augment,
            **device_record(device),
            "teacher": type(teacher).__name__ if teacher is not None else None,
            **({"kd_feature_runs": [f.run for f in features]} if taps is not None else {}),
            "train_seconds_this_run": time.perf_counter() - t_start,
        }
    )
    if rank == 0:
        was = model.training
        counted = model if device.type == "cpu" else copy.deepcopy(model).cpu()
        macs, params = macs_and_params(counted, bundle.input_size)
        model.train(was)
        metrics.update({"macs": macs, "params": params, "input_size": list(bundle.input_size)})
        metrics.update(extra_metrics or {})
        setup.write_metrics(metrics)
    return TrainResult(metrics=metrics, history=history, model=model)
