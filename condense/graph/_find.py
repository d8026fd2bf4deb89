"""Find runs of repeated same-resolution blocks in a model's dataflow graph. Changes nothing.

In: a model and an input size (or example input). Out: a frozen ``FindResult`` of ``Run`` records.
Never: edits or re-uses the model instance (tracing works on a deep copy).

Block grouping (``_analyse``): a *block* is any submodule called exactly once, made of the traced nodes
whose ``nn_module_stack`` contains its path, with exactly one node read outside it (its output). A block
that can be *replaced* also has exactly one outside input that is not a parameter/buffer read.

Runs (``_find_raw``): blocks with the same module-tree parent are chained through the dataflow (B follows
A when B's only input is A's output, and no other sibling also reads it). In a chain, a maximal stretch of
*repeats* - same class, same parameter names and shapes, same submodule kinds (Identity, DropPath and
Dropout count as one kind, since drop-path rates vary along a stage), output shape == input shape (4-D,
so a fixed resolution), non-zero parameters, every output but the last read only by the next block -
plus its *anchor* makes a run. The anchor is the block right before the stretch when it is compatible
(same class, a superset of the repeat's parameters with the same kernels and depthwise-ness, so it may
change channels or stride or add a downsample; it may take several inputs and its output may have other
readers since it is always kept), else the first repeat itself. Runs are taken at the coarsest module
level: a run inside a block of another run is dropped (``layer1.1`` is a block, not ``layer1.1.conv1``;
``layer1`` is a parent, not a block, because ``layer1 -> layer2`` are no repeats).

Growing runs keep the resolution but grow the channels: ``kind="growing"`` for same-class compatible
blocks chained one after the other (RexNet, DPN), ``kind="dense"`` for DenseNet-style blocks where block i
reads the first block's input and the outputs of blocks 0..i-1 (``output_shape`` is then the
concatenation the parent builds). ``Run.block_channels`` gives the channels each block reads, which is
what a replacement at block m starts from (see ``condense.graph._grow``).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import defaultdict
from typing import Literal, Sequence

import torch
from torch import fx, nn

from .._count import count_module
from .._errors import CondenseError
from ._trace import _trace, tensor_shape

Kind = Literal["repeat", "growing", "dense"]
Layout = Literal["NCHW", "NHWC"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: ``blocks[0]`` is the anchor (always kept), ``blocks[1:]`` repeat it at one resolution.

    ``input_shape``/``output_shape`` are the repeats' (C, H, W) (channels first whatever the layout);
    ``layout`` is how the blocks hold the tensor ("NHWC" for e.g. Swin). ``in_sequential``: the blocks are
    consecutive children of a plain ``nn.Sequential`` that runs through its own forward (so a rewrite can
    simply drop children; not when the parent iterates or indexes it). ``macs``/``params`` are per
    block (``macs`` entries are None when counting was off or unavailable). For growing runs
    (``kind`` "growing" or "dense") the blocks keep the resolution but change the channels:
    ``input_shape`` is the first block's input, ``output_shape`` the run's output (for "dense" the
    concatenation of that input and every block's output) and ``block_channels[i]`` the channels block i
    reads (for "dense" all its inputs together).
    """

    path: str
    blocks: tuple[str, ...]
    block_class: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel_size: int | None
    macs: tuple[int | None, ...]
    params: tuple[int, ...]
    kind: Kind = "repeat"
    layout: Layout = "NCHW"
    parent_class: str = ""
    in_sequential: bool = False
    block_channels: tuple[int, ...] = ()

    @property
    def growing(self) -> bool:
        return self.kind != "repeat"

    @property
    def r(self) -> int:
        """Number of blocks in the run, anchor included (the paper's m for the original model)."""
        return len(self.blocks)

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    def channels_at(self, m: int) -> int:
        """Channels a layer replacing ``blocks[m:]`` reads: the repeats' width, or for a growing run what
        block m reads."""
        return self.block_channels[m] if self.growing and self.block_channels else self.input_shape[0]

    @property
    def layer_kernel_size(self) -> int | None:
        """The kernel for a replacement layer: the blocks' own, made odd ('same' padding) if it is even."""
        k = self.kernel_size
        return None if k is None else (k if k % 2 else k + 1)

    @property
    def anchor(self) -> str:
        return self.blocks[0]

    def removed(self, m: int) -> tuple[str, ...]:
        """Block paths a rewrite keeping ``m`` blocks replaces."""
        self._check_m(m)
        return self.blocks[m:]

    def removed_params(self, m: int) -> int:
        return sum(self.params[m:]) if self._check_m(m) else 0

    def removed_macs(self, m: int) -> int | None:
        self._check_m(m)
        part = self.macs[m:]
        return None if any(v is None for v in part) else sum(part)  # type: ignore[arg-type]

    def _check_m(self, m: int) -> bool:
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.r:
            raise CondenseError(
                f"run '{self.path}': m={m!r} is outside [1, {self.r}]", "m counts the kept blocks, the anchor included"
            )
        return True

    def describe(self) -> str:
        c, h, w = self.input_shape
        k = f"k={self.kernel_size}" if self.kernel_size else "k=-"
        macs = self.macs[-1]
        macs_s = f"{macs / 1e6:.2f}M MACs/block" if macs is not None else "MACs n/a"
        grow = "" if self.kind == "repeat" else f" -> {self.output_shape[0]}ch (growing)"
        return (
            f"{self.path or '<root>'}: {self.block_class} x{self.r} (r={self.r}) at "
            f"{c}x{h}x{w}{grow}, {k}, {self.params[-1]:,} params/block, {macs_s}"
        )


