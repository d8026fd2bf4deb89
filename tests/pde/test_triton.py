"""The Triton Global-layer kernel (``condense.pde._triton``), run on CPU tensors under Triton's interpreter.

Every check that runs the kernel runs in a subprocess with ``TRITON_INTERPRET=1`` set before triton is
imported, so the setting never leaks into the rest of the suite. Shapes are tiny (the interpreter runs
each kernel op in numpy); the whole module takes about a minute on one core. The ConfigError cases run
in this process, without the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from condense._errors import ConfigError
from condense.pde import advection_diffusion

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(code: str, timeout: int = 300) -> str:
    """Run ``code`` in a fresh Python with TRITON_INTERPRET=1; fail with its output unless it exits 0."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


# Compares advection_diffusion / bounded_advection_diffusion with impl="triton" (the custom op and its
# hand-written backward) against impl="eager" (Eq. 4 written as tensor ops, differentiated by autograd):
# output and the gradients of init, source, u, v, Dx, Dy. Prints one line per failing case, then "cases N".
SWEEP = """
import itertools, torch
from condense.pde import _triton
from condense.pde._advection_diffusion import advection_diffusion, bounded_advection_diffusion
torch.manual_seed(0)
BOUNDARIES = ("periodic", "replicate", "zero")
# (tensor diffusion, source, velocity, bounded as in the Global layer)
OPTIONS = [(False, False, False, False), (True, True, True, False), (False, True, True, False),
           (True, False, False, False), (True, True, True, True), (False, False, True, True)]

def check(shape, K, boundary, var_d, src, vel, bounded, dtype, source_is_init=False):
    g = lambda scale=1.0: (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()
    init = g()
    source = init if source_is_init else (g() if src else None)
    u, v = (g(0.6), g(0.6)) if vel else (None, None)
    if var_d:
        Dx = (torch.rand(*shape, dtype=dtype) * 1.6 - 0.1).requires_grad_()  # a few below 0: the clamp
        Dy = (torch.rand(*shape, dtype=dtype) * 1.6 + 0.1).requires_grad_()
    else:
        Dx, Dy = 0.7, 1.3
    named = zip(("init", "source", "u", "v", "Dx", "Dy"), (init, None if source_is_init else source, u, v, Dx, Dy))
    names, leaves = zip(*[(n, t) for n, t in named if isinstance(t, torch.Tensor)])
    kw = dict(K=K, dt=0.2, dx=1.0, dy=1.5, boundary=boundary)
    outs = []
    for impl in ("eager", "triton"):
        if bounded:
            y = bounded_advection_diffusion(init, source, u, v, Dx, Dy, courant=0.5, dmax=1.2, impl=impl, **kw)
        else:
            y = advection_diffusion(init, source, u, v, Dx, Dy, impl=impl, **kw)
        torch.manual_seed(1)
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, leaves, gy, allow_unused=True)
        outs.append([y] + [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)])
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for name, a, b in zip(("out",) + names, outs[1], outs[0]):
        err = (a - b).abs().max().item() / (1.0 + b.abs().max().item())
        if not err <= tol or a.dtype != b.dtype:
            print("FAIL", shape, K, boundary, (var_d, src, vel, bounded), dtype, source_is_init, name, err)
            return False
    return True

def sweep(shapes, plane_max):
    _triton.PLANE_MAX = plane_max
    n = 0
    for i, (boundary, shape) in enumerate(itertools.product(BOUNDARIES, shapes)):
        for j in range(2):
            K = 1 + (2 * i + j) % 8
            opts = OPTIONS[(2 * i + j) % len(OPTIONS)]
            dtype = torch.float64 if (i + j) % 2 else torch.float32
            check((1, 2) + shape, K, boundary, *opts, dtype)
            n += 1
    print("cases", n)
"""


