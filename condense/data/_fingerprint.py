"""A data set's content fingerprint, the same wherever its files sit (a search's identity holds it).

In: a data spec. Out: 16 hex digits of SHA-256 over the kind and, for a file, its size and first and last
MiB, for a folder every file's relative path and size.
Never: reads more than two MiB of a file (a fingerprint of a large archive is cheap), or depends on where
the data is (the path itself is not hashed); a path that cannot be read is a CondenseError.
"""

from __future__ import annotations

import hashlib
import os

from .._errors import CondenseError
from ._spec import DataSpec, parse_data_spec


def data_fingerprint(spec: str | DataSpec) -> str:
    """A cheap fingerprint of a data set's content, the same wherever the files sit: for a file its size and
    the SHA-256 of its first and last MiB; for a folder every file's relative path and size. Raises a
    CondenseError for a path that does not exist."""
    spec = parse_data_spec(spec)
    path = spec.path
    digest = hashlib.sha256(spec.kind.encode())
    try:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    digest.update(f"{os.path.relpath(full, path)}:{os.path.getsize(full)}\n".encode())
        else:
            size = path.stat().st_size
            digest.update(str(size).encode())
            with open(path, "rb") as f:
                digest.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(size - (1 << 20))
                    digest.update(f.read(1 << 20))
    except OSError as err:
        raise CondenseError(
            f"cannot read the data {spec} ({err.strerror or err})", "check the path in the data spec"
        ) from None
    return digest.hexdigest()[:16]