@dataclasses.dataclass(frozen=True)
class FindResult:
    """All runs of a model (empty when there are none), in dataflow order, plus the model's totals."""

    runs: tuple[Run, ...]
    model_class: str
    input_shape: tuple[int, ...]
    total_macs: int | None
    total_params: int

    def __iter__(self):
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(r.path for r in self.runs)

    def run(self, path: str) -> Run:
        for r in self.runs:
            if r.path == path:
                return r
        raise CondenseError(f"no run at '{path}'", f"runs: {', '.join(self.paths) or 'none'}")

    def summary(self) -> str:
        macs = f"{self.total_macs / 1e6:.1f}M MACs" if self.total_macs is not None else "MACs n/a"
        head = (
            f"{self.model_class} at {'x'.join(map(str, self.input_shape))}: {len(self.runs)} run(s), "
            f"{self.total_params / 1e6:.2f}M params, {macs}"
        )
        if not self.runs:
            return head + "\n  no repeated same-resolution blocks found"
        return "\n".join([head] + ["  " + r.describe() for r in self.runs])

    def __str__(self) -> str:
        return self.summary()


# --- graph analysis ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Block:
    path: str
    nodes: set
    inputs: list  # external non-get_attr input nodes, in graph order
    output: fx.Node | None  # the single node consumed outside (None if zero or several)
    order: int  # position of the output node

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


def _groups(graph: fx.Graph) -> tuple[dict[str, list[fx.Node]], set[str]]:
    """Nodes per module path (from nn_module_stack) and the set of paths called more than once."""
    groups: dict[str, list[fx.Node]] = defaultdict(list)
    keys: dict[str, set[str]] = defaultdict(set)
    for node in graph.nodes:
        for key, val in (node.meta.get("nn_module_stack") or {}).items():
            path = val[0]
            groups[path].append(node)
            keys[path].add(key)
    multi = {p for p, ks in keys.items() if len(ks) > 1}
    return groups, multi


def _analyse(graph: fx.Graph) -> dict[str, _Block]:
    """Every module called once, as a block: its nodes, outside inputs and single outside output."""
    groups, multi = _groups(graph)
    order = {n: i for i, n in enumerate(graph.nodes)}
    blocks: dict[str, _Block] = {}
    for path, nodes in groups.items():
        if path in multi or not path:
            continue
        members = set(nodes)
        inputs: list[fx.Node] = []
        outputs: list[fx.Node] = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in members and a.op != "get_attr" and a not in inputs:
                    inputs.append(a)
            if any(u not in members for u in n.users):
                outputs.append(n)
        inputs.sort(key=order.__getitem__)
        out = outputs[0] if len(outputs) == 1 else None
        blocks[path] = _Block(path, members, inputs, out, order[out] if out is not None else -1)
    return blocks


_NOOP_TYPES = ("Identity", "DropPath", "Dropout", "Dropout2d", "DropBlock2d", "StochasticDepth")


