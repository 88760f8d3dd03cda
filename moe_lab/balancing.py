"""Load-balancing losses and the loss-free balancing bias.

Taught in: notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

import torch

from moe_lab.routers import expert_counts


def assignment_fractions(
    indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """f_i: the fraction of all routed assignments that went to expert i; sums to 1.

    Shape: indices (N, K), mask (N, K) or None -> (E,)
    """
    counts = expert_counts(indices, n_experts, mask).float()  # (E,), no host sync on CUDA
    return counts / counts.sum().clamp_min(1.0)


def load_balancing_loss(
    probs: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The Switch/GShard auxiliary loss: ``E * sum_i f_i * P_i``.

    ``f_i`` is the fraction of the N*K routed assignments that chose expert i (so sum_i f_i = 1
    for any K), ``P_i = mean_n probs[n, i]`` the mean router probability of expert i. ``f`` is a
    count and carries no gradient; only ``P`` does, and the gradient pushes probability away
    from the experts that are over-used (large f_i).

    Scaling: with this top-k convention (f normalized over N*K assignments), perfectly uniform
    routing (f_i = P_i = 1/E) gives ``E * E * (1/E)(1/E) = 1.0`` for every K, and full collapse
    onto one expert (K = 1, f_1 = P_1 = 1) gives the maximum ``E``. (Hugging Face's Mixtral code
    normalizes f over N tokens instead, so its uniform value is K, not 1.)

    Reference: Fedus et al. 2021 (Switch Transformer), eq. (4)-(6); Lepikhin et al. 2020 (GShard).

    Shape: probs (N, E), indices (N, K), mask (N, K) or None -> scalar
    """
    n_experts = probs.shape[-1]
    fractions = assignment_fractions(indices, n_experts, mask)  # (E,), no gradient
    mean_probs = probs.float().mean(dim=0)  # (E,)
    return switch_loss(fractions, mean_probs)


def switch_loss(fractions: torch.Tensor, mean_probs: torch.Tensor) -> torch.Tensor:
    """``E * sum_i f_i * P_i`` from the two statistics (see ``load_balancing_loss``).

    Both are means over the tokens of a batch, so a batch split over several processes gives
    the same loss when each process contributes its counts and probability sums and they are
    added up first (``moe_lab.parallel`` does that with one all-reduce).

    Shape: fractions (E,), mean_probs (E,) -> scalar
    """
    return fractions.shape[-1] * torch.sum(fractions * mean_probs)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: ``mean_n (logsumexp_i logits[n, i])**2``.

    It keeps router logits small, which keeps the softmax away from saturation and the float
    round-off that comes with large exponents.

    Reference: Zoph et al. 2022 (ST-MoE), eq. (5).

    Shape: logits (N, E) -> scalar
    """
    # over dim 0 of the (E, N) transpose: the same sum, and torch's fast path for the router's
    # expert-major logits (see Router.compute_logits)
    return torch.logsumexp(logits.float().t(), dim=0).square().mean()


def sequence_balance_loss(
    probs: torch.Tensor, indices: torch.Tensor, batch_size: int, top_k: int
) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss, averaged over the B sequences of a batch.

    Per sequence of T tokens: ``f_i = E / (K T) * #{t : i in topK(t)}``, ``P_i = mean_t s'_{i,t}``
    with s' the affinities normalized over experts, ``L = sum_i f_i P_i``. Uniform routing gives
    f_i = 1 and P_i = 1/E, so L = 1.0. DeepSeek-V3 weights it by a tiny alpha (1e-4) next to its
    bias-based balancing, to avoid extreme imbalance inside one sequence.

    Reference: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", eq. (17)-(20).

    Shape: probs (N, E) with N = B*T, indices (N, K) -> scalar
    """
    n_tokens, n_experts = probs.shape
    seq_len = n_tokens // batch_size
    probs = probs.float().view(batch_size, seq_len, n_experts)  # (N, E) -> (B, T, E)
    one_hot = torch.zeros(n_tokens, n_experts, device=probs.device)
    one_hot.scatter_(1, indices, 1.0)  # (N, E): 1 where expert i is among the K chosen
    counts = one_hot.view(batch_size, seq_len, n_experts).sum(dim=1)  # (B, E)
    fractions = counts * n_experts / (top_k * seq_len)  # (B, E)
    mean_probs = probs.mean(dim=1)  # (B, E)
    return (fractions * mean_probs).sum(dim=-1).mean()


def load_cv(tokens_per_expert: torch.Tensor) -> float:
    """Coefficient of variation of the expert loads: population std / mean (0 = balanced).

    Shazeer et al. 2017 penalize the squared CV of expert importance (their eq. (6)); here it is
    a summary of imbalance. Collapse of all load onto one of E experts gives sqrt(E - 1).
    """
    load = tokens_per_expert.double()
    mean = load.mean()
    if mean == 0:
        return 0.0
    return float(load.std(unbiased=False) / mean)


def max_violation(tokens_per_expert: torch.Tensor) -> float:
    """MaxVio = (max load - mean load) / mean load (Wang et al. 2024, eq. (5)); 0 = balanced.

    Under expert parallelism a step waits for the busiest expert, so ``1 / (1 + MaxVio)`` is the
    useful fraction of the step.
    """
    load = tokens_per_expert.double()
    mean = load.mean()
    if mean == 0:
        return 0.0
    return float((load.max() - mean) / mean)


@torch.no_grad()
def update_selection_bias(
    bias: torch.Tensor, tokens_per_expert: torch.Tensor, rate: float
) -> torch.Tensor:
    """Loss-free balancing: ``b_i += rate * sign(mean_load - load_i)``, in place; returns ``bias``.

    Under-loaded experts (load below the mean) get a larger bias and are chosen more often;
    over-loaded ones get a smaller bias. No gradient is involved, and since the bias only enters
    the *selection* of experts, combine weights are untouched.

    Reference: Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-
    Experts", Algorithm 1; DeepSeek-V3 Technical Report, section 2.1.2 (rate 0.001).

    Shape: bias (E,), tokens_per_expert (E,)
    """
    load = tokens_per_expert.to(bias.dtype)  # (E,)
    bias += rate * torch.sign(load.mean() - load)
    return bias
