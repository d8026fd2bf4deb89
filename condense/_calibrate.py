"""Calibration: distil a condensed model from its original right after condensing, before any fine-tuning.

In: a ``FitResult`` (its model, runs and plan), the original model it was condensed from (the teacher) and
data (a spec such as ``cifar10:PATH`` or a ``DataBundle``) whose training images are used without their
labels. Out: ``result.model`` trained in place to reproduce the original's per-run outputs and logits, its
BatchNorm statistics re-estimated on the calibration images, and a ``Calibration`` record (images, epochs,
seconds, the per-run feature error before and after on held-out test images, and the test accuracy of the
original and of the condensed model before and after). A plan that pruned channels (``width``) is
distilled on the logits alone: its runs' outputs are narrower than the original's. Never: changes the
original (it runs in eval mode without gradients and gets its mode back), reads a training label, or
leaves a hook behind.

The per-run feature pairs and loss (``feature_pairs``, ``FeatureTap``, ``feature_loss``) are shared with
``condense train --kd-features`` (``condense.train``). A run's output is the feature map after its last block
in the original and after the new layer (``blocks[m]``, where the rewrite puts it) in the condensed model;
for a dense run (DenseNet) it is the parent's output, the concatenation. The loss of a run is the squared
error normalised by the teacher feature's mean square, ``||s - t||^2 / ||t||^2`` (so every run counts
alike whatever its scale), averaged over the runs, plus ``logit_weight`` times the KL divergence of the
softened logits (temperature ``temperature``, times T^2 as in Hinton et al.).

The learning rate (``lr``): a number, or ``"auto"`` (default), which picks it per model: short probes, each
from the condensed weights, at rates of ``LR_GRID`` (a walk from 1e-3 towards the better neighbour that stops
when the held-out loss rises), each scored by the calibration loss on the last ``PROBE_HELD_OUT`` calibration
images, which no probe trains on. Then the full calibration runs at the best rate. The grid stops at 3e-3: where
the probes picked 1e-2 (ResNet-20 with channel counts in multiples of 16 at 10% of its MACs, two seeds,
its probe loss 0.2% and 1.9% under 3e-3's) the plan fine-tuned to 52.55% and 54.10%, against 58.90% and
59.25% after 3e-3; 1e-2 never won after fine-tuning where measured. Why: the rate that
calibrates best differs by model and it matters after fine-tuning. Blocks dropped to 50-55% of the MACs,
5 epochs of fine-tuning on 10k CIFAR-10 images (one seed): a CIFAR ResNet-20 fine-tuned to 64.6% after
calibrating at 3e-3, 63.1% at 1e-3, 61.6% at 3e-4 (59.3% uncalibrated); a timm resnet18 to 68.65% at 3e-3,
71.1% at 1e-3, 71.05% at 3e-4, 70.8% at 1e-4 (70.75% uncalibrated). Its trained weights are close to what
the original computes; a large rate moves them away.

What is trained (``train``): ``"all"`` (default), every parameter of the condensed model, in train mode;
``"new"``, only the inserted layers, the rest frozen in eval mode. Adam, cosine decay to zero, no weight
decay; the images are a fixed seeded subset of the training split, without augmentation. The other defaults
were measured on a CIFAR-10 ResNet-20 (a 64.6% snapshot of a 10k-image training run) condensed to 50% of its
MACs (``preserve=False``), zero-shot top-1 on 2,000 test images, one seed, 1 epoch over 10,000 images on
one thread: as condensed 13.9%, BatchNorm re-estimated only 26.8%, ``train="new"`` 27.9% (lr 1e-3) and
29.5% (lr 1e-2): a layer that replaces blocks cannot mix channels as they did, while the kept blocks
around it can adapt. ``train="all"``: 54.1% (lr 1e-3, T = 4), 50.9% without the logit term, 57.1% at
lr 3e-3, 55.6% at lr 1e-2, 58.4% at lr 3e-3 and T = 1 (T = 1 is the default, and 3e-3 was the fixed rate
before ``"auto"``; 55.0% over 5,000 images, 59.9% over 2 epochs).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress  # Progress here is the callback type
from torch import nn

from ._bn import recalibrate_bn
from ._device import resolve_device
from ._errors import ConfigError, CondenseError
from ._fit import Plan
from .data import DataBundle, load_data

TRAIN = ("all", "new")
CHECK_IMAGES = 512  # held-out test images the per-run feature error is measured on
LR_AUTO = "auto"
LR_GRID = (3e-3, 1e-3, 3e-4, 1e-4)  # the rates lr="auto" probes, walking from LR_START (no 1e-2: see below)
LR_START = 1e-3
PROBE_HELD_OUT = 512  # calibration images the probes are scored on (the last of the seeded shuffle)
PROBE_SHARE = 4  # a probe trains on a quarter of the calibration images (at least PROBE_MIN)
PROBE_MIN = 256
Progress = Callable[[str], None]


# --- the per-run feature pairs and loss (shared with condense.train) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeaturePair:
    """One condensed run: ``teacher`` is the module whose output is the run's output in the original,
    ``student`` the one in the condensed model (the inserted layer, or for dense runs the parent)."""

    run: str
    teacher: str
    student: str


def feature_pairs(runs: Any, plan: Any) -> tuple[FeaturePair, ...]:
    """The feature pairs of every run ``plan`` condenses (m < r). ``runs``: a ``FindResult`` of the original
    or its runs; ``plan``: a ``Plan``, or its dict (``condensed.json``'s "plan")."""
    choices = plan.choices if isinstance(plan, Plan) else Plan.from_dict(plan).choices
    runs = getattr(runs, "runs", runs)
    by_path = {r.path: r for r in runs}
    unknown = [p for p in choices if p not in by_path]
    if unknown:
        raise CondenseError(
            f"the plan names run(s) the original does not have: {', '.join(map(repr, unknown))}",
            "pass the original the condensed model was made from",
        )
    out = []
    for run in runs:
        choice = choices.get(run.path)
        if choice is None or choice.m >= run.r:
            continue
        if run.kind == "dense":  # the run's output is the parent's concatenation
            parent = run.blocks[0].rpartition(".")[0]
            out.append(FeaturePair(run.path, parent, parent))
        else:
            out.append(FeaturePair(run.path, run.blocks[-1], run.blocks[choice.m]))
    return tuple(out)


class FeatureTap:
    """Forward hooks keeping the latest output of named modules of ``model`` in ``out`` (a copy, so a later
    in-place op cannot change it; detached with ``detach=True``). ``enabled = False`` keeps nothing.
    A context manager: the hooks are removed on exit (or ``close()``)."""

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool, what: str = "the model"):
        modules = dict(model.named_modules())
        paths = list(dict.fromkeys(paths))
        missing = [p for p in paths if p not in modules]
        if missing:
            raise CondenseError(
                f"{what} has no module {missing[0]!r} (a run's output)",
                "pass the original the condensed model was made from, and its condensed model",
            )
        self.out: dict[str, torch.Tensor] = {}
        self.enabled = True
        self.detach = detach
        self._handles = [modules[p].register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            if self.enabled:
                t = output[0] if isinstance(output, (tuple, list)) else output
                self.out[path] = (t.detach() if self.detach else t).clone()

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.out = {}

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def feature_loss(
    pairs: Sequence[FeaturePair], student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_run)``: each run's squared error normalised by the teacher feature's mean square,
    ``||s - t||^2 / ||t||^2`` over the batch, and their mean."""
    per = []
    for p in pairs:
        s, t = student[p.student].float(), teacher[p.teacher].detach().float()
        if s.shape != t.shape:
            raise CondenseError(
                f"run {p.run!r}: the condensed model's output {tuple(s.shape)} differs from the "
                f"original's {tuple(t.shape)}",
                "pass the original the model was condensed from",
            )
        per.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    if not per:
        raise CondenseError("no condensed run to match", "the plan condenses no run")
    stacked = torch.stack(per)
    return stacked.mean(), stacked


def kd_logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(student.float() / temperature, dim=1),
            F.log_softmax(teacher.float() / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


# --- calibrate -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """How to calibrate. ``images``: training images used (a fixed seeded subset; all when the data has
    fewer); ``epochs`` passes over them; Adam at ``lr`` with cosine decay (``"auto"``: chosen by short
    probes, see the module docstring; ``probe_images``: images each probe trains on, None for a quarter of
    ``images``); ``train``: ``"all"`` or ``"new"`` (see the module docstring); ``logit_weight`` weighs the
    KL term against the per-run feature term (0: features only); ``test_images``: test images the
    accuracies are measured on (None: the whole test split, 0: no accuracies)."""

    images: int = 10000
    epochs: int = 1
    lr: float | Literal["auto"] = LR_AUTO
    batch_size: int = 64
    train: Literal["all", "new"] = "all"
    logit_weight: float = 1.0
    temperature: float = 1.0
    test_images: int | None = None
    seed: int = 0
    probe_images: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ConfigError(f"calibration option {field}={getattr(self, field)!r}: {why}")

        if self.lr != LR_AUTO and self.probe_images is not None:
            bad("probe_images", "applies to lr='auto' only")
        p = self.probe_images
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            bad("probe_images", "must be an integer >= 1 or None (a quarter of the images)")

        for field, low in (("images", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                bad(field, f"must be an integer >= {low}")
        t = self.test_images
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            bad("test_images", "must be an integer >= 0 (0: no accuracies) or None (the whole test split)")
        for field in ("lr", "temperature") if self.lr != LR_AUTO else ("temperature",):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                bad(field, "must be 'auto' or a number > 0" if field == "lr" else "must be a number > 0")
        w = self.logit_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            bad("logit_weight", "must be a number >= 0")
        if self.train not in TRAIN:
            bad("train", f"must be one of {', '.join(TRAIN)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` did. ``feature_error_*``: per run (``runs``), ``||s - t||^2 / ||t||^2`` on
    ``check_images`` held-out test images, before and after; ``accuracy_*``: top-1 on ``test_images`` test
    images (None when not measured); ``seconds``: wall time of the training and the BatchNorm pass,
    ``cpu_seconds`` the process's CPU time over the same span (all threads)."""

    config: CalibrateConfig
    data: str
    images: int
    epochs: int
    steps: int
    seconds: float
    cpu_seconds: float
    threads: int
    device: str
    runs: tuple[str, ...]
    feature_error_before: tuple[float, ...]
    feature_error_after: tuple[float, ...]
    check_images: int
    test_images: int
    accuracy_original: float | None
    accuracy_before: float | None
    accuracy_after: float | None
    lr: float = 3e-3
    lr_probes: tuple[tuple[float, float], ...] = ()
    probe_images: int = 0
    probe_held_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``condensed.json``'s "calibration")."""
        return {
            "data": self.data,
            "images": self.images,
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "threads": self.threads,
            "device": self.device,
            "config": self.config.to_dict(),
            "check_images": self.check_images,
            "test_images": self.test_images,
            "runs": [
                {"path": r, "feature_error_before": b, "feature_error_after": a}
                for r, b, a in zip(self.runs, self.feature_error_before, self.feature_error_after)
            ],
            "accuracy_original": self.accuracy_original,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "lr": self.lr,
            **(
                {
                    "lr_probes": [
                        {"lr": r, "held_out_loss": loss if math.isfinite(loss) else None} for r, loss in self.lr_probes
                    ],
                    "probe_images": self.probe_images,
                    "probe_held_out": self.probe_held_out,
                }
                if self.lr_probes
                else {}
            ),
        }

    def summary(self) -> str:
        """One line: what was done and what it changed."""
        picked = f", picked from {', '.join(f'{r:g}' for r, _ in self.lr_probes)}" if self.lr_probes else ""
        text = (
            f"calibrated on {self.images} {self.data} images x {self.epochs} epoch(s) at lr {self.lr:g}{picked} "
            f"in {self.seconds:.1f}s: "
        )
        if self.runs:
            before = sum(self.feature_error_before) / len(self.runs)
            after = sum(self.feature_error_after) / len(self.runs)
            text += f"run feature error {before:.3f} -> {after:.3f}"
        else:
            text += "logits only (channels pruned)"
        if self.accuracy_after is not None:
            text += (
                f"; test accuracy {self.accuracy_before:.4f} -> {self.accuracy_after:.4f} "
                f"(original {self.accuracy_original:.4f}, {self.test_images} images)"
            )
        return text


_RECORD_INTS = ("images", "epochs", "steps", "check_images", "test_images")
_RECORD_ACC = ("accuracy_original", "accuracy_before", "accuracy_after")


def check_record(record: Any) -> str | None:
    """Why ``record`` is not a calibration record as ``Calibration.to_dict`` writes it (None if it is)."""
    if not isinstance(record, dict):
        return "must be an object"
    for key in _RECORD_INTS:
        if type(record.get(key)) is not int or record[key] < 0:
            return f"{key!r} must be an integer >= 0"
    for key in ("seconds", "cpu_seconds"):
        seconds = record.get(key)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            return f"{key!r} must be a number >= 0"
    for key in _RECORD_ACC:
        v = record.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            return f"{key!r} must be a fraction in [0, 1] or null"
    runs = record.get("runs")
    if not isinstance(runs, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("path"), str)
        and all(
            not isinstance(r.get(k), bool) and isinstance(r.get(k), (int, float))
            for k in ("feature_error_before", "feature_error_after")
        )
        for r in runs
    ):
        return "'runs' must be a list of {path, feature_error_before, feature_error_after}"
    if not isinstance(record.get("data"), str):
        return "'data' must be a string"
    lr = record.get("lr")  # absent from records written before the rate was recorded
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
        return "'lr' must be a number > 0"
    probes = record.get("lr_probes")
    if probes is not None:
        if not isinstance(probes, list) or not all(
            isinstance(p, dict)
            and not isinstance(p.get("lr"), bool)
            and isinstance(p.get("lr"), (int, float))
            and p["lr"] > 0
            and (
                p.get("held_out_loss") is None
                or (not isinstance(p["held_out_loss"], bool) and isinstance(p["held_out_loss"], (int, float)))
            )
            for p in probes
        ):
            return "'lr_probes' must be a list of {lr, held_out_loss}"
        for key in ("probe_images", "probe_held_out"):
            if type(record.get(key)) is not int or record[key] < 1:
                return f"{key!r} must be an integer >= 1"
    return None


