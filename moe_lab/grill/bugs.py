"""The "spot the bug" checkers: run the reader's fixed code against the library, random inputs.

Each checker receives the object the reader's code defines (a function, or a class for the
circulating ``MoELayer`` snippet) and a seed, builds random inputs from the seed, computes the
reference with ``moe_lab`` (its routers, ``dispatch_capacity``, ``dispatch_naive``,
``load_balancing_loss``, ``MoELayer``) and compares. The first difference becomes the reason of
a "wrong, because ..." grade, named precisely: which token, which value, which gradient; where a
difference has a known cause (the bug the question is about) the reason says so.

    check_answer(checker_name, code, seed) -> (correct, message)

Taught in: notebooks/08_interview_grill.ipynb; the bugs themselves in notebooks 02 and 03.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from moe_lab.balancing import load_balancing_loss
from moe_lab.config import MoEConfig, expert_capacity
from moe_lab.dispatch import dispatch_capacity, dispatch_naive
from moe_lab.experts import StackedExperts
from moe_lab.ffn import DenseFFN
from moe_lab.grill.sandbox import ReaderError, load_answer, reader_call
from moe_lab.moe_layer import MoELayer as LibraryMoELayer
from moe_lab.profiling.autograd import count_full_size_slicing
from moe_lab.routers import RoutingResult, build_router


class WrongAnswerError(Exception):
    """A check failed; ``str(error)`` is the reason, written to follow "wrong, because"."""


class FFN(DenseFFN):
    """The ``FFN(d_model)`` the circulating snippet assumes: a SwiGLU FFN of width 2·d_model."""

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model, 2 * d_model, "swiglu")


Check = Callable[[Any, int], str]


@dataclass(frozen=True)
class BugChecker:
    """A checker: the name the reader's code must define, the check, the names it is given."""

    entry: str
    check: Check
    provided: dict[str, Any] = field(default_factory=dict)


CHECKERS: dict[str, BugChecker] = {}


def _register(name: str, entry: str, **provided: Any) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        CHECKERS[name] = BugChecker(entry, check, provided)
        return check

    return register


def check_answer(checker: str, code: str, seed: int) -> tuple[bool, str]:
    """Grade ``code`` with the checker named ``checker`` on inputs drawn from ``seed``.

    Returns:
        ``(True, "right: ...")`` or ``(False, "wrong, because ...")``; never raises for anything
        the reader's code does.
    """
    if checker not in CHECKERS:
        raise ValueError(f"bug checker {checker!r} is unknown: choose one of {sorted(CHECKERS)}")
    spec = CHECKERS[checker]
    # the references initialize layers with the global generator: leave the caller's state alone
    with torch.random.fork_rng(devices=[]):
        try:
            answer = load_answer(code, spec.entry, **spec.provided)
            detail = spec.check(answer, seed)
        except (ReaderError, WrongAnswerError) as reason:
            return False, f"wrong, because {reason}"
    return True, f"right: {detail}"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise WrongAnswerError(f"{what} is a {type(value).__name__}, not a torch.Tensor")
    return value


