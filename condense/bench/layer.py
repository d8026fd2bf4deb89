"""Benchmark: the Global layer against the block it replaces, and condensed models against block dropping.

Run ``python -m condense.bench.layer``. For each shape (EfficientNet-B0's second-stage block, 24 channels
at 56x56, and its 14x14 stages) and batch 1 and 32, it times the real timm block, the Global layer on
the eager PyTorch path and on the fused kernel (K=5, kernel size of the block), interleaved, after
warm-up, and prints medians and the ratios layer / block. ``--train`` adds forward + backward.

``--cifar``: the CIFAR ResNet shapes (16x32x32, 32x16x16, 64x8x8; batch 1 and 32; ``--Ks``, default 1-5):
the ResNet basic block the layer replaces, the Global layer on its pre-issue-25 inference path
(``legacy_path``: module, custom-op dispatch, the kernel's generic passes) and on today's path, inference
and (``--train``) a training step (forward + backward), interleaved; ratios new / legacy and layer / block.

``--models``: condensed models against the same plan with ``layer="drop"`` (the removed blocks deleted,
nothing in their place) and against the original, timed interleaved in one run (round-robin, medians,
ratios from the same run), eager and compiled, batch 1 and 32: zoo:resnet20 and zoo:resnet56 at 50% MACs,
timm efficientnet_b0 at 250M (random weights). The condensed model also runs on the legacy path (an extra
arm, so the before/after ratio comes from the same run). ``--model-Ks 1,3`` adds the same plan with every
Global layer at those K (what fewer steps would buy); ``--only SPEC`` runs one model.

Nothing here asserts: it prints what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import os
import sys

import timm
import torch
from rich.console import Console
from rich.table import Table

from .. import zoo
from .._fit import fit
from .._help import HelpFormatter
from .._intlist import int_list_type
from .._resolve import resolve_model
from ..graph import RunChoice, rewrite
from ..pde import GlobalConfig, GlobalLayer, fused_available, native_status
from ..pde._native import legacy_path
from ._timing import interleaved_medians, thread_info
from .models import _raise_recompile_limit

SHAPES = (  # (stage, block index, label)
    (1, 1, "stage 2: 24ch 56x56 k3"),
    (3, 1, "stage 4: 80ch 14x14 k3"),
    (4, 1, "stage 5: 112ch 14x14 k5"),
)


def measure(batches=(1, 32), repeats: int = 15, train: bool = False, K: int = 5):
    model = timm.create_model("efficientnet_b0", pretrained=False)
    rows = []
    for stage, idx, label in SHAPES:
        block = model.blocks[stage][idx]
        C = block.conv_pw.in_channels
        k = block.conv_dw.kernel_size[0]
        size = {1: 56, 3: 14, 4: 14}[stage]
        layers = {impl: GlobalLayer(C, GlobalConfig(K=K, kernel_size=k, impl=impl)) for impl in ("eager", "fused")}
        layers["fused"].load_state_dict(layers["eager"].state_dict())
        if not fused_available(torch.zeros(1)):
            del layers["fused"]
        for batch in batches:
            x = torch.randn(batch, C, size, size)
            mods = {"block": block, **{f"global-{k_}": m for k_, m in layers.items()}}
            for mode in ("infer", "train") if train else ("infer",):
                if mode == "infer":
                    for m in mods.values():
                        m.eval()

                    def run(m=None, x=x):
                        with torch.inference_mode():
                            m(x)
                else:
                    for m in mods.values():
                        m.train()
                    xg = x.clone().requires_grad_()

                    def run(m=None, xg=xg):
                        m(xg).sum().backward()

                fns = {name: (lambda m=m: run(m)) for name, m in mods.items()}
                n = repeats if batch == 1 else max(5, repeats // 3)
                times = interleaved_medians(fns, repeats=n, warmup=2)
                for name, t in times.items():
                    rows.append(
                        dict(shape=label, batch=batch, mode=mode, module=name, ms=t * 1e3, ratio=t / times["block"])
                    )
    return rows


CIFAR_SHAPES = ((16, 32, 1), (32, 16, 2), (64, 8, 3))  # channels, size, zoo resnet20 stage (its block 1)


def measure_cifar(batches=(1, 32), Ks=(1, 2, 3, 4, 5), repeats: int = 30, train: bool = False):
    """Rows at the CIFAR ResNet shapes: the basic block, the Global layer on the legacy path and now."""
    net = zoo.build("resnet20")
    rows = []
    for C, size, stage in CIFAR_SHAPES:
        block = getattr(net, f"layer{stage}")[1]
        for batch in batches:
            x = torch.randn(batch, C, size, size)
            for K in Ks:
                torch.manual_seed(0)
                layer = GlobalLayer(C, GlobalConfig(K=K))
                with torch.no_grad():  # statistics and affine parameters away from their defaults
                    for m in layer.modules():
                        if isinstance(m, torch.nn.BatchNorm2d):
                            m.running_var.uniform_(0.5, 2.0)
                            m.weight.uniform_(0.5, 1.5)
                for mode in ("infer", "train") if train else ("infer",):
                    for m in (block, layer):
                        m.train(mode == "train")
                    if mode == "infer":

                        def run(m, legacy=False, x=x):
                            with torch.inference_mode(), legacy_path(legacy):
                                m(x)
                    else:
                        xg = x.clone().requires_grad_()

                        def run(m, legacy=False, xg=xg):
                            with legacy_path(legacy):
                                m(xg).sum().backward()

                    fns = {
                        "block": lambda b=block, r=run: r(b),
                        "global-legacy": lambda g=layer, r=run: r(g, True),
                        "global": lambda g=layer, r=run: r(g),
                    }
                    n = repeats if batch == 1 else max(5, repeats // 4)
                    times = interleaved_medians(fns, repeats=n, warmup=2)
                    for name, t in times.items():
                        rows.append(
                            dict(
                                shape=f"{C}x{size}x{size}",
                                batch=batch,
                                K=K,
                                mode=mode,
                                module=name,
                                ms=t * 1e3,
                                vs_legacy=t / times["global-legacy"],
                                vs_block=t / times["block"],
                            )
                        )
    return rows


MODELS = (
    ("zoo:resnet20", "50%", (3, 32, 32)),
    ("zoo:resnet56", "50%", (3, 32, 32)),
    ("timm:efficientnet_b0", "250M", (3, 224, 224)),
)


def model_arms(spec: str, budget: str, input_size, Ks: tuple[int, ...] = ()) -> dict:
    """{original, condensed, drop, K=k...}: ``spec`` condensed to ``budget`` (``condense.fit``, Global
    layers), the same plan (m per run) with ``layer="drop"``, and for each k in ``Ks`` the same plan with
    every Global layer at K=k steps; eval mode, seeded weights."""
    torch.manual_seed(0)
    original = resolve_model(spec).model.eval()
    res = fit(original, macs=budget, input_size=input_size)

    def variant(change) -> torch.nn.Module:  # the same runs and kept blocks, each run's choice changed
        return rewrite(original, res.found, {p: change(c) for p, c in res.plan.choices.items()}).module.eval()

    arms = {
        "original": original,
        "condensed": res.model.eval(),
        "drop": variant(lambda c: RunChoice(m=c.m, layer="drop", options={}, init="input")),
    }
    for K in Ks:

        def at_K(c: RunChoice, K: int = K) -> RunChoice:  # a Global layer's step count; other layers as planned
            return dataclasses.replace(c, options={**c.options, "K": K}) if "K" in c.options else c

        arms[f"K={K}"] = variant(at_K)
    return arms


def measure_models(
    models=MODELS,
    batches=(1, 32),
    modes=("eager", "compiled"),
    repeats: int = 20,
    progress=lambda _m: None,
    Ks: tuple[int, ...] = (),
):
    """Rows: per model, mode and batch the median ms of original, condensed, condensed on the legacy path,
    the drop plan and the plan at each K of ``Ks``, interleaved in one run; each one's ratio to the original,
    and each layer arm's gap over the drop plan (``gap``: the condensed model's; ``K=k - drop``)."""
    old_limit = _raise_recompile_limit(64)
    rows = []
    try:
        for spec, budget, size in models:
            progress(f"condensing {spec} to {budget}")
            arms = model_arms(spec, budget, size, Ks)
            for mode in modes:
                runs = {k: (torch.compile(m, dynamic=False) if mode == "compiled" else m) for k, m in arms.items()}
                for batch in batches:
                    progress(f"{spec} {mode} batch {batch}")
                    x = torch.randn(batch, *size)

                    def call(r, legacy=False, x=x):
                        with torch.inference_mode(), legacy_path(legacy):
                            r(x)

                    fns = {
                        "original": lambda r=runs["original"], c=call: c(r),
                        "condensed": lambda r=runs["condensed"], c=call: c(r),
                        "condensed-legacy": lambda r=runs["condensed"], c=call: c(r, True),
                        "drop": lambda r=runs["drop"], c=call: c(r),
                        **{f"K={K}": lambda r=runs[f"K={K}"], c=call: c(r) for K in Ks},
                    }
                    n = repeats if batch == 1 else max(5, repeats // 3)
                    times = interleaved_medians(fns, repeats=n, warmup=3)
                    rows.append(
                        dict(
                            model=f"{spec} @{budget}",
                            mode=mode,
                            batch=batch,
                            **{f"{k}_ms": t * 1e3 for k, t in times.items()},
                            **{k: t / times["original"] for k, t in times.items() if k != "original"},
                            gap=(times["condensed"] - times["drop"]) / times["original"],
                            **{f"K={K} - drop": (times[f"K={K}"] - times["drop"]) / times["original"] for K in Ks},
                        )
                    )
    finally:
        _raise_recompile_limit(old_limit, force=True)
    return rows


def _write_csv(rows, path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m condense.bench.layer", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per case")
    parser.add_argument("--train", action="store_true", help="also time forward + backward")
    parser.add_argument("--K", type=int, default=5, help="PDE steps")
    parser.add_argument(
        "--cifar", action="store_true", help="the CIFAR ResNet shapes: block vs the legacy and today's Global layer"
    )
    parser.add_argument(
        "--Ks",
        type=int_list_type("--Ks", low=1, example="1,5"),
        default=(1, 2, 3, 4, 5),
        help="PDE steps for --cifar (default 1,2,3,4,5)",
    )
    parser.add_argument(
        "--models",
        action="store_true",
        help="condensed vs layer='drop' vs original: resnet20/56 @50%%, efficientnet_b0 @250M",
    )
    parser.add_argument("--eager-only", action="store_true", help="--models: skip torch.compile")
    parser.add_argument(
        "--only", metavar="SPEC", choices=[m[0] for m in MODELS], help="--models: this model alone, e.g. zoo:resnet20"
    )
    parser.add_argument(
        "--model-Ks",
        type=int_list_type("--model-Ks", low=1, example="1,3"),
        default=(),
        metavar="K,K",
        help="--models: also the same plan with every Global layer at these K (e.g. 1,3)",
    )
    parser.add_argument(
        "--batches",
        type=int_list_type("--batches", low=1, example="1,32"),
        default=(1, 32),
        help="batch sizes (default 1,32)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    batches = args.batches
    try:
        load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        load = "load unknown"
    if args.models:
        console.print(
            f"[bold]condensed vs the same plan with layer='drop' vs the original[/] — {thread_info()}; "
            f"{native_status()}; {load}"
        )
        modes = ("eager",) if args.eager_only else ("eager", "compiled")
        models = tuple(m for m in MODELS if args.only in (None, m[0]))
        Ks = args.model_Ks
        rows = measure_models(models, batches, modes, args.repeats, console.log, Ks)
        table = Table("model", "mode", "batch", "original ms", "condensed", "legacy", "drop", "condensed - drop")
        for K in Ks:
            table.add_column(f"K={K}")
            table.add_column(f"K={K} - drop")
        for r in rows:
            table.add_row(
                r["model"],
                r["mode"],
                str(r["batch"]),
                f"{r['original_ms']:.2f}",
                f"{r['condensed']:.3f}",
                f"{r['condensed-legacy']:.3f}",
                f"{r['drop']:.3f}",
                f"{r['gap']:+.3f}",
                *(f"{r[k]:{f}}" for K in Ks for k, f in ((f"K={K}", ".3f"), (f"K={K} - drop", "+.3f"))),
            )
        console.print(table)
        console.print("times / the original's, from one interleaved run; goal: condensed - drop <= 0.05")
        if args.csv:
            _write_csv(rows, args.csv)
        return 0
    if args.cifar:
        console.print(
            f"[bold]Global layer at CIFAR ResNet shapes: basic block vs legacy vs today[/] — "
            f"{thread_info()}; {native_status()}; {load}"
        )
        rows = measure_cifar(batches=batches, Ks=args.Ks, repeats=args.repeats, train=args.train)
        table = Table("shape", "batch", "K", "mode", "module", "median ms", "/ legacy", "/ block")
        for r in rows:
            table.add_row(
                r["shape"],
                str(r["batch"]),
                str(r["K"]),
                r["mode"],
                r["module"],
                f"{r['ms']:.3f}",
                f"{r['vs_legacy']:.3f}",
                f"{r['vs_block']:.3f}",
            )
        console.print(table)
        if args.csv:
            _write_csv(rows, args.csv)
        return 0
    console.print(
        f"[bold]Global layer (K={args.K}) vs the EfficientNet-B0 block it replaces[/] — "
        f"{thread_info()}; {native_status()}; {load}"
    )
    rows = measure(batches=batches, repeats=args.repeats, train=args.train, K=args.K)
    table = Table("shape", "batch", "mode", "module", "median ms", "ratio to block")
    for r in rows:
        table.add_row(r["shape"], str(r["batch"]), r["mode"], r["module"], f"{r['ms']:.2f}", f"{r['ratio']:.3f}")
    console.print(table)
    if args.csv:
        _write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
