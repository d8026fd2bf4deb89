"""Save a condensed model as a directory, and load it back with no hand-written code.

In: a ``FitResult`` (or model + plan) and where it came from. Out: ``DIR/condensed.json`` (readable:
model spec, input size, plan, counts) and ``DIR/model.safetensors`` (weights). ``load(DIR)`` rebuilds
the original model from its spec, re-prunes its channels where the plan has a width (Torch-Pruning's recorded
history: shapes only, no pickle), re-applies the plan and loads the weights. Never: leaves a partial
directory behind or loses the directory it replaces (files are written to a temporary sibling, the old
directory is moved aside, the new one moved in, then the old one deleted; an interrupted swap is finished
or rolled back the next time), never replaces a directory it did not write (``condense._write``: the
folder's manifest must list every file in it), and never runs code named by a directory it reads: a
``file.py:factory`` model is imported only when the caller says so (``trust_code=True``) or passes the
model itself.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save as safetensors_save
from torch import nn

from . import _write
from ._calibrate import check_record
from ._choose import check_record as check_choice
from ._errors import CondenseError, os_error  # noqa: F401 - os_error: public here (condense.os_error)
from ._fit import Plan
from ._width import check_record as check_width, replay
from ._write import check_output, recover_directory, write_bytes  # noqa: F401 - public here too
from ._models import ModelSpec, build_model, check_finite, file_digest, fit_state, parse_model_spec
from .graph import find_runs, rewrite

FORMAT = "condense/1"
META = "condensed.json"
WEIGHTS = "model.safetensors"
# condensed.json's fields: required, then optional (``extra`` records such as a latency fit or a search trial)
META_REQUIRED = ("format", "model", "model_kwargs", "model_class", "input_size", "plan", "counts", "runs")
META_OPTIONAL = (
    "source_checkpoint",
    "model_file_sha256",
    "latency",
    "search",
    "trained",
    "calibration",
    "width",
    "choice",
)


def _legacy_model_dir(folder: Path) -> set[str] | None:
    """What a condensed-model folder written before manifests holds (``condensed.json`` of this format and
    the weights), or None where ``folder`` is not one."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return {META, WEIGHTS} if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def write_directory(
    directory: str | os.PathLike,
    fill: Callable[[Path], None],
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str = "condensed-model",
) -> Path:
    """``_write.write_directory`` for condensed-model folders (which also recognises the ones written before
    manifests): ``fill(tmp)`` writes the files; the folder is replaced only if this tool wrote it."""
    return _write.write_directory(
        directory, fill, inputs=inputs, kind=kind, legacy=_legacy_model_dir if kind == "condensed-model" else None
    )


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: save each tensor once, contiguous, under every name.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save(
    result,
    directory: str | os.PathLike,
    *,
    spec: ModelSpec | str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    extra: dict[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Write ``result`` (a ``FitResult``) to ``directory``; returns the directory. ``inputs`` are files the
    caller read (a checkpoint, the model's file): a ``directory`` that contains one is refused.

    ``spec`` (``timm:NAME`` or ``file.py:factory``) lets ``load`` rebuild the original model on its own;
    without it (a model built in Python), ``load`` needs the same uncondensed model passed in.
    """
    counts = {
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "macs_budget": result.macs_budget,
        "params_budget": result.params_budget,
    }
    runs = [dict(path=r.path, block_class=r.block_class, r=r.r, m=r.m, layer=r.layer, K=r.K) for r in result.rows]
    if getattr(result, "width", None) is not None:  # channels pruned first: load replays them (condense._width)
        extra = {**(extra or {}), "width": result.width.to_dict()}
    return write_condensed(
        directory,
        result.model,
        result.plan,
        model_class=result.found.model_class,
        input_size=result.input_size,
        counts=counts,
        runs=runs,
        spec=spec,
        model_kwargs=model_kwargs,
        checkpoint=checkpoint,
        extra=extra,
        inputs=inputs,
    )


def write_condensed(
    directory: str | os.PathLike,
    model: nn.Module,
    plan,
    *,
    model_class: str,
    input_size,
    counts: dict[str, Any],
    runs: list[dict[str, Any]],
    spec: ModelSpec | str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    extra: dict[str, Any] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """The directory ``save`` writes, from its parts (for callers without a ``FitResult``, e.g. a search
    trial): ``plan`` a ``Plan``, ``counts`` the measured MACs/params (before/after/budgets), ``runs`` one
    dict per run (path, block_class, r, m, layer, K). A ``file.py:factory`` spec is stored with the file's
    absolute path and SHA-256, so ``load`` works from any folder and notices a changed file."""
    spec_obj = spec if isinstance(spec, ModelSpec) else (None if spec is None else parse_model_spec(spec))
    digest = None
    if spec_obj is not None and spec_obj.kind == "file":
        spec_obj = ModelSpec("file", path=str(Path(spec_obj.path).resolve()), factory=spec_obj.factory)
        digest = file_digest(spec_obj.path)
    meta = {
        "format": FORMAT,
        "model": spec_obj.to_dict() if spec_obj else None,
        "model_kwargs": model_kwargs or {},
        "model_class": model_class,
        "input_size": list(input_size),
        "plan": plan.to_dict(),
        "source_checkpoint": checkpoint,
        "counts": {**counts, "convention": "one MAC per multiply-add; see the README, 'How MACs are counted'"},
        "runs": runs,
        **({"model_file_sha256": digest} if digest else {}),
        **(extra or {}),
    }
    return write_model_dir(directory, model, meta, inputs=inputs)


def write_model_dir(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """``meta`` as ``condensed.json`` and ``model``'s weights (with the state dict's version metadata, which
    some modules' loaders read) as ``model.safetensors``, through ``write_directory``."""
    state = model.state_dict()
    versions = {
        k: dict(v)
        for k, v in getattr(state, "_metadata", {}).items()
        if isinstance(v, dict) and set(v) == {"version"} and v["version"] is not None
    }
    meta = {**meta, **({"state_metadata": versions} if versions else {})}
    validate_meta(json.loads(json.dumps(meta)), Path(directory) / META)

    def fill(tmp: Path) -> None:
        write_bytes(tmp / WEIGHTS, safetensors_save(_state_for_saving(model)))
        write_bytes(tmp / META, (json.dumps(meta, indent=2) + "\n").encode())

    return write_directory(directory, fill, inputs=inputs)


def _bad(path: Path, what: str) -> CondenseError:
    return CondenseError(f"{path}: {what}", "the file is damaged or was edited by hand: re-create the directory")


def validate_meta(meta: Any, path: Path) -> dict[str, Any]:
    """Check ``condensed.json``'s structure; a one-line error naming the field otherwise."""
    if not isinstance(meta, dict):
        raise _bad(path, f"expected an object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CondenseError(
            f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}",
            "re-create it with this version of condense",
        )
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise _bad(path, f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(meta) - set(META_REQUIRED) - set(META_OPTIONAL) - {"state_metadata"})
    if unknown:
        raise _bad(path, f"unknown field(s) {', '.join(unknown)}")
    if meta["model"] is not None:
        ModelSpec.from_dict(meta["model"], where=f"{path}: field 'model'")
    kwargs = meta["model_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise _bad(path, "field 'model_kwargs' must be an object of keyword arguments")
    if not isinstance(meta["model_class"], str):
        raise _bad(path, "field 'model_class' must be a string")
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(type(v) is int and 0 < v <= 65536 for v in size)):
        raise _bad(path, f"field 'input_size' must be three positive integers [C, H, W], not {size!r}")
    if size[0] * size[1] * size[2] > 2**28:
        raise _bad(path, f"field 'input_size' {size} is too large for one sample")
    if not isinstance(meta["plan"], dict):
        raise _bad(path, f"field 'plan' must be an object (run path -> choice), not {type(meta['plan']).__name__}")
    try:
        Plan.from_dict(meta["plan"])
    except (CondenseError, TypeError) as err:
        raise _bad(path, f"field 'plan': {err}") from None
    if (
        not isinstance(meta["counts"], dict)
        or not isinstance(meta["runs"], list)
        or not all(isinstance(r, dict) for r in meta["runs"])
    ):
        raise _bad(path, "fields 'counts' (an object) and 'runs' (a list of objects) are malformed")
    digest = meta.get("model_file_sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _bad(path, "field 'model_file_sha256' must be a SHA-256 hex digest")
    if "calibration" in meta:  # what condense.calibrate did (condense MODEL --calibrate DATA)
        why = check_record(meta["calibration"])
        if why:
            raise _bad(path, f"field 'calibration': {why}")
    if "choice" in meta:  # the candidate plans condense.choose compared (condense MODEL --choose)
        why = check_choice(meta["choice"])
        if why:
            raise _bad(path, f"field 'choice': {why}")
    if "width" in meta:  # the channels Torch-Pruning removed before the plan (condense._width)
        why = check_width(meta["width"])
        if why:
            raise _bad(path, f"field 'width': {why}")
    versions = meta.get("state_metadata", {})
    if not isinstance(versions, dict) or not all(
        isinstance(v, dict) and set(v) == {"version"} and type(v["version"]) is int for v in versions.values()
    ):
        raise _bad(path, "field 'state_metadata' must map module prefixes to {\"version\": N}")
    return meta


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``DIR/condensed.json``, checked (``validate_meta``)."""
    path = Path(directory) / META
    if not path.is_file() and not Path(directory).exists():
        try:  # a replacement of this directory was killed after moving the old one aside: put it back
            recover_directory(directory)
        except OSError:
            pass
    if not path.is_file():
        raise CondenseError(
            f"{str(directory)!r} is not a condensed-model directory (no {META})",
            "pass a directory written by `condense ... -o DIR` or condense.save",
        )
    return validate_meta(_write.read_json(path, "re-create the directory"), path)


def original_from_meta(meta: dict[str, Any], directory: str | os.PathLike, *, trust_code: bool = False) -> nn.Module:
    """The uncondensed model named in ``meta`` (read from ``directory``), freshly built.

    timm and zoo models are built from this library's code. A ``file.py:factory`` model would import and
    run that file, which came with the directory, not from the caller: it is built only with
    ``trust_code=True``, and only if the file still has the SHA-256 recorded when the directory was saved.
    """
    if not meta.get("model"):
        raise CondenseError(
            f"{directory} was saved from a model built in Python", "pass it: condense.load(DIR, model=build_my_model())"
        )
    spec = ModelSpec.from_dict(meta["model"], where=f"{Path(directory) / META}: field 'model'")
    if spec.kind == "file":
        if not trust_code:
            raise CondenseError(
                f"{directory} names model code in {spec.path}:{spec.factory}; loading it would run that file",
                "if you trust it, pass trust_code=True (--trust-code); else pass the "
                "uncondensed model: condense.load(DIR, model=...)",
            )
        recorded = meta.get("model_file_sha256")
        if recorded is not None and Path(spec.path).is_file() and file_digest(spec.path) != recorded:
            raise CondenseError(
                f"{spec.path} changed since {directory} was saved (SHA-256 differs)",
                "restore that version of the file, or pass the model: condense.load(DIR, model=...)",
            )
    return build_model(spec, **meta.get("model_kwargs", {}))


def _check_runs(meta: dict[str, Any], found, directory) -> None:
    """The runs the tracer finds now must include the recorded ones (same path, block count)."""
    now = {r.path: r for r in found.runs}
    for rec in meta["runs"]:
        path, r = rec.get("path"), rec.get("r")
        if path in meta["plan"] and (path not in now or now[path].r != r):
            seen = f"{now[path].r} blocks" if path in now else "not found"
            raise CondenseError(
                f"{directory}: run {path!r} was saved with {r} blocks, the model traced now has {seen}",
                "the model's code (timm or your factory) changed since saving: "
                "install the version it was saved with, or re-create the directory",
            )


def load(
    directory: str | os.PathLike, model: nn.Module | Callable[[], nn.Module] | None = None, *, trust_code: bool = False
) -> nn.Module:
    """The condensed model saved in ``directory``, in eval mode, with the saved weights.

    timm and zoo models are rebuilt on their own. A model built in Python: pass ``model``, the same
    uncondensed model (an instance, or a function that builds one). A ``file.py:factory`` model: pass
    ``model``, or ``trust_code=True`` to let ``load`` import the recorded file (never done otherwise: a
    directory is data someone may have handed you, and importing a file runs it).
    """
    meta = read_meta(directory)
    if model is None:
        original = original_from_meta(meta, directory, trust_code=trust_code)
    else:
        original = model() if callable(model) and not isinstance(model, nn.Module) else model
        if not isinstance(original, nn.Module):
            raise CondenseError(
                f"model= gave a {type(original).__name__}, not an nn.Module",
                "pass the uncondensed model or a function that builds it",
            )
    plan = Plan.from_dict(meta["plan"])
    size = tuple(meta["input_size"])
    if meta.get("width") is not None:  # pruned first: the same shapes, by replaying Torch-Pruning's history
        original = replay(original, meta["width"], size, where=f"{Path(directory) / META}: field 'width'")
    if plan.choices:
        found = find_runs(original, size, count=False)
        _check_runs(meta, found, directory)
        new = rewrite(original, found, plan.choices).module
    else:
        new = original
    weights = Path(directory) / WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as err:
        text = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        raise CondenseError(f"{weights} is not readable ({text})", "the directory is damaged: re-create it") from err
    check_finite(state, weights)
    versions = meta.get("state_metadata")
    if versions:
        state = OrderedDict(state)
        state._metadata = OrderedDict((k, dict(v)) for k, v in versions.items())  # type: ignore[attr-defined]
    fit_state(new, state, weights)
    return new.eval()
