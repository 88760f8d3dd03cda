"""Balancing losses against hand-derived values; the loss-free bias rule."""

import math

import torch

from moe_lab import MoEConfig, MoELayer
from moe_lab.balancing import (
    load_balancing_loss,
    router_z_loss,
    sequence_balance_loss,
    update_selection_bias,
)


def test_aux_loss_is_exactly_one_under_uniform_routing():
    # Uniform: P_i = 1/E for every expert and each expert gets N*K/E of the N*K assignments,
    # f_i = 1/E. Then E * sum_i f_i P_i = E * E * (1/E) * (1/E) = 1, for every K.
    for n_experts, k in ((4, 1), (4, 2), (8, 3)):
        n_tokens = 8 * n_experts
        probs = torch.full((n_tokens, n_experts), 1.0 / n_experts)
        # token n picks experts n, n+1, ..., n+K-1 (mod E): every expert is picked equally often
        indices = (torch.arange(n_tokens)[:, None] + torch.arange(k)[None, :]) % n_experts
        assert load_balancing_loss(probs, indices).item() == 1.0


def test_aux_loss_approaches_its_maximum_under_collapse():
    # Collapse with K = 1: every token picks expert 0 with probability -> 1, so f = (1, 0, ...)
    # and P -> (1, 0, ...): the loss -> E * 1 * 1 = E, its maximum (sum f_i P_i <= max_i P_i <= 1).
    n_experts = 8
    logits = torch.full((64, n_experts), -20.0)
    logits[:, 0] = 20.0
    probs = logits.softmax(-1)
    indices = torch.zeros(64, 1, dtype=torch.long)
    loss = load_balancing_loss(probs, indices)
    assert math.isclose(loss.item(), n_experts, rel_tol=1e-6)
    # With K = 2 the K choices must differ: at best f = (1/2, 1/2, 0...), so the maximum is E/K.
    logits[:, 1] = 20.0
    indices = torch.tensor([[0, 1]]).repeat(64, 1)
    assert math.isclose(
        load_balancing_loss(logits.softmax(-1), indices).item(), n_experts / 2, rel_tol=1e-6
    )


def test_aux_loss_gradient_flows_only_through_p():
    probs = torch.rand(16, 4).softmax(-1).requires_grad_()
    indices = torch.randint(0, 4, (16, 2))
    load_balancing_loss(probs, indices).backward()
    counts = torch.bincount(indices.reshape(-1), minlength=4).float()
    # d/dP[n,i] of E * sum_i f_i * mean_n P[n,i] = E * f_i / N, identical for every token n
    expected = (4 * counts / counts.sum() / 16).expand(16, 4)
    torch.testing.assert_close(probs.grad, expected)


def test_z_loss_against_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    # logsumexp([1,2,3]) = 3 + log(1 + e^-1 + e^-2); logsumexp([0,0,0]) = log 3
    lse0 = 3 + math.log(1 + math.exp(-1) + math.exp(-2))
    lse1 = math.log(3)
    assert math.isclose(router_z_loss(logits).item(), (lse0**2 + lse1**2) / 2, rel_tol=1e-6)


def test_sequence_loss_is_one_under_uniform_routing():
    batch, seq_len, n_experts, k = 2, 8, 4, 2
    probs = torch.full((batch * seq_len, n_experts), 0.25)
    indices = (torch.arange(batch * seq_len)[:, None] + torch.arange(k)) % n_experts
    loss = sequence_balance_loss(probs, indices, batch, k)
    assert math.isclose(loss.item(), 1.0, rel_tol=1e-6)


def test_bias_rule_direction():
    bias = torch.zeros(4)
    load = torch.tensor([10, 0, 5, 5])  # mean 5: expert 0 over-loaded, expert 1 under-loaded
    update_selection_bias(bias, load, rate=0.1)
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.1, 0.0, 0.0]))


def test_loss_free_bias_balances_a_skewed_router_without_touching_weights():
    cfg = MoEConfig(
        d_model=16,
        d_expert=8,
        n_experts=6,
        top_k=2,
        router="sigmoid_bias",
        bias_update_rate=0.02,
        aux_loss_weight=0.0,
    )
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.gate.weight[0] += 0.5  # skew: expert 0 attracts most tokens
    x = torch.randn(512, 16) + 1.0
    start = layer(x).tokens_per_expert
    for _ in range(300):
        out = layer(x)
        layer.update_bias(out.tokens_per_expert)
    end = out.tokens_per_expert
    assert start.max() > 2 * start.float().mean()  # the router really was skewed
    assert end.max() < 1.3 * end.float().mean()  # bias balancing fixed it
    assert layer.router.selection_bias[0] < 0  # the over-loaded expert was pushed down
    # combine weights are still the normalized *unbiased* scores of the chosen experts
    scores = torch.sigmoid(x @ layer.router.gate.weight.T).gather(-1, out.routing.indices)
    torch.testing.assert_close(out.routing.weights, scores / scores.sum(-1, keepdim=True))
    assert layer.router.gate.weight.grad is None  # no gradient was involved


def test_imbalance_metrics_by_hand():
    from moe_lab.balancing import load_cv, max_violation

    assert (
        load_cv(torch.tensor([5, 5, 5, 5])) == 0.0
        and max_violation(torch.tensor([5, 5, 5, 5])) == 0.0
    )
    # loads (8, 4, 2, 2): mean 4, max 8 -> MaxVio = (8 - 4) / 4 = 1; population std = sqrt(6)
    assert max_violation(torch.tensor([8, 4, 2, 2])) == 1.0
    assert math.isclose(load_cv(torch.tensor([8, 4, 2, 2])), math.sqrt(6) / 4)
    # collapse onto one of E = 8 experts: CV = sqrt(E - 1), MaxVio = E - 1
    collapsed = torch.tensor([40, 0, 0, 0, 0, 0, 0, 0])
    assert math.isclose(load_cv(collapsed), math.sqrt(7)) and max_violation(collapsed) == 7.0
