"""The ``condense`` command: parse, call the public API, print. Domain errors exit 1 with one line.

    condense MODEL [--budget 250M] [--params 2.5M] [-o DIR] ...   condense a model to a budget
    condense find MODEL                                          list the runs of repeated blocks
    condense count MODEL_OR_DIR                                  MACs and parameters
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ._errors import CondenseError

SUBCOMMANDS = ("find", "count")
EPILOG = """\
MODEL is timm:NAME (e.g. timm:efficientnet_b0) or path/to/file.py:factory (a function returning an
nn.Module). Budgets: 250M, 1.2G, 2.5e8, 800K, or 60%% of the original. MACs count one per multiply-add
and include the PDE iterations (see the README).

examples:
  condense timm:efficientnet_b0 --budget 250M
  condense timm:resnet50 --budget 2G --params 15M -o out/resnet50-2g
  condense models.py:resnet32 --input-size 3x32x32 --budget 40%% --layer global --K 3
  condense find timm:mobilenetv2_100
  condense count out/resnet50-2g

other commands: condense find MODEL, condense count MODEL_OR_DIR (each has --help)
"""


def _option_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key, value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", metavar="CxHxW", help="input size, e.g. 3x224x224 (default: the timm "
                   "model's pretrained config, else 3x224x224)")
    p.add_argument("--checkpoint", metavar="FILE", help="local weights (.pth or .safetensors) for MODEL")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Condense a CNN: replace repeated same-resolution blocks by PDE-based Global layers "
                    "to fit a MAC and/or parameter budget, and save a model that loads back.")
    p.add_argument("model", metavar="MODEL", help="timm:NAME or path/to/file.py:factory")
    p.add_argument("--budget", "--macs", dest="macs", metavar="MACS", help="MAC budget, e.g. 250M or 60%%")
    p.add_argument("--params", metavar="PARAMS", help="parameter budget, e.g. 2.5M or 50%%")
    _common(p)
    g = p.add_argument_group("layer")
    g.add_argument("--layer", default="global",
                   help="layer type: global, linearmix, explicit_rd, implicit_rd, circulant_rd (default global)")
    g.add_argument("--K", type=int, default=None, help="PDE steps (default 5, adjusted to the budget)")
    g.add_argument("--init", choices=("input", "block"), default=None,
                   help="initial guess: the kept blocks' output (input, the paper's; the default) or a copy of "
                        "the first replaced block (block; the default with --preserve)")
    g.add_argument("--preserve", action=argparse.BooleanOptionalAction, default=None,
                   help="start each new layer as the identity on a copy of the first replaced block, so "
                        "pretrained weights lose little before fine-tuning (default: on with --checkpoint)")
    g.add_argument("--velocity", help="Global layer velocity: dwconv, separable, constant, zero")
    g.add_argument("--diffusion", help="Global layer diffusion: constant, dwconv")
    g.add_argument("--source", help="Global layer source f: identity, none, residual")
    g.add_argument("--boundary", help="periodic, replicate or zero")
    g.add_argument("--option", action="append", type=_option_value, default=[], metavar="KEY=VALUE",
                   help="any other layer option, e.g. --option dt=0.1 (repeatable)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="DIR", help="where to save (default: condensed/<model name>)")
    o.add_argument("--dry-run", action="store_true", help="plan and count only; save nothing")
    o.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    return p


def _sub_parser(name: str) -> argparse.ArgumentParser:
    if name == "find":
        p = argparse.ArgumentParser(prog="condense find", description="List the runs of repeated "
                                    "same-resolution blocks (changes nothing).")
        p.add_argument("model", metavar="MODEL")
        p.add_argument("--json", action="store_true")
    else:
        p = argparse.ArgumentParser(prog="condense count", description="MACs and parameters of a model or "
                                    "of a condensed-model directory.")
        p.add_argument("model", metavar="MODEL_OR_DIR")
        p.add_argument("--depth", type=int, default=2, help="module depth of the per-module table")
        p.add_argument("--json", action="store_true")
    _common(p)
    return p


def _load_model(text: str, checkpoint: str | None):
    from ._models import build_model, default_input_size, load_checkpoint, parse_model_spec

    spec = parse_model_spec(text)
    model = build_model(spec)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return spec, model, default_input_size(model)


def _size(args, default) -> tuple[int, int, int]:
    from ._budget import parse_input_size

    return parse_input_size(args.input_size) if args.input_size else (default or (3, 224, 224))


def _run_condense(args, console) -> int:
    from rich.table import Table

    from ._budget import format_count
    from ._fit import fit
    from ._io import save

    t0 = time.perf_counter()
    options = dict(args.option)
    for name in ("velocity", "diffusion", "source", "boundary"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    with console.status("building the model", spinner="dots") as status:
        spec, model, default = _load_model(args.model, args.checkpoint)
        size = _size(args, default)
        result = fit(model, macs=args.macs, params=args.params, input_size=size, layer=args.layer,
                     init=args.init, K=args.K, progress=lambda msg: status.update(msg),
                     preserve=args.checkpoint is not None if args.preserve is None else args.preserve, **options)
        out = None
        if not args.dry_run and result.plan.choices:
            name = spec.name if spec.kind == "timm" else Path(spec.path).stem + "-" + spec.factory
            out = Path(args.output or Path("condensed") / name)
            status.update(f"saving to {out}")
            save(result, out, spec=spec, checkpoint=args.checkpoint)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({
            "model": str(spec), "input_size": list(size), "message": result.message,
            "macs_before": result.macs_before, "macs_after": result.macs_after,
            "params_before": result.params_before, "params_after": result.params_after,
            "macs_budget": result.macs_budget, "params_budget": result.params_budget,
            "plan": result.plan.to_dict(), "output": str(out) if out else None, "seconds": round(elapsed, 2),
            "runs": [r.__dict__ | {"shape": list(r.shape)} for r in result.rows]}, indent=2))
        return 0
    table = Table(title=f"{spec} at {'x'.join(map(str, size))}", title_justify="left")
    for col in ("run", "block", "CxHxW", "blocks", "new layer", "MACs", "params"):
        table.add_column(col, justify="right" if col in ("MACs", "params") else "left")
    for r in result.rows:
        blocks = f"{r.r} -> {r.m}" + (" + 1" if r.layer else "")
        table.add_row(r.path, r.block_class, "x".join(map(str, r.shape)), blocks,
                      f"{r.layer} K={r.K}" if r.layer else "-",
                      f"{format_count(r.macs_before)} -> {format_count(r.macs_after)}",
                      f"{format_count(r.params_before)} -> {format_count(r.params_after)}")
    table.add_section()
    table.add_row("[bold]total[/]", "", "", "", "",
                  f"{format_count(result.macs_before)} -> [bold]{format_count(result.macs_after)}[/]",
                  f"{format_count(result.params_before)} -> [bold]{format_count(result.params_after)}[/]")
    table.add_row("ratio", "", "", "", "", f"{result.mac_ratio:.2f}x", f"{result.param_ratio:.2f}x")
    console.print(table)
    budgets = []
    if result.macs_budget is not None:
        budgets.append(f"MACs {format_count(result.macs_after)} <= {format_count(result.macs_budget)}")
    if result.params_budget is not None:
        budgets.append(f"params {format_count(result.params_after)} <= {format_count(result.params_budget)}")
    console.print(result.message + (f"; budget met as measured: {', '.join(budgets)}" if budgets else ""))
    if out:
        console.print(f"saved to [bold]{out}[/] (load with condense.load({str(out)!r})) in {elapsed:.1f}s")
    else:
        console.print(f"nothing saved ({'dry run' if args.dry_run else 'no change'}) in {elapsed:.1f}s")
    return 0


def _run_find(args, console) -> int:
    from .graph import find_runs

    spec, model, default = _load_model(args.model, args.checkpoint)
    with console.status("tracing"):
        found = find_runs(model, _size(args, default))
    if args.json:
        print(json.dumps([{"path": r.path, "blocks": list(r.blocks), "block_class": r.block_class, "r": r.r,
                           "shape": list(r.input_shape), "kind": r.kind, "macs": list(r.macs),
                           "params": list(r.params)} for r in found.runs], indent=2))
    else:
        console.print(found.summary())
    return 0


def _run_count(args, console) -> int:
    from rich.table import Table

    from ._budget import format_count
    from ._count import count
    from ._io import META, load, read_meta

    if (Path(args.model) / META).exists():
        meta = read_meta(args.model)
        model, default, label = load(args.model), tuple(meta["input_size"]), args.model
    else:
        spec, model, default = _load_model(args.model, args.checkpoint)
        label = str(spec)
    size = _size(args, default)
    with console.status("counting"):
        df = count(model, size)
    if args.json:
        print(json.dumps({"model": label, "input_size": list(size), "macs": df.attrs["macs"],
                          "params": df.attrs["params"]}))
        return 0
    table = Table("module", "type", "MACs", "params", title=f"{label} at {'x'.join(map(str, size))}",
                  title_justify="left")
    for name, row in df[df.depth <= args.depth].iterrows():
        table.add_row(name or "(total)", row.type, format_count(row.macs), format_count(row.params))
    console.print(table)
    console.print(f"total: {format_count(df.attrs['macs'])} MACs, {format_count(df.attrs['params'])} params")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        args = _sub_parser(argv[0]).parse_args(argv[1:])
        runner = {"find": _run_find, "count": _run_count}[argv[0]]
    else:
        args = _main_parser().parse_args(argv)
        runner = _run_condense
    console = Console(stderr=bool(getattr(args, "json", False)), width=None if sys.stdout.isatty() else 120)
    try:
        return runner(args, console)
    except CondenseError as err:
        if args.debug:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {err}", highlight=False)
        return 1
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print("interrupted")
        return 130
    except Exception as err:  # not a domain error: one line unless --debug
        if args.debug:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                                   "(run with --debug for the traceback)", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
