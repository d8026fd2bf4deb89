"""The image-tree reader: ``[PREFIX/]train/<class>/*.jpg`` and ``test/`` (or ``val/``), in a folder or a tar.

In: the spec (``cifar10:`` or ``cifar100:``: any small-image tree is read this way), a cache directory, the
tree's file names and a reader that visits each image file's bytes (a compressed tar is read front to back once).
Out: ``_Arrays``, decoded once (PIL, with a progress bar on stderr) into uint8 NCHW arrays and kept in the
cache directory as one ``.npz`` with the per-channel statistics; read back from there the next time.
Classes are the train split's folders, sorted as ``ImageFolder`` sorts them.
Never: leaves a half-written cache (an interrupted decode writes nothing); mixes image sizes (a CondenseError
points at ``imagefolder:`` for those); trusts a damaged cache file (it is decoded again, with a warning).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import warnings
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .._errors import CondenseError
from ._cache import _atomic_write, _cache_file, _content_key
from ._memory import _Arrays, _channel_stats, _check_arrays
from ._spec import DataSpec, _reason

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One image file's bytes -> uint8 H x W x 3 RGB (PIL)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise CondenseError(
            f"{name}: cannot decode the image ({_reason(err)})",
            "the file is damaged; remove it or copy the data set again",
        ) from None


def _tree_entries(
    spec: DataSpec, names: list[str], where: str
) -> tuple[tuple[str, ...], dict[str, list[tuple[int, str]]]]:
    """Sort image paths ``[PREFIX/]split/class/file`` into classes (sorted, like ImageFolder) and splits."""
    found: dict[str, dict[str, list[str]]] = {}
    prefixes = set()
    for name in names:
        p = PurePosixPath(name[2:] if name.startswith("./") else name)
        if p.suffix.lower() not in _IMAGE_EXTS or len(p.parts) < 3 or p.name.startswith("._") or "__MACOSX" in p.parts:
            continue
        split = p.parts[-3]
        if split not in ("train", "test", "val"):
            continue
        prefixes.add(p.parts[:-3])
        found.setdefault(split, {}).setdefault(p.parts[-2], []).append(name)
    test_split = "test" if "test" in found else "val"
    if "train" not in found or test_split not in found or len(prefixes) != 1:
        raise CondenseError(
            f"{spec}: {where} is not an image tree with train/ and test/ (one folder per class)",
            "expected train/<class>/*.jpg and test/<class>/*.jpg (or the CIFAR python batches)",
        )
    classes = tuple(sorted(found["train"]))
    test_classes = tuple(sorted(found[test_split]))
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        detail = "; ".join(
            x
            for x in (
                f"only in train: {', '.join(only_train)}" if only_train else "",
                f"only in {test_split}: {', '.join(only_test)}" if only_test else "",
            )
            if x
        )
        raise CondenseError(
            f"{spec}: class folders differ between train/ and {test_split}/ ({detail})",
            "give both splits the same class folders",
        )
    entries = {}
    for split, key in (("train", "train"), ("test", test_split)):
        entries[split] = [(ci, n) for ci, c in enumerate(classes) for n in sorted(found[key][c])]
    return classes, entries


def _decode_tree(
    spec: DataSpec, entries: dict[str, list[tuple[int, str]]], reader: Callable[[Callable[[str, bytes], None]], None]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode every image of a tree into preallocated uint8 NCHW arrays, with a progress bar.

    ``reader(visit)`` calls ``visit(name, data)`` once per image file, in whatever order is cheap to read."""
    slot = {name: (split, i) for split in entries for i, (_, name) in enumerate(entries[split])}
    labels = {s: np.array([c for c, _ in entries[s]], dtype=np.int64) for s in entries}
    out: dict[str, np.ndarray] = {}
    seen = [0]
    total = len(slot)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(f"decoding {spec.path.name} (once; cached)", total=total)

        def visit(name: str, data: bytes) -> None:
            where = slot.get(name)
            if where is None:
                return
            img = _decode_image(data, f"{spec.path}:{name}")
            split, i = where
            if not out:
                h, w = img.shape[:2]
                for s in entries:
                    out[s] = np.empty((len(entries[s]), 3, h, w), dtype=np.uint8)
            arr = out[split]
            if img.shape[:2] != arr.shape[2:]:
                raise CondenseError(
                    f"{spec}: {name} is {img.shape[1]}x{img.shape[0]} but the others are {arr.shape[3]}x{arr.shape[2]}",
                    "a cifar tree needs one image size; use imagefolder:PATH for mixed sizes",
                )
            arr[i] = img.transpose(2, 0, 1)
            seen[0] += 1
            if seen[0] % 500 == 0 or seen[0] == total:
                progress.update(task, completed=seen[0])

        reader(visit)
    if seen[0] != total:
        raise CondenseError(f"{spec}: read {seen[0]} of {total} images", "the archive is damaged; copy it again")
    return {s: (out[s], labels[s]) for s in entries}


def _tree_arrays(
    spec: DataSpec,
    cache: Path,
    list_names: Callable[[], list[str]],
    reader: Callable[[Callable[[str, bytes], None]], None],
    where: str,
) -> _Arrays:
    """A decoded image tree from the cache, or decoded now and cached."""
    key = _content_key(spec, spec.path)
    path = _cache_file(cache, spec, key, ".npz")
    got = _read_tree_cache(path)
    if got is not None:
        return got
    classes, entries = _tree_entries(spec, list_names(), where)
    decoded = _decode_tree(spec, entries, reader)
    arrays = _Arrays(decoded["train"][0], decoded["train"][1], decoded["test"][0], decoded["test"][1], classes, key)
    _check_arrays(spec, arrays)
    arrays.stats = _channel_stats(arrays.x_train)
    try:
        with _atomic_write(path) as fh:
            np.savez(
                fh,
                x_train=arrays.x_train,
                y_train=arrays.y_train,
                x_test=arrays.x_test,
                y_test=arrays.y_test,
                classes=np.array(classes),
                mean=np.array(arrays.stats[0]),
                std=np.array(arrays.stats[1]),
                key=np.array(key),
                source=np.array(str(spec)),
            )
    except OSError as err:
        warnings.warn(
            f"could not cache the decoded images in {cache} ({err}); they will be decoded again", stacklevel=3
        )
    return arrays


def _read_tree_cache(path: Path) -> _Arrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return _Arrays(
                z["x_train"],
                z["y_train"],
                z["x_test"],
                z["y_test"],
                tuple(str(c) for c in z["classes"]),
                str(z["key"]),
                (tuple(float(v) for v in z["mean"]), tuple(float(v) for v in z["std"])),
            )
    except Exception as err:  # noqa: BLE001 - a damaged cache is decoded again
        warnings.warn(f"ignoring the damaged data cache {path} ({_reason(err)})", stacklevel=4)
        return None


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def _open_tar(spec: DataSpec) -> Any:
    try:
        return tarfile.open(spec.path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CondenseError(
            f"{spec}: not a readable tar archive ({_reason(err)})", "the archive is damaged or not a tar; copy it again"
        ) from None


def _tar_errors(spec: DataSpec) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise CondenseError(f"{spec}: the tar archive is damaged ({_reason(err)})", "copy it again") from None

    return guard()
