# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The dense FFN: the block that Mixture of Experts replaces
#
# **After this notebook you can**
# - write the transformer feed-forward network (FFN) with GELU and with SwiGLU from scratch, and check it against `moe_lab.DenseFFN`;
# - count its parameters and FLOPs by hand, and check both against counted parameters and PyTorch's FLOP counter;
# - say what share of a transformer's parameters sits in the FFN (GPT-2, Llama 2, Mixtral), and why that makes the FFN the block to make sparse;
# - show that a dense FFN already *is* a mixture of experts in which every token uses every expert: the bridge to notebook 02;
# - time a dense FFN, the baseline later notebooks compare MoE layers against.
#
# **Time**: about 25 minutes to read; the notebook runs in about 10 seconds on 2 CPU cores.
#
# Every checkable claim in the text is checked by an `assert` in the cell after it: if this notebook runs, its claims hold on your machine.
# Shapes use the course alphabet: `N` tokens, `D` model width, `F` hidden width of the FFN, `E` experts, `K` experts per token.

# %%
import math
import platform

import plotly
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import moe_lab
from moe_lab import DenseFFN, MoEConfig, MoELayer, RoutingResult
from moe_lab.bench.common import median, time_interleaved
from moe_lab.dispatch import dispatch_naive
from moe_lab.viz import line_figure

torch.manual_seed(0)
# The tensors here are small: one thread is as fast as two and keeps timings steady on a shared CPU.
torch.set_num_threads(1)
print(f"python {platform.python_version()} | torch {torch.__version__} | plotly {plotly.__version__}"
      f" | moe_lab {moe_lab.__version__} | torch threads {torch.get_num_threads()}")


# %% [markdown]
# ## 1. Where the FFN sits, and the one property MoE relies on
#
# A pre-norm transformer block has two halves:
#
# ```
# h   = x + Attention(norm(x))   # tokens exchange information across positions
# out = h + FFN(norm(h))         # every token is transformed on its own
# ```
#
# The FFN is **position-wise**: the same matrices are applied to every token, and no token's output depends on another token.
# That single property is what makes Mixture of Experts possible: if each token is processed on its own, each token can be processed by a *different* FFN.
#
# Two FFNs matter for this course:
#
# | | formula | weight matrices | used by |
# |---|---|---|---|
# | GELU | `y = gelu(x W_up) W_down` | 2: (D, F), (F, D) | GPT-2, BERT (the original transformer used ReLU) |
# | SwiGLU | `y = (silu(x W_gate) ⊙ (x W_up)) W_down` | 3: (D, F), (D, F), (F, D) | Llama, Mixtral, DeepSeek, Qwen |
#
# `gelu(a) = a·Φ(a)` with Φ the standard normal CDF (Hendrycks & Gimpel 2016); `silu(a) = a·σ(a)`.
# SwiGLU is from Shazeer (2020), "GLU Variants Improve Transformer", eq. (6): one projection goes through the activation and *gates* the other, elementwise.
# None of the models in this course uses biases in the FFN, and neither does `moe_lab`.
#
# ### From scratch
# Raw tensors only. Weights are stored as (in, out) so that the formulas read left to right.

# %%
def gelu(a: torch.Tensor) -> torch.Tensor:
    # Exact GELU: a * Phi(a), Phi the standard normal CDF.
    return 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0)))


def silu(a: torch.Tensor) -> torch.Tensor:
    # SiLU, also called Swish: a * sigmoid(a).
    return a * torch.sigmoid(a)


def gelu_ffn(x, w_up, w_down):
    # x (N, D), w_up (D, F), w_down (F, D) -> (N, D)
    return gelu(x @ w_up) @ w_down  # (N, F) -> (N, D)


def swiglu_ffn(x, w_gate, w_up, w_down):
    # x (N, D), w_gate and w_up (D, F), w_down (F, D) -> (N, D)
    hidden = silu(x @ w_gate) * (x @ w_up)  # (N, F): the activated gate scales the value
    return hidden @ w_down  # (N, F) -> (N, D)


