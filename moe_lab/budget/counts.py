"""Total and active parameters, by component, under an explicit counting convention.

Every count is a closed-form product of the shapes in a ``ModelSpec``; nothing is estimated.
"Active" means the parameters one token's forward pass multiplies by: every shared component
plus K of the E routed experts in each MoE block. Labs disagree on whether the input embedding
(a table lookup, no multiplication) and the LM head count as active, and whether DeepSeek-V3's
multi-token-prediction module counts toward the total; ``CountConvention`` makes those choices
explicit, and ``moe_lab.budget.presets.LAB_CONVENTIONS`` records which one each lab used.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.budget.spec import AttentionSpec, MambaSpec, ModelSpec


@dataclass(frozen=True)
class CountConvention:
    """Which optional components a total or an active count includes.

    Args:
        name: short label for tables.
        active_includes_embedding: count the input embedding (and a learned position embedding)
            as active. A lookup reads one row and does no matmul, so many labs leave it out.
        active_includes_lm_head: count the LM head (a D x V matmul per token) as active. With tied
            embeddings the one matrix is counted once if either flag is set.
        total_includes_mtp: count multi-token-prediction modules (DeepSeek-V3 ships one, 11.5B
            parameters per its README_WEIGHTS.md, and excludes it from the 671B).
    """

    name: str = "all"
    active_includes_embedding: bool = True
    active_includes_lm_head: bool = True
    total_includes_mtp: bool = False


ALL_IN = CountConvention("embedding + head", True, True)
NO_EMBEDDING = CountConvention("head, no embedding", False, True)
NON_EMBEDDING = CountConvention("no embedding, no head", False, False)


# ----------------------------------------------------------------------------------------------
# Per-block counts (also used by the FLOP, memory and decode calculators)
# ----------------------------------------------------------------------------------------------


def attention_matmul_params(att: AttentionSpec, d_model: int, active: bool = False) -> int:
    """Weights of one attention block's projection matrices (what its matmuls multiply by).

    GQA: q (D, H*hd) + k, v (D, KV*hd) + o (H*hd, D).
    MLA (DeepSeek-V2 eq. (9)-(19)): queries D -> q_lora_rank -> H*(nope+rope) (or D -> H*(nope+rope)
    directly), keys/values D -> kv_lora_rank + rope (the cached latent and the shared RoPE key),
    then kv_lora_rank -> H*(nope + v), and o (H*v, D).
    Mixture of attention heads (JetMoE): E experts each with q (D, H/K*hd) and o (H/K*hd, D),
    shared k and v, and the router (E, D); ``active=True`` counts the K experts a token uses.
    """
    D, H = d_model, att.n_heads
    if att.kind == "mla":
        q_out = H * (att.qk_nope_head_dim + att.qk_rope_head_dim)
        q = D * q_out if att.q_lora_rank is None else D * att.q_lora_rank + att.q_lora_rank * q_out
        kv_a = D * (att.kv_lora_rank + att.qk_rope_head_dim)
        kv_b = att.kv_lora_rank * H * (att.qk_nope_head_dim + att.v_head_dim)
        return q + kv_a + kv_b + H * att.v_head_dim * D
    q_width, kv_width = H * att.head_dim, att.n_kv_heads * att.head_dim
    if att.n_experts > 1:
        per_expert = 2 * D * (q_width // att.top_k)  # q and o of one attention expert
        experts = att.top_k if active else att.n_experts
        return experts * per_expert + 2 * D * kv_width + att.n_experts * D
    return D * q_width + 2 * D * kv_width + q_width * D


def attention_other_params(att: AttentionSpec, d_model: int) -> int:
    """Biases and attention sinks of one attention block (no matmul, still parameters)."""
    q_width, kv_width = att.n_heads * att.head_dim, att.n_kv_heads * att.head_dim
    biases = (q_width + 2 * kv_width if att.qkv_bias else 0) + (d_model if att.o_bias else 0)
    moa_bias = d_model if att.n_experts > 1 else 0  # JetMoE's output bias
    return biases + moa_bias + (att.n_heads if att.sinks else 0)


def attention_norm_params(att: AttentionSpec) -> int:
    """Norm weights inside one attention block: qk-norms, MLA's latent norms."""
    if att.kind == "mla":
        return att.kv_lora_rank + (att.q_lora_rank or 0)
    if att.qk_norm == "head":
        return 2 * att.head_dim
    if att.qk_norm == "full":
        return (att.n_heads + att.n_kv_heads) * att.head_dim
    return 0


def mamba_matmul_params(mamba: MambaSpec, d_model: int) -> int:
    """Matmul weights of one Mamba mixer: in_proj, x_proj, dt_proj, out_proj (Mamba, Figure 3)."""
    inner = mamba.d_inner
    return (
        d_model * 2 * inner
        + inner * (mamba.dt_rank + 2 * mamba.d_state)
        + mamba.dt_rank * inner
        + inner * d_model
    )


