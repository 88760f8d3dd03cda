"""A transformer described by the shapes that decide its cost, read from a config.

``ModelSpec`` is the one input of every calculator in ``moe_lab.budget``. It is built either from
a Hugging Face style ``config.json`` dict (``moe_lab.budget.hf_configs.from_hf_config``) or from
the course's own ``ModelConfig`` (``from_model_config`` below), and holds only what parameter,
FLOP and memory counts need: widths, head counts, which blocks are MoE, expert sizes, biases and
norms.

Shape alphabet: D model width, F expert width, E experts, K experts per token, V vocabulary,
H query heads, KV key/value heads, hd head width.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.config import ModelConfig


class ConfigError(ValueError):
    """A config cannot be read: unknown family or a missing field (named in the message)."""


@dataclass(frozen=True)
class AttentionSpec:
    """One attention block's projections.

    ``kind="gqa"``: multi-head / grouped-query attention, q (D, H*hd), k and v (D, KV*hd),
    o (H*hd, D). ``kind="mla"``: DeepSeek-V2 multi-head latent attention: queries through an
    optional low-rank ``q_lora_rank`` bottleneck, keys and values through the ``kv_lora_rank``
    latent that is the only thing cached (plus the decoupled RoPE key).

    Reference: DeepSeek-AI 2024, "DeepSeek-V2", section 2.1, eq. (9)-(19) for MLA.

    Args:
        kind: ``"gqa"`` or ``"mla"``.
        n_heads: H.
        n_kv_heads: KV (GQA); for MLA every head has its own decompressed key and value.
        head_dim: hd for GQA queries, keys and values.
        qkv_bias: biases on q, k, v (Qwen2, gpt-oss, Phi-3.5-MoE).
        o_bias: bias on the output projection (gpt-oss, Phi-3.5-MoE).
        qk_norm: ``"none"``, ``"head"`` (one hd-wide RMSNorm for q and one for k: Qwen3) or
            ``"full"`` (RMSNorm over all of q and all of k: OLMoE).
        sinks: one learned attention-sink logit per head (gpt-oss).
        q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA sizes;
            ``q_lora_rank=None`` means queries are projected directly (DeepSeek-V2-Lite).
        n_experts, top_k: a mixture of attention heads (JetMoE, after ModuleFormer): ``n_experts``
            experts each hold their own query and output projections for ``n_heads // top_k``
            heads, keys and values are shared, a router (E, D) picks ``top_k`` experts per token
            and a D-wide bias is added to the output. 1 and 1 for ordinary attention.
    """

    kind: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "none"
    sinks: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    n_experts: int = 1
    top_k: int = 1

    @property
    def qk_dim(self) -> int:
        """Width of one head's query-key dot product."""
        return (
            self.qk_nope_head_dim + self.qk_rope_head_dim if self.kind == "mla" else self.head_dim
        )

    @property
    def v_dim(self) -> int:
        """Width of one head's value."""
        return self.v_head_dim if self.kind == "mla" else self.head_dim

    @property
    def kv_cache_per_token(self) -> int:
        """Elements cached per token per layer: 2*KV*hd for GQA; kv_lora_rank + rope dim for MLA
        (DeepSeek-V2 Table 1: (d_c + d_h^R) per layer)."""
        if self.kind == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class MoESpec:
    """The routed (and shared) experts of one MoE block.

    Args:
        n_experts: E routed experts.
        top_k: K routed experts per token.
        d_expert: F, hidden width of one routed expert.
        matrices: 3 for SwiGLU experts (gate, up, down), 2 for GELU (up, down).
        expert_bias: biases inside each expert: 2F on gate/up and D on down (gpt-oss).
        shared_width: total hidden width of the always-on shared experts (0 = none).
        shared_gate: a (D -> 1) sigmoid gate on the shared output (Qwen2-MoE).
        router_matrices: (D, E) matrices in the router: 1, or 2 for noisy top-k (noise proj).
        router_bias: a bias of E on the router logits (gpt-oss).
        score_bias: a stored E-vector used only for selection (DeepSeek-V3's
            ``e_score_correction_bias``, updated by loss-free balancing, stored in the checkpoint).
        output_bias: a D-wide bias added to the block's output (JetMoE).
    """

    n_experts: int
    top_k: int
    d_expert: int
    matrices: int = 3
    expert_bias: bool = False
    shared_width: int = 0
    shared_gate: bool = False
    router_matrices: int = 1
    router_bias: bool = False
    score_bias: bool = False
    output_bias: bool = False


