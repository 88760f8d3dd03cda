"""Configuration dataclasses: one frozen, validated config per thing.

Every field is checked in ``__post_init__``; an invalid value raises a ``ValueError`` whose
message names the fix (``top_k=3 > n_experts=2: lower top_k or add experts``). Sweeps use
``dataclasses.replace(config, field=value)``, which re-runs the validation.

Shape alphabet (see the package docstring): B batch, T sequence, N = B*T tokens, D model width,
F expert width, E experts, K experts per token, C capacity per expert, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROUTER_TYPES = (
    "softmax_topk",  # softmax over all experts, then top-k (Mixtral, Switch, GShard)
    "topk_softmax",  # top-k of the logits, then softmax over the k chosen (Shazeer et al. 2017)
    "noisy_topk",  # top-k of logits + learned Gaussian noise, then softmax (Shazeer et al. 2017)
    "switch",  # top-1 of softmax, combine weight = router probability (Fedus et al. 2021)
    "expert_choice",  # each expert takes its top-C tokens (Zhou et al. 2022); non-causal
    "hash",  # fixed function of the token id, no learned router (Roller et al. 2021)
    "sigmoid_bias",  # sigmoid scores, selection-only bias (DeepSeek-V3, Liu et al. 2024)
)
ACTIVATIONS = ("swiglu", "gelu")
DROP_POLICIES = ("position", "probability")
# How the top-K experts are chosen (Hugging Face's ``topk_method``): over all E experts, or inside
# the best ``topk_group`` of ``n_group`` expert groups, a group scored by its best expert
# (DeepSeek-V2) or by the sum of its two best bias-corrected scores (DeepSeek-V3).
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
GROUP_LIMITED_ROUTERS = ("softmax_topk", "sigmoid_bias")
SCALED_ROUTERS = ("softmax_topk", "switch", "sigmoid_bias")  # apply routed_scaling_factor


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: every config's validation step."""
    if not condition:
        raise ValueError(message)


def require_positive_ints(obj: object, *names: str) -> None:
    """Each named field of ``obj`` is an int >= 1 (a bool is not accepted as an int)."""
    for name in names:
        value = getattr(obj, name)
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{name}={value!r} must be a positive integer",
        )


