"""Routed experts stored as stacked weight tensors.

One layout serves every dispatch backend and maps directly onto published checkpoints:

    w_gate (E, D, F)   SwiGLU gate projection (absent for GELU experts)
    w_up   (E, D, F)   up projection
    w_down (E, F, D)   down projection

Expert e computes ``(silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]`` (SwiGLU) or
``gelu(x @ w_up[e]) @ w_down[e]`` (GELU). Shared experts and fine-grained segmentation are
built by ``MoELayer`` from the config; this module only holds the routed experts.

Taught in: notebooks/02_routing.ipynb (dispatch), notebooks/07_gpu_and_scaling (the ladder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.buffers import BufferPool
from moe_lab.config import ACTIVATIONS
from moe_lab.ffn import swiglu_hidden


class StackedExperts(nn.Module):
    """E independent FFN experts whose weights live in three stacked tensors.

    Args:
        n_experts: E.
        d_model: D.
        d_expert: F, the hidden width of one expert.
        activation: ``"swiglu"`` or ``"gelu"``.

    Shape:
        ``expert_forward(x, e)``: x (M, D) -> (M, D), expert e alone (the readable reference).
        ``batched_forward(x)``: x (E, C, D) -> (E, C, D), every expert on its own rows (bmm).

    Attributes:
        scratch: a ``BufferPool`` of large scratch tensors (weight gradients, saved hidden
            activations) that the ``sorted`` backend reuses between calls on the CPU once
            nothing else holds them; ``scratch.clear()`` frees them.

    Initialization matches ``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per matrix, so an
    expert is initialized like a dense FFN of the same width.
    """

    def __init__(self, n_experts: int, d_model: int, d_expert: int, activation: str = "swiglu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown: choose one of {', '.join(ACTIVATIONS)}"
            )
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        self.activation = activation
        E, D, F_ = n_experts, d_model, d_expert
        self.w_gate = nn.Parameter(torch.empty(E, D, F_)) if activation == "swiglu" else None
        self.w_up = nn.Parameter(torch.empty(E, D, F_))
        self.w_down = nn.Parameter(torch.empty(E, F_, D))
        self.scratch = BufferPool()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for weight, fan_in in (
            (self.w_gate, self.d_model),
            (self.w_up, self.d_model),
            (self.w_down, self.d_expert),
        ):
            if weight is not None:
                bound = 1.0 / math.sqrt(fan_in)
                weight.uniform_(-bound, bound)

    def hidden(self, gate: torch.Tensor | None, up: torch.Tensor) -> torch.Tensor:
        """The activation between the up and the down projection."""
        return swiglu_hidden(gate, up) if self.activation == "swiglu" else F.gelu(up)

    def expert_forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """Expert ``expert`` on rows x (M, D) -> (M, D). Indexes the stacked weights: reference
        code only (under autograd each index zero-fills a full-size gradient)."""
        gate = x @ self.w_gate[expert] if self.w_gate is not None else None  # (M, F)
        up = x @ self.w_up[expert]  # (M, F)
        return self.hidden(gate, up) @ self.w_down[expert]  # (M, D)

    def batched_forward(self, x: torch.Tensor) -> torch.Tensor:
        """All experts at once on a padded buffer x (E, C, D) -> (E, C, D), three bmm's."""
        gate = torch.bmm(x, self.w_gate) if self.w_gate is not None else None  # (E, C, F)
        up = torch.bmm(x, self.w_up)  # (E, C, F)
        return torch.bmm(self.hidden(gate, up), self.w_down)  # (E, C, D)

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, d_model={self.d_model}, d_expert={self.d_expert},"
            f" activation={self.activation!r}"
        )
