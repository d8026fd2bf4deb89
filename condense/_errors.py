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


_OOM_TEXTS = ("can't allocate memory", "not enough memory", "out of memory")


def run_command(fn, *, debug: bool = False) -> int:
    """Run a command body ``fn() -> int`` the way every ``condense`` command reports failure.

    A ``CondenseError`` or running out of memory prints one line and returns 1; an interrupt returns 130;
    anything else prints one
    line naming the exception and returns 2. With ``debug`` the exception propagates (full traceback).
    """
    from rich.console import Console

    err_console = Console(stderr=True, soft_wrap=True)
    try:
        return fn()
    except CondenseError as err:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except MemoryError:
        if debug:
            raise
        err_console.print("[bold red]error:[/] out of memory (use a smaller --input-size or --batch-size, or a "
                          "machine with more memory)", highlight=False)
        return 1
    except Exception as err:  # not a domain error: one line unless --debug
        if debug:
            raise
        if isinstance(err, RuntimeError) and any(k in str(err) for k in _OOM_TEXTS):
            err_console.print("[bold red]error:[/] out of memory (use a smaller --input-size or --batch-size, or a "
                              "machine with more memory)", highlight=False)
            return 1
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        err_console.print(f"[bold red]error:[/] unexpected {type(err).__name__}: {text} "
                          "(run with --debug for the traceback)", highlight=False)
        return 2
