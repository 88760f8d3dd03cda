"""DeepSeek's group-limited routing against hand-derived cases, a per-token Python reference, and
(opt-in, where installed) the transformers library's DeepSeek-V2 and DeepSeek-V3 MoE blocks."""

import math

import pytest
import torch
import torch.nn.functional as F

from moe_lab import MoEConfig, MoELayer
from moe_lab.checkpoints import load_moe_block, moe_config_from_hf
from moe_lab.dispatch import get_backend
from moe_lab.group_routing import (
    expected_groups_touched,
    group_scores,
    groups_touched,
    select_experts,
)
from moe_lab.routers import build_router

# Eight experts in four groups of two: {0, 1}, {2, 3}, {4, 5}, {6, 7}.
HAND_SCORES = torch.tensor([[0.90, 0.05, 0.60, 0.55, 0.80, 0.10, 0.20, 0.15]])


def test_hand_computed_group_limited_choice():
    # Plain top-3: the three largest scores are 0.90 (e0), 0.80 (e4), 0.60 (e2): three groups.
    assert select_experts(HAND_SCORES, 3).tolist() == [[0, 4, 2]]
    # DeepSeek-V2 (group score = best expert): groups score 0.90, 0.60, 0.80, 0.20; the best two
    # groups are {0, 1} and {4, 5}; the top-3 of {0.90, 0.05, 0.80, 0.10} are e0, e4, e5.
    v2 = select_experts(HAND_SCORES, 3, "group_limited_greedy", n_group=4, topk_group=2)
    assert v2.tolist() == [[0, 4, 5]]
    # DeepSeek-V3 (group score = sum of the best two): 0.95, 1.15, 0.90, 0.35; the best two
    # groups are {2, 3} (1.15) and {0, 1} (0.95): group {4, 5} holds the second-best expert
    # (0.80) yet is excluded, and the top-3 of {0.90, 0.05, 0.60, 0.55} are e0, e2, e3.
    v3 = select_experts(HAND_SCORES, 3, "noaux_tc", n_group=4, topk_group=2)
    assert v3.tolist() == [[0, 2, 3]]
    torch.testing.assert_close(
        group_scores(HAND_SCORES, 4, "noaux_tc"), torch.tensor([[0.95, 1.15, 0.90, 0.35]])
    )
    # Each method's experts span exactly the 2 groups it chose; plain top-3 spans 3.
    assert [groups_touched(i, 8, 4).item() for i in (v2, v3)] == [2, 2]
    assert groups_touched(select_experts(HAND_SCORES, 3), 8, 4).item() == 3


def test_sigmoid_router_routes_the_hand_case_with_unbiased_weights():
    # Gate = identity and logits = logit(s), so the router's sigmoid scores are HAND_SCORES;
    # a bias of +0.3 on e5 lifts group {4, 5} to 0.80 + 0.40 = 1.20, the best group, and the
    # choice becomes {4, 5} and {2, 3}: top-3 of the biased 0.60, 0.55, 0.80, 0.40 = e4, e2, e3.
    cfg = MoEConfig(
        d_model=8, d_expert=4, n_experts=8, top_k=3, router="sigmoid_bias",
        topk_method="noaux_tc", n_group=4, topk_group=2, routed_scaling_factor=2.5,
    )  # fmt: skip
    router = build_router(cfg)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(8))
        router.selection_bias[5] = 0.3
    result = router(torch.logit(HAND_SCORES.double()).float())
    assert result.indices.tolist() == [[4, 2, 3]]
    # weights: the unbiased scores 0.80, 0.60, 0.55, normalized and times 2.5
    expected = torch.tensor([[0.80, 0.60, 0.55]]) / 1.95 * 2.5
    torch.testing.assert_close(result.weights, expected)


def reference_select(scores, top_k, method, n_group, topk_group):
    """The group-limited choice per token in plain Python (lists, sorted): the test's reference."""
    chosen = []
    for row in scores.tolist():
        size = len(row) // n_group
        groups = [row[g * size : (g + 1) * size] for g in range(n_group)]
        if method == "group_limited_greedy":
            group_score = [max(g) for g in groups]
        else:
            group_score = [sum(sorted(g, reverse=True)[:2]) for g in groups]
        best = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
        allowed = [e for g in best for e in range(g * size, (g + 1) * size)]
        chosen.append(sorted(allowed, key=lambda e: -row[e])[:top_k])
    return chosen


@pytest.mark.parametrize("method", ["group_limited_greedy", "noaux_tc"])
@pytest.mark.parametrize(
    ("n_experts", "n_group", "topk_group", "top_k"), [(16, 4, 2, 4), (12, 3, 1, 2), (32, 8, 4, 8)]
)
def test_select_experts_equals_a_per_token_reference(method, n_experts, n_group, topk_group, top_k):
    torch.manual_seed(3)
    scores = torch.rand(64, n_experts)  # distinct with probability 1: no ties to break
    ours = select_experts(scores, top_k, method, n_group, topk_group)
    assert ours.tolist() == reference_select(scores, top_k, method, n_group, topk_group)
    assert int(groups_touched(ours, n_experts, n_group).max()) <= topk_group


