"""The compute-budget calculator: parameters, FLOPs, memory and decode cost of MoE models.

    spec = from_hf_config(config_json_dict)        # or from_model_config(ModelConfig(...))
    counts = count_parameters(spec)                # by component
    counts.total(), counts.active(DEEPSEEK)        # under an explicit counting convention
    forward_flops_per_token(spec, context_len=4096)
    weight_bytes(spec, "bf16"), kv_cache_bytes(spec, 32768), training_state_bytes(spec)
    expected_experts_touched(E, K, B), decode_step_bytes(spec, B), all_to_all_bytes(spec, N, W)
    PRESETS["DeepSeek-V3"].counts()                # published models, with sources

Modules: ``spec`` (the model description), ``hf_configs`` and ``hf_families`` (reading
config.json; ``hf_fields`` their shared field readers), ``counts``, ``flops``, ``memory``,
``decode``, ``published`` (figures and lab conventions), ``presets`` and ``presets_more``.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from moe_lab.budget.counts import (
    ALL_IN,
    NO_EMBEDDING,
    NON_EMBEDDING,
    CountConvention,
    ParameterCounts,
    attention_block_params,
    count_parameters,
    dense_ffn_params,
    expert_params,
    moe_block_params,
    router_params,
    shared_expert_params,
)
from moe_lab.budget.decode import all_to_all_bytes, decode_step_bytes, expected_experts_touched
from moe_lab.budget.flops import (
    FlopsPerToken,
    expert_flops_per_token,
    forward_flops_per_token,
    training_flops_per_token,
)
from moe_lab.budget.hf_configs import SUPPORTED_MODEL_TYPES, from_hf_config
from moe_lab.budget.memory import (
    DTYPE_BYTES,
    activation_bytes,
    dtype_bytes,
    kv_cache_bytes,
    training_state_bytes,
    weight_bytes,
)
from moe_lab.budget.presets import PRESETS
from moe_lab.budget.published import LAB_CONVENTIONS, Preset, PublishedFigure
from moe_lab.budget.spec import (
    AttentionSpec,
    ConfigError,
    MambaSpec,
    ModelSpec,
    MoESpec,
    from_model_config,
)

__all__ = [
    "ALL_IN",
    "DTYPE_BYTES",
    "LAB_CONVENTIONS",
    "NON_EMBEDDING",
    "NO_EMBEDDING",
    "PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "AttentionSpec",
    "ConfigError",
    "CountConvention",
    "FlopsPerToken",
    "MambaSpec",
    "MoESpec",
    "ModelSpec",
    "ParameterCounts",
    "Preset",
    "PublishedFigure",
    "activation_bytes",
    "all_to_all_bytes",
    "attention_block_params",
    "count_parameters",
    "decode_step_bytes",
    "dense_ffn_params",
    "dtype_bytes",
    "expected_experts_touched",
    "expert_flops_per_token",
    "expert_params",
    "forward_flops_per_token",
    "from_hf_config",
    "from_model_config",
    "kv_cache_bytes",
    "moe_block_params",
    "router_params",
    "shared_expert_params",
    "training_flops_per_token",
    "training_state_bytes",
    "weight_bytes",
]
