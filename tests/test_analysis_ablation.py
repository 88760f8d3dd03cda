"""Expert ablation (moe_lab.analysis.ablation) against a hand-computed next choice.

Reference: the router's scores recomputed from the block's real inputs, the removed expert's
column struck out by hand, the top-K taken and renormalized by hand.
"""

from __future__ import annotations

import pytest
import torch

from moe_lab.analysis import ablation_effects, moe_inputs, token_losses, without_experts
from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.data import make_corpus
from moe_lab.model import TinyLM


def small_model(router: str = "softmax_topk", top_k: int = 2, n_experts: int = 6) -> TinyLM:
    torch.manual_seed(0)
    moe = MoEConfig(d_model=32, d_expert=32, n_experts=n_experts, top_k=top_k, router=router)
    return TinyLM(ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=16, d_ff=64, moe=moe))


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_chars=20_000, seed=2)


def test_removed_experts_tokens_go_to_their_next_choice(corpus) -> None:
    model = small_model()
    x = corpus.val.tokens[:128].long().view(8, 16)
    removed = 3
    ablated = without_experts(model, {1: removed})
    with torch.no_grad():
        h = moe_inputs(ablated, x)[1]  # block 1's input (block 0 is unchanged)
        probs = torch.softmax(model.moe_layers[1].router.gate(h), dim=-1)  # (N, E)
        struck = probs.clone()
        struck[:, removed] = -1.0  # below every probability: never among the top K
        top, chosen = struck.topk(2, dim=-1)
        expected_weights = top / top.sum(-1, keepdim=True)  # Mixtral's renormalization
        routing = ablated(x).moe_outputs[1].routing
    assert torch.equal(routing.indices, chosen)
    assert torch.allclose(routing.weights, expected_weights, atol=1e-6)
    assert not bool((routing.indices == removed).any())
    # the intact model is untouched, and a token that never chose the expert is routed as before
    with torch.no_grad():
        intact = model(x).moe_outputs[1].routing
    assert float(model.moe_layers[1].router.selection_bias.abs().sum()) == 0.0
    kept = ~(intact.indices == removed).any(-1)
    assert kept.any() and torch.equal(routing.indices[kept], intact.indices[kept])


def test_ablation_does_not_consume_the_global_rng() -> None:
    model = small_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    without_experts(model, {0: [0, 1]})
    assert torch.equal(torch.rand(3), expected)


def test_ablation_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="not an MoE block"):
        without_experts(small_model(), {5: 0})
    with pytest.raises(ValueError, match="out of range"):
        without_experts(small_model(), {0: 6})
    with pytest.raises(ValueError, match="no next choice"):
        without_experts(small_model(router="hash", top_k=1), {0: 1})
    with pytest.raises(ValueError, match="fewer than top_k"):
        without_experts(small_model(n_experts=3), {0: [0, 1]})


def test_removing_an_unused_expert_changes_nothing(corpus) -> None:
    # make expert 5 of every block unreachable in the model itself: ablating it then changes no
    # routing, so every loss difference must be exactly zero
    model = small_model()
    with torch.no_grad():
        for layer in model.moe_layers.values():
            layer.router.selection_bias[5] = float("-inf")
    effects = ablation_effects(model, corpus.val, corpus.domain_names, max_windows=8)
    assert effects.delta_overall.shape == (2, 6)
    assert bool((effects.delta_overall[:, 5] == 0).all())
    assert bool((effects.delta["domain"][:, 5] == 0).all())
    # the per-label means weight tokens by label: they average back to the overall change
    counts = effects.counts["char_class"].float()
    recombined = (effects.delta["char_class"] * counts).sum(-1) / counts.sum()
    assert torch.allclose(recombined, effects.delta_overall, atol=1e-6)


def test_token_losses_match_the_models_mean_loss(corpus) -> None:
    model = small_model().eval()
    x = corpus.val.tokens[:65].long()
    inputs, targets = x[:64].view(4, 16), x[1:65].view(4, 16)
    with torch.no_grad():
        mean = model(inputs, targets).loss
    assert token_losses(model, inputs, targets, batch_windows=3).mean() == pytest.approx(
        float(mean), rel=1e-5
    )
