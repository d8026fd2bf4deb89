"""Latency of every arm and of the original, measured interleaved in one run (``condense.bench.versus``).

In: named models (the original among them), an input size, batch sizes, a device, threads and repeats.
Out: per model and batch size the median milliseconds of one forward pass, and its ratio to the original's
median from the same run. Never: times models one after another (each round calls every model once, in a
rotating order, so drift on a shared machine hits all alike: ``_timing.interleaved_medians``), reads the
clock with device work queued (every call ends with a device sync), or changes the models' weights.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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


def measure(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    *,
    batches: Sequence[int],
    device: str,
    threads: int,
    repeats: int,
    warmup: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {str(batch): {"ms": median, "ratio": median / original's}}}``, eager, no gradients."""
    return measure_side_by_side(
        models,
        input_size,
        batches=batches,
        reference=ORIGINAL,
        device=device,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
    )
