"""``condense search`` and ``condense export``: parse, call ``run_search`` / ``export_trial``, print.

Both return an exit code: 0 done, 1 a domain error (one line, ``--debug`` for the traceback), 130
interrupted (the finished trials are kept and the outputs written; the same command resumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from condense import (
    CondenseError,
    build_model,
    default_input_size,
    find_runs,
    format_count,
    parse_input_size,
    parse_model_spec,
    report_error,
    zoo,
)
from condense._help import HelpFormatter
from condense._intlist import int_list_type
from condense.data import load_data

from ._compare import _load, compare_studies, latency_fronts
from ._versus_fronts import is_versus_dir, versus_fronts
from ._config import JOURNAL
from ._export import export_trial
from ._finish import FinishConfig, finish_table
from ._pareto import front_table, write_csv
from ._plot import plot_fronts, plot_latency_fronts
from ._space import build_space
from ._storage import _safe_url
from ._study import format_reference, run_search
from ._supernet import SupernetOptions, run_supernet_search

__all__ = ["search_main", "export_main", "compare_main", "search_parser", "export_parser", "compare_parser"]

SEARCH_EPILOG = """\
Each trial condenses the model with one plan, counts it, and (if it fits the budgets) trains it briefly on
the data; the study keeps accuracy, MACs and parameters (and latency with --latency). Over-budget plans are
recorded but never trained and never enter the front. Re-running the same command resumes the study;
several workers may share one study with --storage postgresql://... (same --study-name).

examples:
  condense search timm:resnet18 --data cifar10:data/cifar10.tar.gz --budget 1G --trials 40 --epochs-per-trial 1
  condense search zoo:resnet32 --data cifar10:PATH --budget 40% --show-space
  condense search timm:resnet18 --data cifar10:PATH --budget 1G --storage postgresql://u:p@host/db
  condense search zoo:resnet32 --data cifar10:PATH --budget 40% --strategy supernet --checkpoint r32.pth --finish 3
  condense export searches/resnet18 --trial 12 -o out/resnet18-t12
  condense compare searches/resnet18 searches/resnet18-random --plot fronts.png
  optuna-dashboard searches/resnet18/study.journal
