"""Training the weight-sharing supernet (``_net.Supernet``) once, with the sandwich rule, and scoring its plans.

In: a ``Supernet``, data, a ``condense.TrainConfig`` and a ``SandwichConfig``. Out: the trained supernet (in
place), a ``TrainResult``, and in ``out_dir``: ``last.pt`` every epoch and ``metrics.json``. The run setup
(data, device, process group, output folder, resume checks, seeds, optimizer, scaler, checkpoints) is
``condense.train``'s own (``prepare_run`` -> ``RunSetup``), the one ``train`` uses; only the step differs.

Sandwich rule (Yu et al., BigNAS): every step trains the largest plan (the original) on the labels (or
distilled from ``teacher``), the smallest plan (m = 1 in every run, the lowest K, init="input", the other choices
drawn) and ``random_plans`` random plans of the space, distilled in place from the largest plan's outputs
(or from the teacher); the plans of a step depend only on (seed, epoch, step), so a resumed run draws the
same ones. The largest plan's loss counts once and the smaller plans' losses are averaged (summed, the 3
distilled gradients outvoted the original's: after one epoch on 5,000 CIFAR-10 images its accuracy was
12.2% against 18.5% averaged, and 18.15% for the original trained alone). A drawn plan whose loss has blown
up (``SandwichConfig.skip_loss``) gets no gradient and is counted.

Multi-process training (``torchrun --nproc_per_node=N``): the process group is joined as ``train.train``
joins it (gloo on the CPU, NCCL on CUDA) and every epoch's data is sharded by rank, but the supernet is not
wrapped in DistributedDataParallel: a step runs several paths and leaves most candidate layers unused.
Instead rank 0's weights are broadcast at the start, every rank draws the same plans (they depend on
(seed, epoch, step) only), and each step's gradients are averaged over the ranks by hand, in one flattened
all-reduce (a parameter no rank touched keeps no gradient, so the optimizer leaves it alone): identical
gradients keep the replicas identical. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._bn import calibration_batches, recalibrate_bn
from .._device import device_record
from .._errors import CondenseError, ConfigError
from ..train import TrainConfig, TrainResult, distillation_loss, evaluate, prepare_run
from ._net import Supernet

__all__ = ["SandwichConfig", "train_supernet", "score_plan", "step_plans", "plan_label"]


@dataclasses.dataclass(frozen=True)
class SandwichConfig:
    """How the supernet is trained and scored beyond ``TrainConfig`` (lr, epochs, schedule, batch, ...).

    random_plans: random plans per step besides the largest and the smallest. temperature: of the
    in-place distillation (soft cross-entropy of the smaller plans against the largest plan's, or the
    teacher's, softened outputs; times T^2). calib_images: training images (no augmentation, a fixed
    seeded subset) on which a plan's BatchNorm statistics are re-estimated before it is scored.
    calib_batch: their batch size. eval_each_epoch: score the largest and the smallest plan after each
    epoch (BatchNorm re-estimated), shown in the history. distill_weight: the smaller plans' losses are
    averaged (not summed), then weighed by this against the largest plan's, so the largest plan's gradient
    is not outvoted by 1 + random_plans distilled ones. skip_loss: a drawn plan whose distillation loss is
    not finite or above skip_loss x ln(classes) x T^2 (an uninformed student scores about ln(classes)) is
    left out of the step (no gradient) and counted in the history (``skipped``): a path whose output has
    blown up (a Global layer's learned velocity field amplifies the map like rho^K) would otherwise send
    its clipped, meaningless gradient into the shared blocks.
    """

    random_plans: int = 2
    temperature: float = 1.0
    calib_images: int = 256
    calib_batch: int = 64
    eval_each_epoch: bool = True
    distill_weight: float = 1.0
    skip_loss: float = 10.0

    def __post_init__(self) -> None:
        for field in ("random_plans", "calib_images", "calib_batch"):
            value = getattr(self, field)
            low = 0 if field == "random_plans" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"supernet option {field}={value!r}: must be an integer >= {low}")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not 0 < self.temperature < math.inf
        ):
            raise ConfigError(f"supernet option temperature={self.temperature!r}: must be a number > 0")
        for field in ("distill_weight", "skip_loss"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"supernet option {field}={value!r}: must be a number > 0")
        if not isinstance(self.eval_each_epoch, bool):
            raise ConfigError(f"supernet option eval_each_epoch={self.eval_each_epoch!r}: must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _step_rng(seed: int, epoch: int, step: int) -> random.Random:
    digest = hashlib.sha256(repr(("sandwich", seed, epoch, step)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _soft_ce(student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return -(F.softmax(target / t, dim=1) * F.log_softmax(student / t, dim=1)).sum(1).mean() * t * t


def step_plans(net: Supernet, config: SandwichConfig, seed: int, epoch: int, step: int) -> list:
    """The plans of one sandwich step: the largest, the smallest, then ``random_plans`` random ones (a
    random draw that condenses nothing, i.e. the largest plan again, is drawn again, up to 20 times)."""
    rng = _step_rng(seed, epoch, step)
    plans = [net.largest_plan(), net.smallest_plan(rng)]
    for _ in range(config.random_plans):
        plan = net.random_plan(rng)
        for _ in range(20):
            if plan.choices:
                break
            plan = net.random_plan(rng)
        plans.append(plan)
    return plans


def plan_label(plan: Any) -> str:
    """A short name of a plan for the history: ``largest``, or the layer type and K (the whole model shares
    them), e.g. ``explicit_rd K=17``."""
    choices = list(plan.choices.values()) if hasattr(plan, "choices") else list(plan.values())
    if not choices:
        return "largest"
    c = next((c for c in choices if "K" in c.options), choices[0])  # a dropped run has no K
    return f"{c.layer} K={c.options.get('K')}" if "K" in c.options else c.layer


def score_plan(
    net: Supernet,
    plan: Any,
    bundle,
    calib: list[torch.Tensor],
    *,
    device=None,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Accuracy of ``plan`` with inherited weights: select, re-estimate BatchNorm on ``calib``, evaluate.
    Under torchrun (``world_size`` > 1) every rank re-estimates on the same ``calib`` (the same statistics)
    and evaluates its shard of the test split; the accuracy is summed over the ranks (``train.evaluate``)."""
    net.select(plan)
    recalibrate_bn(net, calib, device)
    return float(
        evaluate(net, bundle, batch_size=batch_size, device=device, rank=rank, world_size=world_size)["test_acc"]
    )


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors live: the device under NCCL, the CPU under gloo."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s, in place: one flattened broadcast per dtype."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        home = group[0].device
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_comm_device(home))
        dist.broadcast(flat, src)
        flat, offset = flat.to(home), 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _all_reduce_grads(params: Sequence[torch.Tensor], world_size: int, failed: bool = False) -> bool:
    """Average the gradients of ``params`` over the ``world_size`` ranks in place: DistributedDataParallel's
    all-reduce, by hand (a sandwich step runs several paths and leaves most candidate layers unused, which
    DDP's bucketing handles only with ``find_unused_parameters``). A missing gradient counts as zeros; a
    parameter no rank gave a gradient keeps ``grad = None`` (so weight decay and momentum leave it alone,
    as in one process). One flattened all-reduce per dtype (one in practice), which also carries a 0/1
    "has a gradient" flag per parameter and this rank's ``failed``; returns whether any rank failed."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    any_failed = failed
    for n, group in enumerate(groups.values()):
        home = group[0].device
        flags = [float(p.grad is not None) for p in group] + ([float(failed)] if n == 0 else [])
        flat = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in group]
            + [torch.tensor(flags, dtype=group[0].dtype, device=home)]
        ).to(_comm_device(home))
        dist.all_reduce(flat)  # SUM
        flat = flat.to(home)
        total = sum(p.numel() for p in group)
        summed = flat[total:].tolist()  # how many ranks gave each parameter a gradient (one sync)
        if n == 0:
            any_failed = summed.pop() > 0
        grads = flat[:total].div_(world_size)
        offset = 0
        for p, count in zip(group, summed):
            g = grads[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if count == 0:
                p.grad = None
            elif p.grad is not None:
                p.grad.copy_(g)
            else:
                p.grad = g.clone()
    return any_failed


def _all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """``values`` summed over the ranks (one all-reduce, float64)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return t.tolist()


