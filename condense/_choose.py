"""Choose depth and width on data: ``condense.choose`` (``condense MODEL --budget B --calibrate DATA --choose``).

In: the trained original, data, the budgets, and ``fit``'s options. Out: a ``Choice``: every candidate plan
tried (by default depth only and depth + width, ``--width auto``, each with the given layer and with
``drop``; channels only, ``--width channels``, when named), how accurate each was after a short calibration,
and the most accurate one's options, so the caller rebuilds it with ``fit`` and calibrates it in full.

Why: no rule that looks only at the weights and counts chose well on every model. With ``--width auto``'s
least depth cut, CIFAR ResNet-20 (3 blocks a run) at 30% of its MACs fine-tuned to 71.0% against 68.8% for
channel pruning alone; on ResNet-56 (9 blocks a run) the same rule lost to block dropping alone (45.5% against
46.7% at 50%). The calibrated accuracy before fine-tuning ranked those plans as fine-tuning did, so it is
what picks. A channels-only plan has no run outputs to match and is calibrated on the logits alone.

How a candidate is scored: ``fit`` with its options (one that cannot meet the budgets is recorded as
infeasible), ``condense.calibrate`` on the first ``images`` training images of a seeded shuffle (its rate picked
per candidate, ``lr="auto"``: the probes hold out the last of those images, never the scoring ones), then top-1
accuracy on the next ``score_images`` images of that shuffle, which the calibration never saw (the test split
is left for the caller's own evaluation). The highest score wins; a tie goes to the plan with fewer MACs.
Never: scores on the test split, trains the original, or changes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._calibrate import calibrate, held_out_batches
from ._device import resolve_device
from ._errors import BudgetError, CondenseError, ConfigError
from ._fit import FitResult, fit
from .data import DataBundle, load_data

# name -> fit options of the candidate; "layer" None means the caller's layer (default "global")
CANDIDATES: dict[str, dict[str, Any]] = {
    "depth": {"layer": None},
    "depth-drop": {"layer": "drop"},
    "joint": {"layer": None, "width": "auto"},
    "joint-drop": {"layer": "drop", "width": "auto"},
    "width": {"layer": None, "width": "channels"},
}
# what choose tries unless told: every plan that removes blocks; channels alone ("width") only when named
DEFAULT_CANDIDATES = ("depth", "depth-drop", "joint", "joint-drop")
# fit keywords that every layer type takes (the rest are the PDE layers' own: K, init, layer options)
_FIT_COMMON = (
    "macs",
    "params",
    "input_size",
    "seed",
    "latency",
    "latency_setting",
    "width_importance",
    "width_multiple",
    "progress",
)
_BUDGETS = ("macs", "params", "input_size", "progress")  # the caller's own; not part of a choice's options


@dataclasses.dataclass(frozen=True)
class ChooseConfig:
    """How candidates are compared: ``candidates`` (names in ``CANDIDATES``), calibrated on ``images``
    training images for ``epochs`` and scored on the next ``score_images``, with ``seed``."""

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    images: int = 2048
    score_images: int = 1000
    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if not self.candidates or unknown or len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(
                f"choose candidates {list(self.candidates)!r}: give distinct names from {', '.join(CANDIDATES)}"
            )
        for field, low in (("images", 1), ("score_images", 1), ("epochs", 1), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"choose option {field}={value!r}: must be an integer >= {low}")


@dataclasses.dataclass(frozen=True)
class Tried:
    """One candidate: ``status`` ``ok`` (built, calibrated and scored) or ``infeasible`` (``reason``)."""

    name: str
    options: dict[str, Any]
    status: str
    plan: str = ""
    macs: int | None = None
    params: int | None = None
    score: float | None = None
    seconds: float = 0.0
    reason: str = ""
    calib_lr: float | None = None  # the calibration rate (picked by its probes under lr="auto")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What ``choose`` did: ``name`` and ``options`` of the winner (``fit`` keywords besides the budgets and
    the input size: ``fit(original, macs=..., input_size=..., **options)`` rebuilds it), every candidate
    ``tried``, the scoring set-up, and the winner's ``result`` (calibrated on the short set only)."""

    name: str
    options: dict[str, Any]
    tried: tuple[Tried, ...]
    config: ChooseConfig
    data: str
    seconds: float
    result: FitResult = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``condensed.json``'s "choice")."""
        return {
            "chosen": self.name,
            "options": _plain(self.options),
            "data": self.data,
            "images": self.config.images,
            "score_images": self.config.score_images,
            "epochs": self.config.epochs,
            "seed": self.config.seed,
            "seconds": round(self.seconds, 2),
            "tried": [t.to_dict() for t in self.tried],
        }

    def summary(self) -> str:
        """One line: every candidate's score, the winner first."""

        def one(t: Tried) -> str:
            return f"{t.name} {t.score:.4f}" if t.status == "ok" else f"{t.name} infeasible"

        rest = ", ".join(one(t) for t in self.tried if t.name != self.name)
        return (
            f"chose {self.name} ({next(one(t) for t in self.tried if t.name == self.name)}"
            f"{'; ' + rest if rest else ''}; accuracy on {self.config.score_images} held-out training images "
            f"after calibrating on {self.config.images})"
        )


def check_record(record: Any) -> str | None:
    """Why ``record`` is not a choice record as ``Choice.to_dict`` writes it (None if it is)."""
    if not isinstance(record, dict):
        return "must be an object"
    if not isinstance(record.get("chosen"), str) or not isinstance(record.get("options"), dict):
        return "'chosen' must be a string and 'options' an object"
    for key in ("images", "score_images", "epochs", "seed"):
        if type(record.get(key)) is not int or record[key] < 0:
            return f"{key!r} must be an integer >= 0"
    tried = record.get("tried")
    if not isinstance(tried, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tried):
        return "'tried' must be a list of candidates with names"
    for t in tried:
        s = t.get("score")
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1):
            return f"candidate {t['name']!r}: 'score' must be a fraction in [0, 1] or null"
    return None