def calibrate(
    result,
    original: nn.Module,
    data,
    *,
    images: int = 10000,
    epochs: int = 1,
    lr: float | str = LR_AUTO,
    batch_size: int = 64,
    train: str = "all",
    logit_weight: float = 1.0,
    temperature: float = 1.0,
    test_images: int | None = None,
    seed: int = 0,
    probe_images: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | Progress = True,
) -> Calibration:
    """Distil ``result.model`` (a ``FitResult``'s condensed model, changed in place) from ``original`` (the
    model it was condensed from) on ``data``'s training images, labels unused; then re-estimate its
    BatchNorm statistics on them. Options: see ``CalibrateConfig``. ``device``: where it runs (default:
    where the condensed model is; both models are moved back after). ``progress``: True (a bar on a
    terminal, else one line per epoch), False, or a function called with one-line messages. The same
    seed gives the same weights. Returns a ``Calibration`` record; the model is left in eval mode."""
    config = CalibrateConfig(
        images=images,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        train=train,  # type: ignore
        logit_weight=logit_weight,
        temperature=temperature,
        test_images=test_images,
        seed=seed,
        probe_images=probe_images,
    )
    student = result.model
    if not isinstance(original, nn.Module):
        raise CondenseError(f"original must be the nn.Module that was condensed, not {type(original).__name__}")
    pruned = getattr(result, "width", None) is not None
    if pruned and (config.train == "new" or not config.logit_weight):
        raise CondenseError(
            "this plan pruned channels: its run outputs are narrower than the original's, so only "
            "the logits are matched",
            "calibrate with train='all' and logit_weight > 0",
        )
    # a plan that pruned channels is distilled on the logits alone (its runs' outputs have fewer channels)
    pairs = () if pruned else feature_pairs(result.found, result.plan)
    if not pairs and not pruned:
        raise CondenseError("nothing to calibrate: the plan condenses no run", "condense with a budget that needs it")
    bundle = _bundle(data, tuple(result.input_size), config)
    homes = [_device_of(student), _device_of(original)]
    teacher_was_training = original.training
    dev = resolve_device(device) if device is not None else homes[0]
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        student.to(dev)
        original.to(dev)
        try:
            with (
                FeatureTap(student, [p.student for p in pairs], detach=False, what="the condensed model") as s_tap,
                FeatureTap(original, [p.teacher for p in pairs], detach=True, what="the original") as t_tap,
            ):
                return _calibrate(student, original, bundle, pairs, config, s_tap, t_tap, dev, progress)
        finally:
            original.train(teacher_was_training)
            student.eval()
            student.to(homes[0])
            original.to(homes[1])


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _bundle(data, input_size: tuple[int, ...], config: CalibrateConfig):
    if isinstance(data, DataBundle):
        bundle = data
    else:
        bundle = load_data(
            data, limit_train=config.images, input_size=input_size, limit_test=config.test_images or None
        )
    if tuple(bundle.input_size) != tuple(input_size):
        raise CondenseError(
            f"the data {bundle.name!r} is read at {'x'.join(map(str, bundle.input_size))}, the model "
            f"was condensed at {'x'.join(map(str, input_size))}",
            "load the data with input_size= the condensed model's",
        )
    if bundle.train_size < 1:
        raise CondenseError(f"the data {bundle.name!r} has no training images to calibrate on")
    return bundle


