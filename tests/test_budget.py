"""Tests for moe_lab.budget against independent references.

References used: the model cards' published parameter counts (``PRESETS``, sources recorded in
``moe_lab/budget/presets.py``); the parameter count of instantiated PyTorch modules; torch's
``FlopCounterMode``; ZeRO's 16 bytes per parameter; DeepSeek-V2's MLA cache size; Monte Carlo
simulation of uniform routing; hand derivations written next to each constant.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from moe_lab import budget
from moe_lab.budget import (
    ALL_IN,
    NO_EMBEDDING,
    NON_EMBEDDING,
    PRESETS,
    ConfigError,
    CountConvention,
    count_parameters,
    from_hf_config,
    from_model_config,
)
from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.ffn import DenseFFN
from moe_lab.moe_layer import MoELayer


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Published models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_reproduces_published_total_and_active(name: str) -> None:
    preset = PRESETS[name]
    counts = preset.counts()
    total, active = counts.total(preset.convention), counts.active(preset.convention)
    assert preset.total_agrees(counts), (
        f"{name}: total {total / 1e9:.3f}B vs published {preset.total.value / 1e9}B"
    )
    assert preset.active_agrees(counts), (
        f"{name}: active {active / 1e9:.3f}B vs published {preset.active.value / 1e9}B"
    )


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        # These figures tell the conventions apart: counted the other way, each misses its
        # model card by more than its tolerance.
        ("Mixtral-8x7B", NO_EMBEDDING),  # 12.75B vs 12.9B
        ("Qwen1.5-MoE-A2.7B", NO_EMBEDDING),  # 2.38B vs 2.7B
        ("gpt-oss-20b", ALL_IN),  # 4.19B vs 3.6B
        ("gpt-oss-120b", ALL_IN),  # 5.71B vs 5.1B
        ("DeepSeek-V2-Lite", ALL_IN),  # 2.66B, outside [2.4B, 2.5B)
        # Figures given as whole units ("32B") must round to the count:
        ("DeepSeekMoE-16B", NO_EMBEDDING),  # 2.62B rounds to 2.6B, not 2.8B
        ("Kimi-K2", ALL_IN),  # 32.86B rounds to 33B
        ("GLM-4.5", NO_EMBEDDING),  # 32.86B rounds to 33B
        ("GLM-4.5-Air", NO_EMBEDDING),  # 12.80B rounds to 13B
        ("Granite-3.0-3B-A800M", ALL_IN),  # 0.88B rounds to 900M
        ("JetMoE-8B", ALL_IN),  # 2.33B, outside [2.2B, 2.3B)
        ("Switch-Base-128", NON_EMBEDDING),  # 0.199B rounds to 0.20B, not 0.22B
    ],
)
def test_the_counting_convention_matters(name: str, wrong: CountConvention) -> None:
    preset = PRESETS[name]
    assert preset.active_agrees()
    assert not preset.active_agrees(convention=wrong)


@pytest.mark.parametrize("name", ["Qwen3-30B-A3B", "Qwen3-235B-A22B"])
def test_qwen3_non_embedding_totals(name: str) -> None:
    # The Qwen3 cards also give "Number of Parameters (Non-Embedding)" (29.9B, 234B): total minus
    # the embedding and the (untied) LM head. Both have three digits: 1%.
    published = PRESETS[name].extra["non_embedding_total"]
    counts = PRESETS[name].counts()
    non_embedding = counts.total() - counts.embedding - counts.lm_head
    assert abs(non_embedding / published - 1) < 0.01


def test_deepseek_v3_mtp_and_readme_figures() -> None:
    # github.com/deepseek-ai/DeepSeek-V3 README_WEIGHTS.md: main model 671B; MTP module
    # "11.5B unique parameters" excluding the shared embedding and head, each "0.9B"; main-model
    # activated "36.6B (including 0.9B for the output Head)".
    preset = PRESETS["DeepSeek-V3"]
    counts = preset.counts()
    assert preset.extra["mtp_params"] == 11.5e9
    assert abs(counts.mtp / preset.extra["mtp_params"] - 1) < 0.01
    with_mtp = dataclasses.replace(preset.convention, total_includes_mtp=True)
    assert counts.total(with_mtp) == counts.total(preset.convention) + counts.mtp
    assert round(counts.embedding / 1e9, 1) == 0.9 and round(counts.lm_head / 1e9, 1) == 0.9
    active_36_6 = preset.extra["active_without_embedding"]
    assert abs(counts.active(preset.convention) / active_36_6 - 1) < 0.01
    # The other README wording, "36.7B including 0.9B for Embedding and 0.9B for the output
    # Head", cannot hold: counting both matrices gives 37.55B.
    assert counts.active(ALL_IN) / 36.7e9 - 1 > 0.02


def test_mixtral_is_not_eight_times_seven_billion() -> None:
    # A one-expert Mixtral is the dense 7B-class model: attention, embeddings, norms and one
    # FFN per block. Eight of those would be 8 x that; Mixtral stores the shared parts once.
    mixtral = PRESETS["Mixtral-8x7B"]
    one_expert = {**mixtral.config, "num_local_experts": 1, "num_experts_per_tok": 1}
    dense = count_parameters(from_hf_config(one_expert)).total()
    moe = mixtral.counts()
    shared = moe.total() - moe.routed_experts - moe.router
    assert 8 * dense > 56e9 > moe.total()
    # dense = shared + 1 FFN + a (1, D) router per block; Mixtral = shared + 8 FFNs + an (8, D)
    # router per block. So 8 x dense - Mixtral = 7 x shared, exactly.
    assert 8 * dense - moe.total() == 7 * shared


_NOT_IN_TRANSFORMERS = {
    "deepseek": "DeepSeekMoE 16B ships its own modeling_deepseek.py (custom code)",
    "arctic": "Snowflake Arctic ships its own modeling_arctic.py (custom code)",
    "grok-1": "Grok-1 is a JAX checkpoint; its PyTorch ports are custom code",
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_counts_equal_the_transformers_modules(name: str) -> None:
    # The strongest reference: Hugging Face's own modeling code, built at full size on the meta
    # device (no memory). transformers is not a dependency of the course; this runs where it is
    # installed (checked with transformers 5.23: all 23 presets it can build match exactly;
    # GLM-4.5's multi-token-prediction layer is not built, and its convention leaves it out).
    transformers = pytest.importorskip("transformers")
    preset = PRESETS[name]
    config = dict(preset.config)
    model_type = config.pop("model_type")
    if model_type in _NOT_IN_TRANSFORMERS:
        pytest.skip(f"{model_type}: {_NOT_IN_TRANSFORMERS[model_type]}")
    if model_type == "llama4":  # the text model of the multimodal checkpoint
        config, model_type = dict(config["text_config"]), "llama4_text"
    if model_type == "dbrx":  # DbrxAttentionConfig needs its RoPE base to build
        config["attn_config"] = {**config["attn_config"], "rope_theta": 500000.0}
    if model_type == "kimi_k2":  # Kimi K2 ships DeepSeek-V3's modeling code
        model_type = "deepseek_v3"
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    auto = transformers.AutoModelForCausalLM
    if model_type == "switch_transformers":  # an encoder-decoder
        auto = transformers.AutoModelForSeq2SeqLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    expected = n_params(model)
    spec = preset.spec()
    if spec.moe is not None and spec.moe.score_bias:
        # transformers keeps DeepSeek-V3's e_score_correction_bias as a buffer, not a parameter;
        # the checkpoint stores it (E per MoE block), and so does this count.
        expected += spec.n_moe_layers * spec.moe.n_experts
    assert preset.counts().total(preset.convention) == expected


# ----------------------------------------------------------------------------------------------
# Reading configs
# ----------------------------------------------------------------------------------------------


def test_unknown_model_type_is_refused_with_the_supported_list() -> None:
    with pytest.raises(ConfigError, match=r"model_type='llama'.*mixtral"):
        from_hf_config({"model_type": "llama", "hidden_size": 8})


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("Mixtral-8x7B", "num_local_experts"),
        ("Mixtral-8x7B", "intermediate_size"),
        ("Qwen1.5-MoE-A2.7B", "shared_expert_intermediate_size"),
        ("Qwen3-30B-A3B", "moe_intermediate_size"),
        ("DeepSeek-V3", "kv_lora_rank"),
        ("DeepSeek-V3", "n_routed_experts"),
        ("OLMoE-1B-7B", "num_experts"),
        ("DBRX", "ffn_config"),
        ("gpt-oss-20b", "num_local_experts"),
        ("Phi-3.5-MoE", "vocab_size"),
        ("GLM-4.5", "moe_intermediate_size"),
        ("JetMoE-8B", "kv_channels"),
        ("Jamba-v0.1", "num_experts"),
        ("Switch-Base-128", "d_kv"),
        ("Snowflake-Arctic", "num_local_experts"),
    ],
)
def test_missing_field_is_named(name: str, field: str) -> None:
    config = {k: v for k, v in PRESETS[name].config.items() if k != field}
    with pytest.raises(ConfigError, match=field):
        from_hf_config(config)


def test_missing_field_inside_a_nested_config_is_named() -> None:
    llama = PRESETS["Llama-4-Scout"].config
    text = {k: v for k, v in llama["text_config"].items() if k != "intermediate_size_mlp"}
    # Scout is MoE in every block, so the dense width is not needed; Maverick's is.
    from_hf_config({**llama, "text_config": text})
    maverick = PRESETS["Llama-4-Maverick"].config
    text = {k: v for k, v in maverick["text_config"].items() if k != "intermediate_size_mlp"}
    with pytest.raises(ConfigError, match="intermediate_size_mlp"):
        from_hf_config({**maverick, "text_config": text})


def test_layer_patterns_follow_the_configs() -> None:
    # DeepSeek-V3: first_k_dense_replace=3 of 61 blocks dense. Llama 4 Maverick: every 2nd block
    # MoE (interleave_moe_layer_step=2). gpt-oss: alternating 128-token sliding windows.
    v3 = PRESETS["DeepSeek-V3"].spec()
    assert v3.moe_layers[:4] == (False, False, False, True) and v3.n_moe_layers == 58
    maverick = PRESETS["Llama-4-Maverick"].spec()
    assert maverick.n_moe_layers == 24 and maverick.moe_layers[:2] == (False, True)
    oss = PRESETS["gpt-oss-20b"].spec()
    assert [oss.window(i) for i in range(3)] == [128, None, 128]


def test_both_spellings_of_the_expert_count() -> None:
    # transformers 5 re-saves a Qwen3-MoE config with num_local_experts; JetMoE's own config.json
    # says moe_num_experts / moe_top_k / ffn_hidden_size where transformers says
    # num_local_experts / num_experts_per_tok / intermediate_size; GLM's early configs said
    # num_experts. Each spelling must give the same model.
    qwen = dict(PRESETS["Qwen3-30B-A3B"].config)
    resaved = {k: v for k, v in qwen.items() if k != "num_experts"}
    resaved["num_local_experts"] = qwen["num_experts"]
    assert from_hf_config(resaved) == from_hf_config(qwen)
    jet = dict(PRESETS["JetMoE-8B"].config)
    native = {k: v for k, v in jet.items() if k not in ("num_local_experts", "num_experts_per_tok")}
    native |= {"moe_num_experts": 8, "moe_top_k": 2}
    native["ffn_hidden_size"] = native.pop("intermediate_size")
    assert from_hf_config(native) == from_hf_config(jet)
    glm = dict(PRESETS["GLM-4.5"].config)
    glm["num_experts"] = glm.pop("n_routed_experts")
    assert from_hf_config(glm, name="GLM-4.5") == PRESETS["GLM-4.5"].spec()
    with pytest.raises(ConfigError, match="none of 'num_experts', 'num_local_experts'"):
        from_hf_config({k: v for k, v in qwen.items() if k != "num_experts"})


def test_hybrid_and_encoder_decoder_layouts() -> None:
    # Jamba: attention where i % 8 == 4 (4 of 32 blocks), MoE where i % 2 == 1 (16 of 32).
    jamba = PRESETS["Jamba-v0.1"].spec()
    assert [i for i in range(32) if jamba.has_attention(i)] == [4, 12, 20, 28]
    assert jamba.n_mamba_layers == 28 and jamba.n_moe_layers == 16
    # Only attention blocks cache keys and values: 4 blocks x 2 x 8 heads x 128 x 2 bytes.
    assert budget.kv_cache_bytes(jamba, 1) == 4 * 2 * 8 * 128 * 2
    # ... and only they have a score term: 2 * 32 heads * (128 + 128) FLOPs per key per block.
    assert budget.forward_flops_per_token(jamba, 1000).attention_scores == 4 * 2 * 32 * 256 * 1000
    # One Mamba mixer by hand (Gu & Dao 2023; d_inner = 2D = 8192, dt_rank 256, d_state 16,
    # d_conv 4): in_proj 4096*16384, conv 8192*4 + 8192, x_proj 8192*(256 + 32), dt_proj
    # 256*8192 + 8192, A_log 8192*16, D 8192, out_proj 8192*4096, norms 256 + 16 + 16.
    by_hand = (
        4096 * 16384 + 8192 * 4 + 8192 + 8192 * 288 + 256 * 8192 + 8192
        + 8192 * 16 + 8192 + 8192 * 4096 + 288
    )  # fmt: skip
    assert jamba_counts_mamba() == 28 * by_hand
    # Switch-Base: sparse blocks 1, 3, ..., 11 of each 12-block stack; 12 cross-attentions.
    switch = PRESETS["Switch-Base-128"].spec()
    assert switch.moe_layers == (False, True) * 12 and switch.cross_attention_layers == 12
    # JetMoE: a token uses 2 of the 8 attention experts (q and o of 2048 each) plus the shared
    # k/v projection (2048 -> 4096), the attention router (8 x 2048) and the output bias.
    jet = PRESETS["JetMoE-8B"].counts()
    per_block = 2 * (2 * 2048 * 2048) + 2048 * 4096 + 8 * 2048 + 2048
    assert jet.attention_active == 24 * per_block < jet.attention


def jamba_counts_mamba() -> int:
    return PRESETS["Jamba-v0.1"].counts().mamba


def test_arctic_dense_part_and_expert_size_match_the_blog() -> None:
    # Snowflake: "a 10B dense transformer model with a residual 128x3.66B MoE MLP". The dense
    # part is everything but the routed experts and routers; one expert summed over the 35
    # blocks is 3 x 7168 x 4864 x 35 = 3.66B. Both figures have two or three digits: 1%.
    preset = PRESETS["Snowflake-Arctic"]
    counts = preset.counts()
    dense = counts.total() - counts.routed_experts - counts.router
    assert abs(dense / preset.extra["dense_part"] - 1) < 0.01
    one_expert = counts.routed_experts / 128
    assert one_expert == 3 * 7168 * 4864 * 35
    assert abs(one_expert / preset.extra["expert_over_all_blocks"] - 1) < 0.01


def test_grok_share_is_the_experts_not_the_weights() -> None:
    # xAI: "25% of the weights active". 2 of 8 experts is exactly 25%; the attention and the
    # embedding every token also uses push the true share of all weights above it.
    preset = PRESETS["Grok-1"]
    counts = preset.counts()
    assert counts.routed_active_fraction == 0.25 and preset.active_agrees(counts)
    share = counts.active(preset.convention) / counts.total(preset.convention)
    assert 0.26 < share < 0.27


def test_glm_mtp_layer_is_outside_the_published_total() -> None:
    # GLM-4.5-Air's checkpoint holds one MTP layer (num_nextn_predict_layers=1); counted, the
    # total would miss the card's 106B by 3%.
    preset = PRESETS["GLM-4.5-Air"]
    counts = preset.counts()
    with_mtp = dataclasses.replace(preset.convention, total_includes_mtp=True)
    assert counts.mtp > 0 and not preset.total.agrees(counts.total(with_mtp))
    assert preset.total_agrees(counts)


def test_rounding_and_truncation_checks() -> None:
    rounded = budget.PublishedFigure(32e9, "a card", rounded_to=1e9)
    assert rounded.agrees(31.6e9) and rounded.agrees(32.4e9) and not rounded.agrees(32.6e9)
    truncated = budget.PublishedFigure(2.2e9, "a card", truncated_to=0.1e9)
    assert truncated.agrees(2.27e9) and not truncated.agrees(2.31e9)


# ----------------------------------------------------------------------------------------------
# The course's own models: counts equal the instantiated modules
# ----------------------------------------------------------------------------------------------

_TINY_MOE = MoEConfig(d_model=32, d_expert=48, n_experts=4, top_k=2)
_MOE_VARIANTS = {
    "plain": _TINY_MOE,
    "gelu": dataclasses.replace(_TINY_MOE, activation="gelu"),
    "shared+gate": dataclasses.replace(
        _TINY_MOE, n_shared_experts=2, d_shared=24, shared_expert_gate=True
    ),
    "segmented": dataclasses.replace(_TINY_MOE, expert_segments=4, top_k=1),
    "noisy": dataclasses.replace(_TINY_MOE, router="noisy_topk"),
    "sigmoid": dataclasses.replace(_TINY_MOE, router="sigmoid_bias", n_shared_experts=1),
}


@pytest.mark.parametrize("variant", sorted(_MOE_VARIANTS))
def test_moe_block_count_equals_moe_layer_parameters(variant: str) -> None:
    cfg = _MOE_VARIANTS[variant]
    spec = from_model_config(ModelConfig(d_model=32, n_heads=4, moe=cfg))
    assert budget.moe_block_params(spec) == n_params(MoELayer(cfg))


def _model_configs() -> dict[str, ModelConfig]:
    model = pytest.importorskip("moe_lab.model")
    configs = dict(model.PRESETS)
    base = model.PRESETS["tiny-moe"]
    configs["layernorm+gelu"] = dataclasses.replace(
        base,
        norm="layernorm",
        activation="gelu",
        moe=dataclasses.replace(base.moe, activation="gelu"),
    )
    configs["moe_every_2+shared"] = dataclasses.replace(
        base, moe_every=2, moe=_MOE_VARIANTS["shared+gate"], d_model=32, n_heads=4
    )
    return configs


def test_course_models_count_exactly() -> None:
    model = pytest.importorskip("moe_lab.model")
    for name, config in _model_configs().items():
        spec = from_model_config(config)
        lm = model.TinyLM(config)
        counts = count_parameters(spec)
        assert counts.total() == n_params(lm), name
        # The model's own count, taken module by module: same total, same active.
        assert counts.active(ALL_IN) == lm.parameter_counts().active, name


def test_tiny_moe_hand_count_from_the_config_docstring() -> None:
    # ModelConfig's layout built from torch modules, without moe_lab.model: V=256, T_max=64,
    # D=64, 4 blocks, each RMSNorm + qkv (D, 3D) + proj (D, D) + RMSNorm + MoELayer, final norm.
    cfg = ModelConfig(
        d_model=64,
        n_heads=4,
        max_seq_len=64,
        moe=MoEConfig(d_model=64, d_expert=128, n_experts=8, top_k=2),
    )
    D = cfg.d_model
    blocks = [
        nn.ModuleList(
            [
                nn.RMSNorm(D),
                nn.Linear(D, 3 * D, bias=False),
                nn.Linear(D, D, bias=False),
                nn.RMSNorm(D),
                MoELayer(cfg.moe),
            ]
        )
        for _ in range(cfg.n_layers)
    ]
    reference = nn.ModuleList(
        [nn.Embedding(cfg.vocab_size, D), nn.Embedding(cfg.max_seq_len, D), *blocks, nn.RMSNorm(D)]
    )
    # By hand: embeddings 256*64 + 64*64 = 20,480; per block 2*64 norms + 64*192 + 64*64 qkv/proj
    # = 16,512, plus router 8*64 = 512 and experts 8 * 3 * 64 * 128 = 196,608; 4 blocks =
    # 4 * 213,632 = 854,528; final norm 64. Total 875,072.
    assert n_params(reference) == 875_072
    assert count_parameters(from_model_config(cfg)).total() == 875_072


def test_fine_grained_segmentation_keeps_total_and_active() -> None:
    # DeepSeekMoE's fine-grained split: m times more experts, 1/m as wide, m times more chosen.
    coarse = ModelConfig(d_model=32, n_heads=4, moe=_TINY_MOE)
    fine = dataclasses.replace(coarse, moe=dataclasses.replace(_TINY_MOE, expert_segments=4))
    a, b = count_parameters(from_model_config(coarse)), count_parameters(from_model_config(fine))
    assert a.routed_experts == b.routed_experts
    assert a.active() - a.router == b.active() - b.router  # only the router grows, E*D per block
    assert b.router == 4 * a.router


def test_tied_head_counts_once_under_every_convention() -> None:
    spec = from_model_config(ModelConfig())
    c = count_parameters(spec)
    assert c.lm_head == 0
    # Without the embedding but with the head, the tied matrix still counts (as the head).
    assert c.active(NO_EMBEDDING) == c.active(ALL_IN) - c.position_embedding
    assert c.active(NON_EMBEDDING) == c.active(ALL_IN) - c.position_embedding - c.embedding


# ----------------------------------------------------------------------------------------------
# FLOPs: against torch's FlopCounterMode
# ----------------------------------------------------------------------------------------------


def _measured_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# "sorted" runs C++ on the CPU: FlopCounterMode counts it through the FLOP formulas that
# moe_lab.dispatch.sorted_cpp registers; the other two issue every product as an aten operator.
@pytest.mark.parametrize("dispatch", ["naive", "sorted_python", "sorted"])
@pytest.mark.parametrize("variant", ["plain", "gelu", "shared+gate"])
def test_moe_layer_forward_flops(dispatch: str, variant: str) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(_MOE_VARIANTS[variant], dispatch=dispatch)
    layer = MoELayer(cfg)
    x = torch.randn(3, 10, cfg.d_model)
    spec = from_model_config(ModelConfig(d_model=32, n_heads=4, n_layers=1, moe=cfg))
    f = budget.forward_flops_per_token(spec, context_len=1)
    per_token = f.routed_experts + f.shared_experts + f.router
    assert _measured_flops(lambda: layer(x)) == 30 * per_token


def test_dense_ffn_training_flops_are_three_times_forward() -> None:
    ffn = DenseFFN(16, 40)
    x = torch.randn(7, 16, requires_grad=True)
    forward = _measured_flops(lambda: ffn(x))
    training = _measured_flops(lambda: ffn(x).sum().backward())
    assert forward == 7 * 2 * 3 * 16 * 40  # 2 FLOPs per weight per token, 3 matrices
    assert training == 3 * forward


def test_tiny_lm_forward_flops() -> None:
    model = pytest.importorskip("moe_lab.model")
    torch.manual_seed(0)
    config = model.PRESETS["tiny-moe"]
    lm = model.TinyLM(config).eval()
    B, T = 2, 16
    idx = torch.randint(0, config.vocab_size, (B, T))
    measured = _measured_flops(lambda: lm(idx))
    # FlopCounterMode does not see the fused CPU attention kernel behind
    # scaled_dot_product_attention, so it measures everything but the score term, which the
    # next test checks against explicit matmuls.
    f = budget.forward_flops_per_token(from_model_config(config), context_len=T)
    assert measured == B * T * (f.total - f.attention_scores)


def test_attention_score_flops_per_key() -> None:
    # Unmasked attention written as two matmuls: (B, H, T, hd) @ (B, H, hd, T), then @ (B, H, T,
    # hd). Every query meets all T keys, so each token is charged context_len = T.
    config = ModelConfig(d_model=32, n_heads=4, n_layers=1)
    B, H, T, hd = 2, 4, 12, 8
    q, k, v = (torch.randn(B, H, T, hd) for _ in range(3))
    measured = _measured_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    f = budget.forward_flops_per_token(from_model_config(config), context_len=T)
    assert measured == B * T * f.attention_scores


def test_attention_scores_grow_with_context_and_respect_windows() -> None:
    oss = PRESETS["gpt-oss-20b"].spec()
    short = budget.forward_flops_per_token(oss, 128)
    long = budget.forward_flops_per_token(oss, 128 * 1024)
    # Per key per layer: 2*H*(qk + v) = 2*64*128 = 16,384. At 128 keys all 24 layers attend 128;
    # at 131,072 only the 12 full-attention layers attend more.
    assert short.attention_scores == 16_384 * 24 * 128
    assert long.attention_scores == 16_384 * (12 * 128 + 12 * 128 * 1024)
    assert long.routed_experts == short.routed_experts


def test_training_flops_use_the_causal_mean_context() -> None:
    spec = PRESETS["Mixtral-8x7B"].spec()
    T = 4096
    # Token p of a causal sequence attends p keys: the mean over p = 1..T is (T + 1) / 2.
    expected = 3 * budget.forward_flops_per_token(spec, (T + 1) / 2).total
    assert budget.training_flops_per_token(spec, T) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def test_weight_bytes_equal_the_module_storage() -> None:
    model = pytest.importorskip("moe_lab.model")
    config = model.PRESETS["tiny-moe"]
    lm = model.TinyLM(config)
    spec = from_model_config(config)
    fp32 = sum(p.numel() * p.element_size() for p in lm.parameters())
    assert budget.weight_bytes(spec, "fp32") == fp32
    lm = lm.to(torch.bfloat16)
    assert budget.weight_bytes(spec, "bf16") == sum(
        p.numel() * p.element_size() for p in lm.parameters()
    )


def test_mixed_precision_adam_is_zero_16_bytes_per_parameter() -> None:
    # ZeRO (Rajbhandari et al. 2020), section 3.1: 2 + 2 + (4 + 4 + 4) = 16 bytes per parameter.
    spec = PRESETS["Mixtral-8x7B"].spec()
    state = budget.training_state_bytes(spec)
    assert state["total"] == 16 * count_parameters(spec).total()


def test_kv_cache_sizes() -> None:
    # Mixtral: 32 blocks x (K and V) x 8 KV heads x 128 wide x 2 bytes = 131,072 bytes per token.
    assert budget.kv_cache_bytes(PRESETS["Mixtral-8x7B"].spec(), 1) == 131_072
    # MLA caches (d_c + d_h^R) per token per layer = 512 + 64 = 576 = 4.5 d_h with d_h = 128
    # (DeepSeek-V2, Table 1: "(d_c + d_h^R) l ~ 9/2 d_h l").
    v3 = PRESETS["DeepSeek-V3"].spec()
    assert v3.attention.kv_cache_per_token == 576 == 4.5 * 128
    assert budget.kv_cache_bytes(v3, 1000, batch=2) == 2 * 1000 * 61 * 576 * 2
    # gpt-oss-20b: the 12 sliding-window layers keep 128 tokens at most;
    # 2 * 8 KV heads * 64 = 1,024 elements per token per layer.
    oss = PRESETS["gpt-oss-20b"].spec()
    assert budget.kv_cache_bytes(oss, 10_000) == (12 * 10_000 + 12 * 128) * 1_024 * 2


def test_activation_estimate_scales_with_tokens_and_the_score_term() -> None:
    spec = from_model_config(ModelConfig(moe=_MOE_VARIANTS["plain"], d_model=32, n_heads=4))
    one = budget.activation_bytes(spec, batch=1, seq_len=64)
    assert budget.activation_bytes(spec, batch=3, seq_len=64) == 3 * one
    # A non-fused attention also keeps scores and probabilities, H * T each, per token and block.
    eager = budget.activation_bytes(spec, batch=1, seq_len=64, flash_attention=False)
    assert eager - one == 64 * spec.n_layers * 2 * 4 * 64 * 2


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype='fp6'"):
        budget.dtype_bytes("fp6")


# ----------------------------------------------------------------------------------------------
# Decode economics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("E", "K", "B"), [(8, 2, 1), (8, 2, 4), (64, 6, 16), (256, 8, 32)])
def test_experts_touched_matches_simulated_uniform_routing(E: int, K: int, B: int) -> None:
    gen = torch.Generator().manual_seed(0)
    trials = 4000
    # A uniform K-subset per token: the top-K of E iid uniforms.
    choices = torch.rand(trials, B, E, generator=gen).topk(K, dim=-1).indices  # (trials, B, K)
    touched = torch.zeros(trials, E).scatter_(1, choices.reshape(trials, -1), 1.0).sum(1)
    expected = budget.expected_experts_touched(E, K, B)
    stderr = touched.std().item() / math.sqrt(trials)
    assert abs(touched.mean().item() - expected) < 4 * stderr + 1e-9


def test_experts_touched_limits() -> None:
    assert budget.expected_experts_touched(8, 2, 1) == 2.0  # one token: exactly K
    assert budget.expected_experts_touched(8, 2, 0) == 0.0
    assert budget.expected_experts_touched(256, 8, 10_000) == pytest.approx(256)
    with pytest.raises(ValueError):
        budget.expected_experts_touched(8, 9, 1)


def test_decode_bytes_go_from_active_to_total_with_the_batch() -> None:
    spec = PRESETS["Mixtral-8x7B"].spec()
    c = count_parameters(spec)
    D = spec.d_model
    one = budget.decode_step_bytes(spec, batch=1)
    # One token reads K of E experts: the active count without the table, plus its one row.
    assert one["dense_weights"] + one["expert_weights"] == pytest.approx(
        2 * (c.active(NO_EMBEDDING) + D)
    )
    many = budget.decode_step_bytes(spec, batch=4096)
    assert many["expert_weights"] == pytest.approx(2 * c.routed_experts)
    assert budget.decode_step_bytes(spec, 1, context_len=100)["kv_cache"] == 100 * 131_072


def test_all_to_all_bytes_match_a_simulated_placement() -> None:
    spec = PRESETS["DeepSeek-V3"].spec()
    N, W = 4096, 8
    got = budget.all_to_all_bytes(spec, N, W)
    # By hand: 4096 tokens x 8 copies x 7168 values x 2 bytes x 7/8 remote, each way.
    assert got["dispatch"] == got["combine"] == 4096 * 8 * 7168 * 2 * 7 / 8
    assert budget.all_to_all_bytes(spec, N, 1)["total"] == 0
    # Simulate: tokens split evenly over ranks, experts 0..255 in 8 contiguous groups of 32.
    gen = torch.Generator().manual_seed(0)
    experts = torch.rand(N, 256, generator=gen).topk(8, dim=-1).indices  # (N, K)
    token_rank = torch.arange(N) // (N // W)  # (N,)
    remote = (experts // 32 != token_rank[:, None]).sum().item()
    simulated = 2 * remote * 7168 * 2
    assert simulated == pytest.approx(got["total"], rel=0.02)


def _one_block_spec(d_model: int, n_experts: int, top_k: int):
    moe = MoEConfig(d_model=d_model, d_expert=8, n_experts=n_experts, top_k=top_k)
    return from_model_config(ModelConfig(d_model=d_model, n_heads=1, moe=moe))


def test_all_to_all_bytes_exact_on_a_routing_by_hand() -> None:
    # W = 4 ranks, one expert and one token each, K = 2, D = 4, fp32 (16 bytes a row).
    # token 0 (rank 0) -> experts 0, 1: one remote copy (to rank 1)
    # token 1 (rank 1) -> experts 0, 2: two (ranks 0, 2)
    # token 2 (rank 2) -> experts 0, 3: two (ranks 0, 3)
    # token 3 (rank 3) -> experts 0, 1: two (ranks 0, 1)
    # sent: 1, 2, 2, 2 (7 copies); received: rank 0 three, rank 1 two, ranks 2 and 3 one each.
    # A rank sends its copies in the dispatch and the outputs of what it received in the combine.
    spec = _one_block_spec(d_model=4, n_experts=4, top_k=2)
    indices = [[0, 1], [0, 2], [0, 3], [0, 1]]
    got = budget.all_to_all_bytes(spec, 4, 4, "fp32", expert_indices=indices)
    assert got["dispatch"] == got["combine"] == 7 * 16
    assert got["by_rank"] == (4 * 16, 4 * 16, 3 * 16, 3 * 16)
    assert got["total"] == sum(got["by_rank"]) == 14 * 16
    assert got["counts"] == 3 * 4 * 8  # (W - 1) * E int64 counts
    trained = budget.all_to_all_bytes(spec, 4, 4, "fp32", expert_indices=indices, backward=True)
    assert trained["backward"] == 14 * 16 and trained["total"] == 28 * 16  # reverse exchanges
    # every expert on the token's own rank: nothing leaves a process
    local = budget.all_to_all_bytes(
        spec, 4, 4, "fp32", expert_indices=[[0, 0], [1, 1], [2, 2], [3, 3]]
    )
    assert local["total"] == 0


def test_all_to_all_bytes_of_capacity_buffers_by_hand() -> None:
    # N = 8 tokens over W = 2 ranks, E = 4, K = 2, cf = 1: C = ceil(1 * 4 * 2 / 4) = 2 rows per
    # expert and rank. Each rank sends the other the buffers of its 2 experts, full or empty:
    # 2 * 2 = 4 rows each way, 8 rows per direction over both ranks, whatever the routing.
    spec = _one_block_spec(d_model=4, n_experts=4, top_k=2)
    got = budget.all_to_all_bytes(spec, 8, 2, "fp32", capacity_factor=1.0)
    assert got["dispatch"] == 8 * 16 and got["by_rank"] == (8 * 16, 8 * 16)
    assert got["counts"] == 0  # fixed sizes: no counts to exchange
    # cf = 1.5: C = ceil(1.5 * 4 * 2 / 4) = 3 = cf N K / (W E) exactly, so the buffers move
    # cf times the dropless expectation (here 6 rows each way per rank)
    wider = budget.all_to_all_bytes(spec, 8, 2, "fp32", capacity_factor=1.5)
    assert wider["dispatch"] == 12 * 16
    assert wider["total"] == 1.5 * budget.all_to_all_bytes(spec, 8, 2, "fp32")["total"]


def test_exact_count_averages_to_the_uniform_expectation() -> None:
    spec = PRESETS["DeepSeek-V3"].spec()
    N, W = 4096, 8
    gen = torch.Generator().manual_seed(1)
    experts = torch.rand(N, 256, generator=gen).topk(8, dim=-1).indices  # uniform, distinct
    exact = budget.all_to_all_bytes(spec, N, W, expert_indices=experts)
    expected = budget.all_to_all_bytes(spec, N, W)
    assert exact["total"] == pytest.approx(expected["total"], rel=0.02)
    assert expected["by_rank"] == (expected["per_rank"],) * W


def test_all_to_all_needs_moe() -> None:
    with pytest.raises(ValueError, match="no MoE"):
        budget.all_to_all_bytes(from_model_config(ModelConfig()), 8, 2)
