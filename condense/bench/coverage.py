"""Coverage across timm: run the default condense on every model up to a parameter limit, report by family.

Run ``python -m condense.bench.coverage`` (all models <= 120M parameters; hours on 2 cores) or with
``--sample`` (a few models per major family). Each model is built with random weights, condensed with
the paper's default plan on a small input, and checked:

* forward and backward run on the condensed model, and its output shape equals the original's;
* MACs fall wherever repeats exist (measured with ``condense.count`` rules on both models);
* a model without repeats is reported as such (that is a success, not an error).

Every model runs in a worker subprocess (a crash or a hang costs one model, not the survey) with a time
limit. Results go to a CSV (one row per model) and a per-family table, printed with rich.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import re
import sys
import time
import traceback
from collections import defaultdict

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
import timm
import torch

from .. import CondenseError
from .._count import macs_and_params
from .._help import HelpFormatter
from ..graph import find_runs, rewrite

SAMPLE = (
    "resnet18",
    "resnet50",
    "resnet26",
    "efficientnet_b0",
    "efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "convnext_atto",
    "convnext_nano",
    "regnetx_002",
    "regnety_004",
    "cspresnet50",
    "cs3darknet_s",
    "ghostnet_100",
    "mixnet_s",
    "dla34",
    "hrnet_w18_small",
    "densenet121",
    "rexnet_100",
    "dpn68",
)


def family(name: str) -> str:
    """The model family: resnet50d -> resnet, mobilenetv2_100 -> mobilenetv2, efficientnet_b0 -> efficientnet."""
    base = name.split("_")[0].split(".")[0]
    return re.sub(r"(?<![v\d])\d+[a-z]?$", "", base) or base


def _input_size(model, small: int):
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c = (cfg.get("input_size") or (3, 224, 224))[0]
    return (c, small, small)


def check_model(name: str, small: int = 64, max_params: float | None = None) -> dict:
    """Condense one timm model with the default plan and check it. Never raises: errors are results.

    With ``max_params``, a model above it (counted on the meta device, no memory) is ``too large``."""
    row = dict(
        model=name,
        family=family(name),
        status="",
        runs=0,
        condensed_runs=0,
        macs_before=None,
        macs_after=None,
        params_before=None,
        params_after=None,
        seconds=0.0,
        error="",
    )
    t0 = time.perf_counter()
    try:
        if max_params is not None:
            with torch.device("meta"):
                n = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            if n > max_params:
                row["status"], row["params_before"] = "too large", n
                return row
        try:
            model = timm.create_model(name, pretrained=False, img_size=small)
            size = _input_size(model, small)
        except TypeError:
            model = timm.create_model(name, pretrained=False)
            size = _input_size(model, small)
        model.eval()
        x = torch.randn(2, *size)
        try:
            with torch.no_grad():
                ref = model(x)
        except Exception:  # the model does not accept the small input: rebuild it at its own size
            model = timm.create_model(name, pretrained=False).eval()
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            size = tuple(cfg.get("input_size") or (3, 224, 224))
            x = torch.randn(2, *size)
            with torch.no_grad():
                ref = model(x)
        row["params_before"] = sum(p.numel() for p in model.parameters())
        found = find_runs(model, size, count=False)
        runs = list(found.runs)
        row["runs"] = len(found.runs)
        if not runs:
            row["status"] = "no repeats"
            return row
        plan = {r.path: dict(m=1, layer="global", options={"K": 5}, init="input") for r in runs}
        new = rewrite(model, found, plan).module
        row["condensed_runs"] = len(runs)
        new.train()
        out = new(x)
        out = out if isinstance(out, torch.Tensor) else out[0]
        out.float().square().mean().backward()
        if tuple(out.shape) != tuple((ref if isinstance(ref, torch.Tensor) else ref[0]).shape):
            row["status"], row["error"] = "fail", f"output shape {tuple(out.shape)} != {tuple(ref.shape)}"
            return row
        row["macs_before"], row["params_before"] = macs_and_params(model, size)
        row["macs_after"], row["params_after"] = macs_and_params(new, size)
        if row["macs_after"] >= row["macs_before"]:
            row["status"], row["error"] = "fail", "MACs did not fall"
        else:
            row["status"] = "ok"
    except CondenseError as err:
        row["status"], row["error"] = "error", str(err)[:300]
    except Exception as err:  # noqa: BLE001 - the survey records every failure
        tb = traceback.extract_tb(err.__traceback__)
        where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        row["status"], row["error"] = "crash", f"{type(err).__name__}: {str(err)[:200]} @ {where}"
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _worker(slot, inbox, results, small, max_params=None):
    torch.set_num_threads(1)
    while True:
        name = inbox.get()
        if name is None:
            return
        results.put((slot, check_model(name, small, max_params)))


def survey(names, *, small=64, workers=2, timeout=300.0, progress=None, max_params=None):
    """Run ``check_model`` over ``names`` in long-lived worker processes, one model at a time each. A
    worker that dies or exceeds ``timeout`` on a model is replaced; the model is a crash or a timeout."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pending = list(names)
    rows: dict[str, dict] = {}
    slots: list[dict] = []

    def start(i):
        inbox = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(i, inbox, results, small, max_params), daemon=True)
        proc.start()
        return dict(proc=proc, inbox=inbox, current=None, since=0.0)

    def record(name, row):
        rows[name] = row
        if progress:
            progress(row)

    slots = [start(i) for i in range(max(1, min(workers, len(names))))]
    while len(rows) < len(names):
        for slot in slots:
            if slot["current"] is None and pending:
                slot["current"], slot["since"] = pending.pop(0), time.time()
                slot["inbox"].put(slot["current"])
        try:
            i, row = results.get(timeout=0.5)
            slots[i]["current"] = None
            record(row["model"], row)
            continue
        except queue.Empty:
            pass
        for i, slot in enumerate(slots):
            name = slot["current"]
            if name is None:
                continue
            if not slot["proc"].is_alive():
                status, error = "crash", f"worker died (exit code {slot['proc'].exitcode})"
            elif time.time() - slot["since"] > timeout:
                slot["proc"].kill()
                status, error = "timeout", f"over {timeout:.0f}s"
            else:
                continue
            record(name, dict(model=name, family=family(name), status=status, error=error))
            slots[i] = start(i)
    for slot in slots:
        slot["inbox"].put(None)
    for slot in slots:
        slot["proc"].join(5)
    return [rows[n] for n in names]


