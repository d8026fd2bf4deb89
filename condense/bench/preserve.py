"""How much a trained model loses when condensed, before any fine-tuning, measured on real test data.

Run ``python -m condense.bench.preserve --model zoo:resnet32 --data cifar10:../shared/data/cifar10-jpeg.tar.gz``.
It trains the original for ``--epochs`` (or loads ``--checkpoint``), condenses it twice with the default
plan (m = 1 per run, K = 5) — once with ``preserve`` (each Global layer starts as the identity on a copy of
the first replaced block) and once without — and prints, on the test split: accuracy, top-1 agreement with
the original, and the relative change of the logits ||f'(x) - f(x)|| / ||f(x)||. ``--finetune N`` adds N
epochs of fine-tuning for both. Nothing here asserts: it prints what it measured.
"""

from __future__ import annotations

import argparse
import sys

import torch
from rich.console import Console
from rich.table import Table

from .. import fit
from .._help import HelpFormatter
from .._models import build_model, load_checkpoint
from ..data import load_data
from ..train import TrainConfig, train


@torch.no_grad()
def compare(original, other, bundle, batch_size=500):
    original.eval()
    other.eval()
    agree = correct = seen = 0
    rel = 0.0
    for x, y in bundle.loader("test", batch_size, shuffle=False, augment=False):
        a, b = original(x), other(x)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        correct += int((b.argmax(1) == y).sum())
        rel += float(((b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).sum())
        seen += len(y)
    return {"acc": correct / seen, "agreement": agree / seen, "rel_change": rel / seen}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m condense.bench.preserve", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    ap.add_argument("--model", default="zoo:resnet32", help="the original model")
    ap.add_argument("--data", default="cifar10:../shared/data/cifar10-jpeg.tar.gz", help="training data")
    ap.add_argument("--checkpoint", default=None, help="trained weights of the original (skips training)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs training the original")
    ap.add_argument("--finetune", type=int, default=0, help="epochs fine-tuning each condensed model")
    ap.add_argument("--lr", type=float, default=0.05, help="learning rate")
    ap.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images")
    ap.add_argument("--save-checkpoint", default=None, help="save the trained original here")
    args = ap.parse_args(argv)

    console = Console()
    bundle = load_data(args.data, limit_train=args.limit_train)
    original = build_model(args.model, num_classes=bundle.num_classes)
    if args.checkpoint:
        load_checkpoint(original, args.checkpoint)
    else:
        console.print(f"training the original {args.model} for {args.epochs} epoch(s)")
        train(original, bundle, TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr))
        if args.save_checkpoint:
            torch.save(original.state_dict(), args.save_checkpoint)
    rows = {"original": compare(original, original, bundle)}
    models = {}
    for name, preserve in (("condensed, preserve", True), ("condensed, plain init", False)):
        res = fit(original, input_size=bundle.input_size, preserve=preserve)
        models[name] = res.model
        rows[name] = {**compare(original, res.model, bundle), "macs": res.macs_after, "params": res.params_after}
    rows["original"].update(macs=res.macs_before, params=res.params_before)
    if args.finetune:
        for name, model in models.items():
            train(model, bundle, TrainConfig(epochs=args.finetune, batch_size=128, lr=args.lr / 5))
            rows[f"{name} + {args.finetune} ep"] = {
                **compare(original, model, bundle),
                "macs": rows[name]["macs"],
                "params": rows[name]["params"],
            }
    table = Table(
        "model",
        "MACs",
        "params",
        "test acc",
        "top-1 agreement",
        "rel. logit change",
        title=f"{args.model} on {bundle.name}: before fine-tuning",
    )
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['macs'] / 1e6:.2f}M",
            f"{r['params'] / 1e3:.1f}K",
            f"{r['acc']:.4f}",
            f"{r['agreement']:.4f}",
            f"{r['rel_change']:.4f}",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
