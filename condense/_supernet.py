"""A weight-sharing supernet over every plan of a model, trained once with the sandwich rule.

In: a model, its input size and a search space (``search.SearchSpace``: the runs, the layer types, the K
range, the Global layer's velocity/diffusion/source choices, init). Out: ``Supernet``, an ``nn.Module``
in which each run holds all its blocks plus its candidate layers; ``select(plan)`` picks one path, and
``extract(plan)`` gives the standalone condensed model of that path with the shared weights (the very
``condense.rewrite`` result, weights loaded), which computes exactly what the selected path computes.
``train_supernet`` trains it (sandwich rule, checkpoints, resume, one process or several under torchrun);
``recalibrate_bn`` re-estimates the BatchNorm statistics of one path. Never: modifies the model it was
given, or holds a second copy of a block (a plan that keeps block i and one whose layer starts from block i,
``init="block"``, use the same block).

How a path is selected. Every block after a run's anchor is wrapped in a gate: for a plan with m kept
blocks, gates 1..m-1 run their block, gate m runs the candidate layer on block m-1's output (the rewrite's
in-place edit), and later gates pass their input through; a run that is off runs all its blocks (the
largest plan is the original model). Candidate layers are built by the rewrite's own builder
(``_build_layer``) once per run and layer type (per m in growing runs, whose width changes) for the
largest K of the space: K is elastic (the Global layer's K is its step count; a reaction-diffusion layer
built for K steps runs the first K of its per-step norms). Global layer variants (velocity, diffusion,
source) are separate modules sharing their parts: one velocity net per velocity kind, one diffusion net,
one residual source per run, whatever the other choices. ``init="block"``: the layer's initial guess is
block m itself (its shared weights), as the rewrite's copy of block m is. A ``drop`` candidate (block
dropping) is the identity, with no K and no weights to share (in a growing run, its tail's 1x1 projection,
one per m as for every layer type).

Sandwich rule (Yu et al., BigNAS): every step trains the largest plan (the original) on the labels (or
distilled from ``teacher``), the smallest plan (m = 1 in every run, the lowest K, init="input", the other choices
drawn) and ``random_plans`` random plans of the space, distilled in place from the largest plan's outputs
(or from the teacher); the plans of a step depend only on (seed, epoch, step), so a resumed run draws the
same ones. The largest plan's loss counts once and the smaller plans' losses are averaged (summed, the 3
distilled gradients outvoted the original's: after one epoch on 5,000 CIFAR-10 images its accuracy was
12.2% against 18.5% averaged, and 18.15% for the original trained alone). A drawn plan whose loss has blown
up (``SandwichConfig.skip_loss``) gets no gradient and is counted.

Stability. The explicit RD layers (``ExplicitRD``, ``CirculantRD``) step ``y + h (r(y) - K^T K y)``, which
is stable only while ``h * lambda_max(K^T K) <= 2``; in a supernet their stencils are shared by every K up
to 20 and trained by many paths, left their stability region within an epoch (summed sandwich losses,
lr 0.05) and multiplied the map by about 20 at K = 1 and by 1e5 to 1e20, or ``inf``, at K = 4..20.
After every optimizer step ``Supernet.stabilize_`` rescales each stencil whose symbol bound exceeds
``STABLE_H_LAMBDA / h`` (weights only: the extracted standalone model computes exactly what the path
computes). The Global layer with a learned velocity field (``dwconv``,
``separable``) is not bounded this way: its ``-2 dt (u_x + v_y) H`` term grows the map like rho^K (at
initial weights, K = 20 multiplies it by about 10, or 5e3 with ``diffusion=dwconv``); such paths are the
ones ``skip_loss`` leaves out.

Multi-process training (``torchrun --nproc_per_node=N``): the process group is joined as ``train.train``
joins it (gloo on the CPU, NCCL on CUDA) and every epoch's data is sharded by rank, but the supernet is not
wrapped in DistributedDataParallel: a step runs several paths and leaves most candidate layers unused.
Instead rank 0's weights are broadcast at the start, every rank draws the same plans (they depend on
(seed, epoch, step) only), and each step's gradients are averaged over the ranks by hand, in one flattened
all-reduce (a parameter no rank touched keeps no gradient, so the optimizer leaves it alone): identical
gradients keep the replicas identical. Only rank 0 writes files and prints.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._bn import calibration_batches, recalibrate_bn  # noqa: F401 - public here too
from ._errors import CondenseError, ConfigError
from .graph import FindResult, Run, RunChoice, find_runs, rewrite
from .graph._rewrite import ChannelsFirstAdapter, _build_layer, _default_factory, _inner, _parent_and_name
from .pde import layer_has_option

__all__ = ["Supernet", "SandwichConfig", "supernet", "train_supernet", "recalibrate_bn", "calibration_batches",
           "export_plan", "stabilize_", "SUPERNET_FILE", "STABLE_H_LAMBDA"]

SUPERNET_FILE = "supernet.pt"   # the trained supernet's checkpoint (train_supernet's ``last.pt``, renamed)
_GLOBAL_OPTIONS = ("velocity", "diffusion", "source")
#: ``h * lambda_max(K^T K)`` that the explicit RD layers' diffusion stays at or below in the supernet. The
#: explicit step ``y + h (r(y) - K^T K y)`` multiplies the diffusion mode of eigenvalue lambda by
#: ``1 - h lambda``: stable for h lambda <= 2, growing like |1 - h lambda|^K beyond (K up to 20 here).
STABLE_H_LAMBDA = 1.9
_SYMBOL_GRID = 64  # frequencies per axis on which the stencil's symbol is maximised


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
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 < self.temperature < math.inf:
            raise ConfigError(f"supernet option temperature={self.temperature!r}: must be a number > 0")
        for field in ("distill_weight", "skip_loss"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"supernet option {field}={value!r}: must be a number > 0")
        if not isinstance(self.eval_each_epoch, bool):
            raise ConfigError(f"supernet option eval_each_epoch={self.eval_each_epoch!r}: must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the path state and the gates ----------------------------------------------------------------------------

class _RunState:
    """The selected path through one run: m kept blocks (m = r: the run is off), the layer after them, and
    the initial-guess block handed to it (or None)."""

    def __init__(self, r: int):
        self.r = r
        self.m = r
        self.layer: nn.Module | None = None
        self.init_block: nn.Module | None = None


class _Gate(nn.Module):
    """Stands for block ``index`` (>= 1) of a run: runs the block, the run's selected layer, or passes."""

    def __init__(self, block: nn.Module, index: int, state: _RunState):
        super().__init__()
        self.block = block
        self.index = index
        self.state = state  # a plain object: not registered, not in the state_dict

    def forward(self, x, *args, **kwargs):
        s = self.state
        if self.index < s.m:
            return self.block(x, *args, **kwargs)
        if self.index > s.m:
            return x
        inner = _inner(s.layer)
        if s.init_block is None:
            return s.layer(x)
        inner.init_block = s.init_block  # the rewrite's copy of block m is block m itself here
        try:
            return s.layer(x)
        finally:
            inner.init_block = None


