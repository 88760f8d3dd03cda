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
import statistics
import time

import plotly
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display
from plotly.subplots import make_subplots

import moe_lab.model
from moe_lab import DenseFFN, MoEConfig, MoELayer, ModelConfig
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
# `moe_lab.budget.PRESETS` holds fifteen published MoE models: the architecture fields of their
# `config.json` and the total and active counts their model cards, papers or release posts give, each
# with its source (see `moe_lab/budget/presets.py`). The calculator reads each config with
# `from_hf_config` and counts under the lab's convention (next section).

# %%
assert len(PRESETS) == 15
rows = []
for name, preset in PRESETS.items():
    c = preset.counts()
    total, active = c.total(preset.convention), c.active(preset.convention)
    assert preset.total.agrees(total) and preset.active.agrees(active), name
    rows.append((name, preset.total.value, total, preset.active.value, active))
    print(f"{name:>18}: total {total / B_:7.2f}B (card {preset.total.value / B_:6.1f}B)"
          f"   active {active / B_:6.2f}B (card {preset.active.value / B_:5.1f}B)")

# %% [markdown]
# All fifteen agree within 1% (2% where the card gives one or two significant digits;
# DeepSeek-V2-Lite's "2.4B" is 2.45B truncated, see its preset). The course's tiny models from
# notebook 04 go on the same chart: their counts come from the same calculator, and
# `tests/test_budget.py` checks that they equal the parameters of the instantiated `TinyLM`.

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
header = f"{'model':>18} {'card':>7} " + " ".join(f"{k:>12}" for k in conventions)
print(header)
agreeing = {}
for name, preset in PRESETS.items():
    c = preset.counts()
    cells, agreeing[name] = [], []
    for label, conv in conventions.items():
        a = c.active(conv)
        ok = preset.active.agrees(a)
        if ok:
            agreeing[name].append(label)
        cells.append(f"{a / B_:9.2f}B{'*' if ok else ' '} ")
    print(f"{name:>18} {preset.active.value / B_:6.1f}B " + " ".join(cells))
print("* = reproduces the card")

# %% [markdown]
# Published to three digits, Mixtral's 12.9B, Qwen1.5-MoE's 2.7B and gpt-oss's 3.6B/5.1B each fit
# exactly one convention: Mistral and Qwen count the embedding, OpenAI counts the unembedding but not
# the embedding. DeepSeek-V2-Lite's 2.4B fits only "head, no embedding", and one revision of
# DeepSeek-V3's README_WEIGHTS.md says so: "36.6B (including 0.9B for the output Head)" (another
# revision says "36.7B including 0.9B for Embedding and 0.9B for the output Head", which the shapes
# do not support: with both matrices the count is 37.55B). Rounded figures ("39B", "37B", "36B",
# "6.6B") often fit two conventions; `LAB_CONVENTIONS` records the one the lab's other numbers
# support, and says so where nothing does (Databricks, Microsoft).

# %%
assert agreeing["Mixtral-8x7B"] == ["emb+head"]
assert agreeing["Qwen1.5-MoE-A2.7B"] == ["emb+head"]
assert agreeing["gpt-oss-20b"] == agreeing["gpt-oss-120b"] == ["head only"]
assert agreeing["DeepSeek-V2-Lite"] == ["head only"]
v3 = PRESETS["DeepSeek-V3"].counts()
assert abs(v3.active(NO_EMBEDDING) / (36.6 * B_) - 1) < 0.01
for lab, conv in LAB_CONVENTIONS.items():
    print(f"{lab:>12}: {conv.name}")

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
# **total** parameters (width E·F = 4096). We time each on token batches from 1 to 1024, one
# thread, interleaving the three in every repetition and taking the median of 7.

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
touched_measured = []
with torch.inference_mode():
    for n in batches:
        x = torch.randn(n, D_MODEL)
        out = layers["MoE (E=16, K=2)"](x)  # warm-up, and the experts this batch really used
        touched_measured.append(int((out.tokens_per_expert > 0).sum()))
        times = {name: [] for name in layers}
        for _ in range(7):
            for name, layer in layers.items():
                start = time.perf_counter()
                layer(x)
                times[name].append(time.perf_counter() - start)
        for name in layers:
            latency[name].append(statistics.median(times[name]))
