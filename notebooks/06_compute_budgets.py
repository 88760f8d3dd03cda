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
# # 06 · Compute budgets: what the parameter counts of MoE models mean
#
# **After this notebook you can** count the total and active parameters of any published MoE model
# from its `config.json` and reproduce its model card; say which counting convention each lab uses;
# separate the FLOPs that scale with active parameters from those that grow with context; size the
# memory of weights, optimizer state and KV cache; and explain, from a measurement on this machine,
# when an MoE layer is faster than a dense one and when it is not.
#
# **Time:** about 30 minutes. The notebook runs in well under a minute on 2 CPU cores.
#
# Everything below calls `moe_lab.budget`; the one from-scratch computation (Mixtral by hand) is
# checked against it. Four myths get measured: "Mixtral 8x7B has 56B parameters", "active
# parameters are the FLOPs, and everyone counts them alike", "MoE saves memory", "MoE is faster".

# %%
import math
import platform

import plotly
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display
from plotly.subplots import make_subplots
from torch.utils.flop_counter import FlopCounterMode

import moe_lab.model
from moe_lab import DenseFFN, MoEConfig, MoELayer, ModelConfig
from moe_lab.bench.common import time_interleaved
from moe_lab.budget import (
    ALL_IN,
    LAB_CONVENTIONS,
    NO_EMBEDDING,
    NON_EMBEDDING,
    PRESETS,
    all_to_all_bytes,
    count_parameters,
    decode_step_bytes,
    expected_experts_touched,
    forward_flops_per_token,
    from_hf_config,
    from_model_config,
    kv_cache_bytes,
    training_state_bytes,
    weight_bytes,
)

torch.manual_seed(0)
print(f"python {platform.python_version()}, torch {torch.__version__}, plotly {plotly.__version__}")
B_ = 1e9  # parameters per "B"

# %% [markdown]
# ## 1. Total vs active parameters, by hand
#
# Mixtral 8x7B's `config.json` (Hugging Face `mistralai/Mixtral-8x7B-v0.1`) has everything we need:
# width D = 4096, 32 blocks, 32 query heads and 8 key/value heads of width 128, 8 experts of width
# F = 14336 with 2 chosen per token, a 32000-token vocabulary, untied embedding and LM head.
# Each block holds: attention (q and o are D x 4096, k and v are D x 1024), a router (8 x D), 8
# SwiGLU experts (3 matrices of D x F each) and two RMSNorms (D each).

# %%
cfg = PRESETS["Mixtral-8x7B"].config
D, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
E, K, F = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]
head_dim = D // cfg["num_attention_heads"]
kv_width = cfg["num_key_value_heads"] * head_dim

attention = D * D + 2 * D * kv_width + D * D  # q, k, v, o
one_expert = 3 * D * F  # gate, up, down
router = E * D
norms = 2 * D
embedding = lm_head = V * D

total_by_hand = L * (attention + E * one_expert + router + norms) + D + embedding + lm_head
active_by_hand = L * (attention + K * one_expert + router + norms) + D + embedding + lm_head
print(f"total  {total_by_hand / B_:.2f}B   active {active_by_hand / B_:.2f}B per token")

# %% [markdown]
# The library computes the same numbers from the same config, component by component:

# %%
mixtral = PRESETS["Mixtral-8x7B"].counts()
assert mixtral.total() == total_by_hand and mixtral.active() == active_by_hand
for name, n in mixtral.total_breakdown().items():
    if n:
        print(f"{name:>16}: {n / B_:7.3f}B  ({n / mixtral.total():6.2%})")

# %% [markdown]
# ## 2. Where the "8 x 7B = 56B" intuition fails
#
# "8x7B" reads as eight 7B models. But only the FFN is replicated: attention, embeddings, head and
# norms exist once and are shared by all eight experts. A Mixtral with one expert is a dense model
# of the 7B class; eight of those would hold 7 extra copies of everything shared.

# %%
one_expert_cfg = {**cfg, "num_local_experts": 1, "num_experts_per_tok": 1}
dense_7b = count_parameters(from_hf_config(one_expert_cfg)).total()
shared = mixtral.total() - mixtral.routed_experts - mixtral.router
print(f"one-expert Mixtral: {dense_7b / B_:.2f}B;  8 of them: {8 * dense_7b / B_:.1f}B")
print(f"Mixtral 8x7B:       {mixtral.total() / B_:.1f}B;  shared parts: {shared / B_:.2f}B")

# %%
assert 8 * dense_7b > 56 * B_ > mixtral.total()
assert 8 * dense_7b - mixtral.total() == 7 * shared  # the over-count is exactly 7 copies of the shared parts
assert abs(mixtral.total() / (46.7 * B_) - 1) < 0.01  # Mistral's blog: 46.7B total

# %% [markdown]
# ## 3. The calculator on published models
#
# `moe_lab.budget.PRESETS` holds published MoE models: the architecture fields of their
# `config.json` and the total and active counts their model cards, papers or release posts give, each
# with its source (see `moe_lab/budget/presets.py` and `presets_more.py`). They span the families a
# reader will bring: decoder MoEs (Mixtral, Qwen, DeepSeek, OLMoE, DBRX, gpt-oss, Phi, Llama 4,
# Kimi K2, GLM-4.5, Granite, Grok-1), a mixture of attention heads (JetMoE), Mamba hybrids (Jamba),
# an encoder-decoder (Switch Transformers) and a dense-MoE hybrid (Snowflake Arctic). The calculator
# reads each config with `from_hf_config` and counts under the lab's convention (next section).