def _kind(module: nn.Module) -> str:
    """Class name, with the modules that do nothing at inference (identity, drop-path, dropout) merged:
    drop-path rates vary along a stage, so one block may hold DropPath where the next holds Identity."""
    name = type(module).__name__
    return "noop" if name in _NOOP_TYPES else name


def _structure(module: nn.Module) -> dict[str, str]:
    return {n: _kind(m) for n, m in module.named_modules()}


def _signature(module: nn.Module) -> tuple:
    """Equal for repeats: class, parameter names and shapes, submodule names and kinds."""
    params = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    return (type(module), params, tuple(sorted(_structure(module).items())))


def _compatible(anchor: nn.Module, repeat: nn.Module) -> bool:
    """Could ``anchor`` be the first block of a stage of ``repeat`` blocks (channel/stride change only)?

    Same class; the repeat's parameter names are a subset of the anchor's (the anchor may add e.g. a
    downsample); shared parameters have the same rank, the same spatial kernel and the same depthwise-ness;
    shared submodules are of the same kind. This rejects e.g. a 1x1 expansion ConvNormAct followed by a
    depthwise 3x3 ConvNormAct, or a GhostModule with an activation followed by one without.
    """
    if type(anchor) is not type(repeat) or isinstance(repeat, (nn.ModuleList, nn.ModuleDict)):
        return False
    a = {n: tuple(p.shape) for n, p in anchor.named_parameters()}
    b = {n: tuple(p.shape) for n, p in repeat.named_parameters()}
    if not b or not set(b) <= set(a):
        return False
    for name, sb in b.items():
        sa = a[name]
        if len(sa) != len(sb):
            return False
        if len(sb) >= 3 and (sa[2:] != sb[2:] or (sa[1] == 1) != (sb[1] == 1)):
            return False
    am = dict(anchor.named_modules())
    for n, m in repeat.named_modules():
        k = _kind(m)
        if n not in am or _kind(am[n]) == k:
            continue
        # where the repeat has nothing the anchor may add a module (e.g. a downsample or a pooling
        # shortcut), but not an activation
        if k != "noop" or _is_activation(am[n]):
            return False
    return True


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.nn.modules.activation", "timm.layers.activations"))


def _nparams(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_kernel(module: nn.Module) -> int | None:
    """Spatial kernel of the depthwise conv in ``module`` if any, else of its largest non-1x1 conv."""
    dw: list[int] = []
    other: list[int] = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = max(int(s) for s in m.kernel_size)
            if m.groups > 1 and m.groups == m.in_channels:
                dw.append(k)
            elif k > 1:
                other.append(k)
    if dw:
        return max(dw)
    return max(other) if other else None


def _layout(block: _Block, module: nn.Module, root: nn.Module, shape: tuple[int, ...]) -> Layout:
    """Is the block's 4-D input (N, C, H, W) or (N, H, W, C)?

    First what reads the input inside the block: a Conv2d / BatchNorm2d says NCHW, a Linear / LayerNorm
    (over the last dim) says NHWC. Otherwise the block's modules: NHWC only when nothing in it reads
    dim 1 as channels but something reads the last dim.
    """
    _, d1, _, d3 = shape

    def vote(m: nn.Module) -> str | None:
        if isinstance(m, nn.Conv2d) and m.in_channels == d1:
            return "NCHW"
        if isinstance(m, nn.BatchNorm2d) and m.num_features == d1:
            return "NCHW"
        if isinstance(m, nn.LayerNorm) and type(m).__name__.endswith("2d"):  # timm LayerNorm2d
            return "NCHW" if tuple(m.normalized_shape) == (d1,) else None
        if isinstance(m, nn.Linear) and m.in_features == d3:
            return "NHWC"
        if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d3,):
            return "NHWC"
        return None

    if block.inputs:
        votes = set()
        for u in block.inputs[0].users:
            if u in block.nodes and u.op == "call_module":
                try:
                    v = vote(root.get_submodule(str(u.target)))
                except AttributeError:
                    v = None
                if v:
                    votes.add(v)
        if len(votes) == 1:
            return votes.pop()  # type: ignore[return-value]
    found = {vote(m) for m in module.modules()}
    return "NHWC" if "NHWC" in found and "NCHW" not in found else "NCHW"


