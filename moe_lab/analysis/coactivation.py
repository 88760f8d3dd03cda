"""Co-activation: with K >= 2 experts per token, which experts are chosen together?

Counts, for every pair of experts (i, j), the tokens whose top-K set holds both, and reports:

- OLMoE's co-activation ``N(i, j) / N(i)``: of the tokens routed to i, the share also routed to
  j (Muennighoff et al. 2024, section 5, "expert co-activation"; their analysis script counts
  exactly this over the top-8 sets, ``scripts/run_moe_analysis.py`` of allenai/OLMoE). They find
  little co-activation in OLMoE-1B-7B: few pairs of experts are chosen together much more than
  others, read as little redundancy between experts.
- The **lift** over independence: the observed share of tokens holding both i and j, divided
  by the share expected if a token's experts were chosen *independently, given the loads*. The
  null model: each expert is included or not independently, with odds lambda_i, conditioned on
  exactly K being included ("conditional Poisson sampling", the maximum-entropy distribution of
  K-sets with given inclusion rates; Chen, Dempster & Liu 1994, Biometrika 81(3)):

      P(S) = prod_{i in S} lambda_i / e_K(lambda)          for |S| = K
      P(i in S) = lambda_i e_{K-1}(lambda without i) / e_K(lambda)
      P(i, j in S) = lambda_i lambda_j e_{K-2}(lambda without i, j) / e_K(lambda)

  with e_k the elementary symmetric polynomials, and lambda fitted (by their iterative
  proportional scaling) so that P(i in S) equals each expert's observed inclusion rate. At
  uniform loads every pair has 1 / C(E, 2) (1/28 at top-2 of 8). Lift 1 = chosen together as
  often as independence allows; above 1, the pair is preferred; 0, never together. (The
  product of the two inclusion rates is the wrong reference: a token cannot choose the same
  expert twice, and at uniform top-2 of 8 it would give 1/16 instead of 1/28.)

Shape alphabet: L tokens, K experts per token, E experts.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.analysis.capture import RoutingCapture


def pair_counts(sets: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(E, E) tokens whose set holds both i and j (the diagonal: tokens holding i).

    Shape: sets (L, K) long, no repeated expert within a row
    """
    members = torch.zeros(sets.shape[0], n_experts, dtype=torch.float64)
    members.scatter_(1, sets, 1.0)  # (L, E)
    return (members.t() @ members).round().long()  # (E, E)


def _leave_out_symmetric(odds: torch.Tensor, top_k: int) -> torch.Tensor:
    """(E, E, K+1): entry [i, j, k] = e_k of the odds without experts i and j (i = j: without i).

    Built by multiplying out prod_m (1 + odds_m t) for every pair at once, one expert per step.
    """
    n_experts = odds.numel()
    coefficients = torch.zeros(n_experts, n_experts, top_k + 1, dtype=torch.float64)
    coefficients[..., 0] = 1.0
    eye = torch.eye(n_experts, dtype=torch.bool)
    for m in range(n_experts):
        keep = ~(eye[m][:, None] | eye[m][None, :])  # (E, E): m is neither i nor j
        factor = odds[m] * keep.double()  # (E, E)
        updated = coefficients.clone()
        updated[..., 1:] += factor[..., None] * coefficients[..., :-1]
        coefficients = updated
    return coefficients


def independent_pair_shares(
    inclusion: torch.Tensor, top_k: int, tolerance: float = 1e-12, max_iterations: int = 10_000
) -> torch.Tensor:
    """(E, E) P(i and j both chosen) when K-sets are independent given the inclusion rates.

    The conditional Poisson model of the module docstring, its odds fitted by iterative
    proportional scaling until every expert's inclusion rate matches ``inclusion`` (rates in
    [0, 1] summing to K). The diagonal holds the fitted inclusion rates.

    Shape: inclusion (E,) -> (E, E)
    """
    target = inclusion.double()
    n_experts = target.numel()
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} must be in [1, {n_experts}]")
    if abs(float(target.sum()) - top_k) > 1e-6 or bool((target < 0).any() | (target > 1).any()):
        raise ValueError(f"inclusion rates must lie in [0, 1] and sum to top_k={top_k}")
    odds = target.clone()
    eye = torch.eye(n_experts, dtype=torch.bool)
    for _ in range(max_iterations):
        leave_out = _leave_out_symmetric(odds, top_k)  # (E, E, K+1)
        total = float(odds[0] * leave_out[0, 0, top_k - 1] + leave_out[0, 0, top_k])  # e_K
        fitted = odds * leave_out.diagonal()[top_k - 1] / total  # (E,)
        if float((fitted - target).abs().max()) < tolerance:
            break
        ratio = torch.where(fitted > 0, target / fitted.clamp_min(1e-300), torch.zeros_like(target))
        odds = odds * ratio
        odds = odds / odds[odds > 0].mean()  # the model is invariant to the odds' scale
    pairs = torch.zeros(n_experts, n_experts, dtype=torch.float64)
    if top_k >= 2:
        pairs = odds[:, None] * odds[None, :] * leave_out[..., top_k - 2] / total
    return torch.where(eye, fitted.diag(), pairs)


@dataclass(frozen=True)
class Coactivation:
    """Which experts one block chooses together.

    Attributes:
        layer: the MoE block.
        counts: (E, E) tokens holding both i and j (diagonal: tokens holding i).
        n_tokens: tokens counted.
        expected: (E, E) the pair shares under independence (see the module docstring).
    """

    layer: int
    counts: torch.Tensor
    n_tokens: int
    expected: torch.Tensor

    def conditional(self) -> torch.Tensor:
        """(E, E) OLMoE's N(i, j) / N(i): of the tokens at expert i (row), the share also at j."""
        counts = self.counts.double()
        return counts / counts.diagonal()[:, None].clamp_min(1.0)

    def lift(self) -> torch.Tensor:
        """(E, E) observed pair share / expected pair share (1 = independence, off-diagonal)."""
        observed = self.counts.double() / self.n_tokens
        lift = observed / self.expected.clamp_min(1e-300)
        return torch.where(self.expected > 0, lift, torch.zeros_like(lift))

    def max_off_diagonal(self, matrix: torch.Tensor) -> float:
        """The largest off-diagonal entry of an (E, E) matrix."""
        off = ~torch.eye(matrix.shape[0], dtype=torch.bool)
        return float(matrix[off].max())


def coactivation(capture: RoutingCapture, layer: int) -> Coactivation:
    """Co-activation counts of block ``layer`` and their independence reference.

    Raises:
        ValueError: the block routes each token to one expert (K = 1): nothing co-activates.

    Taught in: notebooks/05_specialization.ipynb.
    """
    top_k = capture.indices[layer].shape[1]
    if top_k < 2:
        raise ValueError(
            f"block {layer} sends each token to K={top_k} expert: co-activation needs K >= 2"
        )
    return coactivation_of_sets(capture.indices[layer], capture.n_experts, layer)


def coactivation_of_sets(sets: torch.Tensor, n_experts: int, layer: int = 0) -> Coactivation:
    """Co-activation counts of (L, K) top-K expert sets (K >= 2) and their independence reference."""
    n_tokens, top_k = sets.shape
    counts = pair_counts(sets, n_experts)  # (E, E)
    inclusion = counts.diagonal().double() / n_tokens  # (E,), sums to K
    return Coactivation(
        layer=layer,
        counts=counts,
        n_tokens=n_tokens,
        expected=independent_pair_shares(inclusion, top_k),
    )
