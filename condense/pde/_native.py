"""Build and load the fused C kernels on first use; report why when they are unavailable.

In: the C sources in ``csrc/``. Out: a ctypes library per dtype, cached under ``~/.cache/condense``
(or ``$CONDENSE_CACHE``), or ``None`` with a reason (warned once per process: the layers then run their
slower eager PyTorch path). Never: builds at import time, raises on a missing or failing compiler, or
loads a build made by another compiler, for another CPU or from another source.

A build is keyed on the source, the dtype, the compiler's path and ``--version`` output, the CPU (its
model lines and its full feature-flags line: the flag sets use ``-march=native``, so a cache shared
between machines must not hand a library to a CPU that lacks its instructions) and the flag sets. The
flag sets are tried in turn; the last ones build without OpenMP (Apple clang rejects ``-fopenmp``) and
run the kernel on one thread. ``CONDENSE_NO_NATIVE=1`` disables the kernel (without a warning).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

_SRC = Path(__file__).parent / "csrc" / "advection_diffusion.c"
_LOCK = threading.Lock()
_LIBS: dict[torch.dtype, ctypes.CDLL | None] = {}
_REASON: list[str] = []
_WARNED: list[str] = []
_REAL = {torch.float32: "float", torch.float64: "double"}
# the pre-issue-25 Global-layer inference path (module overhead, op dispatch, the generic kernel passes), kept
# callable for side-by-side benchmarks only: ``legacy_path()``, or CONDENSE_LEGACY_LAYER=1 for a whole process
_LEGACY = [os.environ.get("CONDENSE_LEGACY_LAYER", "") == "1"]


class Field(ctypes.Structure):
    """A strided (N, C, H, W) array: element (n, c, y, x) at ``ptr + n * sn + c * sc + y * sy + x * sx``."""

    _fields_ = [
        ("ptr", ctypes.c_void_p),
        ("sn", ctypes.c_long),
        ("sc", ctypes.c_long),
        ("sy", ctypes.c_long),
        ("sx", ctypes.c_long),
    ]


def cache_dir() -> Path:
    root = os.environ.get("CONDENSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "condense")
    return Path(root) / "native"


STALE_DAYS = 14
COMPILE_TIMEOUT_S = 300  # per compiler call: a hung compiler must not hang the first forward pass for good
VERSION_TIMEOUT_S = 20
# (compile flags, link flags), tried in turn: 512-bit vectors (-march=native alone picks 256 on this CPU)
# and fused multiply-adds (-std=c11 otherwise contracts none); then plain native; then portable; then the
# same without OpenMP (Apple clang has no -fopenmp; the kernel then runs on one thread; on arm64 it wants
# -mcpu=native, not -march=native). Part of the cache key: a new flag set is a new build.
_OMP = ["-fopenmp"]
_NATIVE_512 = ["-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fno-math-errno"]
_NATIVE = ["-march=native", "-fno-math-errno"]
_ATTEMPTS = [
    (_OMP + _NATIVE_512, _OMP),
    (_OMP + _NATIVE, _OMP),
    (_OMP, _OMP),
    (_NATIVE, []),
    (["-mcpu=native", "-fno-math-errno"], []),
    ([], []),
]
# /proc/cpuinfo lines that say which instructions -march=native may use (x86: vendor, model and flags;
# ARM: implementer, part and features), from the first processor (all cores of a machine list the same)
_CPU_KEYS = (
    "vendor_id",
    "cpu family",
    "model",
    "model name",
    "flags",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
    "Features",
)


def _run_text(cmd: list[str]) -> str:
    """A short command's output (stdout, then stderr), or what went wrong; never raises."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"{type(err).__name__}: {err}"