# %% [markdown]
# Now the library's `DenseFFN`. `nn.Linear` stores its weight as (out, in), so `ffn.up.weight.T` is our (D, F) matrix `w_up`.
# **Claim**: the scratch functions and `moe_lab.DenseFFN` compute the same function, for both activations.

# %%
d_model, d_ff, n_tokens = 64, 256, 32
x = torch.randn(n_tokens, d_model)  # (N, D)
ffn_swiglu = DenseFFN(d_model, d_ff, activation="swiglu")
ffn_gelu = DenseFFN(d_model, d_ff, activation="gelu")
print(ffn_swiglu)

with torch.no_grad():
    ours_swiglu = swiglu_ffn(x, ffn_swiglu.gate.weight.T, ffn_swiglu.up.weight.T, ffn_swiglu.down.weight.T)
    ours_gelu = gelu_ffn(x, ffn_gelu.up.weight.T, ffn_gelu.down.weight.T)
    diff_swiglu = (ours_swiglu - ffn_swiglu(x)).abs().max().item()
    diff_gelu = (ours_gelu - ffn_gelu(x)).abs().max().item()
print(f"largest difference, scratch vs library: SwiGLU {diff_swiglu:.1e}, GELU {diff_gelu:.1e}")
assert diff_swiglu < 1e-6 and diff_gelu < 1e-6

# %% [markdown]
# ### Position-wise, checked
# **Claim**: changing one token's input changes that token's output and no other, bit for bit.

# %%
x_changed = x.clone()
x_changed[5] += 1.0  # perturb token 5 only
with torch.no_grad():
    change = (ffn_swiglu(x_changed) - ffn_swiglu(x)).abs().amax(dim=-1)  # (N,)
print("tokens whose output changed:", torch.nonzero(change).flatten().tolist())
others = torch.arange(n_tokens) != 5
assert change[5] > 0 and torch.all(change[others] == 0)

# %% [markdown]
# ### GELU, its tanh approximation, and SiLU
# GPT-2 was trained with the *tanh approximation* of GELU, `0.5·a·(1 + tanh(√(2/π)·(a + 0.044715·a³)))` (Hendrycks & Gimpel 2016), which PyTorch calls `F.gelu(a, approximate="tanh")`.
# Loading GPT-2 weights into a model with the exact GELU is a classic source of tiny mismatches.
# **Claim**: the two differ by less than 1e-3 anywhere (about 5e-4 at worst), while SiLU is a genuinely different function (at a = -1 it differs from GELU by about 0.11).

# %%
grid = torch.linspace(-6, 6, 2001)
curves = {
    "GELU (exact)": F.gelu(grid),
    "GELU (tanh approximation)": F.gelu(grid, approximate="tanh"),
    "SiLU": F.silu(grid),
    "ReLU": F.relu(grid),
}
line_figure(grid.tolist(), {name: y.tolist() for name, y in curves.items()},
            "FFN activations", "a", "activation(a)").show()

tanh_gap = (curves["GELU (exact)"] - curves["GELU (tanh approximation)"]).abs().max().item()
silu_gap_at_minus_1 = abs(F.silu(torch.tensor(-1.0)) - F.gelu(torch.tensor(-1.0))).item()
print(f"max |gelu - gelu_tanh| = {tanh_gap:.2e};  |silu(-1) - gelu(-1)| = {silu_gap_at_minus_1:.3f}")
assert torch.allclose(gelu(grid), curves["GELU (exact)"], atol=1e-6)  # our scratch gelu is exact
assert 1e-4 < tanh_gap < 1e-3
assert 0.10 < silu_gap_at_minus_1 < 0.12


