"""Every file and folder condense writes, written one way.

In: bytes, text, JSON or a torch object for one file; a ``fill(tmp)`` callback for a whole folder; a folder a
command is about to write into. Out: the file or folder in place, complete and flushed to disk, with the modes
the user's umask asks for; a folder carries a manifest (``.condense-files.json``) naming every file written.
Never: leaves a partial file or folder behind; replaces, deletes or writes into a folder that holds anything
the tool did not write (a folder is replaced only when every file in it is listed in its manifest, and a
folder with other files is refused naming one of them); follows a symbolic link given as an output; lets a
second process write the same output while the first is writing it (a lock beside it refuses the second).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ._errors import CondenseError, os_error

__all__ = [
    "MANIFEST",
    "os_error",
    "read_json",
    "write_bytes",
    "atomic_write",
    "atomic_write_json",
    "atomic_torch_save",
    "write_directory",
    "recover_directory",
    "check_output",
    "claim_folder",
    "read_manifest",
    "write_manifest",
    "foreign_files",
    "output_lock",
    "claim_file",
    "atomic_write_csv",
    "csv_starts_with",
]

MANIFEST = ".condense-files.json"
_MANIFEST_FORMAT = "condense-files/1"


# --- one file ----------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, hint: str = "re-create it with condense") -> Any:
    """A JSON file the tool wrote, read back; a one-line error for an unreadable, malformed or absurdly
    nested one (Python's parser recurses: a file of 100,000 ``[`` would otherwise be a RecursionError)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err).strip().splitlines()[0][:120]
        raise CondenseError(f"{path} is not readable JSON ({why})", hint) from None


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk; failures are real ``OSError``s (a full disk is
    ENOSPC), not a serializer's wrapped message."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """``data`` to a temporary sibling, flushed, then renamed over ``path`` (a kill leaves the old file or
    the new one, never half of one); an ``OSError`` becomes the one-line ``os_error``."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write_bytes(tmp, raw)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise os_error(err, path.parent if str(path.parent) else path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON (numbers it cannot encode as strings), written with ``atomic_write``."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` through ``atomic_write``: serialised in memory first, so a full disk is a plain
    ENOSPC from the write, not the serializer's message."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getvalue())


# --- ownership: the manifest --------------------------------------------------------------------------------


def _files_under(root: Path) -> list[str]:
    """Every file and symbolic link below ``root`` (relative POSIX paths), and every empty folder (with a
    trailing slash), the manifest excluded."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            item = (rel / name).as_posix()
            if item != MANIFEST:
                found.append(item)
        if not dirs and not files and rel != Path("."):
            found.append(rel.as_posix() + "/")
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return sorted(found)


def write_manifest(
    folder: str | os.PathLike, kind: str, files: Iterable[str] | None = None, *, atomic: bool = True
) -> None:
    """Record ``files`` (default: every file now in ``folder``) as written by this tool for a ``kind`` folder
    (``atomic=False``: a plain write, for a folder no one sees yet)."""
    folder = Path(folder)
    names = sorted(set(files if files is not None else _files_under(folder)))
    record = {"format": _MANIFEST_FORMAT, "kind": kind, "files": names}
    if atomic:
        atomic_write_json(folder / MANIFEST, record)
    else:
        write_bytes(folder / MANIFEST, (json.dumps(record, indent=2) + "\n").encode())


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None where it has none or an unreadable one."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (
        isinstance(data, dict)
        and data.get("format") == _MANIFEST_FORMAT
        and isinstance(data.get("kind"), str)
        and isinstance(data.get("files"), list)
        and all(isinstance(f, str) for f in data["files"])
    ):
        return None
    return data


def foreign_files(
    folder: str | os.PathLike,
    kind: str,
    legacy: Callable[[Path], set[str] | None] | None = None,
    own: Iterable[str] = (),
) -> list[str] | None:
    """The entries of ``folder`` this tool did not write as a ``kind`` folder: those its manifest does not
    list (``own``: further names the caller writes itself). None when the folder is not a ``kind`` folder at
    all (no manifest of that kind, and ``legacy(folder)`` - the names a folder written before manifests holds,
    or None - does not recognise it)."""
    folder = Path(folder)
    record = read_manifest(folder)
    if record is not None and record["kind"] == kind:
        mine = set(record["files"])
    else:
        mine = legacy(folder) if legacy is not None and record is None else None
        if mine is None:
            return None
    mine |= set(own)
    extra = []
    for item in _files_under(folder):
        parts = item.rstrip("/").split("/")
        if item in mine or any(
            "/".join(parts[:i]) + "/" in mine or "/".join(parts[:i]) in mine for i in range(1, len(parts))
        ):
            continue
        extra.append(item)
    return extra


def claim_folder(
    folder: str | os.PathLike,
    kind: str,
    *,
    legacy: Callable[[Path], set[str] | None] | None = None,
    own: Iterable[str] = (),
    what: str | None = None,
) -> bool:
    """Check that a command may write ``folder`` as a ``kind`` folder: it does not exist, is empty, or was
    written by this tool as such a folder and holds nothing else. Returns whether it already is one.
    Otherwise a one-line error naming a file that is not the tool's."""
    folder = Path(folder)
    what = what or kind.replace("-", " ")
    if folder.is_symlink():
        raise CondenseError(
            f"output {str(folder)!r} is a symbolic link",
            f"pass the folder it points to ({os.path.realpath(folder)}) or a new -o DIR",
        )
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise CondenseError(f"output {str(folder)!r} is a file", "choose a new -o DIR")
    try:
        empty = not any(folder.iterdir())
    except OSError as err:
        raise os_error(err, folder) from None
    if empty:
        return False
    extra = foreign_files(folder, kind, legacy, own)
    if extra is None:
        raise CondenseError(
            f"output {str(folder)!r} exists and is not a {what} folder this tool wrote",
            "choose a new -o DIR: condense replaces only folders it wrote",
        )
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise CondenseError(
            f"output {str(folder)!r} holds {extra[0]!r}{more}, which condense did not write",
            "move it out, or choose a new -o DIR: condense never deletes files it did not write",
        )
    return True


def _article(what: str) -> str:
    return "an" if what[:1].lower() in "aeiou" or what.startswith(("ONNX", "RD")) else "a"


def claim_file(path: str | os.PathLike, what: str, recognise: Callable[[Path], bool]) -> Path:
    """Check that a command may write the single file ``path``: it does not exist, or it is a regular file
    that ``recognise`` says is a ``what`` this tool wrote (an ONNX model, a CSV with its columns). A
    folder, a symbolic link or any other file is refused in one line, before any work."""
    out = Path(path)
    if not str(path).strip():
        raise CondenseError("the output file name is empty", "pass a file name")
    if out.is_symlink():
        raise CondenseError(
            f"output {str(out)!r} is a symbolic link",
            f"pass the file it points to ({os.path.realpath(out)}) or a new name",
        )
    if out.is_dir():
        raise CondenseError(f"output {str(out)!r} is a directory", f"give a file name for the {what}")
    if out.exists():
        try:
            ours = recognise(out)
        except Exception:  # noqa: BLE001 - unreadable or not ours: refused either way
            ours = False
        if not ours:
            raise CondenseError(
                f"output {str(out)!r} exists and is not {_article(what)} {what} condense wrote",
                "choose a new file name: condense replaces only its own outputs",
            )
    return out


def csv_starts_with(columns: Sequence[str]) -> Callable[[Path], bool]:
    """A ``claim_file`` recogniser: a CSV file whose header row begins with ``columns``."""

    def recognise(path: Path) -> bool:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        return header is not None and header[: len(columns)] == list(columns)

    return recognise


def atomic_write_csv(path: str | os.PathLike, table: Any, *, columns: Sequence[str] | None = None) -> Path:
    """``table`` as CSV, written atomically (``atomic_write``): a pandas DataFrame (without its index), or
    dict rows with ``columns`` (missing or None values empty, floats rounded to 6 digits). The parent folder
    is created."""
    buffer = io.StringIO()
    if hasattr(table, "to_csv"):
        table.to_csv(buffer, index=False)
    else:
        if columns is None:
            raise TypeError("atomic_write_csv: rows need columns")
        writer = csv.DictWriter(buffer, fieldnames=list(columns))
        writer.writeheader()
        for row in table:
            writer.writerow(
                {
                    k: ("" if row.get(k) is None else round(row[k], 6) if isinstance(row.get(k), float) else row[k])
                    for k in columns
                }
            )
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, out.parent) from None
    return atomic_write(out, buffer.getvalue())


# --- one folder, replaced whole -------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _respect_umask(root: Path) -> None:
    """mkdtemp makes 0700 folders: give the tree the modes the user's umask asks for."""
    mask = _umask()
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.relative_to(outer)
        return True
    except ValueError:
        return False


def _side_re(name: str) -> re.Pattern:
    # the tool's own siblings of DIR: .DIR.tmp-XXXXXXXX (being written), .DIR.old-XXXXXXXX (moved aside),
    # and .DIR.XXXXXXXX (temporary folders of earlier versions)
    return re.compile(rf"^\.{re.escape(name)}\.(?:(tmp|old)-)?[a-z0-9_]{{8}}$")


def recover_directory(directory: str | os.PathLike) -> str | None:
    """Finish or roll back an interrupted replacement of ``directory`` and remove the tool's orphaned
    temporary siblings. Returns what was done (``"rolled back"``, ``"finished"``) or None."""
    out = Path(directory)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return None
    pattern = _side_re(out.name)
    asides, temps = [], []
    for item in parent.iterdir():
        m = pattern.match(item.name)
        if m and item.is_dir() and not item.is_symlink():
            (asides if m.group(1) == "old" else temps).append(item)
    done = None
    asides.sort(key=lambda p: p.stat().st_mtime)
    if asides and not os.path.lexists(out):  # killed between moving the old one aside and moving the new one in
        os.replace(asides.pop(), out)
        done = "rolled back"
    elif asides:  # killed after the swap, before the old one was deleted
        done = "finished"
    for item in asides + temps:
        shutil.rmtree(item, ignore_errors=True)
    _remove_stale_lock(_lock_path(out))
    return done


def check_output(directory: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse an output that would delete the current folder or one of the command's inputs, and a
    symbolic link (replacing it would replace the link, not the folder it names)."""
    out = Path(directory)
    if not str(directory).strip():
        raise CondenseError("the output name is empty", "pass -o DIR")
    if out.is_symlink():
        raise CondenseError(
            f"output {str(out)!r} is a symbolic link",
            f"pass the folder it points to ({os.path.realpath(out)}) or a new -o DIR",
        )
    real = out.resolve()
    if _is_within(Path.cwd().resolve(), real):
        raise CondenseError(
            f"output {str(out)!r} contains the current folder; replacing it would delete it",
            "choose a new folder, e.g. -o out/NAME",
        )
    for item in inputs:
        if item is not None and _is_within(Path(item).resolve(), real):
            raise CondenseError(
                f"output {str(out)!r} contains the input {str(item)!r}; replacing it would delete it",
                "choose another -o DIR",
            )
    return out


def write_directory(
    directory: str | os.PathLike,
    fill: Callable[[Path], None],
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str = "condensed-model",
    legacy: Callable[[Path], set[str] | None] | None = None,
) -> Path:
    """Create (or replace) a folder atomically: ``fill(tmp)`` writes the files into a temporary sibling, a
    manifest of them is added, an existing folder is moved aside, the new one moved into its place, and the
    old one deleted. Only an empty folder or one this tool wrote as a ``kind`` folder (``claim_folder``;
    ``legacy`` recognises folders written before manifests) is replaced; nor one that holds the current
    folder or an input. The output is locked while it is written. On any failure nothing is left behind
    and the old folder is untouched."""
    out = check_output(directory, inputs)
    with output_lock(out):
        claim_folder(out, kind, legacy=legacy)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            recover_directory(out)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        except OSError as err:
            raise os_error(err, out.parent) from None
        aside = None
        try:
            fill(tmp)
            write_manifest(tmp, kind, atomic=False)
            _respect_umask(tmp)
            if out.exists():
                aside = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
                os.replace(out, aside)
            os.replace(tmp, out)
        except BaseException as err:
            if aside is not None and not out.exists():
                os.replace(aside, out)
                aside = None
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise os_error(err, out) from None
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return out


# --- one writer at a time -----------------------------------------------------------------------------------

_HELD: dict[str, int] = {}  # lock paths this process holds -> depth (the lock is re-entrant within a process)


def _lock_path(out: Path) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    return parent.resolve() / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``output`` while a command writes it; a second process that asks for the
    same output meanwhile gets a one-line error (it is refused, not queued: two commands writing one folder
    is a mistake, and waiting would hide it). Re-entrant within one process. Where the folder above cannot
    be written yet, the lock is taken once it exists (the write itself then reports the error)."""
    out = Path(output)
    path = _lock_path(out)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # folders the lock needs
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield  # the folder above cannot be made: the command's own write names the reason
        return
    try:
        fd = _acquire(path, out)
    except BaseException:
        _remove_empty(made)
        raise
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        _remove_empty(made)  # a command that failed leaves no empty folders behind


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this process made for a lock, deepest first, where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(path: Path, out: Path) -> int:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: an exclusive create stands in for the lock
        fcntl = None
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o666 & ~_umask())
        except FileExistsError:
            _busy(path, out)
        if fcntl is None:  # pragma: no cover
            os.write(fd, str(os.getpid()).encode())
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            _busy(path, out)
        # the holder before us may have unlinked the file between our open and our lock: lock the file
        # that is at the path now
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:  # the holder's process id, for the refusal's message; a full disk leaves it unsaid
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError:
                pass
            return fd
        os.close(fd)
    _busy(path, out)  # pragma: no cover
    raise AssertionError("unreachable")


def _remove_stale_lock(path: Path) -> None:
    """Delete a lock file that no process holds (its writer was killed)."""
    if not path.exists() or str(path) in _HELD:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # held: a writer is at work
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _busy(path: Path, out: Path):
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    who = f" (process {pid})" if pid.isdigit() else ""
    raise CondenseError(
        f"output {str(out)!r} is being written by another condense command{who}",
        "wait for it to finish, or choose another -o DIR",
    )