@dataclass(frozen=True)
class MambaSpec:
    """The Mamba (selective state space) mixer of the blocks that have no attention (Jamba).

    Parameters per block (Gu & Dao 2023, "Mamba", section 3 and Figure 3; transformers'
    ``JambaMambaMixer``): in_proj (D, 2 d_inner), a depthwise conv (d_inner, d_conv) with a bias,
    x_proj (d_inner, dt_rank + 2 d_state), dt_proj (dt_rank, d_inner) with a bias, A_log
    (d_inner, d_state), D (d_inner), out_proj (d_inner, D); Jamba adds RMSNorms on dt, B and C.

    Args:
        d_inner: expanded width (``mamba_expand * D``).
        d_state: state size per channel.
        d_conv: depthwise convolution width.
        dt_rank: rank of the time-step projection.
        conv_bias: a bias on the convolution.
        proj_bias: biases on in_proj and out_proj.
        inner_norms: Jamba's RMSNorms on dt (dt_rank), B and C (d_state each).
    """

    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    conv_bias: bool = True
    proj_bias: bool = False
    inner_norms: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Everything the budget calculators need to know about a transformer's shapes.

    Decoder-only models, hybrids with Mamba blocks (Jamba) and encoder-decoders (Switch
    Transformers: the encoder and decoder blocks in one ``moe_layers`` tuple, the decoder's
    cross-attention counted by ``cross_attention_layers``) share this one description.

    Args:
        name: label for tables and plots.
        family: the reader that built it (``"mixtral"``, ``"deepseek_v3"``, ``"moe_lab"``, ...).
        vocab_size: V.
        d_model: D.
        attention: the attention block (the same in every layer).
        moe: the MoE block, or ``None`` for a dense model.
        moe_layers: for each of the ``len(moe_layers)`` blocks, whether its FFN is the MoE block.
        d_ff: hidden width of the dense FFN blocks (0 when every block is MoE).
        dense_matrices: 3 (SwiGLU) or 2 (GELU) in the dense FFN blocks.
        norm_params: parameters of one norm layer: D (RMSNorm or bias-free LayerNorm) or 2D.
        tied_embeddings: the LM head reuses the token embedding (no extra parameters).
        lm_head_bias: a V-wide bias on the LM head (Phi-3.5-MoE).
        max_position_embeddings: rows of a learned position embedding (0 = RoPE, no params).
        attention_windows: per block, the most keys one query attends (sliding or chunked
            attention), ``None`` for global attention; ``()`` means global everywhere.
        mtp_layers: DeepSeek-V3 multi-token-prediction modules (each: two norms, a (2D, D)
            projection and one full MoE block; embedding and head shared with the main model).
        mamba: the Mamba mixer of blocks without attention (Jamba), or ``None``.
        attention_layers: per block, whether its mixer is attention (``False``: Mamba);
            ``()`` means attention in every block.
        cross_attention_layers: decoder blocks of an encoder-decoder, each with a second
            (cross-)attention block of the same shape and its own norm.
        position_bias_params: learned relative-position biases (T5 / Switch: buckets x heads
            in the first block of each stack), counted with the position embedding.
        parallel_ffn_width: hidden width of a dense FFN run in parallel with every MoE block,
            with its own norm (Snowflake Arctic's "dense-MoE hybrid" residual); 0 = none.
        block_norms: norms per block (2 in pre-norm blocks; Grok-1 has 4: before and after
            attention and the MoE).
        final_norms: norms after the last block (an encoder-decoder has one per stack).
    """

    name: str
    family: str
    vocab_size: int
    d_model: int
    attention: AttentionSpec
    moe: MoESpec | None
    moe_layers: tuple[bool, ...]
    d_ff: int = 0
    dense_matrices: int = 3
    norm_params: int = 0
    tied_embeddings: bool = False
    lm_head_bias: bool = False
    max_position_embeddings: int = 0
    attention_windows: tuple[int | None, ...] = ()
    mtp_layers: int = 0
    mamba: MambaSpec | None = None
    attention_layers: tuple[bool, ...] = ()
    cross_attention_layers: int = 0
    position_bias_params: int = 0
    parallel_ffn_width: int = 0
    block_norms: int = 2
    final_norms: int = 1

    @property
    def n_layers(self) -> int:
        return len(self.moe_layers)

    def has_attention(self, layer: int) -> bool:
        """Whether block ``layer`` mixes tokens with attention (else with Mamba)."""
        return self.attention_layers[layer] if self.attention_layers else True

    @property
    def n_attention_layers(self) -> int:
        return sum(self.has_attention(i) for i in range(self.n_layers))

    @property
    def n_mamba_layers(self) -> int:
        return self.n_layers - self.n_attention_layers

    @property
    def n_moe_layers(self) -> int:
        return sum(self.moe_layers)

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    def window(self, layer: int) -> int | None:
        """Keys one query may attend in block ``layer`` (``None``: all earlier tokens)."""
        return self.attention_windows[layer] if self.attention_windows else None


def from_model_config(config: ModelConfig, name: str = "moe_lab") -> ModelSpec:
    """Build a ``ModelSpec`` for the course's tiny LM from its ``ModelConfig``.

    Follows the layout fixed in the ``ModelConfig`` docstring: token embedding (V, D), learned
    position embedding (T_max, D), per block norm, fused qkv (D, 3D), output (D, D), norm, FFN
    (dense ``d_ff`` or the ``MoELayer`` of ``config.moe``), a final norm, LM head tied.

    Args:
        config: the course model's config.
        name: label for the spec.

    Returns:
        The model's ``ModelSpec``; its counts equal the instantiated module's exactly.
    """
    D = config.d_model
    moe = None
    if config.moe is not None:
        m = config.moe
        moe = MoESpec(
            n_experts=m.routed_experts,
            top_k=m.routed_top_k,
            d_expert=m.expert_width,
            matrices=3 if m.activation == "swiglu" else 2,
            shared_width=m.shared_width,
            shared_gate=m.shared_expert_gate,
            router_matrices=2 if m.router == "noisy_topk" else 1,
        )
    return ModelSpec(
        name=name,
        family="moe_lab",
        vocab_size=config.vocab_size,
        d_model=D,
        attention=AttentionSpec("gqa", config.n_heads, config.n_heads, D // config.n_heads),
        moe=moe,
        moe_layers=tuple(config.is_moe_layer(i) for i in range(config.n_layers)),
        d_ff=config.d_ff,
        dense_matrices=3 if config.activation == "swiglu" else 2,
        norm_params=D if config.norm == "rmsnorm" else 2 * D,
        tied_embeddings=True,
        max_position_embeddings=config.max_seq_len,
    )