"""


def _int_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, e.g. 1-20, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _shares(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected shares like 0.25,0.5, got {text!r}") from None


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense search",
        formatter_class=HelpFormatter,
        epilog=SEARCH_EPILOG,
        description="Search condense plans (kept blocks per run, layer type, K, Global layer options) for the "
        "best accuracy / MACs / parameter trade-offs under hard budgets (Optuna, NSGA-II).",
    )
    p.add_argument("model", metavar="MODEL", help="timm:NAME, zoo:NAME or path/to/file.py:factory")
    p.add_argument("--data", metavar="SPEC", help="training data: cifar10:PATH, cifar100:PATH, mnist:PATH, ...")
    p.add_argument("--budget", "--macs", dest="macs", metavar="MACS", help="MAC budget (hard), e.g. 1G or 60%%")
    p.add_argument("--params", metavar="PARAMS", help="parameter budget (hard), e.g. 2.5M or 50%%")
    p.add_argument(
        "--trials",
        type=int,
        default=40,
        help="plans to evaluate within the budgets (default 40); over-budget plans are recorded but "
        "not trained and do not count (at most 10 x N of them)",
    )
    t = p.add_argument_group("proxy training (each trial)")
    t.add_argument("--epochs-per-trial", type=int, default=1, help="training epochs of each trial")
    t.add_argument("--steps-per-epoch", type=int, default=None, help="at most N steps per epoch")
    t.add_argument("--batch-size", type=int, default=128, help="images per step")
    t.add_argument("--lr", type=float, default=0.05, help="learning rate of each trial's training")
    t.add_argument("--limit-train", type=int, default=None, help="use N training images (a fixed subset)")
    t.add_argument("--limit-test", type=int, default=None, help="use N validation images")
    t.add_argument("--input-size", metavar="CxHxW", help="resize the data to this (default: the data's size)")
    t.add_argument("--checkpoint", metavar="FILE", help="local weights for MODEL (the original)")
    t.add_argument("--distill", action="store_true", help="distil each trial from the original model")
    t.add_argument("--teacher", metavar="SPEC", help="distil from this model instead (timm:NAME, zoo:NAME, file.py:f)")
    t.add_argument("--teacher-checkpoint", metavar="FILE", help="local weights for --teacher")
    t.add_argument("--latency", action="store_true", help="also minimise latency measured on this machine")
    t.add_argument("--latency-batch", type=int, default=1, metavar="N", help="batch size for --latency (default 1)")
    t.add_argument("--latency-compiled", action="store_true", help="measure --latency on torch.compile'd models")
    t.add_argument(
        "--objective",
        choices=("macs", "latency"),
        default="macs",
        help="what accuracy is traded against: macs (MACs and parameters, the default) or latency "
        "(measured on --device at --latency-batch: the objectives become accuracy and latency; "
        "MACs and parameters are still counted and budgeted)",
    )
    s = p.add_argument_group("space and sampler")
    s.add_argument(
        "--layers",
        type=_names,
        default=None,
        help="layer types to search, comma-separated (default: global,linearmix,explicit_rd,"
        "implicit_rd,circulant_rd,drop; drop deletes a run's removed blocks, chosen per run)",
    )
    s.add_argument("--K", type=_int_range, default=None, metavar="LO-HI", help="range of K (default 1-20)")
    s.add_argument(
        "--widths",
        type=_shares,
        default=None,
        metavar="W,W",
        help="also search width: each run removes 0 or one of these shares of its channels (Torch-Pruning, "
        "before the plan), e.g. 0.25,0.5; per-trial strategy only (default: no width)",
    )
    s.add_argument(
        "--no-depth",
        action="store_true",
        help="search width alone (needs --widths): every run keeps its blocks; the channel-pruning "
        "front, to set beside depth and joint searches with condense compare",
    )
    s.add_argument(
        "--width-importance",
        choices=("l1", "group"),
        default="l1",
        help="how trials with width rank channels: l1 magnitude (default) or group norm",
    )
    s.add_argument(
        "--width-multiple",
        type=int,
        default=1,
        metavar="N",
        help="with --widths: keep every pruned channel group of more than N channels at a multiple of N "
        "(python -m condense.bench.channels says which N this machine likes; default 1)",
    )
    s.add_argument(
        "--sampler",
        choices=("nsgaii", "tpe", "random"),
        default="nsgaii",
        help="nsgaii (default), tpe, or random (a baseline; compare with condense compare)",
    )
    s.add_argument("--population", type=int, default=10, help="NSGA-II population size (default 10)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's training")
    s.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="where trials train and latency is measured: auto (CUDA when available, else CPU), cpu, cuda, cuda:N, mps",
    )
    s.add_argument(
        "--max-proposals",
        type=int,
        default=None,
        metavar="N",
        help="stop after N plans over budget or duplicate (default 10 x --trials); plans far over "
        "budget by estimate cost about a tenth of a second, so a random search at a tight "
        "budget may need many",
    )
    s.add_argument(
        "--no-fit-start",
        action="store_true",
        help="do not start from condense's own plan for the budget (enqueued as the first trial)",
    )
    s.add_argument("--show-space", action="store_true", help="print the search space and exit")
    w = p.add_argument_group("strategy")
    w.add_argument(
        "--strategy",
        choices=("trials", "supernet"),
        default="trials",
        help="trials: train each plan briefly (default); supernet: train one weight-sharing supernet "
        "(in DIR/supernet, resumed) and score each plan with its weights",
    )
    w.add_argument("--supernet-epochs", type=int, default=5, metavar="E", help="supernet training epochs")
    w.add_argument(
        "--random-plans",
        type=int,
        default=2,
        metavar="N",
        help="random plans per supernet step besides the largest and the smallest (default 2)",
    )
    w.add_argument(
        "--calib-images",
        type=int,
        default=256,
        metavar="N",
        help="training images for each scored plan's BatchNorm statistics (default 256)",
    )
    f = p.add_argument_group("finish (after the search)")
    f.add_argument(
        "--finish",
        type=int,
        default=None,
        metavar="N",
        help="fine-tune N members of the Pareto front (spread over its MACs, the most accurate always "
        "included) from the search's weights and report their final accuracies beside the search's "
        "scores (DIR/finished.csv, DIR/finished/<trial>/model); resumed like the search",
    )
    f.add_argument("--finish-epochs", type=int, default=10, metavar="E", help="fine-tuning epochs of each member")
    f.add_argument(
        "--finish-lr",
        type=float,
        default=None,
        metavar="LR",
        help="fine-tuning learning rate (default: --lr), cosine schedule",
    )
    o = p.add_argument_group("study and output")
    o.add_argument("-o", "--output", metavar="DIR", help="study directory (default searches/<model name>)")
    o.add_argument(
        "--storage",
        metavar="URL",
        help="database for a shared study, e.g. postgresql://user:pw@host/db (default: DIR/study.journal)",
    )
    o.add_argument("--study-name", help="default condense-<model name>")
    o.add_argument("--heartbeat-interval", type=int, default=30, help="seconds between a trial's heartbeats")
    o.add_argument(
        "--grace-period",
        type=int,
        default=120,
        help="seconds without a heartbeat before a running trial counts as dead and is retried",
    )
    o.add_argument("--max-retry", type=int, default=3, help="retries of a trial whose worker died")
    o.add_argument("--no-reference", action="store_true", help="do not proxy-train the original model")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense export",
        description="Save a trial of a search as a condensed-model directory (condense.load reads it).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("study_dir", metavar="STUDY_DIR", help="the output directory of condense search")
    p.add_argument("--trial", type=int, required=True, metavar="N", help="trial number (see STUDY_DIR/front.csv)")
    p.add_argument("-o", "--output", metavar="DIR", help="where to save (default STUDY_DIR/export/trial-N)")
    p.add_argument("--storage", metavar="URL", help="the study's database, if not the one in search.json")
    p.add_argument("--study-name", help="the study's name, if not the one in search.json")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _console():
    return Console(width=None if sys.stdout.isatty() else 120)


def _fail(err: BaseException, debug: bool) -> int:
    return report_error(err, debug=debug)


def _show_space(args, console) -> int:
    spec = parse_model_spec(args.model)
    model = build_model(spec)
    if args.input_size is not None:
        size = parse_input_size(args.input_size)
    elif args.data:
        size = tuple(load_data(args.data, limit_train=1, limit_test=1).input_size)
    elif spec.kind == "zoo":
        size = zoo.input_size(spec.name)
    else:
        size = default_input_size(model) or (3, 224, 224)
    with console.status("tracing"):
        space = build_space(
            find_runs(model, size), layers=args.layers, K=args.K, widths=args.widths, depth=not args.no_depth
        )
    console.print(space.table(title=f"search space of {spec} at {'x'.join(map(str, size))}"))
    console.print(space.summary())
    if not space.depth:
        console.print(
            "Width alone (--no-depth): per run, the share of its channels Torch-Pruning removes; every block is kept."
        )
        return 0
    console.print(
        "Shared by the whole model: layer, K, init, velocity, diffusion, source (the last three only "
        "act on the Global layer). Per run: condense it or not, m (blocks kept), and with drop among "
        "the layers, drop (delete the removed blocks instead of the shared layer); with --widths, width "
        "(the share of the run's channels removed)."
    )
    return 0


def search_main(argv: Sequence[str] | None = None) -> int:
    """``condense search MODEL --data SPEC [--budget 1G] [--trials 40] ...``; returns the exit code."""
    args = search_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = _console()
    try:
        if args.show_space:
            return _show_space(args, console)
        if not args.data:
            raise CondenseError("--data is required for a search", "e.g. --data cifar10:path/to/cifar10.tar.gz")
        return _search(args, console)
    except KeyboardInterrupt as err:
        result = getattr(err, "result", None)
        if result is not None:
            _report(result, console, interrupted=True)
        else:
            console.print("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - one line unless --debug
        return _fail(err, args.debug)


def _search(args, console) -> int:
    options = dict(
        macs=args.macs,
        params=args.params,
        trials=args.trials,
        epochs_per_trial=args.epochs_per_trial,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        input_size=args.input_size,
        checkpoint=args.checkpoint,
        distill=args.distill,
        teacher=args.teacher,
        teacher_checkpoint=args.teacher_checkpoint,
        latency=args.latency,
        latency_batch=args.latency_batch,
        latency_compiled=args.latency_compiled,
        sampler=args.sampler,
        population=args.population,
        seed=args.seed,
        device=args.device,
        layers=args.layers,
        K=args.K,
        widths=args.widths,
        width_importance=args.width_importance,
        width_multiple=args.width_multiple,
        objective=args.objective,
        depth=not args.no_depth,
        storage=args.storage,
        study_name=args.study_name,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        max_retry=args.max_retry,
        reference=not args.no_reference,
        enqueue_fit=not args.no_fit_start,
        max_proposals=args.max_proposals,
    )
    if args.distill and not args.checkpoint:
        console.print("[yellow]note:[/] --distill without --checkpoint distils from an untrained original")
    if args.strategy == "supernet" and not args.checkpoint:
        console.print(
            "[yellow]note:[/] the supernet starts from an untrained original; give its trained weights "
            "with --checkpoint (the largest plan is the original)",
            highlight=False,
        )
    show = not args.no_progress and console.is_terminal
    finish = None
    if args.finish is not None:
        finish = FinishConfig(top=args.finish, epochs=args.finish_epochs, lr=args.finish_lr)

    def line(study, trial) -> None:
        if show:
            return
        values, attrs = trial.values or [], trial.user_attrs
        figures = (
            f"acc {values[0]:.4f}, {attrs['macs'] / 1e6:.2f}M MACs, {attrs['params'] / 1e3:.1f}K params"
            + (f", {attrs['latency_ms']:.2f} ms" if "latency_ms" in attrs else "")
            if values and "macs" in attrs and "params" in attrs
            else trial.state.name.lower()
        )
        console.print(
            f"trial {trial.number}: {trial.user_attrs.get('status', trial.state.name.lower())} ({figures})",
            highlight=False,
        )

    if args.strategy == "supernet":
        sn = SupernetOptions(
            epochs=args.supernet_epochs, random_plans=args.random_plans, calib_images=args.calib_images
        )
        result = run_supernet_search(
            args.model,
            args.data,
            output=args.output,
            supernet=sn,
            progress=show,
            console=console,
            on_trial=line,
            finish=finish,
            **options,
        )
        if result is not None:  # None: a torchrun rank other than 0, done after the supernet's training
            _report(result, console)
        return 0
    result = run_search(
        args.model,
        args.data,
        output=args.output,
        progress=show,
        console=console,
        on_trial=line,
        finish=finish,
        **options,
    )
    _report(result, console)
    return 0


def _report(result, console, interrupted: bool = False) -> None:
    title = f"Pareto front of {result.study.study_name} ({len(result.front)} of {len(result.trials)} trials)"
    console.print(front_table(result.front, result.reference, title=title))
    if result.reference:
        console.print(format_reference(result.reference), highlight=False)
    for name, path in result.files.items():
        console.print(f"{name}: {path}", highlight=False)
    storage = result.study._storage
    url = getattr(storage, "url", None)
    where = _safe_url(url) if url else str(result.output / JOURNAL)
    console.print(f"dashboard: optuna-dashboard {where}", highlight=False)
    if len(result.front):
        n = int(result.front.iloc[0]["trial"])
        console.print(f"export a trial: condense export {result.output} --trial {n}", highlight=False)
    if result.finished is not None:
        fin = result.finished
        console.print(finish_table(fin))
        if len(fin.table) >= 3:
            console.print(
                f"rank agreement of the search's scores with the final accuracies: Kendall tau "
                f"{fin.tau:.2f} over {len(fin.table)} members",
                highlight=False,
            )
        console.print(
            f"fine-tuned models: {result.output}/finished/<trial>/model (condense.load reads them); "
            f"compare finished fronts with condense compare --finished",
            highlight=False,
        )
    if interrupted:
        console.print("interrupted: finished trials are kept; run the same command again to resume", highlight=False)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``condense export STUDY_DIR --trial N [-o DIR]``; returns the exit code."""
    args = export_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = _console()
    try:
        res = export_trial(args.study_dir, args.trial, args.output, storage=args.storage, study_name=args.study_name)
    except Exception as err:  # noqa: BLE001
        return _fail(err, args.debug)
    where = "on the Pareto front" if res.on_front else "not on the Pareto front"
    console.print(
        f"trial {res.trial} ({where}): accuracy {res.accuracy:.4f}, {format_count(res.macs)} MACs, "
        f"{format_count(res.params)} params",
        highlight=False,
    )
    trust = ", trust_code=True" if '"kind": "file"' in (res.path / "condensed.json").read_text() else ""
    console.print(f"saved to {res.path} (load with condense.load({str(res.path)!r}{trust}))", highlight=False)
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense compare",
        formatter_class=HelpFormatter,
        description="Compare searches of one model: hypervolume of each front and how "
        "much of each other front it dominates (objectives scaled by the original model: 1 - accuracy, "
        "MACs / original, params / original; reference point (1, 1, 1)).",
    )
    p.add_argument(
        "study_dirs",
        nargs="+",
        metavar="STUDY_DIR",
        help="output directories of condense search; or one folder of python -m condense.bench.versus run at "
        "several budgets: its depth, width and joint arms then make three fronts (accuracy vs its latency run)",
    )
    p.add_argument(
        "--arms",
        default=None,
        metavar="A,A",
        help="with a versus folder: only these arms (default: every depth, width and joint arm it ran)",
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw every study's front in one plot: accuracy vs MACs "
        "(with --latency: vs latency, a panel per batch size)",
    )
    p.add_argument("--csv", metavar="FILE", help="also write the comparison table as CSV")
    p.add_argument(
        "--finished",
        action="store_true",
        help="compare the fine-tuned front members (finished.csv of condense search --finish) instead "
        "of the search's own scores",
    )
    t = p.add_argument_group("latency, re-timed (instead of the searches' own figures)")
    t.add_argument(
        "--latency",
        type=int_list_type("--latency", low=1, example="1,32"),
        default=None,
        metavar="B,B",
        help="load every study's front members (with --finished: the fine-tuned ones) and time them "
        "with the original model interleaved in one run at these batch sizes, e.g. 1,32; the "
        "fronts are then accuracy vs latency/original's, per batch size",
    )
    t.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    t.add_argument("--repeats", type=int, default=20, help="interleaved rounds per batch size (default 20)")
    t.add_argument("--device", default="cpu", help="where to time: cpu (default), cuda, cuda:N, mps, auto")
    t.add_argument("--members", metavar="CSV", help="with --latency: also write every member's figures as CSV")
    t.add_argument("--trust-code", action="store_true", help="let a study's file.py model be imported")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``condense compare DIR DIR ... [--plot PNG] [--csv FILE]``; returns the exit code."""
    args = compare_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = _console()
    try:
        _compare(args, console)
    except Exception as err:  # noqa: BLE001
        return _fail(err, args.debug)
    return 0


def _compare(args, console) -> None:
    # a bad output path: an error before anything is computed or written
    for given in (args.plot, args.csv, args.members):
        if given and not Path(given).resolve().parent.is_dir():
            raise CondenseError(
                f"{given}: the folder {str(Path(given).parent)!r} does not exist",
                "create it, or write the file elsewhere",
            )
    if any(is_versus_dir(d) for d in args.study_dirs):
        return _compare_versus(args, console)
    if args.arms:
        raise CondenseError("--arms picks the arms of a versus folder", "give one versus output folder, or drop --arms")
    if args.latency:
        return _compare_latency(args, console)
    if args.members:
        raise CondenseError("--members lists the re-timed members of --latency", "add --latency 1,32")
    df = compare_studies(args.study_dirs, finished=args.finished)
    covers = [c for c in df.columns if c.startswith("covers[")]
    table = Table(
        "study",
        "sampler",
        "feasible trials",
        "front",
        "hypervolume",
        "best accuracy",
        *[f"dominates {c[7:-1]}" for c in covers],
        title="search comparison",
        title_justify="left",
    )
    for _, row in df.iterrows():
        table.add_row(
            row["study"],
            str(row["sampler"]),
            str(row["trials"]),
            str(row["front"]),
            f"{row['hypervolume']:.4f}",
            f"{row['best_accuracy']:.4f}",
            *["-" if pd.isna(row[c]) else f"{100 * row[c]:.0f}%" for c in covers],
        )
    console.print(table)
    axes = (
        "(1 - accuracy, latency/original) up to (1, 1)"
        if (df.get("objective") == "latency").all()
        else "(1 - accuracy, MACs/original, params/original) up to (1, 1, 1)"
    )
    console.print(
        f"hypervolume: volume dominated in {axes}; higher is better. dominates X: share of X's front "
        "points that this front weakly dominates.",
        highlight=False,
    )
    if args.csv:
        console.print(f"table: {write_csv(df, args.csv, claim=('study',))}", highlight=False)
    if args.plot:
        loaded = {Path(d).name: _load(Path(d), args.finished) for d in args.study_dirs}
        reference = dict(next(iter(loaded.values()))[0].get("reference") or {})
        if args.finished:  # the original's search score is not comparable with fine-tuned accuracies
            reference.pop("accuracy", None)
        path = plot_fronts(
            {n: t for n, (_, t) in loaded.items()},
            args.plot,
            reference=reference,
            title="finished fronts: accuracy vs MACs" if args.finished else "fronts: accuracy vs MACs",
            ylabel="accuracy (fine-tuned)" if args.finished else "accuracy (search score)",
        )
        console.print(f"plot: {path}", highlight=False)


def _compare_versus(args, console) -> None:
    """``condense compare VERSUS_DIR``: the depth, width and joint fronts of one versus folder
    (``versus_fronts``), from its own latency run."""
    if len(args.study_dirs) != 1:
        raise CondenseError("a versus folder is compared on its own", "give one versus output folder")
    if args.latency or args.finished:
        raise CondenseError(
            "a versus folder has its own latency run and fine-tuned arms: --latency and --finished do not apply",
            "re-time it with python -m condense.bench.versus ... --time-only",
        )
    arms = [a for a in args.arms.split(",") if a] if args.arms else None
    members, summary, batches = versus_fronts(args.study_dirs[0], arms=arms)
    table = Table(
        "axis",
        "arm",
        "budget",
        "seeds",
        "accuracy",
        "MACs",
        "params",
        *[f"b{b} ms (ratio)" for b in batches],
        title="versus arms: fine-tuned accuracy (mean over seeds) and latency (one run)",
        title_justify="left",
    )
    for _, r in members.iterrows():
        std = r.get("accuracy_std")
        acc = f"{r['accuracy']:.4f}" + (f" ± {std:.4f}" if r["seeds"] > 1 and not pd.isna(std) else "")
        table.add_row(
            str(r["study"]),
            str(r["arm"]),
            str(r["budget"]) or "-",
            str(r["seeds"]) if r["seeds"] else "-",
            acc,
            format_count(r["macs"]),
            format_count(r["params"]),
            *[f"{r[f'b{b}_ms']:.2f} ({r[f'b{b}_ratio']:.2f})" for b in batches],
        )
    console.print(table)
    _summary_table(console, summary, "fronts: depth, width and joint plans (latency from the versus run)", "axis")
    console.print(
        "accuracy: fine-tuned test accuracy, mean over the seeds run; latency: the versus folder's own run "
        "(every arm and the original interleaved). hypervolume: area dominated in (1 - accuracy, "
        "latency/original) up to (1, 1); higher is better. dominates X: share of X's front points that this "
        "front weakly dominates.",
        highlight=False,
    )
    _write_outputs(args, console, members, summary, batches, "versus: depth, width and joint fronts (one latency run)")


def _summary_table(console, summary: pd.DataFrame, title: str, first: str = "study") -> None:
    covers = [c for c in summary.columns if c.startswith("covers[")]
    table = Table(
        first,
        "batch",
        "members",
        "front",
        "hypervolume",
        "best accuracy",
        *[f"dominates {c[7:-1]}" for c in covers],
        title=title,
        title_justify="left",
    )
    for _, r in summary.iterrows():
        table.add_row(
            str(r["study"]),
            str(r["batch"]),
            str(r["members"]),
            str(r["front"]),
            f"{r['hypervolume']:.4f}",
            f"{r['best_accuracy']:.4f}",
            *["-" if pd.isna(r[c]) else f"{100 * r[c]:.0f}%" for c in covers],
        )
    console.print(table)


def _write_outputs(
    args, console, members, summary, batches, title: str, key: str = "arm", ylabel: str = "accuracy (fine-tuned)"
) -> None:
    """--csv (the summary), --members (one row per member) and --plot (a panel per batch size)."""
    if args.csv:
        console.print(f"table: {write_csv(summary, args.csv, claim=('study', 'batch'))}", highlight=False)
    if args.members:
        console.print(f"members: {write_csv(members, args.members, claim=('study', key))}", highlight=False)
    if args.plot:
        path = plot_latency_fronts(members, args.plot, batches=batches, title=title, ylabel=ylabel)
        console.print(f"plot: {path}", highlight=False)


def _compare_latency(args, console) -> None:
    """``condense compare --latency B,B``: the fronts re-timed side by side (``latency_fronts``)."""
    if args.threads < 1 or args.repeats < 1:
        raise CondenseError("--threads and --repeats must be >= 1", "e.g. --threads 1 --repeats 20")
    with console.status("re-timing the fronts") as status:
        members, summary = latency_fronts(
            args.study_dirs,
            finished=args.finished,
            batches=args.latency,
            device=args.device,
            threads=args.threads,
            repeats=args.repeats,
            trust_code=args.trust_code,
            progress=status.update,
        )
    what = "fine-tuned front members" if args.finished else "front members (search scores)"
    table = Table(
        "study",
        "trial",
        "accuracy",
        "MACs",
        "params",
        *[f"b{b} ms (ratio)" for b in args.latency],
        title=f"{what}, re-timed",
        title_justify="left",
    )
    for _, r in members.iterrows():
        table.add_row(
            str(r["study"]),
            "-" if pd.isna(r["trial"]) else str(int(r["trial"])),
            "-" if pd.isna(r["accuracy"]) else f"{r['accuracy']:.4f}",
            format_count(r["macs"]),
            format_count(r["params"]),
            *[f"{r[f'b{b}_ms']:.2f} ({r[f'b{b}_ratio']:.2f})" for b in args.latency],
        )
    console.print(table)
    _summary_table(console, summary, "front comparison (latency re-timed)")
    console.print(
        f"latency: eager forward, medians of {args.repeats} interleaved rounds, {args.threads} thread(s), "
        f"{args.device}; ratio to the original in the same run. hypervolume: area dominated in "
        "(1 - accuracy, latency/original) up to (1, 1); higher is better. dominates X: share of X's "
        "front points that this front weakly dominates.",
        highlight=False,
    )
    _write_outputs(
        args,
        console,
        members,
        summary,
        args.latency,
        f"{what}: accuracy vs latency (timed in one run)",
        key="trial",
        ylabel="accuracy (fine-tuned)" if args.finished else "accuracy (search score)",
    )


if __name__ == "__main__":  # python -m search._cli
    sys.exit(search_main())
