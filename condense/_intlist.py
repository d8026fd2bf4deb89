"""One resolver for comma-separated integer lists on every command line (seeds, batch sizes, epochs, K values).

In: text such as ``"0,1,2"`` (spaces and empty parts are ignored), the flag it came from, the least value
allowed and whether repeats are allowed. Out: a tuple of ints. Never: accepts a part that is not an
integer, a value below the floor or (with ``distinct``) a repeat; the one-line error names the flag and
shows an example.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._errors import ConfigError, CondenseError


def parse_int_list(
    text: str, flag: str, *, low: int = 0, distinct: bool = False, example: str = "0,1,2", empty_ok: bool = False
) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``, checked; a ``ConfigError`` (message, hint) otherwise."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values: tuple[int, ...] | None = tuple(int(p) for p in parts)
    except ValueError:
        values = None
    if (
        values is None
        or (not values and not empty_ok)
        or any(v < low for v in values)
        or (distinct and len(set(values)) != len(values))
    ):
        kind = "distinct integers" if distinct else "integers"
        raise ConfigError(f"{flag} {text!r} is not a list of {kind} >= {low}", f"write e.g. {flag} {example}")
    return values


def int_list_type(flag: str, **kwargs) -> Callable[[str], tuple[int, ...]]:
    """``parse_int_list`` for argparse's ``type=``: the same check, reported as argparse's usage error."""

    def convert(text: str) -> tuple[int, ...]:
        try:
            return parse_int_list(text, flag, **kwargs)
        except CondenseError as err:
            raise argparse.ArgumentTypeError(f"{err.message} ({err.hint})") from None

    return convert