def _chw(shape: tuple[int, ...], layout: Layout) -> tuple[int, int, int]:
    if layout == "NHWC":
        return (shape[3], shape[1], shape[2])
    return (shape[1], shape[2], shape[3])


def _is4d(node: fx.Node | None) -> bool:
    s = tensor_shape(node)
    return s is not None and len(s) == 4


@dataclasses.dataclass
class _RawRun:
    parent: str
    blocks: list[_Block]
    kind: Kind
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (in, out) when not the blocks' own
    in_sequential: bool = False


def _chains(siblings: list[_Block]) -> list[list[_Block]]:
    """Maximal dataflow chains among siblings: B follows A when B's only input is A's output."""
    by_out: dict[fx.Node, _Block] = {b.output: b for b in siblings if b.output is not None}
    succ: dict[str, list[_Block]] = defaultdict(list)
    pred: dict[str, _Block] = {}
    for b in siblings:
        if len(b.inputs) == 1 and b.inputs[0] in by_out:
            a = by_out[b.inputs[0]]
            if a is not b:
                succ[a.path].append(b)
                pred[b.path] = a
    # an output read by several sibling blocks is a branch point: no chain through it
    nxt = {p: s[0] for p, s in succ.items() if len(s) == 1}
    starts = [b for b in siblings if b.path not in pred or nxt.get(pred[b.path].path) is not b]
    chains = []
    for s in sorted(starts, key=lambda b: b.order):
        chain = [s]
        while chain[-1].path in nxt:
            chain.append(nxt[chain[-1].path])
        if len(chain) > 1:
            chains.append(chain)
    return chains


def _runs_in_chain(chain: list[_Block], mods: dict[str, nn.Module]) -> list[_RawRun]:
    sig = {b.path: _signature(mods[b.path]) for b in chain}

    def preserving(b: _Block) -> bool:
        if len(b.inputs) != 1 or not _is4d(b.output):
            return False
        return tensor_shape(b.inputs[0]) == tensor_shape(b.output) and _nparams(mods[b.path]) > 0

    def only_feeds(a: _Block, b: _Block) -> bool:
        return all(u in b.nodes for u in a.output.users)

    runs: list[_RawRun] = []
    used: set[str] = set()
    i = 0
    while i < len(chain):
        if not preserving(chain[i]):
            i += 1
            continue
        j = i
        while (
            j + 1 < len(chain)
            and preserving(chain[j + 1])
            and sig[chain[j + 1].path] == sig[chain[i].path]
            and only_feeds(chain[j], chain[j + 1])
        ):
            j += 1
        prev = chain[i - 1] if i > 0 else None
        if (
            prev is not None
            and prev.path not in used
            and _compatible(mods[prev.path], mods[chain[i].path])
            and _is4d(prev.output)
            and _anchor_feeds(prev, chain[i])
        ):
            blocks = chain[i - 1 : j + 1]
        else:
            blocks = chain[i : j + 1]
        if len(blocks) >= 2:
            runs.append(_RawRun(blocks[0].parent, blocks, "repeat"))
            used.update(b.path for b in blocks)
        i = j + 1
    return runs


def _anchor_feeds(anchor: _Block, first: _Block) -> bool:
    """The anchor is kept, so its output may have other readers; it only has to feed the first repeat."""
    return any(u in first.nodes for u in anchor.output.users)


def _growing_in_chain(chain: list[_Block], mods: dict[str, nn.Module], taken: set[str]) -> list[_RawRun]:
    """Same-class blocks chained at one resolution whose channels grow (e.g. RexNet, DPN)."""
    runs: list[_RawRun] = []
    i = 0
    while i < len(chain):
        b = chain[i]

        def ok(x: _Block) -> bool:
            si, so = tensor_shape(x.inputs[0]) if len(x.inputs) == 1 else None, tensor_shape(x.output)
            return (
                x.path not in taken
                and si is not None
                and so is not None
                and len(si) == 4
                and len(so) == 4
                and si[2:] == so[2:]
                and _nparams(mods[x.path]) > 0
            )

        if not ok(b):
            i += 1
            continue
        j = i
        while (
            j + 1 < len(chain)
            and ok(chain[j + 1])
            and _compatible(mods[b.path], mods[chain[j + 1].path])
            and (j == i or _compatible(mods[chain[j].path], mods[chain[j + 1].path]))
            and all(u in chain[j + 1].nodes for u in chain[j].output.users)
        ):
            j += 1
        seg = chain[i : j + 1]
        # after the first block, channels only grow, by less than doubling (a stem 3 -> 8 -> 16 is no run)
        growth = [tensor_shape(x.output)[1] - tensor_shape(x.inputs[0])[1] for x in seg[1:]]
        ins = [tensor_shape(x.inputs[0])[1] for x in seg[1:]]
        if len(seg) >= 2 and any(growth) and all(0 <= g < c for g, c in zip(growth, ins)):
            runs.append(_RawRun(b.parent, seg, "growing"))
        i = j + 1
    return runs