torch.set_num_threads(THREADS)
for name, ts in latency.items():
    print(f"{name:>20}: " + " ".join(f"{t * 1e3:7.2f}" for t in ts) + "  ms")

# %%
touched_model = [expected_experts_touched(N_EXPERTS, TOP_K, n) for n in batches]
fig = make_subplots(rows=1, cols=2, subplot_titles=(
    "latency per call (median of 7)", "experts touched by the batch"))
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

# %%
moe_t, active_t, total_t = (latency[k] for k in layers)
vs_active = [m / a for m, a in zip(moe_t, active_t)]
vs_total = [m / t for m, t in zip(moe_t, total_t)]
print("MoE / dense-same-active:", " ".join(f"{r:5.1f}" for r in vs_active))
print("MoE / dense-same-total: ", " ".join(f"{r:5.2f}" for r in vs_total))
# Up to 128 tokens, well slower than the dense layer with the same active parameters: same
# FLOPs, plus routing and dispatch, plus the weights of every expert the batch touches. (This
# machine measured 2.2x to 6x there.) At the largest batches the two come close: not asserted.
small = [r for n, r in zip(batches, vs_active) if n <= 128]
assert all(r > 1.5 for r in small)
print(f"at {batches[-1]} tokens the MoE takes {vs_active[-1]:.2f}x the dense-same-active time")
# With a large batch the 8x fewer FLOPs win against the dense layer of the same total size.
assert vs_total[-1] < 1
# The routing model: a batch of 16 tokens already touches about 14.1 of the 16 experts.
assert abs(expected_experts_touched(16, 2, 16) - 14.1) < 0.05
print(f"measured distinct experts at B=16: {touched_measured[batches.index(16)]}")

# %% [markdown]
# **What the measurement says.** With small batches the MoE layer is several times slower than the
# dense layer with the same *active* parameters: it does the same expert FLOPs plus routing,
# sorting and gathering, and reads the weights of every expert some token chose. As the batch grows
# that overhead is spread over more tokens, and at 1024 tokens the two come within about 10% (this
# machine measured 1.02 to 1.12 over several runs, so not asserted). It cannot do less arithmetic
# than the dense layer, but wall-clock time is more than arithmetic: at 4096 tokens
# `python -m moe_lab.bench layer` measured the MoE layer 1.28 times *faster* than its
# same-active dense layer, forward and backward, because the dense layer's large temporaries are
# fresh memory in every call while the MoE reuses its buffers
# (`benchmarks/results/layer-cpu-20261123T221612Z.json`; notebook 02, section 9). Against the dense layer with the same *total*
# parameters it wins once the batch is large enough for its FLOP savings to outweigh that overhead;
# with only a few tokens the outcome depends on the machine, because a small batch is bound by the
# weights it reads, not by FLOPs, and the right panel shows that 16 tokens already touch most of the
# 16 experts. "MoE is faster" holds at equal *total* size and large batches; at equal *active* size
# it does the same work plus routing, and its gain is quality for the same compute, not speed.
#
# ## 8. Decode economics at scale
#
# Decoding one token per sequence reads weights once per step for the whole batch. The bytes an MoE
# step reads move from its active parameters (B = 1) to its total (large B); the FLOPs per token stay
# active. Expert parallelism adds two all-to-alls per MoE block per step.

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
# Routing, sorting and gathering cost O(N·D) memory traffic per layer while the expert matmuls cost
# O(N·D·F) FLOPs: the narrower the experts, the larger the overhead relative to the useful work. We
# measure the MoE / same-active ratio at a large batch for a small and a larger layer:

# %%
torch.set_num_threads(1)
overhead = {}
with torch.inference_mode():
    for width in (32, 256):
        c = MoEConfig(d_model=width, d_expert=width, n_experts=16, top_k=2, validate_inputs=False)
        pair = (MoELayer(c).eval(), DenseFFN(width, 2 * width).eval())
        x = torch.randn(1024, width)
        times = ([], [])
        for _ in range(7):
            for layer, ts in zip(pair, times):
                start = time.perf_counter()
                layer(x)
                ts.append(time.perf_counter() - start)
        overhead[width] = statistics.median(times[0]) / statistics.median(times[1])
