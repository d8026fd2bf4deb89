"""The Torch-Pruning arms of ``condense.bench.versus``: channel pruning as a user of ``torch-pruning`` does it.

In: a trained model, its input size, a MAC target and an importance name (``l1``: ``MagnitudeImportance(p=1)``;
``group``: ``GroupMagnitudeImportance(p=2)``, the group-norm importance of the DepGraph paper). Out: a pruned
copy whose MACs, counted by ``condense.macs_and_params`` (the one counter every arm is measured with), land
at the target (``prune_to_macs``: within ``TOLERANCE``, under it when possible), and the uniform per-layer
ratio that gave them. Never: prunes
channels by hand (every cut is Torch-Pruning's ``BasePruner.step``), touches the classifier's outputs
(``ignored_layers``), or changes the model it is given.

The ratio is found by bisection: MACs fall as the ratio rises (a step function: channels are whole), so
``PRUNE_STEPS`` halvings pin the step that crosses the target; each try prunes a fresh copy once
(one-shot, no regularisation or iterative steps).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

from torch import nn

from .. import _width
from .._count import macs_and_params
from .._errors import BudgetError, CondenseError
from .._width import IMPORTANCES, classifier_layers  # noqa: F401 - one definition, in the library (width in a plan)

PRUNE_STEPS = 14
TOLERANCE = 0.02
MAX_RATIO = 0.9  # above ~0.93 Torch-Pruning leaves layers whole rather than cut them to no channel: MACs rise again
INSTALL_HINT = 'install it with: pip install "condense[versus]"'


def torch_pruning():
    """The ``torch_pruning`` module, or a one-line error saying how to install it (``condense._width``'s)."""
    return _width.torch_pruning(INSTALL_HINT)


def importance(name: str):
    """Torch-Pruning's importance criterion called ``name`` (``IMPORTANCES``; ``condense._width.importance``)."""
    return _width.importance(name, INSTALL_HINT)


@dataclasses.dataclass(frozen=True)
class Pruned:
    """A pruned model, its counts (``macs_and_params``), the ratio Torch-Pruning was given, and the tries."""

    model: nn.Module
    macs: int
    params: int
    ratio: float
    tries: int

    def record(self) -> dict[str, Any]:
        return {"pruning_ratio": round(self.ratio, 6), "bisection_tries": self.tries}


def prune_once(
    model: nn.Module, input_size: Sequence[int], ratio: float, criterion: str, multiple: int = 1
) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning at one uniform ``ratio`` (one-shot, classifier kept): the
    library's own ``condense._width.prune`` with one share; ``multiple``: channel counts kept in multiples of it
    (``condense._width.kept_channels``; 1: Torch-Pruning's counts)."""
    torch_pruning()  # not installed: the versus install hint
    spec = _width.WidthSpec({_width.REST: ratio}, criterion, multiple)
    try:
        net, _record = _width.prune(copy.deepcopy(model).cpu(), tuple(int(s) for s in input_size), spec, ())
    except CondenseError as err:
        raise CondenseError(err.message, "leave out the tp-* arms (--arms)") from err
    return net


def prune_to_macs(
    model: nn.Module,
    input_size: Sequence[int],
    target: float,
    criterion: str,
    steps: int = PRUNE_STEPS,
    tolerance: float = TOLERANCE,
    multiple: int = 1,
) -> Pruned:
    """The model pruned at the uniform ratio whose MACs (``macs_and_params``) land at ``target``: the largest
    count at or under it when that is within ``tolerance`` (relative) of it, else the nearest count over it
    if that one is within ``tolerance``, else the nearer of the two (channels are whole, so a uniform ratio
    moves the MACs in steps of a few percent on small nets)."""
    size = tuple(int(s) for s in input_size)
    macs0, params0 = macs_and_params(model, size)
    if macs0 <= target:
        return Pruned(copy.deepcopy(model), macs0, params0, 0.0, 0)
    lo, hi, tries = 0.0, MAX_RATIO, 1
    net = prune_once(model, size, hi, criterion, multiple)
    macs, params = macs_and_params(net, size)
    if macs > target:  # a budget this arm cannot reach: infeasible in the table, as for the depth arms
        raise BudgetError(
            f"Torch-Pruning at ratio {hi} leaves {macs / 1e6:.2f}M MACs, over the target {target / 1e6:.2f}M",
            "raise the budget",
        )
    under, over = Pruned(net, macs, params, hi, 0), Pruned(copy.deepcopy(model), macs0, params0, 0.0, 0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        net = prune_once(model, size, mid, criterion, multiple)
        tries += 1
        macs, params = macs_and_params(net, size)
        if macs <= target:
            hi, under = mid, Pruned(net, macs, params, mid, 0)
        else:
            lo, over = mid, Pruned(net, macs, params, mid, 0)
    if under.macs >= (1 - tolerance) * target:
        best = under
    elif over.macs <= (1 + tolerance) * target:
        best = over
    else:
        best = min((under, over), key=lambda p: abs(p.macs - target))
    return dataclasses.replace(best, tries=tries)
