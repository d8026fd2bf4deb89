"""Measured latency: one forward pass of a model on this machine, the way a latency budget is checked.

In: a model, an input size and a ``LatencySetting`` (batch, eager or compiled, threads, device). Out: the
median milliseconds of one forward pass. Never: changes the model (it is measured in eval mode under
``torch.no_grad`` and put back in its mode; on another device than its own, a copy is measured), or reads
the clock while the device still has queued work (CUDA is synchronised around every timed call).

A measurement warms up first (for ``compiled``, the first calls compile: that time is not counted), then
times single calls until both ``repeats`` calls and ``min_time`` seconds are done, and reports the median.
Threads: ``threads`` pins ``torch.set_num_threads`` for the measurement (None keeps the current setting).

Several models side by side (``measure_side_by_side``, what ``condense.bench.versus`` and ``condense compare
--latency`` report): every round calls every model once, in a rotating order (``interleaved_medians``), so
drift on a shared machine hits all alike; each median is also given as a ratio to a reference model's
median from the same run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from ._device import describe_device, device_record, resolve_device, synchronize
from ._errors import ConfigError

__all__ = ["LatencySetting", "measure_latency", "measure_side_by_side", "interleaved_medians"]

Mode = Literal["eager", "compiled"]


@dataclasses.dataclass(frozen=True)
class LatencySetting:
    """How latency is measured: ``batch`` images per forward, ``mode`` eager or ``compiled``
    (torch.compile), ``threads`` (None: torch's current count), at least ``repeats`` timed calls and
    ``min_time`` seconds after ``warmup`` calls, on ``device`` (``auto``: CUDA when available, else CPU;
    see ``condense._device``)."""

    batch: int = 1
    mode: Mode = "eager"
    threads: int | None = None
    repeats: int = 20
    warmup: int = 3
    min_time: float = 1.0
    device: str = "auto"

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
        object.__setattr__(self, "device", str(resolve_device(self.device)))  # checked now, recorded resolved

    def describe(self) -> str:
        threads = self.threads or torch.get_num_threads()
        where = describe_device(torch.device(self.device)) if self.device != "cpu" else "cpu"
        return f"batch {self.batch}, {self.mode}, {threads} thread(s), {where}"

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "mode": self.mode,
            "threads": self.threads or torch.get_num_threads(),
            **device_record(torch.device(self.device)),
        }


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
    device = torch.device(setting.device)
    p = next(iter(model.parameters()), None)
    if p is not None and p.device != device:
        model = copy.deepcopy(model).to(device)  # the caller's model stays where it is
        p = next(iter(model.parameters()))
    x = torch.randn(setting.batch, *input_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, p.dtype if p is not None and p.is_floating_point() else x.dtype)
    was = model.training
    model.eval()
    fn = torch.compile(model) if setting.mode == "compiled" else model
    times: list[float] = []
    try:
        with _threads(setting.threads), torch.no_grad():
            for _ in range(setting.warmup + (2 if setting.mode == "compiled" else 0)):
                fn(x)
            synchronize(device)
            start = time.perf_counter()
            while len(times) < setting.repeats or time.perf_counter() - start < setting.min_time:
                t0 = time.perf_counter()
                fn(x)
                synchronize(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was)
    return 1e3 * statistics.median(times)


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 15, warmup: int = 3, min_time: float = 0.0
) -> dict[str, float]:
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
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        r += 1
    return {n: statistics.median(s) for n, s in samples.items()}


def measure_side_by_side(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    *,
    batches: Sequence[int],
    reference: str,
    device: Any = "cpu",
    threads: int | None = 1,
    repeats: int = 20,
    warmup: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {str(batch): {"ms": median, "ratio": median / reference's}}}``: eager forward passes without
    gradients, all ``models`` timed interleaved in one run per batch size (``reference`` must be one of
    them). The models are moved to ``device`` and put in eval mode for the run, then back to the CPU."""
    if reference not in models:
        raise ConfigError(f"the reference model {reference!r} is not among the models timed")
    dev = resolve_device(device)
    placed = {name: m.to(dev).eval() for name, m in models.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    try:
        with _threads(threads):
            for batch in batches:
                if progress:
                    progress(f"timing {len(placed)} models interleaved at batch {batch} ({repeats} rounds)")
                x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0)).to(dev)

                def call(m: nn.Module, x: torch.Tensor = x) -> None:
                    with torch.no_grad():
                        m(x)
                    synchronize(dev)

                times = interleaved_medians(
                    {name: (lambda m=m: call(m)) for name, m in placed.items()}, repeats=repeats, warmup=warmup
                )
                for name, t in times.items():
                    out[name][str(batch)] = {"ms": 1e3 * t, "ratio": t / times[reference]}
    finally:
        for m in placed.values():
            m.cpu()
    return out
