"""GShard's local groups: capacity counted per group of tokens, not over the whole batch.

GShard splits the N tokens of a batch evenly into G groups of S = N/G tokens and gives each
group its own share of every expert's capacity, 2N/(G E) with top-2 (Lepikhin et al. 2020,
section 2.2, "local group dispatching", and Algorithm 1): a group is what one device routes,
so capacity is enforced without counting tokens across devices. Which tokens drop then
depends only on the tokens of their own group. With a capacity factor cf that share is
C = ceil(cf * S * K / E) (``MoEConfig.capacity``), and each group fills it in its own priority
order (``common.priority_order``).

``MoEConfig.capacity_groups = G`` makes a single-process ``MoELayer`` do the same, so that it
drops exactly what expert parallelism over G ranks drops (``moe_lab.parallel``): there each
rank's local batch is one group.

Taught in: notebooks/03_load_balancing.ipynb (capacity), notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import DispatchOutput
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


def group_size(n_tokens: int, n_groups: int) -> int:
    """S = N / G; raises unless G divides N."""
    if n_tokens % n_groups:
        raise ValueError(
            f"capacity_groups={n_groups} does not divide the {n_tokens} tokens of the batch:"
            f" use a batch whose token count is a multiple of {n_groups}"
        )
    return n_tokens // n_groups


def routing_rows(routing: RoutingResult, rows: slice) -> RoutingResult:
    """The routing decisions of a contiguous block of tokens."""
    mask = None if routing.mask is None else routing.mask[rows]
    return RoutingResult(
        routing.indices[rows],
        routing.weights[rows],
        routing.probs[rows],
        routing.logits[rows],
        mask,
    )


def dispatch_in_groups(
    backend,
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None,
    drop_policy: str,
    n_groups: int,
) -> DispatchOutput:
    """Run ``backend`` on each of ``n_groups`` contiguous groups of tokens with its own capacity.

    With one group (or no capacity, where groups change nothing) this is one backend call.

    Shape: x (N, D) -> y (N, D), dropped (N, K)
    """
    if n_groups == 1 or capacity is None:
        return backend(x, routing, experts, capacity, drop_policy)
    size = group_size(x.shape[0], n_groups)
    outputs = [
        backend(x[rows], routing_rows(routing, rows), experts, capacity, drop_policy)
        for rows in (slice(g * size, (g + 1) * size) for g in range(n_groups))
    ]
    y = torch.cat([out.y for out in outputs])  # G x (S, D) -> (N, D)
    return DispatchOutput(y=y, dropped=torch.cat([out.dropped for out in outputs]))
