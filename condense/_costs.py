"""One cost model for plans: MACs and parameters of a plan's model from counts already made.

In: the original model and its ``FindResult`` (which counted every block of every run). Out: the cost of
the layer a ``RunChoice`` puts in place of ``blocks[m:]`` (the real layer, built by the rewrite's own
builder and counted once per distinct choice), and a plan's estimated total: the original's totals minus
the replaced blocks plus the new layers. Used by ``fit`` (to choose m and K) and by the search (to skip
plans far over budget). Never: stands in for a measurement where a budget is checked: ``fit`` and the
search count the rewritten model itself before they report it.
"""

from __future__ import annotations

import json
from typing import Mapping

import torch
from torch import nn

from ._count import count_module
from ._errors import CondenseError
from .graph import FindResult, Run, RunChoice
from .graph import build_layer, default_factory, inner_layer


class PlanCosts:
    """Costs of replacement layers and plans for ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, found: FindResult | None = None, runs: Mapping[str, Run] | None = None):
        self.model = model
        self.runs = dict(runs) if runs is not None else {r.path: r for r in found.runs}
        self._cache: dict[str, tuple[int, int]] = {}

    def layer_cost(self, path: str, choice: RunChoice) -> tuple[int, int]:
        """MACs and parameters of the layer ``choice`` builds for run ``path`` (at the width block m reads;
        ``m`` changes the cost only in growing runs, whose layer adds a projection to the run's width)."""
        run = self.runs[path]
        m = choice.m if run.growing else 1
        key = json.dumps([path, m, choice.layer, choice.init, dict(choice.options)], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = self._count(
                run, RunChoice(m=m, layer=choice.layer, options=choice.options, init=choice.init)
            )
        return self._cache[key]

    def _count(self, run: Run, choice: RunChoice) -> tuple[int, int]:
        layer = build_layer(run, choice, self.model, default_factory).eval()
        x = torch.randn(1, run.channels_at(choice.m), *run.input_shape[1:])
        if run.layout == "NCHW":
            return count_module(layer, x)
        # a channels-last run: count the PDE layer on NCHW maps, and a copied initial-guess block by the count
        # find_runs made of it in the model (the adapters only permute)
        inner = inner_layer(layer)
        block = getattr(inner, "init_block", None)
        if block is not None:
            bare = RunChoice(m=choice.m, layer=choice.layer, options=choice.options, init="input")
            macs, params = count_module(inner_layer(build_layer(run, bare, self.model, default_factory)).eval(), x)
            block_macs = run.macs[choice.m]
            if block_macs is None:
                raise CondenseError(
                    f"run '{run.path}' has layout {run.layout} and an uncounted block", "use init='input'"
                )
            return macs + block_macs, params + sum(p.numel() for p in block.parameters())
        return count_module(inner, x)

    def estimate(
        self, total: tuple[int, int], choices: Mapping[str, RunChoice], uncounted_as_zero: bool = False
    ) -> tuple[int, int] | None:
        """``total`` (the original's MACs, params) with each run of ``choices`` replaced; None when a
        replaced block was not counted (nothing to subtract), or with ``uncounted_as_zero`` such a block
        subtracts 0 MACs (fit's rule: it counts the rewritten model before it reports a plan)."""
        macs, params = total
        for path, choice in choices.items():
            run = self.runs[path]
            if choice.m >= run.r:
                continue
            removed = run.macs[choice.m :]
            if any(v is None for v in removed):
                if not uncounted_as_zero:
                    return None
                removed = [v or 0 for v in removed]
            lm, lp = self.layer_cost(path, choice)
            macs += lm - sum(removed)
            params += lp - sum(run.params[choice.m :])
        return int(macs), int(params)