# %% [markdown]
# ## 2. Parameters by hand
#
# Without biases, a GELU FFN has `2·D·F` parameters and a SwiGLU FFN `3·D·F`.
#
# **Myth: "SwiGLU costs 50% more than a GELU FFN."** Only at the same hidden width, which nobody uses.
# Shazeer (2020) shrinks the hidden width to keep parameters and FLOPs equal, and Llama (Touvron et al. 2023, section 2) writes "we use a dimension of 2/3·4d instead of 4d as in PaLM":
# with `F = (2/3)·4D = 8D/3`, a SwiGLU FFN has `3·D·8D/3 = 8D²` parameters, exactly those of a GELU FFN with `F = 4D` (`2·D·4D`).
# Llama then rounds the width up to a multiple of 256: for `D = 4096`, `8·4096/3 = 10922.7` becomes `11008`, the `intermediate_size` in the Llama-2-7B configuration.
#
# **Claims**: the formulas equal the parameters counted on `DenseFFN`; SwiGLU at `8D/3` matches GELU at `4D`; the rounding gives 11008.
# The modules are built on PyTorch's `meta` device, which records shapes without allocating memory.

# %%
def ffn_params(d_model: int, d_ff: int, activation: str) -> int:
    # Bias-free FFN: three (D, F)-sized matrices for SwiGLU, two for GELU.
    return (3 if activation == "swiglu" else 2) * d_model * d_ff


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


for d, f, activation in [(64, 256, "gelu"), (64, 256, "swiglu"), (768, 3072, "gelu"), (4096, 11008, "swiglu")]:
    with torch.device("meta"):
        counted = count(DenseFFN(d, f, activation))
    print(f"D={d:5d} F={f:6d} {activation:6s}: formula {ffn_params(d, f, activation):>11,}  counted {counted:>11,}")
    assert counted == ffn_params(d, f, activation)

