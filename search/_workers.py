"""Workers of a study: heartbeats, stale-trial recovery, SIGTERM as Ctrl-C.

In: a study and the trial a worker runs; ``grace_period``, ``heartbeat_interval``, ``max_retry``.
Out: a trial that died mid-way is marked failed and retried with the same parameters (up to ``max_retry``
times): with a database, by Optuna's heartbeat and ``RetryHeartbeatStaleTrialCallback`` (``_storage``);
with the journal file, which has no heartbeat, here: each running trial records its host and process and
beats every ``heartbeat_interval`` seconds (``_Heartbeat``), and a RUNNING trial whose process is gone (same
host) or whose beat is older than ``grace_period`` is failed and re-enqueued (``recover_stale_trials``) when
a worker starts or finishes a trial. SIGTERM during a trial raises KeyboardInterrupt as Ctrl-C does
(``_sigterm_as_interrupt``), so the trial is failed and re-enqueued at once.
Never: fails a trial twice (the storage refuses a second state change, so each stale trial is retried
once), or carries the dead worker's record, constraints or user attributes into the retry.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ._storage import _is_journal

_WORKER_KEY = "condense:worker"
_BEAT_KEY = "condense:heartbeat"


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # zombie / dead
        return None
    return fields[19]  # starttime (field 22 of stat; fields here start at field 3)


def _alive(pid: int, start: str | None) -> bool:
    if Path("/proc").is_dir():
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_info() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def _is_stale(trial, grace: float, now: float) -> bool:
    worker = trial.system_attrs.get(_WORKER_KEY)
    if worker and worker.get("host") == socket.gethostname() and not _alive(int(worker["pid"]), worker.get("start")):
        return True
    beat = trial.system_attrs.get(_BEAT_KEY)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) > grace


def recover_stale_trials(study: optuna.Study, grace_period: float, max_retry: int | None = 3) -> list[int]:
    """Journal storage: fail RUNNING trials whose worker is gone and re-enqueue their parameters.

    A trial is stale when its process is gone (same host) or its heartbeat is older than ``grace_period``
    seconds. Only one worker can fail a trial (the storage refuses a second state change), so each stale
    trial is retried once. Returns the numbers of the trials failed here. (RDB storages: Optuna does this.)
    """
    if not _is_journal(study._storage):
        return []
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(t, grace_period, now):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it (and retries it)
        _retry(study, t._trial_id, max_retry)
        failed.append(t.number)
    return failed


def _retry(study: optuna.Study, trial_id: int, max_retry: int | None) -> None:
    """Queue a failed trial again (same parameters), as Optuna's RetryHeartbeatStaleTrialCallback does, but
    without the dead worker's record, its constraints and user attributes (the retry measures them anew)."""
    frozen = copy.deepcopy(study._storage.get_trial(trial_id))
    frozen.system_attrs = {
        k: v
        for k, v in frozen.system_attrs.items()
        if k not in (_WORKER_KEY, _BEAT_KEY) and not k.startswith("constraints:")
    }
    frozen.user_attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, frozen)


class _Heartbeat:
    """For the journal storage: record the worker of a trial and beat every ``interval`` seconds."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"condense-heartbeat-{trial.number}")

    def _beat(self) -> bool:
        try:
            self.trial.storage.set_trial_system_attr(self.trial._trial_id, _BEAT_KEY, time.time())
            return True
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if not self._beat():
                return

    def __enter__(self):
        self.trial.storage.set_trial_system_attr(self.trial._trial_id, _WORKER_KEY, _worker_info())
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the trial under way is failed and retried."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
