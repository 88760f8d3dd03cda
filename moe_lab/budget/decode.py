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

from collections.abc import Sequence
from typing import Any

from moe_lab.budget.counts import count_parameters, expert_params
from moe_lab.budget.memory import dtype_bytes, kv_cache_bytes
from moe_lab.budget.spec import ModelSpec
from moe_lab.config import expert_capacity


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
    spec: ModelSpec,
    n_tokens: int,
    world_size: int,
    dtype: str = "bf16",
    *,
    expert_indices: Sequence[Sequence[int]] | None = None,
    capacity_factor: float | None = None,
    backward: bool = False,
) -> dict[str, Any]:
    """Bytes expert parallelism sends between ranks for one MoE block, in total and per rank.

    Placement (the one ``moe_lab.parallel`` uses): rank r holds the r-th contiguous block of
    E/W experts and the r-th contiguous block of N/W tokens. A token's routed copy (token n,
    slot k) is *remote* when its expert lives on another rank than the token. The dispatch
    all-to-all sends each remote copy's D values to the expert's rank; the combine all-to-all
    sends the expert's D outputs back. A copy whose expert is local is handed over in memory
    and never leaves its process, so it is not counted. Three ways to count the copies:

    * expected, under uniform routing (the default): each copy's expert is uniform over the E
      experts, so it is remote with probability (E - E/W)/E = (W - 1)/W, and each direction
      moves N K D (W - 1)/W values; every rank sends the same, ``total / W``.
    * exact, on a given routing (``expert_indices`` (N, K), tokens in rank order): one
      direction moves D values per remote copy. Rank r sends its remote copies in the
      dispatch and, in the combine, the outputs of the copies other ranks sent to its experts.
    * capacity (``capacity_factor``, GShard/Switch): every rank sends fixed buffers of C rows per
      expert, C = ceil(cf (N/W) K / E), filled or not: to each of the W - 1 other ranks the
      E/W experts' buffers there, (W - 1)(E/W) C rows per rank and direction, whatever the
      routing. With C = cf N K / (W E) exactly, that is cf times the expected dropless volume.

    A training step also runs the backward of both exchanges (the reverse all-to-alls of the
    same sizes), which ``backward=True`` adds. Dropless exchanges first send each rank the
    per-expert counts it will receive: E/W 8-byte integers per pair of ranks, (W - 1) E x 8
    bytes in total (``"counts"``, not in ``"total"``). DeepSeek-V3 sends a token once per
    destination node and fans it out there; this is the plain per-copy count.

    Args:
        spec: the model (D, K, E).
        n_tokens: N tokens in the step, over all ranks (a multiple of W).
        world_size: W expert-parallel ranks (a divisor of E).
        dtype: dtype of the communicated activations.
        expert_indices: the routing, (N, K) expert ids (a tensor or nested lists), rows in
            rank order; None counts the expectation under uniform routing.
        capacity_factor: count the fixed capacity buffers instead (routing does not matter).
        backward: add the two backward exchanges of a training step.

    Returns:
        ``{"dispatch", "combine", "backward", "total", "per_rank", "by_rank", "counts"}`` in
        bytes for one MoE block: ``total`` = dispatch + combine (+ backward), summed over the
        ranks; ``per_rank`` = total / W; ``by_rank`` = the W ranks' own sends, which differ
        when the routing is uneven.

    Example:
        >>> from moe_lab.budget import PRESETS
        >>> spec = PRESETS["Mixtral-8x7B"].spec()
        >>> all_to_all_bytes(spec, 8, 2, expert_indices=[[0, 4]] * 8)["dispatch"]  # 8 remote
        65536.0
    """
    if spec.moe is None:
        raise ValueError(f"{spec.name} has no MoE blocks: nothing to dispatch")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if expert_indices is not None and capacity_factor is not None:
        raise ValueError("count either a routing (expert_indices) or capacity buffers, not both")
    n_experts, top_k, d_model = spec.moe.n_experts, spec.moe.top_k, spec.d_model
    row_bytes = d_model * dtype_bytes(dtype)
    if expert_indices is None and capacity_factor is None:  # expectation, uniform routing
        one_way = n_tokens * top_k * row_bytes * (world_size - 1) / world_size
        by_rank = [2 * one_way / world_size] * world_size
    else:
        if n_tokens % world_size or n_experts % world_size:
            raise ValueError(
                f"W={world_size} must divide the N={n_tokens} tokens and the E={n_experts}"
                " experts to place them in equal contiguous blocks"
            )
        experts_per_rank, tokens_per_rank = n_experts // world_size, n_tokens // world_size
        if capacity_factor is not None:
            capacity = expert_capacity(tokens_per_rank, n_experts, top_k, capacity_factor)
            rows_per_rank = (world_size - 1) * experts_per_rank * capacity  # one direction
            sent = received = [rows_per_rank] * world_size
        else:
            rows = expert_indices.tolist() if hasattr(expert_indices, "tolist") else expert_indices
            if len(rows) != n_tokens:
                raise ValueError(f"expert_indices has {len(rows)} rows for n_tokens={n_tokens}")
            sent, received = [0] * world_size, [0] * world_size
            for n, experts in enumerate(rows):
                source = n // tokens_per_rank
                for expert in experts:
                    destination = expert // experts_per_rank
                    if destination != source:  # a remote copy
                        sent[source] += 1
                        received[destination] += 1
        one_way = sum(sent) * row_bytes
        by_rank = [(s + r) * row_bytes for s, r in zip(sent, received, strict=True)]
    passes = 2 if backward else 1
    counts = 0.0 if capacity_factor is not None else float((world_size - 1) * n_experts * 8)
    return {
        "dispatch": float(one_way),
        "combine": float(one_way),
        "backward": float(2 * one_way if backward else 0.0),
        "total": float(2 * one_way * passes),
        "per_rank": float(2 * one_way * passes / world_size),
        "by_rank": tuple(float(b * passes) for b in by_rank),
        "counts": counts,
    }
