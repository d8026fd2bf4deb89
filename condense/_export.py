"""Export a condensed model: ONNX (checked under onnxruntime) and ``torch.export`` programs.

In: a condensed-model directory (or any ``nn.Module``) and an input size. Out: an ``.onnx`` file plus an
``ExportReport`` (exporter used, ONNX ops, measured parity with PyTorch), or a
``torch.export.ExportedProgram``. Never: leaves a partial or unchecked file behind (the ONNX file is
written to a temporary sibling, checked, then renamed into place), or touches the caller's model (work
happens on a deep copy).

The fused kernel of the Global layer is the custom op ``condense::advection_diffusion``, which ONNX
has no equivalent for. Before export every ``GlobalLayer`` of the copy is switched to the eager PyTorch
path (``impl="eager"``), so the graph holds only standard ONNX ops (``torch.roll`` becomes
Slice + Concat, the replicate/zero boundaries Slice/Expand/Concat, the solver Mul/Add/Sub/Div/Sqrt) and
runs in any ONNX runtime with no custom-op library. Exporters, in order (``exporter="auto"``):

* the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it traces, so arbitrary Python
  control flow in timm models is fine, and it is fast (about 2 s for ResNet-18). It handles the Global
  layer and the LinearMix / explicit RD layers; it has no ONNX mapping for FFTs;
* the ``torch.export``-based exporter (``dynamo=True``), tried when the first fails: slower (10-30 s) but
  it maps FFTs to ONNX ``DFT``, so the implicit and circulant RD layers export too.

Parity: the exported file is run under onnxruntime on a seeded random batch (and on batch 1 when the batch
axis is dynamic) and compared with the PyTorch model as given (fused kernel and all):
``|onnx - torch| <= atol + rtol * |torch|`` elementwise, by default atol = rtol = 1e-4. Measured on
condensed ResNet-18 / EfficientNet-B0 the max abs difference is about 1e-6 on logits.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import errno
import io
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from torch import nn

from ._budget import format_count, parse_input_size
from ._errors import CondenseError, as_domain_error, os_error, run_command
from ._help import HelpFormatter
from ._io import load, read_meta
from ._models import default_input_size
from ._write import claim_file
from .pde import GlobalLayer

EXPORTERS = ("auto", "torchscript", "dynamo")
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and measured.

    ``max_abs_diff``: max |onnxruntime - PyTorch| over every output element of the checked batches
    (None without ``check``); ``reference_max_abs``: the largest |PyTorch output|, for scale.
    ``ops``: ONNX op type -> count (standard domain only; a custom-domain op is an error).
    """

    path: Path
    exporter: str
    opset: int
    input_size: tuple[int, ...]
    dynamic_batch: bool
    global_layers: int
    ops: dict[str, int]
    checked: bool
    max_abs_diff: float | None
    reference_max_abs: float | None
    atol: float
    rtol: float
    batches: tuple[int, ...]
    size_bytes: int
    seconds: float
    fallback_reason: str | None = None

    @property
    def exporter_label(self) -> str:
        return {
            "torchscript": "TorchScript exporter (dynamo=False)",
            "dynamo": "torch.export-based exporter (dynamo=True)",
        }[self.exporter]

    def parity_text(self) -> str:
        if not self.checked:
            return "not checked (--no-check)"
        rel = self.max_abs_diff / self.reference_max_abs if self.reference_max_abs else 0.0
        return (
            f"onnxruntime vs PyTorch: max |diff| {self.max_abs_diff:.2e} (outputs up to "
            f"{self.reference_max_abs:.3g}, so {rel:.1e} of their range) at batch "
            f"{'/'.join(map(str, self.batches))}; tolerance "
            f"{self.atol:g} abs + {self.rtol:g} rel: OK"
        )


# ------------------------------------------------------------------------------------------ helpers
def _module_or_dir(
    model_or_dir: nn.Module | str | os.PathLike, input_size: Sequence[int] | None = None, trust_code: bool = False
) -> tuple[nn.Module, tuple[int, ...], str]:
    """(model in eval mode, input size, label) from a module or a condensed-model directory.

    Any failure to read a directory is a one-line ``CondenseError``.
    """
    if isinstance(input_size, str):
        input_size = parse_input_size(input_size)
    if isinstance(model_or_dir, nn.Module):
        size = tuple(input_size) if input_size else default_input_size(model_or_dir)
        if size is None:
            raise CondenseError(f"no input size known for {type(model_or_dir).__name__}", "pass input_size=(C, H, W)")
        return model_or_dir, tuple(int(s) for s in size), type(model_or_dir).__name__
    directory = Path(model_or_dir)
    if not directory.exists():
        raise CondenseError(
            f"{str(directory)!r} does not exist", "pass a directory written by `condense MODEL -o DIR` or condense.save"
        )
    meta = read_meta(directory)
    try:
        model = load(directory, trust_code=trust_code)
        size = tuple(int(s) for s in (input_size or meta["input_size"]))
    except CondenseError:
        raise
    except Exception as err:  # a damaged directory: say so in one line
        raise CondenseError(
            f"{directory} could not be loaded ({_first_line(err)})", "the directory is damaged: re-create it"
        ) from err
    return model, size, str(directory)


