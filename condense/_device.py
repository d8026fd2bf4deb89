"""One resolver for devices: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a ``torch.device``.

In: a device name (or a ``torch.device``); under torchrun, ``LOCAL_RANK``. Out: the device, and a line
describing it (name, count) for run settings and result files. Never: falls back silently: asking for a
device that is not there is a one-line error naming what is available.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ._errors import CondenseError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def available_devices() -> list[str]:
    """What this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` is CUDA when available (the GPU of ``LOCAL_RANK`` under torchrun), else CPU; ``cuda`` under
    torchrun is also ``cuda:LOCAL_RANK``. Raises a one-line ``CondenseError`` for a device that is not here."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise _missing(name)
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise _missing(name)
        index = local if text == "cuda" else text[5:]
        try:
            index = int(index)
        except ValueError:
            raise CondenseError(f"bad device {name!r}", f"write one of {', '.join(DEVICE_CHOICES)}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise _missing(name)
        return torch.device("cuda", index)
    raise CondenseError(f"bad device {name!r}", f"write one of {', '.join(DEVICE_CHOICES)}")


def _missing(name: Any) -> CondenseError:
    return CondenseError(
        f"device {name!r} is not available here", f"available: {', '.join(available_devices())} (or --device auto)"
    )


def describe_device(device: torch.device) -> str:
    """``cpu (2 threads)``, ``cuda:0 NVIDIA H200 (1 of 8 GPUs)``, ``mps``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        n = torch.cuda.device_count()
        return f"cuda:{index} {torch.cuda.get_device_name(index)} ({index + 1} of {n} GPU{'s' if n > 1 else ''})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def device_record(device: torch.device) -> dict[str, Any]:
    """What a result file records about the device it ran on."""
    rec: dict[str, Any] = {"device": str(device), "device_name": describe_device(device)}
    if device.type == "cuda":
        rec["gpus"] = torch.cuda.device_count()
    return rec


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): call before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
