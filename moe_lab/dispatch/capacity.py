"""Capacity-based dispatch (GShard, Switch): a fixed (E, C, D) buffer and three bmm's.

Each expert accepts at most C assignments; the rest are dropped by the priority rule of
``drop_policy`` (see ``common.priority_order``). Dropped assignments contribute zero expert
output: the token continues only through the residual connection around the MoE block. The
fixed buffer shape is what made this the TPU/GPU standard: static shapes, no host sync for the
counts; the cost is padding (empty slots are computed too) and dropped tokens.

Reference: Lepikhin et al. 2020 (GShard), Algorithm 1; Fedus et al. 2021 (Switch), section 2.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.dispatch.common import DispatchOutput, capacity_queue
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


@dataclass
class CapacityPlacement:
    """Where each kept assignment sits in the (E, C, D) buffer, for ``capacity_combine``.

    token_index (M,) long: the token of each kept assignment; slot_index (M,) long: its row
    ``expert * C + position`` of the flattened buffer; weights (M, 1): its combine weight;
    dropped (N, K) bool: the assignments cut by capacity.
    """

    token_index: torch.Tensor
    slot_index: torch.Tensor
    weights: torch.Tensor
    dropped: torch.Tensor


def capacity_buffer(
    x: torch.Tensor, routing: RoutingResult, capacity: int, drop_policy: str = "position"
) -> tuple[torch.Tensor, CapacityPlacement]:
    """Scatter the kept assignments into a zero-padded (E, C, D) buffer, expert by expert.

    Shape: x (N, D) -> buffer (E, C, D)
    """
    n_tokens, d_model = x.shape
    k = routing.indices.shape[1]
    n_experts = routing.n_experts
    keep, position = capacity_queue(routing, capacity, drop_policy)  # (N, K) each
    kept_flat = keep.reshape(-1).nonzero().squeeze(-1)  # (M,) flat ids n*K + k
    token_index = kept_flat // k  # (M,)
    slot_index = routing.indices.reshape(-1)[kept_flat] * capacity + position.reshape(-1)[kept_flat]
    # Empty buffer slots read a zero row appended after the N real tokens.
    source = torch.full((n_experts * capacity,), n_tokens, dtype=torch.long, device=x.device)
    source[slot_index] = token_index  # (E*C,)
    x_padded = torch.cat([x, x.new_zeros(1, d_model)])  # (N+1, D)
    buffer = x_padded[source].view(n_experts, capacity, d_model)  # (E*C, D) -> (E, C, D)
    weights = routing.weights.reshape(-1)[kept_flat].unsqueeze(-1)  # (M, 1)
    dropped = routing.valid_mask() & ~keep  # (N, K)
    return buffer, CapacityPlacement(token_index, slot_index, weights, dropped)


def capacity_combine(
    expert_out: torch.Tensor, placement: CapacityPlacement, n_tokens: int
) -> torch.Tensor:
    """Each token's weighted sum of its kept rows of the experts' output buffer.

    Shape: expert_out (E*C, D) -> y (N, D)
    """
    contributions = expert_out[placement.slot_index] * placement.weights  # (M, D)
    y = expert_out.new_zeros(n_tokens, expert_out.shape[1])  # (N, D)
    return y.index_add(0, placement.token_index, contributions)


def dispatch_capacity(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """Scatter kept assignments into an (E, C, D) buffer, run every expert with bmm, gather back.

    ``capacity`` None means "large enough to drop nothing" (C = the largest expert load).

    Shape: x (N, D) -> y (N, D)
    """
    n_tokens, d_model = x.shape
    if capacity is None:
        capacity = max(1, int(routing.tokens_per_expert().max()))
    buffer, placement = capacity_buffer(x, routing, capacity, drop_policy)  # (E, C, D)
    expert_out = experts.batched_forward(buffer).reshape(-1, d_model)  # (E*C, D)
    return DispatchOutput(capacity_combine(expert_out, placement, n_tokens), placement.dropped)
