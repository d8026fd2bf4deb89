"""Side-by-side timing: warm-up, interleaved repeats, medians. In: callables. Out: seconds. Never: asserts."""

from __future__ import annotations

import torch

from .._latency import interleaved_medians  # noqa: F401  (the one interleaved timer; benches import it here)


def thread_info() -> str:
    return f"torch threads={torch.get_num_threads()}, interop={torch.get_num_interop_threads()}"