# %%
rows = []
for name, preset in PRESETS.items():
    c = preset.counts()
    total, active = c.total(preset.convention), c.active(preset.convention)
    assert preset.total_agrees(c) and preset.active_agrees(c), name
    rows.append((name, preset.total.value, total, preset.active.value, active))
    card = (f"{preset.active.value:.0%} of experts" if preset.active.share_of_routed_experts
            else f"{preset.active.value / B_:.2f}B")
    print(f"{name:>20}: total {total / B_:8.2f}B (card {preset.total.value / B_:6.1f}B)"
          f"   active {active / B_:6.2f}B (card {card})")
display(Markdown(
    f"All {len(PRESETS)} reproduce their published figures: within 1% where a figure has three"
    " significant digits, to the card's own rounding where it is a whole number of its unit (\"32B\","
    " \"400M\"), and within the stated truncation for DeepSeek-V2-Lite and JetMoE (see their"
    " presets). Grok-1's card gives a share, \"25% of the weights active\", not a count: that is"
    " 2 of 8 experts, while the attention and embedding every token also uses make"
    f" {rows[-1][4] / rows[-1][2]:.1%} of its weights active."
))
assert rows[-1][0] == "Grok-1" and 0.26 < rows[-1][4] / rows[-1][2] < 0.27

# %% [markdown]
# With `transformers` installed, `tests/test_budget.py` also builds every preset it can at full size
# on the meta device and checks that the calculator's total equals the module's parameter count
# exactly (23 presets; DeepSeekMoE, Arctic and Grok-1 ship custom modeling code). The course's tiny
# models from notebook 04 go on the same chart: their counts come from the same calculator, and the
# tests check that they equal the parameters of the instantiated `TinyLM`.

# %%
tiny = {name: count_parameters(from_model_config(c)) for name, c in moe_lab.model.PRESETS.items()}
fig = go.Figure()
fig.add_trace(go.Scatter(
    x=[r[2] for r in rows], y=[r[4] for r in rows], mode="markers+text", name="published MoE",
    text=[r[0] for r in rows], textposition="top center", textfont={"size": 9},
))
fig.add_trace(go.Scatter(
    x=[c.total() for c in tiny.values()], y=[c.active() for c in tiny.values()],
    mode="markers+text", name="course models", text=list(tiny), textposition="bottom center",
    marker={"symbol": "diamond", "size": 10},
))
line = [1e5, 2e12]
fig.add_trace(go.Scatter(x=line, y=line, mode="lines", name="dense (active = total)",
                         line={"dash": "dot", "color": "gray"}))
fig.update_layout(title="Total vs active parameters", xaxis_title="total parameters",
                  yaxis_title="active parameters per token", height=520)
fig.update_xaxes(type="log")
fig.update_yaxes(type="log")
fig.show()

# %%
# Dense models lie on the diagonal; the further below it, the sparser.
assert all(c.total() == c.active() for n, c in tiny.items() if "dense" in n)
sparsest = min(rows, key=lambda r: r[4] / r[2])
print(f"sparsest: {sparsest[0]}, active/total = {sparsest[4] / sparsest[2]:.3f}")

# %% [markdown]
# ## 4. Counting conventions: "active" is not one number
#
# The input embedding is a table lookup: it reads one row and multiplies nothing. The LM head is a
# real D x V matmul. Labs differ on what "active" includes, and DeepSeek-V3's repository ships a
# multi-token-prediction (MTP) module that its 671B leaves out. Below, each model's active count
# under three conventions, and whether it reproduces the published figure.

# %%
conventions = {"emb+head": ALL_IN, "head only": NO_EMBEDDING, "neither": NON_EMBEDDING}
header = f"{'model':>20} {'card':>7} " + " ".join(f"{k:>12}" for k in conventions)
print(header)
agreeing = {}
for name, preset in PRESETS.items():
    if preset.active.share_of_routed_experts:
        continue  # Grok-1: a share of the experts, the same under every convention
    c = preset.counts()
    cells, agreeing[name] = [], []
    for label, conv in conventions.items():
        ok = preset.active_agrees(c, conv)
        if ok:
            agreeing[name].append(label)
        cells.append(f"{c.active(conv) / B_:9.2f}B{'*' if ok else ' '} ")
    print(f"{name:>20} {preset.active.value / B_:6.2f}B " + " ".join(cells))
print("* = reproduces the card")

# %% [markdown]
# Figures precise enough to tell the conventions apart each fit exactly one: Mistral (12.9B) and Qwen
# (2.7B) count the embedding and the head; OpenAI (gpt-oss 3.6B, 5.1B) and DeepSeek from V2 on
# (V2-Lite's 2.4B, Kimi K2's 32B on DeepSeek-V3's architecture) count the head but not the input
# embedding; Zhipu (GLM-4.5's 32B, Air's 12B) and IBM (Granite 3B's 800M) count neither. Conventions
# even change within a lab: DeepSeekMoE 16B's 2.8B (January 2024) fits only with the embedding.
# Rounded figures ("39B", "36B", "6.6B", Jamba's and Arctic's) often fit several; `LAB_CONVENTIONS`
# records the one the lab's other numbers support, and says so where nothing does.
#
# DeepSeek-V3's "37B" is such a case, and DeepSeek's own texts disagree on what it contains: one
# revision of its README_WEIGHTS.md says "36.7B (including 0.9B for Embedding and 0.9B for the
# output Head)", another "36.6B (including 0.9B for the output Head)". The shapes give the numbers
# below: 36.6B without the embedding, 37.55B with it. The second wording is the one the shapes
# support, and the course uses it, but "37B" alone does not settle it.

