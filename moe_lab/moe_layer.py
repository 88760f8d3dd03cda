"""The Mixture-of-Experts FFN block: router + dispatch + routed experts (+ shared experts).

Taught in: notebooks/02_routing.ipynb and notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe_lab.balancing import (
    load_balancing_loss,
    router_z_loss,
    sequence_balance_loss,
    update_selection_bias,
)
from moe_lab.config import MoEConfig
from moe_lab.dispatch import get_backend
from moe_lab.dispatch.groups import dispatch_in_groups, group_size
from moe_lab.experts import StackedExperts
from moe_lab.ffn import DenseFFN
from moe_lab.routers import RoutingResult, build_router

LOSS_NAMES = ("load_balance", "z", "seq_balance")


@dataclass
class MoEOutput:
    """What one MoE block returns: the output, its losses and the routing statistics.

    Attributes:
        y: the block's output, same shape as its input.
        aux_loss: scalar, the weighted total of the balancing losses (add it to the LM loss).
        losses: the unweighted parts: ``load_balance`` (Switch), ``z`` (ST-MoE), ``seq_balance``
            (DeepSeek-V3).
        tokens_per_expert: (E,) long, routed assignments per expert before any dropping.
        dropped: (N, K) bool, assignments cut by capacity (they contribute zero).
        routing: the router's decisions (indices, weights, probs, logits, mask).
    """

    y: torch.Tensor
    aux_loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor
    routing: RoutingResult

    @property
    def n_dropped(self) -> int:
        return int(self.dropped.sum())

    @property
    def dropped_fraction(self) -> float:
        """Dropped assignments / routed assignments."""
        return self.n_dropped / max(1, int(self.tokens_per_expert.sum()))


class MoELayer(nn.Module):
    """A Mixture-of-Experts FFN: each token is processed by K of E experts, weighted by the router.

    ``y = sum_k w_k(x) * expert_{i_k(x)}(x) [+ shared(x)]`` where the router picks the experts
    ``i_k`` and weights ``w_k``, and ``dispatch`` (a backend name) decides how the computation is
    laid out. Sizes after fine-grained segmentation: E = ``config.routed_experts``, K =
    ``config.routed_top_k``, F = ``config.expert_width``.

    Reference: Shazeer et al. 2017; Lepikhin et al. 2020 (GShard); Fedus et al. 2021 (Switch);
    Dai et al. 2024 (DeepSeekMoE: shared and fine-grained experts).

    Args:
        config: an ``MoEConfig``.

    Shape:
        x: (B, T, D) or (N, D); token_ids: (B, T) or (N,), only for ``router="hash"``.
        Returns ``MoEOutput`` with y the shape of x.

    Attributes:
        router: the ``Router`` (``router.gate`` is an nn.Linear(D, E); ``router.selection_bias``
            a buffer (E,)).
        experts: ``StackedExperts`` with w_gate, w_up (E, D, F) and w_down (E, F, D).
        shared_experts: a ``DenseFFN`` of width ``config.shared_width``, or None.
        shared_gate: nn.Linear(D, 1) for Qwen2-MoE's shared-expert gate, or None.

    Example:
        >>> layer = MoELayer(MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2))
        >>> out = layer(torch.randn(2, 5, 16))
        >>> out.y.shape, out.tokens_per_expert.sum().item()
        (torch.Size([2, 5, 16]), 20)

    Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.dispatch = get_backend(config.dispatch)  # fails loudly on an unknown name
        self.router = build_router(config)
        self.experts = StackedExperts(
            config.routed_experts, config.d_model, config.expert_width, config.activation
        )
        self.shared_experts = (
            DenseFFN(config.d_model, config.shared_width, config.activation)
            if config.n_shared_experts > 0
            else None
        )
        self.shared_gate = (
            nn.Linear(config.d_model, 1, bias=False) if config.shared_expert_gate else None
        )

    def _check_input(self, x: torch.Tensor, token_ids: torch.Tensor | None) -> None:
        d_model = self.config.d_model
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MoELayer expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"MoELayer expects floating-point token vectors, got dtype {x.dtype}:"
                " embed token ids first (nn.Embedding) or call x.float()"
            )
        if x.dim() not in (2, 3) or x.shape[-1] != d_model:
            raise ValueError(
                f"MoELayer expects input of shape (B, T, {d_model}) or (N, {d_model}),"
                f" got {tuple(x.shape)}: the last dimension must equal d_model={d_model}"
            )
        if self.config.validate_inputs and not bool(torch.isfinite(x).all()):
            raise ValueError(
                "MoELayer input contains NaN or infinite values: check the layers before it"
            )
        if self.config.router == "hash" and token_ids is None:
            raise ValueError("router='hash' routes by token id: pass token_ids=(B, T) or (N,)")

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> MoEOutput:
        self._check_input(x, token_ids)
        batch_size = x.shape[0] if x.dim() == 3 else 1
        flat = x.reshape(-1, self.config.d_model)  # (B, T, D) -> (N, D)
        routing = self.router(flat, token_ids)
        capacity, groups = None, self.config.capacity_groups
        if self.config.capacity_factor is not None and self.config.router != "expert_choice":
            capacity = self.config.capacity(group_size(flat.shape[0], groups))  # per group
        dispatched = dispatch_in_groups(
            self.dispatch, flat, routing, self.experts, capacity, self.config.drop_policy, groups
        )
        y = self.add_shared_experts(flat, dispatched.y)  # (N, D)
        losses = self.balancing_losses(routing, batch_size)
        return MoEOutput(
            y=y.view(x.shape),  # (N, D) -> x's shape
            aux_loss=self.weighted_aux_loss(losses, y.device),
            losses=losses,
            tokens_per_expert=routing.tokens_per_expert(),
            dropped=dispatched.dropped,
            routing=routing,
        )

    def add_shared_experts(self, flat: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
        """The routed experts' output (N, D) plus the shared experts' on the same tokens (gated
        by a sigmoid for Qwen2-MoE); ``routed`` unchanged when the layer has none."""
        if self.shared_experts is None:
            return routed
        shared = self.shared_experts(flat)  # (N, D)
        if self.shared_gate is not None:
            shared = shared * torch.sigmoid(self.shared_gate(flat))  # (N, D) * (N, 1)
        return routed + shared

    def weighted_aux_loss(self, losses: dict[str, torch.Tensor], device) -> torch.Tensor:
        """``aux_loss``: the balancing losses times their weights, summed (a zero scalar when
        every weight is 0; parts with weight 0 add no graph)."""
        weighted = [w * losses[name] for name, w in self.loss_weights().items() if w > 0]
        if not weighted:
            return torch.zeros((), device=device)
        return sum(weighted[1:], start=weighted[0])

    def loss_weights(self) -> dict[str, float]:
        """The weight of each balancing loss in ``aux_loss``."""
        cfg = self.config
        return {
            "load_balance": cfg.aux_loss_weight,
            "z": cfg.z_loss_weight,
            "seq_balance": cfg.seq_aux_loss_weight,
        }

    def balancing_losses(self, routing: RoutingResult, batch_size: int) -> dict[str, torch.Tensor]:
        """The unweighted balancing losses of one routing (see ``moe_lab.balancing``).

        Every part is computed so that it can be reported; a part whose weight is 0 is computed
        without an autograd graph, since nothing will differentiate it.
        """
        weights = self.loss_weights()
        grad_enabled = torch.is_grad_enabled()
        losses = {}
        with torch.set_grad_enabled(grad_enabled and weights["load_balance"] > 0):
            losses["load_balance"] = load_balancing_loss(
                routing.probs, routing.indices, routing.mask
            )
        with torch.set_grad_enabled(grad_enabled and weights["z"] > 0):
            losses["z"] = router_z_loss(routing.logits)
        with torch.set_grad_enabled(grad_enabled and weights["seq_balance"] > 0):
            if routing.mask is None:
                losses["seq_balance"] = sequence_balance_loss(
                    routing.probs, routing.indices, batch_size, self.config.routed_top_k
                )
            else:  # expert choice: balanced by construction; no per-token top-K to count
                losses["seq_balance"] = torch.zeros((), device=routing.probs.device)
        return losses

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: torch.Tensor) -> None:
        """Loss-free balancing step (``balancing.update_selection_bias``); call once per training
        step after the optimizer step. A no-op when ``config.bias_update_rate`` is 0."""
        if self.config.bias_update_rate > 0:
            update_selection_bias(
                self.router.selection_bias, tokens_per_expert, self.config.bias_update_rate
            )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"router={c.router!r}, experts={c.routed_experts}, top_k={c.routed_top_k},"
            f" dispatch={c.dispatch!r}, shared_width={c.shared_width}"
        )
