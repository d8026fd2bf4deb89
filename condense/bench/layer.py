"""Benchmark: the Global layer against the EfficientNet-B0 block it replaces, measured side by side.

Run ``python -m condense.bench.layer``. For each shape (EfficientNet-B0's second-stage block, 24 channels
at 56x56, and its 14x14 stages) and batch 1 and 32, it times the real timm block, the Global layer on
the eager PyTorch path and on the fused kernel (K=5, kernel size of the block), interleaved, after
warm-up, and prints medians and the ratios layer / block. ``--train`` adds forward + backward.
Nothing here asserts: it prints what it measured.
"""
from __future__ import annotations

import argparse
import csv
import sys

import torch

from .._help import HelpFormatter
from ._timing import interleaved_medians, thread_info

SHAPES = (  # (stage, block index, label)
    (1, 1, "stage 2: 24ch 56x56 k3"),
    (3, 1, "stage 4: 80ch 14x14 k3"),
    (4, 1, "stage 5: 112ch 14x14 k5"),
)


def measure(batches=(1, 32), repeats: int = 15, train: bool = False, K: int = 5):
    import timm

    from ..pde import GlobalConfig, GlobalLayer, fused_available

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
            for mode in (("infer", "train") if train else ("infer",)):
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
                    rows.append(dict(shape=label, batch=batch, mode=mode, module=name, ms=t * 1e3,
                                     ratio=t / times["block"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m condense.bench.layer", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per case")
    parser.add_argument("--train", action="store_true", help="also time forward + backward")
    parser.add_argument("--K", type=int, default=5, help="PDE steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from ..pde import native_status

    console = Console()
    console.print(f"[bold]Global layer (K={args.K}) vs the EfficientNet-B0 block it replaces[/] — "
                  f"{thread_info()}; {native_status()}")
    rows = measure(repeats=args.repeats, train=args.train, K=args.K)
    table = Table("shape", "batch", "mode", "module", "median ms", "ratio to block")
    for r in rows:
        table.add_row(r["shape"], str(r["batch"]), r["mode"], r["module"], f"{r['ms']:.2f}", f"{r['ratio']:.3f}")
    console.print(table)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