# %%
assert agreeing["Mixtral-8x7B"] == agreeing["Qwen1.5-MoE-A2.7B"] == ["emb+head"]
assert agreeing["gpt-oss-20b"] == agreeing["gpt-oss-120b"] == ["head only"]
assert agreeing["DeepSeek-V2-Lite"] == agreeing["Kimi-K2"] == ["head only"]
assert agreeing["GLM-4.5"] == agreeing["GLM-4.5-Air"] == ["neither"]
assert agreeing["Granite-3.0-3B-A800M"] == ["neither"]
assert agreeing["DeepSeekMoE-16B"] == ["emb+head"]
v3 = PRESETS["DeepSeek-V3"].counts()
v3_head, v3_both = v3.active(NO_EMBEDDING), v3.active(ALL_IN)
print(f"DeepSeek-V3 active: {v3_head / B_:.2f}B with the head only, {v3_both / B_:.2f}B with the"
      f" embedding too; the card's 37B fits {agreeing['DeepSeek-V3']}")
assert round(v3_head / B_, 1) == 36.6 and round(v3_both / B_, 2) == 37.55  # not 36.7
assert agreeing["DeepSeek-V3"] == ["emb+head", "head only"]
for lab, conv in LAB_CONVENTIONS.items():
    print(f"{lab:>36}: {conv.name}")

# %%
with_mtp = v3.total(PRESETS["DeepSeek-V3"].convention) + v3.mtp
print(f"DeepSeek-V3: main model {v3.total() / B_:.1f}B, MTP module {v3.mtp / B_:.2f}B,"
      f" both {with_mtp / B_:.1f}B")
assert abs(v3.total() / (671 * B_) - 1) < 0.01 and abs(v3.mtp / (11.5 * B_) - 1) < 0.01

# %% [markdown]
# ## 5. FLOPs: active parameters are not the whole cost
#
# A matmul costs 2 FLOPs per weight per token, so the projections cost 2 x (active parameters
# without the embedding lookup and the few norm weights). But attention also multiplies queries by every cached key, and
# probabilities by every value: 2·H·(d_qk + d_v) FLOPs per key per block, with no parameters at all.
# That term grows with the context and ignores sparsity.

# %%
contexts = [1, 4096, 32768, 131072]
for name in ["Mixtral-8x7B", "Qwen3-30B-A3B", "DeepSeek-V3"]:
    spec = PRESETS[name].spec()
    parts = [forward_flops_per_token(spec, n) for n in contexts]
    shares = ", ".join(f"{n:>6}: {f.total / 1e9:6.1f} GF ({f.attention_scores / f.total:4.0%} scores)"
                       for n, f in zip(contexts, parts))
    print(f"{name:>14}  {shares}")

# %%
qwen = PRESETS["Qwen3-30B-A3B"]
f1, f32k = (forward_flops_per_token(qwen.spec(), n) for n in (1, 32768))
# At one key the forward pass is exactly 2 x the active matrix weights: the active count without
# the embedding lookup and without the norm weights (elementwise, no matmul)...
q = qwen.counts()
assert f1.total - f1.attention_scores == 2 * (q.active(NO_EMBEDDING) - q.norms)
# ...at 32K tokens of context the score term costs more than all the routed experts.
assert f32k.attention_scores > f32k.routed_experts

# %% [markdown]
# With 32K tokens of context, Qwen3-30B-A3B spends more forward FLOPs on attention scores than on
# all its routed experts together: "3B active" describes the weights, not the compute, of a
# long-context token. (Training costs 3x the forward: `training_flops_per_token`.)
#
# ## 6. Memory: the whole model must be resident
#
# Any token can be routed to any expert, so every expert must be in memory (or be paged in, at a
# latency cost). Memory follows the *total*. Training with mixed-precision Adam holds 16 bytes per
# parameter (ZeRO, Rajbhandari et al. 2020: bf16 weights and gradients, fp32 master weights and two
# moments). The KV cache depends on attention, not on experts: DeepSeek's MLA caches a 576-wide
# latent per token and block where Mixtral's GQA caches 2 x 8 x 128 = 2048 values.

# %%
GB = 1e9
names = ["Mixtral-8x7B", "Qwen3-30B-A3B", "gpt-oss-120b", "DeepSeek-V3"]
print(f"{'model':>14} {'bf16':>8} {'fp8':>8} {'int4':>8} {'Adam train':>11} {'KV 32K bf16':>12}")
memory = {}
for name in names:
    spec = PRESETS[name].spec()
    memory[name] = {
        "bf16": weight_bytes(spec, "bf16"), "fp8": weight_bytes(spec, "fp8"),
        "int4": weight_bytes(spec, "int4"), "train": training_state_bytes(spec)["total"],
        "kv": kv_cache_bytes(spec, 32768),
    }
    m = memory[name]
    print(f"{name:>14} {m['bf16'] / GB:7.1f}G {m['fp8'] / GB:7.1f}G {m['int4'] / GB:7.1f}G"
          f" {m['train'] / GB:10.0f}G {m['kv'] / GB:11.2f}G")

# %%
mix = memory["Mixtral-8x7B"]
# Mixtral in bf16 does not fit one 80 GB accelerator; a dense model with its 12.9B active
# parameters would take 25.8 GB, under a third of Mixtral's 93 GB.
assert mix["bf16"] > 80 * GB and 3 * 12.9e9 * 2 < mix["bf16"]
assert mix["train"] == 16 * mixtral.total()
# Per token of context, MLA's cache (61 blocks x 576) is smaller than Mixtral's (32 x 2048).
assert kv_cache_bytes(PRESETS["DeepSeek-V3"].spec(), 1) < kv_cache_bytes(PRESETS["Mixtral-8x7B"].spec(), 1)