def train_supernet(
    net: Supernet,
    data,
    config=None,
    sandwich: SandwichConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    teacher: nn.Module | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | torch.device | None = "auto",
):
    """Train ``net`` in place with the sandwich rule; ``config`` is a ``condense.TrainConfig`` (epochs, lr,
    schedule, warm-up, batch size, optimizer, clipping, amp, seed, augmentation, steps per epoch; its
    ``kd_alpha`` weighs distillation against the labels for the largest plan when a teacher is given;
    ``clip_grad_norm`` clips each plan's gradient separately, so one unstable drawn plan cannot swamp the
    step).

    ``out_dir`` gets ``last.pt`` every epoch (tensors, numbers and strings: ``torch.load(weights_only=True)``),
    resumed with ``resume=True`` to the same weights as an uninterrupted run (same thread count, same number
    of processes), and ``metrics.json``.

    Under ``torchrun --nproc_per_node=N`` it joins the process group (``train.prepare_run``: gloo on
    the CPU, NCCL on CUDA) and each rank trains on its shard of every epoch (``config.batch_size`` images per rank and
    step). Not DistributedDataParallel: rank 0's weights and buffers are broadcast at the start, every rank
    draws the same plans (``step_plans`` depends on (seed, epoch, step) only), and after each step's
    backward passes (and per-plan clipping) the gradients are averaged over the ranks by hand
    (``_all_reduce_grads``; a parameter no rank touched keeps no gradient), so the replicas stay identical.
    A blown-up plan (``skip_loss``) is skipped by the rank whose loss blew up, which then adds zeros for
    it to the average. BatchNorm running statistics are rank 0's after every epoch; the history's figures
    and scores are over all ranks. Only rank 0 writes files and prints; resuming takes the same number of
    processes (the data order depends on it). Returns the ``TrainResult`` (the same on every rank)."""
    config = config or TrainConfig()
    sandwich = sandwich or SandwichConfig()
    if config.clip_grad_norm is not None and config.amp == "fp16":
        raise ConfigError("supernet training clips each plan's gradient: not with fp16 autocast", "use --amp bf16")
    net.select(net.largest_plan())
    identity = {
        "train": config.to_dict(),
        "sandwich": sandwich.to_dict(),
        "space": json.loads(json.dumps(net.space.to_dict(), default=str)),
    }
    setup = prepare_run(
        net,
        data,
        config,
        out_dir=out_dir,
        resume=resume,
        overwrite=overwrite,
        device=device,
        identity=identity,
        kind="supernet",
        check=_same_world,
    )
    bundle, augment, device, rank, world = setup.bundle, setup.augment, setup.device, setup.rank, setup.world
    distributed = setup.distributed
    net.to(device)
    optimizer, scaler = setup.optimizer(net)
    if teacher is not None:
        setup.teacher(teacher)
    if setup.resumed is not None:
        net.load_state_dict(setup.resumed["model"])
    history, start_epoch = setup.restore(optimizer, scaler)
    calib = (
        calibration_batches(bundle, sandwich.calib_images, sandwich.calib_batch, config.seed)
        if sandwich.eval_each_epoch
        else []
    )
    if distributed:  # replicas start from rank 0's weights and buffers, as DistributedDataParallel's do
        _broadcast_(list(net.parameters()) + list(net.buffers()))
    params = [p for p in net.parameters() if p.requires_grad]
    accum = [torch.zeros_like(p) for p in params] if config.clip_grad_norm is not None else []
    touched = [False] * len(accum)
    lines = progress and rank == 0
    skip_bound = sandwich.skip_loss * math.log(max(bundle.num_classes, 2)) * sandwich.temperature**2
    if setup.resumed is None:
        net.stabilize_()  # the initial stencils are well inside; a given checkpoint's may not be
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        loader = setup.loader(epoch)
        steps = setup.steps(loader)
        net.train()
        loss_sum, small_sum, small_n, correct, seen, t0 = 0.0, 0.0, 0, 0, 0, time.perf_counter()
        skipped: dict[str, int] = {}
        rescaled = 0
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            setup.set_lr(optimizer, epoch + step / steps)
            x, y = setup.batch(x, y)
            optimizer.zero_grad(set_to_none=True)
            plans = step_plans(net, sandwich, config.seed, epoch, step)
            with torch.no_grad():
                t_logits = teacher(x).float() if teacher is not None else None
            target, blown = None, None
            # the largest plan's loss at weight 1, the smaller plans' averaged, times distill_weight
            small_weight = sandwich.distill_weight / max(len(plans) - 1, 1)
            for k, plan in enumerate(plans):
                net.select(plan)
                with setup.autocast():
                    logits = net(x).float()
                if k == 0:
                    loss = (
                        F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                        if t_logits is None
                        else distillation_loss(
                            logits, t_logits, y, config.kd_alpha, config.kd_temperature, config.label_smoothing
                        )
                    )
                    target = (t_logits if t_logits is not None else logits).detach()
                    correct += int((logits.argmax(1) == y).sum())
                    if not torch.isfinite(loss):  # raised after the all-reduce: every rank stops, none waits
                        blown = float(loss.detach())
                        break
                else:
                    loss = _soft_ce(logits, target, sandwich.temperature)
                    value = float(loss.detach())
                    if not math.isfinite(value) or value > skip_bound:  # a blown-up path: no gradient
                        label = plan_label(plan)
                        skipped[label] = skipped.get(label, 0) + 1
                        continue
                    small_sum += value * len(y)
                    small_n += len(y)
                weight = 1.0 if k == 0 else small_weight
                scaler.scale(loss * weight).backward()
                if config.clip_grad_norm is not None:  # each plan's gradient clipped on its own (then weighed)
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm * weight)
                    for i, (p, acc) in enumerate(zip(params, accum)):
                        if p.grad is not None:
                            acc.add_(p.grad)
                            touched[i] = True
                            p.grad = None
                if k == 0:
                    loss_sum += float(loss.detach()) * len(y)
            if config.clip_grad_norm is not None:
                for i, (p, acc) in enumerate(zip(params, accum)):
                    p.grad = acc.clone() if touched[i] else None
                    acc.zero_()
                    touched[i] = False
            failed = _all_reduce_grads(params, world, blown is not None) if distributed else blown is not None
            if failed:
                where = f"at epoch {epoch + 1}, step {step + 1} (largest plan)"
                raise CondenseError(
                    f"the loss became {blown} {where}"
                    if blown is not None
                    else f"the loss was not finite in another process {where}",
                    "lower the learning rate (--lr)",
                )
            scaler.step(optimizer)
            scaler.update()
            rescaled += net.stabilize_()  # explicit RD stencils back inside their stability region
            seen += len(y)
        epoch_time = time.perf_counter() - t0
        if distributed:  # the epoch's figures over all ranks; every rank holds rank 0's BatchNorm statistics
            loss_sum, correct, seen, small_sum, small_n = _all_sum(
                [loss_sum, correct, seen, small_sum, small_n], device
            )
            correct, seen, small_n = int(correct), int(seen), int(small_n)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, skipped)
            skipped = {}
            for part in gathered:
                for label, count in part.items():
                    skipped[label] = skipped.get(label, 0) + count
            _broadcast_(list(net.buffers()))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "distill_loss": small_sum / max(small_n, 1),
            "skipped": sum(skipped.values()),
            "skipped_plans": dict(sorted(skipped.items())),
            "stencils_rescaled": rescaled,
            "images_per_s": seen / max(epoch_time, 1e-9),
            "epoch_seconds": epoch_time,
        }
        if sandwich.eval_each_epoch:
            with torch.random.fork_rng(devices=[]):
                record["largest_acc"] = score_plan(
                    net, net.largest_plan(), bundle, calib, device=device, rank=rank, world_size=world
                )
                record["smallest_acc"] = score_plan(
                    net, net.smallest_plan(), bundle, calib, device=device, rank=rank, world_size=world
                )
            net.train()
        history.append(record)
        if lines:
            extra = (
                f" | largest {record['largest_acc']:.4f} smallest {record['smallest_acc']:.4f}"
                if "largest_acc" in record
                else ""
            )
            skips = f" | skipped {record['skipped']} blown-up plan(s)" if record["skipped"] else ""
            print(
                f"supernet epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} distill "
                f"{record['distill_loss']:.4f}{extra}{skips} | {record['images_per_s']:.0f} img/s, "
                f"{epoch_time:.1f} s",
                flush=True,
            )
        setup.save(net, optimizer, scaler, epoch + 1, history, world_size=world)
    metrics = dict(history[-1]) if history else {}
    metrics.update(
        {
            "epochs": config.epochs,
            "world_size": world,
            "config": config.to_dict(),
            "sandwich": sandwich.to_dict(),
            "data": bundle.name,
            "augment": augment,
            **device_record(device),
            "train_seconds_this_run": time.perf_counter() - t_start,
            **net.memory(),
        }
    )
    setup.write_metrics({**metrics, "history": history})
    net.select(net.largest_plan())
    return TrainResult(metrics=metrics, history=history, model=net)


def _same_world(state: dict[str, Any], path: Path, world: int) -> None:
    """A resumed supernet run has the number of processes it was written by (each rank's data depends on it)."""
    saved_world = int(state.get("world_size", 1))  # written before multi-process training: one process
    if saved_world != world:
        raise CondenseError(
            f"{path} was written by a run of {saved_world} process(es), this one has "
            f"{world} (each rank's share of the data depends on it)",
            f"resume with {saved_world} process(es) (torchrun --nproc_per_node={saved_world}"
            " or none for 1), or start a new -o DIR",
        )
