"""Measured latency: one forward pass of a model on this machine, the way a latency budget is checked.

In: a model, an input size and a ``LatencySetting`` (batch, eager or compiled, threads). Out: the median
milliseconds of one forward pass. Never: changes the model (it is measured in eval mode under
``torch.no_grad`` and put back in its mode).

A measurement warms up first (for ``compiled``, the first calls compile: that time is not counted), then
times single calls until both ``repeats`` calls and ``min_time`` seconds are done, and reports the median.
Threads: ``threads`` pins ``torch.set_num_threads`` for the measurement (None keeps the current setting).
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Literal, Sequence

import torch
from torch import nn

from ._errors import ConfigError

__all__ = ["LatencySetting", "measure_latency"]

Mode = Literal["eager", "compiled"]


@dataclasses.dataclass(frozen=True)
class LatencySetting:
    """How latency is measured: ``batch`` images per forward, ``mode`` eager or ``compiled``
    (torch.compile), ``threads`` (None: torch's current count), at least ``repeats`` timed calls and
    ``min_time`` seconds after ``warmup`` calls."""

    batch: int = 1
    mode: Mode = "eager"
    threads: int | None = None
    repeats: int = 20
    warmup: int = 3
    min_time: float = 1.0

    def __post_init__(self) -> None:
        for name in ("batch", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"latency {name}={v!r} must be an integer >= 1")
        if self.mode not in ("eager", "compiled"):
            raise ConfigError(f"latency mode={self.mode!r} is not 'eager' or 'compiled'")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"latency threads={self.threads!r} must be an integer >= 1 or None")
        if self.warmup < 1 or self.min_time < 0:
            raise ConfigError("latency warmup must be >= 1 and min_time >= 0")

    def describe(self) -> str:
        threads = self.threads or torch.get_num_threads()
        return f"batch {self.batch}, {self.mode}, {threads} thread(s)"

    def to_dict(self) -> dict:
        return {"batch": self.batch, "mode": self.mode, "threads": self.threads or torch.get_num_threads()}


@contextlib.contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure_latency(model: nn.Module, input_size: Sequence[int], setting: LatencySetting | None = None) -> float:
    """Median milliseconds of one forward pass of ``model`` on a random (batch, *input_size) input."""
    setting = setting or LatencySetting()
    p = next(iter(model.parameters()), None)
    x = torch.randn(setting.batch, *input_size, generator=torch.Generator().manual_seed(0))
    if p is not None and p.is_floating_point():
        x = x.to(p.device, p.dtype)
    was = model.training
    model.eval()
    fn = torch.compile(model) if setting.mode == "compiled" else model
    times: list[float] = []
    try:
        with _threads(setting.threads), torch.no_grad():
            for _ in range(setting.warmup + (2 if setting.mode == "compiled" else 0)):
                fn(x)
            start = time.perf_counter()
            while len(times) < setting.repeats or time.perf_counter() - start < setting.min_time:
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was)
    return 1e3 * statistics.median(times)
