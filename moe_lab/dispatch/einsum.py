"""GShard's one-hot dispatch: a (N, E, C) dispatch tensor and two einsums.

Each kept assignment (token n, expert e) gets a slot c < C in its expert's buffer; a one-hot
tensor ``dispatch[n, e, c]`` records it and ``combine[n, e, c]`` holds its combine weight. Then

    expert_inputs  = einsum("nec,nd->ecd", dispatch, x)        (E, C, D)
    expert_outputs = every expert on its C rows (three bmm)     (E, C, D)
    y              = einsum("nec,ecd->nd", combine, outputs)    (N, D)

Every shape is static, which is why TPUs (and GShard, Switch, Mesh-TensorFlow) used it; the price
is the (N, E, C) tensors, with C about N*K/E, so N*N*K bytes-ish, and the einsums' FLOPs, which
grow as N*E*C*D: quadratic in the number of tokens. Notebook 07 counts both. The ``capacity``
backend does the same with gathers instead of one-hot products.

Reference: Lepikhin et al. 2020 (GShard), Algorithm 1 and its einsum notation; Fedus et al. 2021
(Switch Transformer), section 2.2 and the Mesh-TensorFlow implementation it cites.

Taught in: notebooks/07_gpu_and_scaling.ipynb (the dispatch ladder).
"""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import DispatchOutput, capacity_queue
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


def one_hot_dispatch(
    routing: RoutingResult, capacity: int, drop_policy: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GShard's dispatch (N, E, C) 0/1 and combine (N, E, C) weight tensors, and keep (N, K).

    Shape: routing (N, K) -> (N, E, C), (N, E, C), (N, K)
    """
    keep, position = capacity_queue(routing, capacity, drop_policy)  # (N, K) each
    # one-hot by comparison with 0..E-1 (F.one_hot checks its input's range on the host)
    experts = torch.arange(routing.n_experts, device=position.device)  # (E,)
    expert_hot = (routing.indices.unsqueeze(-1) == experts).to(dtype)  # (N, K, E)
    slots = torch.arange(capacity, device=position.device)  # (C,)
    # a dropped assignment's position is >= C: it matches no slot
    slot_hot = (position.unsqueeze(-1) == slots).to(dtype)  # (N, K, C)
    slot_hot = slot_hot * keep.to(dtype).unsqueeze(-1)  # (N, K, C)
    weights = routing.weights.to(dtype)  # (N, K)
    dispatch = combine = None
    for k in range(routing.indices.shape[1]):  # one (N, E, C) outer product per slot
        hot = expert_hot[:, k, :, None] * slot_hot[:, k, None, :]  # (N, E, 1) * (N, 1, C)
        weighted = hot * weights[:, k, None, None]  # (N, E, C)
        dispatch = hot if dispatch is None else dispatch + hot
        combine = weighted if combine is None else combine + weighted
    return dispatch, combine, keep


def dispatch_einsum(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """Dispatch with one-hot einsums into an (E, C, D) buffer; ``capacity`` None = no drops
    (C = the largest expert load, which reads it on the host).

    Shape: x (N, D) -> y (N, D)
    """
    if capacity is None:
        capacity = max(1, int(routing.tokens_per_expert().max()))
    dispatch, combine, keep = one_hot_dispatch(routing, capacity, drop_policy, x.dtype)
    expert_inputs = torch.einsum("nec,nd->ecd", dispatch, x)  # (E, C, D)
    expert_outputs = experts.batched_forward(expert_inputs)  # (E, C, D)
    y = torch.einsum("nec,ecd->nd", combine, expert_outputs)  # (N, D)
    dropped = routing.valid_mask() & ~keep  # (N, K)
    return DispatchOutput(y=y, dropped=dropped)