d = 768
assert ffn_params(d, 4 * d, "gelu") == ffn_params(d, 8 * d // 3, "swiglu") == 8 * d * d  # 8*768/3 = 2048
llama_width = 256 * math.ceil((2 / 3) * 4 * 4096 / 256)
print("Llama rounding of 8*4096/3 = 10922.7 up to a multiple of 256:", llama_width)
assert llama_width == 11008

# %% [markdown]
# ## 3. FLOPs by hand
#
# A matrix product (N, D) @ (D, F) does N·D·F multiply-adds, that is `2·N·D·F` floating-point operations.
# - SwiGLU forward: three such products, `6·N·D·F` FLOPs, which is `2 × parameters` per token.
# - GELU forward: two products, `4·N·D·F` FLOPs, again `2 × parameters` per token.
# - The activation and the gate product cost O(N·F), about 1/D of the matrix products; by convention they are not counted (PyTorch's counter counts matrix products only).
# - Backward: every forward product needs two products of the same size (the gradient for the input and the one for the weight), so backward is `2 ×` forward, and a training step costs `6 × parameters` FLOPs per token (Kaplan et al. 2020, section 2.1).
#
# **Claims**, checked with `torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of every matrix product that actually runs: forward = `6NDF` (SwiGLU) and `4NDF` (GELU) = `2 × parameters × N`; backward = `2 ×` forward.

# %%
n_tokens = 100
for activation, products in (("swiglu", 3), ("gelu", 2)):
    ffn = DenseFFN(d_model, d_ff, activation)
    tokens = torch.randn(n_tokens, d_model, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = ffn(tokens)
    forward_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    backward_flops = counter.get_total_flops()
    print(f"{activation:6s}: forward {forward_flops:,} FLOPs, backward {backward_flops:,} FLOPs")
    assert forward_flops == 2 * products * n_tokens * d_model * d_ff == 2 * count(ffn) * n_tokens
    assert backward_flops == 2 * forward_flops


# %% [markdown]
# ## 4. Where a transformer's parameters are
#
# **Myth: "a transformer is mostly attention."** By parameters it is mostly FFN, plus embeddings in small models.
# Per layer of width D, attention holds `4D²` (the Q, K, V and output projections) and an FFN of width 4D holds `8D²`: two thirds of the layer.
# We count three real architectures from their published configurations (the Hugging Face `config.json` of each model card), by formula and by building their parameter layout on the `meta` device, which costs no memory even for 47 billion parameters:
#
# | model | vocabulary | D | F | layers | attention | FFN |
# |---|---|---|---|---|---|---|
# | GPT-2 small (Radford et al. 2019) | 50257 | 768 | 3072 | 12 | 12 heads, biases, LayerNorm, 1024 positions | GELU, biases |
# | Llama-2-7B (Touvron et al. 2023) | 32000 | 4096 | 11008 | 32 | 32 heads, RMSNorm, untied output head | SwiGLU |
# | Mixtral-8x7B (Jiang et al. 2024) | 32000 | 4096 | 14336 | 32 | 32 query heads, 8 key-value heads of 128 | 8 SwiGLU experts, top-2 |
#
# The Mixtral FFN is built with `moe_lab.MoELayer` itself.
# **Claims**: the formulas below equal the counts: 124,439,808 for GPT-2 small (the figure Hugging Face reports), 6,738,415,616 for Llama-2-7B, and 46,702,792,704 for Mixtral (Mistral AI announced "46.7B total parameters").
# The FFN holds 45.5% of GPT-2 small (66.6% of its non-embedding parameters), 64.2% of Llama-2-7B and 96.6% of Mixtral-8x7B.

# %%
def gpt2_layout(vocab=50257, context=1024, d=768, n_layers=12) -> nn.Module:
    # GPT-2's parameters under Hugging Face's names; no forward, for counting only.
    def block():
        return nn.ModuleDict({
            "ln_1": nn.LayerNorm(d), "c_attn": nn.Linear(d, 3 * d), "c_proj": nn.Linear(d, d),
            "ln_2": nn.LayerNorm(d),
            "mlp": nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)}),
        })
    return nn.ModuleDict({
        "wte": nn.Embedding(vocab, d), "wpe": nn.Embedding(context, d),
        "h": nn.ModuleList(block() for _ in range(n_layers)), "ln_f": nn.LayerNorm(d),
    })  # the output head is tied to wte: no extra parameters


def llama_layout(make_mlp, vocab=32000, d=4096, n_layers=32, n_kv_heads=32, head_dim=128) -> nn.Module:
    # Llama / Mixtral parameters under Hugging Face's names; make_mlp() builds each layer's FFN.
    kv = n_kv_heads * head_dim
    def block():
        return nn.ModuleDict({
            "q_proj": nn.Linear(d, d, bias=False), "k_proj": nn.Linear(d, kv, bias=False),
            "v_proj": nn.Linear(d, kv, bias=False), "o_proj": nn.Linear(d, d, bias=False),
            "input_layernorm": nn.RMSNorm(d), "post_attention_layernorm": nn.RMSNorm(d),
            "mlp": make_mlp(),
        })
    return nn.ModuleDict({
        "embed_tokens": nn.Embedding(vocab, d), "layers": nn.ModuleList(block() for _ in range(n_layers)),
        "norm": nn.RMSNorm(d), "lm_head": nn.Linear(d, vocab, bias=False),
    })


def counted_shares(model: nn.Module, embedding_names: tuple[str, ...]) -> dict[str, int]:
    # Parameters by role: 'ffn' = every module named mlp; embeddings; the rest is attention + norms.
    ffn = sum(count(m) for name, m in model.named_modules() if name.endswith("mlp"))
    embeddings = sum(count(getattr(model, name)) for name in embedding_names)
    total = count(model)
    return {"total": total, "ffn": ffn, "embeddings": embeddings, "attention and norms": total - ffn - embeddings}


