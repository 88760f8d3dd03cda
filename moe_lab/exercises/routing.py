"""Exercises of notebook 02, routing: the top-k softmax router, DeepSeek-V3's sigmoid router with a
selection-only bias, and the sorted dispatch.

Taught in: notebooks/02_routing.ipynb (exercises at the end).
"""

from __future__ import annotations

import functools

import torch

from moe_lab.config import MoEConfig
from moe_lab.dispatch import dispatch_naive
from moe_lab.exercises.core import (
    call,
    exercise,
    expect_close,
    expect_gradients,
    expect_pair,
    expect_tensor,
    fail,
    first_match,
    gradients,
)
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult, build_router

NOTEBOOK = "02_routing"


def _library_routing(config: MoEConfig, n_tokens: int, bias: torch.Tensor | None = None):
    """A library router with a seeded gate, run on random tokens: (routing, logits leaf).

    The routing's weights are differentiated with respect to ``routing.logits`` (inside the
    router's graph); the reader gets a detached copy of those logits as a leaf.
    """
    router = build_router(config)
    if bias is not None:
        router.selection_bias.copy_(bias)
    x = torch.randn(n_tokens, config.d_model)
    routing = router(x)
    return routing, routing.logits.detach().clone().requires_grad_(True)


def _expect_indices(got, expected, case: str, mistakes: dict[str, torch.Tensor]) -> None:
    """Chosen experts: same experts in the same order (largest first, as torch.topk gives)."""
    if got.dtype != torch.long:
        fail(
            f"{case}: indices has dtype {got.dtype}, expected torch.long (the indices torch.topk"
            " returns)"
        )
    if torch.equal(got, expected):
        return
    if torch.equal(got.sort(-1).values, expected.sort(-1).values):
        fail(
            f"{case}: the chosen experts are right but in another order: return them largest"
            " first, as torch.topk does (the weights in the same order)"
        )
    token = int(torch.nonzero((got != expected).any(-1))[0])
    diagnosis = first_match(got.double(), {k: v.double() for k, v in mistakes.items()}, atol=0)
    fail(
        f"{case}: token {token} chooses experts {got[token].tolist()}, the library"
        f" {expected[token].tolist()}."
        + (f" This is what you get when {diagnosis}." if diagnosis else "")
    )


def _expect_weights(
    weights: torch.Tensor,
    logits: torch.Tensor,
    routing: RoutingResult,
    case: str,
    mistakes: dict[str, torch.Tensor],
) -> None:
    """The reader's (N, K) weights equal the library's, and so does their gradient to the logits."""
    expect_close(weights, routing.weights, "weights", case, mistakes)
    probe = torch.randn(routing.weights.shape)  # (N, K): a random upstream gradient
    (expected_grad,) = torch.autograd.grad((routing.weights * probe).sum(), routing.logits)
    expect_gradients(
        gradients(weights, probe, {"logits": logits}),
        {"logits": expected_grad},
        case,
        of="the weights",
    )


@exercise(NOTEBOOK, against="moe_lab's softmax_topk router: experts, weights and gradients")
def check_topk_router(attempt) -> int:
    """Check ``attempt(logits, k, normalize) -> (indices, weights)``, the softmax top-k router.

    logits (N, E) -> indices (N, K) long, largest probability first, and weights (N, K): the
    softmax over all E experts at the chosen ones, divided by their sum when ``normalize``.
    Compared with the library's ``softmax_topk`` router (``switch`` when K = 1 without
    renormalization), including the gradient of the weights with respect to the logits.
    """
    settings = [  # (N, E, K, normalize)
        (12, 8, 2, True),
        (12, 8, 2, False),
        (5, 4, 1, False),  # Switch: the weight is p, the router's gradient path
        (5, 4, 1, True),  # the weight is exactly 1: no gradient reaches the logits
        (9, 16, 4, True),
    ]
    for seed, (n, e, k, normalize) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} (N={n}, E={e}, K={k}, normalize={normalize},"
            f" seed {seed})"
        )
        torch.manual_seed(seed)
        config = MoEConfig(d_model=6, d_expert=4, n_experts=e, top_k=k, normalize_topk=normalize)
        routing, logits = _library_routing(config, n)
        indices, weights = expect_pair(
            call(attempt, logits, k, normalize, case=case), "(indices, weights)", case
        )
        expect_tensor(indices, "indices", (n, k), "(N, K)", case)
        expect_tensor(weights, "weights", (n, k), "(N, K)", case)
        with torch.no_grad():
            probs = logits.softmax(dim=-1)
            by_tokens = logits.softmax(dim=0)  # the wrong dimension
        _expect_indices(
            indices,
            routing.indices,
            case,
            {
                "softmax runs over the tokens (dim 0) instead of the experts (dim -1)": (
                    by_tokens.topk(k, dim=-1).indices
                ),
                "the K smallest are kept instead of the K largest": probs.topk(
                    k, dim=-1, largest=False
                ).indices,
            },
        )
        with torch.no_grad():
            kept = probs.gather(-1, routing.indices)  # (N, K)
            kept_logits = logits.gather(-1, routing.indices)
            mistakes = {
                "the raw logits are used as weights (no softmax)": kept_logits,
                "softmax runs over the tokens (dim 0) instead of the experts (dim -1)": (
                    by_tokens.gather(-1, routing.indices)
                ),
            }
            if normalize:
                mistakes[
                    "the K probabilities are not renormalized: with normalize=True they must sum"
                    " to 1 (divide them by their sum)"
                ] = kept
            else:
                # softmax over the K kept logits equals the renormalized top-k probabilities
                mistakes[
                    "the K weights sum to 1 although normalize=False: they were renormalized, or"
                    " softmax came after top-k (over the K kept logits, the same thing); Switch"
                    " keeps the full softmax's probabilities p, which sum to less than 1"
                ] = kept_logits.softmax(-1)
        _expect_weights(weights, logits, routing, case, mistakes)
    return len(settings)


