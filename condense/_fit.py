"""Choose and apply a condense plan: m per run, K and the layer options, to meet MAC/parameter budgets.

In: a model, budgets, an input size. Out: a ``FitResult`` (the plan, the rewritten model, counts before
and after, measured). Never: mutates the input model, or reports a figure it did not measure on the
rewritten model.

How the plan is chosen (``fit``):

1. Find the runs (``find_runs``) and count the original model.
2. No budget: the paper's plan, m = 1 in every run, K = 5, the layer defaults.
3. With budgets: the smallest plan (m = 1 everywhere) at the requested K (default 5) must fit; if it
   does not and K was not fixed, K is lowered until it does, else the error states the smallest
   reachable figure. Blocks are then given back one at a time, always to the run with the lowest
   fraction of kept blocks (m / r) among those whose next block still fits every budget, until no
   block fits. If K was not fixed, it is then raised (up to 20) while every budget still holds.
4. The plan is applied and the result counted; if the measured figure breaks a budget (the estimate
   sums block and layer counts), the last block given back is taken away again, and so on.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._budget import Budget, format_count, parse_budget
from ._count import count_module, macs_and_params
from ._errors import BudgetError, CondenseError
from .graph import FindResult, Run, RunChoice, find_runs, rewrite
from .graph._rewrite import _build_layer, _default_factory
from .pde import create_layer, layer_class

DEFAULT_K = 5
K_MAX = 20
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Run path -> RunChoice, for the runs that change (others stay as they are)."""

    choices: Mapping[str, RunChoice]

    def to_dict(self) -> dict[str, Any]:
        return {path: c.to_dict() for path, c in self.choices.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        return cls({path: RunChoice.from_dict(c) for path, c in data.items()})


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run of the result table: blocks and costs before and after."""

    path: str
    block_class: str
    shape: tuple[int, int, int]
    r: int
    m: int
    layer: str | None
    K: int | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int


@dataclasses.dataclass(frozen=True)
class FitResult:
    model: nn.Module
    plan: Plan
    found: FindResult
    input_size: tuple[int, int, int]
    macs_before: int
    params_before: int
    macs_after: int
    params_after: int
    macs_budget: float | None
    params_budget: float | None
    rows: tuple[RunRow, ...]
    message: str

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before


class _Costs:
    """Per-run costs of the replacement layer, counted once per (run, K) on the real layer (per (run, K, m)
    for growing runs)."""

    def __init__(self, model: nn.Module, runs: Sequence[Run], layer: str, init: str, options: Mapping[str, Any]):
        self.model, self.layer, self.init, self.options = model, layer, init, dict(options)
        self.runs = {r.path: r for r in runs}
        self.cache: dict[tuple[str, int, int], tuple[int, int]] = {}

    def layer_cost(self, path: str, K: int, m: int = 1) -> tuple[int, int]:
        """MACs and parameters of the layer replacing ``blocks[m:]`` (``m`` matters for growing runs only:
        their layer works at the width block m reads, plus a projection to the run's output width)."""
        run = self.runs[path]
        key = (path, K, m if run.growing else 1)
        if key in self.cache:
            return self.cache[key]
        if run.growing:
            choice = RunChoice(m=m, layer=self.layer, options={**self.options, "K": K}, init="input")
            layer = _build_layer(run, choice, self.model, _default_factory)
            self.cache[key] = count_module(layer, torch.randn(1, run.channels_at(m), *run.input_shape[1:]))
        else:
            opts = {"kernel_size": run.layer_kernel_size or 3, **self.options, "K": K}
            if "kernel_size" not in layer_class(self.layer).config_cls.__dataclass_fields__:
                opts.pop("kernel_size")
            block = copy.deepcopy(self.model.get_submodule(run.blocks[1])) if self.init == "block" else None
            layer = create_layer(self.layer, run.channels, init_block=block, **opts)
            c, h, w = run.input_shape
            x = torch.randn(1, c, h, w)
            if block is not None and run.layout == "NHWC":
                block_macs = run.macs[1] or 0
                layer_nchw = create_layer(self.layer, run.channels, **opts)
                macs, params = count_module(layer_nchw, x)
                self.cache[key] = (macs + block_macs, params + sum(p.numel() for p in block.parameters()))
            else:
                if block is not None and run.layout != "NCHW":
                    raise CondenseError(f"run '{path}' has layout {run.layout}", "use init='input'")
                self.cache[key] = count_module(layer, x)
        return self.cache[key]

    def plan_cost(self, total: tuple[int, int], ms: Mapping[str, int], K: int) -> tuple[int, int]:
        macs, params = total
        for path, m in ms.items():
            run = self.runs[path]
            if m < run.r:
                lm, lp = self.layer_cost(path, K, m)
                macs += lm - sum(v or 0 for v in run.macs[m:])
                params += lp - sum(run.params[m:])
        return macs, params


def _fits(cost: tuple[int, int], macs_b: float | None, params_b: float | None) -> bool:
    return (macs_b is None or cost[0] <= macs_b) and (params_b is None or cost[1] <= params_b)


def _choose(costs: _Costs, total: tuple[int, int], runs: Sequence[Run], macs_b, params_b, K: int | None,
            progress: Progress) -> tuple[dict[str, int], int, list[str]]:
    """m per run and K by the rule in the module docstring; also the order blocks were given back."""
    ms = {r.path: 1 for r in runs}
    Ks = [K] if K is not None else list(range(DEFAULT_K, 0, -1))
    chosen_K = None
    for k in Ks:
        progress(f"trying the smallest plan at K={k}")
        if _fits(costs.plan_cost(total, ms, k), macs_b, params_b):
            chosen_K = k
            break
    if chosen_K is None:
        k = Ks[-1]
        macs, params = costs.plan_cost(total, ms, k)
        parts = []
        if macs_b is not None and macs > macs_b:
            parts.append(f"MAC budget {format_count(macs_b)} is below the smallest reachable {format_count(macs)}")
        if params_b is not None and params > params_b:
            parts.append(f"parameter budget {format_count(params_b)} is below the smallest reachable "
                         f"{format_count(params)}")
        raise BudgetError("; ".join(parts) + f" (every run condensed to m=1, K={k})",
                          "raise the budget, or try another --layer / fewer layer options")
    order: list[str] = []
    while True:
        best = None
        for run in runs:
            m = ms[run.path]
            if m >= run.r:
                continue
            trial = {**ms, run.path: m + 1}
            if _fits(costs.plan_cost(total, trial, chosen_K), macs_b, params_b):
                key = (m / run.r, -run.r)
                if best is None or key < best[0]:
                    best = (key, run.path)
        if best is None:
            break
        ms[best[1]] += 1
        order.append(best[1])
    if K is None and any(ms[r.path] < r.r for r in runs):
        while chosen_K < K_MAX and _fits(costs.plan_cost(total, ms, chosen_K + 1), macs_b, params_b):
            chosen_K += 1
    return ms, chosen_K, order


def _resolve(budget: str | float | Budget | None, original: int) -> float | None:
    return None if budget is None else parse_budget(budget).resolve(original)


def fit(model: nn.Module, macs: str | float | Budget | None = None, params: str | float | Budget | None = None,
        input_size: Sequence[int] | None = None, *, layer: str = "global", init: str | None = None,
        K: int | None = None, preserve: bool = False, seed: int | None = 0, progress: Progress | None = None,
        **layer_options: Any) -> FitResult:
    """Choose a plan that meets every budget given (MACs and/or parameters) and apply it.

    ``macs``/``params``: ``"250M"``, ``"60%"`` (of the original), a number, or None. ``input_size``:
    (C, H, W), default (3, 224, 224). ``layer``: a layer type (``global``, ``linearmix``, ``explicit_rd``,
    ``implicit_rd``, ``circulant_rd``); ``init``: ``input`` (the kept blocks' output starts the PDE, the
    paper's) or ``block`` (a copy of the first replaced block, with its weights); ``K``: fix the number of
    PDE steps (default: 5, adjusted to the budget). ``preserve``: for pretrained weights, start every new
    layer as the identity on its initial guess, a copy of the first replaced block (``init="block"``,
    ``zero_init=True`` and learned diffusion for the Global layer), so the condensed model first computes
    what the original computed minus the blocks after it. ``seed`` fixes the new layers' initial weights
    (None: the global random state). Other keywords are layer options.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fit(model, macs, params, input_size, layer=layer, init=init, K=K, preserve=preserve, seed=None,
                       progress=progress, **layer_options)
    say = progress or (lambda _msg: None)
    if preserve:
        init = init or "block"
        if layer == "global":
            layer_options = {"zero_init": True, "diffusion": "dwconv", **layer_options}
    init = init or "input"
    size = tuple(int(s) for s in (input_size or (3, 224, 224)))
    if layer_options.get("K") is not None:
        K = int(layer_options.pop("K"))
    layer_class(layer)  # unknown layer type: error before any work
    create_layer(layer, 4, **{k: v for k, v in layer_options.items() if k != "kernel_size"})  # bad options
    say("tracing and finding repeated blocks")
    found = find_runs(model, size)
    macs0, params0 = found.total_macs, found.total_params
    if macs0 is None:
        macs0, params0 = macs_and_params(model, size)
    macs_b, params_b = _resolve(macs, macs0), _resolve(params, params0)
    runs = list(found.runs)
    base = dict(found=found, input_size=size, macs_before=macs0, params_before=params0,
                macs_budget=macs_b, params_budget=params_b)

    def unchanged(message: str) -> FitResult:
        rows = tuple(_row(r, r.r, None, None, None) for r in runs)
        return FitResult(model=copy.deepcopy(model), plan=Plan({}), macs_after=macs0, params_after=params0,
                         rows=rows, message=message, **base)

    if not runs:
        return unchanged(f"{type(model).__name__} has no repeated same-resolution blocks: nothing to condense")
    if (macs_b is not None or params_b is not None) and _fits((macs0, params0), macs_b, params_b):
        return unchanged("the model is already within budget "
                         f"({format_count(macs0)} MACs, {format_count(params0)} params): left unchanged")
    costs = _Costs(model, runs, layer, init, layer_options)
    if macs_b is None and params_b is None:
        ms, chosen_K, order = {r.path: 1 for r in runs}, (K or DEFAULT_K), []
    else:
        ms, chosen_K, order = _choose(costs, (macs0, params0), runs, macs_b, params_b, K, say)
    while True:
        plan = Plan({p: RunChoice(m=m, layer=layer, options={**layer_options, "K": chosen_K}, init=init)
                     for p, m in ms.items() if m < costs.runs[p].r})
        say(f"rewriting {len(plan.choices)} run(s) and counting the result")
        new = rewrite(model, found, plan.choices).module
        macs1, params1 = macs_and_params(new, size)
        if _fits((macs1, params1), macs_b, params_b) or not order:
            break
        ms[order.pop()] -= 1  # the estimate was optimistic: give the last block back
    if not _fits((macs1, params1), macs_b, params_b):
        raise BudgetError(f"the smallest plan measures {format_count(macs1)} MACs / {format_count(params1)} params, "
                          "over budget", "raise the budget")
    rows = []
    for run in runs:
        m = ms[run.path]
        lc = costs.layer_cost(run.path, chosen_K, m) if m < run.r else None
        rows.append(_row(run, m, layer if lc else None, chosen_K if lc else None, lc))
    n = sum(1 for r in rows if r.m < r.r)
    msg = f"condensed {n} of {len(runs)} run(s), K={chosen_K}"
    return FitResult(model=new, plan=plan, macs_after=macs1, params_after=params1, rows=tuple(rows),
                     message=msg, **base)


def _row(run: Run, m: int, layer: str | None, K: int | None, layer_cost: tuple[int, int] | None) -> RunRow:
    mb, pb = sum(v or 0 for v in run.macs), sum(run.params)
    ma = sum(v or 0 for v in run.macs[:m]) + (layer_cost[0] if layer_cost else 0)
    pa = sum(run.params[:m]) + (layer_cost[1] if layer_cost else 0)
    return RunRow(run.path, run.block_class, run.input_shape, run.r, m, layer, K, mb, ma, pb, pa)


def condense(model: nn.Module, macs: str | float | Budget | None = None, params: str | float | Budget | None = None,
             input_size: Sequence[int] | None = None, **options: Any) -> nn.Module:
    """The condensed model: ``fit(...)`` and return its module (the paper's default plan without budgets)."""
    return fit(model, macs=macs, params=params, input_size=input_size, **options).model
