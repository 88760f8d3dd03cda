"""Tests for moe_lab.model: shapes, causality, parameter counts by hand, FLOPs, generation."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.model import PRESETS, TinyLM, get_preset

D, V, T_MAX, LAYERS = 32, 256, 16, 3


def tiny_config(moe: bool = True, **changes) -> ModelConfig:
    moe_config = MoEConfig(d_model=D, d_expert=24, n_experts=4, top_k=2) if moe else None
    config = ModelConfig(
        vocab_size=V,
        d_model=D,
        n_layers=LAYERS,
        n_heads=4,
        max_seq_len=T_MAX,
        d_ff=48,
        moe=moe_config,
    )
    return replace(config, **changes)


def hand_count(config: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters from the layout ModelConfig's docstring fixes."""
    d = config.d_model
    norm = d if config.norm == "rmsnorm" else 2 * d  # layernorm adds D biases
    matrices_per_ffn = 3 if config.activation == "swiglu" else 2  # gate, up, down / up, down
    embeddings = config.vocab_size * d + config.max_seq_len * d  # the LM head is tied: no params
    total = active = embeddings + norm  # final norm
    for i in range(config.n_layers):
        attention = 3 * d * d + d * d  # fused q/k/v and output projection, no biases
        block = 2 * norm + attention
        if config.is_moe_layer(i):
            moe = config.moe
            m = 3 if moe.activation == "swiglu" else 2
            router = d * moe.n_experts
            expert = m * d * moe.d_expert
            total += block + router + moe.n_experts * expert
            active += block + router + moe.top_k * expert
        else:
            ffn = matrices_per_ffn * d * config.d_ff
            total += block + ffn
            active += block + ffn
    return total, active


@pytest.fixture(scope="module")
def moe_model():
    torch.manual_seed(0)
    return TinyLM(tiny_config()).eval()


def test_forward_shapes_and_outputs(moe_model):
    idx = torch.randint(0, V, (2, 10))
    out = moe_model(idx, targets=idx)
    assert out.logits.shape == (2, 10, V)
    assert out.loss.shape == out.aux_loss.shape == ()
    assert sorted(out.moe_outputs) == list(range(LAYERS))
    for moe_out in out.moe_outputs.values():
        assert moe_out.y.shape == (2, 10, D)
        assert moe_out.tokens_per_expert.sum() == 2 * 10 * 2  # N tokens x K choices
        assert moe_out.routing.probs.shape == (20, 4)
    # aux_loss is the sum of the layers' weighted losses; the parts are summed unweighted.
    assert torch.allclose(out.aux_loss, sum(o.aux_loss for o in out.moe_outputs.values()))
    assert torch.allclose(
        out.aux_losses["load_balance"],
        sum(o.losses["load_balance"] for o in out.moe_outputs.values()),
    )
    assert torch.allclose(out.total_loss, out.loss + out.aux_loss)


