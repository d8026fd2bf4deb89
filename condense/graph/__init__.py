"""The graph engine: trace a model, find runs of repeated same-resolution blocks, rewrite them.

``find_runs(model, (3, 224, 224))`` changes nothing and returns a ``FindResult`` of ``Run`` records;
``rewrite(model, found, {"layer3": RunChoice(m=1)})`` returns a new module in which each planned run keeps
``m`` blocks and ends in one PDE layer (``RewriteResult(module, records)``; a run that grows its channels
ends in a ``GrowingTail``: the layer plus a 1x1 projection to the missing channels).
``build_layer(run, choice, model)`` is the layer the rewrite would put into one run (the cost model and the
supernet build theirs with it), ``inner_layer`` the PDE layer inside its adapters, ``parent_and_name`` where
a submodule sits.
"""

from ._find import FindResult, Run, find_runs
from ._grow import GrowingTail
from ._rewrite import (
    ChannelsFirstAdapter,
    ChannelsLastAdapter,
    CondensedGraphModule,
    RewriteRecord,
    RewriteResult,
    RunChoice,
    Skip,
    build_layer,
    default_factory,
    inner_layer,
    parent_and_name,
    rewrite,
)
from ._trace import CondenseTracer, register_leaf_module, trace

__all__ = [
    "find_runs",
    "FindResult",
    "Run",
    "rewrite",
    "RunChoice",
    "RewriteResult",
    "RewriteRecord",
    "build_layer",
    "default_factory",
    "inner_layer",
    "parent_and_name",
    "Skip",
    "ChannelsLastAdapter",
    "ChannelsFirstAdapter",
    "CondensedGraphModule",
    "GrowingTail",
    "trace",
    "register_leaf_module",
    "CondenseTracer",
]