# %% [markdown]
# ## 7. Latency against batch size, measured here
#
# Three layers built from `moe_lab`: an `MoELayer` with E = 16 experts of width F = 256, top-2; a
# `DenseFFN` with the same **active** parameters (width K·F = 512); a `DenseFFN` with the same
# **total** parameters (width E·F = 4096). Two kinds of numbers for batches of 1 to 1024 tokens:
# deterministic ones that hold on any machine, the FLOPs of a call (`FlopCounterMode`) and the weight
# bytes it must read (every expert the batch touched, counted from `tokens_per_expert`); and the
# wall-clock time on this machine, one thread, the three layers interleaved in every repetition,
# the fastest of 7 kept. Times are shown, never asserted: a busy machine can reorder them.

# %%
THREADS = torch.get_num_threads()
torch.set_num_threads(1)  # steadier timings on a shared machine
D_MODEL, F_EXPERT, N_EXPERTS, TOP_K = 256, 256, 16, 2
moe_cfg = MoEConfig(d_model=D_MODEL, d_expert=F_EXPERT, n_experts=N_EXPERTS, top_k=TOP_K,
                    validate_inputs=False)
layers = {
    "MoE (E=16, K=2)": MoELayer(moe_cfg).eval(),
    "dense, same active": DenseFFN(D_MODEL, TOP_K * F_EXPERT).eval(),
    "dense, same total": DenseFFN(D_MODEL, N_EXPERTS * F_EXPERT).eval(),
}
batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
latency = {name: [] for name in layers}
flops_per_call = {name: [] for name in layers}
touched_measured = []
with torch.inference_mode():
    for n in batches:
        x = torch.randn(n, D_MODEL)
        out = layers["MoE (E=16, K=2)"](x)  # warm-up, and the experts this batch really used
        touched_measured.append(int((out.tokens_per_expert > 0).sum()))
        for name, layer in layers.items():
            with FlopCounterMode(display=False) as counter:
                layer(x)
            flops_per_call[name].append(counter.get_total_flops())
        times = time_interleaved({name: (lambda layer=layer: layer(x)) for name, layer in layers.items()},
                                 repeats=7, warmup=1)
        for name in layers:
            latency[name].append(min(times[name]))
torch.set_num_threads(THREADS)
for name, ts in latency.items():
    print(f"{name:>20}: " + " ".join(f"{t * 1e3:7.2f}" for t in ts) + "  ms")

# %%
touched_model = [expected_experts_touched(N_EXPERTS, TOP_K, n) for n in batches]
fig = make_subplots(rows=1, cols=2, subplot_titles=(
    "latency per call (fastest of 7)", "experts touched by the batch"))
for name, ts in latency.items():
    fig.add_trace(go.Scatter(x=batches, y=[t * 1e3 for t in ts], mode="lines+markers", name=name),
                  row=1, col=1)
fig.add_trace(go.Scatter(x=batches, y=touched_model, mode="lines",
                         name="E(1-(1-K/E)^B), uniform routing"), row=1, col=2)
fig.add_trace(go.Scatter(x=batches, y=touched_measured, mode="markers",
                         name="measured (tokens_per_expert > 0)"), row=1, col=2)
fig.update_xaxes(type="log", title_text="tokens in the batch")
fig.update_yaxes(type="log", title_text="ms", row=1, col=1)
fig.update_yaxes(title_text="distinct experts", row=1, col=2)
fig.update_layout(height=430)
fig.show()

# %% [markdown]
# What holds on every machine: the MoE does exactly the same-active layer's FLOPs plus its router's
# (2·D·E per token), an eighth of the same-total layer's. Its weight reads are what moves with the
# batch: one token reads K = 2 experts, the same bytes as the same-active layer (plus the router);
# 1024 tokens touch all 16, the same bytes as the same-total layer.

# %%
moe_name, active_name, total_name = layers
expert_bytes = 3 * D_MODEL * F_EXPERT * 4  # one SwiGLU expert in fp32
router_bytes = N_EXPERTS * D_MODEL * 4
moe_bytes = [t * expert_bytes + router_bytes for t in touched_measured]
dense_bytes = {name: sum(p.numel() for p in layers[name].parameters()) * 4
               for name in (active_name, total_name)}
for i, n in enumerate(batches):
    assert flops_per_call[moe_name][i] == flops_per_call[active_name][i] + 2 * n * D_MODEL * N_EXPERTS
    assert flops_per_call[total_name][i] == N_EXPERTS // TOP_K * flops_per_call[active_name][i]
assert touched_measured[0] == TOP_K and moe_bytes[0] == dense_bytes[active_name] + router_bytes
assert touched_measured[-1] == N_EXPERTS and moe_bytes[-1] == dense_bytes[total_name] + router_bytes
# The routing model: a batch of 16 tokens already touches about 14.1 of the 16 experts.
assert abs(expected_experts_touched(16, 2, 16) - 14.1) < 0.05
print(f"weight MB read per call, MoE: " + " ".join(f"{b / 1e6:.1f}" for b in moe_bytes))
print(f"same active: {dense_bytes[active_name] / 1e6:.1f} MB, same total: {dense_bytes[total_name] / 1e6:.1f} MB")

# %%
moe_t, active_t, total_t = (latency[k] for k in layers)
vs_active = [m / a for m, a in zip(moe_t, active_t)]
vs_total = [m / t for m, t in zip(moe_t, total_t)]
print("MoE / dense-same-active:", " ".join(f"{r:5.2f}" for r in vs_active))
print("MoE / dense-same-total: ", " ".join(f"{r:5.2f}" for r in vs_total))
i16 = batches.index(16)
wins = sum(r < 1 for r in vs_total)
display(Markdown(
    f"**Measured here** (this run, this machine): the MoE took {vs_total[0]:.2f}x the same-total"
    f" layer's time at 1 token, {vs_total[i16]:.2f}x at 16 and {vs_total[-1]:.2f}x at"
    f" {batches[-1]}, and was faster than it at {wins} of {len(batches)} batch sizes; against the"
    f" same-active layer it took {vs_active[0]:.2f}x at 1 token and {vs_active[-1]:.2f}x at"
    f" {batches[-1]}."
))