with torch.device("meta"):
    gpt2 = counted_shares(gpt2_layout(), ("wte", "wpe"))
    llama = counted_shares(llama_layout(lambda: DenseFFN(4096, 11008, "swiglu")), ("embed_tokens", "lm_head"))
    mixtral = counted_shares(
        llama_layout(lambda: MoELayer(MoEConfig(d_model=4096, d_expert=14336, n_experts=8, top_k=2)), n_kv_heads=8),
        ("embed_tokens", "lm_head"),
    )

# The same numbers by formula. D: width, F: FFN width, L: layers, V: vocabulary.
V, T, D, L = 50257, 1024, 768, 12
gpt2_ffn = L * (D * 4 * D + 4 * D + 4 * D * D + D)  # c_fc and c_proj with biases
gpt2_total = V * D + T * D + L * ((3 * D * D + 3 * D) + (D * D + D) + 2 * 2 * D) + gpt2_ffn + 2 * D
V, D, F_, L = 32000, 4096, 11008, 32
llama_ffn = L * 3 * D * F_
llama_total = 2 * V * D + L * (4 * D * D + 2 * D) + llama_ffn + D
E, F_, kv = 8, 14336, 8 * 128
mixtral_ffn = L * (E * 3 * D * F_ + D * E)  # 8 experts and the router's (D, E) gate
mixtral_total = 2 * V * D + L * (2 * D * D + 2 * D * kv + 2 * D) + mixtral_ffn + D

for name, counted, total, ffn in (("GPT-2 small", gpt2, gpt2_total, gpt2_ffn),
                                  ("Llama-2-7B", llama, llama_total, llama_ffn),
                                  ("Mixtral-8x7B", mixtral, mixtral_total, mixtral_ffn)):
    print(f"{name:13s} total {counted['total']:>14,}  FFN {counted['ffn']:>14,} = {counted['ffn'] / counted['total']:.1%}")
    assert counted["total"] == total and counted["ffn"] == ffn

gpt2_non_embedding_share = gpt2["ffn"] / (gpt2["total"] - gpt2["embeddings"])
print(f"GPT-2 small: FFN share of the non-embedding parameters {gpt2_non_embedding_share:.1%}")
assert gpt2["total"] == 124_439_808 and llama["total"] == 6_738_415_616 and mixtral["total"] == 46_702_792_704
assert round(gpt2["ffn"] / gpt2["total"], 3) == 0.455 and round(gpt2_non_embedding_share, 3) == 0.666
assert round(llama["ffn"] / llama["total"], 3) == 0.642
assert round(mixtral["ffn"] / mixtral["total"], 3) == 0.966

# %%
roles = ("ffn", "attention and norms", "embeddings")
models = {"GPT-2 small": gpt2, "Llama-2-7B": llama, "Mixtral-8x7B": mixtral}
figure = go.Figure([
    go.Bar(name=role, x=list(models), y=[shares[role] / shares["total"] for shares in models.values()])
    for role in roles
])
figure.update_layout(barmode="stack", title="Share of parameters by role", yaxis_tickformat=".0%", height=380)
figure.show()

# %% [markdown]
# Replace the FFN by 8 experts and it holds 96.6% of Mixtral; a token, though, uses only 2 of the 8. Notebook 06 counts *active* parameters and reconciles them with the model cards.
#
# ## 5. A dense FFN is already a mixture of experts
#
# The hidden units of an FFN never interact: `y = Σ_j act_j(x) · W_down[j]` with one term per hidden unit j.
# Split the F hidden units into E contiguous blocks of F/E: each block is a small FFN, an *expert*, and the dense FFN is the **sum of all E experts' outputs, each with weight 1**.
# A Mixture-of-Experts layer changes two things: a router picks only K of the E experts for each token, and weights their outputs by its scores.
# (DeepSeekMoE's *fine-grained* experts are exactly such slices of a wider FFN; Dai et al. 2024.)
#
# **Claim**: put the blocks of a `DenseFFN` into `moe_lab`'s stacked expert weights, send every token to all E experts with weight 1 through the reference dispatch, and you get the dense FFN's output.

