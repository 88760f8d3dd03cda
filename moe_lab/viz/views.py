"""From an explorer state to the numbers its figure shows, computed by moe_lab itself.

``routing_view`` runs a real ``moe_lab`` router (``build_router``) on a ``toy.token_batch``;
``capacity_view`` runs a real ``MoELayer`` with the capacity dispatch backend. Nothing here
re-implements routing, capacity or dropping: a view only converts the library's tensors into
numpy arrays for plotting. Both are pure functions of the state (seeded, global RNG untouched).

Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moe_lab.balancing import load_cv
from moe_lab.moe_layer import MoELayer, MoEOutput
from moe_lab.routers import NoisyTopKRouter, Router, RoutingResult, build_router
from moe_lab.viz.state import D_MODEL, CapacityState, RoutingState
from moe_lab.viz.toy import TokenBatch, gate_weight, token_batch


def explorer_router(state: RoutingState) -> Router:
    """The library router a routing state describes, with the seeded toy gate and the bias set.

    Noise: ``noisy_topk`` is put in training mode with the fixed noise std ``state.noise``
    (``MoEConfig.noise_std``) when ``state.noise > 0``, in eval mode (no noise, as at inference)
    otherwise.
    """
    config = state.config()
    with torch.random.fork_rng():  # nn.Linear's initialization draws from the global RNG
        router = build_router(config)
    with torch.no_grad():
        router.gate.weight.copy_(gate_weight(config.routed_experts, D_MODEL, seed=state.seed))
        router.selection_bias.zero_()
        router.selection_bias[state.bias_expert] = state.bias
    router.eval()
    if isinstance(router, NoisyTopKRouter) and state.noise > 0:
        router.train()
    return router


def route_state(state: RoutingState) -> tuple[TokenBatch, RoutingResult]:
    """Run ``explorer_router(state)`` on the state's token batch; seeded, no gradient."""
    batch = token_batch(state.n_tokens, D_MODEL, seed=state.seed)
    router = explorer_router(state)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(state.seed)  # the noise of noisy_topk; the global RNG is restored
        routing = router(batch.x, batch.token_ids)
    return batch, routing


@dataclass(frozen=True)
class RoutingView:
    """What the routing figure draws (numpy, token order = position in the batch).

    Attributes:
        state: the state it was computed from.
        words: the N words; kinds (N,) their kind index.
        indices, weights, mask: (N, K) the router's choices, combine weights, real slots.
        combine: (E, N) combine weight of token n at expert e (0 where not chosen).
        routed: (E, N) bool, token n was routed to expert e (a routed weight can be ~0: this,
            not ``combine > 0``, says where a token went).
        load: (E,) assignments per expert (``RoutingResult.tokens_per_expert``).
        cv: coefficient of variation of ``load``.
        capacity: C of expert choice, else None.
        routing: the library's ``RoutingResult``.
    """

    state: RoutingState
    words: tuple[str, ...]
    kinds: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    combine: np.ndarray
    routed: np.ndarray
    load: np.ndarray
    cv: float
    capacity: int | None
    routing: RoutingResult

    @property
    def n_experts(self) -> int:
        return self.combine.shape[0]


def routing_view(state: RoutingState) -> RoutingView:
    """Compute the routing explorer's view of ``state`` with the library router.

    Args:
        state: a ``RoutingState``.

    Returns:
        A ``RoutingView``.

    Taught in: notebooks/02_routing.ipynb.
    """
    batch, routing = route_state(state)
    n_tokens, n_experts = routing.probs.shape
    mask = routing.valid_mask()  # (N, K)
    combine = torch.zeros(n_tokens, n_experts)
    combine.scatter_add_(1, routing.indices, routing.weights.float() * mask)  # (N, E)
    routed = torch.zeros(n_tokens, n_experts, dtype=torch.bool)
    routed.scatter_(1, routing.indices, mask)  # (N, E); padded slots (mask False) stay False
    load = routing.tokens_per_expert()  # (E,)
    capacity = None
    if state.router == "expert_choice":
        capacity = min(n_tokens, state.config().capacity(n_tokens))
    return RoutingView(
        state=state,
        words=batch.words,
        kinds=batch.kinds.numpy(),
        indices=routing.indices.numpy(),
        weights=routing.weights.float().numpy(),
        mask=mask.numpy(),
        combine=combine.t().numpy(),  # (N, E) -> (E, N)
        routed=routed.t().numpy(),  # (N, E) -> (E, N)
        load=load.numpy(),
        cv=load_cv(load),
        capacity=capacity,
        routing=routing,
    )


def capacity_layer(state: CapacityState) -> MoELayer:
    """The ``MoELayer`` a capacity state describes: seeded experts, the skewed toy gate."""
    config = state.config()
    with torch.random.fork_rng():
        torch.manual_seed(state.seed)
        layer = MoELayer(config).eval()
    with torch.no_grad():
        layer.router.gate.weight.copy_(
            gate_weight(config.routed_experts, config.d_model, seed=state.seed, skew=state.skew)
        )
    return layer


@dataclass(frozen=True)
class CapacityView:
    """What the capacity figure draws.

    Attributes:
        state: the state it was computed from.
        capacity: C.
        indices, weights: (N, K) routing; dropped (N, K) the library's dropped mask.
        load: (E,) routed assignments per expert; kept (E,) those within capacity.
        dropped_fraction: dropped / routed assignments (``MoEOutput.dropped_fraction``).
        tokens_without_expert: (N,) bool, every slot dropped: the token's MoE output is zero.
        output: the library's ``MoEOutput``.
    """

    state: CapacityState
    capacity: int
    indices: np.ndarray
    weights: np.ndarray
    dropped: np.ndarray
    load: np.ndarray
    kept: np.ndarray
    dropped_fraction: float
    tokens_without_expert: np.ndarray
    output: MoEOutput


def capacity_view(state: CapacityState) -> CapacityView:
    """Run the capacity state's layer on its token batch and collect what was dropped.

    Args:
        state: a ``CapacityState``.

    Returns:
        A ``CapacityView``.

    Taught in: notebooks/03_load_balancing.ipynb.
    """
    batch = token_batch(state.n_tokens, D_MODEL, seed=state.seed)
    layer = capacity_layer(state)
    with torch.no_grad():
        output = layer(batch.x)
    indices = output.routing.indices  # (N, K)
    dropped = output.dropped  # (N, K)
    n_experts = output.routing.n_experts
    kept = torch.bincount(indices[~dropped], minlength=n_experts)  # (E,)
    return CapacityView(
        state=state,
        capacity=state.capacity,
        indices=indices.numpy(),
        weights=output.routing.weights.float().numpy(),
        dropped=dropped.numpy(),
        load=output.tokens_per_expert.numpy(),
        kept=kept.numpy(),
        dropped_fraction=output.dropped_fraction,
        tokens_without_expert=dropped.all(dim=1).numpy(),
        output=output,
    )
