"""Builds and loads moe_lab's C++ CPU kernels (``moe_lab/csrc/``), once per machine, on first use.

Why there is C++ at all: on a small model the sorted dispatch's Python version spends more time
issuing operators (about 700 operator events per MoE layer and step of the tiny LM, counted
with torch.profiler: 72 small matrix products, their views, the element-wise work) than the CPU
spends computing them, and its experts run one after another. ``csrc/sorted_experts.cpp`` does the same arithmetic in one operator call for the
forward and one for the backward, the experts in parallel. ``moe_lab/dispatch/sorted.py``
keeps the readable Python version; the tests check the two against each other and against
the naive loop.

How it is built: the first CPU call of the sorted dispatch compiles the source with the
system's C++ compiler (``$CXX`` or ``c++``) against the installed torch, about 15 seconds,
and caches the library under ``~/.cache/moe_lab/kernels/`` (``$MOE_LAB_CACHE_DIR`` moves it),
keyed by a hash of the source, the torch version and the flags. A file lock makes parallel
processes (pytest workers, notebook kernels) build it once. No ninja, no pybind11: one
compiler call, and the operators register with ``TORCH_LIBRARY`` as ``torch.ops.moe_lab.*``.

If it cannot be built (no compiler, a failed build) the sorted dispatch runs its Python
version and a warning says why, once per process. ``MOE_LAB_KERNELS=0`` turns the kernels off
without a warning. ``kernel_status()`` says which is in use.

Taught in: notebooks/02_routing.ipynb (why the fast path is fast).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import cpp_extension

SOURCE = Path(__file__).parent / "csrc" / "sorted_experts.cpp"
LIBRARY_NAME = "moe_lab_kernels"
DISABLE_VARIABLE = "MOE_LAB_KERNELS"  # "0" turns the C++ kernels off
CACHE_VARIABLE = "MOE_LAB_CACHE_DIR"
BUILD_TIMEOUT_S = 600


@dataclass
class KernelState:
    """What this process knows about the kernels: loaded or not, and why."""

    loaded: bool | None = None  # None: not tried yet
    detail: str = ""  # the library's path, or why it is not in use
    openmp: bool = False  # experts run in parallel (False: one after another)


_STATE = KernelState()  # one TORCH_LIBRARY per namespace and process: load at most once


def cache_dir() -> Path:
    """Where built kernels are kept: ``$MOE_LAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/moe_lab``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe_lab" / "kernels"


def compile_command(compiler: str, source: Path, output: Path, openmp: bool) -> list[str]:
    """One compiler call: the source to a shared library linked against torch's."""
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    libraries = cpp_extension.library_paths()
    command = [
        compiler,
        str(source),
        "-o",
        str(output),
        "-shared",
        "-fPIC",
        "-O3",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *includes,
        *(f"-L{path}" for path in libraries),
        *(f"-Wl,-rpath,{path}" for path in libraries),
        "-lc10",
        "-ltorch_cpu",
    ]
    if openmp:
        # links libgomp.so.1: the OpenMP runtime torch has already loaded, so the experts'
        # threads are torch's own and MKL inside them runs single-threaded
        command.insert(1, "-fopenmp")
    return command


def _library_path(openmp: bool) -> Path:
    """The cache entry for this source, torch installation, compiler and flags."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    compiler = os.environ.get("CXX", "c++")
    command = compile_command(compiler, Path("source.cpp"), Path("library.so"), openmp)
    key.update(f"{torch.__version__}|{sys.version_info[:2]}|{' '.join(command)}".encode())
    return cache_dir() / key.hexdigest()[:16] / f"{LIBRARY_NAME}.so"


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (IPython's shell there has a ``kernel``)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _notice(message: str) -> None:
    """Tell the reader what is happening: information, not a problem.

    JupyterLab draws a kernel's stderr as a pink error box, so in a kernel the notice goes to
    stdout; elsewhere it goes to stderr, which keeps stdout for what a program reads (the
    benchmarks' results, ``moe-lab presets | ...``).
    """
    print(message, file=sys.stdout if _in_jupyter_kernel() else sys.stderr, flush=True)


def _build(library: Path, openmp: bool) -> None:
    """Compile into a temporary file and rename it into place (readers never see half a file)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler found (tried {compiler!r}; set $CXX to choose one)")
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=library.parent, suffix=".so", delete=False) as handle:
        partial = Path(handle.name)
    try:
        command = compile_command(compiler, SOURCE, partial, openmp)
        _notice(
            "moe_lab: compiling the C++ expert kernels for this machine, once"
            " (about 15 s; cached in " + str(library.parent) + ")"
        )
        start = time.perf_counter()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{' '.join(command)}\nfailed with:\n{tail}")
        os.replace(partial, library)
        _notice(f"moe_lab: built in {time.perf_counter() - start:.0f} s")
    finally:
        partial.unlink(missing_ok=True)


def _build_once(library: Path, openmp: bool) -> None:
    """Build unless built; a failed build leaves ``<library>.failed`` so others skip it."""
    failed = library.with_suffix(".failed")
    if library.exists():
        return
    if failed.exists():
        raise RuntimeError(
            f"{failed.read_text()}\n(an earlier build failed: delete {failed} to retry)"
        )
    try:
        _build(library, openmp)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        failed.write_text(str(error))
        raise


def _build_locked(library: Path, openmp: bool) -> None:
    """Build unless built, holding a lock so that concurrent processes build once."""
    library.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # POSIX only; the lock is released if its holder dies
    except ImportError:  # pragma: no cover - Windows: no lock, at worst two builds race
        _build_once(library, openmp)
        return
    with open(library.parent / "build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _build_once(library, openmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_kernels() -> bool:
    """Build (once per machine) and load the kernels; True when ``torch.ops.moe_lab`` has them.

    Tries a build with OpenMP first, then one without (the experts then run one after
    another). Never raises: a failure warns once with the compiler's message and returns False.
    """
    if _STATE.loaded is not None:
        return _STATE.loaded
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        _STATE.loaded, _STATE.detail = False, f"turned off by {DISABLE_VARIABLE}=0"
        return False
    errors = []
    for openmp in (True, False):
        library = _library_path(openmp)
        try:
            _build_locked(library, openmp)
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            errors.append(f"{'with' if openmp else 'without'} OpenMP: {error}")
            continue
        _STATE.loaded, _STATE.detail = True, str(library)
        _STATE.openmp = bool(torch.ops.moe_lab.built_with_openmp())
        return True
    _STATE.loaded = False
    _STATE.detail = "could not build the C++ kernels:\n" + "\n".join(errors)
    warnings.warn(
        f"moe_lab: {_STATE.detail}\nThe sorted dispatch runs its Python version instead"
        f" (slower on small models). Set {DISABLE_VARIABLE}=0 to silence this.",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def kernel_status() -> str:
    """One line for a reader: which version of the sorted dispatch runs on the CPU, and why."""
    if _STATE.loaded is None:
        load_kernels()
    if not _STATE.loaded:
        return f"Python version ({_STATE.detail.splitlines()[0]})"
    parallel = "experts in parallel (OpenMP)" if _STATE.openmp else "experts one after another"
    return f"C++ kernels, {parallel}: {_STATE.detail}"