def _expect_shape(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != shape:
        raise WrongAnswerError(f"{what} has shape {tuple(tensor.shape)}, expected {shape}")


def _first_row_mismatch(
    got: torch.Tensor, expected: torch.Tensor, atol: float
) -> tuple[int, float] | None:
    """(first row index whose values differ by more than ``atol``, its largest difference)."""
    gap = (got.detach().double() - expected.detach().double()).abs()
    rows = gap.reshape(gap.shape[0], -1).amax(dim=1)  # (N,)
    bad = torch.nonzero(rows > atol).flatten()
    if bad.numel() == 0:
        return None
    return int(bad[0]), float(rows[bad[0]])


def _stacked_experts(generator: torch.Generator, n_experts: int, d_model: int, d_expert: int):
    experts = StackedExperts(n_experts, d_model, d_expert, "swiglu")
    with torch.no_grad():
        for weight in experts.parameters():
            weight.copy_(_randn(generator, *weight.shape, scale=weight.shape[1] ** -0.5))
    return experts


def _dense_weights(routing_indices: torch.Tensor, weights: torch.Tensor, n_experts: int):
    """(N, E) combine weights from (N, K) indices and weights."""
    dense = torch.zeros(routing_indices.shape[0], n_experts, dtype=weights.dtype)
    return dense.scatter(1, routing_indices, weights)


# ----------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------


@_register("noise_at_inference", entry="noisy_topk_route")
def check_noise_at_inference(route: Any, seed: int) -> str:
    """Reference: moe_lab's ``noisy_topk`` router in eval mode (no noise) and in train mode."""
    g = _generator(seed)
    n_tokens, d_model, n_experts, k = 32, 16, 8, 2
    x = _randn(g, n_tokens, d_model)
    w_gate, w_noise = _randn(g, n_experts, d_model, scale=0.5), _randn(g, n_experts, d_model)
    router = build_router(
        MoEConfig(d_model=d_model, d_expert=4, n_experts=n_experts, top_k=k, router="noisy_topk")
    )
    with torch.no_grad():
        router.gate.weight.copy_(w_gate)
        router.noise.weight.copy_(w_noise)
        reference = router.eval()(x)
    expected = _dense_weights(reference.indices, reference.weights, n_experts)  # (N, E)

    def call(training: bool, rng_seed: int):
        def run():
            torch.manual_seed(rng_seed)
            return route(x.clone(), w_gate.clone(), w_noise.clone(), k, training)

        with torch.no_grad():
            out = reader_call("calling your `noisy_topk_route`", run)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise WrongAnswerError(
                "`noisy_topk_route` must return (indices, weights), two (N, K) tensors"
            )
        indices = _as_tensor(out[0], "the indices you return").long()
        weights = _as_tensor(out[1], "the weights you return").float()
        _expect_shape(indices, (n_tokens, k), "the indices you return")
        _expect_shape(weights, (n_tokens, k), "the weights you return")
        return _dense_weights(indices, weights, n_experts)

    first, second = call(False, 1), call(False, 2)
    if not torch.equal(first, second):
        raise WrongAnswerError(
            "with training=False your routing changes from one call to the next: the noise is"
            " still on at inference. Shazeer et al. (2017) add it only while training; at"
            " inference the same token must always go to the same experts (notebook 02,"
            " section 4)"
        )
    mismatch = _first_row_mismatch(first, expected, atol=1e-5)
    if mismatch is not None:
        n, _ = mismatch
        raise WrongAnswerError(
            f"with training=False, token {n} gets weights {first[n].tolist()} over the 8 experts,"
            f" but the noise-free router gives {[round(v, 4) for v in expected[n].tolist()]}"
        )
    noisy_a, noisy_b = call(True, 1), call(True, 2)
    if torch.equal(noisy_a, noisy_b):
        raise WrongAnswerError(
            "with training=True your routing no longer changes with the random state: keep the"
            " noise while training (it gives the router exploration); remove it only at"
            " inference"
        )
    if not torch.allclose(noisy_a.sum(-1), torch.ones(n_tokens), atol=1e-4):
        raise WrongAnswerError("with training=True the K weights of a token no longer sum to 1")
    return (
        "deterministic and equal to moe_lab's noise-free router at inference, noisy while"
        f" training ({int((noisy_a > 0).ne(expected > 0).any(-1).sum())} of {n_tokens} tokens"
        " changed experts under noise in this draw)"
    )


@_register("top1_renormalized", entry="switch_route")
def check_top1_renormalized(route: Any, seed: int) -> str:
    """Reference: moe_lab's ``switch`` router (top-1, weight = the router probability)."""
    g = _generator(seed)
    n_tokens, d_model, n_experts = 48, 16, 8
    x = _randn(g, n_tokens, d_model)
    w_gate = _randn(g, n_experts, d_model, scale=0.5)
    upstream = _randn(g, n_tokens)  # d(task loss)/d(weight) of each token, some random direction
    router = build_router(
        MoEConfig(d_model=d_model, d_expert=4, n_experts=n_experts, top_k=1, router="switch")
    )
    with torch.no_grad():
        router.gate.weight.copy_(w_gate)
    reference = router(x)
    (reference.weights[:, 0] * upstream).sum().backward()
    expected_grad = router.gate.weight.grad

    w = w_gate.clone().requires_grad_(True)
    out = reader_call("calling your `switch_route`", route, x.clone(), w)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise WrongAnswerError("`switch_route` must return (expert, weight), two (N,) tensors")
    expert = _as_tensor(out[0], "the experts you return").reshape(-1)
    weight = _as_tensor(out[1], "the weights you return").reshape(-1)
    _expect_shape(expert, (n_tokens,), "the experts you return")
    _expect_shape(weight, (n_tokens,), "the weights you return")
    if torch.all(weight.detach() == 1.0):
        raise WrongAnswerError(
            "every combine weight is exactly 1.0. Renormalizing a single kept probability gives"
            " p / p = 1, so the layer's output no longer depends on the router's scores and the"
            " task loss sends the router no gradient: it would never learn which expert suits a"
            " token (notebook 02, section 5). Switch multiplies the expert's output by p itself"
        )
    if not torch.equal(expert.long(), reference.indices[:, 0]):
        n = int(torch.nonzero(expert.long() != reference.indices[:, 0])[0])
        raise WrongAnswerError(
            f"token {n} goes to expert {int(expert[n])}, but its most probable expert is"
            f" {int(reference.indices[n, 0])}"
        )
    mismatch = _first_row_mismatch(weight[:, None], reference.weights.detach(), atol=1e-5)
    if mismatch is not None:
        n, _ = mismatch
        raise WrongAnswerError(
            f"token {n}'s weight is {float(weight[n]):.4f}, but its router probability for its"
            f" expert is {float(reference.weights[n, 0]):.4f}"
        )
    if not weight.requires_grad:
        raise WrongAnswerError(
            "your weights carry no gradient back to w_gate: the router cannot learn"
        )
    reader_call("backpropagating through your weights", (weight * upstream).sum().backward)
    if w.grad is None or not torch.allclose(w.grad, expected_grad, atol=1e-5):
        raise WrongAnswerError(
            "the gradient your weights send to w_gate differs from the Switch router's"
        )
    return (
        f"equal to moe_lab's Switch router on {n_tokens} random tokens, and the router's"
        f" gradient is non-zero (largest entry {expected_grad.abs().max():.2e})"
    )


SNIPPET_D_MODEL, SNIPPET_EXPERTS, SNIPPET_TOP_K, SNIPPET_TOKENS = 16, 4, 2, 10


def _library_twin(module: nn.Module, normalize: bool) -> LibraryMoELayer:
    """moe_lab's MoELayer carrying the reader's gate and FFN expert weights."""
    twin = LibraryMoELayer(
        MoEConfig(
            d_model=SNIPPET_D_MODEL,
            d_expert=2 * SNIPPET_D_MODEL,
            n_experts=SNIPPET_EXPERTS,
            top_k=SNIPPET_TOP_K,
            normalize_topk=normalize,
            dispatch="naive",
        )
    )
    with torch.no_grad():
        twin.router.gate.weight.copy_(module.gate.weight)
        for e, ffn in enumerate(module.experts):  # nn.Linear stores (out, in): transpose
            twin.experts.w_gate[e].copy_(ffn.gate.weight.T)
            twin.experts.w_up[e].copy_(ffn.up.weight.T)
            twin.experts.w_down[e].copy_(ffn.down.weight.T)
    return twin


@_register("circulating_snippet", entry="MoELayer", FFN=FFN)
def check_circulating_snippet(layer_class: Any, seed: int) -> str:
    """Reference: moe_lab's MoELayer (softmax top-k, with or without renormalization)."""
    g = _generator(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = reader_call(
            f"constructing `MoELayer(d_model={SNIPPET_D_MODEL}, num_experts={SNIPPET_EXPERTS},"
            f" top_k={SNIPPET_TOP_K})`",
            layer_class,
            SNIPPET_D_MODEL,
            SNIPPET_EXPERTS,
            top_k=SNIPPET_TOP_K,
        )
    if not isinstance(module, nn.Module):
        raise WrongAnswerError("`MoELayer(...)` does not build an nn.Module")
    for name in ("gate", "experts", "top_k"):
        if not hasattr(module, name):
            raise WrongAnswerError(
                f"the layer has no attribute `{name}`: keep the snippet's attribute names"
            )
    if len(module.experts) != SNIPPET_EXPERTS:
        raise WrongAnswerError(
            f"the layer holds {len(module.experts)} experts, not {SNIPPET_EXPERTS}"
        )
    if getattr(module.gate, "bias", None) is not None:
        with torch.no_grad():  # moe_lab's router has no bias; the grader compares without one
            module.gate.bias.zero_()
    x = _randn(g, SNIPPET_TOKENS, SNIPPET_D_MODEL)
    with torch.no_grad():
        y = _as_tensor(reader_call("calling your layer", module, x.clone()), "your output")
        _expect_shape(y, (SNIPPET_TOKENS, SNIPPET_D_MODEL), "your output")
        for n in range(SNIPPET_TOKENS):  # one token alone must give what it gets in the batch
            alone = reader_call("calling your layer on one token", module, x[n : n + 1].clone())
            if not torch.allclose(alone[0], y[n], atol=1e-5):
                raise WrongAnswerError(
                    f"token {n}'s output changes with its batch-mates (alone it gets a different"
                    " output): every token must go to its *own* top-k experts. Indexing"
                    " `top_k_indices[i]` picks a token (the batch dimension), not the i-th choice"
                    " (the k dimension)"
                )
        twins = {normalize: _library_twin(module, normalize)(x).y for normalize in (True, False)}
        matching = [
            normalize
            for normalize, expected in twins.items()
            if _first_row_mismatch(y, expected, atol=1e-5) is None
        ]
        if not matching:
            scores = module.gate(x)  # (N, E)
            top_scores, top_indices = scores.topk(SNIPPET_TOP_K, dim=-1)
            raw = torch.zeros_like(x)
            for n in range(SNIPPET_TOKENS):
                for slot in range(SNIPPET_TOP_K):
                    ffn = module.experts[int(top_indices[n, slot])]
                    raw[n] += top_scores[n, slot] * ffn(x[n : n + 1])[0]
            if _first_row_mismatch(y, raw, atol=1e-5) is None:
                raise WrongAnswerError(
                    "the combine weights are the raw gate scores: they can be negative and have"
                    " no fixed scale. Apply a softmax over the experts before taking the top-k"
                    " (and renormalize the k kept probabilities, as Mixtral does, if you like)"
                )
            n, gap = _first_row_mismatch(y, twins[True], atol=1e-5)
            raise WrongAnswerError(
                f"token {n}'s output differs from moe_lab.MoELayer's (softmax over the experts,"
                f" top-{SNIPPET_TOP_K}, with or without renormalization) by up to {gap:.3g}"
            )
    normalize = matching[0]
    # gradients flow to the input like the library's
    x_req = x.clone().requires_grad_(True)
    reader_call("backpropagating through your layer", module(x_req).square().sum().backward)
    twin = _library_twin(module, normalize)
    x_ref = x.clone().requires_grad_(True)
    twin(x_ref).y.square().sum().backward()
    if x_req.grad is None or not torch.allclose(x_req.grad, x_ref.grad, atol=1e-4):
        raise WrongAnswerError(
            "the output is right but its gradient with respect to the input is not"
        )
    style = "renormalized (Mixtral)" if normalize else "not renormalized (Switch, Qwen1.5)"
    return (
        f"equal to moe_lab.MoELayer, weights {style}, on {SNIPPET_TOKENS} random tokens, one"
        " token at a time and together, gradients included"
    )


@_register("expert_choice_decoder", entry="decoder_route")
def check_expert_choice_decoder(route: Any, seed: int) -> str:
    """Reference: moe_lab's softmax top-k router (renormalized), which is causal."""
    g = _generator(seed)
    seq_len, n_experts, k = 16, 4, 2
    logits = _randn(g, seq_len, n_experts, scale=2.0)
    router = build_router(MoEConfig(d_model=n_experts, d_expert=1, n_experts=n_experts, top_k=k))
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n_experts))  # the router's logits are the input itself
        reference = router(logits)
    expected = _dense_weights(reference.indices, reference.weights, n_experts)  # (T, E)

    def call(values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = reader_call("calling your `decoder_route`", route, values.clone(), k)
        out = _as_tensor(out, "what `decoder_route` returns").float()
        _expect_shape(out, (seq_len, n_experts), "what `decoder_route` returns")
        return out

    weights = call(logits)
    for position in (2, 7, 11):
        future = logits.clone()
        future[position + 1 :] = _randn(g, seq_len - position - 1, n_experts, scale=3.0)
        changed = _first_row_mismatch(call(future)[: position + 1], weights[: position + 1], 1e-6)
        if changed is not None:
            t, _ = changed
            raise WrongAnswerError(
                f"token {t}'s weights changed when only the tokens after position {position}"
                " changed. In a decoder, token t's output may not depend on later tokens; with"
                " expert choice, whether an expert takes token t depends on every token's score,"
                " the future ones included (notebook 02, section 6). Let each token choose its"
                " own top-k experts"
            )
    mismatch = _first_row_mismatch(weights, expected, atol=1e-5)
    if mismatch is not None:
        t, _ = mismatch
        raise WrongAnswerError(
            f"causal now, but token {t} gets {[round(v, 4) for v in weights[t].tolist()]}; a"
            " softmax over the experts, top-k, renormalized gives"
            f" {[round(v, 4) for v in expected[t].tolist()]}"
        )
    return (
        f"causal (changing later tokens never moved an earlier token's weights) and equal to"
        f" moe_lab's top-{k} router on {seq_len} random tokens"
    )


# ----------------------------------------------------------------------------------------------
# Balancing and capacity
# ----------------------------------------------------------------------------------------------


@_register("dropped_passthrough", entry="switch_layer")
def check_dropped_passthrough(layer: Any, seed: int) -> str:
    """Reference: moe_lab's capacity dispatch (position priority) with the Switch router."""
    g = _generator(seed)
    n_tokens, d_model, n_experts, d_expert = 24, 8, 4, 16
    x = _randn(g, n_tokens, d_model)
    skew = torch.tensor([2.0, 1.0, 0.0, -1.0])  # expert 0 is popular: it overflows
    logits = _randn(g, n_tokens, n_experts) + skew
    capacity = expert_capacity(n_tokens, n_experts, 1, 0.75)
    experts = _stacked_experts(g, n_experts, d_model, d_expert)
    probs = logits.softmax(dim=-1)  # (N, E)
    weight, choice = probs.max(dim=-1)  # (N,)
    routing = RoutingResult(choice[:, None], weight[:, None], probs, logits)
    with torch.no_grad():
        reference = dispatch_capacity(x, routing, experts, capacity, "position")
    dropped = reference.dropped[:, 0]  # (N,)
    if not dropped.any():  # the skew makes expert 0 overflow in every draw; guard it anyway
        raise RuntimeError(f"seed {seed} drew a batch that drops nothing: the check needs drops")

    def expert(e: int, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return experts.expert_forward(rows, int(e))

    with torch.no_grad():
        y = reader_call(
            "calling your `switch_layer`", layer, x.clone(), logits.clone(), expert, capacity
        )
    y = _as_tensor(y, "what `switch_layer` returns")
    _expect_shape(y, (n_tokens, d_model), "what `switch_layer` returns")
    mismatch = _first_row_mismatch(y, reference.y, atol=1e-5)
    if mismatch is not None:
        n, _ = mismatch
        if dropped[n]:
            passthrough = weight[n] * x[n]
            if torch.allclose(y[n], passthrough, atol=1e-5):
                cause = (
                    "your layer returns p·x for it (p its router probability). A dropped token"
                    " gets zero expert output; the residual connection around the block,"
                    " h + MoE(h), already carries it on unchanged, so returning x adds it a"
                    " second time"
                )
            else:
                cause = f"your layer returns a non-zero vector for it (norm {y[n].norm():.3g})"
            raise WrongAnswerError(
                f"token {n} was dropped (its expert {int(choice[n])} was already full with"
                f" C = {capacity} tokens), and {cause} (notebook 03, section 3)"
            )
        raise WrongAnswerError(
            f"token {n} was kept by expert {int(choice[n])}, but its output differs from"
            f" p·expert(x) = {float(weight[n]):.4f}·expert_{int(choice[n])}(x)"
        )
    return (
        f"equal to moe_lab's capacity dispatch: {int(dropped.sum())} of {n_tokens} tokens dropped"
        f" at C = {capacity}, each with exactly zero expert output"
    )


@_register("aux_loss_on_topk", entry="switch_aux_loss")
def check_aux_loss_on_topk(loss_fn: Any, seed: int) -> str:
    """Reference: ``moe_lab.balancing.load_balancing_loss`` on the full softmax."""
    g = _generator(seed)
    n_tokens, n_experts = 64, 8
    for k in (2, 1):
        logits = _randn(g, n_tokens, n_experts).requires_grad_(True)
        probs = logits.softmax(dim=-1)
        indices = probs.detach().topk(k, dim=-1).indices  # (N, K)
        expected = load_balancing_loss(probs, indices)
        (expected_grad,) = torch.autograd.grad(expected, logits)
        mine = logits.detach().clone().requires_grad_(True)
        value = _as_tensor(
            reader_call("calling your `switch_aux_loss`", loss_fn, mine, k),
            "what `switch_aux_loss` returns",
        )
        if value.numel() != 1:
            raise WrongAnswerError(f"the loss must be a scalar, got shape {tuple(value.shape)}")
        if not value.requires_grad:
            raise WrongAnswerError(f"with k={k} your loss carries no gradient to the logits")
        (grad,) = reader_call(
            "differentiating your loss", torch.autograd.grad, value.reshape(()), mine
        )
        unchosen = torch.ones_like(mine, dtype=torch.bool).scatter(1, indices, False)
        if grad[unchosen].abs().max() < 1e-9 <= expected_grad[unchosen].abs().max():
            raise WrongAnswerError(
                f"with k={k} your loss sends no gradient to the logits of the experts a token did"
                " not choose, so it can never pull tokens toward under-used experts. P must be"
                " the mean of the full softmax over all E experts, not of the top-k weights"
                " (notebook 02, section 2)"
            )
        if abs(float(value.detach()) - float(expected.detach())) > 1e-5:
            raise WrongAnswerError(
                f"with k={k} your loss is {float(value.detach()):.5f}; E·Σ f_i·P_i with P the mean full"
                f" softmax is {float(expected.detach()):.5f}"
            )
        if not torch.allclose(grad, expected_grad, atol=1e-6):
            raise WrongAnswerError(
                f"with k={k} the value is right but the gradient is not: f counts discrete"
                " choices and must carry no gradient; only P does"
            )
    return "equal to moe_lab's load_balancing_loss, value and gradient, for k = 2 and k = 1"


# ----------------------------------------------------------------------------------------------
# Scaling and parallelism (dispatch implementations)
# ----------------------------------------------------------------------------------------------


@_register("per_expert_indexing", entry="moe_forward")
def check_per_expert_indexing(forward: Any, seed: int) -> str:
    """Reference: ``dispatch_naive``; and a count of full-size gradient buffers in backward."""
    g = _generator(seed)
    n_tokens, d_model, d_expert, n_experts, k = 48, 16, 24, 8, 2
    x = _randn(g, n_tokens, d_model)
    indices = torch.stack(
        [torch.randperm(n_experts, generator=g)[:k] for _ in range(n_tokens)]
    )  # (N, K)
    weights = torch.rand(n_tokens, k, generator=g)
    upstream = _randn(g, n_tokens, d_model)
    experts = _stacked_experts(g, n_experts, d_model, d_expert)
    uniform = torch.full((n_tokens, n_experts), 1 / n_experts)  # unused by dispatch
    routing = RoutingResult(indices, weights, uniform, torch.zeros(n_tokens, n_experts))
    reference = dispatch_naive(x, routing, experts).y
    (reference * upstream).sum().backward()
    names = ("w_gate", "w_up", "w_down")
    expected_grads = {name: getattr(experts, name).grad for name in names}

    leaves = {name: getattr(experts, name).detach().clone().requires_grad_(True) for name in names}
    y = reader_call(
        "calling your `moe_forward`",
        forward,
        x.clone(),
        indices.clone(),
        weights.clone(),
        leaves["w_gate"],
        leaves["w_up"],
        leaves["w_down"],
    )
    y = _as_tensor(y, "what `moe_forward` returns")
    _expect_shape(y, (n_tokens, d_model), "what `moe_forward` returns")
    mismatch = _first_row_mismatch(y, reference, atol=1e-4)
    if mismatch is not None:
        n, gap = mismatch
        raise WrongAnswerError(
            f"token {n}'s output differs from moe_lab's dispatch_naive by {gap:.3g}"
        )
    if not y.requires_grad:
        raise WrongAnswerError("your output carries no gradient back to the expert weights")
    full_size = count_full_size_slicing(y, {tuple(leaves[name].shape) for name in names})
    reader_call("backpropagating through your output", (y * upstream).sum().backward)
    for name in names:
        grad = leaves[name].grad
        if grad is None or not torch.allclose(grad, expected_grads[name], atol=1e-4):
            raise WrongAnswerError(
                f"the gradient of {name} differs from moe_lab's dispatch_naive's"
            )
    if full_size > len(names):
        raise WrongAnswerError(
            f"the backward pass builds {full_size} zero-filled gradients the full size of a stacked"
            f" weight ({tuple(leaves['w_up'].shape)} for w_up) for 3 weights, about"
            f" {full_size // len(names)} per weight: under autograd each `w_up[e]` is its own"
            " indexing operation, whose backward allocates a zero tensor of the whole (E, D, F)"
            " weight to return one expert's slice, and the E of them are then added up. Index each"
            " stacked weight once (`w_up.unbind(0)`), or run all experts with one batched product"
        )
    return (
        "right outputs and gradients, and no per-expert full-size gradient buffers"
        f" ({full_size} zero-filling slice operations on the stacked weights)"
    )


# Notebook 07's checker (a balancing loss averaged over expert-parallel ranks) lives in its own
# module; importing it here registers it with every import of this one.
# Notebook 05's (specialization and collapse) live in bugs_specialization, likewise.
from moe_lab.grill import (  # noqa: E402  (importing registers them)
    bugs_scaling,  # noqa: F401
    bugs_specialization,  # noqa: F401
)
