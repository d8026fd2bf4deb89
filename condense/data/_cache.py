"""The data cache: where it is, what names its files, and how they are written.

In: a source (a spec and its file or folder), and what to keep for it: decoded image trees (``_trees``) and
per-channel statistics (``.stats.json``). The cache directory is ``$CONDENSE_CACHE/data`` or
``~/.cache/condense/data`` (``default_cache_dir``), or the ``cache_dir`` given to ``load_data``.
Out: ``_content_key`` (a hash of the source's resolved path, sizes and mtimes, so a changed source gets new
files), ``_cache_file`` (``KIND-STEM-KEY.SUFFIX``), ``_cached_stats`` (read back, or computed and written).
Never: leaves a half-written cache file behind (``_atomic_write``: a temporary sibling, fsynced, renamed);
fails a load because the cache cannot be written (a warning, and the work is done again next time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from ._memory import _Arrays, _channel_stats
from ._spec import DataSpec

_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$CONDENSE_CACHE/data``, or ``~/.cache/condense/data``."""
    root = os.environ.get("CONDENSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "condense")
    return Path(root) / "data"


def _content_key(spec: DataSpec, path: Path) -> str:
    """A hash of what the source is: its resolved path, size and mtime (every file's, for a directory)."""
    path = path.resolve()
    parts = [f"v{_CACHE_VERSION}", spec.kind, str(path)]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                parts.append(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns}")
    else:
        st = path.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_file(cache: Path, spec: DataSpec, key: str, suffix: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.path.name)[:48] or "data"
    return cache / f"{spec.kind}-{stem}-{key}{suffix}"


@contextlib.contextmanager
def _atomic_write(path: Path) -> Iterator[Any]:
    """A binary file handle whose content appears at ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cached_stats(arrays: _Arrays, cache: Path, spec: DataSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = _cache_file(cache, spec, arrays.key, ".stats.json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        got = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in got["mean"]), tuple(float(v) for v in got["std"])
        if len(mean) == len(std) == arrays.x_train.shape[1]:
            return mean, std
    mean, std = _channel_stats(arrays.x_train)
    try:
        with _atomic_write(path) as fh:
            fh.write(json.dumps({"source": str(spec), "mean": mean, "std": std}).encode())
    except OSError as err:
        warnings.warn(f"could not cache data statistics in {cache}: {err}", stacklevel=3)
    return mean, std