def _train_batches(bundle, images: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """The calibration images of one epoch: the first ``images`` of a seeded shuffle (the whole training
    split, reshuffled every epoch, when it holds no more than that). Labels are dropped here."""
    whole = images >= bundle.train_size
    n = 0
    for x, _ in bundle.loader("train", batch_size, shuffle=True, augment=False, seed=seed, epoch=epoch if whole else 0):
        take = min(len(x), images - n)
        yield x[:take]
        n += take
        if n >= images:
            return


def held_out_batches(
    bundle, skip: int, count: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) ``skip .. skip + count`` of epoch 0's seeded shuffle, without augmentation (the order
    ``_train_batches`` draws from); whole batches before them are not built."""
    first = skip // batch_size
    position = first * batch_size
    for x, y in bundle.loader("train", batch_size, shuffle=True, augment=False, seed=seed, epoch=0, start_batch=first):
        lo, hi = max(skip - position, 0), min(skip + count - position, len(x))
        position += len(x)
        if hi > lo:
            yield x[lo:hi], y[lo:hi]
        if position >= skip + count:
            return


def _test_batches(bundle, limit: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` test images of a fixed shuffle (a class-sorted test split gives every class)."""
    n = 0
    for x, y in bundle.loader("test", batch_size, shuffle=limit < bundle.test_size, augment=False, seed=0):
        if n >= limit:
            return
        take = min(len(x), limit - n)
        yield x[:take], y[:take]
        n += take