# %% [markdown]
# **How to read it.** Against the dense layer of the same *total* size, the MoE should win at every
# batch, by a margin that is U-shaped in the batch. With one token it reads only K/E of the expert
# weights: this is Mistral's claim that Mixtral "processes input and generates output at the same
# speed and for the same cost as a 12.9B model" (mistral.ai/news/mixtral-of-experts). As the batch
# grows it touches every expert (right panel; 16 tokens already touch 14 of 16), so it reads as many
# bytes as the same-total layer and the advantage narrows; once the batch is large enough for the
# arithmetic to dominate, its 8x fewer FLOPs win again. Against the dense layer with the same
# *active* parameters there is nothing to win: at one token both read the same expert bytes and do
# the same FLOPs, so the MoE's extra time there is dispatch overhead (routing, sorting, gathering,
# one call per expert), not weight reads.
#
# **What a CPU measurement can and cannot say.** These toy layers hold megabytes of weights
# (printed above), much of which stays in a CPU's caches across back-to-back calls, so their time is
# set mostly by per-call overhead and arithmetic, not by memory traffic. Decoding a real model on a GPU is the opposite:
# gigabytes of weights stream from memory at every step, and the time follows the bytes read. That is
# section 8's model, and the roofline below shows when each regime applies: an expert that sees few
# tokens does few FLOPs per byte it reads. (What the MoE costs in *training* on this CPU, where it
# can even be faster than its same-active twin, is notebook 04's equal-wall-clock question.)

# %%
# Roofline: FLOPs per byte of weights an expert does, against the batch. bf16 weights (2 bytes)
# and 2 FLOPs per weight per token: intensity = tokens the expert sees. A dense layer sees all B
# tokens; each expert a touched expert sees B*K / (experts touched) of them.
# NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16 (1,979 "with sparsity"), 3.35 TB/s of HBM3.
RIDGE = 989e12 / 3.35e12  # FLOPs per byte above which a kernel is compute-bound, ~295
roof_batches = [2 ** i for i in range(0, 17)]


def intensity(n_experts, top_k, batch):
    # (2 FLOPs x tokens) per (2 bytes) of each weight = tokens per touched expert
    return batch * top_k / expected_experts_touched(n_experts, top_k, batch)


fig = go.Figure()
fig.add_trace(go.Scatter(x=roof_batches, y=roof_batches, mode="lines", name="dense layer"))
for label, e, k in (("Mixtral, 2 of 8", 8, 2), ("DeepSeek-V3, 8 of 256", 256, 8)):
    fig.add_trace(go.Scatter(x=roof_batches, y=[intensity(e, k, b) for b in roof_batches],
                             mode="lines", name=f"one expert, {label}"))
fig.add_hline(y=RIDGE, line_dash="dot", annotation_text="H100 ridge: compute-bound above")
fig.update_xaxes(type="log", title_text="tokens in the batch (B)")
fig.update_yaxes(type="log", title_text="FLOPs per weight byte (bf16)")
fig.update_layout(title="Arithmetic intensity of a decoding step: dense vs one expert", height=420)
fig.show()

# %%
# A touched expert of DeepSeek-V3 sees B*K/E tokens once B is large: it needs E/K = 32 times the
# batch a dense layer needs to reach the ridge (295 tokens: the first power of two is 512 for the
# dense layer; 295 x 32 = 9440 for the expert: 16384).
first = {label: next(b for b in roof_batches if intensity(e, k, b) >= RIDGE)
         for label, e, k in (("dense", 1, 1), ("v3", 256, 8))}
print(f"ridge at {RIDGE:.0f} FLOPs/byte; first batch reaching it: dense {first['dense']},"
      f" one DeepSeek-V3 expert {first['v3']}")
assert intensity(256, 8, 1) == 1.0 and (first["dense"], first["v3"]) == (512, 16384)

# %% [markdown]
# ## 8. Decode economics at scale
#
# Decoding one token per sequence reads weights once per step for the whole batch. The bytes an MoE
# step reads move from its active parameters (B = 1) to its total (large B); the FLOPs per token stay
# active. On memory-bound hardware (below the ridge of the roofline above, where a real model's
# decode sits) the time follows these bytes: at B = 1 an MoE costs what its active parameters cost,
# and per token it gets cheaper with the batch only until the batch touches every expert. Section 7
# measured the same byte counts on toy layers, whose time this CPU does not set by bytes. Expert
# parallelism adds two all-to-alls per MoE block per step.

# %%
decode_batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
fig = go.Figure()
for name in ["Mixtral-8x7B", "DeepSeek-V3", "gpt-oss-120b"]:
    spec = PRESETS[name].spec()
    per_step = [decode_step_bytes(spec, b, "bf16")["total"] for b in decode_batches]
    fig.add_trace(go.Scatter(x=decode_batches, y=[p / b / GB for p, b in zip(per_step, decode_batches)],
                             mode="lines+markers", name=name))
fig.update_xaxes(type="log", title_text="sequences decoded together (B)")
fig.update_yaxes(type="log", title_text="GB of weights read per generated token")
fig.update_layout(title="Weight bytes per token while decoding (bf16, no KV cache)", height=420)
fig.show()

