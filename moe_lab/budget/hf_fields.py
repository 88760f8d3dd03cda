"""Reading fields of a Hugging Face ``config.json`` dict, with errors that name what is missing.

Shared by the family readers in ``hf_configs`` and ``hf_families``.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from typing import Any

from moe_lab.budget.spec import AttentionSpec, ConfigError


def field(config: dict[str, Any], name: str, family: str) -> Any:
    """config[name], or a ConfigError naming the missing field and the family."""
    if name not in config or config[name] is None:
        raise ConfigError(
            f"config for model_type={family!r} is missing {name!r}: copy it from the model's"
            " config.json"
        )
    return config[name]


def integer(config: dict[str, Any], name: str, family: str) -> int:
    """config[name] as an integer >= 0 (a ConfigError names the field otherwise)."""
    value = field(config, name, family)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} in the {family!r} config must be an integer >= 0")
    return value


def first_integer(config: dict[str, Any], names: tuple[str, ...], family: str) -> int:
    """The first of ``names`` present in the config, as an integer.

    Libraries spell the same field differently (transformers 5 re-saves a Qwen3-MoE config with
    ``num_local_experts`` where the checkpoint's own config.json has ``num_experts``); a reader
    lists every spelling it accepts, and the error names them all.
    """
    for name in names:
        if config.get(name) is not None:
            return integer(config, name, family)
    raise ConfigError(
        f"config for model_type={family!r} has none of {', '.join(map(repr, names))}: copy one"
        " from the model's config.json"
    )


def gqa(config: dict[str, Any], family: str, **extra: Any) -> AttentionSpec:
    """Grouped-query attention from the usual Hugging Face fields."""
    heads = integer(config, "num_attention_heads", family)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or integer(config, "hidden_size", family) // heads
    return AttentionSpec("gqa", heads, kv_heads, head_dim, **extra)