def summarize(rows):
    """Per-family counts and the headline figure: condensed / models with repeats."""
    fam = defaultdict(lambda: defaultdict(int))
    rows = [r for r in rows if r.get("status") != "too large"]
    for r in rows:
        fam[r["family"]][r["status"]] += 1
        fam[r["family"]]["models"] += 1
    with_repeats = [r for r in rows if r["status"] not in ("no repeats", "too large")]
    ok = sum(1 for r in with_repeats if r["status"] == "ok")
    return fam, ok, len(with_repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m condense.bench.coverage", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    ap.add_argument("--sample", action="store_true", help="a few models per major family only")
    ap.add_argument("--max-params", type=float, default=120e6, help="skip larger models")
    ap.add_argument("--filter", default=None, help="timm name pattern, e.g. 'resnet*'")
    ap.add_argument("--limit", type=int, default=None, help="at most N models")
    ap.add_argument("--size", type=int, default=64, help="input height/width (default 64)")
    ap.add_argument("--workers", type=int, default=2, help="models checked in parallel")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--csv", default="coverage.csv", help="where the rows go")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --csv, run the rest")
    args = ap.parse_args(argv)

    console = Console()
    names = list(SAMPLE) if args.sample else timm.list_models(args.filter or "*")[: args.limit]
    done: dict[str, dict] = {}
    if args.resume and os.path.exists(args.csv):
        done = {r["model"]: r for r in pd.read_csv(args.csv, keep_default_na=False).to_dict("records")}
    partial = args.csv + ".partial.jsonl"  # every finished model, appended as it finishes
    if args.resume and os.path.exists(partial):  # an interrupted survey: keep what it finished
        with open(partial) as fh:
            done.update({r["model"]: r for r in map(json.loads, fh) if r.get("model")})
    todo = [n for n in names if n not in done]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("condensing", total=len(todo))

        def tick(row):
            with open(partial, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
            bar.update(task, advance=1, description=f"{row['model'][:28]:<28} {row['status']}")

        new_rows = {
            r["model"]: r
            for r in survey(
                todo,
                small=args.size,
                workers=args.workers,
                timeout=args.timeout,
                progress=tick,
                max_params=None if args.sample else args.max_params,
            )
        }
    rows = [done.get(n) or new_rows[n] for n in names]
    df = pd.DataFrame(rows)
    df.to_csv(args.csv, index=False)
    if os.path.exists(partial):
        os.remove(partial)
    fam, ok, total = summarize(rows)
    table = Table("family", "models", "ok", "no repeats", "fail/error/crash/timeout", title="coverage by family")
    for name in sorted(fam):
        f = fam[name]
        bad = f["fail"] + f["error"] + f["crash"] + f["timeout"]
        table.add_row(name, str(f["models"]), str(f["ok"]), str(f["no repeats"]), str(bad))
    console.print(table)
    pct = 100.0 * ok / total if total else 0.0
    n_none = sum(1 for r in rows if r["status"] == "no repeats")
    n_large = sum(1 for r in rows if r["status"] == "too large")
    console.print(
        f"condensed {ok} of {total} models with repeated blocks ({pct:.1f}%); {n_none} without "
        f"repeats; {n_large} above {args.max_params / 1e6:.0f}M parameters (skipped); rows in {args.csv}"
    )
    for r in rows:
        if r["status"] not in ("ok", "no repeats"):
            console.print(f"  {r['model']}: {r['status']} {r.get('error', '')}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
