"""condense search: the space, budgets as constraints, seeding, resume and retries, outputs, export, workers.

Everything runs on a tiny CIFAR-style net (a file factory written here, two runs of three blocks) and a
tiny MNIST-format npz with a learnable signal, so a trained trial takes a fraction of a second.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

import condense
from condense import CondenseError
import search
from conftest import tiny_mnist
import search._objective as objective_module
from condense.pde import layer_names
from condense.pde._global_layer import DIFFUSIONS, SOURCES, VELOCITIES
from search import build_space, export_main, run_search, search_main

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("CONDENSE_TEST_PG_URL")

NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c, stride=1, cin=None):
        super().__init__()
        cin = cin or c
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.short = None if stride == 1 and cin == c else nn.Sequential(
            nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.short is None else self.short(x)))


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, widths=(8, 12)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer1 = nn.Sequential(*[Block(widths[0]) for _ in range(3)])
        self.layer2 = nn.Sequential(Block(widths[1], 2, widths[0]), Block(widths[1]), Block(widths[1]))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[1], num_classes))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


def tiny(num_classes=10):
    return TinyNet(num_classes)
"""

# small and quick: 4 steps of 32 images per trial, 64 validation images
FAST = dict(batch_size=32, steps_per_epoch=4, limit_test=64, population=4, lr=0.05)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    (d / "tinynet.py").write_text(NET)
    tiny_mnist(d / "mnist.npz")
    return {"model": f"{d / 'tinynet.py'}:tiny", "data": f"mnist:{d / 'mnist.npz'}", "dir": d}


def _spy(monkeypatch):
    """Wrap the objective's train: record (MACs of the model trained, the model) per call."""
    calls = []
    real = objective_module.train

    def spy(model, data, config, **kw):
        macs, _ = condense.macs_and_params(model, data.input_size)
        res = real(model, data, config, **kw)
        calls.append({"macs": macs, "model": model})
        return res

    monkeypatch.setattr(objective_module, "train", spy)
    return calls


def _journal_study(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    name = optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage)


