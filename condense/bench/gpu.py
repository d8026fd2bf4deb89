"""The prepared GPU check: kernels, the layer against the block it replaces, whole models, and torchrun.

Run ``python -m condense.bench.gpu [--device cuda|cpu] [--csv FILE] [--quick] [--parts ...]``. Four parts
(``--parts kernels layer models ddp``, all by default), each one table, all rows in one CSV:

* ``layer``: the Global layer (``impl="auto"``: Triton on CUDA, the C kernel on the CPU) against the
  EfficientNet-B0 block it replaces, at batch 1 and 256 (1 and 8 on the CPU), forward and training step.
* ``models``: ``efficientnet_b0 @250M``, ``mobilenetv2_100 @200M``, ``resnet50 @2G`` condensed against
  the original (``condense bench`` on the device): latency at batch 1, throughput at batch 256, a bf16
  training step, eager and compiled. ``--quick``: ``zoo:resnet_tiny`` at 3x32x32, eager only.
* ``ddp``: two training steps of a condensed model on synthetic data under ``torchrun
  --nproc_per_node=<GPUs>`` (NCCL; 2 gloo processes on the CPU), with each rank's step time.
* ``kernels``: the solver alone, below.

The kernels part: for EfficientNet-B0's and ResNet-50's Global-layer
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
import json
import os
import subprocess
import sys
import tempfile
import time

import timm
import torch
from rich.console import Console
from rich.table import Table

from .._errors import ConfigError, run_command
from .._help import HelpFormatter
from ..pde import GlobalConfig, GlobalLayer, native_status
from ..pde._advection_diffusion import bounded_advection_diffusion, fused_available
from ._timing import interleaved_medians
from .models import run_bench

SHAPES = (  # (model, channels, height, width)
    ("efficientnet_b0", 40, 28, 28),
    ("efficientnet_b0", 112, 14, 14),
    ("efficientnet_b0", 192, 7, 7),
    ("resnet50", 256, 56, 56),
    ("resnet50", 512, 28, 28),
    ("resnet50", 1024, 14, 14),
)
QUICK_SHAPES = (("tiny", 4, 7, 7), ("tiny", 3, 5, 9))
K, DT, COURANT, DMAX = 5, 0.2, 0.5, 10.0


def _impls(device: torch.device, quick: bool) -> list[str]:
    from ..pde import _triton  # imports triton (optional)

    x = torch.zeros(1, device=device)
    impls = ["eager"]
    if device.type == "cpu" and fused_available(x):
        impls.append("fused")
    if not _triton.unsupported(x) and (device.type == "cuda" or quick):
        impls.append("triton")
    return impls


def _solve(impl: str, h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return bounded_advection_diffusion(
        h, h, u, v, 1.0, 1.0, K=K, dt=DT, dx=1.0, dy=1.0, boundary="periodic", courant=COURANT, dmax=DMAX, impl=impl
    )


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
            fwd = interleaved_medians(
                {i: timed(lambda i=i, f=(h, u, v): _solve(i, *f).detach()) for i in impls}, repeats=repeats, warmup=1
            )
            bwd = interleaved_medians({i: timed(lambda i=i: train(i)) for i in impls}, repeats=repeats, warmup=1)
            plane = h.numel() * h.element_size()
            for impl in impls:
                res = train(impl)
                errs = [(a - b).abs().max().item() / (1.0 + b.abs().max().item()) for a, b in zip(res, ref)]
                fwd_gbps = 4 * plane / fwd[impl] / 1e9
                train_gbps = 11 * plane / bwd[impl] / 1e9
                rows.append(
                    dict(
                        model=model,
                        shape=f"{C}x{H}x{W}",
                        batch=batch,
                        impl=impl,
                        device=str(device),
                        fwd_ms=fwd[impl] * 1e3,
                        train_ms=bwd[impl] * 1e3,
                        err_out=errs[0],
                        err_grad=max(errs[1:]),
                        fwd_gbps=fwd_gbps,
                        fwd_peak_pct=100 * fwd_gbps / peak_gbps,
                        train_gbps=train_gbps,
                        train_peak_pct=100 * train_gbps / peak_gbps,
                    )
                )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def layer_vs_block(device: torch.device, batches, repeats: int) -> list[dict]:
    """The Global layer (auto impl) against the EfficientNet-B0 block it replaces, forward and training step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    rows = []
    for stage, size in ((1, 56), (3, 14), (4, 14)):
        block = model.blocks[stage][1].to(device)
        C, k = block.conv_pw.in_channels, block.conv_dw.kernel_size[0]
        layer = GlobalLayer(C, GlobalConfig(K=K, kernel_size=k)).to(device)
        for batch in batches:
            x = torch.randn(batch, C, size, size, device=device)
            for mode in ("forward", "train step"):
                fns = {}
                for name, m in (("block", block), ("global", layer)):
                    if mode == "forward":
                        m.eval()

                        def call(m=m, x=x):
                            with torch.no_grad():
                                m(x)
                            sync()
                    else:
                        m.train()
                        xg = x.clone().requires_grad_()

                        def call(m=m, xg=xg):
                            m(xg).float().square().mean().backward()
                            sync()

                    fns[name] = call
                t = interleaved_medians(fns, repeats=repeats, warmup=2)
                rows.append(
                    dict(
                        part="layer",
                        model="efficientnet_b0",
                        shape=f"{C}x{size}x{size} k{k}",
                        batch=batch,
                        mode=mode,
                        device=str(device),
                        block_ms=t["block"] * 1e3,
                        global_ms=t["global"] * 1e3,
                        ratio=t["global"] / t["block"],
                    )
                )
    return rows