@torch.no_grad()
def _measure(
    student: nn.Module,
    teacher: nn.Module,
    pairs,
    s_tap: FeatureTap,
    t_tap: FeatureTap,
    bundle,
    dev: torch.device,
    check: int,
    test: int,
    batch_size: int,
    original_too: bool,
):
    """(per-run feature errors on the first ``check`` test images, the student's accuracy on ``test``
    images, the teacher's accuracy or None): both models in eval mode."""
    student.eval()
    teacher.eval()
    num = torch.zeros(len(pairs), dtype=torch.float64)
    den = torch.zeros(len(pairs), dtype=torch.float64)
    correct_s = correct_t = seen = 0
    for x, y in _test_batches(bundle, max(check, test), batch_size):
        x = x.to(dev)
        need_features = seen < check
        s_tap.enabled = t_tap.enabled = need_features
        s_logits, t_logits = student(x), teacher(x) if (need_features or original_too) else None
        if need_features:
            k = min(len(x), check - seen)
            for i, p in enumerate(pairs):
                s, t = s_tap.out[p.student][:k].double(), t_tap.out[p.teacher][:k].double()
                if s.shape != t.shape:
                    raise CondenseError(
                        f"run {p.run!r}: the condensed model's output {tuple(s.shape)} differs from "
                        f"the original's {tuple(t.shape)}",
                        "pass the original it was condensed from",
                    )
                num[i] += float((s - t).pow(2).sum())
                den[i] += float(t.pow(2).sum())
        if seen < test:
            k = min(len(x), test - seen)
            y = y[:k].to(dev)
            correct_s += int((s_logits[:k].argmax(1) == y).sum())
            if original_too:
                correct_t += int((t_logits[:k].argmax(1) == y).sum())
        seen += len(x)
    s_tap.enabled = t_tap.enabled = True
    s_tap.out, t_tap.out = {}, {}
    errors = tuple(float(a / b) if b > 0 else 0.0 for a, b in zip(num, den))
    tested = min(test, seen)
    acc = correct_s / tested if tested else None
    return errors, acc, (correct_t / tested if tested and original_too else None)