# %%
v3_spec = PRESETS["DeepSeek-V3"].spec()
one = decode_step_bytes(v3_spec, 1)
# One sequence: the step reads the active weights (no embedding table, one row of it).
assert math.isclose(one["total"], 2 * (v3.active(NO_EMBEDDING) + v3_spec.d_model), rel_tol=1e-12)
# 64 sequences touch about 222 of 256 experts per block: most of the model, for 64 tokens.
assert round(expected_experts_touched(256, 8, 64)) == 222
a2a = all_to_all_bytes(v3_spec, n_tokens=4096, world_size=64)
print(f"all-to-all per MoE block, 4096 tokens over 64 ranks: {a2a['total'] / 1e6:.0f} MB"
      f" ({a2a['per_rank'] / 1e6:.1f} MB per rank), x{v3_spec.n_moe_layers} blocks per step")
assert a2a["dispatch"] == 4096 * 8 * 7168 * 2 * 63 / 64

# %% [markdown]
# ## 9. Why MoE pays off less for small models
#
# Two different questions hide in this one, and an interviewer wants them separated.
#
# **Quality per FLOP: the gain is largest at small scale.** Artetxe et al. 2021 (Efficient Large
# Scale Language Modeling with Mixtures of Experts, arXiv:2112.10684) found MoEs matching dense
# models "using ~4 times less compute" at modest training budgets, a gap that "narrows at scale".
# Clark et al. 2022 (Unified Scaling Laws for Routed Language Models, arXiv:2202.01169) fit the
# gain of adding experts with a bilinear law in the number of experts and the dense model size: the
# larger the dense base, the less each doubling of experts helps. Notebook 04 measures the small end
# of this on this machine: the tiny MoE beats its dense twin at equal FLOPs by a wide margin.
# (Krajewski et al. 2024, Scaling Laws for Fine-Grained Mixture of Experts, arXiv:2402.07871, argue
# the gap widens with scale once the expert granularity is tuned: the quality half is debated at the
# large end, not at the small one.)
#
# **Cost per token: this is what makes small MoEs unattractive.** Routing, sorting and gathering move
# O(N·D) bytes per layer while the experts do O(N·D·F) FLOPs: the narrower the experts, the larger
# the overhead relative to the useful work. Below, the MoE / same-active time at 1024 tokens for a
# small and a larger layer (interleaved, fastest of 7; a timing is the lesson here, and the assert
# keeps a margin that held with both cores of a 2-core machine busy with other work, see
# `tools/run_under_load.py`). The parts MoE cannot sparsify also weigh more in small models (the
# embedding and LM head, printed after), and a small model is served with small batches, where
# section 7 showed it reads most of its weights anyway.

# %%
torch.set_num_threads(1)
overhead = {}
with torch.inference_mode():
    for width in (32, 256):
        c = MoEConfig(d_model=width, d_expert=width, n_experts=16, top_k=2, validate_inputs=False)
        moe_layer, dense_layer = MoELayer(c).eval(), DenseFFN(width, 2 * width).eval()
        x = torch.randn(1024, width)
        times = time_interleaved({"moe": lambda: moe_layer(x), "dense": lambda: dense_layer(x)},
                                 repeats=7, warmup=1)
        overhead[width] = min(times["moe"]) / min(times["dense"])
torch.set_num_threads(THREADS)
print({f"D=F={w}": f"MoE is {r:.1f}x the dense-same-active time" for w, r in overhead.items()})
assert overhead[32] > 1.5 * overhead[256]

# %%
print(f"{'model':>18} {'embedding + head share of the total':>36}")
share = {}
for name in ["OLMoE-1B-7B", "Qwen1.5-MoE-A2.7B", "Qwen3-30B-A3B", "Mixtral-8x7B", "DeepSeek-V3"]:
    c = PRESETS[name].counts()
    share[name] = (c.embedding + c.lm_head) / c.total()
    print(f"{name:>18} {share[name]:36.2%}")
assert share["OLMoE-1B-7B"] > 5 * share["DeepSeek-V3"]

# %% [markdown]
# ## 10. Number and size of experts, and shared experts
#
# **How many experts, how wide?** For a fixed budget of expert parameters and FLOPs per token, E
# experts of width F with top-K can be traded for mE experts of width F/m with top-mK: the same
# parameters and FLOPs, far more combinations. DeepSeekMoE (Dai et al. 2024, arXiv:2401.06066)
# calls this fine-grained segmentation. Their example: 16 experts with top-2 give C(16, 2) = 120
# combinations; splitting each into 4 gives C(64, 8) = 4,426,165,368. They report DeepSeekMoE 2B
# matching GShard 2.9B (1.5x the expert parameters and computation), and DeepSeekMoE 16B matching
# LLaMA2 7B with about 40% of its computation. The cost is more, smaller matrix products per token
# (the overhead of section 9) and more routing decisions to balance.

# %%
assert math.comb(16, 2) == 120 and math.comb(64, 8) == 4_426_165_368
for name in ["Mixtral-8x7B", "DBRX", "Qwen3-30B-A3B", "DeepSeek-V3", "Kimi-K2"]:
    moe = PRESETS[name].spec().moe
    print(f"{name:>14}: E={moe.n_experts:3d}, K={moe.top_k}, combinations C(E,K) = {math.comb(moe.n_experts, moe.top_k):.3g}")
# Segmenting the course's MoE keeps its parameters (only the router grows: E x D per block).
coarse = ModelConfig(d_model=64, n_heads=4, moe=MoEConfig(d_model=64, d_expert=128, n_experts=8, top_k=2))
fine = ModelConfig(d_model=64, n_heads=4,
                   moe=MoEConfig(d_model=64, d_expert=128, n_experts=8, top_k=2, expert_segments=4))