def test_groups_touched_counts_distinct_groups():
    indices = torch.tensor([[0, 1, 2, 3], [0, 4, 8, 12], [15, 14, 13, 12]])
    # groups of 4: {0..3} -> 1 group; 0, 4, 8, 12 -> 4 groups; 12..15 -> 1 group
    assert groups_touched(indices, 16, 4).tolist() == [1, 4, 1]


def test_expected_groups_touched_hand_case_and_sampling():
    # E=4 in G=2 groups of 2, K=2: a group is missed only if both experts come from the other
    # group, C(2, 2) / C(4, 2) = 1/6, so the mean is 2 * (1 - 1/6) = 5/3.
    assert math.isclose(expected_groups_touched(4, 2, 2), 5 / 3)
    # DeepSeek-V3's shape (256 experts, 8 groups, K=8) against uniformly random K-subsets.
    torch.manual_seed(0)
    subsets = torch.rand(20000, 256).argsort(dim=-1)[:, :8]  # (20000, 8) random 8-subsets
    sampled = groups_touched(subsets, 256, 8).float().mean().item()
    assert abs(sampled - expected_groups_touched(256, 8, 8)) < 0.03  # std of the mean ~0.006


def test_layer_with_group_limit_equals_naive_dispatch_and_limits_groups():
    cfg = MoEConfig(
        d_model=16, d_expert=8, n_experts=16, top_k=4, router="sigmoid_bias",
        topk_method="noaux_tc", n_group=4, topk_group=2, dispatch="naive",
    )  # fmt: skip
    layer = MoELayer(cfg)
    x = torch.randn(40, 16)
    ref = layer(x)
    assert int(groups_touched(ref.routing.indices, 16, 4).max()) <= 2
    unlimited = MoELayer(MoEConfig(**{**cfg.__dict__, "topk_method": "greedy", "topk_group": 4}))
    unlimited.load_state_dict(layer.state_dict())
    assert int(groups_touched(unlimited(x).routing.indices, 16, 4).max()) > 2
    layer.dispatch = get_backend("sorted")
    torch.testing.assert_close(layer(x).y, ref.y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_group": 3}, "n_group=3 does not divide the 8 routed experts"),
        ({"n_group": 4, "topk_group": 5}, "topk_group=5 > n_group=4"),
        ({"topk_method": "greedy", "n_group": 4, "topk_group": 2}, "limit the groups only with"),
        ({"router": "topk_softmax"}, "needs router 'softmax_topk'"),
        ({"top_k": 6, "n_group": 4, "topk_group": 2}, "cannot come from topk_group=2 groups of 2"),
        ({"n_group": 8, "topk_group": 4}, "groups of at least 2 experts"),
        ({"topk_method": "topk"}, "topk_method='topk' is unknown"),
    ],
)
def test_group_limit_config_errors_name_the_fix(overrides, message):
    base = dict(
        d_model=8, d_expert=4, n_experts=8, top_k=2, router="sigmoid_bias",
        topk_method="noaux_tc", n_group=4, topk_group=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{**base, **overrides})


DEEPSEEK_V3 = {  # deepseek-ai/DeepSeek-V3 config.json, routing fields; widths shrunk
    "model_type": "deepseek_v3",
    "hidden_size": 16,
    "moe_intermediate_size": 8,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "n_shared_experts": 1,
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
}
DEEPSEEK_V2 = {  # deepseek-ai/DeepSeek-V2 config.json, routing fields; widths shrunk
    "model_type": "deepseek_v2",
    "hidden_size": 16,
    "moe_intermediate_size": 8,
    "n_routed_experts": 160,
    "num_experts_per_tok": 6,
    "n_shared_experts": 2,
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "routed_scaling_factor": 16.0,
    "topk_method": "group_limited_greedy",
    "n_group": 8,
    "topk_group": 3,
}


def test_moe_config_from_hf_reads_the_group_limit():
    v3 = moe_config_from_hf(DEEPSEEK_V3)
    assert (v3.router, v3.topk_method, v3.n_group, v3.topk_group) == (
        "sigmoid_bias",
        "noaux_tc",
        8,
        4,
    )
    v2 = moe_config_from_hf(DEEPSEEK_V2)
    assert (v2.router, v2.topk_method, v2.n_group, v2.topk_group) == (
        "softmax_topk", "group_limited_greedy", 8, 3,
    )  # fmt: skip
    assert v2.routed_scaling_factor == 16.0
    # transformers' DeepseekV3Config has no topk_method key: its model always limits the groups
    saved_by_transformers = {k: v for k, v in DEEPSEEK_V3.items() if k != "topk_method"}
    assert moe_config_from_hf(saved_by_transformers).topk_method == "noaux_tc"
    # DeepSeek-V2-Lite: topk_method "greedy", n_group 1: no limit
    lite = {**DEEPSEEK_V2, "topk_method": "greedy", "n_group": 1, "topk_group": 1}
    assert moe_config_from_hf(lite).topk_method == "greedy"


