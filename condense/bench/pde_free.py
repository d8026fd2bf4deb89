"""Benchmark: the latency a condensed model would have if its PDE layers cost nothing.

Run ``python -m condense.bench.pde_free DIR`` (a condensed-model directory; or ``timm:NAME --budget B`` to
condense first). It times, side by side and interleaved after warm-up, the original, the condensed model,
and a control: the condensed model with every PDE layer replaced by an identity, which no PDE layer can
beat. It prints medians, each one's ratio to the original, and the MAC ratio. When the control's ratio is
above the MAC ratio, the blocks the plan removes cost less time than their share of MACs, and no PDE
layer can make that plan's latency saving reach its MAC saving. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .._count import count
from .._errors import CondenseError
from .._help import HelpFormatter
from ..pde import PDELayer
from ._timing import interleaved_medians, thread_info
from .models import resolve_pair


def without_pde_layers(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every PDE layer (which maps a feature map to one of the same shape)
    replaced by ``nn.Identity``, and how many were replaced."""
    control = copy.deepcopy(model)
    replaced = 0
    for parent in list(control.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PDELayer):
                setattr(parent, name, nn.Identity())
                replaced += 1
    return control, replaced


def measure(
    original: nn.Module,
    condensed: nn.Module,
    input_size,
    *,
    batch: int = 1,
    compiled: bool = True,
    repeats: int = 30,
    warmup: int = 5,
) -> dict:
    """Median seconds per inference call of the original, the condensed model and the identity control,
    their ratios to the original, and the MAC ratio (batch 1)."""
    control, replaced = without_pde_layers(condensed)
    models = {"original": original, "condensed": condensed, "identity control": control}
    macs = {name: count(m, input_size).attrs["macs"] for name, m in models.items()}
    runs = {name: (torch.compile(m.eval(), dynamic=False) if compiled else m.eval()) for name, m in models.items()}
    x = torch.randn(batch, *input_size)
    with torch.no_grad():
        times = interleaved_medians(
            {name: (lambda r=r: r(x)) for name, r in runs.items()}, repeats=repeats, warmup=warmup
        )
    return dict(
        times=times,
        macs=macs,
        replaced=replaced,
        ratios={name: t / times["original"] for name, t in times.items()},
        mac_ratio=macs["condensed"] / macs["original"],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m condense.bench.pde_free", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("target", help="a condensed-model directory, or a model spec with --budget")
    parser.add_argument("--against", default=None, help="the original (default: the one recorded in DIR)")
    parser.add_argument("--budget", default=None, help="MAC budget when TARGET is a model spec")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the timed calls (default 1)")
    parser.add_argument("--eager", action="store_true", help="time eager models (default: torch.compile)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per model (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    console = Console()
    try:
        original, condensed, o_label, c_label, size = resolve_pair(args.target, against=args.against, macs=args.budget)
    except CondenseError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    mode = "eager" if args.eager else "compiled"
    console.print(f"[bold]{c_label} vs {o_label}[/], batch {args.batch}, {mode}, {thread_info()}")
    with console.status(f"{'compiling and ' if not args.eager else ''}timing three models ..."):
        r = measure(original, condensed, size, batch=args.batch, compiled=not args.eager, repeats=args.repeats)
    table = Table("model", "MACs", "median ms", "time / original")
    for name, t in r["times"].items():
        table.add_row(name, f"{r['macs'][name] / 1e6:.1f}M", f"{t * 1e3:.2f}", f"{r['ratios'][name]:.3f}")
    console.print(table)
    console.print(
        f"{r['replaced']} PDE layers replaced by identities; MAC ratio {r['mac_ratio']:.3f}, "
        f"identity control {r['ratios']['identity control']:.3f}, "
        f"condensed {r['ratios']['condensed']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
