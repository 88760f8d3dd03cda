"""Reading Hugging Face ``config.json`` dicts into a ``ModelSpec``.

Each supported family has its own small reader, because the same field name does not mean the
same thing across families (``intermediate_size`` is the expert width in Mixtral and Llama 4, the
dense width in DeepSeek and Qwen3-MoE) and some facts are not in the config at all (Qwen2's q/k/v
biases are hard-coded in its modeling file). Each reader cites the modeling file whose parameter
layout it reproduces. A missing field raises a ``ConfigError`` that names it.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moe_lab.budget.hf_families import FAMILY_READERS
from moe_lab.budget.hf_fields import field as _field
from moe_lab.budget.hf_fields import first_integer as _first_int
from moe_lab.budget.hf_fields import gqa as _gqa
from moe_lab.budget.hf_fields import integer as _int
from moe_lab.budget.spec import AttentionSpec, ConfigError, ModelSpec, MoESpec


def _mixtral(c: dict[str, Any], f: str = "mixtral", block_norms: int = 2) -> ModelSpec:
    # transformers/models/mixtral/modeling_mixtral.py: q/k/v/o without bias, router (E, D),
    # experts w1/w3 (F, D) and w2 (D, F), RMSNorm (D) twice per block, untied head.
    # The same layout, read with f and block_norms: IBM Granite 3.0 MoE (granitemoe: tied
    # embeddings, experts stored as input_linear (E, 2F, D) and output_linear (E, D, F)) and
    # Grok-1 (four RMSNorms per block, around attention and around the MoE; tied embeddings).
    n_layers = _int(c, "num_hidden_layers", f)
    window = c.get("sliding_window")
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=_int(c, "hidden_size", f),
        attention=_gqa(c, f),
        moe=MoESpec(
            _first_int(c, ("num_local_experts", "num_experts"), f),
            _int(c, "num_experts_per_tok", f),
            _int(c, "intermediate_size", f),
        ),
        moe_layers=(True,) * n_layers,
        norm_params=_int(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_windows=(window,) * n_layers if window else (),
        block_norms=block_norms,
    )


def _qwen_moe(c: dict[str, Any], family: str) -> ModelSpec:
    # transformers/models/qwen2_moe/modeling_qwen2_moe.py: q/k/v with bias, o without; a shared
    # expert of width shared_expert_intermediate_size gated by sigmoid(Linear(D, 1)).
    # transformers/models/qwen3_moe/modeling_qwen3_moe.py: no attention bias, q_norm and k_norm
    # of width head_dim, no shared expert.
    # Block i is MoE when it is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
    n_layers = _int(c, "num_hidden_layers", family)
    step = c.get("decoder_sparse_step", 1) or 1
    dense_only = set(c.get("mlp_only_layers") or [])
    moe_layers = tuple(i not in dense_only and (i + 1) % step == 0 for i in range(n_layers))
    is_qwen2 = family == "qwen2_moe"
    shared = _int(c, "shared_expert_intermediate_size", family) if is_qwen2 else 0
    attention = (
        _gqa(c, family, qkv_bias=True)
        if is_qwen2
        else _gqa(c, family, qkv_bias=bool(c.get("attention_bias", False)), qk_norm="head")
    )
    return ModelSpec(
        name=c.get("_name", family),
        family=family,
        vocab_size=_int(c, "vocab_size", family),
        d_model=_int(c, "hidden_size", family),
        attention=attention,
        moe=MoESpec(
            # transformers 5 re-saves these configs with num_local_experts: accept both.
            _first_int(c, ("num_experts", "num_local_experts"), family),
            _int(c, "num_experts_per_tok", family),
            _int(c, "moe_intermediate_size", family),
            shared_width=shared,
            shared_gate=shared > 0,
        ),
        moe_layers=moe_layers,
        d_ff=_int(c, "intermediate_size", family) if not all(moe_layers) else 0,
        norm_params=_int(c, "hidden_size", family),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def _deepseek(c: dict[str, Any], family: str) -> ModelSpec:
    # DeepSeek-V2/V3 modeling_deepseek.py (and transformers' deepseek_v3): MLA attention;
    # blocks < first_k_dense_replace use a dense FFN of width intermediate_size, later blocks
    # (every moe_layer_freq-th) an MoE block with n_shared_experts shared experts of width
    # moe_intermediate_size; V3's noaux_tc router stores e_score_correction_bias (E,).
    # DeepSeekMoE (v1, model_type "deepseek", deepseek-moe-16b's modeling_deepseek.py): the same
    # blocks with ordinary multi-head attention (q/k/v/o without bias) instead of MLA.
    # Kimi K2 (model_type "kimi_k2"): DeepSeek-V3's architecture with other sizes.
    n_layers = _int(c, "num_hidden_layers", family)
    first_dense = c.get("first_k_dense_replace", 0) or 0
    freq = c.get("moe_layer_freq", 1) or 1
    moe_layers = tuple(i >= first_dense and i % freq == 0 for i in range(n_layers))
    d_expert = _int(c, "moe_intermediate_size", family)
    attention = (
        _gqa(c, family)
        if family == "deepseek"
        else AttentionSpec(
            "mla",
            n_heads=_int(c, "num_attention_heads", family),
            n_kv_heads=_int(c, "num_attention_heads", family),
            head_dim=_int(c, "v_head_dim", family),
            q_lora_rank=c.get("q_lora_rank"),  # None: queries projected directly (V2-Lite)
            kv_lora_rank=_int(c, "kv_lora_rank", family),
            qk_nope_head_dim=_int(c, "qk_nope_head_dim", family),
            qk_rope_head_dim=_int(c, "qk_rope_head_dim", family),
            v_head_dim=_int(c, "v_head_dim", family),
        )
    )
    return ModelSpec(
        name=c.get("_name", family),
        family=family,
        vocab_size=_int(c, "vocab_size", family),
        d_model=_int(c, "hidden_size", family),
        attention=attention,
        moe=MoESpec(
            _int(c, "n_routed_experts", family),
            _int(c, "num_experts_per_tok", family),
            d_expert,
            shared_width=(c.get("n_shared_experts") or 0) * d_expert,
            score_bias=c.get("topk_method") == "noaux_tc",
        ),
        moe_layers=moe_layers,
        d_ff=_int(c, "intermediate_size", family),
        norm_params=_int(c, "hidden_size", family),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        mtp_layers=c.get("num_nextn_predict_layers", 0) or 0,
    )


def _olmoe(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/olmoe/modeling_olmoe.py: no biases; q_norm over all H*hd query
    # features and k_norm over all KV*hd key features; intermediate_size is the expert width.
    f = "olmoe"
    n_layers = _int(c, "num_hidden_layers", f)
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=_int(c, "hidden_size", f),
        attention=_gqa(c, f, qk_norm="full"),
        moe=MoESpec(
            _int(c, "num_experts", f),
            _int(c, "num_experts_per_tok", f),
            _int(c, "intermediate_size", f),
        ),
        moe_layers=(True,) * n_layers,
        norm_params=_int(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def _dbrx(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/dbrx/modeling_dbrx.py: fused Wqkv (D, D + 2*KV*hd) and out_proj, no
    # biases; LayerNorm(D, bias=False); experts w1, v1, w2 each (E*F, D); router (E, D).
    f = "dbrx"
    ffn = _field(c, "ffn_config", f)
    attn = _field(c, "attn_config", f)
    heads = _int(c, "n_heads", f)
    d_model = _int(c, "d_model", f)
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=d_model,
        attention=AttentionSpec("gqa", heads, _int(attn, "kv_n_heads", f), d_model // heads),
        moe=MoESpec(
            _int(ffn, "moe_num_experts", f),
            _int(ffn, "moe_top_k", f),
            _int(ffn, "ffn_hidden_size", f),
        ),
        moe_layers=(True,) * _int(c, "n_layers", f),
        norm_params=d_model,
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def _gpt_oss(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/gpt_oss/modeling_gpt_oss.py: q/k/v/o with bias (attention_bias),
    # one sink logit per head; router Linear(D, E) with bias; experts gate_up (E, D, 2F) with a
    # 2F bias and down (E, F, D) with a D bias; layer_types alternate sliding (window
    # sliding_window) and full attention.
    f = "gpt_oss"
    n_layers = _int(c, "num_hidden_layers", f)
    bias = bool(c.get("attention_bias", True))
    layer_types = c.get("layer_types") or []
    window = c.get("sliding_window")
    windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=_int(c, "hidden_size", f),
        attention=_gqa(c, f, qkv_bias=bias, o_bias=bias, sinks=True),
        moe=MoESpec(
            _int(c, "num_local_experts", f),
            _int(c, "num_experts_per_tok", f),
            _int(c, "intermediate_size", f),
            expert_bias=True,
            router_bias=True,
        ),
        moe_layers=(True,) * n_layers,
        norm_params=_int(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_windows=windows if len(windows) == n_layers else (),
    )


def _phimoe(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/phimoe/modeling_phimoe.py: LayerNorm with weight and bias, q/k/v/o
    # biases when attention_bias, an LM-head bias when lm_head_bias; Mixtral-style experts.
    f = "phimoe"
    n_layers = _int(c, "num_hidden_layers", f)
    bias = bool(c.get("attention_bias", False))
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=_int(c, "hidden_size", f),
        attention=_gqa(c, f, qkv_bias=bias, o_bias=bias),
        moe=MoESpec(
            _int(c, "num_local_experts", f),
            _int(c, "num_experts_per_tok", f),
            _int(c, "intermediate_size", f),
        ),
        moe_layers=(True,) * n_layers,
        norm_params=2 * _int(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        lm_head_bias=bool(c.get("lm_head_bias", False)),
    )


def _llama4(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/llama4/modeling_llama4.py (text model only; the published totals also
    # include the vision encoder): MoE blocks hold E routed experts of width intermediate_size,
    # one shared expert of the same width and a bias-free router; dense blocks an FFN of width
    # intermediate_size_mlp; the qk norm is a weightless L2 norm. Blocks with RoPE
    # (no_rope_layers[i] == 1) use chunked attention of attention_chunk_size, counted here as a
    # window of that size (an upper bound: a chunk restarts every chunk_size tokens).
    if "text_config" in c:
        c = {**c["text_config"], "_name": c.get("_name", "llama4")}
    f = "llama4"
    n_layers = _int(c, "num_hidden_layers", f)
    step = c.get("interleave_moe_layer_step", 1) or 1
    listed = c.get("moe_layers")
    moe_set = set(listed if listed is not None else range(step - 1, n_layers, step))
    d_expert = _int(c, "intermediate_size", f)
    chunk = c.get("attention_chunk_size")
    no_rope = c.get("no_rope_layers") or []
    windows = tuple(chunk if use_rope else None for use_rope in no_rope) if chunk else ()
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=_int(c, "vocab_size", f),
        d_model=_int(c, "hidden_size", f),
        attention=_gqa(c, f, qkv_bias=bool(c.get("attention_bias", False))),
        moe=MoESpec(
            _int(c, "num_local_experts", f),
            _int(c, "num_experts_per_tok", f),
            d_expert,
            shared_width=d_expert,
        ),
        moe_layers=tuple(i in moe_set for i in range(n_layers)),
        d_ff=_int(c, "intermediate_size_mlp", f) if len(moe_set) < n_layers else 0,
        norm_params=_int(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_windows=windows if len(windows) == n_layers else (),
    )


_READERS: dict[str, Callable[[dict[str, Any]], ModelSpec]] = {
    "mixtral": _mixtral,
    "qwen2_moe": lambda c: _qwen_moe(c, "qwen2_moe"),
    "qwen3_moe": lambda c: _qwen_moe(c, "qwen3_moe"),
    "deepseek_v2": lambda c: _deepseek(c, "deepseek_v2"),
    "deepseek_v3": lambda c: _deepseek(c, "deepseek_v3"),
    "olmoe": _olmoe,
    "dbrx": _dbrx,
    "gpt_oss": _gpt_oss,
    "phimoe": _phimoe,
    "llama4": _llama4,
    "llama4_text": _llama4,
    "deepseek": lambda c: _deepseek(c, "deepseek"),
    "kimi_k2": lambda c: _deepseek(c, "kimi_k2"),
    "granitemoe": lambda c: _mixtral(c, "granitemoe"),
    "grok-1": lambda c: _mixtral(c, "grok-1", block_norms=4),
    **FAMILY_READERS,
}
SUPPORTED_MODEL_TYPES = tuple(_READERS)


def from_hf_config(config: dict[str, Any], name: str | None = None) -> ModelSpec:
    """Build a ``ModelSpec`` from a Hugging Face style ``config.json`` dict.

    Supported ``model_type`` values: ``SUPPORTED_MODEL_TYPES`` (Mixtral, Qwen1.5/Qwen2-MoE,
    Qwen3-MoE, DeepSeekMoE, DeepSeek-V2/V3, Kimi K2, OLMoE, DBRX, gpt-oss, Phi-3.5-MoE, Llama 4,
    GLM-4.5, Granite 3.0 MoE, JetMoE, Jamba, Switch Transformers, Snowflake Arctic, Grok-1).

    Args:
        config: the parsed ``config.json``; only the fields that set parameter shapes are read.
        name: label for the spec (defaults to the model_type).

    Returns:
        The model's ``ModelSpec``.

    Raises:
        ConfigError: unknown ``model_type``, or a field the family needs is missing (the
            message names it).

    Example:
        >>> spec = from_hf_config({"model_type": "mixtral", "hidden_size": 64, ...})  # doctest: +SKIP
    """
    model_type = config.get("model_type")
    if model_type not in _READERS:
        raise ConfigError(
            f"model_type={model_type!r} is not supported: use one of"
            f" {', '.join(SUPPORTED_MODEL_TYPES)} (or build a ModelSpec by hand)"
        )
    return _READERS[model_type]({**config, "_name": name or model_type})
