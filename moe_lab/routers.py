"""Routers: from token vectors to (expert indices, combine weights).

Every router returns a ``RoutingResult`` with the same fields, so dispatch backends, losses and
the visualizer never need to know which router ran:

    indices (N, K) long    which experts each token's K slots go to
    weights (N, K) float   combine weights (what multiplies each expert's output)
    probs   (N, E) float   the router's full distribution over experts (for balancing losses)
    logits  (N, E) float   router scores before softmax/sigmoid, after dividing by the
                           temperature (the z-loss sees what the softmax sees)
    mask    (N, K) bool    which slots are real assignments (None: all are); expert choice
                           uses it, since a token may be chosen by 0..E experts

Taught in: notebooks/02_routing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.config import MoEConfig, expert_capacity
from moe_lab.group_routing import select_experts


@dataclass
class RoutingResult:
    """Routing decisions for N tokens; see the module docstring for the fields' shapes."""

    indices: torch.Tensor  # (N, K) long
    weights: torch.Tensor  # (N, K) float
    probs: torch.Tensor  # (N, E) float
    logits: torch.Tensor  # (N, E) float
    mask: torch.Tensor | None = None  # (N, K) bool, None = every slot is an assignment

    @property
    def n_experts(self) -> int:
        return self.probs.shape[-1]

    def valid_mask(self) -> torch.Tensor:
        """(N, K) bool: the mask, or all True."""
        if self.mask is None:
            return torch.ones_like(self.indices, dtype=torch.bool)
        return self.mask

    def tokens_per_expert(self) -> torch.Tensor:
        """(E,) long: how many assignments each expert received."""
        return expert_counts(self.indices, self.n_experts, self.mask)


