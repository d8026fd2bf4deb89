"""Model specs: ``timm:NAME``, ``zoo:NAME`` or ``path/to/file.py:factory`` -> an nn.Module; local checkpoints.

In: a spec string (and optionally a checkpoint path). Out: a freshly built model, its default input
size. Never: downloads anything (timm models are built with ``pretrained=False``; weights come only
from local files).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from . import zoo
from ._errors import CondenseError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``kind`` is ``timm`` or ``zoo`` (``name``) or ``file`` (``path`` + ``factory``)."""

    kind: str
    name: str = ""
    path: str = ""
    factory: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.kind in ("timm", "zoo") else f"{self.path}:{self.factory}"

    @property
    def slug(self) -> str:
        """A folder name for what is made from this model: ``efficientnet_b0`` (timm), ``resnet32`` (zoo),
        ``models-net`` (``models.py:net``)."""
        if self.kind in ("timm", "zoo"):
            return self.name.replace("/", "-").replace(":", "-")
        return f"{Path(self.path).stem}-{self.factory}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model spec") -> "ModelSpec":
        """The spec recorded in a file (``where`` names it in errors); unknown kinds and fields are errors."""
        if not isinstance(data, dict):
            raise CondenseError(
                f"{where} must be an object, not {type(data).__name__}", "re-create the directory with condense"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise CondenseError(
                f"{where} has unknown field(s) {', '.join(map(repr, unknown))}",
                f"the fields are {', '.join(sorted(fields))}",
            )
        if not all(isinstance(v, str) for v in data.values()):
            raise CondenseError(f"{where}: every field must be a string", "re-create the directory with condense")
        kind = data.get("kind")
        if kind not in MODEL_KINDS:
            raise CondenseError(f"{where} has unknown kind {kind!r}", f"kinds: {', '.join(MODEL_KINDS)}")
        spec = cls(**data)
        if kind in ("timm", "zoo") and not spec.name:
            raise CondenseError(f"{where}: a {kind} spec needs a name")
        if kind == "file" and (not spec.path.endswith(".py") or not spec.factory.isidentifier()):
            raise CondenseError(f"{where}: a file spec needs a .py path and a factory name")
        return spec


MODEL_KINDS = ("timm", "zoo", "file")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a model file (recorded beside a file spec so a changed file is noticed on load)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_model_spec(text: str) -> ModelSpec:
    """``timm:resnet50`` -> timm; ``zoo:resnet32`` -> ``condense.zoo``; ``models/net.py:build`` -> a factory in
    a Python file; a bare timm name is accepted too."""
    text = text.strip()
    if text.startswith("timm:"):
        return ModelSpec("timm", name=text[5:])
    if text.startswith("zoo:"):
        return ModelSpec("zoo", name=text[4:])
    if ":" in text:
        path, _, factory = text.rpartition(":")
        if path.endswith(".py"):
            if not factory.isidentifier():
                raise CondenseError(f"bad factory name {factory!r} in {text!r}", "write path/to/file.py:function")
            return ModelSpec("file", path=path, factory=factory)
    if text.endswith(".py"):
        raise CondenseError(f"{text!r} names a file but no factory", f"write {text}:function_that_builds_the_model")
    if text and "/" not in text and ":" not in text:
        return ModelSpec("timm", name=text)
    raise CondenseError(f"cannot read model spec {text!r}", "write timm:NAME, zoo:NAME or path/to/file.py:factory")


def _timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm  # heavy (timm, with torchvision): loaded when first needed, not at `import condense`

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
        raise CondenseError(f"unknown timm model {name!r}", hint)
    return timm.create_model(name, pretrained=False, **kwargs)


def _file_factory(path: str, factory: str):
    """The callable ``factory`` of the Python file ``path`` (imported: the file runs)."""
    file = Path(path)
    if not file.is_file():
        raise CondenseError(f"model file {path!r} does not exist", "give the path of a .py file with a factory")
    mod_name = f"_condense_user_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    folder = str(file.resolve().parent)
    added = folder not in sys.path
    if added:  # the factory's file may import its sibling modules
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report it in one line
        sys.modules.pop(mod_name, None)
        raise CondenseError(
            f"importing {path} failed: {type(err).__name__}: {err}",
            "fix the file, or run with --debug for the traceback",
        ) from err
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise CondenseError(f"{path} has no callable {factory!r}", f"callables there: {', '.join(names) or 'none'}")
    return fn


def _file_model(path: str, factory: str, **kwargs: Any) -> nn.Module:
    fn = _file_factory(path, factory)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        given = f" with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}" if kwargs else " without arguments"
        raise CondenseError(
            f"{path}:{factory} cannot be called{given} ({err})",
            "give the factory defaults for every argument: it is called as factory(), "
            "with num_classes= only under --num-classes",
        ) from None
    except ValueError:  # a builtin or C function without a signature: call it and see
        pass
    try:
        model = fn(**kwargs)
    except (CondenseError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - the user's code failed: say so in one line
        text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise CondenseError(
            f"{path}:{factory}() raised {type(err).__name__}{': ' + text if text else ''}",
            "fix the factory: run it in Python to see the traceback, or pass --debug",
        ) from err
    if not isinstance(model, nn.Module):
        raise CondenseError(
            f"{path}:{factory}() returned {type(model).__name__}, not an nn.Module", "the factory must return the model"
        )
    return model


MAX_CLASSES = 100_000  # ImageNet-21k has 21,843; a classifier for 10**9 would allocate tens of GB first


def _check_sizes(kwargs: dict[str, Any]) -> None:
    """Absurd sizes are refused before anything is allocated (``num_classes=10**9`` would try for 32 GB)."""
    n = kwargs.get("num_classes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES):
        raise CondenseError(
            f"num_classes={n!r} is not a class count from 1 to {MAX_CLASSES:,}",
            "pass the number of classes of your data, e.g. --num-classes 10",
        )


def build_model(spec: ModelSpec | str, **kwargs: Any) -> nn.Module:
    """A fresh instance of the model named by ``spec`` (random weights; see ``load_checkpoint``)."""
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    _check_sizes(kwargs)
    if spec.kind == "timm":
        return _timm_model(spec.name, **kwargs)
    if spec.kind == "zoo":
        return zoo.build(spec.name, **kwargs)
    return _file_model(spec.path, spec.factory, **kwargs)


def default_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The input size a timm model was configured for (its pretrained config), else None."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    return tuple(int(s) for s in size) if size and len(size) == 3 else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a local ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch) or ``.safetensors`` file.

    A torch checkpoint may hold the state dict itself or nest it under ``state_dict``, ``model`` or
    ``model_state_dict``. Raises a one-line CondenseError for missing, corrupt or foreign files.
    """
    file = Path(path)
    if not file.is_file():
        raise CondenseError(f"checkpoint {str(path)!r} does not exist", "give the path of a local weights file")
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise CondenseError(
            f"checkpoint {file.name!r} has an unknown suffix", f"use one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    try:
        if file.suffix == ".safetensors":
            data: Any = load_file(str(file))
        else:
            data = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CondenseError(
            f"checkpoint {file.name!r} is not readable ({reason[:120]})", "is it a complete .pth or .safetensors file?"
        ) from err
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CondenseError(
            f"checkpoint {file.name!r} holds no state dict of tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    return {k[7:] if k.startswith("module.") else k: v for k, v in data.items()}


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """A one-line error if any floating tensor of ``state`` holds NaN or infinity."""
    bad = _non_finite(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CondenseError(
            f"{where} holds NaN or infinite weights ({', '.join(bad[:3])}{more})",
            "the training that wrote it diverged: use an earlier checkpoint",
        )


def fit_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    where: str | os.PathLike,
    hint: str = "was the model (or its factory) changed since saving?",
) -> None:
    """Load ``state`` into ``model`` strictly; a one-line error listing missing, unexpected and
    differently shaped keys (a few of each, with shapes) otherwise."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:

        def few(keys, show=lambda k: k):
            return ", ".join(show(k) for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if shapes:
            parts.append(
                f"{len(shapes)} of other shapes: "
                + few(shapes, lambda k: f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
            )
        raise CondenseError(f"weights in {where} do not fit {type(model).__name__} ({'; '.join(parts)})", hint)
    model.load_state_dict(state)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load local weights into ``model`` (strict); a one-line error listing the mismatching keys and shapes,
    or naming the tensors that hold NaN/infinity, otherwise."""
    state = read_state_dict(path)
    check_finite(state, f"checkpoint {Path(path).name!r}")
    fit_state(
        model,
        state,
        f"checkpoint {Path(path).name!r}",
        "is it the weights of this exact model (same name and num_classes)?",
    )
    return model