def _dense_runs(siblings: list[_Block], mods: dict[str, nn.Module], taken: set[str]) -> list[_RawRun]:
    """DenseNet-style growth: block i reads the first block's input and the outputs of blocks 0..i-1."""
    runs: list[_RawRun] = []
    sib = sorted((b for b in siblings if b.path not in taken and _is4d(b.output)), key=lambda b: b.order)
    i = 0
    while i < len(sib):
        first = sib[i]
        if len(first.inputs) != 1 or not _is4d(first.inputs[0]):
            i += 1
            continue
        x0 = first.inputs[0]
        hw = tensor_shape(x0)[2:]
        names = [n for n, _ in mods[first.path].named_parameters()]
        seg = [first]
        for b in sib[i + 1 :]:
            want = {x0, *(s.output for s in seg)}
            if (
                type(mods[b.path]) is not type(mods[first.path])
                or [n for n, _ in mods[b.path].named_parameters()] != names
                or set(b.inputs) != want
                or tensor_shape(b.output)[2:] != hw
            ):
                break
            seg.append(b)
        if len(seg) >= 2 and names:
            c_out = tensor_shape(x0)[1] + sum(tensor_shape(s.output)[1] for s in seg)
            s_in = tensor_shape(x0)
            runs.append(_RawRun(first.parent, seg, "dense", (s_in, (s_in[0], c_out, *hw))))
        i += len(seg)
    return runs


def _find_raw(gm: fx.GraphModule, root: nn.Module, growing: bool) -> list[_RawRun]:
    mods = dict(root.named_modules())
    blocks = [b for b in _analyse(gm.graph).values() if b.output is not None and b.path in mods]
    by_parent: dict[str, list[_Block]] = defaultdict(list)
    for b in blocks:
        by_parent[b.parent].append(b)
    raw: list[_RawRun] = []
    chains_all: list[list[_Block]] = []
    for parent in sorted(by_parent):
        for chain in _chains(by_parent[parent]):
            chains_all.append(chain)
            raw.extend(_runs_in_chain(chain, mods))
    if growing:
        taken = {b.path for r in raw for b in r.blocks}
        for chain in chains_all:
            raw.extend(_growing_in_chain(chain, mods, taken))
        taken = {b.path for r in raw for b in r.blocks}
        for parent in sorted(by_parent):
            raw.extend(_dense_runs(by_parent[parent], mods, taken))
    # coarsest level wins: drop runs living inside a block of another run
    block_paths = {b.path for r in raw for b in r.blocks}

    def inside(r: _RawRun) -> bool:
        p = r.blocks[0].path
        return any(p.startswith(q + ".") for q in block_paths)

    raw = [r for r in raw if not inside(r)]
    raw.sort(key=lambda r: r.blocks[0].order)
    groups, multi = _groups(gm.graph)
    for r in raw:
        parent = mods[r.parent]
        called = not r.parent or (r.parent in groups and r.parent not in multi)
        if called and isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
            keys = list(parent._modules)
            names = [b.name for b in r.blocks]
            i = keys.index(names[0])
            r.in_sequential = keys[i : i + len(names)] == names
    return raw


def _block_channels(rr: _RawRun) -> tuple[int, ...]:
    """Channels each block of a growing run reads (NCHW; for a dense run, all its inputs together)."""
    return tuple(sum(tensor_shape(i)[1] for i in b.inputs) for b in rr.blocks)