def _variant_key(layer: str, options: Mapping[str, Any], growing_m: int | None) -> str:
    parts = [layer]
    if layer == "global":
        parts += [str(options[k]) for k in _GLOBAL_OPTIONS]
    if growing_m is not None:
        parts.append(f"m{growing_m}")
    return "-".join(parts)


def _global_defaults() -> dict[str, Any]:
    from .pde import GlobalConfig

    cfg = GlobalConfig()
    return {k: getattr(cfg, k) for k in _GLOBAL_OPTIONS}


class Supernet(nn.Module):
    """Every plan of ``space`` over ``model`` in one module; see the module docstring.

    ``select(plan)`` (a ``condense.Plan``, a mapping run path -> ``RunChoice``, or the space's trial
    parameters) sets the path ``forward`` runs; ``largest_plan()``, ``smallest_plan(rng)``,
    ``random_plan(rng)`` draw plans of the space; ``extract(plan)`` is the standalone model.
    """

    def __init__(self, model: nn.Module, found: FindResult, space: Any):
        super().__init__()
        self.found = found
        self.space = space
        self.input_size = tuple(found.input_shape)
        by_path = {r.path: r for r in found.runs}
        missing = [r.path for r in space.runs if r.path not in by_path]
        if missing:
            raise CondenseError(f"the space names run(s) {', '.join(map(repr, missing))} the model does not have",
                                "build the space from find_runs of this very model")
        self.runs: tuple[Run, ...] = tuple(by_path[r.path] for r in space.runs)
        self.K_max = int(space.K[1])
        self.layer_types = tuple(space.layers)
        self._check_runs(model)
        self.net = copy.deepcopy(model)
        self._states: list[_RunState] = []
        self._gates: list[list[str]] = []
        for run in self.runs:
            state = _RunState(run.r)
            self._states.append(state)
            for i, path in enumerate(run.blocks[1:], start=1):
                parent, key = _parent_and_name(self.net, path)
                parent._modules[key] = _Gate(parent._modules[key], i, state)
            self._gates.append(list(run.blocks[1:]))
        self.candidates = nn.ModuleDict()
        with self.unwrapped() as base:
            for i, run in enumerate(self.runs):
                self.candidates[f"run{i}"] = self._build_candidates(run, base)
        self.net.train(model.training)
        self.train(model.training)

    # --- construction ---------------------------------------------------------------------------------------
    def _check_runs(self, model: nn.Module) -> None:
        dense = [r.path for r in self.runs if r.kind == "dense"]
        if dense:
            raise CondenseError(f"run(s) {', '.join(map(repr, dense))} concatenate their blocks' outputs "
                                "(DenseNet): the supernet cannot pass them through",
                                "use the per-trial search (--strategy trials)")
        x = torch.randn((1, *self.input_size), generator=torch.Generator().manual_seed(0))
        p = next(iter(model.parameters()), None)
        if p is not None and p.is_floating_point():
            x = x.to(p.device, p.dtype)
        with torch.random.fork_rng(devices=[]):
            res = rewrite(model, self.runs, {r.path: RunChoice(m=1, init="input") for r in self.runs},
                          example_input=x)
        graph = [rec.path for rec in res.records if rec.method == "graph"]
        if graph:
            raise CondenseError(f"run(s) {', '.join(map(repr, graph))} are not a chain of one-input blocks the "
                                "rewrite can edit in place", "use the per-trial search (--strategy trials)")

    def _build_candidates(self, run: Run, base: nn.Module) -> nn.ModuleDict:
        out = nn.ModuleDict()
        ms = range(1, run.r) if run.growing else (1,)
        defaults = _global_defaults()
        for m in ms:
            shared: dict[str, Any] = {}
            for layer in self.layer_types:
                combos: list[dict[str, Any]] = [{}]
                if layer == "global":
                    combos = [{"velocity": v, "diffusion": d, "source": s} for v in self.space.velocities
                              for d in self.space.diffusions for s in self.space.sources]
                for options in combos:
                    steps = {"K": self.K_max} if layer_has_option(layer, "K") else {}  # drop: none
                    choice = RunChoice(m=m, layer=layer, options={**steps, **options}, init="input")
                    built = _build_layer(run, choice, base, _default_factory)
                    if layer == "global":
                        self._tie(_inner(built), options, shared)
                    key = _variant_key(layer, {**defaults, **options}, m if run.growing else None)
                    out[key] = built
        return out

    @staticmethod
    def _tie(layer: nn.Module, options: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """Make a Global layer variant use the run's shared velocity / diffusion / source modules."""
        for attr, kind in (("velocity", options["velocity"]), ("velocity_const", options["velocity"]),
                           ("diffusion", options["diffusion"]), ("source", options["source"])):
            own = getattr(layer, attr, None)
            if own is None:
                continue
            key = f"{attr}:{kind}"
            if key in shared:
                setattr(layer, attr, shared[key])
            else:
                shared[key] = own

    @contextlib.contextmanager
    def unwrapped(self):
        """The wrapped model with its gates replaced by their blocks (the original architecture with the
        shared weights), for the duration of the block; the gates come back afterwards."""
        swapped = []
        for gates in self._gates:
            for path in gates:
                parent, key = _parent_and_name(self.net, path)
                gate = parent._modules[key]
                parent._modules[key] = gate.block
                swapped.append((parent, key, gate))
        try:
            yield self.net
        finally:
            for parent, key, gate in swapped:
                parent._modules[key] = gate

    # --- plans --------------------------------------------------------------------------------------------
    def _choices(self, plan: Any) -> dict[str, RunChoice]:
        """Run path -> RunChoice of a ``Plan``, a mapping of run paths, or the space's trial parameters."""
        if hasattr(plan, "choices"):
            plan = plan.choices
        plan = dict(plan)
        if "layer" in plan and "layer" not in {r.path for r in self.runs}:  # the space's trial parameters
            plan = dict(self.space.plan(plan).choices)
        out = {}
        for path, value in plan.items():
            out[path] = value if isinstance(value, RunChoice) else \
                RunChoice.from_dict(value) if isinstance(value, Mapping) else RunChoice(m=int(value))
        return out

    def run(self, path: str) -> Run:
        """The run at ``path``."""
        for run in self.runs:
            if run.path == path:
                return run
        raise CondenseError(f"the supernet has no run {path!r}", f"its runs: {', '.join(r.path for r in self.runs)}")

    def select(self, plan: Any) -> "Supernet":
        """Run ``plan``'s path from now on (runs it does not name are off). Returns self."""
        choices = self._choices(plan)
        known = {r.path for r in self.runs}
        unknown = [p for p in choices if p not in known]
        if unknown:
            raise CondenseError(f"plan names run(s) {', '.join(map(repr, unknown))} the supernet does not hold",
                                f"its runs: {', '.join(sorted(known))}")
        defaults = _global_defaults()
        for i, run in enumerate(self.runs):
            state = self._states[i]
            choice = choices.get(run.path)
            if choice is None or choice.m >= run.r:
                state.m, state.layer, state.init_block = run.r, None, None
                continue
            if choice.layer not in self.layer_types:
                raise CondenseError(f"run '{run.path}': the supernet has no {choice.layer!r} layers",
                                    f"its layer types: {', '.join(self.layer_types)}")
            options = dict(choice.options)
            K = int(options.pop("K", 5)) if layer_has_option(choice.layer, "K") else None  # drop: no steps
            if K is not None and not 1 <= K <= self.K_max:
                raise CondenseError(f"run '{run.path}': K={K} is outside the supernet's 1..{self.K_max}",
                                    "build the supernet for a larger K range")
            extra = sorted(set(options) - (set(_GLOBAL_OPTIONS) if choice.layer == "global" else set()))
            if extra:
                raise CondenseError(f"run '{run.path}': the supernet has no weights for option(s) "
                                    f"{', '.join(extra)} of {choice.layer!r}", "plans of the search space only")
            key = _variant_key(choice.layer, {**defaults, **options}, choice.m if run.growing else None)
            candidates = self.candidates[f"run{i}"]
            if key not in candidates:
                raise CondenseError(f"run '{run.path}': the supernet has no {key!r} layer",
                                    "plans of the search space only")
            layer = candidates[key]
            inner = _inner(layer)
            if K is not None and inner.config.K != K:
                inner.config = inner.config.replace(K=K)
            init_block = None
            if choice.init == "block" and not run.growing and hasattr(inner, "init_block"):
                init_block = self.net.get_submodule(run.blocks[choice.m]).block
                if run.layout == "NHWC":
                    init_block = ChannelsFirstAdapter(init_block)
            state.m, state.layer, state.init_block = choice.m, layer, init_block
        return self

    def largest_plan(self):
        """The original model: every run off."""
        from ._fit import Plan

        return Plan({})

    def _draw(self, rng: random.Random, smallest: bool):
        from optuna.distributions import IntDistribution

        params: dict[str, Any] = {}
        for p in self.space.params:
            d = p.distribution
            if isinstance(d, IntDistribution):
                params[p.name] = d.low if smallest else rng.randint(d.low, d.high)
            else:
                params[p.name] = rng.choice(list(d.choices))
        if smallest:
            for run in self.space.runs:
                params[self.space.on_name(run)] = True
            if "input" in getattr(self.space, "inits", ()):  # init=block would still run block m
                params["init"] = "input"
        return self.space.plan(params)

    def smallest_plan(self, rng: random.Random | None = None):
        """m = 1 in every run, the lowest K, ``init="input"`` (``block`` would still run block m); layer type
        and options drawn from ``rng`` (default seed 0), so every layer type is trained at its smallest."""
        return self._draw(rng or random.Random(0), smallest=True)

    def random_plan(self, rng: random.Random):
        """A plan drawn uniformly, parameter by parameter, from the space."""
        return self._draw(rng, smallest=False)

    # --- the standalone model -----------------------------------------------------------------------------
    def extract(self, plan: Any) -> nn.Module:
        """The standalone condensed model of ``plan`` (``condense.rewrite`` of the original architecture)
        with the supernet's weights and BatchNorm statistics for that path. Leaves the selection as
        ``plan``."""
        self.select(plan)
        choices = self._choices(plan)
        with self.unwrapped() as base:
            was = base.training
            with torch.random.fork_rng(devices=[]):  # the new layers' random init is overwritten below
                res = rewrite(base, self.runs, choices, example_input=self._example(base)) if choices else None
            model = res.module if res is not None else copy.deepcopy(base)
            base.train(was)
        if res is None:
            return model
        records = {rec.path: rec for rec in res.records}
        for i, run in enumerate(self.runs):
            if run.path not in choices or choices[run.path].m >= run.r:
                continue
            target = model.get_submodule(records[run.path].inserted)
            _load_shared(target, self._states[i].layer, run.path)
        model.train(self.training)
        return model

    def _example(self, base: nn.Module) -> torch.Tensor:
        x = torch.randn((1, *self.input_size), generator=torch.Generator().manual_seed(0))
        p = next(iter(base.parameters()), None)
        return x.to(p.device, p.dtype) if p is not None and p.is_floating_point() else x

    def forward(self, x, *args, **kwargs):
        return self.net(x, *args, **kwargs)

    def stabilize_(self, limit: float = STABLE_H_LAMBDA) -> int:
        """Keep every explicit RD candidate layer inside its stability region (``stabilize_`` of each; run
        after every optimizer step of ``train_supernet``). Returns the number of stencils rescaled."""
        return sum(stabilize_(layer, limit) for cands in self.candidates.values() for layer in cands.values())

    def memory(self) -> dict[str, int]:
        """Bytes of the unique parameters and buffers: of the supernet and of the original architecture."""
        def nbytes(tensors: Iterable[torch.Tensor]) -> int:
            seen, total = set(), 0
            for t in tensors:
                key = (t.data_ptr(), t.numel())
                if key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
            return total

        with self.unwrapped() as base:
            original = nbytes(list(base.parameters()) + list(base.buffers()))
        return {"supernet_bytes": nbytes(list(self.parameters()) + list(self.buffers())), "original_bytes": original}


def _symbol_max2(stencils: torch.Tensor, channel_axis: bool) -> torch.Tensor:
    """max |symbol|^2 of each stencil: ``stencils`` (..., k, k) for depthwise K (one symbol per stencil), or
    (..., C, k, k) for the circulant K (``channel_axis``: periodic over the C stencils too, one symbol per
    set). The spatial sup is taken on a 64 x 64 grid of frequencies: it bounds the eigenvalues of K^T K for
    any map size, periodic or zero boundary (a zero-padded Toeplitz section's norm <= its symbol's sup)."""
    w = stencils.detach().float()
    dims = (-3, -2, -1) if channel_axis else (-2, -1)
    size = ((w.shape[-3],) if channel_axis else ()) + (_SYMBOL_GRID, _SYMBOL_GRID)
    f = torch.fft.fftn(w, s=size, dim=dims)
    return (f.real.square() + f.imag.square()).amax(dim=dims)


def stabilize_(layer: nn.Module, limit: float = STABLE_H_LAMBDA) -> int:
    """Rescale the diffusion stencils of an explicit RD layer (``ExplicitRD``, ``CirculantRD``) in place so
    that ``h * lambda_max(K^T K) <= limit``; other layers are left alone (the implicit RD step is
    unconditionally stable, LinearMix and the Global layer have no such term). Returns how many stencils
    (channels, or circulant sets) were rescaled. Weights only: the layer's forward is unchanged, so a
    standalone model extracted from the supernet computes what the path computes."""
    from .pde._reaction_diffusion import CirculantRD, ExplicitRD

    inner = _inner(layer)
    if not isinstance(inner, (ExplicitRD, CirculantRD)):
        return 0
    circulant = isinstance(inner, CirculantRD)
    w = inner.diffusion  # ExplicitRD: (S, C, 1, k, k); CirculantRD: (S, C, k, k)
    stencils = w if circulant else w[:, :, 0]
    lam = _symbol_max2(stencils, circulant) * float(inner.config.h)
    over = lam > limit
    if not bool(over.any()):
        return 0
    scale = torch.where(over, (limit / lam.clamp_min(1e-30)).sqrt(), torch.ones_like(lam))
    with torch.no_grad():
        shape = scale.shape + (1,) * (w.dim() - scale.dim())
        w.mul_(scale.reshape(shape).to(w.dtype))
    return int(over.sum())


def _load_shared(target: nn.Module, source: nn.Module, path: str) -> None:
    """Load a candidate layer's weights into the standalone layer ``target`` (built by the rewrite for the
    plan): same keys, the per-step stacks of a layer built for a larger K cut to the plan's K; the initial-
    guess block is left as the rewrite copied it (block m's shared weights)."""
    src = source.state_dict()
    new = {}
    for key, value in target.state_dict().items():
        if key.startswith("init_block.") or ".init_block." in key:
            new[key] = value
            continue
        if key not in src:
            raise CondenseError(f"run '{path}': the supernet's layer has no weight {key!r}",
                                "the supernet and the rewrite built different layers")
        s = src[key]
        if s.shape != value.shape:
            if s.dim() == 0 or s.shape[1:] != value.shape[1:] or s.shape[0] < value.shape[0]:
                raise CondenseError(f"run '{path}': weight {key!r} is {tuple(s.shape)} in the supernet, "
                                    f"{tuple(value.shape)} in the plan's layer")
            s = s[: value.shape[0]]
        new[key] = s.detach().clone()
    target.load_state_dict(new, strict=True)


def supernet(model: nn.Module, *, input_size: Sequence[int], space: Any = None, found: FindResult | None = None,
             layers: Sequence[str] | None = None, K: Sequence[int] | None = None) -> Supernet:
    """The supernet of ``model`` over ``space`` (default: the search's space for its runs, ``search.build_space``,
    narrowed by ``layers``/``K``). ``found``: ``find_runs(model, input_size)`` if already made."""
    size = tuple(int(v) for v in input_size)
    found = found if found is not None else find_runs(model, size)
    if space is None:
        from search._space import build_space

        space = build_space(found, layers=layers, K=K)
    elif layers is not None or K is not None:
        raise ConfigError("give either space= or layers=/K=", "narrow the space when you build it")
    return Supernet(model, found, space)


# --- BatchNorm statistics ----------------------------------------------------------------------------------

# --- training -------------------------------------------------------------------------------------------------

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


def score_plan(net: Supernet, plan: Any, bundle, calib: list[torch.Tensor], *, device=None,
               batch_size: int = 256, rank: int = 0, world_size: int = 1) -> float:
    """Accuracy of ``plan`` with inherited weights: select, re-estimate BatchNorm on ``calib``, evaluate.
    Under torchrun (``world_size`` > 1) every rank re-estimates on the same ``calib`` (the same statistics)
    and evaluates its shard of the test split; the accuracy is summed over the ranks (``train.evaluate``)."""
    from .train import evaluate

    net.select(plan)
    recalibrate_bn(net, calib, device)
    return float(evaluate(net, bundle, batch_size=batch_size, device=device, rank=rank,
                          world_size=world_size)["test_acc"])


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors live: the device under NCCL, the CPU under gloo."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s, in place: one flattened broadcast per dtype."""
    import torch.distributed as dist

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
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()


def _all_reduce_grads(params: Sequence[torch.Tensor], world_size: int, failed: bool = False) -> bool:
    """Average the gradients of ``params`` over the ``world_size`` ranks in place: DistributedDataParallel's
    all-reduce, by hand (a sandwich step runs several paths and leaves most candidate layers unused, which
    DDP's bucketing handles only with ``find_unused_parameters``). A missing gradient counts as zeros; a
    parameter no rank gave a gradient keeps ``grad = None`` (so weight decay and momentum leave it alone,
    as in one process). One flattened all-reduce per dtype (one in practice), which also carries a 0/1
    "has a gradient" flag per parameter and this rank's ``failed``; returns whether any rank failed."""
    import torch.distributed as dist

    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    any_failed = failed
    for n, group in enumerate(groups.values()):
        home = group[0].device
        flags = [float(p.grad is not None) for p in group] + ([float(failed)] if n == 0 else [])
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in group]
                         + [torch.tensor(flags, dtype=group[0].dtype, device=home)]).to(_comm_device(home))
        dist.all_reduce(flat)  # SUM
        flat = flat.to(home)
        total = sum(p.numel() for p in group)
        summed = flat[total:].tolist()  # how many ranks gave each parameter a gradient (one sync)
        if n == 0:
            any_failed = summed.pop() > 0
        grads = flat[:total].div_(world_size)
        offset = 0
        for p, count in zip(group, summed):
            g = grads[offset: offset + p.numel()].view_as(p)
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
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return t.tolist()


