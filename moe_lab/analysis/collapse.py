"""Three different failures that explainers merge into "expert collapse", measured apart.

1. **Routing collapse**: the load concentrates on a few experts; the others get few tokens or
   none ("dead" experts) and stop learning. It is a property of the *router's choices*,
   measured from the loads: MaxVio = (max - mean) / mean (Wang et al. 2024;
   ``moe_lab.balancing.max_violation``), the normalized entropy of the load distribution
   (1 = uniform, 0 = one expert takes everything), the router's mean per-token entropy and the
   number of dead experts. The cure is balancing: Switch's auxiliary loss (Fedus et al. 2021,
   eq. (4)-(6)) or DeepSeek-V3's loss-free bias (DeepSeek-AI 2024, section 2.1.2).
   Shazeer et al. 2017 (section 4) first described it: favoured experts train faster and are
   chosen more, a self-reinforcing loop.
2. **Expert homogenization**: the experts compute nearly the same function, so E experts are
   worth about one, however well the load is balanced. It is a property of the *experts'
   weights*, measured by feeding every expert the same inputs and comparing their outputs with
   linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
   Revisited"): for column-centred X (N, p), Y (N, q),

       CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

   which is 1 for identical outputs (and for outputs equal up to a rotation and a scale) and
   near 0 for unrelated ones. Upcycled models start fully homogenized (every expert a copy of
   one dense FFN); OLMoE (Muennighoff et al. 2024, section 5.3) attributes Mixtral's flat domain
   profile to that start.
3. **Representation collapse of the routing space** (Chi et al. 2022, "On the Representation
   Collapse of Sparse Mixture of Experts", NeurIPS): the router scores a token by dot products
   with E expert embeddings (the rows of the gate, W_g (E, D)), so the gradient the routing
   sends into the token's representation h is a combination of those E rows: learning to route
   pulls h towards a subspace of dimension at most E < D, and tokens cluster around the
   expert embeddings. It is a property of the *representations*. Two measures: the share of the
   variance of the router inputs that lies in the span of the gate rows (E / D for a random
   E-dimensional subspace), and the effective rank of the router inputs (Roy & Vetterli 2007:
   exp of the entropy of the normalized singular values; D = full rank, 1 = a line). The cure
   Chi et al. propose is routing on a low-dimensional hypersphere (X-MoE).

A model can show one without the others; telling them apart is the point of notebook 05.

Shape alphabet: N tokens, D model width, E experts.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_lab.analysis.capture import RoutingCapture
from moe_lab.balancing import max_violation
from moe_lab.experts import StackedExperts

DEAD_FRACTION = 0.01  # an expert is dead when it gets under 1% of the mean load


# --------------------------------------------------------------------------------------------
# 1. Routing collapse
# --------------------------------------------------------------------------------------------


def load_entropy(load: torch.Tensor) -> float:
    """Entropy of the load distribution divided by log E: 1 = uniform, 0 = one expert.

    Shape: load (E,) counts or shares
    """
    p = load.double() / load.double().sum().clamp_min(1e-300)
    n_experts = load.numel()
    if n_experts < 2:
        return 1.0
    return float(torch.special.entr(p).sum() / math.log(n_experts))


def dead_experts(load: torch.Tensor, fraction: float = DEAD_FRACTION) -> int:
    """Experts whose load is below ``fraction`` times the mean load (default: under 1%).

    With ``fraction=0`` only experts with no assignment at all count.
    """
    load = load.double()
    threshold = fraction * load.mean()
    return int((load <= threshold).sum()) if fraction == 0 else int((load < threshold).sum())


def router_entropy(probs: torch.Tensor) -> float:
    """Mean over tokens of the router distribution's entropy, in nats (log E = uniform).

    Shape: probs (N, E)
    """
    return float(torch.special.entr(probs.double()).sum(-1).mean())


@dataclass(frozen=True)
class RoutingCollapse:
    """How concentrated one block's load is (see the module docstring).

    Attributes:
        load: (E,) assignments per expert.
        max_violation: MaxVio of the load (0 = balanced, E - 1 = one expert takes all at K=1).
        load_entropy: normalized entropy of the load (1 = uniform).
        dead: experts under ``DEAD_FRACTION`` of the mean load.
        router_entropy: mean per-token router entropy in nats.
    """

    load: torch.Tensor
    max_violation: float
    load_entropy: float
    dead: int
    router_entropy: float


def routing_collapse(capture: RoutingCapture, layer: int) -> RoutingCollapse:
    """The routing-collapse measures of block ``layer`` over a capture."""
    indices = capture.indices[layer]  # (L, K)
    load = torch.bincount(indices.reshape(-1), minlength=capture.n_experts)  # (E,)
    return RoutingCollapse(
        load=load,
        max_violation=max_violation(load),
        load_entropy=load_entropy(load),
        dead=dead_experts(load),
        router_entropy=router_entropy(capture.probs[layer]),
    )


# --------------------------------------------------------------------------------------------
# 2. Expert homogenization
# --------------------------------------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same N inputs (Kornblith et al. 2019).

    Columns are centred first. 1 = identical up to rotation and isotropic scale.

    Shape: x (N, p), y (N, q)
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows and y {y.shape[0]}: CKA needs the same inputs")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.t() @ x).square().sum()
    norm = torch.linalg.matrix_norm(x.t() @ x) * torch.linalg.matrix_norm(y.t() @ y)
    return float(cross / norm) if norm > 0 else 0.0


@torch.no_grad()
def expert_outputs(experts: StackedExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert applied to the same inputs, with the library's reference expert code.

    Shape: x (N, D) -> (E, N, D)
    """
    return torch.stack([experts.expert_forward(x, e) for e in range(experts.n_experts)])


