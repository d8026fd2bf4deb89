"""Build and load the fused C kernels on first use; report why when they are unavailable.

In: the C sources in ``csrc/``. Out: a ctypes library per dtype, cached under ``~/.cache/condense``
(or ``$CONDENSE_CACHE``), or ``None`` with a reason. Never: builds at import time, or raises on a missing
compiler (the layers fall back to their eager PyTorch path).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

_SRC = Path(__file__).parent / "csrc" / "advection_diffusion.c"
_LOCK = threading.Lock()
_LIBS: dict[torch.dtype, ctypes.CDLL | None] = {}
_REASON: list[str] = []
_REAL = {torch.float32: "float", torch.float64: "double"}


class Field(ctypes.Structure):
    """A strided (N, C, H, W) array: element (n, c, y, x) at ``ptr + n * sn + c * sc + y * sy + x * sx``."""

    _fields_ = [("ptr", ctypes.c_void_p), ("sn", ctypes.c_long), ("sc", ctypes.c_long), ("sy", ctypes.c_long),
                ("sx", ctypes.c_long)]


def cache_dir() -> Path:
    root = os.environ.get("CONDENSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "condense")
    return Path(root) / "native"


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor()


STALE_DAYS = 14
# compiler flags tried in turn: 512-bit vectors (-march=native alone picks 256 on this CPU) and fused
# multiply-adds (-std=c11 otherwise contracts none); then plain native; then portable
_ATTEMPTS = [(["-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fno-math-errno"], []),
             (["-march=native", "-fno-math-errno"], []), ([], [])]


def _prune(new: Path) -> None:
    """Remove cached builds of other source versions (or CPUs, or compilers) unused for STALE_DAYS days:
    every change of the kernel source makes a new build, and a build in use is touched on each load.
    Removing a library another process has loaded is safe (the mapping outlives the file)."""
    cutoff = time.time() - STALE_DAYS * 86400
    for old in new.parent.glob("advection_diffusion_*.so"):
        try:
            if old != new and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


def _compile(real: str) -> Path:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    src = _SRC.read_bytes()
    tag = real + _cpu_tag() + cc + repr(_ATTEMPTS)  # flags too: a new flag set is a new build
    key = hashlib.sha256(src + tag.encode()).hexdigest()[:16]
    out = cache_dir() / f"advection_diffusion_{real}_{key}.so"
    if out.exists():
        try:
            os.utime(out)  # in use: kept by _prune
        except OSError:
            pass
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _prune(out)
    # Compile and link in two steps so that no fast-math startup code (crtfastmath.o, which would set
    # flush-to-zero for the whole process) can be linked in.
    errors = ["unknown error"]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        obj, lib = Path(tmp) / "kernel.o", Path(tmp) / out.name
        for cflags, libs in _ATTEMPTS:
            steps = [[cc, "-O3", "-fPIC", "-fopenmp", "-std=c11", f"-DREAL={real}", *cflags, "-c", str(_SRC),
                      "-o", str(obj)],
                     [cc, "-shared", "-fopenmp", str(obj), "-o", str(lib), *libs, "-lm"]]
            for cmd in steps:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    errors = proc.stderr.strip().splitlines()[-1:] or errors
                    break
            else:
                os.replace(lib, out)  # atomic: no half-written library is ever loaded
                return out
    raise RuntimeError(f"compiling {_SRC.name} failed: {errors[0]}")


def _check(result: int, func, args):
    # the kernels return 1 when a thread could not get its scratch (they then leave the output unwritten)
    if result:
        raise MemoryError(f"condense fused kernel {func.__name__}: out of memory for its per-thread scratch")
    return result


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    P, L, I, D, F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double, Field
    common = [L, L, L, L, I, D, D, D, D, D, I, D, D, I]  # N C H W K dt dx dy dxc dyc boundary courant dmax nthreads
    lib.ad_forward.argtypes = [F] * 7 + common  # init f u v Dx Dy out
    lib.ad_backward.argtypes = [F] * 13 + common  # gout init f u v Dx Dy, then their gradients
    lib.ad_forward_dwvel.argtypes = [F, F, P, P, P, P, I, F, F, F] + common
    lib.dw_pair_forward.argtypes = [F, P, P, I, F, F, L, L, L, L, I]  # x w1 w2 k o1 o2 N C H W nthreads
    lib.dw_pair_backward.argtypes = [F, P, P, I, F, F, F, P, P, L, L, L, L, I]  # x w1 w2 k g1 g2 gx gw1 gw2 ...
    for fn in (lib.ad_forward, lib.ad_backward, lib.ad_forward_dwvel, lib.dw_pair_forward, lib.dw_pair_backward):
        fn.restype = I
        fn.errcheck = _check
    return lib


def library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The fused kernels for ``dtype`` (float32 or float64), building them once; None if unavailable."""
    if dtype in _LIBS:
        return _LIBS[dtype]
    with _LOCK:
        if dtype not in _LIBS:
            lib = None
            if dtype not in _REAL:
                pass
            elif os.environ.get("CONDENSE_NO_NATIVE"):
                _REASON.append("disabled by CONDENSE_NO_NATIVE")
            else:
                try:
                    lib = _bind(ctypes.CDLL(str(_compile(_REAL[dtype]))))
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    _REASON.append(str(err))
            _LIBS[dtype] = lib
    return _LIBS[dtype]


def status() -> str:
    """One line: whether the fused kernels are available, and why not."""
    lib = library(torch.float32)
    return "fused C kernel available" if lib is not None else f"fused C kernel unavailable: {_REASON[-1]}"