def train_supernet(net: Supernet, data, config=None, sandwich: SandwichConfig | None = None, *,
                   out_dir: str | os.PathLike | None = None, teacher: nn.Module | None = None, resume: bool = False,
                   overwrite: bool = False, progress: bool = True, device: str | torch.device | None = "auto"):
    """Train ``net`` in place with the sandwich rule; ``config`` is a ``condense.TrainConfig`` (epochs, lr,
    schedule, warm-up, batch size, optimizer, clipping, amp, seed, augmentation, steps per epoch; its
    ``kd_alpha`` weighs distillation against the labels for the largest plan when a teacher is given;
    ``clip_grad_norm`` clips each plan's gradient separately, so one unstable drawn plan cannot swamp the
    step).

    ``out_dir`` gets ``last.pt`` every epoch (tensors, numbers and strings: ``torch.load(weights_only=True)``),
    resumed with ``resume=True`` to the same weights as an uninterrupted run (same thread count, same number
    of processes), and ``metrics.json``.

    Under ``torchrun --nproc_per_node=N`` it joins the process group (``train.join_process_group``: gloo on
    the CPU, NCCL on CUDA) and each rank trains on its shard of every epoch (``config.batch_size`` images per rank and
    step). Not DistributedDataParallel: rank 0's weights and buffers are broadcast at the start, every rank
    draws the same plans (``step_plans`` depends on (seed, epoch, step) only), and after each step's
    backward passes (and per-plan clipping) the gradients are averaged over the ranks by hand
    (``_all_reduce_grads``; a parameter no rank touched keeps no gradient), so the replicas stay identical.
    A blown-up plan (``skip_loss``) is skipped by the rank whose loss blew up, which then adds zeros for
    it to the average. BatchNorm running statistics are rank 0's after every epoch; the history's figures
    and scores are over all ranks. Only rank 0 writes files and prints; resuming takes the same number of
    processes (the data order depends on it). Returns the ``TrainResult`` (the same on every rank)."""
    from ._device import device_record, resolve_device
    from .data import load_data
    from .train import (TrainConfig, TrainResult, _atomic_save, _autocast, _cpu, _make_optimizer, join_process_group,
                        _rng_state, _set_rng_state, _to, check_trainable, distillation_loss, load_checkpoint_state,
                        lr_at, with_augmentation, write_text_atomic)

    config = config or TrainConfig()
    sandwich = sandwich or SandwichConfig()
    if config.clip_grad_norm is not None and config.amp == "fp16":
        raise ConfigError("supernet training clips each plan's gradient: not with fp16 autocast", "use --amp bf16")
    bundle = load_data(data) if isinstance(data, str) else data
    bundle, augment = with_augmentation(bundle, config)
    device = resolve_device(device)
    rank, world, distributed = join_process_group(device)
    out = Path(out_dir) if out_dir is not None else None
    net.select(net.largest_plan())
    check_trainable(net, bundle, config, world)
    if out is not None and out.exists() and not out.is_dir():
        raise CondenseError(f"output {str(out)!r} is a file", "choose a folder for -o")
    ckpt_path = out / "last.pt" if out is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not resume and not overwrite:
        raise CondenseError(f"{out} already holds a supernet run (last.pt)",
                            "continue it with --resume, start again with --overwrite, or choose another -o DIR")
    if resume and overwrite:
        raise CondenseError("--resume and --overwrite contradict each other", "give one of them")
    identity = {"train": config.to_dict(), "sandwich": sandwich.to_dict(),
                "space": json.loads(json.dumps(net.space.to_dict(), default=str))}
    resumed = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise CondenseError(f"nothing to resume: {ckpt_path or 'no output directory'} does not exist",
                                "run without --resume first, with the same -o DIR")
        resumed = load_checkpoint_state(ckpt_path)
        if resumed.get("config") != identity:
            raise CondenseError(f"{ckpt_path} was written with other supernet or training options",
                                "resume with the same options, or start a new -o DIR")
        saved_world = int(resumed.get("world_size", 1))  # written before multi-process training: one process
        if saved_world != world:
            raise CondenseError(f"{ckpt_path} was written by a run of {saved_world} process(es), this one has "
                                f"{world} (each rank's share of the data depends on it)",
                                f"resume with {saved_world} process(es) (torchrun --nproc_per_node={saved_world}"
                                " or none for 1), or start a new -o DIR")
    if out is not None and rank == 0:
        from ._io import os_error

        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, out) from None
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    net.to(device)
    optimizer = _make_optimizer(net, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    if teacher is not None:
        teacher.eval().to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        history = list(resumed["history"])
        start_epoch = int(resumed["epoch"])
        _set_rng_state(resumed["rng"])
    calib = calibration_batches(bundle, sandwich.calib_images, sandwich.calib_batch, config.seed) \
        if sandwich.eval_each_epoch else []
    if distributed:  # replicas start from rank 0's weights and buffers, as DistributedDataParallel's do
        _broadcast_(list(net.parameters()) + list(net.buffers()))
    params = [p for p in net.parameters() if p.requires_grad]
    accum = [torch.zeros_like(p) for p in params] if config.clip_grad_norm is not None else []
    touched = [False] * len(accum)
    lines = progress and rank == 0
    skip_bound = sandwich.skip_loss * math.log(max(bundle.num_classes, 2)) * sandwich.temperature ** 2
    if resumed is None:
        net.stabilize_()  # the initial stencils are well inside; a given checkpoint's may not be
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        loader = bundle.loader("train", config.batch_size, shuffle=True, augment=augment != "none",
                               seed=config.seed, epoch=epoch, drop_last=True, rank=rank, world_size=world)
        steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
        net.train()
        loss_sum, small_sum, small_n, correct, seen, t0 = 0.0, 0.0, 0, 0, 0, time.perf_counter()
        skipped: dict[str, int] = {}
        rescaled = 0
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            lr = lr_at(config, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = _to(x, device, config.channels_last), _to(y, device)
            optimizer.zero_grad(set_to_none=True)
            plans = step_plans(net, sandwich, config.seed, epoch, step)
            with torch.no_grad():
                t_logits = teacher(x).float() if teacher is not None else None
            target, blown = None, None
            # the largest plan's loss at weight 1, the smaller plans' averaged, times distill_weight
            small_weight = sandwich.distill_weight / max(len(plans) - 1, 1)
            for k, plan in enumerate(plans):
                net.select(plan)
                with _autocast(device, config.amp):
                    logits = net(x).float()
                if k == 0:
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing) if t_logits is None \
                        else distillation_loss(logits, t_logits, y, config.kd_alpha, config.kd_temperature,
                                               config.label_smoothing)
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
                raise CondenseError(f"the loss became {blown} {where}" if blown is not None else
                                    f"the loss was not finite in another process {where}",
                                    "lower the learning rate (--lr)")
            scaler.step(optimizer)
            scaler.update()
            rescaled += net.stabilize_()  # explicit RD stencils back inside their stability region
            seen += len(y)
        epoch_time = time.perf_counter() - t0
        if distributed:  # the epoch's figures over all ranks; every rank holds rank 0's BatchNorm statistics
            import torch.distributed as dist

            loss_sum, correct, seen, small_sum, small_n = _all_sum([loss_sum, correct, seen, small_sum, small_n],
                                                                   device)
            correct, seen, small_n = int(correct), int(seen), int(small_n)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, skipped)
            skipped = {}
            for part in gathered:
                for label, count in part.items():
                    skipped[label] = skipped.get(label, 0) + count
            _broadcast_(list(net.buffers()))
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                                  "train_acc": correct / max(seen, 1), "distill_loss": small_sum / max(small_n, 1),
                                  "skipped": sum(skipped.values()), "skipped_plans": dict(sorted(skipped.items())),
                                  "stencils_rescaled": rescaled,
                                  "images_per_s": seen / max(epoch_time, 1e-9), "epoch_seconds": epoch_time}
        if sandwich.eval_each_epoch:
            with torch.random.fork_rng(devices=[]):
                record["largest_acc"] = score_plan(net, net.largest_plan(), bundle, calib, device=device, rank=rank,
                                                   world_size=world)
                record["smallest_acc"] = score_plan(net, net.smallest_plan(), bundle, calib, device=device,
                                                    rank=rank, world_size=world)
            net.train()
        history.append(record)
        if lines:
            extra = (f" | largest {record['largest_acc']:.4f} smallest {record['smallest_acc']:.4f}"
                     if "largest_acc" in record else "")
            skips = f" | skipped {record['skipped']} blown-up plan(s)" if record["skipped"] else ""
            print(f"supernet epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} distill "
                  f"{record['distill_loss']:.4f}{extra}{skips} | {record['images_per_s']:.0f} img/s, "
                  f"{epoch_time:.1f} s", flush=True)
        if ckpt_path is not None and rank == 0:
            _atomic_save({"model": _cpu(net.state_dict()), "optimizer": _cpu(optimizer.state_dict()),
                          "epoch": epoch + 1, "history": history, "rng": _rng_state(), "config": identity,
                          "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "device": str(device),
                          "world_size": world}, ckpt_path)
    metrics = dict(history[-1]) if history else {}
    metrics.update({"epochs": config.epochs, "world_size": world, "config": config.to_dict(),
                    "sandwich": sandwich.to_dict(), "data": bundle.name, "augment": augment, **device_record(device),
                    "train_seconds_this_run": time.perf_counter() - t_start, **net.memory()})
    if out is not None and rank == 0:
        write_text_atomic(out / "metrics.json", json.dumps({**metrics, "history": history}, indent=2,
                                                           default=str) + "\n")
    net.select(net.largest_plan())
    return TrainResult(metrics=metrics, history=history, model=net)


