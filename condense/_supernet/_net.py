"""The weight-sharing network: every plan of a model's search space in one module.

In: a model, its input size and a search space, built by the caller (condense does not import the search):
``search.SearchSpace`` (``search.build_space``), or any object with its attributes and methods (the runs,
the layer types, the K range, the Global layer's velocity/diffusion/source choices, init; ``params``,
``on_name``, ``plan``, ``to_dict``); ``search.supernet`` builds the space and the supernet in one call.
Out: ``Supernet``, an ``nn.Module`` in which each run holds all its blocks plus its candidate layers;
``select(plan)`` picks one path, and ``extract(plan)`` gives the standalone condensed model of that path
with the shared weights (the very ``condense.rewrite`` result, weights loaded), which computes exactly what
the selected path computes. ``train_supernet`` (``_train``) trains it (sandwich rule, checkpoints, resume,
one process or several under torchrun); ``recalibrate_bn`` re-estimates the BatchNorm statistics of one
path. Never: modifies the model it was given, or holds a second copy of a block (a plan that keeps block i
and one whose layer starts from block i, ``init="block"``, use the same block).

How a path is selected. Every block after a run's anchor is wrapped in a gate: for a plan with m kept
blocks, gates 1..m-1 run their block, gate m runs the candidate layer on block m-1's output (the rewrite's
in-place edit), and later gates pass their input through; a run that is off runs all its blocks (the
largest plan is the original model). Candidate layers are built by the rewrite's own builder
(``condense.graph.build_layer``) once per run and layer type (per m in growing runs, whose width changes) for the
largest K of the space: K is elastic (the Global layer's K is its step count; a reaction-diffusion layer
built for K steps runs the first K of its per-step norms). Global layer variants (velocity, diffusion,
source) are separate modules sharing their parts: one velocity net per velocity kind, one diffusion net,
one residual source per run, whatever the other choices. ``init="block"``: the layer's initial guess is
block m itself (its shared weights), as the rewrite's copy of block m is. A ``drop`` candidate (block
dropping) is the identity, with no K and no weights to share (in a growing run, its tail's 1x1 projection,
one per m as for every layer type).

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
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from optuna.distributions import IntDistribution
from torch import nn

from .._count import macs_and_params
from .._errors import CondenseError
from .._fit import Plan
from .._io import write_condensed
from .._space import build_space
from ..graph import (
    ChannelsFirstAdapter,
    FindResult,
    Run,
    RunChoice,
    build_layer,
    default_factory,
    find_runs,
    inner_layer,
    parent_and_name,
    rewrite,
)
from ..pde import CirculantRD, ExplicitRD, GlobalConfig, layer_has_option
from ..train import load_checkpoint_state

__all__ = [
    "Supernet",
    "supernet",
    "load_supernet_weights",
    "export_plan",
    "stabilize_",
    "SUPERNET_FILE",
    "STABLE_H_LAMBDA",
]

SUPERNET_FILE = "supernet.pt"  # the trained supernet's checkpoint (train_supernet's ``last.pt``, renamed)
_GLOBAL_OPTIONS = ("velocity", "diffusion", "source")
#: ``h * lambda_max(K^T K)`` that the explicit RD layers' diffusion stays at or below in the supernet. The
#: explicit step ``y + h (r(y) - K^T K y)`` multiplies the diffusion mode of eigenvalue lambda by
#: ``1 - h lambda``: stable for h lambda <= 2, growing like |1 - h lambda|^K beyond (K up to 20 here).
STABLE_H_LAMBDA = 1.9
_SYMBOL_GRID = 64  # frequencies per axis on which the stencil's symbol is maximised


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
        inner = inner_layer(s.layer)
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
            raise CondenseError(
                f"the space names run(s) {', '.join(map(repr, missing))} the model does not have",
                "build the space from find_runs of this very model",
            )
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
                parent, key = parent_and_name(self.net, path)
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
            raise CondenseError(
                f"run(s) {', '.join(map(repr, dense))} concatenate their blocks' outputs "
                "(DenseNet): the supernet cannot pass them through",
                "use the per-trial search (--strategy trials)",
            )
        x = torch.randn((1, *self.input_size), generator=torch.Generator().manual_seed(0))
        p = next(iter(model.parameters()), None)
        if p is not None and p.is_floating_point():
            x = x.to(p.device, p.dtype)
        with torch.random.fork_rng(devices=[]):
            res = rewrite(model, self.runs, {r.path: RunChoice(m=1, init="input") for r in self.runs}, example_input=x)
        graph = [rec.path for rec in res.records if rec.method == "graph"]
        if graph:
            raise CondenseError(
                f"run(s) {', '.join(map(repr, graph))} are not a chain of one-input blocks the "
                "rewrite can edit in place",
                "use the per-trial search (--strategy trials)",
            )

    def _build_candidates(self, run: Run, base: nn.Module) -> nn.ModuleDict:
        out = nn.ModuleDict()
        ms = range(1, run.r) if run.growing else (1,)
        defaults = _global_defaults()
        for m in ms:
            shared: dict[str, Any] = {}
            for layer in self.layer_types:
                combos: list[dict[str, Any]] = [{}]
                if layer == "global":
                    combos = [
                        {"velocity": v, "diffusion": d, "source": s}
                        for v in self.space.velocities
                        for d in self.space.diffusions
                        for s in self.space.sources
                    ]
                for options in combos:
                    steps = {"K": self.K_max} if layer_has_option(layer, "K") else {}  # drop: none
                    choice = RunChoice(m=m, layer=layer, options={**steps, **options}, init="input")
                    built = build_layer(run, choice, base, default_factory)
                    if layer == "global":
                        self._tie(inner_layer(built), options, shared)
                    key = _variant_key(layer, {**defaults, **options}, m if run.growing else None)
                    out[key] = built
        return out

    @staticmethod
    def _tie(layer: nn.Module, options: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """Make a Global layer variant use the run's shared velocity / diffusion / source modules."""
        for attr, kind in (
            ("velocity", options["velocity"]),
            ("velocity_const", options["velocity"]),
            ("diffusion", options["diffusion"]),
            ("source", options["source"]),
        ):
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
                parent, key = parent_and_name(self.net, path)
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
            out[path] = (
                value
                if isinstance(value, RunChoice)
                else RunChoice.from_dict(value)
                if isinstance(value, Mapping)
                else RunChoice(m=int(value))
            )
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
            raise CondenseError(
                f"plan names run(s) {', '.join(map(repr, unknown))} the supernet does not hold",
                f"its runs: {', '.join(sorted(known))}",
            )
        defaults = _global_defaults()
        for i, run in enumerate(self.runs):
            state = self._states[i]
            choice = choices.get(run.path)
            if choice is None or choice.m >= run.r:
                state.m, state.layer, state.init_block = run.r, None, None
                continue
            if choice.layer not in self.layer_types:
                raise CondenseError(
                    f"run '{run.path}': the supernet has no {choice.layer!r} layers",
                    f"its layer types: {', '.join(self.layer_types)}",
                )
            options = dict(choice.options)
            K = int(options.pop("K", 5)) if layer_has_option(choice.layer, "K") else None  # drop: no steps
            if K is not None and not 1 <= K <= self.K_max:
                raise CondenseError(
                    f"run '{run.path}': K={K} is outside the supernet's 1..{self.K_max}",
                    "build the supernet for a larger K range",
                )
            extra = sorted(set(options) - (set(_GLOBAL_OPTIONS) if choice.layer == "global" else set()))
            if extra:
                raise CondenseError(
                    f"run '{run.path}': the supernet has no weights for option(s) "
                    f"{', '.join(extra)} of {choice.layer!r}",
                    "plans of the search space only",
                )
            key = _variant_key(choice.layer, {**defaults, **options}, choice.m if run.growing else None)
            candidates = self.candidates[f"run{i}"]
            if key not in candidates:
                raise CondenseError(
                    f"run '{run.path}': the supernet has no {key!r} layer", "plans of the search space only"
                )
            layer = candidates[key]
            inner = inner_layer(layer)
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
        return Plan({})

    def _draw(self, rng: random.Random, smallest: bool):
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
    inner = inner_layer(layer)
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
            raise CondenseError(
                f"run '{path}': the supernet's layer has no weight {key!r}",
                "the supernet and the rewrite built different layers",
            )
        s = src[key]
        if s.shape != value.shape:
            if s.dim() == 0 or s.shape[1:] != value.shape[1:] or s.shape[0] < value.shape[0]:
                raise CondenseError(
                    f"run '{path}': weight {key!r} is {tuple(s.shape)} in the supernet, "
                    f"{tuple(value.shape)} in the plan's layer"
                )
            s = s[: value.shape[0]]
        new[key] = s.detach().clone()
    target.load_state_dict(new, strict=True)