# %%
d_model, d_ff, n_experts, n_tokens = 64, 256, 8, 16
width = d_ff // n_experts  # F/E hidden units per expert
dense = DenseFFN(d_model, d_ff, "swiglu")
layer = MoELayer(MoEConfig(d_model=d_model, d_expert=width, n_experts=n_experts, top_k=n_experts))
with torch.no_grad():
    # (F, D) Linear weights -> (D, F) -> (D, E, F/E) -> (E, D, F/E): expert e gets hidden units [e*F/E, (e+1)*F/E)
    layer.experts.w_gate.copy_(dense.gate.weight.T.reshape(d_model, n_experts, width).transpose(0, 1))
    layer.experts.w_up.copy_(dense.up.weight.T.reshape(d_model, n_experts, width).transpose(0, 1))
    layer.experts.w_down.copy_(dense.down.weight.T.reshape(n_experts, width, d_model))  # (F, D) -> (E, F/E, D)

tokens = torch.randn(n_tokens, d_model)
every_expert = RoutingResult(
    indices=torch.arange(n_experts).expand(n_tokens, -1),  # (N, E): slot e holds expert e
    weights=torch.ones(n_tokens, n_experts),  # weight 1 for every expert
    probs=torch.full((n_tokens, n_experts), 1 / n_experts),
    logits=torch.zeros(n_tokens, n_experts),
)
with torch.no_grad():
    gap = (dispatch_naive(tokens, every_expert, layer.experts).y - dense(tokens)).abs().max().item()
print(f"dense FFN vs the sum of its {n_experts} slices: largest difference {gap:.1e}")
assert gap < 1e-5

# %% [markdown]
# Now let the router keep only K = 2 of the 8 slices per token.
# **Claim**: the expert FLOPs drop to exactly K/E = 1/4 of the dense FFN's, and the router adds `2·D·E` FLOPs per token (its (D, E) gate), counted on `moe_lab.MoELayer` itself.
# The output is of course no longer the dense FFN's: an MoE is a different function, trained as such, not an approximation of a dense model.

# %%
sparse = MoELayer(MoEConfig(d_model=d_model, d_expert=width, n_experts=n_experts, top_k=2))
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    sparse(tokens)
dense_flops = 6 * n_tokens * d_model * d_ff
router_flops = 2 * n_tokens * d_model * n_experts
print(f"dense FFN {dense_flops:,} FLOPs; top-2 of 8 MoE {counter.get_total_flops():,}"
      f" = {dense_flops // 4:,} (experts) + {router_flops:,} (router)")
assert counter.get_total_flops() == dense_flops * 2 // 8 + router_flops

# %% [markdown]
# ## 6. The baseline: timing a dense FFN
#
# FLOPs are not time. The baseline that notebook 02 (dispatch backends), notebook 04 (the tiny language model) and `python -m moe_lab.bench layer` compare against is a dense SwiGLU FFN at the sizes of the course's tiny model (`ModelConfig` defaults: D = 128, F = 512) on a batch of 8 sequences of 128 tokens, N = 1024.
# Timing: forward only, no gradient, median of 9 runs after a warm-up, one thread. Your numbers will differ; the ratios in later notebooks are what carries over.

# %%
d_model, d_ff, n_tokens = 128, 512, 8 * 128
baseline = DenseFFN(d_model, d_ff, "swiglu")
batch = torch.randn(n_tokens, d_model)


def forward():
    with torch.no_grad():
        baseline(batch)


seconds = median(time_interleaved({"dense": forward}, repeats=9, warmup=2)["dense"])
flops = 6 * n_tokens * d_model * d_ff
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    baseline(batch)
print(f"dense SwiGLU FFN, N={n_tokens}, D={d_model}, F={d_ff}: {seconds * 1e3:.2f} ms per forward,"
      f" {seconds / n_tokens * 1e6:.2f} µs per token, {flops / seconds / 1e9:.1f} GFLOP/s")