def expert_counts(
    indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(E,) long: assignments per expert, counting only where ``mask`` (N, K) is True.

    A scatter-add rather than ``torch.bincount`` or boolean indexing: on CUDA both of those read
    a value back to the host (bincount its largest input, indexing its number of hits), which
    stalls the forward; this stays on the device.

    Shape: indices (N, K) -> (E,)
    """
    flat = indices.reshape(-1)  # (N*K,)
    ones = torch.ones_like(flat) if mask is None else mask.reshape(-1).long()  # (N*K,)
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, ones)


def softmax_over_experts(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last (expert) dimension of (N, E) logits, in float32.

    Computed as a softmax over dim 0 of the (E, N) transpose: for the expert-major logits of
    ``Router.compute_logits`` that reduces a strided dimension, torch's fast CPU path.
    """
    return logits.float().t().softmax(dim=0).t()  # (N, E) -> (E, N) -> (N, E)


class Router(nn.Module):
    """Base class: a linear gate ``logits = x W_g / temperature`` and a selection-only bias.

    The bias (a buffer, never trained by gradient) is added to the scores only to *choose*
    experts; combine weights come from the unbiased scores. It is zero unless loss-free
    balancing (``moe_lab.balancing.update_selection_bias``) or a loaded checkpoint sets it.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.n_experts = config.routed_experts
        self.top_k = config.routed_top_k
        self.temperature = config.router_temperature
        self.gate = nn.Linear(config.d_model, self.n_experts, bias=False)
        self.register_buffer("selection_bias", torch.zeros(self.n_experts))
        # DeepSeek's group limit (moe_lab.group_routing); "greedy" is plain top-K
        self.topk_method = config.topk_method
        self.n_group, self.topk_group = config.n_group, config.topk_group

    def select(self, selection_scores: torch.Tensor) -> torch.Tensor:
        """(N, E) selection scores -> (N, K) chosen experts, within the group limit if any."""
        return select_experts(
            selection_scores, self.top_k, self.topk_method, self.n_group, self.topk_group
        )

    def compute_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, E), stored expert-major: a transposed view of an (E, N) tensor.

        Same values as ``self.gate(x)``; only the memory layout differs, for speed on the CPU:
        ``W x^T`` is the cheaper product for a gate only E wide, and torch's softmax and
        logsumexp over a short innermost dimension (E = 8) run several times slower than over
        a strided one (``softmax_over_experts``).
        """
        logits = (self.gate.weight @ x.t()).t()  # (E, N) -> (N, E) view
        return logits if self.temperature == 1.0 else logits / self.temperature

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        raise NotImplementedError

    def extra_repr(self) -> str:
        limit = ""
        if self.topk_method != "greedy":
            limit = f", {self.topk_method}: top {self.topk_group} of {self.n_group} groups"
        return f"n_experts={self.n_experts}, top_k={self.top_k}{limit}"


class SoftmaxTopKRouter(Router):
    """Softmax over all E experts, then keep the top K (Mixtral; Switch and GShard for K=1, 2).

    With ``normalize_topk`` the K kept probabilities are rescaled to sum to 1 (Mixtral,
    ``norm_topk_prob=True`` in Qwen3-MoE); without it they keep their softmax values (Switch,
    Qwen1.5/2-MoE). For K >= 2 with renormalization this equals ``TopKSoftmaxRouter`` exactly:
    softmax is monotonic and the normalizer cancels. For K = 1 with renormalization the weight is
    exactly 1, so the language-model loss sends no gradient into the router.

    DeepSeek-V2 routes this way too, within its group limit (``topk_method=
    "group_limited_greedy"``, ``moe_lab.group_routing``), and multiplies the weights by its
    ``routed_scaling_factor`` (16 in DeepSeek-V2's config.json); 1.0 everywhere else.

    Reference: Fedus et al. 2021 (Switch), eq. (1)-(2); Jiang et al. 2024 (Mixtral), eq. (1);
    DeepSeek-AI 2024 (DeepSeek-V2), section 2.2.2.
    """

    def __init__(self, config: MoEConfig, normalize: bool | None = None) -> None:
        super().__init__(config)
        self.normalize = config.normalize_topk if normalize is None else normalize
        self.scaling = config.routed_scaling_factor

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        logits = self.compute_logits(x)  # (N, E)
        probs = softmax_over_experts(logits)  # (N, E)
        with torch.no_grad():  # selection: no gradient flows through the choice itself
            indices = self.select(probs + self.selection_bias)  # (N, K)
        weights = probs.gather(-1, indices)  # (N, K)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.scaling != 1.0:
            weights = weights * self.scaling
        return RoutingResult(indices, weights.to(x.dtype), probs, logits)


class TopKSoftmaxRouter(Router):
    """Top K of the logits, then softmax over only those K (Shazeer et al. 2017, eq. (3)-(5)).

    ``probs`` still reports the softmax over all E experts, which the balancing loss needs.
    """

    def route_logits(self, logits: torch.Tensor, selection_logits: torch.Tensor) -> RoutingResult:
        _, indices = torch.topk(
            selection_logits + self.selection_bias, self.top_k, dim=-1
        )  # (N, K)
        weights = selection_logits.gather(-1, indices).float().softmax(dim=-1)  # (N, K)
        probs = softmax_over_experts(logits)  # (N, E)
        return RoutingResult(indices, weights.to(logits.dtype), probs, logits)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        logits = self.compute_logits(x)  # (N, E)
        return self.route_logits(logits, logits)


class NoisyTopKRouter(TopKSoftmaxRouter):
    """Noisy top-K gating (Shazeer et al. 2017, eq. (3)-(5)).

    ``H(x) = x W_g + eps * softplus(x W_noise)``, eps ~ N(0, 1), only while training; then the top
    K of H get a softmax. ``W_noise`` starts at zero, so the noise std starts at softplus(0) =
    ln 2 for every token and is then learned. With ``config.noise_std`` set, the std is that
    constant instead (no ``W_noise``). In eval mode the noise is off and routing is
    deterministic. The noise helps exploration; it is not what balances the load (notebooks 02
    and 03 measure that).
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__(config)
        self.noise_std = config.noise_std
        self.noise = None
        if self.noise_std is None:
            self.noise = nn.Linear(config.d_model, self.n_experts, bias=False)
            nn.init.zeros_(self.noise.weight)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        logits = self.compute_logits(x)  # (N, E)
        noisy = logits
        if self.training:
            if self.noise is not None:
                noise_scale = F.softplus(self.noise(x))  # (N, E)
            else:
                noise_scale = self.noise_std
            eps = torch.randn(logits.shape, dtype=logits.dtype, device=logits.device)  # (N, E)
            noisy = logits + eps * noise_scale
        return self.route_logits(logits, noisy)


class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): each expert takes its top-C tokens by router probability.

    C = ceil(capacity_factor * N * K / E). Load is perfectly balanced by construction, but a token
    may be taken by several experts or by none. **Non-causal**: whether token t is chosen depends
    on the scores of every other token in the batch, later tokens of its own sequence included,
    so in a decoder the output at position t leaks information about positions > t (notebook 02
    demonstrates it). The model config refuses it for the language model.

    Slots: K = E, slot e holds expert e; ``mask[n, e]`` says whether expert e took token n.
    The selection bias is not used: every expert takes exactly C tokens, so there is no load
    imbalance for a bias to correct.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__(config)
        self.capacity_factor = config.capacity_factor

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        n_tokens = x.shape[0]
        logits = self.compute_logits(x)  # (N, E)
        probs = softmax_over_experts(logits)  # (N, E)
        capacity = min(
            n_tokens, expert_capacity(n_tokens, self.n_experts, self.top_k, self.capacity_factor)
        )
        _, chosen = torch.topk(probs.t(), capacity, dim=-1)  # (E, C) token ids per expert
        mask = torch.zeros(self.n_experts, n_tokens, dtype=torch.bool, device=x.device)
        mask.scatter_(1, chosen, True)  # (E, N)
        mask = mask.t().contiguous()  # (N, E)
        indices = torch.arange(self.n_experts, device=x.device).expand(n_tokens, -1)  # (N, E)
        weights = (probs * mask).to(x.dtype)  # (N, E)
        return RoutingResult(indices.contiguous(), weights, probs, logits, mask)


class HashRouter(Router):
    """Hash routing (Roller et al. 2021): expert = fixed hash of the token id, no learning.

    Uses Knuth's multiplicative hash ``(id * 2654435761) mod 2**32 mod E``; the combine weight is 1.
    ``probs`` is the one-hot choice, ``logits`` are zeros: nothing here is trained, and the
    gate matrix exists only so that every router has the same parameters layout.
    """

    KNUTH = 2654435761

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        if token_ids is None:
            raise ValueError("router='hash' routes by token id: pass token_ids=(B, T) or (N,)")
        token_ids = token_ids.reshape(-1)  # (B, T) -> (N,)
        if token_ids.shape[0] != x.shape[0]:
            raise ValueError(
                f"token_ids has {token_ids.shape[0]} entries but the input has {x.shape[0]} tokens"
            )
        expert = (token_ids.long() * self.KNUTH) % (2**32) % self.n_experts  # (N,)
        indices = expert[:, None]  # (N, 1)
        weights = torch.ones(indices.shape, dtype=x.dtype, device=x.device)  # (N, 1)
        probs = F.one_hot(expert, self.n_experts).float()  # (N, E)
        logits = torch.zeros_like(probs)
        return RoutingResult(indices, weights, probs, logits)


class SigmoidBiasRouter(Router):
    """DeepSeek-V3 routing: sigmoid affinities, selection-only bias, normalized weights.

    ``s = sigmoid(x W_g)``; experts = top-K of ``s + b`` (b: the bias, updated by loss-free
    balancing, never by gradient); ``w = s[chosen] / sum(s[chosen]) * routed_scaling_factor``.
    The bias changes which experts are chosen, never the weight an expert gets once chosen.
    ``probs`` holds ``s / sum_j s_j``, the normalized affinities DeepSeek-V3's sequence-wise
    balance loss uses.

    With ``topk_method="noaux_tc"`` the K experts come from the best ``topk_group`` of
    ``n_group`` groups, each scored by its two best biased scores (V3's node-limited routing,
    section 2.1.2; ``moe_lab.group_routing``).

    Reference: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", eq. (12)-(16), (17)-(20).
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__(config)
        self.normalize = config.normalize_topk
        self.scaling = config.routed_scaling_factor

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> RoutingResult:
        logits = self.compute_logits(x)  # (N, E)
        scores = logits.float().sigmoid()  # (N, E)
        indices = self.select(scores + self.selection_bias)  # (N, K)
        weights = scores.gather(-1, indices)  # (N, K), unbiased scores
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.scaling
        probs = scores / scores.sum(dim=-1, keepdim=True)  # (N, E)
        return RoutingResult(indices, weights.to(x.dtype), probs, logits)


def build_router(config: MoEConfig) -> Router:
    """The router named by ``config.router``."""
    if config.router == "softmax_topk":
        return SoftmaxTopKRouter(config)
    if config.router == "switch":
        return SoftmaxTopKRouter(config, normalize=False)
    if config.router == "topk_softmax":
        return TopKSoftmaxRouter(config)
    if config.router == "noisy_topk":
        return NoisyTopKRouter(config)
    if config.router == "expert_choice":
        return ExpertChoiceRouter(config)
    if config.router == "hash":
        return HashRouter(config)
    if config.router == "sigmoid_bias":
        return SigmoidBiasRouter(config)
    raise ValueError(f"router={config.router!r} is unknown")  # config validation prevents this
