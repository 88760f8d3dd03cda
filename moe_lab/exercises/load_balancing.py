"""Exercises of notebook 03, load balancing and capacity: an expert's capacity, which assignments a
full expert drops, and the Switch auxiliary loss.

Taught in: notebooks/03_load_balancing.ipynb (exercises at the end).
"""

from __future__ import annotations

import math

import torch

from moe_lab.balancing import load_balancing_loss
from moe_lab.config import expert_capacity
from moe_lab.dispatch import capacity_queue
from moe_lab.exercises.core import (
    call,
    exercise,
    expect_close,
    expect_gradients,
    expect_number,
    expect_tensor,
    fail,
    gradients,
)
from moe_lab.routers import RoutingResult

NOTEBOOK = "03_load_balancing"


@exercise(NOTEBOOK, against="moe_lab.expert_capacity")
def check_expert_capacity(attempt) -> int:
    """Check ``attempt(n_tokens, n_experts, top_k, capacity_factor) -> C``.

    ``C = ceil(cf * N * K / E)``, at least 1 (Switch Transformer eq. (3), with K choices as in
    GShard), compared with ``moe_lab.expert_capacity``, whose cases include a float round-off
    trap: 1.1 * 50 * 2 / 10 is 11 exactly but 11.000000000000002 in floating point.
    """
    settings = [  # (N, E, K, cf)
        (1024, 8, 2, 1.0),
        (10, 4, 1, 1.0),  # 2.5: floor and ceil differ
        (4096, 64, 8, 1.25),
        (100, 8, 2, 0.9),  # 22.5: round() gives 22
        (3, 8, 1, 0.5),  # 0.1875: every expert keeps at least one slot
        (1000, 16, 2, 4.0),
        (50, 10, 2, 1.1),  # exactly 11, but float arithmetic gives 11.000000000000002
    ]
    for number, (n, e, k, cf) in enumerate(settings, start=1):
        case = f"case {number} of {len(settings)} (N={n}, E={e}, K={k}, cf={cf})"
        got = call(attempt, n, e, k, cf, case=case)
        exact = cf * n * k / e
        mistakes = {
            f"it rounds down (math.floor; round() does too when the fraction is below one half,"
            f" or exactly one half with an even floor): cf·N·K/E = {exact:g} needs"
            f" {math.ceil(exact)} slots, or part of an average load is dropped": math.floor(exact),
            "top_k is left out: the average load is N·K/E assignments, not N/E tokens": max(
                1, math.ceil(cf * n / e)
            ),
        }
        if math.ceil(exact) != expert_capacity(n, e, k, cf):
            mistakes[
                f"float round-off goes through ceil: cf·N·K/E is {expert_capacity(n, e, k, cf)} in"
                f" exact arithmetic but {exact!r} in floating point; subtract a tiny epsilon"
                " (the library uses 1e-9) before math.ceil"
            ] = math.ceil(exact)
        expect_number(
            got, expert_capacity(n, e, k, cf), "the capacity", case, integer=True, mistakes=mistakes
        )
    return len(settings)


def _routing(indices: torch.Tensor, n_experts: int) -> RoutingResult:
    n, k = indices.shape
    weights = torch.full((n, k), 1 / k)
    return RoutingResult(
        indices, weights, torch.full((n, n_experts), 1 / n_experts), torch.zeros(n, n_experts)
    )


def _skewed_indices(n: int, e: int, k: int) -> torch.Tensor:
    """K distinct experts per token, low-numbered experts preferred, so some overflow."""
    scores = torch.rand(n, e) + torch.linspace(1.0, 0.0, e)  # expert 0 favoured
    return scores.topk(k, dim=-1).indices  # (N, K)


def _queue_keep(indices: torch.Tensor, capacity: int, order: list[tuple[int, int]]) -> torch.Tensor:
    """Keep (N, K) when assignments claim slots in ``order``: a known priority, by a plain loop."""
    keep = torch.zeros(indices.shape, dtype=torch.bool)
    used: dict[int, int] = {}
    for n, slot in order:
        expert = int(indices[n, slot])
        if used.get(expert, 0) < capacity:
            used[expert] = used.get(expert, 0) + 1
            keep[n, slot] = True
    return keep


