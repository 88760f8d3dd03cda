"""Explorer states: small frozen dataclasses that say everything an explorer shows.

A state can be built in code, applied to an explorer (``explorer.set_state``), stored as a dict
and replayed (``explorer.replay``), so a test drives exactly what a reader drives with sliders.
Each state turns itself into the ``MoEConfig`` the explorer computes with: the explorers hold
no routing logic of their own.

Taught in: notebooks/02_routing.ipynb (routing explorer), notebooks/03_load_balancing.ipynb
(capacity explorer).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from moe_lab.config import DROP_POLICIES, ROUTER_TYPES, MoEConfig, require

D_MODEL = 16  # D of the explorers' token vectors: small enough to recompute on every slider move
D_EXPERT = 32  # F of the capacity explorer's experts (only their zero/non-zero output matters)
TOP1_ROUTERS = ("switch", "hash")  # routers that send each token to exactly one expert


@dataclass(frozen=True)
class RoutingState:
    """What the routing explorer shows.

    Args:
        n_experts: E.
        top_k: K asked for; ``switch`` and ``hash`` always use 1 (see ``effective_top_k``).
        router: one of ``moe_lab.config.ROUTER_TYPES``.
        temperature: router logits are divided by it (``MoEConfig.router_temperature``).
        noise: std of the Gaussian noise ``noisy_topk`` adds to its logits; 0 = eval mode
            (no noise). Other routers ignore it.
        bias: selection-only bias given to expert ``bias_expert`` (``router.selection_bias``);
            ``expert_choice`` and ``hash`` ignore it.
        bias_expert: which expert gets the bias.
        capacity_factor: expert choice only: each expert takes C = ceil(cf * N * K / E) tokens.
        n_tokens: N.
        seed: seeds the tokens, the gate and the noise.
    """

    n_experts: int = 8
    top_k: int = 2
    router: str = "softmax_topk"
    temperature: float = 1.0
    noise: float = 0.0
    bias: float = 0.0
    bias_expert: int = 0
    capacity_factor: float = 1.0
    n_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_experts >= 1, f"n_experts={self.n_experts} must be >= 1")
        require(
            1 <= self.top_k <= self.n_experts,
            f"top_k={self.top_k} must be in [1, n_experts={self.n_experts}]: lower top_k or"
            " add experts",
        )
        require(
            self.router in ROUTER_TYPES,
            f"router={self.router!r} is unknown: choose one of {', '.join(ROUTER_TYPES)}",
        )
        require(self.temperature > 0, f"temperature={self.temperature} must be > 0")
        require(self.noise >= 0, f"noise={self.noise} must be >= 0 (0 turns the noise off)")
        require(
            0 <= self.bias_expert < self.n_experts,
            f"bias_expert={self.bias_expert} must be in [0, n_experts={self.n_experts})",
        )
        require(self.capacity_factor > 0, f"capacity_factor={self.capacity_factor} must be > 0")
        require(self.n_tokens >= 1, f"n_tokens={self.n_tokens} must be >= 1")

    @property
    def effective_top_k(self) -> int:
        """The K the router really uses: 1 for switch and hash, else ``top_k``."""
        return 1 if self.router in TOP1_ROUTERS else self.top_k

    def ignored_fields(self) -> dict[str, str]:
        """The fields this state's router does not use, each with the reason (for a reader).

        The explorer greys out their controls: moving them would change nothing.
        """
        ignored: dict[str, str] = {}
        if self.router in TOP1_ROUTERS:
            ignored["top_k"] = f"{self.router} sends every token to exactly one expert"
        if self.router == "hash":
            ignored["temperature"] = "hash routing does not use the gate's logits"
        if self.router != "noisy_topk":
            ignored["noise"] = "only noisy_topk adds noise"
        if self.router in ("expert_choice", "hash"):
            reason = f"{self.router} has no selection bias"
            ignored["bias"] = ignored["bias_expert"] = reason
        return ignored

    def config(self) -> MoEConfig:
        """The ``MoEConfig`` of the router this state shows."""
        return MoEConfig(
            d_model=D_MODEL,
            d_expert=D_EXPERT,
            n_experts=self.n_experts,
            top_k=self.effective_top_k,
            router=self.router,
            router_temperature=self.temperature,
            noise_std=self.noise if self.noise > 0 else None,
            capacity_factor=self.capacity_factor if self.router == "expert_choice" else None,
        )

    def replace(self, **changes: Any) -> RoutingState:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RoutingState:
        return cls(**values)


@dataclass(frozen=True)
class CapacityState:
    """What the capacity explorer shows.

    Args:
        capacity_factor: cf in C = ceil(cf * N * K / E) (``moe_lab.config.expert_capacity``).
            cf >= E / K can never drop: C >= N, and a token uses an expert at most once.
        top_k: K.
        skew: logit advantage of expert 0 over the middle expert (``toy.skew_offsets``).
        drop_policy: ``"position"`` or ``"probability"`` (``MoEConfig.drop_policy``).
        n_experts: E.
        n_tokens: N.
        seed: seeds the tokens and the gate.
    """

    capacity_factor: float = 1.0
    top_k: int = 2
    skew: float = 1.0
    drop_policy: str = "position"
    n_experts: int = 8
    n_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.capacity_factor) and self.capacity_factor > 0,
            f"capacity_factor={self.capacity_factor} must be > 0",
        )
        require(self.n_experts >= 1, f"n_experts={self.n_experts} must be >= 1")
        require(
            1 <= self.top_k <= self.n_experts,
            f"top_k={self.top_k} must be in [1, n_experts={self.n_experts}]: lower top_k or"
            " add experts",
        )
        require(self.skew >= 0, f"skew={self.skew} must be >= 0")
        require(
            self.drop_policy in DROP_POLICIES,
            f"drop_policy={self.drop_policy!r} is unknown: choose one of {', '.join(DROP_POLICIES)}",
        )
        require(self.n_tokens >= 1, f"n_tokens={self.n_tokens} must be >= 1")

    @property
    def capacity(self) -> int:
        """C, the assignments one expert accepts."""
        return self.config().capacity(self.n_tokens)

    def config(self) -> MoEConfig:
        """The ``MoEConfig`` of the layer this state shows (softmax top-k, capacity dispatch)."""
        return MoEConfig(
            d_model=D_MODEL,
            d_expert=D_EXPERT,
            n_experts=self.n_experts,
            top_k=self.top_k,
            router="softmax_topk",
            dispatch="capacity",
            capacity_factor=self.capacity_factor,
            drop_policy=self.drop_policy,
        )

    def replace(self, **changes: Any) -> CapacityState:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CapacityState:
        return cls(**values)
