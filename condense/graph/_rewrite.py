"""Replace the tail of runs with one PDE layer each. Never mutates its input model.

In: a model, its runs (``find_runs``), a plan ``{run path: RunChoice}``. Out: ``RewriteResult(module,
records)`` - a new, trainable module plus one record per run.

For a run with m < r kept blocks, ``blocks[:m]`` stay (with their weights), ``blocks[m:]`` go, and one layer
``layer_factory(choice.layer, channels=C, init_block=..., kernel_size=k, **choice.options)`` reads block
m-1's output and feeds whatever read block r-1's output. Three ways to do it, tried in this order per run:

* ``sequential`` - the blocks are consecutive children of a plain ``nn.Sequential`` that runs through its
  own forward (``Run.in_sequential``): that Sequential (in a deep copy) loses the removed children and
  gets the layer under the name of the first removed block, e.g. ``layer3.1``. The result stays a
  timm-like module; state_dict keys are the original ones minus the removed blocks plus
  ``<first removed block>.*`` for the layer.
* ``inplace`` - other parents (custom stages looping over a ModuleList, ``self.b1(x); self.b2(x)``, ...):
  the first removed block is swapped for the layer and the others for ``Skip`` (returns its first input,
  no parameters), so the same keys as above. The edit is checked on a trace of the result: the layer must
  read block m-1's output and feed exactly what block r-1 fed.
* ``graph`` - when that check fails (e.g. a block called with extra arguments, or returning a tuple):
  the whole result becomes a ``CondensedGraphModule`` (torch.fx, one graph for train and one for eval
  mode, so timm's drop-path still switches) in which the removed blocks' nodes are replaced by one
  ``call_module`` node of the layer; modules keep their original paths, so keys are as above.

Growing runs (``Run.growing``) get a ``GrowingTail`` (the layer at ``Run.channels_at(m)`` channels plus a
1x1 projection to the missing ones, ``condense.graph._grow``) edited in the same ways; a dense run's
tail replaces block m in the parent that loops over the blocks (DenseNet's ``DenseBlock``) and the other
removed blocks are dropped from it (method ``sequential``), checked by running the result. Growing
blocks change the width, so they are never the layer's initial guess (``init`` is ignored).

Channels-last runs (``Run.layout == "NHWC"``, e.g. Swin) get the layer wrapped in ``ChannelsLastAdapter``
(keys ``<first removed block>.layer.*``) and the init block wrapped in ``ChannelsFirstAdapter``.

Everything is deterministic: the same model, runs and plan give the same structure and state_dict keys
(what load relies on: rebuild the original, rewrite with the saved plan, load_state_dict).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from torch import fx, nn

from .._errors import CondenseError, ConfigError
from ..pde import create_layer, layer_class
from ._find import FindResult, Run, _analyse, _groups
from ._grow import GrowingTail
from ._trace import _trace, module_path_stack

Init = Literal["block", "input"]
Method = Literal["unchanged", "sequential", "inplace", "graph"]
LayerFactory = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class RunChoice:
    """What to do with one run: keep ``m`` blocks (anchor included; ``m == r`` leaves it untouched) and
    replace the rest by one layer of type ``layer`` built with ``options``; ``init="block"`` hands the
    layer a copy of the first replaced block (with its weights) as the initial guess, ``"input"`` none."""

    m: int
    layer: str = "global"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init: Init = "block"

    def __post_init__(self) -> None:
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise ConfigError(f"m={self.m!r} must be an integer >= 1", "m counts the kept blocks, anchor included")
        if not isinstance(self.layer, str) or not self.layer:
            raise ConfigError(f"layer={self.layer!r} must be a layer type name")
        if self.init not in ("block", "input"):
            raise ConfigError(f"init={self.init!r} is not one of 'block', 'input'")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping, got {type(self.options).__name__}")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"m": self.m, "layer": self.layer, "options": dict(self.options), "init": self.init}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunChoice":
        unknown = sorted(set(data) - {"m", "layer", "options", "init"})
        if unknown:
            raise ConfigError(f"unknown run choice field(s): {', '.join(unknown)}", "fields: m, layer, options, init")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RewriteRecord:
    """What a rewrite did to one run. ``inserted`` is the new layer's module path in the result (None when
    the run is unchanged); ``method`` is how it was done (see the module docstring)."""

    path: str
    r: int
    m: int
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    inserted: str | None
    layer_type: str | None
    method: Method
    params_removed: int
    params_added: int


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    module: nn.Module
    records: tuple[RewriteRecord, ...]

    def summary(self) -> str:
        lines = []
        for rec in self.records:
            if rec.method == "unchanged":
                lines.append(f"{rec.path or '<root>'}: unchanged (m=r={rec.r})")
            else:
                lines.append(
                    f"{rec.path or '<root>'}: kept {rec.m}/{rec.r}, replaced {', '.join(rec.removed)} "
                    f"by {rec.layer_type} at '{rec.inserted}' ({rec.method}; "
                    f"-{rec.params_removed:,} +{rec.params_added:,} params)"
                )
        return "\n".join(lines) if lines else "no runs"


# --- helper modules ---------------------------------------------------------------------------------


class Skip(nn.Module):
    """Stands where a removed block was when its parent is not a Sequential: returns its first input."""

    def forward(self, x, *args, **kwargs):
        return x


class ChannelsLastAdapter(nn.Module):
    """Runs a channels-first (N, C, H, W) layer inside a channels-last (N, H, W, C) run (e.g. Swin)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ChannelsFirstAdapter(nn.Module):
    """Runs a channels-last block on (N, C, H, W) input: how a Swin block is handed over as init_block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CondensedGraphModule(fx.GraphModule):
    """fx GraphModule holding a train-mode and an eval-mode graph; ``train(mode)`` switches between them
    (so mode-dependent code that tracing bakes in, like timm's drop-path, keeps working)."""

    def __init__(self, root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph, class_name: str = "GraphModule"):
        super().__init__(root, train_graph, class_name)
        for node in eval_graph.nodes:  # modules only the eval graph uses (normally none)
            if node.op in ("call_module", "get_attr"):
                _copy_attr(root, self, node.target)
        self.train_graph = train_graph
        self.eval_graph = eval_graph
        self.training = True

    def train(self, mode: bool = True):
        graph = self.train_graph if mode else self.eval_graph
        if self.graph is not graph:
            self.graph = graph
        return super().train(mode)

    def _deepcopy_init(self):
        # GraphModule.__deepcopy__ deep-copies __dict__ (both graphs included) and calls this to rebuild
        def init(res, fake_mod, _graph):
            state = fake_mod.__dict__
            CondensedGraphModule.__init__(res, fake_mod, state["train_graph"], state["eval_graph"], type(self).__name__)
            res.train(state["training"])

        return init


def _copy_attr(src: nn.Module, dst: nn.Module, target: str) -> None:
    *prefix, field = target.split(".")
    for item in prefix:
        f = getattr(src, item)
        t = getattr(dst, item, None)
        if f is t:
            return
        if t is None:
            t = nn.Module()
            setattr(dst, item, t)
        src, dst = f, t
    if not hasattr(dst, field) or getattr(dst, field) is not getattr(src, field):
        orig = getattr(src, field)
        if isinstance(orig, torch.Tensor) and not isinstance(orig, nn.Parameter):
            dst.register_buffer(field, orig)
        else:
            setattr(dst, field, orig)


# --- planning ---------------------------------------------------------------------------------------


def _as_choice(path: str, value: Any) -> RunChoice:
    if isinstance(value, RunChoice):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RunChoice(m=value)
    if isinstance(value, Mapping):
        return RunChoice.from_dict(value)
    raise ConfigError(
        f"plan entry for run '{path}' must be a RunChoice, an int m or a dict, got {type(value).__name__}"
    )


def parent_and_name(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that holds the submodule at ``path`` (dotted) and its name there."""
    parent, _, name = path.rpartition(".")
    return (root.get_submodule(parent) if parent else root), name


def default_factory(name: str, channels: int, init_block: nn.Module | None = None, **options: Any) -> nn.Module:
    """The layer factory ``rewrite`` uses unless given one: ``condense.pde.create_layer`` (``kernel_size``
    passed on only to layers that have a kernel)."""
    if "kernel_size" in options and "kernel_size" not in layer_class(name).config_cls.__dataclass_fields__:
        options.pop("kernel_size")  # sized from the run only for layers that have a kernel
    return create_layer(name, channels, init_block=init_block, **options)


def inner_layer(layer: nn.Module) -> nn.Module:
    """The PDE layer inside the adapters a rewrite may wrap it in."""
    while isinstance(layer, (ChannelsLastAdapter, GrowingTail)):
        layer = layer.layer
    return layer


def build_layer(run: Run, choice: RunChoice, source: nn.Module, factory: LayerFactory = default_factory) -> nn.Module:
    """The layer ``rewrite`` puts into ``run`` for ``choice``, built by ``factory`` from ``source`` (the model
    the run was found in): at the run's width after ``choice.m`` blocks, with a copy of block m as the initial
    guess for ``init="block"``, on block m's device and dtype, wrapped for channels-last runs
    (``ChannelsLastAdapter``) and growing runs (``GrowingTail``); ``inner_layer`` unwraps it."""
    block = source.get_submodule(run.blocks[choice.m])
    init_block = None
    channels = run.channels_at(choice.m)
    if choice.init == "block" and not run.growing:  # a growing block changes the width: no initial guess
        init_block = copy.deepcopy(block)
        if run.layout == "NHWC":
            init_block = ChannelsFirstAdapter(init_block)
    options = dict(choice.options)
    if run.layer_kernel_size is not None:
        options.setdefault("kernel_size", run.layer_kernel_size)
    try:
        layer = factory(choice.layer, channels=channels, init_block=init_block, **options)
    except CondenseError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CondenseError(
            f"building a {choice.layer!r} layer for run '{run.path}' failed: {err}",
            "check the layer options in the plan",
        ) from err
    if not isinstance(layer, nn.Module):
        raise CondenseError(f"layer factory returned {type(layer).__name__} for run '{run.path}', not an nn.Module")
    ref = next(iter(block.parameters()), None)
    if ref is not None:
        layer = layer.to(device=ref.device)
        if ref.dtype != torch.float32 and ref.is_floating_point():
            layer = layer.to(dtype=ref.dtype)
    if run.layout == "NHWC":
        layer = ChannelsLastAdapter(layer)
    if run.growing and run.output_shape[0] > channels:
        layer = GrowingTail(layer, channels, run.output_shape[0] - channels, run.kind)  # type: ignore[arg-type]
        if ref is not None:
            layer = layer.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    layer.train(block.training)
    return layer


def _check_run(model: nn.Module, mods: dict[str, nn.Module], run: Run) -> None:
    for b in run.blocks:
        if b not in mods:
            raise CondenseError(
                f"run '{run.path}' names block '{b}', which this model does not have",
                "find the runs on this very model (condense.graph.find_runs)",
            )
    if type(mods[run.blocks[-1]]).__name__ != run.block_class:
        raise CondenseError(
            f"run '{run.path}': block '{run.blocks[-1]}' is a "
            f"{type(mods[run.blocks[-1]]).__name__}, not a {run.block_class}",
            "find the runs on this very model (condense.graph.find_runs)",
        )


def _is_plain_sequential(parent: nn.Module, names: list[str]) -> bool:
    if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
        return False
    keys = list(parent._modules)
    if any(n not in keys for n in names):
        return False
    i = keys.index(names[0])
    return keys[i : i + len(names)] == names


def _edit_sequential(parent: nn.Module, removed: list[str], layer: nn.Module) -> None:
    new: OrderedDict[str, nn.Module | None] = OrderedDict()
    for key, mod in parent._modules.items():
        if key == removed[0]:
            new[key] = layer
        elif key not in removed:
            new[key] = mod
    parent._modules = new  # type: ignore[assignment]


def _edit_inplace(parent: nn.Module, removed: list[str], layer: nn.Module) -> dict[str, nn.Module]:
    """Swap in the layer and Skips; returns the replaced modules so the edit can be undone."""
    old = {}
    for i, key in enumerate(removed):
        old[key] = parent._modules[key]
        parent._modules[key] = layer if i == 0 else Skip()
    return old


# --- checking in-place edits and graph surgery ------------------------------------------------------


def _user_signature(node: fx.Node) -> tuple:
    if node.op == "call_module":
        tgt = str(node.target)
    elif node.op == "output":
        tgt = "output"
    else:
        tgt = getattr(node.target, "__name__", str(node.target))
    stack = module_path_stack(node)
    return (node.op, tgt, stack[-1] if stack else "")


def _users_of_output(gm: fx.GraphModule, path: str) -> list[tuple] | None:
    block = _analyse(gm.graph).get(path)
    if block is None or block.output is None:
        return None
    return sorted(_user_signature(u) for u in block.output.users if u not in block.nodes)


def _inplace_ok(gm_old: fx.GraphModule, gm_new: fx.GraphModule, run: Run, m: int) -> bool:
    blocks_new = _analyse(gm_new.graph)
    groups_new, _ = _groups(gm_new.graph)
    if any(p in groups_new for p in run.blocks[m + 1 :]):
        return False
    layer = blocks_new.get(run.blocks[m])
    prev = blocks_new.get(run.blocks[m - 1])
    if layer is None or prev is None or layer.output is None or prev.output is None:
        return False
    if layer.inputs != [prev.output]:
        return False
    if len(layer.nodes) == 1:  # a leaf layer: it must be called with exactly block m-1's output
        (call,) = layer.nodes
        if call.op != "call_module" or call.args != (prev.output,) or call.kwargs:
            return False
    want = _users_of_output(gm_old, run.blocks[-1])
    got = sorted(_user_signature(u) for u in layer.output.users if u not in layer.nodes)
    return want is not None and want == got


def _surgery(graph: fx.Graph, run: Run, m: int, layer_type: type) -> None:
    """Replace the nodes of ``run.blocks[m:]`` in ``graph`` by one call of the module at ``run.blocks[m]``."""
    blocks = _analyse(graph)
    first, last = blocks.get(run.blocks[m]), blocks.get(run.blocks[-1])
    if first is None or last is None or len(first.inputs) != 1 or last.output is None:
        raise CondenseError(
            f"cannot rewrite run '{run.path}': its blocks are not a single-input chain in the graph",
            "keep this run (m = r) or make its blocks take one tensor and return one tensor",
        )
    doomed = set().union(*(blocks[p].nodes for p in run.blocks[m:] if p in blocks))
    order = [n for n in graph.nodes if n in doomed]
    with graph.inserting_before(order[0]):
        new = graph.call_module(run.blocks[m], (first.inputs[0],))
    stack = {}
    for key, val in (order[0].meta.get("nn_module_stack") or {}).items():
        if val[0] == run.blocks[m]:
            break
        stack[key] = val
    stack[run.blocks[m]] = (run.blocks[m], layer_type)
    new.meta["nn_module_stack"] = stack
    last.output.replace_all_uses_with(new, delete_user_cb=lambda u: u not in doomed)
    for n in reversed(order):
        if n.users:
            raise CondenseError(
                f"cannot rewrite run '{run.path}': node '{n.name}' of a removed block is read outside the run",
                "keep this run (m = r)",
            )
        graph.erase_node(n)
    graph.lint()


def _graph_rewrite(
    new: nn.Module, items: list[tuple[Run, RunChoice, nn.Module]], x: torch.Tensor, name: str
) -> nn.Module:
    training = new.training
    try:
        train_gm, _ = _trace(new, x, train=True, copy_model=False, shape_prop=False)
        eval_gm, _ = _trace(new, x, train=False, copy_model=False, shape_prop=False)
    finally:
        new.train(training)
    for run, choice, layer in items:
        for gm in (train_gm, eval_gm):
            _surgery(gm.graph, run, choice.m, type(layer))
    for run, choice, layer in items:
        parent, key = parent_and_name(new, run.blocks[choice.m])
        parent._modules[key] = layer
        for p in run.blocks[choice.m + 1 :]:
            par, k = parent_and_name(new, p)
            par._modules[k] = Skip()
    out = CondensedGraphModule(new, train_gm.graph, eval_gm.graph, name)
    out.train(training)
    return out


# --- entry point ------------------------------------------------------------------------------------


def rewrite(
    model: nn.Module,
    runs: FindResult | Iterable[Run],
    plan: Mapping[str, RunChoice | int | Mapping],
    layer_factory: LayerFactory | None = None,
    example_input: torch.Tensor | None = None,
    *,
    check: bool = True,
) -> RewriteResult:
    """Return a new module in which every run of ``plan`` keeps ``m`` blocks and ends in one new layer.

    ``runs``: a ``FindResult`` (or its runs) found on this model. ``plan``: run path -> ``RunChoice`` (an
    int is ``RunChoice(m=int)``); runs missing from the plan stay untouched. ``layer_factory`` has
    ``condense.pde.create_layer``'s signature ``(name, channels, init_block=None, **options)`` and gets
    ``kernel_size`` (the run's conv kernel) unless the options set it. ``example_input`` (default: from the
    FindResult's input shape) is used to check in-place edits and for the graph fallback. ``model`` is
    never modified.
    """
    if isinstance(runs, FindResult):
        run_list = list(runs.runs)
        if example_input is None:
            p = next(iter(model.parameters()), None)
            example_input = torch.randn((1, *runs.input_shape), generator=torch.Generator().manual_seed(0))
            if p is not None and p.is_floating_point():
                example_input = example_input.to(p.device, p.dtype)
    else:
        run_list = list(runs)
    by_path = {r.path: r for r in run_list}
    if len(by_path) != len(run_list):
        raise CondenseError("two runs share a path", "pass the runs of one find_runs call")
    unknown = [p for p in plan if p not in by_path]
    if unknown:
        raise CondenseError(
            f"plan names unknown run(s): {', '.join(repr(p) for p in unknown)}",
            f"runs of this model: {', '.join(repr(p) for p in by_path) or 'none'}",
        )
    choices = {p: _as_choice(p, v) for p, v in plan.items()}
    factory = layer_factory or default_factory
    src_mods = dict(model.named_modules())

    records: dict[str, RewriteRecord] = {}
    todo: list[tuple[Run, RunChoice]] = []
    for run in run_list:
        choice = choices.get(run.path, RunChoice(m=run.r))
        if choice.m > run.r:
            raise ConfigError(
                f"run '{run.path}': m={choice.m} is more than its r={run.r} blocks", f"choose m in [1, {run.r}]"
            )
        _check_run(model, src_mods, run)
        if choice.m == run.r:
            records[run.path] = RewriteRecord(run.path, run.r, run.r, run.blocks, (), None, None, "unchanged", 0, 0)
            continue
        todo.append((run, choice))

    new = copy.deepcopy(model)
    layers = [(run, choice, build_layer(run, choice, model, factory)) for run, choice in todo]
    method: dict[str, Method] = {}
    undo: dict[str, tuple[nn.Module, dict[str, nn.Module]]] = {}
    for run, choice, layer in layers:
        removed = list(run.blocks[choice.m :])
        parent, _ = parent_and_name(new, removed[0])
        names = [p.rpartition(".")[2] for p in run.blocks]
        if run.kind == "dense":  # the parent loops over its children (DenseNet's DenseBlock): drop them
            _edit_sequential(parent, [p.rpartition(".")[2] for p in removed], layer)
            method[run.path] = "sequential"
        elif run.in_sequential and _is_plain_sequential(parent, names):
            _edit_sequential(parent, [p.rpartition(".")[2] for p in removed], layer)
            method[run.path] = "sequential"
        else:
            undo[run.path] = (parent, _edit_inplace(parent, [p.rpartition(".")[2] for p in removed], layer))
            method[run.path] = "inplace"

    inplace = [(run, choice, layer) for run, choice, layer in layers if method[run.path] == "inplace"]
    result: nn.Module = new
    if inplace and check:
        if example_input is None:
            raise CondenseError(
                "rewrite needs example_input to check edits of runs outside nn.Sequential",
                "pass example_input= or the FindResult itself",
            )
        failed = _failed_inplace(model, new, inplace, example_input)
        if failed:
            for run, _choice, _layer in failed:
                parent, old = undo[run.path]
                parent._modules.update(old)
                method[run.path] = "graph"
            result = _graph_rewrite(new, failed, example_input, type(model).__name__)

    dense = [(run, choice, layer) for run, choice, layer in layers if run.kind == "dense"]
    if dense and check:
        if example_input is None:
            raise CondenseError(
                "rewrite needs example_input to check the edits of dense runs",
                "pass example_input= or the FindResult itself",
            )
        _check_dense(model, result, dense, example_input)

    for run, choice, layer in layers:
        records[run.path] = RewriteRecord(
            path=run.path,
            r=run.r,
            m=choice.m,
            kept=run.blocks[: choice.m],
            removed=run.blocks[choice.m :],
            inserted=run.blocks[choice.m],
            layer_type=type(inner_layer(layer)).__name__,
            method=method[run.path],
            params_removed=sum(run.params[choice.m :]),
            params_added=sum(p.numel() for p in layer.parameters()),
        )
    return RewriteResult(result, tuple(records[r.path] for r in run_list))


def _check_dense(model: nn.Module, new: nn.Module, items, x: torch.Tensor) -> None:
    """A dense run's parent must loop over its children: after dropping the removed ones, each tail runs
    once per forward and the model's output keeps its shape."""
    calls = {run.path: 0 for run, _, _ in items}
    handles = []
    for run, _, layer in items:

        def hook(mod, args, out, path=run.path):
            calls[path] += 1

        handles.append(layer.register_forward_hook(hook))
    training = (model.training, new.training)
    model.eval()
    new.eval()
    try:
        with torch.no_grad():
            ref, out = model(x), new(x)
        err = None
    except Exception as exc:  # noqa: BLE001 - reported below with the run's name
        err, ref, out = exc, None, None
    finally:
        for h in handles:
            h.remove()
        model.train(training[0])
        new.train(training[1])
    for run, choice, _ in items:
        if err is not None or calls[run.path] != 1 or _shapes(ref) != _shapes(out):
            why = (
                f"the model fails after the edit ({type(err).__name__}: {err})"
                if err is not None
                else f"the new layer ran {calls[run.path]} time(s) and the output shape changed"
                if _shapes(ref) != _shapes(out)
                else f"the new layer ran {calls[run.path]} time(s), not once"
            )
            raise CondenseError(
                f"cannot rewrite dense run '{run.path}' (blocks "
                f"{run.blocks[choice.m]}..{run.blocks[-1]} dropped): {why}",
                f"keep this run (m = r = {run.r}); dense runs need a parent that loops over "
                "its children and concatenates their outputs, as timm's DenseBlock does",
            )


def _shapes(out) -> list:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in _shapes(o)]
    if isinstance(out, dict):
        return [s for o in out.values() for s in _shapes(o)]
    return []


def _failed_inplace(model: nn.Module, new: nn.Module, items, x: torch.Tensor):
    """The in-place edits whose traced dataflow is not the intended one (all of them if tracing fails)."""
    try:
        gm_new, _ = _trace(new, x, train=False, shape_prop=False)
    except CondenseError:
        return list(items)
    gm_old, _ = _trace(model, x, train=False, shape_prop=False)
    return [it for it in items if not _inplace_ok(gm_old, gm_new, it[0], it[1].m)]