def supernet(
    model: nn.Module, *, input_size: Sequence[int], space: Any = None, found: FindResult | None = None
) -> Supernet:
    """The supernet of ``model`` over ``space`` (default: the whole plan space for its runs,
    ``condense.build_space``; ``search.supernet`` narrows it by ``layers``/``K``). ``found``:
    ``find_runs(model, input_size)`` if already made."""
    size = tuple(int(v) for v in input_size)
    found = found if found is not None else find_runs(model, size)
    return Supernet(model, found, space if space is not None else build_space(found))


def load_supernet_weights(net: Supernet, path: str | os.PathLike) -> None:
    """Load the weights of a supernet checkpoint (``last.pt``) into ``net`` (``weights_only=True``)."""
    state = load_checkpoint_state(Path(path))
    net.load_state_dict(state["model"])


# --- export -------------------------------------------------------------------------------------------------


def export_plan(
    net: Supernet,
    plan: Any,
    directory: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    spec: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    extra: dict[str, Any] | None = None,
    counts: dict[str, Any] | None = None,
) -> Path:
    """Write ``plan``'s standalone model (``net.extract(plan)``, or ``model`` if already extracted) in the
    directory format ``condense.load`` reads (``write_condensed``). Select and re-estimate BatchNorm first:
    the saved statistics are those of the current path."""
    choices = net._choices(plan)
    standalone = model if model is not None else net.extract(choices)
    if counts is None:
        with net.unwrapped() as base:
            before = macs_and_params(base, net.input_size)
        after = macs_and_params(standalone, net.input_size)
        counts = {
            "macs_before": int(before[0]),
            "macs_after": int(after[0]),
            "params_before": int(before[1]),
            "params_after": int(after[1]),
        }
    runs = []
    for run in net.runs:
        c = choices.get(run.path)
        on = c is not None and c.m < run.r
        runs.append(
            dict(
                path=run.path,
                block_class=run.block_class,
                r=run.r,
                m=c.m if on else run.r,
                layer=c.layer if on else None,
                K=int(c.options["K"]) if on and "K" in c.options else None,
            )
        )
    kept = {p: c for p, c in choices.items() if c.m < net.run(p).r}
    return write_condensed(
        directory,
        standalone.eval(),
        Plan(kept),
        model_class=net.found.model_class,
        input_size=net.input_size,
        counts=counts,
        runs=runs,
        spec=spec,
        model_kwargs=model_kwargs,
        checkpoint=checkpoint,
        extra=extra,
    )
