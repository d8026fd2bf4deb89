"""Side-by-side timing: warm-up, interleaved repeats, medians. In: callables. Out: seconds. Never: asserts."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import torch


def interleaved_medians(fns: Mapping[str, Callable[[], object]], *, repeats: int = 15, warmup: int = 3,
                        min_time: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each callable, measured round-robin so drift hits all alike.

    Each round calls every function once in turn (order rotates per round); ``min_time`` keeps
    adding rounds until the total measured time reaches it.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < repeats or time.perf_counter() - start < min_time:
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        r += 1
    return {n: statistics.median(s) for n, s in samples.items()}


def thread_info() -> str:
    return f"torch threads={torch.get_num_threads()}, interop={torch.get_num_interop_threads()}"
