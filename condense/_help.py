"""Help text of every ``condense`` command: each option says its default.

In: an argparse parser built with ``formatter_class=HelpFormatter``. Out: ``--help`` with "(default: X)"
after each option's help; a description or epilog of several lines is kept as written (examples), one of
a single line is wrapped. Never: changes what is parsed, or repeats a default the help text already
states ("default" in it) or one not worth stating (None, False, an empty string or list).
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Options with "(default: X)" (cf. ``ArgumentDefaultsHelpFormatter``); text of several lines kept raw."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default is argparse.SUPPRESS or default in ("", [], ())
        if quiet or not action.option_strings or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
