"""Benchmark: a condensed model against its original, side by side in one run (``condense bench``).

    condense bench DIR [--against MODEL] [--batch-sizes 1,32] [--repeats N] [--no-compile] [--no-train] [--csv F]

For the original and the condensed model it measures inference at each batch size (batch 1 is reported
as latency in ms, larger batches as throughput in images/s), in eager mode and under ``torch.compile``,
and one training step (forward + cross-entropy + backward + SGD step) at the largest batch size, eager
and compiled. Every figure is the median of ``--repeats`` calls after warm-up, taken round-robin
(original, condensed, original, ...; the order rotates each round) so that drift on a shared machine hits
both models alike; the ratios condensed / original therefore come from one run. MACs and parameters
(``condense.count``) are printed next to the times. Threads are pinned (``--threads``, default all cores)
and reported. A failed ``torch.compile`` is shown in the table, not raised. Nothing here asserts: it
prints what it measured.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .._budget import format_count, parse_input_size
from .._count import macs_and_params
from .._device import describe_device, resolve_device, synchronize
from .._errors import CondenseError, run_command
from .._fit import fit
from .._io import load, original_from_meta, read_meta
from .._models import ModelSpec, default_input_size
from .._resolve import is_model_dir, resolve_model
from .._write import atomic_write_csv, claim_file
from .._help import HelpFormatter
from .._intlist import int_list_type
from ..pde import native_status
from ._timing import interleaved_medians

SIDES = ("original", "condensed")
CSV_COLUMNS = (
    "task",
    "mode",
    "batch",
    "unit",
    "original",
    "condensed",
    "ratio",
    "speedup",
    "original_ms",
    "condensed_ms",
    "repeats",
    "threads",
    "note",
)


@dataclasses.dataclass
class BenchResult:
    """Rows (dicts with ``CSV_COLUMNS``) and what was compared."""

    condensed_label: str
    original_label: str
    input_size: tuple[int, ...]
    threads: int
    repeats: int
    warmup: int
    rows: list[dict[str, Any]]
    notes: list[str]
    device: str = "cpu"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {line[:160]}" if line else type(err).__name__


# ------------------------------------------------------------------------------------------ models
def _build(
    text: str, checkpoint: str | None = None, model_kwargs: dict | None = None, trust_code: bool = False
) -> tuple[nn.Module, str, Any]:
    """A model spec or a condensed-model directory -> (model, label, meta or None)."""
    r = resolve_model(text, checkpoint=checkpoint, model_kwargs=model_kwargs, trust_code=trust_code)
    return r.model, (r.label if r.is_directory else str(r.spec)), r.meta


def _load_dir(directory, load, model=None, trust_code: bool = False) -> nn.Module:
    try:
        return load(directory, model=model, trust_code=trust_code)
    except CondenseError:
        raise
    except Exception as err:  # a damaged directory: one line
        raise CondenseError(
            f"{directory} could not be loaded ({_first_line(err)})", "the directory is damaged: re-create it"
        ) from err


def resolve_pair(
    target: str,
    *,
    against: str | None = None,
    input_size: Sequence[int] | None = None,
    checkpoint: str | None = None,
    macs: str | None = None,
    params: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    trust_code: bool = False,
):
    """(original, condensed, original label, condensed label, input size).

    ``target`` is a condensed-model directory (the original defaults to the model recorded in it, rebuilt
    with ``build_model``) or a model spec (condensed here with the paper's default plan, or to
    ``macs``/``params`` budgets).
    """
    if is_model_dir(target):
        meta = read_meta(target)
        if macs or params:
            raise CondenseError(
                f"{target} is already condensed: --budget/--params apply to a model spec",
                "drop them, or pass timm:NAME to condense and time it in one go",
            )
        spec_meta = meta.get("model")
        if against:
            progress(f"building {against}")
            original, original_label, _ = _build(against, trust_code=trust_code)
        elif spec_meta:
            original_label = str(ModelSpec.from_dict(spec_meta))
            progress(f"building {original_label}")
            original = original_from_meta(meta, target, trust_code=trust_code)
        else:
            raise CondenseError(
                f"{target} was saved from a model built in Python: no original to compare with",
                "pass --against MODEL (a timm:NAME or file.py:factory spec)",
            )
        progress(f"loading {target}")
        condensed = _load_dir(target, load, None if spec_meta else copy.deepcopy(original), trust_code)
        size = tuple(input_size or meta["input_size"])
        return original, condensed, original_label, str(target), size
    progress(f"building {target}")
    model, label, _ = _build(target, checkpoint)
    size = tuple(input_size or default_input_size(model) or (3, 224, 224))
    progress(f"condensing {label}" + (f" to {macs or ''} {params or ''}" if macs or params else " (default plan)"))
    result = fit(copy.deepcopy(model), macs=macs, params=params, input_size=size)
    if not result.plan.choices:
        raise CondenseError(f"{label} was not condensed ({result.message})", "nothing to compare")
    if against:
        model, label, _ = _build(against)
    return model, result.model, label, f"{target} condensed", size


# ------------------------------------------------------------------------------------------ timing
def _loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 2 and out.shape[1] > 1:
        return nn.functional.cross_entropy(out, target.remainder(out.shape[1]))
    return out.float().square().mean()


def _time_pair(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """Warm each up (catching failures, e.g. of torch.compile), then interleaved medians of the rest.

    Returns (median seconds, failure notes, first-call seconds).
    """
    failed, first = {}, {}
    for name, fn in fns.items():
        try:
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
            for _ in range(max(0, warmup - 1)):
                fn()
        except Exception as err:  # noqa: BLE001 - reported in the table, not raised
            failed[name] = _first_line(err)
    ok = {n: f for n, f in fns.items() if n not in failed}
    times: dict[str, float] = {}
    if ok:
        try:
            times = interleaved_medians(ok, repeats=repeats, warmup=0)
        except Exception as err:  # noqa: BLE001
            failed.update({n: _first_line(err) for n in ok})
    return times, failed, first


def _row(task, mode, batch, unit, times, failed, repeats, threads, note="") -> dict[str, Any]:
    row: dict[str, Any] = dict(task=task, mode=mode, batch=batch, unit=unit, repeats=repeats, threads=threads)
    for side in SIDES:
        t = times.get(side)
        row[f"{side}_ms"] = None if t is None else t * 1e3
        row[side] = None if t is None else (batch / t if unit == "img/s" else t * 1e3)
    o, c = row["original"], row["condensed"]
    row["ratio"] = c / o if (o and c) else None
    to, tc = times.get("original"), times.get("condensed")
    row["speedup"] = to / tc if (to and tc) else None
    notes = [note] if note else []
    notes += [f"{side}: {msg}" for side, msg in failed.items()]
    row["note"] = "; ".join(notes)
    return row


def run_bench(
    target: str,
    *,
    against: str | None = None,
    input_size: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 10,
    warmup: int = 2,
    compile: bool = True,
    train: bool = True,
    train_batch: int | None = None,
    threads: int | None = None,
    checkpoint: str | None = None,
    macs: str | None = None,
    params: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    trust_code: bool = False,
    device: str = "auto",
    amp: str | None = None,
) -> BenchResult:
    """Measure ``target`` (a condensed-model directory or a model spec) against its original; see the module doc.

    ``threads`` (default: all cores available) is set for the run and restored afterwards. ``device``
    (``auto``: CUDA when available): where both models run; every timed call ends with a device sync.
    ``amp`` (``bf16``/``fp16``): the training step runs under autocast of that type.
    """
    if amp not in (None, "bf16", "fp16"):
        raise CondenseError(f"amp={amp!r} is not bf16 or fp16")
    dev = resolve_device(device)
    if repeats < 1 or warmup < 1:
        raise CondenseError("--repeats and --warmup must be at least 1")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise CondenseError(f"bad batch sizes {list(batch_sizes)}", "write e.g. --batch-sizes 1,32")
    if train_batch is not None and train_batch < 1:
        raise CondenseError(f"--train-batch {train_batch} must be at least 1")
    n_threads = threads or available_cores()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    limit = _raise_recompile_limit(8 * len(batch_sizes) + 8)
    try:
        return _bench(
            target,
            against=against,
            input_size=input_size,
            batch_sizes=batch_sizes,
            repeats=repeats,
            warmup=warmup,
            compile=compile,
            train=train,
            train_batch=train_batch,
            n_threads=n_threads,
            checkpoint=checkpoint,
            macs=macs,
            params=params,
            progress=progress,
            trust_code=trust_code,
            device=dev,
            amp=amp,
        )
    finally:
        torch.set_num_threads(saved_threads)
        _raise_recompile_limit(limit, force=True)


def _raise_recompile_limit(value: int, force: bool = False) -> int | None:
    """Dynamo falls back to eager silently past its recompile limit (per code object; the original and the
    condensed model share their top-level ``forward``): raise it for the run, so "compiled" stays compiled."""
    try:
        import torch._dynamo.config as cfg
    except Exception:  # noqa: BLE001
        return None
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    old = getattr(cfg, name, None)
    if value is not None and (force or old is None or value > old):
        setattr(cfg, name, value)
    return old


def _bench(
    target,
    *,
    against,
    input_size,
    batch_sizes,
    repeats,
    warmup,
    compile,
    train,
    train_batch,
    n_threads,
    checkpoint,
    macs,
    params,
    progress,
    trust_code=False,
    device=None,
    amp=None,
) -> BenchResult:
    device = device if device is not None else torch.device("cpu")

    original, condensed, original_label, condensed_label, size = resolve_pair(
        target,
        against=against,
        input_size=input_size,
        checkpoint=checkpoint,
        macs=macs,
        params=params,
        progress=progress,
        trust_code=trust_code,
    )
    models = {"original": original.eval(), "condensed": condensed.eval()}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []

    progress("counting MACs and parameters")
    counts: dict[str, tuple[int, int]] = {}
    for side, model in models.items():
        try:
            counts[side] = macs_and_params(model, size)
        except Exception as err:  # noqa: BLE001 - a count failure should not stop the timing
            notes.append(f"counting the {side} model failed: {_first_line(err)}")
    for i, (task, unit) in enumerate((("macs", "MACs"), ("params", "params"))):
        if len(counts) == 2:
            o, c = counts["original"][i], counts["condensed"][i]
            rows.append(
                dict(
                    task=task,
                    mode="",
                    batch=1 if task == "macs" else "",
                    unit=unit,
                    original=o,
                    condensed=c,
                    ratio=c / o if o else None,
                    speedup=None,
                    original_ms=None,
                    condensed_ms=None,
                    repeats="",
                    threads=n_threads,
                    note="",
                )
            )

    models = {side: model.to(device) for side, model in models.items()}
    modes = ["eager"] + (["compiled"] if compile else [])
    compiled: dict[str, Any] = {}
    for mode in modes:
        for batch in batch_sizes:
            x = torch.randn(batch, *size, device=device)
            fns = {}
            for side, model in models.items():
                if mode == "compiled":
                    compiled.setdefault(side, torch.compile(model, dynamic=False))
                    model = compiled[side]

                def call(m=model, x=x):
                    with torch.no_grad():
                        m(x)
                    synchronize(device)

                fns[side] = call
            task = "latency" if batch == 1 else "throughput"
            progress(f"timing {mode} inference at batch {batch}" + (" (compiling first)" if mode == "compiled" else ""))
            times, failed, first = _time_pair(fns, repeats, warmup)
            note = ""
            if mode == "compiled" and first:
                note = "first call (compile) " + ", ".join(f"{s} {first[s]:.1f}s" for s in SIDES if s in first)
            rows.append(
                _row(task, mode, batch, "ms" if batch == 1 else "img/s", times, failed, repeats, n_threads, note)
            )

    if train:
        tb = train_batch or max(batch_sizes)
        x = torch.randn(tb, *size, device=device)
        target_labels = torch.randint(0, 1 << 30, (tb,), device=device)
        for mode in modes:
            fns = {}
            for side, model in models.items():
                net = copy.deepcopy(model).train()
                opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
                run = torch.compile(net, dynamic=False) if mode == "compiled" else net

                def step(run=run, opt=opt):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(
                        device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16, enabled=amp is not None
                    ):
                        out = run(x)
                    _loss(out.float() if isinstance(out, torch.Tensor) else out, target_labels).backward()
                    opt.step()
                    synchronize(device)

                fns[side] = step
            progress(
                f"timing {mode} training steps at batch {tb}" + (" (compiling first)" if mode == "compiled" else "")
            )
            times, failed, first = _time_pair(fns, repeats, warmup)
            note = ""
            if mode == "compiled" and first:
                note = "first call (compile) " + ", ".join(f"{s} {first[s]:.1f}s" for s in SIDES if s in first)
            rows.append(
                _row(
                    "train",
                    mode,
                    tb,
                    "ms/step",
                    times,
                    failed,
                    repeats,
                    n_threads,
                    note + (f"{'; ' if note else ''}autocast {amp}" if amp else ""),
                )
            )
    return BenchResult(
        condensed_label=condensed_label,
        original_label=original_label,
        input_size=tuple(size),
        threads=n_threads,
        repeats=repeats,
        warmup=warmup,
        rows=rows,
        notes=notes,
        device=describe_device(device),
    )


def _is_bench_csv(path: Path) -> bool:
    """A CSV this command wrote: its first line is exactly ``CSV_COLUMNS``."""
    with open(path, newline="") as fh:
        return next(csv.reader(fh), None) == list(CSV_COLUMNS)


def claim_csv(path: str | os.PathLike) -> Path:
    """``--csv FILE`` may be written: new, or a CSV of this command's columns (anything else is refused)."""
    return claim_file(path, "bench CSV", _is_bench_csv)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the rows (columns ``CSV_COLUMNS``) to ``path`` atomically (a file of other content is refused)."""
    return atomic_write_csv(claim_csv(path), rows, columns=CSV_COLUMNS)


# ------------------------------------------------------------------------------------------ output
def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("MACs", "params"):
        return format_count(value)
    if unit == "img/s":
        return f"{value:.1f} img/s"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _label(row) -> str:
    if row["task"] == "macs":
        return "MACs (batch 1)"
    if row["task"] == "params":
        return "parameters"
    what = {"latency": "latency", "throughput": "throughput", "train": "train step"}[row["task"]]
    return f"{what}, batch {row['batch']}, {row['mode']}"


def print_result(result: BenchResult, console) -> None:
    table = Table(
        title=f"{result.condensed_label} vs {result.original_label} at {'x'.join(map(str, result.input_size))}",
        title_justify="left",
    )
    table.add_column("measure")
    for col in ("original", "condensed", "condensed / original", "speed-up"):
        table.add_column(col, justify="right")
    table.add_column("note", overflow="fold")
    for i, row in enumerate(result.rows):
        if i and row["task"] not in ("params",) and result.rows[i - 1]["task"] in ("params",):
            table.add_section()
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        speed = (
            ""
            if row["task"] in ("macs", "params")
            else ("-" if row["speedup"] is None else f"[bold]{row['speedup']:.2f}x[/]")
        )
        note = row["note"]
        if row["original"] is None or row["condensed"] is None:
            note = f"[red]{note}[/]" if note else note
        table.add_row(
            _label(row), _fmt(row["original"], row["unit"]), _fmt(row["condensed"], row["unit"]), ratio, speed, note
        )
    console.print(table)
    console.print(
        f"medians of {result.repeats} interleaved repeats after {result.warmup} warm-up call(s); "
        f"device {result.device}; "
        f"torch threads={result.threads}, interop={torch.get_num_interop_threads()}; {native_status()}. "
        "speed-up = original time / condensed time (> 1: the condensed model is faster); ms: lower is "
        "better, img/s: higher is better.",
        highlight=False,
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


# ------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense bench",
        formatter_class=HelpFormatter,
        description="Time a condensed model against its original, side by side in one run: latency (batch 1) "
        "and throughput (larger batches), eager and torch.compile, and a training step; medians of "
        "interleaved repeats; ratios condensed / original.",
        epilog="examples:\n  condense bench condensed/efficientnet_b0\n"
        "  condense bench condensed/efficientnet_b0 --no-compile --repeats 5 --csv bench.csv\n"
        "  condense bench out/mine --against models.py:resnet32 --batch-sizes 1,64\n"
        "  condense bench timm:resnet18 --input-size 3x64x64   # condense with the default plan first",
    )
    p.add_argument(
        "model",
        metavar="MODEL_OR_DIR",
        help="a condensed-model directory, or a model spec to condense with the default plan (or --budget) first",
    )
    p.add_argument(
        "--against",
        metavar="ORIGINAL",
        help="the model to compare with (default: the original "
        "recorded in the directory, rebuilt with random weights: speed does not depend on them)",
    )
    p.add_argument("--input-size", metavar="CxHxW", help="input size (default: the directory's)")
    p.add_argument(
        "--batch-sizes",
        type=int_list_type("--batch-sizes", low=1, example="1,32"),
        default=(1, 32),
        metavar="B,B",
        help="batch 1 is timed as latency, larger ones as throughput (default 1,32)",
    )
    p.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="batch of the training step (default: the largest of --batch-sizes)",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed calls per model and measure (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2; includes compiling)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores available)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument("--csv", metavar="FILE", help="also write the figures to this CSV file")
    p.add_argument(
        "--budget",
        "--macs",
        dest="macs",
        metavar="MACS",
        help="when MODEL is a spec: condense it to this MAC budget (else the default plan)",
    )
    p.add_argument("--params", metavar="PARAMS", help="when MODEL is a spec: a parameter budget")
    p.add_argument("--checkpoint", metavar="FILE", help="local weights when MODEL is a spec")
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="where both models run: auto (CUDA when available, else CPU), cpu, cuda, cuda:N, mps (default auto)",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let a directory whose model is a file.py:factory "
        "import that file (it runs; never done without this flag)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run(args, console) -> int:
    size = parse_input_size(args.input_size) if args.input_size is not None else None
    if args.csv is not None:
        claim_csv(args.csv)  # before the benchmark: a file that is not this command's CSV is refused
    with console.status("preparing", spinner="dots") as status:
        result = run_bench(
            args.model,
            against=args.against,
            input_size=size,
            batch_sizes=args.batch_sizes,
            repeats=args.repeats,
            warmup=args.warmup,
            compile=not args.no_compile,
            train=not args.no_train,
            train_batch=args.train_batch,
            threads=args.threads,
            checkpoint=args.checkpoint,
            macs=args.macs,
            params=args.params,
            progress=lambda msg: status.update(msg),
            trust_code=args.trust_code,
            device=args.device,
        )
    print_result(result, console)
    if args.csv:
        console.print(f"figures written to {write_csv(result.rows, args.csv)}")
    return 0


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``condense bench MODEL_OR_DIR [...]``: exit 0, 1 (CondenseError, one line) or 2 (unexpected)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(width=None if sys.stdout.isatty() else 140)
    return run_command(lambda: _run(args, console), debug=args.debug)


main = bench_main

if __name__ == "__main__":
    sys.exit(bench_main())
