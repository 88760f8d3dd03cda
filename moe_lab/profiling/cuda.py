"""Count a GPU's host synchronizations with CUDA's own sync debug mode (the ground truth)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"  # what PyTorch's debug mode warns


def count_cuda_syncs(fn: Callable[[], object]) -> int:
    """How many times ``fn()`` made the host wait for the GPU.

    ``torch.cuda.set_sync_debug_mode("warn")`` makes PyTorch warn at every synchronizing call
    (an ``.item()``, ``nonzero``, a device-to-host copy ...); the warnings are counted, then the
    previous mode is restored. Needs CUDA.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("count_cuda_syncs needs a CUDA device: use audit_operators on the CPU")
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(SYNC_WARNING in str(w.message) for w in caught)