def eager_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy in eval mode whose Global layers all run the eager PyTorch path; and how many there are.

    ``GlobalConfig`` is frozen and ``GlobalLayer.forward`` reads ``self.config.impl`` on every call, so
    replacing the config object is enough (the weights are untouched).
    """
    model = copy.deepcopy(model).eval()
    n = 0
    for layer in model.modules():
        if isinstance(layer, GlobalLayer):
            layer.config = layer.config.replace(impl="eager")
            n += 1
    return model, n


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


_OP_PATTERNS = (
    re.compile(r"operator '([\w.:]+)'"),  # TorchScript: Exporting the operator 'aten::fft_rfft2' ...
    re.compile(r"namespace ([\w.:]+)"),  # TorchScript: unrecognized namespace condense::op
    re.compile(r"\b((?:aten|prim|condense)(?:::|\.)[\w.]+)"),  # dynamo: aten.fft_rfft2.default, ...
)


def failing_op(err: BaseException) -> str | None:
    """The operator named in an exporter error, if any (``aten::fft_rfft2``, ``condense::...``)."""
    text = str(err)
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).rstrip(".")
    return None


@contextlib.contextmanager
def _quiet():
    """Silence exporter chatter: Python warnings, prints, and C++ writes to fds 1/2.

    (torch 2.14's TorchScript exporter dumps the whole TorchScript graph to stdout when it fails, and the
    dynamo exporter prints progress lines.)
    """
    saved: list[int] = []
    sink = None
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        sink = tempfile.TemporaryFile()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no real fds (e.g. some notebooks): Python level only
        for fd in saved:
            os.close(fd)
        saved = []
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        if sink is not None:
            sink.close()


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    if isinstance(out, dict) and all(isinstance(t, torch.Tensor) for t in out.values()):
        return list(out.values())
    raise CondenseError(
        f"the model returns {type(out).__name__}, not tensors",
        "export a model whose forward returns a tensor (or a tuple of tensors)",
    )


def _example(size: Sequence[int], batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + batch)
    return torch.randn((batch, *size), generator=gen)


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise CondenseError(
            f"{module} is not installed", "pip install 'condense[export]' (onnx, onnxruntime, onnxscript)"
        ) from err


# ------------------------------------------------------------------------------------------ ONNX
def _export_torchscript(model, x, file, opset, names, dynamic_batch):
    in_names, out_names = names
    axes = {n: {0: "batch"} for n in (*in_names, *out_names)} if dynamic_batch else None
    torch.onnx.export(
        model,
        (x,),
        str(file),
        dynamo=False,
        opset_version=opset,
        input_names=in_names,
        output_names=out_names,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


def _export_dynamo(model, x, file, opset, names, dynamic_batch):
    in_names, out_names = names
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        opset_version=opset,
        input_names=in_names,
        output_names=out_names,
        dynamic_shapes=shapes,
        external_data=False,
        optimize=True,
    )
    program.save(str(file), external_data=False)


def _onnx_ops(file: Path) -> Counter:
    onnx = _require("onnx")
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto)
    ops: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            ops[(node.domain, node.op_type)] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(proto.graph)
    for fn in proto.functions:  # local functions (the dynamo exporter may emit them)
        for node in fn.node:
            ops[(node.domain, node.op_type)] += 1
    return ops


def _check_parity(file: Path, model: nn.Module, size, batches, atol, rtol) -> tuple[float, float]:
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    in_name = session.get_inputs()[0].name
    worst, scale = 0.0, 0.0
    for batch in batches:
        x = _example(size, batch, seed=1)
        with torch.no_grad():
            ref = [t.detach().float().numpy() for t in _outputs(model(x))]
        got = session.run(None, {in_name: x.numpy()})
        if len(got) != len(ref):
            raise CondenseError(
                f"the ONNX model has {len(got)} outputs, PyTorch {len(ref)}", "report this: the export is wrong"
            )
        for g, r in zip(got, ref):
            if g.shape != r.shape:
                raise CondenseError(
                    f"ONNX output shape {g.shape} differs from PyTorch's {r.shape} at batch {batch}",
                    "try exporter='dynamo' or a static batch",
                )
            diff = abs(g.astype("float64") - r.astype("float64"))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            scale = max(scale, float(abs(r).max()) if r.size else 0.0)
            if not (diff <= atol + rtol * abs(r.astype("float64"))).all():
                raise CondenseError(
                    f"onnxruntime output differs from PyTorch by up to {float(diff.max()):.3g} "
                    f"at batch {batch} (outputs up to {scale:.3g}; tolerance {atol:g} abs + "
                    f"{rtol:g} rel)",
                    "nothing was written; raise atol/rtol if this is rounding",
                )
    return worst, scale


def export_onnx(
    model_or_dir: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    input_size: Sequence[int] | None = None,
    opset: int = 17,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    trust_code: bool = False,
) -> ExportReport:
    """Export ``model_or_dir`` (a condensed-model directory or an ``nn.Module``) to the ONNX file ``path``.

    Global layers run the eager path in the export (standard ONNX ops only; no custom domain). With
    ``check`` (default) the file is validated by ``onnx.checker`` and run under onnxruntime on a seeded
    random batch of ``batch_size`` (and batch 1 if ``dynamic_batch``); every output element must satisfy
    ``|onnx - torch| <= atol + rtol * |torch|`` against the model as given. ``exporter``: ``auto``
    (TorchScript, then the dynamo exporter if that fails), ``torchscript`` or ``dynamo``. The file is
    written atomically; on any failure nothing is left behind and a one-line ``CondenseError`` names the
    operator that failed when the exporter says which. ``trust_code``: as for ``condense.load``.
    """
    if exporter not in EXPORTERS:
        raise CondenseError(f"exporter={exporter!r} is not one of {', '.join(EXPORTERS)}")
    if not isinstance(opset, int) or not 7 <= opset <= 30:
        raise CondenseError(f"opset {opset!r} is not a usable ONNX opset", "use 17 (the default) or 18+")
    t0 = time.perf_counter()
    claim_file(path, "ONNX model", _is_onnx)  # before any work: a file that is not an ONNX model is refused
    model, size, label = _module_or_dir(model_or_dir, input_size, trust_code)
    model = model.eval()
    exportable, n_global = eager_copy(model)
    x = _example(size, batch_size)
    with torch.no_grad():
        n_out = len(_outputs(exportable(x)))
    names = (["input"], ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])

    out = Path(path)
    if out.is_dir():
        raise CondenseError(f"{str(out)!r} is a directory", "give a file name such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
        used, fallback, errors = None, None, []
        for name in order:
            try:
                with _quiet(), torch.no_grad():
                    (_export_torchscript if name == "torchscript" else _export_dynamo)(
                        exportable, x, tmp, opset, names, dynamic_batch
                    )
                used = name
                break
            except Exception as err:  # noqa: BLE001 - try the next exporter, report all in one line
                errors.append((name, err))
        if used is None:
            _raise_if_write_failed(errors, out)
            op = next((failing_op(e) for _, e in errors if failing_op(e)), None)
            tried = "; ".join(f"{n}: {_first_line(e)}" for n, e in errors)
            raise CondenseError(
                f"ONNX export of {label} failed" + (f" at operator {op}" if op else "") + f" ({tried[:400]})",
                "that operator has no ONNX mapping in this torch; run with --debug for details",
            )
        if errors:
            fallback = f"{errors[0][0]}: {_first_line(errors[0][1])}"
        ops = _onnx_ops(tmp)
        custom = sorted(f"{d}::{o}" for d, o in ops if d not in STANDARD_DOMAINS)
        if custom:
            raise CondenseError(
                f"the ONNX graph holds custom-domain ops ({', '.join(custom[:5])})",
                "they need a custom runtime library; report this",
            )
        batches = tuple(dict.fromkeys((batch_size, 1) if dynamic_batch else (batch_size,)))
        worst = scale = None
        if check:
            worst, scale = _check_parity(tmp, model, size, batches, atol, rtol)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it private; give it the usual permissions
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(
        path=out,
        exporter=used,
        opset=opset,
        input_size=tuple(size),
        dynamic_batch=dynamic_batch,
        global_layers=n_global,
        ops={o: n for (_, o), n in sorted(ops.items())},
        checked=check,
        max_abs_diff=worst,
        reference_max_abs=scale,
        atol=atol,
        rtol=rtol,
        batches=batches if check else (),
        size_bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        fallback_reason=fallback,
    )


def _is_onnx(path: Path) -> bool:
    """An ONNX model file (what export-onnx writes), told by parsing it without its external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return bool(model.graph.node) and model.ir_version > 0


