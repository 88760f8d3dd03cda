"""MoEConfig and ModelConfig validation: invalid values raise errors that name the fix."""

import dataclasses

import pytest

from moe_lab import ModelConfig, MoEConfig, expert_capacity


def test_top_k_above_n_experts_names_the_fix():
    with pytest.raises(ValueError, match=r"top_k=3 > n_experts=2: lower top_k or add experts"):
        MoEConfig(d_model=8, d_expert=16, n_experts=2, top_k=3)


@pytest.mark.parametrize("cf", [0.0, -1.0, float("nan"), float("inf")])
def test_capacity_factor_must_be_positive(cf):
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEConfig(d_model=8, d_expert=16, capacity_factor=cf)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("router", "softmax-topk", "router='softmax-topk' is unknown"),
        ("activation", "relu", "activation='relu' is unknown"),
        ("drop_policy", "random", "drop_policy='random' is unknown"),
        ("n_experts", 0, "n_experts=0 must be a positive integer"),
        ("d_model", 8.0, "d_model=8.0 must be a positive integer"),
        ("aux_loss_weight", -0.1, "aux_loss_weight=-0.1 must be >= 0"),
        ("router_temperature", 0.0, "router_temperature=0.0 must be > 0"),
    ],
)
def test_invalid_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{"d_model": 8, "d_expert": 16, field: value})


def test_router_specific_requirements():
    with pytest.raises(ValueError, match="set top_k=1"):
        MoEConfig(d_model=8, d_expert=16, router="switch", top_k=2)
    with pytest.raises(ValueError, match="needs a capacity_factor"):
        MoEConfig(d_model=8, d_expert=16, router="expert_choice")
    with pytest.raises(ValueError, match="needs a capacity_factor"):
        MoEConfig(d_model=8, d_expert=16, dispatch="capacity")
    with pytest.raises(ValueError, match="divisible by expert_segments=3"):
        MoEConfig(d_model=8, d_expert=16, expert_segments=3)


def test_replace_revalidates_and_config_is_frozen():
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3
    with pytest.raises(ValueError, match="top_k=5 > n_experts=4"):
        dataclasses.replace(cfg, top_k=5)


def test_fine_grained_segmentation_sizes():
    # DeepSeekMoE segmentation with m = 4: 4x the experts, 1/4 the width, 4x the choices, so
    # K * F (the active expert width per token) is unchanged: 2 * 64 == 8 * 16.
    cfg = MoEConfig(d_model=8, d_expert=64, n_experts=8, top_k=2, expert_segments=4)
    assert (cfg.routed_experts, cfg.routed_top_k, cfg.expert_width) == (32, 8, 16)
    assert cfg.routed_top_k * cfg.expert_width == cfg.top_k * cfg.d_expert


def test_capacity_formula():
    # C = ceil(cf * N * K / E): 1.25 * 10 * 2 / 4 = 6.25 -> 7; exactly 5.0 stays 5.
    assert expert_capacity(10, 4, 2, 1.25) == 7
    assert expert_capacity(8, 4, 2, 1.25) == 5
    assert (
        MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2, capacity_factor=1.0).capacity(6)
        == 3
    )


def test_model_config_checks_moe_width_and_causality():
    moe = MoEConfig(d_model=32, d_expert=64)
    with pytest.raises(ValueError, match=r"moe\.d_model=32 differs from d_model=64"):
        ModelConfig(d_model=64, moe=moe)
    ec = MoEConfig(d_model=32, d_expert=64, router="expert_choice", capacity_factor=1.0)
    with pytest.raises(ValueError, match="leaks the future"):
        ModelConfig(d_model=32, moe=ec)
    cfg = ModelConfig(d_model=32, n_layers=4, moe=moe, moe_every=2)
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert cfg.n_moe_layers == 2
