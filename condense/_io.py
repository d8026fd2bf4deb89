"""Save a condensed model as a directory, and load it back with no hand-written code.

In: a ``FitResult`` (or model + plan) and where it came from. Out: ``DIR/condensed.json`` (readable:
model spec, input size, plan, counts) and ``DIR/model.safetensors`` (weights). ``load(DIR)`` rebuilds
the original model from its spec, re-applies the plan and loads the weights. Never: leaves a partial
directory behind (files are written to a temporary sibling and moved into place at the end).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ._errors import CondenseError
from ._models import ModelSpec, build_model

FORMAT = "condense/1"
META = "condensed.json"
WEIGHTS = "model.safetensors"


def write_directory(directory: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create (or replace) a condensed-model directory atomically: ``fill(tmp)`` writes the files into a
    temporary sibling, which then takes the directory's place. A non-empty directory that is not a
    condensed-model directory is never replaced; on any failure nothing is left behind."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / META).exists():
        raise CondenseError(f"output {str(out)!r} exists and is not a condensed-model directory",
                            "choose a new -o DIR or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: save each tensor once, contiguous, under every name.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save(result, directory: str | os.PathLike, *, spec: ModelSpec | str | None = None,
         model_kwargs: dict[str, Any] | None = None, checkpoint: str | None = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``result`` (a ``FitResult``) to ``directory``; returns the directory.

    ``spec`` (``timm:NAME`` or ``file.py:factory``) lets ``load`` rebuild the original model on its own;
    without it (a model built in Python), ``load`` needs the same uncondensed model passed in.
    """
    counts = {"macs_before": result.macs_before, "macs_after": result.macs_after,
              "params_before": result.params_before, "params_after": result.params_after,
              "macs_budget": result.macs_budget, "params_budget": result.params_budget}
    runs = [dict(path=r.path, block_class=r.block_class, r=r.r, m=r.m, layer=r.layer, K=r.K) for r in result.rows]
    return write_condensed(directory, result.model, result.plan, model_class=result.found.model_class,
                           input_size=result.input_size, counts=counts, runs=runs, spec=spec,
                           model_kwargs=model_kwargs, checkpoint=checkpoint, extra=extra)


def write_condensed(directory: str | os.PathLike, model: nn.Module, plan, *, model_class: str, input_size,
                    counts: dict[str, Any], runs: list[dict[str, Any]], spec: ModelSpec | str | None = None,
                    model_kwargs: dict[str, Any] | None = None, checkpoint: str | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """The directory ``save`` writes, from its parts (for callers without a ``FitResult``, e.g. a search
    trial): ``plan`` a ``Plan``, ``counts`` the measured MACs/params (before/after/budgets), ``runs`` one
    dict per run (path, block_class, r, m, layer, K)."""
    from safetensors.torch import save_file

    spec_obj = ModelSpec.from_dict(spec.to_dict()) if isinstance(spec, ModelSpec) else (
        None if spec is None else __import__("condense._models", fromlist=["x"]).parse_model_spec(spec))
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
        **(extra or {}),
    }

    def fill(tmp: Path) -> None:
        save_file(_state_for_saving(model), str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")

    return write_directory(directory, fill)


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise CondenseError(f"{str(directory)!r} is not a condensed-model directory (no {META})",
                            "pass a directory written by `condense ... -o DIR` or condense.save")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CondenseError(f"{path} is not readable JSON ({err})", "re-create the directory") from err
    if meta.get("format") != FORMAT:
        raise CondenseError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}",
                            "re-create it with this version of condense")
    return meta


def load(directory: str | os.PathLike, model: nn.Module | Callable[[], nn.Module] | None = None) -> nn.Module:
    """The condensed model saved in ``directory``, in eval mode, with the saved weights.

    For timm models and ``file.py:factory`` models nothing else is needed. For a model built in Python,
    pass ``model``: the same uncondensed model (an instance, or a function that builds one).
    """
    from safetensors.torch import load_file

    from ._fit import Plan
    from .graph import find_runs, rewrite

    meta = read_meta(directory)
    if model is None:
        if not meta.get("model"):
            raise CondenseError(f"{directory} was saved from a model built in Python",
                                "pass it: condense.load(DIR, model=build_my_model())")
        original = build_model(ModelSpec.from_dict(meta["model"]), **meta.get("model_kwargs", {}))
    else:
        original = model() if callable(model) and not isinstance(model, nn.Module) else model
    plan = Plan.from_dict(meta["plan"])
    size = tuple(meta["input_size"])
    if plan.choices:
        found = find_runs(original, size, count=False)
        new = rewrite(original, found, plan.choices).module
    else:
        new = original
    weights = Path(directory) / WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise CondenseError(f"{weights} is not readable ({str(err).splitlines()[0][:100]})",
                            "the directory is damaged: re-create it") from err
    missing, unexpected = new.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CondenseError(f"weights in {weights.name} do not fit the rebuilt model "
                            f"({len(missing)} missing, {len(unexpected)} unexpected)",
                            "was the model (or its factory) changed since saving?")
    return new.eval()
