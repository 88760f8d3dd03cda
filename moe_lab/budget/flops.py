"""Matmul FLOPs per token, forward and training, by component.

A matmul of an (M, D) input by a (D, F) weight costs 2*M*D*F FLOPs (a multiply and an add per
weight per row), so a token's projection FLOPs are 2 x the matmul weights it uses. Two things
break "active parameters = FLOPs / 2": the input embedding is a lookup (parameters, no FLOPs), and
attention's score term, softmax(Q K^T) V, multiplies activations by activations: it has no
parameters and grows with the number of keys a token attends. Norms, activations, softmax and
routing's top-k are elementwise and left out, as in Kaplan et al. 2020 (section 2.1) and the
"6N" training rule (forward 2N, backward 4N).

Reference: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1 and
section 2.1 (C_forward ~ 2N + 2 n_layer n_ctx d_attn); DeepSeek-V2 eq. (9)-(19) for MLA, counted
here in its training (decompressed) form.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moe_lab.budget.counts import (
    attention_matmul_params,
    dense_ffn_params,
    mamba_matmul_params,
    parallel_ffn_params,
    shared_expert_params,
)
from moe_lab.budget.spec import ModelSpec


@dataclass(frozen=True)
class FlopsPerToken:
    """Forward matmul FLOPs of one token, by component (summed over all blocks).

    Attributes:
        attention_proj: q/k/v/o (or MLA) projections: 2 x their weights.
        attention_scores: Q K^T and (softmax) V: 2*H*(qk_dim + v_dim) per attended key.
        dense_ffn: the dense FFN blocks.
        routed_experts: the K routed experts of every MoE block.
        shared_experts: the shared experts.
        router: the router logits, 2*D*E per MoE block.
        lm_head: the output projection, 2*D*V.
        mamba: a hybrid's Mamba mixers: 2 x their projection weights and depthwise-conv weights
            (the selective scan itself is elementwise, left out like the norms).
    """

    attention_proj: float
    attention_scores: float
    dense_ffn: float
    routed_experts: float
    shared_experts: float
    router: float
    lm_head: float
    mamba: float = 0.0

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _mean_keys(seq_len: int, window: int | None) -> float:
    """Mean number of keys a query attends over a causal sequence: positions 1..T, capped."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    # positions 1..w attend p keys, positions w+1..T attend w keys
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def forward_flops_per_token(spec: ModelSpec, context_len: float) -> FlopsPerToken:
    """Forward matmul FLOPs of one token that attends ``context_len`` keys (itself included).

    Args:
        spec: the model.
        context_len: keys this token attends in a global-attention block: its position + 1 when
            decoding. Blocks with a window attend ``min(context_len, window)``.

    Returns:
        The per-component ``FlopsPerToken``.

    Example:
        >>> f = forward_flops_per_token(spec, context_len=4096)  # doctest: +SKIP
        >>> f.total / 1e9  # doctest: +SKIP
    """
    keys = [
        min(context_len, spec.window(i)) if spec.window(i) else context_len
        for i in range(spec.n_layers)
        if spec.has_attention(i)
    ]
    return _flops(spec, keys)


def training_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token on causal sequences of ``seq_len`` tokens: 3 x forward.

    The backward pass costs twice the forward (a gradient for the input and one for the
    weight of every matmul), so training is 3 x forward, the "6N" rule plus the score term.

    Args:
        spec: the model.
        seq_len: T, the training sequence length; token p attends p keys (capped by windows).

    Returns:
        FLOPs per trained token.
    """
    keys = [
        _mean_keys(seq_len, spec.window(i)) for i in range(spec.n_layers) if spec.has_attention(i)
    ]
    return 3 * _flops(spec, keys).total


def _flops(spec: ModelSpec, keys_per_layer: list[float]) -> FlopsPerToken:
    """FLOPs by component; ``keys_per_layer`` has one entry per self-attention block (a
    decoder's cross-attention projections are counted, its scores over the encoder's keys not)."""
    att, D = spec.attention, spec.d_model
    moe = spec.moe
    per_key = 2 * att.n_heads * (att.qk_dim + att.v_dim)  # Q K^T then probs @ V
    n_moe = spec.n_moe_layers
    # Expert matmuls: bias adds are elementwise, so only the D x F weights count. The shared
    # experts (and Qwen2-MoE's D -> 1 shared gate) are all matmul weights.
    expert_matmul = moe.matrices * D * moe.d_expert if moe else 0
    n_attention = spec.n_attention_layers + spec.cross_attention_layers
    mamba = 0
    if spec.mamba is not None:
        conv = spec.mamba.d_inner * spec.mamba.d_conv
        mamba = 2 * spec.n_mamba_layers * (mamba_matmul_params(spec.mamba, D) + conv)
    return FlopsPerToken(
        attention_proj=2 * n_attention * attention_matmul_params(att, D, active=True),
        attention_scores=per_key * sum(keys_per_layer),
        dense_ffn=2
        * (spec.n_dense_layers * dense_ffn_params(spec) + n_moe * parallel_ffn_params(spec)),
        routed_experts=2 * n_moe * moe.top_k * expert_matmul if moe else 0,
        shared_experts=2 * n_moe * shared_expert_params(spec),
        router=2 * n_moe * moe.router_matrices * moe.n_experts * D if moe else 0,
        lm_head=2 * D * spec.vocab_size,
        mamba=mamba,
    )


def expert_flops_per_token(spec: ModelSpec) -> float:
    """Matmul FLOPs of one routed expert on one token: 2 x matrices x D x F."""
    moe = spec.moe
    return 0.0 if moe is None else 2.0 * moe.matrices * spec.d_model * moe.d_expert
