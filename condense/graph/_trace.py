"""Symbolic tracing of a model into a torch.fx graph whose nodes carry shapes and their owning modules.

In: any nn.Module and one example input. Out: a ``torch.fx.GraphModule`` built on a deep copy of the model,
every node with ``meta['tensor_meta']`` (shape propagation) and, for nodes made inside a module's forward,
``meta['nn_module_stack']`` (``{key: (qualified_name, type)}``, outermost first). Never: mutates the input
model (LeViT-style models cache tensors in eval mode, so the same instance is never traced twice).

Leaf modules (not traced through): torch.nn built-ins (fx default), timm's no-trace modules, every
``PDELayer`` and whatever the user registers with :func:`register_leaf_module`. timm's no-trace functions
are auto-wrapped, exactly as ``timm.layers.create_feature_extractor`` does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .._errors import CondenseError
from ..pde._base import PDELayer

_USER_LEAVES: set[type[nn.Module]] = set()


def register_leaf_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Treat every instance of ``cls`` as one opaque node when tracing (usable as a class decorator).

    Use it for modules whose forward has data-dependent control flow: the module becomes a single
    ``call_module`` node, so it can still be a block of a run or sit anywhere in the model.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CondenseError(f"register_leaf_module needs an nn.Module subclass, got {cls!r}")
    _USER_LEAVES.add(cls)
    return cls


def _leaf_types() -> tuple[type, ...]:
    import timm.models  # noqa: F401 - heavy; timm registers its no-trace modules when its model modules load
    from timm.layers import get_notrace_modules

    types: set[type] = {PDELayer, *_USER_LEAVES}
    types.update(get_notrace_modules())
    return tuple(types)


def _autowrap_functions() -> tuple[Any, ...]:
    import timm.models  # noqa: F401 - heavy (see _leaf_types)
    from timm.layers import get_notrace_functions

    return tuple(f for f in get_notrace_functions() if callable(f))


class CondenseTracer(fx.Tracer):
    """fx tracer with condense's leaf rules; remembers which module was being traced when tracing failed."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=_autowrap_functions())
        self._leaves = _leaf_types()
        self._path_stack: list[tuple[str, type]] = []
        self.failed_at: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        self._path_stack.append((self.path_of_module(m), type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # innermost module on the way out
                self.failed_at = self._path_stack[-1]
            raise
        finally:
            self._path_stack.pop()


class _NodeError(RuntimeError):
    pass


class _ShapeProp(fx.Interpreter):
    """Shape propagation (like torch.fx's ShapeProp, which prints tracebacks): sets meta['tensor_meta']."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.failed: fx.Node | None = None

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as err:
            self.failed = n
            raise _NodeError(str(err)) from err
        found = False

        def meta(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        value = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = value
        return result


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else type(err).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


def _trace(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    train: bool | None = False,
    copy_model: bool = True,
    shape_prop: bool = True,
) -> tuple[fx.GraphModule, nn.Module]:
    """Trace a (deep copy of) ``model``; returns ``(graph_module, traced_root)``.

    ``train``: the mode the copy is put in before tracing (``None`` keeps the model's mode). The graph
    module shares its leaf modules with ``traced_root``, which keeps the non-leaf modules (blocks).
    """
    if not isinstance(model, nn.Module):
        raise CondenseError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise CondenseError(f"expected an example input tensor, got {type(example_input).__name__}")
    root = copy.deepcopy(model) if copy_model else model
    if train is not None:
        root.train(train)
    tracer = CondenseTracer()
    name = type(model).__name__
    try:
        graph = tracer.trace(root)
    except Exception as err:  # noqa: BLE001 - any tracing failure becomes one domain error
        where = tracer.failed_at
        if where is not None and where[0]:
            loc, cls = where[0], where[1].__name__
            raise CondenseError(
                f"cannot trace {name}: module '{loc}' ({cls}) failed: {_first_line(err)}",
                f"make the data-dependent control flow in {cls} static, or mark it as a leaf with "
                f"condense.graph.register_leaf_module({cls})",
            ) from err
        raise CondenseError(
            f"cannot trace {name}: its own forward failed: {_first_line(err)}",
            "make the data-dependent control flow in the model's forward static",
        ) from err
    gm = fx.GraphModule(root, graph, name)
    gm.train(root.training)
    if not shape_prop:
        return gm, root
    prop = _ShapeProp(gm)
    try:
        with torch.no_grad():
            prop.run(example_input)
    except Exception as err:  # noqa: BLE001
        where = module_path_stack(prop.failed) if prop.failed is not None else ()
        loc = f" in module '{where[-1]}'" if where else ""
        cause = err.__cause__ if isinstance(err, _NodeError) and err.__cause__ else err
        raise CondenseError(
            f"{name} does not run on an input of shape {tuple(example_input.shape)}{loc}: {_first_line(cause)}",
            "pass an input size the model accepts (e.g. its default image size)",
        ) from err
    return gm, root


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """Deep-copy ``model`` (in eval mode), trace it and propagate ``example_input``'s shapes.

    Every node gets ``meta['tensor_meta']``; nodes created inside a module get ``meta['nn_module_stack']``.
    Raises ``CondenseError`` naming the module that could not be traced.
    """
    return _trace(model, example_input, train=False)[0]


def module_path_stack(node: fx.Node) -> tuple[str, ...]:
    """Qualified names of the modules ``node`` was created in, outermost first (empty at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return tuple(v[0] for v in stack.values())


def tensor_shape(node: Any) -> tuple[int, ...] | None:
    """Shape recorded by shape propagation when ``node`` produced a single tensor, else None."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None
