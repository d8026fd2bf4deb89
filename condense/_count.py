"""Counting multiply-accumulates (MACs) and parameters, in total and per module.

In: a model and an input size (or example tensors). Out: a pandas DataFrame (or plain ints). Never: any
change to the model (its training flags, buffers and parameters are left exactly as they were).

How MACs are counted
--------------------
Counting traces one forward pass (eval mode, ``torch.no_grad``) with fvcore's ``FlopCountAnalysis``,
whose "flops" are multiply-accumulates:

* Everywhere, fvcore's own rules are kept unchanged: one MAC per multiply-add in convolutions, linear
  layers, matmuls and einsums; batch norm, group/layer norm, adaptive average pooling and upsampling as
  fvcore counts them; activations and other elementwise ops cost 0. For a model without PDE layers the
  total is exactly ``FlopCountAnalysis(model, x).total()``.
* Inside PDE layers (modules that are instances of ``condense.pde.PDELayer``, and anything they call),
  the elementwise work that fvcore skips is counted too, per element of the op's output:

  - multiply, divide, add, subtract (including ``1 - x``, traced as ``rsub``), negate, reciprocal: 1 MAC;
  - fused multiply-add (``addcmul``): 1 MAC; ``addcdiv``: 2 MACs;
  - other pointwise math (``pow``, ``square``, ``sqrt``, ``rsqrt``, ``exp``, ``log``, ``abs``): 1 MAC;
  - sums and means: 1 MAC per *input* element;
  - on complex tensors: multiply and divide cost 4 MACs per element when both operands are complex and
    2 when one of them is real (or a number); add, subtract and negate cost 2 (whatever the other
    operand); reciprocal, ``addcmul`` and the other pointwise math cost 4; sums and means cost 2;
  - an FFT over ``n`` points (``n`` = product of the transformed sizes of the *signal*, i.e. the real
    side of a real FFT), real or complex, forward or inverse, costs ``n * log2(n)`` per transform,
    times the number of transforms (the batch of all other dimensions), rounded to an integer;
  - data movement costs 0: roll, pad, cat, slicing, reshapes, flips, ``real``/``imag``, fftshift;
  - activations (relu, sigmoid, tanh, silu, gelu, hardswish, softplus, clamp, ...) cost 0, as in fvcore;
  - arithmetic on integer tensors (shape arithmetic recorded by the tracer) costs 0.

  Data-movement ops and activations are also counted as 0 outside PDE layers (they are "handled", not
  "unsupported"); the elementwise arithmetic above counts 0 outside PDE layers.
* Custom ops registered by PDE layers with ``condense.pde._base.register_op_handle`` are counted by their
  own handles, wherever they appear.

MACs are for the whole batch (``batch_size=1`` by default, i.e. per image). Parameters are counted once
even when a tensor or module is shared.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from . import pde  # noqa: F401 - importing the layers fills the custom-op handle registry (op_handles)
from ._errors import CondenseError
from .pde._base import PDELayer, op_handles

with warnings.catch_warnings():  # importing fvcore warns (torch.jit.script is deprecated)
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

__all__ = ["count", "count_module", "macs_and_params", "unsupported_ops_in_pde_layers"]

Handle = Callable[[list, list], Any]

# --- op tables ------------------------------------------------------------------------------------

# Ops that only move or relabel data, or are activations: 0 MACs everywhere, but "handled".
_ZERO_OPS: tuple[str, ...] = (
    # data movement / views / creation
    "aten::roll",
    "aten::pad",
    "aten::constant_pad_nd",
    "aten::reflection_pad1d",
    "aten::reflection_pad2d",
    "aten::reflection_pad3d",
    "aten::replication_pad1d",
    "aten::replication_pad2d",
    "aten::replication_pad3d",
    "aten::_pad_circular",
    "aten::circular_pad1d",
    "aten::circular_pad2d",
    "aten::cat",
    "aten::concat",
    "aten::concatenate",
    "aten::stack",
    "aten::slice",
    "aten::narrow",
    "aten::select",
    "aten::index",
    "aten::index_select",
    "aten::gather",
    "aten::split",
    "aten::split_with_sizes",
    "aten::chunk",
    "aten::unbind",
    "aten::flip",
    "aten::repeat",
    "aten::repeat_interleave",
    "aten::tile",
    "aten::expand",
    "aten::expand_as",
    "aten::view",
    "aten::view_as",
    "aten::reshape",
    "aten::reshape_as",
    "aten::_unsafe_view",
    "aten::flatten",
    "aten::unflatten",
    "aten::squeeze",
    "aten::unsqueeze",
    "aten::permute",
    "aten::transpose",
    "aten::movedim",
    "aten::t",
    "aten::contiguous",
    "aten::clone",
    "aten::copy_",
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::to",
    "aten::type_as",
    "aten::unfold",
    "aten::real",
    "aten::imag",
    "aten::view_as_real",
    "aten::view_as_complex",
    "aten::complex",
    "aten::conj",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::_conj",
    "aten::fft_fftshift",
    "aten::fft_ifftshift",
    "aten::fft_fftfreq",
    "aten::fft_rfftfreq",
    "aten::zeros",
    "aten::zeros_like",
    "aten::ones",
    "aten::ones_like",
    "aten::empty",
    "aten::empty_like",
    "aten::full",
    "aten::full_like",
    "aten::new_zeros",
    "aten::new_ones",
    "aten::new_empty",
    "aten::new_full",
    "aten::fill_",
    "aten::zero_",
    "aten::arange",
    "aten::linspace",
    "aten::meshgrid",
    "aten::size",
    "aten::Int",
    "aten::ScalarImplicit",
    "aten::dropout",
    "aten::dropout_",
    "aten::masked_fill",
    "aten::where",
    # activations (as in fvcore: free)
    "aten::relu",
    "aten::relu_",
    "aten::relu6",
    "aten::relu6_",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::tanh",
    "aten::tanh_",
    "aten::silu",
    "aten::silu_",
    "aten::gelu",
    "aten::gelu_",
    "aten::hardswish",
    "aten::hardswish_",
    "aten::hardsigmoid",
    "aten::hardsigmoid_",
    "aten::hardtanh",
    "aten::hardtanh_",
    "aten::softplus",
    "aten::leaky_relu",
    "aten::leaky_relu_",
    "aten::elu",
    "aten::elu_",
    "aten::mish",
    "aten::mish_",
    "aten::clamp",
    "aten::clamp_",
    "aten::clamp_min",
    "aten::clamp_min_",
    "aten::clamp_max",
    "aten::clamp_max_",
)

# Elementwise arithmetic counted inside PDE layers: op -> (real cost, complex cost, mixed cost).
# "mixed" = complex output with one real operand (tensor or number).
_ELEMENTWISE: dict[str, tuple[int, int, int]] = {}
for _op, _costs in {
    "mul": (1, 4, 2),
    "div": (1, 4, 2),
    "add": (1, 2, 2),
    "sub": (1, 2, 2),
    "rsub": (1, 2, 2),
    "neg": (1, 2, 2),
    "reciprocal": (1, 4, 4),
    "addcmul": (1, 4, 4),
    "addcdiv": (2, 8, 8),
    "square": (1, 4, 4),
    "pow": (1, 4, 4),
    "sqrt": (1, 4, 4),
    "rsqrt": (1, 4, 4),
    "exp": (1, 4, 4),
    "log": (1, 4, 4),
    "abs": (1, 4, 4),
}.items():
    _ELEMENTWISE[f"aten::{_op}"] = _costs
    _ELEMENTWISE[f"aten::{_op}_"] = _costs
_ELEMENTWISE["aten::true_divide"] = _ELEMENTWISE["aten::div"]
_ELEMENTWISE["aten::multiply"] = _ELEMENTWISE["aten::mul"]

_REDUCTIONS: tuple[str, ...] = ("aten::sum", "aten::mean")

# FFTs: op -> (kind, default dims) with kind r2c (real signal in), c2r (real signal out) or c2c.
# default dims: an int tuple, or None meaning "all dims (or the last len(s) when s is given)".
_FFTS: dict[str, tuple[str, tuple[int, ...] | None]] = {}
for _pre, _kind in (
    ("fft", "c2c"),
    ("ifft", "c2c"),
    ("rfft", "r2c"),
    ("irfft", "c2r"),
    ("hfft", "c2r"),
    ("ihfft", "r2c"),
):
    _FFTS[f"aten::fft_{_pre}"] = (_kind, (-1,))
    _FFTS[f"aten::fft_{_pre}2"] = (_kind, (-2, -1))
    _FFTS[f"aten::fft_{_pre}n"] = (_kind, None)
del _op, _costs, _pre, _kind


# --- small helpers on TorchScript values ------------------------------------------------------------

_UNKNOWN = object()


def _shape(value) -> list[int] | None:
    try:
        if value.isCompleteTensor():
            return list(value.type().sizes())
    except RuntimeError:
        pass
    return None


def _numel(value) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 0


def _is_tensor(value) -> bool:
    return value.type().kind() == "TensorType"


def _is_floating(value) -> bool:
    """Float or complex tensor (integer tensors in traced graphs are shape arithmetic: free)."""
    t = value.type()
    if t.kind() != "TensorType":
        return False
    st = t.scalarType()
    return st is None or st in _FLOATING


_FLOATING = frozenset(
    {
        "Float",
        "Double",
        "Half",
        "BFloat16",
        "ComplexFloat",
        "ComplexDouble",
        "ComplexHalf",
        "Float8_e4m3fn",
        "Float8_e5m2",
    }
)


def _is_complex(value) -> bool:
    t = value.type()
    if t.kind() == "TensorType":
        st = t.scalarType()
        return bool(st) and st.startswith("Complex")
    return t.kind() == "ComplexType"


def _constant(value) -> Any:
    """The Python value of a constant (or list of constants) argument, or ``_UNKNOWN``."""
    node = value.node()
    kind = node.kind()
    if kind == "prim::Constant":
        return value.toIValue()
    if kind == "prim::ListConstruct":  # items that are not constants stay _UNKNOWN
        return [_constant(v) for v in node.inputs()]
    return _UNKNOWN


def _scope_names(value) -> list[str]:
    """Module names on the call stack of the node producing ``value`` ("" = the root)."""
    names = []
    for part in value.node().scopeName().split("/"):
        if part.startswith("__module."):
            part = part[len("__module.") :]
        elif part == "__module":
            part = ""
        names.append(part)
    return names


# --- handles ---------------------------------------------------------------------------------------


class _PDEScope:
    """Decides whether a traced node runs inside a PDE layer, from its scope name."""

    def __init__(self, pde_names: Iterable[str]):
        self.names = frozenset(pde_names)
        self._cache: dict[str, bool] = {}

    def __call__(self, value) -> bool:
        if not self.names:
            return False
        if "" in self.names:  # the whole model is a PDE layer
            return True
        scope = value.node().scopeName()
        hit = self._cache.get(scope)
        if hit is None:
            callers = _scope_names(value)
            hit = any(n in self.names for n in callers)
            if not hit and callers:  # ancestors by ownership of the innermost module
                parts = callers[-1].split(".")
                hit = any(".".join(parts[:k]) in self.names for k in range(1, len(parts)))
            self._cache[scope] = hit
        return hit


def _elementwise_handle(kind: str, in_pde: _PDEScope) -> Handle:
    real, cplx, mixed = _ELEMENTWISE[kind]

    def handle(inputs, outputs):
        if not outputs or not _is_floating(outputs[0]) or not in_pde(outputs[0]):
            return 0
        out = outputs[0]
        if not _is_complex(out):
            per = real
        else:
            operands = [
                v
                for v in inputs
                if _is_tensor(v) or v.type().kind() in ("FloatType", "IntType", "ComplexType", "NumberType")
            ]
            both_complex = sum(_is_complex(v) for v in operands[:2]) >= 2 or len(operands) < 2
            per = cplx if both_complex else mixed
        return per * _numel(out)

    return handle


def _reduction_handle(in_pde: _PDEScope) -> Handle:
    def handle(inputs, outputs):
        if not outputs or not _is_floating(inputs[0]) or not in_pde(outputs[0]):
            return 0
        return (2 if _is_complex(inputs[0]) else 1) * _numel(inputs[0])

    return handle


def _fft_handle(kind: str, in_pde: _PDEScope) -> Handle:
    fft_kind, default_dims = _FFTS[kind]
    one_dim = default_dims == (-1,)

    def handle(inputs, outputs):
        if not outputs or not in_pde(outputs[0]):
            return 0
        out_shape, in_shape = _shape(outputs[0]), _shape(inputs[0])
        if out_shape is None or in_shape is None:
            return 0
        ndim = len(out_shape)
        s = _constant(inputs[1]) if len(inputs) > 1 else None
        dims = _constant(inputs[2]) if len(inputs) > 2 else None
        s_given = s is not None  # _UNKNOWN also means "given, value not a constant"
        if one_dim:
            dims = [dims] if isinstance(dims, int) else dims
            if isinstance(s, int):
                s = [s]
        if dims is None or dims is _UNKNOWN or (isinstance(dims, list) and _UNKNOWN in dims):
            if default_dims is not None:
                dims = list(default_dims)
            elif isinstance(s, list):
                dims = list(range(-len(s), 0))
            else:
                dims = list(range(ndim))
        dims = [d % ndim for d in dims]
        sizes = [out_shape[d] for d in dims]
        if fft_kind == "r2c":  # the output's last transformed dim holds n // 2 + 1 bins
            last = dims[-1]
            if isinstance(s, list) and isinstance(s[-1], int) and s[-1] > 0:
                sizes[-1] = s[-1]
            elif not s_given or in_shape[last] // 2 + 1 == out_shape[last]:
                sizes[-1] = in_shape[last]
            else:
                sizes[-1] = 2 * (out_shape[last] - 1)
        n = math.prod(sizes)
        batch = math.prod(out_shape) // max(1, math.prod(out_shape[d] for d in dims))
        if n <= 1:
            return 0
        return int(round(batch * n * math.log2(n)))

    return handle


def _analysis(model: nn.Module, inputs: tuple[Tensor, ...]):
    """An fvcore FlopCountAnalysis of ``model`` on ``inputs`` with the condense handles set."""
    fv_defaults, pde_cls, custom = _DEFAULT_SUPPORTED_OPS, PDELayer, op_handles()
    pde_names = {name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, pde_cls)}
    in_pde = _PDEScope(pde_names)
    handles: dict[str, Handle | None] = {k: None for k in _ZERO_OPS if k not in fv_defaults}
    handles.update({k: _elementwise_handle(k, in_pde) for k in _ELEMENTWISE})
    handles.update({k: _reduction_handle(in_pde) for k in _REDUCTIONS})
    handles.update({k: _fft_handle(k, in_pde) for k in _FFTS})
    handles.update({k: h for k, h in custom.items() if k not in fv_defaults})
    analysis = FlopCountAnalysis(model, inputs)
    ignored = [k for k, h in handles.items() if h is None]
    analysis.set_op_handle(**{k: h for k, h in handles.items() if h is not None})
    analysis.set_op_handle(*[x for k in ignored for x in (k, None)])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis, pde_names


class _Frozen:
    """Context: eval mode + no_grad, every module's training flag restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        self.grad.__exit__(*exc)
        return False


