"""Which channel counts this machine runs fast: one convolution timed at a range of channel counts, side by side.

    python -m condense.bench.channels [--shapes 16x32x32,32x16x16,64x8x8] [--batch-sizes 1,32] [--csv FILE]

In: feature-map shapes C x H x W, batch sizes, a kernel size, a device. Out: for every shape and batch, the
time of a k x k convolution with c input and c output channels, for c from C/4 to C, as a fraction of the time
at C (all counts of one shape and batch timed interleaved in one run, medians), beside its MAC fraction (c/C)^2;
and, per batch size, the multiple N that ``--width-multiple`` should use here (``suggest_multiple``).
Never: asserts a speed, or writes anything but the ``--csv`` file it is given.

How to read it: where time falls with the MACs, any count is fine. Where the counts between two multiples of N
take as long as the next multiple up (CPU convolution libraries work on blocks of channels: oneDNN uses 16
floats with AVX-512, 8 with AVX2), pruning to such a count costs accuracy and saves no time, and
``condense MODEL --width ... --width-multiple N`` keeps every pruned group at a multiple of N instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .._device import resolve_device, synchronize
from .._errors import CondenseError
from .._help import HelpFormatter
from .._intlist import parse_int_list
from .._write import atomic_write_csv, claim_file, csv_starts_with
from ._timing import interleaved_medians, thread_info

DEFAULT_SHAPES = "16x32x32,32x16x16,64x8x8"  # the three stages of a CIFAR ResNet
MULTIPLES = (4, 8, 16, 32)  # what suggest_multiple considers
SAVES_NOTHING = 0.9  # counts between multiples whose time is at least this share of the next multiple's
FALLS = 0.8  # ... while the smallest multiple timed takes at most this share of the full count's time
COLUMNS = ("shape", "batch", "channels", "full", "mac_ratio", "median_ms", "time_ratio")


@dataclasses.dataclass(frozen=True)
class Timed:
    """One convolution: ``channels`` of the shape's ``full``, its median ``seconds`` and its ``ratio`` to the
    full count's (same shape, batch, run)."""

    shape: tuple[int, int, int]
    batch: int
    channels: int
    full: int
    seconds: float
    ratio: float

    @property
    def mac_ratio(self) -> float:
        return (self.channels / self.full) ** 2


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"16x32x32,64x8x8"`` -> ((16, 32, 32), (64, 8, 8)); a one-line error for anything else."""
    shapes = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        try:
            dims = tuple(int(v) for v in part.lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) < 1:
            raise CondenseError(f"shape {part!r} is not CxHxW with positive sizes", "write e.g. --shapes 32x16x16")
        if dims[0] < 4:
            raise CondenseError(f"shape {part!r} has {dims[0]} channels", "give at least 4 channels to cut")
        shapes.append(dims)
    if not shapes:
        raise CondenseError("no shape given", f"write e.g. --shapes {DEFAULT_SHAPES}")
    return tuple(shapes)


def counts_for(full: int) -> tuple[int, ...]:
    """The counts timed for a shape of ``full`` channels: every count from ``full // 4`` to ``full`` in steps of
    ``full // 16`` (at least 1), and every multiple of 4 in that range (the steps a multiple would make)."""
    low, step = max(1, full // 4), max(1, full // 16)
    counts = set(range(low, full + 1, step)) | {full}
    counts |= {c for c in range(low, full + 1) if c % 4 == 0}
    return tuple(sorted(counts))


def time_counts(
    shape: Sequence[int],
    batch: int,
    counts: Sequence[int],
    *,
    kernel: int = 3,
    device: torch.device | None = None,
    repeats: int = 25,
    warmup: int = 3,
) -> list[Timed]:
    """Time a ``kernel`` x ``kernel`` convolution (c -> c channels, same padding, eval, no grad) on a batch of
    ``shape`` maps at every count, interleaved in one run; ratios are to the largest count."""
    dev = device or torch.device("cpu")
    full = max(counts)
    h, w = int(shape[1]), int(shape[2])
    calls: dict[str, Callable[[], object]] = {}
    for c in counts:
        conv = nn.Conv2d(c, c, kernel, padding=kernel // 2, bias=False).to(dev).eval()
        x = torch.randn(batch, c, h, w, device=dev)
        calls[str(c)] = lambda conv=conv, x=x: (conv(x), synchronize(dev))
    with torch.inference_mode():
        medians = interleaved_medians(calls, repeats=repeats, warmup=warmup)
    base = medians[str(full)]
    dims = (int(shape[0]), h, w)
    return [Timed(dims, batch, c, full, medians[str(c)], medians[str(c)] / base) for c in counts]


def suggest_multiple(rows: Sequence[Timed]) -> int:
    """The largest N of ``MULTIPLES`` for which, at every shape of ``rows`` wider than N, time falls in steps of
    N: the smallest multiple of N timed takes at most ``FALLS`` of the full count's time, and the counts
    between two multiples take on average at least ``SAVES_NOTHING`` of the time of the next multiple up (so
    cutting to them saves next to nothing). 1 when no N is like that: time falls with the count, or (tiny
    maps) hardly at all."""
    by_shape: dict[tuple, dict[int, float]] = {}
    for r in rows:
        by_shape.setdefault((r.shape, r.batch), {})[r.channels] = r.seconds
    best = 1
    for n in MULTIPLES:
        shares = []
        for times in by_shape.values():
            full = max(times)
            if full <= n:
                continue
            between = [c for c in times if c % n and -(-c // n) * n in times]
            steps = sorted(c for c in times if c % n == 0)
            if not between or len(steps) < 2 or times[steps[0]] > FALLS * times[full]:
                shares.append(0.0)
            else:
                shares.append(sum(times[c] / times[-(-c // n) * n] for c in between) / len(between))
        if shares and min(shares) >= SAVES_NOTHING:
            best = n
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m condense.bench.channels", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--shapes", default=DEFAULT_SHAPES, metavar="CxHxW,...", help=f"maps (default {DEFAULT_SHAPES})"
    )
    parser.add_argument("--batch-sizes", default="1,32", metavar="B,B", help="batch sizes (default 1,32)")
    parser.add_argument("--kernel", type=int, default=3, help="kernel size (default 3)")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved rounds (default 25)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write every timing to FILE")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(width=None if sys.stdout.isatty() else 120)
    threads = torch.get_num_threads()
    try:
        shapes = parse_shapes(args.shapes)
        batches = parse_int_list(args.batch_sizes, "--batch-sizes", low=1, example="1,32")
        for flag, value in (("--kernel", args.kernel), ("--repeats", args.repeats), ("--threads", args.threads)):
            if value < 1:
                raise CondenseError(f"{flag} {value} must be >= 1")
        device = resolve_device(args.device)
        out = claim_file(args.csv, "table", csv_starts_with(COLUMNS)) if args.csv else None
        torch.set_num_threads(args.threads)
        return _run(console, shapes, batches, args, device, out)
    except CondenseError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)


def _run(console: Console, shapes, batches, args, device: torch.device, out) -> int:
    console.print(f"[bold]{args.kernel}x{args.kernel} convolution, c -> c channels[/] on {device}, {thread_info()}")
    rows: list[Timed] = []
    for batch in batches:
        for shape in shapes:
            with console.status(f"timing {'x'.join(map(str, shape))} at batch {batch}", spinner="dots"):
                timed = time_counts(
                    shape, batch, counts_for(shape[0]), kernel=args.kernel, device=device, repeats=args.repeats
                )
            rows += timed
            table = Table("channels", "MACs / full", "time / full", title=f"{'x'.join(map(str, shape))}, batch {batch}")
            for r in timed:
                table.add_row(str(r.channels), f"{r.mac_ratio:.2f}", f"{r.ratio:.2f}")
            console.print(table)
    for batch in batches:
        n = suggest_multiple([r for r in rows if r.batch == batch])
        reading = (
            f"counts between multiples of {n} run about as slowly as the next multiple: --width-multiple {n}"
            if n > 1
            else "time falls with the channel count: no multiple needed (--width-multiple 1)"
        )
        console.print(f"batch {batch}: {reading}")
    if out is not None:
        atomic_write_csv(
            out,
            [
                {"shape": "x".join(map(str, r.shape)), "batch": r.batch, "channels": r.channels, "full": r.full,
                 "mac_ratio": r.mac_ratio, "median_ms": r.seconds * 1e3, "time_ratio": r.ratio}
                for r in rows
            ],
            columns=COLUMNS,
        )  # fmt: skip
        console.print(f"table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