def test_initial_loss_is_near_uniform(moe_model):
    # Small embeddings and a tied head give near-zero logits: loss ~ log(V) = log(256) = 5.545.
    idx = torch.randint(0, V, (4, T_MAX))
    assert abs(moe_model(idx, idx).loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_dense_model_has_no_moe_outputs():
    model = TinyLM(tiny_config(moe=False))
    out = model(torch.zeros(1, 4, dtype=torch.long))
    assert out.moe_outputs == {} and out.aux_losses == {} and out.aux_loss.item() == 0.0
    assert out.loss is None
    with pytest.raises(ValueError, match="no targets"):
        _ = out.total_loss


def test_moe_every_places_moe_blocks():
    config = tiny_config(n_layers=4, moe_every=2)
    model = TinyLM(config)
    assert sorted(model.moe_layers) == [1, 3]  # block i is MoE when (i + 1) % 2 == 0
    out = model(torch.zeros(1, 4, dtype=torch.long))
    assert sorted(out.moe_outputs) == [1, 3]


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_changing_a_future_token_never_changes_an_earlier_logit(moe):
    torch.manual_seed(1)
    model = TinyLM(tiny_config(moe=moe)).eval()
    idx = torch.randint(0, V, (2, T_MAX))
    logits = model(idx).logits
    for t in (1, 7, T_MAX - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % V  # a different token
        new_logits = model(changed).logits
        # Earlier positions: identical up to float rounding. (The sorted MoE dispatch groups
        # tokens by expert, so a changed route elsewhere changes matmul shapes and can move the
        # last bit; a real leak would change them by orders of magnitude more.)
        torch.testing.assert_close(new_logits[:, :t], logits[:, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(new_logits[:, t], logits[:, t])  # the token itself matters


@pytest.mark.parametrize(
    "changes",
    [{}, {"norm": "layernorm"}, {"activation": "gelu"}, {"moe_every": 2}, {"moe": None}],
    ids=["moe", "layernorm", "gelu-dense-blocks", "every-2nd", "dense"],
)
def test_parameter_counts_match_the_layout_by_hand(changes):
    config = tiny_config(**changes)
    counts = TinyLM(config).parameter_counts()
    assert (counts.total, counts.active) == hand_count(config)
    assert counts.embedding == V * D + T_MAX * D


def test_summary_prints_the_counted_parameters(capsys):
    model = TinyLM(tiny_config())
    model.summary()
    text = capsys.readouterr().out
    total, active = hand_count(tiny_config())
    printed = {
        name: int(re.search(rf"{name} parameters:\s+([\d,]+)", text).group(1).replace(",", ""))
        for name in ("total", "active")
    }
    assert printed == {"total": total, "active": active}
    assert total > active  # 4 experts, 2 used per token


def test_presets_compare_what_their_names_say():
    moe = TinyLM(get_preset("tiny-moe")).parameter_counts()
    dense = TinyLM(get_preset("tiny-dense")).parameter_counts()
    wide = TinyLM(get_preset("tiny-dense-wide")).parameter_counts()
    config = get_preset("tiny-moe")
    router = config.n_moe_layers * config.d_model * config.moe.n_experts
    # The dense twins differ from the MoE only by the router's D x E weights per MoE block.
    assert moe.active - router == dense.active == dense.total
    assert moe.total - router == wide.total
    assert moe.total > 2 * moe.active


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="tiny-moe"):
        get_preset("huge-moe")
    assert {"tiny-moe", "tiny-dense", "tiny-dense-wide"} <= set(PRESETS)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_training_flops_match_a_flop_counter(moe):
    # torch's FlopCounterMode counts the matmuls of one forward + backward independently of our
    # formula. It does not count CPU attention kernels, so the attention term is added by hand.
    # The naive dispatch uses plain matmuls the counter sees (it skips the sorted path's addmm_).
    config = tiny_config(moe=moe)
    if moe:
        config = replace(config, moe=replace(config.moe, dispatch="naive"))
    model = TinyLM(config)
    B, T = 2, T_MAX
    idx = torch.randint(0, V, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx).total_loss.backward()
    # Attention by hand, per trained token: causal token t attends t + 1 keys, (T + 1) / 2 on
    # average; each key costs 2D FLOPs for q.k and 2D for p*v; training is 3x the forward.
    attention = 3 * LAYERS * 4 * D * (T + 1) / 2
    assert counter.get_total_flops() / (B * T) + attention == model.training_flops_per_token(T)


def test_sequence_longer_than_context_is_a_clear_error(moe_model):
    with pytest.raises(ValueError, match="max_seq_len"):
        moe_model(torch.zeros(1, T_MAX + 1, dtype=torch.long))


def test_generate_is_seeded_and_crops_the_context(moe_model):
    prompt = torch.tensor([[1, 2, 3]])
    a = moe_model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    b = moe_model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 23) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    greedy = moe_model.generate(prompt, 5, temperature=0)
    assert torch.equal(greedy, moe_model.generate(prompt, 5, temperature=0))
    top1 = moe_model.generate(prompt, 5, top_k=1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(top1, greedy)  # top-k 1 leaves one token to sample: the argmax
