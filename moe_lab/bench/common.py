"""Shared benchmark helpers: interleaved timing, machine description, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a benchmark figure means nothing without: CPU, threads, torch version, device name."""
    device = torch.device(device)
    device_name = cpu_name()
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    return {
        "device": str(device),
        "device_name": device_name,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def synchronize(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, interleaved (A B C A B C ...), in seconds.

    Interleaving spreads the machine's noise (other processes, frequency changes) over every
    candidate alike, so their ratio is fairer than timing each in its own block.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def geometric_mean(values: list[float]) -> float:
    return statistics.geometric_mean(values)


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS.

    By default glibc serves every allocation above 32 MB with its own mmap and unmaps it on
    free, so the next tensor of that size page-faults all of its memory in again (about 20 ms
    per 67 MB here). An MoE layer's weight gradients are E times a dense layer's, so it pays
    this far more often. ``mallopt(M_MMAP_MAX, 0)`` and a 1 GB trim threshold keep freed
    blocks for reuse. Process-wide and glibc-only: the benchmark's ``--retain-freed-memory``
    opts in, for dense and MoE alike. Returns whether it took effect.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def write_result(name: str, payload: dict, results_dir: Path | None = None) -> Path:
    """Write ``payload`` plus the machine description as JSON under benchmarks/results/."""
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    device = payload.get("machine", {}).get("device", "cpu")
    path = results_dir / f"{name}-{device.replace(':', '')}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
