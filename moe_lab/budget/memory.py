"""Memory: weights at a dtype, training state, activations for a batch, the KV cache.

The headline fact: an MoE model's memory follows its *total* parameters, because any token may
be routed to any expert, so every expert must be resident (or paged in at a latency cost).

Reference: Rajbhandari et al. 2020, "ZeRO", section 3.1 (mixed-precision Adam holds 16 bytes per
parameter: 2 fp16 weights + 2 fp16 gradients + 12 of fp32 master weights, momentum, variance);
Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
section 4 (activations saved per block); DeepSeek-V2 Table 1 (MLA's KV cache).

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from moe_lab.budget.counts import ALL_IN, CountConvention, count_parameters
from moe_lab.budget.spec import ModelSpec

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # MXFP4 (gpt-oss): 4-bit values plus one 8-bit scale per 32 values = 4.25 bits.
    "mxfp4": 4.25 / 8,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a dtype name in ``DTYPE_BYTES``."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is unknown: choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def weight_bytes(
    spec: ModelSpec, dtype: str = "bf16", convention: CountConvention = ALL_IN
) -> float:
    """Bytes to hold every parameter at ``dtype`` (MTP modules only if the convention says so).

    Args:
        spec: the model.
        dtype: a key of ``DTYPE_BYTES``.
        convention: which optional modules the total includes.

    Returns:
        total parameters x bytes per parameter.
    """
    return count_parameters(spec).total(convention) * dtype_bytes(dtype)


def training_state_bytes(
    spec: ModelSpec,
    weight_dtype: str = "bf16",
    grad_dtype: str = "bf16",
    master_weights: bool = True,
    optimizer_states: int = 2,
    state_dtype: str = "fp32",
) -> dict[str, float]:
    """Bytes of the weights, gradients and optimizer state a training run keeps per replica.

    With the defaults (bf16 weights and gradients, fp32 master copy, Adam's two fp32 moments)
    this is ZeRO's 16 bytes per parameter, before any sharding (ZeRO section 3.1).

    Args:
        spec: the model.
        weight_dtype: dtype of the working weights.
        grad_dtype: dtype of the gradients.
        master_weights: keep an fp32 copy of the weights for the update.
        optimizer_states: tensors per parameter (Adam/AdamW: 2, SGD with momentum: 1).
        state_dtype: dtype of the optimizer state and master copy.

    Returns:
        ``{"weights", "gradients", "master_weights", "optimizer", "total"}`` in bytes.
    """
    n = count_parameters(spec).total()
    parts = {
        "weights": n * dtype_bytes(weight_dtype),
        "gradients": n * dtype_bytes(grad_dtype),
        "master_weights": n * dtype_bytes(state_dtype) if master_weights else 0.0,
        "optimizer": n * optimizer_states * dtype_bytes(state_dtype),
    }
    parts["total"] = sum(parts.values())
    return parts


def kv_cache_bytes(spec: ModelSpec, context_len: int, batch: int = 1, dtype: str = "bf16") -> float:
    """Bytes of the KV cache for ``batch`` sequences of ``context_len`` tokens.

    GQA caches a key and a value per KV head: 2*KV*hd elements per token per block. MLA caches
    the compressed latent and the decoupled RoPE key: kv_lora_rank + rope dim (DeepSeek-V2,
    Table 1). Blocks with a sliding or chunked window keep at most ``window`` tokens. Mamba
    blocks (Jamba) keep a fixed-size state instead, not counted here; an encoder-decoder's
    cross-attention cache (the encoder's keys) is not counted either.

    Args:
        spec: the model.
        context_len: tokens per sequence.
        batch: B, sequences.
        dtype: cache dtype.

    Returns:
        Bytes for the whole batch.
    """
    per_token = spec.attention.kv_cache_per_token
    tokens = sum(
        min(context_len, spec.window(i)) if spec.window(i) else context_len
        for i in range(spec.n_layers)
        if spec.has_attention(i)
    )
    return batch * tokens * per_token * dtype_bytes(dtype)


def activation_bytes(
    spec: ModelSpec, batch: int, seq_len: int, dtype: str = "bf16", flash_attention: bool = True
) -> float:
    """Estimated bytes of activations saved for the backward pass of one batch, no recomputation.

    An estimate in the style of Korthikanti et al. 2022, section 4: per token and block it counts
    the tensors a pre-norm block saves for backward (the exact number depends on the kernels):
    attention: the block input and normed input (2D), q, k, v and the attention output;
    without a fused attention kernel also the H x T scores and probabilities;
    a dense FFN: 2D plus its hidden tensors (3F for SwiGLU: gate, up, product; 2F for GELU);
    an MoE block: 2D, the E router logits, and per routed copy (K per token) the gathered input D
    and the expert's hidden tensors, plus the shared experts' hidden tensors; a Mamba block
    (Jamba): 2D plus its 2 d_inner input projection, conv output and scan output (4 d_inner).
    The embedding output and the logits (V per token) are added once.

    Args:
        spec: the model.
        batch: B sequences.
        seq_len: T tokens per sequence.
        dtype: activation dtype.
        flash_attention: a fused kernel that recomputes the scores (no T^2 term).

    Returns:
        Bytes for the batch.
    """
    att, D = spec.attention, spec.d_model
    tokens = batch * seq_len
    attn = 2 * D + att.n_heads * att.qk_dim + att.n_kv_heads * (att.qk_dim + att.v_dim)
    attn += att.n_heads * att.v_dim
    if not flash_attention:
        attn += 2 * att.n_heads * seq_len
    dense = 2 * D + spec.dense_matrices * spec.d_ff
    moe_elems = 0
    if spec.moe is not None:
        m = spec.moe
        per_copy = D + m.matrices * m.d_expert
        moe_elems = 2 * D + m.n_experts + m.top_k * per_copy + m.matrices * m.shared_width
    mamba = 2 * D + 4 * spec.mamba.d_inner if spec.mamba is not None else 0
    n_attention = spec.n_attention_layers + spec.cross_attention_layers
    per_token = (
        n_attention * attn
        + spec.n_mamba_layers * mamba
        + spec.n_dense_layers * dense
        + spec.n_moe_layers * moe_elems
    )
    per_token += D + spec.vocab_size  # embedding output, logits
    return tokens * per_token * dtype_bytes(dtype)