torch.set_num_threads(THREADS)
print({f"D=F={w}": f"MoE is {r:.1f}x the dense-same-active time" for w, r in overhead.items()})
assert overhead[32] > overhead[256]

# %% [markdown]
# The parts MoE cannot sparsify also weigh more in small models: the embedding and LM head (a
# 150K-token vocabulary costs 2 x 0.3B parameters at D = 2048), attention, and a fixed per-token LM
# head matmul. And served with small batches, any MoE is in the regime of section 7 where it reads
# most of its weights anyway. At research scale the picture is
# debated: Clark et al. 2022 (Unified Scaling Laws for Routed Language Models) found routing's gain
# shrinking as models grow, while Krajewski et al. 2024 (Scaling Laws for Fine-Grained MoE) found the
# gap to dense models widening once expert granularity is tuned.

# %%
print(f"{'model':>18} {'embedding + head share of the total':>36}")
share = {}
for name in ["OLMoE-1B-7B", "Qwen1.5-MoE-A2.7B", "Qwen3-30B-A3B", "Mixtral-8x7B", "DeepSeek-V3"]:
    c = PRESETS[name].counts()
    share[name] = (c.embedding + c.lm_head) / c.total()
    print(f"{name:>18} {share[name]:36.2%}")
assert share["OLMoE-1B-7B"] > 5 * share["DeepSeek-V3"]

# %% [markdown]
# ## 10. Fine-grained vs coarse experts
#
# DeepSeekMoE (Dai et al. 2024, arXiv:2401.06066) splits each expert into m narrower ones and routes
# each token to m times more of them: the same parameters and FLOPs, far more combinations. Their
# example: 16 experts with top-2 give C(16, 2) = 120 combinations; splitting each into 4 gives
# C(64, 8) = 4,426,165,368. They report DeepSeekMoE 2B matching GShard 2.9B (1.5x the expert
# parameters and computation), and DeepSeekMoE 16B matching LLaMA2 7B with about 40% of its
# computation.

# %%
assert math.comb(16, 2) == 120 and math.comb(64, 8) == 4_426_165_368
for name in ["Mixtral-8x7B", "DBRX", "Qwen3-30B-A3B", "DeepSeek-V3"]:
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
# ## 11. Closing table: published vs computed
#
# Every preset, its lab's convention, the published figures and the calculator's, with the source of
# each number in `moe_lab/budget/presets.py`.

# %%
lines = ["| model | convention | total (card) | total (computed) | active (card) | active (computed) |",
         "|---|---|---|---|---|---|"]
for name, preset in PRESETS.items():
    c = preset.counts()
    t, a = c.total(preset.convention), c.active(preset.convention)
    assert preset.total.agrees(t) and preset.active.agrees(a)
    lines.append(f"| {name} | {preset.convention.name} | {preset.total.value / B_:g}B | {t / B_:.2f}B"
                 f" | {preset.active.value / B_:g}B | {a / B_:.2f}B |")
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
# <details><summary>Answer</summary>Neither does: both count the LM head but not the embedding lookup.
# Mistral and Qwen count both (section 4).</details>
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
# <details><summary>Answer</summary>Than a dense layer of the same total size: at batches large
# enough for its fewer FLOPs to beat its routing overhead. Than a dense layer with the same active
# parameters: not by doing less work (same FLOPs, plus routing). At large batches the two come
# close, and effects outside the arithmetic, such as memory allocation, can tip the wall-clock
# either way (section 7); the MoE's gain is quality per FLOP, not speed.</details>
#
# 7. Why does DeepSeek-V3 use 256 narrow experts and not 16 wide ones?
# <details><summary>Answer</summary>Same parameters and FLOPs, vastly more expert combinations per
# token: C(256, 8) ≈ 4.1e14, against C(32, 1) = 32 for 32 experts 8 times as wide with top-1.
# DeepSeekMoE found the fine-grained split to specialize experts better.
# </details>

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
# Write `my_all_to_all_bytes(n_tokens, top_k, d_model, world_size, bytes_per_value)` returning the bytes both all-to-alls move for one MoE block, summed over all ranks, under uniform routing.
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
