"""MoELayer: invariants (one expert = dense FFN), shared experts, outputs and input errors."""

import pytest
import torch

from moe_lab import DenseFFN, MoEConfig, MoELayer


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("router", ["softmax_topk", "switch", "sigmoid_bias"])
def test_one_expert_top1_equals_dense_ffn(activation, router):
    # With E = 1 and K = 1 every token goes to the single expert with weight 1 (softmax over one
    # logit is 1; sigmoid normalized over the one chosen expert is 1), so the MoE is the FFN.
    cfg = MoEConfig(
        d_model=8, d_expert=24, n_experts=1, top_k=1, router=router, activation=activation
    )
    layer = MoELayer(cfg)
    dense = DenseFFN(8, 24, activation)
    with torch.no_grad():
        if activation == "swiglu":
            layer.experts.w_gate[0].copy_(dense.gate.weight.T)
        layer.experts.w_up[0].copy_(dense.up.weight.T)
        layer.experts.w_down[0].copy_(dense.down.weight.T)
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(layer(x).y, dense(x))


def test_shared_experts_are_always_on():
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2, n_shared_experts=2)
    layer = MoELayer(cfg)
    assert layer.shared_experts.d_ff == 2 * 16  # two shared experts = one FFN twice as wide
    with torch.no_grad():
        layer.experts.w_down.zero_()  # silence the routed experts
    x = torch.randn(5, 8)
    g = x @ layer.shared_experts.gate.weight.T
    u = x @ layer.shared_experts.up.weight.T
    expected = (g * torch.sigmoid(g) * u) @ layer.shared_experts.down.weight.T
    torch.testing.assert_close(layer(x).y, expected)


def test_fine_grained_experts_keep_active_width():
    coarse = MoELayer(MoEConfig(d_model=8, d_expert=32, n_experts=4, top_k=1))
    fine = MoELayer(MoEConfig(d_model=8, d_expert=32, n_experts=4, top_k=1, expert_segments=4))
    assert tuple(fine.experts.w_up.shape) == (16, 8, 8)
    # the same total expert parameters, and every token uses K * F = 32 hidden units in both
    n_coarse = sum(p.numel() for p in coarse.experts.parameters())
    assert sum(p.numel() for p in fine.experts.parameters()) == n_coarse
    out = fine(torch.randn(10, 8))
    assert out.routing.indices.shape == (10, 4)


def test_output_fields():
    cfg = MoEConfig(
        d_model=8, d_expert=16, n_experts=4, top_k=2, z_loss_weight=1e-3, seq_aux_loss_weight=1e-4
    )
    out = MoELayer(cfg)(torch.randn(3, 5, 8))
    assert out.y.shape == (3, 5, 8)
    assert out.tokens_per_expert.shape == (4,) and out.tokens_per_expert.sum() == 30
    assert out.dropped.shape == (15, 2) and out.n_dropped == 0
    assert out.routing.probs.shape == (15, 4)
    expected = (
        0.01 * out.losses["load_balance"]
        + 1e-3 * out.losses["z"]
        + 1e-4 * out.losses["seq_balance"]
    )
    torch.testing.assert_close(out.aux_loss, expected)


def test_dropped_fraction_under_capacity():
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=1, capacity_factor=0.5)
    layer = MoELayer(cfg)
    out = layer(torch.randn(40, 8))
    # C = ceil(0.5 * 40 / 4) = 5 per expert, at most 20 of the 40 assignments fit
    assert out.n_dropped >= 20
    assert out.dropped_fraction == out.n_dropped / 40


class TestBadInput:
    layer = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))

    def test_wrong_last_dimension(self):
        with pytest.raises(ValueError, match=r"last dimension must equal d_model=8"):
            self.layer(torch.randn(2, 3, 7))

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"got \(8,\)"):
            self.layer(torch.randn(8))

    def test_integer_input(self):
        with pytest.raises(
            TypeError, match=r"floating-point token vectors, got dtype torch\.int64"
        ):
            self.layer(torch.ones(2, 3, 8, dtype=torch.long))

    def test_non_finite_input(self):
        x = torch.randn(2, 3, 8)
        x[1, 2, 5] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinite"):
            self.layer(x)
        x[1, 2, 5] = float("inf")
        with pytest.raises(ValueError, match="NaN or infinite"):
            self.layer(x)

    def test_top_k_above_n_experts(self):
        with pytest.raises(ValueError, match="top_k=5 > n_experts=4"):
            MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=5))

    def test_capacity_factor_not_positive(self):
        with pytest.raises(ValueError, match="capacity_factor=0"):
            MoELayer(MoEConfig(d_model=8, d_expert=16, capacity_factor=0))

    def test_hash_router_without_ids(self):
        layer = MoELayer(MoEConfig(d_model=8, d_expert=16, router="hash", top_k=1))
        with pytest.raises(ValueError, match="pass token_ids"):
            layer(torch.randn(2, 3, 8))


def test_repr_is_informative():
    text = repr(MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)))
    assert "experts=4, top_k=2" in text and "dispatch='sorted'" in text