@exercise(NOTEBOOK, against="moe_lab.dispatch.capacity_queue with the position priority")
def check_capacity_keep(attempt) -> int:
    """Check ``attempt(indices, n_experts, capacity) -> keep``: which assignments fit.

    indices (N, K) long -> keep (N, K) bool. Every expert accepts at most ``capacity``
    assignments, in GShard's position priority: every token's first choice in token order, then
    every second choice, and so on. Compared with ``moe_lab.dispatch.capacity_queue``.
    """
    hand = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])  # 4 tokens, 3 experts, top-2
    settings = [  # (name, indices, E, capacity)
        ("a hand-made batch: 4 tokens, top-2 of 3 experts, capacity 2", hand, 3, 2),
    ]
    for seed, (n, e, k, cf) in enumerate([(32, 8, 2, 1.0), (40, 4, 1, 1.25), (24, 8, 3, 1.0)]):
        torch.manual_seed(seed)
        settings.append(
            (
                f"N={n}, E={e}, K={k}, capacity {expert_capacity(n, e, k, cf)} (cf={cf}), seed {seed}",
                _skewed_indices(n, e, k),
                e,
                expert_capacity(n, e, k, cf),
            )
        )
    torch.manual_seed(3)
    settings.append(
        ("N=16, E=4, K=2, capacity 16: nothing can drop", _skewed_indices(16, 4, 2), 4, 16)
    )
    for number, (name, indices, e, capacity) in enumerate(settings, start=1):
        case = f"case {number} of {len(settings)} ({name})"
        keep = call(attempt, indices.clone(), e, capacity, case=case)
        n, k = indices.shape
        expect_tensor(keep, "keep", (n, k), "(N, K)", case, dtype=torch.bool)
        expected, _ = capacity_queue(_routing(indices, e), capacity, "position")
        if torch.equal(keep, expected):
            continue
        for expert in range(e):
            mine = indices == expert
            kept, load = int((keep & mine).sum()), int(mine.sum())
            if kept > capacity:
                fail(
                    f"{case}: expert {expert} keeps {kept} assignments, more than its capacity {capacity}"
                )
            if kept < min(load, capacity):
                fail(
                    f"{case}: expert {expert} keeps {kept} of its {load} assignments although"
                    f" its capacity is {capacity}: it must keep min(load, capacity) ="
                    f" {min(load, capacity)}"
                )
        token_major = [(t, s) for t in range(n) for s in range(k)]
        reversed_tokens = [(t, s) for s in range(k) for t in reversed(range(n))]
        diagnosis = {
            "you queue token by token (token 0's second choice before token 1's first choice):"
            " GShard's priority queues every first choice, in token order, before any second"
            " choice": _queue_keep(indices, capacity, token_major),
            "later tokens win: the priority goes in token order, earliest first": _queue_keep(
                indices, capacity, reversed_tokens
            ),
        }
        wrong = torch.nonzero(keep != expected)[0].tolist()
        advice = next((d for d, cand in diagnosis.items() if torch.equal(keep, cand)), None)
        fail(
            f"{case}: token {wrong[0]}'s choice {wrong[1] + 1} (expert {int(indices[tuple(wrong)])})"
            f" is {'kept' if keep[tuple(wrong)] else 'dropped'}, the library"
            f" {'keeps' if expected[tuple(wrong)] else 'drops'} it."
            + (
                f" This is what happens when {advice}."
                if advice
                else " Go through slot 0 of every token in token order, then slot 1, and so on,"
                " counting each expert's kept assignments."
            )
        )
    return len(settings)


