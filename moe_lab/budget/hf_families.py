"""Readers for the families whose blocks differ from a plain decoder of attention and FFN.

GLM-4.5 (shared experts, a selection bias and multi-token prediction, like DeepSeek-V3, but with
grouped-query attention), JetMoE (a mixture of attention heads as well as of MLP experts), Jamba
(Mamba blocks between attention blocks), Switch Transformers (an encoder-decoder with ReLU experts)
and Snowflake Arctic (a dense FFN in parallel with every MoE block). Each reader cites the modeling
file whose parameter layout it reproduces; ``hf_configs.from_hf_config`` dispatches to them.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from moe_lab.budget.hf_fields import first_integer, gqa, integer
from moe_lab.budget.spec import AttentionSpec, ConfigError, MambaSpec, ModelSpec, MoESpec


def _glm4_moe(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/glm4_moe/modeling_glm4_moe.py: q/k/v with bias (attention_bias), o
    # without; per-head q_norm and k_norm when use_qk_norm; blocks < first_k_dense_replace dense
    # (intermediate_size), the rest MoE: n_routed_experts of moe_intermediate_size, one shared
    # FFN of n_shared_experts * moe_intermediate_size, a sigmoid router (E, D) whose
    # e_score_correction_bias (E,) the checkpoint stores. The checkpoint also holds
    # num_nextn_predict_layers multi-token-prediction layers built like DeepSeek-V3's.
    f = "glm4_moe"
    n_layers = integer(c, "num_hidden_layers", f)
    first_dense = c.get("first_k_dense_replace", 0) or 0
    d_expert = integer(c, "moe_intermediate_size", f)
    qk_norm = "head" if c.get("use_qk_norm") else "none"
    moe_layers = tuple(i >= first_dense for i in range(n_layers))
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=integer(c, "vocab_size", f),
        d_model=integer(c, "hidden_size", f),
        attention=gqa(c, f, qkv_bias=bool(c.get("attention_bias", False)), qk_norm=qk_norm),
        moe=MoESpec(
            first_integer(c, ("n_routed_experts", "num_experts"), f),
            integer(c, "num_experts_per_tok", f),
            d_expert,
            shared_width=(c.get("n_shared_experts") or 0) * d_expert,
            score_bias=True,
        ),
        moe_layers=moe_layers,
        d_ff=integer(c, "intermediate_size", f) if not all(moe_layers) else 0,
        norm_params=integer(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        mtp_layers=c.get("num_nextn_predict_layers", 0) or 0,
    )


def _jetmoe(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/jetmoe/modeling_jetmoe.py: every block holds a mixture of attention
    # heads (JetMoeMoA: E experts, each a query projection (D -> KV*hd) and an output projection
    # (KV*hd -> D), shared k and v (kv_proj, D -> 2*KV*hd), a router (E, D), an output bias D)
    # and a mixture of MLP experts (input_linear (E, 2F, D), output_linear (E, D, F), a router,
    # an output bias D); the same top-k for both. A token's query has K*KV heads of width hd
    # (kv_channels). The jetmoe/jetmoe-8b config.json spells the MoE fields moe_num_experts,
    # moe_top_k and ffn_hidden_size; transformers' JetMoeConfig num_local_experts,
    # num_experts_per_tok and intermediate_size: both are read.
    f = "jetmoe"
    n_layers = integer(c, "num_hidden_layers", f)
    n_experts = first_integer(c, ("num_local_experts", "moe_num_experts"), f)
    top_k = first_integer(c, ("num_experts_per_tok", "moe_top_k"), f)
    kv_heads = integer(c, "num_key_value_heads", f)
    attention = AttentionSpec(
        "gqa",
        n_heads=top_k * kv_heads,
        n_kv_heads=kv_heads,
        head_dim=integer(c, "kv_channels", f),
        n_experts=n_experts,
        top_k=top_k,
    )
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=integer(c, "vocab_size", f),
        d_model=integer(c, "hidden_size", f),
        attention=attention,
        moe=MoESpec(
            n_experts,
            top_k,
            first_integer(c, ("intermediate_size", "ffn_hidden_size"), f),
            output_bias=True,
        ),
        moe_layers=(True,) * n_layers,
        norm_params=integer(c, "hidden_size", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", True)),
    )


def _jamba(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/jamba/modeling_jamba.py: block i mixes with attention when
    # i % attn_layer_period == attn_layer_offset (q/k/v/o without bias, no position embedding)
    # and with a Mamba mixer otherwise (JambaMambaMixer, see MambaSpec); its FFN is an MoE
    # (num_experts of intermediate_size, a router (E, D)) when
    # i % expert_layer_period == expert_layer_offset, else a dense SwiGLU of the same width.
    f = "jamba"
    n_layers = integer(c, "num_hidden_layers", f)
    D = integer(c, "hidden_size", f)
    attn_period, attn_offset = c.get("attn_layer_period", 8), c.get("attn_layer_offset", 4)
    moe_period, moe_offset = c.get("expert_layer_period", 2), c.get("expert_layer_offset", 1)
    dt_rank = c.get("mamba_dt_rank", "auto")
    mamba = MambaSpec(
        d_inner=c.get("mamba_expand", 2) * D,
        d_state=c.get("mamba_d_state", 16),
        d_conv=c.get("mamba_d_conv", 4),
        dt_rank=math.ceil(D / 16) if dt_rank == "auto" else dt_rank,  # as JambaConfig resolves it
        conv_bias=bool(c.get("mamba_conv_bias", True)),
        proj_bias=bool(c.get("mamba_proj_bias", False)),
        inner_norms=True,
    )
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=integer(c, "vocab_size", f),
        d_model=D,
        attention=gqa(c, f),
        moe=MoESpec(
            integer(c, "num_experts", f),
            integer(c, "num_experts_per_tok", f),
            integer(c, "intermediate_size", f),
        ),
        moe_layers=tuple(i % moe_period == moe_offset for i in range(n_layers)),
        d_ff=integer(c, "intermediate_size", f),
        norm_params=D,
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        mamba=mamba,
        attention_layers=tuple(i % attn_period == attn_offset for i in range(n_layers)),
    )


def _switch_sparse(n_layers: int, step: int) -> tuple[bool, ...]:
    # SwitchTransformersStack: block i is sparse when i % step == 1 (or step == 1); step 0: none.
    return tuple((i % step == 1 or step == 1) if step > 0 else False for i in range(n_layers))


def _switch_transformers(c: dict[str, Any]) -> ModelSpec:
    # transformers/models/switch_transformers/modeling_switch_transformers.py: a T5 encoder-
    # decoder. Every block: self-attention (q/k/v/o (D, H*d_kv), no bias) and an FFN, each after
    # a weight-only LayerNorm (D); decoder blocks also a cross-attention of the same shape with
    # its own norm; each stack a final norm and, in its first block, relative-position biases
    # (buckets x H). FFNs are ReLU MLPs (wi (D, d_ff), wo (d_ff, D)); a sparse block's is a
    # top-1 router (E, D) over E such experts. The LM head is tied to the shared embedding.
    f = "switch_transformers"
    n_encoder = integer(c, "num_layers", f)
    n_decoder = c.get("num_decoder_layers") or n_encoder
    steps = []
    for stack, n in (("encoder", n_encoder), ("decoder", n_decoder)):
        step = c.get(f"{stack}_sparse_step")
        if step is None:  # SwitchTransformersConfig derives it from num_sparse_*_layers
            n_sparse = c.get(f"num_sparse_{stack}_layers", 0)
            step = n // n_sparse if n_sparse > 0 else n
        steps.append(step)
    heads, d_kv = integer(c, "num_heads", f), integer(c, "d_kv", f)
    d_ff = integer(c, "d_ff", f)
    if c.get("is_gated_act") or c.get("num_selected_experts", 1) != 1:
        raise ConfigError("switch_transformers: only the published ReLU, top-1 layout is read")
    buckets = c.get("relative_attention_num_buckets", 32)
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=integer(c, "vocab_size", f),
        d_model=integer(c, "d_model", f),
        attention=AttentionSpec("gqa", heads, heads, d_kv),
        moe=MoESpec(
            integer(c, "num_experts", f),
            1,
            d_ff,
            matrices=2,
            router_bias=bool(c.get("router_bias")),
        ),
        moe_layers=_switch_sparse(n_encoder, steps[0]) + _switch_sparse(n_decoder, steps[1]),
        d_ff=d_ff,
        dense_matrices=2,
        norm_params=integer(c, "d_model", f),
        tied_embeddings=bool(c.get("tie_word_embeddings", True)),
        cross_attention_layers=n_decoder,
        position_bias_params=2 * buckets * heads,
        final_norms=2,
    )


def _arctic(c: dict[str, Any]) -> ModelSpec:
    # Snowflake/snowflake-arctic-instruct modeling_arctic.py (custom code): attention without
    # biases; MoE blocks every moe_layer_frequency-th (num_local_experts SwiGLU experts of
    # intermediate_size, router (E, D)); with parallel_attn_mlp_res (and use_residual) every MoE
    # block also runs a dense SwiGLU "residual" MLP of width hidden_size after its own RMSNorm
    # (ArcticMLP(is_residual_mlp=True): ffn_dim = hidden_size). Untied head.
    f = "arctic"
    n_layers = integer(c, "num_hidden_layers", f)
    freq = c.get("moe_layer_frequency", 1) or 1
    moe_layers = tuple((i + 1) % freq == 0 for i in range(n_layers))
    D = integer(c, "hidden_size", f)
    residual = bool(c.get("parallel_attn_mlp_res")) and bool(c.get("use_residual", True))
    return ModelSpec(
        name=c.get("_name", f),
        family=f,
        vocab_size=integer(c, "vocab_size", f),
        d_model=D,
        attention=gqa(c, f),
        moe=MoESpec(
            integer(c, "num_local_experts", f),
            integer(c, "num_experts_per_tok", f),
            integer(c, "intermediate_size", f),
        ),
        moe_layers=moe_layers,
        d_ff=integer(c, "intermediate_size", f) if not all(moe_layers) else 0,
        norm_params=D,
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        parallel_ffn_width=D if residual else 0,
    )


FAMILY_READERS: dict[str, Callable[[dict[str, Any]], ModelSpec]] = {
    "glm4_moe": _glm4_moe,
    "jetmoe": _jetmoe,
    "jamba": _jamba,
    "switch_transformers": _switch_transformers,
    "arctic": _arctic,
}
