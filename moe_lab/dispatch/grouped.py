"""Grouped-GEMM dispatch: the sorted layout fed to torch's grouped matrix multiply.

``torch.nn.functional.grouped_mm(rows, w, offs=ends)`` multiplies each contiguous group of rows
by its own matrix in one call. On Hopper GPUs it is one fused kernel (bf16); on the CPU torch
runs it as a loop over ordinary matmuls, so there it is a convenience, not a speed-up.

Reference: the ``grouped_mm`` experts backend of Hugging Face transformers; Gale et al. 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from moe_lab.dispatch.common import (
    DispatchOutput,
    combine_sorted,
    kept_assignments,
    sort_by_expert,
)
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult

if hasattr(torch.ops.aten, "_grouped_mm") and (
    torch.ops.aten._grouped_mm.default not in flop_counter.flop_registry
):  # torch's FlopCounterMode has no formula for it (torch 2.13): it would count zero FLOPs

    @flop_counter.register_flop_formula(torch.ops.aten._grouped_mm)
    def _grouped_mm_flops(mat_a, mat_b, *args, **kwargs) -> int:
        """(M, K) rows times E matrices (E, K, N), each row multiplied by one: 2*M*K*N FLOPs."""
        if len(mat_a) == 2 and len(mat_b) == 3:
            return 2 * mat_a[0] * mat_a[1] * mat_b[2]
        raise NotImplementedError(f"FLOPs of grouped_mm for shapes {mat_a} x {mat_b}")


def grouped_mm_available() -> bool:
    """Whether this torch build has ``torch.nn.functional.grouped_mm``."""
    return hasattr(F, "grouped_mm")


def check_alignment(x: torch.Tensor, experts: StackedExperts) -> None:
    """grouped_mm needs every row stride to be a multiple of 16 bytes."""
    itemsize = x.element_size()
    for name, width in (("d_model", experts.d_model), ("expert width", experts.d_expert)):
        if width * itemsize % 16:
            raise ValueError(
                f"dispatch='grouped' needs {name} to be a multiple of {16 // itemsize} for"
                f" {x.dtype} (torch's grouped_mm wants 16-byte row strides), got {width}:"
                " choose another width or use dispatch='sorted' (same result)"
            )


def _grouped(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    try:
        return F.grouped_mm(rows, weight, offs=ends)
    except RuntimeError as error:
        raise RuntimeError(
            f"torch's grouped_mm refused {rows.dtype} on {rows.device} ({error}). On CUDA it needs"
            " a Hopper-class GPU and bfloat16 inputs: use dispatch='sorted' elsewhere."
        ) from error


def dispatch_grouped(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """Sort by expert, then one grouped GEMM per projection.

    Dropless, nothing in this function waits for the GPU: the group ends that ``grouped_mm``
    takes are computed on the device (``sort_by_expert(..., host_offsets=False)``), and every
    shape is known on the host (N*K rows). With a ``capacity`` the number of kept rows depends on
    the routing, so finding them (``nonzero``) reads it back: two synchronizations remain there.
    The ``capacity`` backend keeps static shapes instead, at the cost of padding.

    Shape: x (N, D) -> y (N, D)
    """
    if not grouped_mm_available():
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.nn.functional.grouped_mm:"
            " use dispatch='sorted' (same result) or upgrade torch"
        )
    check_alignment(x, experts)
    keep, dropped = kept_assignments(routing, capacity, drop_policy)  # (N, K) each
    every_slot_kept = capacity is None and routing.mask is None  # dropless token choice
    order = sort_by_expert(routing, None if every_slot_kept else keep, host_offsets=False)
    ends = order.device_offsets[1:].to(torch.int32)  # (E,) end row of each expert's group
    rows = x.index_select(0, order.token_index)  # (N, D) -> (M, D)
    up = _grouped(rows, experts.w_up, ends)  # (M, F)
    gate = _grouped(rows, experts.w_gate, ends) if experts.w_gate is not None else None
    hidden = experts.hidden(gate, up)  # (M, F)
    out = _grouped(hidden, experts.w_down, ends)  # (M, D)
    out = torch.cat([out, out.new_zeros(1, x.shape[1])])  # (M+1, D): row M for dropped slots
    y = combine_sorted(out, order.inverse, routing.indices.shape[1], routing.weights.to(x.dtype))
    return DispatchOutput(y=y, dropped=dropped)
