"""Decode economics: experts touched by a batch, weight bytes read per step, all-to-all bytes.

Decoding one token per sequence is memory-bound: each step reads every weight it uses once, for
the whole batch, and does only 2 FLOPs per weight per token with it. A dense model reads all its
weights at any batch size. An MoE block reads only the experts some token in the batch chose, and
under uniform routing the expected number of distinct experts among B tokens that each pick K
of E is

    E * (1 - (1 - K/E)^B),

because a token's K-subset misses a given expert with probability 1 - K/E, independently per
token. At B = 1 that is K (the active parameters); it climbs toward E (the total) as B grows, so
the bytes an MoE decoding step reads move from "active" to "total" with the batch, while its
FLOPs stay "active" per token.

Reference: the classical occupancy problem (expected number of occupied bins), with each
token drawing K distinct bins; DeepSeek-V3 (Liu et al. 2024, section 3.4) discusses why MoE
decoding is memory-bound and serves it with large batches and expert parallelism.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from moe_lab.budget.counts import count_parameters, expert_params
from moe_lab.budget.memory import dtype_bytes, kv_cache_bytes
from moe_lab.budget.spec import ModelSpec


def expected_experts_touched(n_experts: int, top_k: int, n_tokens: float) -> float:
    """E * (1 - (1 - K/E)^B): distinct experts a batch of B tokens uses under uniform routing.

    Args:
        n_experts: E.
        top_k: K, experts per token.
        n_tokens: B, tokens in the batch (one decoding step of B sequences).

    Returns:
        The expected number of distinct experts touched, between min(K*B, E)-ish and E.

    Example:
        >>> expected_experts_touched(8, 2, 1)
        2.0
    """
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** n_tokens)


def decode_step_bytes(
    spec: ModelSpec,
    batch: int,
    dtype: str = "bf16",
    context_len: int = 0,
    kv_dtype: str = "bf16",
) -> dict[str, float]:
    """Bytes one decoding step reads: every non-expert weight, the touched experts, the KV cache.

    Args:
        spec: the model.
        batch: B, sequences decoded together (one new token each).
        dtype: weight dtype.
        context_len: tokens already in each sequence's KV cache.
        kv_dtype: KV cache dtype.

    Returns:
        ``{"dense_weights", "expert_weights", "kv_cache", "total"}``: dense weights are everything
        but the routed experts (the input embedding contributes only its B looked-up rows unless
        it is tied to the head); expert weights are n_moe_layers x expected experts touched x
        one expert's bytes.
    """
    counts = count_parameters(spec)
    embedding_rows = batch * spec.d_model if not spec.tied_embeddings else counts.embedding
    dense = counts.total() - counts.routed_experts - counts.embedding + embedding_rows
    experts = 0.0
    if spec.moe is not None:
        touched = expected_experts_touched(spec.moe.n_experts, spec.moe.top_k, batch)
        experts = spec.n_moe_layers * touched * expert_params(spec)
    width = dtype_bytes(dtype)
    parts = {
        "dense_weights": dense * width,
        "expert_weights": experts * width,
        "kv_cache": kv_cache_bytes(spec, context_len, batch, kv_dtype),
    }
    parts["total"] = sum(parts.values())
    return parts


def all_to_all_bytes(
    spec: ModelSpec, n_tokens: int, world_size: int, dtype: str = "bf16"
) -> dict[str, float]:
    """Bytes expert parallelism moves per MoE block per step, summed over all ranks.

    With E experts spread evenly over W ranks and tokens spread evenly too, each of a token's K
    routed copies lands on another rank with probability (W - 1)/W under uniform routing. The
    dispatch all-to-all sends those copies (D values each) and the combine all-to-all sends the
    expert outputs back, so each moves N*K*D*(W-1)/W values. (DeepSeek-V3 sends a token once
    per destination node and lets it fan out there; this is the plain per-copy count.)

    Args:
        spec: the model (D, K).
        n_tokens: N tokens in the step, over all ranks.
        world_size: W expert-parallel ranks.
        dtype: dtype of the communicated activations.

    Returns:
        ``{"dispatch", "combine", "total", "per_rank"}`` in bytes for one MoE block.
    """
    if spec.moe is None:
        raise ValueError(f"{spec.name} has no MoE blocks: nothing to dispatch")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    remote = (world_size - 1) / world_size
    one_way = n_tokens * spec.moe.top_k * spec.d_model * remote * dtype_bytes(dtype)
    return {
        "dispatch": one_way,
        "combine": one_way,
        "total": 2 * one_way,
        "per_rank": 2 * one_way / world_size,
    }