def test_whole_plane_kernel_matches_eager_forward_and_backward():
    """One program per plane, all K steps in it: planes 1x1 to 17x13, all boundaries, K = 1..8, constant
    and tensor diffusion (clamped or not), with and without source and velocity (bounded or not),
    float32 and float64; K = 0, a larger batch, and source = init (one merged gradient)."""
    out = run_interpreted(
        SWEEP
        + """
sweep([(1, 1), (3, 5), (7, 9), (17, 13), (1, 6), (5, 1)], plane_max=4096)
check((1, 1, 4, 3), 0, "periodic", True, True, True, False, torch.float64)
check((3, 2, 2, 3), 3, "replicate", True, True, True, True, torch.float64)
for b in BOUNDARIES:
    check((2, 2, 5, 4), 4, b, False, True, True, True, torch.float64, source_is_init=True)
"""
    )
    assert "FAIL" not in out and "cases 36" in out, out


def test_per_step_kernels_match_eager_forward_and_backward():
    """Planes over PLANE_MAX: one launch per step, the same adjoint in per-step launches (PLANE_MAX is
    lowered so that tiny planes take this path), blocks smaller than a plane included."""
    out = run_interpreted(
        SWEEP
        + """
_triton.STEP_BLOCK = 64  # 17x13 spans four blocks
sweep([(1, 1), (3, 5), (17, 13)], plane_max=0)
check((1, 2, 6, 5), 0, "zero", True, True, True, True, torch.float64)
for b in BOUNDARIES:
    check((2, 2, 5, 4), 5, b, True, True, True, True, torch.float64, source_is_init=True)
"""
    )
    assert "FAIL" not in out and "cases 18" in out, out


def test_global_layer_on_triton_matches_eager_and_counts_the_same():
    """The Global layer with impl="triton" (bounded fields, source = input, every boundary): same output
    and parameter gradients as impl="eager", and ``condense.count`` counts both paths the same."""
    out = run_interpreted("""
import torch
from condense import count
from condense.pde import GlobalConfig, GlobalLayer
for opts in (dict(), dict(diffusion="dwconv", boundary="zero"), dict(velocity="zero", source="none"),
             dict(boundary="replicate", diffusion="dwconv", source="residual")):
    torch.manual_seed(0)
    layers = [GlobalLayer(3, GlobalConfig(K=3, impl=impl, **opts)).double() for impl in ("eager", "triton")]
    layers[1].load_state_dict(layers[0].state_dict())
    res = []
    for layer in layers:
        torch.manual_seed(1)
        x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        y.square().sum().backward()
        res.append([y, x.grad] + [p.grad for p in layer.parameters()])
    err = max((a - b).abs().max().item() for a, b in zip(*res))
    assert err < 1e-9, (opts, err)
    macs = [count(GlobalLayer(4, GlobalConfig(K=3, impl=impl, **opts)), input_size=(4, 8, 9)).attrs["macs"]
            for impl in ("eager", "triton")]
    assert macs[0] == macs[1] > 0, (opts, macs)
    print("ok", opts, macs)
""")
    assert out.count("ok") == 4, out


def test_compiles_without_graph_breaks():
    """torch.compile keeps the Triton op in one graph, forward and backward (``triton_op``); run with the
    aot_eager backend (inductor's code generation for a CPU Triton kernel is not what CI checks)."""
    out = run_interpreted("""
import torch, torch._dynamo
from condense.pde import advection_diffusion
def f(h, u, v, D):
    return advection_diffusion(h, h, u, v, D, D, K=3, boundary="replicate", impl="triton")
h, u, v = (torch.randn(1, 2, 5, 4, requires_grad=True) for _ in range(3))
D = (torch.rand(1, 2, 5, 4) + 0.2).requires_grad_()
report = torch._dynamo.explain(f)(h, u, v, D)
assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons
y = torch.compile(f, backend="aot_eager", fullgraph=True)(h, u, v, D)
g = torch.autograd.grad(y.sum(), (h, u, v, D))
ye = advection_diffusion(h, h, u, v, D, D, K=3, boundary="replicate", impl="eager")
ge = torch.autograd.grad(ye.sum(), (h, u, v, D))
assert all((a - b).abs().max() < 1e-4 * (1 + b.abs().max()) for a, b in zip((y, *g), (ye, *ge)))
print("compiled ok")
""")
    assert "compiled ok" in out, out