def load_supernet_weights(net: Supernet, path: str | os.PathLike) -> None:
    """Load the weights of a supernet checkpoint (``last.pt``) into ``net`` (``weights_only=True``)."""
    from .train import load_checkpoint_state

    state = load_checkpoint_state(Path(path))
    net.load_state_dict(state["model"])


# --- export -------------------------------------------------------------------------------------------------

def export_plan(net: Supernet, plan: Any, directory: str | os.PathLike, *, model: nn.Module | None = None,
                spec: Any = None, model_kwargs: dict[str, Any] | None = None, checkpoint: str | None = None,
                extra: dict[str, Any] | None = None, counts: dict[str, Any] | None = None) -> Path:
    """Write ``plan``'s standalone model (``net.extract(plan)``, or ``model`` if already extracted) in the
    directory format ``condense.load`` reads (``write_condensed``). Select and re-estimate BatchNorm first:
    the saved statistics are those of the current path."""
    from ._count import macs_and_params
    from ._fit import Plan
    from ._io import write_condensed

    choices = net._choices(plan)
    standalone = model if model is not None else net.extract(choices)
    if counts is None:
        with net.unwrapped() as base:
            before = macs_and_params(base, net.input_size)
        after = macs_and_params(standalone, net.input_size)
        counts = {"macs_before": int(before[0]), "macs_after": int(after[0]), "params_before": int(before[1]),
                  "params_after": int(after[1])}
    runs = []
    for run in net.runs:
        c = choices.get(run.path)
        on = c is not None and c.m < run.r
        runs.append(dict(path=run.path, block_class=run.block_class, r=run.r, m=c.m if on else run.r,
                         layer=c.layer if on else None, K=int(c.options["K"]) if on and "K" in c.options else None))
    kept = {p: c for p, c in choices.items() if c.m < net.run(p).r}
    return write_condensed(directory, standalone.eval(), Plan(kept), model_class=net.found.model_class,
                           input_size=net.input_size, counts=counts, runs=runs, spec=spec, model_kwargs=model_kwargs,
                           checkpoint=checkpoint, extra=extra)

