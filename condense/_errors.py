"""Domain errors: what went wrong in one line, plus what to do about it.

The command line prints ``CondenseError`` as a single line and exits 1; only ``--debug`` shows a traceback.
"""

from __future__ import annotations

import errno
import os

from rich.console import Console
from rich.markup import escape  # a message's own brackets (pip install "condense[versus]") are text, not markup


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
_OOM = CondenseError("out of memory", "use a smaller --input-size or --batch-size, or a machine with more memory")


def as_domain_error(err: BaseException) -> CondenseError | None:
    """``err`` as a one-line domain error where its cause is the user's to fix: running out of memory, or a
    write that failed on a full disk or a read-only / forbidden folder. None for anything else."""
    seen = 0
    while err is not None and seen < 10:  # an error raised while handling one of these: report the cause
        found = _domain(err)
        if found is not None:
            return found
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _domain(err: BaseException) -> CondenseError | None:
    if isinstance(err, CondenseError):
        return err
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and any(k in str(err) for k in _OOM_TEXTS)):
        return _OOM
    if isinstance(err, OSError):
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EACCES, errno.EPERM, errno.EROFS):
            return os_error(err, err.filename or "the output folder")
    return None


def os_error(err: OSError, where: str | os.PathLike) -> CondenseError:
    """A one-line error for a failed write: a full disk, a read-only or forbidden folder, or else the reason."""
    where = str(where)
    if err.errno == errno.ENOSPC or err.errno == getattr(errno, "EDQUOT", -1):
        return CondenseError(f"no space left on {where}", "free some space, or write to another -o DIR")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CondenseError(
            f"cannot write {where} ({os.strerror(err.errno).lower()})", "choose a folder you can write to (-o DIR)"
        )
    return CondenseError(f"cannot write {where} ({err.strerror or err})", "check the folder and try again")


def report(err: BaseException, *, debug: bool = False) -> int:
    """Print ``err`` as every ``condense`` command does and return the exit code: 1 and one line for a
    domain error (``as_domain_error``), 130 for an interrupt, 2 and one line naming anything else. With
    ``debug`` the exception propagates (full traceback)."""
    err_console = Console(stderr=True, soft_wrap=True)
    if isinstance(err, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    if debug:
        raise err
    domain = as_domain_error(err)
    if domain is not None:
        err_console.print(f"[bold red]error:[/] {escape(str(domain))}", highlight=False)
        return 1
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    err_console.print(
        f"[bold red]error:[/] unexpected {type(err).__name__}: {escape(text)} (run with --debug for the traceback)",
        highlight=False,
    )
    return 2


def run_command(fn, *, debug: bool = False) -> int:
    """Run a command body ``fn() -> int`` and report a failure as ``report`` does."""
    try:
        return fn()
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - every failure is reported in one line
        return report(err, debug=debug)