def _worker_cmd(env, out, trials, *extra):
    code = (
        "import sys, torch; torch.set_num_threads(1); from search import search_main; "
        "sys.exit(search_main(sys.argv[1:]))"
    )
    return [
        sys.executable,
        "-c",
        code,
        env["model"],
        "--data",
        env["data"],
        "-o",
        str(out),
        "--trials",
        str(trials),
        "--batch-size",
        "32",
        "--steps-per-epoch",
        "4",
        "--limit-test",
        "64",
        "--population",
        "4",
        "--no-reference",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def _popen(cmd):
    envvars = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(cmd, cwd=ROOT, env=envvars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --- the space ---------------------------------------------------------------------------------------------


def test_space_covers_layer_K_options_init_m_and_on_off(env, capsys):
    model = condense.build_model(env["model"])
    found = condense.find_runs(model, (1, 28, 28))
    space = build_space(found)
    dists = space.distributions()
    assert set(dists["layer"].choices) == set(layer_names()) - {"drop"}  # drop is chosen per run (drop[PATH])
    assert (dists["K"].low, dists["K"].high) == (1, 20)
    assert set(dists["velocity"].choices) == set(VELOCITIES)
    assert set(dists["diffusion"].choices) == set(DIFFUSIONS)
    assert set(dists["source"].choices) == set(SOURCES)
    assert set(dists["init"].choices) == {"input", "block"}
    assert [r.path for r in space.runs] == ["layer1", "layer2"]
    for run in space.runs:  # per run: condensed or not, and m in 1..r-1 (m = r is "not condensed")
        assert set(dists[f"condense[{run.path}]"].choices) == {True, False}
        assert (dists[f"m[{run.path}]"].low, dists[f"m[{run.path}]"].high) == (1, run.r - 1)
        assert set(dists[f"drop[{run.path}]"].choices) == {True, False}
    assert len(dists) == 6 + 3 * len(space.runs)  # shared choices are one parameter each for the model

    base = dict(layer="global", K=3, init="input", velocity="zero", diffusion="dwconv", source="none")
    params = {
        **base,
        "condense[layer1]": True,
        "m[layer1]": 2,
        "condense[layer2]": False,
        "m[layer2]": 1,
        "drop[layer1]": False,
        "drop[layer2]": False,
    }
    plan = space.plan(params)
    assert list(plan.choices) == ["layer1"]
    choice = plan.choices["layer1"]
    assert (choice.m, choice.layer, choice.init) == (2, "global", "input")
    assert choice.options == {"K": 3, "velocity": "zero", "diffusion": "dwconv", "source": "none"}
    eff = space.effective({**params, "layer": "implicit_rd"})
    assert eff["velocity"] is None and eff["m[layer2]"] == 3 and eff["m[layer1]"] == 2
    assert space.plan({**params, "layer": "implicit_rd"}).choices["layer1"].options == {"K": 3}
    assert not space.plan({**params, "condense[layer1]": False}).choices  # all off: the original model

    x = torch.randn(2, 1, 28, 28)
    for layer in layer_names():  # every layer type of the space builds and runs, with both initial guesses
        for init in ("input", "block"):
            p = {**params, "layer": layer, "init": init, "condense[layer2]": True}
            out = condense.rewrite(model, found, space.plan(p).choices).module.eval()(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()

    assert search_main([env["model"], "--input-size", "1x28x28", "--show-space"]) == 0
    shown = capsys.readouterr().out
    for name in ("layer", "K", "velocity", "diffusion", "source", "init", "condense[layer1]", "m[layer2]"):
        assert name in shown
    assert search_main([env["model"], "--budget", "1M"]) == 1  # no --data: one line, exit 1
    assert "--data is required" in capsys.readouterr().err


# --- a search: budgets, outputs, export --------------------------------------------------------------------


def test_budget_constraint_front_outputs_and_export(env, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    out = tmp_path / "s"
    res = run_search(env["model"], env["data"], output=out, macs="60%", trials=6, progress=False, **FAST)
    budget = res.reference["macs_budget"]
    study = res.study
    done = study.get_trials(states=(TrialState.COMPLETE,))
    over = [t for t in done if t.user_attrs["status"] == "over budget"]
    trained = [t for t in done if t.user_attrs["status"] == "trained"]
    assert over and trained, "the tiny space should give both kinds"
    # --trials counts the plans evaluated within the budget (trained, or diverged in training), once each
    assert len(_evaluated(study.trials)) == 6
    plans = [json.dumps(t.user_attrs["plan"], sort_keys=True) for t in _evaluated(study.trials) + over]
    assert len(set(plans)) == len(plans)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        if t.user_attrs["status"] == "duplicate":  # proposed again: not trained a second time
            assert study.trials[t.user_attrs["duplicate_of"]].user_attrs["plan"] == t.user_attrs["plan"]
    # over-budget plans were counted and recorded, never trained, never saved, never on the front
    assert len(calls) == 1 + len(trained)  # the reference (the original, proxy-trained) and the trained trials
    assert all(c["macs"] <= budget for c in calls[1:])
    assert calls[0]["macs"] == res.reference["macs"] > budget
    for t in over:
        assert t.constraints["macs"] > 0 and t.values[0] == 0.0 and t.user_attrs["macs"] > budget
        assert not (out / "trials" / str(t.number)).exists()
    front = {t.number for t in study.best_trials}
    assert front and front <= {t.number for t in trained}
    assert all(t.constraints["macs"] <= 0 for t in study.best_trials)
    assert set(res.front["trial"]) == front and (res.front["macs"] <= budget).all()
    # the data and the files
    for name in ("trials.csv", "front.csv", "front.png", "search.json", "study.journal"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    csv = pd.read_csv(out / "front.csv")
    assert set(csv["trial"]) == front and {"accuracy", "macs", "params", "layer", "K", "m[layer1]", "plan"} <= set(csv)
    assert len(pd.read_csv(out / "trials.csv")) == len(study.trials)
    # the first trial is condense's own plan for the budget (a feasible start)
    assert done[0].user_attrs["status"] == "trained"

    # export a front trial: condense.load gives what the trained model of that trial gives
    number = int(res.front.iloc[0]["trial"])
    trained_model = calls[1 + [t.number for t in trained].index(number)]["model"].eval()
    dest = tmp_path / "exported"
    assert export_main([str(out), "--trial", str(number), "-o", str(dest)]) == 0
    with pytest.raises(condense.CondenseError, match="loading it would run that file"):
        condense.load(dest)  # the factory file is not imported from a directory without trust_code
    loaded = condense.load(dest, trust_code=True)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_model(x))
    meta = json.loads((dest / "condensed.json").read_text())
    assert meta["search"]["trial"] == number and meta["counts"]["macs_after"] <= budget
    assert export_main([str(out), "--trial", str(over[0].number)]) == 1  # nothing trained to export
    assert export_main([str(out), "--trial", "999"]) == 1

    # re-running the finished search changes nothing (the study already has its trials)
    calls.clear()
    again = run_search(env["model"], env["data"], output=out, macs="60%", trials=6, progress=False, **FAST)
    assert not calls and len(again.study.trials) == len(study.trials)
    with pytest.raises(condense.CondenseError, match="other options"):
        run_search(env["model"], env["data"], output=out, macs="50%", trials=6, progress=False, **FAST)


def test_same_seed_same_params(env, tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "train", _fake_train)
    kw = dict(trials=5, progress=False, reference=False, enqueue_fit=False, **{**FAST, "population": 3})
    runs = [
        run_search(env["model"], env["data"], output=tmp_path / name, seed=seed, **kw).study
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    params = [[t.params for t in s.trials] for s in runs]
    assert len(params[0]) >= 5 and params[0] == params[1]  # NSGA-II's first and later generations
    assert params[0] != params[2]


def _fake_train(model, data, config, **kw):
    """Deterministic stand-in for training: accuracy from the parameter count (keeps the seeding test fast)."""
    n = sum(p.numel() for p in model.parameters())
    return condense.TrainResult(metrics={"test_acc": (n % 97) / 97}, history=[], model=model)


# --- interruption, killed workers, several workers -----------------------------------------------------------


def test_ctrl_c_keeps_finished_trials_and_retries_the_interrupted_one(env, tmp_path, monkeypatch):
    real = objective_module.train
    n = {"calls": 0}

    def interrupt_third(model, data, config, **kw):
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return real(model, data, config, **kw)

    monkeypatch.setattr(objective_module, "train", interrupt_third)
    out = tmp_path / "s"
    kw = dict(output=out, trials=4, progress=False, reference=False, enqueue_fit=False, **FAST)
    with pytest.raises(KeyboardInterrupt) as info:
        run_search(env["model"], env["data"], **kw)
    first = info.value.result.study
    ended = (TrialState.COMPLETE, TrialState.PRUNED)  # PRUNED: the training of that plan diverged
    finished = {t.number: t.values for t in first.get_trials(states=ended)}
    failed = first.get_trials(states=(TrialState.FAIL,))
    assert len(finished) == 2 and len(failed) == 1 and failed[0].number == 2
    assert (out / "front.csv").is_file()  # outputs written for what was finished

    res = run_search(env["model"], env["data"], **kw)  # the same call resumes
    trials = res.study.trials
    assert {t.number: t.values for t in trials if t.number in finished} == finished
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state in ended and retry[0].params == failed[0].params
    assert len(_evaluated(trials)) == 4


def _two_workers(env, out, trials, *extra, kill_one=False):
    """Two worker processes on one study; with ``kill_one``, SIGKILL the first in the middle of a trial
    (once the study has a finished trial). Returns the number of the trial it was killed in."""
    procs = [_popen(_worker_cmd(env, out, trials, *extra)) for _ in range(2)]
    killed = None
    try:
        deadline = time.time() + 120
        while kill_one and killed is None and time.time() < deadline and procs[0].poll() is None:
            time.sleep(0.02)
            try:
                study = _journal_study(out)
            except (IndexError, KeyError, OSError):
                continue  # the study is not created yet
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            mine = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.system_attrs.get("condense:worker", {}).get("pid") == procs[0].pid and "plan" in t.user_attrs
            ]  # its parameters are chosen: it is building or training
            if done and mine:
                procs[0].send_signal(signal.SIGKILL)
                killed = mine[0].number
        logs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if kill_one:
        assert killed is not None and procs[0].returncode == -signal.SIGKILL, logs[0][-3000:]
    for p, log in list(zip(procs, logs))[1 if kill_one else 0 :]:
        assert p.returncode == 0, log[-3000:]
    return killed


def _evaluated(trials):
    """Trials that count towards --trials: within the budgets, not a duplicate plan, finished."""
    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.user_attrs.get("status") not in ("over budget", "duplicate")
    ]


def _check_shared(study, trials, out, killed=None):
    """Every trial was run once and finished (the killed one failed and was retried once, by the other
    worker); nothing is left running; each finished trial saved its model."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED)
    all_trials = study.get_trials(deepcopy=False)
    assert [t.number for t in all_trials] == list(range(len(all_trials)))
    done = [t for t in all_trials if t.state in ended]
    assert trials <= len(_evaluated(all_trials)) <= trials + 1  # a worker may finish one trial past the target
    others = [t for t in all_trials if t.state not in ended]
    if killed is None:
        assert not others, [(t.number, t.state) for t in others]
    else:
        assert [t.number for t in others] == [killed] and others[0].state == TrialState.FAIL
        retry = [t for t in all_trials if t.system_attrs.get("failed_trial") == killed]
        assert len(retry) == 1 and retry[0].state in ended and retry[0].params == others[0].params
    for t in done:
        if t.state == TrialState.COMPLETE:
            assert (out / "trials" / str(t.number) / "condensed.json").is_file()
    return {t.system_attrs.get("condense:worker", {}).get("pid") for t in all_trials} - {None}


def test_two_workers_share_a_journal_study_and_survive_a_killed_one(env, tmp_path):
    out = tmp_path / "s"
    killed = _two_workers(env, out, 6, "--steps-per-epoch", "8", kill_one=True)  # trials of ~1 s
    study = _journal_study(out)
    pids = _check_shared(study, 6, out, killed)
    assert len(pids) == 2  # both workers ran trials
    before = {t.number: (t.state, t.values) for t in study.trials}

    # re-running the same search resumes it: nothing finished is lost, the study grows to the new target
    res = run_search(
        env["model"],
        env["data"],
        output=out,
        trials=8,
        progress=False,
        reference=False,
        **{**FAST, "steps_per_epoch": 8},
    )
    after = {t.number: (t.state, t.values) for t in res.study.trials}
    assert {n: after[n] for n in before} == before
    assert len(_evaluated(res.study.trials)) == 8
    assert not res.study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_resume_retries_a_trial_left_running_by_a_dead_worker(env, tmp_path):
    """What SIGKILL leaves behind, made directly: a RUNNING trial whose worker process is gone."""
    out = tmp_path / "s"
    kw = dict(output=out, progress=False, reference=False, enqueue_fit=False, **FAST)
    first = run_search(env["model"], env["data"], trials=2, **kw)
    study = _journal_study(out)
    dead = subprocess.Popen(["true"])  # a process that is gone by the time the search resumes
    dead.wait()
    trial = study.ask()
    params = first.space.suggest(trial)  # a worker asks, suggests its parameters, records itself, dies
    study._storage.set_trial_system_attr(
        trial._trial_id, "condense:worker", {"host": socket.gethostname(), "pid": dead.pid, "start": None}
    )
    res = run_search(env["model"], env["data"], trials=3, **kw)
    t = res.study.trials
    assert t[2].state == TrialState.FAIL and t[3].system_attrs["failed_trial"] == 2 and t[3].params == params
    assert t[3].state in (TrialState.COMPLETE, TrialState.PRUNED) and len(_evaluated(t)) == 3


@pytest.mark.skipif(not PG_URL, reason="CONDENSE_TEST_PG_URL is unset (bash .ci/postgres.sh starts a server)")
def test_two_workers_share_a_postgres_study(env, tmp_path):
    out = tmp_path / "s"
    name = f"test-{uuid.uuid4().hex[:8]}"
    _two_workers(env, out, 6, "--storage", PG_URL, "--study-name", name)
    study, meta = search.study_from_dir(out)  # the database URL recorded in search.json
    try:
        assert meta["config"]["storage"] == PG_URL and study.study_name == name
        _check_shared(study, 6, out)
        number = study.best_trials[0].number
        assert export_main([str(out), "--trial", str(number), "-o", str(tmp_path / "e")]) == 0
        assert condense.load(tmp_path / "e", trust_code=True)(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    finally:
        optuna.delete_study(study_name=name, storage=study._storage)


# --- a torn journal (a full disk or a kill mid-write) is repaired, keeping every complete record ------------


def _small_journal(path: Path) -> int:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    for _ in range(3):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("m", 1, 4)), n_trials=1)
    return len(study.trials)


def test_a_journal_torn_at_every_byte_of_its_last_record_is_repaired_and_resumes(tmp_path):
    from search._study import SearchConfig, make_storage, repair_journal

    whole = tmp_path / "whole.journal"
    n = _small_journal(whole)
    data = whole.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    config = SearchConfig(model="zoo:mnist_resnet_small", data="mnist:x.npz", output=str(tmp_path))
    for cut in range(last_start, len(data)):
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / "study.journal").write_bytes(data[:cut])
        with (
            pytest.warns(UserWarning, match="removed a torn last record")
            if cut > last_start
            else contextlib.nullcontext()
        ):
            storage = make_storage(config, out)
        assert (out / "study.journal").read_bytes() == data[:last_start]  # every complete record kept
        study = optuna.load_study(study_name="s", storage=storage)
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("m", 1, 4)), n_trials=1)
        again = optuna.load_study(study_name="s", storage=storage)
        assert len(again.trials) >= n and again.trials[-1].state == TrialState.COMPLETE
    assert repair_journal(whole) == 0 and whole.read_bytes() == data


def test_a_damaged_record_in_the_middle_is_an_error_not_a_cut(tmp_path):
    from search._study import repair_journal

    path = tmp_path / "study.journal"
    _small_journal(path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:5]
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    with pytest.raises(condense.CondenseError, match="record 2 is damaged and is not the last one"):
        repair_journal(path)
    assert path.read_bytes() == before


def test_the_original_model_is_seeded_so_workers_train_the_same_plan_from_the_same_weights(env, tmp_path):
    from search._study import SearchConfig, _build_original

    config = SearchConfig(model=env["model"], data=env["data"], output=str(tmp_path), seed=3)
    torch.manual_seed(1)
    a, _, _ = _build_original(config, None, 10)
    torch.manual_seed(2)
    b, _, _ = _build_original(config, None, 10)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bad_budget_creates_no_study_and_no_folder(env, tmp_path, capsys):
    out = tmp_path / "never"
    code = search_main([env["model"], "--data", env["data"], "--budget", "1K", "--trials", "2", "-o", str(out)])
    assert code == 1 and not out.exists()


def test_progress_is_one_plain_line_per_evaluated_trial_when_not_a_terminal():
    import io

    from rich.console import Console

    from search._study import _Progress

    out = io.StringIO()
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    bar = _Progress(3, True, Console(file=out, force_terminal=False))
    assert bar.bar is None  # no rich bar: it would show nothing in a log until the run ends
    with bar:
        bar.update(study)
        for i, status in enumerate(("trained", "over budget", "trained")):
            trial = optuna.trial.create_trial(values=[0.5 + i / 10, 1e6, 1e3], user_attrs={"status": status})
            study.add_trial(trial)
            bar.update(study)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "search: 0/3 evaluated",
        "search: 1/3 evaluated",
        "search: 2/3 evaluated",
    ]
    assert "1 over budget (not trained)" in lines[-1]
    quiet = io.StringIO()
    _Progress(3, False, Console(file=quiet)).update(study)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("sampler", ["nsgaii", "tpe", "random"])
def test_per_trial_seeding_relies_on_what_this_optuna_has(sampler, tmp_path):
    """The samplers are reseeded per trial through Optuna's private ``_rng`` (no public way exists): the
    attributes must be there, and trial N's parameters must depend only on (seed, N)."""
    from search._study import SearchConfig, make_sampler

    def draws(order):
        config = SearchConfig(model="zoo:x", data="mnist:x", output=str(tmp_path), sampler=sampler, seed=5)
        s = make_sampler(config)
        holders = [s] + ([s._random_sampler] if hasattr(s, "_random_sampler") else [])
        assert all(hasattr(h._rng, "rng") for h in holders)
        study = optuna.create_study(sampler=s, directions=["maximize", "minimize"])
        out = {}
        for n in order:
            while len(study.trials) < n:  # trials before n, drawn in another order of reads
                study.enqueue_trial({"x": 0.5})
                study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=1)
            t = study.ask()
            out[t.number] = t.suggest_float("x", 0, 1)
            study.tell(t, (0.0, 0.0))
        return out

    a, b = draws([0, 1, 2]), draws([0, 1, 2])
    assert a == b


def test_a_full_disk_during_a_search_is_one_line_and_the_journal_stays_readable(env, tmp_path, capsys):
    """A search writing its journal and trials onto a full disk: exit 1, "no space left on", and the journal
    it leaves resumes (its torn record, if any, is repaired)."""
    import subprocess as sp

    fs = tmp_path / "fs"
    fs.mkdir()
    if sp.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(fs)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (fs / "filler").write_bytes(b"x" * 60_000)
        out = fs / "s"
        code = search_main(
            [
                env["model"],
                "--data",
                env["data"],
                "--budget",
                "60%",
                "--trials",
                "4",
                "-o",
                str(out),
                "--batch-size",
                "32",
                "--steps-per-epoch",
                "2",
                "--limit-test",
                "64",
                "--no-reference",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        err = capsys.readouterr().err
        assert code == 1 and "no space left on" in err and "unexpected" not in err, err
        (fs / "filler").unlink()
        from search._study import repair_journal

        repair_journal(out / "study.journal")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
        assert optuna.get_all_study_names(storage)  # readable after the failure
    finally:
        sp.run(["umount", "-l", str(fs)], capture_output=True)


def test_teacher_is_built_from_its_spec_and_is_part_of_the_study(env, tmp_path, monkeypatch, capsys):
    """--teacher SPEC: every trial is distilled from that model (with its checkpoint); a resume with another
    teacher is refused; --teacher-checkpoint alone is an error."""
    seen = []
    real = objective_module.train

    def spy(model, data, config, teacher=None, **kw):
        seen.append(teacher)
        return real(model, data, config, teacher=teacher, **kw)

    monkeypatch.setattr(objective_module, "train", spy)
    torch.manual_seed(5)
    teacher = condense.build_model(env["model"], num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    kw = dict(trials=1, progress=False, reference=False, enqueue_fit=False, **{**FAST, "population": 3})
    out = tmp_path / "s"
    run_search(
        env["model"],
        env["data"],
        output=out,
        teacher=env["model"],
        teacher_checkpoint=str(tmp_path / "teacher.pt"),
        **kw,
    )
    assert seen and all(t is not None for t in seen)
    for a, b in zip(seen[0].state_dict().values(), teacher.state_dict().values()):
        assert torch.equal(a, b)  # the teacher's own weights, not the original's
    info = json.loads((out / "trials" / "0" / "condensed.json").read_text())["search"]
    assert info["distilled"] is True
    with pytest.raises(condense.CondenseError, match="teacher"):
        run_search(env["model"], env["data"], output=out, **kw)  # same study, no teacher
    with pytest.raises(condense.ConfigError, match="teacher_checkpoint"):
        run_search(env["model"], env["data"], output=tmp_path / "t", teacher_checkpoint="x.pt", **kw)


# --- a search folder belongs to one study (issue: never write into what is not this search's) ------------


def test_a_search_folder_belongs_to_one_study_and_resume_checks_seed_and_data(env, tmp_path):
    out = tmp_path / "s"
    kw = dict(output=out, trials=1, progress=False, reference=False, **FAST)
    run_search(env["model"], env["data"], **kw)
    trial0 = (out / "trials" / "0" / "condensed.json").read_text()
    other = tmp_path / "other.py"
    other.write_text(NET)
    with pytest.raises(CondenseError, match="holds the study 'condense-tinynet-tiny'"):
        run_search(f"{other}:tiny", env["data"], **kw)  # another model: another study, refused
    with pytest.raises(CondenseError, match="seed: 0 -> 1"):
        run_search(env["model"], env["data"], seed=1, **kw)
    moved = tmp_path / "elsewhere" / "mnist.npz"
    moved.parent.mkdir()
    shutil.copy(env["dir"] / "mnist.npz", moved)
    with pytest.raises(CondenseError, match="data_path"):  # the same content under another path
        run_search(env["model"], f"mnist:{moved}", **kw)
    changed = tmp_path / "changed" / "mnist.npz"
    changed.parent.mkdir()
    tiny_mnist(changed, seed=5)
    with pytest.raises(CondenseError, match="data_fingerprint"):
        run_search(env["model"], f"mnist:{changed}", **{**kw, "storage": str(out / "study.journal")})
    assert (out / "trials" / "0" / "condensed.json").read_text() == trial0
    assert (
        len(
            optuna.get_all_study_names(
                optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
            )
        )
        == 1
    )


def test_a_folder_that_is_not_a_search_is_refused(env, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(CondenseError, match="not a search folder"):
        run_search(env["model"], env["data"], output=out, trials=1, progress=False, reference=False, **FAST)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


# --- width in the space, latency as the objective -----------------------------------------------------------


def test_space_with_widths_lists_and_plans_them(env, capsys):
    from search import SearchSpace

    model = condense.build_model(env["model"])
    found = condense.find_runs(model, (1, 28, 28))
    plain = build_space(found)
    assert not any(name.startswith("width[") for name in plain.distributions())  # no width unless asked
    assert "widths" not in plain.to_dict()  # a study stored before widths existed has the same space
    space = build_space(found, widths=(0.5, 0.25))
    dists = space.distributions()
    for run in space.runs:
        assert dists[f"width[{run.path}]"].choices == (0.0, 0.25, 0.5)
    assert len(dists) == 6 + 4 * len(space.runs)
    params = space.params_of_plan({"layer1": 2})
    assert space.width_of(params) == {} and space.effective(params)["width[layer1]"] == 0.0
    params["width[layer2]"] = 0.5
    assert space.width_of(params) == {"layer2": 0.5} and space.effective(params)["width[layer2]"] == 0.5
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(condense.ConfigError, match="in \\[0, 1\\)"):
        build_space(found, widths=(1.5,))
    assert search_main([env["model"], "--input-size", "1x28x28", "--show-space", "--widths", "0.25,0.5"]) == 0
    shown = capsys.readouterr().out
    assert "width[layer1]" in shown and "width[layer2]" in shown


def test_search_samples_width_records_it_and_export_rebuilds_it(env, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    out = tmp_path / "w"
    res = run_search(
        env["model"],
        env["data"],
        output=out,
        macs="60%",
        trials=4,
        progress=False,
        reference=False,
        widths=(0.5,),
        **FAST,
    )
    trained = [t for t in res.study.trials if t.user_attrs.get("status") == "trained"]
    assert len(calls) == len(trained)  # no reference: one training per trained trial
    wide = [t for t in trained if t.user_attrs.get("width")]
    assert wide, "the sampler should draw width in some trained trial"
    t = wide[0]
    row = res.trials.loc[t.number]
    for path in ("layer1", "layer2"):  # the trial table records the width of every run
        assert row[f"width[{path}]"] == t.user_attrs["width"].get(path, 0.0)
    meta = json.loads((out / "trials" / str(t.number) / "condensed.json").read_text())
    assert meta["width"]["ratios"] == t.user_attrs["width"] and meta["width"]["history"]
    dest = tmp_path / "exported"
    assert export_main([str(out), "--trial", str(t.number), "-o", str(dest)]) == 0
    loaded = condense.load(dest, trust_code=True)
    trained_model = calls[trained.index(t)]["model"].eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained_model(x))
    assert condense.macs_and_params(loaded, (1, 28, 28)) == (t.user_attrs["macs"], t.user_attrs["params"])
    original = condense.build_model(env["model"])
    for path, share in t.user_attrs["width"].items():  # the run's anchor block (always kept) is narrower
        before = original.get_submodule(f"{path}.0.conv1").out_channels
        assert loaded.get_submodule(f"{path}.0.conv1").out_channels == int(before * (1 - share))


def test_width_alone_space_searches_only_width_and_keeps_every_block(env, tmp_path, monkeypatch, capsys):
    from search import SearchSpace

    found = condense.find_runs(condense.build_model(env["model"]), (1, 28, 28))
    space = build_space(found, widths=(0.25, 0.5), depth=False)
    assert sorted(space.distributions()) == sorted(f"width[{r.path}]" for r in space.runs)
    params = {f"width[{r.path}]": 0.5 for r in space.runs}
    assert space.plan(params).choices == {}  # every block kept
    eff = space.effective(params)
    assert eff["layer"] is None and all(eff[f"m[{r.path}]"] == r.r for r in space.runs)
    assert SearchSpace.from_dict(space.to_dict()) == space and space.to_dict()["depth"] is False
    assert "depth" not in build_space(found, widths=(0.5,)).to_dict()  # older studies keep their space
    with pytest.raises(condense.ConfigError, match="--no-depth"):
        build_space(found, depth=False)
    assert search_main([env["model"], "--input-size", "1x28x28", "--show-space", "--no-depth"]) == 1
    assert "--no-depth" in capsys.readouterr().err

    calls = _spy(monkeypatch)
    out = tmp_path / "wo"
    res = run_search(
        env["model"],
        env["data"],
        output=out,
        macs="70%",
        trials=3,
        progress=False,
        reference=False,
        widths=(0.25, 0.5),
        depth=False,
        **FAST,
    )
    trained = [t for t in res.study.trials if t.user_attrs.get("status") == "trained"]
    assert trained and len(calls) == len(trained)
    original = condense.build_model(env["model"])
    for t in trained:
        assert t.user_attrs["plan"] == {}
        macs0 = condense.macs_and_params(original, (1, 28, 28))[0]
        assert t.user_attrs["width"] and t.user_attrs["macs"] <= 0.7 * macs0
        model = calls[trained.index(t)]["model"]
        for r in space.runs:  # no block removed
            assert len(model.get_submodule(r.path)) == len(original.get_submodule(r.path))
    with pytest.raises(condense.CondenseError, match="other options"):  # the depth study is another study
        run_search(
            env["model"],
            env["data"],
            output=out,
            macs="70%",
            trials=3,
            progress=False,
            reference=False,
            widths=(0.25, 0.5),
            **FAST,
        )
    with pytest.raises(condense.BudgetError, match="every run's channels removed"):
        run_search(
            env["model"],
            env["data"],
            output=tmp_path / "tight",
            macs="5%",
            trials=1,
            progress=False,
            reference=False,
            widths=(0.25,),
            depth=False,
            **FAST,
        )
    assert not (tmp_path / "tight").exists()


def test_compare_latency_re_times_every_front_member_with_the_original(env, tmp_path, capsys):
    from search import compare_main, hypervolume, latency_fronts

    depth = tmp_path / "depth"
    width = tmp_path / "width"
    run_search(env["model"], env["data"], output=depth, macs="80%", trials=2, progress=False, reference=False, **FAST)
    run_search(
        env["model"],
        env["data"],
        output=width,
        macs="80%",
        trials=2,
        progress=False,
        reference=False,
        widths=(0.25, 0.5),
        depth=False,
        **FAST,
    )
    with pytest.raises(condense.CondenseError, match="trust_code"):  # a file.py model is not imported unasked
        latency_fronts([depth, width], batches=(1,), repeats=1)
    members, summary = latency_fronts([depth, width], batches=(1, 2), repeats=2, warmup=1, trust_code=True)
    original = members[members["study"] == "original"].iloc[0]
    assert original["b1_ratio"] == 1.0 and original["b2_ratio"] == 1.0
    for study in (depth, width):
        trials = pd.read_csv(study / "trials.csv")
        front = trials[(trials["status"] == "trained") & (trials["on_front"] == True)]  # noqa: E712
        mine = members[members["study"] == study.name].set_index("trial")
        assert sorted(mine.index) == sorted(front["trial"])  # every front member, and only those
        for _, t in front.iterrows():  # counted on the loaded model: the search's own figures
            assert (mine.loc[t["trial"], "macs"], mine.loc[t["trial"], "params"]) == (t["macs"], t["params"])
            assert mine.loc[t["trial"], "b1_ms"] > 0
        for b in (1, 2):
            row = summary[(summary["study"] == study.name) & (summary["batch"] == b)].iloc[0]
            pts = [[1 - a, r] for a, r in zip(mine["accuracy"], mine[f"b{b}_ratio"])]
            assert row["hypervolume"] == pytest.approx(hypervolume(pts, (1, 1)))
    assert set(summary.columns) >= {"covers[depth]", "covers[width]"}

    plot, table, listed = tmp_path / "fronts.png", tmp_path / "fronts.csv", tmp_path / "members.csv"
    assert (
        compare_main(
            [
                str(depth),
                str(width),
                "--latency",
                "1,2",
                "--repeats",
                "2",
                "--plot",
                str(plot),
                "--csv",
                str(table),
                "--members",
                str(listed),
                "--trust-code",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "re-timed" in out and "dominates width" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(table)) == 4 and len(pd.read_csv(listed)) == len(members)
    assert compare_main([str(depth), "--members", str(listed)]) == 1  # --members needs --latency
    assert "--latency" in capsys.readouterr().err
    assert compare_main([str(depth), "--latency", "1", "--finished", "--trust-code"]) == 1  # none finished yet
    assert "--finish" in capsys.readouterr().err


def test_the_supernet_refuses_width(env, tmp_path):
    from search import run_supernet_search

    with pytest.raises(condense.ConfigError, match="per trial only"):
        run_supernet_search(env["model"], env["data"], output=tmp_path / "sn", widths=(0.5,), progress=False, **FAST)
    assert not (tmp_path / "sn").exists()


def test_latency_objective_on_a_tiny_model(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", _fake_train)
    out = tmp_path / "lat"
    argv = [
        env["model"],
        "--data",
        env["data"],
        "--budget",
        "60%",
        "--trials",
        "3",
        "--batch-size",
        "32",
        "--steps-per-epoch",
        "4",
        "--limit-test",
        "64",
        "--population",
        "4",
        "--no-reference",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert search_main([*argv, "-o", str(out), "--objective", "latency"]) == 0
    capsys.readouterr()
    study = _journal_study(out)
    assert study.metric_names == ["accuracy", "latency_ms"] and len(study.directions) == 2
    config = json.loads((out / "search.json").read_text())
    assert config["objectives"] == ["accuracy", "latency_ms"] and config["reference"]["latency_ms"] > 0
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert len(trained) == 3
    budget = config["reference"]["macs_budget"]
    for t in trained:  # the values are (accuracy, latency); MACs and params are still counted and budgeted
        assert t.values[1] == t.user_attrs["latency_ms"] > 0 and t.user_attrs["macs"] <= budget
    import pandas as pd

    table = pd.read_csv(out / "trials.csv")
    assert {"latency_ms", "macs", "params"} <= set(table.columns)
    # condense compare puts a latency study on (error, latency / original) axes
    df = search.compare_studies([out])
    ok = table[(table["state"] == "COMPLETE") & (table["feasible"] == True)]  # noqa: E712
    points = [(1 - a, ms / config["reference"]["latency_ms"]) for a, ms in zip(ok["accuracy"], ok["latency_ms"])]
    assert df.iloc[0]["objective"] == "latency"
    assert df.iloc[0]["hypervolume"] == pytest.approx(search.hypervolume(points, (1.0, 1.0)))
    # ... and refuses to put it beside a MAC study; resuming it with the MAC objective is refused
    macs_dir = tmp_path / "macs"
    assert search_main([*argv, "-o", str(macs_dir)]) == 0
    with pytest.raises(CondenseError, match="same --objective"):
        search.compare_studies([out, macs_dir])
    assert search_main([*argv, "-o", str(out)]) == 1
    assert "objectives" in capsys.readouterr().err
    with pytest.raises(condense.ConfigError, match="objective"):
        search.SearchConfig(model=None, data="mnist:x", objective="flops")


def test_a_width_multiple_reaches_every_trial_and_is_part_of_the_study(env, tmp_path, monkeypatch):
    from search import SearchConfig

    with pytest.raises(condense.ConfigError, match="width_multiple"):
        SearchConfig(model=env["model"], data=env["data"], width_multiple=4)  # no widths to round
    with pytest.raises(condense.ConfigError, match="width_multiple"):
        SearchConfig(model=env["model"], data=env["data"], widths=(0.5,), width_multiple=0)
    calls = _spy(monkeypatch)
    out = tmp_path / "m4"
    common = dict(macs="90%", progress=False, reference=False, widths=(0.25, 0.5), depth=False, **FAST)
    res = run_search(env["model"], env["data"], output=out, trials=3, width_multiple=4, **common)
    trained = [t for t in res.study.trials if t.user_attrs.get("status") == "trained"]
    assert trained and len(calls) == len(trained)
    for t in trained:
        meta = json.loads((out / "trials" / str(t.number) / "condensed.json").read_text())
        assert meta["width"]["multiple"] == 4
        for before, after in meta["width"]["channels"].values():  # 8 and 12 channels: pruned to multiples of 4
            assert after % 4 == 0 and after <= before
    with pytest.raises(condense.CondenseError, match="width_multiple"):  # another multiple is another study
        run_search(env["model"], env["data"], output=out, trials=3, width_multiple=8, **common)
    with pytest.raises(condense.CondenseError, match="width_multiple"):
        run_search(env["model"], env["data"], output=out, trials=3, **common)
