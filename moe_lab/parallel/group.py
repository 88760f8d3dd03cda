"""Process groups: joining the one torchrun describes, checking that ranks agree, and starting
a group of local processes from Python (tests and notebooks).

Everything here is ``torch.distributed``: ``init_process_group`` with the ``gloo`` backend on
the CPU and ``nccl`` on CUDA, chosen by the device and nothing else, so the same code runs on a
laptop and on a GPU cluster.

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NO_PROCESS_GROUP = (
    "expert parallelism needs an initialized torch.distributed process group: launch with"
    " torchrun and call moe_lab.parallel.init_distributed() (or torch.distributed."
    "init_process_group) first"
)
# Collectives that wait longer than this raise instead of hanging (a rank that crashed, a
# collective only some ranks reached).
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def backend_for(device: torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` for the CPU: the one device-specific choice."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(
        f"expert parallelism runs on cpu (gloo) or cuda (nccl), not on {device.type}:"
        " choose --device cpu or cuda"
    )


def require_process_group(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (the default group when None); raises when none exists."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(NO_PROCESS_GROUP)
    return dist.get_rank(group), dist.get_world_size(group)


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where a small tensor must live to take part in a collective of ``group``."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def config_digest(value: object) -> int:
    """A 63-bit hash of ``repr(value)``: equal on every rank exactly when the reprs are."""
    digest = hashlib.sha256(repr(value).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_same_on_all_ranks(
    what: str, value: object, group: dist.ProcessGroup | None = None
) -> None:
    """Raise on every rank when ``value`` (a config) differs between ranks.

    Ranks that were started with different settings would otherwise exchange tensors of
    unexpected sizes and fail far from the cause, or hang. Each rank contributes a hash of
    ``repr(value)`` (frozen dataclasses print every field) to one all-gather.
    """
    _, world_size = require_process_group(group)
    mine = torch.tensor([config_digest(value)], dtype=torch.long, device=collective_device(group))
    everyone = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine, group=group)
    digests = [int(t.item()) for t in everyone]
    if len(set(digests)) > 1:
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise ValueError(
            f"ranks disagree on {what}: rank(s) {differ} differ from rank 0 (config hashes"
            f" {[f'{d:016x}' for d in digests]}): start every rank with the same settings"
        )


def init_distributed(device: str | torch.device = "auto") -> torch.device:
    """Join the process group ``torchrun`` describes and return this rank's device.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    in every worker's environment; ``init_process_group`` reads them (the ``env://``
    rendezvous). The backend follows the device: ``gloo`` on the CPU, ``nccl`` on CUDA, where
    each rank takes GPU ``LOCAL_RANK`` of its machine. Without torchrun's variables a single
    process joins a group of one (W = 1). Calling it again returns the same device.

    Args:
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"`` or ``"cuda"``.

    Returns:
        The device this rank computes on.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(name).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' is not available on this machine: use cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        resolved = torch.device("cuda", torch.cuda.current_device())
    else:
        resolved = torch.device(kind)
    backend = backend_for(resolved)
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise ValueError(
                f"the process group already uses {dist.get_backend()}, but device"
                f" {resolved.type} needs {backend}: pick the device the group was made for"
            )
        return resolved
    if "WORLD_SIZE" in os.environ:  # under torchrun (or any launcher that sets env://)
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    else:  # a plain `python ...`: a group of one
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=COLLECTIVE_TIMEOUT
        )
    return resolved


# --------------------------------------------------------------------------------------------
# Local process groups for tests and notebooks
# --------------------------------------------------------------------------------------------

# The fork server imports these once; every rank is then forked from it in milliseconds,
# instead of paying for a fresh `import torch` per process (seconds on a small machine).
# torch._dynamo: torch.optim's optimizers import it on first construction (seconds more).
PRELOAD = ["torch._dynamo", "moe_lab.parallel"]


def _rank_main(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: tuple,
    folder: str,
    threads: int,
) -> None:
    """One rank of ``run_parallel``: join the group, run ``fn``, write its result to a file."""
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        result = fn(*args)
        torch.save(result, Path(folder) / f"result_{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_parallel(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    threads: int = 1,
    timeout: float = 300.0,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` new CPU processes that form one gloo process group.

    Returns what ``fn`` returned on each rank, in rank order. Inside ``fn``,
    ``torch.distributed.get_rank()`` tells the rank. ``fn`` must be importable (defined in a
    module, not in a notebook cell), since the processes are started from a fork server.

    How: the processes are forked from Python's ``forkserver`` (a clean process that has
    imported torch and moe_lab once), join through a file in a fresh temporary folder
    (``file://`` rendezvous: no TCP port to choose, so parallel test workers cannot collide),
    each with ``threads`` torch threads. An exception in any rank is raised here with that
    rank's traceback; a group still running after ``timeout`` seconds is stopped.

    Example:
        >>> from moe_lab.parallel.demos import rank_and_world
        >>> run_parallel(rank_and_world, 2)
        [(0, 2), (1, 2)]
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # takes effect when the server first starts
    with tempfile.TemporaryDirectory(prefix="moe_lab_ranks_") as folder:
        processes = mp.start_processes(
            _rank_main,
            args=(world_size, fn, args, folder, threads),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + timeout
        while not processes.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in processes.processes:
                    process.terminate()
                raise TimeoutError(
                    f"the {world_size} processes ran past {timeout:.0f} s: a collective that"
                    " not every rank reached?"
                )
        return [
            torch.load(Path(folder) / f"result_{rank}.pt", weights_only=False)
            for rank in range(world_size)
        ]
