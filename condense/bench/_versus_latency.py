"""Latency of every arm and of the original, measured interleaved in one run (``condense.bench.versus``).

In: named models (the original among them), an input size, batch sizes, a device, threads and repeats.
Out: per model and batch size the median milliseconds of one forward pass, and its ratio to the original's
median from the same run. Never: times models one after another (each round calls every model once, in a
rotating order, so drift on a shared machine hits all alike: ``_timing.interleaved_medians``), reads the
clock with device work queued (every call ends with a device sync), or changes the models' weights.

Arms that built the same network (``network_key``: the same modules with the same settings, the same traced
code and the same parameter and buffer shapes; the weights' values do not change a dense forward's work) are
timed once and share that timing: timed apart, one network would get as many latencies as arms built it, and
their differences would be noise read as a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .._device import device_record, resolve_device
from .._latency import measure_side_by_side

ORIGINAL = "original"


def setting(device: str, threads: int, batches: Sequence[int], repeats: int, warmup: int) -> dict[str, Any]:
    """The record of how latency is measured (a change re-measures it)."""
    return {
        "threads": threads,
        "batches": list(batches),
        "repeats": repeats,
        "warmup": warmup,
        **device_record(resolve_device(device)),
    }


def _setting(value: Any) -> str | None:
    """A module attribute as text, for ``network_key`` (None: a tensor or module, counted elsewhere)."""
    if isinstance(value, (torch.Tensor, nn.Module)):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return repr(dataclasses.asdict(value))
    return repr(value)


def network_key(model: nn.Module) -> str:
    """What decides the work of a forward pass: every module's path, class and public settings (an attribute
    that is not a tensor or a module, as text; a function as its name and address), a traced module's code,
    and every parameter's and buffer's shape and dtype. Two models with the same key run the same network;
    the key errs towards telling models apart (an attribute that differs only in how it prints, say)."""
    parts: list[Any] = []
    for name, m in model.named_modules():
        settings = sorted(
            (k, text)
            for k, v in vars(m).items()
            if not k.startswith("_") and k != "training" and (text := _setting(v)) is not None
        )
        code = m.code if isinstance(m, torch.fx.GraphModule) else None
        parts.append((name, f"{type(m).__module__}.{type(m).__qualname__}", settings, code))
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        parts.append((name, tuple(t.shape), str(t.dtype)))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def start_digest(model: nn.Module) -> str:
    """``network_key`` and every parameter's and buffer's values: two models with the same digest compute the
    same function and train alike."""
    h = hashlib.sha256(network_key(model).encode())
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shared(models: Mapping[str, nn.Module]) -> dict[str, str]:
    """Each model's name -> the name of the first model (in order) that runs the same network."""
    first: dict[str, str] = {}
    out = {}
    for name, model in models.items():
        out[name] = first.setdefault(network_key(model), name)
    return out


def measure(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    *,
    batches: Sequence[int],
    device: str,
    threads: int,
    repeats: int,
    warmup: int,
    same: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {str(batch): {"ms": median, "ratio": median / original's}}}``, eager, no gradients; models
    that run the same network as an earlier one (``shared``) get its figures instead of being timed again
    (the mode, training or eval, does not count: every model is timed in eval mode). ``same``: ``shared(models)``
    when the caller has it already."""
    same = shared(models) if same is None else same
    timed = measure_side_by_side(
        {name: m for name, m in models.items() if same[name] == name},
        input_size,
        batches=batches,
        reference=ORIGINAL,
        device=device,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
    )
    return {name: {b: dict(v) for b, v in timed[same[name]].items()} for name in models}
