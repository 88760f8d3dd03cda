"""The reference dispatch: a readable loop over experts. Every faster backend is tested
against it. Slow on purpose: one boolean search and one index per expert."""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import DispatchOutput, kept_assignments
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


def dispatch_naive(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """``y[n] = sum_k weights[n, k] * expert_{indices[n, k]}(x[n])`` over kept assignments.

    Shape: x (N, D) -> y (N, D)
    """
    keep, dropped = kept_assignments(routing, capacity, drop_policy)  # (N, K) each
    y = torch.zeros_like(x)  # (N, D)
    for expert in range(experts.n_experts):
        token_index, slot = torch.where((routing.indices == expert) & keep)  # (m,), (m,)
        if token_index.numel() == 0:
            continue
        expert_out = experts.expert_forward(x[token_index], expert)  # (m, D)
        weight = routing.weights[token_index, slot].unsqueeze(-1)  # (m, 1)
        y = y.index_add(0, token_index, expert_out * weight)  # (N, D)
    return DispatchOutput(y=y, dropped=dropped)