def mamba_params(mamba: MambaSpec, d_model: int) -> int:
    """Every parameter of one Mamba mixer: the matmuls, the depthwise conv, A, D, the biases."""
    inner = mamba.d_inner
    conv = inner * mamba.d_conv + (inner if mamba.conv_bias else 0)
    biases = inner + (2 * inner + d_model if mamba.proj_bias else 0)  # dt_proj always has one
    norms = mamba.dt_rank + 2 * mamba.d_state if mamba.inner_norms else 0
    return (
        mamba_matmul_params(mamba, d_model) + conv + inner * mamba.d_state + inner + biases + norms
    )


def expert_params(spec: ModelSpec) -> int:
    """Parameters of one routed expert: matrices * D * F, plus 2F + D of biases (gpt-oss)."""
    moe = spec.moe
    if moe is None:
        return 0
    bias = (moe.matrices - 1) * moe.d_expert + spec.d_model if moe.expert_bias else 0
    return moe.matrices * spec.d_model * moe.d_expert + bias


def shared_expert_params(spec: ModelSpec) -> int:
    """Shared experts of one MoE block (one FFN of the total shared width) and their gate."""
    moe = spec.moe
    if moe is None or moe.shared_width == 0:
        return 0
    return moe.matrices * spec.d_model * moe.shared_width + (spec.d_model if moe.shared_gate else 0)


def router_params(spec: ModelSpec) -> int:
    """One router: (E, D) per matrix, a logit bias and a selection bias when present, and the
    block's output bias (JetMoE), which is always used like the router."""
    moe = spec.moe
    if moe is None:
        return 0
    E = moe.n_experts
    return (
        moe.router_matrices * E * spec.d_model
        + (E if moe.router_bias else 0)
        + (E if moe.score_bias else 0)
        + (spec.d_model if moe.output_bias else 0)
    )


def dense_ffn_params(spec: ModelSpec) -> int:
    """One dense FFN block: dense_matrices * D * d_ff (no biases in any supported family)."""
    return spec.dense_matrices * spec.d_model * spec.d_ff


def parallel_ffn_params(spec: ModelSpec) -> int:
    """The dense FFN beside one MoE block (Snowflake Arctic's residual MLP), SwiGLU."""
    return 3 * spec.d_model * spec.parallel_ffn_width


def moe_block_params(spec: ModelSpec) -> int:
    """One whole MoE block: E experts, shared experts and router."""
    assert spec.moe is not None
    return (
        spec.moe.n_experts * expert_params(spec) + shared_expert_params(spec) + router_params(spec)
    )


def attention_block_params(spec: ModelSpec) -> int:
    """One whole attention block: matrices, biases, sinks, inner norms (all experts' for MoA)."""
    att, D = spec.attention, spec.d_model
    return (
        attention_matmul_params(att, D)
        + attention_other_params(att, D)
        + attention_norm_params(att)
    )


# ----------------------------------------------------------------------------------------------
# Whole-model breakdown
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a whole model, by component (each summed over all blocks).

    ``total(convention)`` and ``active(convention)`` add them up; ``active_breakdown`` shows
    which part of each component one token uses.

    Attributes:
        embedding: token embedding (V, D).
        position_embedding: learned position embedding (T_max, D), 0 with RoPE.
        attention: attention projections, biases and sinks (inner norms are in ``norms``).
        dense_ffn: the dense FFN blocks.
        routed_experts: all E routed experts of all MoE blocks.
        shared_experts: shared experts and their gates.
        router: router matrices and biases.
        norms: block norms, the final norm, qk-norms and MLA latent norms.
        lm_head: the output projection (0 when tied) and its bias.
        mtp: multi-token-prediction modules (their embedding and head are shared, not here).
        mamba: the Mamba mixers of a hybrid model (Jamba), all active.
        routed_active_fraction: K/E, the share of routed-expert weights one token uses.
        mtp_active: parameters of the MTP modules one token uses.
        tied_embeddings: whether the head reuses the embedding matrix.
        attention_active: the attention parameters one token uses (less than ``attention`` only
            with a mixture of attention heads); ``None`` means all of them.
    """

    embedding: int
    position_embedding: int
    attention: int
    dense_ffn: int
    routed_experts: int
    shared_experts: int
    router: int
    norms: int
    lm_head: int
    mtp: int
    routed_active_fraction: float
    mtp_active: int
    tied_embeddings: bool
    mamba: int = 0
    attention_active: int | None = None

    COMPONENTS = (
        "embedding",
        "position_embedding",
        "attention",
        "dense_ffn",
        "routed_experts",
        "shared_experts",
        "router",
        "norms",
        "lm_head",
        "mtp",
        "mamba",
    )

    def total(self, convention: CountConvention = ALL_IN) -> int:
        """All stored parameters (MTP modules only if the convention says so)."""
        parts = self.total_breakdown(convention)
        return sum(parts.values())

    def total_breakdown(self, convention: CountConvention = ALL_IN) -> dict[str, int]:
        parts = {name: getattr(self, name) for name in self.COMPONENTS}
        if not convention.total_includes_mtp:
            parts["mtp"] = 0
        return parts

    def active_breakdown(self, convention: CountConvention = ALL_IN) -> dict[str, int]:
        """The parameters one token's forward pass uses, by component."""
        parts = {name: getattr(self, name) for name in self.COMPONENTS}
        # K of E equal-sized experts: the fraction is exact, the product an integer.
        parts["routed_experts"] = round(self.routed_experts * self.routed_active_fraction)
        if self.attention_active is not None:
            parts["attention"] = self.attention_active
        parts["mtp"] = self.mtp_active if convention.total_includes_mtp else 0
        if not convention.active_includes_embedding:
            parts["embedding"] = parts["position_embedding"] = 0
            if self.tied_embeddings and convention.active_includes_lm_head:
                parts["embedding"] = self.embedding  # the tied matrix still serves as the head
        if not convention.active_includes_lm_head:
            parts["lm_head"] = 0
        return parts

    def active(self, convention: CountConvention = ALL_IN) -> int:
        return sum(self.active_breakdown(convention).values())


