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
   block fits. K then stays where it is (the paper's 5): leftover MAC budget is not spent on more PDE
   steps, which buy little accuracy (paper Table 6: K 5 -> 20 gives +0.28% on CIFAR-10) and cost real
   time (each step is a pass over the map; resnet50 @2G at K=20 trains 1.25x slower than at K=5). With
   ``fill_K=True`` K is raised (up to 20) while every budget still holds.
4. The plan is applied and the result counted; if the measured figure breaks a budget (the estimate
   sums block and layer counts), the last block given back is taken away again, and so on.
5. A latency budget (``latency="12ms"``) is met by measurement, not estimate: plans from steps 3-4 for a
   series of MAC targets are measured on this machine (``condense._latency``) and the target is moved by
   the secant between the nearest measured plans below and above the budget; a few candidates (at most
   6) suffice because latency grows with MACs along these plans (``_fit_latency``).
6. With ``width`` (``condense._width``), the original's channels are pruned first (Torch-Pruning), and
   steps 1-5 run on the pruned model with the budgets resolved against the original; ``width="auto"``
   chooses one share of every channel group with the depth plan: the depth plan removes at most one block
   of every run (the least cut) and the share takes the rest (``condense._width._auto``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._budget import Budget, format_count, format_ms, parse_budget, parse_latency
from ._costs import PlanCosts
from ._count import macs_and_params
from ._errors import BudgetError, ConfigError
from ._latency import LatencySetting, measure_latency
from ._width import WidthFit, fit_with_width, parse_width
from .graph import FindResult, Run, RunChoice, find_runs, rewrite
from .pde import DROP, create_layer, layer_class, layer_has_option

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
    width: float | None = None  # share of the run's channels removed (``fit(width=...)``)
    channels: tuple[int, int] | None = None  # the run's channels before and after pruning


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
    latency: "LatencyFit | None" = None
    width: "WidthFit | None" = None  # channels pruned before the depth plan (``condense._width``)

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before


class _Costs:
    """fit's view of the one cost model (``PlanCosts``): the same layer type, options and initial guess in
    every run, with K and m varying (K only for layers that have steps: ``drop`` has none)."""

    def __init__(self, model: nn.Module, runs: Sequence[Run], layer: str, init: str, options: Mapping[str, Any]):
        self.layer, self.init, self.options = layer, init, dict(options)
        self.steps = layer_has_option(layer, "K")
        self.runs = {r.path: r for r in runs}
        self.model_costs = PlanCosts(model, runs=self.runs)

    def options_at(self, K: int | None) -> dict[str, Any]:
        """The layer options of every new layer at ``K`` steps (no K for a layer without steps)."""
        return {**self.options, "K": K} if self.steps else dict(self.options)

    def layer_cost(self, path: str, K: int, m: int = 1) -> tuple[int, int]:
        """MACs and parameters of the layer replacing ``blocks[m:]`` (``m`` matters for growing runs only:
        their layer works at the width block m reads, plus a projection to the run's output width)."""
        choice = RunChoice(m=m, layer=self.layer, options=self.options_at(K), init=self.init)
        return self.model_costs.layer_cost(path, choice)

    def plan_cost(self, total: tuple[int, int], ms: Mapping[str, int], K: int) -> tuple[int, int]:
        """``PlanCosts.estimate`` of m per run at K (a replaced block that was not counted subtracts 0 MACs)."""
        choices = {
            path: RunChoice(m=m, layer=self.layer, options=self.options_at(K), init=self.init)
            for path, m in ms.items()
            if m < self.runs[path].r
        }
        return self.model_costs.estimate(total, choices, uncounted_as_zero=True)


def _check_drop(K: int | None, fill_K: bool, init: str | None, options: Mapping[str, Any]) -> None:
    """``layer="drop"`` has nothing to configure: K, fill_K, init="block" or a layer option is an error."""
    given = [
        *(["K"] if K is not None or "K" in options else []),
        *(["fill_K"] if fill_K else []),
        *(["init='block'"] if init == "block" else []),
        *sorted(k for k in options if k != "K"),
    ]
    if given:
        raise ConfigError(
            f"layer 'drop' deletes the removed blocks and takes no options, got {', '.join(given)}",
            "leave out --K, --fill-K, --init and the layer options, or choose a PDE layer (e.g. --layer global)",
        )


def _fits(cost: tuple[int, int], macs_b: float | None, params_b: float | None) -> bool:
    return (macs_b is None or cost[0] <= macs_b) and (params_b is None or cost[1] <= params_b)


def _unmet(cost: tuple[int, int], macs_b: float | None, params_b: float | None) -> str:
    """'MAC budget X is below the smallest reachable Y' for each budget ``cost`` breaks."""
    parts = []
    if macs_b is not None and cost[0] > macs_b:
        parts.append(f"MAC budget {format_count(macs_b)} is below the smallest reachable {format_count(cost[0])}")
    if params_b is not None and cost[1] > params_b:
        parts.append(
            f"parameter budget {format_count(params_b)} is below the smallest reachable {format_count(cost[1])}"
        )
    return "; ".join(parts)


def _raise_hint(options: Mapping[str, Any]) -> str:
    if options.get("zero_init"):  # preserve mode (on by default with --checkpoint): learned diffusion
        return (
            "raise the budget, or pass --no-preserve (preserve=False): preserving pretrained weights, the "
            "default with --checkpoint, keeps a copy of each run's first replaced block as the layer's start"
        )
    return "raise the budget, or try another --layer / fewer layer options"


def _choose(
    costs: _Costs,
    total: tuple[int, int],
    runs: Sequence[Run],
    macs_b,
    params_b,
    K: int | None,
    progress: Progress,
    fill_K: bool = False,
) -> tuple[dict[str, int], int, list[str]]:
    """m per run and K by the rule in the module docstring; also the order blocks were given back."""
    ms = {r.path: 1 for r in runs}
    Ks = [K] if K is not None else list(range(DEFAULT_K, 0, -1)) if costs.steps else [DEFAULT_K]
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
            parts.append(
                f"parameter budget {format_count(params_b)} is below the smallest reachable {format_count(params)}"
            )
        at = f"m=1, K={k}" if costs.steps else f"m=1, layer {costs.layer!r}"
        raise BudgetError("; ".join(parts) + f" (every run condensed to {at})", _raise_hint(costs.options))
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
    if K is None and fill_K and any(ms[r.path] < r.r for r in runs):
        while chosen_K < K_MAX and _fits(costs.plan_cost(total, ms, chosen_K + 1), macs_b, params_b):
            chosen_K += 1
    return ms, chosen_K, order


@dataclasses.dataclass(frozen=True)
class LatencyFit:
    """How a latency budget was met: milliseconds measured (``setting``: batch, mode, threads) on the
    original and on the chosen model, the budget, and every candidate measured on the way as
    ``(MACs, ms)`` in the order tried."""

    budget_ms: float
    before_ms: float
    after_ms: float
    setting: Mapping[str, Any]
    candidates: tuple[tuple[int, float], ...]
    drop_candidates: tuple[tuple[int, float], ...] = ()  # the same search with layer "drop", when it ran
    layer: str | None = None  # the layer of the chosen plan, when the drop search ran

    def to_dict(self) -> dict[str, Any]:
        out = {
            "budget_ms": self.budget_ms,
            "before_ms": self.before_ms,
            "after_ms": self.after_ms,
            "setting": dict(self.setting),
            "candidates": [list(c) for c in self.candidates],
        }
        if self.drop_candidates:
            out.update(drop_candidates=[list(c) for c in self.drop_candidates], layer=self.layer)
        return out


def _resolve(budget: str | float | Budget | None, original: int) -> float | None:
    return None if budget is None else parse_budget(budget).resolve(original)


MAX_K = 100  # the layers' own limit (GlobalConfig.K); 0 steps would be no layer at all


def fit(
    model: nn.Module,
    macs: str | float | Budget | None = None,
    params: str | float | Budget | None = None,
    input_size: Sequence[int] | None = None,
    *,
    layer: str = "global",
    init: str | None = None,
    K: int | None = None,
    fill_K: bool = False,
    preserve: bool = False,
    seed: int | None = 0,
    progress: Progress | None = None,
    latency: str | float | Budget | None = None,
    latency_setting: LatencySetting | None = None,
    width: Any = None,
    width_importance: str = "l1",
    width_multiple: int = 1,
    **layer_options: Any,
) -> FitResult:
    """Choose a plan that meets every budget given (MACs and/or parameters) and apply it.

    ``macs``/``params``: ``"250M"``, ``"60%"`` (of the original), a number, or None. ``input_size``:
    (C, H, W), default (3, 224, 224). ``layer``: a layer type (``global``, ``linearmix``, ``explicit_rd``,
    ``implicit_rd``, ``circulant_rd``, ``drop``); ``init``: ``input`` (the kept blocks' output starts the PDE, the
    paper's) or ``block`` (a copy of the first replaced block, with its weights); ``K``: fix the number of
    PDE steps (default: 5, lowered if even the smallest plan misses the budget); ``fill_K``: raise K (up to
    20) to spend MAC budget the blocks left over. ``preserve``: for pretrained weights, start every new
    layer as the identity on its initial guess, a copy of the first replaced block (``init="block"``,
    ``zero_init=True`` and learned diffusion for the Global layer), so the condensed model first computes
    what the original computed minus the blocks after it. ``seed`` fixes the new layers' initial weights
    (None: the global random state). ``layer="drop"`` deletes the removed blocks and puts nothing in their
    place (block dropping; growing runs keep a 1x1 projection to their width): 0 MACs and 0 parameters per
    run, and no K, ``fill_K``, ``init="block"`` or layer options (each an error). ``latency``: a budget for
    the measured forward time on this machine (``"12ms"``, ``"60%"`` of the original's), measured as
    ``latency_setting`` says (batch, eager or compiled, threads; default batch 1, eager), met with a few
    measured candidates (``_fit_latency``); the result's ``latency`` holds the figures. ``width``: also
    prune channels with Torch-Pruning before the depth plan (``condense._width``): a share in [0, 1) of every
    channel group (``0.25``), a share per run (``{"layer1": 0.25}``), or ``"auto"`` (one share chosen with
    the depth plan to meet the budgets); ``width_importance`` ranks channels by ``"l1"`` magnitude or
    ``"group"`` norm; ``width_multiple`` N keeps every pruned group of more than N channels at a multiple of N
    (``condense._width.kept_channels``: CPU convolutions run a count between multiples as slowly as the next
    one); the result's ``width`` records it. Other keywords are layer options.
    """
    if width is not None:
        spec = parse_width(width, width_importance, width_multiple)
        if spec is not None:
            size = tuple(int(s) for s in (input_size or (3, 224, 224)))

            def depth(pruned: nn.Module, macs=None, params=None, latency=None) -> FitResult:
                return fit(
                    pruned,
                    macs,
                    params,
                    size,
                    layer=layer,
                    init=init,
                    K=K,
                    fill_K=fill_K,
                    preserve=preserve,
                    seed=seed,
                    progress=progress,
                    latency=latency,
                    latency_setting=latency_setting,
                    **layer_options,
                )

            return fit_with_width(
                model,
                spec,
                size,
                depth,
                macs=macs,
                params=params,
                latency=latency,
                latency_setting=latency_setting,
                importance_name=width_importance,
                progress=progress,
                multiple=width_multiple,
            )
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fit(
                model,
                macs,
                params,
                input_size,
                layer=layer,
                init=init,
                K=K,
                fill_K=fill_K,
                preserve=preserve,
                seed=None,
                progress=progress,
                latency=latency,
                latency_setting=latency_setting,
                **layer_options,
            )
    say = progress or (lambda _msg: None)
    if layer == DROP:
        _check_drop(K, fill_K, init, layer_options)
        init, preserve = "input", False  # nothing to preserve or start from: the blocks are gone
    if preserve:
        init = init or "block"
        if layer == "global":
            layer_options = {"zero_init": True, "diffusion": "dwconv", **layer_options}
    init = init or "input"
    size = tuple(int(s) for s in (input_size or (3, 224, 224)))
    if layer_options.get("K") is not None:
        K = layer_options.pop("K")
    if K is not None and (isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= MAX_K):
        raise ConfigError(
            f"K={K!r}: the number of PDE steps must be an integer from 1 to {MAX_K}", "write e.g. --K 5, the paper's"
        )
    if latency is not None:
        parse_latency(latency)  # a malformed budget: error before any work
    layer_class(layer)  # unknown layer type: error before any work
    create_layer(layer, 4, **{k: v for k, v in layer_options.items() if k != "kernel_size"})  # bad options
    say("tracing and finding repeated blocks")
    found = find_runs(model, size)
    macs0, params0 = found.total_macs, found.total_params
    if macs0 is None:
        macs0, params0 = macs_and_params(model, size)
    macs_b, params_b = _resolve(macs, macs0), _resolve(params, params0)
    runs = list(found.runs)
    base = dict(
        found=found,
        input_size=size,
        macs_before=macs0,
        params_before=params0,
        macs_budget=macs_b,
        params_budget=params_b,
    )

    def unchanged(message: str) -> FitResult:
        rows = tuple(_row(r, r.r, None, None, None) for r in runs)
        if not _fits((macs0, params0), macs_b, params_b):  # nothing to condense, and over budget
            raise BudgetError(
                _unmet((macs0, params0), macs_b, params_b) + f": {message}",
                "raise the budget, or condense a model with repeated blocks",
            )
        return FitResult(
            model=copy.deepcopy(model),
            plan=Plan({}),
            macs_after=macs0,
            params_after=params0,
            rows=rows,
            message=message,
            **base,
        )

    if not runs:
        return unchanged(f"{type(model).__name__} has no repeated same-resolution blocks: nothing to condense")
    costs = _Costs(model, runs, layer, init, layer_options)
    # with a latency budget K stays fixed (default 5): extra PDE steps cost few MACs but real time, so a
    # MAC target filled by raising K would make latency jump along the candidates
    K_used = (K or DEFAULT_K) if latency is not None else K
    apply = functools.partial(
        _apply,
        model,
        found,
        costs,
        runs,
        size,
        base,
        K_used,
        fill_K and latency is None,
        layer,
        init,
        layer_options,
        say,
    )
    if latency is not None:
        drop = None
        if layer != DROP:  # the fallback when the layers cost more time than the budget leaves (_fit_latency)
            drop_costs = _Costs(model, runs, DROP, "input", {})
            drop = (
                functools.partial(
                    _apply, model, found, drop_costs, runs, size, base, None, False, DROP, "input", {}, say
                ),
                drop_costs,
            )
        return _fit_latency(
            apply,
            unchanged,
            model,
            size,
            costs,
            (macs0, params0),
            macs_b,
            params_b,
            parse_latency(latency),
            latency_setting or LatencySetting(),
            K_used,
            say,
            drop=drop,
        )
    if (macs_b is not None or params_b is not None) and _fits((macs0, params0), macs_b, params_b):
        return unchanged(
            "the model is already within budget "
            f"({format_count(macs0)} MACs, {format_count(params0)} params): left unchanged"
        )
    return apply(macs_b, params_b)


def _apply(
    model: nn.Module,
    found: FindResult,
    costs: _Costs,
    runs: Sequence[Run],
    size: tuple[int, ...],
    base: dict[str, Any],
    K: int | None,
    fill_K: bool,
    layer: str,
    init: str,
    layer_options: Mapping[str, Any],
    say: Progress,
    macs_b: float | None,
    params_b: float | None,
) -> FitResult:
    """The plan for these budgets (steps 2-4 of the module docstring), applied and counted."""
    macs0, params0 = base["macs_before"], base["params_before"]
    base = {**base, "macs_budget": macs_b, "params_budget": params_b}
    if macs_b is None and params_b is None:
        ms, chosen_K, order = {r.path: 1 for r in runs}, (K or DEFAULT_K), []
    else:
        ms, chosen_K, order = _choose(costs, (macs0, params0), runs, macs_b, params_b, K, say, fill_K)
    while True:
        plan = Plan(
            {
                p: RunChoice(m=m, layer=layer, options=costs.options_at(chosen_K), init=init)
                for p, m in ms.items()
                if m < costs.runs[p].r
            }
        )
        say(f"rewriting {len(plan.choices)} run(s) and counting the result")
        new = rewrite(model, found, plan.choices).module
        macs1, params1 = macs_and_params(new, size)
        if _fits((macs1, params1), macs_b, params_b) or not order:
            break
        ms[order.pop()] -= 1  # the estimate was optimistic: give the last block back
    if not _fits((macs1, params1), macs_b, params_b):
        raise BudgetError(
            _unmet((macs1, params1), macs_b, params_b) + " (the smallest plan, as measured)", _raise_hint(layer_options)
        )
    rows = []
    for run in runs:
        m = ms[run.path]
        lc = costs.layer_cost(run.path, chosen_K, m) if m < run.r else None
        rows.append(_row(run, m, layer if lc else None, chosen_K if lc and costs.steps else None, lc))
    n = sum(1 for r in rows if r.m < r.r)
    msg = f"condensed {n} of {len(runs)} run(s), " + (f"K={chosen_K}" if costs.steps else f"layer {layer!r}")
    return FitResult(
        model=new, plan=plan, macs_after=macs1, params_after=params1, rows=tuple(rows), message=msg, **base
    )


def _fit_latency(
    apply: Callable[..., FitResult],
    unchanged: Callable[[str], FitResult],
    model: nn.Module,
    size: tuple[int, ...],
    costs: _Costs,
    total: tuple[int, int],
    macs_b: float | None,
    params_b: float | None,
    budget: Budget,
    setting: LatencySetting,
    K: int | None,
    say: Progress,
    max_candidates: int = 6,
    drop: tuple[Callable[..., FitResult], _Costs] | None = None,
) -> FitResult:
    """Meet a latency budget (and any MAC/parameter budgets) with a few measured candidates.

    Latency grows with MACs along the plans ``apply`` makes for a MAC target, so the target is found by
    measuring: first MACs x (budget / original latency), then the secant between the nearest measured
    plans below and above the budget (aiming 3% under it, for noise), at most ``max_candidates`` plans.
    The result is the measured plan with the most MACs whose latency is within the budget; it stops early
    once one lands within 7% under the budget or a target repeats a plan already measured.

    The layers' measured cost: a Global layer runs at a fraction of a convolution's MACs per second, so a
    MAC-sized plan may be slower than its MACs say. When the search finds no plan within the budget, or
    none within 7% under it, the same search runs with ``drop`` (the same runs, ``layer="drop"``: the
    removed blocks deleted, nothing in their place; ``drop`` is (its apply, its costs)). Its best plan is
    chosen when the layers' plan fails, or when it keeps more blocks than the layers' plan keeps blocks and
    layers together: a layer is valued as one block (it stands for several), so the layers give way only
    where each costs more time than a block of its run would."""
    say(f"measuring the original model ({setting.describe()})")
    before = measure_latency(model, size, setting)
    budget_ms = budget.resolve(before)
    if before <= budget_ms and _fits(total, macs_b, params_b):
        res = unchanged(
            f"the model is already within budget ({format_ms(before)} measured, {setting.describe()}): left unchanged"
        )
        return dataclasses.replace(res, latency=LatencyFit(budget_ms, before, before, setting.to_dict(), ()))
    tried = _latency_search(apply, costs, total, macs_b, params_b, before, budget_ms, setting, K, say, max_candidates)
    best = max(((r, t) for r, t in tried if t <= budget_ms), key=lambda rt: rt[0].macs_after, default=None)
    dropped: list[tuple[FitResult, float]] = []
    if drop is not None and (best is None or best[1] < 0.93 * budget_ms):
        say("the layers cost more time than the budget leaves: the same search with layer 'drop'")
        try:
            dropped = _latency_search(
                drop[0], drop[1], total, macs_b, params_b, before, budget_ms, setting, None, say, max_candidates
            )
        except BudgetError:  # no drop plan meets the MAC/parameter budgets either
            dropped = []
        best_drop = max(((r, t) for r, t in dropped if t <= budget_ms), key=lambda rt: rt[0].macs_after, default=None)
        if best_drop is not None and (best is None or _kept(best_drop[0]) > _kept(best[0]) + _layers(best[0])):
            best = best_drop
    if best is None:
        fastest = min((t for _, t in tried + dropped), default=before)
        raise BudgetError(
            f"latency budget {format_ms(budget_ms)} is below the fastest plan measured, "
            f"{format_ms(fastest)} ({setting.describe()}; the original: {format_ms(before)})",
            "raise the latency budget, or lower --K",
        )
    res, after = best
    chosen = next(iter(res.plan.choices.values())).layer if res.plan.choices else None
    record = LatencyFit(
        budget_ms,
        before,
        after,
        setting.to_dict(),
        tuple((r.macs_after, t) for r, t in tried),
        tuple((r.macs_after, t) for r, t in dropped),
        chosen if dropped else None,
    )
    n = len(tried) + len(dropped)
    note = f"; layer 'drop' keeps {_kept(res)} blocks within the budget" if dropped and chosen == DROP else ""
    msg = (
        f"{res.message}; latency {format_ms(after)} (original {format_ms(before)}, budget "
        f"{format_ms(budget_ms)}; {setting.describe()}; {n} candidate(s) measured{note})"
    )
    return dataclasses.replace(res, latency=record, message=msg, macs_budget=macs_b)  # the user's, not the target


def _kept(res: FitResult) -> int:
    """Blocks a plan keeps over all runs."""
    return sum(row.m for row in res.rows)


def _layers(res: FitResult) -> int:
    """New layers a plan puts in (one per condensed run)."""
    return sum(1 for row in res.rows if row.m < row.r)


def _latency_search(
    apply: Callable[..., FitResult],
    costs: _Costs,
    total: tuple[int, int],
    macs_b: float | None,
    params_b: float | None,
    before: float,
    budget_ms: float,
    setting: LatencySetting,
    K: int | None,
    say: Progress,
    max_candidates: int,
) -> list[tuple[FitResult, float]]:
    """The measured candidates of ``_fit_latency``'s search, in the order tried: (result, ms)."""
    ms1 = {r.path: 1 for r in costs.runs.values()}
    smallest = costs.plan_cost(total, ms1, K or 1)[0]
    top = min(total[0], macs_b) if macs_b is not None else total[0]
    points: list[tuple[int, float]] = [(total[0], before)]  # (MACs, ms), the original included
    tried: list[tuple[FitResult, float]] = []
    plans: set[str] = set()
    target = max(smallest, min(top, total[0] * budget_ms / before * 0.97))
    while len(tried) < max_candidates:
        try:
            res = apply(target, params_b)
        except BudgetError:
            if target <= smallest * 1.001:
                raise
            target = smallest
            continue
        key = repr(sorted((p, c.m, dict(c.options).get("K")) for p, c in res.plan.choices.items()))
        if key in plans:
            break
        plans.add(key)
        say(f"measuring candidate {len(tried) + 1}: {format_count(res.macs_after)} MACs")
        ms = measure_latency(res.model, res.input_size, setting)
        tried.append((res, ms))
        points.append((res.macs_after, ms))
        ok = [(m, t) for m, t in points if t <= budget_ms]
        if ok and max(ok)[1] >= 0.93 * budget_ms:
            break
        over = [(m, t) for m, t in points if t > budget_ms]
        low = max(ok) if ok else None
        high = min((p for p in over if low is None or p[0] > low[0]), default=None)
        aim = 0.97 * budget_ms
        if low is not None and high is not None:
            target = low[0] + (aim - low[1]) * (high[0] - low[0]) / (high[1] - low[1])
        else:  # every plan so far is too slow: follow the slope of the two cheapest down
            (m_a, t_a), (m_b, t_b) = sorted(points)[:2]
            slope = (t_b - t_a) / (m_b - m_a) if m_b != m_a else 0.0
            target = m_a - (t_a - aim) / slope if slope > 0 else m_a * aim / t_a
            if res.macs_after <= smallest * 1.001 or m_a <= smallest * 1.001:
                break  # the smallest plan itself is too slow
        target = max(smallest, min(top, target))
    return tried


def _row(run: Run, m: int, layer: str | None, K: int | None, layer_cost: tuple[int, int] | None) -> RunRow:
    mb, pb = sum(v or 0 for v in run.macs), sum(run.params)
    ma = sum(v or 0 for v in run.macs[:m]) + (layer_cost[0] if layer_cost else 0)
    pa = sum(run.params[:m]) + (layer_cost[1] if layer_cost else 0)
    return RunRow(run.path, run.block_class, run.input_shape, run.r, m, layer, K, mb, ma, pb, pa)


def condense(
    model: nn.Module,
    macs: str | float | Budget | None = None,
    params: str | float | Budget | None = None,
    input_size: Sequence[int] | None = None,
    **options: Any,
) -> nn.Module:
    """The condensed model: ``fit(...)`` and return its module (the paper's default plan without budgets)."""
    return fit(model, macs=macs, params=params, input_size=input_size, **options).model
