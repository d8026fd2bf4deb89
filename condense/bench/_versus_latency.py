"""Latency of every arm and of the original, measured interleaved in one run (``condense.bench.versus``).

In: named models (the original among them), an input size, batch sizes, a device, threads and repeats.
Out: per model and batch size the median milliseconds of one forward pass, and its ratio to the original's
median from the same run. Never: times models one after another (each round calls every model once, in a
rotating order, so drift on a shared machine hits all alike: ``_timing.interleaved_medians``), reads the
clock with device work queued (every call ends with a device sync), or changes the models' weights.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

ORIGINAL = "original"


def setting(device: str, threads: int, batches: Sequence[int], repeats: int, warmup: int) -> dict[str, Any]:
    """The record of how latency is measured (a change re-measures it)."""
    from .._device import device_record, resolve_device

    return {"threads": threads, "batches": list(batches), "repeats": repeats, "warmup": warmup,
            **device_record(resolve_device(device))}


def measure(models: Mapping[str, nn.Module], input_size: Sequence[int], *, batches: Sequence[int], device: str,
            threads: int, repeats: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {str(batch): {"ms": median, "ratio": median / original's}}}``, eager, no gradients."""
    from .._device import resolve_device, synchronize
    from ._timing import interleaved_medians

    dev = resolve_device(device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    placed = {name: m.to(dev).eval() for name, m in models.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    try:
        for batch in batches:
            x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0)).to(dev)

            def call(m: nn.Module, x: torch.Tensor = x) -> None:
                with torch.no_grad():
                    m(x)
                synchronize(dev)
            fns = {name: (lambda m=m: call(m)) for name, m in placed.items()}
            times = interleaved_medians(fns, repeats=repeats, warmup=warmup)
            for name, t in times.items():
                out[name][str(batch)] = {"ms": 1e3 * t, "ratio": t / times[ORIGINAL]}
    finally:
        torch.set_num_threads(old)
        for m in placed.values():
            m.cpu()
    return out