@dataclass(frozen=True)
class MoEConfig:
    """Configuration of one Mixture-of-Experts FFN block.

    Args:
        d_model: D, the width of the token vectors entering and leaving the block.
        d_expert: F, the hidden width of one routed expert *before* fine-grained segmentation.
        n_experts: E before segmentation: the number of routed experts.
        top_k: K before segmentation: routed experts per token.
        router: one of ``ROUTER_TYPES``.
        normalize_topk: renormalize the K combine weights to sum to 1 (Mixtral, DeepSeek-V3).
            Ignored by ``topk_softmax``/``noisy_topk`` (already normalized) and ``switch`` (never).
        activation: ``"swiglu"`` (gate, up, down) or ``"gelu"`` (up, down).
        n_shared_experts: always-on experts (DeepSeekMoE); implemented as one dense FFN of width
            ``n_shared_experts * d_shared``, exactly as DeepSeek's checkpoints store them.
        d_shared: width of one shared expert; defaults to the routed expert width.
        shared_expert_gate: multiply the shared output by ``sigmoid(x @ w)`` (Qwen2-MoE).
        expert_segments: m, fine-grained segmentation (DeepSeekMoE, Dai et al. 2024): m times more
            experts, each 1/m as wide, and m times more chosen per token, so the active FLOPs stay.
        dispatch: name of a dispatch backend (``moe_lab.dispatch.BACKENDS``).
        capacity_factor: cf for the ``capacity`` backend and for expert choice:
            C = ceil(cf * N * K / E). ``None`` means dropless (required by dropless backends).
        drop_policy: which over-capacity assignments are dropped: ``"position"`` (all first
            choices before second choices, earlier tokens first) or ``"probability"`` (highest
            combine weight first; batch prioritized routing, Riquelme et al. 2021).
        capacity_groups: G, GShard's local groups: the N tokens are split into G equal
            contiguous groups, each with its own capacity C = ceil(cf * (N/G) * K / E) and its
            own drop queue (Lepikhin et al. 2020, section 2.2). 1 (default) counts capacity over
            the whole batch. Expert parallelism over W ranks drops per rank, which is G = W.
        aux_loss_weight: weight of the Switch/GShard load-balancing loss (0.01 in Switch).
        z_loss_weight: weight of the router z-loss (0.001 in ST-MoE).
        seq_aux_loss_weight: weight of DeepSeek-V3's sequence-wise balance loss (0.0001 there).
        bias_update_rate: u, the step of the loss-free balancing bias (0.001 in DeepSeek-V3);
            0 disables it.
        routed_scaling_factor: multiplies the routed combine weights (2.5 in DeepSeek-V3, 16 in
            DeepSeek-V2); applied by the ``softmax_topk``, ``switch`` and ``sigmoid_bias`` routers.
        router_temperature: logits are divided by it before softmax/sigmoid.
        noise_std: ``noisy_topk`` only: a fixed noise std for every token and expert; ``None``
            (default) learns it per token as ``softplus(x W_noise)`` (Shazeer et al. 2017).
        validate_inputs: check input dtype, width and finiteness on every forward. On CUDA the
            finiteness check reads one value on the host (a synchronization): set False for a
            forward without it.
        topk_method: one of ``TOPK_METHODS``: ``"greedy"`` (top-K over all experts),
            ``"group_limited_greedy"`` (DeepSeek-V2: the experts are split into ``n_group``
            contiguous groups, a group is scored by its best expert, and the top-K are chosen
            inside the best ``topk_group`` groups) or ``"noaux_tc"`` (DeepSeek-V3: the same, a
            group scored by the sum of its two best bias-corrected scores). With experts placed
            group by group on devices, a token's experts then live on at most ``topk_group``
            devices. See ``moe_lab.group_routing``.
        n_group: number of expert groups (DeepSeek-V2: 8, V3: 8); must divide the routed experts.
        topk_group: groups a token may use (DeepSeek-V2: 3, V3: 4).
    """

    d_model: int
    d_expert: int
    n_experts: int = 8
    top_k: int = 2
    router: str = "softmax_topk"
    normalize_topk: bool = True
    activation: str = "swiglu"
    n_shared_experts: int = 0
    d_shared: int | None = None
    shared_expert_gate: bool = False
    expert_segments: int = 1
    dispatch: str = "sorted"
    capacity_factor: float | None = None
    drop_policy: str = "position"
    capacity_groups: int = 1
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    seq_aux_loss_weight: float = 0.0
    bias_update_rate: float = 0.0
    routed_scaling_factor: float = 1.0
    router_temperature: float = 1.0
    noise_std: float | None = None
    validate_inputs: bool = True
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1

    def __post_init__(self) -> None:
        require_positive_ints(
            self, "d_model", "d_expert", "n_experts", "top_k", "expert_segments", "capacity_groups"
        )
        require(
            self.top_k <= self.n_experts,
            f"top_k={self.top_k} > n_experts={self.n_experts}: lower top_k or add experts",
        )
        require(
            self.router in ROUTER_TYPES,
            f"router={self.router!r} is unknown: choose one of {', '.join(ROUTER_TYPES)}",
        )
        require(
            self.activation in ACTIVATIONS,
            f"activation={self.activation!r} is unknown: choose one of {', '.join(ACTIVATIONS)}",
        )
        require(
            self.drop_policy in DROP_POLICIES,
            f"drop_policy={self.drop_policy!r} is unknown: choose one of {', '.join(DROP_POLICIES)}",
        )
        require(
            self.d_expert % self.expert_segments == 0,
            f"d_expert={self.d_expert} is not divisible by expert_segments={self.expert_segments}:"
            " choose a d_expert that is a multiple of expert_segments",
        )
        require(
            self.router != "switch" or self.top_k == 1,
            f"router='switch' routes each token to one expert but top_k={self.top_k}: set top_k=1",
        )
        require(
            self.router != "hash" or self.top_k == 1,
            f"router='hash' sends each token to one expert but top_k={self.top_k}: set top_k=1",
        )
        require(
            self.n_shared_experts >= 0,
            f"n_shared_experts={self.n_shared_experts} must be >= 0",
        )
        require(
            self.d_shared is None or self.d_shared >= 1,
            f"d_shared={self.d_shared} must be a positive integer or None",
        )
        require(
            not self.shared_expert_gate or self.n_shared_experts > 0,
            "shared_expert_gate=True needs n_shared_experts >= 1",
        )
        if self.capacity_factor is not None:
            require(
                math.isfinite(self.capacity_factor) and self.capacity_factor > 0,
                f"capacity_factor={self.capacity_factor} must be > 0 (1.0 = exactly the average"
                " load; 1.25 is Switch's default); use None for dropless routing",
            )
        require(
            self.dispatch != "capacity" or self.capacity_factor is not None,
            "dispatch='capacity' needs a capacity_factor (for example 1.25)",
        )
        require(
            self.capacity_groups == 1
            or (self.capacity_factor is not None and self.router != "expert_choice"),
            f"capacity_groups={self.capacity_groups} splits token-choice capacity into groups:"
            " set a capacity_factor and a token-choice router, or capacity_groups=1",
        )
        require(
            self.router != "expert_choice" or self.capacity_factor is not None,
            "router='expert_choice' needs a capacity_factor: each expert takes"
            " C = ceil(capacity_factor * N * top_k / n_experts) tokens",
        )
        for name in ("aux_loss_weight", "z_loss_weight", "seq_aux_loss_weight", "bias_update_rate"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name}={value} must be >= 0")
        require(
            self.router_temperature > 0,
            f"router_temperature={self.router_temperature} must be > 0",
        )
        require(
            self.noise_std is None or (math.isfinite(self.noise_std) and self.noise_std > 0),
            f"noise_std={self.noise_std} must be > 0, or None to learn the noise scale;"
            " evaluation mode turns the noise off",
        )
        require(
            self.routed_scaling_factor > 0,
            f"routed_scaling_factor={self.routed_scaling_factor} must be > 0",
        )
        require(
            self.routed_scaling_factor == 1.0 or self.router in SCALED_ROUTERS,
            f"routed_scaling_factor={self.routed_scaling_factor} is applied only by the routers"
            f" {', '.join(SCALED_ROUTERS)}: use one of them or leave it at 1.0",
        )
        self._check_group_limit()
        # The dispatch registry validates the backend name at layer construction (it imports
        # torch modules this file must not depend on).

    def _check_group_limit(self) -> None:
        """Validate ``topk_method``, ``n_group`` and ``topk_group`` (DeepSeek's group limit)."""
        require_positive_ints(self, "n_group", "topk_group")
        require(
            self.topk_method in TOPK_METHODS,
            f"topk_method={self.topk_method!r} is unknown: choose one of {', '.join(TOPK_METHODS)}",
        )
        experts = self.n_experts * self.expert_segments
        require(
            experts % self.n_group == 0,
            f"n_group={self.n_group} does not divide the {experts} routed experts:"
            " choose an n_group that divides n_experts * expert_segments",
        )
        require(
            self.topk_group <= self.n_group,
            f"topk_group={self.topk_group} > n_group={self.n_group}: lower topk_group",
        )
        if self.topk_method == "greedy":
            require(
                self.topk_group == self.n_group,
                f"n_group={self.n_group}, topk_group={self.topk_group} limit the groups only"
                " with topk_method='group_limited_greedy' or 'noaux_tc': set one of them, or"
                " topk_group=n_group for no limit",
            )
            return
        require(
            self.router in GROUP_LIMITED_ROUTERS,
            f"topk_method={self.topk_method!r} needs router 'softmax_topk' (DeepSeek-V2) or"
            f" 'sigmoid_bias' (DeepSeek-V3), got router={self.router!r}",
        )
        per_group = experts // self.n_group
        require(
            self.top_k * self.expert_segments <= self.topk_group * per_group,
            f"top_k={self.top_k * self.expert_segments} experts cannot come from"
            f" topk_group={self.topk_group} groups of {per_group}: raise topk_group",
        )
        require(
            self.topk_method != "noaux_tc" or per_group >= 2,
            "topk_method='noaux_tc' scores a group by its two best experts: use groups of at"
            f" least 2 experts (n_group <= {experts // 2})",
        )

    # Effective sizes after fine-grained segmentation: these are what the layer builds.
    @property
    def routed_experts(self) -> int:
        """E: the number of routed experts actually built (n_experts * expert_segments)."""
        return self.n_experts * self.expert_segments

    @property
    def routed_top_k(self) -> int:
        """K: the number of routed experts per token (top_k * expert_segments)."""
        return self.top_k * self.expert_segments

    @property
    def expert_width(self) -> int:
        """F: the hidden width of one routed expert (d_expert / expert_segments)."""
        return self.d_expert // self.expert_segments

    @property
    def shared_width(self) -> int:
        """Total hidden width of the shared experts (0 when there are none)."""
        return self.n_shared_experts * (self.d_shared or self.expert_width)

    def capacity(self, n_tokens: int) -> int:
        """C = ceil(cf * N * K / E): assignments one expert accepts (Switch eq. (3), GShard)."""
        if self.capacity_factor is None:
            raise ValueError("capacity() needs a capacity_factor; this config is dropless")
        return expert_capacity(
            n_tokens, self.routed_experts, self.routed_top_k, self.capacity_factor
        )


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor * N * K / E), at least 1.

    Reference: Fedus et al. 2021 (Switch Transformer), eq. (3), generalized to K choices as in
    GShard (Lepikhin et al. 2020): the average load per expert is N*K/E assignments.
    """
    require(capacity_factor > 0, f"capacity_factor={capacity_factor} must be > 0")
    # The small epsilon keeps 1.25 * 8 * 2 / 4 = 5.0 from rounding up to 6 through float error.
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts - 1e-9))


NORMS = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class ModelConfig:
    """Configuration of the course's tiny decoder-only language model (``moe_lab.model``).

    The parameter layout is fixed here so that ``moe_lab.budget`` can count it exactly:
    token embedding (V, D), learned position embedding (max_seq_len, D); per block a pre-norm
    (D weights, plus D biases for layernorm), fused q/k/v projection (D, 3D) and output
    projection (D, D), no attention biases, a second norm, then the FFN: a dense FFN of width
    ``d_ff`` or an ``MoELayer`` built from ``moe``; a final norm; the LM head is tied to the
    token embedding (no extra parameters).

    Args:
        vocab_size: V (256 for the byte-level tokenizer).
        d_model: D.
        n_layers: number of transformer blocks.
        n_heads: attention heads; must divide d_model.
        max_seq_len: T_max, the longest context (size of the position embedding).
        d_ff: hidden width of the dense FFN blocks.
        activation: FFN activation of the dense blocks (``"swiglu"`` or ``"gelu"``).
        moe: the MoE block config; ``None`` makes every block dense.
        moe_every: block i (0-based) is MoE when ``(i + 1) % moe_every == 0``: 1 = every block,
            2 = every other block (GShard, Switch).
        norm: ``"rmsnorm"`` or ``"layernorm"``.
        dropout: dropout probability on attention and residual branches.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_seq_len: int = 128
    d_ff: int = 512
    activation: str = "swiglu"
    moe: MoEConfig | None = None
    moe_every: int = 1
    norm: str = "rmsnorm"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require_positive_ints(
            self, "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "d_ff", "moe_every"
        )
        require(
            self.d_model % self.n_heads == 0,
            f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}:"
            " choose n_heads that divides d_model",
        )
        require(
            self.activation in ACTIVATIONS,
            f"activation={self.activation!r} is unknown: choose one of {', '.join(ACTIVATIONS)}",
        )
        require(
            self.norm in NORMS, f"norm={self.norm!r} is unknown: choose one of {', '.join(NORMS)}"
        )
        require(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        if self.moe is not None:
            require(
                self.moe.d_model == self.d_model,
                f"moe.d_model={self.moe.d_model} differs from d_model={self.d_model}:"
                " build the MoEConfig with d_model equal to the model's",
            )
            require(
                self.moe.router != "expert_choice",
                "router='expert_choice' lets a token's routing depend on later tokens, which"
                " leaks the future in a decoder: use a token-choice router in the language model",
            )

    def is_moe_layer(self, layer_index: int) -> bool:
        """Whether block ``layer_index`` (0-based) uses the MoE FFN."""
        return self.moe is not None and (layer_index + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))