def _new_parameters(student: nn.Module, pairs) -> tuple[list[nn.Parameter], list[nn.Module]]:
    modules = dict(student.named_modules())
    new = [modules[p.student] for p in pairs]
    params = list(dict.fromkeys(q for m in new for q in m.parameters()))
    return params, new


class _Diverged(CondenseError):
    """The calibration loss became inf or nan."""


def _calibrate(student, teacher, bundle, pairs, config: CalibrateConfig, s_tap, t_tap, dev, progress) -> Calibration:
    teacher.eval()  # the original runs as at inference throughout
    test = bundle.test_size if config.test_images is None else min(config.test_images, bundle.test_size)
    check = min(CHECK_IMAGES, bundle.test_size)
    per_batch = max(config.batch_size, 128)
    err_before, acc_before, acc_original = _measure(
        student, teacher, pairs, s_tap, t_tap, bundle, dev, check, test, per_batch, original_too=True
    )
    if config.train == "new":
        params, new_modules = _new_parameters(student, pairs)
        if not params:
            raise CondenseError(
                "train='new': the new layers have no parameters (dropped blocks)", "calibrate with train='all'"
            )
    else:
        params, new_modules = [p for p in student.parameters()], []
    images = min(config.images, bundle.train_size)
    train = _Trainer(student, teacher, pairs, s_tap, t_tap, bundle, config, params, new_modules, dev)
    t0, cpu0 = time.perf_counter(), time.process_time()
    probes: tuple[tuple[float, float], ...] = ()
    probe_images = held_out = 0
    if config.lr == LR_AUTO:
        lr, probes, probe_images, held_out = _pick_lr(train, images, config, progress)
        torch.manual_seed(config.seed)  # the full run is the one calibrate(lr=<the rate picked>) makes
    else:
        lr = float(config.lr)
    say = _Reporter(progress, math.ceil(images / config.batch_size) * config.epochs, config.epochs)
    try:
        step = train.run(lr, images, config.epochs, say)
    finally:
        say.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    err_after, acc_after, _ = _measure(
        student, teacher, pairs, s_tap, t_tap, bundle, dev, check, test, per_batch, original_too=False
    )
    return Calibration(
        config=config,
        data=bundle.name,
        images=images,
        epochs=config.epochs,
        steps=step,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        threads=torch.get_num_threads(),
        device=str(dev),
        runs=tuple(p.run for p in pairs),
        feature_error_before=err_before,
        feature_error_after=err_after,
        check_images=check,
        test_images=test,
        accuracy_original=acc_original,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        lr=lr,
        lr_probes=probes,
        probe_images=probe_images,
        probe_held_out=held_out,
    )