def candidate_options(name: str, fit_options: Mapping[str, Any]) -> dict[str, Any]:
    """``fit``'s keywords for candidate ``name`` on top of the caller's ``fit_options`` (a drop candidate
    without the PDE layers' own options; a depth-only candidate without width)."""
    spec = CANDIDATES[name]
    layer = spec["layer"] or fit_options.get("layer") or "global"
    opts = {k: v for k, v in fit_options.items() if k not in ("width", "layer")}
    if layer == "drop":
        opts = {k: v for k, v in opts.items() if k in _FIT_COMMON}
    return {**opts, "layer": layer, **({"width": spec["width"]} if "width" in spec else {})}


def short_split(train_size: int) -> tuple[int, int]:
    """(calibration images, scoring images) for data with ``train_size`` training images: 2048 and 1000 when
    there are that many, else two thirds and the rest."""
    images = min(2048, max(1, 2 * train_size // 3))
    return images, max(0, min(1000, train_size - images))


def held_out_accuracy(
    model: nn.Module, bundle: DataBundle, *, skip: int, count: int, seed: int, device: torch.device
) -> float:
    """Top-1 accuracy on training images ``skip .. skip + count`` of the seeded shuffle ``calibrate`` draws
    its first ``skip`` images from (so none of them was calibrated on); eval mode, no augmentation."""
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in held_out_batches(bundle, skip, count, 256, seed):
            out = model(x.to(device))
            correct += int((out.argmax(1).cpu() == y).sum())
            seen += len(x)
    if not seen:
        raise CondenseError("no held-out training images to score on", "give more training images")
    return correct / seen


def choose(
    original: nn.Module,
    data: Any,
    macs: Any = None,
    params: Any = None,
    input_size: Sequence[int] | None = None,
    *,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    images: int = 2048,
    score_images: int = 1000,
    epochs: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = None,
    **fit_options: Any,
) -> Choice:
    """Try every candidate plan on ``data`` and return the most accurate (module docstring). ``macs``,
    ``params``, ``input_size`` and ``fit_options`` are ``fit``'s (``layer`` is the PDE candidates' layer;
    ``width`` is chosen here, so it is an error). ``data``: a data spec or a ``DataBundle`` with at least
    ``images + score_images`` training images."""
    config = ChooseConfig(tuple(candidates), images, score_images, epochs, seed)
    if fit_options.get("width") is not None:
        raise CondenseError("choose decides the width itself", "drop width= (or --width) when choosing")
    if fit_options.get("layer") == "drop":
        raise CondenseError("choose already tries drop beside the PDE layer", "give a PDE layer, e.g. global")
    say = progress or (lambda _msg: None)
    size = tuple(input_size) if input_size is not None else None
    if isinstance(data, DataBundle):
        bundle = data
    else:
        say(f"loading {data}")
        bundle = load_data(data, limit_train=images + score_images, input_size=size, limit_test=1)
    if size is None:
        size = tuple(bundle.input_size)
    if bundle.train_size < images + score_images:
        raise CondenseError(
            f"choosing needs {images} + {score_images} training images, the data {bundle.name!r} has "
            f"{bundle.train_size}",
            "give more training images, or fewer with images= / score_images=",
        )
    dev = resolve_device(device) if device is not None else next(original.parameters()).device
    t0 = time.perf_counter()
    tried: list[Tried] = []
    results: dict[str, tuple[FitResult, dict[str, Any]]] = {}
    for name in config.candidates:
        opts = candidate_options(
            name, {"macs": macs, "params": params, "input_size": size, "seed": seed, **fit_options}
        )
        c0 = time.perf_counter()
        say(f"choose: building {name}")
        try:
            result = fit(original, **opts)
        except BudgetError as err:
            tried.append(Tried(name, _plain(opts), "infeasible", reason=err.message))
            continue
        if not result.plan.choices and result.width is None:
            tried.append(Tried(name, _plain(opts), "infeasible", reason="the plan leaves the model unchanged"))
            continue
        say(f"choose: calibrating {name}")
        calibration = calibrate(
            result,
            original,
            bundle,
            images=images,
            epochs=epochs,
            seed=seed,
            test_images=0,
            device=dev,
            progress=lambda msg, n=name: say(f"choose: {n}: {msg}"),
        )
        score = held_out_accuracy(result.model.to(dev), bundle, skip=images, count=score_images, seed=seed, device=dev)
        results[name] = (result, {k: v for k, v in opts.items() if k not in _BUDGETS})
        tried.append(
            Tried(
                name,
                _plain(opts),
                "ok",
                plan=result.message,
                macs=result.macs_after,
                params=result.params_after,
                score=score,
                seconds=round(time.perf_counter() - c0, 2),
                calib_lr=calibration.lr,
            )
        )
        say(f"choose: {name}: {score:.4f}")
    scored = [t for t in tried if t.status == "ok"]
    if not scored:
        raise BudgetError(
            "no candidate plan meets the budget: " + "; ".join(f"{t.name}: {t.reason}" for t in tried),
            "raise the budget",
        )
    best = max(scored, key=lambda t: (t.score, -(t.macs or 0)))
    result, options = results[best.name]
    return Choice(best.name, options, tuple(tried), config, bundle.name, time.perf_counter() - t0, result)


def _plain(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The options as JSON values (a latency setting as its dict; the progress callback left out)."""
    out = {}
    for k, v in opts.items():
        if k == "progress":
            continue
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        out[k] = v
    return out
