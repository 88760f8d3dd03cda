"""GShard's local groups (MoEConfig.capacity_groups): capacity counted per group of tokens."""

from dataclasses import replace

import pytest
import torch

from moe_lab import MoEConfig, MoELayer

# Two experts in two dimensions: token [1, 0] chooses expert 0, token [0, 1] expert 1 (top-1).
ROUTE_TO = {0: [4.0, 0.0], 1: [0.0, 4.0]}
CONFIG = MoEConfig(
    d_model=2, d_expert=4, n_experts=2, top_k=1, router="switch", capacity_factor=1.0
)


def layer_and_tokens(config: MoEConfig, experts: list[int]) -> tuple[MoELayer, torch.Tensor]:
    torch.manual_seed(0)
    layer = MoELayer(config)
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(2))
    x = torch.tensor([ROUTE_TO[e] for e in experts])  # (N, 2)
    return layer, x


@pytest.mark.parametrize("dispatch", ["naive", "capacity", "sorted"])
def test_groups_drop_by_hand(dispatch):
    # Tokens 0, 1, 3 choose expert 0, token 2 expert 1. cf = 1, K = 1, E = 2.
    # One group of 4: C = ceil(4 * 1 / 2) = 2, expert 0's queue is tokens 0, 1, 3: token 3 drops.
    # Two groups of 2: C = ceil(2 * 1 / 2) = 1 each; group {0, 1} keeps token 0 and drops token 1,
    # group {2, 3} sends one token to each expert and drops nothing.
    config = replace(CONFIG, dispatch=dispatch)
    layer, x = layer_and_tokens(config, [0, 0, 1, 0])
    assert layer(x).dropped[:, 0].tolist() == [False, False, False, True]
    layer.config = replace(config, capacity_groups=2)
    assert layer(x).dropped[:, 0].tolist() == [False, True, False, False]


@pytest.mark.parametrize("dispatch", ["naive", "capacity", "sorted"])
def test_each_group_equals_the_layer_on_that_group_alone(dispatch):
    # GShard's definition: every group is dispatched on its own, with capacity from its own size.
    config = MoEConfig(
        d_model=8, d_expert=16, n_experts=4, top_k=2, capacity_factor=0.75, dispatch=dispatch
    )
    torch.manual_seed(0)
    layer = MoELayer(config)
    x = torch.randn(3 * 10, 8)  # three groups of 10 tokens
    alone = [layer(part) for part in x.split(10)]
    layer.config = replace(config, capacity_groups=3)
    grouped = layer(x)
    torch.testing.assert_close(grouped.y, torch.cat([out.y for out in alone]))
    assert torch.equal(grouped.dropped, torch.cat([out.dropped for out in alone]))
    assert grouped.n_dropped > 0  # cf < 1 drops something: the comparison is not vacuous


def test_group_errors_name_the_fix():
    with pytest.raises(ValueError, match="capacity_groups=2 splits token-choice capacity"):
        MoEConfig(d_model=8, d_expert=8, capacity_groups=2)
    layer = MoELayer(replace(CONFIG, capacity_groups=3))
    with pytest.raises(ValueError, match="capacity_groups=3 does not divide the 4 tokens"):
        layer(torch.randn(4, 2))
