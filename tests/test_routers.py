"""Router properties, each against a hand computation or an invariant that could fail."""

import pytest
import torch

from moe_lab import MoEConfig, MoELayer
from moe_lab.routers import build_router


def make_router(**kw):
    base = dict(d_model=8, d_expert=16, n_experts=6, top_k=2)
    base.update(kw)
    return build_router(MoEConfig(**base))


def test_softmax_topk_matches_hand_computation():
    router = make_router(normalize_topk=False)
    x = torch.randn(10, 8)
    logits = x @ router.gate.weight.T
    probs = torch.softmax(logits, dim=-1)
    result = router(x)
    # The two largest probabilities, in order, with their softmax values (no renormalization).
    top = probs.sort(dim=-1, descending=True)
    torch.testing.assert_close(result.weights, top.values[:, :2])
    assert torch.equal(result.indices, top.indices[:, :2])
    torch.testing.assert_close(result.probs, probs)


def test_renormalized_softmax_topk_equals_topk_softmax_for_k2():
    # softmax is monotonic (same experts) and its normalizer cancels when the k kept values are
    # renormalized: p_i / sum_kept p_j = exp(l_i) / sum_kept exp(l_j).
    a = make_router(router="softmax_topk", normalize_topk=True)
    b = make_router(router="topk_softmax")
    b.load_state_dict(a.state_dict())
    x = torch.randn(50, 8)
    ra, rb = a(x), b(x)
    assert torch.equal(ra.indices, rb.indices)
    torch.testing.assert_close(ra.weights, rb.weights)
    assert torch.allclose(ra.weights.sum(-1), torch.ones(50))


def test_noisy_topk_is_deterministic_in_eval_and_noisy_in_training():
    router = make_router(router="noisy_topk")
    x = torch.randn(200, 8)
    router.eval()
    first, second = router(x), router(x)
    assert torch.equal(first.indices, second.indices)
    assert torch.equal(first.weights, second.weights)
    # eval routing is the plain top-k of the clean logits
    clean = (x @ router.gate.weight.T).topk(2, dim=-1).indices
    assert torch.equal(first.indices, clean)
    router.train()
    noisy = router(x)
    assert not torch.equal(noisy.weights, first.weights)


def test_fixed_noise_std_adds_exactly_that_noise_in_training():
    router = make_router(router="noisy_topk", noise_std=0.7)
    assert router.noise is None  # a fixed std needs no W_noise
    x = torch.randn(64, 8)
    logits = x @ router.gate.weight.T
    torch.manual_seed(5)
    eps = torch.randn(64, 6)  # the draws the router will make after the same seed
    torch.manual_seed(5)
    result = router.train()(x)
    noisy = logits + 0.7 * eps  # H(x) of Shazeer et al. 2017, eq. (4), with a constant std
    assert torch.equal(result.indices, noisy.topk(2, dim=-1).indices)
    torch.testing.assert_close(result.weights, noisy.topk(2, dim=-1).values.softmax(-1))


def test_learned_noise_starts_at_softplus_zero():
    # W_noise starts at zero: the noise std is softplus(0) = ln 2 for every token at first.
    router = make_router(router="noisy_topk")
    assert torch.count_nonzero(router.noise.weight) == 0


def test_switch_weight_is_the_router_probability():
    router = make_router(router="switch", top_k=1)
    x = torch.randn(20, 8)
    result = router(x)
    torch.testing.assert_close(result.weights[:, 0], result.probs.max(dim=-1).values)
    assert (result.weights < 1).all()


def layer_router_grad(normalize: bool, router: str = "softmax_topk") -> torch.Tensor:
    cfg = MoEConfig(
        d_model=8,
        d_expert=16,
        n_experts=4,
        top_k=1,
        router=router,
        normalize_topk=normalize,
        aux_loss_weight=0.0,
    )
    layer = MoELayer(cfg)
    layer(torch.randn(32, 8)).y.pow(2).sum().backward()
    return layer.router.gate.weight.grad


def test_top1_with_renormalization_sends_no_gradient_to_the_router():
    # w = p_i / p_i = 1 exactly, a constant: the output does not depend on the router logits.
    # Autograd still differentiates the division, d(p/p)/dp = 1/p - p/p^2, which is 0 in exact
    # arithmetic and float round-off (~1e-9) in practice: a million times smaller than the
    # gradient the same router gets without renormalization.
    dead = layer_router_grad(normalize=True)
    alive = layer_router_grad(normalize=False, router="switch")
    assert dead.abs().max() < 1e-6 * alive.abs().max()


def test_top1_without_renormalization_trains_the_router():
    grad = layer_router_grad(normalize=False, router="switch")
    assert grad is not None and grad.abs().max() > 1e-3


def test_expert_choice_takes_exactly_capacity_tokens_per_expert():
    router = make_router(router="expert_choice", capacity_factor=1.0, top_k=2)
    x = torch.randn(30, 8)
    result = router(x)
    capacity = 10  # ceil(1.0 * 30 tokens * 2 / 6 experts)
    assert result.mask.sum(dim=0).tolist() == [capacity] * 6
    # each expert's chosen tokens are its `capacity` highest-probability tokens
    for e in range(6):
        chosen = set(torch.nonzero(result.mask[:, e]).squeeze(-1).tolist())
        best = set(result.probs[:, e].topk(capacity).indices.tolist())
        assert chosen == best


def test_expert_choice_leaks_future_tokens():
    # Expert 0 has room for C = ceil(1.0 * 4 * 1 / 2) = 2 tokens. With the last token neutral it
    # takes tokens 0 and 1; when the last token strongly prefers expert 0 it displaces token 1:
    # an earlier position's output changed because of a later one.
    cfg = MoEConfig(
        d_model=2,
        d_expert=4,
        n_experts=2,
        top_k=1,
        router="expert_choice",
        capacity_factor=1.0,
        validate_inputs=True,
    )
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    before = layer(x)
    x_future = x.clone()
    x_future[3] = torch.tensor([3.0, 0.0])
    after = layer(x_future)
    assert before.routing.mask[1, 0] and not after.routing.mask[1, 0]
    assert not torch.allclose(before.y[1], after.y[1])


def test_hash_router_is_a_fixed_function_of_the_token_id():
    router = make_router(router="hash", top_k=1)
    ids = torch.tensor([3, 7, 3, 11, 7])
    result = router(torch.randn(5, 8), ids)
    expected = (ids * 2654435761) % 2**32 % 6  # Knuth's multiplicative hash
    assert torch.equal(result.indices[:, 0], expected)
    assert torch.equal(result.weights, torch.ones(5, 1))
    with pytest.raises(ValueError, match="pass token_ids"):
        router(torch.randn(5, 8))


def test_sigmoid_bias_changes_selection_never_weights():
    router = make_router(router="sigmoid_bias", top_k=2, routed_scaling_factor=2.5)
    x = torch.randn(100, 8)
    scores = torch.sigmoid(x @ router.gate.weight.T)
    unbiased = router(x)
    router.selection_bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, -2.0]))
    biased = router(x)
    # the bias moved the selection: expert 0 is now chosen by every token, expert 5 by none
    assert (biased.indices == 0).any(-1).all() and not (biased.indices == 5).any()
    assert not torch.equal(unbiased.indices, biased.indices)
    # weights are the *unbiased* scores of the chosen experts, normalized, times the scale
    chosen = scores.gather(-1, biased.indices)
    torch.testing.assert_close(biased.weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))