a, b = count_parameters(from_model_config(coarse)), count_parameters(from_model_config(fine))
assert a.routed_experts == b.routed_experts and a.active() - a.router == b.active() - b.router
assert sum(p.numel() for p in moe_lab.model.TinyLM(fine).parameters()) == b.total()
print(f"coarse C(8,2) = {math.comb(8, 2)}, fine C(32,8) = {math.comb(32, 8):,}")

# %% [markdown]
# **Shared experts.** DeepSeekMoE's second idea: keep a few experts *always on* for every token, so
# the knowledge every token needs is not copied into many routed experts, and let the routed ones
# specialize. DeepSeek-V3, Kimi K2, GLM-4.5 and Llama 4 run one shared expert beside their routed
# ones; Qwen1.5-MoE one shared FFN four experts wide, behind a sigmoid gate. A shared expert costs
# like a small dense FFN: its parameters count fully in the active total, and it adds no routing.
# The share of a token's expert FLOPs it takes, from the calculator:

# %%
shared_share = {}
for name in ["Qwen1.5-MoE-A2.7B", "DeepSeekMoE-16B", "DeepSeek-V3", "Kimi-K2", "GLM-4.5", "Llama-4-Scout"]:
    f = forward_flops_per_token(PRESETS[name].spec(), 1)
    shared_share[name] = f.shared_experts / (f.shared_experts + f.routed_experts)
    print(f"{name:>18}: shared experts do {shared_share[name]:.1%} of a token's expert FLOPs")
# DeepSeek-V3: one shared expert beside 8 routed ones of the same width: 1/9 of the expert FLOPs.
assert math.isclose(shared_share["DeepSeek-V3"], 1 / 9)
# The course's MoELayer has them too (n_shared_experts), counted like the routed ones.
with_shared = ModelConfig(d_model=64, n_heads=4, moe=MoEConfig(
    d_model=64, d_expert=128, n_experts=8, top_k=2, n_shared_experts=1))
counted = count_parameters(from_model_config(with_shared))
assert counted.shared_experts == with_shared.n_moe_layers * 3 * 64 * 128
assert sum(p.numel() for p in moe_lab.model.TinyLM(with_shared).parameters()) == counted.total()

# %% [markdown]
# ## 11. Closing table: published vs computed
#
# Every preset, its lab's convention, the published figures and the calculator's, with the source of
# each number in `moe_lab/budget/presets.py` and `presets_more.py`.

# %%
lines = ["| model | convention | total (card) | total (computed) | active (card) | active (computed) |",
         "|---|---|---|---|---|---|"]