class _Trainer:
    """Trains ``student`` to match ``teacher`` (the calibration loss) and scores it on held-out images."""

    def __init__(self, student, teacher, pairs, s_tap, t_tap, bundle, config, params, new_modules, dev):
        self.student, self.teacher, self.pairs, self.s_tap, self.t_tap = student, teacher, pairs, s_tap, t_tap
        self.bundle, self.config, self.params, self.new_modules, self.dev = bundle, config, params, new_modules, dev

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        loss = feature_loss(self.pairs, self.s_tap.out, self.t_tap.out)[0] if self.pairs else s_logits.new_zeros(())
        if self.config.logit_weight:
            loss = loss + self.config.logit_weight * kd_logit_loss(s_logits, t_logits, self.config.temperature)
        self.s_tap.out, self.t_tap.out = {}, {}
        return loss

    def run(self, lr: float, images: int, epochs: int, say: "_Reporter") -> int:
        """Adam at ``lr`` with cosine decay to zero over ``epochs`` passes of the first ``images`` calibration
        images, then BatchNorm re-estimated on them; the steps taken."""
        config, student = self.config, self.student
        trained = {id(p) for p in self.params}
        frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in trained]
        total = math.ceil(images / config.batch_size) * epochs
        optimizer = torch.optim.Adam(self.params, lr=lr)
        t0 = time.perf_counter()
        step = 0
        for p in frozen:
            p.requires_grad_(False)
        try:
            for epoch in range(epochs):
                if config.train == "new":  # the frozen part runs as at inference; the new layers learn
                    student.eval()
                    for m in self.new_modules:
                        m.train()
                else:
                    student.train()
                loss_sum, seen = 0.0, 0
                for x in _train_batches(self.bundle, images, config.batch_size, config.seed, epoch):
                    for group in optimizer.param_groups:
                        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
                    loss = self._loss(x.to(self.dev))
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise _Diverged(
                            f"the calibration loss became {value} at step {step + 1} (lr {lr:g})",
                            "lower the learning rate (lr=, --calib-lr), or leave it 'auto'",
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += value * len(x)
                    seen += len(x)
                    step += 1
                    say.step(epoch, step, loss_sum / seen)
                say.epoch(epoch, loss_sum / max(seen, 1), time.perf_counter() - t0)
            say.message("re-estimating BatchNorm statistics")
            self.s_tap.enabled = self.t_tap.enabled = False
            recalibrate_bn(student, _train_batches(self.bundle, images, config.batch_size, config.seed, 0), self.dev)
        finally:
            self.s_tap.enabled = self.t_tap.enabled = True
            for p in frozen:
                p.requires_grad_(True)
        return step

    @torch.no_grad()
    def held_out_loss(self, skip: int, count: int) -> float:
        """The calibration loss (eval mode) over images ``skip .. skip + count`` of the seeded shuffle."""
        self.student.eval()
        total, seen = 0.0, 0
        for x, _ in held_out_batches(self.bundle, skip, count, max(self.config.batch_size, 128), self.config.seed):
            total += float(self._loss(x.to(self.dev))) * len(x)
            seen += len(x)
        return total / seen if seen else math.inf


def parse_lr(text: str, flag: str = "--calib-lr") -> float | str:
    """A calibration rate as the command line gives it: ``auto`` or a number > 0."""
    if text.strip().lower() == LR_AUTO:
        return LR_AUTO
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise CondenseError(f"{flag} {text!r} must be 'auto' or a number > 0", f"e.g. {flag} 1e-3, or leave it auto")
    return value


def probe_sizes(images: int, probe_images: int | None = None) -> tuple[int, int]:
    """(images each ``lr="auto"`` probe trains on, held-out images it is scored on) for ``images``
    calibration images: the held-out ones are the last ``PROBE_HELD_OUT`` (at most a quarter), a probe
    trains on the first quarter (at least ``PROBE_MIN``, never on a held-out image)."""
    held_out = min(PROBE_HELD_OUT, images // 4)
    room = images - held_out
    wanted = probe_images if probe_images is not None else max(images // PROBE_SHARE, PROBE_MIN)
    return min(room, wanted), held_out


def _pick_lr(train: _Trainer, images: int, config: CalibrateConfig, progress) -> tuple[float, tuple, int, int]:
    """``lr="auto"``: probes from the condensed weights along ``LR_GRID``, from ``LR_START`` towards the
    better neighbour until the held-out loss stops falling; the student gets its weights back. Returns
    (the rate picked, ((rate, held-out loss), ...) in the order probed, probe images, held-out images)."""
    probe, held_out = probe_sizes(images, config.probe_images)
    if held_out < 1:
        raise CondenseError(
            f"lr='auto' holds out calibration images to pick the rate; {images} image(s) are too few",
            "give at least 4 calibration images, or a number as lr (e.g. 1e-3, --calib-lr)",
        )
    start = copy.deepcopy(train.student.state_dict())
    losses: dict[float, float] = {}
    quiet = _Reporter(False, 1, 1)

    def say(text: str) -> None:
        if callable(progress):
            progress(text)
        elif progress:
            print(f"calibration: {text}", flush=True)

    def score(lr: float) -> float:
        train.student.load_state_dict(start)
        try:
            train.run(lr, probe, 1, quiet)
            losses[lr] = train.held_out_loss(images - held_out, held_out)
        except _Diverged:
            losses[lr] = math.inf
        say(f"rate probe lr {lr:g} ({probe} images): held-out loss {losses[lr]:.4f} on {held_out} images")
        return losses[lr]

    grid = LR_GRID
    i = grid.index(LR_START)
    here, up = score(grid[i]), score(grid[i - 1]) if i > 0 else math.inf
    j, direction = (i - 1, -1) if up < here else (i, 1)
    while 0 <= j + direction < len(grid):
        if score(grid[j + direction]) >= losses[grid[j]]:
            break
        j += direction
    train.student.load_state_dict(start)
    probes = tuple(losses.items())
    best = pick_lr(probes)
    say(f"picked lr {best:g}")
    return best, probes, probe, held_out


def pick_lr(probes: tuple[tuple[float, float], ...]) -> float:
    """The rate ``lr="auto"`` takes from its probes ((rate, held-out loss), ...): the lowest loss (a diverged
    probe's loss is inf)."""
    rate, low = min(probes, key=lambda p: p[1])
    if not math.isfinite(low):
        raise CondenseError(
            f"the calibration loss diverged at every rate probed ({', '.join(f'{r:g}' for r, _ in probes)})",
            "check the data matches the model (its input size and normalisation)",
        )
    return rate


class _Reporter:
    """Progress as the project shows it: a rich bar on a terminal, one line per epoch in a log, or one-line
    messages to a function (e.g. a ``console.status`` spinner's ``update``)."""

    def __init__(self, progress: bool | Progress, total: int, epochs: int):
        self.fn = progress if callable(progress) else None
        self.lines = progress is True and not sys.stdout.isatty()
        self.total, self.epochs, self.bar, self.task = total, epochs, None, None
        if progress is True and not self.lines:
            self.bar = RichProgress(
                TextColumn("[bold]calibrating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("calibrating", total=total, stats="")

    def step(self, epoch: int, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=f"epoch {epoch + 1}/{self.epochs} loss {loss:.4f}")
        elif self.fn is not None:
            self.fn(f"calibrating: epoch {epoch + 1}/{self.epochs}, step {step}/{self.total}, loss {loss:.4f}")

    def epoch(self, epoch: int, loss: float, seconds: float) -> None:
        if self.lines:
            print(f"calibration epoch {epoch + 1}/{self.epochs}: loss {loss:.4f}, {seconds:.1f} s", flush=True)

    def message(self, text: str) -> None:
        if self.fn is not None:
            self.fn(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
