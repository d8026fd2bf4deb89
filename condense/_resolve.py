"""One resolver for "a model spec or a saved directory -> a model", used by every command and the search.

In: ``timm:NAME``, ``zoo:NAME``, ``path/to/file.py:factory`` (code the caller names in this call), or a
condensed-model directory; optional local weights and a class count. Out: a ``Resolved`` record (the model,
a label, the directory's metadata or None, the spec, the input size it was made for). Never: imports code
named by a directory unless ``trust_code`` is set (see ``condense.load``), downloads anything, or passes
``num_classes`` to a model that already has that many outputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any

from torch import nn

from . import zoo
from ._errors import CondenseError
from ._io import META, load, read_meta
from ._models import ModelSpec, _file_factory, build_model, default_input_size, load_checkpoint, parse_model_spec


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A model and where it came from: ``meta`` is the directory's ``condensed.json`` (None for a spec)."""

    model: nn.Module
    label: str
    spec: ModelSpec | None
    meta: dict[str, Any] | None
    input_size: tuple[int, int, int] | None
    model_kwargs: dict[str, Any]

    @property
    def is_directory(self) -> bool:
        return self.meta is not None


def is_model_dir(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a folder (to be read as a condensed-model directory) rather than a spec."""
    path = Path(text)
    return (path / META).exists() or (path.is_dir() and not str(text).endswith(".py"))


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_for_classes(spec: ModelSpec, num_classes: int | None, /, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``spec``'s model, with ``num_classes`` passed only when the data's class count differs from what the
    model builds by default (a factory without a ``num_classes`` argument then gets a clear error); a
    ``num_classes`` among ``kwargs`` (a model keyword, as ``condense --num-classes`` gives it) is passed as given.
    Returns the model and the keyword arguments it was built with (recorded for ``load``)."""
    model = build_model(spec, **kwargs)
    if num_classes is None or _outputs(model) == num_classes:
        return model, dict(kwargs)
    if spec.kind == "file":
        if not _accepts(_file_factory(spec.path, spec.factory), "num_classes"):
            raise CondenseError(
                f"{spec} builds a model with {_outputs(model)} outputs and takes no num_classes "
                f"argument, but the data has {num_classes} classes",
                "add a num_classes parameter to the factory, or use data with as many classes",
            )
    kwargs = {**kwargs, "num_classes": num_classes}
    return build_model(spec, **kwargs), kwargs


def _outputs(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    head = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            head = module
    return head.out_features if head is not None else None


def resolve_model(
    text: str | os.PathLike,
    *,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    trust_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> Resolved:
    """The model ``text`` names: a condensed-model directory (loaded with its weights; ``checkpoint`` is
    refused there) or a spec (built; ``checkpoint`` loaded; ``num_classes`` passed if it differs)."""
    if is_model_dir(text):
        if checkpoint:
            raise CondenseError(
                f"--checkpoint applies to a model spec, not to the directory {str(text)!r}",
                "a directory carries its own weights: drop --checkpoint",
            )
        meta = read_meta(text)
        try:
            model = load(text, trust_code=trust_code)
        except CondenseError:
            raise
        except Exception as err:  # a damaged directory: one line
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise CondenseError(
                f"{text} could not be loaded ({type(err).__name__}: {first})", "the directory is damaged: re-create it"
            ) from err
        spec = ModelSpec.from_dict(meta["model"]) if meta.get("model") else None
        return Resolved(model, str(text), spec, meta, tuple(meta["input_size"]), dict(meta["model_kwargs"]))
    spec = parse_model_spec(str(text))
    if spec.kind == "file":  # recorded absolute, so a saved directory loads from any folder
        spec = dataclasses.replace(spec, path=str(Path(spec.path).resolve()))
    model, kwargs = build_for_classes(spec, num_classes, **(model_kwargs or {}))
    if checkpoint:
        load_checkpoint(model, checkpoint)
    label = spec.name if spec.kind != "file" else f"{Path(spec.path).stem}-{spec.factory}"
    size = default_input_size(model)
    if size is None and spec.kind == "zoo":
        size = tuple(zoo.input_size(spec.name))
    return Resolved(model, label, spec, None, size, kwargs)
