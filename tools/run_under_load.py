"""Run notebooks (or any pytest target) while busy processes keep the CPU cores loaded.

    python tools/run_under_load.py                       # the timing notebooks, 2 busy processes
    python tools/run_under_load.py --busy 4 notebooks/06_compute_budgets.ipynb

A reader's laptop is rarely idle: a browser, an IDE, another notebook. A notebook that asserts a
wall-clock relation may pass on a quiet machine and fail there. This script starts ``--busy``
processes that each spin one core at 100% (a pure Python loop, so they do not share any torch
thread pool with the notebooks), runs pytest on the targets with ``--workers`` of them at once (2,
as the README's test command does on 2 cores; ``--workers 0`` runs them one after another) and stops
the busy processes it started, whatever happens. The
timing notebooks are those that time something: 01 (the dense baseline), 04 (training
throughput), 06 (latency against batch size, overhead against width: the one timing assert) and 07
(the dispatch ladder, expert parallelism's exchanges).

Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_NOTEBOOKS = (
    "notebooks/01_dense_ffn.ipynb",
    "notebooks/04_train_tiny_moe.ipynb",
    "notebooks/06_compute_budgets.ipynb",
    "notebooks/07_gpu_and_scaling.ipynb",
)
SPIN = "while True:\n    pass\n"


def start_busy(n: int) -> list[subprocess.Popen]:
    """Start ``n`` processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the processes this script started (by their own handles, nothing else)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=list(TIMING_NOTEBOOKS))
    parser.add_argument("--busy", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (default 2)")
    args = parser.parse_args(argv)
    if args.busy < 0:
        parser.error(f"--busy {args.busy} must be >= 0")
    busy = start_busy(args.busy)
    start = time.perf_counter()
    try:
        print(
            f"{args.busy} busy processes (pids {', '.join(str(p.pid) for p in busy) or '-'})"
            f" on {os.cpu_count()} cores; running {len(args.targets)} target(s)",
            flush=True,
        )
        command = [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers)]
        result = subprocess.run([*command, *args.targets], cwd=ROOT, check=False)
    finally:
        stop(busy)
    print(f"under load: exit status {result.returncode} in {time.perf_counter() - start:.0f} s")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
