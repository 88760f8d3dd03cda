"""More published MoE models, added after ``presets``' first fifteen, with their cards' counts.

DeepSeekMoE 16B, Kimi K2, GLM-4.5 and GLM-4.5-Air, IBM Granite 3.0 MoE 1B and 3B, JetMoE-8B,
Jamba, Switch Transformers (Switch-Base-128), Snowflake Arctic and Grok-1. As in ``presets``, each
holds its config.json's architecture fields, the counts its authors published with their sources,
and the counting convention that reproduces them (``published`` says what each lab counts, and
``tests/test_budget.py`` asserts every preset). Totals given to three significant digits are
checked within 1%; figures given as a whole number of their unit ("32B", "400M") are checked to
round to it (``rounded_to``); two JetMoE figures are truncated, as said there.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from moe_lab.budget.published import (
    AI21,
    DEEPSEEK_MOE,
    GOOGLE,
    IBM,
    JETMOE,
    MOONSHOT,
    SNOWFLAKE,
    XAI,
    ZHIPU,
    Preset,
    PublishedFigure,
    hf_config_url,
)

B = 1e9


MORE_PRESETS: list[Preset] = []

MORE_PRESETS.append(
    Preset(
        name="DeepSeekMoE-16B",
        lab="DeepSeek",
        config={
            "model_type": "deepseek",
            "hidden_size": 2048,
            "intermediate_size": 10944,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "moe_intermediate_size": 1408,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "vocab_size": 102400,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("deepseek-ai/deepseek-moe-16b-base")
        + "; the same values are DeepseekConfig's defaults in its modeling code",
        total=PublishedFigure(
            16.4 * B,
            "https://github.com/deepseek-ai/DeepSeek-MoE README ('a Mixture-of-Experts (MoE)"
            " language model with 16.4B parameters')",
        ),
        active=PublishedFigure(
            2.8 * B,
            "arXiv:2401.06066 (DeepSeekMoE), section 5, comparison with DeepSeek 7B and LLaMA2 7B"
            " ('# Activated Params 2.8B')",
            rounded_to=0.1 * B,
        ),
        convention=DEEPSEEK_MOE,
        notes="The 2.8B fits only with the input embedding counted (2.83B; without it 2.62B):"
        " DeepSeek's later cards (V2-Lite, V3) leave the embedding out. Conventions change even"
        " within one lab.",
    )
)

MORE_PRESETS.append(
    Preset(
        name="Kimi-K2",
        lab="Moonshot AI",
        config={
            "model_type": "kimi_k2",
            "hidden_size": 7168,
            "intermediate_size": 18432,
            "num_hidden_layers": 61,
            "num_attention_heads": 64,
            "q_lora_rank": 1536,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "n_routed_experts": 384,
            "n_shared_experts": 1,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 2048,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "topk_method": "noaux_tc",
            "num_nextn_predict_layers": 0,
            "vocab_size": 163840,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("moonshotai/Kimi-K2-Instruct")
        + "; the model card's table gives the same sizes (61 layers, 1 dense, 384 experts, 8"
        " selected, 1 shared, 64 heads, MLA)",
        total=PublishedFigure(
            1000 * B,
            "https://huggingface.co/moonshotai/Kimi-K2-Instruct ('32 billion activated parameters"
            " and 1 trillion total parameters'; table: 'Total Parameters 1T')",
            rounded_to=100 * B,
        ),
        active=PublishedFigure(
            32 * B,
            "https://huggingface.co/moonshotai/Kimi-K2-Instruct (table: 'Activated Parameters"
            " 32B')",
            rounded_to=B,
        ),
        convention=MOONSHOT,
        notes="DeepSeek-V3's architecture with 384 experts and 64 heads; the 32B fits DeepSeek's"
        " convention (head, no input embedding: 31.7B; with the embedding 32.9B rounds to 33B)."
        " The card's '1T' is one significant digit: the count is 1.026T.",
    )
)

_GLM_REPORT = "arXiv:2508.06471 (GLM-4.5 technical report), Table 1"
_GLM_COMMON = {
    "model_type": "glm4_moe",
    "num_attention_heads": 96,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "attention_bias": True,
    "partial_rotary_factor": 0.5,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "num_nextn_predict_layers": 1,
    "vocab_size": 151552,
    "tie_word_embeddings": False,
}
for _name, _fields, _total, _active, _extra_source in (
    (
        "GLM-4.5",
        {
            "hidden_size": 5120,
            "intermediate_size": 12288,
            "num_hidden_layers": 92,
            "use_qk_norm": True,
            "n_routed_experts": 160,
            "moe_intermediate_size": 1536,
            "first_k_dense_replace": 3,
        },
        355,
        32,
        "; the same architecture fields in zai-org/GLM-4.6 and GLM-4.7's config.json and in"
        " zai-org's slime training script glm4.5-355B-A32B.sh",
    ),
    (
        "GLM-4.5-Air",
        {
            "hidden_size": 4096,
            "intermediate_size": 10944,
            "num_hidden_layers": 46,
            "use_qk_norm": False,
            "n_routed_experts": 128,
            "moe_intermediate_size": 1408,
            "first_k_dense_replace": 1,
        },
        106,
        12,
        "; the same fields in PrimeIntellect/INTELLECT-3-Base's config.json (trained from"
        " GLM-4.5-Air-Base) and zai-org's slime script glm4.5-106B-A12B.sh",
    ),
):
    MORE_PRESETS.append(
        Preset(
            name=_name,
            lab="Zhipu AI",
            config={**_GLM_COMMON, **_fields},
            config_source=hf_config_url(f"zai-org/{_name}") + _extra_source,
            total=PublishedFigure(
                _total * B,
                f"https://huggingface.co/zai-org/{_name} ('GLM-4.5 has 355 billion total"
                " parameters with 32 billion active parameters, while GLM-4.5-Air [has] 106"
                f" billion total parameters and 12 billion active parameters'); {_GLM_REPORT}",
            ),
            active=PublishedFigure(
                _active * B, f"https://huggingface.co/zai-org/{_name}; {_GLM_REPORT}", rounded_to=B
            ),
            convention=ZHIPU,
            notes="The active figures fit only without the embedding and the LM head (GLM-4.5:"
            " 32.1B; with the head 32.9B rounds to 33B). The totals leave out the one MTP layer"
            " the checkpoint also holds (with it GLM-4.5-Air would be 109.2B, 3% over 106B).",
        )
    )

_GRANITE_CARD = (
    "https://huggingface.co/ibm-granite/{0} (model architecture table: '# Parameters 1.3B |"
    " 3.3B', '# Active Parameters 400M | 800M' for the 1B and 3B MoE)"
)
for _name, _repo, _width, _layers, _heads, _experts, _total, _active in (
    ("Granite-3.0-1B-A400M", "granite-3.0-1b-a400m-instruct", 1024, 24, 16, 32, 1.3, 0.4),
    ("Granite-3.0-3B-A800M", "granite-3.0-3b-a800m-instruct", 1536, 32, 24, 40, 3.3, 0.8),
):
    MORE_PRESETS.append(
        Preset(
            name=_name,
            lab="IBM",
            config={
                "model_type": "granitemoe",
                "hidden_size": _width,
                "intermediate_size": 512,
                "num_hidden_layers": _layers,
                "num_attention_heads": _heads,
                "num_key_value_heads": 8,
                "num_local_experts": _experts,
                "num_experts_per_tok": 8,
                "vocab_size": 49155,
                "tie_word_embeddings": True,
            },
            config_source=hf_config_url(f"ibm-granite/{_repo}"),
            total=PublishedFigure(_total * B, _GRANITE_CARD.format(_repo), rounded_to=0.1 * B),
            active=PublishedFigure(_active * B, _GRANITE_CARD.format(_repo), rounded_to=0.1 * B),
            convention=IBM,
            notes="Tied embeddings: the one (V, D) matrix is the head too. The 800M of the 3B"
            " model fits only without it (0.81B; with it 0.88B rounds to 900M).",
        )
    )

MORE_PRESETS.append(
    Preset(
        name="JetMoE-8B",
        lab="JetMoE",
        config={
            "model_type": "jetmoe",
            "hidden_size": 2048,
            "num_hidden_layers": 24,
            "num_key_value_heads": 16,
            "kv_channels": 128,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 5632,
            "vocab_size": 32000,
            "tie_word_embeddings": True,
        },
        config_source=hf_config_url("jetmoe/jetmoe-8b")
        + " (spelled there moe_num_experts, moe_top_k, ffn_hidden_size; transformers'"
        " JetMoeConfig names used here)",
        total=PublishedFigure(
            8 * B,
            "https://huggingface.co/jetmoe/jetmoe-8b ('JetMoE-8B has 8B parameters in total, but"
            " only 2B are activated for each input token')",
            truncated_to=B,
        ),
        active=PublishedFigure(
            2.2 * B,
            "https://huggingface.co/jetmoe/jetmoe-8b (evaluation table: 'Activate Params 2.2B')",
            truncated_to=0.1 * B,
        ),
        convention=JETMOE,
        notes="Both figures are truncated, not rounded: the count is 8.52B total and 2.27B"
        " active without the (tied) embedding; 2.33B with it. A token uses 2 of 8 attention"
        " experts as well as 2 of 8 MLP experts.",
    )
)

MORE_PRESETS.append(
    Preset(
        name="Jamba-v0.1",
        lab="AI21 Labs",
        config={
            "model_type": "jamba",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_experts": 16,
            "num_experts_per_tok": 2,
            "attn_layer_period": 8,
            "attn_layer_offset": 4,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "mamba_d_state": 16,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 256,
            "mamba_conv_bias": True,
            "mamba_proj_bias": False,
            "vocab_size": 65536,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("ai21labs/Jamba-v0.1"),
        total=PublishedFigure(
            52 * B,
            "arXiv:2403.19887 (Jamba), section 3 and Table 1 ('12B active parameters and 52B"
            " total available parameters'); https://huggingface.co/ai21labs/Jamba-v0.1",
            rounded_to=B,
        ),
        active=PublishedFigure(12 * B, "arXiv:2403.19887 (Jamba), Table 1", rounded_to=B),
        convention=AI21,
        notes="4 attention blocks among 32 (one in 8), Mamba in the others; MoE in every other"
        " block. '12B' fits every convention (11.6B to 12.1B).",
    )
)

MORE_PRESETS.append(
    Preset(
        name="Switch-Base-128",
        lab="Google",
        config={
            "model_type": "switch_transformers",
            "d_model": 768,
            "d_ff": 3072,
            "d_kv": 64,
            "num_heads": 12,
            "num_layers": 12,
            "num_decoder_layers": 12,
            "num_experts": 128,
            "encoder_sparse_step": 2,
            "decoder_sparse_step": 2,
            "relative_attention_num_buckets": 32,
            "router_bias": False,
            "vocab_size": 32128,
        },
        config_source=hf_config_url("google/switch-base-128")
        + " (the same fields as switch-base-64 and -256 but num_experts)",
        total=PublishedFigure(
            7 * B,
            "arXiv:2101.03961 (Switch Transformers), Table 9: Switch-Base, 128 experts, '7B'"
            " parameters",
            rounded_to=B,
        ),
        active=PublishedFigure(
            0.22 * B,
            "arXiv:2101.03961, Table 9 and section 3: Switch-Base is FLOP-matched to T5-Base, and"
            " with top-1 routing a token uses T5-Base's parameters plus the routers; T5-Base has"
            " '220 million' (arXiv:1910.10683, section 3.7)",
            rounded_to=0.01 * B,
        ),
        convention=GOOGLE,
        notes="An encoder-decoder: its 24 blocks and the decoder's cross-attention are all"
        " counted. The Switch papers publish no active count; the T5 twin's is the one they"
        " imply. Experts are 2-matrix ReLU MLPs in every other block of each stack.",
    )
)

MORE_PRESETS.append(
    Preset(
        name="Snowflake-Arctic",
        lab="Snowflake",
        config={
            "model_type": "arctic",
            "hidden_size": 7168,
            "intermediate_size": 4864,
            "num_hidden_layers": 35,
            "num_attention_heads": 56,
            "num_key_value_heads": 8,
            "num_local_experts": 128,
            "num_experts_per_tok": 2,
            "moe_layer_frequency": 1,
            "parallel_attn_mlp_res": True,
            "use_residual": True,
            "vocab_size": 32000,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("Snowflake/snowflake-arctic-instruct"),
        total=PublishedFigure(
            480 * B,
            "https://www.snowflake.com/blog/arctic-open-efficient-foundation-language-models-"
            "snowflake/ ('combines a 10B dense transformer model with a residual 128x3.66B MoE"
            " MLP resulting in 480B total and 17B active parameters chosen using a top-2 gating')",
        ),
        active=PublishedFigure(
            17 * B,
            "https://www.snowflake.com/blog/arctic-open-efficient-foundation-language-models-"
            "snowflake/",
            rounded_to=B,
        ),
        convention=SNOWFLAKE,
        extra={"dense_part": 10 * B, "expert_over_all_blocks": 3.66 * B},
        notes="Every block runs a dense SwiGLU MLP of width D beside its MoE: the '10B dense"
        " transformer' is attention, that MLP, embeddings and head; '3.66B' is one expert's"
        " weights summed over the 35 blocks.",
    )
)

MORE_PRESETS.append(
    Preset(
        name="Grok-1",
        lab="xAI",
        config={
            "model_type": "grok-1",
            "hidden_size": 6144,
            "intermediate_size": 32768,
            "num_hidden_layers": 64,
            "num_attention_heads": 48,
            "num_key_value_heads": 8,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 131072,
            "tie_word_embeddings": True,
        },
        config_source=hf_config_url("hpcai-tech/grok-1")
        + " (a PyTorch port of github.com/xai-org/grok-1's JAX checkpoint, whose model.py has"
        " the same sizes and unembeds with the embedding matrix)",
        total=PublishedFigure(
            314 * B,
            "https://x.ai/news/grok-os ('314 billion parameter Mixture-of-Experts model with 25%"
            " of the weights active on a given token'); github.com/xai-org/grok-1 README",
        ),
        active=PublishedFigure(
            0.25,
            "https://x.ai/news/grok-os ('25% of the weights active')",
            share_of_routed_experts=True,
        ),
        convention=XAI,
        notes="xAI gives a share, not a count: 25% is 2 of 8 experts. Counting the attention"
        " and embedding that every token also uses, 83.8B of 315.7B (26.5%) are active.",
    )
)