def count_parameters(spec: ModelSpec) -> ParameterCounts:
    """Count a model's parameters by component.

    Reference: the parameter layouts of each family's Hugging Face modeling file (cited in
    ``moe_lab.budget.spec``); for the course's model, the ``ModelConfig`` docstring.

    Args:
        spec: the model (``from_hf_config`` or ``from_model_config``).

    Returns:
        A ``ParameterCounts``; ``.total()`` and ``.active(convention)`` give the headline numbers.

    Example:
        >>> counts = count_parameters(from_hf_config(PRESETS["Mixtral-8x7B"].config))  # doctest: +SKIP
        >>> round(counts.total() / 1e9, 1), round(counts.active() / 1e9, 1)  # doctest: +SKIP
        (46.7, 12.9)
    """
    D, V = spec.d_model, spec.vocab_size
    att = spec.attention
    n_moe, n_dense = spec.n_moe_layers, spec.n_dense_layers
    # Attention blocks: the self-attention of every attention block plus the decoder's
    # cross-attention of an encoder-decoder (same shape).
    n_attention = spec.n_attention_layers + spec.cross_attention_layers
    moe = spec.moe
    block_norms = spec.block_norms * spec.norm_params
    mtp, mtp_active = 0, 0
    if spec.mtp_layers:
        assert moe is not None, "multi-token prediction is modeled for DeepSeek-V3 MoE blocks"
        # DeepSeek-V3 README_WEIGHTS.md: enorm, hnorm, eh_proj (2D -> D), one full transformer
        # block, and shared_head's norm; embedding and head are shared with the main model.
        own = 3 * D + 2 * D * D + attention_block_params(spec) + block_norms
        mtp = spec.mtp_layers * (own + moe_block_params(spec))
        mtp_active = spec.mtp_layers * (
            own + moe.top_k * expert_params(spec) + shared_expert_params(spec) + router_params(spec)
        )
    attention_other = attention_other_params(att, D)
    attention = n_attention * (attention_matmul_params(att, D) + attention_other)
    attention_active = n_attention * (
        attention_matmul_params(att, D, active=True) + attention_other
    )
    norms = (
        spec.n_layers * block_norms
        + n_attention * attention_norm_params(att)
        + spec.cross_attention_layers * spec.norm_params  # the cross-attention's own norm
        + (n_moe * spec.norm_params if spec.parallel_ffn_width else 0)  # the parallel FFN's norm
        + spec.final_norms * spec.norm_params
    )
    return ParameterCounts(
        embedding=V * D,
        position_embedding=spec.max_position_embeddings * D + spec.position_bias_params,
        attention=attention,
        dense_ffn=n_dense * dense_ffn_params(spec) + n_moe * parallel_ffn_params(spec),
        routed_experts=n_moe * moe.n_experts * expert_params(spec) if moe else 0,
        shared_experts=n_moe * shared_expert_params(spec),
        router=n_moe * router_params(spec),
        norms=norms,
        lm_head=(0 if spec.tied_embeddings else V * D) + (V if spec.lm_head_bias else 0),
        mtp=mtp,
        routed_active_fraction=moe.top_k / moe.n_experts if moe else 0.0,
        mtp_active=mtp_active,
        tied_embeddings=spec.tied_embeddings,
        mamba=spec.n_mamba_layers * mamba_params(spec.mamba, D) if spec.mamba else 0,
        attention_active=attention_active if attention_active != attention else None,
    )
