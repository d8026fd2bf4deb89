"""Domain errors: what went wrong in one line, plus what to do about it.

The command line prints ``CondenseError`` as a single line and exits 1; only ``--debug`` shows a traceback.
"""
from __future__ import annotations


class CondenseError(Exception):
    """An error the user can fix. ``str(err)`` is one line: the problem, then a hint."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(CondenseError, ValueError):
    """A layer or plan configuration that cannot be built."""


class BudgetError(CondenseError, ValueError):
    """A budget string that does not parse, or a budget that cannot be met."""
