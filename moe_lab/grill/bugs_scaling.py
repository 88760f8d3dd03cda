"""The "spot the bug" checker of notebook 07: a balancing loss averaged over ranks.

Under expert (or data) parallelism each rank holds a slice of the batch. Averaging the ranks' own
Switch losses is not the loss of the whole batch: ``E sum_i f_i P_i`` is a sum of products of
means, and the mean of the ranks' products is not the product of the global means. The checker
simulates W ranks on one process (lists over ranks, and ``all_reduce_sum`` standing in for
``torch.distributed.all_reduce``) and grades the reader's loss against
``moe_lab.balancing.load_balancing_loss`` on the concatenated batch, value and gradient, which is
what ``moe_lab.parallel.ExpertParallelMoE`` computes from all-reduced statistics.

Importing ``moe_lab.grill.bugs`` registers it (it imports this module last).

Reference: Qiu et al. 2025, "Demons in the Detail: On Implementing Load Balancing Loss for
Training Specialized Mixture-of-Expert Models" (global-batch vs micro-batch balancing loss);
Fedus et al. 2022, Switch Transformers, eq. (4)-(6).

Taught in: notebooks/07_gpu_and_scaling.ipynb (expert parallelism, its balancing losses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from moe_lab.balancing import load_balancing_loss
from moe_lab.grill.bugs import WrongAnswerError, _as_tensor, _generator, _randn, _register
from moe_lab.grill.sandbox import reader_call

N_EXPERTS, TOP_K = 8, 2


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """What ``torch.distributed.all_reduce`` gives every rank: the sum of the ranks' tensors
    (here a list over the simulated ranks). Differentiable, like ``moe_lab.parallel``'s."""
    return torch.stack([torch.as_tensor(t) for t in tensors]).sum(dim=0)


def _rank_losses(probs: list[torch.Tensor], indices: list[torch.Tensor]) -> list[torch.Tensor]:
    return [load_balancing_loss(p, i) for p, i in zip(probs, indices, strict=True)]


def _equal_weight_loss(probs: list[torch.Tensor], indices: list[torch.Tensor]) -> torch.Tensor:
    """E sum_i mean_r(f_ri) mean_r(P_ri): right only when every rank holds as many tokens."""
    fractions = torch.stack(
        [torch.bincount(i.flatten(), minlength=N_EXPERTS) / i.numel() for i in indices]
    ).mean(0)  # (E,)
    means = torch.stack([p.mean(0) for p in probs]).mean(0)  # (E,)
    return N_EXPERTS * (fractions * means).sum()


@_register("per_rank_balancing_loss", entry="balancing_loss", all_reduce_sum=all_reduce_sum)
def check_per_rank_balancing_loss(loss_fn: Any, seed: int) -> str:
    """Reference: ``load_balancing_loss`` on all ranks' tokens together, value and gradient."""
    g = _generator(seed)
    cases = [
        ("2 ranks of 32 tokens, rank 0's preferring experts 0-3 and rank 1's experts 4-7",
         [32, 32], True),
        ("4 ranks holding 8, 24, 16 and 12 tokens", [8, 24, 16, 12], False),
    ]  # fmt: skip
    for name, sizes, skewed in cases:
        logits = []
        for rank, n_tokens in enumerate(sizes):
            rank_logits = _randn(g, n_tokens, N_EXPERTS)  # (N_r, E)
            if skewed:
                rank_logits[:, 4 * rank : 4 * rank + 4] += 3.0  # rank r prefers block r
            logits.append(rank_logits)
        leaves = [x.clone().requires_grad_(True) for x in logits]
        probs = [x.softmax(dim=-1) for x in leaves]  # (N_r, E) each
        indices = [p.detach().topk(TOP_K, dim=-1).indices for p in probs]  # (N_r, K) each
        expected = load_balancing_loss(torch.cat(probs), torch.cat(indices))
        expected_grads = torch.autograd.grad(expected, leaves)
        expected = float(expected.detach())

        mine = [x.clone().requires_grad_(True) for x in logits]
        value = reader_call(
            "calling your `balancing_loss`",
            loss_fn,
            [x.softmax(dim=-1) for x in mine],
            [i.clone() for i in indices],
        )
        value = _as_tensor(value, "what `balancing_loss` returns")
        if value.numel() != 1:
            raise WrongAnswerError(f"the loss must be a scalar, got shape {tuple(value.shape)}")
        got = float(value.detach())
        with torch.no_grad():
            per_rank = float(torch.stack(_rank_losses(probs, indices)).mean())
            equal_weight = float(_equal_weight_loss(probs, indices))
        if abs(got - expected) > 1e-5:
            if abs(got - per_rank) <= 1e-5:
                raise WrongAnswerError(
                    f"with {name}, your loss is {got:.4f}, the mean of the ranks' own losses,"
                    f" while the whole batch's is {expected:.4f}. E·Σ fᵢ·Pᵢ is a sum of"
                    " products of means, and the mean of the ranks' products is not the product"
                    " of the global means: each rank is pushed to balance its own tokens (in"
                    " practice a micro-batch of a few sequences), a stricter constraint than"
                    " balancing the batch, which Qiu et al. (2025) found inhibits expert"
                    " specialization. All-reduce the per-expert counts and probability sums,"
                    " then form f and P from the totals (notebook 07, section 6)"
                )
            if abs(got - equal_weight) <= 1e-5:
                raise WrongAnswerError(
                    f"with {name}, your loss is {got:.4f}: it averages f and P over the ranks with"
                    " equal weights, which is right only when every rank holds as many tokens."
                    " Sum the counts and the probability sums over the ranks and divide by the"
                    f" global totals; the whole batch's loss is {expected:.4f}"
                )
            raise WrongAnswerError(
                f"with {name}, your loss is {got:.4f}; moe_lab's load_balancing_loss on all ranks'"
                f" tokens together is {expected:.4f}"
            )
        if not value.requires_grad:
            raise WrongAnswerError(
                f"with {name}, your loss carries no gradient to the router: P must stay in the"
                " autograd graph (an all-reduce is differentiable; its backward is an all-reduce)"
            )
        grads = reader_call(
            "differentiating your loss",
            torch.autograd.grad,
            value.reshape(()),
            mine,
            allow_unused=True,
        )
        for rank, (grad, reference) in enumerate(zip(grads, expected_grads, strict=True)):
            if grad is None or not torch.allclose(grad, reference, atol=1e-6):
                raise WrongAnswerError(
                    f"with {name}, the value is right but the gradient reaching rank {rank}'s"
                    " router logits is not: f counts discrete choices and carries no gradient;"
                    " only P does"
                )
    return (
        "equal to moe_lab's load_balancing_loss on all ranks' tokens together, value and"
        " gradient, for skewed ranks and for ranks of different sizes"
    )