def _raise_if_write_failed(errors, out: Path) -> None:
    """An exporter that failed because the file could not be written (a full disk, a read-only folder) is
    reported as that, not as a missing operator mapping; exporters wrap the OSError, or only its text."""
    for _, err in errors:
        found = as_domain_error(err)
        if found is not None:
            raise found from None
        text = str(err)
        if "No space left on device" in text or "[Errno 28]" in text:
            raise os_error(OSError(errno.ENOSPC, "No space left on device"), out.parent) from None


# ------------------------------------------------------------------------------------------ torch.export
def export_program(
    model_or_dir: nn.Module | str | os.PathLike,
    input_size: Sequence[int] | None = None,
    *,
    impl: str = "eager",
    dynamic_batch: bool = True,
    batch_size: int = 2,
    trust_code: bool = False,
):
    """A ``torch.export.ExportedProgram`` of the model (a condensed-model directory or an ``nn.Module``).

    ``impl="eager"`` (default) switches every Global layer to the eager path first: the program holds only
    ATen ops, so it runs anywhere ``torch.export`` programs run (AOTInductor, ExecuTorch, ...) without
    condense installed. ``impl="keep"`` exports the model as it is: on CPU float32 the Global layers then
    appear as the custom op ``condense.advection_diffusion.default`` (``torch.export`` traces it through its
    registered fake kernel); running that program needs ``import condense`` (and the C kernel). Both are
    tested. The batch axis is dynamic unless ``dynamic_batch=False``.
    """
    if impl not in ("eager", "keep"):
        raise CondenseError(f"impl={impl!r} is not one of 'eager', 'keep'")
    model, size, label = _module_or_dir(model_or_dir, input_size, trust_code)
    target = eager_copy(model)[0] if impl == "eager" else copy.deepcopy(model).eval()
    x = _example(size, batch_size)
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(target, (x,), dynamic_shapes=shapes)
    except Exception as err:  # noqa: BLE001
        op = failing_op(err)
        raise CondenseError(
            f"torch.export of {label} failed" + (f" at operator {op}" if op else "") + f" ({_first_line(err)})",
            "run with --debug for the traceback",
        ) from err


