"""Dispatch backends: from routing decisions to the weighted sum of expert outputs.

Every backend has one signature,

    backend(x (N, D), routing: RoutingResult, experts: StackedExperts,
            capacity: int | None = None, drop_policy: str = "position") -> DispatchOutput

and gives the same result as ``naive`` (tests/test_dispatch.py checks outputs and gradients).
A ``capacity`` makes any backend drop the over-capacity assignments by the same rule.

    naive     readable loop over experts: the reference
    masked    every expert on every token, unchosen outputs multiplied by 0: E/K times the FLOPs
    einsum    GShard's one-hot (N, E, C) dispatch and combine tensors and two einsums
    capacity  GShard/Switch: fixed (E, C, D) buffer, three bmm's, drops over capacity
    sorted    dropless: sort by expert, one gather, per-expert GEMMs, one weighted un-sort;
              on the CPU its forward and backward run in C++ (moe_lab/csrc), experts in parallel
    sorted_python  the same in Python, one operator call at a time: the C++ kernels' reference
    grouped   sorted layout + torch's grouped GEMM (one kernel on Hopper GPUs)

Taught in: notebooks/02_routing.ipynb; the full ladder in notebook 07.
"""

from __future__ import annotations

from collections.abc import Callable

from moe_lab.dispatch.capacity import dispatch_capacity
from moe_lab.dispatch.common import DispatchOutput, capacity_queue, kept_assignments
from moe_lab.dispatch.einsum import dispatch_einsum
from moe_lab.dispatch.grouped import dispatch_grouped, grouped_mm_available
from moe_lab.dispatch.masked import dispatch_masked
from moe_lab.dispatch.naive import dispatch_naive
from moe_lab.dispatch.sorted import dispatch_sorted, dispatch_sorted_python

Backend = Callable[..., DispatchOutput]

BACKENDS: dict[str, Backend] = {
    "naive": dispatch_naive,
    "masked": dispatch_masked,
    "einsum": dispatch_einsum,
    "capacity": dispatch_capacity,
    "sorted": dispatch_sorted,
    "sorted_python": dispatch_sorted_python,
    "grouped": dispatch_grouped,
}


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name raises with the list of known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"dispatch={name!r} is not a registered backend: choose one of {', '.join(BACKENDS)}"
        ) from None


__all__ = [
    "BACKENDS",
    "DispatchOutput",
    "capacity_queue",
    "dispatch_capacity",
    "dispatch_einsum",
    "dispatch_grouped",
    "dispatch_masked",
    "dispatch_naive",
    "dispatch_sorted",
    "dispatch_sorted_python",
    "get_backend",
    "grouped_mm_available",
    "kept_assignments",
]