def _snapshot(value):
    """Copy of a module argument (lists get appended to after the call, e.g. DenseNet features)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


def _block_inputs(root: nn.Module, paths: Sequence[str], x: torch.Tensor) -> dict[str, tuple]:
    """Positional inputs every block receives on ``x`` (forward pre-hooks on the traced copy)."""
    seen: dict[str, tuple] = {}
    if not paths:
        return seen
    handles = []
    for p in paths:

        def hook(mod, args, p=p):
            seen.setdefault(p, tuple(_snapshot(a) for a in args))

        handles.append(root.get_submodule(p).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            root(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _count_macs(counter, module: nn.Module, args: tuple, what: str) -> int | None:
    try:
        return int(counter(module, *args)[0])
    except Exception as err:  # noqa: BLE001 - counting is extra information, finding must not fail on it
        warnings.warn(f"condense: could not count the MACs of {what}: {err}", stacklevel=3)
        return None


def _example(model: nn.Module, input_size) -> torch.Tensor:
    if isinstance(input_size, torch.Tensor):
        return input_size
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise CondenseError(
            f"input size {input_size!r} is not a tuple of ints", "pass e.g. (3, 224, 224) or an example input tensor"
        ) from None
    if len(size) != 3 or min(size) < 1:
        raise CondenseError(f"input size {size} is not (C, H, W)", "pass e.g. (3, 224, 224)")
    p = next(iter(model.parameters()), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, *size), generator=gen)
    return x.to(p.device, p.dtype) if p is not None and p.is_floating_point() else x


def find_runs(
    model: nn.Module,
    input_size=(3, 224, 224),
    *,
    example_input: torch.Tensor | None = None,
    count: bool = True,
    growing: bool = True,
) -> FindResult:
    """Find every run of repeated same-resolution blocks in ``model``. Changes nothing.

    ``input_size`` is (C, H, W) or an example input tensor (``example_input`` wins when given).
    ``count`` fills per-block and total MACs with ``condense._count.count_module``; ``growing`` also
    reports runs whose channels grow at one resolution (``kind="growing"``).
    """
    x = example_input if example_input is not None else _example(model, input_size)
    gm, root = _trace(model, x, train=False)
    raw = _find_raw(gm, root, growing)
    counter = count_module if count else None
    inputs: dict[str, tuple] = {}
    total_macs = None
    if counter is not None:
        # a fresh copy: tracing may leave proxies in a module's caches (e.g. LeViT's attention biases)
        fresh = copy.deepcopy(model).eval()
        x1 = x[:1]  # MACs per image
        inputs = _block_inputs(fresh, [b.path for r in raw for b in r.blocks], x1)
        total_macs = _count_macs(counter, fresh, (x1,), "the model")
        counted = dict(fresh.named_modules())

    runs: list[Run] = []
    seen_paths: dict[str, int] = defaultdict(int)
    for rr in raw:
        mods = [root.get_submodule(b.path) for b in rr.blocks]
        rep = mods[-1]
        first_rep = rr.blocks[1] if rr.kind == "repeat" else rr.blocks[0]
        s_in, s_out = rr.shapes or (tensor_shape(first_rep.inputs[0]), tensor_shape(rr.blocks[-1].output))
        layout = _layout(first_rep, rep, root, s_in)
        macs = []
        for b in rr.blocks:
            if counter is None or b.path not in inputs:
                macs.append(None)
            else:
                macs.append(_count_macs(counter, counted[b.path], inputs[b.path], f"block '{b.path}'"))
        path = rr.parent
        seen_paths[path] += 1
        if seen_paths[path] > 1:  # several runs below one parent: keep run paths unique
            path = f"{path}#{seen_paths[path] - 1}"
        runs.append(
            Run(
                path=path,
                blocks=tuple(b.path for b in rr.blocks),
                block_class=type(rep).__name__,
                input_shape=_chw(s_in, layout),
                output_shape=_chw(s_out, layout),
                kernel_size=_conv_kernel(rep),
                macs=tuple(macs),
                params=tuple(_nparams(m) for m in mods),
                kind=rr.kind,
                layout=layout,
                parent_class=type(root.get_submodule(rr.parent)).__name__,
                in_sequential=rr.in_sequential,
                block_channels=_block_channels(rr) if rr.kind != "repeat" else (),
            )
        )
    return FindResult(
        runs=tuple(runs),
        model_class=type(model).__name__,
        input_shape=tuple(x.shape[1:]),
        total_macs=total_macs,
        total_params=_nparams(model),
    )