for name, preset in PRESETS.items():
    c = preset.counts()
    t, a = c.total(preset.convention), c.active(preset.convention)
    assert preset.total_agrees(c) and preset.active_agrees(c)
    card = (f"{preset.active.value:.0%} of experts" if preset.active.share_of_routed_experts
            else f"{preset.active.value / B_:g}B")
    lines.append(f"| {name} | {preset.convention.name} | {preset.total.value / B_:g}B | {t / B_:.2f}B"
                 f" | {card} | {a / B_:.2f}B |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Check yourself
#
# 1. Mixtral 8x7B: why is the total 46.7B and not 56B?
# <details><summary>Answer</summary>Only the FFN is replicated 8 times; attention, embeddings, LM head
# and norms are stored once and shared. Eight one-expert models would hold 7 extra copies of those
# (section 2).</details>
#
# 2. DeepSeek-V3 reports 37B active, gpt-oss-120b 5.1B. Do both count the input embedding?
# <details><summary>Answer</summary>gpt-oss: no. Its 5.1B fits only "head, no embedding" (section 4).
# DeepSeek-V3: its own texts disagree. One revision of README_WEIGHTS.md says 36.7B "including 0.9B
# for Embedding and 0.9B for the output Head", another 36.6B "including 0.9B for the output Head".
# The shapes give 36.6B without the embedding and 37.55B with it, so the second wording is the one
# the shapes support; the rounded 37B fits both. Say which convention you use when you quote it.
# </details>
#
# 3. A model has 3B active parameters. Is a token's forward pass about 6 GFLOPs?
# <details><summary>Answer</summary>Only at short context. The attention score term has no parameters
# and grows with the number of cached keys: at 32K tokens it exceeds all of Qwen3-30B-A3B's expert
# FLOPs (section 5).</details>
#
# 4. Does an MoE with 12.9B active parameters need the memory of a 12.9B dense model?
# <details><summary>Answer</summary>No: all experts must be resident, so weights follow the total
# (46.7B for Mixtral, 93 GB in bf16). Training with Adam needs 16 bytes per total parameter.</details>
#
# 5. E = 64 experts, top-6, a decoding batch of 16 sequences: how many experts does a block read?
# <details><summary>Answer</summary>64 (1 - (1 - 6/64)^16) ≈ 50.8: most of them. Check with
# `expected_experts_touched(64, 6, 16)`.</details>
#
# 6. When is an MoE layer faster than a dense layer?
# <details><summary>Answer</summary>Than a dense layer of the same total size: by design at every
# batch, with a U-shaped margin. At batch 1 it reads only K/E of the expert weights (Mixtral "at the
# same speed and for the same cost as a 12.9B model"); the margin narrows as the batch touches every
# expert (16 tokens touch 14 of 16 experts in section 7) and widens again once the batch is
# compute-bound, where its K/E of the FLOPs win. Than a dense layer with the same active parameters:
# never by doing less work. At batch 1 both read the same expert bytes and do the same FLOPs, and the
# MoE adds routing and dispatch; its gain is quality per FLOP, not speed. On real hardware the bytes
# decide decode time (section 8's model); a toy layer timed on a CPU, whose weights stay in cache,
# measures mostly dispatch overhead.</details>
#
# 7. Why does DeepSeek-V3 use 256 narrow experts and one shared expert, and not 16 wide ones?
# <details><summary>Answer</summary>For a fixed budget of expert parameters and FLOPs, number and
# size trade off one for one: 256 experts of width 2048 with top-8 cost the same as 32 experts 8
# times as wide with top-1, but offer C(256, 8) ≈ 4.1e14 combinations per token instead of 32, and
# DeepSeekMoE found the fine-grained split to specialize experts better. The price is more, smaller
# matrix products and more routing to balance. The shared expert takes what every token needs (1/9
# of a token's expert FLOPs in V3), so the routed experts need not each keep a copy of it
# (section 10).
# </details>
#
# 8. Why does MoE help less for small models?
# <details><summary>Answer</summary>Not because the quality gain is smaller: per FLOP it is largest at
# small scale (Artetxe et al. 2021: ~4x less compute at modest budgets, narrowing at scale; Clark et
# al. 2022; notebook 04). Because the cost per token is: dispatch overhead relative to narrow
# experts (section 9 measured it), the embedding and head that do not shrink, and small serving
# batches that read most of the weights anyway.</details>
#
# **Next**: notebook 07 climbs the dispatch ladder, takes the layer to a GPU and spreads its experts over several processes.

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
from moe_lab.exercises.compute_budgets import check_all_to_all_bytes, check_experts_touched, check_mixtral_parameters


# %% [markdown]
# ### Exercise 1: any Mixtral, by hand
#
# Section 1 counted Mixtral-8x7B. Write `my_mixtral_parameters(config)` returning `(total, active)` for any Mixtral-family `config.json` dict: `hidden_size` D, `num_hidden_layers` L, `num_attention_heads` H, `num_key_value_heads`, `head_dim` (when absent: D / H), `intermediate_size` F, `num_local_experts` E, `num_experts_per_tok` K, `vocab_size` V, `tie_word_embeddings` (when absent: false). Count the embedding as active, as Mistral does.
# The check compares with `count_parameters(from_hf_config(config))` on Mixtral-8x7B, Mixtral-8x22B and two small variants, one with tied embeddings and a `head_dim` that is not D / H.

# %%
def my_mixtral_parameters(config):
    # config: a Mixtral config.json dict -> (total, active), two integers
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def mixtral_parameters_solution(config):
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    kv_width = config["num_key_value_heads"] * head_dim
    n_experts, top_k = config["num_local_experts"], config["num_experts_per_tok"]
    attention = 2 * d * heads * head_dim + 2 * d * kv_width  # q and o; k and v (grouped-query)
    per_block = attention + n_experts * d + 2 * d  # attention, router (E x D), two RMSNorms
    head = 0 if config.get("tie_word_embeddings", False) else vocab * d
    shared = layers * per_block + d + vocab * d + head  # blocks, final norm, embedding, head
    expert = 3 * d * config["intermediate_size"]  # w1, w3 (F x D) and w2 (D x F)
    return shared + layers * n_experts * expert, shared + layers * top_k * expert


# %%
check_mixtral_parameters(my_mixtral_parameters, reference=mixtral_parameters_solution)


# %% [markdown]
# ### Exercise 2: experts touched by a batch
#
# Write `my_experts_touched(n_experts, top_k, n_tokens)`: the expected number of distinct experts a batch of B = `n_tokens` tokens uses when each token picks K distinct experts of E uniformly at random (the right panel of the latency figure, and the decode model). Derive it before you write it: with what probability does one token miss a given expert?
# The check compares with `moe_lab.budget.expected_experts_touched`, from one token to a thousand.

# %%
def my_experts_touched(n_experts, top_k, n_tokens):
    # -> the expected number of distinct experts, a float
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def experts_touched_solution(n_experts, top_k, n_tokens):
    # one token misses a given expert with probability 1 - K/E; B independent tokens all miss it
    # with probability (1 - K/E)^B; sum over the E experts (linearity of expectation)
    return n_experts * (1 - (1 - top_k / n_experts) ** n_tokens)


# %%
check_experts_touched(my_experts_touched, reference=experts_touched_solution)


# %% [markdown]
# ### Exercise 3: the all-to-all's bytes
#
# Under expert parallelism the E experts are spread evenly over W ranks, and so are the N tokens of a step. Each token sends a copy of its D values to each of its K experts (the dispatch all-to-all), and the expert outputs come back the same way (the combine all-to-all); a copy whose expert sits on the token's own rank does not travel.
# Write `my_all_to_all_bytes(n_tokens, top_k, d_model, world_size, bytes_per_value)` returning the bytes both all-to-alls move for one MoE block in one forward pass, summed over all ranks, under uniform routing.
# The check compares with `moe_lab.budget.all_to_all_bytes(...)["total"]`, DeepSeek-V3's width and top-8 over 64 ranks among the cases.

# %%
def my_all_to_all_bytes(n_tokens, top_k, d_model, world_size, bytes_per_value):
    # -> bytes moved by the dispatch and combine all-to-alls of one MoE block, all ranks
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def all_to_all_bytes_solution(n_tokens, top_k, d_model, world_size, bytes_per_value):
    remote = (world_size - 1) / world_size  # a copy's expert is on another rank
    one_way = n_tokens * top_k * d_model * bytes_per_value * remote  # the dispatch all-to-all
    return 2 * one_way  # and the combine all-to-all sends as much back


# %%
check_all_to_all_bytes(my_all_to_all_bytes, reference=all_to_all_bytes_solution)
