"""Loading published checkpoint layouts, checked against hand-built Hugging Face style blocks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moe_lab import MoEConfig
from moe_lab.checkpoints import load_moe_block, moe_config_from_hf


class HandMixtralExpert(nn.Module):
    """Mixtral's expert as published: w2(silu(w1 x) * w3 x), nn.Linear weights (out, in)."""

    def __init__(self, d_model, d_ff):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class HandMixtralBlock(nn.Module):
    """Mixtral's sparse MoE block: softmax over experts, top-k, renormalize, loop over experts."""

    def __init__(self, d_model, d_ff, n_experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(HandMixtralExpert(d_model, d_ff) for _ in range(n_experts))

    def forward(self, x):
        probs = F.softmax(self.gate(x), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for n in range(x.shape[0]):
            for k in range(self.top_k):
                y[n] += weights[n, k] * self.experts[int(chosen[n, k])](x[n])
        return y


def test_mixtral_block_reproduced():
    block = HandMixtralBlock(d_model=12, d_ff=20, n_experts=4, top_k=2)
    state = {f"model.layers.0.block_sparse_moe.{k}": v for k, v in block.state_dict().items()}
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(12, 12)  # ignored: other prefix
    hf = {
        "model_type": "mixtral",
        "hidden_size": 12,
        "intermediate_size": 20,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
    }
    layer = load_moe_block(
        state, moe_config_from_hf(hf), "mixtral", prefix="model.layers.0.block_sparse_moe."
    )
    x = torch.randn(9, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).y, block(x), rtol=1e-5, atol=1e-6)


def test_deepseek_v3_block_with_shared_experts_and_bias():
    d, f, e, k, n_shared = 8, 12, 6, 2, 1
    hf = {
        "model_type": "deepseek_v3",
        "hidden_size": d,
        "moe_intermediate_size": f,
        "n_routed_experts": e,
        "num_experts_per_tok": k,
        "n_shared_experts": n_shared,
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    }
    cfg = moe_config_from_hf(hf)
    assert cfg.router == "sigmoid_bias" and cfg.routed_scaling_factor == 2.5
    state = {"gate.weight": torch.randn(e, d), "gate.e_score_correction_bias": torch.randn(e)}
    for i in range(e):
        state[f"experts.{i}.gate_proj.weight"] = torch.randn(f, d)
        state[f"experts.{i}.up_proj.weight"] = torch.randn(f, d)
        state[f"experts.{i}.down_proj.weight"] = torch.randn(d, f)
    for name, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
        state[f"shared_experts.{name}.weight"] = torch.randn(*shape)
    layer = load_moe_block(state, cfg, "deepseek")
    x = torch.randn(5, d)
    # DeepSeek-V3's block by hand: sigmoid scores, selection with bias, weights without it.
    scores = torch.sigmoid(x @ state["gate.weight"].T)
    chosen = torch.topk(scores + state["gate.e_score_correction_bias"], k, dim=-1).indices
    weights = scores.gather(-1, chosen)
    weights = 2.5 * weights / weights.sum(-1, keepdim=True)

    def expert(prefix, v):
        g = v @ state[f"{prefix}.gate_proj.weight"].T
        return (F.silu(g) * (v @ state[f"{prefix}.up_proj.weight"].T)) @ state[
            f"{prefix}.down_proj.weight"
        ].T

    expected = torch.stack(
        [
            sum(weights[n, j] * expert(f"experts.{int(chosen[n, j])}", x[n]) for j in range(k))
            + expert("shared_experts", x[n])
            for n in range(5)
        ]
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(x).y, expected, rtol=1e-4, atol=1e-4)


def test_qwen2_moe_shared_expert_gate():
    hf = {
        "model_type": "qwen2_moe",
        "hidden_size": 8,
        "moe_intermediate_size": 12,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "shared_expert_intermediate_size": 24,
        "norm_topk_prob": False,
    }
    cfg = moe_config_from_hf(hf)
    assert (cfg.d_shared, cfg.shared_expert_gate, cfg.normalize_topk) == (24, True, False)
    state = {
        "gate.weight": torch.randn(4, 8),
        "shared_expert_gate.weight": torch.randn(1, 8),
        "shared_expert.gate_proj.weight": torch.randn(24, 8),
        "shared_expert.up_proj.weight": torch.randn(24, 8),
        "shared_expert.down_proj.weight": torch.randn(8, 24),
    }
    for i in range(4):
        state[f"experts.{i}.gate_proj.weight"] = torch.randn(12, 8)
        state[f"experts.{i}.up_proj.weight"] = torch.randn(12, 8)
        state[f"experts.{i}.down_proj.weight"] = torch.zeros(8, 12)  # silence routed experts
    layer = load_moe_block(state, cfg, "qwen_moe")
    x = torch.randn(3, 8)
    g = x @ state["shared_expert.gate_proj.weight"].T
    shared = (F.silu(g) * (x @ state["shared_expert.up_proj.weight"].T)) @ state[
        "shared_expert.down_proj.weight"
    ].T
    expected = torch.sigmoid(x @ state["shared_expert_gate.weight"].T) * shared
    with torch.no_grad():
        torch.testing.assert_close(layer(x).y, expected, rtol=1e-5, atol=1e-5)


def test_loader_errors_name_the_tensor():
    block = HandMixtralBlock(8, 12, 2, 1)
    cfg = MoEConfig(d_model=8, d_expert=12, n_experts=2, top_k=1)
    state = block.state_dict()
    del state["experts.1.w3.weight"]
    with pytest.raises(KeyError, match=r"experts.1.w3.weight"):
        load_moe_block(state, cfg, "mixtral")
    with pytest.raises(
        ValueError, match=r"'gate.weight' has shape \(2, 8\) but the config expects \(3, 8\)"
    ):
        load_moe_block(
            block.state_dict(), MoEConfig(d_model=8, d_expert=12, n_experts=3, top_k=1), "mixtral"
        )
    extra = dict(block.state_dict(), **{"experts.2.w1.weight": torch.zeros(12, 8)})
    with pytest.raises(ValueError, match="unused weights"):
        load_moe_block(extra, cfg, "mixtral")
    with pytest.raises(ValueError, match="layout='llama' is unknown"):
        load_moe_block(block.state_dict(), cfg, "llama")
    with pytest.raises(KeyError, match="num_local_experts, n_routed_experts, num_experts"):
        moe_config_from_hf({"model_type": "llama", "hidden_size": 8})


def test_qwen_config_resaved_with_num_local_experts():
    # transformers 5 re-saves a Qwen3-MoE config.json with num_local_experts (Mixtral's key) in
    # place of num_experts. The expert width must still come from moe_intermediate_size (768
    # here), not from intermediate_size (6144, the width of Qwen's dense FFN).
    original = {
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
    }
    resaved = {k: v for k, v in original.items() if k != "num_experts"}
    resaved["num_local_experts"] = 128
    cfg = moe_config_from_hf(resaved)
    assert (cfg.n_experts, cfg.d_expert) == (128, 768)
    assert cfg == moe_config_from_hf(original)