def _cpu_tag() -> str:
    """What the CPU is and which instructions it has (the full feature-flags line, not just its name)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                key = key.strip()
                if sep and key in _CPU_KEYS and key not in found:
                    found[key] = " ".join(value.split())
    except OSError:
        pass
    if not found and platform.system() == "Darwin":  # no /proc: sysctl names the CPU and its features
        for name in (
            "machdep.cpu.brand_string",
            "machdep.cpu.features",
            "machdep.cpu.leaf7_features",
            "hw.optional.arm.FEAT_FP16",
            "hw.cpufamily",
        ):
            found[name] = _run_text(["sysctl", "-n", name])
    found["machine"] = f"{platform.system()} {platform.machine()} {platform.processor()}"
    return "\n".join(f"{k}: {v}" for k, v in found.items())


def _compiler() -> str:
    """The C compiler as an absolute path: ``$CC`` (a name or a path), else gcc, cc or clang on the PATH."""
    named = os.environ.get("CC")
    cc = named or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found (install gcc or clang, or set CC)")
    path = shutil.which(cc)
    if path is None:
        raise RuntimeError(f"the C compiler CC={cc!r} is not an executable on the PATH")
    return path


def build_key(real: str, cc: str) -> str:
    """The cache key of a build: the source, the dtype, the compiler (path and version), the CPU, the flags."""
    parts = [real, cc, _run_text([cc, "--version"]), _cpu_tag(), repr(_ATTEMPTS)]
    return hashlib.sha256(_SRC.read_bytes() + "\0".join(parts).encode()).hexdigest()[:16]


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
    cc = _compiler()
    out = cache_dir() / f"advection_diffusion_{real}_{build_key(real, cc)}.so"
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
        for cflags, lflags in _ATTEMPTS:
            steps = [
                [cc, "-O3", "-fPIC", "-std=c11", f"-DREAL={real}", *cflags, "-c", str(_SRC), "-o", str(obj)],
                [cc, "-shared", *lflags, str(obj), "-o", str(lib), "-lm"],
            ]
            for cmd in steps:
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"compiling {_SRC.name} with {cc} took over {COMPILE_TIMEOUT_S} s") from None
                if proc.returncode != 0:
                    errors = proc.stderr.strip().splitlines()[-1:] or errors
                    break
            else:
                os.replace(lib, out)  # atomic: no half-written library is ever loaded
                return out
    raise RuntimeError(f"compiling {_SRC.name} with {cc} failed: {errors[0]}")


def _check(result: int, func, args):
    # the kernels return 1 when a thread could not get its scratch (they then leave the output unwritten)
    if result:
        raise MemoryError(f"condense fused kernel {func.__name__}: out of memory for its per-thread scratch")
    return result


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    P, L, INT, D, F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double, Field
    # N C H W K dt dx dy dxc dyc boundary courant dmax nthreads
    common = [L, L, L, L, INT, D, D, D, D, D, INT, D, D, INT]
    lib.ad_forward.argtypes = [F] * 7 + common  # init f u v Dx Dy out
    lib.ad_backward.argtypes = [F] * 13 + common  # gout init f u v Dx Dy, then their gradients
    lib.ad_forward_dwvel.argtypes = [F, F, P, P, P, P, INT, F, F, F] + common
    lib.ad_forward_dwvel_bn.argtypes = [F, F, P, P, P, P, P, D, P, P, P, P, P, D, INT, F, F, F] + common
    lib.dw_pair_forward.argtypes = [F, P, P, INT, F, F, L, L, L, L, INT]  # x w1 w2 k o1 o2 N C H W nthreads
    lib.dw_pair_backward.argtypes = [F, P, P, INT, F, F, F, P, P, L, L, L, L, INT]  # x w1 w2 k g1 g2 gx gw1 gw2 ...
    for fn in (
        lib.ad_forward,
        lib.ad_backward,
        lib.ad_forward_dwvel,
        lib.ad_forward_dwvel_bn,
        lib.dw_pair_forward,
        lib.dw_pair_backward,
    ):
        fn.restype = INT
        fn.errcheck = _check
    ctypes.c_int.in_dll(lib, "condense_legacy").value = int(_LEGACY[0])
    return lib


def legacy() -> bool:
    """Whether the Global layer runs its pre-issue-25 inference path (``legacy_path``)."""
    return _LEGACY[0]


@contextlib.contextmanager
def legacy_path(enabled: bool = True):
    """Within the block, the Global layer's inference runs as it did before issue 25 (module, custom-op
    dispatch, the kernel's generic passes, NCHW planes one at a time); for benchmarks that time both paths
    side by side. Results are equal up to rounding."""

    def put(value: bool) -> None:
        _LEGACY[0] = value
        for lib in _LIBS.values():
            if lib is not None:
                ctypes.c_int.in_dll(lib, "condense_legacy").value = int(value)

    old = _LEGACY[0]
    put(enabled)
    try:
        yield
    finally:
        put(old)


def library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The fused kernels for ``dtype`` (float32 or float64), building them once; None if unavailable
    (another dtype, ``CONDENSE_NO_NATIVE``, or a failed build: then a warning says why, once)."""
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
                    _warn_once(str(err))
            _LIBS[dtype] = lib
    return _LIBS[dtype]


def loaded(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernels for ``dtype`` if they are already built and loaded (one dict lookup; None otherwise)."""
    return _LIBS.get(dtype)


def _warn_once(reason: str) -> None:
    if not _WARNED:
        _WARNED.append(reason)
        warnings.warn(
            f"condense: the fused C kernel is unavailable ({reason}); the Global layer runs its slower PyTorch path",
            RuntimeWarning,
            stacklevel=4,
        )


def supports(dtype: torch.dtype) -> bool:
    """Whether the kernels exist for ``dtype`` at all (float32 and float64), built or not."""
    return dtype in _REAL


def status(dtype: torch.dtype = torch.float32) -> str:
    """One line: whether the fused kernels are available for ``dtype``, and why not."""
    if dtype not in _REAL:
        return (
            f"no fused C kernel for {str(dtype).replace('torch.', '')} (it runs float32 and float64 tensors on the CPU)"
        )
    lib = library(dtype)
    return "fused C kernel available" if lib is not None else f"fused C kernel unavailable: {_REASON[-1]}"