def test_softmax_router_applies_deepseek_v2s_scaling_factor():
    # DeepSeek-V2 (norm_topk_prob false): weight = softmax probability * 16, not renormalized
    cfg = moe_config_from_hf(DEEPSEEK_V2, d_model=16)
    router = build_router(cfg)
    x = torch.randn(5, 16)
    result = router(x)
    probs = torch.softmax(x @ router.gate.weight.T, dim=-1)
    torch.testing.assert_close(result.weights, 16.0 * probs.gather(-1, result.indices))


# ---- the transformers library's blocks (opt-in: runs where transformers is installed) ----


def _tiny_hf(hf_module_config: dict) -> dict:
    """A small block with the same routing fields but 32 experts (8 groups of 4)."""
    return {**hf_module_config, "n_routed_experts": 32}


def _hf_block_state(block) -> dict:
    """A transformers MoE block's weights in the per-expert layout ``load_moe_block`` reads.

    transformers 5 stores the experts fused, ``experts.gate_up_proj`` (E, 2F, D) and
    ``experts.down_proj`` (E, D, F); earlier versions one ``nn.Linear`` per expert.
    """
    state = {k: v.detach().clone() for k, v in block.state_dict().items()}
    if "experts.gate_up_proj" in state:
        gate_up, down = state.pop("experts.gate_up_proj"), state.pop("experts.down_proj")
        gate, up = gate_up.chunk(2, dim=1)  # (E, 2F, D) -> 2 x (E, F, D)
        for i in range(gate_up.shape[0]):
            state[f"experts.{i}.gate_proj.weight"] = gate[i]
            state[f"experts.{i}.up_proj.weight"] = up[i]
            state[f"experts.{i}.down_proj.weight"] = down[i]
    return state


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_equals_the_transformers_deepseek_block(version):
    transformers = pytest.importorskip("transformers")
    hf = _tiny_hf(DEEPSEEK_V3 if version == "v3" else DEEPSEEK_V2)
    config_class = (
        transformers.DeepseekV3Config if version == "v3" else transformers.DeepseekV2Config
    )
    hf_config = config_class(
        **{k: v for k, v in hf.items() if k != "model_type"},
        intermediate_size=8, hidden_act="silu", num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    if version == "v3":
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE as Block
    else:
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe as Block
    torch.manual_seed(0)
    block = Block(hf_config).float()
    with torch.no_grad():
        for name, tensor in block.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * (0.5 if "gate" in name else 0.2))
        if version == "v3":  # a small positive bias: transformers masks with 0.0, we with -inf
            block.gate.e_score_correction_bias.copy_(torch.rand(32) * 0.1)
    layer = load_moe_block(_hf_block_state(block), moe_config_from_hf(hf), "deepseek")
    assert layer.config.topk_method == hf["topk_method"] and layer.config.n_group == 8
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        expected = block(x)
        ours = layer(x)
    torch.testing.assert_close(ours.y, expected, rtol=1e-4, atol=1e-5)
    # the limit did bind: without it, some token would have used more than topk_group groups
    plain = MoELayer(
        MoEConfig(**{**layer.config.__dict__, "topk_method": "greedy", "topk_group": 8})
    )
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert int(groups_touched(plain(x).routing.indices, 32, 8).max()) > hf["topk_group"]
        assert not torch.allclose(plain(x).y, expected, atol=1e-4)


def test_transformers_free_reference_of_the_v3_block():
    # The same check without transformers: the V3 block written out per token in this file.
    hf = _tiny_hf(DEEPSEEK_V3)
    cfg = moe_config_from_hf(hf)
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.selection_bias.copy_(torch.rand(32) * 0.1)
    x = torch.randn(30, 16)
    scores = torch.sigmoid(x @ layer.router.gate.weight.T)  # (N, E)
    chosen = torch.tensor(
        reference_select(scores + layer.router.selection_bias, 8, "noaux_tc", 8, 4)
    )  # (N, K)
    weights = scores.gather(-1, chosen)
    weights = 2.5 * weights / weights.sum(-1, keepdim=True)
    e = layer.experts

    def expert(i, v):
        return (F.silu(v @ e.w_gate[i]) * (v @ e.w_up[i])) @ e.w_down[i]

    with torch.no_grad():
        expected = torch.stack(
            [
                sum(weights[n, j] * expert(int(chosen[n, j]), x[n]) for j in range(8))
                for n in range(30)
            ]
        ) + layer.shared_experts(x)
        torch.testing.assert_close(layer(x).y, expected, rtol=1e-4, atol=1e-5)