@exercise(NOTEBOOK, against="moe_lab's sigmoid_bias router: experts, weights and gradients")
def check_deepseek_router(attempt) -> int:
    """Check ``attempt(logits, bias, k, scaling) -> (indices, weights)``, DeepSeek-V3's router.

    Scores ``s = sigmoid(logits)`` (N, E); the K experts with the largest ``s + bias`` are chosen
    (largest first); their weights are the *unbiased* scores, divided by their sum and
    multiplied by ``scaling``. Compared with the library's ``sigmoid_bias`` router with the same
    selection bias, including the gradient of the weights with respect to the logits.
    """
    settings = [(10, 8, 2, 1.0), (16, 16, 4, 2.5), (6, 4, 1, 1.0)]  # (N, E, K, scaling)
    for seed, (n, e, k, scaling) in enumerate(settings):
        case = f"case {seed + 1} of {len(settings)} (N={n}, E={e}, K={k}, scaling={scaling}, seed {seed})"
        torch.manual_seed(seed)
        config = MoEConfig(
            d_model=6,
            d_expert=4,
            n_experts=e,
            top_k=k,
            router="sigmoid_bias",
            routed_scaling_factor=scaling,
        )
        bias = 0.3 * torch.randn(e)  # large enough to change some tokens' choice
        routing, logits = _library_routing(config, n, bias)
        indices, weights = expect_pair(
            call(attempt, logits, bias.clone(), k, scaling, case=case), "(indices, weights)", case
        )
        expect_tensor(indices, "indices", (n, k), "(N, K)", case)
        expect_tensor(weights, "weights", (n, k), "(N, K)", case)
        with torch.no_grad():
            scores = logits.sigmoid()  # (N, E)
            softmax = logits.softmax(-1)
        _expect_indices(
            indices,
            routing.indices,
            case,
            {
                "the bias is ignored when choosing (the choice is the top-K of scores + bias)": (
                    scores.topk(k, dim=-1).indices
                ),
                "softmax replaces the sigmoid": (softmax + bias).topk(k, dim=-1).indices,
            },
        )
        with torch.no_grad():
            chosen = scores.gather(-1, routing.indices)  # (N, K) unbiased
            biased = (scores + bias).gather(-1, routing.indices)
            soft = softmax.gather(-1, routing.indices)
            mistakes = {
                "the bias is added to the weights as well: it only chooses, the weights use the"
                " unbiased scores": biased / biased.sum(-1, keepdim=True) * scaling,
                "the weights are not multiplied by the scaling factor": (
                    chosen / chosen.sum(-1, keepdim=True)
                ),
                "the weights are not normalized over the K chosen experts": chosen * scaling,
                "softmax replaces the sigmoid": soft / soft.sum(-1, keepdim=True) * scaling,
            }
        _expect_weights(weights, logits, routing, case, mistakes)
    return len(settings)