assert counter.get_total_flops() == flops and seconds > 0

# %% [markdown]
# ## Check yourself
#
# 1. A GELU FFN has D = 1024 and F = 4096. Which SwiGLU width has the same parameter count, and what does Llama's rounding make of it?
# <details><summary>Answer</summary>
#
# `F = 8·1024/3 ≈ 2730.7`; both then have `8·1024² = 8,388,608` parameters. Rounded up to a multiple of 256 it becomes 2816, slightly more parameters (3·1024·2816 = 8,650,752).
# </details>
#
# 2. How many forward FLOPs does one token cost in one Mixtral expert (D = 4096, F = 14336)? And in one Mixtral MoE layer, which uses two experts?
# <details><summary>Answer</summary>
#
# `6·4096·14336 = 352,321,536 ≈ 0.35 GFLOP` per expert; two experts make 0.70 GFLOP, plus `2·4096·8 = 65,536` FLOPs for the router. The layer *holds* 8 experts' weights, but FLOPs follow the 2 it uses.
# </details>
#
# 3. Why does the position-wise property of the FFN matter for Mixture of Experts?
# <details><summary>Answer</summary>
#
# Because no token's FFN output depends on another token, each token can be sent to a different FFN (expert) without changing what the block means. Attention mixes positions and cannot be split this way as simply.
# </details>
#
# 4. In GPT-2 small the FFN is 45.5% of all parameters but 66.6% of the non-embedding ones. Why the gap, and why does it shrink in bigger models?
# <details><summary>Answer</summary>
#
# The token and position embeddings hold 39.4M of the 124.4M parameters (a 50257 × 768 table). Embeddings grow like V·D, layers like L·12·D², so in wide, deep models the layers, and hence the FFN, dominate.
# </details>
#
# 5. A dense FFN of width F is split into E experts of width F/E and each token uses K of them. What fraction of the FFN's FLOPs is spent, what is added, and what is *not* reduced?
# <details><summary>Answer</summary>
#
# K/E of the expert FLOPs, plus `2·D·E` per token for the router (and dispatch overhead, which FLOP counts do not show). The parameters, and therefore the memory for weights, are not reduced at all: every expert stays loaded.
# </details>
#
# 6. Where does the "6" in "training costs 6 × parameters FLOPs per token" come from?
# <details><summary>Answer</summary>
#
# 2 for the forward pass (a multiply and an add per weight) and 4 for the backward pass (two products of the same size per forward product: one for the input gradient, one for the weight gradient), measured in section 3.
# </details>
#
# **Next**: notebook 02 builds the router that chooses the K experts.

# %% [markdown]
# ## Exercises
#
# Implement it yourself, then let the library grade it. Each exercise comes in three cells:
#
# - **the exercise cell** holds a function `my_...` whose body is `raise NotImplementedError`: replace that line with your code and run the cell;
# - **the hidden solution** (collapsed; tagged `solution`) defines a reference implementation named `..._solution`. Expand it when you are stuck or done; it has its own name, so it never overwrites yours;
# - **the check cell**, `check_...(my_..., reference=..._solution)`, runs your function on seeded random cases against `moe_lab`'s own implementation and says exactly what differs: the shape, the value at a named case, the gradient, and the mistake when your output is exactly what a common one gives. Until you have written yours, it checks the hidden solution instead and says so. That is what CI runs, so every checker and every solution is tested each time this notebook runs.
#
# The checkers live in `moe_lab.exercises`; the next cell is all the exercises need, so you can start here without running the cells above.

# %%
import torch
import torch.nn.functional as F

from moe_lab.exercises.dense_ffn import check_ffn_counts, check_split_into_experts, check_swiglu_ffn