MODELS = (("timm:efficientnet_b0", "250M", None), ("timm:mobilenetv2_100", "200M", None), ("timm:resnet50", "2G", None))
QUICK_MODELS = (("zoo:resnet_tiny", "70%", (3, 32, 32)),)


def models(device: torch.device, batches, repeats: int, quick: bool, train_batch: int | None) -> list[dict]:
    """Condensed / original for each model: latency (batch 1), throughput (the larger batch), a bf16 training
    step; eager and compiled (eager only with ``--quick``)."""
    rows = []
    for spec, budget, size in QUICK_MODELS if quick else MODELS:
        res = run_bench(
            spec,
            macs=budget,
            input_size=size,
            batch_sizes=tuple(batches),
            repeats=repeats,
            warmup=2,
            compile=not quick,
            train=True,
            train_batch=train_batch or max(batches),
            device=str(device),
            amp="bf16",
        )
        for r in res.rows:
            rows.append(
                dict(
                    part="models",
                    model=f"{spec} @{budget}",
                    task=r["task"],
                    mode=r["mode"],
                    batch=r["batch"],
                    unit=r["unit"],
                    original=r["original"],
                    condensed=r["condensed"],
                    ratio=r["ratio"],
                    device=res.device,
                    note=r["note"],
                )
            )
    return rows


_DDP_STEPS = r"""
import json, os, sys, time, torch, torch.distributed as dist
from torch import nn
import condense
from condense._device import resolve_device
device = resolve_device(sys.argv[1])
if device.type == "cuda":
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
spec, size, batch = sys.argv[2], tuple(int(v) for v in sys.argv[3].split("x")), int(sys.argv[4])
model = condense.fit(condense.build_model(spec), macs="60%", input_size=size).model.to(device).train()
net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
times = []
for step in range(2):
    x = torch.randn(batch, *size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = nn.functional.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times.append(time.perf_counter() - t0)
first = [p for p in model.parameters()][0].detach().float().sum()
dist.all_reduce(first)
with open(os.path.join(sys.argv[5], f"rank{rank}.json"), "w") as fh:  # one file a rank: no interleaved lines
    json.dump({"rank": rank, "world": world, "device": str(device), "step_ms": [1e3 * t for t in times],
               "loss": float(loss), "synced": bool(torch.isfinite(first))}, fh)
dist.destroy_process_group()
"""