class CountingExperts(StackedExperts):
    """``StackedExperts`` that counts the calls to ``expert_forward``, per expert."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = [0] * self.n_experts

    def expert_forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        self.calls[int(expert)] += 1
        return super().expert_forward(x, expert)


def _random_routing(n: int, e: int, k: int, unused_expert: int | None) -> RoutingResult:
    """K distinct experts per token (never ``unused_expert``), positive weights as a leaf."""
    scores = torch.rand(n, e)
    if unused_expert is not None:
        scores[:, unused_expert] = -1.0
    indices = scores.topk(k, dim=-1).indices  # (N, K)
    weights = (torch.rand(n, k) + 0.1).requires_grad_(True)  # (N, K)
    return RoutingResult(indices, weights, torch.full((n, e), 1 / e), torch.zeros(n, e))


@exercise(NOTEBOOK, against="moe_lab.dispatch.dispatch_naive: output and gradients")
def check_sorted_dispatch(attempt) -> int:
    """Check ``attempt(x, routing, experts) -> y``, the sorted dispatch.

    ``y[n] = sum_k routing.weights[n, k] * experts.expert_forward(x[n], routing.indices[n, k])``,
    computed by sorting the N*K assignments by expert and running each expert once, on all its
    rows. Compared with ``dispatch_naive`` (output, and the gradients for x, the combine weights
    and every expert weight); calling ``expert_forward`` more than once for an expert fails.
    """
    settings = [  # (N, D, F, E, K, activation, expert that no token chooses)
        (6, 4, 8, 4, 2, "swiglu", None),
        (16, 8, 16, 8, 2, "swiglu", 5),
        (9, 6, 12, 4, 1, "gelu", None),
        (12, 8, 8, 8, 3, "swiglu", 0),
    ]
    for seed, (n, d, f, e, k, activation, unused) in enumerate(settings):
        case = f"case {seed + 1} of {len(settings)} (N={n}, D={d}, E={e}, K={k}, {activation}"
        case += f", no token chooses expert {unused}" if unused is not None else ""
        case += f", seed {seed})"
        torch.manual_seed(seed)
        experts = CountingExperts(e, d, f, activation)
        routing = _random_routing(n, e, k, unused)
        x = torch.randn(n, d).requires_grad_(True)
        expected = dispatch_naive(x, routing, experts).y  # (N, D)
        probe = torch.randn(n, d)
        params = dict(experts.named_parameters())
        inputs = {"x": x, "routing.weights": routing.weights, **params}
        expected_grads = dict(
            zip(
                inputs,
                torch.autograd.grad((expected * probe).sum(), list(inputs.values())),
                strict=True,
            )
        )
        experts.calls = [0] * e
        y = call(attempt, x, routing, experts, case=case)
        expect_tensor(y, "the output", (n, d), "(N, D)", case)
        expect_close(
            y,
            expected,
            "the output",
            case,
            functools.partial(_dispatch_mistakes, y, x, routing, experts),
        )
        repeated = [(i, c) for i, c in enumerate(experts.calls) if c > 1]
        if repeated:
            expert, count = repeated[0]
            fail(
                f"{case}: expert_forward ran {count} times for expert {expert}"
                f" ({sum(experts.calls)} calls for {e} experts): the sorted dispatch gathers all"
                " of an expert's rows into one contiguous slice and runs the expert once on it"
            )
        expect_gradients(gradients(y, probe, inputs), expected_grads, case)
    return len(settings)


def _dispatch_mistakes(
    got: torch.Tensor, x: torch.Tensor, routing: RoutingResult, experts: StackedExperts
) -> dict[str, torch.Tensor]:
    """The outputs of the usual sorted-dispatch mistakes, built from each assignment's own
    expert output (one ``expert_forward`` per row: slow, fine at these sizes)."""
    n, k = routing.indices.shape
    with torch.no_grad():
        weights = routing.weights.detach()  # (N, K)
        sorted_experts, order = torch.sort(routing.indices.reshape(-1), stable=True)  # (N*K,)

        def run(rows: torch.Tensor) -> torch.Tensor:  # (N*K, D) rows in sorted order
            return torch.stack(
                [
                    experts.expert_forward(row[None], int(j))[0]
                    for row, j in zip(rows, sorted_experts, strict=True)
                ]
            )

        right_rows = run(x[order // k])  # (N*K, D)
        contributions = torch.zeros(n * k, x.shape[1])
        contributions[order] = right_rows * weights.reshape(-1)[order, None]
        contributions = contributions.view(n, k, -1)  # (N, K, D): w[n, k] * expert(x[n])
        mistakes = {
            "the combine weights are left out (an unweighted sum of the K expert outputs)": (
                torch.zeros_like(x).index_add(0, order // k, right_rows)
            ),
            "the rows are sorted by expert but the weights are not (multiply by"
            " weights.reshape(-1)[order], not weights.reshape(-1))": torch.zeros_like(x).index_add(
                0, order // k, right_rows * weights.reshape(-1)[:, None]
            ),
        }
        if k > 1:
            # the contribution closest to each token's output: if the output is always one of
            # them, the K contributions were written, not added
            closest = (contributions - got.detach()[:, None]).abs().amax(-1).argmin(-1)  # (N,)
            mistakes[
                "each token keeps only one of its K weighted expert outputs: y[token_index] = ..."
                " (or +=) writes a repeated index once; accumulate with"
                " y.index_add(0, token_index, rows)"
            ] = contributions[torch.arange(n), closest]
            wrong_rows = run(x[order % k])
            mistakes[
                "the source token of sorted assignment j is taken as order[j] % K: assignment"
                " n*K + k belongs to token order[j] // K"
            ] = torch.zeros_like(x).index_add(
                0, order % k, wrong_rows * weights.reshape(-1)[order, None]
            )
    return mistakes
