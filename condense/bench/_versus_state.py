"""The resumable record of ``condense.bench.versus``: ``DIR/versus.json``, written after every result.

In: the output folder and the settings a run's results depend on. Out: a ``State`` whose ``data`` holds
the original, every arm's counts and per-seed results, and the latency measurements; ``save()`` writes it
atomically and lists the folder's files in its manifest (``condense._write``). Never: mixes results made
with other settings (opening a folder made with other settings is a one-line error naming each setting
that differs), or writes into a folder condense did not write (``claim_folder``).

Budgets, arms and seeds are not settings: a later run may add some (only what is missing is computed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._errors import CondenseError
from .._write import atomic_write_json, write_manifest

FORMAT = "condense-versus/1"
KIND = "versus"
STATE = "versus.json"
CSV = "versus.csv"
PLOT = "versus.png"
OWN = (STATE, CSV, PLOT, "original", "runs")  # what this command writes in its folder


def differences(recorded: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``name: recorded -> now`` for every setting that differs (nested settings as ``group.name``)."""
    out = []
    for k in sorted(set(recorded) | set(now)):
        a, b = recorded.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class State:
    """``versus.json`` of one output folder (see the module docstring)."""

    def __init__(self, out: Path, data: dict[str, Any]):
        self.out, self.data = out, data

    @classmethod
    def open(cls, out: str | Path, settings: dict[str, Any]) -> "State":
        """The folder's record, or a new one; refuses a record made with other ``settings``."""
        out = Path(out)
        path = out / STATE
        if not path.exists():
            return cls(out, {"format": FORMAT, "settings": settings, "original": None, "budgets": {}, "latency": None})
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CondenseError(
                f"{path} is not readable ({type(err).__name__})",
                "choose another -o DIR, or remove the folder to start again",
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("settings"), dict):
            raise CondenseError(f"{path} is not a record of condense.bench.versus ({FORMAT})", "choose another -o DIR")
        diff = differences(data["settings"], settings)
        if diff:
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise CondenseError(
                f"{out} holds results made with other settings ({'; '.join(diff[:3])}{more})",
                "run with the same settings to continue it, or choose another -o DIR",
            )
        data.setdefault("budgets", {})
        return cls(out, data)

    def arm(self, budget: str, arm: str) -> dict[str, Any] | None:
        return self.data["budgets"].get(budget, {}).get("arms", {}).get(arm)

    def seed(self, budget: str, arm: str, seed: int) -> dict[str, Any] | None:
        rec = self.arm(budget, arm)
        return None if rec is None else rec.get("seeds", {}).get(str(seed))

    def save(self) -> None:
        atomic_write_json(self.out / STATE, self.data)
        write_manifest(self.out, KIND, [name for name in OWN if (self.out / name).exists()])
