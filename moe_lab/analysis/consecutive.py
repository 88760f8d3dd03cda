"""Consecutive tokens: how often does token t+1 go where token t went?

For every pair of neighbours (t, t+1) inside one window, two rates (the two columns of Mixtral's
Table 5):

    first choice   P(top1(t+1) == top1(t))
    any choice     P(topK(t+1) and topK(t) share at least one expert)   ("first or second choice")

**What chance would give.** Mixtral compares with uniform routing: 1/E for the first choice
and 1 - C(E-K, K) / C(E, K) for any choice (1/8 = 12.5% and 1 - (6/8)(5/7) = 46% at top-2 of 8).
A router whose loads are uneven repeats itself more often by chance alone, so this module also
gives the rate expected *from the loads*: two tokens drawn independently from the capture's own
routing. For the first choice that is sum_e p_e^2 with p_e the share of tokens whose first choice
is e; for any choice it is 1 - sum_{S, S'} q_S q_S' [S and S' disjoint] over the observed expert
sets S and their shares q_S. Locality is the observed rate *above* that.

Reference: Jiang et al. 2024, "Mixtral of Experts", section 5 and Table 5 (layers 0, 15, 31 of
Mixtral 8x7B on The Pile: first choice 13.6-14.9% at layer 0, 23.6-28.4% at layer 15,
19.7-26.3% at layer 31, against 12.5%; any choice 44.9-49.9%, 61.6-67.0%, 44.5-53.6%, against
46%).

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_lab.analysis.capture import RoutingCapture

# Mixtral 8x7B, Table 5 (Jiang et al. 2024): repetition rates in % over eight Pile subsets.
MIXTRAL_TABLE5 = {
    "first choice": {0: (13.6, 14.9), 15: (23.6, 28.4), 31: (19.7, 26.3)},
    "any choice": {0: (44.9, 49.9), 15: (61.6, 67.0), 31: (44.5, 53.6)},
}


@dataclass(frozen=True)
class ConsecutiveRates:
    """Repetition rates of one block's routing between neighbouring tokens.

    Attributes:
        layer: the MoE block.
        n_pairs: neighbour pairs counted.
        first_choice, any_choice: the observed rates.
        first_choice_expected, any_choice_expected: the rates two independent tokens with the
            capture's own loads would give.
        first_choice_uniform, any_choice_uniform: the rates under uniform routing (Mixtral's
            reference).
    """

    layer: int
    n_pairs: int
    first_choice: float
    any_choice: float
    first_choice_expected: float
    any_choice_expected: float
    first_choice_uniform: float
    any_choice_uniform: float


def uniform_rates(n_experts: int, top_k: int) -> tuple[float, float]:
    """(first choice, any choice) repetition rates of uniformly random top-K routing.

    The next token's first choice matches with probability 1/E; its K experts miss all K of the
    previous token's with probability C(E-K, K) / C(E, K).
    """
    disjoint = math.comb(n_experts - top_k, top_k) / math.comb(n_experts, top_k)
    return 1.0 / n_experts, 1.0 - disjoint


def expected_overlap(sets: torch.Tensor, n_experts: int) -> float:
    """P(two independently drawn rows of ``sets`` share an expert), exactly.

    Rows are grouped into distinct expert sets S with shares q_S; the answer is
    1 - sum over pairs of sets of q_S q_S' [S, S' disjoint]. A set is encoded as a bit mask
    (bit e set when expert e is in it), so "disjoint" is ``mask & mask' == 0``.

    Shape: sets (L, K) long, no repeated expert within a row; E <= 62
    """
    if n_experts > 62:
        raise ValueError(f"n_experts={n_experts}: bit-mask sets support at most 62 experts")
    masks = torch.bitwise_left_shift(torch.ones_like(sets), sets).sum(-1)  # (L,) one bit per expert
    unique, counts = torch.unique(masks, return_counts=True)  # (S,), (S,)
    share = counts.double() / counts.sum()  # (S,)
    disjoint = (unique[:, None] & unique[None, :]) == 0  # (S, S)
    return float(1.0 - share @ disjoint.double() @ share)


def consecutive_rates(capture: RoutingCapture, layer: int) -> ConsecutiveRates:
    """The first-choice and any-choice repetition rates of block ``layer``, with references.

    Taught in: notebooks/05_specialization.ipynb.
    """
    indices = capture.indices[layer]  # (L, K)
    first, second = capture.pairs()  # (P,), (P,)
    if first.numel() == 0:
        raise ValueError("the capture has no pair of neighbouring tokens")
    top1 = indices[:, 0]
    same_first = (top1[first] == top1[second]).double().mean()
    shared = (indices[first][:, :, None] == indices[second][:, None, :]).any(-1).any(-1)  # (P,)
    n_experts, top_k = capture.n_experts, capture.top_k
    shares = torch.bincount(top1, minlength=n_experts).double() / top1.numel()  # (E,)
    first_uniform, any_uniform = uniform_rates(n_experts, top_k)
    return ConsecutiveRates(
        layer=layer,
        n_pairs=first.numel(),
        first_choice=float(same_first),
        any_choice=float(shared.double().mean()),
        first_choice_expected=float((shares**2).sum()),
        any_choice_expected=expected_overlap(indices, n_experts),
        first_choice_uniform=first_uniform,
        any_choice_uniform=any_uniform,
    )