# %% [markdown]
# ### Exercise 1: SwiGLU from raw tensors
#
# Write `my_swiglu_ffn(x, w_gate, w_up, w_down)` for x (N, D), `w_gate` and `w_up` (D, F), `w_down` (F, D), returning y (N, D) = `(silu(x W_gate) ⊙ (x W_up)) W_down`, without looking at section 1.
# Use torch operations only, so that autograd can differentiate it: the check compares your output, and your gradients for x and the three weights, with `moe_lab.DenseFFN` carrying the same weights. D ≠ F in every case, so a weight used the wrong way round fails at once.

# %%
def my_swiglu_ffn(x, w_gate, w_up, w_down):
    # x (N, D), w_gate and w_up (D, F), w_down (F, D) -> (N, D)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def swiglu_ffn_solution(x, w_gate, w_up, w_down):
    hidden = F.silu(x @ w_gate) * (x @ w_up)  # (N, F): the activated gate scales the up projection
    return hidden @ w_down  # (N, F) -> (N, D)


# %%
check_swiglu_ffn(my_swiglu_ffn, reference=swiglu_ffn_solution)


# %% [markdown]
# ### Exercise 2: parameters and FLOPs by hand
#
# Write `my_ffn_counts(d_model, d_ff, activation, n_tokens)` returning the pair `(parameters, forward_flops)` of one bias-free FFN (`activation` is `"swiglu"` or `"gelu"`) and of its forward pass on `n_tokens` tokens, as sections 2 and 3 count them.
# The check compares with the parameters of `moe_lab.DenseFFN` and with the FLOPs PyTorch's `FlopCounterMode` counts when the layer runs, from a 10 × 7 toy to one Mixtral expert.

# %%
def my_ffn_counts(d_model, d_ff, activation, n_tokens):
    # -> (parameters, forward_flops), two integers
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def ffn_counts_solution(d_model, d_ff, activation, n_tokens):
    matrices = 3 if activation == "swiglu" else 2  # gate, up, down; or up, down
    parameters = matrices * d_model * d_ff  # no biases
    forward_flops = 2 * n_tokens * parameters  # one multiply and one add per weight per token
    return parameters, forward_flops


# %%
check_ffn_counts(my_ffn_counts, reference=ffn_counts_solution)


# %% [markdown]
# ### Exercise 3: cut a dense FFN into experts
#
# Section 5 cut a `DenseFFN` into E experts by hand. Make it a function: `my_split_into_experts(dense, n_experts)` takes a SwiGLU `DenseFFN` of width F and returns `(w_gate, w_up, w_down)` with shapes (E, D, F/E), (E, D, F/E) and (E, F/E, D), the layout of `moe_lab`'s stacked experts, expert e holding the hidden units [e·F/E, (e+1)·F/E).
# Two traps: `nn.Linear` stores its weight as (out, in), and a reshape reads memory row by row.
# The check loads your tensors into `moe_lab.experts.StackedExperts`, sums all E experts with weight 1 through `dispatch_naive`, compares that with the dense FFN's output, then checks each expert's block.

# %%
def my_split_into_experts(dense, n_experts):
    # dense: DenseFFN(D, F, "swiglu") -> w_gate (E, D, F/E), w_up (E, D, F/E), w_down (E, F/E, D)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def split_into_experts_solution(dense, n_experts):
    d, width = dense.d_model, dense.d_ff // n_experts
    # (F, D) Linear weight -> (D, F) -> (D, E, F/E): columns grouped by expert -> (E, D, F/E)
    w_gate = dense.gate.weight.T.reshape(d, n_experts, width).transpose(0, 1)
    w_up = dense.up.weight.T.reshape(d, n_experts, width).transpose(0, 1)
    # (D, F) Linear weight -> (F, D): hidden units are rows, already contiguous -> (E, F/E, D)
    w_down = dense.down.weight.T.reshape(n_experts, width, d)
    return w_gate, w_up, w_down


# %%
check_split_into_experts(my_split_into_experts, reference=split_into_experts_solution)
