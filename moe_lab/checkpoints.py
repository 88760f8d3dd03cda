"""Load one MoE block from a published checkpoint's state dict into a ``MoELayer``.

A reader holding real weights (Mixtral, Qwen-MoE, DeepSeek) can then inspect that block's routing
with the course's tools. Hugging Face stores each expert as separate ``nn.Linear`` modules whose
weights are (out, in); moe_lab stacks them as (E, D, F) / (E, F, D), hence the transposes.

    moe_lab name                 Mixtral                      Qwen2/3-MoE, DeepSeek-V2/V3
    router.gate.weight (E, D)    gate.weight                  gate.weight
    router.selection_bias (E,)   -                            gate.e_score_correction_bias (V3)
    experts.w_gate[i] (D, F)     experts.{i}.w1.weight.T      experts.{i}.gate_proj.weight.T
    experts.w_up[i]   (D, F)     experts.{i}.w3.weight.T      experts.{i}.up_proj.weight.T
    experts.w_down[i] (F, D)     experts.{i}.w2.weight.T      experts.{i}.down_proj.weight.T
    shared_experts.{gate,up,down}.weight   -                  shared_expert(s).{gate,up,down}_proj.weight
    shared_gate.weight (1, D)    -                            shared_expert_gate.weight (Qwen2-MoE)

Taught in: README (the name map); notebooks/02_routing.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from moe_lab.config import MoEConfig
from moe_lab.moe_layer import MoELayer

EXPERT_NAMES = {
    "mixtral": {"gate": "w1", "up": "w3", "down": "w2"},
    "qwen_moe": {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
    "deepseek": {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
}
SHARED_PREFIX = {"mixtral": None, "qwen_moe": "shared_expert", "deepseek": "shared_experts"}
LAYOUTS = tuple(EXPERT_NAMES)


def _take(state: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in state:
        raise KeyError(f"the state dict has no {key!r} (expected shape {shape})")
    tensor = state.pop(key)
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"{key!r} has shape {tuple(tensor.shape)} but the config expects {shape}:"
            " check d_model, d_expert, n_experts and n_shared_experts"
        )
    return tensor


def load_moe_block(
    state_dict: Mapping[str, torch.Tensor], config: MoEConfig, layout: str, prefix: str = ""
) -> MoELayer:
    """Build a ``MoELayer`` from ``config`` and fill it from a checkpoint's block weights.

    Args:
        state_dict: a state dict holding the block (other keys outside ``prefix`` are ignored).
        config: the matching ``MoEConfig`` (``moe_config_from_hf`` derives one from config.json).
        layout: ``"mixtral"``, ``"qwen_moe"`` or ``"deepseek"`` (see the module docstring).
        prefix: the block's key prefix, e.g. ``"model.layers.0.block_sparse_moe."`` (Mixtral) or
            ``"model.layers.3.mlp."`` (Qwen, DeepSeek).

    Returns:
        The filled ``MoELayer``. Missing keys, shape mismatches and unused keys under ``prefix``
        raise errors naming the tensor: nothing is silently left at its random initialization.
    """
    if layout not in EXPERT_NAMES:
        raise ValueError(f"layout={layout!r} is unknown: choose one of {', '.join(LAYOUTS)}")
    if config.expert_segments != 1:
        raise ValueError("checkpoints store experts unsegmented: use expert_segments=1")
    state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    layer = MoELayer(config)
    E, D, F = config.routed_experts, config.d_model, config.expert_width
    names = EXPERT_NAMES[layout]
    with torch.no_grad():
        layer.router.gate.weight.copy_(_take(state, "gate.weight", (E, D)))
        if "gate.e_score_correction_bias" in state:
            layer.router.selection_bias.copy_(_take(state, "gate.e_score_correction_bias", (E,)))
        for i in range(E):
            if layer.experts.w_gate is not None:
                layer.experts.w_gate[i].copy_(
                    _take(state, f"experts.{i}.{names['gate']}.weight", (F, D)).t()
                )
            layer.experts.w_up[i].copy_(
                _take(state, f"experts.{i}.{names['up']}.weight", (F, D)).t()
            )
            layer.experts.w_down[i].copy_(
                _take(state, f"experts.{i}.{names['down']}.weight", (D, F)).t()
            )
        if layer.shared_experts is not None:
            shared = SHARED_PREFIX[layout]
            if shared is None:
                raise ValueError(f"layout {layout!r} has no shared experts: set n_shared_experts=0")
            width = config.shared_width
            for ours, theirs, shape in (
                ("gate", "gate_proj", (width, D)),
                ("up", "up_proj", (width, D)),
                ("down", "down_proj", (D, width)),
            ):
                module = getattr(layer.shared_experts, ours)
                if module is not None:
                    module.weight.copy_(_take(state, f"{shared}.{theirs}.weight", shape))
        if layer.shared_gate is not None:
            layer.shared_gate.weight.copy_(_take(state, "shared_expert_gate.weight", (1, D)))
    if state:
        raise ValueError(
            f"unused weights under prefix {prefix!r}: {sorted(state)[:6]}: the config does not"
            " describe this block (shared experts? a shared-expert gate? another layout?)"
        )
    return layer


def deepseek_group_limit(hf_config: Mapping) -> dict:
    """``topk_method``, ``n_group``, ``topk_group`` of a DeepSeek-V2/V3 config.json, or {}.

    DeepSeek's own config.json files name the method (V2: ``group_limited_greedy``, V2-Lite:
    ``greedy``, V3: ``noaux_tc``). Hugging Face's ``DeepseekV3Config`` has no ``topk_method``:
    its model always applies V3's group limit, so a V3 config without the key gets ``noaux_tc``.
    """
    default = "noaux_tc" if hf_config.get("model_type") == "deepseek_v3" else "greedy"
    method = hf_config.get("topk_method") or default
    if method == "greedy":
        return {}
    n_group = hf_config.get("n_group") or 1
    return dict(
        topk_method=method, n_group=n_group, topk_group=hf_config.get("topk_group") or n_group
    )


def moe_config_from_hf(hf_config: Mapping, **overrides) -> MoEConfig:
    """An ``MoEConfig`` for one MoE block of a Hugging Face ``config.json`` (Mixtral, Qwen2-MoE,
    Qwen3-MoE, DeepSeek-V2/V3). ``overrides`` replace any derived field."""
    c = dict(hf_config)
    model_type = c.get("model_type", "")
    # transformers 5 re-saves a Qwen2/3-MoE config with num_local_experts instead of num_experts:
    # the expert width is then still moe_intermediate_size (intermediate_size is the dense width).
    if "num_local_experts" in c and "moe_intermediate_size" not in c:  # Mixtral
        fields = dict(
            n_experts=c["num_local_experts"],
            d_expert=c["intermediate_size"],
            router="softmax_topk",
            normalize_topk=True,
        )
    elif "n_routed_experts" in c:  # DeepSeek-V2/V3
        scoring = c.get("scoring_func", "softmax")
        fields = dict(
            n_experts=c["n_routed_experts"],
            d_expert=c["moe_intermediate_size"],
            router="sigmoid_bias" if scoring == "sigmoid" else "softmax_topk",
            normalize_topk=bool(c.get("norm_topk_prob", False)),
            n_shared_experts=c.get("n_shared_experts") or 0,
            routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
            **deepseek_group_limit(c),
        )
    elif "num_experts" in c or "num_local_experts" in c:  # Qwen2-MoE / Qwen3-MoE
        shared = c.get("shared_expert_intermediate_size") or 0
        fields = dict(
            n_experts=c["num_experts"] if "num_experts" in c else c["num_local_experts"],
            d_expert=c["moe_intermediate_size"],
            router="softmax_topk",
            normalize_topk=bool(c.get("norm_topk_prob", False)),
            n_shared_experts=1 if shared else 0,
            d_shared=shared or None,
            shared_expert_gate=bool(shared),
        )
    else:
        raise KeyError(
            f"config (model_type={model_type!r}) has none of num_local_experts, n_routed_experts,"
            " num_experts: not a Mixtral, Qwen-MoE or DeepSeek MoE config"
        )
    fields.update(d_model=c["hidden_size"], top_k=c["num_experts_per_tok"])
    fields.update(overrides)
    return MoEConfig(**fields)