def expert_similarity(experts: StackedExperts, x: torch.Tensor) -> torch.Tensor:
    """(E, E) linear CKA between the outputs of every pair of experts on inputs x (N, D).

    One product of the stacked centred outputs gives every cross term ``Y_j^T Y_i`` at once;
    each entry equals ``linear_cka(outputs[i], outputs[j])``.
    """
    outputs = expert_outputs(experts, x).double()  # (E, N, D)
    n_experts, _, d_model = outputs.shape
    centred = outputs - outputs.mean(1, keepdim=True)  # (E, N, D)
    stacked = centred.permute(1, 0, 2).reshape(centred.shape[1], -1)  # (N, E*D)
    cross = stacked.t() @ stacked  # (E*D, E*D): block (i, j) is Y_i^T Y_j
    blocks = cross.view(n_experts, d_model, n_experts, d_model).permute(0, 2, 1, 3)  # (E, E, D, D)
    squared = blocks.square().sum((-2, -1))  # (E, E): ||Y_i^T Y_j||_F^2
    norms = squared.diagonal().sqrt()  # (E,): ||Y_i^T Y_i||_F
    similarity = squared / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    return torch.where(
        norms[:, None] * norms[None, :] > 0, similarity, torch.zeros_like(similarity)
    )


def mean_off_diagonal(matrix: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix (the mean pairwise similarity)."""
    off = ~torch.eye(matrix.shape[0], dtype=torch.bool)
    return float(matrix[off].double().mean())


# --------------------------------------------------------------------------------------------
# 3. Representation collapse of the routing space
# --------------------------------------------------------------------------------------------


def effective_rank(h: torch.Tensor) -> float:
    """exp(entropy of the normalized singular values) of the centred rows (Roy & Vetterli 2007).

    D for an isotropic cloud in D dimensions, 1 for points on a line.

    Shape: h (N, D)
    """
    h = h.detach().double() - h.detach().double().mean(0)
    singular = torch.linalg.svdvals(h)  # (min(N, D),)
    p = singular / singular.sum().clamp_min(1e-300)
    return float(torch.exp(torch.special.entr(p).sum()))


def gate_subspace_share(h: torch.Tensor, gate_weight: torch.Tensor) -> float:
    """Share of the variance of router inputs h that lies in the span of the gate's rows.

    The router sees a token only through ``h @ W_g^T``: the component of h in the span of the
    E rows of W_g. A random E-dimensional subspace holds E / D of an isotropic cloud's variance.

    Shape: h (N, D), gate_weight (E, D)
    """
    h = h.detach().double() - h.detach().double().mean(0)
    basis, _ = torch.linalg.qr(gate_weight.detach().double().t())  # (D, E) orthonormal columns
    total = h.square().sum()
    return float((h @ basis).square().sum() / total) if total > 0 else 0.0


@dataclass(frozen=True)
class RepresentationCollapse:
    """How much one block's router inputs have collapsed (see the module docstring).

    Attributes:
        effective_rank: of the router inputs (D = full).
        gate_share: share of their variance in the span of the gate rows.
        random_share: E / D, what a random E-dimensional subspace holds of an isotropic cloud.
        d_model: D.
    """

    effective_rank: float
    gate_share: float
    random_share: float
    d_model: int


def representation_collapse(h: torch.Tensor, gate_weight: torch.Tensor) -> RepresentationCollapse:
    """The representation-collapse measures of router inputs h (N, D) and gate (E, D)."""
    n_experts, d_model = gate_weight.shape
    return RepresentationCollapse(
        effective_rank=effective_rank(h),
        gate_share=gate_subspace_share(h, gate_weight),
        random_share=n_experts / d_model,
        d_model=d_model,
    )
