"""Published MoE models: their configs, their model cards' parameter counts, and the sources.

Each ``Preset`` holds the architecture fields of the model's Hugging Face ``config.json`` (only the
fields that set parameter shapes; the rest do not change any count), the total and active counts
its authors published, and the counting convention under which the calculator reproduces them.
``tests/test_budget.py`` asserts every preset within 1% (2% where the published figure is given to
one or two significant digits; ``presets_more`` adds models checked to the card's rounding).

Sources are recorded next to each number. "config" sources are the model repositories'
``config.json``; where a value was checked against a copy in another public repository, that copy
is named too. Published figures quote the model card, paper or release post.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from moe_lab.budget.presets_more import MORE_PRESETS
from moe_lab.budget.published import (
    AI2,
    DATABRICKS,
    DEEPSEEK,
    META,
    MICROSOFT,
    MISTRAL,
    OPENAI,
    QWEN,
    Preset,
    PublishedFigure,
    hf_config_url,
)

_MIXTRAL_BASE = {"model_type": "mixtral", "tie_word_embeddings": False}

PRESETS: dict[str, Preset] = {}


def _add(preset: Preset) -> None:
    PRESETS[preset.name] = preset


_add(
    Preset(
        name="Mixtral-8x7B",
        lab="Mistral AI",
        config={
            **_MIXTRAL_BASE,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
        },
        config_source=hf_config_url("mistralai/Mixtral-8x7B-v0.1")
        + "; module shapes also printed in keras-team/keras-hub"
        " keras_hub/src/models/mixtral/README.md",
        total=PublishedFigure(
            46.7e9,
            "https://mistral.ai/news/mixtral-of-experts/ ('46.7B total parameters but only uses"
            " 12.9B parameters per token')",
        ),
        active=PublishedFigure(12.9e9, "https://mistral.ai/news/mixtral-of-experts/"),
        convention=MISTRAL,
        notes="Not 8 x 7B = 56B: attention, embeddings and norms are shared by the 8 experts.",
    )
)
_add(
    Preset(
        name="Mixtral-8x22B",
        lab="Mistral AI",
        config={
            **_MIXTRAL_BASE,
            "hidden_size": 6144,
            "intermediate_size": 16384,
            "num_hidden_layers": 56,
            "num_attention_heads": 48,
            "num_key_value_heads": 8,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
        },
        config_source=hf_config_url("mistral-community/Mixtral-8x22B-v0.1"),
        total=PublishedFigure(
            141e9,
            "https://mistral.ai/news/mixtral-8x22b/ ('39B active parameters out of 141B')",
            rounded=True,
        ),
        active=PublishedFigure(39e9, "https://mistral.ai/news/mixtral-8x22b/", rounded=True),
        convention=MISTRAL,
        notes="v0.1 vocabulary (32000); the v0.3/Instruct tokenizer has 32768 entries.",
    )
)
_add(
    Preset(
        name="Qwen1.5-MoE-A2.7B",
        lab="Qwen (Alibaba)",
        config={
            "model_type": "qwen2_moe",
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "num_experts": 60,
            "num_experts_per_tok": 4,
            "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "vocab_size": 151936,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("Qwen/Qwen1.5-MoE-A2.7B"),
        total=PublishedFigure(
            14.3e9,
            "https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B ('14.3B parameters in total and 2.7B"
            " activated parameters during runtime')",
        ),
        active=PublishedFigure(
            2.7e9, "https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B", rounded=True
        ),
        convention=QWEN,
        notes="Upcycled from Qwen-1.8B; 4 shared experts' worth of width (5632) in one shared FFN.",
    )
)
_QWEN3_CARD = (
    "https://huggingface.co/Qwen/{0} ('Number of Parameters: {1} in total and {2} activated;"
    " Number of Parameters (Non-Embedding): {3}')"
)
_add(
    Preset(
        name="Qwen3-30B-A3B",
        lab="Qwen (Alibaba)",
        config={
            "model_type": "qwen3_moe",
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "attention_bias": False,
            "vocab_size": 151936,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("Qwen/Qwen3-30B-A3B"),
        total=PublishedFigure(
            30.5e9, _QWEN3_CARD.format("Qwen3-30B-A3B", "30.5B", "3.3B", "29.9B")
        ),
        active=PublishedFigure(
            3.3e9, _QWEN3_CARD.format("Qwen3-30B-A3B", "30.5B", "3.3B", "29.9B"), rounded=True
        ),
        convention=QWEN,
        extra={"non_embedding_total": 29.9e9},
    )
)
_add(
    Preset(
        name="Qwen3-235B-A22B",
        lab="Qwen (Alibaba)",
        config={
            "model_type": "qwen3_moe",
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 94,
            "num_attention_heads": 64,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 1536,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "attention_bias": False,
            "vocab_size": 151936,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("Qwen/Qwen3-235B-A22B"),
        total=PublishedFigure(
            235e9, _QWEN3_CARD.format("Qwen3-235B-A22B", "235B", "22B", "234B"), rounded=True
        ),
        active=PublishedFigure(
            22e9, _QWEN3_CARD.format("Qwen3-235B-A22B", "235B", "22B", "234B"), rounded=True
        ),
        convention=QWEN,
        extra={"non_embedding_total": 234e9},
    )
)
_add(
    Preset(
        name="DeepSeek-V2-Lite",
        lab="DeepSeek",
        config={
            "model_type": "deepseek_v2",
            "hidden_size": 2048,
            "intermediate_size": 10944,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "q_lora_rank": None,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "moe_intermediate_size": 1408,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "vocab_size": 102400,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("deepseek-ai/DeepSeek-V2-Lite")
        + "; architecture also stated in the model card, section 5",
        total=PublishedFigure(
            15.7e9,
            "https://huggingface.co/deepseek-ai/DeepSeek-V2-Lite ('comprises 15.7B total"
            " parameters, of which 2.4B are activated for each token')",
        ),
        active=PublishedFigure(
            2.4e9, "https://huggingface.co/deepseek-ai/DeepSeek-V2-Lite", truncated_to=0.1e9
        ),
        convention=DEEPSEEK,
        notes="The card's 2.4B activated is 2.45B truncated to one decimal (rounding would give"
        " 2.5B); the check is 2.4B <= count < 2.5B.",
    )
)
_DEEPSEEK_MLA = {
    "num_attention_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "moe_layer_freq": 1,
    "tie_word_embeddings": False,
}
_add(
    Preset(
        name="DeepSeek-V2",
        lab="DeepSeek",
        config={
            "model_type": "deepseek_v2",
            **_DEEPSEEK_MLA,
            "hidden_size": 5120,
            "intermediate_size": 12288,
            "num_hidden_layers": 60,
            "n_routed_experts": 160,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "moe_intermediate_size": 1536,
            "first_k_dense_replace": 1,
            "vocab_size": 102400,
        },
        config_source=hf_config_url("deepseek-ai/DeepSeek-V2")
        + "; same architecture fields in DeepSeek-V2.5's config.json",
        total=PublishedFigure(
            236e9,
            "https://arxiv.org/abs/2405.04434 ('236B total parameters, of which 21B are"
            " activated for each token')",
            rounded=True,
        ),
        active=PublishedFigure(21e9, "https://arxiv.org/abs/2405.04434", rounded=True),
        convention=DEEPSEEK,
    )
)
_add(
    Preset(
        name="DeepSeek-V3",
        lab="DeepSeek",
        config={
            "model_type": "deepseek_v3",
            **_DEEPSEEK_MLA,
            "hidden_size": 7168,
            "intermediate_size": 18432,
            "num_hidden_layers": 61,
            "n_routed_experts": 256,
            "n_shared_experts": 1,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 2048,
            "first_k_dense_replace": 3,
            "topk_method": "noaux_tc",
            "num_nextn_predict_layers": 1,
            "vocab_size": 129280,
        },
        config_source=hf_config_url("deepseek-ai/DeepSeek-V3")
        + "; identical architecture fields in deepseek-ai/DeepSeek-R1's config.json",
        total=PublishedFigure(
            671e9,
            "https://arxiv.org/abs/2412.19437 ('671B total parameters with 37B activated for each"
            " token'); github.com/deepseek-ai/DeepSeek-V3 README_WEIGHTS.md: main model 671B,"
            " MTP module 11.5B more",
            rounded=True,
        ),
        active=PublishedFigure(37e9, "https://arxiv.org/abs/2412.19437", rounded=True),
        convention=DEEPSEEK,
        notes="README_WEIGHTS.md gives the main model's activated count as '36.6B (including"
        " 0.9B for the output Head)' in one revision and '36.7B (including 0.9B for Embedding"
        " and 0.9B for the output Head)' in another; counting both matrices gives 37.5B, so the"
        " first wording is the one the shapes support. The 671B excludes the MTP module.",
        extra={"mtp_params": 11.5e9, "active_without_embedding": 36.6e9},
    )
)
_add(
    Preset(
        name="OLMoE-1B-7B",
        lab="AI2",
        config={
            "model_type": "olmoe",
            "hidden_size": 2048,
            "intermediate_size": 1024,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "num_experts": 64,
            "num_experts_per_tok": 8,
            "vocab_size": 50304,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("allenai/OLMoE-1B-7B-0924"),
        total=PublishedFigure(
            6.9e9,
            "https://arxiv.org/abs/2409.02060 (OLMoE paper: 6.9B total, 1.3B active per token)",
            rounded=True,
        ),
        active=PublishedFigure(
            1.3e9,
            "https://huggingface.co/allenai/OLMoE-1B-7B-0924 (evaluation table: 'Active Params"
            " 1.3B')",
            rounded=True,
        ),
        convention=AI2,
    )
)
_add(
    Preset(
        name="DBRX",
        lab="Databricks",
        config={
            "model_type": "dbrx",
            "d_model": 6144,
            "n_heads": 48,
            "n_layers": 40,
            "vocab_size": 100352,
            "attn_config": {"kv_n_heads": 8},
            "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4},
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("databricks/dbrx-instruct"),
        total=PublishedFigure(
            132e9,
            "https://www.databricks.com/blog/introducing-dbrx-new-state-art-open-llm ('132B total"
            " parameters of which 36B parameters are active on any input')",
            rounded=True,
        ),
        active=PublishedFigure(
            36e9,
            "https://www.databricks.com/blog/introducing-dbrx-new-state-art-open-llm",
            rounded=True,
        ),
        convention=DATABRICKS,
        notes="Databricks does not say whether 36B counts the embedding; with it the count is"
        " 36.5B, without it 35.8B: both within the rounding of '36B'.",
    )
)
_GPT_OSS = {
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_experts_per_tok": 4,
    "attention_bias": True,
    "sliding_window": 128,
    "vocab_size": 201088,
    "tie_word_embeddings": False,
}
_GPT_OSS_CARD = (
    "https://arxiv.org/abs/2508.10925 (gpt-oss model card, parameter table:"
    " gpt-oss-120b 116.8B total / 5.1B active, gpt-oss-20b 20.9B total / 3.6B active)"
)
for _name, _layers, _experts, _total, _active in (
    ("gpt-oss-20b", 24, 32, 20.9e9, 3.6e9),
    ("gpt-oss-120b", 36, 128, 116.8e9, 5.1e9),
):
    _add(
        Preset(
            name=_name,
            lab="OpenAI",
            config={
                **_GPT_OSS,
                "num_hidden_layers": _layers,
                "num_local_experts": _experts,
                "layer_types": ["sliding_attention", "full_attention"] * (_layers // 2),
            },
            config_source=hf_config_url(f"openai/{_name}"),
            total=PublishedFigure(_total, _GPT_OSS_CARD),
            active=PublishedFigure(_active, _GPT_OSS_CARD),
            convention=OPENAI,
            notes="OpenAI's active count includes the unembedding but not the embedding.",
        )
    )
_add(
    Preset(
        name="Phi-3.5-MoE",
        lab="Microsoft",
        config={
            "model_type": "phimoe",
            "hidden_size": 4096,
            "intermediate_size": 6400,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_local_experts": 16,
            "num_experts_per_tok": 2,
            "attention_bias": True,
            "lm_head_bias": True,
            "vocab_size": 32064,
            "tie_word_embeddings": False,
        },
        config_source=hf_config_url("microsoft/Phi-3.5-MoE-instruct"),
        total=PublishedFigure(
            42e9,
            "https://arxiv.org/abs/2404.14219 (Phi-3 technical report: phi-3.5-MoE, 6.6B active"
            " and 42B total parameters)",
            rounded=True,
        ),
        active=PublishedFigure(
            6.6e9,
            "https://huggingface.co/microsoft/Phi-3.5-MoE-instruct ('16x3.8B parameters with 6.6B"
            " active parameters when using 2 experts')",
            rounded=True,
        ),
        convention=MICROSOFT,
    )
)
_LLAMA4 = {
    "model_type": "llama4",
    "tie_word_embeddings": False,
}
_LLAMA4_TEXT = {
    "hidden_size": 5120,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_experts_per_tok": 1,
    "vocab_size": 202048,
    "attention_chunk_size": 8192,
    # RoPE (chunked attention) in three blocks of four, NoPE (global) in the fourth.
    "no_rope_layers": [1, 1, 1, 0] * 12,
    "tie_word_embeddings": False,
}
_LLAMA4_CARD = (
    "https://huggingface.co/meta-llama/{0} (model card table: '17B (Activated) {1} (Total)')"
)
for _name, _repo, _experts, _step, _total in (
    ("Llama-4-Scout", "Llama-4-Scout-17B-16E", 16, 1, 109e9),
    ("Llama-4-Maverick", "Llama-4-Maverick-17B-128E", 128, 2, 400e9),
):
    _add(
        Preset(
            name=_name,
            lab="Meta",
            config={
                **_LLAMA4,
                "text_config": {
                    **_LLAMA4_TEXT,
                    "num_local_experts": _experts,
                    "interleave_moe_layer_step": _step,
                },
            },
            config_source=hf_config_url(f"meta-llama/{_repo}") + " (text_config)",
            total=PublishedFigure(
                _total, _LLAMA4_CARD.format(_repo, f"{_total / 1e9:.0f}B"), rounded=True
            ),
            active=PublishedFigure(
                17e9, _LLAMA4_CARD.format(_repo, f"{_total / 1e9:.0f}B"), rounded=True
            ),
            convention=META,
            notes="Counts the text model only; the published total is for the multimodal"
            " checkpoint, which also holds a vision encoder.",
        )
    )

# The models added later (among them hybrids, an encoder-decoder, mixtures of attention heads and
# parallel dense FFNs): moe_lab/budget/presets_more.py.
for _preset in MORE_PRESETS:
    _add(_preset)
