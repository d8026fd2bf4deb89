"""Export a trial of a search as a condensed-model directory that ``condense.load`` reads.

In: a search directory (``STUDY_DIR``) and a trial number. Out: ``OUT/condensed.json`` and
``OUT/model.safetensors``: the trial's plan and the weights it was trained to in the search (saved then in
``STUDY_DIR/trials/N/``). Never: exports a trial that did not finish training (over budget, failed,
running), or leaves a partial directory behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from optuna.trial import TrialState

from condense import CondenseError
from condense import META, read_meta, write_directory

from ._config import TRIALS
from ._storage import study_from_dir

__all__ = ["export_trial", "ExportResult"]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    trial: int
    on_front: bool
    accuracy: float
    macs: int
    params: int


def export_trial(
    study_dir: str | os.PathLike,
    trial: int,
    output: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
) -> ExportResult:
    """Copy trial ``trial``'s trained model out of ``study_dir`` to ``output`` (default
    ``STUDY_DIR/export/trial-N``); ``condense.load(output)`` then reads it. ``storage``/``study_name``
    override those recorded in ``STUDY_DIR/search.json`` (e.g. another host's database URL)."""
    root = Path(study_dir)
    study, _meta = study_from_dir(root, storage, study_name)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial not in by_number:
        last = max(by_number) if by_number else None
        raise CondenseError(
            f"the study has no trial {trial}",
            f"trials are numbered 0..{last}" if last is not None else "the study has no trials",
        )
    t = by_number[trial]
    status = t.user_attrs.get("status")
    if t.state != TrialState.COMPLETE or status != "trained":
        why = status or t.state.name.lower()
        raise CondenseError(
            f"trial {trial} has no trained model ({why})", "export a trial on the front: see STUDY_DIR/front.csv"
        )
    source = root / TRIALS / str(trial)
    if not (source / META).is_file():
        recorded = t.user_attrs.get("trial_dir")
        hint = f"it was written on another host as {recorded}" if recorded else "the search directory is incomplete"
        raise CondenseError(f"{source} holds no saved model", hint)
    read_meta(source)  # a readable condensed-model directory
    out = Path(output) if output is not None else root / "export" / f"trial-{trial}"
    write_directory(
        out, lambda tmp: [shutil.copy2(item, tmp / item.name) for item in source.iterdir() if item.is_file()]
    )
    on_front = trial in {x.number for x in study.best_trials}
    return ExportResult(
        path=out,
        trial=trial,
        on_front=on_front,
        accuracy=float(t.values[0]),
        macs=int(t.values[1]),
        params=int(t.values[2]),
    )