def test_gpu_bench_runs_end_to_end_on_the_cpu(tmp_path):
    """``python -m condense.bench.gpu --device cpu --quick`` (what CI runs; eager and the C kernel, no
    interpreter) prints its table and writes one CSV row per shape, batch and implementation."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "gpu.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "condense.bench.gpu", "--device", "cpu", "--quick", "--csv", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fwd+bwd ms" in proc.stdout and "two training steps under torchrun" in proc.stdout
    import csv

    rows = list(csv.DictReader(out.open()))
    parts = {p: [r for r in rows if r["part"] == p] for p in ("kernels", "layer", "models", "ddp")}
    kernels = parts["kernels"]
    assert {r["impl"] for r in kernels} >= {"eager"} and len(kernels) % 4 == 0 and len(kernels) >= 4
    assert all(float(r["err_out"]) < 1e-4 and float(r["err_grad"]) < 1e-4 and float(r["fwd_ms"]) > 0 for r in kernels)
    assert len(parts["layer"]) == 12 and all(float(r["global_ms"]) > 0 for r in parts["layer"])
    assert {r["task"] for r in parts["models"]} == {"macs", "params", "latency", "throughput", "train"}
    macs = next(r for r in parts["models"] if r["task"] == "macs")
    assert float(macs["ratio"]) <= 0.7  # the budget the quick run condenses to, as measured
    assert [r["rank"] for r in parts["ddp"]] == ["0", "1"] and all(r["ok"] == "True" for r in parts["ddp"])


# ------------------------------------------------------------------------------------------- errors
def test_triton_without_cuda_or_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1") as err:
        advection_diffusion(x, None, None, None, 1.0, 1.0, impl="triton")
    assert "\n" not in str(err.value) and "impl='auto'" in str(err.value)


def test_kernels_refuse_tensors_they_cannot_take(monkeypatch):
    meta = torch.zeros(1, 1, 3, 3, device="meta")
    with pytest.raises(ConfigError, match="fused C kernel runs on CPU tensors.*impl='triton' or 'auto' on CUDA"):
        advection_diffusion(meta, None, None, None, 1.0, 1.0, impl="fused")
    cpu = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ConfigError, match="on meta"):  # one tensor elsewhere is enough to keep the C code out
        advection_diffusion(cpu, None, meta, meta, 1.0, 1.0, impl="fused")
    with pytest.raises(ConfigError, match="runs on CUDA tensors, not on meta"):
        advection_diffusion(meta, None, None, None, 1.0, 1.0, impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ConfigError, match="float32 and float64 tensors, not float16"):
        advection_diffusion(cpu.half(), None, None, None, 1.0, 1.0, impl="triton")
    with pytest.raises(ConfigError, match="different devices"):
        advection_diffusion(cpu, None, meta, meta, 1.0, 1.0, impl="triton")
    with pytest.raises(ValueError, match="'triton'"):
        advection_diffusion(cpu, None, None, None, 1.0, 1.0, impl="cuda")


def test_auto_never_picks_triton_or_c_for_tensors_they_cannot_take():
    from condense.pde._advection_diffusion import _choose, fused_available

    cpu = torch.zeros(1, 1, 3, 3)
    assert _choose("auto", cpu, ()) == ("fused" if fused_available(cpu) else "eager")
    assert _choose("auto", torch.zeros(1, 1, 3, 3, device="meta"), ()) == "eager"
    assert _choose("auto", cpu, (torch.zeros(1, 1, 3, 3, device="meta"),)) == "eager"


def test_c_kernel_ops_are_registered_for_the_cpu_only():
    """A CUDA tensor handed to the C kernel's ops directly finds no kernel (the ops are CPU-only)."""
    import condense.pde  # noqa: F401  (registers the ops)

    for op in (
        "advection_diffusion",
        "advection_diffusion_backward",
        "advection_diffusion_dwvel",
        "advection_diffusion_dwvel_bn",
        "dwconv_pair",
        "dwconv_pair_backward",
    ):
        name = f"condense::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
