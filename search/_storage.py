"""Where a study lives: the search folder, the journal file or a database, the study created or loaded.

In: a ``SearchConfig`` and an output folder (``STUDY_DIR``), or a search folder to read back.
Out: the storage (``make_storage``: ``STUDY_DIR/study.journal`` by default, or an RDB storage with Optuna's
heartbeats for a database URL), the study (``open_study``: created, or loaded with the same storage and
study name; ``study_from_dir``: a finished search's), a journal with its torn last record cut off
(``repair_journal``).
Never: writes into a folder that is not a search's (a non-empty folder without ``search.json`` or a journal
is refused; files a user adds to a search folder are kept), nor into another study's folder (a search folder
belongs to one study: another model or study name is refused, naming what differs); cuts a complete
journal record (a damaged record that is not the last one is an error); prints a database password
(``_safe_url``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileSymlinkLock

from condense import CondenseError, claim_folder, os_error
from condense._write import check_output, foreign_files, read_manifest, write_manifest

from ._config import CONFIG, JOURNAL, SEARCH_FILES, SEARCH_KIND, SearchConfig, _config_kwargs, load_config
from ._objective import objective_directions
from ._samplers import make_sampler


def _legacy_search(folder: Path) -> set[str] | None:
    """A search folder written before manifests: it holds ``search.json`` or a journal."""
    return set(SEARCH_FILES) if (folder / CONFIG).is_file() or (folder / JOURNAL).is_file() else None


def claim_search_folder(config: "SearchConfig") -> None:
    """Before anything is built: the output must be empty, new, or this study's search folder. A folder
    that is not a search's is refused; so is another study's (its ``search.json`` names another study, or
    its journal holds other studies), naming what differs."""
    out = check_output(config.output)
    if not out.exists():
        return
    if not out.is_dir():
        raise CondenseError(f"output {str(out)!r} is a file", "choose a new -o DIR")
    if not any(out.iterdir()):
        return
    if foreign_files(out, SEARCH_KIND, _legacy_search) is None:
        claim_folder(out, SEARCH_KIND, legacy=_legacy_search)  # raises, naming the problem
    if (out / CONFIG).is_file():
        meta = load_config(out)
        theirs = meta.get("study_name")
        if theirs != config.name:
            model = meta["config"].get("model")
            raise CondenseError(
                f"{str(out)!r} holds the study {theirs!r} (model {model}), not {config.name!r}",
                "choose another -o DIR for this search (a search folder holds one study)",
            )
    if config.storage is None and (out / JOURNAL).is_file():
        names = [s for s in optuna.get_all_study_names(_journal_storage(out / JOURNAL)) if s != config.name]
        if names:
            raise CondenseError(
                f"{str(out)!r} holds the study {names[0]!r}, not {config.name!r}",
                "choose another -o DIR for this search (a search folder holds one study)",
            )


def _is_journal(storage) -> bool:
    return isinstance(storage, optuna.storages.JournalStorage)


def repair_journal(path: str | os.PathLike) -> int:
    """Cut a torn last record (a write cut short by a full disk or a kill) off a journal file, keeping every
    complete record, so that appending to it again cannot make the study unreadable. Holds the journal's
    own lock while it checks. Returns the number of bytes removed (0 for a sound journal). A damaged record
    that is not the last one is an error: nothing is cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    while not lock.acquire():
        time.sleep(0.05)
    try:
        data = path.read_bytes()
        good = 0  # end of the last complete, readable record
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            last = number == len(lines) - 1
            if last and not line:
                break
            try:
                json.loads(line)
                ok = not last  # a last piece without its newline was cut short, even if it parses
            except ValueError:
                ok = False
            if not ok:
                if not last:
                    raise CondenseError(
                        f"{path}: record {number + 1} is damaged and is not the last one",
                        "the journal was edited or corrupted: restore it from a copy",
                    )
                break
            good += len(line) + 1
        cut = len(data) - good
        if cut:
            try:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                raise os_error(err, path) from None
        return cut
    finally:
        lock.release()


def _journal_storage(path: Path):
    cut = repair_journal(path)
    if cut:
        warnings.warn(f"{path}: removed a torn last record ({cut} bytes; every complete record kept)", stacklevel=3)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_storage(config: SearchConfig, output: Path):
    """The journal file in ``output`` (default; a torn last record is repaired first) or an RDB storage
    with heartbeats for a database URL."""
    if config.storage is None:
        try:
            output.mkdir(parents=True, exist_ok=True)
            if read_manifest(output) is None:
                write_manifest(output, SEARCH_KIND, SEARCH_FILES)
        except OSError as err:
            raise os_error(err, output) from None
        return _journal_storage(output / JOURNAL)
    url = config.storage
    if url.endswith((".journal", ".log")) and "://" not in url:
        return _journal_storage(Path(url))
    url = database_url(url)
    for attempt in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=config.heartbeat_interval,
                    grace_period=config.grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry),
                )
            except ImportError as err:
                raise CondenseError(
                    f"cannot open storage {_safe_url(url)}: {err}",
                    "install the database driver, e.g. pip install psycopg2-binary",
                ) from None
            except Exception as err:  # sqlalchemy errors: one line
                import sqlalchemy.exc  # optuna's dependency, not a declared one of ours: only on this error path

                # workers that start together on an empty database race to create the tables: try again
                if isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) and attempt < 5:
                    time.sleep(0.2 + 0.3 * attempt + random.random() * 0.3)
                    continue
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CondenseError(
                    f"cannot open storage {_safe_url(url)}: {first[:160]}",
                    "is the database server running and the URL right?",
                ) from None
    raise AssertionError("unreachable")


def database_url(url: str) -> str:
    """``postgresql://...`` with the driver that is installed: SQLAlchemy 2.1 means psycopg (3) by default,
    this project's driver is psycopg2-binary, so the URL names ``postgresql+psycopg2`` when only it is there."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def open_study(config: SearchConfig, output: str | os.PathLike | None = None) -> optuna.Study:
    """Create the study, or load it if it exists (same storage and study name)."""
    out = Path(output if output is not None else config.output)
    storage = make_storage(config, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        directions = objective_directions(config.latency, config.objective)
        study = optuna.create_study(
            storage=storage,
            study_name=config.name,
            load_if_exists=True,
            directions=directions,
            sampler=make_sampler(config),
        )
    if len(study.directions) != len(directions):
        raise CondenseError(
            f"study {config.name!r} has {len(study.directions)} objectives, this search {len(directions)}",
            "use the same --latency and --objective settings, or another --study-name / output directory",
        )
    return study


def study_from_dir(
    output: str | os.PathLike, storage: str | None = None, study_name: str | None = None
) -> tuple[optuna.Study, dict[str, Any]]:
    """The study of a search directory (its journal, or the database named in search.json / ``storage``)."""
    meta = load_config(output)
    url = storage or meta["config"].get("storage")
    if url is None:
        journal = Path(output) / JOURNAL
        if not journal.is_file():
            raise CondenseError(f"{journal} does not exist", "was the search run with --storage? pass it")
        st = _journal_storage(journal)
    else:
        cfg = SearchConfig(**{**_config_kwargs(meta["config"]), "storage": url})
        st = make_storage(cfg, Path(output))
    name = study_name or meta["study_name"]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise CondenseError(f"no study {name!r} in the storage", "pass --study-name") from None
    return study, meta