def _run(model: nn.Module, inputs: tuple[Tensor, ...]):
    analysis, pde_names = _analysis(model, inputs)
    with _Frozen(model):
        analysis.total()  # runs the trace now, under eval + no_grad
    return analysis, pde_names


def _example_inputs(model: nn.Module, input_size: Sequence[int], batch_size: int) -> tuple[Tensor, ...]:
    size = tuple(int(s) for s in input_size)
    if not size or any(s < 1 for s in size) or batch_size < 1:
        raise CondenseError(
            f"bad input size {size} / batch size {batch_size}", "give positive sizes, e.g. input_size=(3, 224, 224)"
        )
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    return (torch.randn((batch_size, *size), generator=gen).to(device=device, dtype=dtype),)


def _as_inputs(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() skips shared duplicates


# --- public API ------------------------------------------------------------------------------------


def count(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    *,
    inputs: Tensor | tuple[Tensor, ...] | None = None,
    batch_size: int = 1,
):
    """MACs and parameters of ``model``, in total and per module (see the module docstring for the rules).

    Returns a DataFrame indexed by module path (first row ``""`` = the whole model; a module shared
    under several names appears once, under its first name) with columns ``type`` (class name),
    ``depth`` (0 for the model, 1 for its children, ...), ``macs`` (including children), ``params``
    (including children, each tensor once), ``pde`` (is a PDE layer) and ``unsupported`` (how many
    traced ops had no counting rule). ``df.attrs`` holds ``macs``, ``params``, ``input_size``,
    ``batch_size`` and ``unsupported_ops`` (op kind -> occurrences, whole model).

    The model runs once on ``inputs`` if given (``input_size`` and ``batch_size`` are then ignored),
    else on a random tensor of shape ``(batch_size, *input_size)``; MACs are for the whole batch.
    """
    example = _as_inputs(inputs) if inputs is not None else _example_inputs(model, input_size, batch_size)
    analysis, pde_names = _run(model, example)
    by_module = analysis.by_module()
    rows, index = [], []
    for name, module in model.named_modules():
        index.append(name)
        rows.append(
            {
                "type": type(module).__name__,
                "depth": 0 if name == "" else name.count(".") + 1,
                "macs": int(by_module.get(name, 0)),
                "params": _params(module),
                "pde": name in pde_names,
                "unsupported": int(sum(analysis.unsupported_ops(name).values())),
            }
        )
    import pandas as pd  # heavy: loaded when a table is asked for, not at `import condense`

    df = pd.DataFrame(rows, index=pd.Index(index, name="module"))
    df = df.astype({"macs": "int64", "params": "int64", "depth": "int64", "unsupported": "int64"})
    df.attrs["macs"] = int(analysis.total())
    df.attrs["params"] = _params(model)
    df.attrs["input_size"] = tuple(example[0].shape[1:]) if inputs is not None else tuple(input_size)
    df.attrs["batch_size"] = int(example[0].shape[0]) if example[0].dim() else 1
    df.attrs["unsupported_ops"] = dict(analysis.unsupported_ops(""))
    return df


def count_module(module: nn.Module, *example_inputs: Tensor) -> tuple[int, int]:
    """(total MACs, total parameters) of ``module`` called on ``example_inputs``."""
    analysis, _ = _run(module, tuple(example_inputs))
    return int(analysis.total()), _params(module)


def macs_and_params(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> tuple[int, int]:
    """(total MACs, total parameters) of ``model`` on one input of shape ``input_size``."""
    return count_module(model, *_example_inputs(model, input_size, 1))


def unsupported_ops_in_pde_layers(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    *,
    inputs: Tensor | tuple[Tensor, ...] | None = None,
    batch_size: int = 1,
) -> dict[str, Counter]:
    """PDE layer name -> Counter of traced op kinds inside it that have no counting rule (empty = good)."""
    example = _as_inputs(inputs) if inputs is not None else _example_inputs(model, input_size, batch_size)
    analysis, pde_names = _run(model, example)
    canonical = {name for name, _ in model.named_modules()}
    return {name: Counter(analysis.unsupported_ops(name)) for name in sorted(pde_names) if name in canonical}