@exercise(NOTEBOOK, against="moe_lab.balancing.load_balancing_loss: value and gradient")
def check_switch_aux_loss(attempt) -> int:
    """Check ``attempt(probs, indices) -> loss``, the Switch auxiliary loss ``E * sum_i f_i P_i``.

    probs (N, E): the router's full softmax; indices (N, K): the chosen experts; ``f_i`` the
    fraction of the N*K assignments that chose expert i (a count, no gradient), ``P_i`` the mean
    of ``probs[:, i]``. Compared with ``moe_lab.balancing.load_balancing_loss``, value and
    gradient with respect to probs (``E f_i / N`` for every token).
    """
    settings = []  # (name, probs, indices)
    for seed, (n, e, k) in enumerate([(64, 8, 2), (50, 4, 1), (40, 16, 4)]):
        torch.manual_seed(seed)
        logits = torch.randn(n, e) + torch.linspace(1.0, -1.0, e)  # a skewed router
        probs = logits.softmax(-1)
        settings.append(
            (f"a skewed router, N={n}, E={e}, K={k}, seed {seed}", probs, probs.topk(k).indices)
        )
    n, e, k = 32, 8, 2
    balanced = (torch.arange(n * k) % e).view(n, k)  # every expert gets N*K/E assignments
    settings.append(
        ("uniform routing, N=32, E=8, K=2: the loss is 1", torch.full((n, e), 1 / e), balanced)
    )
    collapsed = torch.zeros(n, 1, dtype=torch.long)
    settings.append(
        (
            "collapse onto expert 0, N=32, E=8, K=1: the loss is E = 8",
            torch.eye(e)[collapsed[:, 0]],
            collapsed,
        )
    )
    for number, (name, probs, indices) in enumerate(settings, start=1):
        case = f"case {number} of {len(settings)} ({name})"
        n, e = probs.shape
        k = indices.shape[1]
        leaf = probs.clone().requires_grad_(True)
        loss = call(attempt, leaf, indices.clone(), case=case)
        expect_tensor(
            loss,
            "the loss",
            (),
            "()",
            case,
            shape_hints={(e,): "that is one value per expert: sum over the experts"},
        )
        reference = probs.clone().requires_grad_(True)
        expected = load_balancing_loss(reference, indices)
        (expected_grad,) = torch.autograd.grad(expected, reference)
        with torch.no_grad():
            counts = torch.bincount(indices.reshape(-1), minlength=e).float()
            f, P = counts / (n * k), probs.mean(0)
            chosen = torch.zeros(n, e).scatter(1, indices, 1.0)  # (N, E) 1 where chosen
            topk_weights = probs.gather(-1, indices)
            renormalized = torch.zeros(n, e).scatter(
                1, indices, topk_weights / topk_weights.sum(-1, keepdim=True)
            )
            mistakes = {
                "f is normalized over the N tokens instead of the N·K assignments (Hugging Face's"
                " Mixtral scaling: K times ours, K at uniform routing)": k * expected.detach(),
                "the factor E is left out (then uniform routing gives 1/E instead of 1)": (
                    f * P
                ).sum(),
                "P is averaged over the chosen experts' probabilities only (post-top-k): P must"
                " come from the full softmax over all E experts, or no gradient reaches the"
                " experts a token did not choose": e * (f * (probs * chosen).mean(0)).sum(),
                "P comes from the renormalized top-k weights (post-top-k), not the full softmax": e
                * (f * renormalized.mean(0)).sum(),
                "f is computed from the probabilities (E·sum P_i²): f counts the choices": e
                * (P * P).sum(),
            }
            if k == 1:
                mistakes.pop(next(iter(mistakes)))
        expect_close(loss, expected, "the loss", case, mistakes, hint="L = E · Σ_i f_i · P_i.")
        probe = torch.ones(())
        got_grads = gradients(loss, probe, {"probs": leaf})
        if got_grads["probs"] is not None:
            grad = got_grads["probs"]
            unchosen = chosen == 0
            if unchosen.any() and float(grad[unchosen].abs().max()) < 1e-9 < float(
                expected_grad[unchosen].abs().max()
            ):
                fail(
                    f"{case}: the value is right but no gradient reaches the probabilities of the"
                    " experts a token did not choose (post-top-k): P must be the mean of the full"
                    " softmax, probs.mean(0), so the loss can pull tokens towards unused experts"
                )
        expect_gradients(
            got_grads,
            {"probs": expected_grad},
            case,
            of="the loss",
            hint="f must be a count that carries no gradient; only P does, so the gradient with"
            " respect to probs[n, i] is E·f_i/N for every token n",
        )
    return len(settings)