def ddp(device: torch.device, quick: bool, batch: int) -> list[dict]:
    """Two training steps of a condensed model under torchrun, one process per GPU (2 gloo processes on CPU)."""
    n = torch.cuda.device_count() if device.type == "cuda" else 2
    spec, size = (
        ("zoo:resnet_tiny", "3x32x32") if quick or device.type != "cuda" else ("timm:efficientnet_b0", "3x224x224")
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "ddp_steps.py")
        with open(script, "w") as fh:
            fh.write(_DDP_STEPS)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            script,
            "cuda" if device.type == "cuda" else "cpu",
            spec,
            size,
            str(batch),
            tmp,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return [
                dict(
                    part="ddp",
                    model=spec,
                    processes=n,
                    device=str(device),
                    ok=False,
                    wall_s=wall,
                    note=" | ".join(tail)[:300],
                )
            ]
        rows = []
        for rank in range(n):
            with open(os.path.join(tmp, f"rank{rank}.json")) as fh:
                r = json.load(fh)
            rows.append(
                dict(
                    part="ddp",
                    model=spec,
                    processes=r["world"],
                    rank=r["rank"],
                    device=r["device"],
                    ok=r["synced"],
                    step1_ms=r["step_ms"][0],
                    step2_ms=r["step_ms"][1],
                    loss=r["loss"],
                    wall_s=wall,
                )
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m condense.bench.gpu", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default=None, help="where to run (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes (default: 1 256 on CUDA, 1 8 on the CPU, 1 2 with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10, 2 with --quick)")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="the device's peak memory bandwidth, GB/s")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and two repeats (a CI smoke run)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("kernels", "layer", "models", "ddp"),
        default=["kernels", "layer", "models", "ddp"],
        help="which parts to run",
    )
    parser.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="batch of the models' training step (default: the largest of --batches)",
    )
    args = parser.parse_args(argv)

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
        console.print(
            f"[bold]GPU check[/] on {what} ({torch.cuda.device_count() if name == 'cuda' else 0} GPUs); "
            f"torch {torch.__version__}; {native_status()}"
        )
        all_rows: list[dict] = []
        t_start = time.perf_counter()
        if "kernels" in args.parts:
            console.print(
                f"[bold]Global-layer solver (K={K}): Triton vs eager[/]; implementations: "
                f"{', '.join(_impls(device, args.quick))}"
            )
            rows = measure(device, batches, shapes, repeats, args.peak_gbps, args.quick)
            table = Table(
                "model",
                "C x H x W",
                "batch",
                "impl",
                "fwd ms",
                "fwd+bwd ms",
                "max err out",
                "max err grad",
                "fwd GB/s",
                "% peak",
                "train GB/s",
                "% peak",
                title=f"kernels (peak {args.peak_gbps:g} GB/s)",
            )
            for r in rows:
                table.add_row(
                    r["model"],
                    r["shape"],
                    str(r["batch"]),
                    r["impl"],
                    f"{r['fwd_ms']:.3f}",
                    f"{r['train_ms']:.3f}",
                    f"{r['err_out']:.1e}",
                    f"{r['err_grad']:.1e}",
                    f"{r['fwd_gbps']:.1f}",
                    f"{r['fwd_peak_pct']:.1f}",
                    f"{r['train_gbps']:.1f}",
                    f"{r['train_peak_pct']:.1f}",
                )
            console.print(table)
            all_rows += [{"part": "kernels", **r} for r in rows]
        if "layer" in args.parts:
            rows = layer_vs_block(device, [1, 2] if args.quick else batches, repeats)
            table = Table(
                "shape",
                "batch",
                "mode",
                "block ms",
                "Global ms",
                "Global / block",
                title="the Global layer against the EfficientNet-B0 block it replaces",
            )
            for r in rows:
                table.add_row(
                    r["shape"],
                    str(r["batch"]),
                    r["mode"],
                    f"{r['block_ms']:.3f}",
                    f"{r['global_ms']:.3f}",
                    f"{r['ratio']:.2f}",
                )
            console.print(table)
            all_rows += rows
        if "models" in args.parts:
            rows = models(device, [1, 2] if args.quick else batches, repeats, args.quick, args.train_batch)
            table = Table(
                "model",
                "task",
                "mode",
                "batch",
                "original",
                "condensed",
                "condensed / original",
                title="condensed vs original (MACs, latency ms, throughput img/s, bf16 train ms/step)",
            )

            def fmt(v):
                return "-" if v is None else f"{v:.4g}"

            for r in rows:
                table.add_row(
                    r["model"],
                    r["task"],
                    r["mode"],
                    str(r["batch"]),
                    fmt(r["original"]),
                    fmt(r["condensed"]),
                    fmt(r["ratio"]),
                )
            console.print(table)
            all_rows += rows
        if "ddp" in args.parts:
            rows = ddp(device, args.quick, 2 if args.quick or name != "cuda" else 64)
            table = Table(
                "model",
                "processes",
                "rank",
                "device",
                "ok",
                "step 1 ms",
                "step 2 ms",
                "note",
                title="two training steps under torchrun",
            )
            for r in rows:
                table.add_row(
                    r["model"],
                    str(r["processes"]),
                    str(r.get("rank", "-")),
                    r["device"],
                    str(r["ok"]),
                    f"{r.get('step1_ms', float('nan')):.1f}",
                    f"{r.get('step2_ms', float('nan')):.1f}",
                    r.get("note", ""),
                )
            console.print(table)
            all_rows += rows
        console.print(f"done in {time.perf_counter() - t_start:.0f} s")
        if args.csv and all_rows:
            fields = list(dict.fromkeys(k for r in all_rows for k in r))
            with open(args.csv, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(all_rows)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
