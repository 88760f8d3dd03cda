"""moe_lab: a Mixture-of-Experts course and library.

Shape alphabet, used in every comment and docstring:

    B  batch (sequences)          T  sequence length          N = B*T  tokens
    D  model width                F  expert hidden width      E  experts
    K  experts per token (top-k)  C  capacity per expert      V  vocabulary
    W  expert-parallel world size

Batch-first everywhere; C always means capacity, never channels.
"""

from moe_lab.config import ModelConfig, MoEConfig, expert_capacity
from moe_lab.ffn import DenseFFN
from moe_lab.moe_layer import MoELayer, MoEOutput
from moe_lab.routers import RoutingResult

__version__ = "0.1.0"

__all__ = [
    "DenseFFN",
    "MoEConfig",
    "MoELayer",
    "MoEOutput",
    "ModelConfig",
    "RoutingResult",
    "expert_capacity",
]
