"""The dense transformer FFN: GELU (Vaswani et al. 2017, GPT-2) and SwiGLU (Shazeer 2020).

Taught in: notebooks/01_dense_ffn.ipynb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.config import ACTIVATIONS


def swiglu_hidden(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's hidden activation: silu(x W_gate) * (x W_up) (Shazeer 2020, eq. (6))."""
    return F.silu(gate) * up


class DenseFFN(nn.Module):
    """Position-wise feed-forward network of one transformer block.

    ``swiglu``: ``y = (silu(x W_gate) * (x W_up)) W_down``, three matrices (Llama, Mixtral).
    ``gelu``:   ``y = gelu(x W_up) W_down``, two matrices (GPT-2, the original transformer used ReLU).
    No biases, as in every MoE model the course studies.

    Reference: Shazeer 2020, "GLU Variants Improve Transformer", eq. (6).

    Args:
        d_model: D, input and output width.
        d_ff: F, hidden width.
        activation: ``"swiglu"`` or ``"gelu"``.

    Shape:
        x: (..., D) -> y: (..., D)

    Attributes:
        gate: nn.Linear(D, F) (SwiGLU only); up: nn.Linear(D, F); down: nn.Linear(F, D).

    Example:
        >>> ffn = DenseFFN(d_model=16, d_ff=64)
        >>> ffn(torch.randn(2, 3, 16)).shape
        torch.Size([2, 3, 16])

    Taught in: notebooks/01_dense_ffn.ipynb.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown: choose one of {', '.join(ACTIVATIONS)}"
            )
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.gate = nn.Linear(d_model, d_ff, bias=False) if activation == "swiglu" else None
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            hidden = swiglu_hidden(self.gate(x), self.up(x))  # (..., F)
        else:
            hidden = F.gelu(self.up(x))  # (..., F)
        return self.down(hidden)  # (..., D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}"