# ------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="condense export-onnx",
        formatter_class=HelpFormatter,
        description="Export a condensed-model directory to ONNX (standard ops only: the Global layers use their "
        "eager path) and check it under onnxruntime against PyTorch.",
    )
    p.add_argument("model", metavar="DIR", help="a condensed-model directory (condense MODEL -o DIR)")
    p.add_argument("-o", "--output", metavar="FILE", help="the .onnx file (default: DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--input-size", metavar="CxHxW", help="input size (default: the directory's)")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="auto (TorchScript, then the torch.export-based exporter if that fails; default), torchscript or dynamo",
    )
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis (default: dynamic)")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the example and the check (default 2)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let a directory whose model is a file.py:factory "
        "import that file (it runs; never done without this flag)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run(args, console) -> int:
    out = Path(args.output) if args.output else Path(args.model) / "model.onnx"
    with console.status(f"exporting {args.model} to ONNX", spinner="dots"):
        report = export_onnx(
            args.model,
            out,
            input_size=args.input_size,
            opset=args.opset,
            check=not args.no_check,
            atol=args.atol,
            rtol=args.rtol,
            batch_size=args.batch_size,
            dynamic_batch=not args.static_batch,
            exporter=args.exporter,
            trust_code=args.trust_code,
        )
    console.print(
        f"exported {args.model} -> [bold]{report.path}[/] ({format_count(report.size_bytes)}B, "
        f"{report.exporter_label}, opset {report.opset}, input {'x'.join(map(str, report.input_size))}"
        f"{', dynamic batch' if report.dynamic_batch else ''}; {report.global_layers} Global layer(s) on "
        f"the eager path, {sum(report.ops.values())} standard ONNX ops, no custom ops) in "
        f"{report.seconds:.1f}s",
        highlight=False,
    )
    if report.fallback_reason:
        console.print(f"(the first exporter failed: {report.fallback_reason})", highlight=False)
    console.print(report.parity_text(), highlight=False)
    return 0


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    """``condense export-onnx DIR [-o FILE] [--opset N] ...``: exit 0, 1 (CondenseError, one line) or 2."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(width=None if sys.stdout.isatty() else 120)
    return run_command(lambda: _run(args, console), debug=args.debug)


if __name__ == "__main__":
    sys.exit(export_onnx_main())
