"""The data spec ``KIND:PATH``: what a data set is and where, parsed and checked; one-line error reasons.

In: a spec string (``mnist:PATH``, ``cifar10:PATH``, ``cifar100:PATH``, ``imagefolder:PATH``) or a ``DataSpec``.
Out: a frozen ``DataSpec(kind, path)``, ``str()`` gives the spec back; ``_reason(err)`` is an exception's
type and first line, the form every reader's CondenseError quotes.
Never: looks at the path (whether it exists is ``load_data``'s check), downloads, or does work at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._errors import CondenseError

_FORMS = "mnist:PATH, cifar10:PATH, cifar100:PATH or imagefolder:PATH"
_KINDS = ("mnist", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class DataSpec:
    """Where a data set is: ``kind`` is one of mnist, cifar10, cifar100, imagefolder; ``path`` a file or dir."""

    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_data_spec(text: str | DataSpec) -> DataSpec:
    """``"cifar10:data/cifar10-jpeg.tar.gz"`` -> ``DataSpec("cifar10", Path(...))``. Raises CondenseError."""
    if isinstance(text, DataSpec):
        return text
    if not isinstance(text, str):
        raise CondenseError(f"bad data spec {text!r}", f"write one of {_FORMS}")
    kind, sep, path = text.strip().partition(":")
    kind, path = kind.strip().lower(), path.strip()
    if not sep or kind not in _KINDS or not path:
        raise CondenseError(f"bad data spec {text!r}", f"write one of {_FORMS}")
    return DataSpec(kind, Path(path).expanduser())


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
