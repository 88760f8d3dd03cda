"""Masked dispatch: every expert runs on every token; a per-expert weight, zero where the token
did not choose the expert, keeps only the chosen outputs.

The loop that many tutorials write first. It needs no gather, no sort and no data-dependent
shape (so no host synchronization on a GPU), and pays for that with E/K times the expert FLOPs
of a sparse dispatch: at top-2 of 8 experts, four times the arithmetic, three quarters of it
multiplied by zero. Notebook 07 counts those FLOPs.

Reference: the dense "soft" mixture of Jacobs et al. 1991 computes every expert the same way;
with top-K gates it is the masked form of Shazeer et al. 2017, eq. (1).

Taught in: notebooks/07_gpu_and_scaling.ipynb (the dispatch ladder).
"""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import DispatchOutput, kept_assignments
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


def dispatch_masked(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """``y = sum_e gate[:, e] * expert_e(x)`` with ``gate`` (N, E) zero outside the kept choices.

    Shape: x (N, D) -> y (N, D)
    """
    keep, dropped = kept_assignments(routing, capacity, drop_policy)  # (N, K) each
    kept_weights = routing.weights.to(x.dtype) * keep  # (N, K): zero where dropped or unchosen
    gate = x.new_zeros(x.shape[0], experts.n_experts)  # (N, E)
    gate = gate.scatter_add(1, routing.indices, kept_weights)  # (N, E)
    # unbind: one view per expert, whose gradients autograd stacks once (indexing w[e] per
    # expert would zero-fill a full (E, D, F) gradient each time)
    w_up, w_down = experts.w_up.unbind(0), experts.w_down.unbind(0)
    w_gate = experts.w_gate.unbind(0) if experts.w_gate is not None else None
    y = torch.zeros_like(x)  # (N, D)
    for e in range(experts.n_experts):
        up = x @ w_up[e]  # (N, F): every token, chosen or not
        hidden = experts.hidden(x @ w_gate[e] if w_gate is not None else None, up)
        y = y + gate[:, e : e + 1] * (hidden @ w_down[e])  # (N, D) * (N, 1)
    return DispatchOutput(y=y, dropped=dropped)
