"""Benchmark: the Global layer's solver on Triton against eager (and the C kernel on the CPU), per shape.

Run ``python -m condense.bench.gpu [--device cuda|cpu] [--csv FILE] [--quick]``. In: nothing but the
options. Out: one table (and the same rows as CSV): for EfficientNet-B0's and ResNet-50's Global-layer
shapes (the late-stage maps a condensed stage works on) at batch 1 and 256 (1 and 8 on the CPU), the
median time of the solver's forward and of forward + backward (K=5, the Global layer's default fields:
source = init, bounded dwconv velocities, constant diffusion 1), the largest difference from the eager
path (output and gradients of init, u and v), and the achieved bandwidth: the bytes the solver must move
(forward: read init, u, v, write the output; backward also: read the gradient, init, u, v, write three
gradients) over the time, against ``--peak-gbps`` (default 4800, an H200's HBM3e). Never: asserts, or
runs the Triton kernel on the CPU unless ``TRITON_INTERPRET=1`` is set and ``--quick`` keeps it tiny.

Timings synchronise the device (each timed call ends with ``torch.cuda.synchronize``). ``--device cpu
--quick`` runs end to end in seconds (tiny shapes, two repeats): that is what CI runs.
"""
from __future__ import annotations

import argparse
import csv
import sys

import torch

from .._help import HelpFormatter
from ._timing import interleaved_medians

SHAPES = (  # (model, channels, height, width)
    ("efficientnet_b0", 40, 28, 28), ("efficientnet_b0", 112, 14, 14), ("efficientnet_b0", 192, 7, 7),
    ("resnet50", 256, 56, 56), ("resnet50", 512, 28, 28), ("resnet50", 1024, 14, 14),
)
QUICK_SHAPES = (("tiny", 4, 7, 7), ("tiny", 3, 5, 9))
K, DT, COURANT, DMAX = 5, 0.2, 0.5, 10.0


def _impls(device: torch.device, quick: bool) -> list[str]:
    from ..pde import _triton
    from ..pde._advection_diffusion import fused_available

    x = torch.zeros(1, device=device)
    impls = ["eager"]
    if device.type == "cpu" and fused_available(x):
        impls.append("fused")
    if not _triton.unsupported(x) and (device.type == "cuda" or quick):
        impls.append("triton")
    return impls


def _solve(impl: str, h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from ..pde._advection_diffusion import bounded_advection_diffusion

    return bounded_advection_diffusion(h, h, u, v, 1.0, 1.0, K=K, dt=DT, dx=1.0, dy=1.0, boundary="periodic",
                                       courant=COURANT, dmax=DMAX, impl=impl)


def measure(device: torch.device, batches, shapes, repeats: int, peak_gbps: float, quick: bool) -> list[dict]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    impls = _impls(device, quick)
    rows = []
    for model, C, H, W in shapes:
        for batch in batches:
            gen = torch.Generator(device="cpu").manual_seed(0)
            h, u, v = (torch.randn(batch, C, H, W, generator=gen).to(device) for _ in range(3))
            g = torch.randn(batch, C, H, W, generator=gen).to(device)
            leaves = [t.clone().requires_grad_() for t in (h, u, v)]

            def train(impl, leaves=leaves, g=g):
                out = _solve(impl, *leaves)
                return [out.detach(), *torch.autograd.grad(out, leaves, g)]

            def timed(fn):
                def call():
                    fn()
                    sync()
                return call

            ref = train("eager")
            fwd = interleaved_medians({i: timed(lambda i=i, f=(h, u, v): _solve(i, *f).detach()) for i in impls},
                                      repeats=repeats, warmup=1)
            bwd = interleaved_medians({i: timed(lambda i=i: train(i)) for i in impls}, repeats=repeats, warmup=1)
            plane = h.numel() * h.element_size()
            for impl in impls:
                res = train(impl)
                errs = [(a - b).abs().max().item() / (1.0 + b.abs().max().item()) for a, b in zip(res, ref)]
                fwd_gbps = 4 * plane / fwd[impl] / 1e9
                train_gbps = 11 * plane / bwd[impl] / 1e9
                rows.append(dict(model=model, shape=f"{C}x{H}x{W}", batch=batch, impl=impl, device=str(device),
                                 fwd_ms=fwd[impl] * 1e3, train_ms=bwd[impl] * 1e3, err_out=errs[0],
                                 err_grad=max(errs[1:]), fwd_gbps=fwd_gbps, fwd_peak_pct=100 * fwd_gbps / peak_gbps,
                                 train_gbps=train_gbps, train_peak_pct=100 * train_gbps / peak_gbps))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m condense.bench.gpu", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: 1 256 on CUDA, 1 8 on the CPU, 1 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10, 2 with --quick)")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="the device's peak memory bandwidth, GB/s")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and two repeats (a CI smoke run)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from .._errors import ConfigError, run_command
    from ..pde import native_status

    def body() -> int:
        name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available", "use --device cpu")
        device = torch.device(name)
        batches = args.batches or ([1, 2] if args.quick else [1, 256] if name == "cuda" else [1, 8])
        repeats = args.repeats or (2 if args.quick else 10)
        shapes = QUICK_SHAPES if args.quick else SHAPES
        console = Console() if sys.stdout.isatty() else Console(width=160)  # a log keeps every column
        what = torch.cuda.get_device_name(device) if name == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        console.print(f"[bold]Global-layer solver (K={K}): Triton vs eager[/] on {what}; {native_status()}; "
                      f"implementations: {', '.join(_impls(device, args.quick))}")
        rows = measure(device, batches, shapes, repeats, args.peak_gbps, args.quick)
        table = Table("model", "C x H x W", "batch", "impl", "fwd ms", "fwd+bwd ms", "max err out", "max err grad",
                      "fwd GB/s", "% peak", "train GB/s", "% peak", title=f"peak {args.peak_gbps:g} GB/s")
        for r in rows:
            table.add_row(r["model"], r["shape"], str(r["batch"]), r["impl"], f"{r['fwd_ms']:.3f}",
                          f"{r['train_ms']:.3f}", f"{r['err_out']:.1e}", f"{r['err_grad']:.1e}",
                          f"{r['fwd_gbps']:.1f}", f"{r['fwd_peak_pct']:.1f}", f"{r['train_gbps']:.1f}",
                          f"{r['train_peak_pct']:.1f}")
        console.print(table)
        if args.csv:
            with open(args.csv, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
