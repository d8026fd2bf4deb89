"""Budget strings (``250M``, ``60%``, latency ``12ms``), input sizes (``3x224x224``) and human-readable counts
(``385.9M``).

In: text typed by a user. Out: numbers, or a one-line ``BudgetError``/``CondenseError``. Never: counting.
Every budget string is parsed here, and only here.
"""

from __future__ import annotations

import dataclasses
import math
import re

from ._errors import BudgetError, CondenseError

__all__ = ["Budget", "parse_budget", "parse_latency", "format_count", "format_ms", "parse_input_size"]

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_ACCEPTED = "accepted: 250M, 1.2G, 1B, 800K, 2.5e8, 250000000, or a percentage of the original like 60%"
_NUMBER = r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?P<exp>e[+-]?\d+)?)"
_BUDGET_RE = re.compile(rf"{_NUMBER}\s*(?P<suffix>[kmgb%]?)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A MAC or parameter budget: an absolute count, or a percentage of the original model's count.

    ``value`` is the count itself (``relative=False``) or the percentage, 0 < value <= 100
    (``relative=True``; ``60%`` is ``Budget(60.0, True)``).
    """

    value: float
    relative: bool = False

    def resolve(self, original: float) -> float:
        """The budget as an absolute count, given the original model's count."""
        return original * self.value / 100.0 if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.relative else format_count(self.value)


def _bad(text: object, why: str | None = None) -> BudgetError:
    shown = text if isinstance(text, str) else str(text)
    message = f"bad budget {shown!r}" + (f": {why}" if why else "")
    return BudgetError(message, _ACCEPTED)


def parse_budget(text: str | int | float | Budget) -> Budget:
    """Parse ``250M``, ``1.2G``, ``1B`` (= G), ``800K``, ``2.5e8``, ``250000000`` or ``60%``.

    Suffixes are case-insensitive and surrounding whitespace is ignored. A ``Budget`` is returned as is;
    a plain number is an absolute count. Raises ``BudgetError`` for anything else, for zero, negative or
    non-finite values, for plain numbers below 1 (write ``50%`` for a fraction) and for percentages
    above 100.
    """
    if isinstance(text, Budget):
        return text
    if isinstance(text, bool):
        raise _bad(text)
    if isinstance(text, (int, float)):
        value = float(text)
        if not math.isfinite(value) or value < 1:
            raise _bad(text, "must be a finite count of at least 1")
        return Budget(value, False)
    if not isinstance(text, str):
        raise _bad(text)
    match = _BUDGET_RE.fullmatch(text.strip())
    if match is None:
        raise _bad(text, "must be positive" if text.strip().startswith("-") else None)
    suffix = match["suffix"].lower()
    if match["exp"] and suffix:
        raise _bad(text, "use either an exponent or a suffix, not both")
    value = float(match["num"])
    if not math.isfinite(value) or not math.isfinite(value * _SCALE.get(suffix, 1.0)):
        raise _bad(text, "not a finite number")
    if value <= 0:
        raise _bad(text, "must be positive")
    if suffix == "%":
        if value > 100:
            raise _bad(text, "a percentage of the original must be at most 100%")
        return Budget(value, True)
    value *= _SCALE[suffix]
    if value < 1:
        raise _bad(text, "a count must be at least 1 (write a fraction as a percentage, e.g. 50%)")
    return Budget(value, False)


_LATENCY_RE = re.compile(rf"{_NUMBER}\s*(?P<unit>ms|s|us|µs|%)?", re.IGNORECASE)
_LATENCY_UNITS = {"ms": 1.0, "": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}
_LATENCY_ACCEPTED = "accepted: 12ms, 12 (milliseconds), 0.5s, 800us, or a percentage of the original like 60%"


def parse_latency(text: str | int | float | Budget) -> Budget:
    """A latency budget in milliseconds: ``12ms``, ``12`` (ms), ``0.5s``, ``800us``, or ``60%`` of the
    original model's measured latency. Returns a ``Budget`` whose ``value`` is in milliseconds (or the
    percentage); raises ``BudgetError`` for anything else, zero, negative or above 100%."""
    if isinstance(text, Budget):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(float(text)) or text <= 0:
            raise BudgetError(
                f"bad latency budget {text!r}: must be a positive number of milliseconds", _LATENCY_ACCEPTED
            )
        return Budget(float(text), False)
    match = _LATENCY_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise BudgetError(f"bad latency budget {text!r}", _LATENCY_ACCEPTED)
    value, unit = float(match["num"]), (match["unit"] or "").lower()
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"bad latency budget {text!r}: must be positive", _LATENCY_ACCEPTED)
    if unit == "%":
        if value > 100:
            raise BudgetError(
                f"bad latency budget {text!r}: a percentage of the original must be at most 100%", _LATENCY_ACCEPTED
            )
        return Budget(value, True)
    return Budget(value * _LATENCY_UNITS[unit], False)


def format_ms(ms: float) -> str:
    """A latency for tables: ``12.3 ms``, ``0.85 ms``, ``1.24 s``."""
    if not math.isfinite(ms):
        return str(ms)
    if ms >= 1000:
        return f"{ms / 1e3:.2f} s"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


_UNITS = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3))


def format_count(n: float) -> str:
    """A MAC or parameter count for tables: ``385.9M``, ``5.29M``, ``11.69M``, ``1.23G``, ``812K``, ``96``.

    Below 1000 the integer itself; K with up to 2 decimals (none from 100K); M, G and T with 2 decimals
    below 100 and 1 from 100.
    """
    if not math.isfinite(n):
        return str(n)
    sign, n = ("-" if n < 0 else ""), abs(n)
    if round(n) < 1000:
        return f"{sign}{round(n)}"
    for unit, scale in _UNITS:  # 0.9995: 999.96M is shown as 1.00G, not 1000.0M
        if n >= scale * 0.9995 or unit == "K":
            x = n / scale
            decimals = (0 if x >= 100 else 1 if x >= 10 else 2) if unit == "K" else (1 if x >= 100 else 2)
            return f"{sign}{x:.{decimals}f}{unit}"
    raise AssertionError("unreachable")


def parse_input_size(text: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; ``"224x224"`` -> ``(3, 224, 224)``. Raises CondenseError."""
    hint = "write CxHxW like 3x224x224, or HxW like 224x224 for 3 channels"
    if isinstance(text, (tuple, list)):
        parts = list(text)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
            raise CondenseError(f"bad input size {text!r}", hint)
    elif isinstance(text, str):
        pieces = [p.strip() for p in text.strip().lower().split("x")]
        if not all(re.fullmatch(r"\d+", p) for p in pieces):
            raise CondenseError(f"bad input size {text!r}", hint)
        parts = [int(p) for p in pieces]
    else:
        raise CondenseError(f"bad input size {text!r}", hint)
    if len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or any(p < 1 for p in parts):
        raise CondenseError(f"bad input size {text!r}", hint)
    if parts[0] * parts[1] * parts[2] > MAX_INPUT_ELEMENTS:
        raise CondenseError(
            f"input size {text!r} is too large ({parts[0] * parts[1] * parts[2]:,} values per "
            f"image; at most {MAX_INPUT_ELEMENTS:,})",
            "image models take e.g. 3x224x224",
        )
    return (parts[0], parts[1], parts[2])


MAX_INPUT_ELEMENTS = 2**26  # 3 x 4729 x 4729: far above any classifier's input, far below memory limits
